//! How stored OTLP metrics appear as Prometheus series.
//!
//! The rules are Prometheus's own OTLP translation (`otlptranslator`, "underscore escaping with
//! suffixes"), so that a metric looks the same whether an SDK sent it to Prometheus or to Wake:
//! - the name is split on anything but letters and digits and joined with `_`; the unit is
//!   appended (`s` → `seconds`, `By` → `bytes`, `m/s` → `meters_per_second`, units in braces
//!   dropped) unless the name already has it; monotonic sums end in `_total`, gauges with unit
//!   `1` in `_ratio`; a leading digit gets a `_`;
//! - histograms become `<name>_bucket{le=…}` (cumulative, with `+Inf`), `<name>_sum` and
//!   `<name>_count`; summaries `<name>{quantile=…}`, `<name>_sum`, `<name>_count`;
//! - labels: the data point's attributes, then every resource attribute, with names sanitised
//!   (`k8s.pod.name` → `k8s_pod_name`, a leading digit → `key_`); `job` is
//!   `service.namespace/service.name` (or `service.name`) and `instance` is
//!   `service.instance.id`, as Prometheus sets them;
//! - exponential histograms have no classic-bucket form and are not exposed.
//!
//! Series written by Prometheus remote write (scope [`REMOTE_WRITE_SCOPE`]) already have
//! Prometheus names and labels and are shown as they came.
//!
//! The agent's cgroup metrics are also shown under cAdvisor's names and labels
//! (`container_cpu_usage_seconds_total{namespace, pod, container, node}`, …), so the Kubernetes
//! dashboards and alerts people already have work unchanged.

use std::collections::BTreeMap;

use wake_storage::schema::REMOTE_WRITE_SCOPE;

/// A series' labels, `__name__` included, sorted by name.
pub type Labels = BTreeMap<String, String>;

pub const METRIC_NAME_LABEL: &str = "__name__";

/// The agent's scope for cgroup metrics (`wake_collector::cgroup::SCOPE_NAME`).
const CGROUP_SCOPE: &str = "wake.agent.cgroup";

/// What the store knows of a metric, one per distinct (name, type, unit, …) in the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Descriptor {
    pub name: String,
    pub metric_type: String,
    pub unit: String,
    pub is_monotonic: bool,
    pub scope_name: String,
    pub description: String,
}

/// Which value of a stored row a Prometheus series takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// `value` of a gauge or sum.
    Value,
    /// `count` of a histogram or summary.
    Count,
    /// `sum` of a histogram or summary.
    Sum,
    /// The cumulative bucket counts of a histogram, one series per `le`.
    Buckets,
    /// The quantiles of a summary, one series per `quantile`.
    Quantiles,
}

/// A relabelling applied to an exposure's labels (for cAdvisor's names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// Only rows whose attribute `.0` equals `.1` (and that attribute is dropped).
    pub only_if: Option<(&'static str, &'static str)>,
    /// Labels added with fixed values.
    pub extra: &'static [(&'static str, &'static str)],
}

/// One Prometheus metric name that a stored metric appears under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    pub name: String,
    pub part: Part,
    /// The Prometheus type for `/api/v1/metadata`.
    pub prom_type: &'static str,
    pub alias: Option<Alias>,
}

impl Descriptor {
    pub fn is_remote_write(&self) -> bool {
        self.scope_name == REMOTE_WRITE_SCOPE
    }

    /// Every name this metric appears under.
    pub fn exposures(&self) -> Vec<Exposure> {
        let plain = |name: String, part: Part, prom_type: &'static str| Exposure { name, part, prom_type, alias: None };
        if self.is_remote_write() {
            return vec![plain(self.name.clone(), Part::Value, "unknown")];
        }
        let mut exposures = match self.metric_type.as_str() {
            "gauge" => vec![plain(normalize_name(&self.name, &self.unit, Kind::Gauge), Part::Value, "gauge")],
            "sum" if self.is_monotonic => {
                vec![plain(normalize_name(&self.name, &self.unit, Kind::Counter), Part::Value, "counter")]
            }
            "sum" => vec![plain(normalize_name(&self.name, &self.unit, Kind::Other), Part::Value, "gauge")],
            "histogram" => {
                let base = normalize_name(&self.name, &self.unit, Kind::Other);
                vec![
                    plain(format!("{base}_bucket"), Part::Buckets, "histogram"),
                    plain(format!("{base}_sum"), Part::Sum, "histogram"),
                    plain(format!("{base}_count"), Part::Count, "histogram"),
                ]
            }
            "summary" => {
                let base = normalize_name(&self.name, &self.unit, Kind::Other);
                vec![
                    plain(base.clone(), Part::Quantiles, "summary"),
                    plain(format!("{base}_sum"), Part::Sum, "summary"),
                    plain(format!("{base}_count"), Part::Count, "summary"),
                ]
            }
            _ => Vec::new(),
        };
        if self.scope_name == CGROUP_SCOPE {
            for (otel, cadvisor, prom_type, only_if, extra) in CADVISOR_ALIASES {
                if *otel == self.name {
                    exposures.push(Exposure {
                        name: (*cadvisor).to_string(),
                        part: Part::Value,
                        prom_type,
                        alias: Some(Alias { only_if: *only_if, extra }),
                    });
                }
            }
            // Where the OTLP translation gives the cAdvisor name itself (e.g.
            // `container_memory_working_set_bytes`), the alias alone answers it: it carries the
            // same labels plus cAdvisor's, and one name must not hold the series twice.
            let aliased: Vec<String> = exposures.iter().filter(|e| e.alias.is_some()).map(|e| e.name.clone()).collect();
            exposures.retain(|e| e.alias.is_some() || !aliased.contains(&e.name));
        }
        exposures
    }
}

type CadvisorAlias = (
    &'static str,
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
    &'static [(&'static str, &'static str)],
);

/// OTel container metric → cAdvisor's name (the kubelet's `/metrics/cadvisor`).
const CADVISOR_ALIASES: &[CadvisorAlias] = &[
    ("container.cpu.time", "container_cpu_usage_seconds_total", "counter", None, &[("cpu", "total")]),
    (
        "container.cpu.throttling_data.throttled_periods",
        "container_cpu_cfs_throttled_periods_total",
        "counter",
        None,
        &[],
    ),
    ("container.cpu.throttling_data.throttled_time", "container_cpu_cfs_throttled_seconds_total", "counter", None, &[]),
    ("container.memory.usage", "container_memory_usage_bytes", "gauge", None, &[]),
    ("container.memory.working_set", "container_memory_working_set_bytes", "gauge", None, &[]),
    ("container.memory.rss", "container_memory_rss", "gauge", None, &[]),
    ("container.memory.limit", "container_spec_memory_limit_bytes", "gauge", None, &[]),
    (
        "container.memory.page_faults",
        "container_memory_failures_total",
        "counter",
        None,
        &[("failure_type", "pgfault"), ("scope", "container")],
    ),
    (
        "container.memory.major_page_faults",
        "container_memory_failures_total",
        "counter",
        None,
        &[("failure_type", "pgmajfault"), ("scope", "container")],
    ),
    ("container.memory.oom_events", "container_oom_events_total", "counter", None, &[]),
    ("container.disk.io", "container_fs_reads_bytes_total", "counter", Some(("disk.io.direction", "read")), &[]),
    ("container.disk.io", "container_fs_writes_bytes_total", "counter", Some(("disk.io.direction", "write")), &[]),
    ("container.pids.count", "container_threads", "gauge", None, &[]),
    ("container.pids.limit", "container_threads_max", "gauge", None, &[]),
];

/// cAdvisor's identity labels and the OTel resource attributes they come from.
const CADVISOR_LABELS: [(&str, &str); 5] = [
    ("namespace", "k8s.namespace.name"),
    ("pod", "k8s.pod.name"),
    ("container", "k8s.container.name"),
    ("node", "k8s.node.name"),
    ("image", "container.image.name"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
    Other,
}

fn unit_word(unit: &str) -> &str {
    match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "1" => "",
        "%" => "percent",
        other => other,
    }
}

fn per_unit_word(unit: &str) -> &str {
    match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    }
}

fn tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty())
}

fn clean_up(text: &str) -> String {
    tokens(text).collect::<Vec<_>>().join("_")
}

/// Prometheus's `normalizeName` for OTLP metrics.
fn normalize_name(name: &str, unit: &str, kind: Kind) -> String {
    let mut words: Vec<String> = tokens(name).map(str::to_string).collect();
    let mut unit_parts = unit.splitn(2, '/');
    let main = unit_parts.next().unwrap_or("").trim();
    if !main.is_empty() && !main.contains(['{', '}']) {
        let word = clean_up(unit_word(main));
        if !word.is_empty() && !words.contains(&word) {
            words.push(word);
        }
    }
    if let Some(per) = unit_parts.next().map(str::trim)
        && !per.is_empty()
        && !per.contains(['{', '}'])
    {
        let word = clean_up(per_unit_word(per));
        if !word.is_empty() && !words.contains(&word) {
            words.push("per".into());
            words.push(word);
        }
    }
    if kind == Kind::Counter {
        words.retain(|w| w != "total");
        words.push("total".into());
    }
    if unit == "1" && kind == Kind::Gauge {
        words.retain(|w| w != "ratio");
        words.push("ratio".into());
    }
    let joined = words.join("_");
    if joined.starts_with(|c: char| c.is_ascii_digit()) { format!("_{joined}") } else { joined }
}

/// Prometheus's `NormalizeLabel`.
pub fn normalize_label(name: &str) -> String {
    if name.is_empty() {
        return String::new();
    }
    let sanitized: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if sanitized.starts_with(|c: char| c.is_ascii_digit()) {
        format!("key_{sanitized}")
    } else if sanitized.starts_with('_') && !sanitized.starts_with("__") {
        format!("key{sanitized}")
    } else {
        sanitized
    }
}

/// The attributes of one stored row that make up its series' labels.
#[derive(Debug, Default, Clone)]
pub struct RowAttributes<'a> {
    /// Resource attributes, the promoted ones (`service.name`, `k8s.pod.name`, …) included.
    pub resource: Vec<(&'a str, &'a str)>,
    /// Data point attributes.
    pub point: Vec<(&'a str, &'a str)>,
}

/// The labels of a row's series before the exposure's own (`__name__`, `le`, `quantile`).
/// Returns `None` when an alias does not apply to this row.
pub fn series_labels(descriptor: &Descriptor, exposure: &Exposure, row: &RowAttributes<'_>) -> Option<Labels> {
    let mut labels = Labels::new();
    if descriptor.is_remote_write() {
        for (key, value) in &row.point {
            labels.insert((*key).to_string(), (*value).to_string());
        }
    } else {
        let resource = |key: &str| row.resource.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        for (key, value) in &row.resource {
            if !matches!(*key, "service.name" | "service.namespace" | "service.instance.id") && !value.is_empty() {
                labels.insert(normalize_label(key), (*value).to_string());
            }
        }
        if let Some(service) = resource("service.name") {
            let job = match resource("service.namespace") {
                Some(namespace) if !namespace.is_empty() => format!("{namespace}/{service}"),
                _ => service.to_string(),
            };
            labels.insert("job".into(), job);
        }
        if let Some(instance) = resource("service.instance.id") {
            labels.insert("instance".into(), instance.to_string());
        }
        if let Some(alias) = &exposure.alias {
            for (label, attribute) in CADVISOR_LABELS {
                if let Some(value) = resource(attribute).filter(|v| !v.is_empty()) {
                    labels.insert(label.into(), value.to_string());
                }
            }
            for (key, value) in alias.extra {
                labels.insert((*key).into(), (*value).into());
            }
        }
        for (key, value) in &row.point {
            if let Some(alias) = &exposure.alias
                && let Some((only_key, _)) = alias.only_if
                && only_key == *key
            {
                continue;
            }
            labels.insert(normalize_label(key), (*value).to_string());
        }
        if let Some(alias) = &exposure.alias
            && let Some((key, wanted)) = alias.only_if
            && !row.point.iter().any(|(k, v)| *k == key && *v == wanted)
        {
            return None;
        }
    }
    // An empty label value is the same as no label in Prometheus.
    labels.retain(|_, value| !value.is_empty());
    labels.insert(METRIC_NAME_LABEL.into(), exposure.name.clone());
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(name: &str, metric_type: &str, unit: &str, is_monotonic: bool) -> Descriptor {
        Descriptor {
            name: name.into(),
            metric_type: metric_type.into(),
            unit: unit.into(),
            is_monotonic,
            scope_name: String::new(),
            description: String::new(),
        }
    }

    fn names(descriptor: &Descriptor) -> Vec<String> {
        descriptor.exposures().into_iter().map(|e| e.name).collect()
    }

    #[test]
    fn names_follow_prometheus_otlp_translation() {
        assert_eq!(
            names(&descriptor("http.server.request.duration", "histogram", "s", false)),
            [
                "http_server_request_duration_seconds_bucket",
                "http_server_request_duration_seconds_sum",
                "http_server_request_duration_seconds_count"
            ]
        );
        assert_eq!(names(&descriptor("http.requests", "sum", "{request}", true)), ["http_requests_total"]);
        assert_eq!(names(&descriptor("requests.total", "sum", "1", true)), ["requests_total"]);
        assert_eq!(names(&descriptor("cpu.utilization", "gauge", "1", false)), ["cpu_utilization_ratio"]);
        assert_eq!(names(&descriptor("process.memory.usage", "sum", "By", false)), ["process_memory_usage_bytes"]);
        assert_eq!(names(&descriptor("speed", "gauge", "m/s", false)), ["speed_meters_per_second"]);
        assert_eq!(names(&descriptor("latency_seconds", "gauge", "s", false)), ["latency_seconds"]);
        assert_eq!(names(&descriptor("2xx.count", "sum", "", true)), ["_2xx_count_total"]);
        assert_eq!(
            names(&descriptor("rpc", "summary", "ms", false)),
            ["rpc_milliseconds", "rpc_milliseconds_sum", "rpc_milliseconds_count"]
        );
        assert!(names(&descriptor("x", "exponential_histogram", "s", false)).is_empty());
    }

    #[test]
    fn labels_take_job_instance_and_sanitised_attributes() {
        let d = descriptor("http.requests", "sum", "", true);
        let exposure = &d.exposures()[0];
        let row = RowAttributes {
            resource: vec![
                ("service.name", "cart"),
                ("service.namespace", "shop"),
                ("service.instance.id", "cart-0"),
                ("k8s.pod.name", "cart-0"),
                ("1st", "x"),
                ("_private", "y"),
            ],
            point: vec![("http.method", "GET"), ("empty", "")],
        };
        let labels = series_labels(&d, exposure, &row).unwrap();
        let expected: Labels = [
            ("__name__", "http_requests_total"),
            ("job", "shop/cart"),
            ("instance", "cart-0"),
            ("k8s_pod_name", "cart-0"),
            ("key_1st", "x"),
            ("key_private", "y"),
            ("http_method", "GET"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(labels, expected);
    }

    #[test]
    fn remote_write_series_keep_their_names_and_labels() {
        let mut d = descriptor("http_requests_total", "gauge", "", false);
        d.scope_name = REMOTE_WRITE_SCOPE.into();
        let exposures = d.exposures();
        assert_eq!(exposures.len(), 1);
        let row = RowAttributes { resource: vec![], point: vec![("job", "api"), ("code", "200")] };
        let labels = series_labels(&d, &exposures[0], &row).unwrap();
        assert_eq!(labels.get("__name__").map(String::as_str), Some("http_requests_total"));
        assert_eq!(labels.get("job").map(String::as_str), Some("api"));
        assert_eq!(labels.len(), 3);
    }

    #[test]
    fn cgroup_metrics_also_appear_under_cadvisor_names() {
        let mut d = descriptor("container.disk.io", "sum", "By", true);
        d.scope_name = CGROUP_SCOPE.into();
        assert_eq!(
            names(&d),
            ["container_disk_io_bytes_total", "container_fs_reads_bytes_total", "container_fs_writes_bytes_total"]
        );
        let row = RowAttributes {
            resource: vec![("k8s.namespace.name", "shop"), ("k8s.pod.name", "cart-0"), ("k8s.container.name", "cart")],
            point: vec![("disk.io.direction", "read")],
        };
        let exposures = d.exposures();
        let reads = series_labels(&d, &exposures[1], &row).unwrap();
        assert_eq!(reads.get("namespace").map(String::as_str), Some("shop"));
        assert_eq!(reads.get("pod").map(String::as_str), Some("cart-0"));
        assert_eq!(reads.get("container").map(String::as_str), Some("cart"));
        assert!(!reads.contains_key("disk_io_direction"));
        assert!(series_labels(&d, &exposures[2], &row).is_none(), "a read is not a write");

        let mut cpu = descriptor("container.cpu.time", "sum", "s", true);
        cpu.scope_name = CGROUP_SCOPE.into();
        assert_eq!(names(&cpu), ["container_cpu_time_seconds_total", "container_cpu_usage_seconds_total"]);
    }
}
