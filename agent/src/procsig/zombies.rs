//! `process_zombies`: processes that exited and were never reaped, counted
//! on the node, with the parents holding the most of them (the process to
//! fix or restart is the parent, never the zombie).

use std::collections::{BTreeMap, HashMap};

use remedy_shared::Timestamp;
use remedy_shared::detector::{Phase, ThresholdDetector, Transition};
use remedy_shared::finding::{Finding, FindingKind, FindingState};
use serde::Serialize;

use super::table::ProcTable;
use crate::detectors::DetectorConfig;

/// Parents named in findings and /debug/state.
const TOP_PARENTS: usize = 5;

/// A parent and how many zombies it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZombieParent {
    /// Its pid (0 when the kernel gave none).
    pub pid: u32,
    /// Its name, when it is still in the table.
    pub name: String,
    /// Zombies whose parent it is.
    pub zombies: usize,
}

/// The zombies at the last read, for /debug/state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ZombiesStatus {
    /// Zombies on the node.
    pub count: usize,
    /// The parents holding the most.
    pub parents: Vec<ZombieParent>,
    /// Where the detector stands (absent when disabled).
    pub phase: Option<Phase>,
}

/// Counts zombies and judges the count.
#[derive(Debug)]
pub struct ZombieJudge {
    node: String,
    config: DetectorConfig,
    detector: ThresholdDetector,
    last: ZombiesStatus,
    raised: Option<Finding>,
}

/// The zombies of a table and their top parents.
pub fn count(table: &ProcTable) -> (usize, Vec<ZombieParent>) {
    let mut by_parent: HashMap<u32, usize> = HashMap::new();
    let mut total = 0;
    for p in table.processes.iter().filter(|p| p.zombie) {
        total += 1;
        *by_parent.entry(p.ppid.unwrap_or(0)).or_default() += 1;
    }
    let mut parents: Vec<(u32, usize)> = by_parent.into_iter().collect();
    parents.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    parents.truncate(TOP_PARENTS);
    let names: HashMap<u32, &str> = table
        .processes
        .iter()
        .filter(|p| parents.iter().any(|(pid, _)| *pid == p.pid))
        .map(|p| (p.pid, p.name.as_str()))
        .collect();
    let parents = parents
        .into_iter()
        .map(|(pid, zombies)| ZombieParent { pid, name: names.get(&pid).copied().unwrap_or("").to_owned(), zombies })
        .collect();
    (total, parents)
}

impl ZombieJudge {
    /// A judge for `node`.
    pub fn new(config: DetectorConfig, node: String) -> Self {
        ZombieJudge {
            node,
            config,
            detector: ThresholdDetector::new(config.rule),
            last: ZombiesStatus::default(),
            raised: None,
        }
    }

    /// The finding held.
    pub fn held(&self) -> Option<&Finding> {
        self.raised.as_ref()
    }

    /// The last read.
    pub fn status(&self) -> ZombiesStatus {
        self.last.clone()
    }

    /// Feeds one read of the process table; returns the finding to report.
    pub fn observe(&mut self, table: &ProcTable, now: Timestamp) -> Option<Finding> {
        let (total, parents) = count(table);
        let transition = self.detector.observe(total as f64, now);
        self.last = ZombiesStatus { count: total, parents, phase: Some(self.detector.phase()) };
        let (state, since) = match transition? {
            Transition::Raised { since } | Transition::Refreshed { since } => (FindingState::Active, since),
            Transition::Cleared { since } => (FindingState::Cleared, since),
        };
        let rule = self.config.rule;
        let named = |p: &ZombieParent| {
            if p.name.is_empty() { format!("pid {}", p.pid) } else { format!("{} (pid {})", p.name, p.pid) }
        };
        let parents_text =
            self.last.parents.iter().map(|p| format!("{}: {}", named(p), p.zombies)).collect::<Vec<_>>().join(", ");
        let mut labels = BTreeMap::from([("node".to_owned(), self.node.clone())]);
        let mut evidence = BTreeMap::from([
            ("count".to_owned(), total.to_string()),
            ("threshold".to_owned(), rule.threshold.to_string()),
            ("clear_below".to_owned(), rule.clear_below.to_string()),
            ("parents".to_owned(), parents_text.clone()),
        ]);
        if let Some(top) = self.last.parents.first().filter(|_| state == FindingState::Active) {
            for (key, value) in [("parent_pid", top.pid.to_string()), ("parent_name", top.name.clone())] {
                labels.insert(key.to_owned(), value.clone());
                evidence.insert(key.to_owned(), value);
            }
        }
        let summary = match state {
            FindingState::Active => format!(
                "{total} zombie processes on {} (threshold {}); most held by {parents_text}",
                self.node, rule.threshold
            ),
            FindingState::Cleared => format!("zombie processes on {} back to {total}", self.node),
        };
        let finding = Finding {
            kind: FindingKind::ProcessZombies,
            severity: self.config.severity,
            state,
            target: format!("node/{}", self.node),
            labels,
            evidence,
            summary,
            first_seen: since,
            last_seen: now,
            expires_at: (state == FindingState::Active).then(|| now.plus(rule.refresh_every * 3)),
        };
        self.raised = (state == FindingState::Active).then(|| finding.clone());
        Some(finding)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use remedy_shared::Severity;
    use remedy_shared::detector::ThresholdRule;

    use super::*;
    use crate::procsig::table::ProcSample;

    fn sample(pid: u32, ppid: u32, name: &str, zombie: bool) -> ProcSample {
        ProcSample {
            pid,
            ppid: Some(ppid),
            start_time: 1,
            name: name.into(),
            cmdline: String::new(),
            memory_bytes: 0,
            cpu_percent: 0.0,
            zombie,
        }
    }

    /// `n` zombies of `parent`, and `m` of the init process.
    fn table(parent: u32, n: u32, m: u32) -> ProcTable {
        let mut processes = vec![sample(1, 0, "systemd", false), sample(parent, 1, "leaky-worker", false)];
        processes.extend((0..n).map(|i| sample(1000 + i, parent, "child", true)));
        processes.extend((0..m).map(|i| sample(2000 + i, 1, "orphan", true)));
        ProcTable { memory_total_bytes: 1, processes }
    }

    fn judge() -> ZombieJudge {
        let rule = ThresholdRule {
            threshold: 5.0,
            clear_below: 3.0,
            for_duration: Duration::from_secs(30),
            refresh_every: Duration::from_secs(60),
        };
        ZombieJudge::new(DetectorConfig { rule, severity: Severity::Warning }, "n1".into())
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_millis(secs * 1000)
    }

    #[test]
    fn zombies_held_for_the_duration_raise_naming_the_parent_holding_most() {
        let mut j = judge();
        assert!(j.observe(&table(77, 6, 2), t(0)).is_none());
        assert_eq!(j.status().count, 8);
        let f = j.observe(&table(77, 6, 2), t(30)).expect("raised");
        assert_eq!(
            (f.kind, f.state, f.target.as_str()),
            (FindingKind::ProcessZombies, FindingState::Active, "node/n1")
        );
        assert_eq!(f.evidence["count"], "8");
        assert_eq!(f.evidence["parents"], "leaky-worker (pid 77): 6, systemd (pid 1): 2");
        assert_eq!((f.labels["parent_pid"].as_str(), f.labels["parent_name"].as_str()), ("77", "leaky-worker"));
        assert_eq!(f.first_seen, t(0));
        // Four is below the threshold and above clear_below: still held.
        assert!(j.observe(&table(77, 4, 0), t(40)).is_none());
        let cleared = j.observe(&table(77, 0, 0), t(50)).expect("cleared");
        assert_eq!((cleared.state, cleared.evidence["count"].as_str()), (FindingState::Cleared, "0"));
        assert!(!cleared.labels.contains_key("parent_pid"));
    }

    #[test]
    fn a_burst_shorter_than_the_duration_raises_nothing() {
        let mut j = judge();
        assert!(j.observe(&table(77, 9, 0), t(0)).is_none());
        assert!(j.observe(&table(77, 1, 0), t(10)).is_none());
        assert!(j.observe(&table(77, 9, 0), t(20)).is_none());
        assert!(j.observe(&table(77, 9, 0), t(49)).is_none());
        assert!(j.observe(&table(77, 9, 0), t(50)).is_some());
    }

    #[test]
    fn parents_are_bounded_and_a_vanished_parent_is_named_by_pid() {
        let mut processes: Vec<ProcSample> = (0..8u32).map(|i| sample(3000 + i, 500 + i, "child", true)).collect();
        processes.push(sample(500, 1, "p500", false));
        let (total, parents) = count(&ProcTable { memory_total_bytes: 1, processes });
        assert_eq!((total, parents.len()), (8, TOP_PARENTS));
        assert_eq!(parents[0], ZombieParent { pid: 500, name: "p500".into(), zombies: 1 });
        assert_eq!(parents[1].name, "");
    }
}
