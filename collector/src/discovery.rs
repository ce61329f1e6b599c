//! Finding container log files and who wrote them.
//!
//! - Kubernetes (CRI) layout: `<log-root>/<namespace>_<pod>_<pod-uid>/<container>/<restart>.log`.
//!   Namespaces and pod names are DNS labels and cannot contain `_`, so the directory name
//!   splits unambiguously. The container id comes from kubelet's symlinks
//!   `<containers-dir>/<pod>_<namespace>_<container>-<id>.log`, which point at those files.
//! - Docker `json-file`: `<docker-root>/<id>/<id>-json.log`, with the container's name, image
//!   and (under dockershim or cri-dockerd) Kubernetes labels in `<docker-root>/<id>/config.v2.json`.
//! - podman's `k8s-file` driver without a `path=` option: CRI-format logs written by conmon to
//!   `<containers-storage>/overlay-containers/<id>/userdata/ctr.log`, for the containers listed in
//!   `<containers-storage>/overlay-containers/containers.json` (`id`, `names`, and `metadata`, a
//!   JSON string holding `image-name`). The container's OCI spec beside the log
//!   (`userdata/config.json`) may carry Kubernetes annotations (`io.kubernetes.pod.name`...), which
//!   then give the identity. With `--log-opt max-size`, conmon rotates by writing `ctr.log.tmp`
//!   and renaming it over `ctr.log`: no rotated file is kept, and the tailer still holds the old
//!   one open to read its end.
//!
//! The image name is read from whatever runtime metadata the node has ([`RuntimeMetadata`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use tracing::debug;

use crate::checkpoint::FileId;
use crate::identity::ContainerIdentity;
use crate::parse::Format;

/// A log file to tail.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub path: PathBuf,
    pub format: Format,
    pub identity: ContainerIdentity,
}

/// Glob patterns on namespace, pod and container names; an empty include list includes all.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub include_namespaces: Vec<glob::Pattern>,
    pub exclude_namespaces: Vec<glob::Pattern>,
    pub include_pods: Vec<glob::Pattern>,
    pub exclude_pods: Vec<glob::Pattern>,
    pub include_containers: Vec<glob::Pattern>,
    pub exclude_containers: Vec<glob::Pattern>,
}

impl Filters {
    pub fn admits(&self, identity: &ContainerIdentity) -> bool {
        fn admits(value: &Option<String>, include: &[glob::Pattern], exclude: &[glob::Pattern]) -> bool {
            let value = value.as_deref().unwrap_or("");
            (include.is_empty() || include.iter().any(|p| p.matches(value)))
                && !exclude.iter().any(|p| p.matches(value))
        }
        admits(&identity.namespace, &self.include_namespaces, &self.exclude_namespaces)
            && admits(&identity.pod_name, &self.include_pods, &self.exclude_pods)
            && admits(&identity.container_name, &self.include_containers, &self.exclude_containers)
    }
}

/// Where the container runtimes of a node keep their metadata.
#[derive(Clone, Debug)]
pub struct RuntimeMetadata {
    pub docker_root: PathBuf,
    /// containerd's runtime v2 task state (`/run/containerd/io.containerd.runtime.v2.task`).
    pub containerd_task_root: PathBuf,
    /// containers/storage, shared by CRI-O and podman (`/var/lib/containers/storage`).
    pub containers_storage_root: PathBuf,
}

impl RuntimeMetadata {
    /// The image a container runs, from the first runtime that knows the container.
    pub fn image_name(&self, container_id: &str) -> Option<String> {
        let docker = self.docker_root.join(container_id).join("config.v2.json");
        if let Some(config) = read_json(&docker) {
            return config.pointer("/Config/Image").and_then(Value::as_str).map(str::to_string);
        }
        for namespace in ["k8s.io", "moby", "default"] {
            let spec = self.containerd_task_root.join(namespace).join(container_id).join("config.json");
            if let Some(image) = read_json(&spec).and_then(|s| annotation(&s, "io.kubernetes.cri.image-name")) {
                return Some(image);
            }
        }
        let containers = self.overlay_containers();
        let spec = read_json(&containers.join(container_id).join("userdata").join("config.json"));
        if let Some(image) = storage_image_name(spec.as_ref(), None) {
            return Some(image);
        }
        let all = self.storage_containers();
        storage_image_name(None, all.iter().find(|c| c.id == container_id))
    }

    fn overlay_containers(&self) -> PathBuf {
        self.containers_storage_root.join("overlay-containers")
    }

    /// containers/storage's list of containers (podman's and CRI-O's); empty if there is none.
    fn storage_containers(&self) -> Vec<StorageContainer> {
        read_json(&self.overlay_containers().join("containers.json"))
            .and_then(|v| {
                serde_json::from_value(v)
                    .map_err(|error| debug!(%error, "unreadable containers/storage containers.json"))
                    .ok()
            })
            .unwrap_or_default()
    }
}

/// The image of a containers/storage container: CRI-O's annotation in its OCI spec, else the
/// image name podman (and CRI-O) record in containers/storage's own metadata.
fn storage_image_name(spec: Option<&Value>, entry: Option<&StorageContainer>) -> Option<String> {
    if let Some(image) = spec.and_then(|s| annotation(s, "io.kubernetes.cri-o.ImageName")) {
        return Some(image);
    }
    let metadata: Value = serde_json::from_str(entry?.metadata.as_deref()?).ok()?;
    metadata.get("image-name").and_then(Value::as_str).map(str::to_string)
}

/// One entry of `overlay-containers/containers.json`.
#[derive(Default, Deserialize)]
struct StorageContainer {
    #[serde(default)]
    id: String,
    #[serde(default)]
    names: Vec<String>,
    /// A JSON document in a string: `{"image-name":…,"image-id":…,"name":…,"created-at":…}`.
    #[serde(default)]
    metadata: Option<String>,
}

fn annotation(spec: &Value, key: &str) -> Option<String> {
    spec.get("annotations")?.get(key)?.as_str().map(str::to_string)
}

fn read_json(path: &Path) -> Option<Value> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes)
        .map_err(|error| debug!(path = %path.display(), %error, "unreadable runtime metadata"))
        .ok()
}

/// Scans the node's log directories.
#[derive(Clone, Debug)]
pub struct Discovery {
    pub log_root: PathBuf,
    pub containers_dir: PathBuf,
    pub docker_root: PathBuf,
    pub node_name: Option<String>,
    pub filters: Filters,
    pub runtime: RuntimeMetadata,
}

impl Discovery {
    /// Every current log file (`<restart>.log`, `<id>-json.log`, podman's `ctr.log`) that the
    /// filters admit. A podman log that is also reached through the other layouts (a link, or
    /// the same file) is left to them, so that no file is listed twice.
    pub fn scan(&self) -> Vec<Source> {
        let mut sources = self.scan_pods();
        sources.extend(self.scan_docker());
        let known: HashSet<FileId> = sources.iter().filter_map(|s| file_id(&s.path)).collect();
        let podman = self.scan_podman();
        sources.extend(podman.into_iter().filter(|s| file_id(&s.path).is_none_or(|id| !known.contains(&id))));
        sources.retain(|source| self.filters.admits(&source.identity));
        sources
    }

    /// Rotated files beside `path` (`0.log.20261123-101500`, `<id>-json.log.1`), which are read
    /// only to finish what a checkpoint says was not read yet. Temporary files (`ctr.log.tmp`,
    /// conmon's next `ctr.log` before its rename) and compressed ones are not.
    pub fn rotated_siblings(path: &Path) -> Vec<PathBuf> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
            return Vec::new();
        };
        let prefix = format!("{name}.");
        read_dir_names(dir)
            .into_iter()
            .filter(|n| n.starts_with(&prefix) && !n.ends_with(".gz") && !n.ends_with(".tmp"))
            .map(|n| dir.join(n))
            .collect()
    }

    fn scan_pods(&self) -> Vec<Source> {
        let container_ids = self.container_ids();
        let mut sources = Vec::new();
        for pod_dir in read_dir_names(&self.log_root) {
            let Some(pod) = PodDir::parse(&pod_dir) else { continue };
            for container in read_dir_names(&self.log_root.join(&pod_dir)) {
                let container_dir = self.log_root.join(&pod_dir).join(&container);
                for file in read_dir_names(&container_dir) {
                    let Some(restart_count) = file.strip_suffix(".log").and_then(|n| n.parse::<u32>().ok()) else {
                        continue;
                    };
                    let path = container_dir.join(&file);
                    let container_id = container_ids.get(&path).cloned();
                    let image_name = container_id.as_deref().and_then(|id| self.runtime.image_name(id));
                    let identity = ContainerIdentity {
                        namespace: Some(pod.namespace.to_string()),
                        pod_name: Some(pod.name.to_string()),
                        pod_uid: Some(pod.uid.to_string()),
                        container_name: Some(container.clone()),
                        restart_count: Some(restart_count),
                        container_id,
                        image_name,
                        node_name: self.node_name.clone(),
                    };
                    sources.push(Source { path, format: Format::Cri, identity });
                }
            }
        }
        sources
    }

    /// Container ids by log file path, from kubelet's symlinks.
    fn container_ids(&self) -> HashMap<PathBuf, String> {
        let mut ids = HashMap::new();
        for name in read_dir_names(&self.containers_dir) {
            let Some(id) = symlink_container_id(&name) else { continue };
            let link = self.containers_dir.join(&name);
            let Ok(target) = std::fs::read_link(&link) else { continue };
            let target = if target.is_absolute() { target } else { self.containers_dir.join(target) };
            ids.insert(normalize(&target), id.to_string());
        }
        ids
    }

    fn scan_docker(&self) -> Vec<Source> {
        let mut sources = Vec::new();
        for id in read_dir_names(&self.docker_root) {
            if !is_container_id(&id) {
                continue;
            }
            let dir = self.docker_root.join(&id);
            let path = dir.join(format!("{id}-json.log"));
            if !path.is_file() {
                continue;
            }
            let config: DockerConfig =
                read_json(&dir.join("config.v2.json")).and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
            let label = |key: &str| config.config.labels.get(key).cloned();
            let identity = ContainerIdentity {
                namespace: label("io.kubernetes.pod.namespace"),
                pod_name: label("io.kubernetes.pod.name"),
                pod_uid: label("io.kubernetes.pod.uid"),
                container_name: label("io.kubernetes.container.name")
                    .or_else(|| Some(config.name.trim_start_matches('/').to_string()).filter(|n| !n.is_empty())),
                restart_count: label("io.kubernetes.container.restartCount").and_then(|n| n.parse().ok()),
                container_id: Some(id.clone()),
                image_name: config.config.image.clone(),
                node_name: self.node_name.clone(),
            };
            sources.push(Source { path, format: Format::DockerJson, identity });
        }
        sources
    }

    /// podman containers logging to their own `userdata/ctr.log` (the `k8s-file` driver without
    /// a `path=` option). Containers whose log is elsewhere, or that use another driver, have no
    /// such file and are skipped; so is everything when containers/storage is absent.
    fn scan_podman(&self) -> Vec<Source> {
        let containers = self.runtime.overlay_containers();
        let mut sources = Vec::new();
        for container in self.runtime.storage_containers() {
            // The id becomes a path component: only plain hex ids are taken.
            if !is_container_id(&container.id) {
                continue;
            }
            let userdata = containers.join(&container.id).join("userdata");
            let path = userdata.join("ctr.log");
            if !path.is_file() {
                continue;
            }
            let spec = read_json(&userdata.join("config.json"));
            let label = |key: &str| spec.as_ref().and_then(|s| annotation(s, key));
            let identity = ContainerIdentity {
                namespace: label("io.kubernetes.pod.namespace"),
                pod_name: label("io.kubernetes.pod.name"),
                pod_uid: label("io.kubernetes.pod.uid"),
                container_name: label("io.kubernetes.container.name")
                    .or_else(|| container.names.first().filter(|n| !n.is_empty()).cloned()),
                restart_count: label("io.kubernetes.container.restartCount").and_then(|n| n.parse().ok()),
                container_id: Some(container.id.clone()),
                image_name: storage_image_name(spec.as_ref(), Some(&container)),
                node_name: self.node_name.clone(),
            };
            sources.push(Source { path, format: Format::Cri, identity });
        }
        sources
    }
}

/// Device and inode of the file `path` leads to.
fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| FileId::of(&m))
}

#[derive(Default, Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: DockerContainerConfig,
}

#[derive(Default, Deserialize)]
struct DockerContainerConfig {
    #[serde(rename = "Image", default)]
    image: Option<String>,
    #[serde(rename = "Labels", default)]
    labels: HashMap<String, String>,
}

struct PodDir<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
}

impl PodDir<'_> {
    fn parse(dir: &str) -> Option<PodDir<'_>> {
        let mut parts = dir.splitn(3, '_');
        let (namespace, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
        if namespace.is_empty() || name.is_empty() || uid.is_empty() {
            return None;
        }
        Some(PodDir { namespace, name, uid })
    }
}

/// The id in a kubelet symlink name `<pod>_<namespace>_<container>-<id>.log`.
fn symlink_container_id(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".log")?;
    let id = &stem[stem.rfind('-')? + 1..];
    is_container_id(id).then_some(id)
}

fn is_container_id(id: &str) -> bool {
    (12..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `a/./b/../c` as `a/c`, without touching the file system (the target may be gone).
fn normalize(path: &Path) -> PathBuf {
    let mut normalized = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                normalized.pop();
            }
            other => normalized.push(other),
        }
    }
    normalized
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "a0b8a83629d2475419bb94585fe620951774ee2b7aca0569231b79288e8ce979";

    fn discovery(root: &Path) -> Discovery {
        Discovery {
            log_root: root.join("var/log/pods"),
            containers_dir: root.join("var/log/containers"),
            docker_root: root.join("var/lib/docker/containers"),
            node_name: Some("node-1".into()),
            filters: Filters::default(),
            runtime: RuntimeMetadata {
                docker_root: root.join("var/lib/docker/containers"),
                containerd_task_root: root.join("run/containerd/io.containerd.runtime.v2.task"),
                containers_storage_root: root.join("var/lib/containers/storage"),
            },
        }
    }

    #[test]
    fn kubernetes_layout_gives_identity_with_container_id_and_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let container_dir = root.join("var/log/pods/shop_web-7d4b9_0f1e2d3c-aaaa-bbbb/nginx");
        std::fs::create_dir_all(&container_dir).unwrap();
        std::fs::write(container_dir.join("0.log"), "").unwrap();
        std::fs::write(container_dir.join("1.log"), "").unwrap();
        std::fs::write(container_dir.join("0.log.20261123-101500"), "").unwrap();
        std::fs::create_dir_all(root.join("var/log/containers")).unwrap();
        std::os::unix::fs::symlink(
            container_dir.join("1.log"),
            root.join(format!("var/log/containers/web-7d4b9_shop_nginx-{ID}.log")),
        )
        .unwrap();
        let task = root.join("run/containerd/io.containerd.runtime.v2.task/k8s.io").join(ID);
        std::fs::create_dir_all(&task).unwrap();
        std::fs::write(task.join("config.json"), r#"{"annotations":{"io.kubernetes.cri.image-name":"nginx:1.27"}}"#)
            .unwrap();

        let sources = discovery(root).scan();
        assert_eq!(sources.len(), 2, "{sources:#?}");
        let restarted = &sources[1];
        assert_eq!(restarted.format, Format::Cri);
        assert_eq!(
            restarted.identity,
            ContainerIdentity {
                namespace: Some("shop".into()),
                pod_name: Some("web-7d4b9".into()),
                pod_uid: Some("0f1e2d3c-aaaa-bbbb".into()),
                container_name: Some("nginx".into()),
                restart_count: Some(1),
                container_id: Some(ID.into()),
                image_name: Some("nginx:1.27".into()),
                node_name: Some("node-1".into()),
            }
        );
        assert_eq!(sources[0].identity.restart_count, Some(0));
        assert_eq!(sources[0].identity.container_id, None, "no symlink points at 0.log");
        assert_eq!(
            Discovery::rotated_siblings(&container_dir.join("0.log")),
            vec![container_dir.join("0.log.20261123-101500")]
        );
    }

    #[test]
    fn docker_json_file_containers_with_kubernetes_labels() {
        let dir = tempfile::tempdir().unwrap();
        let container = dir.path().join("var/lib/docker/containers").join(ID);
        std::fs::create_dir_all(&container).unwrap();
        std::fs::write(container.join(format!("{ID}-json.log")), "").unwrap();
        std::fs::write(
            container.join("config.v2.json"),
            r#"{"Name":"/k8s_app_api-1_prod_uid-1_3","Config":{"Image":"registry/api:2","Labels":{
                "io.kubernetes.pod.namespace":"prod","io.kubernetes.pod.name":"api-1",
                "io.kubernetes.pod.uid":"uid-1","io.kubernetes.container.name":"app",
                "io.kubernetes.container.restartCount":"3"}}}"#,
        )
        .unwrap();
        let sources = discovery(dir.path()).scan();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].format, Format::DockerJson);
        let identity = &sources[0].identity;
        assert_eq!(identity.namespace.as_deref(), Some("prod"));
        assert_eq!(identity.container_name.as_deref(), Some("app"));
        assert_eq!(identity.restart_count, Some(3));
        assert_eq!(identity.image_name.as_deref(), Some("registry/api:2"));
        assert_eq!(identity.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn podman_image_names_come_from_containers_storage() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("var/lib/containers/storage/overlay-containers");
        std::fs::create_dir_all(&storage).unwrap();
        std::fs::write(
            storage.join("containers.json"),
            format!(r#"[{{"id":"{ID}","metadata":"{{\"image-name\":\"localhost/bb:latest\",\"name\":\"t1\"}}"}}]"#),
        )
        .unwrap();
        assert_eq!(discovery(dir.path()).runtime.image_name(ID).as_deref(), Some("localhost/bb:latest"));
        assert_eq!(discovery(dir.path()).runtime.image_name("ffffffffffff"), None);
    }

    const ID2: &str = "f58830e4d05d97ae776c5ec9a0337a715eb9787957831dd041610abc9acfbbf7";
    const ID3: &str = "2efca2a716e9084f8d3b304733b536160e76e5febd1ab1b4909f36c17db3751d";

    /// containers/storage as podman 4 leaves it: the list, and per container `userdata/` with
    /// the OCI spec and (k8s-file driver, default path) `ctr.log`.
    fn podman_container(storage: &Path, id: &str, annotations: &str, log: bool) -> PathBuf {
        let userdata = storage.join(id).join("userdata");
        std::fs::create_dir_all(&userdata).unwrap();
        std::fs::write(
            userdata.join("config.json"),
            format!(r#"{{"ociVersion":"1.0.2","annotations":{annotations}}}"#),
        )
        .unwrap();
        if log {
            std::fs::write(userdata.join("ctr.log"), "2026-11-23T12:44:28.455790729+00:00 stdout F hi\n").unwrap();
        }
        userdata.join("ctr.log")
    }

    fn containers_json(storage: &Path, entries: &[(&str, &str, &str)]) {
        let entries: Vec<Value> = entries
            .iter()
            .map(|(id, name, image)| {
                let metadata = serde_json::json!({ "image-name": image, "name": name, "created-at": 1795437868 });
                serde_json::json!({
                    "id": id, "names": [name], "image": "145b694460d2", "layer": "37de8ca5378c",
                    "metadata": metadata.to_string(), "created": "2026-11-23T12:44:28.323648771Z",
                    "flags": { "MountLabel": "", "ProcessLabel": "" },
                })
            })
            .collect();
        std::fs::write(storage.join("containers.json"), serde_json::to_vec(&entries).unwrap()).unwrap();
    }

    #[test]
    fn podman_k8s_file_logs_in_containers_storage() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("var/lib/containers/storage/overlay-containers");
        // A plain `podman run --log-driver k8s-file`: podman's own annotations only.
        let plain = podman_container(
            &storage,
            ID,
            r#"{"io.container.manager":"libpod","io.kubernetes.cri-o.TTY":"false"}"#,
            true,
        );
        // Kubernetes annotations (`podman run --annotation`, or a runtime that sets them).
        let annotated = podman_container(
            &storage,
            ID2,
            r#"{"io.container.manager":"libpod","io.kubernetes.pod.namespace":"shop",
                "io.kubernetes.pod.name":"web","io.kubernetes.pod.uid":"uid-7",
                "io.kubernetes.container.name":"app","io.kubernetes.container.restartCount":"2"}"#,
            true,
        );
        // `--log-opt path=…` elsewhere, or another log driver: no ctr.log.
        podman_container(&storage, ID3, "{}", false);
        containers_json(
            &storage,
            &[
                (ID, "t1", "localhost/bb:latest"),
                (ID2, "web-app", "localhost/app:2"),
                (ID3, "elsewhere", "localhost/bb:latest"),
                ("../../../../etc", "evil", "x"),
            ],
        );
        std::fs::write(storage.join(ID).join("userdata/ctr.log.tmp"), "").unwrap();

        let sources = discovery(dir.path()).scan();
        assert_eq!(sources.len(), 2, "{sources:#?}");
        assert_eq!(sources[0].path, plain);
        assert_eq!(sources[0].format, Format::Cri);
        assert_eq!(
            sources[0].identity,
            ContainerIdentity {
                container_name: Some("t1".into()),
                container_id: Some(ID.into()),
                image_name: Some("localhost/bb:latest".into()),
                node_name: Some("node-1".into()),
                ..ContainerIdentity::default()
            }
        );
        assert_eq!(sources[1].path, annotated);
        assert_eq!(
            sources[1].identity,
            ContainerIdentity {
                namespace: Some("shop".into()),
                pod_name: Some("web".into()),
                pod_uid: Some("uid-7".into()),
                container_name: Some("app".into()),
                restart_count: Some(2),
                container_id: Some(ID2.into()),
                image_name: Some("localhost/app:2".into()),
                node_name: Some("node-1".into()),
            }
        );
        // conmon's max-size rotation renames ctr.log.tmp over ctr.log and keeps nothing.
        assert_eq!(Discovery::rotated_siblings(&plain), Vec::<PathBuf>::new());

        let only_shop = Discovery {
            filters: Filters { include_namespaces: vec![glob::Pattern::new("shop").unwrap()], ..Filters::default() },
            ..discovery(dir.path())
        };
        assert_eq!(only_shop.scan().iter().map(|s| &s.path).collect::<Vec<_>>(), vec![&annotated]);
    }

    #[test]
    fn a_podman_log_also_in_the_kubernetes_layout_is_listed_once_after_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let storage = root.join("var/lib/containers/storage/overlay-containers");
        let ctr_log = podman_container(&storage, ID, "{}", true);
        let other = podman_container(&storage, ID2, "{}", true);
        containers_json(&storage, &[(ID, "t1", "localhost/bb:latest"), (ID2, "t2", "localhost/bb:latest")]);
        let container_dir = root.join("var/log/pods/shop_web_uid-1/app");
        std::fs::create_dir_all(&container_dir).unwrap();
        std::fs::hard_link(&ctr_log, container_dir.join("0.log")).unwrap();
        std::os::unix::fs::symlink(&ctr_log, container_dir.join("1.log")).unwrap();
        let docker = root.join("var/lib/docker/containers").join(ID3);
        std::fs::create_dir_all(&docker).unwrap();
        std::fs::write(docker.join(format!("{ID3}-json.log")), "").unwrap();

        let sources = discovery(root).scan();
        let paths: Vec<&Path> = sources.iter().map(|s| s.path.as_path()).collect();
        assert_eq!(
            paths,
            vec![
                container_dir.join("0.log").as_path(),
                container_dir.join("1.log").as_path(),
                docker.join(format!("{ID3}-json.log")).as_path(),
                other.as_path(),
            ]
        );
        assert_eq!(sources[0].identity.pod_name.as_deref(), Some("web"), "the Kubernetes layout's identity wins");
    }

    #[test]
    fn no_or_broken_containers_storage_is_skipped_silently() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(discovery(dir.path()).scan(), Vec::new());
        let storage = dir.path().join("var/lib/containers/storage/overlay-containers");
        podman_container(&storage, ID, "{}", true);
        std::fs::write(storage.join("containers.json"), "[{\"id\":").unwrap();
        assert_eq!(discovery(dir.path()).scan(), Vec::new());
        // Unknown fields and missing optional ones are fine; the spec may be missing too.
        std::fs::write(storage.join("containers.json"), format!(r#"[{{"id":"{ID}","future":1}}]"#)).unwrap();
        std::fs::remove_file(storage.join(ID).join("userdata/config.json")).unwrap();
        let sources = discovery(dir.path()).scan();
        assert_eq!(sources.len(), 1);
        assert_eq!(
            sources[0].identity,
            ContainerIdentity {
                container_id: Some(ID.into()),
                node_name: Some("node-1".into()),
                ..ContainerIdentity::default()
            }
        );
    }

    #[test]
    fn filters_include_and_exclude_by_glob() {
        let filters = Filters {
            include_namespaces: vec![glob::Pattern::new("prod-*").unwrap()],
            exclude_containers: vec![glob::Pattern::new("istio-*").unwrap()],
            ..Filters::default()
        };
        let identity = |ns: &str, container: &str| ContainerIdentity {
            namespace: Some(ns.into()),
            container_name: Some(container.into()),
            ..ContainerIdentity::default()
        };
        assert!(filters.admits(&identity("prod-eu", "app")));
        assert!(!filters.admits(&identity("dev", "app")));
        assert!(!filters.admits(&identity("prod-eu", "istio-proxy")));
    }

    #[test]
    fn odd_names_are_skipped() {
        assert!(PodDir::parse("no-underscores").is_none());
        assert!(PodDir::parse("ns__uid").is_none());
        assert_eq!(symlink_container_id("a_b_c-0123456789ab.log"), Some("0123456789ab"));
        assert_eq!(symlink_container_id("a_b_c-notanid.log"), None);
    }
}
