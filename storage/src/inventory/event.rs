//! Container lifecycle events as the agent sends them: OTLP log records whose event name is
//! `container.start`, `container.stop`, `container.remove` or `container.update`, with the
//! container's identity in resource attributes (OpenTelemetry's `k8s.*` and `container.*`
//! names) and the lifecycle facts in record attributes. ARCHITECTURE.md lists the contract.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use serde::{Deserialize, Serialize};

/// Event names start with this; the rest says what happened.
pub const EVENT_PREFIX: &str = "container.";
/// The workload attributes, in the order they are looked for, with the kind they name.
const WORKLOADS: [(&str, &str); 6] = [
    ("k8s.deployment.name", "Deployment"),
    ("k8s.statefulset.name", "StatefulSet"),
    ("k8s.daemonset.name", "DaemonSet"),
    ("k8s.cronjob.name", "CronJob"),
    ("k8s.job.name", "Job"),
    ("k8s.replicaset.name", "ReplicaSet"),
];
const POD_LABEL_PREFIX: &str = "k8s.pod.label.";
/// Bounds on what one event may carry into the inventory, which lives in memory.
const MAX_VALUE_BYTES: usize = 1024;
const MAX_LABELS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The container runs (sent when it starts, and again whenever the agent (re)discovers it).
    Start,
    /// The container's process ended.
    Stop,
    /// The runtime forgot the container (`podman rm`, the pod deleted).
    Remove,
    /// More of its identity became known.
    Update,
}

impl EventKind {
    fn parse(name: &str) -> Option<EventKind> {
        Some(match name.strip_prefix(EVENT_PREFIX)? {
            "start" => EventKind::Start,
            "stop" => EventKind::Stop,
            "remove" => EventKind::Remove,
            "update" => EventKind::Update,
            _ => return None,
        })
    }
}

/// One lifecycle event of one container instance; every field but the id and time is optional,
/// and the inventory keeps what it knew for fields an event leaves out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerEvent {
    pub kind: Option<EventKind>,
    pub time_ns: i64,
    pub container_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ns: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn string_of(value: &AnyValue) -> Option<String> {
    let text = match value.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        // `container.image.repo_digests` is a string array: its first digest is the image's.
        any_value::Value::ArrayValue(array) => return array.values.first().and_then(string_of),
        _ => return None,
    };
    (!text.is_empty() && text.len() <= MAX_VALUE_BYTES).then_some(text)
}

fn int_of(value: &AnyValue) -> Option<i64> {
    match value.value.as_ref()? {
        any_value::Value::IntValue(i) => Some(*i),
        any_value::Value::StringValue(s) => s.parse().ok(),
        any_value::Value::DoubleValue(d) if d.is_finite() && d.fract() == 0.0 => Some(*d as i64),
        _ => None,
    }
}

fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref())
}

/// The record's attribute, else the resource's.
fn lookup<'a>(record: &'a [KeyValue], resource: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    find(record, key).or_else(|| find(resource, key))
}

/// Takes the lifecycle events out of a logs request: they are the inventory's, not lines any
/// container wrote. Records that only look like one (no container id, no time) stay logs.
pub fn take_events(request: &mut ExportLogsServiceRequest) -> Vec<ContainerEvent> {
    let mut events = Vec::new();
    for resource_logs in &mut request.resource_logs {
        let resource = resource_logs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default();
        for scope in &mut resource_logs.scope_logs {
            scope.log_records.retain(|record| {
                let name = if record.event_name.is_empty() {
                    find(&record.attributes, "event.name").and_then(string_of)
                } else {
                    Some(record.event_name.clone())
                };
                let event =
                    name.as_deref().and_then(EventKind::parse).and_then(|kind| parse_event(kind, record, resource));
                match event {
                    Some(event) => {
                        events.push(event);
                        false
                    }
                    None => true,
                }
            });
        }
        resource_logs.scope_logs.retain(|scope| !scope.log_records.is_empty());
    }
    request.resource_logs.retain(|resource_logs| !resource_logs.scope_logs.is_empty());
    events
}

fn parse_event(
    kind: EventKind,
    record: &opentelemetry_proto::tonic::logs::v1::LogRecord,
    resource: &[KeyValue],
) -> Option<ContainerEvent> {
    let attributes = record.attributes.as_slice();
    let text = |key: &str| lookup(attributes, resource, key).and_then(string_of);
    let int = |key: &str| lookup(attributes, resource, key).and_then(int_of);
    let container_id = text("container.id")?;
    let time_ns = [record.time_unix_nano, record.observed_time_unix_nano]
        .into_iter()
        .find(|&t| t > 0)
        .and_then(|t| i64::try_from(t).ok())?;
    let (workload_kind, workload) = WORKLOADS
        .iter()
        .find_map(|(key, kind)| text(key).map(|name| (Some(kind.to_string()), Some(name))))
        .unwrap_or_default();
    let labels = resource
        .iter()
        .chain(attributes)
        .filter_map(|kv| {
            let key = kv.key.strip_prefix(POD_LABEL_PREFIX)?;
            Some((key.to_string(), string_of(kv.value.as_ref()?)?)).filter(|_| !key.is_empty())
        })
        .take(MAX_LABELS)
        .collect();
    Some(ContainerEvent {
        kind: Some(kind),
        time_ns,
        container_id,
        started_at_ns: int("container.started_at"),
        finished_at_ns: int("container.finished_at"),
        exit_code: int("container.exit_code"),
        reason: text("container.exit_reason"),
        restarts: int("k8s.container.restart_count"),
        image_name: text("container.image.name"),
        image_id: text("container.image.id"),
        image_digest: text("container.image.repo_digests"),
        workload_kind: text("k8s.workload.kind").or(workload_kind),
        workload: text("k8s.workload.name").or(workload),
        node: text("k8s.node.name"),
        namespace: text("k8s.namespace.name"),
        pod: text("k8s.pod.name"),
        pod_uid: text("k8s.pod.uid"),
        container: text("k8s.container.name").or_else(|| text("container.name")),
        runtime: text("container.runtime"),
        labels,
    })
}

/// The `container.id` of every resource in a metrics request: the cgroup metrics the agent
/// sends for each running container double as its heartbeat.
pub fn metric_container_ids(
    request: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
) -> Vec<String> {
    request
        .resource_metrics
        .iter()
        .filter_map(|rm| find(&rm.resource.as_ref()?.attributes, "container.id").and_then(string_of))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    fn s(key: &str, value: &str) -> KeyValue {
        kv(key, any_value::Value::StringValue(value.into()))
    }

    #[test]
    fn lifecycle_records_become_events_and_other_logs_are_skipped() {
        let resource = Resource {
            attributes: vec![
                s("container.id", "abc123"),
                s("k8s.namespace.name", "shop"),
                s("k8s.pod.name", "web-7d9c8f6b5-x2x9q"),
                s("k8s.deployment.name", "web"),
                s("k8s.pod.label.app", "web"),
                s("container.image.name", "nginx:1.25"),
                kv("k8s.container.restart_count", any_value::Value::IntValue(2)),
            ],
            ..Default::default()
        };
        let stop = LogRecord {
            time_unix_nano: 5,
            event_name: "container.stop".into(),
            attributes: vec![
                kv("container.exit_code", any_value::Value::IntValue(137)),
                s("container.exit_reason", "OOMKilled"),
            ],
            ..Default::default()
        };
        let by_attribute =
            LogRecord { time_unix_nano: 3, attributes: vec![s("event.name", "container.start")], ..Default::default() };
        let plain = LogRecord { time_unix_nano: 4, ..Default::default() };
        let unknown = LogRecord { time_unix_nano: 4, event_name: "container.paused".into(), ..Default::default() };
        let mut request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![by_attribute, plain, stop, unknown],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let events = take_events(&mut request);
        assert_eq!(events.len(), 2);
        let left: Vec<u64> =
            request.resource_logs[0].scope_logs[0].log_records.iter().map(|r| r.time_unix_nano).collect();
        assert_eq!(left, vec![4, 4], "the plain log and the unknown event stay logs");
        assert_eq!(events[0].kind, Some(EventKind::Start));
        let stop = &events[1];
        assert_eq!((stop.kind, stop.time_ns, stop.exit_code), (Some(EventKind::Stop), 5, Some(137)));
        assert_eq!(stop.reason.as_deref(), Some("OOMKilled"));
        assert_eq!((stop.workload_kind.as_deref(), stop.workload.as_deref()), (Some("Deployment"), Some("web")));
        assert_eq!(stop.restarts, Some(2));
        assert_eq!(stop.labels.get("app").map(String::as_str), Some("web"));
    }

    #[test]
    fn an_event_without_a_container_id_or_time_is_dropped() {
        let record = LogRecord { event_name: "container.start".into(), time_unix_nano: 1, ..Default::default() };
        let untimed = LogRecord {
            event_name: "container.start".into(),
            attributes: vec![s("container.id", "x")],
            ..Default::default()
        };
        let mut request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs { log_records: vec![record, untimed], ..Default::default() }],
                ..Default::default()
            }],
        };
        assert!(take_events(&mut request).is_empty());
        assert_eq!(request.resource_logs[0].scope_logs[0].log_records.len(), 2);
    }
}
