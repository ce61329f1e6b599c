//! Container lifecycle for the store's inventory: when each container started, when and how
//! it ended, from which image, sent as OTLP log events (`container.start`, `container.stop`,
//! `container.remove`, `container.update`) as they happen.
//!
//! - `podman`: podman's events log, tailed; image ids and digests from containers/storage.
//! - `docker`: Docker's `config.v2.json` of each container, re-read when dockerd rewrites it.
//! - `workload`: the owning Deployment, StatefulSet, DaemonSet or Job of a pod.
//!
//! The runtimes are authoritative for the containers they know. A container only the kubelet
//! log layout shows still gets a start when its `<restart>.log` appears and a stop when CRI-O's
//! conmon writes its exit code (`/var/run/crio/exits/<id>`), or when the next restart's file
//! appears or its pod's directory goes (containerd, whose state is behind its API: without exit
//! code). A loop wakes on inotify events (podman's log, Docker's configs)
//! and whenever the log reader's scan saw files come or go, and every `rescan_interval`; it
//! compares what the sources say with what it sent and sends the difference, retried until the
//! store acknowledged it. The store merges events idempotently, so whatever is sent again
//! after an agent restart changes nothing.
//!
//! OOM kills: Docker records them (`OOMKilled`); podman does not under cgroup v1, so for a
//! container that exited with 137 the agent reads the cgroup's `oom_kill` counter at once
//! (podman removes the cgroup only at cleanup, after the `died` event), and falls back on the
//! last value the metrics loop read.

mod docker;
mod podman;
mod workload;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

pub use docker::DockerContainers;
pub use podman::PodmanEvents;
pub use workload::workload_of;

use crate::cgroup::CgroupReader;
use crate::config::AgentConfig;
use crate::export::{ExportError, Exporter};
use crate::identity::{ContainerIdentity, int_attribute, string_attribute};
use crate::time::now_unix_nano;

pub const SCOPE_NAME: &str = "wake.agent.lifecycle";

/// The last `oom_kill` count the metrics loop read for each container id.
pub type OomCounts = Arc<Mutex<HashMap<String, u64>>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    Created,
    Running,
    Exited,
}

/// What a source knows of one container.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Facts {
    pub id: String,
    pub runtime: &'static str,
    pub name: Option<String>,
    pub image_name: Option<String>,
    pub image_id: Option<String>,
    pub image_digest: Option<String>,
    pub state: RunState,
    pub started_at_ns: Option<i64>,
    pub finished_at_ns: Option<i64>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub restarts: i64,
    pub removed_at_ns: Option<i64>,
    pub labels: BTreeMap<String, String>,
}

impl Facts {
    pub fn new(id: &str, runtime: &'static str) -> Facts {
        Facts {
            id: id.to_string(),
            runtime,
            name: None,
            image_name: None,
            image_id: None,
            image_digest: None,
            state: RunState::Created,
            started_at_ns: None,
            finished_at_ns: None,
            exit_code: None,
            oom_killed: false,
            restarts: 0,
            removed_at_ns: None,
            labels: BTreeMap::new(),
        }
    }

    /// Kubernetes' words for how a container ended.
    fn reason(&self) -> Option<&'static str> {
        if self.oom_killed {
            return Some("OOMKilled");
        }
        match self.exit_code? {
            0 => Some("Completed"),
            _ => Some("Error"),
        }
    }
}

/// What was last sent for one container.
#[derive(Debug, Default)]
struct Sent {
    started_at_ns: Option<i64>,
    stopped: Option<Option<i64>>,
    removed: bool,
    fingerprint: u64,
}

/// One event to send, with the identity it is sent under.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: &'static str,
    pub time_ns: i64,
    pub facts: Facts,
    pub identity: ContainerIdentity,
}

/// Compares what the sources say with what was sent, and says what to send.
#[derive(Default)]
pub struct Tracker {
    sent: HashMap<String, Sent>,
}

fn fingerprint(facts: &Facts, identity: &ContainerIdentity) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&facts.name, &facts.image_name, &facts.image_id, &facts.image_digest, &facts.labels, facts.restarts)
        .hash(&mut hasher);
    identity.hash(&mut hasher);
    hasher.finish()
}

impl Tracker {
    /// The events that bring the store up to `facts`, in order; remembers them as sent.
    pub fn diff(&mut self, facts: &Facts, identity: &ContainerIdentity, now_ns: i64) -> Vec<Event> {
        let mut events = Vec::new();
        if facts.state == RunState::Created && facts.removed_at_ns.is_none() {
            return events;
        }
        let print = fingerprint(facts, identity);
        let mut event = |name, time_ns| {
            events.push(Event { name, time_ns, facts: facts.clone(), identity: identity.clone() });
        };
        let sent = self.sent.entry(facts.id.clone()).or_default();
        let mut announced = false;
        if facts.state != RunState::Created && (sent.fingerprint == 0 || sent.started_at_ns != facts.started_at_ns) {
            event("container.start", facts.started_at_ns.unwrap_or(now_ns));
            sent.started_at_ns = facts.started_at_ns;
            sent.stopped = None;
            announced = true;
        }
        if facts.state == RunState::Exited && sent.stopped != Some(facts.finished_at_ns) {
            event("container.stop", facts.finished_at_ns.unwrap_or(now_ns));
            sent.stopped = Some(facts.finished_at_ns);
            announced = true;
        }
        if let Some(removed) = facts.removed_at_ns
            && !sent.removed
        {
            event("container.remove", removed);
            sent.removed = true;
            announced = true;
        }
        if !announced && sent.fingerprint != print {
            event("container.update", now_ns);
        }
        sent.fingerprint = print;
        events
    }

    /// Forgets a container (removed, and its removal sent).
    pub fn forget(&mut self, id: &str) {
        self.sent.remove(id);
    }
}

fn attributes_of(event: &Event) -> (Vec<KeyValue>, Vec<KeyValue>) {
    let facts = &event.facts;
    let mut identity = event.identity.clone();
    identity.container_id = Some(facts.id.clone());
    if identity.container_name.is_none() {
        identity.container_name.clone_from(&facts.name);
    }
    if facts.image_name.is_some() {
        identity.image_name.clone_from(&facts.image_name);
    }
    let mut resource = identity.resource_attributes();
    resource.push(string_attribute("container.runtime", facts.runtime));
    if let Some(name) = &facts.name {
        resource.push(string_attribute("container.name", name));
    }
    if let Some(image_id) = &facts.image_id {
        resource.push(string_attribute("container.image.id", image_id));
    }
    if let Some(digest) = &facts.image_digest {
        let digest = AnyValue { value: Some(any_value::Value::StringValue(digest.clone())) };
        resource.push(KeyValue {
            key: "container.image.repo_digests".into(),
            value: Some(AnyValue { value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![digest] })) }),
            ..Default::default()
        });
    }
    if let Some(pod) = &identity.pod_name
        && let Some((kind, name)) = workload_of(pod, &facts.labels)
    {
        resource.push(string_attribute("k8s.workload.kind", kind));
        resource.push(string_attribute("k8s.workload.name", &name));
    }
    for (key, value) in facts.labels.iter().take(64) {
        resource.push(string_attribute(&format!("k8s.pod.label.{key}"), value));
    }
    if identity.restart_count.is_none() && facts.restarts > 0 {
        resource.push(int_attribute("k8s.container.restart_count", facts.restarts));
    }
    let mut record = vec![string_attribute("event.name", event.name)];
    if let Some(started) = facts.started_at_ns {
        record.push(int_attribute("container.started_at", started));
    }
    if event.name == "container.stop" || event.name == "container.remove" {
        if let Some(finished) = facts.finished_at_ns {
            record.push(int_attribute("container.finished_at", finished));
        }
        if let Some(code) = facts.exit_code {
            record.push(int_attribute("container.exit_code", code));
        }
        if let Some(reason) = facts.reason() {
            record.push(string_attribute("container.exit_reason", reason));
        }
    }
    (resource, record)
}

fn body_of(event: &Event) -> String {
    let name = event.facts.name.as_deref().or(event.identity.container_name.as_deref()).unwrap_or(&event.facts.id);
    match event.name {
        "container.start" => format!("container {name} started"),
        "container.stop" => match (event.facts.exit_code, event.facts.reason()) {
            (Some(code), Some(reason)) => format!("container {name} exited with code {code} ({reason})"),
            _ => format!("container {name} exited"),
        },
        "container.remove" => format!("container {name} removed"),
        _ => format!("container {name} updated"),
    }
}

/// The OTLP request carrying `events`, one resource per event.
pub fn to_request(events: &[Event]) -> ExportLogsServiceRequest {
    let scope = InstrumentationScope {
        name: SCOPE_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let observed = now_unix_nano();
    let resource_logs = events
        .iter()
        .map(|event| {
            let (resource, attributes) = attributes_of(event);
            let failed = event.name == "container.stop" && event.facts.exit_code.is_some_and(|c| c != 0);
            let (severity_number, severity_text) =
                if failed { (SeverityNumber::Warn, "WARN") } else { (SeverityNumber::Info, "INFO") };
            let record = LogRecord {
                time_unix_nano: u64::try_from(event.time_ns).unwrap_or_default(),
                observed_time_unix_nano: observed,
                severity_number: severity_number as i32,
                severity_text: severity_text.into(),
                body: Some(AnyValue { value: Some(any_value::Value::StringValue(body_of(event))) }),
                attributes,
                event_name: event.name.into(),
                ..Default::default()
            };
            ResourceLogs {
                resource: Some(Resource { attributes: resource, ..Default::default() }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope.clone()),
                    log_records: vec![record],
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    ExportLogsServiceRequest { resource_logs }
}

/// The kubelet log layout's view, for containers no runtime source knows: a `<restart>.log`
/// is a container instance, started when its file was created; a newer restart of the same
/// container, or the file gone with its pod, ends it.
#[derive(Default)]
struct KubeletContainers {
    containers: HashMap<String, Facts>,
    /// CRI-O's conmon writes each container's exit code to `<exits_dir>/<id>` when it ends.
    exits_dir: Option<std::path::PathBuf>,
}

/// The exit code CRI-O recorded for a container, and when (the file's modification time).
fn crio_exit(exits_dir: &std::path::Path, id: &str) -> Option<(i64, i64)> {
    let path = exits_dir.join(id);
    let code = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
    let time = std::fs::metadata(&path).ok()?.modified().ok()?;
    Some((code, i64::try_from(time.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos()).ok()?))
}

fn created_ns(path: &std::path::Path) -> Option<i64> {
    let metadata = std::fs::metadata(path).ok()?;
    let time = metadata.created().or_else(|_| metadata.modified()).ok()?;
    i64::try_from(time.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos()).ok()
}

impl KubeletContainers {
    /// `scanned`: the log files of containers no runtime source knows, by container id.
    fn update(&mut self, scanned: &HashMap<String, crate::discovery::Source>, now_ns: i64) {
        type Key = (Option<String>, Option<String>, Option<String>);
        let key = |identity: &ContainerIdentity| -> Key {
            (identity.namespace.clone(), identity.pod_name.clone(), identity.container_name.clone())
        };
        let mut newest: HashMap<Key, u32> = HashMap::new();
        for source in scanned.values() {
            let restart = source.identity.restart_count.unwrap_or(0);
            newest.entry(key(&source.identity)).and_modify(|n| *n = (*n).max(restart)).or_insert(restart);
        }
        for (id, source) in scanned {
            let identity = &source.identity;
            if identity.pod_name.is_none() || identity.restart_count.is_none() {
                continue;
            }
            let facts = self.containers.entry(id.clone()).or_insert_with(|| {
                let mut facts = Facts::new(id, "cri");
                facts.state = RunState::Running;
                facts.started_at_ns = Some(created_ns(&source.path).unwrap_or(now_ns));
                facts
            });
            facts.image_name.clone_from(&identity.image_name);
            if facts.state == RunState::Running
                && let Some((code, finished)) = self.exits_dir.as_deref().and_then(|dir| crio_exit(dir, id))
            {
                facts.state = RunState::Exited;
                facts.finished_at_ns = Some(finished);
                facts.exit_code = Some(code);
                facts.runtime = "cri-o";
            }
            let superseded = newest.get(&key(identity)).is_some_and(|&n| n > identity.restart_count.unwrap_or(0));
            if facts.state == RunState::Running && superseded {
                facts.state = RunState::Exited;
                facts.finished_at_ns = Some(now_ns);
            }
        }
        for (id, facts) in &mut self.containers {
            if !scanned.contains_key(id) && facts.removed_at_ns.is_none() {
                if facts.state == RunState::Running {
                    facts.state = RunState::Exited;
                    facts.finished_at_ns = Some(now_ns);
                }
                facts.removed_at_ns = Some(now_ns);
            }
        }
    }
}

/// The oom_kill count of a container's cgroup now, if it still has one.
fn oom_kills_now(cgroups: &CgroupReader, id: &str) -> Option<u64> {
    let cgroup = cgroups.discover().into_iter().find(|c| c.container_id == id)?;
    cgroups.read(&cgroup).oom_events
}

fn now_ns() -> i64 {
    i64::try_from(now_unix_nano()).unwrap_or(i64::MAX)
}

/// The lifecycle loop of `wake agent`; returns at shutdown.
pub async fn run(
    config: AgentConfig,
    exporter: Arc<Exporter>,
    identities: Arc<parking_lot::RwLock<HashMap<String, ContainerIdentity>>>,
    oom_counts: OomCounts,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let discovery = match config.discovery() {
        Ok(discovery) => discovery,
        Err(error) => {
            warn!(%error, "container lifecycle disabled");
            return;
        }
    };
    let cgroups = CgroupReader::new(config.cgroup_root.clone());
    let mut podman = PodmanEvents::new(config.podman_events_file.clone(), config.containers_storage_root.clone());
    let mut docker = DockerContainers::new(config.docker_root.clone());
    let mut kubelet = KubeletContainers { exits_dir: Some(config.crio_exits_dir.clone()), ..Default::default() };
    let mut tracker = Tracker::default();
    let _watcher = watch_runtimes(&podman, &docker, wake.clone());
    info!(podman_events = %podman.path().display(), docker_root = %docker.root().display(), "container lifecycle started");
    loop {
        let now = now_ns();
        podman.poll();
        docker.poll(now);
        // Exit code 137 from podman: was it the OOM killer? Ask the cgroup before podman's
        // cleanup removes it.
        for facts in podman.containers().values_mut() {
            if facts.state == RunState::Exited && facts.exit_code == Some(137) && !facts.oom_killed {
                let counted = oom_kills_now(&cgroups, &facts.id).or_else(|| oom_counts.lock().get(&facts.id).copied());
                facts.oom_killed = counted.is_some_and(|n| n > 0);
            }
        }
        let scanned: HashMap<String, crate::discovery::Source> = discovery
            .scan()
            .into_iter()
            .filter_map(|source| Some((source.identity.container_id.clone()?, source)))
            .collect();
        let mut known: HashMap<String, ContainerIdentity> = identities.read().clone();
        known.extend(scanned.iter().map(|(id, source)| (id.clone(), source.identity.clone())));
        let mut events = Vec::new();
        let mut gone: Vec<String> = Vec::new();
        let mut runtime_ids = std::collections::HashSet::new();
        let identity_of = |facts: &Facts| {
            known.get(&facts.id).cloned().unwrap_or_else(|| ContainerIdentity {
                container_id: Some(facts.id.clone()),
                container_name: facts.name.clone(),
                node_name: config.node_name.clone(),
                ..ContainerIdentity::default()
            })
        };
        let admitted =
            |identity: &ContainerIdentity| identity.namespace.is_none() || discovery.filters.admits(identity);
        for facts in podman.containers().values().chain(docker.containers().map(|f| &*f)) {
            runtime_ids.insert(facts.id.clone());
            let identity = identity_of(facts);
            if admitted(&identity) {
                events.extend(tracker.diff(facts, &identity, now));
            }
            if facts.removed_at_ns.is_some() {
                gone.push(facts.id.clone());
            }
        }
        let cri_only: HashMap<String, crate::discovery::Source> =
            scanned.into_iter().filter(|(id, _)| !runtime_ids.contains(id)).collect();
        kubelet.update(&cri_only, now);
        for facts in kubelet.containers.values() {
            if runtime_ids.contains(&facts.id) {
                continue;
            }
            let identity = identity_of(facts);
            if admitted(&identity) {
                events.extend(tracker.diff(facts, &identity, now));
            }
            if facts.removed_at_ns.is_some() {
                gone.push(facts.id.clone());
            }
        }
        let sent = if events.is_empty() {
            true
        } else {
            debug!(events = events.len(), "sending container lifecycle events");
            match exporter.export_logs(to_request(&events), &shutdown).await {
                Ok(_) => true,
                Err(ExportError::Cancelled) => return,
                Err(error) => {
                    // Refused for good (the export retries everything else): sending it again
                    // would be refused again.
                    warn!(%error, events = events.len(), "the store refused container lifecycle events");
                    true
                }
            }
        };
        if sent {
            // Removed and announced: nothing more will happen to them.
            for id in &gone {
                podman.forget(id);
                docker.forget(id);
                kubelet.containers.remove(id);
                tracker.forget(id);
            }
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(config.rescan_interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// inotify on podman's events log and Docker's container configs: each relevant change wakes
/// the loop. `None` (and only the loop's timer) when inotify cannot be had.
fn watch_runtimes(
    podman: &PodmanEvents,
    docker: &DockerContainers,
    wake: Arc<Notify>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let events_file = podman.path().to_path_buf();
    let docker_root = docker.root().to_path_buf();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        // podman's log grew, dockerd rewrote a config, or a container's directory came or went;
        // not the writes to Docker's json logs beside the configs.
        let structural = matches!(event.kind, EventKind::Create(_) | EventKind::Remove(_));
        let relevant = event.need_rescan()
            || event.paths.iter().any(|path| {
                *path == events_file
                    || path.file_name().is_some_and(|name| name == "config.v2.json")
                    || (structural && path.parent() == Some(docker_root.as_path()))
            });
        if relevant {
            wake.notify_one();
        }
    })
    .map_err(|error| warn!(%error, "no inotify for container lifecycle; polling"))
    .ok()?;
    if let Some(dir) = podman.path().parent() {
        let _ = watcher.watch(dir, RecursiveMode::NonRecursive);
    }
    let _ = watcher.watch(docker.root(), RecursiveMode::Recursive);
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(state: RunState) -> Facts {
        let mut facts = Facts::new("c1", "podman");
        facts.state = state;
        facts.started_at_ns = Some(10);
        facts.image_name = Some("localhost/bb:latest".into());
        facts
    }

    fn names(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.name).collect()
    }

    #[test]
    fn the_tracker_sends_each_transition_once() {
        let mut tracker = Tracker::default();
        let identity = ContainerIdentity::default();
        assert!(tracker.diff(&facts(RunState::Created), &identity, 5).is_empty());
        let running = facts(RunState::Running);
        assert_eq!(names(&tracker.diff(&running, &identity, 11)), ["container.start"]);
        assert!(tracker.diff(&running, &identity, 12).is_empty());
        let named = ContainerIdentity { namespace: Some("shop".into()), ..Default::default() };
        assert_eq!(names(&tracker.diff(&running, &named, 13)), ["container.update"]);
        let mut exited = facts(RunState::Exited);
        exited.finished_at_ns = Some(20);
        exited.exit_code = Some(137);
        exited.oom_killed = true;
        let stop = tracker.diff(&exited, &named, 21);
        assert_eq!(names(&stop), ["container.stop"]);
        assert_eq!(stop[0].time_ns, 20);
        // Restarted in place (podman restart): a new start, then its own stop.
        let mut again = facts(RunState::Running);
        again.started_at_ns = Some(30);
        again.restarts = 1;
        assert_eq!(names(&tracker.diff(&again, &named, 31)), ["container.start"]);
        let mut removed = again.clone();
        removed.state = RunState::Exited;
        removed.finished_at_ns = Some(40);
        removed.removed_at_ns = Some(41);
        assert_eq!(names(&tracker.diff(&removed, &named, 42)), ["container.stop", "container.remove"]);
    }

    #[test]
    fn a_cri_container_ends_with_cri_os_exit_code_or_when_its_next_restart_appears() {
        let dir = tempfile::tempdir().unwrap();
        let source = |id: &str, restart: u32| crate::discovery::Source {
            path: dir.path().join(format!("{restart}.log")),
            format: crate::parse::Format::Cri,
            identity: ContainerIdentity {
                namespace: Some("shop".into()),
                pod_name: Some("web-0".into()),
                container_name: Some("app".into()),
                restart_count: Some(restart),
                container_id: Some(id.into()),
                ..Default::default()
            },
        };
        let exits = dir.path().join("exits");
        std::fs::create_dir_all(&exits).unwrap();
        let mut kubelet = KubeletContainers { exits_dir: Some(exits.clone()), ..Default::default() };
        let mut scanned: HashMap<String, crate::discovery::Source> = HashMap::from([("a".into(), source("a", 0))]);
        kubelet.update(&scanned, 10);
        assert_eq!(kubelet.containers["a"].state, RunState::Running);
        std::fs::write(exits.join("a"), "137\n").unwrap();
        kubelet.update(&scanned, 20);
        let a = &kubelet.containers["a"];
        assert_eq!((a.state, a.exit_code, a.runtime), (RunState::Exited, Some(137), "cri-o"));
        // containerd: no exit file; the next restart's log ends the instance before it.
        scanned.insert("b".into(), source("b", 1));
        scanned.insert("c".into(), source("c", 2));
        kubelet.update(&scanned, 30);
        let b = &kubelet.containers["b"];
        assert_eq!((b.state, b.exit_code, b.finished_at_ns), (RunState::Exited, None, Some(30)));
        assert_eq!(kubelet.containers["c"].state, RunState::Running);
        // The pod's files gone: removed.
        kubelet.update(&HashMap::new(), 40);
        assert_eq!(kubelet.containers["c"].removed_at_ns, Some(40));
    }

    #[test]
    fn an_event_carries_identity_image_and_exit_as_otlp() {
        let mut exited = facts(RunState::Exited);
        exited.finished_at_ns = Some(20);
        exited.exit_code = Some(137);
        exited.oom_killed = true;
        exited.image_id = Some("sha256:98be22".into());
        let identity = ContainerIdentity {
            namespace: Some("shop".into()),
            pod_name: Some("web-7d9c8f6b5-x2x9q".into()),
            container_name: Some("app".into()),
            ..Default::default()
        };
        let event = Event { name: "container.stop", time_ns: 20, facts: exited, identity };
        let request = to_request(&[event]);
        let resource = &request.resource_logs[0].resource.as_ref().unwrap().attributes;
        let record = &request.resource_logs[0].scope_logs[0].log_records[0];
        let text = |attributes: &[KeyValue], key: &str| {
            attributes.iter().find(|kv| kv.key == key).and_then(crate::identity::attribute_text)
        };
        assert_eq!(text(resource, "container.id").as_deref(), Some("c1"));
        assert_eq!(text(resource, "container.image.id").as_deref(), Some("sha256:98be22"));
        assert_eq!(text(resource, "k8s.workload.kind").as_deref(), Some("Deployment"));
        assert_eq!(text(&record.attributes, "container.exit_reason").as_deref(), Some("OOMKilled"));
        assert_eq!(text(&record.attributes, "container.exit_code").as_deref(), Some("137"));
        assert_eq!(record.event_name, "container.stop");
        assert_eq!(record.time_unix_nano, 20);
    }
}
