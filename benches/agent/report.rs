//! Figures over several runs (minimum, median, maximum) and the Markdown tables for
//! BENCHMARKS.md (empty when no run of the table's kind succeeded).

use crate::scenario::{Idle, Measured, Scrape, Throughput, mib};

/// Minimum, median and maximum of one figure over the runs.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
        Some(Spread { min: values[0], median, max: values[n - 1] })
    }

    /// `median (min–max)`, or the value alone for one run.
    pub fn cell(&self, decimals: usize) -> String {
        if self.min == self.max {
            format!("{:.decimals$}", self.median)
        } else {
            format!("{:.decimals$} ({:.decimals$}–{:.decimals$})", self.median, self.min, self.max)
        }
    }
}

fn cell(values: impl IntoIterator<Item = f64>, decimals: usize) -> String {
    Spread::of(values).map_or_else(|| "–".into(), |s| s.cell(decimals))
}

/// The runs of one agent over one corpus.
pub struct ThroughputRows<'a> {
    pub agent: &'a str,
    pub corpus: &'a str,
    pub runs: &'a [Measured<Throughput>],
}

pub fn throughput_table(rows: &[ThroughputRows<'_>]) -> String {
    if rows.iter().all(|r| r.runs.is_empty()) {
        return String::new();
    }
    let mut out = String::from(
        "| agent | corpus | runs | MiB per CPU-second | MiB/s (wall) | peak RSS MiB | requests | max request KiB | \
         lines delivered / written | lines wrong |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows.iter().filter(|r| !r.runs.is_empty()) {
        let runs: Vec<&Throughput> = row.runs.iter().map(|r| &r.figures).collect();
        let mut delivered: Vec<String> =
            runs.iter().map(|r| format!("{} / {}", group(r.delivered), group(r.written))).collect();
        delivered.dedup();
        let wrong: Vec<String> = row
            .runs
            .iter()
            .filter(|r| r.failure.is_some())
            .map(|r| r.figures.problems().unwrap_or_else(|| "run failed".into()))
            .collect();
        let wrong = if wrong.is_empty() {
            "none".to_string()
        } else {
            format!("{} of {} runs: {}", wrong.len(), runs.len(), wrong.join("; "))
        };
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.agent,
            row.corpus,
            runs.len(),
            cell(runs.iter().map(|r| r.mib_per_cpu_second()), 1),
            cell(runs.iter().map(|r| r.mib_per_second()), 1),
            cell(runs.iter().map(|r| mib(r.peak_rss_bytes)), 1),
            cell(runs.iter().map(|r| r.requests as f64), 0),
            cell(runs.iter().map(|r| r.max_request_bytes as f64 / 1024.0), 0),
            delivered.join(", "),
            wrong,
        );
    }
    out
}

pub struct IdleRows<'a> {
    pub agent: &'a str,
    pub runs: &'a [Idle],
}

pub fn idle_table(rows: &[IdleRows<'_>]) -> String {
    if rows.iter().all(|r| r.runs.is_empty()) {
        return String::new();
    }
    let mut out = String::from(
        "| agent | idle files | runs | seconds | CPU, % of a core | RSS MiB | peak RSS MiB |\n|---|---|---|---|---|---|---|\n",
    );
    for row in rows.iter().filter(|r| !r.runs.is_empty()) {
        let runs = row.runs;
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            row.agent,
            group(runs[0].files),
            runs.len(),
            cell(runs.iter().map(|r| r.secs), 0),
            cell(runs.iter().map(|r| 100.0 * r.cpu_share), 2),
            cell(runs.iter().map(|r| mib(r.rss_bytes)), 1),
            cell(runs.iter().map(|r| mib(r.peak_rss_bytes)), 1),
        );
    }
    out
}

pub struct ScrapeRows<'a> {
    pub agent: &'a str,
    pub setting: &'a str,
    pub runs: &'a [Scrape],
}

pub fn scrape_table(rows: &[ScrapeRows<'_>]) -> String {
    if rows.iter().all(|r| r.runs.is_empty()) {
        return String::new();
    }
    let mut out = String::from(
        "| agent | containers | cgroups | runs | seconds | scrapes | points per scrape | CPU, % of a core | RSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows.iter().filter(|r| !r.runs.is_empty()) {
        let runs = row.runs;
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.agent,
            runs[0].containers,
            row.setting,
            runs.len(),
            cell(runs.iter().map(|r| r.secs), 0),
            cell(runs.iter().map(|r| r.scrapes as f64), 0),
            cell(runs.iter().map(|r| r.points_per_scrape), 0),
            cell(runs.iter().map(|r| 100.0 * r.cpu_share), 2),
            cell(runs.iter().map(|r| mib(r.rss_bytes)), 1),
        );
    }
    out
}

/// `1234567` as `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}
