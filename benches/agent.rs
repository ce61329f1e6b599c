//! Agent benchmark (issue "Agent throughput and footprint"): `wake agent`, and Fluent Bit beside
//! it when one is given, over the same log files, sending OTLP/HTTP to a counting sink in this
//! process (so the agent's cost is measured apart from a store's).
//!
//! Scenarios (`WAKE_BENCH_AGENT_SCENARIOS`, comma-separated; default `cri,docker,idle,cgroup`):
//! - `cri`: a CRI corpus (`WAKE_BENCH_AGENT_MIB`, default 1024, over 100 containers in the
//!   Kubernetes layout, `P`/`F` partial records included) read from the start until the sink has
//!   every line: MiB of input per CPU-second of the agent, MiB/s of wall time, peak RSS, requests
//!   and their largest body. Wake, then Fluent Bit with gzip and without compression.
//! - `docker`: the same lines as Docker `json-file` logs (Wake only).
//! - `idle`: `WAKE_BENCH_AGENT_IDLE_FILES` (1000) CRI files of 10 lines, delivered, then
//!   `WAKE_BENCH_AGENT_IDLE_SECS` (300) of nothing: CPU share of a core and RSS.
//! - `cgroup`: `WAKE_BENCH_AGENT_CGROUP_CONTAINERS` (200) containers in a cgroup v2 fixture tree,
//!   scraped every `WAKE_BENCH_AGENT_METRICS_INTERVAL` (10s), measured over
//!   `WAKE_BENCH_AGENT_CGROUP_SECS` (60); and the same node without cgroups as the baseline
//!   (Wake only: Fluent Bit's tail does not read cgroups).
//! - `server`: once, Wake over the CRI corpus into a real `wake server` (agent and server CPU).
//!
//! Every run must deliver each written line exactly once and unaltered (the sink checks each
//! record against the corpus); otherwise the benchmark says why and exits non-zero.
//!
//! Other settings: `WAKE_BENCH_RUNS` (3), `WAKE_BENCH_FLUENT_BIT` (a fluent-bit binary; see
//! benches/fluent-bit/README.md), `WAKE_BENCH_FLUENT_BIT_CONFIGS` (other Fluent Bit
//! configuration files instead of the two there, comma-separated), `WAKE_BENCH_AGENT_ARGS`
//! (more `wake agent` flags), `WAKE_BENCH_AGENT_TIMEOUT_SECS` (900 per run),
//! `WAKE_BENCH_AGENT_STALL_SECS` (60 without a record fails a run), `WAKE_BENCH_DIR` (where the
//! temporary corpora go).

#[path = "agent/agents.rs"]
mod agents;
mod common;
#[path = "agent/corpus.rs"]
mod corpus;
#[path = "agent/report.rs"]
mod report;
#[path = "agent/scenario.rs"]
mod scenario;
#[path = "agent/sink.rs"]
mod sink;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agents::Kind;
use corpus::{Bound, Format, Node, Written};
use report::{IdleRows, ScrapeRows, ThroughputRows, group};
use scenario::{Idle, Limits, Measured, Scrape, Throughput, mib};

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value.trim().parse().unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}

fn env_string(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// One agent configuration under test.
struct Contender {
    name: String,
    kind: Kind,
    /// Measured idle (one configuration per agent is enough: nothing is sent).
    idle: bool,
}

fn describe(what: &str, written: &Written, took: Duration) {
    println!(
        "{what}: {} lines ({} split into several records, longest {} bytes) in {} files, {:.1} MiB on disk, \
         {:.1} MiB of text; written in {:.1} s",
        group(written.lines),
        group(written.split_lines),
        group(written.longest_line as u64),
        written.files,
        mib(written.file_bytes),
        mib(written.text_bytes),
        took.as_secs_f64()
    );
}

fn generate(
    corpus: &common::Corpus,
    node: &Node,
    format: Format,
    containers: u64,
    bound: Bound,
    what: &str,
) -> Written {
    let started = Instant::now();
    let written = corpus::write(corpus, node, format, containers, bound)
        .unwrap_or_else(|e| panic!("writing the {what} under {}: {e}", node.root.display()));
    describe(what, &written, started.elapsed());
    written
}

fn print_throughput(name: &str, corpus: &str, run: usize, t: &Throughput) {
    println!(
        "  {name}, {corpus}, run {run}: {:.1} MiB per CPU-s, {:.1} MiB/s wall ({:.2} s wall, {:.2} s CPU), peak RSS \
         {:.1} MiB, {} requests ({} retried), max {:.0} KiB, {:.1} MiB sent, {} / {} lines; sink {:.2} CPU-s",
        t.mib_per_cpu_second(),
        t.mib_per_second(),
        t.wall_secs,
        t.cpu_secs,
        mib(t.peak_rss_bytes),
        t.requests,
        t.retried_requests,
        t.max_request_bytes as f64 / 1024.0,
        mib(t.request_bytes),
        group(t.delivered),
        group(t.written),
        t.sink_cpu_secs
    );
    if let Some(problems) = t.problems() {
        println!("    lines wrong: {problems}");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("agent: benchmark");
        return;
    }
    let runs = env_u64("WAKE_BENCH_RUNS", 3) as usize;
    let corpus_mib = env_u64("WAKE_BENCH_AGENT_MIB", 1024);
    let idle_secs = env_u64("WAKE_BENCH_AGENT_IDLE_SECS", 300);
    let idle_files = env_u64("WAKE_BENCH_AGENT_IDLE_FILES", 1000);
    let cgroup_secs = env_u64("WAKE_BENCH_AGENT_CGROUP_SECS", 60);
    let cgroup_containers = env_u64("WAKE_BENCH_AGENT_CGROUP_CONTAINERS", 200);
    let metrics_interval = env_string("WAKE_BENCH_AGENT_METRICS_INTERVAL", "10s");
    let limits = Limits {
        timeout: Duration::from_secs(env_u64("WAKE_BENCH_AGENT_TIMEOUT_SECS", 900)),
        stall: Duration::from_secs(env_u64("WAKE_BENCH_AGENT_STALL_SECS", 60)),
    };
    let scenarios = env_string("WAKE_BENCH_AGENT_SCENARIOS", "cri,docker,idle,cgroup");
    let wants = |name: &str| scenarios.split(',').any(|s| s.trim() == name);
    let extra: Vec<String> = env_string("WAKE_BENCH_AGENT_ARGS", "").split_whitespace().map(str::to_string).collect();
    let wake = Kind::Wake { binary: PathBuf::from(env!("CARGO_BIN_EXE_wake")), extra: extra.clone() };

    let mut contenders = vec![Contender { name: "Wake".into(), kind: wake.clone(), idle: true }];
    if let Some(binary) = std::env::var_os("WAKE_BENCH_FLUENT_BIT") {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/fluent-bit");
        let mut chosen = vec![
            ("Fluent Bit, gzip".to_string(), configs.join("fluent-bit-gzip.conf"), true),
            ("Fluent Bit, uncompressed".to_string(), configs.join("fluent-bit-plain.conf"), false),
        ];
        // Other configurations to try, comma-separated paths (each also measured idle).
        if let Ok(paths) = std::env::var("WAKE_BENCH_FLUENT_BIT_CONFIGS") {
            chosen = paths
                .split(',')
                .map(|path| {
                    let name = Path::new(path).file_stem().map_or(path.into(), |s| s.to_string_lossy().into_owned());
                    (format!("Fluent Bit, {name}"), PathBuf::from(path), true)
                })
                .collect();
        }
        for (name, config, idle) in chosen {
            assert!(config.is_file(), "missing {}", config.display());
            contenders.push(Contender { name, kind: Kind::FluentBit { binary: PathBuf::from(&binary), config }, idle });
        }
        let version = std::process::Command::new(&binary).arg("--version").output();
        let version = version.map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string());
        println!("Fluent Bit: {} ({})", PathBuf::from(&binary).display(), version.unwrap_or_else(|e| e.to_string()));
    } else {
        println!("WAKE_BENCH_FLUENT_BIT not set: Wake only");
    }
    println!(
        "wake: {}{}",
        env!("CARGO_BIN_EXE_wake"),
        if extra.is_empty() { String::new() } else { format!(" {extra:?}") }
    );

    let parent = std::env::var_os("WAKE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    std::fs::create_dir_all(&parent).expect("WAKE_BENCH_DIR");
    let temporary =
        tempfile::Builder::new().prefix("wake-agent-bench").tempdir_in(&parent).expect("temporary directory");
    let dir = temporary.path();
    let loghub = common::Corpus::load();
    let mut failures: Vec<String> = Vec::new();
    let mut fail = |what: String, error: String| {
        println!("  FAILED {what}: {error}");
        failures.push(format!("{what}: {error}"));
    };
    let state =
        |name: &str, scenario: &str, run: usize| dir.join("state").join(format!("{scenario}-{run}-{}", slug(name)));

    // Throughput over the CRI and Docker corpora.
    let bytes = corpus_mib * 1024 * 1024;
    let mut cri_runs: Vec<Vec<Measured<Throughput>>> = contenders.iter().map(|_| Vec::new()).collect();
    let mut docker_runs = Vec::new();
    let mut server_figures = None;
    if wants("cri") || wants("server") {
        let node = Node::new(dir.join("cri"));
        let written = generate(&loghub, &node, Format::Cri, common::CONTAINERS, Bound::Bytes(bytes), "CRI corpus");
        if wants("cri") {
            for run in 1..=runs {
                // Alternating agents within each round spreads the machine's slow moments over all.
                for (contender, results) in contenders.iter().zip(&mut cri_runs) {
                    match scenario::throughput(
                        &contender.kind,
                        &node,
                        &written,
                        &state(&contender.name, "cri", run),
                        limits,
                    ) {
                        Ok(measured) => {
                            print_throughput(&contender.name, "CRI", run, &measured.figures);
                            if let Some(failure) = &measured.failure {
                                fail(format!("{}, CRI, run {run}", contender.name), failure.clone());
                            }
                            results.push(measured);
                        }
                        Err(error) => fail(format!("{}, CRI, run {run}", contender.name), error),
                    }
                }
            }
        }
        if wants("server") {
            match server_run(&wake, &node, &written, &dir.join("server"), limits) {
                Ok(figures) => server_figures = Some(figures),
                Err(error) => fail("Wake into wake server".into(), error),
            }
        }
        drop(std::fs::remove_dir_all(&node.root));
    }
    if wants("docker") {
        let node = Node::new(dir.join("docker"));
        let written = generate(
            &loghub,
            &node,
            Format::Docker,
            common::CONTAINERS,
            Bound::Bytes(bytes),
            "Docker json-file corpus",
        );
        for run in 1..=runs {
            match scenario::throughput(&wake, &node, &written, &state("Wake", "docker", run), limits) {
                Ok(measured) => {
                    print_throughput("Wake", "Docker", run, &measured.figures);
                    if let Some(failure) = &measured.failure {
                        fail(format!("Wake, Docker, run {run}"), failure.clone());
                    }
                    docker_runs.push(measured);
                }
                Err(error) => fail(format!("Wake, Docker, run {run}"), error),
            }
        }
        drop(std::fs::remove_dir_all(&node.root));
    }

    // Idle: many files, nothing new.
    let mut idle_runs: Vec<Vec<Idle>> = contenders.iter().map(|_| Vec::new()).collect();
    if wants("idle") {
        let node = Node::new(dir.join("idle"));
        let written = generate(&loghub, &node, Format::Cri, idle_files, Bound::Lines(idle_files * 10), "idle set");
        let duration = Duration::from_secs(idle_secs);
        for run in 1..=runs {
            for (contender, results) in contenders.iter().zip(&mut idle_runs).filter(|(c, _)| c.idle) {
                match scenario::idle(
                    &contender.kind,
                    &node,
                    &written,
                    &state(&contender.name, "idle", run),
                    limits,
                    duration,
                ) {
                    Ok(idle) => {
                        println!(
                            "  {}, idle, run {run}: {:.2} % of a core over {:.0} s, RSS {:.1} MiB (peak {:.1} MiB), {} lines",
                            contender.name,
                            100.0 * idle.cpu_share,
                            idle.secs,
                            mib(idle.rss_bytes),
                            mib(idle.peak_rss_bytes),
                            group(idle.delivered)
                        );
                        results.push(idle);
                    }
                    Err(error) => fail(format!("{}, idle, run {run}", contender.name), error),
                }
            }
        }
    }

    // Cgroup scrape, against the same node without cgroups.
    let (mut scrape_runs, mut baseline_runs): (Vec<Scrape>, Vec<Scrape>) = (Vec::new(), Vec::new());
    if wants("cgroup") {
        let node = Node::new(dir.join("cgroup"));
        let written =
            generate(&loghub, &node, Format::Cri, cgroup_containers, Bound::Lines(cgroup_containers), "cgroup node");
        corpus::write_cgroup_v2(&node, cgroup_containers).expect("writing the cgroup fixture");
        let bare = Node::new(dir.join("cgroup-baseline"));
        let baseline_written =
            corpus::write(&loghub, &bare, Format::Cri, cgroup_containers, Bound::Lines(cgroup_containers))
                .expect("writing the baseline node");
        let scraping = match &wake {
            Kind::Wake { binary, extra } => {
                let mut extra = extra.clone();
                extra.extend(["--metrics-interval".to_string(), metrics_interval.clone()]);
                Kind::Wake { binary: binary.clone(), extra }
            }
            other => other.clone(),
        };
        let duration = Duration::from_secs(cgroup_secs);
        for run in 1..=runs {
            for (with_cgroups, target_node, target_written, results) in
                [(true, &node, &written, &mut scrape_runs), (false, &bare, &baseline_written, &mut baseline_runs)]
            {
                let scenario_name = if with_cgroups { "cgroup" } else { "cgroup-baseline" };
                match scenario::scrape(
                    &scraping,
                    target_node,
                    target_written,
                    &state("Wake", scenario_name, run),
                    limits,
                    duration,
                    with_cgroups,
                ) {
                    Ok(scrape) => {
                        println!(
                            "  Wake, {scenario_name}, run {run}: {:.2} % of a core over {:.0} s, {} scrapes of {} containers, \
                             {:.0} points each, RSS {:.1} MiB",
                            100.0 * scrape.cpu_share,
                            scrape.secs,
                            scrape.scrapes,
                            scrape.containers_per_scrape,
                            scrape.points_per_scrape,
                            mib(scrape.rss_bytes)
                        );
                        results.push(scrape);
                    }
                    Err(error) => fail(format!("Wake, {scenario_name}, run {run}"), error),
                }
            }
        }
    }

    println!("\n## Agent benchmark: {runs} runs each, median (min–max)\n");
    let mut rows: Vec<ThroughputRows<'_>> = contenders
        .iter()
        .zip(&cri_runs)
        .map(|(c, runs)| ThroughputRows { agent: &c.name, corpus: "CRI", runs })
        .collect();
    rows.push(ThroughputRows { agent: "Wake", corpus: "Docker json-file", runs: &docker_runs });
    print!("{}", section(report::throughput_table(&rows)));
    let idle_rows: Vec<IdleRows<'_>> =
        contenders.iter().zip(&idle_runs).map(|(c, runs)| IdleRows { agent: &c.name, runs }).collect();
    print!("{}", section(report::idle_table(&idle_rows)));
    let interval = format!("v2, every {metrics_interval}");
    print!(
        "{}",
        section(report::scrape_table(&[
            ScrapeRows { agent: "Wake", setting: &interval, runs: &scrape_runs },
            ScrapeRows { agent: "Wake", setting: "none (baseline)", runs: &baseline_runs },
        ]))
    );
    if let Some((wall, agent_cpu, server_cpu, lines, input_bytes)) = server_figures {
        println!(
            "Wake into a real `wake server` (CRI corpus, one run): {} lines stored in {wall:.1} s ({:.1} MiB/s); \
             agent {agent_cpu:.1} CPU-s ({:.1} MiB per CPU-second), server {server_cpu:.1} CPU-s\n",
            group(lines),
            mib(input_bytes) / wall,
            mib(input_bytes) / agent_cpu
        );
    }
    if !failures.is_empty() {
        eprintln!("\n{} run(s) failed:", failures.len());
        for failure in &failures {
            eprintln!("- {failure}");
        }
        std::process::exit(1);
    }
}

/// A table followed by a blank line; nothing for no table.
fn section(table: String) -> String {
    if table.is_empty() { table } else { table + "\n" }
}

fn slug(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// Wake's agent into a real `wake server`, until `SELECT count(*) FROM logs` has every line and
/// no body twice. Returns (wall s, agent CPU s, server CPU s, lines, input bytes).
fn server_run(
    wake: &Kind,
    node: &Node,
    written: &Written,
    dir: &Path,
    limits: Limits,
) -> Result<(f64, f64, f64, u64, u64), String> {
    let (mut server, otlp_addr, http_addr) = common::start_server(&dir.join("data"));
    let server_cpu_before = agents::process_cpu_seconds(server.id()).unwrap_or(0.0);
    let mut agent = agents::Agent::start(wake, node, &otlp_addr, &dir.join("agent")).map_err(|e| e.to_string())?;
    let client =
        reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build().map_err(|e| e.to_string())?;
    let count = |sql: &str| -> Result<u64, String> {
        let answer: serde_json::Value = client
            .post(format!("http://{http_addr}/api/v1/sql"))
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .and_then(|r| r.json())
            .map_err(|e| format!("{sql}: {e}"))?;
        answer["rows"][0][0].as_u64().ok_or_else(|| format!("{sql}: {answer}"))
    };
    let started = Instant::now();
    let outcome = loop {
        std::thread::sleep(Duration::from_secs(1));
        let stored = count("SELECT count(*) FROM logs")?;
        if stored >= written.lines {
            break Ok(stored);
        }
        if agent.exited().is_some() || started.elapsed() >= limits.timeout {
            break Err(format!("{stored} of {} lines stored\n{}", written.lines, agent.log_tail()));
        }
    };
    let wall = agent.started_at.elapsed().as_secs_f64();
    let agent_cpu = agent.cpu_seconds().unwrap_or(f64::NAN);
    let server_cpu = agents::process_cpu_seconds(server.id()).unwrap_or(f64::NAN) - server_cpu_before;
    agent.stop();
    let stored = outcome?;
    let distinct = count("SELECT count(DISTINCT body) FROM logs")?;
    common::terminate(&mut server);
    if stored != written.lines || distinct != written.lines {
        return Err(format!("{stored} rows, {distinct} distinct bodies stored, {} lines written", written.lines));
    }
    Ok((wall, agent_cpu, server_cpu, stored, written.file_bytes))
}
