//! What keeps one client from starving the others: admission per API (a few queries at once
//! and a short queue, then 429), a bound on open live tails (then 429, no queue), the list of
//! running queries, the slow-query log, and a counter per limit that was hit so that operators
//! can tune them.

// Client numbers are handled here: no silent truncation, sign loss or overflow.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use parking_lot::Mutex;
use prometheus::{IntCounterVec, Opts, Registry};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::config::QueryConfig;
use crate::error::{Error, Result};

/// The query surfaces, each admitted on its own so that a flood of SQL cannot lock Grafana's
/// dashboards out, nor the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Sql,
    Prometheus,
    Loki,
    /// The ruler's own queries (every language): a thousand rules cannot make people wait,
    /// and a crowd of dashboards cannot make rules miss their slot.
    Rules,
    /// Tempo's and Jaeger's trace APIs.
    Traces,
}

impl Api {
    pub const ALL: [Api; 5] = [Api::Sql, Api::Prometheus, Api::Loki, Api::Rules, Api::Traces];

    pub fn name(self) -> &'static str {
        match self {
            Api::Sql => "sql",
            Api::Prometheus => "prometheus",
            Api::Loki => "loki",
            Api::Rules => "rules",
            Api::Traces => "traces",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Seconds a client is told to wait (`Retry-After`) when a queue is full.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Queries running and waiting for one API.
struct Gate {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Decrements a counter when dropped, so that a waiter whose client went away leaves the queue.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running query: listed while it runs, logged when slow, its limit hits counted.
#[derive(Debug, Clone, Serialize)]
pub struct ActiveQuery {
    pub id: u64,
    pub tenant: String,
    pub api: Api,
    pub query: String,
    /// Unix seconds.
    pub started: f64,
    #[serde(skip)]
    started_at: Instant,
}

/// The text kept of a query in the active list and the slow-query log.
const LOGGED_QUERY_BYTES: usize = 4096;

/// A tenant's limits: its own query limits, over the admission that all tenants share (the
/// queues and the concurrency bound protect the server, whoever asks).
pub struct Limits {
    config: QueryConfig,
    tenant: String,
    shared: Arc<Shared>,
}

/// The server's admission: one per process.
struct Shared {
    gates: [Gate; Api::ALL.len()],
    /// Open live tails, `query.max_concurrent_tail_requests` at most.
    tails: Arc<Semaphore>,
    next_id: AtomicU64,
    active: Mutex<BTreeMap<u64, ActiveQuery>>,
    hits: IntCounterVec,
}

impl Limits {
    /// The default tenant's limits; other tenants' come from [`Limits::for_tenant`].
    pub fn new(config: QueryConfig, registry: &Registry) -> Result<Self> {
        let gate =
            || Gate { running: Arc::new(Semaphore::new(config.max_concurrent_queries)), waiting: AtomicUsize::new(0) };
        let hits = IntCounterVec::new(
            Opts::new("wake_query_limit_hits_total", "Queries refused or stopped by a query limit, by API and limit"),
            &["api", "limit"],
        )
        .map_err(|e| Error::Task(format!("registering limit metrics: {e}")))?;
        registry
            .register(Box::new(hits.clone()))
            .map_err(|e| Error::Task(format!("registering limit metrics: {e}")))?;
        let shared = Shared {
            gates: std::array::from_fn(|_| gate()),
            tails: Arc::new(Semaphore::new(config.max_concurrent_tail_requests)),
            next_id: AtomicU64::new(1),
            active: Mutex::new(BTreeMap::new()),
            hits,
        };
        Ok(Limits { config, tenant: wake_storage::DEFAULT_TENANT.to_string(), shared: Arc::new(shared) })
    }

    /// A tenant's limits (`config` holds its query limits) within this server's admission.
    pub fn for_tenant(&self, tenant: &str, config: QueryConfig) -> Limits {
        Limits { config, tenant: tenant.to_string(), shared: self.shared.clone() }
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    /// Counts a limit that stopped a query.
    pub fn hit(&self, api: Api, limit: &str) {
        self.shared.hits.with_label_values(&[api.name(), limit]).inc();
    }

    /// Checks the query text, then waits for a turn to run: at once when fewer than
    /// `max_concurrent_queries` run, in the queue while it has room and for at most
    /// `queue_timeout_secs`, else [`Error::Overloaded`].
    pub async fn admit(self: &Arc<Self>, api: Api, query: &str) -> Result<Admitted> {
        if query.len() > self.config.max_query_bytes {
            self.hit(api, "max_query_bytes");
            return Err(Error::Limit {
                limit: "max_query_bytes",
                message: format!(
                    "the query is {} bytes long, more than the limit of {} (query.max_query_bytes)",
                    query.len(),
                    self.config.max_query_bytes
                ),
            });
        }
        let gate = &self.shared.gates[api.index()];
        let permit = match gate.running.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if gate.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.max_queued_queries {
                    gate.waiting.fetch_sub(1, Ordering::AcqRel);
                    self.hit(api, "queue_full");
                    return Err(Error::Overloaded { api: api.name() });
                }
                let _waiting = Waiting(&gate.waiting);
                let wait = Duration::from_secs(self.config.queue_timeout_secs);
                match tokio::time::timeout(wait, gate.running.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) | Err(_) => {
                        self.hit(api, "queue_timeout");
                        return Err(Error::Overloaded { api: api.name() });
                    }
                }
            }
        };
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let started = wake_collector::time::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let query = truncated(query, LOGGED_QUERY_BYTES).to_string();
        let tenant = self.tenant.clone();
        self.shared
            .active
            .lock()
            .insert(id, ActiveQuery { id, tenant, api, query, started, started_at: Instant::now() });
        Ok(Admitted { limits: self.clone(), id, api, _permit: permit, outcome: None })
    }

    /// A place for one live tail, at once or [`Error::TooManyTails`]. There is no queue, as in
    /// Loki: a tail waits for lines, not for its turn, and a client that is refused retries after
    /// `Retry-After`.
    pub fn admit_tail(&self) -> Result<TailPermit> {
        match self.shared.tails.clone().try_acquire_owned() {
            Ok(permit) => Ok(TailPermit { _permit: permit }),
            Err(_) => {
                self.hit(Api::Loki, "max_concurrent_tail_requests");
                Err(Error::TooManyTails { max: self.config.max_concurrent_tail_requests })
            }
        }
    }

    /// This tenant's queries running now, oldest first, with how long each has run.
    pub fn active(&self) -> Vec<(ActiveQuery, Duration)> {
        self.shared
            .active
            .lock()
            .values()
            .filter(|query| query.tenant == self.tenant)
            .map(|query| (query.clone(), query.started_at.elapsed()))
            .collect()
    }
}

/// A query's turn: holds its place among the running queries and lists it until dropped,
/// which happens also when its client goes away.
pub struct Admitted {
    limits: Arc<Limits>,
    id: u64,
    api: Api,
    _permit: OwnedSemaphorePermit,
    outcome: Option<&'static str>,
}

impl Admitted {
    pub fn api(&self) -> Api {
        self.api
    }

    /// Records how the query ended (for the slow-query log) and counts a limit it hit.
    pub fn finish<T>(&mut self, result: &Result<T>) {
        self.outcome = Some(match result {
            Ok(_) => "ok",
            Err(error) => {
                if let Some(limit) = error.limit_name() {
                    self.limits.hit(self.api, limit);
                }
                error.limit_name().unwrap_or("error")
            }
        });
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(query) = self.limits.shared.active.lock().remove(&self.id) else { return };
        let elapsed = query.started_at.elapsed();
        let outcome = self.outcome.unwrap_or("cancelled");
        if outcome == "cancelled" {
            self.limits.hit(self.api, "client_gone");
        }
        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if elapsed_ms >= self.limits.config.slow_query_ms {
            warn!(target: "wake::slow_query", tenant = %query.tenant, api = self.api.name(), elapsed_ms, outcome, query = %query.query, "slow query");
        } else if outcome != "ok" {
            info!(tenant = %query.tenant, api = self.api.name(), elapsed_ms, outcome, query = %query.query, "query stopped");
        }
    }
}

/// A live tail's place among the open tails, held until its socket closes.
pub struct TailPermit {
    _permit: OwnedSemaphorePermit,
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(config: QueryConfig) -> Arc<Limits> {
        Arc::new(Limits::new(config, &Registry::new()).expect("limits"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_is_refused_and_a_waiter_runs_when_a_turn_frees() {
        let limits = limits(QueryConfig { max_concurrent_queries: 1, max_queued_queries: 1, ..QueryConfig::default() });
        let first = limits.admit(Api::Sql, "SELECT 1").await.expect("first runs");
        let waiter = tokio::spawn({
            let limits = limits.clone();
            async move { limits.admit(Api::Sql, "SELECT 2").await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        // One runs, one waits: a third is refused at once.
        let refused = limits.admit(Api::Sql, "SELECT 3").await.err().expect("queue full");
        assert!(matches!(refused, Error::Overloaded { api: "sql" }), "{refused}");
        // Other APIs have their own turns.
        let other = limits.admit(Api::Loki, "{a=\"b\"}").await.expect("loki is not queued behind sql");
        assert_eq!(limits.active().len(), 2);
        drop(first);
        waiter.await.expect("join").expect("the waiter ran");
        drop(other);
        assert!(limits.active().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_after_the_queue_timeout() {
        let limits = limits(QueryConfig { max_concurrent_queries: 1, queue_timeout_secs: 3, ..QueryConfig::default() });
        let _running = limits.admit(Api::Prometheus, "up").await.expect("runs");
        let started = tokio::time::Instant::now();
        let error = limits.admit(Api::Prometheus, "up").await.err().expect("times out");
        assert!(matches!(error, Error::Overloaded { .. }));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        // It left the queue: the next one may wait again.
        assert_eq!(limits.shared.gates[Api::Prometheus.index()].waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn long_queries_are_refused_before_they_are_parsed() {
        let limits = limits(QueryConfig { max_query_bytes: 1024, ..QueryConfig::default() });
        let error = limits.admit(Api::Loki, &"x".repeat(1025)).await.err().expect("too long");
        assert!(error.to_string().contains("query.max_query_bytes"), "{error}");
        assert_eq!(limits.shared.hits.with_label_values(&["loki", "max_query_bytes"]).get(), 1);
    }

    #[test]
    fn tails_beyond_the_limit_are_refused_and_counted_until_one_closes() {
        let limits = limits(QueryConfig { max_concurrent_tail_requests: 2, ..QueryConfig::default() });
        let first = limits.admit_tail().expect("first tail");
        let _second = limits.admit_tail().expect("second tail");
        let refused = limits.admit_tail().err().expect("a third is one too many");
        assert!(matches!(refused, Error::TooManyTails { max: 2 }), "{refused}");
        assert!(refused.to_string().contains("(3 > 2)"), "{refused}");
        assert!(limits.admit_tail().is_err(), "still full");
        assert_eq!(limits.shared.hits.with_label_values(&["loki", "max_concurrent_tail_requests"]).get(), 2);
        // Tails are not queries: a full tail limit leaves the Loki API's turns alone.
        assert_eq!(limits.shared.gates[Api::Loki.index()].running.available_permits(), 16);
        drop(first);
        let _third = limits.admit_tail().expect("a closed tail frees its place");
        assert_eq!(limits.shared.hits.with_label_values(&["loki", "max_concurrent_tail_requests"]).get(), 2);
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(truncated("abc", 10), "abc");
    }
}
