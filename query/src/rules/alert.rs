//! The state of one alerting rule across evaluations, with Prometheus' semantics
//! (`rules/alerting.go`): an alert is pending from the first evaluation that returns its label
//! set, firing once it was pending for the rule's `for`, kept firing for `keep_firing_for`
//! after its condition clears, and kept as resolved for 15 minutes so that Alertmanager hears
//! of the resolution even across failed sends.
//!
//! Nothing here does IO: [`AlertingRule::eval`] takes the expression's result and returns the
//! `ALERTS` and `ALERTS_FOR_STATE` samples; [`AlertingRule::alerts_to_send`] says which alerts
//! are due at Alertmanager.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::template::{self, TemplateData};
use crate::prom::naming::{Labels, METRIC_NAME_LABEL};

/// Resolved alerts are kept (and resent) this long (Prometheus' `resolvedRetention`).
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// The label that names an alert.
pub const ALERT_NAME_LABEL: &str = "alertname";
/// The label of `ALERTS` that holds the state.
pub const ALERT_STATE_LABEL: &str = "alertstate";
pub const ALERTS_METRIC: &str = "ALERTS";
pub const ALERTS_FOR_STATE_METRIC: &str = "ALERTS_FOR_STATE";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn name(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert instance of a rule. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub state: AlertState,
    /// The rule's labels applied, `alertname` included, `__name__` removed.
    pub labels: Labels,
    pub annotations: Labels,
    pub value: f64,
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub last_sent_at: Option<i64>,
    pub valid_until: i64,
    pub keep_firing_since: Option<i64>,
}

impl Alert {
    /// Prometheus' `needsSending`: firing or resolved alerts, when resolved since the last
    /// send or not sent for `resend_delay`.
    fn needs_sending(&self, ts: i64, resend_delay_ms: i64) -> bool {
        if self.state == AlertState::Pending {
            return false;
        }
        match (self.resolved_at, self.last_sent_at) {
            (_, None) => true,
            (Some(resolved), Some(sent)) if resolved > sent => true,
            (_, Some(sent)) => sent.saturating_add(resend_delay_ms) < ts,
        }
    }
}

/// A sample the rule writes: `ALERTS` or `ALERTS_FOR_STATE`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSample {
    pub labels: Labels,
    pub value: f64,
}

/// What an alert template sees besides the alert itself.
#[derive(Debug, Clone, Default)]
pub struct TemplateContext {
    pub external_labels: Labels,
    pub external_url: String,
}

/// One alerting rule and its alerts.
#[derive(Debug, Clone)]
pub struct AlertingRule {
    pub name: String,
    pub hold_ms: i64,
    pub keep_firing_for_ms: i64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// By labels (of the alert, as sent).
    active: HashMap<Labels, Alert>,
    /// Whether `ALERTS_FOR_STATE` was read back after a start (or needs not be): until then
    /// the rule writes no series, so that a restore cannot read its own fresh state.
    pub restored: bool,
}

impl AlertingRule {
    pub fn new(
        name: String,
        hold_ms: i64,
        keep_firing_for_ms: i64,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        restored: bool,
    ) -> Self {
        AlertingRule { name, hold_ms, keep_firing_for_ms, labels, annotations, active: HashMap::new(), restored }
    }

    /// Every alert, resolved ones included, ordered by labels.
    pub fn alerts(&self) -> Vec<&Alert> {
        let mut alerts: Vec<&Alert> = self.active.values().collect();
        alerts.sort_by(|a, b| a.labels.cmp(&b.labels));
        alerts
    }

    /// Pending and firing alerts.
    pub fn active_alerts(&self) -> impl Iterator<Item = &Alert> {
        self.active.values().filter(|a| a.state != AlertState::Inactive)
    }

    /// The rule's state as Prometheus' `/api/v1/rules` shows it: the most severe of its alerts.
    pub fn state(&self) -> AlertState {
        let mut state = AlertState::Inactive;
        for alert in self.active.values() {
            match alert.state {
                AlertState::Firing => return AlertState::Firing,
                AlertState::Pending => state = AlertState::Pending,
                AlertState::Inactive => {}
            }
        }
        state
    }

    /// Keeps the alerts of `previous` (a rule of the same name, expression and labels before a
    /// reload), as Prometheus does for unchanged rules.
    pub fn inherit(&mut self, previous: &AlertingRule) {
        self.active = previous.active.clone();
        self.restored = previous.restored;
    }

    /// Mutable access for the restore from `ALERTS_FOR_STATE`.
    pub fn active_mut(&mut self) -> impl Iterator<Item = &mut Alert> {
        self.active.values_mut()
    }

    /// One evaluation at `ts` (ms) given the expression's result. Returns the `ALERTS` and
    /// `ALERTS_FOR_STATE` samples to write at `ts`, or the error that fails the evaluation
    /// (duplicate label sets; the group's `limit`).
    pub fn eval(
        &mut self,
        ts: i64,
        result: Vec<(Labels, f64)>,
        limit: usize,
        context: &TemplateContext,
    ) -> Result<Vec<RuleSample>, String> {
        let template_name = format!("__alert_{}", self.name);
        let mut current: HashMap<Labels, Alert> = HashMap::with_capacity(result.len());
        for (sample_labels, value) in result {
            let mut template_labels = sample_labels.clone();
            template_labels.remove(METRIC_NAME_LABEL);
            // Prometheus expands with the sample's labels, `__name__` included.
            let data = TemplateData {
                labels: &sample_labels,
                external_labels: &context.external_labels,
                external_url: &context.external_url,
                value,
            };
            let mut labels = template_labels;
            for (name, text) in &self.labels {
                let expanded = template::expand_or_error_text(&template_name, text, &data);
                // An empty label value is an absent label.
                if expanded.is_empty() {
                    labels.remove(name);
                } else {
                    labels.insert(name.clone(), expanded);
                }
            }
            labels.insert(ALERT_NAME_LABEL.to_string(), self.name.clone());
            let annotations: Labels = self
                .annotations
                .iter()
                .map(|(name, text)| (name.clone(), template::expand_or_error_text(&template_name, text, &data)))
                .collect();
            if current.contains_key(&labels) {
                return Err("vector contains metrics with the same labelset after applying alert labels".into());
            }
            current.insert(
                labels.clone(),
                Alert {
                    state: AlertState::Pending,
                    labels,
                    annotations,
                    value,
                    active_at: ts,
                    fired_at: None,
                    resolved_at: None,
                    last_sent_at: None,
                    valid_until: 0,
                    keep_firing_since: None,
                },
            );
        }
        let returned: HashSet<Labels> = current.keys().cloned().collect();
        for (labels, alert) in current {
            match self.active.get_mut(&labels) {
                Some(existing) if existing.state != AlertState::Inactive => {
                    existing.value = alert.value;
                    existing.annotations = alert.annotations;
                }
                _ => {
                    self.active.insert(labels, alert);
                }
            }
        }

        let mut samples = Vec::new();
        let mut active_or_pending = 0usize;
        let mut remove = Vec::new();
        for (labels, alert) in self.active.iter_mut() {
            if returned.contains(labels) {
                alert.keep_firing_since = None;
            } else {
                let mut keep_firing = false;
                if alert.state == AlertState::Firing && self.keep_firing_for_ms > 0 {
                    let since = *alert.keep_firing_since.get_or_insert(ts);
                    keep_firing = ts.saturating_sub(since) < self.keep_firing_for_ms;
                }
                if alert.state == AlertState::Pending
                    || alert.resolved_at.is_some_and(|resolved| ts.saturating_sub(resolved) > RESOLVED_RETENTION_MS)
                {
                    remove.push(labels.clone());
                }
                if alert.state != AlertState::Inactive && !keep_firing {
                    alert.state = AlertState::Inactive;
                    alert.resolved_at = Some(ts);
                }
                if !keep_firing {
                    continue;
                }
            }
            active_or_pending += 1;
            if alert.state == AlertState::Pending && ts.saturating_sub(alert.active_at) >= self.hold_ms {
                alert.state = AlertState::Firing;
                alert.fired_at = Some(ts);
            }
            if self.restored {
                let mut series = alert.labels.clone();
                series.insert(METRIC_NAME_LABEL.to_string(), ALERTS_METRIC.to_string());
                series.insert(ALERT_STATE_LABEL.to_string(), alert.state.name().to_string());
                samples.push(RuleSample { labels: series, value: 1.0 });
                let mut series = alert.labels.clone();
                series.insert(METRIC_NAME_LABEL.to_string(), ALERTS_FOR_STATE_METRIC.to_string());
                // Whole seconds, as Prometheus writes it.
                samples.push(RuleSample { labels: series, value: alert.active_at.div_euclid(1000) as f64 });
            }
        }
        for labels in remove {
            self.active.remove(&labels);
        }
        if limit > 0 && active_or_pending > limit {
            self.active.clear();
            return Err(format!("exceeded limit of {limit} with {active_or_pending} alerts"));
        }
        Ok(samples)
    }

    /// The alerts due at Alertmanager at `ts`, marked as sent (Prometheus' `sendAlerts`):
    /// `ends_at` is the resolution time, or `ts` + 4 × max(interval, resend delay) for alerts
    /// still firing, so that Alertmanager resolves them itself if Wake stops sending.
    pub fn alerts_to_send(&mut self, ts: i64, resend_delay_ms: i64, interval_ms: i64) -> Vec<SentAlert> {
        let mut sent = Vec::new();
        for alert in self.active.values_mut() {
            if !alert.needs_sending(ts, resend_delay_ms) {
                continue;
            }
            alert.last_sent_at = Some(ts);
            alert.valid_until = ts.saturating_add(resend_delay_ms.max(interval_ms).saturating_mul(4));
            sent.push(SentAlert {
                labels: alert.labels.clone(),
                annotations: alert.annotations.clone(),
                starts_at: alert.fired_at.unwrap_or(alert.active_at),
                ends_at: alert.resolved_at.unwrap_or(alert.valid_until),
            });
        }
        sent.sort_by(|a, b| a.labels.cmp(&b.labels));
        sent
    }
}

/// An alert as handed to the notifier; times in ms.
#[derive(Debug, Clone, PartialEq)]
pub struct SentAlert {
    pub labels: Labels,
    pub annotations: Labels,
    pub starts_at: i64,
    pub ends_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn rule(hold_ms: i64, keep_ms: i64) -> AlertingRule {
        AlertingRule::new(
            "Down".into(),
            hold_ms,
            keep_ms,
            [("severity".to_string(), "page".to_string())].into(),
            [("summary".to_string(), "{{ $labels.instance }} is down ({{ $value }})".to_string())].into(),
            true,
        )
    }

    fn down(instance: &str) -> Vec<(Labels, f64)> {
        vec![(labels(&[("__name__", "up"), ("instance", instance)]), 0.0)]
    }

    fn states(rule: &AlertingRule) -> Vec<AlertState> {
        rule.alerts().iter().map(|a| a.state).collect()
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved() {
        let mut rule = rule(60_000, 0);
        let context = TemplateContext::default();
        let samples = rule.eval(0, down("a"), 0, &context).unwrap();
        assert_eq!(states(&rule), [AlertState::Pending]);
        let alert = rule.alerts()[0];
        assert_eq!(alert.labels, labels(&[("alertname", "Down"), ("instance", "a"), ("severity", "page")]));
        assert_eq!(alert.annotations["summary"], "a is down (0)");
        assert_eq!(samples[0].labels["alertstate"], "pending");
        assert!(rule.alerts_to_send(0, 60_000, 15_000).is_empty(), "pending alerts are not sent");

        rule.eval(30_000, down("a"), 0, &context).unwrap();
        assert_eq!(states(&rule), [AlertState::Pending]);
        rule.eval(60_000, down("a"), 0, &context).unwrap();
        assert_eq!(states(&rule), [AlertState::Firing], "firing exactly at `for`");
        let sent = rule.alerts_to_send(60_000, 60_000, 15_000);
        assert_eq!((sent[0].starts_at, sent[0].ends_at), (60_000, 60_000 + 240_000));

        rule.eval(75_000, vec![], 0, &context).unwrap();
        assert_eq!(states(&rule), [AlertState::Inactive]);
        let sent = rule.alerts_to_send(75_000, 60_000, 15_000);
        assert_eq!(sent[0].ends_at, 75_000, "a resolution is sent at once");
        // Kept for the resolved retention, then forgotten.
        rule.eval(75_000 + RESOLVED_RETENTION_MS, vec![], 0, &context).unwrap();
        assert_eq!(rule.alerts().len(), 1);
        rule.eval(75_000 + RESOLVED_RETENTION_MS + 1, vec![], 0, &context).unwrap();
        assert!(rule.alerts().is_empty());
    }

    #[test]
    fn a_pending_alert_that_clears_is_dropped_not_resolved() {
        let mut rule = rule(60_000, 0);
        rule.eval(0, down("a"), 0, &TemplateContext::default()).unwrap();
        rule.eval(15_000, vec![], 0, &TemplateContext::default()).unwrap();
        assert!(rule.alerts().is_empty());
    }

    #[test]
    fn keep_firing_for_holds_a_cleared_alert() {
        let mut rule = rule(0, 30_000);
        let context = TemplateContext::default();
        rule.eval(0, down("a"), 0, &context).unwrap();
        assert_eq!(states(&rule), [AlertState::Firing]);
        rule.eval(15_000, vec![], 0, &context).unwrap();
        assert_eq!(states(&rule), [AlertState::Firing]);
        rule.eval(30_000, vec![], 0, &context).unwrap();
        assert_eq!(states(&rule), [AlertState::Firing], "15 s of the 30 s since the condition cleared");
        rule.eval(45_000, vec![], 0, &context).unwrap();
        assert_eq!(states(&rule), [AlertState::Inactive]);
    }

    #[test]
    fn resends_follow_the_resend_delay() {
        let mut rule = rule(0, 0);
        let context = TemplateContext::default();
        rule.eval(0, down("a"), 0, &context).unwrap();
        assert_eq!(rule.alerts_to_send(0, 60_000, 15_000).len(), 1);
        for ts in [15_000, 30_000, 45_000, 60_000] {
            rule.eval(ts, down("a"), 0, &context).unwrap();
            assert!(rule.alerts_to_send(ts, 60_000, 15_000).is_empty(), "{ts}");
        }
        rule.eval(75_000, down("a"), 0, &context).unwrap();
        assert_eq!(rule.alerts_to_send(75_000, 60_000, 15_000).len(), 1);
    }

    #[test]
    fn duplicate_label_sets_and_the_limit_fail_the_evaluation() {
        let mut rule = rule(0, 0);
        let context = TemplateContext::default();
        let twins = vec![
            (labels(&[("__name__", "a"), ("instance", "x")]), 1.0),
            (labels(&[("__name__", "b"), ("instance", "x")]), 1.0),
        ];
        let error = rule.eval(0, twins, 0, &context).unwrap_err();
        assert!(error.contains("same labelset"), "{error}");
        let two = [down("a"), down("b")].concat();
        let error = rule.eval(0, two, 1, &context).unwrap_err();
        assert_eq!(error, "exceeded limit of 1 with 2 alerts");
        assert!(rule.alerts().is_empty());
    }

    #[test]
    fn an_unrestored_rule_writes_no_series() {
        let mut rule = rule(0, 0);
        rule.restored = false;
        assert!(rule.eval(0, down("a"), 0, &TemplateContext::default()).unwrap().is_empty());
        rule.restored = true;
        let samples = rule.eval(15_000, down("a"), 0, &TemplateContext::default()).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[1].labels["__name__"], "ALERTS_FOR_STATE");
        assert_eq!(samples[1].value, 0.0, "active since 0 s");
    }
}
