//! Plain podman, no Kubernetes: a busybox container logs with podman's `k8s-file` driver to its
//! own `<storage>/overlay-containers/<id>/userdata/ctr.log`, which `wake agent` finds through
//! containers/storage's `containers.json`. Every line must arrive exactly once with the
//! container's id, name, image and stream, and the agent must let go of the file once the
//! container is removed.
//!
//! podman runs with its own `--root` and `--runroot` in a temporary directory, so the test
//! sees only its own containers. Needs root, podman, runc and busybox-static (scripts/test.sh
//! installs them).

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{WakeAgent, WakeServer};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const IMAGE: &str = "localhost/wake-test-busybox:latest";

/// podman on a private containers/storage, with a project-local containers.conf (this sandbox
/// refuses podman's default ulimits).
struct Podman {
    conf: PathBuf,
    root: PathBuf,
    runroot: PathBuf,
    names: Vec<String>,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let found = Command::new("podman").arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(found, "podman is needed (apt-get install podman runc busybox-static; scripts/test.sh does it)");
        let conf = dir.join("containers.conf");
        std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").expect("containers.conf");
        let podman = Podman { conf, root: dir.join("storage"), runroot: dir.join("run"), names: Vec::new() };
        podman.import_busybox(dir);
        podman
    }

    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command.env("CONTAINERS_CONF", &self.conf).arg("--root").arg(&self.root).arg("--runroot").arg(&self.runroot);
        command
    }

    fn run(&self, args: &[&OsStr]) -> String {
        let output = self.command().args(args).output().expect("running podman");
        assert!(output.status.success(), "podman {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// No registry is reachable here: the image is busybox-static imported from a tarball.
    fn import_busybox(&self, dir: &Path) {
        let root = dir.join("image-root");
        std::fs::create_dir_all(root.join("bin")).expect("image root");
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("/bin/busybox (busybox-static)");
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("sh link");
        let tarball = dir.join("busybox.tar");
        let tar = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tarball).arg(".").status();
        assert!(tar.is_ok_and(|s| s.success()), "tar of the image root");
        self.run(&["import".as_ref(), "-q".as_ref(), tarball.as_os_str(), IMAGE.as_ref()]);
    }

    /// Creates (not starts) a container logging with `k8s-file` to podman's default place;
    /// returns its id.
    fn create(&mut self, name: &str, script: &str) -> String {
        let id = self.run(&[
            "create".as_ref(),
            "--name".as_ref(),
            name.as_ref(),
            "--runtime".as_ref(),
            "runc".as_ref(),
            "--cgroup-manager".as_ref(),
            "cgroupfs".as_ref(),
            "--log-driver".as_ref(),
            "k8s-file".as_ref(),
            IMAGE.as_ref(),
            "/bin/sh".as_ref(),
            "-c".as_ref(),
            script.as_ref(),
        ]);
        self.names.push(name.to_string());
        id
    }

    fn start(&self, name: &str) {
        self.run(&["start".as_ref(), name.as_ref()]);
    }

    fn wait(&self, name: &str) {
        self.run(&["wait".as_ref(), name.as_ref()]);
    }

    fn remove(&mut self, name: &str) {
        self.run(&["rm".as_ref(), "-f".as_ref(), name.as_ref()]);
        self.names.retain(|n| n != name);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.command().args(["rm", "-f", name]).output();
        }
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn plain_podman_containers_logs_arrive_once_with_their_identity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let mut podman = Podman::new(root);
    let server = WakeServer::start(&root.join("data"), &[]);

    let pods = root.join("no-pods");
    let docker = root.join("no-docker");
    std::fs::create_dir_all(&pods).expect("empty log root");
    std::fs::create_dir_all(&docker).expect("empty docker root");
    let state = root.join("state");
    let endpoint = server.grpc_endpoint();
    let args: Vec<&OsStr> = vec![
        "--endpoint".as_ref(),
        endpoint.as_ref(),
        "--containers-storage-root".as_ref(),
        podman.root.as_os_str(),
        "--log-root".as_ref(),
        pods.as_os_str(),
        "--docker-root".as_ref(),
        docker.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        "--node-name".as_ref(),
        "node-podman".as_ref(),
        "--release-after".as_ref(),
        "1s".as_ref(),
        "--batch-timeout".as_ref(),
        "200ms".as_ref(),
    ];
    let agent = WakeAgent::start(&args);

    // Lines before and after the agent has found the file (the sleep), on both streams.
    let name = format!("wake-native-{}", std::process::id());
    let script = "echo out-1; echo err-1 >&2; echo out-2; sleep 3; echo out-3; echo err-2 >&2";
    let id = podman.create(&name, script);
    podman.start(&name);
    let ctr_log = podman.root.join("overlay-containers").join(&id).join("userdata/ctr.log");
    assert!(ctr_log.is_file(), "podman's k8s-file log at {}", ctr_log.display());

    let lines = format!("SELECT count(*) FROM logs WHERE container_id = '{id}'");
    server.wait_for_count(&lines, 5, WAIT);
    podman.wait(&name);
    let raw = std::fs::read_to_string(&ctr_log).expect("conmon's log");
    assert!(raw.contains(" stderr F err-2\n"), "CRI format:\n{raw}");

    let rows = server.sql_rows(&format!(
        "SELECT body, log_iostream, k8s_container_name, k8s_node_name, k8s_namespace_name, k8s_pod_name, \
                resource_attributes['container.image.name'] \
         FROM logs WHERE container_id = '{id}' ORDER BY body"
    ));
    let row = |body: &str, stream: &str| {
        vec![json!(body), json!(stream), json!(name), json!("node-podman"), Value::Null, Value::Null, json!(IMAGE)]
    };
    let expected = vec![
        row("err-1", "stderr"),
        row("err-2", "stderr"),
        row("out-1", "stdout"),
        row("out-2", "stdout"),
        row("out-3", "stdout"),
    ];
    assert_eq!(rows, expected);

    // The container is removed with its userdata: the agent releases the file, and the store
    // still has every line exactly once.
    podman.remove(&name);
    assert!(!ctr_log.exists(), "podman rm deletes the log");
    wait_until("the agent to release the deleted file", || agent.metric("wake_agent_files_watched") == 0.0);
    server.flush();
    assert_eq!(server.count(&lines), 5, "exactly once, after the container is gone");
    assert_eq!(server.count("SELECT count(*) FROM logs"), 5, "nothing else was collected");
    assert_eq!(agent.metric("wake_agent_dropped_records_total"), 0.0);
}
