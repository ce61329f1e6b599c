//! Who wrote a log line or owns a cgroup: the Kubernetes and container identity attached to
//! every record, under the OpenTelemetry semantic-convention names, so that logs and metrics of
//! one container join on the store's identity columns.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

/// The identity of one container (one restart of it), as far as the node can tell.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ContainerIdentity {
    pub namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub container_name: Option<String>,
    pub restart_count: Option<u32>,
    pub container_id: Option<String>,
    pub image_name: Option<String>,
    pub node_name: Option<String>,
}

impl ContainerIdentity {
    /// The OTLP resource attributes of this identity; unknown parts are left out.
    pub fn resource_attributes(&self) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(9);
        let mut push = |key: &str, value: &Option<String>| {
            if let Some(value) = value {
                attributes.push(string_attribute(key, value));
            }
        };
        push("k8s.namespace.name", &self.namespace);
        push("k8s.pod.name", &self.pod_name);
        push("k8s.pod.uid", &self.pod_uid);
        push("k8s.container.name", &self.container_name);
        push("container.id", &self.container_id);
        push("container.image.name", &self.image_name);
        push("k8s.node.name", &self.node_name);
        // service.name is what OpenTelemetry backends group by; a container's name is the
        // closest thing a node knows about the service it runs.
        if let Some(name) = self.container_name.as_ref().or(self.pod_name.as_ref()) {
            attributes.push(string_attribute("service.name", name));
        }
        if let Some(restart_count) = self.restart_count {
            attributes.push(int_attribute("k8s.container.restart_count", i64::from(restart_count)));
        }
        attributes
    }
}

/// A string, integer or boolean attribute's value as text.
pub fn attribute_text(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

pub fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }),
        ..Default::default()
    }
}

pub fn int_attribute(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::IntValue(value)) }),
        ..Default::default()
    }
}

pub fn bool_attribute(key: &str, value: bool) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::BoolValue(value)) }),
        ..Default::default()
    }
}
