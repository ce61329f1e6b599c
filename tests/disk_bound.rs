//! The disk bound shared by tenants: with `store.retention.max_disk_bytes`, a tenant that keeps
//! writing stays within its share (its oldest files go first), and a quiet tenant beside it
//! loses nothing.

mod common;

use std::path::Path;

use common::{WakeServer, log_request, now_ns, seq_record};
use prost::Message;

const HOUR_NS: u64 = 3600 * 1_000_000_000;
const MAX_DISK_BYTES: u64 = 600_000;
const RECORDS_PER_HOUR: u64 = 40;

/// Bytes of the Parquet files and indexes under `dir`'s signal directories.
fn data_bytes(dir: &Path) -> u64 {
    fn walk(path: &Path) -> u64 {
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| {
                let path = entry.path();
                if path.is_dir() { walk(&path) } else { entry.metadata().map(|m| m.len()).unwrap_or(0) }
            })
            .sum()
    }
    ["logs", "metrics", "spans"].iter().map(|signal| walk(&dir.join(signal))).sum()
}

fn post_as(server: &WakeServer, tenant: &str, path: &str, body: Vec<u8>, content_type: &str) {
    let response = server
        .client()
        .post(if path.starts_with("/v1/") { server.otlp_url(path) } else { server.api_url(path) })
        .header("X-Scope-OrgID", tenant)
        .header("content-type", content_type)
        .body(body)
        .send()
        .expect(path);
    let status = response.status();
    assert_eq!(status, 200, "{path} as {tenant}: {}", response.text().unwrap_or_default());
}

/// One hour's lines of `tenant`, `hours_ago` back, flushed to a file of their own.
fn write_hour(server: &WakeServer, tenant: &str, hours_ago: u64) {
    let at = now_ns() / HOUR_NS * HOUR_NS - hours_ago * HOUR_NS;
    let records = (0..RECORDS_PER_HOUR)
        .map(|i| {
            let mut record = seq_record(hours_ago * 1000 + i, 2500);
            record.time_unix_nano = at + i * 1_000_000_000;
            record
        })
        .collect();
    post_as(server, tenant, "/v1/logs", log_request(tenant, records).encode_to_vec(), "application/x-protobuf");
    post_as(server, tenant, "/api/v1/admin/flush", Vec::new(), "application/json");
}

#[test]
fn a_noisy_tenant_stays_within_its_share_and_evicts_only_its_own_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("wake.yml");
    std::fs::write(
        &config,
        format!(
            "store:\n  compaction_settle_secs: 3600\n  retention:\n    max_disk_bytes: {MAX_DISK_BYTES}\n    interval_secs: 3600\n"
        ),
    )
    .expect("config");
    let data = dir.path().join("data");
    let server = WakeServer::start(&data, &["--config", config.to_str().expect("utf-8")]);

    // The default tenant, quiet and noisy share the bound equally.
    let share = MAX_DISK_BYTES / 3;
    write_hour(&server, "quiet", 30);
    let quiet_bytes = data_bytes(&data.join("tenants/quiet"));
    assert!(quiet_bytes > 0 && quiet_bytes < share, "quiet's {quiet_bytes} bytes fit in its share of {share}");

    let mut written = 0;
    let mut largest_file = 0;
    for hours_ago in (1..=24).rev() {
        let before = data_bytes(&data.join("tenants/noisy"));
        write_hour(&server, "noisy", hours_ago);
        let file = data_bytes(&data.join("tenants/noisy")).saturating_sub(before);
        written += file;
        largest_file = largest_file.max(file);
        post_as(&server, "noisy", "/api/v1/admin/retention", Vec::new(), "application/json");
        let noisy = data_bytes(&data.join("tenants/noisy"));
        assert!(noisy <= share + largest_file, "noisy holds {noisy} bytes, over its share of {share} and one file");
        // The quiet tenant's retention runs too, and must find nothing to drop.
        post_as(&server, "quiet", "/api/v1/admin/retention", Vec::new(), "application/json");
    }
    assert!(written > 2 * share, "noisy wrote {written} bytes, well past its share of {share}");

    let count = |tenant: &str| {
        let response = server
            .client()
            .post(server.api_url("/api/v1/sql"))
            .header("X-Scope-OrgID", tenant)
            .json(&serde_json::json!({"sql": "SELECT count(*) FROM logs"}))
            .send()
            .expect("sql");
        let answer: serde_json::Value = response.json().expect("json");
        answer["rows"][0][0].as_u64().expect("a count")
    };
    assert_eq!(count("quiet"), RECORDS_PER_HOUR, "quiet lost nothing to noisy's growth");
    let noisy = count("noisy");
    assert!(noisy > 0 && noisy < 24 * RECORDS_PER_HOUR, "noisy kept its newest hours only: {noisy} rows");
    // What is left of noisy is its newest data: the last hour written is there.
    let response = server
        .client()
        .post(server.api_url("/api/v1/sql"))
        .header("X-Scope-OrgID", "noisy")
        .json(&serde_json::json!({"sql": "SELECT count(*) FROM logs WHERE body LIKE 'record 1000 %'"}))
        .send()
        .expect("sql");
    let answer: serde_json::Value = response.json().expect("json");
    assert_eq!(answer["rows"][0][0], 1, "the newest hour stays: {answer}");
}
