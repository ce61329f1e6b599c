//! `wake standalone`: the store and the node agent in one process, for one machine.
//!
//! The server keeps everything under `./wake-data` (the agent's checkpoints included) and the
//! agent collects this machine's containers (Kubernetes' `/var/log/pods`, Docker's json-file
//! logs, podman's `k8s-file` logs, and every container's cgroup) into it over loopback OTLP,
//! exactly as a DaemonSet agent would into a remote server. On SIGTERM or Ctrl-C both stop; the
//! agent's checkpoints only ever cover what the store acknowledged, so a line read but not yet
//! acknowledged at that moment is read again at the next start.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::config::{AgentArgs, ServerArgs, ServerConfig, load_agent_config};

/// Flags of `wake standalone`: the server's, and the agent's that make sense on one machine.
#[derive(clap::Args, Debug, Default)]
pub struct StandaloneArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The agent's /metrics and /healthz [default: 127.0.0.1:4390].
    #[arg(long, env = "WAKE_AGENT_HTTP_ADDR")]
    pub agent_http_addr: Option<SocketAddr>,
    /// Kubernetes pod logs, when the machine is a node [default: /var/log/pods].
    #[arg(long, env = "WAKE_LOG_ROOT")]
    pub log_root: Option<PathBuf>,
    /// Docker json-file logs [default: /var/lib/docker/containers].
    #[arg(long, env = "WAKE_DOCKER_ROOT")]
    pub docker_root: Option<PathBuf>,
    /// containers/storage of podman and CRI-O [default: /var/lib/containers/storage].
    #[arg(long, env = "WAKE_CONTAINERS_STORAGE_ROOT")]
    pub containers_storage_root: Option<PathBuf>,
    /// cgroup file system [default: /sys/fs/cgroup].
    #[arg(long, env = "WAKE_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// The agent's checkpoints [default: <data dir>/agent].
    #[arg(long, env = "WAKE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// With `auth` tokens on the server: the file of the token (scope `write`) the embedded
    /// agent sends.
    #[arg(long, env = "WAKE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// This machine's name on its data [default: $NODE_NAME, else the host name].
    #[arg(long, env = "WAKE_NODE_NAME")]
    pub node_name: Option<String>,
    /// How often cgroup metrics are read, e.g. 10s [default: 10s].
    #[arg(long, env = "WAKE_METRICS_INTERVAL", value_parser = wake_collector::time::parse_duration_or_seconds)]
    pub metrics_interval: Option<Duration>,
}

/// Where a client on this machine reaches a listener bound to `addr`.
fn local(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() { SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port()) } else { addr }
}

/// The container alerting rules Wake ships (deploy/kubernetes/rules/containers.yml).
const CONTAINER_RULES: &str = include_str!("../deploy/kubernetes/rules/containers.yml");

/// Where standalone keeps the shipped rules, and where it looks for more.
fn rules_dir(server: &ServerConfig) -> PathBuf {
    server.store.data_dir.join("rules")
}

pub fn load(args: &StandaloneArgs) -> anyhow::Result<(ServerConfig, wake_collector::AgentConfig)> {
    let mut server = ServerConfig::load(&args.server)?;
    // Without rule files of its own, one machine gets the shipped container rules (and any
    // file put beside them).
    if server.rule_files.is_empty() && server.loki_rule_files.is_empty() {
        server.rule_files = vec![rules_dir(&server).join("*.yml").display().to_string()];
    }
    // The agent and the banner need the real ports before the listeners exist.
    for (flag, addr) in [("--otlp-grpc-addr", server.otlp_grpc_addr), ("--http-addr", server.http_addr)] {
        if addr.port() == 0 {
            anyhow::bail!("wake standalone needs a fixed port for {flag} (the agent connects to it), not {addr}");
        }
    }
    let agent_args = AgentArgs {
        endpoint: Some(format!("http://{}", local(server.otlp_grpc_addr))),
        log_root: args.log_root.clone(),
        docker_root: args.docker_root.clone(),
        containers_storage_root: args.containers_storage_root.clone(),
        token_file: args.token_file.clone(),
        cgroup_root: args.cgroup_root.clone(),
        state_dir: Some(args.state_dir.clone().unwrap_or_else(|| server.store.data_dir.join("agent"))),
        node_name: args.node_name.clone(),
        metrics_interval: args.metrics_interval,
        http_addr: Some(args.agent_http_addr.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 4390)))),
        ..AgentArgs::default()
    };
    let agent = load_agent_config(&agent_args)?;
    Ok((server, agent))
}

fn banner(server: &ServerConfig, agent: &wake_collector::AgentConfig) -> String {
    let api = format!("http://{}", local(server.http_addr));
    format!(
        "\nWake is running on this machine (stop with Ctrl-C).\n\
         \x20 data:        {data}\n\
         \x20 collecting:  {pods} (Kubernetes), {docker} (Docker), {podman} (podman), cgroups under {cgroup}\n\
         \x20 OTLP in:     grpc {grpc}  http {http}  (point OpenTelemetry SDKs here)\n\
         \x20 Grafana:     add a Prometheus and a Loki data source, both with URL {api}\n\
         \x20              (or provision them from dashboards/provisioning/, with the dashboards)\n\
         \x20 logs:        wake logs --url {api} -f '{{namespace=~\".+\"}}'    or    wake logs --url {api} error\n\
         \x20 SQL:         wake sql --url {api} 'SELECT k8s_pod_name, count(*) FROM logs GROUP BY 1'\n\
         \x20 PromQL:      curl '{api}/api/v1/query?query=container_memory_working_set_bytes'\n\
         \x20 alerts:      {rules} (add rule files there; --alertmanager-url to send them)\n",
        data = server.store.data_dir.display(),
        pods = agent.log_root.display(),
        docker = agent.docker_root.display(),
        podman = agent.containers_storage_root.display(),
        cgroup = agent.cgroup_root.display(),
        grpc = local(server.otlp_grpc_addr),
        http = local(server.otlp_http_addr),
        rules = server.rule_files.join(", "),
    )
}

/// Waits until the query API answers `/readyz`, or the server task ends.
async fn wait_until_ready(server: &SocketAddr) -> bool {
    let url = format!("http://{}/readyz", local(*server));
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(response) = client.get(&url).send().await
            && response.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub async fn run(server_config: ServerConfig, agent_config: wake_collector::AgentConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&agent_config.state_dir)
        .with_context(|| format!("creating the agent's state dir {}", agent_config.state_dir.display()))?;
    let rules = rules_dir(&server_config);
    if server_config.rule_files.iter().any(|pattern| Path::new(pattern).starts_with(&rules)) {
        // Rewritten at every start, so that an upgrade brings the new version.
        std::fs::create_dir_all(&rules).with_context(|| format!("creating {}", rules.display()))?;
        let path = rules.join("wake-containers.yml");
        std::fs::write(&path, CONTAINER_RULES).with_context(|| format!("writing {}", path.display()))?;
    }
    let http_addr = server_config.http_addr;
    let mut server = tokio::spawn(crate::server::run(server_config.clone()));
    tokio::select! {
        finished = &mut server => {
            finished.context("server task")??;
            return Ok(());
        }
        ready = wait_until_ready(&http_addr) => {
            if !ready {
                anyhow::bail!("the server did not become ready on {http_addr}");
            }
        }
    }
    let message = banner(&server_config, &agent_config);
    let (stop_agent, agent_stop) = tokio::sync::watch::channel(false);
    let mut agent = tokio::spawn(wake_collector::run(agent_config, agent_stop));
    println!("{message}");
    // The server listens for SIGTERM and Ctrl-C itself; the agent is stopped when it stops.
    tokio::select! {
        finished = &mut agent => {
            // The agent failed at start-up (say, its port is taken): stop everything.
            finished.context("agent task")?.context("agent")?;
            anyhow::bail!("the agent stopped unexpectedly");
        }
        finished = &mut server => {
            let _ = stop_agent.send(true);
            let agent_result = agent.await.context("agent task")?;
            finished.context("server task")??;
            agent_result.context("agent")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_says_where_to_point_grafana_and_the_clis() {
        let args = StandaloneArgs { node_name: Some("laptop".into()), ..StandaloneArgs::default() };
        let (server, agent) = load(&args).unwrap();
        assert_eq!(agent.endpoint, "http://127.0.0.1:4317");
        assert_eq!(agent.state_dir, server.store.data_dir.join("agent"));
        assert_eq!(server.rule_files, [server.store.data_dir.join("rules/*.yml").display().to_string()]);
        let text = banner(&server, &agent);
        for expected in
            ["http://127.0.0.1:4380", "wake logs --url", "wake sql --url", "Prometheus and a Loki data source"]
        {
            assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
        }
    }

    #[test]
    fn port_zero_is_refused_with_a_reason() {
        let mut args = StandaloneArgs::default();
        args.server.otlp_grpc_addr = Some("127.0.0.1:0".parse().unwrap());
        let error = load(&args).unwrap_err().to_string();
        assert!(error.contains("--otlp-grpc-addr"), "{error}");
    }
}
