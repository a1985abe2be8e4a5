//! IP blocking with real nftables: time to enforce one ban on 1 and on N
//! agents, and what holding many bans costs one agent.
//!
//! Each agent is a real `remedy-agent` (release) started under `ip netns
//! exec` in a network namespace made here, so its `table inet remedy` is
//! that namespace's. Namespace `i` has one veth link to the host side
//! (10.81.i.1 there, 10.81.i.2 inside); the coordinator's agent service
//! runs in this process on 10.81.0.1, which every agent dials through its
//! own link, and blocks go through the coordinator's `agent` actuator, as
//! a runbook step sends them. Nothing is bound beyond the links made here,
//! and the namespaces (with their links) are deleted on the way out.
//!
//! The rule lookup is timed with TCP connects from the host side of link 0
//! to the agent's diagnostics port inside namespace 0: every SYN crosses
//! the input chain and its set lookups. The handshake is finished by the
//! kernel, so how busy the agent is does not enter the figure.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use remedy_coordinator::actuators::agent::AgentActuator;
use remedy_coordinator::actuators::{ActionCall, ActionReport, ActionStatus, Actuator};
use remedy_coordinator::directives::Directives;
use remedy_e2e::procs::{bin, http_request};
use serde_json::{Value, json};

use super::{Proc, mib, rss_kib, wait_for};

const WAIT: Duration = Duration::from_secs(120);
const DIAGNOSTICS_PORT: u16 = 7072;

#[derive(Debug, Clone, PartialEq)]
pub struct BlocksOpts {
    pub agents: usize,
    pub reps: usize,
    pub bans: usize,
    /// Budget for adding bans one directive at a time; the rest go in
    /// through the agent's kept state.
    pub directive_secs: u64,
    pub probes: usize,
}

impl Default for BlocksOpts {
    fn default() -> Self {
        BlocksOpts { agents: 50, reps: 10, bans: 100_000, directive_secs: 60, probes: 500 }
    }
}

impl BlocksOpts {
    pub fn quick() -> Self {
        BlocksOpts { agents: 10, reps: 5, bans: 10_000, directive_secs: 15, probes: 200 }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=200).contains(&self.agents) {
            bail!("--blocks-agents must be between 1 and 200");
        }
        if !(1..=1_000).contains(&self.reps) || !(1..=10_000).contains(&self.probes) {
            bail!("--blocks-reps must be between 1 and 1000, --blocks-probes between 1 and 10000");
        }
        if !(10..=1_000_000).contains(&self.bans) {
            bail!("--blocks-bans must be between 10 and 1000000");
        }
        Ok(())
    }
}

fn sh(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program} (Debian packages iproute2 and nftables)"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted on drop with the veth link inside it (and
/// so its host-side peer).
struct Netns(String);

impl Netns {
    fn new(name: String) -> anyhow::Result<Netns> {
        // Left over from a run that was killed before its drop ran.
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        sh("ip", &["netns", "add", &name], None)?;
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all, None)
    }

    fn nft(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let mut all = vec!["netns", "exec", self.0.as_str(), "nft"];
        all.extend_from_slice(args);
        sh("ip", &all, stdin)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Node {
    // Declared first: the agent stops before its namespace goes.
    agent: Option<Proc>,
    ns: Netns,
    name: String,
    state_dir: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl Node {
    fn diagnostics(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([10, 81, i as u8, 2], DIAGNOSTICS_PORT))
    }

    fn start(&mut self) -> anyhow::Result<()> {
        self.agent =
            Some(Proc::spawn(&format!("agent {}", self.name), Command::new("ip").args(&self.args), &self.log, "TERM")?);
        Ok(())
    }
}

struct Lab {
    nodes: Vec<Node>,
    directives: Directives,
    actuator: AgentActuator,
    // Last: removed after every agent stopped.
    _dir: tempfile::TempDir,
}

fn agent_config(max_bans: usize) -> String {
    format!(
        "logs: {{enabled: false}}\npods: {{enabled: false}}\nblocking:\n  enabled: true\n  max_bans: {max_bans}\n  never_block: [127.0.0.0/8]\n"
    )
}

impl Lab {
    async fn start(n: usize, max_bans: usize) -> anyhow::Result<Lab> {
        let dir = tempfile::tempdir()?;
        let tag = std::process::id() % 100_000;
        let mut nodes = Vec::with_capacity(n);
        let config = dir.path().join("agent.yaml");
        std::fs::write(&config, agent_config(max_bans))?;
        for i in 0..n {
            let ns = Netns::new(format!("rmdb-{tag}-{i}"))?;
            let host_side = format!("rb{tag}x{i}");
            sh("ip", &["link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns", &ns.0], None)?;
            sh("ip", &["addr", "add", &format!("10.81.{i}.1/24"), "dev", &host_side], None)?;
            sh("ip", &["link", "set", &host_side, "up"], None)?;
            ns.ip(&["addr", "add", &format!("10.81.{i}.2/24"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", &format!("10.81.{i}.1")])?;
            let name = format!("bench-node-{i}");
            let state_dir = dir.path().join(format!("state-{i}"));
            let args = [
                "netns".to_owned(),
                "exec".to_owned(),
                ns.0.clone(),
                bin("remedy-agent").to_string_lossy().into_owned(),
                "--node-name".to_owned(),
                name.clone(),
                "--state-dir".to_owned(),
                state_dir.to_string_lossy().into_owned(),
                "--insecure".to_owned(),
                "--coordinator".to_owned(),
                String::new(),
                "--diagnostics-listen".to_owned(),
                format!("10.81.{i}.2:{DIAGNOSTICS_PORT}"),
                "--config".to_owned(),
                config.to_string_lossy().into_owned(),
            ]
            .to_vec();
            let log = dir.path().join(format!("agent-{i}.log"));
            nodes.push(Node { agent: None, ns, name, state_dir, args, log });
        }
        let listener = tokio::net::TcpListener::bind("10.81.0.1:0").await.context("listen on 10.81.0.1")?;
        let url = format!("http://{}", listener.local_addr()?);
        let directives = remedy_e2e::in_process::serve_agents(&dir.path().join("coordinator"), listener);
        for node in &mut nodes {
            node.args[9] = url.clone();
            node.start()?;
        }
        let lab = Lab { nodes, actuator: AgentActuator::new(directives.clone()), directives, _dir: dir };
        lab.wait_connected(n).await?;
        Ok(lab)
    }

    async fn wait_connected(&self, n: usize) -> anyhow::Result<()> {
        let directives = self.directives.clone();
        wait_for(&format!("{n} agents to announce block_ip"), WAIT, || {
            let directives = directives.clone();
            async move {
                let ready = directives.connected().into_iter().filter(|a| a.capabilities.contains("block_ip")).count();
                (ready >= n).then_some(())
            }
        })
        .await
    }

    async fn directive(&self, agents: Value, directive: &str, params: Value) -> ActionReport {
        let call = ActionCall {
            incident_id: "INC-000001".into(),
            step_id: "block".into(),
            kind: "agent".into(),
            params: json!({ "agents": agents, "directive": directive, "params": params, "timeout": "60s" }),
            dry_run: false,
            deadline: Duration::from_secs(60),
            accepted_risk: None,
        };
        self.actuator.execute(&call).await
    }

    /// Blocks `ip` on the first `n` agents; the time until all answered,
    /// failing unless each says the ban is enforced.
    async fn enforce(&self, n: usize, ip: &str) -> anyhow::Result<Duration> {
        let agents = if n == 1 { json!({ "node": self.nodes[0].name }) } else { json!("all") };
        let params = json!({ "ip": ip, "duration": "1h", "reason": "bench" });
        let started = Instant::now();
        let report = self.directive(agents, "block_ip", params).await;
        let took = started.elapsed();
        if report.status != ActionStatus::Succeeded {
            bail!("block of {ip} on {n} agents: {report:?}");
        }
        let enforced = self.nodes[..n]
            .iter()
            .filter(|node| report.evidence.get(&format!("{}.state", node.name)).is_some_and(|s| s == "enforced"))
            .count();
        if enforced != n {
            bail!("block of {ip}: {enforced} of {n} agents said enforced: {report:?}");
        }
        Ok(took)
    }

    async fn state(&self) -> anyhow::Result<Value> {
        let (code, body) = http_request(self.nodes[0].diagnostics(0), "GET", "/debug/state", None).await?;
        if code != 200 {
            bail!("/debug/state answered {code}");
        }
        Ok(serde_json::from_str::<Value>(&body)?["blocking"].clone())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The i-th address banned in the holding part: 100.64.0.0/10, which no
/// link here uses.
fn held(i: usize) -> String {
    format!("100.{}.{}.{}", 64 + (i >> 16), (i >> 8) & 255, i & 255)
}

/// TCP connect times in microseconds from the host side of link 0 to the
/// agent's diagnostics port in namespace 0.
fn connects(probes: usize) -> anyhow::Result<Vec<f64>> {
    let addr = SocketAddr::from(([10, 81, 0, 2], DIAGNOSTICS_PORT));
    let mut out = Vec::with_capacity(probes);
    for _ in 0..probes {
        let started = Instant::now();
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).context("connect through the ruleset")?;
        out.push(started.elapsed().as_secs_f64() * 1e6);
        drop(s);
        // Keeps the agent's accept queue and TIME_WAIT from being the figure.
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(sorted(out))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[derive(Debug, Default)]
pub struct BlocksFigures {
    /// (agents, sorted times in ms)
    enforce: Vec<(usize, Vec<f64>)>,
    peer_one: Vec<f64>,
    peer_all: Vec<f64>,
    pub hold: Option<HoldFigures>,
    hold_error: Option<String>,
    load_start: String,
    load_end: String,
}

#[derive(Debug, Default)]
pub struct HoldFigures {
    bans: usize,
    by_directive: usize,
    directive_first_ms: f64,
    directive_last_ms: f64,
    directive_secs: f64,
    restart_secs: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    json_bytes: u64,
    list_ms: Vec<f64>,
    block_at_full_ms: Vec<f64>,
    lookup_empty: Vec<f64>,
    lookup_full: Vec<f64>,
    set_elements: usize,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub async fn run(opts: &BlocksOpts) -> anyhow::Result<BlocksFigures> {
    let mut figures = BlocksFigures { load_start: loadavg(), ..BlocksFigures::default() };
    let mut lab = Lab::start(opts.agents, opts.bans + 1_000).await?;
    // Before any ban: the baseline of the lookup.
    let lookup_empty = connects(opts.probes)?;

    let mut counts = vec![1];
    if opts.agents > 1 {
        counts.push(opts.agents);
    }
    for (k, &n) in counts.iter().enumerate() {
        let mut times = Vec::with_capacity(opts.reps);
        for rep in 0..opts.reps {
            times.push(ms(lab.enforce(n, &format!("198.18.{k}.{}", rep + 1)).await?));
        }
        figures.enforce.push((n, sorted(times)));
    }

    // The raw cost: one nft run adding an element, as the agent's own
    // nft runs do, to a set of the same kind.
    let set = "table inet t {\n  set s {\n    type ipv4_addr\n    flags interval, timeout\n  }\n}\n";
    for node in &lab.nodes {
        node.ns.nft(&["-f", "-"], Some(set))?;
    }
    for rep in 0..opts.reps {
        let started = Instant::now();
        lab.nodes[0]
            .ns
            .nft(&["add", "element", "inet", "t", "s", &format!("{{ 198.19.0.{} timeout 1h }}", rep + 1)], None)?;
        figures.peer_one.push(ms(started.elapsed()));
        let started = Instant::now();
        let ip = format!("{{ 198.19.1.{} timeout 1h }}", rep + 1);
        let children: Vec<_> = lab
            .nodes
            .iter()
            .map(|node| {
                Command::new("ip")
                    .args(["netns", "exec", &node.ns.0, "nft", "add", "element", "inet", "t", "s", &ip])
                    .stdout(Stdio::null())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for mut c in children {
            if !c.wait()?.success() {
                bail!("nft add element failed in the peer");
            }
        }
        figures.peer_all.push(ms(started.elapsed()));
    }
    for node in &lab.nodes {
        node.ns.nft(&["delete", "table", "inet", "t"], None)?;
    }
    figures.peer_one = sorted(std::mem::take(&mut figures.peer_one));
    figures.peer_all = sorted(std::mem::take(&mut figures.peer_all));

    // Only agent 0 stays for the holding part.
    for node in lab.nodes.iter_mut().skip(1) {
        node.agent = None;
    }
    match hold(opts, &mut lab, lookup_empty).await {
        Ok(h) => figures.hold = Some(h),
        Err(e) => {
            eprintln!("remedy-bench: holding bans failed: {e:#}");
            figures.hold_error = Some(format!("{e:#}"));
        }
    }
    figures.load_end = loadavg();
    Ok(figures)
}

async fn hold(opts: &BlocksOpts, lab: &mut Lab, lookup_empty: Vec<f64>) -> anyhow::Result<HoldFigures> {
    let mut h = HoldFigures { bans: opts.bans, lookup_empty, ..HoldFigures::default() };
    let pid = lab.nodes[0].agent.as_ref().map(Proc::pid).ok_or_else(|| anyhow!("agent 0 is not running"))?;
    h.rss_before_kib = rss_kib(pid)?;
    let node0 = json!({ "node": lab.nodes[0].name });

    // One directive at a time, as long as the budget lasts.
    let budget = Duration::from_secs(opts.directive_secs);
    let started = Instant::now();
    let mut times = Vec::new();
    while times.len() < opts.bans && started.elapsed() < budget {
        let t = Instant::now();
        let report =
            lab.directive(node0.clone(), "block_ip", json!({ "ip": held(times.len()), "duration": "1h" })).await;
        if report.status != ActionStatus::Succeeded {
            bail!("block_ip {}: {report:?}", held(times.len()));
        }
        times.push(ms(t.elapsed()));
    }
    h.by_directive = times.len();
    h.directive_secs = started.elapsed().as_secs_f64();
    let window = (times.len() / 10).clamp(1, 100);
    h.directive_first_ms = times[..window].iter().sum::<f64>() / window as f64;
    h.directive_last_ms = times[times.len() - window..].iter().sum::<f64>() / window as f64;

    // The rest through the agent's kept state: what a restart with that
    // many bans finds, and must put back in force.
    let path = lab.nodes[0].state_dir.join("blocks.json");
    if h.by_directive < opts.bans {
        let held_before = lab.state().await?["bans_total"].as_u64().unwrap_or(0);
        lab.nodes[0].agent = None;
        let mut kept: Value = serde_json::from_slice(&std::fs::read(&path).context("read blocks.json")?)?;
        let bans = kept["bans"].as_array_mut().ok_or_else(|| anyhow!("blocks.json has no bans"))?;
        let model = bans.iter().find(|b| b["ip"].as_str().is_some_and(|ip| ip.starts_with("100."))).cloned();
        let model = model.ok_or_else(|| anyhow!("no ban to copy in blocks.json"))?;
        for i in h.by_directive..opts.bans {
            let mut ban = model.clone();
            ban["ip"] = json!(held(i));
            ban["by"] = json!("bench: kept state");
            bans.push(ban);
        }
        std::fs::write(&path, serde_json::to_vec(&kept)?)?;
        let started = Instant::now();
        lab.nodes[0].start()?;
        let want = held_before + (opts.bans - h.by_directive) as u64;
        let mut last = Value::Null;
        let enforced = async {
            loop {
                if let Ok(state) = lab.state().await {
                    let done = state["bans_total"].as_u64() == Some(want)
                        && state["last_pass_at"].is_number()
                        && state["last_error"].is_null()
                        && state["bans"].as_array().is_some_and(|b| b.iter().all(|b| b["state"] == "enforced"));
                    last = state;
                    if done {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if tokio::time::timeout(WAIT, enforced).await.is_err() {
            bail!("the restarted agent did not enforce {want} bans within {WAIT:?}; last state: {last}");
        }
        h.restart_secs = started.elapsed().as_secs_f64();
        lab.wait_connected(1).await?;
    }
    h.json_bytes = file_len(&path);
    let listing = lab.nodes[0].ns.nft(&["-j", "list", "set", "inet", "remedy", "banned_v4"], None)?;
    h.set_elements = serde_json::from_str::<Value>(&listing)?["nftables"]
        .as_array()
        .and_then(|a| a.iter().find_map(|o| o["set"]["elem"].as_array().map(Vec::len)))
        .unwrap_or(0);

    // What a pass reads, timed on its own; then whole block directives,
    // each one a pass over the full table and a rewrite of blocks.json.
    for _ in 0..opts.reps.min(5) {
        let t = Instant::now();
        lab.nodes[0].ns.nft(&["-j", "list", "table", "inet", "remedy"], None)?;
        h.list_ms.push(ms(t.elapsed()));
    }
    for rep in 0..opts.reps.min(5) {
        let t = Instant::now();
        let report = lab
            .directive(node0.clone(), "block_ip", json!({ "ip": format!("198.18.9.{}", rep + 1), "duration": "1h" }))
            .await;
        if report.status != ActionStatus::Succeeded {
            bail!("block_ip at full table: {report:?}");
        }
        h.block_at_full_ms.push(ms(t.elapsed()));
    }
    h.list_ms = sorted(std::mem::take(&mut h.list_ms));
    h.block_at_full_ms = sorted(std::mem::take(&mut h.block_at_full_ms));
    h.lookup_full = connects(opts.probes)?;
    let pid = lab.nodes[0].agent.as_ref().map(Proc::pid).ok_or_else(|| anyhow!("agent 0 is not running"))?;
    h.rss_after_kib = rss_kib(pid)?;
    Ok(h)
}

pub fn report(opts: &BlocksOpts, figures: &Option<anyhow::Result<BlocksFigures>>) -> String {
    let mut s = String::new();
    let Some(figures) = figures else { return s };
    let _ = writeln!(s, "### IP blocking (nftables, one network namespace per agent)\n");
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
        f.load_start, f.load_end
    );
    let _ = writeln!(s, "| one block, sent to | repetitions | p50 | max |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for (n, t) in &f.enforce {
        let _ = writeln!(
            s,
            "| {n} agent{} (directive → every agent answered enforced) | {} | {:.1} ms | {:.1} ms |",
            if *n == 1 { "" } else { "s" },
            t.len(),
            pct(t, 0.5),
            pct(t, 1.0)
        );
    }
    let _ = writeln!(
        s,
        "| peer: `ip netns exec NS nft add element inet t s {{ ADDR timeout 1h }}`, 1 namespace | {} | {:.1} ms | {:.1} ms |",
        f.peer_one.len(),
        pct(&f.peer_one, 0.5),
        pct(&f.peer_one, 1.0)
    );
    let _ = writeln!(
        s,
        "| peer: the same in all {} namespaces at once | {} | {:.1} ms | {:.1} ms |\n",
        opts.agents,
        f.peer_all.len(),
        pct(&f.peer_all, 0.5),
        pct(&f.peer_all, 1.0)
    );
    let Some(h) = &f.hold else {
        let _ = writeln!(s, "Holding bans FAILED: {}\n", f.hold_error.as_deref().unwrap_or("unknown"));
        return s;
    };
    let _ = writeln!(s, "| holding {} bans on one agent | value |", h.bans);
    let _ = writeln!(s, "|---|---:|");
    let _ = writeln!(
        s,
        "| bans added by block_ip directives, one at a time | {} in {:.1} s |",
        h.by_directive, h.directive_secs
    );
    let _ = writeln!(
        s,
        "| time per block_ip directive: first / last {} of them | {:.1} ms / {:.1} ms |",
        (h.by_directive / 10).clamp(1, 100),
        h.directive_first_ms,
        h.directive_last_ms
    );
    if h.by_directive < h.bans {
        let _ = writeln!(
            s,
            "| the other {} written to blocks.json, agent restarted: start → all enforced | {:.1} s |",
            h.bans - h.by_directive,
            h.restart_secs
        );
    }
    let _ = writeln!(s, "| elements in `banned_v4` (nft) | {} |", h.set_elements);
    let _ = writeln!(s, "| agent RSS before / after | {} / {} |", mib(h.rss_before_kib), mib(h.rss_after_kib));
    let _ = writeln!(s, "| blocks.json | {:.1} MiB |", h.json_bytes as f64 / 1_048_576.0);
    let _ = writeln!(
        s,
        "| `nft -j list table inet remedy` (what each pass reads), p50 / max of {} | {:.0} ms / {:.0} ms |",
        h.list_ms.len(),
        pct(&h.list_ms, 0.5),
        pct(&h.list_ms, 1.0)
    );
    let _ = writeln!(
        s,
        "| one more block_ip at full table (persist + a full pass), p50 / max of {} | {:.0} ms / {:.0} ms |",
        h.block_at_full_ms.len(),
        pct(&h.block_at_full_ms, 0.5),
        pct(&h.block_at_full_ms, 1.0)
    );
    for (label, t) in [("no bans", &h.lookup_empty), ("full table", &h.lookup_full)] {
        let _ = writeln!(
            s,
            "| TCP connect through the input chain, {label}: p50 / p99 of {} | {:.0} µs / {:.0} µs |",
            t.len(),
            pct(t, 0.5),
            pct(t, 0.99)
        );
    }
    let _ = writeln!(s);
    s
}
