//! The workload that owns a pod, from its labels when the node knows them (the controllers'
//! own labels: `pod-template-hash`, `controller-revision-hash`, `job-name`), else from the
//! shape of the name the controller gave it.

use std::collections::BTreeMap;

/// The characters of the random suffixes Kubernetes generates (`k8s.io/apimachinery`'s
/// `rand.String`: no vowels, no confusable digits).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn is_generated(part: &str, lengths: std::ops::RangeInclusive<usize>) -> bool {
    lengths.contains(&part.len()) && part.bytes().all(|b| SUFFIX_ALPHABET.contains(&b))
}

/// `(kind, name)` of the pod's owner, if it can be told.
pub fn workload_of(pod: &str, labels: &BTreeMap<String, String>) -> Option<(&'static str, String)> {
    let label = |key: &str| labels.get(key).filter(|v| !v.is_empty());
    if let Some(job) = label("batch.kubernetes.io/job-name").or_else(|| label("job-name")) {
        return Some(("Job", job.clone()));
    }
    let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
    if let Some(hash) = label("pod-template-hash") {
        let prefix = pod.strip_suffix(parts[0]).and_then(|p| p.strip_suffix('-'))?;
        let deployment = prefix.strip_suffix(hash.as_str()).and_then(|p| p.strip_suffix('-'))?;
        return Some(("Deployment", deployment.to_string()));
    }
    if label("statefulset.kubernetes.io/pod-name").is_some() || label("apps.kubernetes.io/pod-index").is_some() {
        let (name, _) = pod.rsplit_once('-')?;
        return Some(("StatefulSet", name.to_string()));
    }
    if label("controller-revision-hash").is_some() && label("pod-template-generation").is_some() {
        let (name, _) = pod.rsplit_once('-')?;
        return Some(("DaemonSet", name.to_string()));
    }
    match parts.as_slice() {
        [suffix, hash, name] if is_generated(suffix, 5..=5) && is_generated(hash, 6..=10) => {
            Some(("Deployment", name.to_string()))
        }
        [index, ..] if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) => {
            let (name, _) = pod.rsplit_once('-')?;
            Some(("StatefulSet", name.to_string()))
        }
        // `<name>-<5>` is a DaemonSet's or a Job's pod, which the name alone cannot tell apart.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_from_labels_and_from_names() {
        let none = BTreeMap::new();
        assert_eq!(workload_of("web-7d9c8f6b5-x2x9q", &none), Some(("Deployment", "web".into())));
        assert_eq!(workload_of("my-api-56c4b9d8f7-7xk2p", &none), Some(("Deployment", "my-api".into())));
        assert_eq!(workload_of("db-0", &none), Some(("StatefulSet", "db".into())));
        assert_eq!(workload_of("fluent-bit-x2x9q", &none), None);
        assert_eq!(workload_of("web-1", &none), Some(("StatefulSet", "web".into())));
        let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(
            workload_of(
                "fluent-bit-x2x9q",
                &labels(&[("controller-revision-hash", "5d"), ("pod-template-generation", "1")])
            ),
            Some(("DaemonSet", "fluent-bit".into()))
        );
        assert_eq!(
            workload_of("backup-28391-abcde", &labels(&[("job-name", "backup-28391")])),
            Some(("Job", "backup-28391".into()))
        );
        assert_eq!(
            workload_of("web-abc123-x2x9q", &labels(&[("pod-template-hash", "abc123")])),
            Some(("Deployment", "web".into()))
        );
    }
}
