//! The container inventory end to end, with real containers: podman + runc run busybox
//! containers on a private containers/storage with their own events log; `wake agent` follows
//! their lifecycle and `wake server` keeps the `containers` table. A container that exits
//! with code 3, one the kernel kills at its memory limit, one restarted, one removed with
//! `podman rm` and one still running must show with podman's own image id, exit codes and
//! times, and the removed one must outlive a restart of the store.
//!
//! Needs root, podman, runc and busybox-static (scripts/test.sh installs them).

mod common;

use std::ffi::OsStr;
use std::time::Duration;

use common::podman::{IMAGE, Podman};
use common::{WakeAgent, WakeServer, attribute, now_ns, wait_until};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn containers(server: &WakeServer, params: &[(&str, &str)]) -> (u16, Value) {
    let response =
        server.client().get(server.api_url("/api/v1/containers")).query(params).send().expect("GET /api/v1/containers");
    let status = response.status().as_u16();
    (status, response.json().expect("a JSON answer"))
}

fn container(server: &WakeServer, id: &str) -> Option<Value> {
    let (status, answer) = containers(server, &[("container_id", id)]);
    assert_eq!(status, 200, "{answer}");
    answer["data"]["containers"].as_array()?.first().cloned()
}

/// The ids of the containers an API request lists, sorted.
fn ids_of(server: &WakeServer, params: &[(&str, &str)]) -> Vec<String> {
    let (status, answer) = containers(server, params);
    assert_eq!(status, 200, "{params:?}: {answer}");
    let mut ids: Vec<String> = answer["data"]["containers"]
        .as_array()
        .expect("a list of containers")
        .iter()
        .map(|c| c["container_id"].as_str().expect("an id").to_string())
        .collect();
    ids.sort();
    ids
}

/// Waits until the container's row satisfies `done`, and returns it.
fn wait_for(server: &WakeServer, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut row = Value::Null;
    wait_until(WAIT, what, || {
        row = container(server, id).unwrap_or(Value::Null);
        done(&row)
    });
    row
}

fn ns_of(text: &str) -> i64 {
    // podman prints `2026-12-07 13:46:45.00342942 +0000 UTC`.
    let text = text.trim().trim_end_matches(" UTC");
    chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f %z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(text))
        .unwrap_or_else(|e| panic!("podman's time {text:?}: {e}"))
        .timestamp_nanos_opt()
        .unwrap()
}

fn assert_close(what: &str, ours: &Value, podmans: &str) {
    let ours = chrono::DateTime::parse_from_rfc3339(ours.as_str().unwrap_or_else(|| panic!("{what}: {ours}")))
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap();
    let theirs = ns_of(podmans);
    assert!((ours - theirs).abs() <= 2_000_000_000, "{what}: Wake {ours}, podman {theirs} ({podmans})");
}

#[test]
fn real_containers_lifecycles_land_in_the_inventory_and_outlive_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let mut podman = Podman::with_private_storage(root);
    let data = root.join("data");
    // kube-state-metrics series every second rather than every 30, so the test need not wait.
    let config = root.join("wake.yaml");
    std::fs::write(&config, "store:\n  inventory:\n    kube_state_metrics_interval_secs: 1\n").expect("config");
    let config_args = ["--config", config.to_str().expect("utf-8")];
    let mut server = WakeServer::start(&data, &config_args);
    for sub in ["no-pods", "no-docker"] {
        std::fs::create_dir_all(root.join(sub)).expect("empty dir");
    }
    let (pods, docker, state) = (root.join("no-pods"), root.join("no-docker"), root.join("state"));
    let endpoint = server.grpc_endpoint();
    let args: Vec<&OsStr> = vec![
        "--endpoint".as_ref(),
        endpoint.as_ref(),
        "--containers-storage-root".as_ref(),
        podman.storage_root().as_os_str(),
        "--podman-events-file".as_ref(),
        podman.events_log().as_os_str(),
        "--log-root".as_ref(),
        pods.as_os_str(),
        "--docker-root".as_ref(),
        docker.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        "--node-name".as_ref(),
        "node-inventory".as_ref(),
        "--metrics-interval".as_ref(),
        "1s".as_ref(),
    ];
    let agent = WakeAgent::start(&args);

    let unique = std::process::id();
    let name = |role: &str| format!("wake-inv-{unique}-{role}");
    let failing = podman.create(&name("exit3"), None, "echo failing; sleep 1; exit 3");
    let hog = podman.create_with(
        &name("oom"),
        None,
        &["--memory", "16m", "--memory-swap", "16m"],
        "sleep 1; x=a; while true; do x=$x$x; done",
    );
    let restarted = podman.create(&name("restart"), None, "echo once; exit 0");
    let removed = podman.create(&name("removed"), None, "sleep 300");
    let running = podman.create(&name("running"), None, "sleep 300");
    for role in ["exit3", "oom", "restart", "removed", "running"] {
        podman.start(&name(role));
    }
    for role in ["exit3", "oom", "restart"] {
        podman.wait(&name(role));
    }
    podman.start(&name("restart"));
    podman.wait(&name("restart"));

    let image_id = format!("sha256:{}", podman.inspect(&name("exit3"), "{{.Image}}"));
    let exited = |row: &Value| row["status"] == "exited";

    let row = wait_for(&server, &failing, "the exit-3 container's stop", exited);
    assert_eq!(row["exit_code"], 3, "{row}");
    assert_eq!(row["reason"], "Error", "{row}");
    assert_eq!(row["image_name"], IMAGE, "{row}");
    assert_eq!(row["image_id"], image_id.as_str(), "{row}");
    assert_eq!(row["container"], name("exit3").as_str(), "{row}");
    assert_eq!(row["node"], "node-inventory", "{row}");
    assert_eq!(row["runtime"], "podman", "{row}");
    let digest = podman.inspect(&name("exit3"), "{{.ImageDigest}}");
    assert!(row["image_digest"].as_str().is_some_and(|d| d.ends_with(&format!("@{digest}"))), "{row} vs {digest}");
    assert_close("first_seen", &row["first_seen"], &podman.inspect(&name("exit3"), "{{.State.StartedAt}}"));
    assert_close("last_seen", &row["last_seen"], &podman.inspect(&name("exit3"), "{{.State.FinishedAt}}"));

    let row = wait_for(&server, &hog, "the OOM-killed container's stop", exited);
    assert_eq!(row["exit_code"], 137, "{row}");
    assert_eq!(row["reason"], "OOMKilled", "{row}");

    let row = wait_for(&server, &restarted, "the restarted container's second stop", |row| {
        exited(row) && row["restarts"] == 1
    });
    assert_eq!((&row["exit_code"], &row["reason"]), (&Value::from(0), &Value::from("Completed")), "{row}");
    assert_close("restart's first_seen", &row["first_seen"], &podman.inspect(&name("restart"), "{{.Created}}"));

    wait_for(&server, &running, "the running container", |row| row["status"] == "running");
    wait_for(&server, &removed, "the container to be removed", |row| row["status"] == "running");
    podman.remove(&name("removed"));
    let row = wait_for(&server, &removed, "the removal", |row| row["removed_at"].is_string());
    assert_eq!(row["status"], "exited", "{row}");

    // Filters: status now, exact image in either form, glob, digest prefix.
    let ids = |params: &[(&str, &str)]| ids_of(&server, params);
    let mut all = vec![failing.clone(), hog.clone(), restarted.clone(), removed.clone(), running.clone()];
    all.sort();
    assert_eq!(ids(&[("image", IMAGE)]), all);
    assert_eq!(ids(&[("image", "localhost/wake-test-busybox:*")]), all);
    assert_eq!(ids(&[("image", &image_id[..19])]), all);
    assert_eq!(ids(&[("image", "docker.io/library/nginx:1.25")]), Vec::<String>::new());
    assert_eq!(ids(&[("image", IMAGE), ("status", "running")]), vec![running.clone()]);
    let (status, answer) = containers(&server, &[("image", "bad image")]);
    assert_eq!((status, &answer["errorType"]), (400, &Value::from("bad_data")), "{answer}");

    // Every row links to its logs: the LogQL there finds the container's lines.
    let row = container(&server, &failing).unwrap();
    let logs = &row["links"]["logs"];
    let response = server
        .client()
        .get(server.api_url("/loki/api/v1/query_range"))
        .query(&[
            ("query", logs["expr"].as_str().unwrap().to_string()),
            ("start", logs["start"].to_string()),
            ("end", (logs["end"].as_i64().unwrap() + 5).to_string()),
        ])
        .send()
        .unwrap();
    let answer: Value = response.json().unwrap();
    assert!(answer.to_string().contains("failing"), "{logs}: {answer}");

    // The CLI prints the same.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wake"))
        .args(["containers", "--image", IMAGE, "--since", "1h", "--url", &server.api_url("")])
        .env_remove("WAKE_URL")
        .output()
        .expect("wake containers");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}{}", String::from_utf8_lossy(&output.stderr));
    assert!(out.contains("3 (Error)") && out.contains("137 (OOMKilled)") && out.contains("exited (removed)"), "{out}");

    // kube-state-metrics' series: the running container's info, the restarted one's count.
    let info = format!("kube_pod_container_info{{container_id=\"podman://{running}\"}}");
    wait_until(WAIT, "kube_pod_container_info", || !server.promql(&info).is_empty());
    let series = server.promql(&info);
    assert_eq!(series[0]["metric"]["image"], IMAGE, "{series:?}");
    assert_eq!(series[0]["metric"]["container"], name("running").as_str(), "{series:?}");
    let restarts = format!("kube_pod_container_status_restarts_total{{container=\"{}\"}}", name("restart"));
    wait_until(WAIT, "restarts_total", || !server.promql(&restarts).is_empty());
    assert_eq!(server.promql(&restarts)[0]["value"][1], "1");
    let reason = format!("kube_pod_container_status_last_terminated_reason{{container=\"{}\"}}", name("oom"));
    wait_until(WAIT, "last_terminated_reason", || !server.promql(&reason).is_empty());
    assert_eq!(server.promql(&reason)[0]["metric"]["reason"], "OOMKilled");

    // The store restarts: the removed container is still there; SQL sees the same rows.
    drop(agent);
    server.terminate();
    let server = WakeServer::start(&data, &config_args);
    let row = container(&server, &removed).expect("the removed container after a restart");
    assert!(row["removed_at"].is_string(), "{row}");
    let rows =
        server.sql_rows(&format!("SELECT status, exit_code, reason FROM containers WHERE container_id = '{hog}'"));
    assert_eq!(rows, vec![vec![Value::from("exited"), Value::from(137), Value::from("OOMKilled")]]);
}

/// One container instance as the agent reports it: a start, and a stop when `end` is given.
fn lifecycle(
    id: &str,
    image: &str,
    node: &str,
    start_ns: u64,
    end_ns: Option<u64>,
    extra: &[KeyValue],
) -> ResourceLogs {
    let mut attributes = vec![
        attribute("container.id", id),
        attribute("container.image.name", image),
        attribute("k8s.namespace.name", "shop"),
        attribute("k8s.pod.name", &format!("pod-{id}")),
        attribute("k8s.container.name", "app"),
        attribute("k8s.node.name", node),
    ];
    attributes.extend_from_slice(extra);
    let mut records =
        vec![LogRecord { time_unix_nano: start_ns, event_name: "container.start".into(), ..Default::default() }];
    if let Some(end_ns) = end_ns {
        records.push(LogRecord {
            time_unix_nano: end_ns,
            event_name: "container.stop".into(),
            attributes: vec![attribute("container.exit_reason", "Completed")],
            ..Default::default()
        });
    }
    ResourceLogs {
        resource: Some(Resource { attributes, ..Default::default() }),
        scope_logs: vec![ScopeLogs { log_records: records, ..Default::default() }],
        ..Default::default()
    }
}

#[test]
fn image_filters_and_time_ranges_over_the_api_and_the_cli() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = WakeServer::start(&dir.path().join("data"), &[]);
    const HOUR: u64 = 3_600_000_000_000;
    let now = now_ns();
    let image_id = attribute("container.image.id", "sha256:aaaa1111");
    let digest = attribute("container.image.repo_digests", "docker.io/library/redis@sha256:bbbb2222");
    let request = ExportLogsServiceRequest {
        resource_logs: vec![
            lifecycle("a", "docker.io/library/nginx:1.25.3", "n1", now - 3 * HOUR, None, &[]),
            lifecycle("b", "nginx:1.25", "n2", now - 240 * HOUR, Some(now - 216 * HOUR), &[]),
            lifecycle("c", "nginx:1.24", "n1", now - 2 * HOUR, Some(now - HOUR), &[image_id]),
            lifecycle("d", "redis:7", "n2", now - 24 * HOUR, None, &[digest]),
        ],
    };
    server.post_logs(&request);
    // Lifecycle events are the inventory's, not log lines.
    assert_eq!(server.count("SELECT count(*) FROM logs"), 0);

    let ids = |params: &[(&str, &str)]| ids_of(&server, params);
    let seconds = |ns: u64| format!("{}", ns / 1_000_000_000);
    // Exact names match as reported and as Docker normalises them; globs; digest prefixes of
    // the image id and of the repository digest.
    assert_eq!(ids(&[("image", "nginx:1.25.3")]), ["a"]);
    assert_eq!(ids(&[("image", "docker.io/library/nginx:1.25")]), ["b"]);
    assert_eq!(ids(&[("image", "nginx:1.25*")]), ["a", "b"]);
    assert_eq!(ids(&[("image", "*nginx*")]), ["a", "b", "c"]);
    assert_eq!(ids(&[("image", "sha256:aaaa")]), ["c"]);
    assert_eq!(ids(&[("image", "redis@sha256:bbbb")]), ["d"]);
    assert!(ids(&[("image", "nginx@sha256:bbbb")]).is_empty());
    // [first_seen, last_seen] overlapping [from, to]; `at` one instant; `since` up to now.
    let (from, to) = (seconds(now - 230 * HOUR), seconds(now - 220 * HOUR));
    assert_eq!(ids(&[("from", &from), ("to", &to)]), ["b"]);
    assert_eq!(ids(&[("since", "1d")]), ["a", "c", "d"]);
    assert_eq!(ids(&[("at", &seconds(now - 90 * 60_000_000_000))]), ["a", "c", "d"]);
    assert_eq!(ids(&[("at", &seconds(now - 90 * 60_000_000_000)), ("node", "n1")]), ["a", "c"]);
    assert_eq!(ids(&[("status", "exited"), ("since", "1d")]), ["c"]);
    assert_eq!(ids(&[("status", "running")]), ["a", "d"]);
    let (status, answer) = containers(&server, &[("from", &to), ("to", &from)]);
    assert_eq!(status, 400, "{answer}");

    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_wake"))
            .arg("containers")
            .args(args)
            .args(["--url", &server.api_url("")])
            .env_remove("WAKE_URL")
            .output()
            .expect("wake containers");
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    };
    let (ok, out) = cli(&["--image", "nginx:1.25*", "--since", "30d"]);
    assert!(ok, "{out}");
    assert!(out.contains("pod-a") && out.contains("pod-b") && !out.contains("pod-c"), "{out}");
    assert!(out.contains("(2 rows)"), "{out}");
    let (ok, out) = cli(&["--image", "sha256:aaaa"]);
    assert!(ok && out.contains("pod-c") && out.contains("(1 row)"), "{out}");
    let (ok, out) = cli(&["--image", "bad image"]);
    assert!(!ok && out.contains("400") && out.contains("image"), "{out}");
}
