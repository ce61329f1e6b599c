//! The real Alertmanager (Debian's `prometheus-alertmanager` package, 0.25) for the ruler's
//! tests, started on a free port with clustering off. `prometheus-alertmanager` must be on the
//! PATH (scripts/test.sh installs it) or named by `WAKE_TEST_ALERTMANAGER`.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Alertmanager. Dropping it kills the process.
pub struct Alertmanager {
    child: Child,
    pub addr: SocketAddr,
    log_path: PathBuf,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    pub fn start() -> Alertmanager {
        let binary = std::env::var_os("WAKE_TEST_ALERTMANAGER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("prometheus-alertmanager"));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("alertmanager.yml");
        // Every alert to a receiver that does nothing: the test reads them back from the API.
        std::fs::write(&config, "route:\n  receiver: discard\n  group_wait: 0s\nreceivers:\n  - name: discard\n")
            .expect("writing alertmanager.yml");
        let client = Client::builder().timeout(Duration::from_secs(5)).build().expect("HTTP client");
        for attempt in 1..=5 {
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let log_path = dir.path().join(format!("alertmanager-{attempt}.log"));
            let log = File::create(&log_path).expect("creating the Alertmanager log");
            let mut child = Command::new(&binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--cluster.listen-address=")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "spawning {}: {e}; run scripts/test.sh (which installs Debian's prometheus-alertmanager) \
                         or name a binary in WAKE_TEST_ALERTMANAGER",
                        binary.display()
                    )
                });
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if let Ok(response) = client.get(format!("http://{addr}/-/ready")).send()
                    && response.status().is_success()
                {
                    return Alertmanager { child, addr, log_path, client, _dir: dir };
                }
                if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                    // Most likely the port was taken between the probe and the bind: retry.
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("Alertmanager did not become ready");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `GET /api/v2/alerts`: every alert Alertmanager holds, active or not.
    pub fn alerts(&self) -> Vec<Value> {
        let response = self
            .client
            .get(format!("{}/api/v2/alerts?active=true&silenced=true&inhibited=true&unprocessed=true", self.url()))
            .send()
            .expect("GET /api/v2/alerts");
        let body: Value = response.json().expect("JSON alerts");
        body.as_array().cloned().unwrap_or_default()
    }

    /// Waits until an alert named `name` satisfies `condition`, and returns it.
    pub fn wait_for_alert(&self, name: &str, timeout: Duration, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let alerts = self.alerts();
            if let Some(alert) = alerts.iter().find(|a| a["labels"]["alertname"] == name && condition(a)) {
                return alert.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no alert {name} matching the condition within {timeout:?}; have: {alerts:#?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
