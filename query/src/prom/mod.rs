//! The Prometheus HTTP API and PromQL over the `metrics` table.
//!
//! # Layout
//! - `naming`: how stored OTLP metrics appear as Prometheus series (Prometheus's own OTLP
//!   translation rules, plus cAdvisor's names for the agent's container metrics);
//! - `index`: which series each metrics file holds and where, built once per file;
//! - `select`: reading series for a selector out of the `metrics` table through the index;
//! - `eval`: PromQL evaluation with Prometheus 2.x semantics over any [`eval::SeriesSource`];
//! - `functions`: PromQL's functions on samples, exactly as Prometheus computes them;
//! - `api`: the `/api/v1/…` routes and Prometheus's response and error shapes.

pub mod api;
pub mod eval;
pub mod functions;
pub mod index;
pub mod naming;
pub mod select;

pub use api::router;

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`, which Prometheus uses for sample values and
/// for `le` and `quantile` labels.
pub fn format_value(value: f64) -> String {
    crate::loki::api::format_value(value)
}
