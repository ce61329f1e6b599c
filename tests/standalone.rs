//! `wake standalone`: the store and the agent in one process collect this machine's container
//! logs into local storage, stop cleanly, and resume from their checkpoints without duplicates.

mod common;

use std::time::Duration;

use common::WakeServer;
use serde_json::json;

const POD_UID: &str = "8f1c2d3e-0000-4000-8000-00000000abcd";

fn cri_line(text: &str) -> String {
    format!("2026-11-23T10:00:00.000000000Z stdout F {text}\n")
}

#[test]
fn standalone_collects_this_machines_containers_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let container_dir = root.join(format!("var/log/pods/shop_web-1_{POD_UID}/app"));
    std::fs::create_dir_all(&container_dir).expect("pod log dir");
    let log = container_dir.join("0.log");
    std::fs::write(&log, format!("{}{}", cri_line("first line"), cri_line("second line"))).expect("log file");
    for empty in ["docker", "storage", "cgroup"] {
        std::fs::create_dir_all(root.join(empty)).expect("empty dir");
    }
    let data = root.join("wake-data");
    let pods = root.join("var/log/pods");
    let args = [
        "--log-root",
        pods.to_str().unwrap(),
        "--docker-root",
        root.join("docker").to_str().unwrap(),
        "--containers-storage-root",
        root.join("storage").to_str().unwrap(),
        "--cgroup-root",
        root.join("cgroup").to_str().unwrap(),
        "--node-name",
        "laptop",
    ]
    .map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let lines = "SELECT count(*) FROM logs WHERE k8s_namespace_name = 'shop' AND k8s_pod_name = 'web-1' \
                 AND k8s_node_name = 'laptop'";
    let mut wake = WakeServer::start_standalone(&data, &args);
    wake.wait_for_count(lines, 2, Duration::from_secs(30));
    // The Loki API answers over the same data.
    let response: serde_json::Value = wake
        .client()
        .get(wake.api_url("/loki/api/v1/query_range"))
        .query(&[
            ("query", r#"{namespace="shop"} |= "second""#),
            ("start", "2026-11-23T09:00:00Z"),
            ("end", "2026-11-23T11:00:00Z"),
        ])
        .send()
        .expect("Loki query")
        .json()
        .expect("Loki JSON");
    let streams = response["data"]["result"].as_array().expect("streams");
    assert_eq!(streams.len(), 1, "{response}");
    assert_eq!(streams[0]["values"][0][1], json!("second line"));
    assert!(wake.terminate().success(), "a clean stop:\n{}", wake.log_tail());
    assert!(data.join("agent").is_dir(), "the agent's checkpoints live in the data dir");

    // Lines written while Wake was down are collected at the next start, the others not again.
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).expect("log file");
    std::io::Write::write_all(&mut file, cri_line("third line").as_bytes()).expect("appending");
    let mut wake = WakeServer::start_standalone(&data, &args);
    wake.wait_for_count(lines, 3, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(wake.count(lines), 3, "exactly once across the restart");
    assert!(wake.terminate().success());
}
