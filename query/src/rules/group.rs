//! One rule group: its rules evaluated in order at one timestamp, each rule's output written
//! before the next rule runs (so that a recording rule feeds the rules after it), and
//! staleness markers written for series a rule returned last time and not this time, as
//! Prometheus' `Group.Eval` does.
//!
//! The group reaches the data through two traits: [`RuleQuerier`] answers an instant query in
//! the group's language, [`SampleWriter`] stores samples. The ruler implements them over the
//! query engine and the store's ingest API; `wake rules test` over memory.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::alert::{AlertingRule, SentAlert, TemplateContext};
use super::file::{GroupDef, Lang, RuleDef};
use crate::prom::naming::{Labels, METRIC_NAME_LABEL};

/// The staleness marker, Prometheus' special NaN.
pub fn stale_nan() -> f64 {
    f64::from_bits(wake_storage::prompb::STALE_NAN_BITS)
}

/// Answers an instant query at `ts_ms` as an instant vector (a scalar as one sample without
/// labels, as Prometheus' rule query function does).
#[async_trait::async_trait]
pub trait RuleQuerier: Send + Sync {
    async fn instant(&self, lang: Lang, expr: &str, ts_ms: i64) -> Result<Vec<(Labels, f64)>, String>;
}

/// Stores samples at `ts_ms`; labels include `__name__`.
#[async_trait::async_trait]
pub trait SampleWriter: Send + Sync {
    async fn write(&self, ts_ms: i64, samples: Vec<(Labels, f64)>) -> Result<(), String>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Unknown,
    Ok,
    Err,
}

#[derive(Debug, Clone)]
pub enum RuleKind {
    Recording,
    Alerting(AlertingRule),
}

/// A rule and what its last evaluation did.
#[derive(Debug, Clone)]
pub struct Rule {
    pub def: RuleDef,
    pub kind: RuleKind,
    pub health: Health,
    pub last_error: Option<String>,
    /// Unix ms of the last evaluation.
    pub last_evaluation: Option<i64>,
    pub evaluation_time: Duration,
    series_in_previous_eval: HashSet<Labels>,
}

impl Rule {
    pub fn new(def: RuleDef, restored: bool) -> Rule {
        let kind = match &def {
            RuleDef::Recording { .. } => RuleKind::Recording,
            RuleDef::Alerting { alert, hold, keep_firing_for, labels, annotations, .. } => {
                RuleKind::Alerting(AlertingRule::new(
                    alert.clone(),
                    millis(*hold),
                    millis(*keep_firing_for),
                    labels.clone(),
                    annotations.clone(),
                    restored,
                ))
            }
        };
        Rule {
            def,
            kind,
            health: Health::Unknown,
            last_error: None,
            last_evaluation: None,
            evaluation_time: Duration::ZERO,
            series_in_previous_eval: HashSet::new(),
        }
    }

    pub fn alerting(&self) -> Option<&AlertingRule> {
        match &self.kind {
            RuleKind::Alerting(rule) => Some(rule),
            RuleKind::Recording => None,
        }
    }

    pub fn alerting_mut(&mut self) -> Option<&mut AlertingRule> {
        match &mut self.kind {
            RuleKind::Alerting(rule) => Some(rule),
            RuleKind::Recording => None,
        }
    }

    /// Takes over the state of `previous`, the same rule before a reload.
    pub fn inherit(&mut self, previous: &Rule) {
        if let (RuleKind::Alerting(new), RuleKind::Alerting(old)) = (&mut self.kind, &previous.kind) {
            new.inherit(old);
        }
        self.health = previous.health;
        self.last_error = previous.last_error.clone();
        self.last_evaluation = previous.last_evaluation;
        self.evaluation_time = previous.evaluation_time;
        self.series_in_previous_eval = previous.series_in_previous_eval.clone();
    }

    /// The series this rule wrote at its last evaluation, for staleness markers when the rule
    /// goes away.
    pub fn last_series(&self) -> impl Iterator<Item = &Labels> {
        self.series_in_previous_eval.iter()
    }
}

pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A group and its rules' state.
#[derive(Debug, Clone)]
pub struct Group {
    pub def: GroupDef,
    pub interval: Duration,
    pub query_offset: Duration,
    pub rules: Vec<Rule>,
    pub last_evaluation: Option<i64>,
    pub evaluation_time: Duration,
}

/// What one evaluation of a group did.
#[derive(Debug, Default)]
pub struct GroupEval {
    pub samples_written: usize,
    pub failed_rules: usize,
    pub evaluated_rules: usize,
}

impl Group {
    /// `restored`: whether alerting rules may write `ALERTS_FOR_STATE` from their first
    /// evaluation (no restore pending).
    pub fn new(def: GroupDef, default_interval: Duration, default_offset: Duration, restored: bool) -> Group {
        let rules = def.rules.iter().cloned().map(|rule| Rule::new(rule, restored)).collect();
        Group {
            interval: def.interval.unwrap_or(default_interval),
            query_offset: def.query_offset.unwrap_or(default_offset),
            def,
            rules,
            last_evaluation: None,
            evaluation_time: Duration::ZERO,
        }
    }

    pub fn key(&self) -> (String, String) {
        (self.def.file.display().to_string(), self.def.name.clone())
    }

    /// Evaluates every rule at `ts_ms` (queries at `ts_ms - query_offset`, where the results
    /// are also written).
    pub async fn eval(
        &mut self,
        ts_ms: i64,
        querier: &dyn RuleQuerier,
        writer: &dyn SampleWriter,
        context: &TemplateContext,
    ) -> GroupEval {
        let started = Instant::now();
        let query_ts = ts_ms.saturating_sub(millis(self.query_offset));
        let mut outcome = GroupEval::default();
        for rule in &mut self.rules {
            let rule_started = Instant::now();
            outcome.evaluated_rules += 1;
            let result = eval_rule(rule, self.def.lang, self.def.limit, ts_ms, query_ts, querier, context).await;
            let written = match result {
                Ok(samples) => {
                    let series: HashSet<Labels> = samples.iter().map(|(labels, _)| labels.clone()).collect();
                    let mut to_write = samples;
                    for gone in rule.series_in_previous_eval.difference(&series) {
                        to_write.push((gone.clone(), stale_nan()));
                    }
                    rule.series_in_previous_eval = series;
                    let count = to_write.len();
                    match if to_write.is_empty() { Ok(()) } else { writer.write(query_ts, to_write).await } {
                        Ok(()) => Ok(count),
                        Err(error) => Err(format!("writing the rule's samples: {error}")),
                    }
                }
                Err(error) => Err(error),
            };
            match written {
                Ok(count) => {
                    outcome.samples_written += count;
                    rule.health = Health::Ok;
                    rule.last_error = None;
                }
                Err(error) => {
                    outcome.failed_rules += 1;
                    tracing::debug!(group = %self.def.name, rule = %rule.def.name(), %error, "rule evaluation failed");
                    rule.health = Health::Err;
                    rule.last_error = Some(error);
                }
            }
            rule.last_evaluation = Some(ts_ms);
            rule.evaluation_time = rule_started.elapsed();
        }
        self.last_evaluation = Some(ts_ms);
        self.evaluation_time = started.elapsed();
        outcome
    }

    /// The alerts due at Alertmanager after an evaluation at `ts_ms`.
    pub fn alerts_to_send(&mut self, ts_ms: i64, resend_delay: Duration) -> Vec<(String, SentAlert)> {
        let interval_ms = millis(self.interval);
        let mut due = Vec::new();
        for rule in &mut self.rules {
            let expr = rule.def.expr().to_string();
            if let Some(alerting) = rule.alerting_mut() {
                due.extend(
                    alerting
                        .alerts_to_send(ts_ms, millis(resend_delay), interval_ms)
                        .into_iter()
                        .map(|alert| (expr.clone(), alert)),
                );
            }
        }
        due
    }

    /// Series every rule wrote at its last evaluation: they get staleness markers when the
    /// group is removed.
    pub fn last_series(&self) -> Vec<Labels> {
        self.rules.iter().flat_map(|rule| rule.last_series().cloned()).collect()
    }

    /// Takes over the state of rules that did not change since `previous` (same name,
    /// expression, labels and annotations), as Prometheus does on reload.
    pub fn inherit(&mut self, previous: &Group) {
        let mut used = vec![false; previous.rules.len()];
        for rule in &mut self.rules {
            if let Some((index, old)) =
                previous.rules.iter().enumerate().find(|(index, old)| !used[*index] && old.def == rule.def)
            {
                used[index] = true;
                rule.inherit(old);
            }
        }
        self.last_evaluation = previous.last_evaluation;
        self.evaluation_time = previous.evaluation_time;
    }
}

async fn eval_rule(
    rule: &mut Rule,
    lang: Lang,
    limit: usize,
    ts_ms: i64,
    query_ts: i64,
    querier: &dyn RuleQuerier,
    context: &TemplateContext,
) -> Result<Vec<(Labels, f64)>, String> {
    let result = querier.instant(lang, rule.def.expr(), query_ts).await?;
    match (&rule.def, &mut rule.kind) {
        (RuleDef::Recording { record, labels, .. }, RuleKind::Recording) => {
            let mut out = Vec::with_capacity(result.len());
            let mut seen = HashSet::with_capacity(result.len());
            for (mut series, value) in result {
                series.insert(METRIC_NAME_LABEL.to_string(), record.clone());
                for (name, value) in labels {
                    if value.is_empty() {
                        series.remove(name);
                    } else {
                        series.insert(name.clone(), value.clone());
                    }
                }
                if !seen.insert(series.clone()) {
                    return Err("vector contains metrics with the same labelset after applying rule labels".into());
                }
                out.push((series, value));
            }
            if limit > 0 && out.len() > limit {
                return Err(format!("exceeded limit of {limit} with {} series", out.len()));
            }
            Ok(out)
        }
        (_, RuleKind::Alerting(alerting)) => {
            // `ActiveAt` and the `for` clock run on the evaluation time, not the query time.
            let samples = alerting.eval(ts_ms, result, limit, context)?;
            Ok(samples.into_iter().map(|sample| (sample.labels, sample.value)).collect())
        }
        (RuleDef::Alerting { .. }, RuleKind::Recording) => Err("internal: an alerting rule without state".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;

    use super::*;

    type Write = (i64, Vec<(Labels, f64)>);

    /// `up` is 0 for instance a until 30 s, then absent; records every write.
    struct Fake {
        writes: Mutex<Vec<Write>>,
    }

    #[async_trait::async_trait]
    impl RuleQuerier for Fake {
        async fn instant(&self, _: Lang, expr: &str, ts_ms: i64) -> Result<Vec<(Labels, f64)>, String> {
            match expr {
                "broken" => Err("bad".into()),
                _ if ts_ms <= 30_000 => {
                    Ok(vec![([("__name__", "up"), ("instance", "a")].map(|(k, v)| (k.into(), v.into())).into(), 0.0)])
                }
                _ => Ok(vec![]),
            }
        }
    }

    #[async_trait::async_trait]
    impl SampleWriter for Fake {
        async fn write(&self, ts_ms: i64, samples: Vec<(Labels, f64)>) -> Result<(), String> {
            self.writes.lock().map_err(|e| e.to_string())?.push((ts_ms, samples));
            Ok(())
        }
    }

    fn group() -> Group {
        let def = GroupDef {
            file: PathBuf::from("f.yml"),
            name: "g".into(),
            interval: None,
            query_offset: Some(Duration::from_secs(5)),
            limit: 0,
            lang: Lang::Promql,
            rules: vec![
                RuleDef::Recording { record: "instance:up".into(), expr: "up".into(), labels: Default::default() },
                RuleDef::Recording { record: "oops".into(), expr: "broken".into(), labels: Default::default() },
            ],
        };
        Group::new(def, Duration::from_secs(15), Duration::ZERO, true)
    }

    #[tokio::test]
    async fn outputs_are_written_at_the_query_time_and_marked_stale_when_gone() {
        let fake = Fake { writes: Mutex::new(vec![]) };
        let mut group = group();
        let outcome = group.eval(20_000, &fake, &fake, &TemplateContext::default()).await;
        assert_eq!((outcome.samples_written, outcome.failed_rules), (1, 1));
        assert_eq!(group.rules[0].health, Health::Ok);
        assert_eq!((group.rules[1].health, group.rules[1].last_error.as_deref()), (Health::Err, Some("bad")));
        group.eval(50_000, &fake, &fake, &TemplateContext::default()).await;
        let writes = fake.writes.lock().unwrap();
        assert_eq!(writes[0].0, 15_000, "the query offset applies to the written samples");
        assert_eq!(writes[0].1[0].0["__name__"], "instance:up");
        assert_eq!(writes[1].0, 45_000);
        assert!(wake_storage::prompb::is_stale_nan(writes[1].1[0].1), "the vanished series gets a staleness marker");
    }

    #[test]
    fn reloads_keep_the_state_of_unchanged_rules_only() {
        let mut old = group();
        old.rules[0].health = Health::Ok;
        old.rules[1].health = Health::Err;
        let mut new = group();
        new.rules[1].def =
            RuleDef::Recording { record: "oops".into(), expr: "changed".into(), labels: Default::default() };
        new.inherit(&old);
        assert_eq!((new.rules[0].health, new.rules[1].health), (Health::Ok, Health::Unknown));
    }
}
