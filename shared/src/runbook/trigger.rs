//! What starts a runbook: Alertmanager alerts, agent findings, or a person.
//!
//! Label matchers follow Prometheus and Alertmanager (`name="value"`,
//! `name!="value"`, `name=~"regex"`, `name!~"regex"`), so rules read the same
//! as in an Alertmanager route. Regexes are anchored at both ends, as in
//! Prometheus: `app=~"api"` matches `api`, not `saas-idp-api`. A label that
//! is absent matches as the empty string, again as in Prometheus.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::duration;
use crate::finding::{Finding, FindingKind, FindingState};
use crate::time::Timestamp;

/// The ways a runbook can start. At least one must be given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    /// Alertmanager alerts that start the runbook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertTrigger>,
    /// Agent findings that start the runbook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<FindingTrigger>,
    /// Whether a person may start it (`remedyctl run`).
    #[serde(default)]
    pub manual: bool,
}

impl Triggers {
    /// Whether any trigger is given.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty() && self.findings.is_empty() && !self.manual
    }

    /// The first alert trigger that matches, if any.
    pub fn matching_alert(&self, alertname: &str, labels: &BTreeMap<String, String>) -> Option<&AlertTrigger> {
        self.alerts.iter().find(|t| t.matches(alertname, labels))
    }

    /// The finding triggers that select `finding` (kind and labels; the
    /// threshold and `for` are checked by [`FindingTrigger::fires`] or, when
    /// aggregated, by [`AcrossNodesSum`]).
    pub fn selecting_finding<'a>(&'a self, finding: &'a Finding) -> impl Iterator<Item = &'a FindingTrigger> + 'a {
        self.findings.iter().filter(move |t| t.selects(finding))
    }
}

/// An Alertmanager alert that starts the runbook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertTrigger {
    /// The alert's `alertname`.
    pub name: String,
    /// Further label matchers; all must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matchers: Vec<LabelMatcher>,
}

impl AlertTrigger {
    /// Whether an alert with this name and these labels starts the runbook.
    pub fn matches(&self, alertname: &str, labels: &BTreeMap<String, String>) -> bool {
        self.name == alertname && self.matchers.iter().all(|m| m.matches(labels))
    }
}

/// Pure form of [`AlertTrigger::matches`].
pub fn matches_alert(trigger: &AlertTrigger, alertname: &str, labels: &BTreeMap<String, String>) -> bool {
    trigger.matches(alertname, labels)
}

/// Pure form of [`FindingTrigger::fires`].
pub fn matches_finding(trigger: &FindingTrigger, finding: &Finding, now: Timestamp) -> bool {
    trigger.fires(finding, now)
}

/// How findings from several agents combine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// Each finding is judged alone.
    #[default]
    None,
    /// The evidence value is summed over every agent reporting it (P1-002:
    /// error counts per category, summed over all nodes).
    SumAcrossNodes,
}

/// An agent finding that starts the runbook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindingTrigger {
    /// The finding kind (closed catalogue: a typo fails the load).
    pub kind: FindingKind,
    /// Matchers on the finding's labels; all must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matchers: Vec<LabelMatcher>,
    /// The evidence key compared with `above`, for example `database`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// Fires when the evidence value (or the sum) is strictly above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// ...and has been for at least this long.
    #[serde(rename = "for", with = "duration", default = "zero")]
    pub for_duration: Duration,
    /// How findings from several agents combine.
    #[serde(default)]
    pub aggregate: Aggregate,
}

fn zero() -> Duration {
    Duration::ZERO
}

impl FindingTrigger {
    /// Whether the finding is one this trigger looks at: its kind and labels
    /// match. Says nothing about the threshold.
    pub fn selects(&self, finding: &Finding) -> bool {
        finding.kind == self.kind && self.matchers.iter().all(|m| m.matches(&finding.labels))
    }

    /// The finding's value for the threshold: its evidence entry, parsed.
    /// `None` when the trigger has no threshold or the entry is missing or
    /// not a number.
    pub fn value_of(&self, finding: &Finding) -> Option<f64> {
        let key = self.evidence.as_deref()?;
        finding.evidence.get(key)?.trim().parse::<f64>().ok().filter(|v| v.is_finite())
    }

    /// Whether one finding, judged alone, starts the runbook at `now`: it is
    /// selected, holds, exceeds the threshold (if any) and has held for the
    /// `for` duration since it was first seen. Aggregated triggers never fire
    /// on one finding: feed an [`AcrossNodesSum`] instead.
    pub fn fires(&self, finding: &Finding, now: Timestamp) -> bool {
        if self.aggregate != Aggregate::None || !self.selects(finding) || !finding.holds_at(now) {
            return false;
        }
        let over = match self.above {
            Some(limit) => self.value_of(finding).is_some_and(|v| v > limit),
            None => true,
        };
        over && now.since(finding.first_seen) >= self.for_duration
    }
}

// ---------------------------------------------------------------- matchers

/// A label matcher operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~` (anchored regex)
    Regex,
    /// `!~` (anchored regex, negated)
    NotRegex,
}

impl MatchOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One label matcher, written `name="value"` (quotes optional).
#[derive(Debug, Clone)]
pub struct LabelMatcher {
    name: String,
    op: MatchOp,
    value: String,
    regex: Option<Regex>,
}

/// Why a matcher could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label matcher `{text}`: {message}")]
pub struct MatcherError {
    /// The matcher as written.
    pub text: String,
    /// What is wrong.
    pub message: String,
}

impl LabelMatcher {
    /// Parses `name op value`, for example `app=~"saas-idp-.*"`.
    pub fn parse(text: &str) -> Result<LabelMatcher, MatcherError> {
        let err = |message: &str| MatcherError { text: text.to_owned(), message: message.to_owned() };
        let trimmed = text.trim();
        let op_at = trimmed.find(['=', '!']).ok_or_else(|| err("expected one of =, !=, =~, !~"))?;
        let name = trimmed[..op_at].trim();
        let rest = &trimmed[op_at..];
        let (op, raw) = if let Some(r) = rest.strip_prefix("=~") {
            (MatchOp::Regex, r)
        } else if let Some(r) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, r)
        } else if let Some(r) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, r)
        } else if let Some(r) = rest.strip_prefix('=') {
            (MatchOp::Equal, r)
        } else {
            return Err(err("expected one of =, !=, =~, !~"));
        };
        let valid_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(err("the label name must match [a-zA-Z_][a-zA-Z0-9_]*"));
        }
        let raw = raw.trim();
        let value = match raw.strip_prefix('"') {
            Some(inner) => inner.strip_suffix('"').ok_or_else(|| err("unterminated quote"))?.replace("\\\"", "\""),
            None => raw.to_owned(),
        };
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| err(&format!("invalid regex: {}", regex_reason(&e))))?,
            ),
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(LabelMatcher { name: name.to_owned(), op, value, regex })
    }

    /// The label name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operator.
    pub fn op(&self) -> MatchOp {
        self.op
    }

    /// The value or regex, as written (unquoted).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether the labels satisfy this matcher (an absent label is "").
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let actual = labels.get(&self.name).map_or("", String::as_str);
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => actual == self.value,
            (MatchOp::NotEqual, _) => actual != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(actual),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(actual),
            // Unreachable by construction; refusing is the safe answer.
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }
}

/// The regex crate's message without its multi-line pointer drawing (the
/// pattern is quoted in the error already).
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or(&text).trim();
    last.strip_prefix("error: ").unwrap_or(last).to_owned()
}

impl PartialEq for LabelMatcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl fmt::Display for LabelMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}\"{}\"", self.name, self.op.as_str(), self.value.replace('"', "\\\""))
    }
}

impl<'de> Deserialize<'de> for LabelMatcher {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        LabelMatcher::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for LabelMatcher {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

// ---------------------------------------------------------------- aggregation

/// One source's latest value.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SourceValue {
    value: f64,
    expires_at: Option<Timestamp>,
}

/// The sum of one evidence value over every agent reporting it, with a
/// threshold that must hold for a `for` duration (P1-002: database errors
/// summed over all nodes above 10).
///
/// Feed it each source's latest value as findings arrive ([`observe`]), the
/// end of a source's condition ([`clear`]), and call [`evaluate`] on every
/// tick so that values whose findings expired leave the sum. The `for`
/// clock starts at the first observation or evaluation that sees the sum
/// above the threshold and restarts whenever one sees it at or below.
///
/// [`observe`]: AcrossNodesSum::observe
/// [`clear`]: AcrossNodesSum::clear
/// [`evaluate`]: AcrossNodesSum::evaluate
#[derive(Debug, Clone, PartialEq)]
pub struct AcrossNodesSum {
    above: f64,
    for_duration: Duration,
    sources: BTreeMap<String, SourceValue>,
    above_since: Option<Timestamp>,
    last_update: Timestamp,
}

/// Where an [`AcrossNodesSum`] stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SumStatus {
    /// The current sum over sources whose values have not expired.
    pub sum: f64,
    /// How many sources contribute.
    pub sources: usize,
    /// Since when the sum has been above the threshold, if it is.
    pub above_since: Option<Timestamp>,
    /// Whether the sum has been above the threshold for the `for` duration.
    pub fires: bool,
}

impl AcrossNodesSum {
    /// A sum that fires when above `above` for `for_duration`.
    pub fn new(above: f64, for_duration: Duration) -> Self {
        AcrossNodesSum {
            above,
            for_duration,
            sources: BTreeMap::new(),
            above_since: None,
            last_update: Timestamp::EPOCH,
        }
    }

    /// The aggregator a trigger asks for; `None` unless it says
    /// `aggregate: sum_across_nodes` with a threshold.
    pub fn for_trigger(trigger: &FindingTrigger) -> Option<Self> {
        match (trigger.aggregate, trigger.above, &trigger.evidence) {
            (Aggregate::SumAcrossNodes, Some(above), Some(_)) => Some(Self::new(above, trigger.for_duration)),
            _ => None,
        }
    }

    /// Records `source`'s latest value, observed at `at`, valid until
    /// `expires_at` (`None`: until replaced or cleared).
    pub fn observe(&mut self, source: &str, value: f64, at: Timestamp, expires_at: Option<Timestamp>) -> SumStatus {
        if value.is_finite() {
            self.sources.insert(source.to_owned(), SourceValue { value, expires_at });
        } else {
            self.sources.remove(source);
        }
        self.evaluate(at)
    }

    /// Records that `source`'s condition ended at `at`.
    pub fn clear(&mut self, source: &str, at: Timestamp) -> SumStatus {
        self.sources.remove(source);
        self.evaluate(at)
    }

    /// Feeds one finding from `source` as `trigger` reads it: a selected,
    /// active finding with a numeric value is observed; a cleared one, or one
    /// that no longer carries a value, removes the source. Findings the
    /// trigger does not select change nothing.
    pub fn observe_finding(&mut self, trigger: &FindingTrigger, source: &str, finding: &Finding) -> SumStatus {
        if !trigger.selects(finding) {
            return self.status(finding.last_seen);
        }
        match (finding.state, trigger.value_of(finding)) {
            (FindingState::Active, Some(v)) => self.observe(source, v, finding.last_seen, finding.expires_at),
            _ => self.clear(source, finding.last_seen),
        }
    }

    /// Drops expired values and re-judges the sum at `now`.
    pub fn evaluate(&mut self, now: Timestamp) -> SumStatus {
        // Time never runs backwards here: a late observation counts as now.
        let now = now.max(self.last_update);
        self.last_update = now;
        self.sources.retain(|_, v| v.expires_at.is_none_or(|at| now < at));
        if self.sum() > self.above {
            self.above_since.get_or_insert(now);
        } else {
            self.above_since = None;
        }
        self.status(now)
    }

    fn sum(&self) -> f64 {
        self.sources.values().map(|v| v.value).sum()
    }

    fn status(&self, now: Timestamp) -> SumStatus {
        let now = now.max(self.last_update);
        SumStatus {
            sum: self.sum(),
            sources: self.sources.len(),
            above_since: self.above_since,
            fires: self.above_since.is_some_and(|since| now.since(since) >= self.for_duration),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Severity;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn matcher(text: &str) -> LabelMatcher {
        LabelMatcher::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_millis(secs * 1000)
    }

    fn error_finding(database: &str, first: i64, last: i64) -> Finding {
        Finding {
            kind: FindingKind::HighErrorRate,
            severity: Severity::Warning,
            state: FindingState::Active,
            target: "pod/saas-idp-production/saas-idp-api-1".into(),
            labels: labels(&[("app", "saas-idp-api"), ("namespace", "saas-idp-production")]),
            evidence: labels(&[("database", database)]),
            summary: String::new(),
            first_seen: at(first),
            last_seen: at(last),
            expires_at: None,
        }
    }

    fn database_trigger(aggregate: Aggregate) -> FindingTrigger {
        FindingTrigger {
            kind: FindingKind::HighErrorRate,
            matchers: vec![matcher(r#"app="saas-idp-api""#)],
            evidence: Some("database".into()),
            above: Some(10.0),
            for_duration: Duration::from_secs(60),
            aggregate,
        }
    }

    #[test]
    fn matchers_follow_prometheus_semantics() {
        let l = labels(&[("app", "saas-idp-api"), ("env", "prod")]);
        assert!(matcher(r#"app="saas-idp-api""#).matches(&l));
        assert!(matcher("app = saas-idp-api").matches(&l));
        assert!(!matcher(r#"app!="saas-idp-api""#).matches(&l));
        assert!(matcher(r#"app=~"saas-idp-.*""#).matches(&l));
        // Anchored: a partial match is no match.
        assert!(!matcher(r#"app=~"idp""#).matches(&l));
        assert!(matcher(r#"app!~"idp""#).matches(&l));
        assert!(matcher(r#"app=~"saas-idp-(api|worker)""#).matches(&l));
        // An absent label is the empty string.
        assert!(matcher(r#"team="""#).matches(&l));
        assert!(!matcher(r#"team!="""#).matches(&l));
        assert!(matcher(r#"team=~".*""#).matches(&l));
    }

    #[test]
    fn bad_matchers_are_refused_with_a_reason() {
        for (text, reason) in [
            ("app", "expected one of"),
            ("=x", "label name"),
            ("1app=x", "label name"),
            (r#"app="x"#, "unterminated"),
            (r#"app=~"(""#, "invalid regex"),
        ] {
            let err = LabelMatcher::parse(text).err().unwrap_or_else(|| panic!("{text} parsed"));
            assert!(err.to_string().contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn matchers_round_trip_through_their_text() {
        let m = matcher(r#"app=~"saas-idp-.*""#);
        assert_eq!(m.to_string(), r#"app=~"saas-idp-.*""#);
        assert_eq!(LabelMatcher::parse(&m.to_string()).ok(), Some(m));
    }

    #[test]
    fn an_alert_trigger_needs_the_name_and_every_matcher() {
        let t = AlertTrigger { name: "P0_SystemDown".into(), matchers: vec![matcher("namespace=saas-idp-production")] };
        let l = labels(&[("namespace", "saas-idp-production")]);
        assert!(matches_alert(&t, "P0_SystemDown", &l));
        assert!(!matches_alert(&t, "P0_DatabaseDown", &l));
        assert!(!matches_alert(&t, "P0_SystemDown", &labels(&[("namespace", "staging")])));
        let triggers = Triggers { alerts: vec![t], ..Triggers::default() };
        assert!(triggers.matching_alert("P0_SystemDown", &l).is_some());
    }

    #[test]
    fn a_finding_trigger_checks_kind_labels_threshold_and_for() {
        let t = database_trigger(Aggregate::None);
        assert!(!matches_finding(&t, &error_finding("12", 0, 30), at(30)), "not for long enough");
        assert!(matches_finding(&t, &error_finding("12", 0, 60), at(60)));
        assert!(!matches_finding(&t, &error_finding("10", 0, 60), at(60)), "10 is not above 10");
        assert!(!matches_finding(&t, &error_finding("lots", 0, 60), at(60)), "not a number");
        let mut other_app = error_finding("12", 0, 60);
        other_app.labels.insert("app".into(), "auth-service".into());
        assert!(!matches_finding(&t, &other_app, at(60)));
        let mut cleared = error_finding("12", 0, 60);
        cleared.state = FindingState::Cleared;
        assert!(!matches_finding(&t, &cleared, at(60)));
        // An aggregated trigger never fires on one finding.
        assert!(!matches_finding(&database_trigger(Aggregate::SumAcrossNodes), &error_finding("99", 0, 60), at(60)));
    }

    #[test]
    fn the_sum_across_nodes_fires_only_after_holding_for_its_duration() {
        let t = database_trigger(Aggregate::SumAcrossNodes);
        let mut sum = AcrossNodesSum::for_trigger(&t).unwrap_or_else(|| panic!("aggregated trigger"));
        // Three nodes, none above 10 alone, 12 together.
        assert!(!sum.observe_finding(&t, "node-a", &error_finding("4", 0, 0)).fires);
        assert!(!sum.observe_finding(&t, "node-b", &error_finding("4", 0, 1)).fires);
        let s = sum.observe_finding(&t, "node-c", &error_finding("4", 0, 2));
        assert_eq!((s.sum, s.sources, s.above_since), (12.0, 3, Some(at(2))));
        assert!(!sum.evaluate(at(61)).fires);
        assert!(sum.evaluate(at(62)).fires);
        // One node's errors fall: the sum drops to 10, the clock resets.
        let s = sum.observe_finding(&t, "node-a", &error_finding("2", 0, 70));
        assert_eq!((s.sum, s.fires, s.above_since), (10.0, false, None));
        // A node reports again: the clock restarts from now.
        assert!(!sum.observe_finding(&t, "node-a", &error_finding("5", 0, 80)).fires);
        assert!(sum.evaluate(at(140)).fires);
        // A cleared finding removes its source.
        let mut cleared = error_finding("5", 0, 150);
        cleared.state = FindingState::Cleared;
        assert_eq!(sum.observe_finding(&t, "node-a", &cleared).sum, 8.0);
    }

    #[test]
    fn expired_values_leave_the_sum_and_late_observations_do_not_rewind_time() {
        let mut sum = AcrossNodesSum::new(10.0, Duration::ZERO);
        sum.observe("a", 8.0, at(0), Some(at(30)));
        assert!(sum.observe("b", 8.0, at(1), None).fires);
        let s = sum.evaluate(at(30));
        assert_eq!((s.sum, s.fires), (8.0, false));
        // An observation stamped in the past is taken as now.
        let s = sum.observe("a", 8.0, at(5), Some(at(31)));
        assert_eq!(s.above_since, Some(at(30)));
        assert!(s.fires);
        // Non-finite values are never summed.
        assert_eq!(sum.observe("c", f64::NAN, at(30), None).sum, 16.0);
    }

    #[test]
    fn only_sum_across_nodes_with_a_threshold_makes_an_aggregator() {
        assert!(AcrossNodesSum::for_trigger(&database_trigger(Aggregate::None)).is_none());
        let mut t = database_trigger(Aggregate::SumAcrossNodes);
        t.above = None;
        assert!(AcrossNodesSum::for_trigger(&t).is_none());
    }
}
