//! One run of one agent: a throughput run over a corpus, an idle run, a cgroup-scrape run. Each
//! starts its own sink and agent, and returns its figures and why the run failed, if it did:
//! lines missing, repeated or altered, the agent exiting, a timeout. (A throughput run that
//! failed still has figures; an idle or scrape run that failed has none.)

use std::path::Path;
use std::time::{Duration, Instant};

use crate::agents::{Agent, Kind, process_cpu_seconds};
use crate::corpus::{Node, Written};
use crate::sink::{Expected, Sink, Tally};

/// How long a run may take, and how long the sink may go without a record before the run is
/// given up (an agent that lost a line would otherwise be waited for until the timeout).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub stall: Duration,
}

/// A run's figures, and what went wrong in it if anything did (then the benchmark fails, but
/// the figures of an agent that lost or mangled lines are still worth showing).
#[derive(Debug, Clone)]
pub struct Measured<T> {
    pub figures: T,
    pub failure: Option<String>,
}

/// A throughput run's figures: until the last line arrived, or, in a run that failed, until the
/// last record did.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub input_bytes: u64,
    pub wall_secs: f64,
    pub cpu_secs: f64,
    pub peak_rss_bytes: u64,
    pub requests: u64,
    pub retried_requests: u64,
    pub max_request_bytes: usize,
    pub request_bytes: u64,
    pub delivered: u64,
    pub written: u64,
    /// Lines that arrived with another length, records that are no line (fragments),
    /// lines that arrived twice.
    pub altered: u64,
    pub fragments: u64,
    pub repeated: u64,
    /// CPU time of this process (the sink, mostly) during the run: on 2 cores it competes with
    /// the agent for wall time.
    pub sink_cpu_secs: f64,
}

impl Throughput {
    pub fn mib_per_cpu_second(&self) -> f64 {
        mib(self.input_bytes) / self.cpu_secs
    }

    pub fn mib_per_second(&self) -> f64 {
        mib(self.input_bytes) / self.wall_secs
    }

    /// What was wrong with the lines, `None` when nothing was.
    pub fn problems(&self) -> Option<String> {
        let counts = [
            (self.written.saturating_sub(self.delivered), "missing"),
            (self.altered, "cut or joined"),
            (self.fragments, "fragments"),
            (self.repeated, "repeated"),
        ];
        let problems: Vec<String> =
            counts.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect();
        if problems.is_empty() { None } else { Some(problems.join(", ")) }
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The agent's process at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall_secs: f64,
    cpu_secs: f64,
    peak_rss_bytes: u64,
}

fn sample(agent: &Agent) -> Sample {
    Sample {
        wall_secs: agent.started_at.elapsed().as_secs_f64(),
        cpu_secs: agent.cpu_seconds().unwrap_or(f64::NAN),
        peak_rss_bytes: agent.peak_rss_bytes().unwrap_or(0),
    }
}

/// Waits until the sink has every line, the agent exits, the sink stalls or the time is up.
/// Returns how it ended and the agent's process when the last line (or record) arrived.
fn wait_for_lines(sink: &Sink, agent: &mut Agent, limits: Limits) -> (Result<(), String>, Sample) {
    let started = Instant::now();
    let mut progress = (0, Instant::now());
    let mut last = sample(agent);
    loop {
        let (complete, records) = sink.with(|t| (t.complete(), t.records));
        if complete {
            return (Ok(()), sample(agent));
        }
        if let Some(status) = agent.exited() {
            return (Err(format!("the agent exited ({status}) before delivering every line")), last);
        }
        if records != progress.0 {
            progress = (records, Instant::now());
            last = sample(agent);
        } else if progress.1.elapsed() >= limits.stall {
            return (Err(format!("no record arrived for {:?}", limits.stall)), last);
        }
        if started.elapsed() >= limits.timeout {
            return (Err(format!("timed out after {:?}", limits.timeout)), last);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The sink's verdict, with the agent's last words when it failed.
fn verdict(sink: &Sink, agent: &Agent, waited: Result<(), String>) -> Result<(), String> {
    let counted = sink.with(Tally::verdict);
    match (waited, counted) {
        (Ok(()), Ok(())) => Ok(()),
        (waited, counted) => {
            let reasons: Vec<String> = [waited.err(), counted.err()].into_iter().flatten().collect();
            Err(format!("{}\nthe agent's log ends:\n{}", reasons.join("; "), agent.log_tail()))
        }
    }
}

/// Runs `kind` over `node` from the start until the sink has counted every line of `written`.
/// `Err` when it could not run at all.
pub fn throughput(
    kind: &Kind,
    node: &Node,
    written: &Written,
    state: &Path,
    limits: Limits,
) -> Result<Measured<Throughput>, String> {
    let own_cpu_before = process_cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
    let sink = Sink::start(Expected::from(written)).map_err(|e| format!("starting the sink: {e}"))?;
    let mut agent =
        Agent::start(kind, node, &sink.addr.to_string(), state).map_err(|e| format!("starting the agent: {e}"))?;
    let (waited, at) = wait_for_lines(&sink, &mut agent, limits);
    let sink_cpu_secs = process_cpu_seconds(std::process::id()).unwrap_or(f64::NAN) - own_cpu_before;
    // Lines sent twice would arrive after the last new one: give them a moment.
    if waited.is_ok() {
        std::thread::sleep(Duration::from_secs(2));
    }
    agent.stop();
    let failure = verdict(&sink, &agent, waited).err();
    let figures = sink.with(|t| Throughput {
        input_bytes: written.file_bytes,
        wall_secs: at.wall_secs,
        cpu_secs: at.cpu_secs,
        peak_rss_bytes: at.peak_rss_bytes,
        requests: t.log_requests,
        retried_requests: t.retried_requests,
        max_request_bytes: t.max_request_bytes,
        request_bytes: t.request_bytes,
        delivered: t.unique,
        written: written.lines,
        altered: t.altered,
        fragments: t.unrecognised,
        repeated: t.duplicates,
        sink_cpu_secs,
    });
    Ok(Measured { figures, failure })
}

/// An idle run's figures: CPU share of one core and memory, once every line was delivered.
#[derive(Debug, Clone)]
pub struct Idle {
    pub files: u64,
    pub secs: f64,
    pub cpu_share: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub delivered: u64,
}

/// Delivers `written` (a few lines in many files), then measures `kind` doing nothing for
/// `duration`.
pub fn idle(
    kind: &Kind,
    node: &Node,
    written: &Written,
    state: &Path,
    limits: Limits,
    duration: Duration,
) -> Result<Idle, String> {
    let sink = Sink::start(Expected::from(written)).map_err(|e| format!("starting the sink: {e}"))?;
    let mut agent =
        Agent::start(kind, node, &sink.addr.to_string(), state).map_err(|e| format!("starting the agent: {e}"))?;
    let (waited, _) = wait_for_lines(&sink, &mut agent, limits);
    if waited.is_err() {
        agent.stop();
        verdict(&sink, &agent, waited)?;
    }
    // Checkpoints written, the last batch acknowledged, Fluent Bit's flush timer run down.
    std::thread::sleep(Duration::from_secs(5));
    let (cpu_before, started) = (agent.cpu_seconds(), Instant::now());
    let exited = sleep_watching(&mut agent, duration);
    let (cpu_after, secs) = (agent.cpu_seconds(), started.elapsed().as_secs_f64());
    let (rss_bytes, peak_rss_bytes) = (agent.rss_bytes().unwrap_or(0), agent.peak_rss_bytes().unwrap_or(0));
    agent.stop();
    verdict(&sink, &agent, exited)?;
    let cpu = cpu_after.zip(cpu_before).map_or(f64::NAN, |(after, before)| after - before);
    Ok(Idle {
        files: written.files,
        secs,
        cpu_share: cpu / secs,
        rss_bytes,
        peak_rss_bytes,
        delivered: sink.with(|t| t.unique),
    })
}

fn sleep_watching(agent: &mut Agent, duration: Duration) -> Result<(), String> {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if let Some(status) = agent.exited() {
            return Err(format!("the agent exited ({status}) while idle"));
        }
        std::thread::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(500)));
    }
    Ok(())
}

/// A cgroup-scrape run's figures.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub containers: u64,
    pub secs: f64,
    pub cpu_share: f64,
    pub rss_bytes: u64,
    /// Scrapes the sink received during the measured window.
    pub scrapes: u64,
    pub containers_per_scrape: usize,
    pub points_per_scrape: f64,
}

/// `kind` on a node whose `containers` each have a log file (with one line each, in `written`)
/// and a cgroup: measured over `duration` once the first scrape arrived. With `expect_metrics`
/// false the node's cgroup root is absent (the baseline: the same files, nothing to scrape).
pub fn scrape(
    kind: &Kind,
    node: &Node,
    written: &Written,
    state: &Path,
    limits: Limits,
    duration: Duration,
    expect_metrics: bool,
) -> Result<Scrape, String> {
    let sink = Sink::start(Expected::from(written)).map_err(|e| format!("starting the sink: {e}"))?;
    let mut agent =
        Agent::start(kind, node, &sink.addr.to_string(), state).map_err(|e| format!("starting the agent: {e}"))?;
    let (mut waited, _) = wait_for_lines(&sink, &mut agent, limits);
    if waited.is_ok() && expect_metrics {
        let deadline = Instant::now() + limits.timeout;
        while sink.with(|t| t.container_metric_requests) == 0 {
            if Instant::now() >= deadline || agent.exited().is_some() {
                waited = Err("no container metrics arrived".into());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if waited.is_err() {
        agent.stop();
        verdict(&sink, &agent, waited)?;
    }
    let before = sink.with(|t| (t.container_metric_requests, t.container_metric_points));
    let (cpu_before, started) = (agent.cpu_seconds(), Instant::now());
    let exited = sleep_watching(&mut agent, duration);
    let (cpu_after, secs) = (agent.cpu_seconds(), started.elapsed().as_secs_f64());
    let rss_bytes = agent.rss_bytes().unwrap_or(0);
    let after = sink.with(|t| (t.container_metric_requests, t.container_metric_points));
    let containers_per_scrape = sink.with(|t| t.max_containers_per_request);
    agent.stop();
    verdict(&sink, &agent, exited)?;
    if expect_metrics && containers_per_scrape as u64 != written.files {
        return Err(format!("a scrape held {containers_per_scrape} containers of {}", written.files));
    }
    let scrapes = after.0 - before.0;
    let cpu = cpu_after.zip(cpu_before).map_or(f64::NAN, |(after, before)| after - before);
    Ok(Scrape {
        containers: written.files,
        secs,
        cpu_share: cpu / secs,
        rss_bytes,
        scrapes,
        containers_per_scrape,
        points_per_scrape: if scrapes > 0 { (after.1 - before.1) as f64 / scrapes as f64 } else { 0.0 },
    })
}
