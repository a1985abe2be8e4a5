//! Turns resource snapshots into findings through threshold detectors.

use std::collections::{BTreeMap, HashMap};

use remedy_shared::Timestamp;
use remedy_shared::detector::{ThresholdDetector, Transition};
use remedy_shared::finding::{Finding, FindingKind, FindingState};
use remedy_shared::signals::ResourceSnapshot;

use std::time::Duration;

use remedy_shared::Severity;
use remedy_shared::config::{ConfigError, opt_duration};
use remedy_shared::detector::ThresholdRule;
use serde::Deserialize;

/// One threshold detector, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorConfig {
    /// When it raises and clears.
    pub rule: ThresholdRule,
    /// Severity of its findings.
    pub severity: Severity,
}

/// The node-level detectors; `None` is disabled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detectors {
    /// Node CPU percent.
    pub node_cpu_high: Option<DetectorConfig>,
    /// Node memory percent.
    pub node_memory_high: Option<DetectorConfig>,
    /// One-minute load per core.
    pub node_load_high: Option<DetectorConfig>,
    /// Filesystem use percent, per mount.
    pub disk_usage_high: Option<DetectorConfig>,
}

/// `detectors:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorsFile {
    node_cpu_high: Option<DetectorFile>,
    node_memory_high: Option<DetectorFile>,
    node_load_high: Option<DetectorFile>,
    disk_usage_high: Option<DetectorFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectorFile {
    enabled: Option<bool>,
    threshold: Option<f64>,
    clear_below: Option<f64>,
    #[serde(default, rename = "for", with = "opt_duration")]
    for_duration: Option<Duration>,
    severity: Option<Severity>,
}

fn detector(
    source: &str,
    name: &str,
    file: Option<DetectorFile>,
    (threshold, clear_below, for_secs): (f64, f64, u64),
    refresh_every: Duration,
) -> Result<Option<DetectorConfig>, ConfigError> {
    let file = file.unwrap_or_default();
    if file.enabled == Some(false) {
        return Ok(None);
    }
    let threshold = file.threshold.unwrap_or(threshold);
    let clear_below = file.clear_below.unwrap_or(clear_below.min(threshold));
    if !threshold.is_finite() || threshold < 0.0 {
        return Err(ConfigError::new(source, format!("detectors.{name}.threshold"), "must be a non-negative number"));
    }
    if !(clear_below.is_finite() && clear_below <= threshold) {
        return Err(ConfigError::new(
            source,
            format!("detectors.{name}.clear_below"),
            format!("must not be above the threshold ({threshold})"),
        ));
    }
    Ok(Some(DetectorConfig {
        rule: ThresholdRule {
            threshold,
            clear_below,
            for_duration: file.for_duration.unwrap_or(Duration::from_secs(for_secs)),
            refresh_every,
        },
        severity: file.severity.unwrap_or(Severity::Warning),
    }))
}

/// Validates the `detectors:` section; a held finding is sent again every
/// `refresh_every`.
pub fn resolve(source: &str, file: DetectorsFile, refresh_every: Duration) -> Result<Detectors, ConfigError> {
    let d = file;
    let refresh = refresh_every;
    Ok(Detectors {
        node_cpu_high: detector(source, "node_cpu_high", d.node_cpu_high, (90.0, 80.0, 120), refresh)?,
        node_memory_high: detector(source, "node_memory_high", d.node_memory_high, (90.0, 85.0, 120), refresh)?,
        node_load_high: detector(source, "node_load_high", d.node_load_high, (2.0, 1.5, 300), refresh)?,
        disk_usage_high: detector(source, "disk_usage_high", d.disk_usage_high, (85.0, 80.0, 60), refresh)?,
    })
}

/// One value to check, with what a finding about it says.
struct Reading {
    kind: FindingKind,
    target: String,
    value: f64,
    labels: BTreeMap<String, String>,
    unit: &'static str,
}

/// Every detector of the node, keyed by (kind, target) so a new mount gets
/// its own detector and a vanished one stops being checked.
#[derive(Debug)]
pub struct NodeDetectors {
    config: Detectors,
    node: String,
    cores: usize,
    active: HashMap<(FindingKind, String), ThresholdDetector>,
    /// Findings currently raised, for /debug/state.
    raised: BTreeMap<(FindingKind, String), Finding>,
}

impl NodeDetectors {
    /// Detectors for `node` with `cores` CPUs.
    pub fn new(config: Detectors, node: String, cores: usize) -> Self {
        NodeDetectors { config, node, cores: cores.max(1), active: HashMap::new(), raised: BTreeMap::new() }
    }

    /// Findings currently raised.
    pub fn raised(&self) -> impl Iterator<Item = &Finding> {
        self.raised.values()
    }

    fn readings(&self, snap: &ResourceSnapshot) -> Vec<(Reading, DetectorConfig)> {
        let node_labels = || BTreeMap::from([("node".to_owned(), self.node.clone())]);
        let mut out = Vec::new();
        let node_target = format!("node/{}", self.node);
        let mut push = |cfg: Option<DetectorConfig>, reading: Reading| {
            if let Some(cfg) = cfg {
                out.push((reading, cfg));
            }
        };
        push(
            self.config.node_cpu_high,
            Reading {
                kind: FindingKind::NodeCpuHigh,
                target: node_target.clone(),
                value: snap.cpu_percent,
                labels: node_labels(),
                unit: "%",
            },
        );
        push(
            self.config.node_memory_high,
            Reading {
                kind: FindingKind::NodeMemoryHigh,
                target: node_target.clone(),
                value: snap.memory_percent(),
                labels: node_labels(),
                unit: "%",
            },
        );
        push(
            self.config.node_load_high,
            Reading {
                kind: FindingKind::NodeLoadHigh,
                target: node_target,
                value: snap.load[0] / self.cores as f64,
                labels: node_labels(),
                unit: " per core",
            },
        );
        for disk in &snap.disks {
            let mut labels = node_labels();
            labels.insert("mount".to_owned(), disk.mount_point.clone());
            push(
                self.config.disk_usage_high,
                Reading {
                    kind: FindingKind::DiskUsageHigh,
                    target: format!("mount/{}:{}", self.node, disk.mount_point),
                    value: disk.used_percent(),
                    labels,
                    unit: "%",
                },
            );
        }
        out
    }

    /// Feeds a snapshot; returns the findings to report.
    pub fn observe(&mut self, snap: &ResourceSnapshot, now: Timestamp) -> Vec<Finding> {
        let mut findings = Vec::new();
        let readings = self.readings(snap);
        for (reading, cfg) in readings {
            let key = (reading.kind, reading.target.clone());
            let detector = self.active.entry(key.clone()).or_insert_with(|| ThresholdDetector::new(cfg.rule));
            let Some(transition) = detector.observe(reading.value, now) else { continue };
            let (state, since) = match transition {
                Transition::Raised { since } | Transition::Refreshed { since } => (FindingState::Active, since),
                Transition::Cleared { since } => (FindingState::Cleared, since),
            };
            let rule = cfg.rule;
            let summary = match state {
                FindingState::Active => format!(
                    "{} at {:.1}{} (threshold {}{}) on {}",
                    reading.kind, reading.value, reading.unit, rule.threshold, reading.unit, reading.target
                ),
                FindingState::Cleared => {
                    format!("{} back to {:.1}{} on {}", reading.kind, reading.value, reading.unit, reading.target)
                }
            };
            let finding = Finding {
                kind: reading.kind,
                severity: cfg.severity,
                state,
                target: reading.target,
                labels: reading.labels,
                evidence: BTreeMap::from([
                    ("value".to_owned(), format!("{:.2}", reading.value)),
                    ("threshold".to_owned(), rule.threshold.to_string()),
                    ("clear_below".to_owned(), rule.clear_below.to_string()),
                ]),
                summary,
                first_seen: since,
                last_seen: now,
                // Three missed refreshes and the coordinator stops believing it.
                expires_at: (state == FindingState::Active).then(|| now.plus(rule.refresh_every * 3)),
            };
            match state {
                FindingState::Active => self.raised.insert(key, finding.clone()),
                FindingState::Cleared => self.raised.remove(&key),
            };
            findings.push(finding);
        }
        findings
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use remedy_shared::Severity;
    use remedy_shared::detector::ThresholdRule;
    use remedy_shared::signals::DiskUsage;

    use super::*;

    fn cfg() -> DetectorConfig {
        DetectorConfig {
            rule: ThresholdRule {
                threshold: 85.0,
                clear_below: 80.0,
                for_duration: Duration::from_secs(10),
                refresh_every: Duration::from_secs(60),
            },
            severity: Severity::Critical,
        }
    }

    fn snap(disk_used_percent: u64) -> ResourceSnapshot {
        ResourceSnapshot {
            disks: vec![DiskUsage {
                mount_point: "/var".into(),
                total_bytes: 100,
                available_bytes: 100 - disk_used_percent,
            }],
            ..ResourceSnapshot::default()
        }
    }

    #[test]
    fn a_full_disk_raises_after_its_for_duration_and_clears_with_hysteresis() {
        let detectors = Detectors {
            node_cpu_high: None,
            node_memory_high: None,
            node_load_high: None,
            disk_usage_high: Some(cfg()),
        };
        let mut d = NodeDetectors::new(detectors, "n1".into(), 2);
        assert!(d.observe(&snap(90), Timestamp::from_millis(0)).is_empty());
        let raised = d.observe(&snap(90), Timestamp::from_millis(10_000));
        assert_eq!(raised.len(), 1);
        let f = &raised[0];
        assert_eq!(
            (f.kind, f.target.as_str(), f.state),
            (FindingKind::DiskUsageHigh, "mount/n1:/var", FindingState::Active)
        );
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(f.labels["mount"], "/var");
        assert_eq!(f.evidence["value"], "90.00");
        assert_eq!(f.expires_at, Some(Timestamp::from_millis(190_000)));
        assert_eq!(d.raised().count(), 1);
        assert!(d.observe(&snap(82), Timestamp::from_millis(20_000)).is_empty());
        let cleared = d.observe(&snap(70), Timestamp::from_millis(30_000));
        assert_eq!(cleared[0].state, FindingState::Cleared);
        assert_eq!(d.raised().count(), 0);
    }
}
