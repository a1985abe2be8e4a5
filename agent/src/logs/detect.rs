//! Log lines to findings: the domain's error classifier (P1-002) and
//! brute-force detector (SEC-001), fed by the tailer's thread, and a task
//! that hands what they raise to the spool.
//!
//! The detectors sit behind one lock shared by the tailer (which feeds them
//! a line at a time) and the flush task (which ticks them so windows slide
//! and findings clear without new lines, and takes what they raised). A
//! raised finding wakes the flush task at once: the time from a line written
//! to its finding on the stream is the tailer's poll plus one hand-over, not
//! a tick. When findings pile up because the spool is slow, the sink
//! refuses lines and the tailer stops reading (it keeps its place), so an
//! event storm costs bounded memory and loses no line.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use remedy_shared::finding::{Finding, FindingKind};
use remedy_shared::logs::bruteforce::{BruteForceConfig, BruteForceDetector, BruteForceStats};
use remedy_shared::logs::classify::{ClassifierConfig, ClassifierStats, ErrorClassifier};
use remedy_shared::logs::{InvalidLogConfig, LineClock, LineRef};
use serde::Serialize;
use tokio::sync::Notify;

use super::LogMetrics;
use super::{LineSink, LogLine, SourceKind};
use crate::clock::now;
use crate::infrastructure::OwnInfrastructure;
use crate::outbox::Outbox;
use remedy_shared::sync::lock;

use crate::published::Published;

/// Findings waiting for the spool beyond which lines are refused.
const MAX_PENDING: usize = 4096;
/// Brute-force findings held while the coordinator's view of the cluster
/// is unknown. Past this, a finding goes on judged by this node's own
/// addresses only (the coordinator's rails still refuse a ban of any node
/// it knows): an agent cut off from the coordinator through an attack
/// must keep reading its logs, not stop once enough attackers are held.
const MAX_HELD: usize = 1024;
/// How often the detectors are ticked.
const TICK: Duration = Duration::from_secs(1);

/// What the detectors have seen, for `/debug/state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DetectorsStatus {
    /// Error categories, in the order of `errors.by_category`.
    pub categories: Vec<String>,
    /// The error classifier.
    pub errors: ClassifierStats,
    /// The brute-force detector.
    pub brute_force: BruteForceStats,
    /// Findings waiting for the spool.
    pub pending: usize,
    /// Brute-force findings held until the coordinator says which
    /// addresses are the cluster's own.
    pub held: usize,
    /// Lines refused because findings were waiting (each retried later).
    pub refused: u64,
    /// Brute-force findings dropped because their source is Remedy's own
    /// infrastructure (this node, another node, the API server, ...).
    pub infrastructure_suppressed: u64,
}

#[derive(Debug)]
struct Detectors {
    errors: ErrorClassifier,
    brute_force: BruteForceDetector,
    pending: Vec<Finding>,
    /// Brute-force findings raised before the coordinator said which
    /// addresses are the cluster's own.
    held: Vec<Finding>,
    refused: u64,
    infrastructure_suppressed: u64,
}

impl Detectors {
    /// Queues what the detectors raised, except an attack "from" Remedy's
    /// own infrastructure: a node's address in this node's auth log is a
    /// misconfigured deploy key, never an attacker to ban everywhere. An
    /// agent that has not yet heard the coordinator's view (just started,
    /// reading the backlog) knows only its own addresses, so it holds
    /// brute-force findings until it has, then judges them.
    fn queue(&mut self, raised: impl IntoIterator<Item = Finding>, own: &OwnInfrastructure) {
        let heard = own.heard_from_coordinator();
        let known = own.current();
        let held = if heard { std::mem::take(&mut self.held) } else { Vec::new() };
        for f in held.into_iter().chain(raised) {
            if f.kind != FindingKind::BruteForce {
                self.pending.push(f);
                continue;
            }
            let source = f.labels.get("source_ip").and_then(|ip| ip.parse::<IpAddr>().ok());
            if source.is_some_and(|ip| known.contains(ip)) {
                self.infrastructure_suppressed += 1;
            } else if heard || self.held.len() >= MAX_HELD {
                self.pending.push(f);
            } else {
                self.held.push(f);
            }
        }
    }
}

/// The detectors, shared by the tailer's sink and the flush task.
#[derive(Debug, Clone)]
pub struct LogDetectors {
    inner: Arc<Mutex<Detectors>>,
    raised: Arc<Notify>,
    own: OwnInfrastructure,
}

impl LogDetectors {
    /// Detectors for these settings, or the field that is wrong.
    pub fn new(errors: ClassifierConfig, brute_force: BruteForceConfig) -> Result<Self, InvalidLogConfig> {
        let detectors = Detectors {
            errors: ErrorClassifier::new(errors)?,
            brute_force: BruteForceDetector::new(brute_force)?,
            pending: Vec::new(),
            held: Vec::new(),
            refused: 0,
            infrastructure_suppressed: 0,
        };
        Ok(LogDetectors {
            inner: Arc::new(Mutex::new(detectors)),
            raised: Arc::new(Notify::new()),
            own: OwnInfrastructure::default(),
        })
    }

    /// Both detectors read lines' times with `clock`.
    pub fn set_line_clock(&self, clock: LineClock) {
        let mut d = self.lock();
        d.errors.set_line_clock(clock.clone());
        d.brute_force.set_line_clock(clock);
    }

    /// The same detectors, never reporting an address of `own`.
    pub fn protecting(self, own: OwnInfrastructure) -> Self {
        LogDetectors { own, ..self }
    }

    /// The tailer's end; counts the lines it takes into `accepted`.
    pub fn sink(&self, accepted: Counter) -> DetectorSink {
        DetectorSink { detectors: self.clone(), accepted }
    }

    fn lock(&self) -> MutexGuard<'_, Detectors> {
        // Counters and windows are always left consistent; keep serving.
        lock(&self.inner)
    }

    /// Ticks the detectors every second and hands every finding they raise
    /// to the spool, until `stopped`; what is raised by then is spooled.
    /// `status` is what /debug/state shows under `log_detectors`.
    pub async fn flush(
        self,
        outbox: Outbox,
        status: Published<DetectorsStatus>,
        metrics: LogMetrics,
        stopped: impl Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stopped);
        let mut last = DetectorsStatus::default();
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => {
                    let mut d = self.lock();
                    let at = now();
                    let mut raised = d.errors.tick(at);
                    raised.extend(d.brute_force.tick(at));
                    d.queue(raised, &self.own);
                    false
                }
                () = self.raised.notified() => false,
                () = &mut stopped => true,
            };
            let (findings, fresh) = {
                let mut d = self.lock();
                let findings = std::mem::take(&mut d.pending);
                let fresh = DetectorsStatus {
                    categories: d.errors.categories().to_vec(),
                    errors: d.errors.stats(),
                    brute_force: d.brute_force.stats(),
                    pending: 0,
                    held: d.held.len(),
                    refused: d.refused,
                    infrastructure_suppressed: d.infrastructure_suppressed,
                };
                (findings, fresh)
            };
            let m = &metrics;
            m.error_lines.inc_by(fresh.errors.errors.saturating_sub(last.errors.errors));
            m.auth_failures.inc_by(fresh.brute_force.failures.saturating_sub(last.brute_force.failures));
            *status.lock() = fresh.clone();
            last = fresh;
            if !findings.is_empty()
                && let Err(e) = outbox.submit(findings).await
            {
                tracing::error!(error = %e, "cannot spool findings from logs");
            }
            if stopping {
                return;
            }
        }
    }
}

/// Most source addresses a snapshot lists.
const SNAPSHOT_SOURCES: usize = 20;

impl LogDetectors {
    /// The `error_counts` section of a snapshot: error lines per category
    /// in the classifier's window, summed over the workloads `selector`
    /// names (`app=<name>`, the label the findings carry) or over all, as
    /// plain keys (`database`, `timeout`, ..., `errors`) so that nodes'
    /// answers add up and runbook conditions read them directly.
    pub fn error_counts(&self, selector: Option<&str>, evidence: &mut BTreeMap<String, String>) -> Result<(), String> {
        let name = match selector.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.strip_prefix("app=").map(str::trim).filter(|n| !n.is_empty()).ok_or_else(|| {
                format!("selector `{s}`: error counts are kept per workload; name one as app=<name>")
            })?),
        };
        let mut d = self.lock();
        let workloads = d.errors.counts(name, now());
        let categories = d.errors.categories().to_vec();
        let mut totals = vec![0u64; categories.len()];
        for w in &workloads {
            for (total, n) in totals.iter_mut().zip(&w.by_category) {
                *total += n;
            }
        }
        for (category, total) in categories.iter().zip(&totals) {
            evidence.insert(category.clone(), total.to_string());
        }
        evidence.insert("errors".into(), totals.iter().sum::<u64>().to_string());
        evidence.insert("error_counts.workloads".into(), workloads.len().to_string());
        evidence.insert("error_counts.window".into(), remedy_shared::config::format_duration(d.errors.window()));
        Ok(())
    }

    /// The `auth_failures` section of a snapshot: failed logins per source
    /// address in the detector's window, the most active first.
    pub fn auth_failures(&self, evidence: &mut BTreeMap<String, String>) {
        let mut d = self.lock();
        let sources = d.brute_force.failures_by_source(now());
        let total: u64 = sources.iter().map(|(_, n)| n).sum();
        evidence.insert("auth_failures.total".into(), total.to_string());
        evidence.insert("auth_failures.sources".into(), sources.len().to_string());
        for (ip, n) in sources.iter().take(SNAPSHOT_SOURCES) {
            evidence.insert(format!("auth_failures.{ip}"), n.to_string());
        }
    }
}

/// Feeds each line to both detectors; refuses lines (the tailer keeps them)
/// while findings wait for the spool.
#[derive(Debug)]
pub struct DetectorSink {
    detectors: LogDetectors,
    accepted: Counter,
}

impl LineSink for DetectorSink {
    fn accept(&mut self, line: LogLine) -> Result<(), LogLine> {
        let mut d = self.detectors.lock();
        if d.pending.len() >= MAX_PENDING {
            d.refused += 1;
            return Err(line);
        }
        let seen = LineRef {
            namespace: line.source.namespace.as_deref(),
            pod: line.source.pod.as_deref(),
            container: line.source.container.as_deref(),
            file: (line.source.kind == SourceKind::Plain).then(|| line.source.path.to_str()).flatten(),
            timestamp: line.timestamp,
            message: &line.message,
        };
        let at = now();
        self.accepted.inc();
        let errors = d.errors.observe(&seen, at);
        let brute_force = d.brute_force.observe(&seen, at);
        let waiting = d.pending.len();
        d.queue(errors.into_iter().chain(brute_force), &self.detectors.own);
        if d.pending.len() > waiting {
            drop(d);
            self.detectors.raised.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use remedy_shared::finding::{FindingKind, FindingState};

    use super::*;
    use crate::logs::LogSource;

    fn line(source: &Arc<LogSource>, message: &str) -> LogLine {
        LogLine { source: source.clone(), timestamp: None, stream: None, message: message.to_owned(), cut: false }
    }

    #[test]
    fn lines_raise_findings_and_a_backlog_refuses_lines_without_losing_them() {
        let errors = ClassifierConfig { raise_at: 3, clear_below: 1, ..ClassifierConfig::default() };
        let detectors = LogDetectors::new(errors, BruteForceConfig::default()).unwrap();
        let mut sink = detectors.sink(Counter::default());
        let source = Arc::new(LogSource {
            kind: SourceKind::Cri,
            path: PathBuf::from("/var/log/pods/prod_api-7d9f8b6c5d-x2x4k_u/app/0.log"),
            namespace: Some("prod".into()),
            pod: Some("api-7d9f8b6c5d-x2x4k".into()),
            container: Some("app".into()),
        });
        for _ in 0..3 {
            assert!(sink.accept(line(&source, "level=error msg=\"database connection refused\"")).is_ok());
        }
        let pending = std::mem::take(&mut detectors.lock().pending);
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!((pending[0].kind, pending[0].state), (FindingKind::HighErrorRate, FindingState::Active));
        assert_eq!(pending[0].target, "deployment/prod/api");
        assert_eq!(pending[0].evidence.get("database").map(String::as_str), Some("3"));

        // What a snapshot of this node says: the workload's counts under
        // plain category keys, selected by its app label.
        let mut evidence = BTreeMap::new();
        detectors.error_counts(Some("app=api"), &mut evidence).unwrap();
        assert_eq!((evidence["database"].as_str(), evidence["errors"].as_str()), ("3", "3"), "{evidence:?}");
        let mut none = BTreeMap::new();
        detectors.error_counts(Some("app=other"), &mut none).unwrap();
        assert_eq!(none["errors"], "0");
        let err = detectors.error_counts(Some("tier=web"), &mut none).unwrap_err();
        assert!(err.contains("app=<name>"), "{err}");

        detectors.lock().pending = vec![pending[0].clone(); MAX_PENDING];
        let refused = sink.accept(line(&source, "hello")).unwrap_err();
        assert_eq!(refused.message, "hello", "the refused line comes back whole");
        assert_eq!(detectors.lock().refused, 1);
    }

    #[test]
    fn brute_force_waits_for_the_clusters_view_and_never_names_its_infrastructure() {
        let own = OwnInfrastructure::default();
        let config = BruteForceConfig { raise_at: 3, ..BruteForceConfig::default() };
        let detectors = LogDetectors::new(ClassifierConfig::default(), config).unwrap().protecting(own.clone());
        let mut sink = detectors.sink(Counter::default());
        let source = Arc::new(LogSource {
            kind: SourceKind::Plain,
            path: PathBuf::from("/var/log/auth.log"),
            namespace: None,
            pod: None,
            container: None,
        });
        for n in 0..3 {
            for from in ["10.84.0.2", "203.0.113.9"] {
                let text = format!("sshd[{n}]: Failed password for deploy from {from} port {} ssh2", 40000 + n);
                assert!(sink.accept(line(&source, &text)).is_ok());
            }
        }
        {
            let d = detectors.lock();
            assert!(d.pending.is_empty(), "nothing is reported before the coordinator's view: {:?}", d.pending);
            assert_eq!(d.held.len(), 2);
        }
        // The coordinator says 10.84.0.2 is another node.
        own.set_cluster(["10.84.0.2"]);
        detectors.lock().queue(Vec::new(), &own);
        let d = detectors.lock();
        let sources: Vec<&str> = d.pending.iter().map(|f| f.labels["source_ip"].as_str()).collect();
        assert_eq!(sources, vec!["203.0.113.9"]);
        assert!(d.held.is_empty());
        assert_eq!(d.infrastructure_suppressed, 1);
    }

    #[test]
    fn held_findings_are_bounded_and_the_overflow_goes_on_rather_than_stopping_the_logs() {
        let own = OwnInfrastructure::default();
        let detectors = LogDetectors::new(ClassifierConfig::default(), BruteForceConfig::default())
            .unwrap()
            .protecting(own.clone());
        let finding = |ip: &str| Finding {
            kind: FindingKind::BruteForce,
            severity: remedy_shared::finding::Severity::Warning,
            state: FindingState::Active,
            target: format!("ip/{ip}"),
            labels: BTreeMap::from([("source_ip".to_owned(), ip.to_owned())]),
            evidence: BTreeMap::new(),
            summary: String::new(),
            first_seen: remedy_shared::Timestamp::from_millis(0),
            last_seen: remedy_shared::Timestamp::from_millis(0),
            expires_at: None,
        };
        let mut d = detectors.lock();
        d.queue((0..MAX_HELD).map(|i| finding(&format!("203.0.{}.{}", i / 256, i % 256))), &own);
        assert_eq!((d.held.len(), d.pending.len()), (MAX_HELD, 0));
        d.queue([finding("198.51.100.1")], &own);
        assert_eq!((d.held.len(), d.pending.len()), (MAX_HELD, 1), "past the bound, it goes on");
    }
}
