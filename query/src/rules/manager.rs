//! [`Ruler`]: loads rule files, runs each group on its own task at its interval, sends alerts
//! to Alertmanager, restores pending alerts' `for` clocks after a start, and reloads on demand
//! keeping the state of unchanged rules (Prometheus' `rules.Manager`).
//!
//! - Evaluation times are aligned as Prometheus aligns them: a group of interval `i` is
//!   evaluated at `k × i + offset`, the offset a hash of its file and name, so that groups
//!   spread over the interval and a restart keeps each group's rhythm. An evaluation that
//!   starts more than one interval late counts the skipped iterations as missed.
//! - A reload reads every file first; if any file is refused, nothing changes and the error
//!   (file and line) is returned and logged. Otherwise groups that are gone are stopped (their
//!   series get staleness markers), new ones started, and changed groups restarted with the
//!   state of their unchanged rules.
//! - After a start, the first load restores: alerting rules write no `ALERTS` until, after
//!   their group's second evaluation, `ALERTS_FOR_STATE` of the last `for_outage_tolerance`
//!   has been read back (see [`restore_for_state`]).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use prometheus::{CounterVec, GaugeVec, IntCounterVec, IntGauge, Opts, Registry};
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use super::alert::{ALERT_NAME_LABEL, ALERTS_FOR_STATE_METRIC, SentAlert, TemplateContext};
use super::file::{self, FileError, GroupDef, Lang};
use super::group::{Group, RuleQuerier, SampleWriter, millis, stale_nan};
use super::notifier::{self, AlertmanagerConfig, Notifier, NotifierConfig};
use super::querier::check_expression;
use crate::prom::eval::SeriesSource;
use crate::prom::naming::{Labels, METRIC_NAME_LABEL};

/// The ruler's settings (the `ruler:` section of the server's configuration).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulerConfig {
    /// Interval of groups that set none (Prometheus' `evaluation_interval`).
    #[serde(deserialize_with = "wake_collector::time::deserialize_duration")]
    pub evaluation_interval: Duration,
    /// How far behind the evaluation time rules query, for groups that set no
    /// `query_offset`: data still in agents' batches then cannot make rules flap.
    #[serde(deserialize_with = "wake_collector::time::deserialize_duration")]
    pub query_offset: Duration,
    /// Firing alerts are sent again this often (Prometheus' `rules.alert.resend-delay`).
    #[serde(deserialize_with = "wake_collector::time::deserialize_duration")]
    pub resend_delay: Duration,
    /// How long Wake may have been down for a pending alert's `for` clock to be restored.
    #[serde(deserialize_with = "wake_collector::time::deserialize_duration")]
    pub for_outage_tolerance: Duration,
    /// After a restore, an alert fires no sooner than this; rules whose `for` is shorter are
    /// not restored.
    #[serde(deserialize_with = "wake_collector::time::deserialize_duration")]
    pub for_grace_period: Duration,
    /// Added to every alert sent (unless it has the label) and visible in templates.
    pub external_labels: Labels,
    /// Where alerts' `generatorURL` points; default `http://<host>:<query port>`.
    pub external_url: Option<String>,
    /// The Alertmanagers every alert goes to.
    pub alertmanagers: Vec<AlertmanagerConfig>,
    /// Alerts waiting to be sent; beyond it the oldest are dropped and counted.
    pub notification_queue_capacity: usize,
}

impl Default for RulerConfig {
    fn default() -> Self {
        RulerConfig {
            evaluation_interval: Duration::from_secs(60),
            query_offset: Duration::ZERO,
            resend_delay: Duration::from_secs(60),
            for_outage_tolerance: Duration::from_secs(3600),
            for_grace_period: Duration::from_secs(600),
            external_labels: Labels::new(),
            external_url: None,
            alertmanagers: Vec::new(),
            notification_queue_capacity: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RulerError {
    #[error("invalid ruler configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Files(String),
    #[error("starting the notifier: {0}")]
    Notifier(#[from] notifier::NotifierError),
}

impl RulerConfig {
    pub fn validate(&self) -> Result<(), RulerError> {
        if self.evaluation_interval.is_zero() {
            return Err(RulerError::Config("ruler.evaluation_interval must be above 0".into()));
        }
        if self.notification_queue_capacity == 0 {
            return Err(RulerError::Config("ruler.notification_queue_capacity must be above 0".into()));
        }
        for name in self.external_labels.keys() {
            if !file::is_valid_label_name(name) {
                return Err(RulerError::Config(format!("ruler.external_labels: invalid label name {name:?}")));
            }
        }
        self.notifier_config().validate()?;
        Ok(())
    }

    fn notifier_config(&self) -> NotifierConfig {
        NotifierConfig {
            alertmanagers: self.alertmanagers.clone(),
            queue_capacity: self.notification_queue_capacity,
            ..NotifierConfig::default()
        }
    }
}

/// Where rules come from: globs of Prometheus rule files and of Loki rule files.
#[derive(Debug, Clone, Default)]
pub struct RuleSources {
    pub rule_files: Vec<String>,
    pub loki_rule_files: Vec<String>,
}

impl RuleSources {
    pub fn is_empty(&self) -> bool {
        self.rule_files.is_empty() && self.loki_rule_files.is_empty()
    }

    /// Reads and checks every file the globs match; every refusal, or the groups.
    pub fn load(&self) -> Result<Vec<GroupDef>, String> {
        let mut groups = Vec::new();
        let mut errors = Vec::new();
        for (patterns, lang) in [(&self.rule_files, Lang::Promql), (&self.loki_rule_files, Lang::Logql)] {
            for path in expand_globs(patterns).map_err(|e| e.to_string())? {
                match file::load_file(&path, lang, &check_expression) {
                    Ok(loaded) => groups.extend(loaded),
                    Err(error) => errors.push(error),
                }
            }
        }
        if errors.is_empty() {
            Ok(groups)
        } else {
            Err(errors.iter().map(FileError::to_string).collect::<Vec<_>>().join("\n"))
        }
    }
}

/// The files matched by `patterns`, sorted, without duplicates. A pattern without glob
/// characters names a file that must exist.
pub fn expand_globs(patterns: &[String]) -> Result<Vec<PathBuf>, RulerError> {
    let mut paths = Vec::new();
    for pattern in patterns {
        let matched: Vec<PathBuf> = glob::glob(pattern)
            .map_err(|e| RulerError::Files(format!("invalid rule file pattern {pattern:?}: {e}")))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        if matched.is_empty() && !pattern.contains(['*', '?', '[']) {
            return Err(RulerError::Files(format!("{pattern}: no such rule file")));
        }
        paths.extend(matched);
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// Self-metrics, Prometheus' rule manager's under `wake_` names.
#[derive(Clone)]
struct RulerMetrics {
    evaluations: IntCounterVec,
    failures: IntCounterVec,
    iterations: IntCounterVec,
    missed: IntCounterVec,
    last_duration: GaugeVec,
    last_evaluation: GaugeVec,
    interval: GaugeVec,
    rules: GaugeVec,
    samples: GaugeVec,
    evaluation_seconds: CounterVec,
    reload_successful: IntGauge,
    reload_timestamp: IntGauge,
}

impl RulerMetrics {
    fn new(registry: &Registry) -> Result<RulerMetrics, prometheus::Error> {
        let group = &["rule_group"];
        let counter = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), group);
        let gauge = |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), group);
        let metrics = RulerMetrics {
            evaluations: counter("wake_server_rule_evaluations_total", "Rule evaluations, by group")?,
            failures: counter("wake_server_rule_evaluation_failures_total", "Rule evaluations that failed, by group")?,
            iterations: counter("wake_server_rule_group_iterations_total", "Scheduled evaluations of each group")?,
            missed: counter(
                "wake_server_rule_group_iterations_missed_total",
                "Evaluations of each group skipped because the previous one ran too long",
            )?,
            last_duration: gauge(
                "wake_server_rule_group_last_duration_seconds",
                "Duration of the group's last evaluation",
            )?,
            last_evaluation: gauge(
                "wake_server_rule_group_last_evaluation_timestamp_seconds",
                "Unix time of the group's last evaluation",
            )?,
            interval: gauge("wake_server_rule_group_interval_seconds", "The group's evaluation interval")?,
            rules: gauge("wake_server_rule_group_rules", "Rules in the group")?,
            samples: gauge(
                "wake_server_rule_group_last_evaluation_samples",
                "Samples the group's last evaluation wrote",
            )?,
            evaluation_seconds: CounterVec::new(
                Opts::new("wake_server_rule_evaluation_seconds_total", "Time spent evaluating each group"),
                group,
            )?,
            reload_successful: IntGauge::new(
                "wake_server_rules_config_last_reload_successful",
                "Whether the last reload of the rule files succeeded",
            )?,
            reload_timestamp: IntGauge::new(
                "wake_server_rules_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful reload of the rule files",
            )?,
        };
        registry.register(Box::new(metrics.evaluations.clone()))?;
        registry.register(Box::new(metrics.failures.clone()))?;
        registry.register(Box::new(metrics.iterations.clone()))?;
        registry.register(Box::new(metrics.missed.clone()))?;
        registry.register(Box::new(metrics.last_duration.clone()))?;
        registry.register(Box::new(metrics.last_evaluation.clone()))?;
        registry.register(Box::new(metrics.interval.clone()))?;
        registry.register(Box::new(metrics.rules.clone()))?;
        registry.register(Box::new(metrics.samples.clone()))?;
        registry.register(Box::new(metrics.evaluation_seconds.clone()))?;
        registry.register(Box::new(metrics.reload_successful.clone()))?;
        registry.register(Box::new(metrics.reload_timestamp.clone()))?;
        Ok(metrics)
    }

    fn forget(&self, label: &str) {
        for vec in [&self.evaluations, &self.failures, &self.iterations, &self.missed] {
            let _ = vec.remove_label_values(&[label]);
        }
        for vec in [&self.last_duration, &self.last_evaluation, &self.interval, &self.rules, &self.samples] {
            let _ = vec.remove_label_values(&[label]);
        }
        let _ = self.evaluation_seconds.remove_label_values(&[label]);
    }
}

/// Prometheus' `rule_group` label: `<file>;<group>`.
fn group_label(key: &(String, String)) -> String {
    format!("{};{}", key.0, key.1)
}

/// What every group task shares.
struct Shared {
    config: RulerConfig,
    context: TemplateContext,
    querier: Arc<dyn RuleQuerier>,
    writer: Arc<dyn SampleWriter>,
    restore_source: Arc<dyn SeriesSource>,
    notifier: Arc<Notifier>,
    metrics: RulerMetrics,
}

/// A running group: its last published state and its task.
struct Running {
    def: GroupDef,
    state: Arc<RwLock<Group>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Group>,
}

/// The rule manager.
pub struct Ruler {
    shared: Arc<Shared>,
    sources: RuleSources,
    groups: tokio::sync::Mutex<BTreeMap<(String, String), Running>>,
    /// Published copies of the groups, for the APIs.
    snapshot: RwLock<Vec<Arc<RwLock<Group>>>>,
    /// Whether the next load is the first since the start (and restores `for` state).
    first_load: std::sync::atomic::AtomicBool,
    notifier_task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    notifier_stop: watch::Sender<bool>,
}

impl Ruler {
    /// Creates the ruler and its notifier; [`Ruler::reload`] loads the rules.
    pub fn new(
        config: RulerConfig,
        sources: RuleSources,
        querier: Arc<dyn RuleQuerier>,
        writer: Arc<dyn SampleWriter>,
        restore_source: Arc<dyn SeriesSource>,
        registry: &Registry,
    ) -> Result<Arc<Ruler>, RulerError> {
        config.validate()?;
        let notifier = Notifier::new(config.notifier_config(), registry)?;
        let metrics = RulerMetrics::new(registry).map_err(|e| RulerError::Config(format!("ruler metrics: {e}")))?;
        let context = TemplateContext {
            external_labels: config.external_labels.clone(),
            external_url: config.external_url.clone().unwrap_or_default(),
        };
        let (notifier_stop, stop) = watch::channel(false);
        let task = tokio::spawn(notifier.clone().run(stop));
        Ok(Arc::new(Ruler {
            shared: Arc::new(Shared { config, context, querier, writer, restore_source, notifier, metrics }),
            sources,
            groups: tokio::sync::Mutex::new(BTreeMap::new()),
            snapshot: RwLock::new(Vec::new()),
            first_load: std::sync::atomic::AtomicBool::new(true),
            notifier_task: parking_lot::Mutex::new(Some(task)),
            notifier_stop,
        }))
    }

    pub fn config(&self) -> &RulerConfig {
        &self.shared.config
    }

    /// Copies of every group's state, in file and name order.
    pub fn groups(&self) -> Vec<Group> {
        self.snapshot.read().iter().map(|g| g.read().clone()).collect()
    }

    /// Reloads the rule files. On a refusal, the running rules stay as they are.
    pub async fn reload(&self) -> Result<usize, RulerError> {
        let loaded = match self.sources.load() {
            Ok(loaded) => loaded,
            Err(error) => {
                self.shared.metrics.reload_successful.set(0);
                warn!(%error, "rule files refused; the previous rules keep running");
                return Err(RulerError::Files(error));
            }
        };
        let restore = self.first_load.swap(false, std::sync::atomic::Ordering::SeqCst);
        let mut running = self.groups.lock().await;
        let mut wanted: BTreeMap<(String, String), GroupDef> = BTreeMap::new();
        for def in loaded {
            wanted.insert((def.file.display().to_string(), def.name.clone()), def);
        }
        // Stop groups that are gone or changed; keep the state of the changed ones.
        let mut previous: BTreeMap<(String, String), Group> = BTreeMap::new();
        let keys: Vec<_> = running.keys().cloned().collect();
        for key in keys {
            let unchanged = wanted.get(&key).is_some_and(|def| running.get(&key).is_some_and(|r| &r.def == def));
            if unchanged {
                wanted.remove(&key);
                continue;
            }
            if let Some(old) = running.remove(&key) {
                let _ = old.stop.send(true);
                let group = match old.task.await {
                    Ok(group) => group,
                    Err(_) => old.state.read().clone(),
                };
                self.shared.metrics.forget(&group_label(&key));
                if !wanted.contains_key(&key) {
                    mark_stale(self.shared.writer.as_ref(), &group).await;
                }
                previous.insert(key, group);
            }
        }
        for (key, def) in wanted {
            let mut group = Group::new(
                def.clone(),
                self.shared.config.evaluation_interval,
                self.shared.config.query_offset,
                !restore,
            );
            if let Some(old) = previous.get(&key) {
                group.inherit(old);
            }
            let state = Arc::new(RwLock::new(group.clone()));
            let (stop, stop_receiver) = watch::channel(false);
            let task = tokio::spawn(run_group(self.shared.clone(), group, state.clone(), restore, stop_receiver));
            running.insert(key, Running { def, state, stop, task });
        }
        *self.snapshot.write() = running.values().map(|r| r.state.clone()).collect();
        let count = running.len();
        self.shared.metrics.reload_successful.set(1);
        self.shared.metrics.reload_timestamp.set(unix_ms(SystemTime::now()) / 1000);
        info!(groups = count, "rules loaded");
        Ok(count)
    }

    /// Stops every group and the notifier (which sends what is queued first).
    pub async fn stop(&self) {
        let mut running = self.groups.lock().await;
        for (_, group) in std::mem::take(&mut *running) {
            let _ = group.stop.send(true);
            let _ = group.task.await;
        }
        let _ = self.notifier_stop.send(true);
        let task = self.notifier_task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// Staleness markers for every series a removed group wrote, as Prometheus writes them.
async fn mark_stale(writer: &dyn SampleWriter, group: &Group) {
    let series = group.last_series();
    if series.is_empty() {
        return;
    }
    let ts = unix_ms(SystemTime::now()).saturating_sub(millis(group.query_offset));
    let samples = series.into_iter().map(|labels| (labels, stale_nan())).collect();
    if let Err(error) = writer.write(ts, samples).await {
        warn!(group = %group.def.name, %error, "writing staleness markers of a removed group failed");
    }
}

pub fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The group's evaluation slot at or before `now_ms` (Prometheus' `EvalTimestamp`).
pub fn aligned_timestamp(def: &GroupDef, interval_ms: i64, now_ms: i64) -> i64 {
    // FNV-1a over the file and the name: the same slot in every build and every restart.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in def.file.to_string_lossy().bytes().chain([0xff]).chain(def.name.bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let interval_ms = interval_ms.max(1);
    let offset = i64::try_from(hash % u64::try_from(interval_ms).unwrap_or(1)).unwrap_or(0);
    let adjusted = now_ms.saturating_sub(offset);
    adjusted - adjusted.rem_euclid(interval_ms) + offset
}

async fn run_group(
    shared: Arc<Shared>,
    mut group: Group,
    state: Arc<RwLock<Group>>,
    mut restore: bool,
    mut stop: watch::Receiver<bool>,
) -> Group {
    let key = group.key();
    let label = group_label(&key);
    let metrics = &shared.metrics;
    let interval_ms = millis(group.interval).max(1);
    metrics.interval.with_label_values(&[&label]).set(group.interval.as_secs_f64());
    metrics.rules.with_label_values(&[&label]).set(group.rules.len() as f64);
    let mut next = aligned_timestamp(&group.def, interval_ms, unix_ms(SystemTime::now())).saturating_add(interval_ms);
    let mut evaluations_since_start = 0u32;
    loop {
        let wait = next.saturating_sub(unix_ms(SystemTime::now()));
        if wait > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))) => {}
                _ = stop.wait_for(|stopped| *stopped) => return group,
            }
        }
        if *stop.borrow() {
            return group;
        }
        let ts = next;
        let outcome = group.eval(ts, shared.querier.as_ref(), shared.writer.as_ref(), &shared.context).await;
        evaluations_since_start += 1;
        metrics.iterations.with_label_values(&[&label]).inc();
        metrics.evaluations.with_label_values(&[&label]).inc_by(outcome.evaluated_rules as u64);
        metrics.failures.with_label_values(&[&label]).inc_by(outcome.failed_rules as u64);
        metrics.last_duration.with_label_values(&[&label]).set(group.evaluation_time.as_secs_f64());
        metrics.evaluation_seconds.with_label_values(&[&label]).inc_by(group.evaluation_time.as_secs_f64());
        metrics.last_evaluation.with_label_values(&[&label]).set(ts as f64 / 1000.0);
        metrics.samples.with_label_values(&[&label]).set(outcome.samples_written as f64);
        // Prometheus restores after the second evaluation, once recording rules that alerts
        // depend on have written fresh values.
        if restore && evaluations_since_start >= 2 {
            restore_for_state(&shared, &mut group, unix_ms(SystemTime::now())).await;
            restore = false;
        }
        send_alerts(&shared, &mut group, ts);
        *state.write() = group.clone();
        // The next slot; slots that already passed are missed, not run in a burst.
        let now = unix_ms(SystemTime::now());
        next = ts.saturating_add(interval_ms);
        if now >= next.saturating_add(interval_ms) {
            let missed = (now - next) / interval_ms;
            metrics.missed.with_label_values(&[&label]).inc_by(u64::try_from(missed).unwrap_or(0));
            warn!(group = %key.1, file = %key.0, missed, "rule group evaluation took longer than its interval");
            next = next.saturating_add(missed.saturating_mul(interval_ms));
        }
    }
}

fn send_alerts(shared: &Shared, group: &mut Group, ts: i64) {
    let due = group.alerts_to_send(ts, shared.config.resend_delay);
    if due.is_empty() {
        return;
    }
    let base = shared.context.external_url.trim_end_matches('/');
    let alerts = due.into_iter().map(|(expr, alert)| to_notification(shared, base, &expr, alert)).collect();
    shared.notifier.send(alerts);
}

fn to_notification(shared: &Shared, base: &str, expr: &str, alert: SentAlert) -> notifier::Alert {
    let mut labels = alert.labels;
    for (name, value) in &shared.config.external_labels {
        labels.entry(name.clone()).or_insert_with(|| value.clone());
    }
    let query: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    notifier::Alert {
        labels,
        annotations: alert.annotations,
        starts_at: system_time(alert.starts_at),
        ends_at: Some(system_time(alert.ends_at)),
        generator_url: format!("{base}/graph?g0.expr={query}&g0.tab=1"),
    }
}

/// Prometheus' `RestoreForState`: gives pending alerts back the `ActiveAt` they had before the
/// restart, read from the last `ALERTS_FOR_STATE` sample within `for_outage_tolerance`, so
/// that a restart does not reset a long `for`; then lets every alerting rule write its series.
pub async fn restore_for_state(shared_like: &impl RestoreContext, group: &mut Group, now_ms: i64) {
    let tolerance_ms = millis(shared_like.outage_tolerance());
    let grace_ms = millis(shared_like.grace_period());
    let source = shared_like.source();
    for rule in &mut group.rules {
        let Some(alerting) = rule.alerting_mut() else { continue };
        if alerting.hold_ms < grace_ms || alerting.hold_ms == 0 {
            alerting.restored = true;
            continue;
        }
        let hold_ms = alerting.hold_ms;
        let mut seen = HashSet::new();
        for alert in alerting.active_mut() {
            let mut matchers = vec![exact(METRIC_NAME_LABEL, ALERTS_FOR_STATE_METRIC)];
            matchers.extend(alert.labels.iter().map(|(name, value)| exact(name, value)));
            let series = match source.select(&matchers, now_ms.saturating_sub(tolerance_ms), now_ms).await {
                Ok(series) => series,
                Err(error) => {
                    warn!(alert = %alert.labels.get(ALERT_NAME_LABEL).map_or("", String::as_str), %error, "restoring the alert's for state failed");
                    continue;
                }
            };
            // Exactly this series: not one with more labels.
            let Some(found) = series.into_iter().find(|s| {
                s.labels.len() == alert.labels.len() + 1 && alert.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
            }) else {
                continue;
            };
            let Some(&(down_at, value)) = found.samples.last() else { continue };
            if wake_storage::prompb::is_stale_nan(value) || !seen.insert(alert.labels.clone()) {
                continue;
            }
            // Whole seconds, as Prometheus compares them.
            let down_at = down_at.div_euclid(1000) * 1000;
            let restored_active_at = (value as i64).saturating_mul(1000);
            let remaining = hold_ms - (down_at - restored_active_at);
            let active_at = if remaining <= 0 {
                restored_active_at
            } else if remaining < grace_ms {
                now_ms + grace_ms - hold_ms
            } else {
                restored_active_at + (now_ms - down_at)
            };
            alert.active_at = active_at;
        }
        alerting.restored = true;
    }
}

fn exact(name: &str, value: &str) -> promql_parser::label::Matcher {
    promql_parser::label::Matcher::new(promql_parser::label::MatchOp::Equal, name, value)
}

/// What [`restore_for_state`] needs of the ruler: a seam for tests.
pub trait RestoreContext {
    fn outage_tolerance(&self) -> Duration;
    fn grace_period(&self) -> Duration;
    fn source(&self) -> &dyn SeriesSource;
}

impl RestoreContext for Arc<Shared> {
    fn outage_tolerance(&self) -> Duration {
        self.config.for_outage_tolerance
    }

    fn grace_period(&self) -> Duration {
        self.config.for_grace_period
    }

    fn source(&self) -> &dyn SeriesSource {
        self.restore_source.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::rules::file::RuleDef;
    use crate::rules::unittest::MemoryStore;

    struct Restore {
        store: MemoryStore,
    }

    impl RestoreContext for Restore {
        fn outage_tolerance(&self) -> Duration {
            Duration::from_secs(3600)
        }
        fn grace_period(&self) -> Duration {
            Duration::from_secs(60)
        }
        fn source(&self) -> &dyn SeriesSource {
            &self.store
        }
    }

    fn group(hold: Duration) -> Group {
        let def = GroupDef {
            file: PathBuf::from("f.yml"),
            name: "g".into(),
            interval: Some(Duration::from_secs(10)),
            query_offset: None,
            limit: 0,
            lang: Lang::Promql,
            rules: vec![RuleDef::Alerting {
                alert: "Down".into(),
                expr: "up == 0".into(),
                hold,
                keep_firing_for: Duration::ZERO,
                labels: Default::default(),
                annotations: Default::default(),
            }],
        };
        Group::new(def, Duration::from_secs(10), Duration::ZERO, false)
    }

    #[tokio::test]
    async fn a_pending_clock_survives_a_restart() {
        let store = MemoryStore::default();
        // Before the restart: pending since 1000 s, last written at 1300 s.
        store.load(r#"up{instance="a"}"#, "0x200", 10_000).unwrap();
        store.load(r#"ALERTS_FOR_STATE{alertname="Down", instance="a"}"#, "1000x130", 10_000).unwrap();
        let restore = Restore { store };
        let mut group = group(Duration::from_secs(600));
        let context = TemplateContext::default();
        // Back at 1400 s: two evaluations, then the restore.
        for ts in [1_400_000, 1_410_000] {
            group.eval(ts, &restore.store, &restore.store, &context).await;
        }
        restore_for_state(&restore, &mut group, 1_410_000).await;
        let alert = group.rules[0].alerting().unwrap().alerts()[0].clone();
        // 300 s were spent pending before the outage; the 110 s down are added back.
        assert_eq!(alert.active_at, 1_000_000 + (1_410_000 - 1_300_000));
        assert!(group.rules[0].alerting().unwrap().restored);
    }

    #[tokio::test]
    async fn rules_with_a_for_below_the_grace_period_are_not_restored() {
        let store = MemoryStore::default();
        store.load(r#"up{instance="a"}"#, "0x200", 10_000).unwrap();
        store.load(r#"ALERTS_FOR_STATE{alertname="Down", instance="a"}"#, "1000x130", 10_000).unwrap();
        let restore = Restore { store };
        let mut group = group(Duration::from_secs(30));
        group.eval(1_400_000, &restore.store, &restore.store, &TemplateContext::default()).await;
        restore_for_state(&restore, &mut group, 1_400_000).await;
        assert_eq!(group.rules[0].alerting().unwrap().alerts()[0].active_at, 1_400_000);
    }

    #[test]
    fn evaluation_slots_are_aligned_and_stable() {
        let def = group(Duration::ZERO).def;
        let a = aligned_timestamp(&def, 15_000, 1_000_000);
        let b = aligned_timestamp(&def, 15_000, 1_000_000 + 14_999);
        assert!(a <= 1_000_000 && 1_000_000 - a < 15_000);
        assert!(b == a || b == a + 15_000);
        assert_eq!((aligned_timestamp(&def, 15_000, a + 15_000) - a), 15_000);
    }
}
