//! The agent's log tailing, against a real `remedy-agent` (release) reading
//! CRI container logs under a temp pod log directory, connected to a real
//! `remedy-coordinator` on loopback.
//!
//! 1. Load: a writer thread appends CRI lines to 50 container logs at a
//!    steady total rate for a bounded time while the agent's and the peer's
//!    (`tail -F | grep -E -c`) RSS and CPU are sampled from `/proc`; then the
//!    agent's `remedy_agent_log_lines_read_total` must reach the lines
//!    written (bounded wait).
//! 2. Latency: for each trial, a burst of error lines for a workload never
//!    seen before, timed from just before the write to the moment the
//!    coordinator publishes the incident the finding opened (it publishes
//!    after the commit), seen on `WatchIncidents`; and, from the same trials,
//!    the finding's `received_at_ms` against the write's wall clock.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use remedy_e2e::procs::{bin, free_addr, http_request, metric_value};
use remedy_proto::v1 as pb;
use remedy_proto::v1::admin_service_client::AdminServiceClient;
use remedy_shared::Timestamp;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

use super::{CoordinatorProc, Proc, clk_tck, cpu_secs, mib, now_ms, rss_kib, wait_for};

/// The classifier's default error patterns, joined for `grep -E`.
const GREP_PATTERN: &str = r#"ERROR|FATAL|level=error|"level":"error"|Exception|status[=: ]5[0-9][0-9]|" 5[0-9][0-9] "#;
const NAMESPACE: &str = "bench";
/// A Deployment's pod-template hash and pod suffix, so pods map to workloads.
const POD_TAIL: &str = "7d9f8b6c5d-x2x4k";

#[derive(Debug, Clone, PartialEq)]
pub struct TailOpts {
    pub rate: u64,
    pub files: usize,
    pub secs: u64,
    pub trials: usize,
    pub burst: usize,
}

impl Default for TailOpts {
    fn default() -> Self {
        TailOpts { rate: 10_000, files: 50, secs: 60, trials: 200, burst: 5 }
    }
}

impl TailOpts {
    pub fn quick() -> Self {
        TailOpts { secs: 10, trials: 20, ..TailOpts::default() }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=200_000).contains(&self.rate) || !(1..=1_000).contains(&self.files) {
            bail!("--tail-rate must be 1..=200000 and --tail-files 1..=1000");
        }
        if !(1..=3_600).contains(&self.secs) || !(1..=5_000).contains(&self.trials) || !(1..=100).contains(&self.burst)
        {
            bail!("--tail-secs must be 1..=3600, --tail-trials 1..=5000, --tail-burst 1..=100");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub rss_mean_kib: f64,
    pub rss_max_kib: u64,
    pub cpu_secs: f64,
    pub secs: f64,
}

impl Usage {
    fn cores(&self) -> f64 {
        if self.secs > 0.0 { self.cpu_secs / self.secs } else { 0.0 }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LoadFigures {
    pub written: u64,
    pub errors_written: u64,
    pub bytes_written: u64,
    pub write_secs: f64,
    pub agent: Usage,
    pub agent_read_in_window: f64,
    pub agent_caught_up_after: Option<f64>,
    pub agent_read_total: f64,
    pub agent_lines_accepted: f64,
    pub agent_error_lines: f64,
    pub peer: Option<Usage>,
    pub peer_count: Option<u64>,
    pub peer_note: String,
}

#[derive(Debug, Clone, Default)]
pub struct LatencyFigures {
    pub trials: usize,
    pub missed: usize,
    /// Write → incident published, µs.
    pub published_us: Vec<u32>,
    /// Write (wall ms) → `received_at_ms`, ms.
    pub received_ms: Vec<i64>,
}

#[derive(Debug)]
pub struct TailFigures {
    pub load: anyhow::Result<LoadFigures>,
    pub latency: anyhow::Result<LatencyFigures>,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

impl TailFigures {
    pub fn ok(&self) -> bool {
        self.load.is_ok() && self.latency.is_ok()
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// A child that is killed (and reaped) when dropped, for the peer's pipes
/// that `Proc` cannot express.
#[derive(Debug)]
struct Piped(Option<Child>);

impl Piped {
    fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `2026-11-27T03:00:00.123000000Z`: CRI writes nanoseconds.
fn cri_time() -> String {
    let ms = Timestamp::from_millis(now_ms()).to_string();
    format!("{}000000Z", ms.trim_end_matches('Z'))
}

fn pod_dir(root: &Path, deployment: &str) -> PathBuf {
    root.join(format!("{NAMESPACE}_{deployment}-{POD_TAIL}_0f3c9a52-{deployment}")).join("app")
}

/// The message of line `n` of file `file`: mostly info, 3 % errors of the
/// seed's categories, some nginx access lines, a few failed logins.
fn message(file: usize, n: u64) -> (String, bool) {
    // A multiplicative hash, so the mix does not beat with the file count.
    let r = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 1000;
    let id = n % 100_000;
    let error = |m: String| (m, true);
    match r {
        0..=5 => error(format!(
            "level=error msg=\"query failed: database connection refused\" db=postgres pool=main req={id}"
        )),
        6..=11 => error(format!("ERROR upstream request timed out after 30s upstream=payments req={id}")),
        12..=17 => error(format!(
            r#"{{"level":"error","msg":"authentication failed: invalid token","user":"u{id}","svc":"api-{file}"}}"#
        )),
        18..=23 => error(format!(
            "10.0.{}.{} - - [27/Nov/2026:03:00:00 +0000] \"GET /api/v1/orders/{id} HTTP/1.1\" 503 97 \"-\" \"Go-http-client/1.1\"",
            file % 250,
            id % 250
        )),
        24..=29 => {
            error(format!("java.lang.IllegalStateException: cart {id} is closed at com.shop.Cart.add(Cart.java:88)"))
        }
        30..=34 => (
            format!(
                "203.0.113.{} - - [27/Nov/2026:03:00:00 +0000] \"POST /login HTTP/1.1\" 401 29 \"-\" \"python-requests/2.31\"",
                10 + n % 4
            ),
            false,
        ),
        35..=199 => (
            format!(
                "10.0.{}.{} - - [27/Nov/2026:03:00:00 +0000] \"GET /api/v1/items?page={} HTTP/1.1\" 200 {} \"-\" \"Mozilla/5.0\"",
                file % 250,
                id % 250,
                id % 40,
                200 + id % 3000
            ),
            false,
        ),
        200..=349 => {
            (format!(r#"{{"level":"info","msg":"cache refreshed","entries":{id},"took_ms":{}}}"#, id % 90), false)
        }
        350..=449 => (format!("DEBUG scheduler tick queue_depth={} worker={}", id % 17, file), false),
        _ => (
            format!(
                "level=info msg=\"request served\" method=GET path=/api/v1/items/{id} status=200 duration_ms={} request_id=r{n}",
                id % 120
            ),
            false,
        ),
    }
}

#[derive(Debug, Default)]
struct Written {
    lines: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
}

/// Appends lines to `files` at `rate` lines/s in total until `secs` have
/// passed or `stop` is set; one write per line, as a container runtime does.
fn write_load(files: &[PathBuf], rate: u64, secs: u64, stop: &AtomicBool, written: &Written) -> anyhow::Result<f64> {
    let mut handles = files
        .iter()
        .map(|p| std::fs::OpenOptions::new().append(true).open(p).with_context(|| format!("open {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let total = rate * secs;
    let t0 = Instant::now();
    let mut n = 0u64;
    let mut line = String::with_capacity(512);
    while n < total && !stop.load(Ordering::Relaxed) {
        // Lines due by now; a writer that fell behind catches up, bounded by
        // `total`.
        let due = ((t0.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        if due > n {
            let ts = cri_time();
            while n < due {
                let file = (n % files.len() as u64) as usize;
                let (msg, error) = message(file, n / files.len() as u64 * files.len() as u64 + file as u64);
                line.clear();
                let _ = writeln!(line, "{ts} stdout F {msg}");
                handles[file].write_all(line.as_bytes()).context("append a log line")?;
                written.lines.fetch_add(1, Ordering::Relaxed);
                written.bytes.fetch_add(line.len() as u64, Ordering::Relaxed);
                if error {
                    written.errors.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(t0.elapsed().as_secs_f64())
}

struct Agent {
    proc: Proc,
    diagnostics: std::net::SocketAddr,
}

impl Agent {
    async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (code, body) = http_request(self.diagnostics, "GET", "/metrics", None).await.context("agent /metrics")?;
        if code != 200 {
            bail!("the agent's /metrics answered {code}");
        }
        Ok(metric_value(&body, name))
    }
}

async fn start_agent(dir: &Path, root: &Path, coordinator: &CoordinatorProc) -> anyhow::Result<Agent> {
    let diagnostics = free_addr();
    let config = dir.join("agent.yaml");
    // raise_at 1 so each latency trial's first error line raises its
    // finding; clear_below may not exceed it.
    let yaml = format!(
        "node_name: bench-node\ncoordinator: {}\nstate_dir: {}\ndiagnostics_listen: \"{diagnostics}\"\n\
         pods:\n  enabled: false\nlogs:\n  root: {}\n  first_start: beginning\n  errors:\n    raise_at: 1\n    clear_below: 1\n",
        coordinator.url(),
        dir.join("state").display(),
        root.display()
    );
    std::fs::write(&config, yaml).context("write the agent's config")?;
    let mut cmd = Command::new(bin("remedy-agent"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--insecure")
        .env("REMEDY_LOG", "info")
        .env_remove("REMEDY_COORDINATOR")
        .env_remove("REMEDY_AGENT_CONFIG")
        .env_remove("NODE_NAME")
        .env_remove("REMEDY_STATE_DIR")
        .env_remove("REMEDY_DIAGNOSTICS_LISTEN");
    let mut proc = Proc::spawn("remedy-agent", &mut cmd, &dir.join("agent.log"), "TERM")?;
    let ready = wait_for("the agent to connect (/readyz)", Duration::from_secs(60), || async move {
        http_request(diagnostics, "GET", "/readyz", None).await.ok().filter(|(c, _)| *c == 200)
    })
    .await;
    if let Err(e) = ready {
        proc.check_alive()?;
        return Err(e);
    }
    Ok(Agent { proc, diagnostics })
}

/// Samples RSS every second and CPU over the whole window.
struct Sampler {
    pids: Vec<u32>,
    cpu0: f64,
    t0: Instant,
    rss_sum: f64,
    rss_n: u64,
    rss_max: u64,
}

impl Sampler {
    fn start(pids: Vec<u32>) -> anyhow::Result<Sampler> {
        let mut cpu0 = 0.0;
        for &p in &pids {
            cpu0 += cpu_secs(p, false)?;
        }
        Ok(Sampler { pids, cpu0, t0: Instant::now(), rss_sum: 0.0, rss_n: 0, rss_max: 0 })
    }

    fn sample(&mut self) -> anyhow::Result<()> {
        let mut rss = 0;
        for &p in &self.pids {
            rss += rss_kib(p)?;
        }
        self.rss_sum += rss as f64;
        self.rss_n += 1;
        self.rss_max = self.rss_max.max(rss);
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<Usage> {
        self.sample()?;
        let mut cpu1 = 0.0;
        for &p in &self.pids {
            cpu1 += cpu_secs(p, false)?;
        }
        Ok(Usage {
            rss_mean_kib: self.rss_sum / self.rss_n as f64,
            rss_max_kib: self.rss_max,
            cpu_secs: cpu1 - self.cpu0,
            secs: self.t0.elapsed().as_secs_f64(),
        })
    }
}

/// `tail -F -q -n 0 FILES | LC_ALL=C grep -E -c PATTERN`.
fn start_peer(files: &[PathBuf]) -> anyhow::Result<(Piped, Piped)> {
    let mut tail = Command::new("tail")
        .args(["-F", "-q", "-n", "0"])
        .args(files)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start tail")?;
    let out = tail.stdout.take().context("tail's stdout")?;
    let tail = Piped(Some(tail));
    let grep = Command::new("grep")
        .args(["-E", "-c", GREP_PATTERN])
        .env("LC_ALL", "C")
        .stdin(Stdio::from(out))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start grep")?;
    Ok((tail, Piped(Some(grep))))
}

/// Stops tail (grep then sees the end of its input) and reads grep's count.
fn stop_peer(tail: Piped, mut grep: Piped) -> anyhow::Result<u64> {
    drop(tail);
    let mut child = grep.0.take().context("grep already stopped")?;
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out).context("read grep's count")?;
    }
    let _ = child.wait();
    out.trim().parse().with_context(|| format!("grep printed `{}`", out.trim()))
}

async fn load(
    opts: &TailOpts,
    agent: &mut Agent,
    files: &[PathBuf],
    written: &Arc<Written>,
) -> anyhow::Result<LoadFigures> {
    let pid = agent.proc.pid();
    let peer = start_peer(files);
    let mut peer_note = format!(
        "`tail -F -q -n 0` on the {} files piped to `LC_ALL=C grep -E -c` with the classifier's error patterns \
         (Debian serves neither fluent-bit nor vector)",
        files.len()
    );
    let peer = match peer {
        Ok(p) => Some(p),
        Err(e) => {
            peer_note = format!("peer not measured: {e:#}");
            None
        }
    };
    // tail opens its files before the first line is written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read0 = agent.metric("remedy_agent_log_lines_read_total").await?;
    let mut agent_s = Sampler::start(vec![pid])?;
    let mut peer_s = match &peer {
        Some((t, g)) => Some(Sampler::start(vec![t.pid(), g.pid()])?),
        None => None,
    };
    eprintln!(
        "remedy-bench: tail: {} lines/s across {} files for {} s (load average {})",
        opts.rate,
        files.len(),
        opts.secs,
        loadavg()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (files, stop, written) = (files.to_vec(), stop.clone(), written.clone());
        let (rate, secs) = (opts.rate, opts.secs);
        std::thread::spawn(move || write_load(&files, rate, secs, &stop, &written))
    };
    let sampled = async {
        for _ in 0..opts.secs {
            tokio::time::sleep(Duration::from_secs(1)).await;
            agent_s.sample()?;
            if let Some(p) = peer_s.as_mut() {
                p.sample()?;
            }
            agent.proc.check_alive()?;
            if writer.is_finished() {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let write_secs = tokio::task::spawn_blocking(move || writer.join())
        .await
        .context("join the writer")?
        .map_err(|_| anyhow!("the writer thread panicked"))??;
    sampled?;
    let agent_usage = agent_s.finish()?;
    let peer_usage = peer_s.map(Sampler::finish).transpose()?;
    let read1 = agent.metric("remedy_agent_log_lines_read_total").await?;
    let total = written.lines.load(Ordering::Relaxed);
    let caught_up_t0 = Instant::now();
    let caught_up = wait_for("the agent to read every line written", Duration::from_secs(60), || async {
        let read = agent.metric("remedy_agent_log_lines_read_total").await.ok()?;
        (read >= total as f64).then_some(())
    })
    .await
    .ok()
    .map(|()| caught_up_t0.elapsed().as_secs_f64());
    // grep has its lines once tail has them; tail polls nothing with inotify.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peer_count = match peer {
        Some((t, g)) => Some(stop_peer(t, g)?),
        None => None,
    };
    Ok(LoadFigures {
        written: total,
        errors_written: written.errors.load(Ordering::Relaxed),
        bytes_written: written.bytes.load(Ordering::Relaxed),
        write_secs,
        agent: agent_usage,
        agent_read_in_window: read1 - read0,
        agent_caught_up_after: caught_up,
        agent_read_total: agent.metric("remedy_agent_log_lines_read_total").await?,
        agent_lines_accepted: agent.metric("remedy_agent_log_lines_accepted_total").await?,
        agent_error_lines: agent.metric("remedy_agent_log_error_lines_total").await?,
        peer: peer_usage,
        peer_count,
        peer_note,
    })
}

async fn latency(
    opts: &TailOpts,
    agent: &mut Agent,
    coordinator: &CoordinatorProc,
    root: &Path,
    written: &Written,
) -> anyhow::Result<LatencyFigures> {
    // Every trial's file exists, with one info line read, before the trials:
    // the time measured is the tailer's and the stream's, not the discovery
    // of a new directory (every `discover_interval`).
    let mut paths = Vec::with_capacity(opts.trials);
    for i in 0..opts.trials {
        let dir = pod_dir(root, &format!("latency-{i:04}"));
        std::fs::create_dir_all(&dir).context("create a pod log directory")?;
        let path = dir.join("0.log");
        std::fs::write(&path, format!("{} stdout F level=info msg=\"started\" trial={i}\n", cri_time()))
            .context("write a log line")?;
        written.lines.fetch_add(1, Ordering::Relaxed);
        paths.push(path);
    }
    let total = written.lines.load(Ordering::Relaxed) as f64;
    wait_for("the agent to read the trials' first lines", Duration::from_secs(60), || async {
        (agent.metric("remedy_agent_log_lines_read_total").await.ok()? >= total).then_some(())
    })
    .await?;

    let channel = Endpoint::from_shared(coordinator.url())?.connect().await.context("connect to the admin API")?;
    let mut admin = AdminServiceClient::new(channel).max_decoding_message_size(remedy_proto::MAX_MESSAGE_BYTES);
    let mut events =
        admin.watch_incidents(pb::WatchIncidentsRequest::default()).await.context("WatchIncidents")?.into_inner();
    let (tx, mut rx) = mpsc::channel::<(String, Instant)>(1024);
    let watcher = tokio::spawn(async move {
        while let Ok(Some(ev)) = events.message().await {
            if ev.initial {
                continue;
            }
            if let Some(inc) = ev.incident
                && inc.kind == "high_error_rate"
                && tx.send((inc.target, Instant::now())).await.is_err()
            {
                break;
            }
        }
    });

    eprintln!("remedy-bench: tail: {} latency trials (load average {})", opts.trials, loadavg());
    let mut figures = LatencyFigures { trials: opts.trials, ..LatencyFigures::default() };
    let mut wall = Vec::with_capacity(opts.trials);
    for (i, path) in paths.iter().enumerate() {
        let target = format!("deployment/{NAMESPACE}/latency-{i:04}");
        let mut burst = String::new();
        let ts = cri_time();
        for k in 0..opts.burst {
            let _ = writeln!(burst, "{ts} stdout F level=error msg=\"database connection refused\" trial={i} n={k}");
        }
        let mut f = std::fs::OpenOptions::new().append(true).open(path).context("open a trial's log")?;
        let wall_ms = now_ms();
        let t0 = Instant::now();
        f.write_all(burst.as_bytes()).context("append the burst")?;
        drop(f);
        written.lines.fetch_add(opts.burst as u64, Ordering::Relaxed);
        wall.push((target.clone(), wall_ms));
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some((t, at)) = rx.recv().await {
                if t == target {
                    return Some(at);
                }
            }
            None
        })
        .await;
        match seen {
            Ok(Some(at)) => {
                figures.published_us.push(u32::try_from(at.duration_since(t0).as_micros()).unwrap_or(u32::MAX));
            }
            Ok(None) => bail!("the WatchIncidents stream ended"),
            Err(_) => figures.missed += 1,
        }
        agent.proc.check_alive()?;
        // A pause between trials, so each one starts with the agent idle, of
        // varying length, so that trials do not fall into step with the
        // tailer's poll interval and all land at the same point of it.
        let jitter = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54;
        tokio::time::sleep(Duration::from_millis(50 + jitter % 500)).await;
    }
    watcher.abort();

    let mut first_received = std::collections::HashMap::<String, i64>::new();
    let mut page_token = String::new();
    for _ in 0..1_000 {
        let page = admin
            .list_findings(pb::ListFindingsRequest {
                kind: "high_error_rate".to_owned(),
                page_size: 5_000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .context("ListFindings")?
            .into_inner();
        for f in page.findings {
            if let Some(finding) = f.finding {
                let e = first_received.entry(finding.target).or_insert(f.received_at_ms);
                *e = (*e).min(f.received_at_ms);
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    for (target, wall_ms) in wall {
        if let Some(r) = first_received.get(&target) {
            figures.received_ms.push(r - wall_ms);
        }
    }
    figures.published_us.sort_unstable();
    figures.received_ms.sort_unstable();
    Ok(figures)
}

pub async fn run(opts: &TailOpts) -> anyhow::Result<TailFigures> {
    let loadavg_start = loadavg();
    let dir = tempfile::Builder::new().prefix("remedy-bench-tail-").tempdir().context("temp dir")?;
    let root = dir.path().join("pods");
    let mut files = Vec::with_capacity(opts.files);
    for i in 0..opts.files {
        let d = pod_dir(&root, &format!("svc-{i:02}"));
        std::fs::create_dir_all(&d).context("create a pod log directory")?;
        let path = d.join("0.log");
        std::fs::write(&path, "").context("create a log file")?;
        files.push(path);
    }
    eprintln!("remedy-bench: tail: starting a coordinator and an agent");
    let coordinator = CoordinatorProc::start().await?;
    let mut agent = start_agent(dir.path(), &root, &coordinator).await?;
    let written = Arc::new(Written::default());
    let load = load(opts, &mut agent, &files, &written).await;
    if let Err(e) = &load {
        eprintln!("remedy-bench: tail: load failed: {e:#}");
    }
    let latency = latency(opts, &mut agent, &coordinator, &root, &written).await;
    if let Err(e) = &latency {
        eprintln!("remedy-bench: tail: latency failed: {e:#}");
    }
    drop(agent);
    drop(coordinator);
    Ok(TailFigures { load, latency, loadavg_start, loadavg_end: loadavg() })
}

fn pct_us(sorted: &[u32], p: f64) -> f64 {
    super::percentile(sorted, p)
}

fn pct_ms(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

pub fn report(opts: &TailOpts, figures: &Option<anyhow::Result<TailFigures>>) -> String {
    let mut s = String::new();
    let Some(figures) = figures else { return s };
    let _ = writeln!(s, "### Log tailing\n");
    let f = match figures {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(s, "FAILED: {e:#}\n");
            return s;
        }
    };
    let _ = writeln!(
        s,
        "Load average (1, 5, 15 min) at the start of this part: {}; at its end: {}.\n",
        f.loadavg_start, f.loadavg_end
    );
    let _ = writeln!(s, "#### Agent tailing {} lines/s across {} files\n", opts.rate, opts.files);
    match &f.load {
        Ok(l) => {
            let _ = writeln!(
                s,
                "{} lines ({:.1} MB, {} error lines) written in {:.1} s ({:.0} lines/s, one write per line).\n",
                l.written,
                l.bytes_written as f64 / 1e6,
                l.errors_written,
                l.write_secs,
                l.written as f64 / l.write_secs.max(1e-9)
            );
            let _ = writeln!(s, "| process | RSS mean | RSS max | CPU | cores | lines |");
            let _ = writeln!(s, "|---|---:|---:|---:|---:|---|");
            let a = &l.agent;
            let _ = writeln!(
                s,
                "| remedy-agent (release; classifier, brute-force detector, stream to the coordinator) | {} | {} | \
                 {:.2} s in {:.1} s | {:.3} | {:.0} read in the window; {} |",
                mib(a.rss_mean_kib as u64),
                mib(a.rss_max_kib),
                a.cpu_secs,
                a.secs,
                a.cores(),
                l.agent_read_in_window,
                match l.agent_caught_up_after {
                    Some(secs) => format!("every line written read {secs:.1} s after the writer stopped"),
                    None => format!("DID NOT KEEP UP: {:.0} of {} read after 60 s", l.agent_read_total, l.written),
                }
            );
            if let Some(p) = &l.peer {
                let _ = writeln!(
                    s,
                    "| peer: tail -F \\| grep -E -c (both processes) | {} | {} | {:.2} s in {:.1} s | {:.3} | {} \
                     error lines counted ({} written) |",
                    mib(p.rss_mean_kib as u64),
                    mib(p.rss_max_kib),
                    p.cpu_secs,
                    p.secs,
                    p.cores(),
                    l.peer_count.map(|c| c.to_string()).unwrap_or_else(|| "?".to_owned()),
                    l.errors_written
                );
            }
            let _ = writeln!(
                s,
                "\nPeer: {}. Agent counters at the end of the part: {:.0} lines read, {:.0} taken by the detectors, \
                 {:.0} error lines. Aim for the agent: <= 0.05 core, <= 50 MiB. CPU resolution 1/{} s.\n",
                l.peer_note,
                l.agent_read_total,
                l.agent_lines_accepted,
                l.agent_error_lines,
                clk_tck()
            );
        }
        Err(e) => {
            let _ = writeln!(s, "FAILED: {e:#}\n");
        }
    }
    let _ = writeln!(s, "#### Line written → finding persisted by the coordinator\n");
    match &f.latency {
        Ok(l) => {
            let p = &l.published_us;
            let _ = writeln!(
                s,
                "{} trials, a burst of {} error lines each for a workload never seen before; {} without an \
                 incident within 10 s.\n",
                l.trials, opts.burst, l.missed
            );
            let _ = writeln!(s, "| measured to | n | p50 | p99 | max |");
            let _ = writeln!(s, "|---|---:|---:|---:|---:|");
            let _ = writeln!(
                s,
                "| the incident published on WatchIncidents (after the commit) | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
                p.len(),
                pct_us(p, 0.50),
                pct_us(p, 0.99),
                pct_us(p, 1.0)
            );
            let r = &l.received_ms;
            let _ = writeln!(
                s,
                "| the finding's `received_at_ms` (stamped before the commit; wall clock, ms) | {} | {} ms | {} ms | \
                 {} ms |",
                r.len(),
                pct_ms(r, 0.50),
                pct_ms(r, 0.99),
                pct_ms(r, 1.0)
            );
            let _ = writeln!(
                s,
                "\nAim: p99 <= 1 s. No peer was measured. For context only, not measured: with Prometheus and \
                 Alertmanager's defaults an error counter is scraped every 15-60 s, the rule evaluated every 15-60 \
                 s (plus its `for:`), and Alertmanager waits `group_wait` (30 s) before the first notification, \
                 so tens of seconds to minutes.\n"
            );
        }
        Err(e) => {
            let _ = writeln!(s, "FAILED: {e:#}\n");
        }
    }
    s
}
