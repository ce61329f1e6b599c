//! Prometheus remote write 1.0 messages (`prometheus/prompb/remote.proto` and `types.proto`),
//! the subset a receiver decodes: samples and metadata. Exemplars and native histograms are
//! skipped by protobuf's unknown-field rules.
//!
//! Written out with `prost` derives rather than generated: five small messages do not justify a
//! protoc build step, and the field numbers below are the wire contract.

/// `prometheus.WriteRequest`: snappy block-compressed protobuf in the POST body.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct TimeSeries {
    /// Sorted by name; `__name__` carries the metric name.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct MetricMetadata {
    /// `prometheus.MetricMetadata.MetricType`: 0 unknown, 1 counter, 2 gauge, 3 histogram,
    /// 4 gaugehistogram, 5 summary, 6 info, 7 stateset.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

/// The bit pattern Prometheus writes as a staleness marker (`value.StaleNaN`): a series that
/// disappeared from a scrape. Stored as is; the PromQL evaluator ends the lookback there.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

pub fn is_stale_nan(value: f64) -> bool {
    value.to_bits() == STALE_NAN_BITS
}
