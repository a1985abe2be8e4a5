//! `process_hot`: one process above its memory or CPU threshold, judged
//! like the node detectors (a `for` duration, hysteresis, refreshes), and
//! cleared when it falls back or exits.
//!
//! Only processes at or above a threshold get a detector, and at most
//! `max_tracked` of them (the hottest first): a node with thousands of
//! processes costs what the few hot ones cost.

use std::collections::{BTreeMap, HashSet};

use regex::RegexSet;
use remedy_shared::Timestamp;
use remedy_shared::detector::{Phase, ThresholdDetector, Transition};
use remedy_shared::finding::{Finding, FindingKind, FindingState};
use serde::Serialize;

use super::config::{HotRule, MemoryUnit, ProcessesConfig};
use super::table::{ProcSample, ProcTable};

/// What a threshold measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Resident memory.
    Memory,
    /// CPU, percent of one core.
    Cpu,
}

impl Resource {
    fn as_str(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Cpu => "cpu",
        }
    }
}

/// (pid, start time, resource): a reused pid is another process.
type Key = (u32, u64, Resource);

#[derive(Debug)]
struct Tracked {
    detector: ThresholdDetector,
    name: String,
    cmdline: String,
    value: f64,
}

/// A tracked process, for /debug/state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrackedStatus {
    /// Process id.
    pub pid: u32,
    /// Its name.
    pub name: String,
    /// What is measured.
    pub resource: Resource,
    /// The latest figure, in the threshold's unit.
    pub value: f64,
    /// Where its detector stands.
    pub phase: Phase,
}

/// The per-process detectors of one node.
#[derive(Debug)]
pub struct HotJudge {
    node: String,
    memory: Option<HotRule>,
    cpu: Option<HotRule>,
    names: Option<RegexSet>,
    ignore: Option<RegexSet>,
    max_tracked: usize,
    tracked: BTreeMap<Key, Tracked>,
    /// Processes over a threshold left unjudged by the bound, last time.
    untracked: usize,
    /// Findings held, by target.
    raised: BTreeMap<String, Finding>,
}

impl HotJudge {
    /// Detectors for `node` as configured.
    pub fn new(config: &ProcessesConfig, node: String) -> Self {
        let (names, ignore) = config.selectors();
        HotJudge {
            node,
            memory: config.memory,
            cpu: config.cpu,
            names,
            ignore,
            max_tracked: config.max_tracked,
            tracked: BTreeMap::new(),
            untracked: 0,
            raised: BTreeMap::new(),
        }
    }

    /// Processes over a threshold the bound left unjudged at the last read.
    pub fn untracked(&self) -> usize {
        self.untracked
    }

    /// Findings held.
    pub fn held(&self) -> impl Iterator<Item = &Finding> {
        self.raised.values()
    }

    /// The processes being judged.
    pub fn tracked(&self) -> Vec<TrackedStatus> {
        self.tracked
            .iter()
            .map(|(&(pid, _, resource), t)| TrackedStatus {
                pid,
                name: t.name.clone(),
                resource,
                value: t.value,
                phase: t.detector.phase(),
            })
            .collect()
    }

    fn selected(&self, name: &str) -> bool {
        self.names.as_ref().is_none_or(|s| s.is_match(name)) && !self.ignore.as_ref().is_some_and(|s| s.is_match(name))
    }

    fn rule(&self, resource: Resource) -> Option<HotRule> {
        match resource {
            Resource::Memory => self.memory,
            Resource::Cpu => self.cpu,
        }
    }

    fn value(&self, p: &ProcSample, resource: Resource, rule: &HotRule, total: u64) -> f64 {
        match (resource, rule.unit) {
            (Resource::Cpu, _) => p.cpu_percent,
            (Resource::Memory, MemoryUnit::Bytes) => p.memory_bytes as f64,
            (Resource::Memory, MemoryUnit::Percent) if total > 0 => p.memory_bytes as f64 * 100.0 / total as f64,
            // No node total: no figure, which neither raises nor clears.
            (Resource::Memory, MemoryUnit::Percent) => f64::NAN,
        }
    }

    /// Feeds one read of the process table; returns the findings to report.
    pub fn observe(&mut self, table: &ProcTable, now: Timestamp) -> Vec<Finding> {
        let mut candidates: Vec<(Key, f64, &ProcSample, HotRule)> = Vec::new();
        for p in table.processes.iter().filter(|p| !p.zombie && self.selected(&p.name)) {
            for resource in [Resource::Memory, Resource::Cpu] {
                let Some(rule) = self.rule(resource) else { continue };
                let key = (p.pid, p.start_time, resource);
                let value = self.value(p, resource, &rule, table.memory_total_bytes);
                if self.tracked.contains_key(&key) || value >= rule.detector.rule.threshold {
                    candidates.push((key, value, p, rule));
                }
            }
        }
        // Those already judged keep their place; then the hottest, relative
        // to their threshold, take what the bound leaves.
        candidates.sort_by(|a, b| {
            let ratio = |c: &(Key, f64, &ProcSample, HotRule)| c.1 / c.3.detector.rule.threshold;
            self.tracked.contains_key(&b.0).cmp(&self.tracked.contains_key(&a.0)).then(ratio(b).total_cmp(&ratio(a)))
        });
        let mut findings = Vec::new();
        let mut seen = HashSet::new();
        self.untracked = 0;
        for (key, value, p, rule) in candidates {
            if !self.tracked.contains_key(&key) && self.tracked.len() >= self.max_tracked {
                self.untracked += 1;
                continue;
            }
            seen.insert(key);
            let t = self.tracked.entry(key).or_insert_with(|| Tracked {
                detector: ThresholdDetector::new(rule.detector.rule),
                name: p.name.clone(),
                cmdline: p.cmdline.clone(),
                value,
            });
            t.value = value;
            if !p.cmdline.is_empty() {
                t.cmdline.clone_from(&p.cmdline);
            }
            let transition = t.detector.observe(value, now);
            if let Some(transition) = transition {
                findings.push(self.finding(key, rule, transition, None, now));
            }
            if self.tracked.get(&key).is_some_and(|t| t.detector.phase() == Phase::Normal) {
                self.tracked.remove(&key);
            }
        }
        let gone: Vec<Key> = self.tracked.keys().filter(|k| !seen.contains(k)).copied().collect();
        for key in gone {
            let Some(rule) = self.rule(key.2) else { continue };
            if let Some(Phase::Firing { since, .. }) = self.tracked.get(&key).map(|t| t.detector.phase()) {
                findings.push(self.finding(key, rule, Transition::Cleared { since }, Some("exited"), now));
            }
            self.tracked.remove(&key);
        }
        for f in &findings {
            match f.state {
                FindingState::Active => self.raised.insert(f.target.clone(), f.clone()),
                FindingState::Cleared => self.raised.remove(&f.target),
            };
        }
        findings
    }

    fn finding(
        &self,
        key: Key,
        rule: HotRule,
        transition: Transition,
        why_cleared: Option<&str>,
        now: Timestamp,
    ) -> Finding {
        let (pid, _, resource) = key;
        let t = &self.tracked[&key];
        let (state, since) = match transition {
            Transition::Raised { since } | Transition::Refreshed { since } => (FindingState::Active, since),
            Transition::Cleared { since } => (FindingState::Cleared, since),
        };
        let r = rule.detector.rule;
        let unit = match (resource, rule.unit) {
            (Resource::Cpu, _) => "% of one core",
            (Resource::Memory, MemoryUnit::Bytes) => " bytes",
            (Resource::Memory, MemoryUnit::Percent) => "% of the node",
        };
        let figure = |v: f64| match (resource, rule.unit) {
            (Resource::Memory, MemoryUnit::Bytes) => format!("{:.0} MiB", v / (1024.0 * 1024.0)),
            _ => format!("{v:.1}{unit}"),
        };
        let who = format!("process {} (pid {pid}) on {}", t.name, self.node);
        let summary = match (state, why_cleared) {
            (FindingState::Active, _) => {
                format!("{who}: {} at {} (threshold {})", resource.as_str(), figure(t.value), figure(r.threshold))
            }
            (FindingState::Cleared, Some(why)) => format!("{who}: {why}"),
            (FindingState::Cleared, None) => format!("{who}: {} back to {}", resource.as_str(), figure(t.value)),
        };
        let mut evidence = BTreeMap::from([
            ("pid".to_owned(), pid.to_string()),
            ("process".to_owned(), t.name.clone()),
            ("cmdline".to_owned(), t.cmdline.clone()),
            ("resource".to_owned(), resource.as_str().to_owned()),
            ("value".to_owned(), format!("{:.2}", t.value)),
            ("threshold".to_owned(), r.threshold.to_string()),
            ("clear_below".to_owned(), r.clear_below.to_string()),
            ("unit".to_owned(), unit.trim().to_owned()),
        ]);
        if state == FindingState::Cleared {
            evidence.insert("cleared_because".to_owned(), why_cleared.unwrap_or("below clear_below").to_owned());
        }
        Finding {
            kind: FindingKind::ProcessHot,
            severity: rule.detector.severity,
            state,
            target: format!("process/{}/{pid}/{}", self.node, resource.as_str()),
            labels: BTreeMap::from([
                ("node".to_owned(), self.node.clone()),
                ("pid".to_owned(), pid.to_string()),
                ("process".to_owned(), t.name.clone()),
                ("resource".to_owned(), resource.as_str().to_owned()),
            ]),
            evidence,
            summary,
            first_seen: since,
            last_seen: now,
            // Three missed refreshes and the coordinator stops believing it.
            expires_at: (state == FindingState::Active).then(|| now.plus(r.refresh_every * 3)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use remedy_shared::Severity;

    use super::*;
    use crate::procsig::config::resolve;

    const MIB: u64 = 1024 * 1024;

    fn config(yaml: &str) -> ProcessesConfig {
        let file = remedy_shared::config::parse_yaml("agent.yaml", yaml).unwrap();
        resolve("agent.yaml", file, Duration::from_secs(10)).unwrap()
    }

    fn judge(yaml: &str) -> HotJudge {
        HotJudge::new(&config(yaml), "n1".into())
    }

    fn proc(pid: u32, name: &str, memory_mib: u64, cpu: f64) -> ProcSample {
        ProcSample {
            pid,
            ppid: Some(1),
            start_time: 1_000 + u64::from(pid),
            name: name.into(),
            cmdline: format!("/usr/bin/{name} --serve"),
            memory_bytes: memory_mib * MIB,
            cpu_percent: cpu,
            zombie: false,
        }
    }

    fn table(processes: Vec<ProcSample>) -> ProcTable {
        ProcTable { memory_total_bytes: 1024 * MIB, processes }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_millis(secs * 1000)
    }

    const MEMORY_ONLY: &str =
        "memory: {threshold: 500MiB, clear_below: 400MiB, for: 10s, severity: critical}\ncpu: {enabled: false}\n";

    #[test]
    fn memory_above_its_threshold_raises_after_for_and_clears_with_hysteresis() {
        let mut j = judge(MEMORY_ONLY);
        assert!(j.observe(&table(vec![proc(42, "java", 600, 0.0), proc(7, "sshd", 10, 0.0)]), t(0)).is_empty());
        assert_eq!(j.tracked().len(), 1, "only the process above its threshold is judged");
        let raised = j.observe(&table(vec![proc(42, "java", 600, 0.0)]), t(10));
        assert_eq!(raised.len(), 1);
        let f = &raised[0];
        assert_eq!((f.kind, f.state, f.severity), (FindingKind::ProcessHot, FindingState::Active, Severity::Critical));
        assert_eq!(f.target, "process/n1/42/memory");
        assert_eq!((f.labels["pid"].as_str(), f.labels["process"].as_str()), ("42", "java"));
        assert_eq!(f.evidence["cmdline"], "/usr/bin/java --serve");
        assert_eq!(f.evidence["value"], format!("{:.2}", (600 * MIB) as f64));
        assert_eq!(f.evidence["threshold"], (500 * MIB).to_string());
        assert_eq!(f.first_seen, t(0));
        assert!(f.summary.contains("java (pid 42)") && f.summary.contains("600 MiB"), "{}", f.summary);
        // Between clear_below and the threshold it holds.
        assert!(j.observe(&table(vec![proc(42, "java", 450, 0.0)]), t(20)).is_empty());
        let cleared = j.observe(&table(vec![proc(42, "java", 300, 0.0)]), t(30));
        assert_eq!(
            (cleared[0].state, cleared[0].evidence["cleared_because"].as_str()),
            (FindingState::Cleared, "below clear_below")
        );
        assert!(j.tracked().is_empty(), "a process back to normal is no longer judged");
    }

    #[test]
    fn a_short_spike_raises_nothing_and_a_refresh_follows_a_minute() {
        let mut j = judge(MEMORY_ONLY);
        assert!(j.observe(&table(vec![proc(42, "java", 600, 0.0)]), t(0)).is_empty());
        assert!(j.observe(&table(vec![proc(42, "java", 100, 0.0)]), t(5)).is_empty());
        assert!(j.observe(&table(vec![proc(42, "java", 600, 0.0)]), t(6)).is_empty());
        assert_eq!(j.observe(&table(vec![proc(42, "java", 600, 0.0)]), t(16)).len(), 1);
        assert!(j.observe(&table(vec![proc(42, "java", 600, 0.0)]), t(30)).is_empty());
        let refreshed = j.observe(&table(vec![proc(42, "java", 600, 0.0)]), t(76));
        assert_eq!((refreshed.len(), refreshed[0].state), (1, FindingState::Active));
    }

    #[test]
    fn a_process_that_exits_or_whose_pid_is_reused_clears() {
        let mut j = judge("memory: {threshold: 500MiB, for: 0s}\ncpu: {enabled: false}\n");
        assert_eq!(j.observe(&table(vec![proc(42, "java", 600, 0.0)]), t(0)).len(), 1);
        let cleared = j.observe(&table(vec![]), t(10));
        assert_eq!(cleared.len(), 1);
        assert_eq!(
            (cleared[0].state, cleared[0].evidence["cleared_because"].as_str()),
            (FindingState::Cleared, "exited")
        );
        assert_eq!(cleared[0].expires_at, None);
        assert_eq!(j.observe(&table(vec![proc(42, "java", 600, 0.0)]), t(20)).len(), 1);
        // Same pid, another process: the first one is gone.
        let mut reused = proc(42, "python3", 700, 0.0);
        reused.start_time += 50;
        let out = j.observe(&table(vec![reused]), t(30));
        let states: Vec<(FindingState, &str)> = out.iter().map(|f| (f.state, f.labels["process"].as_str())).collect();
        assert_eq!(states, [(FindingState::Active, "python3"), (FindingState::Cleared, "java")]);
    }

    #[test]
    fn cpu_and_percent_of_node_memory_are_separate_conditions() {
        let mut j = judge("memory: {threshold: '50%', for: 0s}\ncpu: {threshold: 150, for: 0s}\n");
        let out = j.observe(&table(vec![proc(9, "ffmpeg", 600, 250.0), proc(10, "idle", 10, 1.0)]), t(0));
        let targets: Vec<&str> = out.iter().map(|f| f.target.as_str()).collect();
        assert_eq!(targets, ["process/n1/9/cpu", "process/n1/9/memory"], "the hotter relative to its threshold first");
        assert_eq!(out[1].evidence["unit"], "% of the node");
        assert!(out[1].evidence["value"].starts_with("58.59"), "{}", out[1].evidence["value"]);
        assert_eq!(out[0].evidence["unit"], "% of one core");
        let out = j.observe(&table(vec![proc(9, "ffmpeg", 600, 10.0)]), t(10));
        assert_eq!((out.len(), out[0].target.as_str(), out[0].state), (1, "process/n1/9/cpu", FindingState::Cleared));
    }

    #[test]
    fn names_select_ignore_excludes_and_zombies_are_not_hot() {
        let mut j = judge(
            "names: ['^java$', '^postgres']\nignore: ['^postgres: autovacuum']\nmemory: {threshold: 100MiB, for: 0s}\ncpu: {enabled: false}\n",
        );
        let mut zombie = proc(4, "java", 600, 0.0);
        zombie.zombie = true;
        let out = j.observe(
            &table(vec![
                proc(1, "java", 600, 0.0),
                proc(2, "postgres: autovacuum worker", 600, 0.0),
                proc(3, "redis-server", 600, 0.0),
                zombie,
            ]),
            t(0),
        );
        let pids: Vec<&str> = out.iter().map(|f| f.labels["pid"].as_str()).collect();
        assert_eq!(pids, ["1"]);
    }

    #[test]
    fn the_bound_keeps_the_hottest_and_counts_the_rest() {
        let mut j = judge("max_tracked: 2\nmemory: {threshold: 100MiB, for: 0s}\ncpu: {enabled: false}\n");
        let many =
            table(vec![proc(1, "a", 200, 0.0), proc(2, "b", 900, 0.0), proc(3, "c", 300, 0.0), proc(4, "d", 150, 0.0)]);
        let out = j.observe(&many, t(0));
        let pids: Vec<&str> = out.iter().map(|f| f.labels["pid"].as_str()).collect();
        assert_eq!(pids, ["2", "3"]);
        assert_eq!((j.tracked().len(), j.untracked()), (2, 2));
        // Those already judged keep their slots even when others grow hotter.
        let hotter = table(vec![proc(1, "a", 990, 0.0), proc(2, "b", 900, 0.0), proc(3, "c", 300, 0.0)]);
        assert!(j.observe(&hotter, t(10)).is_empty());
        assert_eq!(j.untracked(), 1);
    }
}
