//! The runbook engine's benchmarks (`--only engine`).
//!
//! 1. **Webhook to first action.** A real `remedy-coordinator` (release,
//!    fresh data directory, persistence on) with a one-runbook catalog: an
//!    alert named `RemedyBenchAlert` starts a runbook whose first step is an
//!    `http` POST to a recording server in this process. For each of K
//!    distinct alerts (distinct label sets, so distinct fingerprints and
//!    incidents) the latency is from just before the webhook POST is sent to
//!    the moment the recording server receives the action's request: one
//!    process, one clock. Alerts go out spaced (open loop, a fixed rate the
//!    engine keeps up with), then in bursts. The peer, in the same run and
//!    on the same schedule: a minimal webhook receiver (axum) that decodes
//!    the same payload and at once issues the same POST, with no
//!    persistence and no rails.
//! 2. **Decisions per second, in process.** The pure path the engine takes
//!    under its lock for every action: `guard::decide` and, when allowed,
//!    `GuardState::record_executed`, on the policy the seed catalog implies
//!    (`Catalog::policy`), against the history that N active incidents
//!    leave (a few actions each, on distinct targets, within the windows),
//!    requests round-robin across the N incidents and the seed runbooks'
//!    steps.
//! 3. **Steps per second, end to end.** N manual runs
//!    (`AdminService.RunRunbook`) of a runbook of K `http` steps to the
//!    recording server, all started at once and so active together, against
//!    a fresh coordinator: steps decided, recorded (key before, result
//!    after) and executed per second, with the coordinator's store commits
//!    (`remedy_store_commits_total`) and CPU per step. Next to it, the peer:
//!    how many `fdatasync`s per second the disk under the temp directory
//!    takes, which bounds any engine that persists before acting.
//!
//! Every loop is bounded in count and time; the coordinators started here
//! stop when their handles drop.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use remedy_e2e::procs::http_request;
use remedy_e2e::world::alert_payload;
use remedy_proto::v1 as pb;
use remedy_proto::v1::admin_service_client::AdminServiceClient;
use remedy_shared::Timestamp;
use remedy_shared::catalog::{CatalogKind, peek_kind};
use remedy_shared::guard::{self, ActionRequest, Decision, GuardPolicy, GuardState};
use remedy_shared::incident::IncidentId;
use remedy_shared::run::{self, Catalog};
use remedy_shared::runbook::{ActionCatalog, Availability, Runbook, Step, load_runbook};
use tokio::sync::Semaphore;
use tonic::transport::Endpoint;

use super::{CoordinatorProc, Opts, clk_tck, cpu_secs, now_ms};

/// The alert name the bench runbook is triggered by.
const ALERT_NAME: &str = "RemedyBenchAlert";
/// The manual runbook of `--engine-steps` http steps.
const STEPS_RUNBOOK: &str = "BENCH-STEPS";
/// Budgets in the bench's configuration: evaluated on every decision, never
/// binding (the defaults, 60 and 20 actions an hour, would refuse all but
/// the first few dozen actions and then open a breaker).
const BENCH_BUDGET: u64 = 1_000_000;
/// Actions each simulated incident has already taken, in the decision bench.
const HISTORY_PER_INCIDENT: usize = 3;

// ---------------------------------------------------------------------------
// Knobs and figures

/// What the engine part measures.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EngineOpts {
    /// Spaced alerts.
    pub alerts: usize,
    /// Their rate, alerts per second.
    pub rate: f64,
    /// Bursts after the spaced phase.
    pub bursts: usize,
    /// Alerts per burst.
    pub burst_size: usize,
    /// Seconds between bursts.
    pub burst_gap_secs: f64,
    /// Active incidents for the in-process decision bench.
    pub incidents: Vec<usize>,
    /// Time measured per incident count.
    pub decide_secs: f64,
    /// Concurrent manual runs for the end-to-end bench.
    pub runs: Vec<usize>,
    /// Http steps per run.
    pub steps: usize,
    /// Longest an end-to-end measurement may take.
    pub run_secs: u64,
}

impl Default for EngineOpts {
    fn default() -> Self {
        EngineOpts {
            alerts: 500,
            rate: 20.0,
            bursts: 5,
            burst_size: 50,
            burst_gap_secs: 3.0,
            incidents: vec![1, 100, 1_000],
            decide_secs: 3.0,
            runs: vec![1, 100, 1_000],
            steps: 5,
            run_secs: 240,
        }
    }
}

impl EngineOpts {
    /// The `--quick` settings.
    pub fn quick() -> Self {
        EngineOpts {
            alerts: 100,
            rate: 20.0,
            bursts: 2,
            burst_size: 20,
            burst_gap_secs: 2.0,
            incidents: vec![1, 100],
            decide_secs: 0.5,
            runs: vec![1, 50],
            steps: 5,
            run_secs: 60,
        }
    }

    /// Checks the knobs.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.alerts > 20_000 || self.burst_size > 2_000 || self.bursts > 100 {
            bail!("--engine-alerts must be at most 20000, --engine-burst at most 2000, --engine-bursts at most 100");
        }
        if !(self.rate > 0.0 && self.rate <= 5_000.0) {
            bail!("--engine-rate must be between 0 and 5000 alerts per second");
        }
        if !(self.burst_gap_secs > 0.0 && self.burst_gap_secs <= 60.0) {
            bail!("--engine-burst-gap must be between 0 and 60 seconds");
        }
        if self.incidents.iter().any(|&n| n == 0 || n > 100_000) {
            bail!("--engine-incidents counts must be between 1 and 100000");
        }
        if self.runs.iter().any(|&n| n == 0 || n > 10_000) {
            bail!("--engine-runs counts must be between 1 and 10000");
        }
        if self.steps == 0 || self.steps > 100 {
            bail!("--engine-steps must be between 1 and 100");
        }
        if !(self.decide_secs > 0.0 && self.decide_secs <= 60.0) || self.run_secs == 0 || self.run_secs > 1_800 {
            bail!("--engine-decide-secs must be in (0, 60] and --engine-run-secs in [1, 1800]");
        }
        Ok(())
    }
}

/// Latencies of one phase, ours or the peer's.
#[derive(Debug, Clone, Default)]
pub(crate) struct Latencies {
    /// Alerts sent.
    sent: usize,
    /// Webhook POSTs not answered 200.
    refused: usize,
    /// Alerts whose action never arrived within the wait.
    lost: usize,
    /// Actions that arrived more than once.
    duplicates: usize,
    /// Webhook sent → action received, sorted.
    action: Vec<Duration>,
    /// Webhook sent → webhook answered, sorted.
    answer: Vec<Duration>,
    /// Wall time of the phase.
    secs: f64,
    /// The coordinator's store commits during the phase (ours only).
    commits: f64,
    /// The coordinator's CPU during the phase (ours only).
    cpu: f64,
}

/// One row of the decision bench.
#[derive(Debug, Clone)]
pub(crate) struct DecideFigures {
    incidents: usize,
    requests: usize,
    actions: usize,
    approvals: usize,
    state_bytes: usize,
    clone_encode_us: f64,
    decisions: u64,
    secs: f64,
    timer_ns: f64,
    outcomes: BTreeMap<String, u64>,
}

impl DecideFigures {
    fn per_sec(&self) -> f64 {
        if self.secs > 0.0 { self.decisions as f64 / self.secs } else { 0.0 }
    }
    fn ns_each(&self) -> f64 {
        if self.decisions > 0 { self.secs * 1e9 / self.decisions as f64 } else { 0.0 }
    }
}

/// One row of the end-to-end runs bench.
#[derive(Debug, Clone)]
pub(crate) struct RunFigures {
    runs: usize,
    steps_expected: usize,
    steps_done: usize,
    started_runs: usize,
    first_error: Option<String>,
    wall_secs: f64,
    steady_rate: f64,
    first_step_ms: f64,
    run_p50_ms: f64,
    run_p99_ms: f64,
    commits: f64,
    cpu: f64,
}

impl RunFigures {
    fn rate(&self) -> f64 {
        if self.wall_secs > 0.0 { self.steps_done as f64 / self.wall_secs } else { 0.0 }
    }
}

/// Everything the engine part measured; each part may have failed alone.
#[derive(Debug)]
pub(crate) struct EngineFigures {
    latency: Option<anyhow::Result<(Latencies, Latencies, Latencies, Latencies)>>,
    decide: Vec<anyhow::Result<DecideFigures>>,
    runs: Vec<anyhow::Result<RunFigures>>,
    fsync: Option<anyhow::Result<(u64, f64)>>,
    /// Per part: how busy the machine was, and how much of it was not us.
    busy: Vec<(&'static str, Busy)>,
}

/// CPU use of the whole machine over a part, and of this process with the
/// coordinators it started (reaped by the end of the part).
#[derive(Debug, Clone, Copy)]
struct Busy {
    secs: f64,
    machine: f64,
    ours: f64,
}

/// (seconds of CPU the whole machine spent busy, ours with reaped children).
fn cpu_now() -> (f64, f64) {
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned))
        .map(|line| {
            // cpu user nice system idle iowait irq softirq steal ...
            let f: Vec<f64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0.0)).collect();
            let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
            (at(0) + at(1) + at(2) + at(5) + at(6) + at(7)) / clk_tck()
        })
        .unwrap_or(0.0);
    (machine, cpu_secs(std::process::id(), true).unwrap_or(0.0))
}

fn busy_since(start: (Instant, (f64, f64))) -> Busy {
    let (m, o) = cpu_now();
    Busy { secs: start.0.elapsed().as_secs_f64(), machine: m - start.1.0, ours: o - start.1.1 }
}

impl EngineFigures {
    /// Whether every part measured succeeded.
    pub fn ok(&self) -> bool {
        self.latency.as_ref().is_none_or(|r| r.is_ok())
            && self.decide.iter().all(|r| r.is_ok())
            && self.runs.iter().all(|r| r.is_ok())
            && self.fsync.as_ref().is_none_or(|r| r.is_ok())
    }
}

// ---------------------------------------------------------------------------
// The recording server: where actions land, with the instant they landed

#[derive(Debug, Default)]
struct SinkShared {
    hits: Mutex<Vec<(String, Instant)>>,
}

/// A loopback HTTP server that answers 200 to anything and remembers each
/// request's path and arrival; stops when dropped.
#[derive(Debug)]
struct Sink {
    addr: SocketAddr,
    shared: Arc<SinkShared>,
    task: tokio::task::JoinHandle<()>,
}

async fn sink_answer(State(shared): State<Arc<SinkShared>>, uri: Uri, _body: Bytes) -> StatusCode {
    let at = Instant::now();
    shared.hits.lock().unwrap_or_else(|p| p.into_inner()).push((uri.path().to_owned(), at));
    StatusCode::OK
}

impl Sink {
    async fn start() -> anyhow::Result<Sink> {
        let shared = Arc::new(SinkShared::default());
        let app = Router::new().fallback(sink_answer).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("bind the recording server")?;
        let addr = listener.local_addr().context("the recording server's address")?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sink { addr, shared, task })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn count(&self, prefix: &str) -> usize {
        self.shared.hits.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|(p, _)| p.starts_with(prefix)).count()
    }

    /// Every request so far, and forgets them.
    fn take(&self) -> Vec<(String, Instant)> {
        std::mem::take(&mut *self.shared.hits.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// The peer: a webhook receiver that acts at once, with nothing in between

#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

async fn peer_receive(State(sink): State<SocketAddr>, body: Bytes) -> StatusCode {
    let Ok(notification) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let alerts = notification.get("alerts").and_then(|a| a.as_array()).cloned().unwrap_or_default();
    for alert in alerts {
        if alert.get("status").and_then(|s| s.as_str()) != Some("firing") {
            continue;
        }
        let Some(id) = alert.pointer("/labels/bench_id").and_then(|v| v.as_str()) else { continue };
        match http_request(sink, "POST", &format!("/act/{id}"), None).await {
            Ok((code, _)) if (200..300).contains(&code) => {}
            _ => return StatusCode::BAD_GATEWAY,
        }
    }
    StatusCode::OK
}

impl Peer {
    async fn start(sink: SocketAddr) -> anyhow::Result<Peer> {
        let app = Router::new().route("/api/v1/alertmanager", axum::routing::post(peer_receive)).with_state(sink);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("bind the peer receiver")?;
        let addr = listener.local_addr().context("the peer's address")?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Peer { addr, task })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// Catalog and configuration for the coordinator

/// Writes the bench catalog and configuration under `dir`; returns
/// (runbooks dir, config file).
fn write_catalog(dir: &Path, sink: &str, steps: usize) -> anyhow::Result<(PathBuf, PathBuf)> {
    let runbooks = dir.join("runbooks");
    std::fs::create_dir_all(&runbooks).context("create the catalog directory")?;
    let alert = format!(
        "apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {{id: BENCH-ALERT, title: Bench alert}}\npriority: P2\n\
         mttr_target: 30m\ntriggers:\n  alerts:\n    - name: {ALERT_NAME}\nsteps:\n  - id: act\n    \
         http: {{method: POST, url: '{sink}/act/{{{{ alert.labels.bench_id }}}}'}}\nescalation: {{policy: bench-chain}}\n"
    );
    std::fs::write(runbooks.join("bench-alert.yaml"), alert).context("write the alert runbook")?;
    let mut text = format!(
        "apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {{id: {STEPS_RUNBOOK}, title: Bench steps}}\npriority: P2\n\
         mttr_target: 30m\ntriggers: {{manual: true}}\nsteps:\n"
    );
    for j in 0..steps {
        let _ =
            writeln!(text, "  - id: s{j}\n    http: {{method: POST, url: '{sink}/step/{{{{ incident.id }}}}/s{j}'}}");
    }
    text.push_str("escalation: {policy: bench-chain}\n");
    std::fs::write(runbooks.join("bench-steps.yaml"), text).context("write the steps runbook")?;
    // Every check the runbooks ask for must hold at load, as the
    // coordinator would check it.
    for name in ["bench-alert.yaml", "bench-steps.yaml"] {
        let path = runbooks.join(name);
        let text = std::fs::read_to_string(&path).context("read back a bench runbook")?;
        load_runbook(name, &text, &ActionCatalog::this_release()).map_err(|e| anyhow!("{name} is invalid: {e}"))?;
    }
    remedy_e2e::runs::policy(&runbooks, "bench-chain");
    let secret = remedy_e2e::runs::webhook_secret(dir);
    let config = dir.join("coordinator.yaml");
    std::fs::write(
        &config,
        format!(
            "channels:\n  oncall: {{type: webhook, url: '{sink}/hooks/bench', secret_file: '{}'}}\n\
             guard_rails:\n  budgets:\n    - {{scope: global, window: 1h, max_actions: {BENCH_BUDGET}}}\n    \
             - {{scope: each_runbook, window: 1h, max_actions: {BENCH_BUDGET}}}\n",
            secret.display()
        ),
    )
    .context("write the coordinator configuration")?;
    Ok((runbooks, config))
}

async fn start_coordinator(runbooks: &Path, config: &Path) -> anyhow::Result<CoordinatorProc> {
    CoordinatorProc::start_with(&[
        "--config".into(),
        config.as_os_str().to_owned(),
        "--runbooks-dir".into(),
        runbooks.as_os_str().to_owned(),
    ])
    .await
}

// ---------------------------------------------------------------------------
// 1. Webhook to first action

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sends one alert per `(offset, id)` at its offset from now to `target`'s
/// webhook, then waits (bounded) for every action at `sink`.
async fn fire(target: SocketAddr, sink: &Sink, schedule: Vec<(Duration, String)>) -> anyhow::Result<Latencies> {
    let started_at = Timestamp::from_millis(now_ms()).to_string();
    let start = Instant::now();
    let last_offset = schedule.iter().map(|(o, _)| *o).max().unwrap_or_default();
    let mut tasks = tokio::task::JoinSet::new();
    for (offset, id) in schedule {
        let payload = alert_payload(ALERT_NAME, &[("bench_id", &id), ("severity", "warning")], "firing", &started_at);
        tasks.spawn(async move {
            tokio::time::sleep_until((start + offset).into()).await;
            let sent = Instant::now();
            // The coordinator takes only what its Alertmanager's token signs;
            // the peer ignores the header.
            let bearer = format!("Bearer {}", remedy_e2e::procs::ALERTMANAGER_TOKEN);
            let headers = [("Authorization", bearer.as_str())];
            let answer =
                remedy_e2e::procs::http_request_with(target, "POST", "/api/v1/alertmanager", &headers, Some(&payload))
                    .await;
            (id, sent, Instant::now(), answer.map(|(code, _)| code).unwrap_or(0))
        });
    }
    let mut sent = HashMap::new();
    let mut figures = Latencies::default();
    let limit = last_offset + Duration::from_secs(60);
    let joined = tokio::time::timeout(limit, async {
        while let Some(r) = tasks.join_next().await {
            if let Ok((id, at, answered, code)) = r {
                if code == 200 {
                    figures.answer.push(answered - at);
                } else {
                    figures.refused += 1;
                }
                sent.insert(id, at);
            }
        }
    })
    .await;
    if joined.is_err() {
        tasks.abort_all();
        bail!("the webhook POSTs did not all finish within {limit:?}");
    }
    figures.sent = sent.len();
    let expected = sent.len() - figures.refused;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.count("/act/") < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    figures.secs = start.elapsed().as_secs_f64();
    let mut seen: HashMap<String, Instant> = HashMap::new();
    for (path, at) in sink.take() {
        let Some(id) = path.strip_prefix("/act/") else { continue };
        if seen.insert(id.to_owned(), at).is_some() {
            figures.duplicates += 1;
        }
    }
    for (id, at) in &sent {
        match seen.get(id) {
            Some(received) => figures.action.push(received.saturating_duration_since(*at)),
            None => figures.lost += 1,
        }
    }
    figures.lost = figures.lost.saturating_sub(figures.refused);
    figures.action.sort_unstable();
    figures.answer.sort_unstable();
    Ok(figures)
}

fn spaced(opts: &EngineOpts, tag: &str) -> Vec<(Duration, String)> {
    let every = Duration::from_secs_f64(1.0 / opts.rate);
    (0..opts.alerts).map(|i| (every * i as u32, format!("{tag}-s{i}"))).collect()
}

fn bursts(opts: &EngineOpts, tag: &str) -> Vec<(Duration, String)> {
    let gap = Duration::from_secs_f64(opts.burst_gap_secs);
    (0..opts.bursts)
        .flat_map(|b| (0..opts.burst_size).map(move |j| (gap * b as u32, format!("{tag}-b{b}-{j}"))))
        .collect()
}

async fn measured_fire(
    coordinator: &CoordinatorProc,
    sink: &Sink,
    schedule: Vec<(Duration, String)>,
) -> anyhow::Result<Latencies> {
    let pid = coordinator.proc.pid();
    let commits0 = coordinator.metric("remedy_store_commits_total").await?;
    let cpu0 = cpu_secs(pid, false)?;
    let mut figures = fire(coordinator.http, sink, schedule).await?;
    figures.cpu = cpu_secs(pid, false)? - cpu0;
    figures.commits = coordinator.metric("remedy_store_commits_total").await? - commits0;
    Ok(figures)
}

async fn latency(
    opts: &EngineOpts,
    sink: &Sink,
    runbooks: &Path,
    config: &Path,
) -> anyhow::Result<(Latencies, Latencies, Latencies, Latencies)> {
    eprintln!(
        "remedy-bench: engine: webhook → first action, {} alerts at {}/s then {} bursts of {}",
        opts.alerts, opts.rate, opts.bursts, opts.burst_size
    );
    let mut coordinator = start_coordinator(runbooks, config).await?;
    sink.take();
    let ours_spaced = measured_fire(&coordinator, sink, spaced(opts, "ours")).await?;
    coordinator.proc.check_alive()?;
    let ours_bursts = measured_fire(&coordinator, sink, bursts(opts, "ours")).await?;
    coordinator.proc.check_alive()?;
    coordinator.proc.stop();

    eprintln!("remedy-bench: engine: the same schedule against the peer receiver");
    let peer = Peer::start(sink.addr).await?;
    sink.take();
    let peer_spaced = fire(peer.addr, sink, spaced(opts, "peer")).await?;
    let peer_bursts = fire(peer.addr, sink, bursts(opts, "peer")).await?;
    drop(peer);
    Ok((ours_spaced, ours_bursts, peer_spaced, peer_bursts))
}

// ---------------------------------------------------------------------------
// 2. Decisions per second, in process

/// The seed catalog, loaded and validated as the coordinator does.
fn seed_catalog() -> anyhow::Result<Vec<Runbook>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runbooks");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let actions = ActionCatalog::this_release();
    let mut out = Vec::new();
    for path in files {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {name}"))?;
        if peek_kind(&text).is_some_and(|kind| kind != CatalogKind::Runbook) {
            continue; // a communication template, beside the runbooks
        }
        let (runbook, _) = load_runbook(&name, &text, &actions).map_err(|e| anyhow!("{name}: {e}"))?;
        out.push(runbook);
    }
    if out.is_empty() {
        bail!("no runbooks in {}", dir.display());
    }
    Ok(out)
}

/// The request the engine would build for `step` of `runbook` in incident
/// `i`: the step's own kind, mode, destructiveness and approval, its
/// targets as `run::targets` names them, made distinct per incident
/// (addresses from 198.18.0.0/15, the benchmarking range); agent actions,
/// which the agent actuator resolves to connected agents, name one agent
/// per incident.
fn request(i: usize, runbook: &Runbook, step: &Step, actions: &ActionCatalog) -> ActionRequest {
    let mut targets = run::targets(&step.action);
    if run::agent_target(&step.action).is_some() {
        // The agent actuator names the connected agents; here, one per incident.
        targets.push(remedy_shared::guard::TargetRef::new("agent", format!("node-{i}")));
    }
    for t in &mut targets {
        match t.kind.as_str() {
            "ip" => t.name = format!("198.18.{}.{}", (i / 250) % 256, i % 250 + 1),
            "agent" => {}
            _ => t.name = format!("{}-{i}", t.name),
        }
    }
    let available = actions.availability(step.kind()) == Some(Availability::Now);
    ActionRequest {
        runbook_id: runbook.id().to_owned(),
        incident_id: IncidentId(i as u64 + 1),
        step_id: step.id.clone(),
        attempt: 1,
        action_kind: step.kind().as_str().to_owned(),
        targets,
        destructive: step.is_destructive(),
        requires_approval: step.requires_approval(&runbook.guard_rails),
        capacity: run::capacity(&step.action, None),
        population: None,
        trigger_still_holds: Some(true),
        mode: run::step_mode(guard::Mode::Live, runbook.guard_rails.mode, available),
        risk: None,
    }
}

/// What the engine does under its lock for one action (`Driver::weigh`).
fn engine_decide(policy: &GuardPolicy, state: &mut GuardState, request: &ActionRequest, at: Timestamp) -> Decision {
    let (decision, _events) = guard::decide(policy, state, request, at);
    if decision.is_allowed() || matches!(decision, Decision::WouldNeedApproval { .. }) {
        state.record_executed(request, at);
    }
    decision
}

fn decide_bench(runbooks: &[Runbook], incidents: usize, secs: f64) -> anyhow::Result<DecideFigures> {
    let actions = ActionCatalog::this_release();
    let mut base = GuardPolicy::default();
    for b in &mut base.budgets {
        b.max_actions = Some(BENCH_BUDGET);
    }
    let catalog = Catalog::new(runbooks.to_vec());
    let policy = catalog.policy(&base);
    let books = catalog.runbooks();
    // requests[i][s]: step s of incident i's runbook.
    let requests: Vec<Vec<ActionRequest>> = (0..incidents)
        .map(|i| {
            let r = &books[i % books.len()];
            r.steps.iter().map(|s| request(i, r, s, &actions)).collect()
        })
        .collect();
    let now = Timestamp::from_millis(now_ms());
    // History: each incident's first steps, spread over the last 50 minutes
    // (inside the 1 h budget and repeat windows; some inside cooldowns).
    let span = Duration::from_secs(50 * 60);
    let start = Timestamp::from_millis(now.as_millis() - i64::try_from(span.as_millis()).unwrap_or(0));
    let total = incidents * HISTORY_PER_INCIDENT;
    let mut pristine = GuardState::new();
    for j in 0..HISTORY_PER_INCIDENT {
        for (i, steps) in requests.iter().enumerate() {
            let k = (j * incidents + i) as u32;
            let at = start.plus(span * k / total.max(1) as u32);
            engine_decide(&policy, &mut pristine, &steps[j % steps.len()], at);
        }
    }
    let state_bytes = serde_json::to_vec(&pristine).context("encode the rails' memory")?.len();
    let reps = 20u32;
    let t = Instant::now();
    for _ in 0..reps {
        let copy = pristine.clone();
        std::hint::black_box(serde_json::to_vec(&copy).map(|v| v.len()).unwrap_or(0));
    }
    let clone_encode_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(reps);

    // The timer's own cost per timed round, included in the figures.
    let t = Instant::now();
    for _ in 0..10_000 {
        std::hint::black_box(Instant::now().elapsed());
    }
    let timer_ns = t.elapsed().as_secs_f64() * 1e9 / 10_000.0;

    // Rounds: restore the history, then one decision per incident (its
    // next step, a different one each round). Only the decisions are timed.
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut rails: Vec<&'static str> = Vec::with_capacity(incidents);
    let (mut decisions, mut timed) = (0u64, Duration::ZERO);
    let wall = Instant::now();
    let wall_limit = Duration::from_secs_f64(secs * 4.0 + 30.0);
    let at = now.plus(Duration::from_secs(60));
    let mut round = 0usize;
    while (timed.as_secs_f64() < secs || round < 3) && wall.elapsed() < wall_limit {
        let mut state = pristine.clone();
        rails.clear();
        let t = Instant::now();
        for steps in &requests {
            let r = &steps[(HISTORY_PER_INCIDENT + round) % steps.len()];
            let decision = engine_decide(&policy, &mut state, r, at);
            rails.push(match &decision {
                Decision::Allow | Decision::WouldAllow => decision.outcome(),
                other => other.rail().unwrap_or("?"),
            });
        }
        timed += t.elapsed();
        decisions += incidents as u64;
        for r in &rails {
            *outcomes.entry((*r).to_owned()).or_default() += 1;
        }
        round += 1;
    }
    Ok(DecideFigures {
        incidents,
        requests: requests.iter().map(Vec::len).sum(),
        actions: pristine.actions().len(),
        approvals: pristine.approvals().len(),
        state_bytes,
        clone_encode_us,
        decisions,
        secs: timed.as_secs_f64(),
        timer_ns,
        outcomes,
    })
}

// ---------------------------------------------------------------------------
// 3. Steps per second end to end, and the disk's fsync rate

async fn runs_bench(
    opts: &EngineOpts,
    sink: &Sink,
    runbooks: &Path,
    config: &Path,
    n: usize,
) -> anyhow::Result<RunFigures> {
    eprintln!("remedy-bench: engine: {n} concurrent manual runs of {} http steps", opts.steps);
    let mut coordinator = start_coordinator(runbooks, config).await?;
    let channel = Endpoint::from_shared(coordinator.url())?.connect().await.context("connect to the admin API")?;
    let admin = AdminServiceClient::new(channel);
    sink.take();
    let pid = coordinator.proc.pid();
    let commits0 = coordinator.metric("remedy_store_commits_total").await?;
    let cpu0 = cpu_secs(pid, false)?;
    let expected = n * opts.steps;
    let gate = Arc::new(Semaphore::new(64));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (mut admin, gate) = (admin.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            let sent = Instant::now();
            let request = pb::RunRunbookRequest {
                runbook_id: STEPS_RUNBOOK.to_owned(),
                params: Default::default(),
                dry_run: false,
                requested_by: "remedy-bench".to_owned(),
                drill: false,
            };
            let id = admin.run_runbook(request).await.map_err(|e| e.to_string())?.into_inner().incident_id;
            Ok::<_, String>((id, sent))
        });
    }
    let limit = Duration::from_secs(opts.run_secs);
    let mut started: HashMap<String, Instant> = HashMap::new();
    let mut first_error = None;
    while let Ok(Some(r)) = tokio::time::timeout(limit.saturating_sub(t0.elapsed()), tasks.join_next()).await {
        match r {
            Ok(Ok((id, sent))) => {
                started.insert(id, sent);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    tasks.abort_all();
    while t0.elapsed() < limit && sink.count("/step/") < started.len() * opts.steps {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What counts is what arrived by now: steps still running when the
    // limit passed are not counted.
    let hits: Vec<(String, Instant)> = sink.take().into_iter().filter(|(p, _)| p.starts_with("/step/")).collect();
    let cpu = cpu_secs(pid, false)? - cpu0;
    let commits = coordinator.metric("remedy_store_commits_total").await? - commits0;
    coordinator.proc.check_alive()?;
    coordinator.proc.stop();

    let mut times: Vec<Instant> = hits.iter().map(|(_, at)| *at).collect();
    times.sort_unstable();
    let mut last_of_run: HashMap<&str, Instant> = HashMap::new();
    for (path, at) in &hits {
        let id = path.trim_start_matches("/step/").split('/').next().unwrap_or("");
        let e = last_of_run.entry(id).or_insert(*at);
        *e = (*e).max(*at);
    }
    let mut run_secs: Vec<Duration> = started
        .iter()
        .filter_map(|(id, sent)| last_of_run.get(id.as_str()).map(|last| last.saturating_duration_since(*sent)))
        .collect();
    run_secs.sort_unstable();
    let wall_secs = times.last().map(|t| t.saturating_duration_since(t0).as_secs_f64()).unwrap_or(0.0);
    // The steady part: from the 10th to the 90th percentile step.
    let steady_rate = if times.len() >= 20 {
        let (a, b) = (times[times.len() / 10], times[times.len() * 9 / 10]);
        let span = b.saturating_duration_since(a).as_secs_f64();
        if span > 0.0 { (times.len() * 8 / 10) as f64 / span } else { 0.0 }
    } else {
        0.0
    };
    Ok(RunFigures {
        runs: n,
        steps_expected: expected,
        steps_done: times.len(),
        started_runs: started.len(),
        first_error,
        wall_secs,
        steady_rate,
        first_step_ms: times.first().map(|t| ms(t.saturating_duration_since(t0))).unwrap_or(0.0),
        run_p50_ms: ms(percentile(&run_secs, 0.50)),
        run_p99_ms: ms(percentile(&run_secs, 0.99)),
        commits,
        cpu,
    })
}

/// `fdatasync`s per second on a 4 KiB rewrite in `dir` for `secs`:
/// (count, seconds).
fn fsync_rate(dir: &Path, secs: f64) -> anyhow::Result<(u64, f64)> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fsync-probe");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    let page = vec![0x5au8; 4096];
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < secs && n < 1_000_000 {
        file.write_all_at(&page, (n % 16) * 4096).context("write the probe page")?;
        file.sync_data().context("fdatasync the probe file")?;
        n += 1;
    }
    let elapsed = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok((n, elapsed))
}

// ---------------------------------------------------------------------------
// The part

/// Runs the engine part: the parts `only` selects (`engine` for all, or
/// `engine-latency`, `engine-decide`, `engine-runs`).
pub(crate) async fn run(opts: &Opts) -> anyhow::Result<EngineFigures> {
    let e = &opts.engine;
    let wants = |sub: &str| opts.runs("engine") || opts.only.iter().any(|p| p == sub);
    let dir = tempfile::Builder::new().prefix("remedy-bench-engine-").tempdir().context("temp dir")?;
    let sink = Sink::start().await?;
    let (runbooks, config) = write_catalog(dir.path(), &sink.url(), e.steps)?;
    let mut figures =
        EngineFigures { latency: None, decide: Vec::new(), runs: Vec::new(), fsync: None, busy: Vec::new() };

    if wants("engine-latency") {
        let start = (Instant::now(), cpu_now());
        let r = latency(e, &sink, &runbooks, &config).await;
        if let Err(err) = &r {
            eprintln!("remedy-bench: engine latency failed: {err:#}");
        }
        figures.latency = Some(r);
        figures.busy.push(("webhook → first action", busy_since(start)));
    }
    if wants("engine-decide") {
        let start = (Instant::now(), cpu_now());
        let seeds = seed_catalog()?;
        for &n in &e.incidents {
            eprintln!("remedy-bench: engine: decisions with {n} active incidents, in process");
            let (seeds, secs) = (seeds.clone(), e.decide_secs);
            let r = tokio::task::spawn_blocking(move || decide_bench(&seeds, n, secs))
                .await
                .map_err(|err| anyhow!("the decision bench panicked: {err}"))
                .and_then(|r| r);
            if let Err(err) = &r {
                eprintln!("remedy-bench: decisions with {n} incidents failed: {err:#}");
            }
            figures.decide.push(r);
        }
        figures.busy.push(("decisions in process", busy_since(start)));
    }
    if wants("engine-runs") {
        let start = (Instant::now(), cpu_now());
        let probe_dir = dir.path().to_path_buf();
        eprintln!("remedy-bench: engine: fdatasync rate of the temp dir's disk, 3 s");
        figures.fsync = Some(
            tokio::task::spawn_blocking(move || fsync_rate(&probe_dir, 3.0))
                .await
                .map_err(|err| anyhow!("the fsync probe panicked: {err}"))
                .and_then(|r| r),
        );
        for &n in &e.runs {
            let r = runs_bench(e, &sink, &runbooks, &config, n).await;
            if let Err(err) = &r {
                eprintln!("remedy-bench: {n} concurrent runs failed: {err:#}");
            }
            figures.runs.push(r);
        }
        figures.busy.push(("steps end to end", busy_since(start)));
    }
    Ok(figures)
}

// ---------------------------------------------------------------------------
// Report

fn latency_row(s: &mut String, who: &str, phase: &str, l: &Latencies) {
    let _ = writeln!(
        s,
        "| {who} | {phase} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {} / {} / {} |",
        l.action.len(),
        ms(percentile(&l.action, 0.50)),
        ms(percentile(&l.action, 0.90)),
        ms(percentile(&l.action, 0.99)),
        ms(l.action.last().copied().unwrap_or_default()),
        ms(percentile(&l.answer, 0.50)),
        ms(percentile(&l.answer, 0.99)),
        l.refused,
        l.lost,
        l.duplicates,
    );
}

/// The engine's section of the report, in Markdown.
pub(crate) fn report(opts: &Opts, f: &Option<anyhow::Result<EngineFigures>>) -> String {
    let mut s = String::new();
    let Some(f) = f else { return s };
    let e = &opts.engine;
    let _ = writeln!(s, "### Runbook engine\n");
    let f = match f {
        Ok(f) => f,
        Err(err) => {
            let _ = writeln!(s, "FAILED: {err:#}\n");
            return s;
        }
    };
    if let Some(latency) = &f.latency {
        let _ = writeln!(
            s,
            "#### Webhook received → first action issued\n\n\
             Real coordinator (release, fresh data dir, persistence on), one runbook triggered by `{ALERT_NAME}` whose \
             first step is an `http` POST to a recording server in the bench. Each alert has its own labels \
             (its own fingerprint and incident). Latency = from just before the webhook POST is sent to the \
             recording server receiving the action (one process, one clock). Spaced: {} alerts at {}/s, open \
             loop. Bursts: {} bursts of {} alerts sent at once, {} s apart. Peer: a minimal axum receiver that \
             decodes the same payload and immediately sends the same POST (new loopback connection per POST), \
             with no persistence and no rails.\n",
            e.alerts, e.rate, e.bursts, e.burst_size, e.burst_gap_secs
        );
        match latency {
            Ok((ours_spaced, ours_bursts, peer_spaced, peer_bursts)) => {
                let _ = writeln!(
                    s,
                    "| receiver | phase | actions | p50 ms | p90 ms | p99 ms | max ms | webhook answered p50 / p99 ms | \
                     refused / lost / twice |"
                );
                let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
                latency_row(&mut s, "remedy-coordinator", "spaced", ours_spaced);
                latency_row(&mut s, "remedy-coordinator", "bursts", ours_bursts);
                latency_row(&mut s, "peer (no persistence, no rails)", "spaced", peer_spaced);
                latency_row(&mut s, "peer (no persistence, no rails)", "bursts", peer_bursts);
                let _ = writeln!(s);
                for (phase, l) in [("spaced", ours_spaced), ("bursts", ours_bursts)] {
                    let n = l.sent.max(1) as f64;
                    let _ = writeln!(
                        s,
                        "- coordinator, {phase}: {:.1} store commits per alert ({:.0} in {:.1} s), {:.2} ms of \
                         coordinator CPU per alert ({:.2} cores busy).",
                        l.commits / n,
                        l.commits,
                        l.secs,
                        l.cpu * 1000.0 / n,
                        l.cpu / l.secs.max(1e-9)
                    );
                }
                let _ = writeln!(s);
            }
            Err(err) => {
                let _ = writeln!(s, "FAILED: {err:#}\n");
            }
        }
    }
    if !f.decide.is_empty() {
        let _ = writeln!(
            s,
            "#### Decisions per second with the rails on (in process)\n\n\
             `guard::decide` + `GuardState::record_executed` (what the engine does under its lock per action) on \
             `Catalog::policy` of the seed catalog (deploy/runbooks) over the default global rails with both \
             default budgets raised to {BENCH_BUDGET} actions/h (evaluated on every decision, never binding). \
             History: each of N incidents already took {HISTORY_PER_INCIDENT} actions (its runbook's first \
             steps, distinct targets per incident) spread over the last 50 min. Each timed round restores that \
             history (untimed) and decides one request per incident (its next step, a different one each round, \
             all 7 seed runbooks round-robin). Single thread, as under the engine's lock.\n"
        );
        let _ = writeln!(
            s,
            "| active incidents | history (actions / approvals) | state JSON | clone + encode state | decisions | \
             decisions/s | ns/decision | what decided |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---|");
        for d in &f.decide {
            match d {
                Ok(d) => {
                    let mix: Vec<String> = d
                        .outcomes
                        .iter()
                        .map(|(k, v)| format!("{k} {:.0}%", *v as f64 * 100.0 / d.decisions.max(1) as f64))
                        .collect();
                    let _ = writeln!(
                        s,
                        "| {} | {} / {} | {:.1} KiB | {:.0} µs | {} | {:.0} | {:.0} | {} |",
                        d.incidents,
                        d.actions,
                        d.approvals,
                        d.state_bytes as f64 / 1024.0,
                        d.clone_encode_us,
                        d.decisions,
                        d.per_sec(),
                        d.ns_each(),
                        mix.join(", "),
                    );
                }
                Err(err) => {
                    let _ = writeln!(s, "| FAILED: {} | | | | | | | |", format!("{err:#}").replace('\n', " "));
                }
            }
        }
        if let Some(d) = f.decide.iter().flatten().next() {
            let _ = writeln!(
                s,
                "\nThe timer costs {:.0} ns per timed round (one round = one decision per incident), included. \
                 \"clone + encode state\" is what each `save_with_guard` costs on top: the engine clones the whole \
                 rails' memory under its lock and the writer serialises it to JSON into the commit (three times \
                 per step). {} distinct requests at the smallest N.\n",
                d.timer_ns, d.requests
            );
        }
    }
    if !f.runs.is_empty() {
        let _ = writeln!(
            s,
            "#### Steps per second end to end (real coordinator)\n\n\
             N manual runs (`AdminService.RunRunbook` over one gRPC channel, at most 64 requests in flight) of a \
             runbook of {} `http` POST steps to the recording server, all started at once; a fresh coordinator \
             (empty store, empty rails' memory) per N. A step counts when its POST reaches the recording server. \
             Each step is decided by the rails, its idempotency key committed before the POST and its result \
             after. Commits are `remedy_store_commits_total` (every group the writer ran, including groups of \
             reads only, which write nothing).\n",
            e.steps
        );
        if let Some(fsync) = &f.fsync {
            match fsync {
                Ok((n, secs)) => {
                    let _ = writeln!(
                        s,
                        "Peer, same disk: a 4 KiB rewrite + `fdatasync` in a loop ran {:.0} times/s ({:.2} ms each) \
                         in the temp directory; that is the most commits per second any engine that persists before \
                         acting gets here without grouping.\n",
                        *n as f64 / secs,
                        secs * 1000.0 / (*n).max(1) as f64
                    );
                }
                Err(err) => {
                    let _ = writeln!(s, "fsync probe FAILED: {err:#}\n");
                }
            }
        }
        let _ = writeln!(
            s,
            "| concurrent runs | steps done / expected | wall | steps/s | steps/s (steady 10-90 %) | first step | \
             run p50 / p99 (request → last step) | commits per step | coordinator CPU per step | cores busy |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &f.runs {
            match r {
                Ok(r) => {
                    let done = r.steps_done.max(1) as f64;
                    let steady = if r.steady_rate > 0.0 {
                        format!("{:.0}", r.steady_rate)
                    } else {
                        "n/a (few steps)".to_owned()
                    };
                    let cpu = if r.cpu > 0.0 {
                        format!("{:.2} ms", r.cpu * 1000.0 / done)
                    } else {
                        "n/a (< 1 clock tick)".to_owned()
                    };
                    let _ = writeln!(
                        s,
                        "| {} | {} / {}{} | {:.2} s | {:.0} | {steady} | {:.1} ms | {:.0} / {:.0} ms | {:.2} | {cpu} | \
                         {:.2} |",
                        r.runs,
                        r.steps_done,
                        r.steps_expected,
                        if r.started_runs < r.runs {
                            format!(" ({} runs started)", r.started_runs)
                        } else {
                            String::new()
                        },
                        r.wall_secs,
                        r.rate(),
                        r.first_step_ms,
                        r.run_p50_ms,
                        r.run_p99_ms,
                        r.commits / done,
                        r.cpu / r.wall_secs.max(1e-9),
                    );
                }
                Err(err) => {
                    let _ = writeln!(s, "| FAILED: {} | | | | | | | | | |", format!("{err:#}").replace('\n', " "));
                }
            }
        }
        for r in f.runs.iter().flatten() {
            if let Some(err) = &r.first_error {
                let _ = writeln!(s, "\n- {} runs: first RunRunbook error: {err}", r.runs);
            }
        }
        let _ = writeln!(s);
    }
    if !f.busy.is_empty() {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        let _ = writeln!(
            s,
            "#### Load on the machine during the engine part\n\n\
             From /proc/stat (all {cores} cores) and this process's CPU with the coordinators it started. \
             \"Others\" is everything else on the machine (other builds and tests).\n"
        );
        let _ = writeln!(s, "| part | wall | machine cores busy | bench + coordinators | others |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for (part, b) in &f.busy {
            let w = b.secs.max(1e-9);
            let _ = writeln!(
                s,
                "| {part} | {:.0} s | {:.2} | {:.2} | {:.2} |",
                b.secs,
                b.machine / w,
                b.ours / w,
                (b.machine - b.ours).max(0.0) / w
            );
        }
        let _ = writeln!(s);
    }
    s
}
