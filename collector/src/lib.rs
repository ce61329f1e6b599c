//! Wake's node agent (`wake agent`): discovers container log files, tails and parses them,
//! reads cgroup metrics, and forwards everything to the store as OTLP, checkpointing offsets
//! only after the store acknowledged.
//!
//! The agent is not built yet: this crate holds its place in the workspace so that the data
//! flow (collector → OTLP → storage → files → query) is visible in the layout.
