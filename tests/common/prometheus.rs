//! The real Prometheus (Debian's `prometheus` package, 2.42) for the tests that compare Wake
//! with it or have it scrape Wake. `prometheus` must be on the PATH (scripts/test.sh installs
//! it) or named by `WAKE_TEST_PROMETHEUS`.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: u32 = 5;

/// A running Prometheus. Dropping it kills the process.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus on a free port with `config` as its prometheus.yml, a temporary data
    /// dir and `extra_args`, and waits until it is ready; retried if the port was taken
    /// meanwhile. `needed_for` says, when the binary is missing, why the test wants it.
    pub fn start(config: &str, extra_args: &[&str], needed_for: &str) -> Prometheus {
        let binary = prometheus_binary();
        match Command::new(&binary).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
            Ok(status) if status.success() => {}
            Ok(status) => panic!("`{} --version` failed: {status}", binary.display()),
            Err(error) if error.kind() == ErrorKind::NotFound => panic!(
                "the `{}` binary was not found: {needed_for}; run scripts/test.sh (which installs Debian's \
                 `prometheus` package) or `apt-get install prometheus`, or name a binary in WAKE_TEST_PROMETHEUS",
                binary.display()
            ),
            Err(error) => panic!("running `{} --version`: {error}", binary.display()),
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("writing prometheus.yml");
        let probe = Client::builder().timeout(Duration::from_secs(2)).build().expect("HTTP client");
        for attempt in 1..=START_ATTEMPTS {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let log_path = dir.path().join(format!("prometheus-{attempt}.log"));
            let log = File::create(&log_path).expect("creating the Prometheus log");
            let mut child = Command::new(&binary)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .args(extra_args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if let Some(status) = child.try_wait().expect("polling Prometheus") {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    if log.contains("address already in use") && attempt < START_ATTEMPTS {
                        break;
                    }
                    panic!("Prometheus exited ({status}) before it was ready; its log:\n{log}");
                }
                let ready = probe.get(format!("http://{addr}/-/ready")).send().is_ok_and(|r| r.status().is_success());
                if ready {
                    return Prometheus { child, addr, log_path, _dir: dir };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    panic!("Prometheus was not ready within {READY_TIMEOUT:?}; its log:\n{log}");
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        unreachable!("every attempt either returns, retries or panics")
    }

    /// The URL of `path` on its HTTP API, e.g. `/api/v1/query`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The last lines of its log, for panic messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding a free port").port()
}

fn prometheus_binary() -> PathBuf {
    std::env::var_os("WAKE_TEST_PROMETHEUS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("prometheus"))
}
