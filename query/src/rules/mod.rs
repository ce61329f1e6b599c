//! The ruler: Prometheus rule files (alerting and recording rules) over PromQL, LogQL and SQL,
//! evaluated on a schedule inside the server, with alerts sent to Alertmanager and the rule
//! APIs Grafana reads; and the `wake rules check` / `wake rules test` commands.
//!
//! # Layout
//! - `file`: rule files read and checked as Prometheus' `rulefmt` does (file and line on errors);
//! - `template`: Go templates in labels and annotations, with Prometheus' functions;
//! - `alert`: an alerting rule's state machine (pending, firing, `keep_firing_for`, resolved);
//! - `group`: one group's evaluation, staleness markers, and the query and write seams;
//! - `querier`: those seams over the query engine and the store's ingest API;
//! - `manager`: [`Ruler`], the schedule, reloads, the `for` state restore, self-metrics;
//! - `notifier`: the Alertmanager API v2 client with its bounded queue;
//! - `api`: `/api/v1/rules`, `/api/v1/alerts`, Loki's ruler endpoints and `/-/reload`;
//! - `unittest`: Prometheus' rule unit-test files, run as `promtool test rules` runs them.

pub mod alert;
pub mod api;
pub mod file;
pub mod group;
pub mod manager;
pub mod notifier;
pub mod querier;
pub mod template;
pub mod unittest;

pub use api::router;
pub use file::{FileError, Lang};
pub use manager::{RuleSources, Ruler, RulerConfig, RulerError};
pub use querier::{EngineQuerier, StoreWriter, check_expression};
