//! Wake's node agent (`wake agent`): discovers container log files, tails and parses them,
//! reads cgroup metrics, and forwards everything to the store as OTLP, checkpointing offsets
//! only after the store acknowledged.
//!
//! How the modules fit:
//! - [`discovery`] finds log files (Kubernetes CRI layout, Docker `json-file`) and the identity
//!   of the container behind each ([`identity`]);
//! - [`watch`] turns inotify events into the files the reader must look at, ignoring the
//!   events the agent's own reads and scans cause;
//! - [`tail`] reads one file through rotation, truncation and deletion, [`parse`] turns its
//!   physical lines into records (CRI and Docker formats, partial-line reassembly);
//! - [`checkpoint`] keeps the acknowledged offset of every file;
//! - [`cgroup`] reads container resource metrics from cgroup v1 and v2;
//! - [`lifecycle`] follows containers' starts, exits and removals (podman's events log,
//!   Docker's configs, the kubelet layout) and sends them for the store's inventory;
//! - [`export`] sends OTLP to the store with retries and back-off;
//! - [`self_metrics`] turns the agent's (and the server's) own Prometheus metrics into OTLP;
//! - [`time`] is the workspace's one clock and one duration grammar (here because this is the
//!   lowest crate: storage, query and the binary use it too);
//! - [`agent`] runs it all: a reader thread that batches records within a byte bound, a queue
//!   bounded in bytes, a shipper that exports each batch and only then checkpoints it, a metrics
//!   loop, and the agent's own HTTP endpoint.

pub mod agent;
pub mod cgroup;
pub mod checkpoint;
pub mod config;
pub mod discovery;
pub mod error;
pub mod export;
pub mod identity;
pub mod lifecycle;
pub mod parse;
pub mod self_metrics;
pub mod tail;
pub mod time;
pub mod watch;

pub use agent::run;
pub use config::AgentConfig;
pub use error::{Error, Result};
pub use self_metrics::registry_to_otlp;
