//! Reading traces out of the `spans` table: whole traces by id, and the ids of candidate traces
//! for a search.
//!
//! A trace is always read whole, whatever time range a request names: its spans may have
//! arrived late and sit in other hour files, and TraceQL's structural operators and `trace:`
//! intrinsics need every span. Finding one trace needs no scan: `trace_id` has a bloom filter in
//! every Parquet file (see the storage writer), so a lookup opens only the row groups that may
//! hold the id, and the time range of a request only prunes further when the client gives one.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, AsArray, MapArray, RecordBatch, StringArray};
use arrow::datatypes::{TimestampNanosecondType, UInt32Type};
use serde_json::{Map as JsonMap, Value as Json};
use wake_storage::schema::{self, PROMOTED_RESOURCE_ATTRIBUTES};

use super::model::{Event, Link, Span, SpanKind, SpanStatus, Trace};
use crate::engine::QueryEngine;
use crate::error::{Error, Result};
use crate::loki::labels::quote;

/// The columns a span is rebuilt from, in the order [`spans_of_batch`] reads them.
const SPAN_COLUMNS: &str = "trace_id, span_id, parent_span_id, trace_state, name, kind, start_time, end_time, \
     status_code, status_message, flags, events, links, service_name, k8s_namespace_name, k8s_pod_name, \
     k8s_pod_uid, k8s_container_name, container_id, k8s_node_name, resource_attributes, scope_name, \
     scope_version, attributes";

/// Trace ids per `IN (…)` list: enough that a search loads its candidates in few scans, few
/// enough that each scan's bloom filter checks stay cheap.
pub(crate) const IDS_PER_LOAD: usize = 256;

/// A time range `[start_ns, end_ns)` a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start_ns: i64,
    pub end_ns: i64,
}

impl TimeRange {
    /// The SQL condition on `start_time`, padded by `pad_ns` either side.
    fn condition(self, pad_ns: i64) -> String {
        format!(
            "start_time >= '{}' AND start_time < '{}'",
            crate::json::format_timestamp_ns(self.start_ns.saturating_sub(pad_ns), true),
            crate::json::format_timestamp_ns(self.end_ns.saturating_add(pad_ns), true)
        )
    }
}

/// Spans of a trace may start this long before or after the range a by-id request names and
/// still be returned: a long trace's spans started before its root was found in the range.
const BY_ID_RANGE_PAD_NS: i64 = 3_600_000_000_000;

/// The whole traces with the given ids (lowercase hex), each with at most `max_spans` spans
/// (more is a limit error: a trace that large cannot be shown anyway). Traces with no spans in
/// the store are absent from the answer.
pub async fn load_traces(
    engine: &QueryEngine,
    trace_ids: &[String],
    range: Option<TimeRange>,
    max_spans: usize,
) -> Result<Vec<Trace>> {
    let mut spans_by_trace: HashMap<String, Vec<Span>> = HashMap::new();
    for chunk in trace_ids.chunks(IDS_PER_LOAD) {
        let ids: Vec<String> = chunk.iter().map(|id| quote(id)).collect();
        let mut sql = format!("SELECT {SPAN_COLUMNS} FROM spans WHERE trace_id IN ({})", ids.join(", "));
        if let Some(range) = range {
            sql.push_str(" AND ");
            sql.push_str(&range.condition(BY_ID_RANGE_PAD_NS));
        }
        let loaded = engine
            .sql_each(
                &sql,
                |_| Ok(HashMap::<String, Vec<Span>>::new()),
                move |by_trace, batch| {
                    for span in spans_of_batch(batch)? {
                        let spans = by_trace.entry(span.trace_id.clone()).or_default();
                        if spans.len() >= max_spans {
                            return Err(Error::Limit {
                                limit: "max_spans_per_trace",
                                message: format!(
                                    "trace {} has more than {max_spans} spans (query.max_spans_per_trace)",
                                    span.trace_id
                                ),
                            });
                        }
                        spans.push(span);
                    }
                    Ok(true)
                },
            )
            .await?;
        spans_by_trace.extend(loaded);
    }
    let mut traces: Vec<Trace> =
        spans_by_trace.into_iter().map(|(trace_id, spans)| Trace::new(trace_id, spans)).collect();
    traces.sort_by(|a, b| a.trace_id.cmp(&b.trace_id));
    Ok(traces)
}

/// The ids of traces with a span in `range` satisfying `condition` (SQL over `spans`), most
/// recently started first, at most `max` of them.
pub async fn candidate_trace_ids(
    engine: &QueryEngine,
    condition: Option<&str>,
    range: TimeRange,
    max: usize,
) -> Result<Vec<String>> {
    let filter = condition.map(|c| format!(" AND ({c})")).unwrap_or_default();
    let sql = format!(
        "SELECT trace_id, max(start_time) AS latest FROM spans WHERE {}{filter} \
         GROUP BY trace_id ORDER BY latest DESC, trace_id LIMIT {max}",
        range.condition(0)
    );
    engine
        .sql_each(
            &sql,
            |_| Ok(Vec::new()),
            |ids, batch| {
                let column = batch.column(0).as_string::<i32>();
                ids.extend(column.iter().flatten().map(str::to_string));
                Ok(true)
            },
        )
        .await
}

/// The first window a search reads back from the end of its range; each next one is twice as
/// long. A search for something common is answered from the most recent minutes, as Tempo
/// answers it from its newest blocks first, instead of ranking every match of the range.
const FIRST_WINDOW_NS: i64 = 15 * 60 * 1_000_000_000;

/// Candidate trace ids, most recent first, read from the end of the range backwards in
/// windows that double, only as far back as the caller needs.
pub struct RecentCandidates {
    condition: Option<String>,
    start_ns: i64,
    /// The end of the next window to read; the range is exhausted once it reaches `start_ns`.
    next_end_ns: i64,
    window_ns: i64,
    /// Ids read but not handed out yet, in order.
    pending: std::collections::VecDeque<String>,
    seen: std::collections::HashSet<String>,
    max: usize,
}

impl RecentCandidates {
    /// At most `max` ids of traces with a span in `range` satisfying `condition`.
    pub fn new(condition: Option<String>, range: TimeRange, max: usize) -> RecentCandidates {
        RecentCandidates {
            condition,
            start_ns: range.start_ns,
            next_end_ns: range.end_ns,
            window_ns: FIRST_WINDOW_NS,
            pending: Default::default(),
            seen: Default::default(),
            max,
        }
    }

    /// Up to `count` more ids; fewer only when the range holds no more (or `max` were read).
    pub async fn next(&mut self, engine: &QueryEngine, count: usize) -> Result<Vec<String>> {
        while self.pending.len() < count && self.next_end_ns > self.start_ns && self.seen.len() < self.max {
            let window = TimeRange {
                start_ns: self.next_end_ns.saturating_sub(self.window_ns).max(self.start_ns),
                end_ns: self.next_end_ns,
            };
            let remaining = self.max.saturating_sub(self.seen.len());
            // A trace with matching spans in two windows was first met in the later one,
            // which also holds its latest match: it keeps that place.
            for id in candidate_trace_ids(engine, self.condition.as_deref(), window, remaining).await? {
                if self.seen.insert(id.clone()) {
                    self.pending.push_back(id);
                }
            }
            self.next_end_ns = window.start_ns;
            self.window_ns = self.window_ns.saturating_mul(2);
        }
        let take = count.min(self.pending.len());
        Ok(self.pending.drain(..take).collect())
    }
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| Error::Task(format!("spans column {name} is missing or not text")))
}

fn text(array: &StringArray, row: usize) -> Option<String> {
    (!array.is_null(row)).then(|| array.value(row).to_string())
}

/// The entries of row `row` of a `Map<Utf8, Utf8>` column (NULL values left out).
fn map_entries(map: &MapArray, row: usize, into: &mut BTreeMap<String, String>) {
    if map.is_null(row) {
        return;
    }
    let entries = map.value(row);
    let (Some(keys), Some(values)) =
        (entries.column(0).as_string_opt::<i32>(), entries.column(1).as_string_opt::<i32>())
    else {
        return;
    };
    for i in 0..entries.len() {
        if !values.is_null(i) {
            into.insert(keys.value(i).to_string(), values.value(i).to_string());
        }
    }
}

fn json_objects(text: Option<&str>) -> Vec<JsonMap<String, Json>> {
    match text.and_then(|t| serde_json::from_str::<Json>(t).ok()) {
        Some(Json::Array(items)) => {
            items.into_iter().filter_map(|item| if let Json::Object(o) = item { Some(o) } else { None }).collect()
        }
        _ => Vec::new(),
    }
}

fn json_str(object: &JsonMap<String, Json>, key: &str) -> String {
    object.get(key).and_then(Json::as_str).unwrap_or_default().to_string()
}

fn json_attributes(object: &mut JsonMap<String, Json>) -> JsonMap<String, Json> {
    match object.remove("attributes") {
        Some(Json::Object(attributes)) => attributes,
        _ => JsonMap::new(),
    }
}

/// The spans of a batch of [`SPAN_COLUMNS`].
fn spans_of_batch(batch: &RecordBatch) -> Result<Vec<Span>> {
    let column =
        |name: &str| batch.column_by_name(name).ok_or_else(|| Error::Task(format!("spans column {name} is missing")));
    let trace_id = strings(batch, schema::TRACE_ID)?;
    let span_id = strings(batch, schema::SPAN_ID)?;
    let parent = strings(batch, schema::PARENT_SPAN_ID)?;
    let trace_state = strings(batch, schema::TRACE_STATE)?;
    let name = strings(batch, schema::NAME)?;
    let kind = strings(batch, schema::KIND)?;
    let start = column(schema::START_TIME)?.as_primitive::<TimestampNanosecondType>();
    let end = column(schema::END_TIME)?.as_primitive::<TimestampNanosecondType>();
    let status = strings(batch, schema::STATUS_CODE)?;
    let status_message = strings(batch, schema::STATUS_MESSAGE)?;
    let flags = column(schema::FLAGS)?.as_primitive::<UInt32Type>();
    let events = strings(batch, schema::EVENTS)?;
    let links = strings(batch, schema::LINKS)?;
    let promoted: Vec<(&str, &StringArray)> = PROMOTED_RESOURCE_ATTRIBUTES
        .iter()
        .map(|(attribute, column)| Ok((*attribute, strings(batch, column)?)))
        .collect::<Result<_>>()?;
    let resource = column(schema::RESOURCE_ATTRIBUTES)?.as_map();
    let scope_name = strings(batch, schema::SCOPE_NAME)?;
    let scope_version = strings(batch, schema::SCOPE_VERSION)?;
    let attributes = column(schema::ATTRIBUTES)?.as_map();

    let mut spans = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut resource_attributes = BTreeMap::new();
        map_entries(resource, row, &mut resource_attributes);
        for (attribute, values) in &promoted {
            if let Some(value) = text(values, row) {
                resource_attributes.insert((*attribute).to_string(), value);
            }
        }
        let service_name = resource_attributes.get("service.name").cloned().unwrap_or_else(|| "unknown_service".into());
        let mut span_attributes = BTreeMap::new();
        map_entries(attributes, row, &mut span_attributes);
        let events = json_objects(text(events, row).as_deref())
            .into_iter()
            .map(|mut event| Event {
                time_ns: event
                    .get("time_unix_nano")
                    .and_then(Json::as_u64)
                    .and_then(|t| i64::try_from(t).ok())
                    .unwrap_or(0),
                name: json_str(&event, "name"),
                attributes: json_attributes(&mut event),
            })
            .collect();
        let links = json_objects(text(links, row).as_deref())
            .into_iter()
            .map(|mut link| Link {
                trace_id: json_str(&link, "trace_id"),
                span_id: json_str(&link, "span_id"),
                trace_state: json_str(&link, "trace_state"),
                attributes: json_attributes(&mut link),
            })
            .collect();
        spans.push(Span {
            trace_id: trace_id.value(row).to_string(),
            span_id: span_id.value(row).to_string(),
            parent_span_id: text(parent, row),
            trace_state: text(trace_state, row),
            name: name.value(row).to_string(),
            kind: SpanKind::from_name(kind.value(row)),
            status: SpanStatus::from_name(status.value(row)),
            status_message: text(status_message, row),
            start_ns: start.value(row),
            end_ns: end.value(row),
            flags: flags.value(row),
            service_name,
            resource: resource_attributes,
            scope_name: text(scope_name, row),
            scope_version: text(scope_version, row),
            attributes: span_attributes,
            events,
            links,
        });
    }
    Ok(spans)
}
