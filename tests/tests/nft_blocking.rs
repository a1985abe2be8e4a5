//! IP blocking with real nftables, in network namespaces this test makes.
//!
//! Each test makes two namespaces joined by a veth pair: `srv` holds a TCP
//! server and the real `remedy-agent` (started under `ip netns exec`, so
//! its `table inet remedy` is that namespace's, never the host's), `cli`
//! the client. The coordinator's agent service runs in this process on a
//! listener opened inside `srv`, and the test sends directives through the
//! coordinator's `agent` actuator, as a runbook step does. Connections,
//! the agent's diagnostics and the listener are all made from threads that
//! entered the namespace: no traffic leaves the namespaces.
//!
//! Needs root and the `ip` and `nft` programs (Debian packages iproute2
//! and nftables); without them it fails, saying how to install them.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use remedy_coordinator::actuators::agent::AgentActuator;
use remedy_coordinator::actuators::{ActionCall, ActionReport, ActionStatus, Actuator};
use remedy_coordinator::directives::Directives;
use remedy_e2e::net_tools::{Netns, require_tools};
use remedy_e2e::procs::{Proc, bin, eventually, metric_value};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
/// How long a connection attempt may take before it counts as blocked.
const CONNECT: Duration = Duration::from_millis(700);
const PORT: u16 = 8080;
const DIAGNOSTICS: &str = "127.0.0.1:7072";

/// `nft -j list ruleset` in `ns`, as JSON objects without the metainfo.
fn ruleset(ns: &Netns) -> Vec<Value> {
    let listing: Value = serde_json::from_str(&ns.nft(&["-j", "list", "ruleset"], None)).unwrap();
    listing["nftables"].as_array().unwrap().iter().filter(|o| o.get("metainfo").is_none()).cloned().collect()
}

/// Everything in `ns`'s ruleset that is not `table inet remedy`'s.
fn others(ns: &Netns) -> Vec<Value> {
    ruleset(ns)
        .into_iter()
        .filter(|o| {
            let body = o.as_object().and_then(|m| m.values().next()).unwrap();
            let table = body.get("table").or_else(|| o.get("table").and(body.get("name"))).unwrap();
            !(body["family"] == "inet" && table == "remedy")
        })
        .collect()
}

/// Two namespaces, a server in one, an agent beside it, a coordinator's
/// agent service in this process.
struct Lab {
    srv: Netns,
    cli: Netns,
    srv_v4: IpAddr,
    srv_v6: IpAddr,
    cli_v4: IpAddr,
    cli_v6: IpAddr,
    node: String,
    directives: Directives,
    actuator: AgentActuator,
    agent: Option<Proc>,
    agent_args: Vec<String>,
    dir: tempfile::TempDir,
}

static LABS: AtomicUsize = AtomicUsize::new(0);

/// The agent's configuration: an allow-listed 10.77.k.200, pod and service
/// ranges, a short enforcement interval.
fn agent_config(k: usize) -> String {
    format!(
        "logs: {{enabled: false}}\npods: {{enabled: false}}\nblocking:\n  enabled: true\n  reconcile_interval: 300ms\n  never_block: [127.0.0.0/8, 10.77.{k}.200]\n  pod_cidrs: [10.244.0.0/16]\n  service_cidrs: [10.96.0.0/12]\n"
    )
}

impl Lab {
    async fn start() -> Lab {
        require_tools();
        let k = LABS.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{k}", std::process::id() % 100_000);
        let srv = Netns::new(&format!("rmd-srv-{tag}"));
        let cli = Netns::new(&format!("rmd-cli-{tag}"));
        srv.ip(&["link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns", &cli.0]);
        let (srv_v4, cli_v4) = (format!("10.77.{k}.1"), format!("10.77.{k}.2"));
        let (srv_v6, cli_v6) = (format!("fd00:77:{k}::1"), format!("fd00:77:{k}::2"));
        for (ns, dev, v4, v6) in [(&srv, "vs", &srv_v4, &srv_v6), (&cli, "vc", &cli_v4, &cli_v6)] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ip(&["-6", "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ns.ip(&["link", "set", dev, "up"]);
        }

        // The server accepts and drops connections for as long as the test runs.
        let listener = srv.enter(|| TcpListener::bind(("::", PORT)).unwrap());
        std::thread::spawn(move || for _ in listener.incoming() {});

        let dir = tempfile::tempdir().unwrap();
        let directives = coordinator(&srv, &dir.path().join("c")).await;
        let node = format!("node-{k}");
        let config = dir.path().join("agent.yaml");
        std::fs::write(&config, agent_config(k)).unwrap();
        let agent_args = [
            "netns",
            "exec",
            &srv.0,
            bin("remedy-agent").to_str().unwrap(),
            "--node-name",
            &node,
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
            "--insecure",
            "--coordinator",
            &directives.1,
            "--diagnostics-listen",
            DIAGNOSTICS,
            "--config",
            config.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec();
        let mut lab = Lab {
            srv,
            cli,
            srv_v4: srv_v4.parse().unwrap(),
            srv_v6: srv_v6.parse().unwrap(),
            cli_v4: cli_v4.parse().unwrap(),
            cli_v6: cli_v6.parse().unwrap(),
            node,
            actuator: AgentActuator::new(directives.0.clone()),
            directives: directives.0,
            agent: None,
            agent_args,
            dir,
        };
        lab.start_agent().await;
        lab
    }

    /// Starts (or starts again) the agent; waits until it announced the
    /// block directives to the coordinator.
    async fn start_agent(&mut self) {
        if let Some(mut old) = self.agent.take() {
            old.kill();
        }
        let log = self.dir.path().join("agent.log");
        self.agent = Some(Proc::spawn_program(&format!("agent {}", self.node), Path::new("ip"), &self.agent_args, log));
        let node = self.node.clone();
        let directives = self.directives.clone();
        eventually("the agent announced block_ip to the coordinator", WAIT, || {
            let directives = directives.clone();
            let node = node.clone();
            async move {
                directives
                    .connected()
                    .into_iter()
                    .find(|a| a.node_name == node && a.capabilities.contains("block_ip"))
                    .map(|_| ())
            }
        })
        .await;
    }

    /// Whether the client gets a TCP connection to the server at `server`.
    fn connects(&self, server: IpAddr) -> bool {
        let addr = SocketAddr::new(server, PORT);
        self.cli.enter(move || TcpStream::connect_timeout(&addr, CONNECT).is_ok())
    }

    async fn wait_connects(&self, server: IpAddr, wanted: bool, what: &str) {
        eventually(what, WAIT, || async { (self.connects(server) == wanted).then_some(()) }).await;
    }

    /// Sends `directive` with `params` to every agent, through the
    /// coordinator's `agent` actuator.
    async fn directive(&self, directive: &str, params: Value, dry_run: bool) -> ActionReport {
        let call = ActionCall {
            incident_id: "INC-000001".into(),
            step_id: "block".into(),
            kind: "agent".into(),
            params: json!({ "agents": "all", "directive": directive, "params": params, "timeout": "30s" }),
            dry_run,
            deadline: Duration::from_secs(30),
            accepted_risk: None,
        };
        self.actuator.execute(&call).await
    }

    fn outcome<'a>(&self, report: &'a ActionReport) -> (&'a str, &'a str) {
        let get = |k: &str| report.evidence.get(&format!("{}.{k}", self.node)).map(String::as_str).unwrap_or("");
        (get("outcome"), get("message"))
    }

    fn evidence<'a>(&self, report: &'a ActionReport, key: &str) -> &'a str {
        report.evidence.get(&format!("{}.{key}", self.node)).map(String::as_str).unwrap_or("")
    }

    /// GET on the agent's diagnostics endpoint, inside `srv`.
    async fn get(&self, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
        let text = self.srv.enter(move || {
            use std::io::{Read, Write};
            let mut s = TcpStream::connect(DIAGNOSTICS).ok()?;
            s.write_all(request.as_bytes()).ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        });
        let text = text.unwrap_or_default();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        if text.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() }
    }

    async fn blocking_state(&self) -> Value {
        let body = self.get("/debug/state").await;
        serde_json::from_str::<Value>(&body).map(|v| v["blocking"].clone()).unwrap_or(Value::Null)
    }

    async fn drift_total(&self) -> f64 {
        metric_value(&self.get("/metrics").await, "remedy_agent_blocks_drift_total")
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The agent goes before its namespace.
        if let Some(mut agent) = self.agent.take() {
            agent.kill();
        }
    }
}

/// The coordinator's agent service, in this process, on a listener opened
/// in `srv` (the agent dials it on that namespace's loopback): the hub
/// and the URL the agent dials.
async fn coordinator(srv: &Netns, dir: &Path) -> (Directives, String) {
    let std_listener = srv.enter(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        l
    });
    let url = format!("http://{}", std_listener.local_addr().unwrap());
    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
    (remedy_e2e::in_process::serve_agents(dir, listener), url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_stops_the_client_until_it_is_lifted_or_expires_and_touches_no_other_table() {
    let lab = Lab::start().await;
    // Another table, as kube-proxy or a CNI would have one.
    lab.srv.nft(
        &["-f", "-"],
        Some(
            "table inet other {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    tcp dport 9 accept\n  }\n}\ntable ip nat_like {\n  chain post {\n    type nat hook postrouting priority 100;\n  }\n}\n",
        ),
    );
    let untouched = others(&lab.srv);
    assert!(untouched.len() >= 4, "{untouched:?}");
    assert!(lab.connects(lab.srv_v4) && lab.connects(lab.srv_v6), "the client connects before any ban");

    let v4 = lab.cli_v4.to_string();
    let v6 = lab.cli_v6.to_string();
    let report = lab.directive("block_ip", json!({ "ip": v4, "duration": "1h", "reason": "brute force" }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(lab.outcome(&report).0, "succeeded", "{report:?}");
    assert_eq!(lab.evidence(&report, "state"), "enforced", "{report:?}");
    assert!(!lab.connects(lab.srv_v4), "blocked over IPv4");
    assert!(lab.connects(lab.srv_v6), "IPv6 is another address: not blocked");

    let report = lab.directive("block_ip", json!({ "ip": v6, "duration": "1h" }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert!(!lab.connects(lab.srv_v6), "blocked over IPv6");

    let state = lab.blocking_state().await;
    assert_eq!(state["bans_total"], 2, "{state:#}");
    assert!(state["bans"].as_array().unwrap().iter().all(|b| b["state"] == "enforced"), "{state:#}");
    let report = lab.directive("list_blocks", json!({}), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(lab.evidence(&report, "bans"), "2");
    assert_eq!(lab.evidence(&report, &format!("{v4}.state")), "enforced", "{report:?}");
    assert_eq!(lab.evidence(&report, &format!("{v4}.reason")), "brute force", "{report:?}");

    let report = lab.directive("unblock_ip", json!({ "ip": v4 }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert!(lab.connects(lab.srv_v4), "unblocked over IPv4");
    assert!(!lab.connects(lab.srv_v6), "IPv6 still blocked");

    // A rehearsal checks everything and changes nothing.
    let before = ruleset(&lab.srv);
    let report = lab.directive("block_ip", json!({ "ip": v4, "duration": "1h" }), true).await;
    assert_eq!(lab.outcome(&report).0, "dry_run", "{report:?}");
    assert!(lab.outcome(&report).1.contains("nft accepted the change (--check)"), "{report:?}");
    assert_eq!(ruleset(&lab.srv), before, "a dry run changes nothing");
    assert!(lab.connects(lab.srv_v4));

    // A short ban lifts itself.
    lab.directive("unblock_ip", json!({ "ip": v6 }), false).await;
    let report = lab.directive("block_ip", json!({ "ip": v6, "duration": "3s" }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert!(!lab.connects(lab.srv_v6), "blocked for three seconds");
    lab.wait_connects(lab.srv_v6, true, "the three-second ban to expire").await;
    eventually("the expired ban to be forgotten", WAIT, || async {
        (lab.blocking_state().await["bans_total"] == 0).then_some(())
    })
    .await;
    assert_eq!(lab.drift_total().await, 0.0, "an expiry is no drift");

    assert_eq!(others(&lab.srv), untouched, "nothing outside table inet remedy changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_puts_back_a_deleted_table_or_ban_and_reports_the_drift() {
    let mut lab = Lab::start().await;
    let v4 = lab.cli_v4.to_string();
    let report = lab.directive("block_ip", json!({ "ip": v4, "duration": "1h" }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert!(!lab.connects(lab.srv_v4));
    assert_eq!(lab.drift_total().await, 0.0);

    lab.srv.nft(&["delete", "table", "inet", "remedy"], None);
    eventually("the agent to report the deleted table", WAIT, || async {
        (lab.drift_total().await >= 1.0).then_some(())
    })
    .await;
    lab.wait_connects(lab.srv_v4, false, "the ban to be in force again").await;
    let state = lab.blocking_state().await;
    assert_eq!(state["bans"][0]["drifts"], 1, "{state:#}");
    assert!(state["last_drift"].to_string().contains("table inet remedy was deleted"), "{state:#}");

    let drift = lab.drift_total().await;
    lab.srv.nft(&["delete", "element", "inet", "remedy", "banned_v4", &format!("{{ {v4} }}")], None);
    eventually("the agent to put the deleted ban back", WAIT, || async {
        let state = lab.blocking_state().await;
        (lab.drift_total().await > drift && state["bans"][0]["drifts"] == 2).then_some(())
    })
    .await;
    lab.wait_connects(lab.srv_v4, false, "the ban to be in force again").await;
    let report = lab.directive("list_blocks", json!({}), false).await;
    assert_eq!(lab.evidence(&report, &format!("{v4}.drifts")), "2", "{report:?}");

    // A restart re-asserts the kept bans, with the time they had left.
    lab.agent.as_mut().unwrap().kill();
    lab.srv.nft(&["delete", "table", "inet", "remedy"], None);
    assert!(lab.connects(lab.srv_v4), "no agent, no table: the client gets through");
    lab.start_agent().await;
    lab.wait_connects(lab.srv_v4, false, "the restarted agent to put the ban back").await;
    let state = lab.blocking_state().await;
    let left = state["bans"][0]["remaining_seconds"].as_u64().unwrap();
    assert!((3000..3600).contains(&left), "the ban keeps its end: {state:#}");
}

/// A block changes one element and never reads the table; when that is
/// not enough (someone deleted the element being renewed, or the whole
/// table), the agent falls back to a full pass within the same directive,
/// so the ban is in force when the answer comes, whichever of the agent's
/// own passes (every 300 ms here) got there first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_that_meets_a_changed_table_is_enforced_by_a_full_pass_at_once() {
    let lab = Lab::start().await;
    let v4 = lab.cli_v4.to_string();
    let report = lab.directive("block_ip", json!({ "ip": v4, "duration": "1h" }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(lab.evidence(&report, "state"), "enforced", "{report:?}");

    // Renewing a ban whose element someone deleted: the one-element
    // replacement is refused by nft, the full pass puts it back.
    lab.srv.nft(&["delete", "element", "inet", "remedy", "banned_v4", &format!("{{ {v4} }}")], None);
    assert!(lab.connects(lab.srv_v4), "the deletion let the client through");
    let report = lab.directive("block_ip", json!({ "ip": v4, "duration": "2h" }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(lab.evidence(&report, "state"), "enforced", "{report:?}");
    assert!(!lab.connects(lab.srv_v4), "in force when the directive answered");

    // Unblocking an element that is already gone: still unblocked, no error.
    lab.srv.nft(&["delete", "element", "inet", "remedy", "banned_v4", &format!("{{ {v4} }}")], None);
    let report = lab.directive("unblock_ip", json!({ "ip": v4 }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");

    // Blocking with the whole table gone: rebuilt and enforced at once.
    lab.srv.nft(&["delete", "table", "inet", "remedy"], None);
    let report = lab.directive("block_ip", json!({ "ip": v4, "duration": "1h" }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert!(!lab.connects(lab.srv_v4), "the table was rebuilt with the ban before the answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_addresses_are_refused_with_their_reason_and_nothing_changes() {
    let lab = Lab::start().await;
    let before = ruleset(&lab.srv);
    let k = lab.srv_v4.to_string().split('.').nth(2).unwrap().to_owned();
    let cases = [
        ("127.0.0.1".to_owned(), "loopback", "it covers loopback addresses"),
        ("::1".to_owned(), "loopback", "it covers loopback addresses"),
        (lab.srv_v4.to_string(), "node_address", "an address of this node"),
        (lab.srv_v6.to_string(), "node_address", "an address of this node"),
        ("10.244.7.9".to_owned(), "pod_cidr", "the pod range 10.244.0.0/16"),
        ("10.96.0.10".to_owned(), "service_cidr", "the service range 10.96.0.0/12"),
        (format!("10.77.{k}.200"), "never_block", "never blocked"),
        ("11.0.0.0/8".to_owned(), "needs_approval", "it needs an approval"),
        ("2001:db8::/32".to_owned(), "needs_approval", "it needs an approval"),
    ];
    for (ip, reason, says) in &cases {
        let report = lab.directive("block_ip", json!({ "ip": ip, "duration": "1h" }), false).await;
        assert_eq!(report.status, ActionStatus::Failed, "{ip}: {report:?}");
        let (outcome, message) = lab.outcome(&report);
        assert_eq!(outcome, "refused", "{ip}: {report:?}");
        assert!(message.starts_with(&format!("not blocking {ip}: ")) && message.contains(says), "{ip}: {message}");
        assert_eq!(lab.evidence(&report, "reason"), *reason, "{ip}: {report:?}");
    }
    assert_eq!(ruleset(&lab.srv), before, "a refused block changes nothing");
    assert_eq!(lab.blocking_state().await["bans_total"], 0);
    let metrics = lab.get("/metrics").await;
    assert_eq!(metric_value(&metrics, "remedy_agent_blocks_refused_total{reason=\"loopback\"}"), 2.0, "{metrics}");
    assert!(lab.connects(lab.srv_v4) && lab.connects(lab.srv_v6));
}
