//! kube-state-metrics' container series, from the inventory, so that the dashboards and alert
//! rules people already have for them work against Wake:
//! - `kube_pod_container_info{namespace, pod, uid, container, image, image_id, container_id}`
//!   = 1 for every running container (`image_id` is the repository digest where known, as
//!   kube-state-metrics reports it, else the runtime's image id; `container_id` is
//!   `<runtime>://<id>`), plus `node` as Wake knows it;
//! - `kube_pod_container_status_restarts_total{namespace, pod, uid, container}`;
//! - `kube_pod_container_status_last_terminated_reason{namespace, pod, uid, container, reason}`
//!   = 1 with the reason the latest ended instance of the container ended for.
//!
//! A container whose latest instance ended more than 15 minutes ago is no longer shown, as
//! kube-state-metrics stops showing a pod the API server deleted.
//!
//! Written as if remote-written (the scope [`crate::schema::REMOTE_WRITE_SCOPE`]), so that the Prometheus API
//! shows these names and labels as they are.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Gauge, Metric, NumberDataPoint, metric, number_data_point};

use super::state::{ContainerRow, InventoryState, Status};
use crate::receiver::remote_write::as_remote_written;

/// A container that ended longer ago than this and has no newer instance is no longer shown
/// (kube-state-metrics shows what the API server still lists).
const TERMINATED_SHOWN_NS: i64 = 15 * 60 * 1_000_000_000;

fn label(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }),
        ..Default::default()
    }
}

fn identity_labels(row: &ContainerRow) -> Vec<KeyValue> {
    let mut labels = Vec::with_capacity(8);
    for (key, value) in [
        ("namespace", &row.namespace),
        ("pod", &row.pod),
        ("uid", &row.pod_uid),
        ("container", &row.container),
        ("node", &row.node),
    ] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            labels.push(label(key, value));
        }
    }
    labels
}

fn point(attributes: Vec<KeyValue>, value: f64, time_ns: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        time_unix_nano: time_ns,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

type Key<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);

fn keep_newer<'a>(map: &mut HashMap<Key<'a>, &'a ContainerRow>, key: Key<'a>, row: &'a ContainerRow) {
    map.entry(key)
        .and_modify(|current| {
            if (row.first_seen_ns, &row.container_id) > (current.first_seen_ns, &current.container_id) {
                *current = row;
            }
        })
        .or_insert(row);
}

/// The series at `now_ns`; `None` when there is nothing to show.
pub fn series(state: &InventoryState, now_ns: i64) -> Option<ExportMetricsServiceRequest> {
    let time = u64::try_from(now_ns).ok()?;
    let (mut info, mut restarts, mut terminated) = (Vec::new(), Vec::new(), Vec::new());
    // The latest instance of each (namespace, pod, container), and the latest that ended.
    let mut latest: HashMap<Key, &ContainerRow> = HashMap::new();
    let mut latest_ended: HashMap<Key, &ContainerRow> = HashMap::new();
    for row in state.rows() {
        if row.container.is_none() {
            continue;
        }
        let key = (row.namespace.as_deref(), row.pod.as_deref(), row.container.as_deref());
        keep_newer(&mut latest, key, row);
        if row.status == Status::Exited {
            keep_newer(&mut latest_ended, key, row);
        }
        if row.status == Status::Running {
            let mut labels = identity_labels(row);
            if let Some(image) = &row.image_name {
                labels.push(label("image", image));
                labels.push(label("image_spec", image));
            }
            if let Some(image_id) = row.image_digest.as_ref().or(row.image_id.as_ref()) {
                labels.push(label("image_id", image_id));
            }
            let runtime = row.runtime.as_deref().unwrap_or("cri");
            labels.push(label("container_id", &format!("{runtime}://{}", row.container_id)));
            info.push(point(labels, 1.0, time));
        }
    }
    for (key, row) in &latest {
        let shown = row.status == Status::Running || now_ns.saturating_sub(row.last_seen_ns) <= TERMINATED_SHOWN_NS;
        if !shown {
            continue;
        }
        #[allow(clippy::cast_precision_loss)] // restart counts are small
        restarts.push(point(identity_labels(row), row.restarts as f64, time));
        if let Some(ended) = latest_ended.get(key)
            && let Some(reason) = ended.reason.as_deref()
        {
            let mut labels = identity_labels(row);
            labels.push(label("reason", reason));
            terminated.push(point(labels, 1.0, time));
        }
    }
    let gauge = |name: &str, data_points: Vec<NumberDataPoint>| Metric {
        name: name.to_string(),
        data: Some(metric::Data::Gauge(Gauge { data_points })),
        ..Default::default()
    };
    let metrics: Vec<Metric> = [
        ("kube_pod_container_info", info),
        ("kube_pod_container_status_restarts_total", restarts),
        ("kube_pod_container_status_last_terminated_reason", terminated),
    ]
    .into_iter()
    .filter(|(_, points)| !points.is_empty())
    .map(|(name, points)| gauge(name, points))
    .collect();
    if metrics.is_empty() {
        return None;
    }
    Some(as_remote_written(metrics))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{ContainerEvent, EventKind};

    fn text(point: &NumberDataPoint, key: &str) -> Option<String> {
        point.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
    }

    #[test]
    fn running_containers_are_info_and_an_oom_killed_predecessor_is_the_last_terminated_reason() {
        let mut state = InventoryState::default();
        let base = ContainerEvent {
            namespace: Some("shop".into()),
            pod: Some("web-0".into()),
            container: Some("app".into()),
            image_name: Some("nginx:1.25".into()),
            image_digest: Some("docker.io/library/nginx@sha256:ab".into()),
            runtime: Some("containerd".into()),
            ..Default::default()
        };
        let old = ContainerEvent { container_id: "old".into(), restarts: Some(0), ..base.clone() };
        let new = ContainerEvent { container_id: "new".into(), restarts: Some(1), ..base };
        state.apply(
            &[
                ContainerEvent { kind: Some(EventKind::Start), time_ns: 10, ..old.clone() },
                ContainerEvent {
                    kind: Some(EventKind::Stop),
                    time_ns: 20,
                    exit_code: Some(137),
                    reason: Some("OOMKilled".into()),
                    ..old
                },
                ContainerEvent { kind: Some(EventKind::Start), time_ns: 30, ..new },
            ],
            100,
        );
        let request = series(&state, 40).unwrap();
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        let points = |name: &str| match &metrics.iter().find(|m| m.name == name).unwrap().data {
            Some(metric::Data::Gauge(gauge)) => gauge.data_points.clone(),
            _ => unreachable!(),
        };
        let info = points("kube_pod_container_info");
        assert_eq!(info.len(), 1);
        assert_eq!(text(&info[0], "container_id").as_deref(), Some("containerd://new"));
        assert_eq!(text(&info[0], "image_id").as_deref(), Some("docker.io/library/nginx@sha256:ab"));
        let restarts = points("kube_pod_container_status_restarts_total");
        assert_eq!(restarts[0].value, Some(number_data_point::Value::AsDouble(1.0)));
        // The running instance's predecessor's end, as kube-state-metrics shows it.
        let terminated = points("kube_pod_container_status_last_terminated_reason");
        assert_eq!(text(&terminated[0], "reason").as_deref(), Some("OOMKilled"));
        assert_eq!(text(&terminated[0], "pod").as_deref(), Some("web-0"));
        // Long after the last instance ended, nothing is shown.
        assert!(series(&InventoryState::default(), 40).is_none());
    }
}
