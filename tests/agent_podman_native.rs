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
use std::time::Duration;

use common::podman::{IMAGE, Podman};
use common::{WakeAgent, WakeServer, wait_until};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn plain_podman_containers_logs_arrive_once_with_their_identity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let mut podman = Podman::with_private_storage(root);
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
        podman.storage_root().as_os_str(),
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
    let id = podman.create(&name, None, script);
    podman.start(&name);
    let ctr_log = podman.storage_root().join("overlay-containers").join(&id).join("userdata/ctr.log");
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
    wait_until(WAIT, "the agent to release the deleted file", || agent.metric("wake_agent_files_watched") == 0.0);
    server.flush();
    assert_eq!(server.count(&lines), 5, "exactly once, after the container is gone");
    assert_eq!(server.count("SELECT count(*) FROM logs"), 5, "nothing else was collected");
    assert_eq!(agent.metric("wake_agent_dropped_records_total"), 0.0);
}
