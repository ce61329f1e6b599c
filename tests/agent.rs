//! `wake agent` against a real `wake server`, over log files this test writes the way container
//! runtimes and kubelet do: CRI and Docker `json-file` formats, partial lines, rotation by
//! rename, truncation in place, agent restarts and a store outage. Every line must be stored
//! exactly once with its container's identity; cgroup metrics (from a cgroup v2 fixture tree)
//! must carry the same identity as the logs.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{Node, WakeAgent, WakeServer};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const CONTAINER_ID: &str = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";

/// An agent on `node` sending to `server` over gRPC.
fn start_agent(node: &Node, server: &WakeServer, extra: &[&str]) -> WakeAgent {
    start_agent_to(node, &server.grpc_endpoint(), extra)
}

fn start_agent_to(node: &Node, endpoint: &str, extra: &[&str]) -> WakeAgent {
    let mut args = vec!["--node-name", "node-7", "--release-after", "1s", "--batch-timeout", "200ms"];
    args.extend_from_slice(extra);
    node.agent(endpoint, &args)
}

fn cri(seq: u64, stream: &str, tag: &str, text: &str) -> String {
    format!("2026-11-23T10:00:00.{seq:09}Z {stream} {tag} {text}\n")
}

fn append(path: &Path, text: &str) {
    let mut file = OpenOptions::new().create(true).append(true).open(path).expect("opening a log file");
    file.write_all(text.as_bytes()).expect("appending to a log file");
}

/// `line-<from>` … `line-<to - 1>` as CRI records, stderr for every seventh.
fn lines(from: u64, to: u64) -> String {
    (from..to).map(|n| cri(n, if n % 7 == 0 { "stderr" } else { "stdout" }, "F", &format!("line-{n}"))).collect()
}

/// Every `line-<n>` body is stored exactly once, for n in `expected`.
fn assert_exactly_once(server: &WakeServer, expected: impl Iterator<Item = u64>, moment: &str) {
    let expected: Vec<u64> = expected.collect();
    server.wait_for_count(
        "SELECT count(DISTINCT body) FROM logs WHERE body LIKE 'line-%'",
        expected.len() as u64,
        WAIT,
    );
    let duplicates =
        server.sql_rows("SELECT body, count(*) FROM logs WHERE body LIKE 'line-%' GROUP BY body HAVING count(*) > 1");
    assert!(duplicates.is_empty(), "{moment}: stored more than once: {duplicates:?}");
    let stored: Vec<u64> = server
        .sql_rows("SELECT CAST(substr(body, 6) AS BIGINT) FROM logs WHERE body LIKE 'line-%' ORDER BY 1")
        .into_iter()
        .map(|row| row[0].as_u64().expect("a number"))
        .collect();
    assert_eq!(stored, expected, "{moment}");
}

#[test]
fn every_line_exactly_once_through_rotation_truncation_restarts_and_an_outage() {
    let node = Node::new();
    let data = node.path("data");
    let mut server = WakeServer::start(&data, &[]);
    let container_dir = node.path("var/log/pods/shop_web-1_0a1b2c3d-0000-4000-8000-000000000001/app");
    std::fs::create_dir_all(&container_dir).expect("container dir");
    let log = container_dir.join("0.log");
    std::os::unix::fs::symlink(&log, node.path(&format!("var/log/containers/web-1_shop_app-{CONTAINER_ID}.log")))
        .expect("kubelet's symlink");

    // Written before the agent starts: read from the beginning.
    append(&log, &lines(0, 50));
    let mut agent = start_agent(&node, &server, &["--max-line-bytes", "2048"]);
    assert_exactly_once(&server, 0..50, "initial lines");

    // A line split into P chunks, stdout and stderr interleaved, a line over the cap, and
    // invalid UTF-8.
    append(&log, &cri(50, "stdout", "P", "split-50"));
    append(&log, &cri(51, "stderr", "F", "line-51"));
    append(&log, &cri(52, "stdout", "P", "-part"));
    append(&log, &cri(53, "stdout", "F", "-end"));
    append(&log, &cri(54, "stdout", "F", &format!("long-{}", "x".repeat(5000))));
    let mut invalid = b"2026-11-23T10:00:00.000000055Z stdout F bad-\xff-utf8\n".to_vec();
    invalid.extend_from_slice(lines(55, 60).as_bytes());
    OpenOptions::new().append(true).open(&log).expect("log").write_all(&invalid).expect("append");
    server.wait_for_count("SELECT count(*) FROM logs WHERE body = 'split-50-part-end'", 1, WAIT);
    // Line 54 may come in a later export than line 53.
    server.wait_for_count("SELECT count(*) FROM logs WHERE body LIKE 'long-%'", 1, WAIT);
    let long = server.sql_rows("SELECT length(body), attributes['log.truncated'] FROM logs WHERE body LIKE 'long-%'");
    assert_eq!(long, vec![vec![json!(2048), json!("true")]], "cut at --max-line-bytes and marked");
    server.wait_for_count("SELECT count(*) FROM logs WHERE body = 'bad-\u{fffd}-utf8'", 1, WAIT);
    let expected = || (0..50).chain([51]).chain(55..60);
    assert_exactly_once(&server, expected(), "partial lines");

    // Rotation by rename while the runtime still writes a little to the old handle.
    let mut old_handle = OpenOptions::new().append(true).open(&log).expect("runtime's handle");
    std::fs::rename(&log, container_dir.join("0.log.20261123-100000")).expect("rotating");
    old_handle.write_all(lines(60, 70).as_bytes()).expect("late write to the rotated file");
    drop(old_handle);
    append(&log, &lines(70, 80));
    assert_exactly_once(&server, expected().chain(60..80), "after rotation");

    // Agent stopped: lines written meanwhile, and a rotation it did not see, are read after it
    // restarts, from the checkpoints.
    assert!(agent.process.terminate().success(), "agent exit\n{}", agent.process.log_tail());
    append(&log, &lines(80, 90));
    std::fs::rename(&log, container_dir.join("0.log.20261123-100100")).expect("rotating");
    append(&log, &lines(90, 100));
    let agent = start_agent(&node, &server, &["--max-line-bytes", "2048"]);
    assert_exactly_once(&server, expected().chain(60..100), "after an agent restart");

    // The store goes away (SIGKILL) and comes back on the same port: the agent backs off,
    // then catches up.
    let grpc_addr = server.grpc_addr.to_string();
    server.kill();
    append(&log, &lines(100, 120));
    let deadline = std::time::Instant::now() + WAIT;
    while agent.metric("wake_agent_export_retries_total") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no retry while the store is down\n{}", agent.process.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    let server = WakeServer::start_on(&data, &grpc_addr, &[]);
    assert_exactly_once(&server, expected().chain(60..120), "after the store came back");

    // Truncation in place (copytruncate): reading starts over at 0.
    OpenOptions::new().write(true).open(&log).expect("log").set_len(0).expect("truncating");
    append(&log, &lines(120, 125));
    assert_exactly_once(&server, expected().chain(60..125), "after truncation");

    // Identity and stream, as the OpenTelemetry semantic conventions name them.
    let rows = server.sql_objects(
        "SELECT log_iostream, k8s_namespace_name, k8s_pod_name, k8s_pod_uid, k8s_container_name, container_id, \
                k8s_node_name, service_name, resource_attributes['k8s.container.restart_count'] AS restarts, \
                attributes['log.file.path'] AS path, timestamp \
         FROM logs WHERE body IN ('line-7', 'line-8')  ORDER BY body",
    );
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["log_iostream"], "stderr");
    assert_eq!(rows[1]["log_iostream"], "stdout");
    assert_eq!(rows[0]["k8s_namespace_name"], "shop");
    assert_eq!(rows[0]["k8s_pod_name"], "web-1");
    assert_eq!(rows[0]["k8s_pod_uid"], "0a1b2c3d-0000-4000-8000-000000000001");
    assert_eq!(rows[0]["k8s_container_name"], "app");
    assert_eq!(rows[0]["container_id"], CONTAINER_ID);
    assert_eq!(rows[0]["k8s_node_name"], "node-7");
    assert_eq!(rows[0]["restarts"], "0");
    assert_eq!(rows[0]["path"], log.display().to_string());
    assert_eq!(rows[0]["timestamp"], "2026-11-23T10:00:00.000000007Z", "the runtime's time");

    // Deleted files are read to their end and released; what they held stays queryable.
    for entry in std::fs::read_dir(&container_dir).expect("container dir") {
        std::fs::remove_file(entry.expect("entry").path()).expect("deleting a log file");
    }
    let deadline = std::time::Instant::now() + WAIT;
    while agent.metric("wake_agent_files_watched") > 0.0 {
        assert!(std::time::Instant::now() < deadline, "files not released\n{}", agent.process.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    }
    server.flush();
    assert_exactly_once(&server, expected().chain(60..125), "after the files were deleted");
    // The restarted agent read lines 80 to 124 and nothing before its checkpoints.
    assert_eq!(agent.metric("wake_agent_read_lines_total"), 45.0);
}

#[test]
fn docker_json_file_logs_keep_identity_and_join_their_cgroup_metrics() {
    let node = Node::new();
    let server = WakeServer::start(&node.path("data"), &[]);

    // A Docker json-file container started by cri-dockerd, with Kubernetes labels.
    let container = node.path("docker").join(CONTAINER_ID);
    std::fs::create_dir_all(&container).expect("container dir");
    std::fs::write(
        container.join("config.v2.json"),
        json!({
            "Name": "/k8s_api_api-7f9_prod_9e8d7c6b-0000-4000-8000-000000000002_2",
            "Config": {
                "Image": "registry.local/api:1.4",
                "Labels": {
                    "io.kubernetes.pod.namespace": "prod",
                    "io.kubernetes.pod.name": "api-7f9",
                    "io.kubernetes.pod.uid": "9e8d7c6b-0000-4000-8000-000000000002",
                    "io.kubernetes.container.name": "api",
                    "io.kubernetes.container.restartCount": "2"
                }
            }
        })
        .to_string(),
    )
    .expect("config.v2.json");
    let docker_line = |log: &str, stream: &str, n: u32| {
        json!({ "log": log, "stream": stream, "time": format!("2026-11-23T10:00:00.{n:09}Z") }).to_string() + "\n"
    };
    let log = container.join(format!("{CONTAINER_ID}-json.log"));
    let mut text = String::new();
    text += &docker_line("started\n", "stdout", 1);
    text += &docker_line("a 16k chunk ", "stderr", 2);
    text += &docker_line("and its end\n", "stderr", 3);
    text += &docker_line("unicode: żółw 🐢\n", "stdout", 4);
    File::create(&log).and_then(|mut f| f.write_all(text.as_bytes())).expect("json log");

    // The container's cgroup (v2, systemd driver), in the kernel's formats.
    let cgroup = node.path("cgroup");
    std::fs::write(cgroup.join("cgroup.controllers"), "cpuset cpu io memory pids\n").expect("v2 root");
    let scope = cgroup.join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod9e8d7c6b_0000_4000_8000_000000000002.slice/\
         docker-{CONTAINER_ID}.scope"
    ));
    std::fs::create_dir_all(&scope).expect("scope dir");
    for (file, content) in [
        (
            "cpu.stat",
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
        ),
        ("cpu.max", "200000 100000\n"),
        ("memory.current", "10485760\n"),
        ("memory.max", "536870912\n"),
        ("memory.stat", "anon 4194304\nfile 6291456\ninactive_file 2097152\npgfault 1000\npgmajfault 3\n"),
        ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"),
        ("io.stat", "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"),
        ("pids.current", "4\n"),
        ("pids.max", "max\n"),
    ] {
        std::fs::write(scope.join(file), content).expect("cgroup file");
    }

    // OTLP/HTTP this time (gzip-compressed protobuf), to the store's 4318 listener.
    let endpoint = format!("http://{}", server.otlp_http_addr);
    let _agent = start_agent_to(&node, &endpoint, &["--metrics-interval", "1s", "--protocol", "http"]);
    server.wait_for_count("SELECT count(*) FROM logs", 3, WAIT);
    let rows = server.sql_rows(
        "SELECT body, log_iostream, k8s_namespace_name, k8s_pod_name, k8s_container_name, container_id, \
                resource_attributes['container.image.name'], resource_attributes['k8s.container.restart_count'] \
         FROM logs ORDER BY timestamp",
    );
    let identity = |body: &str, stream: &str| {
        vec![
            json!(body),
            json!(stream),
            json!("prod"),
            json!("api-7f9"),
            json!("api"),
            json!(CONTAINER_ID),
            json!("registry.local/api:1.4"),
            json!("2"),
        ]
    };
    assert_eq!(
        rows,
        vec![
            identity("started", "stdout"),
            identity("a 16k chunk and its end", "stderr"),
            identity("unicode: żółw 🐢", "stdout"),
        ]
    );

    let metric = |name: &str| -> Vec<Vec<Value>> {
        server.sql_rows(&format!(
            "SELECT value, k8s_namespace_name, k8s_pod_name, k8s_container_name, container_id, k8s_pod_uid \
             FROM metrics WHERE metric_name = '{name}' ORDER BY timestamp DESC LIMIT 1"
        ))
    };
    // Scraped every second: by now there may be more than one.
    server.wait_for_count_at_least(
        "SELECT count(*) FROM metrics WHERE metric_name = 'container.memory.working_set'",
        1,
        WAIT,
    );
    let joined = |value: Value| {
        vec![vec![
            value,
            json!("prod"),
            json!("api-7f9"),
            json!("api"),
            json!(CONTAINER_ID),
            json!("9e8d7c6b-0000-4000-8000-000000000002"),
        ]]
    };
    assert_eq!(metric("container.memory.usage"), joined(json!(10485760.0)));
    assert_eq!(metric("container.memory.working_set"), joined(json!(8388608.0)), "usage - inactive_file");
    assert_eq!(metric("container.memory.limit"), joined(json!(536870912.0)));
    assert_eq!(metric("container.cpu.limit"), joined(json!(2.0)));
    let cpu = server.sql_rows(
        "SELECT attributes['cpu.mode'], max(value) FROM metrics WHERE metric_name = 'container.cpu.time' \
         GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(cpu, vec![vec![json!("system"), json!(0.5)], vec![json!("user"), json!(2.0)]]);
    assert!(metric("container.pids.limit").is_empty(), "pids.max is `max`: no limit point");

    // Logs and metrics join on the container's identity.
    let joined = server.count(
        "SELECT count(DISTINCT l.body) FROM logs l JOIN metrics m \
         ON l.container_id = m.container_id AND l.k8s_pod_uid IS NOT DISTINCT FROM m.k8s_pod_uid",
    );
    assert_eq!(joined, 3);
}
