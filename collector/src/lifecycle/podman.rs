//! podman's lifecycle, from its events log (`events_logger = "file"`, by default
//! `/run/libpod/events/events.log`): one JSON object per line, written as things happen —
//! `create`, `init`, `start`, `died` (with `ContainerExitCode`), `cleanup`, `remove`, … The
//! agent tails it from where it last read; a shorter file than that offset was rotated, and is
//! read again from its start (the events merge idempotently). Image ids and digests come from
//! containers/storage's `containers.json` and `images.json`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing::debug;

use super::{Facts, RunState};

/// At most this much of the events log is read in one go, so a huge backlog costs bounded memory.
const MAX_READ_BYTES: u64 = 8 * 1024 * 1024;
/// A line longer than this is no podman event: skipped.
const MAX_LINE_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "Status", default)]
    status: String,
    #[serde(rename = "Time", default)]
    time: String,
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(rename = "ContainerExitCode", default)]
    exit_code: Option<i64>,
    #[serde(rename = "Attributes", default)]
    attributes: Option<BTreeMap<String, String>>,
}

/// The containers podman's events log told of, as of the last [`PodmanEvents::poll`].
pub struct PodmanEvents {
    path: PathBuf,
    storage_root: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    containers: HashMap<String, Facts>,
}

fn parse_time(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok()?.timestamp_nanos_opt()
}

impl PodmanEvents {
    pub fn new(path: PathBuf, storage_root: PathBuf) -> PodmanEvents {
        PodmanEvents { path, storage_root, offset: 0, partial: Vec::new(), containers: HashMap::new() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what was appended since the last call; returns whether anything changed.
    pub fn poll(&mut self) -> bool {
        let Ok(mut file) = std::fs::File::open(&self.path) else { return false };
        let Ok(len) = file.metadata().map(|m| m.len()) else { return false };
        if len < self.offset {
            debug!(path = %self.path.display(), "podman's events log was rotated; reading it from its start");
            self.offset = 0;
            self.partial.clear();
        }
        let mut changed = false;
        while self.offset < len {
            let want = (len - self.offset).min(MAX_READ_BYTES);
            let mut chunk = Vec::new();
            if file.seek(SeekFrom::Start(self.offset)).is_err()
                || (&mut file).take(want).read_to_end(&mut chunk).is_err()
                || chunk.is_empty()
            {
                break;
            }
            self.offset += chunk.len() as u64;
            self.partial.extend_from_slice(&chunk);
            let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
                if self.partial.len() > MAX_LINE_BYTES {
                    self.partial.clear();
                }
                continue;
            };
            let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
            for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty() && l.len() <= MAX_LINE_BYTES) {
                changed |= self.apply(line);
            }
        }
        changed
    }

    fn apply(&mut self, line: &[u8]) -> bool {
        let Ok(event) = serde_json::from_slice::<Event>(line) else { return false };
        if event.kind != "container" || event.id.is_empty() {
            return false;
        }
        let Some(time) = parse_time(&event.time) else { return false };
        let facts = self.containers.entry(event.id.clone()).or_insert_with(|| Facts::new(&event.id, "podman"));
        if !event.name.is_empty() {
            facts.name = Some(event.name.clone());
        }
        if !event.image.is_empty() {
            facts.image_name = Some(event.image.clone());
        }
        if let Some(labels) = event.attributes.filter(|a| !a.is_empty()) {
            facts.labels = labels;
        }
        match event.status.as_str() {
            "start" | "restart" => {
                if facts.state == RunState::Exited {
                    facts.restarts += 1;
                }
                facts.state = RunState::Running;
                facts.started_at_ns = Some(time);
                facts.finished_at_ns = None;
                facts.exit_code = None;
                facts.oom_killed = false;
            }
            "died" => {
                facts.state = RunState::Exited;
                facts.finished_at_ns = Some(time);
                // podman leaves out a zero `ContainerExitCode` (Go's `omitempty`).
                facts.exit_code = Some(event.exit_code.unwrap_or(0));
            }
            "remove" => facts.removed_at_ns = Some(time),
            "create" => {}
            _ => return false,
        }
        true
    }

    /// Every container the log told of, with image ids and digests from containers/storage.
    pub fn containers(&mut self) -> &mut HashMap<String, Facts> {
        let missing = self.containers.values().any(|f| f.image_id.is_none() && f.removed_at_ns.is_none());
        if missing {
            let images = storage_images(&self.storage_root);
            for (id, image_id) in storage_container_images(&self.storage_root) {
                if let Some(facts) = self.containers.get_mut(&id)
                    && facts.image_id.is_none()
                {
                    facts.image_digest = images.get(&image_id).and_then(|(names, digest)| {
                        let name = facts.image_name.as_ref().or(names.first())?;
                        let repository = name
                            .rsplit_once(':')
                            .filter(|(_, tag)| !tag.contains('/'))
                            .map_or(name.as_str(), |(r, _)| r);
                        Some(format!("{repository}@{}", digest.as_ref()?))
                    });
                    facts.image_id = Some(format!("sha256:{image_id}"));
                }
            }
        }
        &mut self.containers
    }

    /// Forgets a container once its removal was sent.
    pub fn forget(&mut self, id: &str) {
        self.containers.remove(id);
    }
}

#[derive(Deserialize)]
struct StorageEntry {
    #[serde(default)]
    id: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    digest: Option<String>,
}

fn read_entries(path: &Path) -> Vec<StorageEntry> {
    std::fs::read(path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
}

/// Container id → image id, from `overlay-containers/containers.json`.
fn storage_container_images(root: &Path) -> Vec<(String, String)> {
    read_entries(&root.join("overlay-containers/containers.json"))
        .into_iter()
        .filter(|e| !e.image.is_empty())
        .map(|e| (e.id, e.image))
        .collect()
}

/// Image id → (names, manifest digest), from `overlay-images/images.json`.
fn storage_images(root: &Path) -> HashMap<String, (Vec<String>, Option<String>)> {
    read_entries(&root.join("overlay-images/images.json")).into_iter().map(|e| (e.id, (e.names, e.digest))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4598c03596ae1184754fc92dec3862b757e09f835b6b0dff4f3ac52328b261c0";

    fn line(status: &str, time: &str, extra: &str) -> String {
        format!(
            r#"{{"ID":"{ID}","Image":"localhost/bb:latest","Name":"ex3","Status":"{status}","Time":"{time}","Type":"container","Attributes":{{}}{extra}}}"#
        ) + "\n"
    }

    #[test]
    fn events_fold_into_start_exit_restart_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.log");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(storage.join("overlay-containers")).unwrap();
        std::fs::create_dir_all(storage.join("overlay-images")).unwrap();
        std::fs::write(
            storage.join("overlay-containers/containers.json"),
            format!(r#"[{{"id":"{ID}","image":"98be22","names":["ex3"]}}]"#),
        )
        .unwrap();
        std::fs::write(
            storage.join("overlay-images/images.json"),
            r#"[{"id":"98be22","names":["localhost/bb:latest"],"digest":"sha256:7970ec"}]"#,
        )
        .unwrap();
        let image_event = r#"{"ID":"98be22","Name":"localhost/bb:latest","Status":"tag","Time":"2026-12-07T13:46:44Z","Type":"image"}"#;
        let mut text = format!("{image_event}\n");
        text += &line("create", "2026-12-07T13:46:44.909487377Z", "");
        text += &line("start", "2026-12-07T13:46:45.003893372Z", "");
        std::fs::write(&log, &text).unwrap();
        let mut events = PodmanEvents::new(log.clone(), storage);
        assert!(events.poll());
        let facts = events.containers().get(ID).unwrap().clone();
        assert_eq!(
            (facts.state, facts.started_at_ns),
            (RunState::Running, parse_time("2026-12-07T13:46:45.003893372Z"))
        );
        assert_eq!(facts.image_id.as_deref(), Some("sha256:98be22"));
        assert_eq!(facts.image_digest.as_deref(), Some("localhost/bb@sha256:7970ec"));

        // A half-written line waits for its end.
        let died = line("died", "2026-12-07T13:46:46.034400707Z", r#","ContainerExitCode":3"#);
        let (head, tail) = died.split_at(30);
        std::fs::write(&log, format!("{text}{head}")).unwrap();
        assert!(!events.poll());
        text += &died;
        text += &line("start", "2026-12-07T13:46:47Z", "");
        text += &line("died", "2026-12-07T13:46:47.5Z", "");
        std::fs::write(&log, &text).unwrap();
        assert!(events.poll());
        assert_eq!(events.containers().get(ID).unwrap().exit_code, Some(0), "a zero exit code is left out");
        text += &line("start", "2026-12-07T13:46:47.7Z", "");
        text += &line("died", "2026-12-07T13:46:48Z", r#","ContainerExitCode":137"#);
        text += &line("remove", "2026-12-07T13:46:49Z", "");
        std::fs::write(&log, &text).unwrap();
        let _ = tail;
        assert!(events.poll());
        let facts = events.containers().get(ID).unwrap().clone();
        assert_eq!((facts.state, facts.exit_code, facts.restarts), (RunState::Exited, Some(137), 2));
        assert_eq!(facts.removed_at_ns, parse_time("2026-12-07T13:46:49Z"));
        assert!(!events.poll(), "nothing new");

        // Rotated: read again from the start.
        std::fs::write(&log, line("start", "2026-12-07T13:50:00Z", "")).unwrap();
        assert!(events.poll());
    }
}
