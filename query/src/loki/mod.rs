//! Loki's HTTP API and LogQL over the same DataFusion tables as SQL (no second store).
//!
//! - `params`: request parameters as Loki and Grafana send them (times, durations, limits);
//! - `labels`: Loki label names and the store columns behind them;
//! - `pipeline`: the per-line LogQL stages (parsers, label filters, formatters);
//! - `eval`: log and metric queries: selectors and line filters become SQL, the rest is
//!   evaluated over its rows;
//! - `api`: the routes and Loki's response shapes;
//! - `tail`: the live tail over WebSocket, by polling the store.
//! - `delete`: the log deletion API.

pub mod api;
pub mod delete;
pub mod eval;
pub mod labels;
pub mod params;
pub mod pipeline;
pub mod tail;

pub use api::router;
