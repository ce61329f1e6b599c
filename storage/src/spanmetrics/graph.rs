//! Service graph (Tempo's `service-graphs` processor): a client span and the server span it
//! caused form an edge `client -> server`; producer/consumer pairs form messaging edges.
//!
//! The halves of an edge arrive in separate spans, often in separate export requests from
//! different services, so the first half waits in a bounded store keyed by (trace id, client
//! span id) — the server side uses its parent span id — until the other half arrives or the wait
//! passes. Rules follow Tempo's `servicegraphs.go`:
//!
//! * paired: `{client, server, connection_type}` where connection_type is `messaging_system`
//!   when either half is a producer/consumer span, else unset;
//! * a client span with `db.namespace`, `db.name`, `db.system` or `db.system.name` (span or
//!   resource) is a database call and completes at once, without waiting: server is
//!   `peer.service`, else `server.address`, else `network.peer.address[:network.peer.port]`,
//!   else the first db attribute found; connection_type `database`; both histograms get the
//!   client duration;
//! * a root server/consumer span (no parent span id) is an edge from client `user`, or from its
//!   first peer attribute (`peer.service`, `db.name`, `db.system`, `db.system.name`), with
//!   connection_type `virtual_node`; emitted at once since no client span can ever match it;
//! * a client/producer span that expires unpaired but has a peer attribute is an edge to a
//!   virtual server named by it, `virtual_node`; the server histogram observes 0;
//! * any other expired half counts in `traces_service_graph_unpaired_spans_total{client=svc}` or
//!   `{server=svc}` (plus `connection_type="messaging_system"` for messaging spans);
//! * a half that finds the store full, after expiring what is due, counts in
//!   `traces_service_graph_dropped_spans_total` with the same labels.

use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

use super::{
    Emitter, Histogram, HistogramLayout, METADATA_COUNTER, METADATA_HISTOGRAM, STALE_AFTER_MS, SeriesBudget,
    duration_secs, find_attr,
};
use crate::prompb::MetricMetadata;

pub const REQUEST_TOTAL: &str = "traces_service_graph_request_total";
pub const REQUEST_FAILED_TOTAL: &str = "traces_service_graph_request_failed_total";
pub const REQUEST_SERVER_SECONDS: &str = "traces_service_graph_request_server_seconds";
pub const REQUEST_CLIENT_SECONDS: &str = "traces_service_graph_request_client_seconds";
pub const UNPAIRED_SPANS_TOTAL: &str = "traces_service_graph_unpaired_spans_total";
pub const DROPPED_SPANS_TOTAL: &str = "traces_service_graph_dropped_spans_total";

/// Tempo's default `peer_attributes`: what names the far end of a half-seen edge.
const PEER_ATTRIBUTES: [&str; 4] = ["peer.service", "db.name", "db.system", "db.system.name"];
/// Tempo's default `database_name_attributes`: any of them marks a client span as a database call.
const DATABASE_NAME_ATTRIBUTES: [&str; 4] = ["db.namespace", "db.name", "db.system", "db.system.name"];

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum ConnectionType {
    Unset,
    MessagingSystem,
    Database,
    VirtualNode,
}

impl ConnectionType {
    fn label(self) -> &'static str {
        match self {
            ConnectionType::Unset => "",
            ConnectionType::MessagingSystem => "messaging_system",
            ConnectionType::Database => "database",
            ConnectionType::VirtualNode => "virtual_node",
        }
    }

    fn of(messaging: bool) -> Self {
        if messaging { ConnectionType::MessagingSystem } else { ConnectionType::Unset }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Role {
    Client,
    Server,
}

/// (trace id, span id) inline: valid OTLP ids are 16 and 8 bytes, so a key never allocates and
/// its size is fixed whatever the input.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct EdgeKey {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    trace_len: u8,
    span_len: u8,
}

impl EdgeKey {
    /// `None` for over-long ids: they are malformed, and truncating them could pair strangers.
    fn new(trace_id: &[u8], span_id: &[u8]) -> Option<Self> {
        let mut key = EdgeKey { trace_id: [0; 16], span_id: [0; 8], trace_len: 0, span_len: 0 };
        key.trace_id.get_mut(..trace_id.len())?.copy_from_slice(trace_id);
        key.span_id.get_mut(..span_id.len())?.copy_from_slice(span_id);
        key.trace_len = trace_id.len() as u8;
        key.span_len = span_id.len() as u8;
        Some(key)
    }
}

struct Half {
    service: String,
    seconds: f64,
}

struct Pending {
    client: Option<Half>,
    server: Option<Half>,
    messaging: bool,
    failed: bool,
    /// The client half's peer attribute, naming a virtual server if no server half arrives.
    peer: Option<String>,
    /// Position in the expiry index: (deadline ms, insertion sequence).
    expiry: (i64, u64),
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct EdgeLabels {
    client: String,
    server: String,
    connection: ConnectionType,
}

struct EdgeSeries {
    requests: u64,
    failed: u64,
    server_seconds: Histogram,
    client_seconds: Histogram,
    last_update_ms: i64,
}

/// One unpaired/dropped counter series: which metric, which label carries the service, and its
/// connection type.
#[derive(Clone, PartialEq, Eq, Hash)]
struct CounterKey {
    metric: &'static str,
    role: Role,
    service: String,
    connection: ConnectionType,
}

struct CounterSeries {
    value: u64,
    last_update_ms: i64,
}

pub(crate) struct ServiceGraph {
    layout: HistogramLayout,
    wait_ms: i64,
    max_items: usize,
    pending: HashMap<EdgeKey, Pending>,
    /// Pending keys ordered by deadline, so expiry pops from the front instead of scanning, and
    /// a completed edge leaves nothing behind (its entry is removed with it).
    expiry: BTreeMap<(i64, u64), EdgeKey>,
    sequence: u64,
    edges: HashMap<EdgeLabels, EdgeSeries>,
    counters: HashMap<CounterKey, CounterSeries>,
}

impl ServiceGraph {
    pub(crate) fn new(layout: HistogramLayout, wait_secs: u64, max_items: usize) -> Self {
        ServiceGraph {
            layout,
            wait_ms: i64::try_from(wait_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            max_items,
            pending: HashMap::new(),
            expiry: BTreeMap::new(),
            sequence: 0,
            edges: HashMap::new(),
            counters: HashMap::new(),
        }
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn observe(
        &mut self,
        service: &str,
        resource_attrs: &[KeyValue],
        span: &Span,
        now_ms: i64,
        budget: &mut SeriesBudget,
    ) {
        let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
        let failed = span.status.as_ref().is_some_and(|s| s.code == StatusCode::Error as i32);
        let seconds = duration_secs(span);
        let half = Half { service: service.to_string(), seconds };
        match kind {
            SpanKind::Client | SpanKind::Producer => {
                let messaging = kind == SpanKind::Producer;
                let key = EdgeKey::new(&span.trace_id, &span.span_id);
                if let Some(server) = database_server(resource_attrs, &span.attributes) {
                    // Tempo completes a database call immediately; a server half already waiting
                    // under this key is consumed by it (its failure still counts).
                    let waiting = key.and_then(|k| self.remove_pending(&k));
                    let labels = EdgeLabels { client: half.service, server, connection: ConnectionType::Database };
                    let failed = failed || waiting.is_some_and(|p| p.failed);
                    self.record_edge(labels, failed, seconds, seconds, now_ms, budget);
                    return;
                }
                let Some(key) = key else { return };
                let peer = find_attr_in(&PEER_ATTRIBUTES, &[&span.attributes]);
                self.upsert(key, Role::Client, half, messaging, failed, peer, now_ms, budget);
            }
            SpanKind::Server | SpanKind::Consumer => {
                let messaging = kind == SpanKind::Consumer;
                if span.parent_span_id.is_empty() {
                    let client = find_attr_in(&PEER_ATTRIBUTES, &[&span.attributes]).unwrap_or_else(|| "user".into());
                    let labels = EdgeLabels { client, server: half.service, connection: ConnectionType::VirtualNode };
                    self.record_edge(labels, failed, seconds, 0.0, now_ms, budget);
                    return;
                }
                let Some(key) = EdgeKey::new(&span.trace_id, &span.parent_span_id) else { return };
                self.upsert(key, Role::Server, half, messaging, failed, None, now_ms, budget);
            }
            SpanKind::Internal | SpanKind::Unspecified => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn upsert(
        &mut self,
        key: EdgeKey,
        role: Role,
        half: Half,
        messaging: bool,
        failed: bool,
        peer: Option<String>,
        now_ms: i64,
        budget: &mut SeriesBudget,
    ) {
        if let Some(pending) = self.pending.get_mut(&key) {
            pending.messaging |= messaging;
            pending.failed |= failed;
            match role {
                Role::Client => {
                    pending.client = Some(half);
                    pending.peer = peer;
                }
                Role::Server => pending.server = Some(half),
            }
            if pending.client.is_some()
                && pending.server.is_some()
                && let Some(Pending { client: Some(client), server: Some(server), messaging, failed, .. }) =
                    self.remove_pending(&key)
            {
                let labels = EdgeLabels {
                    client: client.service,
                    server: server.service,
                    connection: ConnectionType::of(messaging),
                };
                self.record_edge(labels, failed, server.seconds, client.seconds, now_ms, budget);
            }
            return;
        }

        if self.pending.len() >= self.max_items {
            // Make room from whatever is already past its wait before refusing the span.
            self.expire(now_ms, budget);
        }
        if self.pending.len() >= self.max_items {
            self.count(DROPPED_SPANS_TOTAL, role, half.service, ConnectionType::of(messaging), now_ms, budget);
            return;
        }
        self.sequence = self.sequence.wrapping_add(1);
        let expiry = (now_ms.saturating_add(self.wait_ms), self.sequence);
        let (client, server) = match role {
            Role::Client => (Some(half), None),
            Role::Server => (None, Some(half)),
        };
        self.expiry.insert(expiry, key);
        self.pending.insert(key, Pending { client, server, messaging, failed, peer, expiry });
    }

    fn remove_pending(&mut self, key: &EdgeKey) -> Option<Pending> {
        let pending = self.pending.remove(key)?;
        self.expiry.remove(&pending.expiry);
        Some(pending)
    }

    /// Resolves every pending half whose deadline is at or before `now_ms`.
    pub(crate) fn expire(&mut self, now_ms: i64, budget: &mut SeriesBudget) {
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let key = entry.remove();
            let Some(pending) = self.pending.remove(&key) else { continue };
            let connection = ConnectionType::of(pending.messaging);
            match (pending.client, pending.server, pending.peer) {
                (Some(client), None, Some(peer)) => {
                    let labels =
                        EdgeLabels { client: client.service, server: peer, connection: ConnectionType::VirtualNode };
                    self.record_edge(labels, pending.failed, 0.0, client.seconds, now_ms, budget);
                }
                (Some(client), None, None) => {
                    self.count(UNPAIRED_SPANS_TOTAL, Role::Client, client.service, connection, now_ms, budget)
                }
                (None, Some(server), _) => {
                    self.count(UNPAIRED_SPANS_TOTAL, Role::Server, server.service, connection, now_ms, budget)
                }
                // Complete edges are recorded as soon as they pair and never wait here.
                _ => {}
            }
        }
    }

    fn record_edge(
        &mut self,
        labels: EdgeLabels,
        failed: bool,
        server_seconds: f64,
        client_seconds: f64,
        now_ms: i64,
        budget: &mut SeriesBudget,
    ) {
        let series = match self.edges.get_mut(&labels) {
            Some(series) => series,
            None => {
                if !budget.admit() {
                    return;
                }
                let fresh = EdgeSeries {
                    requests: 0,
                    failed: 0,
                    server_seconds: Histogram::new(&self.layout),
                    client_seconds: Histogram::new(&self.layout),
                    last_update_ms: now_ms,
                };
                self.edges.entry(labels).or_insert(fresh)
            }
        };
        series.requests = series.requests.saturating_add(1);
        if failed {
            series.failed = series.failed.saturating_add(1);
        }
        series.server_seconds.observe(&self.layout, server_seconds);
        series.client_seconds.observe(&self.layout, client_seconds);
        series.last_update_ms = series.last_update_ms.max(now_ms);
    }

    fn count(
        &mut self,
        metric: &'static str,
        role: Role,
        service: String,
        connection: ConnectionType,
        now_ms: i64,
        budget: &mut SeriesBudget,
    ) {
        let key = CounterKey { metric, role, service, connection };
        let series = match self.counters.get_mut(&key) {
            Some(series) => series,
            None => {
                if !budget.admit() {
                    return;
                }
                self.counters.entry(key).or_insert(CounterSeries { value: 0, last_update_ms: now_ms })
            }
        };
        series.value = series.value.saturating_add(1);
        series.last_update_ms = series.last_update_ms.max(now_ms);
    }

    pub(crate) fn evict_stale(&mut self, now_ms: i64, budget: &mut SeriesBudget, out: &mut Emitter) {
        let is_stale = |last: i64| now_ms.saturating_sub(last) >= STALE_AFTER_MS;
        let layout = &self.layout;
        self.edges.retain(|labels, series| {
            let stale = is_stale(series.last_update_ms);
            if stale {
                emit_edge(layout, labels, series, out);
                budget.release();
            }
            !stale
        });
        self.counters.retain(|key, series| {
            let stale = is_stale(series.last_update_ms);
            if stale {
                emit_counter(key, series, out);
                budget.release();
            }
            !stale
        });
    }

    pub(crate) fn emit(&self, out: &mut Emitter) {
        for (labels, series) in &self.edges {
            emit_edge(&self.layout, labels, series, out);
        }
        for (key, series) in &self.counters {
            emit_counter(key, series, out);
        }
    }
}

fn emit_edge(layout: &HistogramLayout, labels: &EdgeLabels, series: &EdgeSeries, out: &mut Emitter) {
    let labels = [
        ("client", labels.client.as_str()),
        ("connection_type", labels.connection.label()),
        ("server", labels.server.as_str()),
    ];
    out.push(REQUEST_TOTAL, &labels, series.requests as f64);
    // Written from the edge's first request on, even at zero, so failure ratios have a
    // denominator-aligned numerator from the start.
    out.push(REQUEST_FAILED_TOTAL, &labels, series.failed as f64);
    series.server_seconds.emit(layout, REQUEST_SERVER_SECONDS, &labels, out);
    series.client_seconds.emit(layout, REQUEST_CLIENT_SECONDS, &labels, out);
}

fn emit_counter(key: &CounterKey, series: &CounterSeries, out: &mut Emitter) {
    let role = match key.role {
        Role::Client => "client",
        Role::Server => "server",
    };
    let labels = [(role, key.service.as_str()), ("connection_type", key.connection.label())];
    out.push(key.metric, &labels, series.value as f64);
}

pub(crate) fn metadata() -> Vec<MetricMetadata> {
    vec![
        super::metadata(METADATA_COUNTER, REQUEST_TOTAL, "Total count of requests between two nodes", ""),
        super::metadata(METADATA_COUNTER, REQUEST_FAILED_TOTAL, "Total count of failed requests between two nodes", ""),
        super::metadata(METADATA_HISTOGRAM, REQUEST_SERVER_SECONDS, "Time for a request seen by the server", "seconds"),
        super::metadata(METADATA_HISTOGRAM, REQUEST_CLIENT_SECONDS, "Time for a request seen by the client", "seconds"),
        super::metadata(METADATA_COUNTER, UNPAIRED_SPANS_TOTAL, "Total count of unpaired spans", ""),
        super::metadata(METADATA_COUNTER, DROPPED_SPANS_TOTAL, "Total count of dropped spans", ""),
    ]
}

/// The first of `keys` present in the attribute lists (key order first, then list order).
fn find_attr_in(keys: &[&str], lists: &[&[KeyValue]]) -> Option<String> {
    keys.iter().find_map(|key| find_attr(key, lists))
}

/// The server node of a database call, or `None` if the client span is not one. Resource
/// attributes are searched before span attributes, as Tempo does.
fn database_server(resource_attrs: &[KeyValue], span_attrs: &[KeyValue]) -> Option<String> {
    let lists = [resource_attrs, span_attrs];
    let db_name = find_attr_in(&DATABASE_NAME_ATTRIBUTES, &lists)?;
    if let Some(name) = find_attr_in(&["peer.service", "server.address"], &lists) {
        return Some(name);
    }
    if let Some(host) = find_attr("network.peer.address", &lists) {
        return Some(match find_attr("network.peer.port", &lists) {
            Some(port) => super::clamp_label_value(format!("{host}:{port}")),
            None => host,
        });
    }
    Some(db_name)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{SpanMetricsConfig, SpanMetricsGenerator};
    use super::*;

    const WAIT_MS: i64 = 10_000;

    fn generator() -> SpanMetricsGenerator {
        SpanMetricsGenerator::new(SpanMetricsConfig::default())
    }

    fn edge<'a>(client: &'a str, server: &'a str, connection: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut labels = vec![("client", client), ("server", server)];
        if !connection.is_empty() {
            labels.push(("connection_type", connection));
        }
        labels
    }

    #[test]
    fn client_and_server_pair_across_requests() {
        let mut g = generator();
        // 300 ms client call in `frontend`, answered by a failing 200 ms server span in `api`.
        let client = span(7, 1, 0xAA, SpanKind::Client, "GET /api", 300_000_000, None);
        let server = span(7, 2, 1, SpanKind::Server, "GET /api", 200_000_000, Some(StatusCode::Error));
        g.observe(&request(vec![("frontend", vec![client])]), 0);
        assert_eq!(g.pending_edges(), 1);
        g.observe(&request(vec![("api", vec![server])]), 5_000);
        assert_eq!(g.pending_edges(), 0);

        let out = g.collect(5_000);
        let labels = edge("frontend", "api", "");
        assert_eq!(value(&out, REQUEST_TOTAL, &labels), Some(1.0));
        assert_eq!(value(&out, REQUEST_FAILED_TOTAL, &labels), Some(1.0));
        let sum = |name: &str| value(&out, &format!("{name}_sum"), &labels).unwrap();
        assert!((sum(REQUEST_SERVER_SECONDS) - 0.2).abs() < 1e-12);
        assert!((sum(REQUEST_CLIENT_SECONDS) - 0.3).abs() < 1e-12);
        assert_eq!(value(&out, &format!("{REQUEST_SERVER_SECONDS}_count"), &labels), Some(1.0));
        let mut bucket = labels.clone();
        bucket.push(("le", "0.256"));
        assert_eq!(value(&out, &format!("{REQUEST_SERVER_SECONDS}_bucket"), &bucket), Some(1.0));
        assert_eq!(value(&out, &format!("{REQUEST_CLIENT_SECONDS}_bucket"), &bucket), Some(0.0));
        assert_eq!(named(&out, UNPAIRED_SPANS_TOTAL).count(), 0);
        assert_labels_sorted(&out);

        // A healthy second request on the same edge adds to the same series.
        let client = span(8, 1, 0xAA, SpanKind::Client, "GET /api", 1_000, None);
        let server = span(8, 2, 1, SpanKind::Server, "GET /api", 1_000, None);
        g.observe(&request(vec![("api", vec![server]), ("frontend", vec![client])]), 6_000);
        let out = g.collect(6_000);
        assert_eq!(value(&out, REQUEST_TOTAL, &labels), Some(2.0));
        assert_eq!(value(&out, REQUEST_FAILED_TOTAL, &labels), Some(1.0));
    }

    #[test]
    fn expired_client_with_peer_service_becomes_a_virtual_node() {
        let mut g = generator();
        let mut redis = span(1, 1, 0xAA, SpanKind::Client, "GET", 2_000_000, None);
        redis.attributes.push(attr("peer.service", "redis"));
        let lonely = span(2, 1, 0xAA, SpanKind::Client, "GET", 2_000_000, None);
        let orphan_server = span(3, 2, 9, SpanKind::Server, "GET", 2_000_000, None);
        g.observe(&request(vec![("cart", vec![redis, lonely]), ("api", vec![orphan_server])]), 1_000);

        // Still waiting one millisecond before the deadline.
        let out = g.collect(1_000 + WAIT_MS - 1);
        assert_eq!(g.pending_edges(), 3);
        assert_eq!(named(&out, REQUEST_TOTAL).count(), 0);

        let out = g.collect(1_000 + WAIT_MS);
        assert_eq!(g.pending_edges(), 0);
        let virtual_edge = edge("cart", "redis", "virtual_node");
        assert_eq!(value(&out, REQUEST_TOTAL, &virtual_edge), Some(1.0));
        assert_eq!(value(&out, REQUEST_FAILED_TOTAL, &virtual_edge), Some(0.0));
        assert_eq!(value(&out, &format!("{REQUEST_SERVER_SECONDS}_sum"), &virtual_edge), Some(0.0));
        assert_eq!(value(&out, UNPAIRED_SPANS_TOTAL, &[("client", "cart")]), Some(1.0));
        assert_eq!(value(&out, UNPAIRED_SPANS_TOTAL, &[("server", "api")]), Some(1.0));
    }

    #[test]
    fn database_clients_complete_at_once() {
        let mut g = generator();
        let mut by_system = span(1, 1, 0xAA, SpanKind::Client, "SELECT", 1_000, None);
        by_system.attributes.push(attr("db.system", "postgresql"));
        let mut by_address = span(2, 1, 0xAA, SpanKind::Client, "SELECT", 1_000, Some(StatusCode::Error));
        by_address.attributes.push(attr("db.namespace", "orders"));
        by_address.attributes.push(attr("server.address", "pg-primary"));
        let mut by_peer = span(3, 1, 0xAA, SpanKind::Client, "SELECT", 1_000, None);
        by_peer.attributes.push(attr("db.name", "orders"));
        by_peer.attributes.push(attr("network.peer.address", "10.0.0.5"));
        by_peer.attributes.push(attr("network.peer.port", "5432"));
        g.observe(&request(vec![("shop", vec![by_system, by_address, by_peer])]), 0);
        assert_eq!(g.pending_edges(), 0);
        let out = g.collect(0);
        assert_eq!(value(&out, REQUEST_TOTAL, &edge("shop", "postgresql", "database")), Some(1.0));
        assert_eq!(value(&out, REQUEST_FAILED_TOTAL, &edge("shop", "pg-primary", "database")), Some(1.0));
        assert_eq!(value(&out, REQUEST_TOTAL, &edge("shop", "10.0.0.5:5432", "database")), Some(1.0));
    }

    #[test]
    fn root_server_span_is_called_by_user() {
        let mut g = generator();
        let root = span(1, 1, 0, SpanKind::Server, "GET /", 1_000, None);
        let mut from_peer = span(2, 1, 0, SpanKind::Server, "GET /", 1_000, None);
        from_peer.attributes.push(attr("peer.service", "lb"));
        g.observe(&request(vec![("web", vec![root, from_peer])]), 0);
        assert_eq!(g.pending_edges(), 0);
        let out = g.collect(0);
        assert_eq!(value(&out, REQUEST_TOTAL, &edge("user", "web", "virtual_node")), Some(1.0));
        assert_eq!(value(&out, REQUEST_TOTAL, &edge("lb", "web", "virtual_node")), Some(1.0));
    }

    #[test]
    fn producer_and_consumer_form_a_messaging_edge() {
        let mut g = generator();
        let producer = span(1, 1, 0xAA, SpanKind::Producer, "publish", 1_000, None);
        let consumer = span(1, 2, 1, SpanKind::Consumer, "process", 1_000, None);
        g.observe(&request(vec![("orders", vec![producer])]), 0);
        g.observe(&request(vec![("billing", vec![consumer])]), 100);
        let lonely_consumer = span(2, 2, 1, SpanKind::Consumer, "process", 1_000, None);
        g.observe(&request(vec![("billing", vec![lonely_consumer])]), 100);
        let out = g.collect(100 + WAIT_MS);
        assert_eq!(value(&out, REQUEST_TOTAL, &edge("orders", "billing", "messaging_system")), Some(1.0));
        let unpaired = [("connection_type", "messaging_system"), ("server", "billing")];
        assert_eq!(value(&out, UNPAIRED_SPANS_TOTAL, &unpaired), Some(1.0));
    }

    #[test]
    fn full_store_drops_spans_and_stays_bounded() {
        let config = SpanMetricsConfig { service_graph_max_items: 2, ..Default::default() };
        let mut g = SpanMetricsGenerator::new(config);
        let clients = (1..=5).map(|t| span(t, 1, 0xAA, SpanKind::Client, "call", 1_000, None)).collect();
        g.observe(&request(vec![("a", clients)]), 0);
        assert_eq!(g.pending_edges(), 2);
        let server = span(9, 2, 1, SpanKind::Server, "serve", 1_000, None);
        g.observe(&request(vec![("b", vec![server])]), 1);
        assert_eq!(g.pending_edges(), 2);
        let out = g.collect(1);
        assert_eq!(value(&out, DROPPED_SPANS_TOTAL, &[("client", "a")]), Some(3.0));
        assert_eq!(value(&out, DROPPED_SPANS_TOTAL, &[("server", "b")]), Some(1.0));

        // A half already waiting still pairs when the store is full.
        let server = span(1, 2, 1, SpanKind::Server, "serve", 1_000, None);
        g.observe(&request(vec![("b", vec![server])]), 2);
        assert_eq!(g.pending_edges(), 1);

        let refill = span(21, 1, 0xAA, SpanKind::Client, "call", 1_000, None);
        g.observe(&request(vec![("a", vec![refill])]), 3);
        assert_eq!(g.pending_edges(), 2);

        // Once the wait has passed, a span finding the store full makes room by expiring what is
        // due (trace 2's client, from t=0) instead of being dropped; the t=3 one still waits.
        let late = span(20, 1, 0xAA, SpanKind::Client, "call", 1_000, None);
        g.observe(&request(vec![("a", vec![late])]), WAIT_MS);
        assert_eq!(g.pending_edges(), 2);
        let out = g.collect(WAIT_MS);
        assert_eq!(value(&out, UNPAIRED_SPANS_TOTAL, &[("client", "a")]), Some(1.0));
        assert_eq!(value(&out, REQUEST_TOTAL, &edge("a", "b", "")), Some(1.0));
        assert_eq!(value(&out, DROPPED_SPANS_TOTAL, &[("client", "a")]), Some(3.0));
    }

    #[test]
    fn malformed_ids_and_kinds_are_ignored() {
        let mut g = generator();
        let mut long_trace = span(1, 1, 0xAA, SpanKind::Client, "x", 1_000, None);
        long_trace.trace_id = vec![1; 17];
        let mut long_parent = span(1, 1, 0xAA, SpanKind::Server, "x", 1_000, None);
        long_parent.parent_span_id = vec![1; 9];
        let mut odd_kind = span(1, 1, 0xAA, SpanKind::Client, "x", 1_000, None);
        odd_kind.kind = -3;
        g.observe(&request(vec![("a", vec![long_trace, long_parent, odd_kind])]), 0);
        assert_eq!(g.pending_edges(), 0);
        let out = g.collect(i64::MAX);
        assert_eq!(named(&out, REQUEST_TOTAL).count(), 0);
        // Extreme clocks do not overflow.
        let far = span(2, 1, 0xAA, SpanKind::Client, "x", 1_000, None);
        g.observe(&request(vec![("a", vec![far])]), i64::MAX);
        g.collect(i64::MIN);
        g.collect(i64::MAX);
        assert_eq!(g.pending_edges(), 0);
    }
}
