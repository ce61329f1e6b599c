//! [`QueryConfig`]: the query engine's resources and the limits every query API enforces, with
//! one named default per field and a [`QueryConfig::validate`] that names the offending key.
//!
//! The defaults follow the systems Wake's APIs imitate: Prometheus's `query.timeout` (2 min) and
//! `query.max-samples` (50,000,000), Loki's `max_entries_limit_per_query` (5,000) and
//! `max_query_length` (721 h) and `max_concurrent_tail_requests` (10).

// Client numbers are handled here: no silent truncation, sign loss or overflow.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::arithmetic_side_effects)]

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Memory all running queries may use together; beyond it sorts, joins and aggregations
    /// spill to `spill_dir` or the query fails, rather than the server running out of memory.
    pub memory_limit_bytes: usize,
    /// Where sorts and aggregations spill (default: `<data_dir>/spill`, on the data disk).
    pub spill_dir: Option<PathBuf>,
    /// Most disk that spill files of all queries may take together.
    pub max_spill_bytes: u64,
    /// Threads that execute queries, apart from those that receive data (0: one per core).
    /// They run at a lower CPU priority than ingest, so that a heavy query cannot delay the
    /// acknowledgement of incoming data even when it keeps every core busy.
    pub threads: usize,
    /// How the query threads yield to ingest: `normal` (the default) runs them as ordinary
    /// threads at `thread_nice`, sharing cores by weight; `idle` (Linux `SCHED_IDLE`) runs them
    /// only on cores nothing else wants, and a waking ingest thread preempts them at once, at
    /// the risk of queries starving under sustained ingest. Measured side by side, `idle` did
    /// not lower the acknowledgement p99 under heavy queries (BENCHMARKS.md).
    pub thread_policy: ThreadPolicy,
    /// Nice value (0 to 19) of the query threads under `thread_policy: normal`: higher runs at
    /// lower priority.
    pub thread_nice: i32,
    /// A query still running after this long is cancelled (Prometheus's `query.timeout`).
    pub timeout_secs: u64,
    /// Queries that run at once per API (SQL, Prometheus, Loki, and the ruler's own); more wait
    /// in a queue.
    pub max_concurrent_queries: usize,
    /// Queries that may wait per API; when the queue is full, requests get 429 with
    /// `Retry-After`.
    pub max_queued_queries: usize,
    /// A query waits at most this long in the queue before it gets 429.
    pub queue_timeout_secs: u64,
    /// Longest query text (SQL, PromQL, LogQL) accepted.
    pub max_query_bytes: usize,
    /// Deepest nesting of parentheses, brackets and operators in a PromQL or LogQL expression.
    pub max_query_depth: usize,
    /// Samples a PromQL query may hold at once (Prometheus's `query.max-samples`).
    pub max_samples: usize,
    /// Series a PromQL selector or a metadata call may select.
    pub max_series: usize,
    /// Rows an SQL answer may hold; more is a 413, or a truncated answer when asked for.
    pub max_result_rows: usize,
    /// Bytes an SQL answer may take when rendered; more is a 413, or a truncated answer.
    pub max_result_bytes: usize,
    /// Lines a Loki log query may return (Loki's `max_entries_limit_per_query`).
    pub max_entries_limit_per_query: usize,
    /// Longest time range of a Loki query, range vectors included (Loki's `max_query_length`).
    pub max_query_length_secs: u64,
    /// Queries that run at least this long are logged with their text (the slow-query log).
    pub slow_query_ms: u64,
    /// Live tails (`/loki/api/v1/tail`) open at once; one more is refused with 429 before the
    /// WebSocket upgrade (Loki's `max_concurrent_tail_requests`). A tail polls the store every
    /// second for as long as its socket stays open, so it is admitted for its whole life rather
    /// than per query.
    pub max_concurrent_tail_requests: usize,
    /// Spans one trace may have when it is read (by id, or as a search candidate); a larger
    /// trace is refused with 422, as Tempo refuses traces over `max_bytes_per_trace`.
    pub max_spans_per_trace: usize,
    /// Candidate traces one TraceQL search or Jaeger search may read and evaluate whole; when
    /// the limit is reached the search answers what it found among them.
    pub max_search_traces_inspected: usize,
    /// Tag names or tag values one Tempo or Jaeger autocomplete call may answer.
    pub max_tag_values: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            memory_limit_bytes: 2 << 30,
            spill_dir: None,
            max_spill_bytes: 100 << 30,
            threads: 0,
            thread_policy: ThreadPolicy::Normal,
            thread_nice: 10,
            timeout_secs: 120,
            max_concurrent_queries: 16,
            max_queued_queries: 32,
            queue_timeout_secs: 10,
            max_query_bytes: 256 * 1024,
            max_query_depth: 256,
            max_samples: 50_000_000,
            max_series: 500_000,
            max_result_rows: 1_000_000,
            max_result_bytes: 256 << 20,
            max_entries_limit_per_query: 5_000,
            max_query_length_secs: 721 * 3600,
            slow_query_ms: 10_000,
            max_concurrent_tail_requests: 10,
            max_spans_per_trace: 100_000,
            max_search_traces_inspected: 20_000,
            max_tag_values: 10_000,
        }
    }
}

/// One tenant's query limits (`tenants.overrides.<tenant>.query`); each one unset is the
/// server's `query:` value. The resources (memory, threads, spill) and the admission queues
/// are the server's, shared by all tenants.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryLimitOverrides {
    pub timeout_secs: Option<u64>,
    pub max_query_bytes: Option<usize>,
    pub max_query_depth: Option<usize>,
    pub max_samples: Option<usize>,
    pub max_series: Option<usize>,
    pub max_result_rows: Option<usize>,
    pub max_result_bytes: Option<usize>,
    pub max_entries_limit_per_query: Option<usize>,
    pub max_query_length_secs: Option<u64>,
    pub max_spans_per_trace: Option<usize>,
    pub max_search_traces_inspected: Option<usize>,
    pub max_tag_values: Option<usize>,
}

impl QueryLimitOverrides {
    /// The server's configuration with these limits in place of its own.
    pub fn apply(&self, server: &QueryConfig) -> QueryConfig {
        let mut config = server.clone();
        macro_rules! over {
            ($($field:ident),*) => { $( if let Some(value) = self.$field { config.$field = value; } )* };
        }
        over!(
            timeout_secs,
            max_query_bytes,
            max_query_depth,
            max_samples,
            max_series,
            max_result_rows,
            max_result_bytes,
            max_entries_limit_per_query,
            max_query_length_secs,
            max_spans_per_trace,
            max_search_traces_inspected,
            max_tag_values
        );
        config
    }
}

/// The scheduling class of the query threads (see [`QueryConfig::thread_policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadPolicy {
    Idle,
    Normal,
}

/// A configuration value out of its range: the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("query.{key}: {message}")]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

impl QueryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at_least = |key: &'static str, value: u64, min: u64| {
            if value < min {
                Err(ConfigError { key, message: format!("must be at least {min}, got {value}") })
            } else {
                Ok(())
            }
        };
        let as_u64 = |value: usize| u64::try_from(value).unwrap_or(u64::MAX);
        at_least("memory_limit_bytes", as_u64(self.memory_limit_bytes), 16 << 20)?;
        at_least("timeout_secs", self.timeout_secs, 1)?;
        at_least("max_concurrent_queries", as_u64(self.max_concurrent_queries), 1)?;
        at_least("queue_timeout_secs", self.queue_timeout_secs, 1)?;
        at_least("max_query_bytes", as_u64(self.max_query_bytes), 1024)?;
        at_least("max_query_depth", as_u64(self.max_query_depth), 8)?;
        at_least("max_samples", as_u64(self.max_samples), 1)?;
        at_least("max_series", as_u64(self.max_series), 1)?;
        at_least("max_result_rows", as_u64(self.max_result_rows), 1)?;
        at_least("max_result_bytes", as_u64(self.max_result_bytes), 1024)?;
        at_least("max_entries_limit_per_query", as_u64(self.max_entries_limit_per_query), 1)?;
        at_least("max_query_length_secs", self.max_query_length_secs, 60)?;
        at_least("max_concurrent_tail_requests", as_u64(self.max_concurrent_tail_requests), 1)?;
        at_least("max_spans_per_trace", as_u64(self.max_spans_per_trace), 1)?;
        at_least("max_search_traces_inspected", as_u64(self.max_search_traces_inspected), 1)?;
        at_least("max_tag_values", as_u64(self.max_tag_values), 1)?;
        if !(0..=19).contains(&self.thread_nice) {
            return Err(ConfigError {
                key: "thread_nice",
                message: format!("must be between 0 and 19, got {}", self.thread_nice),
            });
        }
        // A depth the evaluators' recursion can always afford on a thread's stack.
        if self.max_query_depth > 2048 {
            return Err(ConfigError {
                key: "max_query_depth",
                message: format!("must be at most 2048, got {}", self.max_query_depth),
            });
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    pub fn max_query_length(&self) -> Duration {
        Duration::from_secs(self.max_query_length_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_overrides_replace_only_what_they_set() {
        let overrides = QueryLimitOverrides { max_samples: Some(1000), ..Default::default() };
        let server = QueryConfig::default();
        let config = overrides.apply(&server);
        assert_eq!(config.max_samples, 1000);
        assert_eq!(config.max_series, server.max_series);
        assert!(serde_json::from_str::<QueryLimitOverrides>(r#"{"threads": 4}"#).is_err(), "resources are shared");
    }

    #[test]
    fn defaults_are_valid() {
        QueryConfig::default().validate().expect("defaults");
    }

    #[test]
    fn errors_name_the_key() {
        let config = QueryConfig { max_concurrent_queries: 0, ..QueryConfig::default() };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "query.max_concurrent_queries: must be at least 1, got 0"
        );
        let config = QueryConfig { max_concurrent_tail_requests: 0, ..QueryConfig::default() };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "query.max_concurrent_tail_requests: must be at least 1, got 0"
        );
        let config: QueryConfig =
            serde_json::from_str(r#"{"max_concurrent_tail_requests": 3}"#).expect("the key is known");
        assert_eq!(config.max_concurrent_tail_requests, 3);
        let config = QueryConfig { thread_nice: 25, ..QueryConfig::default() };
        assert!(config.validate().unwrap_err().to_string().starts_with("query.thread_nice"));
        let error = serde_yaml_like(r#"{"timeout_sec": 5}"#);
        assert!(error.contains("unknown field"), "{error}");
    }

    #[test]
    fn thread_policy_is_normal_unless_set_to_idle() {
        assert_eq!(QueryConfig::default().thread_policy, ThreadPolicy::Normal);
        let config: QueryConfig = serde_json::from_str(r#"{"thread_policy": "idle"}"#).unwrap();
        assert_eq!(config.thread_policy, ThreadPolicy::Idle);
        let config: QueryConfig = serde_json::from_str(r#"{"thread_policy": "normal", "thread_nice": 19}"#).unwrap();
        assert_eq!((config.thread_policy, config.thread_nice), (ThreadPolicy::Normal, 19));
        let error = serde_yaml_like(r#"{"thread_policy": "realtime"}"#);
        assert!(error.contains("unknown variant `realtime`"), "{error}");
    }

    fn serde_yaml_like(text: &str) -> String {
        serde_json::from_str::<QueryConfig>(text).unwrap_err().to_string()
    }
}
