//! One trace in memory: its spans as the store returns them, and the tree between them.
//!
//! Spans of one trace may arrive late, twice (a retried export) or without their root; a
//! [`Trace`] is built from whatever rows exist, keeps one copy of each span id, and answers
//! parent, children and root questions by index, so that TraceQL's structural operators and
//! `trace:` intrinsics see the whole trace.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map as JsonMap, Value as Json};

/// OTLP span kinds, named as TraceQL and the `spans.kind` column write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    pub const ALL: [SpanKind; 6] = [
        SpanKind::Unspecified,
        SpanKind::Internal,
        SpanKind::Server,
        SpanKind::Client,
        SpanKind::Producer,
        SpanKind::Consumer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "unspecified",
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }

    /// The kind of a `spans.kind` value (unknown names are `unspecified`).
    pub fn from_name(name: &str) -> SpanKind {
        SpanKind::ALL.into_iter().find(|kind| kind.as_str() == name).unwrap_or(SpanKind::Unspecified)
    }

    /// The OTLP enum value.
    pub fn otlp(self) -> i32 {
        self as i32
    }
}

/// OTLP status codes, named as TraceQL and the `spans.status_code` column write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpanStatus {
    Unset,
    Ok,
    Error,
}

impl SpanStatus {
    pub const ALL: [SpanStatus; 3] = [SpanStatus::Unset, SpanStatus::Ok, SpanStatus::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            SpanStatus::Unset => "unset",
            SpanStatus::Ok => "ok",
            SpanStatus::Error => "error",
        }
    }

    pub fn from_name(name: &str) -> SpanStatus {
        SpanStatus::ALL.into_iter().find(|status| status.as_str() == name).unwrap_or(SpanStatus::Unset)
    }

    pub fn otlp(self) -> i32 {
        self as i32
    }
}

/// A span event; its attributes keep their JSON types.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub time_ns: i64,
    pub name: String,
    pub attributes: JsonMap<String, Json>,
}

/// A link to another span; its attributes keep their JSON types.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub trace_id: String,
    pub span_id: String,
    pub trace_state: String,
    pub attributes: JsonMap<String, Json>,
}

/// One span. Ids are lowercase hex (32 and 16 digits). Resource and span attribute values are
/// strings, as the store keeps them (OTLP ints, doubles and booleans in their text form).
/// `resource` holds every resource attribute, `service.name` included.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub trace_state: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    pub status: SpanStatus,
    pub status_message: Option<String>,
    pub start_ns: i64,
    pub end_ns: i64,
    pub flags: u32,
    pub service_name: String,
    pub resource: BTreeMap<String, String>,
    pub scope_name: Option<String>,
    pub scope_version: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub events: Vec<Event>,
    pub links: Vec<Link>,
}

impl Span {
    pub fn duration_ns(&self) -> i64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// The spans of one trace, ordered by start time (then span id), one per span id.
#[derive(Debug, Clone)]
pub struct Trace {
    pub trace_id: String,
    pub spans: Vec<Span>,
    parents: Vec<Option<usize>>,
    children: Vec<Vec<usize>>,
    root: Option<usize>,
}

impl Trace {
    /// The trace of `spans`, all of trace `trace_id`. Of two rows with one span id (an export
    /// retried after a lost answer) the first is kept.
    pub fn new(trace_id: String, mut spans: Vec<Span>) -> Trace {
        spans.sort_by(|a, b| (a.start_ns, &a.span_id).cmp(&(b.start_ns, &b.span_id)));
        let mut seen = std::collections::HashSet::new();
        spans.retain(|span| seen.insert(span.span_id.clone()));
        let index: HashMap<&str, usize> = spans.iter().enumerate().map(|(i, s)| (s.span_id.as_str(), i)).collect();
        let parents: Vec<Option<usize>> = spans
            .iter()
            .map(|span| span.parent_span_id.as_deref().and_then(|parent| index.get(parent).copied()))
            .collect();
        let mut children = vec![Vec::new(); spans.len()];
        for (child, parent) in parents.iter().enumerate() {
            if let Some(parent) = parent {
                children[*parent].push(child);
            }
        }
        // The root is the span without a parent id; a trace whose root has not arrived has none.
        let root = spans.iter().position(|span| span.parent_span_id.is_none());
        Trace { trace_id, spans, parents, children, root }
    }

    /// The parent of span `i`, if the trace holds it.
    pub fn parent(&self, i: usize) -> Option<usize> {
        self.parents[i]
    }

    /// The spans whose parent is span `i`, by start time.
    pub fn children(&self, i: usize) -> &[usize] {
        &self.children[i]
    }

    /// Whether span `ancestor` is above span `i` in the tree.
    pub fn is_ancestor(&self, ancestor: usize, i: usize) -> bool {
        let mut current = self.parents[i];
        // A malformed trace may hold a cycle of parent ids; the depth bound ends the walk.
        for _ in 0..self.spans.len() {
            match current {
                Some(p) if p == ancestor => return true,
                Some(p) => current = self.parents[p],
                None => return false,
            }
        }
        false
    }

    /// The root span (without a parent id), if it has arrived.
    pub fn root(&self) -> Option<usize> {
        self.root
    }

    /// The earliest span start.
    pub fn start_ns(&self) -> i64 {
        self.spans.iter().map(|s| s.start_ns).min().unwrap_or(0)
    }

    /// The latest span end.
    pub fn end_ns(&self) -> i64 {
        self.spans.iter().map(|s| s.end_ns).max().unwrap_or(0)
    }

    /// From the earliest start to the latest end, as Tempo's `trace:duration`.
    pub fn duration_ns(&self) -> i64 {
        self.end_ns().saturating_sub(self.start_ns())
    }

    /// The root span's service, if the root has arrived.
    pub fn root_service_name(&self) -> Option<&str> {
        self.root.map(|r| self.spans[r].service_name.as_str())
    }

    /// The root span's name, if the root has arrived.
    pub fn root_name(&self) -> Option<&str> {
        self.root.map(|r| self.spans[r].name.as_str())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A short name (up to 8 bytes) as a 16-digit span id.
    pub(crate) fn hex_id(short: &str) -> String {
        format!("{:0>16}", hex::encode(short))
    }

    /// A span for tests: `id` and `parent` are short names padded into hex ids.
    pub(crate) fn span(id: &str, parent: Option<&str>, service: &str, name: &str, start_ms: i64, end_ms: i64) -> Span {
        Span {
            trace_id: "0".repeat(32),
            span_id: hex_id(id),
            parent_span_id: parent.map(hex_id),
            trace_state: None,
            name: name.into(),
            kind: SpanKind::Internal,
            status: SpanStatus::Unset,
            status_message: None,
            start_ns: start_ms * 1_000_000,
            end_ns: end_ms * 1_000_000,
            flags: 0,
            service_name: service.into(),
            resource: BTreeMap::from([("service.name".to_string(), service.to_string())]),
            scope_name: None,
            scope_version: None,
            attributes: BTreeMap::new(),
            events: Vec::new(),
            links: Vec::new(),
        }
    }

    #[test]
    fn the_tree_is_built_from_parent_ids_and_duplicates_are_dropped() {
        let spans = vec![
            span("c", Some("b"), "db", "query", 20, 30),
            span("a", None, "web", "GET /", 0, 100),
            span("b", Some("a"), "api", "call", 10, 50),
            span("b", Some("a"), "api", "call", 10, 50),
            span("d", Some("a"), "api", "call2", 60, 70),
        ];
        let trace = Trace::new("0".repeat(32), spans);
        assert_eq!(trace.spans.len(), 4);
        let root = trace.root().unwrap();
        assert_eq!(trace.spans[root].name, "GET /");
        assert_eq!(trace.children(root).len(), 2);
        let c = trace.spans.iter().position(|s| s.name == "query").unwrap();
        assert!(trace.is_ancestor(root, c));
        assert!(!trace.is_ancestor(c, root));
        assert_eq!(trace.duration_ns(), 100_000_000);
        assert_eq!(trace.root_service_name(), Some("web"));
    }

    #[test]
    fn a_trace_without_its_root_still_has_its_spans() {
        let trace = Trace::new("0".repeat(32), vec![span("b", Some("a"), "api", "call", 10, 50)]);
        assert_eq!(trace.root(), None);
        assert_eq!(trace.parent(0), None);
        assert_eq!(trace.root_service_name(), None);
    }

    #[test]
    fn a_cycle_of_parent_ids_ends() {
        let trace = Trace::new(
            "0".repeat(32),
            vec![span("a", Some("b"), "x", "a", 0, 1), span("b", Some("a"), "x", "b", 0, 1)],
        );
        assert!(trace.is_ancestor(0, 1));
        assert!(trace.is_ancestor(0, 0));
    }
}
