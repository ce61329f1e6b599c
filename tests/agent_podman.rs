//! Real containers: podman + runc run busybox containers whose CRI logs (conmon's `k8s-file`
//! driver) land in a temporary Kubernetes layout, with kubelet's `/var/log/containers` symlinks
//! made by the test. `wake agent` tails them and reads the containers' real cgroups; `wake
//! server` stores it all. Every line must arrive exactly once with the right identity, the
//! cgroup metrics with the same identity, and all of it must outlive the container.
//!
//! Needs root, podman, runc and busybox-static (scripts/test.sh installs them).

mod common;

use std::ffi::OsStr;
use std::time::Duration;

use common::podman::{IMAGE, Podman};
use common::{WakeAgent, WakeServer, wait_until};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const POD_UID: &str = "5d1e7a52-0000-4000-8000-00000000c0de";

#[test]
fn real_containers_logs_and_cgroup_metrics_arrive_once_with_identity_and_outlive_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let mut podman = Podman::new(root);
    let server = WakeServer::start(&root.join("data"), &[]);
    let pods = root.join("var/log/pods");
    let links = root.join("var/log/containers");
    let container_dir = pods.join(format!("shop_web-1_{POD_UID}/app"));
    std::fs::create_dir_all(&container_dir).expect("pod log dir");
    std::fs::create_dir_all(&links).expect("containers dir");

    let state = root.join("state");
    let empty = root.join("no-docker");
    let endpoint = server.grpc_endpoint();
    let args: Vec<&OsStr> = vec![
        "--endpoint".as_ref(),
        endpoint.as_ref(),
        "--log-root".as_ref(),
        pods.as_os_str(),
        "--docker-root".as_ref(),
        empty.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        "--node-name".as_ref(),
        "node-podman".as_ref(),
        "--metrics-interval".as_ref(),
        "1s".as_ref(),
        "--release-after".as_ref(),
        "1s".as_ref(),
        "--batch-timeout".as_ref(),
        "200ms".as_ref(),
    ];
    let agent = WakeAgent::start(&args);

    // stdout and stderr, a 20,000-byte line (conmon writes it as P chunks), and output that
    // ends without a newline. The sleep keeps the container alive for a few metric intervals.
    let unique = std::process::id();
    let name = format!("wake-e2e-{unique}-0");
    let script = "echo out-1; echo err-1 >&2; i=0; while [ $i -lt 5 ]; do echo loop-$i; i=$((i+1)); done; \
                  head -c 20000 /dev/zero | tr '\\0' y; echo; printf no-newline-end; sleep 4";
    let log0 = container_dir.join("0.log");
    let id = podman.create(&name, Some(&log0), script);
    // kubelet makes the symlink when it creates the container, before starting it.
    std::os::unix::fs::symlink(&log0, links.join(format!("web-1_shop_app-{id}.log"))).expect("symlink");
    podman.start(&name);

    let lines_of =
        |id: &str| format!("SELECT count(*) FROM logs WHERE container_id = '{id}' AND k8s_pod_name = 'web-1'");
    server.wait_for_count(&lines_of(&id), 9, WAIT);
    let raw = std::fs::read_to_string(&log0).expect("conmon's log");
    assert!(raw.contains(" stdout P "), "the long line arrived in P chunks:\n{}", &raw[..raw.len().min(400)]);

    let rows = server.sql_rows(&format!(
        "SELECT body, log_iostream, k8s_namespace_name, k8s_pod_name, k8s_pod_uid, k8s_container_name, k8s_node_name, \
                resource_attributes['container.image.name'], resource_attributes['k8s.container.restart_count'] \
         FROM logs WHERE container_id = '{id}' AND length(body) < 100 ORDER BY body"
    ));
    let row = |body: &str, stream: &str| {
        vec![
            json!(body),
            json!(stream),
            json!("shop"),
            json!("web-1"),
            json!(POD_UID),
            json!("app"),
            json!("node-podman"),
            json!(IMAGE),
            json!("0"),
        ]
    };
    let mut expected = vec![row("err-1", "stderr"), row("no-newline-end", "stdout"), row("out-1", "stdout")];
    expected.extend((0..5).map(|i| row(&format!("loop-{i}"), "stdout")));
    expected.sort_by(|a, b| a[0].as_str().cmp(&b[0].as_str()));
    assert_eq!(rows, expected);
    let long = server.sql_rows(&format!(
        "SELECT length(body), body = repeat('y', 20000), attributes['log.truncated'] FROM logs \
         WHERE container_id = '{id}' AND length(body) >= 100"
    ));
    assert_eq!(long, vec![vec![json!(20000), json!(true), Value::Null]], "reassembled whole, not truncated");

    // The container's real cgroup metrics, with the identity of its logs.
    let metrics_of = |id: &str| {
        format!(
            "SELECT count(*) FROM metrics WHERE container_id = '{id}' AND metric_name = 'container.memory.usage' \
             AND k8s_namespace_name = 'shop' AND k8s_pod_name = 'web-1' AND k8s_container_name = 'app' \
             AND k8s_pod_uid = '{POD_UID}' AND value > 0"
        )
    };
    wait_until(WAIT, "memory metrics of the container", || server.count(&metrics_of(&id)) >= 1);
    let cpu = server.count(&format!(
        "SELECT count(*) FROM metrics WHERE container_id = '{id}' AND metric_name = 'container.cpu.time' \
         AND k8s_pod_name = 'web-1'"
    ));
    assert!(cpu >= 1, "cpu time points: {cpu}");

    // The same metrics through the Prometheus API under cAdvisor's names and labels, as the
    // Kubernetes dashboards query them.
    let cpu_by_pod = r#"sum by (pod) (rate(container_cpu_usage_seconds_total{namespace="shop"}[1m]))"#;
    wait_until(WAIT, "a CPU rate by pod", || !server.promql(cpu_by_pod).is_empty());
    let result = server.promql(cpu_by_pod);
    assert_eq!(result.len(), 1, "{result:?}");
    assert_eq!(result[0]["metric"], json!({ "pod": "web-1" }));
    let rate: f64 = result[0]["value"][1].as_str().and_then(|v| v.parse().ok()).expect("a number");
    assert!(rate.is_finite() && rate >= 0.0, "CPU seconds per second: {rate}");
    let working_set = server.promql(r#"container_memory_working_set_bytes{namespace="shop", container="app"}"#);
    assert!(!working_set.is_empty(), "working set of the container");
    let labels = &working_set[0]["metric"];
    assert_eq!(
        (&labels["pod"], &labels["namespace"], &labels["node"]),
        (&json!("web-1"), &json!("shop"), &json!("node-podman")),
        "{labels}"
    );
    let bytes: f64 = working_set[0]["value"][1].as_str().and_then(|v| v.parse().ok()).expect("a number");
    assert!(bytes > 0.0, "working set bytes: {bytes}");

    // The container restarts: kubelet's next log file is 1.log.
    podman.wait(&name);
    let restarted = format!("wake-e2e-{unique}-1");
    let log1 = container_dir.join("1.log");
    let id1 = podman.create(&restarted, Some(&log1), "echo restarted; echo restarted-err >&2");
    std::os::unix::fs::symlink(&log1, links.join(format!("web-1_shop_app-{id1}.log"))).expect("symlink");
    podman.start(&restarted);
    server.wait_for_count(&lines_of(&id1), 2, WAIT);
    let restart_count = server.sql_rows(&format!(
        "SELECT DISTINCT resource_attributes['k8s.container.restart_count'] FROM logs WHERE container_id = '{id1}'"
    ));
    assert_eq!(restart_count, vec![vec![json!("1")]]);

    // Containers removed, log files and symlinks deleted (kubelet's garbage collection): the
    // agent releases the files, and the store still has everything.
    podman.wait(&restarted);
    podman.remove(&name);
    podman.remove(&restarted);
    std::fs::remove_dir_all(pods.join(format!("shop_web-1_{POD_UID}"))).expect("deleting the pod's logs");
    for entry in std::fs::read_dir(&links).expect("links") {
        std::fs::remove_file(entry.expect("link").path()).expect("deleting a symlink");
    }
    wait_until(WAIT, "the agent to release the deleted files", || agent.metric("wake_agent_files_watched") == 0.0);
    server.flush();
    assert_eq!(server.count(&lines_of(&id)), 9, "exactly once, after the container is gone");
    assert_eq!(server.count(&lines_of(&id1)), 2);
    assert!(server.count(&metrics_of(&id)) >= 1);
    assert_eq!(agent.metric("wake_agent_dropped_records_total"), 0.0);
}
