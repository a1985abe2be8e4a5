//! The across-nodes sums of a catalog's aggregated triggers, and the signal
//! a sum raises when it starts or stops firing.
//!
//! A trigger with `aggregate: sum_across_nodes` never fires on one finding:
//! each agent's value feeds the sum, and the sum crossing its threshold (for
//! its `for` duration) is a condition of the runbook itself, opened and
//! cleared like any other.

use std::collections::{BTreeMap, HashMap};

use crate::finding::{ConditionKey, ConditionKind, Finding, Severity};
use crate::incident::Signal;
use crate::runbook::{AcrossNodesSum, FindingTrigger, SumStatus};
use crate::time::Timestamp;

use super::Catalog;

/// Which aggregated trigger: its runbook's id and its index among the
/// runbook's finding triggers.
pub type SumKey = (String, usize);

/// An aggregated trigger's sum, and whether it fired when last judged.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerSum {
    sum: AcrossNodesSum,
    firing: bool,
}

impl TriggerSum {
    /// The sum `trigger` asks for, not firing; `None` unless it sums across
    /// nodes with a threshold.
    pub fn for_trigger(trigger: &FindingTrigger) -> Option<TriggerSum> {
        AcrossNodesSum::for_trigger(trigger).map(|sum| TriggerSum { sum, firing: false })
    }

    /// Whether the sum fired when last judged.
    pub fn firing(&self) -> bool {
        self.firing
    }

    /// Feeds a finding from `source` as `trigger` reads it; returns where
    /// the sum stands when it started or stopped firing.
    pub fn observe_finding(&mut self, trigger: &FindingTrigger, source: &str, finding: &Finding) -> Option<SumStatus> {
        let status = self.sum.observe_finding(trigger, source, finding);
        self.judge(status)
    }

    /// Judges the sum at `now`, values whose findings expired left out;
    /// returns where it stands when it started or stopped firing.
    pub fn evaluate(&mut self, now: Timestamp) -> Option<SumStatus> {
        let status = self.sum.evaluate(now);
        self.judge(status)
    }

    fn judge(&mut self, status: SumStatus) -> Option<SumStatus> {
        if status.fires == self.firing {
            return None;
        }
        self.firing = status.fires;
        Some(status)
    }
}

/// A sum for every aggregated trigger of `catalog`, none firing.
pub fn trigger_sums(catalog: &Catalog) -> HashMap<SumKey, TriggerSum> {
    catalog
        .aggregated_triggers()
        .filter_map(|(id, i, t)| TriggerSum::for_trigger(t).map(|sum| ((id.to_owned(), i), sum)))
        .collect()
}

/// The signal, reported by `source`, of runbook `runbook_id`'s own
/// condition when the sum of `trigger` starts (`status.fires`) or stops
/// firing: a critical condition targeting `sum/<evidence>`.
pub fn sum_signal(runbook_id: &str, trigger: &FindingTrigger, status: SumStatus, source: &str) -> Signal {
    let evidence = trigger.evidence.clone().unwrap_or_default();
    let above = trigger.above.unwrap_or_default();
    let summary = if status.fires {
        format!("{} {evidence} summed over {} nodes is {} (> {above})", trigger.kind, status.sources, status.sum)
    } else {
        format!("{} {evidence} summed over {} nodes is back to {}", trigger.kind, status.sources, status.sum)
    };
    Signal {
        source: source.to_owned(),
        key: ConditionKey { kind: ConditionKind::Runbook(runbook_id.to_owned()), target: format!("sum/{evidence}") },
        severity: Severity::Critical,
        holds: status.fires,
        summary,
        expires_at: None,
        started_at: None,
        details: BTreeMap::from([
            ("sum".to_owned(), status.sum.to_string()),
            ("nodes".to_owned(), status.sources.to_string()),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::finding::{FindingKind, FindingState};
    use crate::runbook::{Aggregate, LabelMatcher, parse_runbook};

    fn at(s: i64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000 + s * 1000)
    }

    fn trigger() -> FindingTrigger {
        FindingTrigger {
            kind: FindingKind::HighErrorRate,
            matchers: vec![LabelMatcher::parse("app=api").unwrap_or_else(|e| panic!("{e}"))],
            evidence: Some("database".into()),
            above: Some(10.0),
            for_duration: Duration::ZERO,
            aggregate: Aggregate::SumAcrossNodes,
        }
    }

    fn errors(value: &str, s: i64) -> Finding {
        Finding {
            kind: FindingKind::HighErrorRate,
            severity: Severity::Warning,
            state: FindingState::Active,
            target: "pod/shop/api-1".into(),
            labels: BTreeMap::from([("app".to_owned(), "api".to_owned())]),
            evidence: BTreeMap::from([("database".to_owned(), value.to_owned())]),
            summary: String::new(),
            first_seen: at(s),
            last_seen: at(s),
            expires_at: Some(at(s + 60)),
        }
    }

    #[test]
    fn a_sum_says_so_once_when_it_starts_firing_and_once_when_it_stops() {
        let t = trigger();
        let mut sum = TriggerSum::for_trigger(&t).expect("an aggregated trigger");
        assert!(sum.observe_finding(&t, "node-a", &errors("6", 0)).is_none(), "6 is not above 10");
        let fired = sum.observe_finding(&t, "node-b", &errors("6", 1)).expect("12 is above 10");
        assert!(fired.fires && sum.firing());
        assert_eq!((fired.sum, fired.sources), (12.0, 2));
        assert!(sum.observe_finding(&t, "node-c", &errors("1", 2)).is_none(), "still firing: nothing new");
        assert!(sum.evaluate(at(30)).is_none());
        let stopped = sum.evaluate(at(60)).expect("node-a's value expired");
        assert!(!stopped.fires && !sum.firing());
        assert_eq!((stopped.sum, stopped.sources), (7.0, 2));
    }

    #[test]
    fn the_signal_of_a_sum_is_the_runbooks_own_condition() {
        let t = trigger();
        let status = SumStatus { sum: 12.0, sources: 3, above_since: Some(at(0)), fires: true };
        let signal = sum_signal("P1-002", &t, status, "coordinator");
        assert_eq!(
            signal.key,
            ConditionKey { kind: ConditionKind::Runbook("P1-002".into()), target: "sum/database".into() }
        );
        assert_eq!((signal.source.as_str(), signal.severity, signal.holds), ("coordinator", Severity::Critical, true));
        assert_eq!(signal.summary, "high_error_rate database summed over 3 nodes is 12 (> 10)");
        assert_eq!((signal.details["sum"].as_str(), signal.details["nodes"].as_str()), ("12", "3"));
        let back = sum_signal("P1-002", &t, SumStatus { sum: 4.5, sources: 1, above_since: None, fires: false }, "c");
        assert!(!back.holds);
        assert_eq!(back.summary, "high_error_rate database summed over 1 nodes is back to 4.5");
    }

    #[test]
    fn a_catalog_has_one_sum_per_aggregated_trigger() {
        let text = "apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {id: P1-002, title: t}\npriority: P1\n\
                    mttr_target: 5m\ntriggers:\n  findings:\n    - {kind: high_error_rate}\n    \
                    - {kind: high_error_rate, evidence: database, above: 10, aggregate: sum_across_nodes}\n\
                    steps: [{id: tell, notify: {webhook: oncall, message: hi}}]\nescalation: {policy: p}\n";
        let runbook = parse_runbook("t.yaml", text).unwrap_or_else(|e| panic!("{e}"));
        let sums = trigger_sums(&Catalog::new(vec![runbook]));
        assert_eq!(sums.keys().collect::<Vec<_>>(), vec![&("P1-002".to_owned(), 1)]);
        assert!(sums.values().all(|s| !s.firing()));
    }
}
