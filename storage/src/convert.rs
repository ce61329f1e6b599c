//! OTLP requests to Arrow record batches in the fixed schemas of [`crate::schema`].
//!
//! Conversion is deterministic given the request and the time it was received, so replaying a
//! WAL entry produces exactly the rows that were acknowledged. Records that break an OTLP rule
//! (ids of the wrong length, metrics without a name) are counted as rejected and reported in
//! `partial_success`; the rest of the request is kept.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, MapBuilder, MapFieldNames,
    StringBuilder, TimestampNanosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{exponential_histogram_data_point, metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::{Map as JsonMap, Value as JsonValue};

use crate::error::Result;
use crate::schema::{LOG_IOSTREAM_ATTRIBUTE, PROMOTED_RESOURCE_ATTRIBUTES, Signal};

/// The rows of one request, and what was refused.
#[derive(Debug)]
pub struct Converted {
    pub batch: RecordBatch,
    pub rejected: u64,
    /// The first few reasons for rejections, for `partial_success.error_message`.
    pub error_message: String,
}

impl Converted {
    pub fn accepted(&self) -> u64 {
        self.batch.num_rows() as u64
    }
}

/// Rows below which a converted batch is copied into buffers of its exact size.
const SHRINK_BELOW_ROWS: usize = 4096;

/// A batch of few rows with buffers of its own size. The column builders start with room for
/// a thousand values each, so a one-record request converted into about 67 KB of buffers
/// (thirty-odd columns, maps included), which counted against `max_buffered_bytes` as such:
/// 2,000 such requests in a second filled the 128 MiB budget. Copying a small batch costs far
/// less than converting it did.
pub(crate) fn shrink_to_fit(batch: RecordBatch) -> Result<RecordBatch> {
    let rows = batch.num_rows();
    if rows >= SHRINK_BELOW_ROWS {
        return Ok(batch);
    }
    let indices = arrow::array::UInt32Array::from_iter_values(0..u32::try_from(rows).unwrap_or(u32::MAX));
    Ok(arrow::compute::take_record_batch(&batch, &indices)?)
}

/// Collects rejection reasons without letting a hostile request build a huge message.
#[derive(Default)]
struct Rejections {
    count: u64,
    message: String,
}

impl Rejections {
    const MAX_REASONS: u64 = 5;

    fn reject(&mut self, records: u64, reason: impl FnOnce() -> String) {
        if records == 0 {
            return;
        }
        if self.count < Self::MAX_REASONS || self.message.is_empty() {
            if !self.message.is_empty() {
                self.message.push_str("; ");
            }
            self.message.push_str(&reason());
        }
        self.count += records;
    }
}

// ---------------------------------------------------------------------------------------------
// The accepted time window

/// The times a record may carry relative to its receipt: older or further ahead is refused, so
/// that one request cannot scatter rows over thousands of hour partitions (and files), and a
/// clock far off on one sender does not fill the store with data no query will look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    /// How far back a record's time may lie (0: no bound).
    pub max_age_ns: i64,
    /// How far ahead a record's time may lie (0: no bound).
    pub max_future_ns: i64,
}

impl TimeWindow {
    pub const UNBOUNDED: TimeWindow = TimeWindow { max_age_ns: 0, max_future_ns: 0 };

    fn bounds(&self, received_at_ns: i64) -> (i64, i64) {
        let oldest = if self.max_age_ns == 0 { i64::MIN } else { received_at_ns.saturating_sub(self.max_age_ns) };
        let newest = if self.max_future_ns == 0 { i64::MAX } else { received_at_ns.saturating_add(self.max_future_ns) };
        (oldest, newest)
    }
}

/// Drops the rows of `converted` whose time (the signal's partitioning column) lies outside
/// `window` around `received_at_ns`, counting them as rejected. Deterministic given the receipt
/// time, which the WAL keeps, so replay drops exactly the same rows.
pub(crate) fn keep_within(
    mut converted: Converted,
    signal: Signal,
    window: TimeWindow,
    received_at_ns: i64,
) -> Result<Converted> {
    if window == TimeWindow::UNBOUNDED || converted.batch.num_rows() == 0 {
        return Ok(converted);
    }
    let (oldest, newest) = window.bounds(received_at_ns);
    let Some(times) = converted
        .batch
        .column_by_name(signal.time_column())
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::TimestampNanosecondArray>())
    else {
        return Ok(converted);
    };
    let keep: arrow::array::BooleanArray =
        times.iter().map(|time| Some(time.is_some_and(|t| (oldest..=newest).contains(&t)))).collect();
    let kept = keep.true_count();
    let dropped = converted.batch.num_rows() - kept;
    if dropped == 0 {
        return Ok(converted);
    }
    converted.batch = arrow::compute::filter_record_batch(&converted.batch, &keep)?;
    let mut rejections =
        Rejections { count: converted.rejected, message: std::mem::take(&mut converted.error_message) };
    rejections.reject(dropped as u64, || {
        format!(
            "{dropped} records have times outside the accepted window [{}, {}] (store.max_record_age_secs, store.max_record_future_secs)",
            rfc3339_seconds(oldest),
            rfc3339_seconds(newest)
        )
    });
    converted.rejected = rejections.count;
    converted.error_message = rejections.message;
    Ok(converted)
}

/// A nanosecond Unix time as RFC 3339 (UTC, seconds), for messages.
fn rfc3339_seconds(ns: i64) -> String {
    let seconds = ns.div_euclid(1_000_000_000);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = crate::writer::civil_from_days(seconds.div_euclid(86_400));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

// ---------------------------------------------------------------------------------------------
// Attribute values

/// The text form of an attribute value: strings as they are, scalars in their usual notation,
/// arrays and key-value lists as JSON, bytes as lowercase hex.
pub fn any_value_to_string(value: &AnyValue) -> Option<String> {
    match value.value.as_ref()? {
        any_value::Value::StringValue(text) => Some(text.clone()),
        any_value::Value::BoolValue(flag) => Some(flag.to_string()),
        any_value::Value::IntValue(number) => Some(number.to_string()),
        any_value::Value::DoubleValue(number) => Some(number.to_string()),
        any_value::Value::BytesValue(bytes) => Some(hex::encode(bytes)),
        // An index into a profiles dictionary: meaningless outside the profiles signal.
        any_value::Value::StringValueStrindex(_) => None,
        other @ (any_value::Value::ArrayValue(_) | any_value::Value::KvlistValue(_)) => {
            Some(json_of_value(Some(other)).to_string())
        }
    }
}

fn json_of_value(value: Option<&any_value::Value>) -> JsonValue {
    match value {
        None | Some(any_value::Value::StringValueStrindex(_)) => JsonValue::Null,
        Some(any_value::Value::StringValue(text)) => JsonValue::String(text.clone()),
        Some(any_value::Value::BoolValue(flag)) => JsonValue::Bool(*flag),
        Some(any_value::Value::IntValue(number)) => JsonValue::from(*number),
        Some(any_value::Value::DoubleValue(number)) => serde_json::Number::from_f64(*number)
            .map(JsonValue::Number)
            .unwrap_or_else(|| JsonValue::String(number.to_string())),
        Some(any_value::Value::BytesValue(bytes)) => JsonValue::String(hex::encode(bytes)),
        Some(any_value::Value::ArrayValue(array)) => {
            JsonValue::Array(array.values.iter().map(|item| json_of_value(item.value.as_ref())).collect())
        }
        Some(any_value::Value::KvlistValue(list)) => JsonValue::Object(json_of_attributes(&list.values)),
    }
}

fn json_of_attributes(attributes: &[KeyValue]) -> JsonMap<String, JsonValue> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), json_of_value(kv.value.as_ref().and_then(|v| v.value.as_ref()))))
        .collect()
}

fn attribute_string(kv: &KeyValue) -> Option<String> {
    kv.value.as_ref().and_then(any_value_to_string)
}

// ---------------------------------------------------------------------------------------------
// Columns every table shares: the promoted identity, resource, scope and record attributes.

type AttributeMapBuilder = MapBuilder<StringBuilder, StringBuilder>;

fn attribute_map_builder() -> AttributeMapBuilder {
    let names = MapFieldNames { entry: "entries".to_string(), key: "keys".to_string(), value: "values".to_string() };
    MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new())
}

fn append_attributes<'a>(
    builder: &mut AttributeMapBuilder,
    attributes: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<()> {
    for (key, value) in attributes {
        builder.keys().append_value(key);
        builder.values().append_option(value);
    }
    builder.append(true)?;
    Ok(())
}

/// A resource's attributes split once into the promoted identity and the rest.
struct ResourceView {
    promoted: [Option<String>; PROMOTED_RESOURCE_ATTRIBUTES.len()],
    rest: Vec<(String, Option<String>)>,
}

impl ResourceView {
    fn new(resource: Option<&Resource>) -> Self {
        let mut promoted: [Option<String>; PROMOTED_RESOURCE_ATTRIBUTES.len()] = Default::default();
        let mut rest = Vec::new();
        for kv in resource.map(|r| r.attributes.as_slice()).unwrap_or_default() {
            match PROMOTED_RESOURCE_ATTRIBUTES.iter().position(|(key, _)| *key == kv.key) {
                Some(slot) => promoted[slot] = attribute_string(kv),
                None => rest.push((kv.key.clone(), attribute_string(kv))),
            }
        }
        ResourceView { promoted, rest }
    }
}

struct ScopeView {
    name: Option<String>,
    version: Option<String>,
    attributes: Vec<(String, Option<String>)>,
}

impl ScopeView {
    fn new(scope: Option<&InstrumentationScope>) -> Self {
        let non_empty = |text: &str| (!text.is_empty()).then(|| text.to_string());
        ScopeView {
            name: scope.and_then(|s| non_empty(&s.name)),
            version: scope.and_then(|s| non_empty(&s.version)),
            attributes: scope
                .map(|s| s.attributes.iter().map(|kv| (kv.key.clone(), attribute_string(kv))).collect())
                .unwrap_or_default(),
        }
    }
}

struct SharedColumns {
    promoted: Vec<StringBuilder>,
    resource_attributes: AttributeMapBuilder,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    scope_attributes: AttributeMapBuilder,
    attributes: AttributeMapBuilder,
}

impl SharedColumns {
    fn new() -> Self {
        SharedColumns {
            promoted: (0..PROMOTED_RESOURCE_ATTRIBUTES.len()).map(|_| StringBuilder::new()).collect(),
            resource_attributes: attribute_map_builder(),
            scope_name: StringBuilder::new(),
            scope_version: StringBuilder::new(),
            scope_attributes: attribute_map_builder(),
            attributes: attribute_map_builder(),
        }
    }

    /// Appends one row's identity and attributes; `skip_key` is a record attribute promoted
    /// to a column of the table's own (and so left out of the map).
    fn append(
        &mut self,
        resource: &ResourceView,
        scope: &ScopeView,
        record_attributes: &[KeyValue],
        skip_key: Option<&str>,
    ) -> Result<()> {
        for (builder, value) in self.promoted.iter_mut().zip(resource.promoted.iter()) {
            builder.append_option(value.as_deref());
        }
        append_attributes(
            &mut self.resource_attributes,
            resource.rest.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
        )?;
        self.scope_name.append_option(scope.name.as_deref());
        self.scope_version.append_option(scope.version.as_deref());
        append_attributes(
            &mut self.scope_attributes,
            scope.attributes.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
        )?;
        let values: Vec<(&str, Option<String>)> = record_attributes
            .iter()
            .filter(|kv| Some(kv.key.as_str()) != skip_key)
            .map(|kv| (kv.key.as_str(), attribute_string(kv)))
            .collect();
        append_attributes(&mut self.attributes, values.iter().map(|(k, v)| (*k, v.as_deref())))?;
        Ok(())
    }

    fn finish_identity(&mut self, columns: &mut Vec<ArrayRef>) {
        for builder in &mut self.promoted {
            columns.push(Arc::new(builder.finish()));
        }
    }

    fn finish_attributes(&mut self, columns: &mut Vec<ArrayRef>) {
        columns.push(Arc::new(self.resource_attributes.finish()));
        columns.push(Arc::new(self.scope_name.finish()));
        columns.push(Arc::new(self.scope_version.finish()));
        columns.push(Arc::new(self.scope_attributes.finish()));
        columns.push(Arc::new(self.attributes.finish()));
    }
}

fn nanos(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn hex_id(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty()).then(|| hex::encode(bytes))
}

// ---------------------------------------------------------------------------------------------
// Logs

pub(crate) fn logs_to_batch(request: &ExportLogsServiceRequest, received_at_ns: i64) -> Result<Converted> {
    let mut timestamp = TimestampNanosecondBuilder::new();
    let mut observed = TimestampNanosecondBuilder::new();
    let mut severity_number = Int32Builder::new();
    let mut severity_text = StringBuilder::new();
    let mut body = StringBuilder::new();
    let mut trace_id = StringBuilder::new();
    let mut span_id = StringBuilder::new();
    let mut flags = UInt32Builder::new();
    let mut event_name = StringBuilder::new();
    let mut iostream = StringBuilder::new();
    let mut shared = SharedColumns::new();
    let mut rejections = Rejections::default();

    for resource_logs in &request.resource_logs {
        let resource = ResourceView::new(resource_logs.resource.as_ref());
        for scope_logs in &resource_logs.scope_logs {
            let scope = ScopeView::new(scope_logs.scope.as_ref());
            for record in &scope_logs.log_records {
                if !(record.trace_id.is_empty() || record.trace_id.len() == 16) {
                    rejections.reject(1, || {
                        format!("log record with a trace_id of {} bytes (must be 16)", record.trace_id.len())
                    });
                    continue;
                }
                if !(record.span_id.is_empty() || record.span_id.len() == 8) {
                    rejections.reject(1, || {
                        format!("log record with a span_id of {} bytes (must be 8)", record.span_id.len())
                    });
                    continue;
                }
                // OTLP: time_unix_nano is optional; the observed time stands in for it, and the
                // time of receipt for both.
                let observed_ns = match record.observed_time_unix_nano {
                    0 => received_at_ns,
                    value => nanos(value),
                };
                let event_ns = match record.time_unix_nano {
                    0 => observed_ns,
                    value => nanos(value),
                };
                timestamp.append_value(event_ns);
                observed.append_value(observed_ns);
                severity_number.append_value(record.severity_number);
                severity_text.append_option((!record.severity_text.is_empty()).then_some(&record.severity_text));
                body.append_option(record.body.as_ref().and_then(any_value_to_string));
                trace_id.append_option(hex_id(&record.trace_id));
                span_id.append_option(hex_id(&record.span_id));
                flags.append_value(record.flags);
                event_name.append_option((!record.event_name.is_empty()).then_some(&record.event_name));
                iostream.append_option(
                    record.attributes.iter().find(|kv| kv.key == LOG_IOSTREAM_ATTRIBUTE).and_then(attribute_string),
                );
                shared.append(&resource, &scope, &record.attributes, Some(LOG_IOSTREAM_ATTRIBUTE))?;
            }
        }
    }

    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(timestamp.finish().with_timezone("UTC")),
        Arc::new(observed.finish().with_timezone("UTC")),
        Arc::new(severity_number.finish()),
        Arc::new(severity_text.finish()),
        Arc::new(body.finish()),
        Arc::new(trace_id.finish()),
        Arc::new(span_id.finish()),
        Arc::new(flags.finish()),
        Arc::new(event_name.finish()),
    ];
    shared.finish_identity(&mut columns);
    columns.push(Arc::new(iostream.finish()));
    shared.finish_attributes(&mut columns);
    finish(Signal::Logs, columns, rejections)
}

fn finish(signal: Signal, columns: Vec<ArrayRef>, rejections: Rejections) -> Result<Converted> {
    let batch = RecordBatch::try_new(signal.schema(), columns)?;
    Ok(Converted { batch, rejected: rejections.count, error_message: rejections.message })
}

// ---------------------------------------------------------------------------------------------
// Spans

fn span_kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn status_code_name(code: i32) -> &'static str {
    match code {
        1 => "ok",
        2 => "error",
        _ => "unset",
    }
}

pub(crate) fn spans_to_batch(request: &ExportTraceServiceRequest) -> Result<Converted> {
    let mut trace_id = StringBuilder::new();
    let mut span_id = StringBuilder::new();
    let mut parent_span_id = StringBuilder::new();
    let mut trace_state = StringBuilder::new();
    let mut name = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut start_time = TimestampNanosecondBuilder::new();
    let mut end_time = TimestampNanosecondBuilder::new();
    let mut duration = Int64Builder::new();
    let mut status_code = StringBuilder::new();
    let mut status_message = StringBuilder::new();
    let mut flags = UInt32Builder::new();
    let mut events = StringBuilder::new();
    let mut links = StringBuilder::new();
    let mut shared = SharedColumns::new();
    let mut rejections = Rejections::default();

    for resource_spans in &request.resource_spans {
        let resource = ResourceView::new(resource_spans.resource.as_ref());
        for scope_spans in &resource_spans.scope_spans {
            let scope = ScopeView::new(scope_spans.scope.as_ref());
            for span in &scope_spans.spans {
                if span.trace_id.len() != 16 || span.span_id.len() != 8 {
                    rejections.reject(1, || {
                        format!(
                            "span {:?} with a trace_id of {} bytes and a span_id of {} bytes (must be 16 and 8)",
                            span.name,
                            span.trace_id.len(),
                            span.span_id.len()
                        )
                    });
                    continue;
                }
                if !(span.parent_span_id.is_empty() || span.parent_span_id.len() == 8) {
                    rejections.reject(1, || {
                        format!(
                            "span {:?} with a parent_span_id of {} bytes (must be 8)",
                            span.name,
                            span.parent_span_id.len()
                        )
                    });
                    continue;
                }
                let start_ns = nanos(span.start_time_unix_nano);
                let end_ns = nanos(span.end_time_unix_nano);
                trace_id.append_value(hex::encode(&span.trace_id));
                span_id.append_value(hex::encode(&span.span_id));
                parent_span_id.append_option(hex_id(&span.parent_span_id));
                trace_state.append_option((!span.trace_state.is_empty()).then_some(&span.trace_state));
                name.append_value(&span.name);
                kind.append_value(span_kind_name(span.kind));
                start_time.append_value(start_ns);
                end_time.append_value(end_ns);
                duration.append_value(end_ns.saturating_sub(start_ns));
                let status = span.status.as_ref();
                status_code.append_value(status_code_name(status.map_or(0, |s| s.code)));
                status_message.append_option(status.map(|s| s.message.as_str()).filter(|m| !m.is_empty()));
                flags.append_value(span.flags);
                events.append_option((!span.events.is_empty()).then(|| {
                    let list: Vec<JsonValue> = span
                        .events
                        .iter()
                        .map(|event| {
                            serde_json::json!({
                                "time_unix_nano": event.time_unix_nano,
                                "name": event.name,
                                "attributes": json_of_attributes(&event.attributes),
                            })
                        })
                        .collect();
                    JsonValue::Array(list).to_string()
                }));
                links.append_option((!span.links.is_empty()).then(|| {
                    let list: Vec<JsonValue> = span
                        .links
                        .iter()
                        .map(|link| {
                            serde_json::json!({
                                "trace_id": hex::encode(&link.trace_id),
                                "span_id": hex::encode(&link.span_id),
                                "trace_state": link.trace_state,
                                "attributes": json_of_attributes(&link.attributes),
                            })
                        })
                        .collect();
                    JsonValue::Array(list).to_string()
                }));
                shared.append(&resource, &scope, &span.attributes, None)?;
            }
        }
    }

    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(trace_id.finish()),
        Arc::new(span_id.finish()),
        Arc::new(parent_span_id.finish()),
        Arc::new(trace_state.finish()),
        Arc::new(name.finish()),
        Arc::new(kind.finish()),
        Arc::new(start_time.finish().with_timezone("UTC")),
        Arc::new(end_time.finish().with_timezone("UTC")),
        Arc::new(duration.finish()),
        Arc::new(status_code.finish()),
        Arc::new(status_message.finish()),
        Arc::new(flags.finish()),
        Arc::new(events.finish()),
        Arc::new(links.finish()),
    ];
    shared.finish_identity(&mut columns);
    shared.finish_attributes(&mut columns);
    finish(Signal::Spans, columns, rejections)
}

// ---------------------------------------------------------------------------------------------
// Metrics: one row per data point.

struct MetricColumns {
    metric_name: StringBuilder,
    description: StringBuilder,
    metric_type: StringBuilder,
    unit: StringBuilder,
    temporality: StringBuilder,
    is_monotonic: BooleanBuilder,
    timestamp: TimestampNanosecondBuilder,
    start_timestamp: TimestampNanosecondBuilder,
    value: Float64Builder,
    count: UInt64Builder,
    sum: Float64Builder,
    min: Float64Builder,
    max: Float64Builder,
    explicit_bounds: ListBuilder<Float64Builder>,
    bucket_counts: ListBuilder<UInt64Builder>,
    exp_scale: Int32Builder,
    exp_zero_count: UInt64Builder,
    exp_zero_threshold: Float64Builder,
    exp_positive_offset: Int32Builder,
    exp_positive_bucket_counts: ListBuilder<UInt64Builder>,
    exp_negative_offset: Int32Builder,
    exp_negative_bucket_counts: ListBuilder<UInt64Builder>,
    quantiles: ListBuilder<Float64Builder>,
    quantile_values: ListBuilder<Float64Builder>,
    flags: UInt32Builder,
    shared: SharedColumns,
}

/// What differs between the point types; every other column of the row is null.
#[derive(Default)]
struct PointValues<'a> {
    value: Option<f64>,
    count: Option<u64>,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    explicit_bounds: Option<&'a [f64]>,
    bucket_counts: Option<&'a [u64]>,
    exponential: Option<ExponentialValues<'a>>,
    quantiles: Option<(Vec<f64>, Vec<f64>)>,
}

struct ExponentialValues<'a> {
    scale: i32,
    zero_count: u64,
    zero_threshold: f64,
    positive: Option<(i32, &'a [u64])>,
    negative: Option<(i32, &'a [u64])>,
}

/// The metric-level columns of a row.
struct MetricView<'a> {
    name: &'a str,
    description: &'a str,
    unit: &'a str,
    metric_type: &'static str,
    temporality: Option<&'static str>,
    is_monotonic: Option<bool>,
}

struct PointCommon<'a> {
    time_unix_nano: u64,
    start_time_unix_nano: u64,
    flags: u32,
    attributes: &'a [KeyValue],
}

fn temporality_name(value: i32) -> Option<&'static str> {
    match value {
        1 => Some("delta"),
        2 => Some("cumulative"),
        _ => None,
    }
}

fn append_list<B, T>(builder: &mut ListBuilder<B>, items: Option<&[T]>)
where
    B: arrow::array::ArrayBuilder + Extend<Option<T>>,
    T: Copy,
{
    match items {
        Some(items) => {
            builder.values().extend(items.iter().map(|item| Some(*item)));
            builder.append(true);
        }
        None => builder.append(false),
    }
}

impl MetricColumns {
    fn new() -> Self {
        MetricColumns {
            metric_name: StringBuilder::new(),
            description: StringBuilder::new(),
            metric_type: StringBuilder::new(),
            unit: StringBuilder::new(),
            temporality: StringBuilder::new(),
            is_monotonic: BooleanBuilder::new(),
            timestamp: TimestampNanosecondBuilder::new(),
            start_timestamp: TimestampNanosecondBuilder::new(),
            value: Float64Builder::new(),
            count: UInt64Builder::new(),
            sum: Float64Builder::new(),
            min: Float64Builder::new(),
            max: Float64Builder::new(),
            explicit_bounds: ListBuilder::new(Float64Builder::new()),
            bucket_counts: ListBuilder::new(UInt64Builder::new()),
            exp_scale: Int32Builder::new(),
            exp_zero_count: UInt64Builder::new(),
            exp_zero_threshold: Float64Builder::new(),
            exp_positive_offset: Int32Builder::new(),
            exp_positive_bucket_counts: ListBuilder::new(UInt64Builder::new()),
            exp_negative_offset: Int32Builder::new(),
            exp_negative_bucket_counts: ListBuilder::new(UInt64Builder::new()),
            quantiles: ListBuilder::new(Float64Builder::new()),
            quantile_values: ListBuilder::new(Float64Builder::new()),
            flags: UInt32Builder::new(),
            shared: SharedColumns::new(),
        }
    }

    fn append(
        &mut self,
        resource: &ResourceView,
        scope: &ScopeView,
        metric: &MetricView<'_>,
        point: PointCommon<'_>,
        values: PointValues<'_>,
        received_at_ns: i64,
    ) -> Result<()> {
        let non_empty = |text: &'_ str| (!text.is_empty()).then(|| text.to_string());
        self.metric_name.append_value(metric.name);
        self.description.append_option(non_empty(metric.description));
        self.metric_type.append_value(metric.metric_type);
        self.unit.append_option(non_empty(metric.unit));
        self.temporality.append_option(metric.temporality);
        self.is_monotonic.append_option(metric.is_monotonic);
        self.timestamp.append_value(match point.time_unix_nano {
            0 => received_at_ns,
            value => nanos(value),
        });
        self.start_timestamp
            .append_option((point.start_time_unix_nano != 0).then(|| nanos(point.start_time_unix_nano)));
        self.value.append_option(values.value);
        self.count.append_option(values.count);
        self.sum.append_option(values.sum);
        self.min.append_option(values.min);
        self.max.append_option(values.max);
        append_list(&mut self.explicit_bounds, values.explicit_bounds);
        append_list(&mut self.bucket_counts, values.bucket_counts);
        let exponential = values.exponential.as_ref();
        self.exp_scale.append_option(exponential.map(|e| e.scale));
        self.exp_zero_count.append_option(exponential.map(|e| e.zero_count));
        self.exp_zero_threshold.append_option(exponential.map(|e| e.zero_threshold));
        let positive = exponential.map(|e| e.positive.unwrap_or((0, &[])));
        let negative = exponential.map(|e| e.negative.unwrap_or((0, &[])));
        self.exp_positive_offset.append_option(positive.map(|(offset, _)| offset));
        append_list(&mut self.exp_positive_bucket_counts, positive.map(|(_, counts)| counts));
        self.exp_negative_offset.append_option(negative.map(|(offset, _)| offset));
        append_list(&mut self.exp_negative_bucket_counts, negative.map(|(_, counts)| counts));
        let (quantiles, quantile_values) = match &values.quantiles {
            Some((q, v)) => (Some(q.as_slice()), Some(v.as_slice())),
            None => (None, None),
        };
        append_list(&mut self.quantiles, quantiles);
        append_list(&mut self.quantile_values, quantile_values);
        self.flags.append_value(point.flags);
        self.shared.append(resource, scope, point.attributes, None)
    }

    fn finish(mut self, rejections: Rejections) -> Result<Converted> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.metric_name.finish()),
            Arc::new(self.description.finish()),
            Arc::new(self.metric_type.finish()),
            Arc::new(self.unit.finish()),
            Arc::new(self.temporality.finish()),
            Arc::new(self.is_monotonic.finish()),
            Arc::new(self.timestamp.finish().with_timezone("UTC")),
            Arc::new(self.start_timestamp.finish().with_timezone("UTC")),
            Arc::new(self.value.finish()),
            Arc::new(self.count.finish()),
            Arc::new(self.sum.finish()),
            Arc::new(self.min.finish()),
            Arc::new(self.max.finish()),
            Arc::new(self.explicit_bounds.finish()),
            Arc::new(self.bucket_counts.finish()),
            Arc::new(self.exp_scale.finish()),
            Arc::new(self.exp_zero_count.finish()),
            Arc::new(self.exp_zero_threshold.finish()),
            Arc::new(self.exp_positive_offset.finish()),
            Arc::new(self.exp_positive_bucket_counts.finish()),
            Arc::new(self.exp_negative_offset.finish()),
            Arc::new(self.exp_negative_bucket_counts.finish()),
            Arc::new(self.quantiles.finish()),
            Arc::new(self.quantile_values.finish()),
            Arc::new(self.flags.finish()),
        ];
        self.shared.finish_identity(&mut columns);
        self.shared.finish_attributes(&mut columns);
        let columns = crate::series::with_series_ids(&Signal::Metrics.schema(), columns)?;
        finish(Signal::Metrics, columns, rejections)
    }
}

fn point_count(data: &metric::Data) -> u64 {
    (match data {
        metric::Data::Gauge(g) => g.data_points.len(),
        metric::Data::Sum(s) => s.data_points.len(),
        metric::Data::Histogram(h) => h.data_points.len(),
        metric::Data::ExponentialHistogram(e) => e.data_points.len(),
        metric::Data::Summary(s) => s.data_points.len(),
    }) as u64
}

pub(crate) fn metrics_to_batch(request: &ExportMetricsServiceRequest, received_at_ns: i64) -> Result<Converted> {
    let mut columns = MetricColumns::new();
    let mut rejections = Rejections::default();

    for resource_metrics in &request.resource_metrics {
        let resource = ResourceView::new(resource_metrics.resource.as_ref());
        for scope_metrics in &resource_metrics.scope_metrics {
            let scope = ScopeView::new(scope_metrics.scope.as_ref());
            for metric in &scope_metrics.metrics {
                let Some(data) = metric.data.as_ref() else {
                    continue;
                };
                if metric.name.is_empty() {
                    rejections.reject(point_count(data), || "metric without a name".to_string());
                    continue;
                }
                let view = |metric_type, temporality: Option<i32>, is_monotonic| MetricView {
                    name: &metric.name,
                    description: &metric.description,
                    unit: &metric.unit,
                    metric_type,
                    temporality: temporality.and_then(temporality_name),
                    is_monotonic,
                };
                match data {
                    metric::Data::Gauge(gauge) => {
                        let view = view("gauge", None, None);
                        for point in &gauge.data_points {
                            let common = PointCommon {
                                time_unix_nano: point.time_unix_nano,
                                start_time_unix_nano: point.start_time_unix_nano,
                                flags: point.flags,
                                attributes: &point.attributes,
                            };
                            let values = PointValues { value: number_value(point.value), ..Default::default() };
                            columns.append(&resource, &scope, &view, common, values, received_at_ns)?;
                        }
                    }
                    metric::Data::Sum(sum) => {
                        let view = view("sum", Some(sum.aggregation_temporality), Some(sum.is_monotonic));
                        for point in &sum.data_points {
                            let common = PointCommon {
                                time_unix_nano: point.time_unix_nano,
                                start_time_unix_nano: point.start_time_unix_nano,
                                flags: point.flags,
                                attributes: &point.attributes,
                            };
                            let values = PointValues { value: number_value(point.value), ..Default::default() };
                            columns.append(&resource, &scope, &view, common, values, received_at_ns)?;
                        }
                    }
                    metric::Data::Histogram(histogram) => {
                        let view = view("histogram", Some(histogram.aggregation_temporality), None);
                        for point in &histogram.data_points {
                            // OTLP: bucket_counts has one more entry than explicit_bounds, or none.
                            if !point.bucket_counts.is_empty()
                                && point.bucket_counts.len() != point.explicit_bounds.len() + 1
                            {
                                rejections.reject(1, || {
                                    format!(
                                        "histogram {:?} point with {} bucket counts for {} bounds",
                                        metric.name,
                                        point.bucket_counts.len(),
                                        point.explicit_bounds.len()
                                    )
                                });
                                continue;
                            }
                            let common = PointCommon {
                                time_unix_nano: point.time_unix_nano,
                                start_time_unix_nano: point.start_time_unix_nano,
                                flags: point.flags,
                                attributes: &point.attributes,
                            };
                            let values = PointValues {
                                count: Some(point.count),
                                sum: point.sum,
                                min: point.min,
                                max: point.max,
                                explicit_bounds: Some(&point.explicit_bounds),
                                bucket_counts: Some(&point.bucket_counts),
                                ..Default::default()
                            };
                            columns.append(&resource, &scope, &view, common, values, received_at_ns)?;
                        }
                    }
                    metric::Data::ExponentialHistogram(histogram) => {
                        let view = view("exponential_histogram", Some(histogram.aggregation_temporality), None);
                        for point in &histogram.data_points {
                            let common = PointCommon {
                                time_unix_nano: point.time_unix_nano,
                                start_time_unix_nano: point.start_time_unix_nano,
                                flags: point.flags,
                                attributes: &point.attributes,
                            };
                            let values = PointValues {
                                count: Some(point.count),
                                sum: point.sum,
                                min: point.min,
                                max: point.max,
                                exponential: Some(ExponentialValues {
                                    scale: point.scale,
                                    zero_count: point.zero_count,
                                    zero_threshold: point.zero_threshold,
                                    positive: exponential_buckets(&point.positive),
                                    negative: exponential_buckets(&point.negative),
                                }),
                                ..Default::default()
                            };
                            columns.append(&resource, &scope, &view, common, values, received_at_ns)?;
                        }
                    }
                    metric::Data::Summary(summary) => {
                        let view = view("summary", None, None);
                        for point in &summary.data_points {
                            let common = PointCommon {
                                time_unix_nano: point.time_unix_nano,
                                start_time_unix_nano: point.start_time_unix_nano,
                                flags: point.flags,
                                attributes: &point.attributes,
                            };
                            let values = PointValues {
                                count: Some(point.count),
                                sum: Some(point.sum),
                                quantiles: Some((
                                    point.quantile_values.iter().map(|q| q.quantile).collect(),
                                    point.quantile_values.iter().map(|q| q.value).collect(),
                                )),
                                ..Default::default()
                            };
                            columns.append(&resource, &scope, &view, common, values, received_at_ns)?;
                        }
                    }
                }
            }
        }
    }
    columns.finish(rejections)
}

fn exponential_buckets(buckets: &Option<exponential_histogram_data_point::Buckets>) -> Option<(i32, &[u64])> {
    buckets.as_ref().map(|b| (b.offset, b.bucket_counts.as_slice()))
}

fn number_value(value: Option<number_data_point::Value>) -> Option<f64> {
    match value? {
        number_data_point::Value::AsDouble(number) => Some(number),
        number_data_point::Value::AsInt(number) => Some(number as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, MapArray};
    use arrow::datatypes::{Float64Type, TimestampNanosecondType, UInt64Type};
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, Summary, SummaryDataPoint,
        summary_data_point::ValueAtQuantile,
    };

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    fn text(value: &str) -> any_value::Value {
        any_value::Value::StringValue(value.into())
    }

    fn resource(attributes: Vec<KeyValue>) -> Option<Resource> {
        Some(Resource { attributes, ..Default::default() })
    }

    fn map_entries(map: &MapArray, row: usize) -> Vec<(String, Option<String>)> {
        let entries = map.value(row);
        let keys = entries.column(0).as_string::<i32>();
        let values = entries.column(1).as_string::<i32>();
        (0..entries.len())
            .map(|i| (keys.value(i).to_string(), values.is_valid(i).then(|| values.value(i).to_string())))
            .collect()
    }

    #[test]
    fn a_one_record_batch_takes_the_memory_of_one_record() {
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource(vec![kv("k8s.namespace.name", text("shop"))]),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        time_unix_nano: 1_795_305_600_000_000_000,
                        body: Some(AnyValue { value: Some(text("one line")) }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let converted = logs_to_batch(&request, 1_795_305_600_000_000_000).unwrap();
        let built = converted.batch.get_array_memory_size();
        let shrunk = shrink_to_fit(converted.batch.clone()).unwrap();
        assert_eq!(shrunk, converted.batch);
        // The builders' initial room for a thousand values each is gone.
        assert!(built > 30_000, "as built: {built} bytes");
        assert!(shrunk.get_array_memory_size() < 8_000, "shrunk: {} bytes", shrunk.get_array_memory_size());
    }

    #[test]
    fn logs_promote_identity_and_keep_other_attributes() {
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource(vec![
                    kv("service.name", text("checkout")),
                    kv("k8s.namespace.name", text("shop")),
                    kv("host.arch", text("amd64")),
                ]),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        time_unix_nano: 5,
                        severity_number: 17,
                        severity_text: "ERROR".into(),
                        body: Some(AnyValue { value: Some(text("boom")) }),
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        attributes: vec![
                            kv("log.iostream", text("stderr")),
                            kv("retries", any_value::Value::IntValue(3)),
                            kv("ok", any_value::Value::BoolValue(false)),
                            kv(
                                "list",
                                any_value::Value::ArrayValue(ArrayValue {
                                    values: vec![AnyValue { value: Some(text("a")) }],
                                }),
                            ),
                            kv(
                                "nested",
                                any_value::Value::KvlistValue(KeyValueList {
                                    values: vec![kv("x", any_value::Value::DoubleValue(1.5))],
                                }),
                            ),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let converted = logs_to_batch(&request, 99).unwrap();
        let batch = &converted.batch;
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(converted.rejected, 0);
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        assert_eq!(column("timestamp").as_primitive::<TimestampNanosecondType>().value(0), 5);
        assert_eq!(column("observed_timestamp").as_primitive::<TimestampNanosecondType>().value(0), 99);
        assert_eq!(column("body").as_string::<i32>().value(0), "boom");
        assert_eq!(column("trace_id").as_string::<i32>().value(0), "01".repeat(16));
        assert_eq!(column("span_id").as_string::<i32>().value(0), "02".repeat(8));
        assert_eq!(column("service_name").as_string::<i32>().value(0), "checkout");
        assert_eq!(column("k8s_namespace_name").as_string::<i32>().value(0), "shop");
        assert!(column("k8s_pod_name").is_null(0));
        assert_eq!(column("log_iostream").as_string::<i32>().value(0), "stderr");
        let resource_map = column("resource_attributes");
        assert_eq!(map_entries(resource_map.as_map(), 0), vec![("host.arch".to_string(), Some("amd64".to_string()))]);
        let attributes = column("attributes");
        assert_eq!(
            map_entries(attributes.as_map(), 0),
            vec![
                ("retries".to_string(), Some("3".to_string())),
                ("ok".to_string(), Some("false".to_string())),
                ("list".to_string(), Some(r#"["a"]"#.to_string())),
                ("nested".to_string(), Some(r#"{"x":1.5}"#.to_string())),
            ]
        );
    }

    #[test]
    fn records_outside_the_time_window_are_rejected_and_the_rest_kept() {
        let hour = 3_600_000_000_000i64;
        let received = 1_000 * hour;
        let at = |ns: i64| LogRecord {
            time_unix_nano: u64::try_from(ns).unwrap(),
            body: Some(AnyValue { value: Some(text("x")) }),
            ..Default::default()
        };
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        at(received - 25 * hour),
                        at(received - hour),
                        at(received),
                        at(received + 2 * hour),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let window = TimeWindow { max_age_ns: 24 * hour, max_future_ns: hour };
        let converted =
            keep_within(logs_to_batch(&request, received).unwrap(), Signal::Logs, window, received).unwrap();
        assert_eq!((converted.accepted(), converted.rejected), (2, 2));
        assert!(
            converted.error_message.contains("2 records have times outside the accepted window"),
            "{}",
            converted.error_message
        );
        assert!(
            converted.error_message.contains("[1970-02-10T16:00:00Z, 1970-02-11T17:00:00Z]"),
            "{}",
            converted.error_message
        );
        let unbounded =
            keep_within(logs_to_batch(&request, received).unwrap(), Signal::Logs, TimeWindow::UNBOUNDED, received);
        assert_eq!(unbounded.unwrap().accepted(), 4);
        // Year 2262 and the days before 1970 in the message's calendar.
        assert_eq!(rfc3339_seconds(9_223_372_036_000_000_000), "2262-04-11T23:47:16Z");
        assert_eq!(rfc3339_seconds(-86_400_000_000_000), "1969-12-31T00:00:00Z");
    }

    #[test]
    fn logs_with_bad_ids_are_rejected_and_the_rest_kept() {
        let good = LogRecord { body: Some(AnyValue { value: Some(text("ok")) }), ..Default::default() };
        let bad = LogRecord { trace_id: vec![1; 3], ..Default::default() };
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs { log_records: vec![good.clone(), bad, good], ..Default::default() }],
                ..Default::default()
            }],
        };
        let converted = logs_to_batch(&request, 1).unwrap();
        assert_eq!(converted.accepted(), 2);
        assert_eq!(converted.rejected, 1);
        assert!(converted.error_message.contains("trace_id of 3 bytes"), "{}", converted.error_message);
        let timestamps = converted.batch.column_by_name("timestamp").unwrap();
        assert_eq!(timestamps.as_primitive::<TimestampNanosecondType>().value(0), 1, "receive time stands in");
    }

    fn metric_request(metric: Metric) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics { metrics: vec![metric], ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn histogram_points_keep_their_buckets() {
        let metric = Metric {
            name: "latency".into(),
            unit: "s".into(),
            data: Some(metric::Data::Histogram(Histogram {
                aggregation_temporality: 2,
                data_points: vec![HistogramDataPoint {
                    time_unix_nano: 10,
                    count: 6,
                    sum: Some(4.5),
                    bucket_counts: vec![1, 2, 3],
                    explicit_bounds: vec![0.5, 1.0],
                    ..Default::default()
                }],
            })),
            ..Default::default()
        };
        let converted = metrics_to_batch(&metric_request(metric), 0).unwrap();
        let batch = &converted.batch;
        assert_eq!(batch.num_rows(), 1);
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        assert_eq!(column("metric_type").as_string::<i32>().value(0), "histogram");
        assert_eq!(column("aggregation_temporality").as_string::<i32>().value(0), "cumulative");
        assert_eq!(column("count").as_primitive::<UInt64Type>().value(0), 6);
        let buckets = column("bucket_counts");
        let buckets = buckets.as_list::<i32>().value(0);
        assert_eq!(buckets.as_primitive::<UInt64Type>().values().to_vec(), vec![1, 2, 3]);
        let bounds = column("explicit_bounds");
        let bounds = bounds.as_list::<i32>().value(0);
        assert_eq!(bounds.as_primitive::<Float64Type>().values().to_vec(), vec![0.5, 1.0]);
        assert!(column("value").is_null(0));
        assert!(column("quantiles").is_null(0));
    }

    #[test]
    fn summaries_and_nameless_metrics() {
        let summary = Metric {
            name: "rpc".into(),
            data: Some(metric::Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    time_unix_nano: 1,
                    count: 3,
                    sum: 9.0,
                    quantile_values: vec![
                        ValueAtQuantile { quantile: 0.5, value: 2.0 },
                        ValueAtQuantile { quantile: 0.99, value: 5.0 },
                    ],
                    ..Default::default()
                }],
            })),
            ..Default::default()
        };
        let converted = metrics_to_batch(&metric_request(summary.clone()), 0).unwrap();
        let quantiles = converted.batch.column_by_name("quantile_values").unwrap().clone();
        let values = quantiles.as_list::<i32>().value(0);
        assert_eq!(values.as_primitive::<Float64Type>().values().to_vec(), vec![2.0, 5.0]);

        let nameless = Metric { name: String::new(), ..summary };
        let converted = metrics_to_batch(&metric_request(nameless), 0).unwrap();
        assert_eq!((converted.accepted(), converted.rejected), (0, 1));
    }

    #[test]
    fn histogram_with_inconsistent_buckets_is_rejected() {
        let metric = Metric {
            name: "h".into(),
            data: Some(metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    bucket_counts: vec![1, 2],
                    explicit_bounds: vec![0.5, 1.0, 2.0],
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        };
        let converted = metrics_to_batch(&metric_request(metric), 0).unwrap();
        assert_eq!((converted.accepted(), converted.rejected), (0, 1));
    }
}
