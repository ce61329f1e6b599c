//! Wake stores its own metrics: `wake server --self-metrics-interval` ingests the server's
//! `/metrics` registry into its store, `wake agent --self-metrics-interval` sends the agent's
//! through its OTLP exporter, and both come back from the Prometheus API under the very names
//! `/metrics` shows, with `job` set to `wake-server` / `wake-agent`.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{Node, WakeServer, as_f64};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(45);

fn label<'a>(series: &'a Value, name: &str) -> Option<&'a str> {
    series["metric"][name].as_str()
}

fn value(series: &Value) -> f64 {
    as_f64(&series["value"][1]).unwrap_or_else(|| panic!("no value in {series}"))
}

/// Polls `query` until `accept` holds for its result; panics with the last answer.
fn wait_for(server: &WakeServer, query: &str, accept: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let result = server.promql(query);
        if accept(&result) {
            return result;
        }
        if Instant::now() >= deadline {
            panic!("PromQL {query:?} answered {result:?} within {WAIT:?}\nserver log tail:\n{}", server.log_tail());
        }
        // Keeps the server's query histogram moving, for the rate of its buckets.
        server.sql_rows("SELECT count(*) FROM metrics");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn server_and_agent_metrics_are_stored_in_wake_under_their_prometheus_names() {
    let node = Node::new();
    let server = WakeServer::start(&node.path("data"), &["--self-metrics-interval", "1s"]);
    let container_dir = node.path("var/log/pods/shop_web-1_0a1b2c3d-0000-4000-8000-000000000001/app");
    std::fs::create_dir_all(&container_dir).expect("container dir");
    let mut log = std::fs::File::create(container_dir.join("0.log")).expect("log file");
    writeln!(log, "2026-11-23T10:00:00.000000001Z stdout F hello from the app").expect("writing a CRI line");
    writeln!(log, "2026-11-23T10:00:00.000000002Z stdout F and again").expect("writing a CRI line");
    drop(log);
    let agent = node.agent(
        &server.grpc_endpoint(),
        &["--node-name", "node-7", "--batch-timeout", "200ms", "--self-metrics-interval", "1s"],
    );
    server.wait_for_count("SELECT count(*) FROM logs WHERE body = 'hello from the app'", 1, WAIT);

    // The agent's counter, same name as on its /metrics, with its identity.
    let lines = wait_for(&server, "wake_agent_read_lines_total", |result| {
        result.iter().any(|s| label(s, "job") == Some("wake-agent") && value(s) >= 2.0)
    });
    let lines = lines.iter().find(|s| label(s, "job") == Some("wake-agent")).expect("checked above");
    assert_eq!(label(lines, "instance"), Some("node-7"), "{lines}");
    assert_eq!(label(lines, "k8s_node_name"), Some("node-7"), "{lines}");
    assert!(agent.metric("wake_agent_read_lines_total") >= 2.0);
    // A labelled counter of the agent's exporter: its data point attributes are labels.
    wait_for(&server, r#"wake_agent_export_requests_total{signal="logs", outcome="ok"}"#, |result| {
        result.iter().any(|s| label(s, "job") == Some("wake-agent") && value(s) >= 1.0)
    });
    // A gauge.
    wait_for(&server, r#"wake_agent_files_watched{job="wake-agent"}"#, |result| result.iter().any(|s| value(s) >= 1.0));

    // The server's own counters, ingested into its own store.
    let requests = wait_for(&server, "wake_server_otlp_requests_total", |result| {
        result.iter().any(|s| label(s, "job") == Some("wake-server") && label(s, "transport") == Some("grpc"))
    });
    assert!(requests.iter().all(|s| label(s, "job") == Some("wake-server")), "{requests:?}");
    let total = wait_for(&server, "sum(wake_server_otlp_requests_total)", |result| !result.is_empty());
    assert!(value(&total[0]) >= 1.0, "{total:?}");

    // A histogram: `_bucket` series with `le` (+Inf included), and a quantile over their rate.
    let buckets = wait_for(&server, r#"wake_server_query_duration_seconds_bucket{job="wake-server"}"#, |result| {
        result.iter().any(|s| label(s, "le") == Some("+Inf") && value(s) >= 1.0)
    });
    assert!(buckets.len() > 2, "{buckets:?}");
    // OTLP's per-bucket counts add back up to Prometheus's cumulative ones: `+Inf` is the count.
    let difference = server.promql(
        r#"sum(wake_server_query_duration_seconds_count{job="wake-server"})
           - sum(wake_server_query_duration_seconds_bucket{job="wake-server", le="+Inf"})"#,
    );
    assert_eq!(difference.len(), 1, "{difference:?}");
    assert_eq!(value(&difference[0]), 0.0, "{difference:?}");
    let median = wait_for(
        &server,
        "histogram_quantile(0.5, sum by (le) (rate(wake_server_query_duration_seconds_bucket[1m])))",
        |result| result.len() == 1 && value(&result[0]).is_finite(),
    );
    let median = value(&median[0]);
    assert!(median > 0.0 && median < 60.0, "median query time {median}");
}
