//! Faults between and under Remedy's processes, with real processes on
//! loopback: a coordinator killed again and again mid-stream, a network path
//! that silently drops everything, and a store whose disk fills up. None of
//! them may lose a finding or record one twice. And neither a connected
//! agent nor a log reader that went away (the pipe to it closed) may keep
//! a process from stopping on SIGTERM.
//!
//! Each test prints what it sent, what the store holds, duplicates and
//! losses, and how long the phases took (`--nocapture` to see them).

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use remedy_coordinator::store::COORDINATOR_SOURCE;
use remedy_e2e::fault_proxy::FaultProxy;
use remedy_e2e::findings::{
    assert_each_incident_counts_its_findings_once, post_batches, spools_drained, submit_spread,
};
use remedy_e2e::procs::{Agent, Coordinator, all_findings, bin, eventually, free_addr, http_request, metric_value};
use remedy_proto::v1 as pb;
use remedy_proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(120);
/// For the 100,000 findings of the restart test to drain on a busy machine.
const LONG_WAIT: Duration = Duration::from_secs(300);

/// Findings per node as submitted: (target, unique summary).
type Submitted = BTreeMap<String, Vec<(String, String)>>;

/// What the store holds compared with what was sent.
#[derive(Debug)]
struct Tally {
    sent: usize,
    received: usize,
    duplicates: usize,
    lost: usize,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sent {}, received {}, duplicates {}, lost {}", self.sent, self.received, self.duplicates, self.lost)
    }
}

/// Compares the store with `submitted`, and checks that every node's
/// sequences are 1..=N, each once: a finding spooled or recorded twice
/// would show as a repeated summary or a sequence too many.
fn tally(stored: &BTreeMap<(String, u64), pb::StoredFinding>, submitted: &Submitted) -> Tally {
    let mut seen = BTreeSet::new();
    let mut duplicates = 0;
    for f in stored.values() {
        let summary = f.finding.as_ref().map(|x| x.summary.clone()).unwrap_or_default();
        if !seen.insert((f.node_name.clone(), summary)) {
            duplicates += 1;
        }
    }
    let mut lost = 0;
    for (node, items) in submitted {
        lost += items.iter().filter(|(_, s)| !seen.contains(&(node.clone(), s.clone()))).count();
        let sequences: Vec<u64> = stored.values().filter(|f| &f.node_name == node).map(|f| f.sequence).collect();
        assert_eq!(sequences, (1..=items.len() as u64).collect::<Vec<_>>(), "sequences of {node} are 1..=N, once each");
    }
    Tally { sent: submitted.values().map(Vec::len).sum(), received: stored.len(), duplicates, lost }
}

/// Asserts the store holds exactly what was submitted, once each.
fn assert_exactly_once(tally: &Tally) {
    assert_eq!(tally.duplicates, 0, "{tally}");
    assert_eq!(tally.lost, 0, "{tally}");
    assert_eq!(tally.received, tally.sent, "{tally}");
}

/// What every agent here leaves off: its own signals (a busy test machine
/// would raise node_cpu_high or process_hot, and this machine's real pod
/// logs would raise error findings), so that the store holds exactly what
/// the test submitted.
const OWN_SIGNALS_OFF: &str = "detectors: {node_cpu_high: {enabled: false}, node_memory_high: {enabled: false}, \
     node_load_high: {enabled: false}, disk_usage_high: {enabled: false}}\n\
     processes: {enabled: false}\nlogs: {enabled: false}\n";

/// Writes an agent configuration file (`text` after [`OWN_SIGNALS_OFF`])
/// and returns the arguments that use it.
fn agent_config(dir: &Path, text: &str) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("agent.yaml");
    std::fs::write(&path, format!("{OWN_SIGNALS_OFF}{text}")).unwrap();
    vec!["--config".into(), path.display().to_string()]
}

/// Sequences acknowledged to all `agents` together: findings stored.
async fn acknowledged(agents: &[Agent]) -> u64 {
    let mut total = 0;
    for a in agents {
        total += a.debug_state().await["connection"]["last_acked"].as_u64().unwrap_or(0);
    }
    total
}

async fn agent_metric(agent: &Agent, name: &str) -> f64 {
    let (_, body) = http_request(agent.diagnostics, "GET", "/metrics", None).await.expect("read the agent's /metrics");
    metric_value(&body, name)
}

/// Waits until the agents hold nothing and `total` findings were
/// acknowledged, then checks the store holds that many. The wait polls the
/// agents only: listing the whole store on every poll would slow the writer
/// it waits for.
async fn delivered(coordinator: &Coordinator, agents: &[Agent], total: usize, limit: Duration) {
    eventually(&format!("{total} findings acknowledged and every spool drained"), limit, || async {
        (acknowledged(agents).await == total as u64 && spools_drained(agents).await).then_some(())
    })
    .await;
    let mut admin = coordinator.admin().await;
    assert_eq!(from_agents(&mut admin).await.len(), total, "the store holds what was acknowledged");
}

/// The stored findings agents sent, without those the coordinator raised
/// itself (an agent silent for `stale_after` gets an `agent_stale`
/// finding, cleared when it returns).
async fn from_agents(admin: &mut AdminServiceClient<Channel>) -> BTreeMap<(String, u64), pb::StoredFinding> {
    let mut stored = all_findings(admin).await;
    stored.retain(|(source, _), _| source != COORDINATOR_SOURCE);
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_ten_times_during_100_000_findings_from_20_agents_loses_none_and_doubles_none() {
    const AGENTS: usize = 20;
    const PER_AGENT: usize = 5_000;
    const TARGETS: usize = 5;
    const KILLS: usize = 10;
    /// Findings an agent holds unacknowledged before its submitter waits:
    /// keeps the submissions spread over the whole run instead of spooled
    /// up front, so kills land with findings both in flight and still to come.
    const BACKLOG: u64 = 2_500;
    const TOTAL: usize = AGENTS * PER_AGENT;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = Coordinator::start(&dir.path().join("c")).await;
    let mut agents = Vec::new();
    for n in 0..AGENTS {
        let home = dir.path().join(format!("a{n}"));
        let args = agent_config(&home, "reconnect: { initial: 100ms, max: 1s }\n");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        agents.push(Agent::start_with(&home, &format!("node-{n}"), &coordinator.url(), &args).await);
    }
    let submitted = submit_spread(&agents, PER_AGENT, TARGETS);
    let agents = Arc::new(agents);
    let mut submitters = Vec::new();
    for n in 0..AGENTS {
        let agents = agents.clone();
        let items = submitted[&agents[n].node].clone();
        submitters.push(tokio::spawn(async move {
            let agent = &agents[n];
            for chunk in items.chunks(250) {
                post_batches(agent, chunk).await;
                eventually("the agent's backlog to shrink", WAIT, || async {
                    let depth = agent.debug_state().await["spool"]["depth"].as_u64().unwrap_or(u64::MAX);
                    (depth < BACKLOG).then_some(())
                })
                .await;
            }
        }));
    }

    // Kills driven by progress: after every eleventh of the stream is
    // stored, SIGKILL the coordinator and start it again on the same data.
    let mut kill_log = Vec::new();
    // Resends each coordinator recognised before it died: its counter dies
    // with it, so it is read just before the kill.
    let mut recognised = 0.0;
    for k in 1..=KILLS {
        let at = (k * TOTAL / (KILLS + 1)) as u64;
        let stored = eventually(&format!("{at} findings acknowledged"), WAIT, || async {
            let n = acknowledged(&agents).await;
            (n >= at).then_some(n)
        })
        .await;
        recognised += coordinator.metric("remedy_findings_duplicate_total").await;
        coordinator.kill();
        let down = Instant::now();
        coordinator.restart().await;
        kill_log.push((stored, down.elapsed()));
    }
    for s in submitters {
        s.await.unwrap();
    }
    let submitted_by = started.elapsed();
    delivered(&coordinator, &agents, TOTAL, LONG_WAIT).await;
    let delivered_by = started.elapsed();

    let mut admin = coordinator.admin().await;
    let stored = from_agents(&mut admin).await;
    let tally = tally(&stored, &submitted);
    println!("coordinator killed {KILLS} times: {tally}");
    for (i, (acked, restart)) in kill_log.iter().enumerate() {
        println!("  kill {}: after {acked} acknowledged, back up in {restart:?}", i + 1);
    }
    recognised += coordinator.metric("remedy_findings_duplicate_total").await;
    println!("  resends the coordinators recognised as already stored and did not store again: {recognised}");
    println!("  all submitted by {submitted_by:?}, all stored and acknowledged by {delivered_by:?}");
    assert_exactly_once(&tally);

    assert_each_incident_counts_its_findings_once(&mut admin, &submitted, AGENTS * TARGETS).await;
    println!("  test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_path_is_detected_by_the_agent_and_delivery_resumes_exactly_once() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&dir.path().join("c")).await;
    let proxy = FaultProxy::start(coordinator.grpc).await;
    let home = dir.path().join("a");
    // A short keepalive so that the dead path is noticed in seconds; the
    // default (20s, then 10s for the answer) would do the same, slower.
    let args =
        agent_config(&home, "keepalive: { interval: 1s, timeout: 1s }\nreconnect: { initial: 100ms, max: 1s }\n");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with(&home, "node-p", &proxy.url(), &args).await;
    let items: Vec<(String, String)> =
        (0..2_000).map(|i| (format!("service/p{}", i % 4), format!("node-p finding {i}"))).collect();
    let submitted: Submitted = [("node-p".to_owned(), items.clone())].into();
    let agents = [agent];
    let agent = &agents[0];

    // The path works: the first quarter arrives through the proxy.
    post_batches(agent, &items[..500]).await;
    delivered(&coordinator, &agents, 500, WAIT).await;

    proxy.stall();
    let stalled = Instant::now();
    let reconnects_before = agent_metric(agent, "remedy_agent_reconnects_total").await;
    post_batches(agent, &items[500..1_500]).await;
    // Nothing reaches the coordinator, nothing is acknowledged, and the
    // agent notices by itself: no error or reset ever arrives.
    let state = eventually("the agent to give up on the silent stream", WAIT, || async {
        let state = agent.debug_state().await;
        let reconnects = agent_metric(agent, "remedy_agent_reconnects_total").await;
        (state["connection"]["state"] != "connected" && reconnects > reconnects_before).then_some(state)
    })
    .await;
    let detected_in = stalled.elapsed();
    assert_eq!(state["spool"]["depth"], 1_000, "the findings sent into the black hole stay spooled: {state}");
    assert_eq!(state["connection"]["last_acked"], 500, "nothing past the stall was acknowledged: {state}");
    let mut admin = coordinator.admin().await;
    assert_eq!(from_agents(&mut admin).await.len(), 500, "nothing crossed the stalled path");
    // Still dead after a few more attempts: each new connection is silent too.
    let attempts = eventually("more reconnection attempts through the stalled path", WAIT, || async {
        let reconnects = agent_metric(agent, "remedy_agent_reconnects_total").await;
        (reconnects >= reconnects_before + 3.0).then_some(reconnects)
    })
    .await;
    assert_eq!(agent.debug_state().await["spool"]["depth"], 1_000);

    proxy.resume();
    let resumed = Instant::now();
    delivered(&coordinator, &agents, 1_500, WAIT).await;
    let recovered_in = resumed.elapsed();

    // A cut (every connection reset at once) with findings in flight.
    post_batches(agent, &items[1_500..]).await;
    proxy.cut();
    delivered(&coordinator, &agents, 2_000, WAIT).await;

    let stored = from_agents(&mut admin).await;
    let tally = tally(&stored, &submitted);
    println!("black-holed path: {tally}");
    println!(
        "  detected by the agent in {detected_in:?} (last error: {}), {} reconnection attempts while stalled",
        state["connection"]["last_error"],
        attempts - reconnects_before
    );
    println!("  everything delivered {recovered_in:?} after the path came back");
    println!("  proxy connections accepted: {}", proxy.connections_accepted());
    println!("  test took {:?}", started.elapsed());
    assert_exactly_once(&tally);
}

/// A tmpfs mounted for the test, unmounted when dropped (also on panic).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (the test needs root): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path: path.to_path_buf() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.path).status().is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds it open: detach it now, gone once released.
            let _ = Command::new("umount").arg("--lazy").arg(&self.path).status();
        }
    }
}

/// Fills the filesystem holding `path` until it refuses more; returns the
/// bytes written. Bounded by `limit`.
fn fill(path: &Path, limit: u64) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let mut written = 0;
    for chunk in [1024 * 1024, 4096, 1] {
        let block = vec![0xa5u8; chunk];
        while written < limit {
            match file.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let _ = file.sync_all();
    written
}

async fn coordinator_readyz(coordinator: &Coordinator) -> (u16, String) {
    http_request(coordinator.http, "GET", "/readyz", None).await.unwrap_or((0, String::new()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acknowledgements_says_why_and_delivery_resumes_once_space_is_freed() {
    const TMPFS_BYTES: u64 = 32 * 1024 * 1024;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let coordinator_dir = dir.path().join("c");
    // Declared before the coordinator so it is dropped after it: the
    // process must be gone before the unmount.
    let data = coordinator_dir.join("data");
    let _tmpfs = Tmpfs::mount(&data, "32m");
    let mut coordinator = Coordinator::start(&coordinator_dir).await;
    let home = dir.path().join("a");
    let args = agent_config(&home, "reconnect: { initial: 100ms, max: 1s }\n");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with(&home, "node-d", &coordinator.url(), &args).await;
    let items: Vec<(String, String)> =
        (0..3_000).map(|i| (format!("service/d{}", i % 4), format!("node-d finding {i}"))).collect();
    let submitted: Submitted = [("node-d".to_owned(), items.clone())].into();
    let agents = [agent];
    let agent = &agents[0];

    post_batches(agent, &items[..1_000]).await;
    delivered(&coordinator, &agents, 1_000, WAIT).await;
    assert_eq!(coordinator_readyz(&coordinator).await.0, 200, "ready while the store commits");

    let filler = data.join("filler");
    let filled = fill(&filler, TMPFS_BYTES);
    let errors_before = coordinator.metric("remedy_store_commit_errors_total").await;
    let full = Instant::now();
    post_batches(agent, &items[1_000..2_000]).await;
    let (ready, why) = eventually("the coordinator to report its store failing", WAIT, || async {
        let errors = coordinator.metric("remedy_store_commit_errors_total").await;
        let (code, body) = coordinator_readyz(&coordinator).await;
        (errors > errors_before && code == 503).then_some((code, body))
    })
    .await;
    let refused_in = full.elapsed();
    assert!(why.contains("No space left on device"), "/readyz names the cause: {why}");
    let log = coordinator.log();
    let logged = log.lines().find(|l| l.contains("store commit failed")).unwrap_or_default().to_owned();
    assert!(logged.contains("No space left on device"), "the log names the cause: {logged}");
    assert!(coordinator.exited().is_none(), "the coordinator keeps running: {log}");
    // Commits that found room in pages the store had already allocated may
    // have gone through before one needed more; whatever was not
    // acknowledged is still in the agent's spool.
    let state = agent.debug_state().await;
    let acked = state["connection"]["last_acked"].as_u64().unwrap();
    assert!(acked < 2_000, "not everything was acknowledged on a full disk: {state}");
    assert_eq!(state["spool"]["depth"], 2_000 - acked, "the agent keeps what was not acknowledged: {state}");
    let errors_while_full = coordinator.metric("remedy_store_commit_errors_total").await;

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    delivered(&coordinator, &agents, 2_000, WAIT).await;
    let resumed_in = freed.elapsed();
    assert_eq!(coordinator_readyz(&coordinator).await.0, 200, "ready again once commits succeed");

    // The store survived the failed commits: more findings go in, and a
    // restart reads everything back.
    post_batches(agent, &items[2_000..]).await;
    delivered(&coordinator, &agents, 3_000, WAIT).await;
    coordinator.restart().await;
    let mut admin = coordinator.admin().await;
    let stored = from_agents(&mut admin).await;
    let tally = tally(&stored, &submitted);
    println!("full disk: {tally}");
    println!(
        "  filled {filled} bytes; refused (/readyz {ready}, {} commit errors) {refused_in:?} after the disk filled",
        errors_while_full - errors_before
    );
    println!("  /readyz said: {}", why.trim());
    println!("  everything delivered {resumed_in:?} after the space was freed");
    println!("  test took {:?}", started.elapsed());
    assert_exactly_once(&tally);
}

/// Waits (bounded) for `child` to exit; `None` when it is still running.
async fn exit_of(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some(status) = child.try_wait().expect("ask whether the process exited") {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_processes_stop_on_sigterm_with_agents_connected_and_whatever_read_their_log_gone() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().expect("temp dir");
    let (grpc, http, diagnostics) = (free_addr(), free_addr(), free_addr());
    let spawn = |name: &str, args: Vec<String>| {
        Command::new(bin(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Read by nobody once the handle is dropped below: every log
            // line after that is a write to a closed pipe.
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"))
    };
    let mut coordinator = spawn(
        "remedy-coordinator",
        [
            "--data-dir",
            &dir.path().join("coordinator").display().to_string(),
            "--grpc-listen",
            &grpc.to_string(),
            "--http-listen",
            &http.to_string(),
            "--insecure",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    eventually("the coordinator's /healthz", WAIT, || async move {
        http_request(http, "GET", "/healthz", None).await.ok().filter(|(code, _)| *code == 200)
    })
    .await;
    let mut agent = spawn(
        "remedy-agent",
        [
            "--node-name",
            "node-pipe",
            "--state-dir",
            &dir.path().join("agent").display().to_string(),
            "--coordinator",
            &format!("http://{grpc}"),
            "--insecure",
            "--diagnostics-listen",
            &diagnostics.to_string(),
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    // Ready once it reached the coordinator over its stream.
    eventually("the agent's /readyz", WAIT, || async move {
        http_request(diagnostics, "GET", "/readyz", None).await.ok().filter(|(code, _)| *code == 200)
    })
    .await;
    drop(coordinator.stderr.take());
    drop(agent.stderr.take());

    let terminate = |child: &std::process::Child| {
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "SIGTERM to {pid}");
    };
    // The coordinator first, its agent still connected: the agent's stream
    // must not hold it open.
    terminate(&coordinator);
    let coordinator_exit = exit_of(&mut coordinator, WAIT).await;
    let agent_running = agent.try_wait().expect("ask whether the agent exited").is_none();
    terminate(&agent);
    let agent_exit = exit_of(&mut agent, WAIT).await;
    // Neither is left running, whatever is asserted next.
    for (child, exit) in [(&mut agent, agent_exit), (&mut coordinator, coordinator_exit)] {
        if exit.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    for (name, exit) in [("coordinator", coordinator_exit), ("agent", agent_exit)] {
        assert!(exit.is_some_and(|s| s.success()), "the {name} did not stop cleanly on SIGTERM: {exit:?}");
    }
    assert!(agent_running, "the agent outlived its coordinator, reconnecting");
}
