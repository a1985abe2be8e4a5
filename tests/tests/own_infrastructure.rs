//! Remedy never turns on its own nodes, with real agents in network
//! namespaces, real nftables and a real coordinator:
//!
//! - two nodes joined by a link of their own, each failing logins from the
//!   other's address on that link (a deploy key gone wrong): neither is
//!   reported, nothing is banned, and traffic between them still flows;
//!   a real attacker in the same logs is banned on both, so the detector
//!   was listening;
//! - an Alertmanager alert naming a node's address as `source_ip` is
//!   refused by the rails, with whose address it is, before any agent is
//!   asked;
//! - a ban one node cannot apply is taken back from the node that had
//!   applied it, and the timeline says so.
//!
//! Each agent runs under `ip netns exec` in a namespace this test makes;
//! no traffic leaves the links the test made, and they go with the
//! namespaces when the test ends. Needs root and `ip` and `nft`; without
//! them it fails, saying how to install them.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use remedy_e2e::net_tools::{NetNode, banned, require_tools};
use remedy_e2e::procs::{Coordinator, eventually, free_addr};
use remedy_e2e::runs::{about, config, policy, run_end, run_manual, show};
use remedy_e2e::world::{World, alert_payload};
use remedy_proto::v1 as pb;
use remedy_proto::v1::admin_service_client::AdminServiceClient;

const WAIT: Duration = Duration::from_secs(60);
/// A real attacker, in the same logs as the nodes' own addresses.
const ATTACKER: &str = "203.0.113.9";

fn runbooks(dir: &Path) -> PathBuf {
    let catalog = dir.join("runbooks");
    std::fs::create_dir_all(&catalog).unwrap();
    let head =
        |id: &str| format!("apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {{id: {id}, title: {id} test}}\n");
    // SEC-001, trimmed to its block, from a finding or an alert.
    let ban = "priority: security\nmttr_target: 5m\nescalation: {policy: test-chain}\n\
               triggers:\n  findings:\n    - kind: brute_force\n  alerts:\n    - name: P1_BruteForceAttackDetected\n\
               steps:\n  - id: block_attacker\n    block_ip:\n\
               \x20     ip: \"{{ finding.labels.source_ip | default(alert.labels.source_ip) }}\"\n\
               \x20     duration: 1h\n      reason: \"brute force ({{ incident.id }})\"\n";
    std::fs::write(catalog.join("ban.yaml"), format!("{}{ban}", head("BAN"))).unwrap();
    let one = "priority: P2\nmttr_target: 5m\nescalation: {policy: test-chain}\ntriggers: {manual: true}\n\
               steps:\n  - id: block_one\n    block_ip: {ip: \"192.0.2.200\", duration: 1h, reason: partial}\n";
    std::fs::write(catalog.join("one.yaml"), format!("{}{one}", head("ONE"))).unwrap();
    policy(&catalog, "test-chain");
    catalog
}

async fn admin(url: &str) -> AdminServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned()).unwrap().connect().await.unwrap();
    AdminServiceClient::new(channel)
}

/// Every incident, resolved ones included.
async fn incidents(url: &str) -> Vec<pb::Incident> {
    let request = pb::ListIncidentsRequest { include_resolved: true, ..Default::default() };
    admin(url).await.list_incidents(request).await.unwrap().into_inner().incidents
}

/// Every ban, lifted and expired ones included.
async fn every_ban(url: &str) -> Vec<pb::Ban> {
    let request = pb::ListBansRequest { include_inactive: true, ..Default::default() };
    admin(url).await.list_bans(request).await.unwrap().into_inner().bans
}

/// Waits until `count` agents are connected and announce `block_ip`.
async fn blockers(url: &str, count: usize) -> Vec<pb::Agent> {
    eventually(&format!("{count} agents announcing block_ip"), WAIT, || async {
        let agents = admin(url).await.list_agents(pb::ListAgentsRequest::default()).await.ok()?.into_inner().agents;
        let ready: Vec<pb::Agent> =
            agents.into_iter().filter(|a| a.connected && a.capabilities.iter().any(|c| c == "block_ip")).collect();
        (ready.len() == count).then_some(ready)
    })
    .await
}

/// A coordinator listening on every address of the host side, with
/// loopback as its only configured allow-list.
async fn coordinator(dir: &Path, world: &World) -> (Coordinator, u16, String) {
    let catalog = runbooks(dir);
    let extra = "guard_rails:\n  protected:\n    never_block: [127.0.0.0/8, '::1/128']\n";
    let coordinator_config = config(dir, world, extra);
    let port = free_addr().port();
    let listen: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
    let coordinator = Coordinator::start_on(
        &dir.join("coordinator"),
        listen,
        &["--config", coordinator_config.to_str().unwrap(), "--runbooks-dir", catalog.to_str().unwrap()],
    )
    .await;
    (coordinator, port, format!("http://127.0.0.1:{port}"))
}

/// An sshd auth log line, as syslog writes it.
fn failed_login(from: &str, n: usize) -> String {
    format!(
        "Nov 27 03:00:{:02} node sshd[{}]: Failed password for deploy from {from} port {} ssh2\n",
        n % 60,
        900 + n,
        40000 + n
    )
}

/// Agent configuration: reads `auth_log`, raises at ten failures, blocks.
fn agent_config(auth_log: &Path, extra_never_block: &str) -> String {
    format!(
        "logs:\n  root: /nonexistent-pods\n  files: ['{}']\n  first_start: beginning\n  discover_interval: 100ms\n\
         \x20 poll_interval: 50ms\n  brute_force: {{raise_at: 10}}\n\
         pods: {{enabled: false}}\n\
         blocking:\n  enabled: true\n  reconcile_interval: 300ms\n  never_block: [127.0.0.0/8{extra_never_block}]\n",
        auth_log.display()
    )
}

/// Joins `a` and `b` with a veth link of their own: `{subnet}.1` in `a`,
/// `{subnet}.2` in `b`; returns the two addresses.
fn join(a: &NetNode, b: &NetNode, names: (&str, &str), subnet: &str) -> (String, String) {
    let (ia, ib) = (format!("{subnet}.1"), format!("{subnet}.2"));
    remedy_e2e::net_tools::run(
        "ip",
        &["link", "add", names.0, "netns", &a.ns.0, "type", "veth", "peer", "name", names.1, "netns", &b.ns.0],
        None,
    );
    a.ns.ip(&["addr", "add", &format!("{ia}/24"), "dev", names.0]);
    a.ns.ip(&["link", "set", names.0, "up"]);
    b.ns.ip(&["addr", "add", &format!("{ib}/24"), "dev", names.1]);
    b.ns.ip(&["link", "set", names.1, "up"]);
    (ia, ib)
}

/// The agent's `/debug/state`, read inside its namespace.
fn debug_state(node: &NetNode) -> serde_json::Value {
    let text = node.ns.enter(|| {
        let mut s = TcpStream::connect("127.0.0.1:7072").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /debug/state HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut all = String::new();
        s.read_to_string(&mut all).ok()?;
        Some(all)
    });
    let body = text.as_deref().and_then(|t| t.split_once("\r\n\r\n")).map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// Whether a TCP connection from `from` to `listener` (opened in the other
/// namespace) carries a byte both ways.
fn flows(from: &NetNode, listener: &TcpListener, to: SocketAddr) -> bool {
    let accepted = listener.try_clone().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = accepted.accept().ok()?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).ok()?;
        s.write_all(&byte).ok()
    });
    let answered = from.ns.enter(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"x").ok()?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).ok().map(|()| byte[0] == b'x')
    });
    let served = server.join().ok().flatten().is_some();
    answered == Some(true) && served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_failing_logins_from_each_other_are_never_banned_and_an_alert_naming_one_is_refused() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let world = World::start().await;
    let (coordinator, port, url) = coordinator(dir.path(), &world).await;

    let mut one = NetNode::linked("node-1", "rmd-oi-1", "rmdoi1h", "10.83.1");
    let mut two = NetNode::linked("node-2", "rmd-oi-2", "rmdoi2h", "10.83.2");
    let (one_peer, two_peer) = join(&one, &two, ("peer1", "peer2"), "10.84.0");
    // The listener lives in node-2's namespace: connections to it cross
    // node-2's nftables, where a ban of node-1 would drop them.
    let listener = two.ns.enter(move || TcpListener::bind("10.84.0.2:7000").unwrap());
    let service: SocketAddr = format!("{two_peer}:7000").parse().unwrap();
    assert!(flows(&one, &listener, service), "node-1 reaches node-2 before anything happens");

    // Each agent reads an auth log that is empty until both know the
    // cluster: the coordinator tells each the other's addresses.
    let logs: Vec<PathBuf> = ["node-1", "node-2"].iter().map(|n| dir.path().join(format!("{n}-auth.log"))).collect();
    for log in &logs {
        std::fs::write(log, "").unwrap();
    }
    one.start_agent(dir.path(), port, &agent_config(&logs[0], ""));
    two.start_agent(dir.path(), port, &agent_config(&logs[1], ""));
    let agents = blockers(&url, 2).await;
    for agent in &agents {
        let mine = if agent.node_name == "node-1" { &one_peer } else { &two_peer };
        assert!(
            agent.node_addresses.contains(mine),
            "{} announces {mine}: {:?}",
            agent.node_name,
            agent.node_addresses
        );
    }
    for (node, other) in [(&one, &two_peer), (&two, &one_peer)] {
        let want = format!("{other}/32");
        eventually(&format!("{} knows {other} is node infrastructure", node.name), WAIT, || async {
            let state = debug_state(node);
            let ranges = state["infrastructure"]["ranges"].as_array()?.clone();
            ranges.iter().any(|r| r["range"] == want.as_str()).then_some(())
        })
        .await;
    }

    // Now the logs: the other node failing twenty times, and a real
    // attacker failing as often.
    for (log, other) in [(&logs[0], &two_peer), (&logs[1], &one_peer)] {
        let lines: String = (0..20).flat_map(|n| [failed_login(other, n), failed_login(ATTACKER, n)]).collect();
        std::fs::write(log, lines).unwrap();
    }

    // The real attacker is banned on both nodes: the detectors were
    // reading, and the rails let a stranger's ban through.
    for node in [&one, &two] {
        eventually(&format!("{ATTACKER} banned on {}", node.name), WAIT, || async {
            banned(&node.ns, "banned_v4").iter().any(|a| a == ATTACKER).then_some(())
        })
        .await;
    }
    // Both logs have been read to the end by now (the attacker's lines are
    // interleaved with the nodes'): no finding names a node.
    let findings =
        admin(&url).await.list_findings(pb::ListFindingsRequest::default()).await.unwrap().into_inner().findings;
    let sources: Vec<&str> = findings
        .iter()
        .filter_map(|f| f.finding.as_ref().and_then(|f| f.labels.get("source_ip")).map(String::as_str))
        .collect();
    assert!(sources.contains(&ATTACKER), "{sources:?}");
    for node_address in [&one_peer, &two_peer] {
        assert!(!sources.contains(&node_address.as_str()), "a node was reported: {sources:?}");
    }
    for node in [&one, &two] {
        let held = banned(&node.ns, "banned_v4");
        assert!(!held.contains(&one_peer) && !held.contains(&two_peer), "{} bans a node: {held:?}", node.name);
    }
    assert!(flows(&one, &listener, service), "node-1 still reaches node-2");
    for node in [&one, &two] {
        let state = debug_state(node);
        let suppressed = state["log_detectors"]["infrastructure_suppressed"].as_u64().unwrap_or(0);
        assert!(suppressed >= 1, "{}'s detector saw the other node and kept quiet: {state}", node.name);
    }

    // An alert naming node-2's address: the rails refuse it, naming whose
    // it is, and no agent is asked.
    let before = incidents(&url).await;
    let alert =
        alert_payload("P1_BruteForceAttackDetected", &[("source_ip", &two_peer)], "firing", "2026-11-27T03:00:00Z");
    let (code, body) = coordinator.notify(&alert).await;
    assert!((200..300).contains(&code), "the webhook answered {code}: {body}");
    let incident = eventually("the alert's incident", WAIT, || async {
        incidents(&url).await.into_iter().find(|i| i.runbook_id == "BAN" && !before.iter().any(|b| b.id == i.id))
    })
    .await;
    let entries = run_end(&coordinator, &incident.id).await;
    let log = show(&entries);
    let refused = about(&entries, "block_attacker")
        .into_iter()
        .find(|e| e.kind == "decision" && e.details.get("outcome").map(String::as_str) == Some("refused"))
        .unwrap_or_else(|| panic!("no refusal: {log}"));
    assert_eq!(refused.details.get("rail").map(String::as_str), Some("own_infrastructure"), "{log}");
    assert!(
        refused.message.contains("an address of node node-2 (announced by its agent)"),
        "the refusal says whose address it is: {log}"
    );
    assert!(
        !about(&entries, "block_attacker").iter().any(|e| e.kind == "result"),
        "the step never reached an actuator: {log}"
    );
    let bans = every_ban(&url).await;
    assert!(bans.iter().all(|b| b.ip != two_peer), "no ban of node-2 was ever recorded: {bans:?}");
    assert!(flows(&one, &listener, service), "node-1 still reaches node-2 after the alert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_one_node_cannot_apply_is_rolled_back_where_it_was_applied() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let world = World::start().await;
    let (coordinator, port, url) = coordinator(dir.path(), &world).await;

    let mut one = NetNode::linked("node-1", "rmd-rb-1", "rmdrb1h", "10.85.1");
    let mut two = NetNode::linked("node-2", "rmd-rb-2", "rmdrb2h", "10.85.2");
    let quiet = dir.path().join("quiet.log");
    std::fs::write(&quiet, "").unwrap();
    one.start_agent(dir.path(), port, &agent_config(&quiet, ""));
    // node-2's own protections refuse the address the runbook blocks.
    two.start_agent(dir.path(), port, &agent_config(&quiet, ", 192.0.2.0/24"));
    blockers(&url, 2).await;

    let id = run_manual(&coordinator, "ONE", false).await;
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    let result = about(&entries, "block_one")
        .into_iter()
        .find(|e| e.kind == "result")
        .unwrap_or_else(|| panic!("no result: {log}"));
    let evidence = |k: &str| result.details.get(&format!("evidence.{k}")).cloned().unwrap_or_default();
    assert_eq!(result.details.get("status").map(String::as_str), Some("failed"), "{log}");
    assert_eq!(evidence("nodes.node-1.state"), "enforced", "{log}");
    assert_eq!(evidence("nodes.node-2.state"), "refused", "{log}");
    assert_eq!(evidence("nodes.node-1.rollback"), "removed", "{log}");
    assert_eq!(evidence("rolled_back"), "1", "{log}");
    assert!(result.message.contains("rolled back on the 1 node(s) that had applied it"), "{log}");

    // Nowhere is it left: node-1 took it back, node-2 never had it.
    for node in [&one, &two] {
        let held = banned(&node.ns, "banned_v4");
        assert!(!held.iter().any(|a| a == "192.0.2.200"), "{} still holds it: {held:?}", node.name);
    }
    // The record ends, so no node that connects later is sent it.
    let bans = every_ban(&url).await;
    let ban = bans.iter().find(|b| b.ip == "192.0.2.200").unwrap_or_else(|| panic!("no record: {bans:?}"));
    assert_eq!(ban.state, "unblocked", "{ban:?}");
    let states: Vec<(&str, &str)> = ban.nodes.iter().map(|n| (n.node.as_str(), n.state.as_str())).collect();
    assert_eq!(states, vec![("node-1", "rolled_back"), ("node-2", "refused")], "{ban:?}");
}
