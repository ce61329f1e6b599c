//! The fixed Arrow schemas of the three tables, named after the OpenTelemetry data model.
//!
//! These names are a contract with every query surface (SQL, Loki, Prometheus, dashboards):
//! change them only by adding columns. Attributes that are not promoted to columns of their own
//! live in `Map<Utf8, Utf8>` columns so that arbitrary keys never widen the schema.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// One of the three signals, each stored as its own table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Logs,
    Metrics,
    Spans,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Logs, Signal::Metrics, Signal::Spans];

    /// The SQL table name and the directory name under the data dir.
    pub fn table_name(self) -> &'static str {
        match self {
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
            Signal::Spans => "spans",
        }
    }

    /// The column that partitions files by time and that time-range filters prune on.
    pub fn time_column(self) -> &'static str {
        match self {
            Signal::Logs | Signal::Metrics => TIMESTAMP,
            Signal::Spans => START_TIME,
        }
    }

    pub fn schema(self) -> SchemaRef {
        match self {
            Signal::Logs => LOGS_SCHEMA.clone(),
            Signal::Metrics => METRICS_SCHEMA.clone(),
            Signal::Spans => SPANS_SCHEMA.clone(),
        }
    }

    pub(crate) fn wal_tag(self) -> u8 {
        match self {
            Signal::Logs => 1,
            Signal::Metrics => 2,
            Signal::Spans => 3,
        }
    }

    pub(crate) fn from_wal_tag(tag: u8) -> Option<Signal> {
        match tag {
            1 => Some(Signal::Logs),
            2 => Some(Signal::Metrics),
            3 => Some(Signal::Spans),
            _ => None,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.table_name())
    }
}

impl FromStr for Signal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Signal::ALL
            .into_iter()
            .find(|signal| signal.table_name() == s)
            .ok_or_else(|| format!("unknown signal {s:?}: expected logs, metrics or spans"))
    }
}

// Columns shared by several tables.
pub const TIMESTAMP: &str = "timestamp";
pub const SERVICE_NAME: &str = "service_name";
pub const K8S_NAMESPACE_NAME: &str = "k8s_namespace_name";
pub const K8S_POD_NAME: &str = "k8s_pod_name";
pub const K8S_POD_UID: &str = "k8s_pod_uid";
pub const K8S_CONTAINER_NAME: &str = "k8s_container_name";
pub const CONTAINER_ID: &str = "container_id";
pub const K8S_NODE_NAME: &str = "k8s_node_name";
pub const RESOURCE_ATTRIBUTES: &str = "resource_attributes";
pub const SCOPE_NAME: &str = "scope_name";
pub const SCOPE_VERSION: &str = "scope_version";
pub const SCOPE_ATTRIBUTES: &str = "scope_attributes";
pub const ATTRIBUTES: &str = "attributes";
pub const TRACE_ID: &str = "trace_id";
pub const SPAN_ID: &str = "span_id";
pub const FLAGS: &str = "flags";

// Logs.
pub const OBSERVED_TIMESTAMP: &str = "observed_timestamp";
pub const SEVERITY_NUMBER: &str = "severity_number";
pub const SEVERITY_TEXT: &str = "severity_text";
pub const BODY: &str = "body";
pub const EVENT_NAME: &str = "event_name";
pub const LOG_IOSTREAM: &str = "log_iostream";

// Spans.
pub const PARENT_SPAN_ID: &str = "parent_span_id";
pub const TRACE_STATE: &str = "trace_state";
pub const NAME: &str = "name";
pub const KIND: &str = "kind";
pub const START_TIME: &str = "start_time";
pub const END_TIME: &str = "end_time";
pub const DURATION_NS: &str = "duration_ns";
pub const STATUS_CODE: &str = "status_code";
pub const STATUS_MESSAGE: &str = "status_message";
pub const EVENTS: &str = "events";
pub const LINKS: &str = "links";

// Metrics.
pub const METRIC_NAME: &str = "metric_name";
pub const METRIC_DESCRIPTION: &str = "metric_description";
pub const METRIC_TYPE: &str = "metric_type";
pub const UNIT: &str = "unit";
pub const AGGREGATION_TEMPORALITY: &str = "aggregation_temporality";
pub const IS_MONOTONIC: &str = "is_monotonic";
pub const START_TIMESTAMP: &str = "start_timestamp";
pub const VALUE: &str = "value";
pub const COUNT: &str = "count";
pub const SUM: &str = "sum";
pub const MIN: &str = "min";
pub const MAX: &str = "max";
pub const EXPLICIT_BOUNDS: &str = "explicit_bounds";
pub const BUCKET_COUNTS: &str = "bucket_counts";
pub const EXP_SCALE: &str = "exp_scale";
pub const EXP_ZERO_COUNT: &str = "exp_zero_count";
pub const EXP_ZERO_THRESHOLD: &str = "exp_zero_threshold";
pub const EXP_POSITIVE_OFFSET: &str = "exp_positive_offset";
pub const EXP_POSITIVE_BUCKET_COUNTS: &str = "exp_positive_bucket_counts";
pub const EXP_NEGATIVE_OFFSET: &str = "exp_negative_offset";
pub const EXP_NEGATIVE_BUCKET_COUNTS: &str = "exp_negative_bucket_counts";
pub const QUANTILES: &str = "quantiles";
pub const QUANTILE_VALUES: &str = "quantile_values";
/// A 64-bit hash of a metric row's series identity (see [`crate::series`]): rows of one
/// series share it, and files keep a series' rows together.
pub const SERIES_ID: &str = "series_id";

/// The resource attributes promoted to columns, in the order they appear in every schema.
/// `service_name` defaults to `unknown_service` as the OpenTelemetry SDKs do.
pub const PROMOTED_RESOURCE_ATTRIBUTES: [(&str, &str); 7] = [
    ("service.name", SERVICE_NAME),
    ("k8s.namespace.name", K8S_NAMESPACE_NAME),
    ("k8s.pod.name", K8S_POD_NAME),
    ("k8s.pod.uid", K8S_POD_UID),
    ("k8s.container.name", K8S_CONTAINER_NAME),
    ("container.id", CONTAINER_ID),
    ("k8s.node.name", K8S_NODE_NAME),
];

/// The instrumentation scope of metrics that arrived by Prometheus remote write. Their
/// `metric_name` is already a Prometheus name and their attributes are exactly the series'
/// labels, so the Prometheus API shows them without OTLP's name translation.
pub const REMOTE_WRITE_SCOPE: &str = "prometheus.remote_write";

/// The log record attribute promoted to `log_iostream`.
pub const LOG_IOSTREAM_ATTRIBUTE: &str = "log.iostream";

pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// `Map<Utf8, Utf8>` as the parquet crate writes and reads it back (`key_value` entries,
/// non-null keys), so that batches from memory and from files have identical types.
pub fn attribute_map_type() -> DataType {
    let entries =
        Fields::from(vec![Field::new("keys", DataType::Utf8, false), Field::new("values", DataType::Utf8, true)]);
    DataType::Map(Arc::new(Field::new("entries", DataType::Struct(entries), false)), false)
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, true)))
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn identity_fields() -> Vec<Field> {
    PROMOTED_RESOURCE_ATTRIBUTES.iter().map(|(_, column)| utf8(column)).collect()
}

fn attribute_fields() -> Vec<Field> {
    vec![
        Field::new(RESOURCE_ATTRIBUTES, attribute_map_type(), false),
        utf8(SCOPE_NAME),
        utf8(SCOPE_VERSION),
        Field::new(SCOPE_ATTRIBUTES, attribute_map_type(), false),
        Field::new(ATTRIBUTES, attribute_map_type(), false),
    ]
}

static LOGS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new(TIMESTAMP, timestamp_type(), false),
        Field::new(OBSERVED_TIMESTAMP, timestamp_type(), false),
        Field::new(SEVERITY_NUMBER, DataType::Int32, false),
        utf8(SEVERITY_TEXT),
        utf8(BODY),
        utf8(TRACE_ID),
        utf8(SPAN_ID),
        Field::new(FLAGS, DataType::UInt32, false),
        utf8(EVENT_NAME),
    ];
    fields.extend(identity_fields());
    fields.push(utf8(LOG_IOSTREAM));
    fields.extend(attribute_fields());
    Arc::new(Schema::new(fields))
});

static METRICS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new(METRIC_NAME, DataType::Utf8, false),
        utf8(METRIC_DESCRIPTION),
        Field::new(METRIC_TYPE, DataType::Utf8, false),
        utf8(UNIT),
        utf8(AGGREGATION_TEMPORALITY),
        Field::new(IS_MONOTONIC, DataType::Boolean, true),
        Field::new(TIMESTAMP, timestamp_type(), false),
        Field::new(START_TIMESTAMP, timestamp_type(), true),
        Field::new(VALUE, DataType::Float64, true),
        Field::new(COUNT, DataType::UInt64, true),
        Field::new(SUM, DataType::Float64, true),
        Field::new(MIN, DataType::Float64, true),
        Field::new(MAX, DataType::Float64, true),
        Field::new(EXPLICIT_BOUNDS, list_of(DataType::Float64), true),
        Field::new(BUCKET_COUNTS, list_of(DataType::UInt64), true),
        Field::new(EXP_SCALE, DataType::Int32, true),
        Field::new(EXP_ZERO_COUNT, DataType::UInt64, true),
        Field::new(EXP_ZERO_THRESHOLD, DataType::Float64, true),
        Field::new(EXP_POSITIVE_OFFSET, DataType::Int32, true),
        Field::new(EXP_POSITIVE_BUCKET_COUNTS, list_of(DataType::UInt64), true),
        Field::new(EXP_NEGATIVE_OFFSET, DataType::Int32, true),
        Field::new(EXP_NEGATIVE_BUCKET_COUNTS, list_of(DataType::UInt64), true),
        Field::new(QUANTILES, list_of(DataType::Float64), true),
        Field::new(QUANTILE_VALUES, list_of(DataType::Float64), true),
        Field::new(FLAGS, DataType::UInt32, false),
    ];
    fields.extend(identity_fields());
    fields.extend(attribute_fields());
    // Last, so that files written before it existed differ only by a missing final column.
    fields.push(Field::new(SERIES_ID, DataType::UInt64, true));
    Arc::new(Schema::new(fields))
});

static SPANS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new(TRACE_ID, DataType::Utf8, false),
        Field::new(SPAN_ID, DataType::Utf8, false),
        utf8(PARENT_SPAN_ID),
        utf8(TRACE_STATE),
        Field::new(NAME, DataType::Utf8, false),
        Field::new(KIND, DataType::Utf8, false),
        Field::new(START_TIME, timestamp_type(), false),
        Field::new(END_TIME, timestamp_type(), false),
        Field::new(DURATION_NS, DataType::Int64, false),
        Field::new(STATUS_CODE, DataType::Utf8, false),
        utf8(STATUS_MESSAGE),
        Field::new(FLAGS, DataType::UInt32, false),
        utf8(EVENTS),
        utf8(LINKS),
    ];
    fields.extend(identity_fields());
    fields.extend(attribute_fields());
    Arc::new(Schema::new(fields))
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip_through_names_and_wal_tags() {
        for signal in Signal::ALL {
            assert_eq!(signal.table_name().parse::<Signal>(), Ok(signal));
            assert_eq!(Signal::from_wal_tag(signal.wal_tag()), Some(signal));
        }
        assert!("events".parse::<Signal>().is_err());
    }

    #[test]
    fn every_schema_has_its_time_column_and_identity() {
        for signal in Signal::ALL {
            let schema = signal.schema();
            assert!(schema.field_with_name(signal.time_column()).is_ok());
            for (_, column) in PROMOTED_RESOURCE_ATTRIBUTES {
                assert!(schema.field_with_name(column).is_ok(), "{signal} lacks {column}");
            }
        }
    }
}
