//! Directives from the coordinator: what this agent runs on its node when
//! asked, and the one result each directive gets back.
//!
//! [`SNAPSHOT`] answers with what the agent sees on its node;
//! [`RESTART_POD`] restarts one named pod of its node (see
//! [`crate::pods::directive`] for its parameters, checks and outcomes);
//! [`REACH`] says whether this node reaches a server (see
//! [`crate::reach`]). The IP blocking and local remediation directives are
//! announced while they work here.
//!
//! The stream loop hands every directive to the [`Executor`] and goes back
//! to its findings and heartbeats: directives run in their own tasks, at most
//! [`MAX_RUNNING`] at a time, and a flood beyond [`MAX_ADMITTED`] is refused
//! rather than queued without end. Each directive is answered exactly once
//! (done, refused, unsupported, or timed out at its deadline); a directive
//! id seen before is not run again, its result is sent again if it is known.
//! Results go through a channel that outlives a stream, so a result finished
//! while the agent reconnects is sent on the next stream.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use remedy_proto::v1 as pb;
use remedy_shared::Timestamp;
use remedy_shared::runbook::SnapshotSection;
use remedy_shared::signals::ResourceSnapshot;
use tokio::sync::{Semaphore, mpsc};

use crate::clock::now;
use crate::logs::detect::LogDetectors;
use crate::nft::directive::{self as blocking, BLOCK_IP, LIST_BLOCKS, UNBLOCK_IP};
use crate::pods::directive::{RESTART_POD, restart_pod};
use crate::reach::{REACH, reach};
use crate::state::Shared;

/// The directive that answers with what the agent sees on its node.
pub const SNAPSHOT: &str = "snapshot";
/// Every directive this agent executes, announced in its hello; the
/// coordinator sends no other. `restart_pod` is announced with pod watching
/// off too, so that the coordinator hears why it cannot run here rather
/// than that it is unknown.
pub const CAPABILITIES: &[&str] = &[SNAPSHOT, RESTART_POD, REACH];

/// What the hello announces: [`CAPABILITIES`], and the IP blocking
/// directives only while blocking is on and nft works here.
pub fn capabilities(shared: &Shared) -> Vec<String> {
    let blocking = shared.blocker().map(|_| blocking::DIRECTIVES).unwrap_or_default();
    let local = crate::local::capabilities(shared);
    CAPABILITIES.iter().chain(blocking).chain(local.iter()).map(|c| (*c).to_owned()).collect()
}

/// Directives executing at once.
const MAX_RUNNING: usize = 4;
/// Directives executing or waiting for their turn; beyond it they are
/// refused at once, so a coordinator cannot make the agent hold an
/// unbounded queue.
const MAX_ADMITTED: usize = 64;
/// The deadline of a directive that names none (0 on the wire).
const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// Directive ids remembered, so a repeated id is recognised.
const REMEMBERED: usize = 256;
/// Results finished and not yet on a stream.
const RESULTS_QUEUE: usize = 64;
/// Sections of a snapshot, in the order their names are listed to people.
const SECTIONS: &[SnapshotSection] = &[
    SnapshotSection::Resources,
    SnapshotSection::ErrorCounts,
    SnapshotSection::AuthFailures,
    SnapshotSection::Processes,
    SnapshotSection::Pods,
];
/// What a section this agent cannot produce says instead of a figure.
const NOT_COLLECTED: &str = "not collected by this agent version";
const LOGS_OFF: &str = "log tailing is off on this agent (logs.enabled: false)";

/// Runs directives off the stream loop. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    running: Arc<Semaphore>,
    admitted: AtomicUsize,
    seen: Mutex<Seen>,
    results: mpsc::Sender<pb::ActionResult>,
}

/// Directive ids seen lately: running (`None`) or finished with a result.
#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<String>,
    by_id: HashMap<String, Option<pb::ActionResult>>,
}

impl Seen {
    fn start(&mut self, id: &str) -> Option<Option<pb::ActionResult>> {
        if let Some(known) = self.by_id.get(id) {
            return Some(known.clone());
        }
        self.by_id.insert(id.to_owned(), None);
        self.order.push_back(id.to_owned());
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
        None
    }

    fn finish(&mut self, result: &pb::ActionResult) {
        if let Some(slot) = self.by_id.get_mut(&result.directive_id) {
            *slot = Some(result.clone());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A map of ids stays usable across a panic elsewhere.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a directive came to, before it is dated and addressed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub(crate) outcome: pb::ActionOutcome,
    pub(crate) message: String,
    pub(crate) evidence: BTreeMap<String, String>,
}

impl Reply {
    pub(crate) fn new(outcome: pb::ActionOutcome, message: impl Into<String>) -> Reply {
        Reply { outcome, message: message.into(), evidence: BTreeMap::new() }
    }

    fn into_result(self, directive_id: &str) -> pb::ActionResult {
        pb::ActionResult {
            directive_id: directive_id.to_owned(),
            outcome: self.outcome as i32,
            message: self.message,
            evidence: self.evidence.into_iter().collect(),
            finished_at_ms: now().as_millis(),
        }
    }
}

impl Executor {
    /// An executor reading the node through `shared`, and the receiving end
    /// of its results, which the stream drains onto whichever stream is open.
    pub fn new(shared: Arc<Shared>) -> (Executor, mpsc::Receiver<pb::ActionResult>) {
        let (results, rx) = mpsc::channel(RESULTS_QUEUE);
        let inner = Inner {
            shared,
            running: Arc::new(Semaphore::new(MAX_RUNNING)),
            admitted: AtomicUsize::new(0),
            seen: Mutex::new(Seen::default()),
            results,
        };
        (Executor { inner: Arc::new(inner) }, rx)
    }

    /// Takes a directive; returns at once. Its result arrives on the
    /// results channel.
    pub fn submit(&self, directive: pb::Directive) {
        let id = directive.id.clone();
        if !id.is_empty() {
            match lock(&self.inner.seen).start(&id) {
                None => {}
                Some(None) => {
                    tracing::info!(directive = %id, "directive received again while it runs; its result will follow");
                    return;
                }
                Some(Some(result)) => {
                    tracing::info!(directive = %id, "directive received again; sending its result again");
                    self.answer(result);
                    return;
                }
            }
        }
        if self.inner.admitted.fetch_add(1, Ordering::SeqCst) >= MAX_ADMITTED {
            self.inner.admitted.fetch_sub(1, Ordering::SeqCst);
            let reply = Reply::new(
                pb::ActionOutcome::Refused,
                format!("this agent is busy: {MAX_ADMITTED} directives are running or waiting"),
            );
            self.finish(reply.into_result(&id));
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let reply = me.run(directive).await;
            me.inner.admitted.fetch_sub(1, Ordering::SeqCst);
            me.finish(reply.into_result(&id));
        });
    }

    /// Runs one directive within its deadline.
    async fn run(&self, directive: pb::Directive) -> Reply {
        let left = if directive.deadline_ms == 0 {
            DEFAULT_DEADLINE
        } else {
            Timestamp::from_millis(directive.deadline_ms).since(now())
        };
        if left.is_zero() {
            return Reply::new(pb::ActionOutcome::TimedOut, "the deadline had passed when the directive arrived");
        }
        let running = self.inner.running.clone();
        let shared = self.inner.shared.clone();
        let work = async move {
            let Ok(_permit) = running.acquire_owned().await else {
                return Reply::new(pb::ActionOutcome::Failed, "the agent is stopping");
            };
            // A panic still gets its one answer. Run here rather than in a
            // task of its own, so the deadline below stops the work too.
            AssertUnwindSafe(execute(shared, directive))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Reply::new(pb::ActionOutcome::Failed, "the directive failed: it panicked"))
        };
        match tokio::time::timeout(left, work).await {
            Ok(reply) => reply,
            Err(_) => Reply::new(pb::ActionOutcome::TimedOut, format!("not finished before its deadline ({left:?})")),
        }
    }

    fn finish(&self, result: pb::ActionResult) {
        tracing::info!(
            directive = %result.directive_id,
            outcome = result.outcome().as_str_name(),
            message = %result.message,
            "directive answered"
        );
        lock(&self.inner.seen).finish(&result);
        self.answer(result);
    }

    /// Queues a result for the stream. The queue is drained while a stream
    /// is open; while none is, this waits in its own task.
    fn answer(&self, result: pb::ActionResult) {
        let results = self.inner.results.clone();
        tokio::spawn(async move {
            if results.send(result).await.is_err() {
                tracing::debug!("the agent is stopping: a directive result is dropped");
            }
        });
    }
}

/// Executes `directive` with the node as `shared` sees it.
async fn execute(shared: Arc<Shared>, directive: pb::Directive) -> Reply {
    match directive.action.as_str() {
        SNAPSHOT => {
            // On a blocking thread: sections that read the disk must not
            // stall the runtime.
            let job = tokio::task::spawn_blocking(move || {
                let latest = shared.status().snapshot.clone();
                snapshot(&directive.params, latest.as_ref(), shared.log_detectors(), now())
            });
            job.await.unwrap_or_else(|e| Reply::new(pb::ActionOutcome::Failed, format!("the directive failed: {e}")))
        }
        RESTART_POD => restart_pod(&shared, &directive.id, &directive.params, directive.dry_run).await,
        // Changes nothing, so it runs in a dry run too.
        REACH => reach(&directive.params).await,
        BLOCK_IP | UNBLOCK_IP | LIST_BLOCKS => {
            blocking::run(&shared, &directive.action, &directive.id, &directive.params, directive.dry_run).await
        }
        crate::local::LOG_CLEANUP | crate::local::GC_NUDGE => {
            crate::local::run(&shared, &directive.action, &directive.id, &directive.params, directive.dry_run).await
        }
        other => Reply::new(
            pb::ActionOutcome::Unsupported,
            format!("this agent cannot run `{other}`; it runs: {}", capabilities(&shared).join(", ")),
        ),
    }
}

/// What a snapshot directive asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SnapshotParams {
    sections: BTreeSet<SnapshotSection>,
    /// For counts over time (error counts, authentication failures), which
    /// this agent does not collect yet; checked so a typo is caught now.
    window: Option<Duration>,
    /// For per-pod sections; accepted as given.
    selector: Option<String>,
}

fn section_name(section: SnapshotSection) -> String {
    match serde_json::to_value(section) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{section:?}"),
    }
}

fn section_names() -> String {
    SECTIONS.iter().map(|s| section_name(*s)).collect::<Vec<_>>().join(", ")
}

/// Reads a snapshot's parameters; the error names the parameter at fault.
fn snapshot_params(params: &HashMap<String, String>) -> Result<SnapshotParams, String> {
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    if let Some(unknown) = keys.into_iter().find(|k| !matches!(k.as_str(), "include" | "window" | "selector")) {
        return Err(format!("unknown parameter `{unknown}` (snapshot takes include, window, selector)"));
    }
    let include = params
        .get("include")
        .ok_or_else(|| format!("include: missing; name sections, comma-separated, from {}", section_names()))?;
    let mut sections = BTreeSet::new();
    for name in include.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let section = serde_json::from_value(serde_json::Value::String(name.to_owned()))
            .map_err(|_| format!("include: unknown section `{name}` (expected {})", section_names()))?;
        sections.insert(section);
    }
    if sections.is_empty() {
        return Err(format!("include: names no section; name some of {}", section_names()));
    }
    let window = params
        .get("window")
        .map(|w| remedy_shared::config::parse_duration(w).map_err(|e| format!("window: {e}")))
        .transpose()?;
    Ok(SnapshotParams { sections, window, selector: params.get("selector").cloned() })
}

/// Answers a snapshot from the latest resource sample. Reading changes
/// nothing, so a dry run reads too. Sections this agent does not collect
/// say so under `unavailable.<section>`; no figure is ever made up.
fn snapshot(
    params: &HashMap<String, String>,
    latest: Option<&ResourceSnapshot>,
    logs: Option<&LogDetectors>,
    now: Timestamp,
) -> Reply {
    let wanted = match snapshot_params(params) {
        Ok(p) => p,
        Err(e) => return Reply::new(pb::ActionOutcome::Refused, e),
    };
    let mut evidence = BTreeMap::new();
    let mut missing = Vec::new();
    for section in &wanted.sections {
        let gap = match (section, latest) {
            (SnapshotSection::Resources, Some(s)) => {
                resources(s, now, &mut evidence);
                None
            }
            (SnapshotSection::Processes, Some(s)) if !s.top_processes.is_empty() => {
                processes(s, &mut evidence);
                None
            }
            (SnapshotSection::Processes, Some(_)) => Some("this agent samples no processes (top_processes is 0)"),
            (SnapshotSection::Resources | SnapshotSection::Processes, None) => Some("no resource sample taken yet"),
            (SnapshotSection::ErrorCounts, _) => match logs {
                None => Some(LOGS_OFF),
                Some(logs) => match logs.error_counts(wanted.selector.as_deref(), &mut evidence) {
                    Ok(()) => None,
                    Err(e) => return Reply::new(pb::ActionOutcome::Refused, e),
                },
            },
            (SnapshotSection::AuthFailures, _) => match logs {
                None => Some(LOGS_OFF),
                Some(logs) => {
                    logs.auth_failures(&mut evidence);
                    None
                }
            },
            (SnapshotSection::Pods, _) => Some(NOT_COLLECTED),
        };
        if let Some(why) = gap {
            let name = section_name(*section);
            evidence.insert(format!("unavailable.{name}"), why.to_owned());
            missing.push(name);
        }
    }
    let asked: Vec<String> = wanted.sections.iter().map(|s| section_name(*s)).collect();
    let mut message = format!("snapshot of {}", asked.join(", "));
    if !missing.is_empty() {
        message.push_str(&format!("; not available: {}", missing.join(", ")));
    }
    Reply { outcome: pb::ActionOutcome::Succeeded, message, evidence }
}

fn finite(value: f64, decimals: usize) -> Option<String> {
    value.is_finite().then(|| format!("{value:.decimals$}"))
}

/// CPU, memory, load and disks: flat keys, so a combined snapshot reads as
/// `steps.<id>.memory_percent`. Unknown figures (NaN) are left out.
fn resources(s: &ResourceSnapshot, now: Timestamp, evidence: &mut BTreeMap<String, String>) {
    let mut put = |key: String, value: Option<String>| {
        if let Some(v) = value {
            evidence.insert(key, v);
        }
    };
    put("sampled_at".into(), Some(s.taken_at.to_string()));
    put("sample_age_ms".into(), Some(now.since(s.taken_at).as_millis().to_string()));
    put("cpu_percent".into(), finite(s.cpu_percent, 1));
    put("memory_used_bytes".into(), Some(s.memory_used_bytes.to_string()));
    put("memory_total_bytes".into(), Some(s.memory_total_bytes.to_string()));
    put("memory_percent".into(), finite(s.memory_percent(), 1));
    for (i, window) in ["load1", "load5", "load15"].into_iter().enumerate() {
        put(window.into(), s.load.get(i).and_then(|l| finite(*l, 2)));
    }
    let mut worst: Option<f64> = None;
    for d in &s.disks {
        let used = d.used_percent();
        if used.is_finite() {
            worst = Some(worst.map_or(used, |w| w.max(used)));
        }
        put(format!("disk.{}.used_percent", d.mount_point), finite(used, 1));
        put(format!("disk.{}.available_bytes", d.mount_point), Some(d.available_bytes.to_string()));
        put(format!("disk.{}.total_bytes", d.mount_point), Some(d.total_bytes.to_string()));
    }
    put("disk_percent".into(), worst.and_then(|w| finite(w, 1)));
}

/// The hottest processes, by CPU: `processes.<rank>.*`, rank from 1.
fn processes(s: &ResourceSnapshot, evidence: &mut BTreeMap<String, String>) {
    let mut hot = s.top_processes.clone();
    hot.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent).then(b.memory_bytes.cmp(&a.memory_bytes)));
    for (rank, p) in hot.iter().enumerate().map(|(i, p)| (i + 1, p)) {
        evidence.insert(format!("processes.{rank}.process"), format!("{}[{}]", p.name, p.pid));
        if let Some(cpu) = finite(p.cpu_percent, 1) {
            evidence.insert(format!("processes.{rank}.cpu_percent"), cpu);
        }
        evidence.insert(format!("processes.{rank}.memory_bytes"), p.memory_bytes.to_string());
    }
}

#[cfg(test)]
mod tests {
    use remedy_shared::signals::{DiskUsage, ProcessUsage};

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sample() -> ResourceSnapshot {
        ResourceSnapshot {
            taken_at: Timestamp::from_millis(1_000),
            cpu_percent: 37.25,
            memory_used_bytes: 3 * 1024,
            memory_total_bytes: 4 * 1024,
            load: [1.5, f64::NAN, 0.25],
            disks: vec![
                DiskUsage { mount_point: "/".into(), total_bytes: 100, available_bytes: 40 },
                DiskUsage { mount_point: "/var".into(), total_bytes: 200, available_bytes: 10 },
            ],
            top_processes: vec![
                ProcessUsage { pid: 7, name: "postgres".into(), cpu_percent: 5.0, memory_bytes: 900 },
                ProcessUsage { pid: 42, name: "java".into(), cpu_percent: 80.0, memory_bytes: 100 },
            ],
        }
    }

    #[test]
    fn resources_come_from_the_latest_sample_with_unknown_figures_left_out() {
        let reply =
            snapshot(&params(&[("include", "resources")]), Some(&sample()), None, Timestamp::from_millis(1_500));
        assert_eq!(reply.outcome, pb::ActionOutcome::Succeeded, "{reply:?}");
        let e = &reply.evidence;
        assert_eq!(e["cpu_percent"], "37.2");
        assert_eq!(e["memory_percent"], "75.0");
        assert_eq!(e["memory_total_bytes"], "4096");
        assert_eq!(e["load1"], "1.50");
        assert!(!e.contains_key("load5"), "an unknown load is left out, not NaN");
        assert_eq!(e["disk./var.used_percent"], "95.0");
        assert_eq!(e["disk_percent"], "95.0", "the fullest disk");
        assert_eq!(e["sample_age_ms"], "500");
        assert_eq!(reply.message, "snapshot of resources");
    }

    #[test]
    fn sections_not_collected_say_so_instead_of_a_figure() {
        // Without log tailing there are no error counts to give.
        let reply = snapshot(
            &params(&[("include", "error_counts, resources,pods"), ("window", "10m"), ("selector", "app=api")]),
            Some(&sample()),
            None,
            Timestamp::from_millis(1_000),
        );
        assert_eq!(reply.outcome, pb::ActionOutcome::Succeeded);
        assert_eq!(reply.evidence["unavailable.error_counts"], LOGS_OFF);
        assert_eq!(reply.evidence["unavailable.pods"], NOT_COLLECTED);
        assert!(reply.evidence.contains_key("cpu_percent"));
        assert!(!reply.evidence.keys().any(|k| k.starts_with("database")), "no made-up counts");
        assert_eq!(reply.message, "snapshot of resources, error_counts, pods; not available: error_counts, pods");

        let before_first_sample = snapshot(&params(&[("include", "resources")]), None, None, Timestamp::from_millis(1));
        assert_eq!(before_first_sample.evidence["unavailable.resources"], "no resource sample taken yet");
    }

    #[test]
    fn processes_are_ranked_by_cpu() {
        let reply =
            snapshot(&params(&[("include", "processes")]), Some(&sample()), None, Timestamp::from_millis(1_000));
        assert_eq!(reply.evidence["processes.1.process"], "java[42]");
        assert_eq!(reply.evidence["processes.1.cpu_percent"], "80.0");
        assert_eq!(reply.evidence["processes.2.memory_bytes"], "900");
        let none = ResourceSnapshot { top_processes: Vec::new(), ..sample() };
        let reply = snapshot(&params(&[("include", "processes")]), Some(&none), None, Timestamp::from_millis(1_000));
        assert!(reply.evidence["unavailable.processes"].contains("top_processes is 0"));
    }

    #[test]
    fn bad_parameters_are_refused_naming_the_parameter() {
        let cases = [
            (params(&[]), "include: missing"),
            (params(&[("include", " , ")]), "include: names no section"),
            (params(&[("include", "resources,disks")]), "include: unknown section `disks`"),
            (params(&[("include", "resources"), ("window", "ten minutes")]), "window: invalid duration"),
            (params(&[("include", "resources"), ("force", "yes")]), "unknown parameter `force`"),
        ];
        for (p, expected) in cases {
            let reply = snapshot(&p, Some(&sample()), None, Timestamp::from_millis(1));
            assert_eq!(reply.outcome, pb::ActionOutcome::Refused, "{p:?}");
            assert!(reply.message.starts_with(expected), "{p:?}: {}", reply.message);
        }
    }

    #[test]
    fn repeated_ids_are_recognised_within_a_bounded_memory() {
        let mut seen = Seen::default();
        assert_eq!(seen.start("d1"), None);
        assert_eq!(seen.start("d1"), Some(None), "running");
        let result = Reply::new(pb::ActionOutcome::Succeeded, "ok").into_result("d1");
        seen.finish(&result);
        assert_eq!(seen.start("d1"), Some(Some(result)));
        for i in 0..REMEMBERED {
            seen.start(&i.to_string());
        }
        assert_eq!(seen.start("d1"), None, "forgotten after {REMEMBERED} newer ids");
    }

    fn executor() -> (Executor, mpsc::Receiver<pb::ActionResult>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let spool = crate::spool::Spool::open(dir.path(), 100).expect("open a spool");
        let shared = Shared::new(
            "agent-1".into(),
            "node-1".into(),
            "http://127.0.0.1:1".into(),
            spool,
            crate::metrics::Metrics::new(),
            now(),
        );
        shared.status().snapshot = Some(sample());
        let (executor, results) = Executor::new(shared);
        (executor, results, dir)
    }

    fn directive(id: &str, action: &str, include: &str, deadline_ms: i64) -> pb::Directive {
        pb::Directive {
            id: id.into(),
            action: action.into(),
            params: [("include".to_owned(), include.to_owned())].into(),
            deadline_ms,
            dry_run: true,
            incident_id: "INC-000001".into(),
            step_id: "s".into(),
        }
    }

    #[tokio::test]
    async fn every_directive_gets_exactly_one_result() {
        let (executor, mut results, _dir) = executor();
        let later = now().plus(Duration::from_secs(30)).as_millis();
        executor.submit(directive("d1", SNAPSHOT, "resources", later));
        executor.submit(directive("d2", "reboot", "", later));
        executor.submit(directive("d3", SNAPSHOT, "bogus", later));
        executor.submit(directive("d4", SNAPSHOT, "resources", 1));
        let mut got = BTreeMap::new();
        for _ in 0..4 {
            let r = results.recv().await.expect("a result");
            assert!(got.insert(r.directive_id.clone(), r).is_none(), "one result per directive");
        }
        assert_eq!(got["d1"].outcome(), pb::ActionOutcome::Succeeded);
        assert_eq!(got["d1"].evidence["memory_total_bytes"], "4096");
        assert_eq!(got["d2"].outcome(), pb::ActionOutcome::Unsupported);
        assert_eq!(got["d2"].message, "this agent cannot run `reboot`; it runs: snapshot, restart_pod, reach");
        assert_eq!(got["d3"].outcome(), pb::ActionOutcome::Refused);
        assert!(got["d3"].message.starts_with("include: unknown section `bogus`"), "{}", got["d3"].message);
        assert_eq!(got["d4"].outcome(), pb::ActionOutcome::TimedOut);
        assert!(got.values().all(|r| r.finished_at_ms > 0));

        // The same id again: not run again, its result sent again.
        executor.submit(directive("d1", SNAPSHOT, "bogus", later));
        let again = results.recv().await.expect("the result again");
        assert_eq!(again.directive_id, "d1");
        assert_eq!(again.outcome(), pb::ActionOutcome::Succeeded);
        assert!(results.try_recv().is_err(), "nothing more");
    }

    #[tokio::test]
    async fn restart_pod_is_dispatched_and_refused_without_pod_watching() {
        let (executor, mut results, _dir) = executor();
        executor.inner.shared.status().pods.client = "no Kubernetes client: not in a cluster".into();
        let later = now().plus(Duration::from_secs(30)).as_millis();
        let mut d = directive("r1", RESTART_POD, "", later);
        d.params = [("namespace".to_owned(), "shop".to_owned()), ("name".to_owned(), "api-1".to_owned())].into();
        executor.submit(d);
        let r = results.recv().await.expect("a result");
        assert_eq!(r.outcome(), pb::ActionOutcome::Refused, "{r:?}");
        assert!(r.message.contains("pod watching is off on this agent (no Kubernetes client"), "{}", r.message);
        assert_eq!(r.evidence["pod"], "shop/api-1");
    }

    #[tokio::test]
    async fn a_flood_beyond_the_admission_limit_is_refused_not_queued() {
        let (executor, mut results, _dir) = executor();
        // Hold every execution slot so admitted directives wait for their turn.
        let held = executor.inner.running.clone().acquire_many_owned(MAX_RUNNING as u32).await.expect("permits");
        let later = now().plus(Duration::from_secs(30)).as_millis();
        for i in 0..MAX_ADMITTED + 3 {
            executor.submit(directive(&format!("d{i}"), SNAPSHOT, "resources", later));
        }
        let mut refused = 0;
        for _ in 0..3 {
            let r = results.recv().await.expect("a refusal");
            assert_eq!(r.outcome(), pb::ActionOutcome::Refused, "{r:?}");
            assert!(r.message.starts_with("this agent is busy"), "{}", r.message);
            refused += 1;
        }
        drop(held);
        let mut succeeded = 0;
        for _ in 0..MAX_ADMITTED {
            let r = results.recv().await.expect("a result");
            assert_eq!(r.outcome(), pb::ActionOutcome::Succeeded, "{r:?}");
            succeeded += 1;
        }
        assert_eq!((refused, succeeded), (3, MAX_ADMITTED));
    }
}
