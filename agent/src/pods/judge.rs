//! The per-pod judgement: which findings a pod's status calls for.
//!
//! Pure: callers pass the pod's latest [`PodView`] and `now`; nothing here
//! reads a clock or the network. A finding is sent when it is raised, when
//! what it is about changes (another container, a new OOM termination),
//! when its refresh is due, and when it clears; a watch event that changes
//! nothing it reports sends nothing.
//!
//! - `pod_crash_loop`: a container waiting in `CrashLoopBackOff`, or a
//!   restart storm (its restart count rose by `restarts` or more within
//!   `window`, as this agent saw it). It clears `clear_after` after the last
//!   instant either held, so a loop's short runs between back-offs do not
//!   make it flap.
//! - `pod_oom_killed`: a container whose last termination was `OOMKilled`,
//!   once per termination (keyed by the container's restart count). It
//!   clears when the container's last termination is no longer an OOM kill,
//!   or `clear_after` after the kill; a kill older than that when first
//!   seen (an agent restart) is not reported.
//! - `pod_failed`: phase `Failed`, until the phase changes or the pod goes.
//!
//! A deleted pod clears whatever it had raised.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use remedy_shared::Timestamp;
use remedy_shared::config::format_duration;
use remedy_shared::finding::{Finding, FindingKind, FindingState, Severity};

use super::config::PodRules;
use super::view::{ContainerView, PodView};

/// The kinds this module raises, in the order they are judged.
const KINDS: [FindingKind; 3] = [FindingKind::PodCrashLoop, FindingKind::PodOomKilled, FindingKind::PodFailed];
const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
const OOM_KILLED: &str = "OOMKilled";

/// A pod's key: namespace and name.
pub type PodKey = (String, String);

/// Every pod of the node and what was raised about it.
#[derive(Debug)]
pub struct Judge {
    rules: PodRules,
    pods: HashMap<PodKey, PodRecord>,
}

#[derive(Debug)]
struct PodRecord {
    view: PodView,
    containers: HashMap<String, Memory>,
    /// The last instant a crash loop or storm was seen to hold.
    crash_seen: Option<Timestamp>,
    /// Whether it held at the last evaluation.
    crashing: bool,
    raised: BTreeMap<FindingKind, Raised>,
}

/// What the judgement remembers of one container between events.
#[derive(Debug, Default)]
struct Memory {
    restart_count: u32,
    /// Rises of the restart count: when seen, by how much.
    rises: VecDeque<(Timestamp, u32)>,
    /// The latest OOM termination: the restart count that keys it, and when
    /// it happened.
    oom: Option<(u32, Timestamp)>,
}

#[derive(Debug)]
struct Raised {
    /// What the finding is about; a change is sent at once.
    signature: String,
    finding: Finding,
    sent_at: Timestamp,
}

/// What one kind calls for now.
enum Want {
    /// The condition holds, as described.
    Hold(Desired),
    /// Within the clear-after grace of a condition that held: keep what was
    /// raised (refreshing it), raise nothing new.
    Keep,
    /// The condition does not hold.
    Clear,
}

struct Desired {
    signature: String,
    severity: Severity,
    container: Option<String>,
    evidence: BTreeMap<String, String>,
    summary: String,
}

impl Judge {
    /// A judge applying `rules`.
    pub fn new(rules: PodRules) -> Judge {
        Judge { rules, pods: HashMap::new() }
    }

    /// Pods known.
    pub fn watched(&self) -> usize {
        self.pods.len()
    }

    /// Findings raised and not cleared, by target and kind.
    pub fn active(&self) -> Vec<Finding> {
        let mut out: Vec<Finding> =
            self.pods.values().flat_map(|p| p.raised.values().map(|r| r.finding.clone())).collect();
        out.sort_by(|a, b| (&a.target, a.kind).cmp(&(&b.target, b.kind)));
        out
    }

    /// How many findings are raised.
    pub fn active_count(&self) -> usize {
        self.pods.values().map(|p| p.raised.len()).sum()
    }

    /// Pods in phase Failed.
    pub fn failed_pods(&self) -> impl Iterator<Item = &PodView> {
        self.pods.values().map(|p| &p.view).filter(|v| v.failed())
    }

    /// Every pod key known.
    pub fn keys(&self) -> HashSet<PodKey> {
        self.pods.keys().cloned().collect()
    }

    /// A pod was added or changed.
    pub fn observe(&mut self, view: PodView, now: Timestamp) -> Vec<Finding> {
        let key = (view.namespace.clone(), view.name.clone());
        let record = self.pods.entry(key).or_insert_with(|| PodRecord {
            view: PodView::default(),
            containers: HashMap::new(),
            crash_seen: None,
            crashing: false,
            raised: BTreeMap::new(),
        });
        if record.view.uid != view.uid {
            // Another pod under the same name: nothing it did carries over.
            record.containers.clear();
            record.crash_seen = None;
            record.crashing = false;
        }
        record.remember(&view.containers, now);
        record.view = view;
        record.evaluate(&self.rules, now)
    }

    /// A pod was deleted: whatever it raised clears.
    pub fn forget(&mut self, namespace: &str, name: &str, now: Timestamp) -> Vec<Finding> {
        match self.pods.remove(&(namespace.to_owned(), name.to_owned())) {
            Some(record) => record.raised.into_values().map(|r| cleared(r.finding, "deleted", now)).collect(),
            None => Vec::new(),
        }
    }

    /// After a full relist: pods not in `present` were deleted meanwhile.
    pub fn keep_only(&mut self, present: &HashSet<PodKey>, now: Timestamp) -> Vec<Finding> {
        let gone: Vec<PodKey> = self.pods.keys().filter(|k| !present.contains(*k)).cloned().collect();
        gone.into_iter().flat_map(|(ns, name)| self.forget(&ns, &name, now)).collect()
    }

    /// Time passed: storms age out, grace periods end, refreshes fall due.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Finding> {
        let rules = self.rules;
        self.pods
            .values_mut()
            .filter(|p| !p.raised.is_empty() || p.containers.values().any(|m| !m.rises.is_empty()))
            .flat_map(|p| p.evaluate(&rules, now))
            .collect()
    }
}

impl PodRecord {
    /// Notes restart-count rises and forgets containers that are gone.
    fn remember(&mut self, containers: &[ContainerView], now: Timestamp) {
        self.containers.retain(|name, _| containers.iter().any(|c| &c.name == name));
        for c in containers {
            match self.containers.get_mut(&c.name) {
                None => {
                    // First sight: the count so far is a baseline, not a rise.
                    let memory = Memory { restart_count: c.restart_count, ..Memory::default() };
                    self.containers.insert(c.name.clone(), memory);
                }
                Some(m) if c.restart_count > m.restart_count => {
                    m.rises.push_back((now, c.restart_count - m.restart_count));
                    m.restart_count = c.restart_count;
                }
                Some(m) if c.restart_count < m.restart_count => {
                    *m = Memory { restart_count: c.restart_count, oom: m.oom, ..Memory::default() };
                }
                Some(_) => {}
            }
        }
    }

    fn evaluate(&mut self, rules: &PodRules, now: Timestamp) -> Vec<Finding> {
        let mut out = Vec::new();
        for kind in KINDS {
            let want = match kind {
                FindingKind::PodCrashLoop => self.crash_loop(rules, now),
                FindingKind::PodOomKilled => self.oom_killed(rules, now),
                _ => self.failed(rules),
            };
            out.extend(self.settle(kind, want, rules.refresh, now));
        }
        out
    }

    fn crash_loop(&mut self, rules: &PodRules, now: Timestamp) -> Want {
        let Some(rule) = rules.crash_loop else { return Want::Clear };
        let mut looping = None;
        let mut storm = None;
        for c in &self.view.containers {
            let in_window = match self.containers.get_mut(&c.name) {
                Some(m) => {
                    while m.rises.front().is_some_and(|(at, _)| now.since(*at) >= rule.window) {
                        m.rises.pop_front();
                    }
                    m.rises.iter().map(|(_, n)| *n).sum::<u32>()
                }
                None => 0,
            };
            if looping.is_none() && c.waiting_reason.as_deref() == Some(CRASH_LOOP_BACK_OFF) {
                looping = Some((c, in_window));
            }
            if storm.is_none() && in_window >= rule.restarts {
                storm = Some((c, in_window));
            }
        }
        let Some(((c, in_window), trigger)) =
            looping.map(|l| (l, "crash_loop_back_off")).or(storm.map(|s| (s, "restart_storm")))
        else {
            if self.crashing {
                // It held until this very evaluation: the grace starts now.
                self.crashing = false;
                self.crash_seen = Some(now);
            }
            let grace = self.crash_seen.is_some_and(|at| now.since(at) < rule.clear_after);
            return if grace && self.raised.contains_key(&FindingKind::PodCrashLoop) {
                Want::Keep
            } else {
                Want::Clear
            };
        };
        self.crash_seen = Some(now);
        self.crashing = true;
        let window = format_duration(rule.window);
        let mut evidence = BTreeMap::from([
            ("trigger".to_owned(), trigger.to_owned()),
            ("restart_count".to_owned(), c.restart_count.to_string()),
            ("restarts_in_window".to_owned(), in_window.to_string()),
            ("window".to_owned(), window.clone()),
            ("restarts_threshold".to_owned(), rule.restarts.to_string()),
        ]);
        if let Some(reason) = &c.waiting_reason {
            evidence.insert("reason".to_owned(), reason.clone());
        }
        if let Some(t) = &c.last_termination {
            evidence.insert("exit_code".to_owned(), t.exit_code.to_string());
            if let Some(reason) = &t.reason {
                evidence.insert("last_termination_reason".to_owned(), reason.clone());
            }
        }
        if let Some(message) =
            c.waiting_message.as_ref().or(c.last_termination.as_ref().and_then(|t| t.message.as_ref()))
        {
            evidence.insert("message".to_owned(), message.clone());
        }
        let pod = self.view.full_name();
        let summary = if trigger == "crash_loop_back_off" {
            format!("container {} of pod {pod} is in CrashLoopBackOff ({} restarts)", c.name, c.restart_count)
        } else {
            format!("container {} of pod {pod} restarted {in_window} times within {window}", c.name)
        };
        Want::Hold(Desired {
            signature: format!("{}:{trigger}", c.name),
            severity: rule.severity,
            container: Some(c.name.clone()),
            evidence,
            summary,
        })
    }

    fn oom_killed(&mut self, rules: &PodRules, now: Timestamp) -> Want {
        let Some(rule) = rules.oom_killed else { return Want::Clear };
        let mut latest: Option<(&ContainerView, u32, Timestamp)> = None;
        for c in &self.view.containers {
            let Some(t) = c.last_termination.as_ref().filter(|t| t.reason.as_deref() == Some(OOM_KILLED)) else {
                continue;
            };
            let Some(m) = self.containers.get_mut(&c.name) else { continue };
            if m.oom.map(|(key, _)| key) != Some(c.restart_count) {
                // A termination not seen before.
                m.oom = Some((c.restart_count, t.finished_at.unwrap_or(now).min(now)));
            }
            let Some((key, at)) = m.oom else { continue };
            if now.since(at) < rule.clear_after && latest.is_none_or(|(_, _, l)| at > l) {
                latest = Some((c, key, at));
            }
        }
        let Some((c, key, at)) = latest else { return Want::Clear };
        let mut evidence = BTreeMap::from([
            ("reason".to_owned(), OOM_KILLED.to_owned()),
            ("restart_count".to_owned(), key.to_string()),
            ("terminated_at".to_owned(), at.to_string()),
        ]);
        if let Some(t) = &c.last_termination {
            evidence.insert("exit_code".to_owned(), t.exit_code.to_string());
            if let Some(message) = &t.message {
                evidence.insert("message".to_owned(), message.clone());
            }
        }
        Want::Hold(Desired {
            signature: format!("{}:{key}", c.name),
            severity: rule.severity,
            container: Some(c.name.clone()),
            evidence,
            summary: format!("container {} of pod {} was OOMKilled (restart {key})", c.name, self.view.full_name()),
        })
    }

    fn failed(&self, rules: &PodRules) -> Want {
        let Some(rule) = rules.failed else { return Want::Clear };
        if !self.view.failed() {
            return Want::Clear;
        }
        let mut evidence = BTreeMap::from([("phase".to_owned(), self.view.phase.clone())]);
        if let Some(reason) = &self.view.reason {
            evidence.insert("reason".to_owned(), reason.clone());
        }
        if let Some(message) = &self.view.message {
            evidence.insert("message".to_owned(), message.clone());
        }
        let exited = self
            .view
            .containers
            .iter()
            .find_map(|c| c.terminated.as_ref().filter(|t| t.exit_code != 0).map(|t| (c, t)));
        if let Some((_, t)) = exited {
            evidence.insert("exit_code".to_owned(), t.exit_code.to_string());
            if let Some(reason) = &t.reason {
                evidence.insert("termination_reason".to_owned(), reason.clone());
            }
        }
        let why = self.view.reason.as_deref().or(exited.and_then(|(_, t)| t.reason.as_deref()));
        let summary = match why {
            Some(why) => format!("pod {} failed: {why}", self.view.full_name()),
            None => format!("pod {} failed", self.view.full_name()),
        };
        Want::Hold(Desired {
            signature: "failed".to_owned(),
            severity: rule.severity,
            container: exited.map(|(c, _)| c.name.clone()),
            evidence,
            summary,
        })
    }

    /// Compares what `kind` calls for with what was raised; returns what to send.
    fn settle(&mut self, kind: FindingKind, want: Want, refresh: Duration, now: Timestamp) -> Option<Finding> {
        let expires = now.plus(refresh * 3);
        match want {
            Want::Hold(d) => {
                let mut labels = BTreeMap::from([
                    ("namespace".to_owned(), self.view.namespace.clone()),
                    ("pod".to_owned(), self.view.name.clone()),
                    ("node".to_owned(), self.view.node.clone()),
                ]);
                if let Some(app) = &self.view.app {
                    labels.insert("app".to_owned(), app.clone());
                }
                if let Some(container) = d.container {
                    labels.insert("container".to_owned(), container);
                }
                let previous = self.raised.get(&kind);
                let first_seen = previous.map_or(now, |r| r.finding.first_seen);
                let finding = Finding {
                    kind,
                    severity: d.severity,
                    state: FindingState::Active,
                    target: self.view.target(),
                    labels,
                    evidence: d.evidence,
                    summary: d.summary,
                    first_seen,
                    last_seen: now,
                    expires_at: Some(expires),
                };
                let send = match previous {
                    None => true,
                    Some(r) => r.signature != d.signature || now.since(r.sent_at) >= refresh,
                };
                let sent_at = if send { now } else { previous.map_or(now, |r| r.sent_at) };
                self.raised.insert(kind, Raised { signature: d.signature, finding: finding.clone(), sent_at });
                send.then_some(finding)
            }
            Want::Keep => {
                let r = self.raised.get_mut(&kind)?;
                if now.since(r.sent_at) < refresh {
                    return None;
                }
                r.finding.last_seen = now;
                r.finding.expires_at = Some(expires);
                r.sent_at = now;
                Some(r.finding.clone())
            }
            Want::Clear => self.raised.remove(&kind).map(|r| cleared(r.finding, "recovered", now)),
        }
    }
}

/// The cleared counterpart of an active finding.
fn cleared(mut finding: Finding, why: &str, now: Timestamp) -> Finding {
    finding.state = FindingState::Cleared;
    finding.last_seen = now.max(finding.first_seen);
    finding.expires_at = None;
    finding.evidence.insert("cleared".to_owned(), why.to_owned());
    let target = finding.target.strip_prefix("pod/").unwrap_or(&finding.target).to_owned();
    finding.summary = match why {
        "deleted" => format!("{} on pod {target} ended: the pod was deleted", finding.kind),
        _ => format!("{} on pod {target} ended", finding.kind),
    };
    finding
}

#[cfg(test)]
mod tests {
    use super::super::view::Termination;
    use super::*;
    use crate::pods::config::{CrashLoopRule, FailedRule, OomKilledRule};

    const MIN: i64 = 60_000;

    fn rules() -> PodRules {
        PodRules {
            crash_loop: Some(CrashLoopRule {
                restarts: 5,
                window: Duration::from_secs(600),
                clear_after: Duration::from_secs(300),
                severity: Severity::Warning,
            }),
            oom_killed: Some(OomKilledRule { clear_after: Duration::from_secs(600), severity: Severity::Critical }),
            failed: Some(FailedRule { severity: Severity::Warning }),
            refresh: Duration::from_secs(60),
        }
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000 + ms)
    }

    fn pod(containers: Vec<ContainerView>) -> PodView {
        PodView {
            namespace: "shop".into(),
            name: "api-1".into(),
            uid: "u1".into(),
            node: "node-a".into(),
            app: Some("api".into()),
            phase: "Running".into(),
            containers,
            controller: Some("ReplicaSet/api".into()),
            ..PodView::default()
        }
    }

    fn running(name: &str, restarts: u32) -> ContainerView {
        ContainerView { name: name.into(), restart_count: restarts, ..ContainerView::default() }
    }

    fn looping(name: &str, restarts: u32) -> ContainerView {
        ContainerView {
            waiting_reason: Some("CrashLoopBackOff".into()),
            waiting_message: Some("back-off 5m0s restarting failed container".into()),
            last_termination: Some(Termination {
                reason: Some("Error".into()),
                exit_code: 1,
                ..Termination::default()
            }),
            ..running(name, restarts)
        }
    }

    fn oom(name: &str, restarts: u32, finished: Timestamp) -> ContainerView {
        ContainerView {
            last_termination: Some(Termination {
                reason: Some("OOMKilled".into()),
                exit_code: 137,
                finished_at: Some(finished),
                message: None,
            }),
            ..running(name, restarts)
        }
    }

    fn only(findings: Vec<Finding>) -> Finding {
        assert_eq!(findings.len(), 1, "{findings:#?}");
        findings.into_iter().next().unwrap()
    }

    #[test]
    fn crash_loop_back_off_raises_once_refreshes_and_clears_after_its_grace() {
        let mut j = Judge::new(rules());
        assert!(j.observe(pod(vec![running("app", 0)]), at(0)).is_empty());
        let f = only(j.observe(pod(vec![looping("app", 3)]), at(1_000)));
        assert_eq!(
            (f.kind, f.state, f.target.as_str()),
            (FindingKind::PodCrashLoop, FindingState::Active, "pod/shop/api-1")
        );
        assert_eq!(f.labels["namespace"], "shop");
        assert_eq!(f.labels["pod"], "api-1");
        assert_eq!(f.labels["container"], "app");
        assert_eq!(f.labels["node"], "node-a");
        assert_eq!(f.labels["app"], "api");
        assert_eq!(f.evidence["reason"], "CrashLoopBackOff");
        assert_eq!(f.evidence["restart_count"], "3");
        assert_eq!(f.evidence["exit_code"], "1");
        assert_eq!(f.expires_at, Some(at(1_000 + 3 * MIN)));
        assert!(f.summary.contains("CrashLoopBackOff"), "{}", f.summary);

        // Watch events that change nothing it reports send nothing; nor
        // does a restart within the same loop, until the refresh is due.
        assert!(j.observe(pod(vec![looping("app", 3)]), at(2_000)).is_empty());
        assert!(j.observe(pod(vec![looping("app", 4)]), at(30_000)).is_empty());
        assert!(j.tick(at(40_000)).is_empty());
        let refreshed = only(j.tick(at(61_000)));
        assert_eq!((refreshed.state, refreshed.first_seen), (FindingState::Active, at(1_000)));
        assert_eq!(refreshed.evidence["restart_count"], "4", "a refresh carries the latest evidence");

        // Running again: held (and refreshed) through the grace, then cleared.
        assert!(j.observe(pod(vec![running("app", 4)]), at(70_000)).is_empty());
        assert_eq!(j.active_count(), 1);
        assert_eq!(only(j.tick(at(70_000 + 4 * MIN))).state, FindingState::Active);
        assert!(j.tick(at(70_000 + 5 * MIN - 1)).is_empty());
        let c = only(j.tick(at(70_000 + 5 * MIN)));
        assert_eq!((c.kind, c.state, c.expires_at), (FindingKind::PodCrashLoop, FindingState::Cleared, None));
        assert_eq!(c.evidence["cleared"], "recovered");
        assert_eq!(j.active_count(), 0);
        assert!(j.tick(at(80 * MIN)).is_empty());
    }

    #[test]
    fn a_restart_storm_counts_rises_within_the_window_only() {
        let mut j = Judge::new(rules());
        // Restarts before the agent saw the pod are a baseline, not a storm.
        assert!(j.observe(pod(vec![running("app", 40)]), at(0)).is_empty());
        assert!(j.observe(pod(vec![running("app", 42)]), at(MIN)).is_empty());
        assert!(j.observe(pod(vec![running("app", 44)]), at(2 * MIN)).is_empty());
        // Two at 1m, two at 2m, one at 11m: the first two have left the
        // 10-minute window, so only 3 count.
        assert!(j.observe(pod(vec![running("app", 45)]), at(11 * MIN)).is_empty());
        assert!(j.observe(pod(vec![running("app", 46)]), at(11 * MIN + 1)).is_empty());
        // 2 (at 2m) + 1 + 1 + 1 = 5 within the window.
        let f = only(j.observe(pod(vec![running("app", 47)]), at(11 * MIN + 2)));
        assert_eq!(f.kind, FindingKind::PodCrashLoop);
        assert_eq!(f.evidence["trigger"], "restart_storm");
        assert_eq!(f.evidence["restarts_in_window"], "5");
        assert_eq!(f.evidence["window"], "10m");
        assert!(!f.evidence.contains_key("reason"), "not waiting in a back-off");
        assert!(f.summary.contains("restarted 5 times within 10m"), "{}", f.summary);
        // The rises at 2m leave the window at 12m; the storm ends there and
        // the finding clears 5 minutes later, refreshed meanwhile.
        assert!(j.tick(at(12 * MIN - 1)).is_empty(), "still a storm, refresh not due");
        assert!(j.tick(at(12 * MIN)).is_empty(), "the storm ended: grace");
        assert_eq!(only(j.tick(at(16 * MIN))).state, FindingState::Active);
        assert!(j.tick(at(17 * MIN - 1)).is_empty());
        let c = only(j.tick(at(17 * MIN)));
        assert_eq!(c.state, FindingState::Cleared);
    }

    #[test]
    fn a_storm_turning_into_a_back_off_is_a_change_and_sent() {
        let mut j = Judge::new(rules());
        j.observe(pod(vec![running("app", 0)]), at(0));
        let storm = only(j.observe(pod(vec![running("app", 5)]), at(1_000)));
        assert_eq!(storm.evidence["trigger"], "restart_storm");
        let back_off = only(j.observe(pod(vec![looping("app", 6)]), at(2_000)));
        assert_eq!(back_off.evidence["trigger"], "crash_loop_back_off");
        assert_eq!(back_off.first_seen, at(1_000), "the same condition, first seen with the storm");
    }

    #[test]
    fn an_oom_kill_is_reported_once_per_termination() {
        let mut j = Judge::new(rules());
        assert!(j.observe(pod(vec![running("app", 0)]), at(0)).is_empty());
        let f = only(j.observe(pod(vec![oom("app", 1, at(900))]), at(1_000)));
        assert_eq!((f.kind, f.severity), (FindingKind::PodOomKilled, Severity::Critical));
        assert_eq!(f.evidence["exit_code"], "137");
        assert_eq!(f.evidence["restart_count"], "1");
        assert_eq!(f.evidence["reason"], "OOMKilled");
        assert_eq!(f.labels["container"], "app");
        // The same termination again, in any number of events: nothing.
        assert!(j.observe(pod(vec![oom("app", 1, at(900))]), at(2_000)).is_empty());
        assert!(j.observe(pod(vec![oom("app", 1, at(900))]), at(3_000)).is_empty());
        // A new termination: sent at once.
        let again = only(j.observe(pod(vec![oom("app", 2, at(4_000))]), at(5_000)));
        assert_eq!(again.evidence["restart_count"], "2");
        assert_eq!(again.first_seen, at(1_000));
        // Ten quiet minutes after the kill: cleared, and the same
        // termination never raises again.
        let c = only(j.tick(at(4_000 + 10 * MIN)));
        assert_eq!((c.kind, c.state), (FindingKind::PodOomKilled, FindingState::Cleared));
        assert!(j.observe(pod(vec![oom("app", 2, at(4_000))]), at(11 * MIN)).is_empty());
        assert!(j.tick(at(12 * MIN)).is_empty());
    }

    #[test]
    fn an_oom_kill_clears_when_the_last_termination_is_no_longer_one() {
        let mut j = Judge::new(rules());
        only(j.observe(pod(vec![oom("other", 0, at(0)), oom("app", 1, at(500))]), at(1_000)));
        let c = only(j.observe(pod(vec![running("other", 0), running("app", 1)]), at(2_000)));
        assert_eq!((c.kind, c.state), (FindingKind::PodOomKilled, FindingState::Cleared));
    }

    #[test]
    fn an_old_oom_kill_seen_at_start_is_not_news() {
        let mut j = Judge::new(rules());
        assert!(j.observe(pod(vec![oom("app", 3, at(0))]), at(2 * 3_600_000)).is_empty());
        // Without a finishedAt, first sight is the best guess.
        let mut c = oom("app", 3, at(0));
        if let Some(t) = c.last_termination.as_mut() {
            t.finished_at = None;
        }
        let mut j = Judge::new(rules());
        only(j.observe(pod(vec![c]), at(2 * 3_600_000)));
    }

    #[test]
    fn a_failed_pod_raises_until_it_is_deleted() {
        let mut j = Judge::new(rules());
        assert!(j.observe(pod(vec![running("app", 0)]), at(0)).is_empty());
        let mut failed = pod(vec![ContainerView {
            terminated: Some(Termination { reason: Some("Error".into()), exit_code: 2, ..Termination::default() }),
            ..running("app", 0)
        }]);
        failed.phase = "Failed".into();
        failed.reason = Some("Evicted".into());
        failed.message = Some("The node was low on resource: memory.".into());
        let f = only(j.observe(failed.clone(), at(1_000)));
        assert_eq!((f.kind, f.state), (FindingKind::PodFailed, FindingState::Active));
        assert_eq!(f.evidence["phase"], "Failed");
        assert_eq!(f.evidence["reason"], "Evicted");
        assert_eq!(f.evidence["exit_code"], "2");
        assert_eq!(f.labels["container"], "app");
        assert_eq!(f.summary, "pod shop/api-1 failed: Evicted");
        assert_eq!(j.failed_pods().count(), 1);
        assert!(j.observe(failed, at(2_000)).is_empty());
        let c = only(j.forget("shop", "api-1", at(3_000)));
        assert_eq!((c.kind, c.state), (FindingKind::PodFailed, FindingState::Cleared));
        assert_eq!(c.evidence["cleared"], "deleted");
        assert_eq!((j.watched(), j.active_count()), (0, 0));
        assert!(j.forget("shop", "api-1", at(4_000)).is_empty(), "forgetting twice sends nothing");
    }

    #[test]
    fn a_relist_clears_pods_deleted_while_the_watch_was_down() {
        let mut j = Judge::new(rules());
        only(j.observe(pod(vec![looping("app", 3)]), at(0)));
        let mut other = pod(vec![running("app", 0)]);
        other.name = "api-2".into();
        j.observe(other, at(0));
        let present = HashSet::from([("shop".to_owned(), "api-2".to_owned())]);
        let c = only(j.keep_only(&present, at(1_000)));
        assert_eq!((c.target.as_str(), c.state), ("pod/shop/api-1", FindingState::Cleared));
        assert_eq!(j.watched(), 1);
    }

    #[test]
    fn a_pod_recreated_under_the_same_name_starts_afresh() {
        let mut j = Judge::new(rules());
        j.observe(pod(vec![running("app", 0)]), at(0));
        only(j.observe(pod(vec![looping("app", 4)]), at(1_000)));
        let mut fresh = pod(vec![running("app", 0)]);
        fresh.uid = "u2".into();
        let c = only(j.observe(fresh, at(2_000)));
        assert_eq!(c.state, FindingState::Cleared, "no grace for a pod that is not the one that looped");
    }

    #[test]
    fn a_disabled_detector_raises_nothing() {
        let mut j = Judge::new(PodRules { crash_loop: None, oom_killed: None, failed: None, ..rules() });
        j.observe(pod(vec![running("app", 0)]), at(0));
        let mut p = pod(vec![looping("app", 9)]);
        p.phase = "Failed".into();
        assert!(j.observe(p, at(1_000)).is_empty());
    }
}
