//! `remedy-bench`: the core's benchmarks, against real release processes on
//! loopback, with peers measured in the same run on the same machine.
//!
//! 1. Coordinator fan-in: N simulated agents, each a real gRPC
//!    `AgentService.Connect` stream on its own HTTP/2 connection, speaking
//!    the real protocol (hello, finding batches with per-agent sequences
//!    1..N, heartbeats, reading acks) against a `remedy-coordinator` with a
//!    fresh data directory (persistence on, one fsync'd commit per group).
//!    Throughput is counted from acknowledgements only; the coordinator's CPU
//!    time comes from `/proc/<pid>/stat`.
//! 2. Coordinator RSS with idle streams (hello done, heartbeats only).
//! 3. Agent idle RSS and CPU over a minute, connected to a real coordinator,
//!    next to Prometheus node_exporter scraped every 10 s over the same
//!    minute.
//! 4. PostgreSQL inserting the same findings rows with fsync'd commits of
//!    the coordinator's measured group size, as the ingest peer.
//! 5. The runbook engine (`engine.rs`): webhook → first action latency next
//!    to a minimal receiver that acts at once, decisions per second through
//!    the guard rails with 1 to 1,000 active incidents, and steps per second
//!    end to end with many runs active, next to the disk's fsync rate.
//! 6. The agent's log tailing (`tail.rs`): RSS and CPU while tailing CRI
//!    logs at a steady rate next to `tail -F | grep`, and the latency from a
//!    line written to its finding persisted by the coordinator.
//! 7. IP blocking (`blocks.rs`): one ban enforced on 1 and on N agents,
//!    each in its own network namespace, next to a bare `nft add element`;
//!    and one agent holding many bans (memory, its passes, rule lookup).
//!
//! Every loop is bounded in count and time, every process started is
//! stopped on the way out (also on error or Ctrl-C), and the results are
//! printed to stdout as Markdown.
//!
//! `scripts/bench.sh` builds the binaries and installs the peers, then runs
//! this. Run `remedy-bench --help` for the knobs; `remedy-bench/args.rs`
//! defines them.

#![forbid(unsafe_code)]

#[path = "remedy-bench/args.rs"]
mod args;
#[path = "remedy-bench/blocks.rs"]
mod blocks;
#[path = "remedy-bench/engine.rs"]
mod engine;
#[path = "remedy-bench/handshake.rs"]
mod handshake;
#[path = "remedy-bench/tail.rs"]
mod tail;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use args::{Args, Opts};
use clap::Parser as _;
use remedy_e2e::procs::{bin, free_addr, http_request, metric_value};
use remedy_proto::MAX_MESSAGE_BYTES;
use remedy_proto::v1 as pb;
use remedy_proto::v1::agent_message::Body as AgentBody;
use remedy_proto::v1::agent_service_client::AgentServiceClient;
use remedy_proto::v1::coordinator_message::Body as CoordinatorBody;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// The whole run may not take longer than this.
const OVERALL_LIMIT: Duration = Duration::from_secs(20 * 60);

// ---------------------------------------------------------------------------
// Processes and /proc

/// A child process, stopped (signal, then SIGKILL) when dropped.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    /// Signal name for an orderly stop (`kill -s NAME`).
    stop_signal: &'static str,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: &Path, stop_signal: &'static str) -> anyhow::Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open the log {}", log.display()))?;
        let err = out.try_clone().context("clone a log handle")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Proc { name: name.to_owned(), child: Some(child), log: log.to_path_buf(), stop_signal })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Fails if the process already exited (with the tail of its log).
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            let tail = log_tail(&self.log, 20);
            self.child = None;
            bail!("{} exited early ({status}); last lines of {}:\n{tail}", self.name, self.log.display());
        }
        Ok(())
    }

    /// Orderly stop, bounded: the stop signal, up to 10 s, then SIGKILL.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-s", self.stop_signal, &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("remedy-bench: {} did not stop within 10 s of SIG{}; killing it", self.name, self.stop_signal);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Clock ticks per second for /proc/<pid>/stat.
fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Fields of /proc/<pid>/stat after the command name, so `fields[0]` is
/// field 3 (state) of proc(5).
fn stat_fields(pid: u32) -> anyhow::Result<Vec<u64>> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("read /proc/{pid}/stat"))?;
    let rest = text.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/<pid>/stat")?;
    Ok(rest.split_whitespace().map(|f| f.parse::<u64>().unwrap_or(0)).collect())
}

/// CPU seconds a process used (user + system), optionally with its reaped
/// children (cutime + cstime).
fn cpu_secs(pid: u32, with_reaped_children: bool) -> anyhow::Result<f64> {
    let f = stat_fields(pid)?;
    // utime is field 14, stime 15, cutime 16, cstime 17.
    let field = |n: usize| f.get(n - 3).copied().unwrap_or(0);
    let mut ticks = field(14) + field(15);
    if with_reaped_children {
        ticks += field(16) + field(17);
    }
    Ok(ticks as f64 / clk_tck())
}

/// CPU seconds of a process tree: the process with its reaped children, plus
/// its live direct children (what a PostgreSQL postmaster and its backends
/// used).
fn tree_cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let mut total = cpu_secs(pid, true)?;
    for entry in std::fs::read_dir("/proc").context("list /proc")?.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // The parent pid is field 4.
        if let Ok(f) = stat_fields(child)
            && f.get(1).copied() == Some(u64::from(pid))
        {
            total += cpu_secs(child, false).unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// A `/proc/<pid>/status` value in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The soft limit on open files of this process.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("gave up waiting for {what} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// The coordinator

#[derive(Debug)]
struct CoordinatorProc {
    proc: Proc,
    grpc: SocketAddr,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl CoordinatorProc {
    async fn start() -> anyhow::Result<CoordinatorProc> {
        Self::start_with(&[]).await
    }

    /// Starts a coordinator with extra command-line arguments.
    async fn start_with(extra: &[OsString]) -> anyhow::Result<CoordinatorProc> {
        let dir = tempfile::Builder::new().prefix("remedy-bench-coordinator-").tempdir().context("temp dir")?;
        let (grpc, http) = (free_addr(), free_addr());
        let mut cmd = Command::new(bin("remedy-coordinator"));
        // Plaintext unless TLS is asked for: the figures compare the work,
        // not TLS (the mTLS handshake has its own part, `tls`).
        if !extra.iter().any(|a| a == "--tls-cert") {
            cmd.arg("--insecure");
        }
        cmd.arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--grpc-listen", &grpc.to_string(), "--http-listen", &http.to_string(), "--id", "bench"])
            .args(extra)
            .env("REMEDY_LOG", "info")
            .env_remove("REMEDY_COORDINATOR_CONFIG");
        let mut proc = Proc::spawn("remedy-coordinator", &mut cmd, &dir.path().join("coordinator.log"), "TERM")?;
        let up = wait_for("the coordinator's /healthz", Duration::from_secs(30), || async move {
            http_request(http, "GET", "/healthz", None).await.ok().filter(|(c, _)| *c == 200)
        })
        .await;
        if let Err(e) = up {
            proc.check_alive()?;
            return Err(e);
        }
        Ok(CoordinatorProc { proc, grpc, http, _dir: dir })
    }

    fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (code, body) = http_request(self.http, "GET", "/metrics", None).await.context("GET /metrics")?;
        if code != 200 {
            bail!("GET /metrics answered {code}");
        }
        Ok(metric_value(&body, name))
    }
}

// ---------------------------------------------------------------------------
// Simulated agents

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Heartbeats only.
    Idle,
    /// Finding batches as fast as acknowledgements allow, and heartbeats.
    Load,
    /// Close the stream.
    Stop,
}

#[derive(Debug, Default)]
struct Stats {
    connected: AtomicU64,
    acked: AtomicU64,
    sent: AtomicU64,
    heartbeats: AtomicU64,
    failed: AtomicU64,
    measuring: AtomicBool,
    first_error: Mutex<Option<String>>,
}

#[derive(Debug)]
struct SimConfig {
    url: String,
    batch: usize,
    window: usize,
}

fn snapshot(now_ms: i64) -> pb::ResourceSnapshot {
    // What a real agent's heartbeat carries: two watched mounts, the five
    // heaviest processes.
    pb::ResourceSnapshot {
        taken_at_ms: now_ms,
        cpu_percent: 23.5,
        memory_used_bytes: 6 << 30,
        memory_total_bytes: 16 << 30,
        load1: 1.2,
        load5: 0.9,
        load15: 0.7,
        disks: ["/", "/var"]
            .iter()
            .map(|m| pb::DiskUsage { mount_point: (*m).to_owned(), total_bytes: 100 << 30, available_bytes: 40 << 30 })
            .collect(),
        top_processes: ["kubelet", "containerd", "java", "postgres", "node"]
            .iter()
            .enumerate()
            .map(|(i, name)| pb::ProcessUsage {
                pid: 1_000 + i as u32,
                name: (*name).to_owned(),
                cpu_percent: 10.0 - i as f64,
                memory_bytes: (500 - 50 * i as u64) << 20,
            })
            .collect(),
    }
}

fn finding(agent: usize, n: u64, now_ms: i64) -> pb::Finding {
    let target = format!("service/bench-{agent}-{}", n % 10);
    pb::Finding {
        kind: "probe_failed".to_owned(),
        severity: pb::Severity::Warning as i32,
        state: pb::FindingState::Active as i32,
        summary: format!("readiness probe of {target} failed"),
        target,
        labels: [("namespace".to_owned(), "bench".to_owned())].into_iter().collect(),
        evidence: [("status".to_owned(), "503".to_owned())].into_iter().collect(),
        first_seen_ms: now_ms,
        last_seen_ms: now_ms,
        expires_at_ms: 0,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn send(out: &mpsc::Sender<pb::AgentMessage>, body: AgentBody) -> anyhow::Result<()> {
    out.send(pb::AgentMessage { body: Some(body) }).await.map_err(|_| anyhow!("the outbound stream closed"))
}

/// One simulated agent; returns the latencies (µs, from send to ack) of the
/// batches acknowledged while measuring.
async fn sim_agent(
    idx: usize,
    cfg: Arc<SimConfig>,
    phase: watch::Receiver<Phase>,
    stats: Arc<Stats>,
    gate: Arc<Semaphore>,
) -> Vec<u32> {
    match sim_agent_inner(idx, &cfg, phase, &stats, &gate).await {
        Ok(latencies) => latencies,
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = stats.first_error.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some(format!("agent {idx}: {e:#}"));
            }
            Vec::new()
        }
    }
}

async fn sim_agent_inner(
    idx: usize,
    cfg: &SimConfig,
    mut phase: watch::Receiver<Phase>,
    stats: &Stats,
    gate: &Semaphore,
) -> anyhow::Result<Vec<u32>> {
    let permit = gate.acquire().await.context("connection gate closed")?;
    // The same transport settings as the real agent.
    let channel = Endpoint::from_shared(cfg.url.clone())?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("connect")?;
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (out, out_rx) = mpsc::channel::<pb::AgentMessage>(16 + cfg.window);
    send(
        &out,
        AgentBody::Hello(pb::Hello {
            agent_id: format!("bench-agent-{idx}"),
            node_name: format!("bench-node-{idx}"),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: Vec::new(),
            labels: [("pool".to_owned(), "bench".to_owned())].into_iter().collect(),
            last_sequence: 0,
            node_addresses: Vec::new(),
        }),
    )
    .await?;
    let mut inbound = client.connect(ReceiverStream::new(out_rx)).await.context("open the stream")?.into_inner();
    let welcome = match inbound.message().await.context("read the welcome")?.and_then(|m| m.body) {
        Some(CoordinatorBody::Welcome(w)) => w,
        other => bail!("expected a welcome, got {other:?}"),
    };
    drop(permit);
    stats.connected.fetch_add(1, Ordering::Relaxed);

    let mut acked = welcome.acked_sequence;
    let mut next = acked + 1;
    let heartbeat_every = Duration::from_millis(welcome.heartbeat_interval_ms.max(100));
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(cfg.window);
    let mut latencies = Vec::new();
    loop {
        let current = *phase.borrow_and_update();
        match current {
            Phase::Stop => break,
            Phase::Idle => {}
            Phase::Load => {
                while in_flight.len() < cfg.window {
                    let now = now_ms();
                    let findings: Vec<pb::SequencedFinding> = (next..next + cfg.batch as u64)
                        .map(|sequence| pb::SequencedFinding { sequence, finding: Some(finding(idx, sequence, now)) })
                        .collect();
                    let last = next + cfg.batch as u64 - 1;
                    send(&out, AgentBody::Findings(pb::FindingBatch { findings, oldest_retained_sequence: 0 })).await?;
                    in_flight.push_back((last, Instant::now()));
                    stats.sent.fetch_add(cfg.batch as u64, Ordering::Relaxed);
                    next = last + 1;
                }
            }
        }
        tokio::select! {
            msg = inbound.message() => {
                let Some(msg) = msg.context("read from the coordinator")? else {
                    bail!("the coordinator closed the stream");
                };
                match msg.body {
                    Some(CoordinatorBody::Ack(ack)) => {
                        if ack.acked_sequence > acked {
                            stats.acked.fetch_add(ack.acked_sequence - acked, Ordering::Relaxed);
                            acked = ack.acked_sequence;
                        }
                        while let Some(&(last, at)) = in_flight.front() {
                            if last > acked {
                                break;
                            }
                            in_flight.pop_front();
                            if stats.measuring.load(Ordering::Relaxed) {
                                latencies.push(u32::try_from(at.elapsed().as_micros()).unwrap_or(u32::MAX));
                            }
                        }
                    }
                    Some(CoordinatorBody::Directive(d)) => {
                        send(&out, AgentBody::ActionResult(pb::ActionResult {
                            directive_id: d.id,
                            outcome: pb::ActionOutcome::Unsupported as i32,
                            message: "the bench agent runs no actions".to_owned(),
                            evidence: Default::default(),
                            finished_at_ms: now_ms(),
                        })).await?;
                    }
                    Some(CoordinatorBody::ConfigUpdate(_) | CoordinatorBody::Infrastructure(_)) => {}
                    Some(CoordinatorBody::Welcome(_)) | None => bail!("unexpected message from the coordinator"),
                }
            }
            _ = heartbeat.tick() => {
                send(&out, AgentBody::Heartbeat(pb::Heartbeat {
                    snapshot: Some(snapshot(now_ms())),
                    spool_depth: next - 1 - acked,
                    spool_dropped_total: 0,
                })).await?;
                stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    Ok(latencies)
}

#[derive(Debug, Clone)]
struct IdleFigures {
    streams: u64,
    secs: f64,
    rss_final_kib: u64,
    rss_max_kib: u64,
    cpu_secs: f64,
}

#[derive(Debug, Clone)]
struct FaninFigures {
    agents: usize,
    connected: u64,
    connect_secs: f64,
    idle: Option<IdleFigures>,
    window_secs: f64,
    acked: u64,
    coordinator_cpu: f64,
    bench_cpu: f64,
    commits: f64,
    persisted: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    rss_end_kib: u64,
    rss_max_kib: u64,
    failed: u64,
    first_error: Option<String>,
    total_acked: u64,
    total_persisted: f64,
    streams_metric: f64,
}

impl FaninFigures {
    fn findings_per_sec(&self) -> f64 {
        self.acked as f64 / self.window_secs
    }
    fn per_core(&self) -> f64 {
        if self.coordinator_cpu > 0.0 { self.acked as f64 / self.coordinator_cpu } else { 0.0 }
    }
    fn group(&self) -> f64 {
        if self.commits > 0.0 { self.persisted / self.commits } else { 0.0 }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

async fn fanin(opts: &Opts, agents: usize) -> anyhow::Result<FaninFigures> {
    eprintln!("remedy-bench: fan-in with {agents} streams: starting a coordinator");
    let mut coordinator = CoordinatorProc::start().await?;
    let pid = coordinator.proc.pid();
    let me = std::process::id();
    let cfg = Arc::new(SimConfig { url: coordinator.url(), batch: opts.batch, window: opts.window });
    let stats = Arc::new(Stats::default());
    let gate = Arc::new(Semaphore::new(opts.connect_parallel));
    let (phase_tx, phase_rx) = watch::channel(Phase::Idle);

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for idx in 0..agents {
        tasks.spawn(sim_agent(idx, cfg.clone(), phase_rx.clone(), stats.clone(), gate.clone()));
    }
    drop(phase_rx);
    let connect_limit = Duration::from_secs(60 + agents as u64 / 50);
    let all_in = {
        let stats = stats.clone();
        wait_for("every stream to be welcomed", connect_limit, move || {
            let stats = stats.clone();
            async move {
                let done = stats.connected.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed);
                (done >= agents as u64).then_some(())
            }
        })
        .await
    };
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = stats.connected.load(Ordering::Relaxed);
    let result = async {
        all_in?;
        coordinator.proc.check_alive()?;
        if connected < agents as u64 {
            let first = stats.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
            bail!("only {connected} of {agents} streams connected; first error: {}", first.unwrap_or_default());
        }
        eprintln!("remedy-bench: {connected} streams welcomed in {connect_secs:.1} s");

        let idle = if agents == opts.idle_streams {
            eprintln!("remedy-bench: idle (heartbeats only) for {} s", opts.idle_secs);
            let cpu0 = cpu_secs(pid, false)?;
            let t0 = Instant::now();
            let mut rss_max = rss_kib(pid)?;
            for _ in 0..opts.idle_secs {
                tokio::time::sleep(Duration::from_secs(1)).await;
                rss_max = rss_max.max(rss_kib(pid)?);
            }
            coordinator.proc.check_alive()?;
            Some(IdleFigures {
                streams: coordinator.metric("remedy_agent_streams").await? as u64,
                secs: t0.elapsed().as_secs_f64(),
                rss_final_kib: rss_kib(pid)?,
                rss_max_kib: rss_max,
                cpu_secs: cpu_secs(pid, false)? - cpu0,
            })
        } else {
            None
        };

        eprintln!("remedy-bench: load: {} s warm-up, {} s measured", opts.warmup_secs, opts.measure_secs);
        phase_tx.send(Phase::Load).context("no agent task is left")?;
        tokio::time::sleep(Duration::from_secs(opts.warmup_secs)).await;
        let commits0 = coordinator.metric("remedy_store_commits_total").await?;
        let persisted0 = coordinator.metric("remedy_findings_persisted_total").await?;
        stats.measuring.store(true, Ordering::Relaxed);
        let acked0 = stats.acked.load(Ordering::Relaxed);
        let cpu0 = cpu_secs(pid, false)?;
        let bench0 = cpu_secs(me, false)?;
        let t0 = Instant::now();
        let mut rss_max = rss_kib(pid)?;
        for _ in 0..opts.measure_secs {
            tokio::time::sleep(Duration::from_secs(1)).await;
            rss_max = rss_max.max(rss_kib(pid)?);
        }
        let acked1 = stats.acked.load(Ordering::Relaxed);
        let cpu1 = cpu_secs(pid, false)?;
        let bench1 = cpu_secs(me, false)?;
        let window_secs = t0.elapsed().as_secs_f64();
        stats.measuring.store(false, Ordering::Relaxed);
        let commits1 = coordinator.metric("remedy_store_commits_total").await?;
        let persisted1 = coordinator.metric("remedy_findings_persisted_total").await?;
        let streams_metric = coordinator.metric("remedy_agent_streams").await?;
        let rss_end = rss_kib(pid)?;
        coordinator.proc.check_alive()?;

        phase_tx.send(Phase::Stop).context("no agent task is left")?;
        let mut latencies = Vec::new();
        let drained = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(r) = tasks.join_next().await {
                if let Ok(l) = r {
                    latencies.extend(l);
                }
            }
        })
        .await;
        if drained.is_err() {
            eprintln!("remedy-bench: some agent tasks did not end within 30 s; aborting them");
            tasks.abort_all();
        }
        latencies.sort_unstable();
        // Everything in flight when the load stopped is acknowledged or
        // dropped by now; the store holds at least what was acknowledged.
        let total_persisted = coordinator.metric("remedy_findings_persisted_total").await?;
        let first_error = stats.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(FaninFigures {
            agents,
            connected,
            connect_secs,
            idle,
            window_secs,
            acked: acked1 - acked0,
            coordinator_cpu: cpu1 - cpu0,
            bench_cpu: bench1 - bench0,
            commits: commits1 - commits0,
            persisted: persisted1 - persisted0,
            latency_p50_ms: percentile(&latencies, 0.50),
            latency_p99_ms: percentile(&latencies, 0.99),
            rss_end_kib: rss_end,
            rss_max_kib: rss_max,
            failed: stats.failed.load(Ordering::Relaxed),
            first_error,
            total_acked: stats.acked.load(Ordering::Relaxed),
            total_persisted,
            streams_metric,
        })
    }
    .await;
    let _ = phase_tx.send(Phase::Stop);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    coordinator.proc.stop();
    let figures = result?;
    eprintln!(
        "remedy-bench: {agents} streams: {:.0} findings/s, {:.0} findings per coordinator CPU-second",
        figures.findings_per_sec(),
        figures.per_core()
    );
    Ok(figures)
}

// ---------------------------------------------------------------------------
// Agent and node_exporter idle

#[derive(Debug, Clone)]
struct ProcIdle {
    name: String,
    secs: f64,
    rss_final_kib: u64,
    rss_max_kib: u64,
    cpu_secs: f64,
    note: String,
}

impl ProcIdle {
    fn millicores(&self) -> f64 {
        self.cpu_secs / self.secs * 1000.0
    }
}

/// Scrapes `/metrics` as Prometheus does (its Accept header, gzip); returns
/// the status and the bytes received.
async fn scrape(addr: SocketAddr) -> anyhow::Result<(u16, usize)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.context("connect")?;
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Prometheus/2.45.0\r\n\
         Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n\
         Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.context("send")?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .context("scrape timed out")?
        .context("read")?;
    let head = String::from_utf8_lossy(&response[..response.len().min(64)]).into_owned();
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, response.len()))
}

async fn agent_minute(opts: &Opts) -> anyhow::Result<Vec<ProcIdle>> {
    eprintln!("remedy-bench: agent idle: starting a coordinator and an agent");
    let mut coordinator = CoordinatorProc::start().await?;
    let dir = tempfile::Builder::new().prefix("remedy-bench-agent-").tempdir().context("temp dir")?;
    let diagnostics = free_addr();
    let mut cmd = Command::new(bin("remedy-agent"));
    cmd.args(["--node-name", "bench-node"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--coordinator", &coordinator.url(), "--insecure", "--diagnostics-listen", &diagnostics.to_string()])
        .env("REMEDY_LOG", "info")
        .env_remove("REMEDY_COORDINATOR")
        .env_remove("REMEDY_AGENT_CONFIG");
    let mut agent = Proc::spawn("remedy-agent", &mut cmd, &dir.path().join("agent.log"), "TERM")?;
    let ready = wait_for("the agent to connect (/readyz)", Duration::from_secs(60), || async move {
        http_request(diagnostics, "GET", "/readyz", None).await.ok().filter(|(c, _)| *c == 200)
    })
    .await;
    if let Err(e) = ready {
        agent.check_alive()?;
        return Err(e);
    }

    let mut exporter = None;
    let mut exporter_addr = None;
    if let Some(path) = &opts.node_exporter {
        let addr = free_addr();
        let mut cmd = Command::new(path);
        cmd.arg(format!("--web.listen-address={addr}"));
        let mut p = Proc::spawn("node_exporter", &mut cmd, &dir.path().join("node_exporter.log"), "TERM")?;
        let up = wait_for("node_exporter's /metrics", Duration::from_secs(30), || async move {
            scrape(addr).await.ok().filter(|(c, _)| *c == 200)
        })
        .await;
        if let Err(e) = up {
            p.check_alive()?;
            return Err(e);
        }
        exporter = Some(p);
        exporter_addr = Some(addr);
    }

    eprintln!("remedy-bench: sampling the agent (and node_exporter) for {} s", opts.agent_secs);
    let agent_pid = agent.pid();
    let exporter_pid = exporter.as_ref().map(Proc::pid);
    let a_cpu0 = cpu_secs(agent_pid, false)?;
    let e_cpu0 = exporter_pid.map(|p| cpu_secs(p, false)).transpose()?;
    let mut a_max = rss_kib(agent_pid)?;
    let mut e_max = exporter_pid.map(rss_kib).transpose()?.unwrap_or(0);
    let (mut scrapes, mut scrape_bytes) = (0u32, 0usize);
    let t0 = Instant::now();
    for second in 0..opts.agent_secs {
        if second % 10 == 0
            && let Some(addr) = exporter_addr
        {
            let (code, bytes) = scrape(addr).await?;
            if code != 200 {
                bail!("node_exporter answered {code} to a scrape");
            }
            scrapes += 1;
            scrape_bytes += bytes;
        }
        let next = t0 + Duration::from_secs(second + 1);
        tokio::time::sleep_until(next.into()).await;
        a_max = a_max.max(rss_kib(agent_pid)?);
        if let Some(p) = exporter_pid {
            e_max = e_max.max(rss_kib(p)?);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let a_cpu1 = cpu_secs(agent_pid, false)?;
    let mut out = vec![ProcIdle {
        name: "remedy-agent (release, default config: sample and heartbeat every 10 s)".to_owned(),
        secs,
        rss_final_kib: rss_kib(agent_pid)?,
        rss_max_kib: a_max,
        cpu_secs: a_cpu1 - a_cpu0,
        note: "connected to a real coordinator on loopback".to_owned(),
    }];
    if let (Some(p), Some(c0)) = (exporter_pid, e_cpu0) {
        let version = opts
            .node_exporter
            .as_ref()
            .and_then(|path| Command::new(path).arg("--version").output().ok())
            .map(|o| {
                let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                text.lines().next().unwrap_or("").split_whitespace().nth(2).unwrap_or("?").to_owned()
            })
            .unwrap_or_else(|| "?".to_owned());
        out.push(ProcIdle {
            name: format!("prometheus node_exporter {version} (default collectors)"),
            secs,
            rss_final_kib: rss_kib(p)?,
            rss_max_kib: e_max,
            cpu_secs: cpu_secs(p, false)? - c0,
            note: format!(
                "scraped {scrapes} times (every 10 s, gzip, {:.0} KiB received per scrape)",
                scrape_bytes as f64 / f64::from(scrapes.max(1)) / 1024.0
            ),
        });
    }
    agent.check_alive()?;
    if let Some(e) = exporter.as_mut() {
        e.check_alive()?;
    }
    drop(exporter);
    agent.stop();
    coordinator.proc.stop();
    Ok(out)
}

// ---------------------------------------------------------------------------
// PostgreSQL

#[derive(Debug, Clone)]
struct PgFigures {
    clients: usize,
    rows_per_txn: usize,
    secs: f64,
    txns: u64,
    tps: f64,
    latency_ms: f64,
    server_cpu: f64,
    client_cpu: f64,
}

impl PgFigures {
    fn rows_per_sec(&self) -> f64 {
        self.tps * self.rows_per_txn as f64
    }
    fn per_core(&self) -> f64 {
        if self.server_cpu > 0.0 { self.txns as f64 * self.rows_per_txn as f64 / self.server_cpu } else { 0.0 }
    }
}

fn user_ids(name: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
    let line = passwd
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .with_context(|| format!("no user `{name}` (install the postgresql package)"))?;
    let fields: Vec<&str> = line.split(':').collect();
    let uid = fields.get(2).and_then(|v| v.parse().ok()).context("malformed /etc/passwd")?;
    let gid = fields.get(3).and_then(|v| v.parse().ok()).context("malformed /etc/passwd")?;
    Ok((uid, gid))
}

fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {what}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{what} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

/// The pgbench script: one transaction inserts `rows` findings rows of one
/// client, with the sequence carried from transaction to transaction.
fn pgbench_script(rows: usize) -> String {
    let now = now_ms();
    // pgbench reads `:name` as a variable: every other colon is followed by
    // a space or another colon.
    format!(
        "\\set seq :seq + 1\n\
         INSERT INTO findings (agent_id, sequence, node_name, received_at_ms, incident_id, finding)\n\
         SELECT 'bench-agent-' || :client_id, (:seq - 1) * {rows} + g + 1, 'bench-node-' || :client_id,\n\
         (extract(epoch FROM clock_timestamp()) * 1000)::bigint, NULL,\n\
         ('{{\"kind\": \"probe_failed\", \"severity\": \"warning\", \"state\": \"active\", \"target\": \"service/bench-' || :client_id || '-' || (g % 10) || '\", \
         \"labels\": {{\"namespace\": \"bench\"}}, \"evidence\": {{\"status\": \"503\"}}, \
         \"summary\": \"readiness probe of service/bench-' || :client_id || '-' || (g % 10) || ' failed\", \
         \"first_seen\": {now}, \"last_seen\": {now}, \"expires_at\": null}}')::jsonb\n\
         FROM generate_series(0, {last}) AS g;\n",
        last = rows - 1
    )
}

async fn postgres_peer(opts: &Opts, pg_bin: &Path, rows: usize) -> anyhow::Result<(String, Vec<PgFigures>)> {
    eprintln!("remedy-bench: PostgreSQL peer: {rows} rows per transaction");
    let dir = tempfile::Builder::new().prefix("remedy-bench-pg-").tempdir().context("temp dir")?;
    let ids = if is_root() { Some(user_ids("postgres")?) } else { None };
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).context("chown the PostgreSQL directory")?;
    }
    let as_owner = |cmd: &mut Command| {
        if let Some((uid, gid)) = ids {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(dir.path()).env_remove("PGDATA");
    };
    let data = dir.path().join("data");
    let version = run_checked(Command::new(pg_bin.join("postgres")).arg("--version"), "postgres --version")?;
    let mut initdb = Command::new(pg_bin.join("initdb"));
    initdb.arg("-D").arg(&data).args(["-U", "bench", "-A", "trust", "--locale=C", "-E", "UTF8", "--no-sync"]);
    as_owner(&mut initdb);
    run_checked(&mut initdb, "initdb")?;

    let port = free_addr().port();
    let mut server = Command::new(pg_bin.join("postgres"));
    server
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir.path())
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=on", "-c", "synchronous_commit=on"])
        .args(["-c", "max_connections=50", "-c", "shared_buffers=256MB", "-c", "max_wal_size=4GB"]);
    as_owner(&mut server);
    // SIGINT is PostgreSQL's fast shutdown.
    let mut server = Proc::spawn("postgres", &mut server, &dir.path().join("postgres.log"), "INT")?;
    let port_s = port.to_string();
    let ready = wait_for("PostgreSQL to accept connections", Duration::from_secs(30), || {
        let ok = Command::new(pg_bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port_s, "-U", "bench", "-d", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        async move { ok.then_some(()) }
    })
    .await;
    if let Err(e) = ready {
        server.check_alive()?;
        return Err(e);
    }
    let psql = |sql: &str| {
        run_checked(
            Command::new(pg_bin.join("psql"))
                .args(["-h", "127.0.0.1", "-p", &port_s, "-U", "bench", "-d", "postgres", "-v", "ON_ERROR_STOP=1"])
                .args(["-q", "-c", sql]),
            "psql",
        )
    };
    psql(
        "CREATE TABLE findings (\
           agent_id text NOT NULL, sequence bigint NOT NULL, node_name text NOT NULL, \
           received_at_ms bigint NOT NULL, incident_id bigint, finding jsonb NOT NULL, \
           PRIMARY KEY (agent_id, sequence))",
    )?;
    let script = dir.path().join("insert.sql");
    std::fs::write(&script, pgbench_script(rows)).context("write the pgbench script")?;

    let pm = server.pid();
    let me = std::process::id();
    let mut figures = Vec::new();
    for (run, &clients) in opts.pg_clients.iter().enumerate() {
        eprintln!("remedy-bench: pgbench, {clients} clients, {} s", opts.pg_secs);
        psql("TRUNCATE findings; CHECKPOINT")?;
        let server0 = tree_cpu_secs(pm)?;
        let client0 = cpu_secs(me, true)? - cpu_secs(me, false)?;
        let t0 = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(opts.pg_secs + 120),
            tokio::process::Command::new(pg_bin.join("pgbench"))
                .args(["-h", "127.0.0.1", "-p", &port_s, "-U", "bench", "-n", "-M", "prepared"])
                .args(["-c", &clients.to_string(), "-j", &clients.min(2).to_string()])
                .args(["-T", &opts.pg_secs.to_string(), "-D", "seq=0", "-f"])
                .arg(&script)
                .arg("postgres")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("pgbench did not finish in time")?
        .context("cannot run pgbench")?;
        let secs = t0.elapsed().as_secs_f64();
        // Let the postmaster reap the backends so their time lands in its
        // cutime/cstime.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let server1 = tree_cpu_secs(pm)?;
        let client1 = cpu_secs(me, true)? - cpu_secs(me, false)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("pgbench failed ({}):\n{text}", out.status);
        }
        let find = |prefix: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("no `{prefix}` in pgbench's output:\n{text}"))
        };
        let txns = find("number of transactions actually processed:")? as u64;
        let count = psql("SELECT count(*) FROM findings")?;
        let stored: u64 = count
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .next()
            .with_context(|| format!("cannot read the row count from `{count}`"))?;
        if stored != txns * rows as u64 {
            bail!("pgbench run {run}: {txns} transactions of {rows} rows but {stored} rows stored");
        }
        figures.push(PgFigures {
            clients,
            rows_per_txn: rows,
            secs,
            txns,
            tps: find("tps =")?,
            latency_ms: find("latency average =")?,
            server_cpu: server1 - server0,
            client_cpu: client1 - client0,
        });
        server.check_alive()?;
    }
    server.stop();
    Ok((version.trim().to_owned(), figures))
}

// ---------------------------------------------------------------------------
// Report

fn report(
    opts: &Opts,
    agent: &Option<anyhow::Result<Vec<ProcIdle>>>,
    fanins: &[anyhow::Result<FaninFigures>],
    pg: &Option<anyhow::Result<(String, Vec<PgFigures>)>>,
    pg_note: &str,
    engine: &Option<anyhow::Result<engine::EngineFigures>>,
    tail: &Option<anyhow::Result<tail::TailFigures>>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Results\n");
    let _ = writeln!(
        s,
        "All processes ran on this machine at once: the load generator (this binary) and the process measured \
         share its {} cores.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );

    if let Some(agent) = agent {
        let _ = writeln!(s, "### Agent idle, next to node_exporter (same {} s window)\n", opts.agent_secs);
        match agent {
            Ok(rows) => {
                let _ = writeln!(s, "| process | RSS max | RSS final | CPU | millicores | notes |");
                let _ = writeln!(s, "|---|---:|---:|---:|---:|---|");
                for r in rows {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {:.2} s in {:.0} s | {:.2} | {} |",
                        r.name,
                        mib(r.rss_max_kib),
                        mib(r.rss_final_kib),
                        r.cpu_secs,
                        r.secs,
                        r.millicores(),
                        r.note
                    );
                }
                let _ = writeln!(
                    s,
                    "\nAims for the agent: RSS <= 20 MiB, CPU <= 2 millicores. CPU resolution: 1/{} s.\n",
                    clk_tck()
                );
            }
            Err(e) => {
                let _ = writeln!(s, "FAILED: {e:#}\n");
            }
        }
    }

    if !fanins.is_empty() {
        let _ = writeln!(
            s,
            "### Coordinator fan-in (persistence on)\n\nEach simulated agent is one gRPC stream on its own \
             HTTP/2 connection; batches of {} findings, {} batches in flight per agent, heartbeats every 10 s. \
             Findings/s counts acknowledged findings only, over a {} s window after a {} s warm-up.\n",
            opts.batch, opts.window, opts.measure_secs, opts.warmup_secs
        );
        let _ = writeln!(
            s,
            "| streams | connected in | findings/s (acked) | coordinator CPU | findings per CPU-second | \
             coordinator cores busy | load generator CPU | findings per commit | commits/s | batch ack p50 / p99 | \
             coordinator RSS max / end |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for f in fanins {
            match f {
                Ok(f) => {
                    let _ = writeln!(
                        s,
                        "| {} | {:.1} s | {:.0} | {:.1} s in {:.1} s | {:.0} | {:.2} | {:.1} s ({:.2} cores) | {:.0} | \
                         {:.1} | {:.0} ms / {:.0} ms | {} / {} |",
                        f.agents,
                        f.connect_secs,
                        f.findings_per_sec(),
                        f.coordinator_cpu,
                        f.window_secs,
                        f.per_core(),
                        f.coordinator_cpu / f.window_secs,
                        f.bench_cpu,
                        f.bench_cpu / f.window_secs,
                        f.group(),
                        f.commits / f.window_secs,
                        f.latency_p50_ms,
                        f.latency_p99_ms,
                        mib(f.rss_max_kib),
                        mib(f.rss_end_kib),
                    );
                }
                Err(e) => {
                    let _ = writeln!(s, "| FAILED: {} | | | | | | | | | | |", format!("{e:#}").replace('\n', " "));
                }
            }
        }
        let _ = writeln!(s, "\nAim: >= 50,000 findings per coordinator CPU-second.\n");
        for f in fanins.iter().flatten() {
            let _ = writeln!(
                s,
                "- {} streams: {} welcomed, {} failed{}; coordinator reported {} open streams; {} findings \
                 acknowledged in the whole run, {} persisted (the store must hold at least every acknowledged \
                 finding).",
                f.agents,
                f.connected,
                f.failed,
                f.first_error.as_deref().map(|e| format!(" (first error: {e})")).unwrap_or_default(),
                f.streams_metric,
                f.total_acked,
                f.total_persisted,
            );
        }
        let idle: Vec<&FaninFigures> = fanins.iter().flatten().filter(|f| f.idle.is_some()).collect();
        for f in idle {
            if let Some(i) = &f.idle {
                let _ = writeln!(
                    s,
                    "\n### Coordinator with {} idle streams (hello done, heartbeats only)\n\n\
                     | streams open | RSS final | RSS max | coordinator CPU | window |\n|---:|---:|---:|---:|---:|\n\
                     | {} | {} | {} | {:.2} s ({:.1} millicores) | {:.0} s |\n\nAim: RSS <= 100 MiB.\n",
                    f.agents,
                    i.streams,
                    mib(i.rss_final_kib),
                    mib(i.rss_max_kib),
                    i.cpu_secs,
                    i.cpu_secs / i.secs * 1000.0,
                    i.secs
                );
            }
        }
    }

    if let Some(pg) = pg {
        let _ = writeln!(s, "### Ingest peer: PostgreSQL\n\n{pg_note}\n");
        match pg {
            Ok((version, rows)) => {
                let _ = writeln!(s, "{version}, fsync=on, synchronous_commit=on, data in a fresh temp dir.\n");
                let _ = writeln!(
                    s,
                    "| pgbench clients | rows per commit | rows/s | server CPU | rows per server CPU-second | \
                     server cores busy | pgbench CPU | commits/s | commit latency avg |"
                );
                let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
                for r in rows {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {:.0} | {:.1} s in {:.1} s | {:.0} | {:.2} | {:.1} s | {:.1} | {:.1} ms |",
                        r.clients,
                        r.rows_per_txn,
                        r.rows_per_sec(),
                        r.server_cpu,
                        r.secs,
                        r.per_core(),
                        r.server_cpu / r.secs,
                        r.client_cpu,
                        r.tps,
                        r.latency_ms
                    );
                }
                let _ = writeln!(s);
            }
            Err(e) => {
                let _ = writeln!(s, "FAILED: {e:#}\n");
            }
        }
    }
    s.push_str(&engine::report(opts, engine));
    s.push_str(&tail::report(&opts.tail, tail));
    s
}

async fn run(opts: Opts) -> anyhow::Result<bool> {
    let biggest = opts.fanin.iter().copied().max().unwrap_or(0);
    if opts.runs("fanin")
        && let Some(limit) = open_files_limit()
    {
        // Each stream is one socket here; the coordinator holds the other end.
        let need = biggest as u64 + 1_000;
        if limit < need {
            bail!(
                "this process may open {limit} files but {biggest} streams need about {need}: \
                 raise the limit (`ulimit -n 65536`, which scripts/bench.sh does)"
            );
        }
    }

    let agent = if opts.runs("agent") {
        let r = agent_minute(&opts).await;
        if let Err(e) = &r {
            eprintln!("remedy-bench: agent idle failed: {e:#}");
        }
        Some(r)
    } else {
        None
    };

    let mut fanins = Vec::new();
    if opts.runs("fanin") {
        for &n in &opts.fanin {
            let r = fanin(&opts, n).await;
            if let Err(e) = &r {
                eprintln!("remedy-bench: fan-in with {n} streams failed: {e:#}");
            }
            fanins.push(r);
        }
    }

    let mut pg_note = String::new();
    let pg = match (&opts.pg_bin, opts.runs("postgres")) {
        (Some(pg_bin), true) => {
            // The group size the coordinator reached with the most streams.
            let measured = fanins
                .iter()
                .flatten()
                .filter(|f| f.commits > 0.0)
                .max_by_key(|f| f.agents)
                .map(|f| (f.group().round() as usize, f.agents));
            let rows = match (opts.pg_rows, measured) {
                (Some(r), _) => {
                    pg_note = format!("{r} rows per transaction (set with --pg-rows).");
                    r
                }
                (None, Some((g, agents))) => {
                    pg_note = format!(
                        "{g} rows per transaction: the findings per commit the coordinator reached with {agents} streams."
                    );
                    g.clamp(1, 200_000)
                }
                (None, None) => {
                    pg_note = "1000 rows per transaction (no coordinator group size was measured).".to_owned();
                    1_000
                }
            };
            pg_note.push_str(
                " Each pgbench transaction inserts that many findings rows (primary key (agent_id, sequence), the \
                 finding as jsonb, generated server-side with generate_series) and commits with an fsync of the WAL. \
                 It does only the findings insert: the coordinator's commit also updates incidents, the timeline and \
                 the agents' sequence records.",
            );
            let r = postgres_peer(&opts, pg_bin, rows).await;
            if let Err(e) = &r {
                eprintln!("remedy-bench: PostgreSQL peer failed: {e:#}");
            }
            Some(r)
        }
        (None, true) => {
            eprintln!("remedy-bench: no --pg-bin: the PostgreSQL peer is skipped");
            None
        }
        _ => None,
    };

    let engine = if opts.runs_engine() {
        let r = engine::run(&opts).await;
        if let Err(e) = &r {
            eprintln!("remedy-bench: runbook engine failed: {e:#}");
        }
        Some(r)
    } else {
        None
    };

    let tail = if opts.runs("tail") {
        let r = tail::run(&opts.tail).await;
        if let Err(e) = &r {
            eprintln!("remedy-bench: log tailing failed: {e:#}");
        }
        Some(r)
    } else {
        None
    };

    let blocks = if opts.runs("blocks") {
        let r = blocks::run(&opts.blocks).await;
        if let Err(e) = &r {
            eprintln!("remedy-bench: IP blocking failed: {e:#}");
        }
        Some(r)
    } else {
        None
    };

    let tls = if opts.runs("tls") {
        let r = handshake::run(Duration::from_secs(opts.tls_secs)).await;
        if let Err(e) = &r {
            eprintln!("remedy-bench: TLS handshakes failed: {e:#}");
        }
        Some(r)
    } else {
        None
    };

    let ok = agent.as_ref().is_none_or(|r| r.is_ok())
        && tls.as_ref().is_none_or(|r| r.is_ok())
        && fanins.iter().all(|r| r.is_ok())
        && pg.as_ref().is_none_or(|r| r.is_ok())
        && engine.as_ref().is_none_or(|r| r.as_ref().is_ok_and(engine::EngineFigures::ok))
        && tail.as_ref().is_none_or(|r| r.as_ref().is_ok_and(tail::TailFigures::ok))
        && blocks.as_ref().is_none_or(|r| r.as_ref().is_ok_and(|f| f.hold.is_some()));
    print!("{}", report(&opts, &agent, &fanins, &pg, &pg_note, &engine, &tail));
    print!("{}", blocks::report(&opts.blocks, &blocks));
    print!("{}", handshake::report(&tls));
    Ok(ok)
}

fn main() -> std::process::ExitCode {
    let opts = match Args::parse().into_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("remedy-bench: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("remedy-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = tokio::time::timeout(OVERALL_LIMIT, run(opts)) => {
                r.unwrap_or_else(|_| Err(anyhow!("the benchmarks took longer than {OVERALL_LIMIT:?}")))
            }
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    // Dropping the futures above stopped every process they started.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("remedy-bench: some measurements failed (see the table)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("remedy-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
