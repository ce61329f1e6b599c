//! The agents under test as child processes: `wake agent` and Fluent Bit, pointed at a node's
//! files and at the sink, and watched through `/proc` (CPU time of all threads, resident set).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::corpus::Node;

/// Which agent, and how it is configured.
#[derive(Debug, Clone)]
pub enum Kind {
    /// `wake agent` with these flags beyond the ones every run gets.
    Wake { binary: PathBuf, extra: Vec<String> },
    /// Fluent Bit with a configuration from `benches/fluent-bit/`.
    FluentBit { binary: PathBuf, config: PathBuf },
}

/// A running agent.
pub struct Agent {
    child: Child,
    log: PathBuf,
    pub started_at: Instant,
}

impl Agent {
    /// Starts `kind` on `node`'s files, sending to `sink` (an OTLP/HTTP `host:port`), keeping its
    /// checkpoints (or Fluent Bit's offset database) and its log in `state`.
    pub fn start(kind: &Kind, node: &Node, sink: &str, state: &Path) -> std::io::Result<Agent> {
        std::fs::create_dir_all(state)?;
        let log = state.join("agent.log");
        let mut command = match kind {
            Kind::Wake { binary, extra } => {
                // Settings without a flag, kept off the host's own runtime state.
                let config = state.join("agent.yaml");
                std::fs::write(
                    &config,
                    format!(
                        "containerd_task_root: {:?}\n",
                        node.root.join("run/containerd/io.containerd.runtime.v2.task").display().to_string()
                    ),
                )?;
                let mut command = clean_command(binary);
                command.arg("agent").arg("--config").arg(&config);
                let paths = [
                    ("--log-root", node.log_root()),
                    ("--containers-dir", node.containers_dir()),
                    ("--docker-root", node.docker_root()),
                    ("--cgroup-root", node.cgroup_root()),
                    ("--containers-storage-root", node.root.join("var/lib/containers/storage")),
                    ("--state-dir", state.join("checkpoints")),
                ];
                for (flag, path) in paths {
                    command.arg(flag).arg(path);
                }
                command.args(["--endpoint", &format!("http://{sink}"), "--protocol", "http"]);
                command.args(["--node-name", "bench-node", "--http-addr", "127.0.0.1:0"]);
                command.args(extra);
                command
            }
            Kind::FluentBit { binary, config } => {
                let mut command = clean_command(binary);
                command.arg("--config").arg(config);
                // The configuration files read these (Fluent Bit's `${VAR}`).
                command.env("WAKE_BENCH_LOG_GLOB", node.cri_glob());
                command.env("WAKE_BENCH_STATE_DIR", state);
                let (host, port) = sink.rsplit_once(':').unwrap_or((sink, "4318"));
                command.env("WAKE_BENCH_SINK_HOST", host).env("WAKE_BENCH_SINK_PORT", port);
                command
            }
        };
        let output = File::create(&log)?;
        command.stdin(Stdio::null()).stdout(output.try_clone()?).stderr(output);
        let started_at = Instant::now();
        let child = command.spawn()?;
        Ok(Agent { child, log, started_at })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// User plus system CPU time of every thread so far, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        process_cpu_seconds(self.pid())
    }

    /// The highest resident set so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        self.status_kib("VmHWM:").map(|kib| kib * 1024)
    }

    /// The resident set now (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.status_kib("VmRSS:").map(|kib| kib * 1024)
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status.lines().find_map(|line| line.strip_prefix(field))?.trim().strip_suffix("kB")?.trim().parse().ok()
    }

    /// The last lines the agent logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.exited().is_none() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// User plus system CPU time of every thread of process `pid` so far, in seconds.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks_per_second())
}

/// A command without the bench's environment's WAKE_* variables: `wake agent` reads its flags
/// from the environment too, and a user's WAKE_CONFIG or WAKE_ENDPOINT is not the agent's.
fn clean_command(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WAKE_") {
            command.env_remove(key);
        }
    }
    command
}

fn clock_ticks_per_second() -> f64 {
    static HZ: OnceLock<f64> = OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .unwrap_or(100.0)
    })
}
