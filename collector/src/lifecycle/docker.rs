//! Docker's lifecycle, from each container's `config.v2.json`, which dockerd rewrites (write to
//! a temporary file, rename) whenever the container's state changes: `State.Running`,
//! `StartedAt`, `FinishedAt`, `ExitCode`, `OOMKilled`, plus `RestartCount`, the image's name
//! (`Config.Image`) and id (`Image`), and the labels (dockershim's `io.kubernetes.*` ones
//! included). A container whose directory is gone was removed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use super::{Facts, RunState};

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ContainerConfig {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    image: String,
    restart_count: i64,
    state: State,
    config: Config,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct State {
    running: bool,
    restarting: bool,
    #[serde(rename = "OOMKilled")]
    oom_killed: bool,
    exit_code: i64,
    started_at: String,
    finished_at: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Config {
    image: String,
    labels: Option<BTreeMap<String, String>>,
}

/// Docker's "never": `0001-01-01T00:00:00Z`.
fn parse_time(text: &str) -> Option<i64> {
    let time = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    (time.timestamp() > 0).then(|| time.timestamp_nanos_opt()).flatten()
}

/// The containers under Docker's root, re-read when their `config.v2.json` changed.
pub struct DockerContainers {
    root: PathBuf,
    containers: HashMap<String, (Option<SystemTime>, Facts)>,
}

impl DockerContainers {
    pub fn new(root: PathBuf) -> DockerContainers {
        DockerContainers { root, containers: HashMap::new() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Looks at every container's config; returns whether anything changed.
    pub fn poll(&mut self, now_ns: i64) -> bool {
        let Ok(dirs) = std::fs::read_dir(&self.root) else { return false };
        let mut changed = false;
        let mut present = Vec::new();
        for dir in dirs.filter_map(|d| d.ok()) {
            let id = dir.file_name().to_string_lossy().into_owned();
            let config = dir.path().join("config.v2.json");
            let Ok(modified) = std::fs::metadata(&config).and_then(|m| m.modified()) else { continue };
            present.push(id.clone());
            if self.containers.get(&id).is_some_and(|(seen, _)| *seen == Some(modified)) {
                continue;
            }
            let Some(facts) = read(&config, &id) else { continue };
            self.containers.insert(id, (Some(modified), facts));
            changed = true;
        }
        for (id, (_, facts)) in &mut self.containers {
            if facts.removed_at_ns.is_none() && !present.contains(id) {
                facts.removed_at_ns = Some(now_ns);
                if facts.state == RunState::Running {
                    facts.state = RunState::Exited;
                    facts.finished_at_ns = Some(now_ns);
                }
                changed = true;
            }
        }
        changed
    }

    pub fn containers(&mut self) -> impl Iterator<Item = &mut Facts> {
        self.containers.values_mut().map(|(_, facts)| facts)
    }

    pub fn forget(&mut self, id: &str) {
        self.containers.remove(id);
    }
}

fn read(path: &Path, id: &str) -> Option<Facts> {
    let config: ContainerConfig = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let id = if config.id.is_empty() { id.to_string() } else { config.id };
    let mut facts = Facts::new(&id, "docker");
    facts.name = Some(config.name.trim_start_matches('/').to_string()).filter(|n| !n.is_empty());
    facts.image_name = Some(config.config.image).filter(|i| !i.is_empty());
    facts.image_id = Some(config.image).filter(|i| !i.is_empty());
    facts.restarts = config.restart_count;
    facts.labels = config.config.labels.unwrap_or_default();
    facts.started_at_ns = parse_time(&config.state.started_at);
    if config.state.running || config.state.restarting {
        facts.state = RunState::Running;
    } else if let Some(finished) = parse_time(&config.state.finished_at) {
        facts.state = RunState::Exited;
        facts.finished_at_ns = Some(finished);
        facts.exit_code = Some(config.state.exit_code);
        facts.oom_killed = config.state.oom_killed;
    } else {
        // Created, never started.
        facts.state = RunState::Created;
    }
    Some(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, id: &str, state: &str) {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let json = format!(
            r#"{{"ID":"{id}","Name":"/web","Image":"sha256:abc","RestartCount":2,
                 "Config":{{"Image":"nginx:1.25","Labels":{{"io.kubernetes.pod.name":"web-0"}}}},
                 "State":{state}}}"#
        );
        std::fs::write(dir.join("config.v2.json"), json).unwrap();
    }

    #[test]
    fn states_come_from_config_v2_and_a_vanished_directory_is_a_removal() {
        let dir = tempfile::tempdir().unwrap();
        let id = "a".repeat(64);
        write(
            dir.path(),
            &id,
            r#"{"Running":true,"StartedAt":"2026-12-07T10:00:00.5Z","FinishedAt":"0001-01-01T00:00:00Z"}"#,
        );
        let mut docker = DockerContainers::new(dir.path().to_path_buf());
        assert!(docker.poll(0));
        let facts = docker.containers().next().unwrap().clone();
        assert_eq!((facts.state, facts.restarts), (RunState::Running, 2));
        assert_eq!((facts.name.as_deref(), facts.image_name.as_deref()), (Some("web"), Some("nginx:1.25")));
        assert!(!docker.poll(0), "unchanged");

        std::thread::sleep(std::time::Duration::from_millis(20));
        write(
            dir.path(),
            &id,
            r#"{"Running":false,"OOMKilled":true,"ExitCode":137,"StartedAt":"2026-12-07T10:00:00.5Z","FinishedAt":"2026-12-07T10:05:00Z"}"#,
        );
        assert!(docker.poll(0));
        let facts = docker.containers().next().unwrap().clone();
        assert_eq!((facts.state, facts.exit_code, facts.oom_killed), (RunState::Exited, Some(137), true));

        std::fs::remove_dir_all(dir.path().join(&id)).unwrap();
        assert!(docker.poll(99));
        assert_eq!(docker.containers().next().unwrap().removed_at_ns, Some(99));
    }
}
