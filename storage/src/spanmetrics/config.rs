//! Configuration of the span-metrics / service-graph generator.
//!
//! The field names mirror Tempo's `metrics_generator.processor.span_metrics` and
//! `service_graphs` blocks where they overlap, flattened into one struct because Wake runs both
//! processors from one generator. Unknown fields are rejected so that a misspelt key fails loudly
//! instead of silently falling back to a default.

use serde::{Deserialize, Serialize};

/// Tempo's default span-metrics buckets: `prometheus.ExponentialBuckets(0.002, 2, 14)`, seconds.
pub const DEFAULT_HISTOGRAM_BUCKETS: [f64; 14] =
    [0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384];

/// Every label set emits one series per bucket, so the bucket count multiplies memory and
/// cardinality; a few dozen is already generous for a latency histogram.
pub const MAX_HISTOGRAM_BUCKETS: usize = 64;

/// Each dimension is a label on every span-metrics series; more than this is a cardinality
/// mistake rather than a use case.
pub const MAX_DIMENSIONS: usize = 32;

/// An unpaired span waiting longer than an hour would pin memory for spans that will never pair.
pub const MAX_SERVICE_GRAPH_WAIT_SECS: u64 = 3600;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanMetricsConfig {
    /// When false, `observe` ignores its input and `collect` returns an empty request.
    pub enabled: bool,
    /// Upper bounds (seconds, strictly increasing) of the latency histograms; `+Inf` is implied.
    pub histogram_buckets: Vec<f64>,
    /// Extra span/resource attributes turned into span-metrics labels, sanitized to Prometheus
    /// label names (see [`sanitize_label_name`]).
    pub dimensions: Vec<String>,
    /// Maximum number of label sets kept across span metrics and the service graph. A label set
    /// that would exceed it is not created; the update is counted in `dropped_series`.
    pub max_series: usize,
    /// How long a client or server span waits for its peer span before it is expired.
    pub service_graph_wait_secs: u64,
    /// Maximum number of half-seen edges waiting for their peer; further spans are dropped.
    pub service_graph_max_items: usize,
    /// How often the series are written to the metrics table (Tempo's registry
    /// `collection_interval`).
    pub collection_interval_secs: u64,
}

impl Default for SpanMetricsConfig {
    fn default() -> Self {
        SpanMetricsConfig {
            enabled: true,
            histogram_buckets: DEFAULT_HISTOGRAM_BUCKETS.to_vec(),
            dimensions: Vec::new(),
            max_series: 10_000,
            service_graph_wait_secs: 10,
            service_graph_max_items: 10_000,
            collection_interval_secs: 15,
        }
    }
}

impl SpanMetricsConfig {
    /// Checks the values serde cannot: bucket order and range, and non-zero limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.histogram_buckets.len() > MAX_HISTOGRAM_BUCKETS {
            return Err(format!(
                "histogram_buckets has {} entries, at most {MAX_HISTOGRAM_BUCKETS} are allowed",
                self.histogram_buckets.len()
            ));
        }
        for (i, bucket) in self.histogram_buckets.iter().enumerate() {
            if !bucket.is_finite() || *bucket <= 0.0 {
                return Err(format!("histogram_buckets[{i}] = {bucket} must be finite and positive"));
            }
            if let Some(previous) = i.checked_sub(1).and_then(|p| self.histogram_buckets.get(p))
                && bucket <= previous
            {
                return Err(format!(
                    "histogram_buckets must be strictly increasing: [{i}] = {bucket} <= [{}] = {previous}",
                    i - 1
                ));
            }
        }
        if self.dimensions.len() > MAX_DIMENSIONS {
            return Err(format!(
                "dimensions has {} entries, at most {MAX_DIMENSIONS} are allowed",
                self.dimensions.len()
            ));
        }
        if let Some(i) = self.dimensions.iter().position(|d| d.is_empty()) {
            return Err(format!("dimensions[{i}] is empty"));
        }
        if self.max_series == 0 {
            return Err("max_series must be at least 1".to_string());
        }
        if self.service_graph_max_items == 0 {
            return Err("service_graph_max_items must be at least 1".to_string());
        }
        if self.service_graph_wait_secs == 0 || self.service_graph_wait_secs > MAX_SERVICE_GRAPH_WAIT_SECS {
            return Err(format!("service_graph_wait_secs must be between 1 and {MAX_SERVICE_GRAPH_WAIT_SECS}"));
        }
        if !(1..=3600).contains(&self.collection_interval_secs) {
            return Err("collection_interval_secs must be between 1 and 3600".to_string());
        }
        Ok(())
    }
}

/// Labels the span-metrics processor sets itself, plus `le` (the histogram bucket label) and
/// `__name__`: a dimension sanitizing to one of these would overwrite it, so it gets a `__`
/// prefix as Tempo does for its intrinsics.
const RESERVED_LABELS: [&str; 7] =
    ["service", "span_name", "span_kind", "status_code", "status_message", "le", "__name__"];

/// Turns an attribute name into a Prometheus label name: every byte outside `[a-zA-Z0-9_]`
/// becomes `_` (Prometheus' `strutil.SanitizeLabelName`), a leading digit gets a `_` prefix so
/// the result is a valid name, and a clash with a reserved label gets a `__` prefix.
pub fn sanitize_label_name(name: &str) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if RESERVED_LABELS.contains(&out.as_str()) {
        out.insert_str(0, "__");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_tempo() {
        let config = SpanMetricsConfig::default();
        assert!(config.validate().is_ok());
        assert!(config.enabled);
        assert_eq!(config.histogram_buckets.len(), 14);
        assert_eq!(config.max_series, 10_000);
        assert_eq!(config.service_graph_wait_secs, 10);
        assert_eq!(config.service_graph_max_items, 10_000);
    }

    #[test]
    fn validation_rejects_bad_buckets() {
        let with = |buckets: Vec<f64>| SpanMetricsConfig { histogram_buckets: buckets, ..Default::default() };
        assert!(with(vec![0.1, 0.05]).validate().unwrap_err().contains("strictly increasing"));
        assert!(with(vec![0.1, 0.1]).validate().is_err());
        assert!(with(vec![-0.1, 0.1]).validate().unwrap_err().contains("positive"));
        assert!(with(vec![0.0]).validate().is_err());
        assert!(with(vec![0.1, f64::NAN]).validate().is_err());
        assert!(with(vec![0.1, f64::INFINITY]).validate().is_err());
        assert!(with((1..=65).map(f64::from).collect()).validate().is_err());
        assert!(with(vec![]).validate().is_ok());
    }

    #[test]
    fn validation_rejects_zero_limits() {
        let base = SpanMetricsConfig::default();
        assert!(SpanMetricsConfig { max_series: 0, ..base.clone() }.validate().is_err());
        assert!(SpanMetricsConfig { service_graph_max_items: 0, ..base.clone() }.validate().is_err());
        assert!(SpanMetricsConfig { service_graph_wait_secs: 0, ..base.clone() }.validate().is_err());
        assert!(SpanMetricsConfig { service_graph_wait_secs: 3601, ..base.clone() }.validate().is_err());
        assert!(SpanMetricsConfig { dimensions: vec![String::new()], ..base }.validate().is_err());
    }

    #[test]
    fn deserializes_with_defaults_and_rejects_unknown_fields() {
        let config: SpanMetricsConfig = serde_json::from_str(r#"{"dimensions": ["http.method"]}"#).unwrap();
        assert_eq!(config.dimensions, vec!["http.method".to_string()]);
        assert_eq!(config.histogram_buckets, DEFAULT_HISTOGRAM_BUCKETS.to_vec());
        assert!(config.enabled);

        let err = serde_json::from_str::<SpanMetricsConfig>(r#"{"max_seriess": 5}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn sanitizes_dimensions() {
        assert_eq!(sanitize_label_name("http.method"), "http_method");
        assert_eq!(sanitize_label_name("k8s.pod-name/x"), "k8s_pod_name_x");
        assert_eq!(sanitize_label_name("déjà"), "d_j_");
        assert_eq!(sanitize_label_name("1st"), "_1st");
        assert_eq!(sanitize_label_name("service"), "__service");
        assert_eq!(sanitize_label_name("span.name"), "__span_name");
        assert_eq!(sanitize_label_name("le"), "__le");
        assert_eq!(sanitize_label_name("Already_OK"), "Already_OK");
    }
}
