//! Cluster-wide IP blocking (SEC-001) with real processes and real
//! nftables: one node's brute-force log becomes a ban on three nodes,
//! shown per node by `remedyctl blocks`; a node that comes back empty is
//! sent the active ban when it says hello; the edge provider (Cloudflare's
//! API, played by the world server on loopback) gets a rule beside them;
//! `remedyctl blocks unblock` lifts it everywhere; a short ban ends by
//! itself on the nodes and at the edge; an address in the rails'
//! `never_block` is refused before anything is sent.
//!
//! Each agent runs under `ip netns exec` in a network namespace this test
//! makes, so its `table inet remedy` is that namespace's, never the host's.
//! Each namespace has one veth link to the host side, with a private /24 of
//! its own; the coordinator is a real process listening on every address
//! of the host side, which the agents dial through their link. No traffic
//! leaves the links the test made. The namespaces (and with them the
//! links) go when the test ends, whether it passes or not.
//!
//! Needs root and the `ip` and `nft` programs (Debian packages iproute2
//! and nftables); without them it fails, saying how to install them.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use remedy_e2e::net_tools::{self, NetNode, banned, cri, require_tools};
use remedy_e2e::procs::{Coordinator, eventually, free_addr, remedyctl};
use remedy_e2e::runs::{about, config, run_end, show, timeline};
use remedy_e2e::world::World;
use remedy_proto::v1 as pb;
use remedy_proto::v1::admin_service_client::AdminServiceClient;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const ATTACKER: &str = "203.0.113.7";
/// In the coordinator's `never_block`, not in the agents': only the rails
/// stand between it and a ban.
const PROTECTED: &str = "198.51.100.99";
const NODES: usize = 3;
/// Blocked for two seconds, to watch a ban end by itself.
const BRIEF: &str = "192.0.2.77";

/// Runs a program to completion; panics with its output when it fails.
fn run(program: &str, args: &[&str]) -> String {
    net_tools::run(program, args, None)
}

/// Makes namespace `i` with a veth link to the host side: 10.79.i.1 on the
/// host, 10.79.i.2 inside.
fn node(i: usize) -> NetNode {
    NetNode::linked(&format!("node-{i}"), &format!("rmd-cb-{i}"), &format!("rmdcb{i}h"), &format!("10.79.{i}"))
}

/// Starts `node`'s agent, dialling the coordinator's `port`, with `logs`
/// and IP blocking on.
fn start_agent(node: &mut NetNode, dir: &Path, port: u16, logs: &str) {
    let config = format!(
        "{logs}pods: {{enabled: false}}\nblocking:\n  enabled: true\n  reconcile_interval: 300ms\n  never_block: [127.0.0.0/8]\n"
    );
    node.start_agent(dir, port, &config);
}

fn runbooks(dir: &Path) -> PathBuf {
    let catalog = dir.join("runbooks");
    std::fs::create_dir_all(&catalog).unwrap();
    let head =
        |id: &str| format!("apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {{id: {id}, title: {id} test}}\n");
    // SEC-001, trimmed to its block.
    let ban = "priority: security\nmttr_target: 5m\nescalation: {policy: test-chain}\n\
               triggers:\n  findings:\n    - kind: brute_force\n\
               steps:\n  - id: block_attacker\n    block_ip:\n      ip: \"{{ finding.labels.source_ip }}\"\n\
               \x20     duration: 1h\n      edge: true\n      reason: \"brute force ({{ incident.id }})\"\n";
    std::fs::write(catalog.join("ban.yaml"), format!("{}{ban}", head("BAN"))).unwrap();
    let never = format!(
        "priority: P2\nmttr_target: 5m\nescalation: {{policy: test-chain}}\ntriggers: {{manual: true}}\n\
         steps:\n  - id: block_friend\n    block_ip: {{ip: \"{PROTECTED}\", duration: 1h, reason: mistake}}\n"
    );
    std::fs::write(catalog.join("never.yaml"), format!("{}{never}", head("NEVER"))).unwrap();
    let short = format!(
        "priority: P2\nmttr_target: 5m\nescalation: {{policy: test-chain}}\ntriggers: {{manual: true}}\n\
         steps:\n  - id: block_briefly\n    block_ip: {{ip: \"{BRIEF}\", duration: 2s, edge: true, reason: brief}}\n"
    );
    std::fs::write(catalog.join("short.yaml"), format!("{}{short}", head("SHORT"))).unwrap();
    remedy_e2e::runs::policy(&catalog, "test-chain");
    catalog
}

async fn admin(url: &str) -> AdminServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("a valid URL")
        .connect()
        .await
        .expect("connect to the admin API");
    AdminServiceClient::new(channel)
}

/// Runs `runbook` now, as alice; the incident's id.
async fn run_manual(url: &str, runbook: &str, dry_run: bool) -> String {
    let request = pb::RunRunbookRequest {
        runbook_id: runbook.into(),
        dry_run,
        requested_by: "alice".into(),
        ..Default::default()
    };
    admin(url).await.run_runbook(request).await.expect("run a runbook").into_inner().incident_id
}

/// `remedyctl blocks -A -o json`.
fn blocks_json(url: &str) -> Vec<Value> {
    let (status, out, err) = remedyctl(url, &["blocks", "-A", "-o", "json"]);
    assert!(status.success(), "remedyctl blocks failed: {err}");
    serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}")).as_array().unwrap().clone()
}

fn ban_of<'a>(bans: &'a [Value], ip: &str) -> Option<&'a Value> {
    bans.iter().find(|b| b["ip"] == ip)
}

fn node_states(ban: &Value) -> Vec<(String, String)> {
    ban["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap().to_owned(), n["state"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brute_force_on_one_node_is_blocked_on_three_and_lifted_everywhere() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let world = World::start().await;
    let catalog = runbooks(dir.path());
    let token = dir.path().join("edge-token");
    std::fs::write(&token, "edge-secret\n").unwrap();
    let extra = format!(
        "guard_rails:\n  protected:\n    never_block: [127.0.0.0/8, '::1/128', 198.51.100.0/24]\n\
         edge: {{base_url: '{}/client/v4', zone_id: zone-1, token_file: '{}'}}\n",
        world.url(),
        token.display()
    );
    let coordinator_config = config(dir.path(), &world, &extra);
    let port = free_addr().port();
    let listen: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
    let coordinator = Coordinator::start_on(
        &dir.path().join("coordinator"),
        listen,
        &["--config", coordinator_config.to_str().unwrap(), "--runbooks-dir", catalog.to_str().unwrap()],
    )
    .await;
    let url = format!("http://127.0.0.1:{port}");

    let pods = dir.path().join("pods");
    let mut nodes: Vec<NetNode> = (0..NODES).map(node).collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        // Only node-0 serves the login page, so only its agent reads a log.
        let logs = if i == 0 {
            format!(
                "logs:\n  root: {}\n  first_start: beginning\n  discover_interval: 100ms\n  poll_interval: 50ms\n\
                 \x20 brute_force: {{raise_at: 10}}\n",
                pods.display()
            )
        } else {
            "logs: {enabled: false}\n".to_owned()
        };
        start_agent(node, dir.path(), port, &logs);
    }
    eventually("three agents announced block_ip", WAIT, || async {
        let agents = admin(&url).await.list_agents(pb::ListAgentsRequest::default()).await.ok()?.into_inner().agents;
        let ready = agents.iter().filter(|a| a.connected && a.capabilities.iter().any(|c| c == "block_ip")).count();
        (ready == NODES).then_some(())
    })
    .await;

    // The attack, in node-0's ingress log only.
    let mut lines = Vec::new();
    for n in 0..30 {
        lines.push(cri(&format!(
            "{ATTACKER} - - [27/Nov/2026:03:00:00 +0000] \"POST /login HTTP/1.1\" 401 153 \"-\" \"curl/8\""
        )));
        lines.push(cri(&format!(
            "198.51.100.10 - - [27/Nov/2026:03:00:00 +0000] \"GET /static/app.js?v={n} HTTP/1.1\" 200 153 \"-\" \"Mozilla/5.0\""
        )));
    }
    let log_dir = pods.join("ingress-nginx_ingress-nginx-controller-6c9b7d5f4f-k2m7q_0f1e2d3c-uid").join("controller");
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::write(log_dir.join("0.log"), lines.concat()).unwrap();

    let incident = eventually("an incident handled by BAN", WAIT, || async {
        let list = admin(&url)
            .await
            .list_incidents(pb::ListIncidentsRequest { include_resolved: true, ..Default::default() })
            .await
            .ok()?
            .into_inner();
        list.incidents.into_iter().find(|i| i.runbook_id == "BAN")
    })
    .await;
    let block_result = eventually("the block's result on the timeline", WAIT, || async {
        let entries = admin(&url)
            .await
            .get_incident(pb::GetIncidentRequest { id: incident.id.clone() })
            .await
            .ok()?
            .into_inner()
            .timeline;
        about(&entries, "block_attacker").into_iter().find(|e| e.kind == "result").cloned()
    })
    .await;
    let entries = timeline(&coordinator, &incident.id).await;
    let log = show(&entries);
    let evidence = |k: &str| block_result.details.get(&format!("evidence.{k}")).cloned().unwrap_or_default();
    assert_eq!(block_result.details.get("status").map(String::as_str), Some("succeeded"), "{log}");
    assert_eq!(evidence("ip"), ATTACKER, "{log}");
    assert_eq!(evidence("enforced"), "3", "{log}");
    for node in &nodes {
        assert_eq!(evidence(&format!("nodes.{}.state", node.name)), "enforced", "{log}");
    }
    assert!(
        about(&entries, "block_attacker")
            .iter()
            .any(|e| e.kind == "decision" && e.details.get("targets").map(String::as_str) == Some("ip/203.0.113.7")),
        "the rails weighed the address: {log}"
    );

    // And the edge: one access rule, with the token.
    let rules = "/client/v4/zones/zone-1/firewall/access_rules/rules";
    let created = world.requests("POST", rules);
    assert_eq!(created.len(), 1, "{log}");
    assert_eq!(created[0].headers.get("authorization").map(String::as_str), Some("Bearer edge-secret"));
    let body: Value = serde_json::from_str(&created[0].body).unwrap();
    assert_eq!(body["mode"], "block");
    assert_eq!(body["configuration"], serde_json::json!({ "target": "ip", "value": ATTACKER }));
    assert_eq!(evidence("edge.state"), "enforced", "{log}");
    let rule_id = evidence("edge.rule_id");
    assert!(!rule_id.is_empty(), "{log}");

    // Every node's table holds it, not only the attacked one.
    for node in &nodes {
        eventually(&format!("{ATTACKER} in {}'s banned_v4", node.name), WAIT, || async {
            banned(&node.ns, "banned_v4").iter().any(|a| a == ATTACKER).then_some(())
        })
        .await;
    }

    // remedyctl shows it enforced on the three nodes.
    let bans = blocks_json(&url);
    let ban = ban_of(&bans, ATTACKER).unwrap_or_else(|| panic!("no ban of {ATTACKER}: {bans:?}"));
    assert_eq!(ban["state"], "active", "{ban}");
    assert_eq!(ban["enforced"], 3, "{ban}");
    assert_eq!(ban["incident_id"], incident.id.as_str(), "{ban}");
    assert_eq!(ban["step_id"], "block_attacker", "{ban}");
    let states = node_states(ban);
    let expected: Vec<(String, String)> = nodes.iter().map(|n| (n.name.clone(), "enforced".to_owned())).collect();
    assert_eq!(states, expected, "{ban}");
    let (status, table, err) = remedyctl(&url, &["blocks"]);
    assert!(status.success(), "{err}");
    assert!(table.contains("IP") && table.contains("ENFORCED"), "{table}");
    let row = table.lines().find(|l| l.contains(ATTACKER)).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("active") && row.contains("3/3") && row.contains("node-2=enforced"), "{row}");
    assert_eq!(ban["edge"]["state"], "enforced", "{ban}");
    assert_eq!(ban["edge"]["rule_id"], rule_id.as_str(), "{ban}");

    // A node whose agent comes back with nothing (table flushed, state
    // wiped: a new agent id) is sent the active ban when it says hello.
    let late = &mut nodes[2];
    late.agent.take().unwrap().kill();
    run("ip", &["netns", "exec", &late.ns.0, "nft", "delete", "table", "inet", "remedy"]);
    assert!(banned(&late.ns, "banned_v4").is_empty());
    let fresh = dir.path().join("fresh");
    start_agent(late, &fresh, port, "logs: {enabled: false}\n");
    eventually(&format!("{ATTACKER} sent again to {}", late.name), WAIT, || async {
        banned(&late.ns, "banned_v4").iter().any(|a| a == ATTACKER).then_some(())
    })
    .await;
    let resent = eventually("the ban's record names the new agent", WAIT, || async {
        let bans = blocks_json(&url);
        let ban = ban_of(&bans, ATTACKER)?.clone();
        let node = ban["nodes"].as_array()?.iter().find(|n| n["node"] == "node-2")?.clone();
        (node["reason"].as_str()?.starts_with("sent when the agent connected") && node["state"] == "enforced")
            .then_some(ban)
    })
    .await;
    assert_eq!(resent["enforced"], 3, "{resent}");

    // Lifted everywhere by a person, on the record.
    let (status, out, err) = remedyctl(&url, &["--as", "alice", "blocks", "unblock", ATTACKER]);
    assert!(status.success(), "unblock failed: {out}{err}");
    for node in &nodes {
        eventually(&format!("{ATTACKER} gone from {}'s banned_v4", node.name), WAIT, || async {
            (!banned(&node.ns, "banned_v4").iter().any(|a| a == ATTACKER)).then_some(())
        })
        .await;
    }
    let bans = blocks_json(&url);
    let ban = ban_of(&bans, ATTACKER).unwrap();
    assert_eq!(ban["state"], "unblocked", "{ban}");
    assert_eq!(ban["unblocked_by"], "alice", "{ban}");
    assert!(node_states(ban).iter().all(|(_, s)| s == "unblocked"), "{ban}");
    assert_eq!(ban["edge"]["state"], "unblocked", "{ban}");
    let deleted = world.requests("DELETE", &format!("{rules}/{rule_id}"));
    assert_eq!(deleted.len(), 1, "the edge rule was deleted: {:?}", world.received());
    let (status, active, _) = remedyctl(&url, &["blocks", "-o", "json"]);
    assert!(status.success());
    assert_eq!(serde_json::from_str::<Value>(&active).unwrap(), Value::Array(vec![]), "only active bans by default");
    let entries = timeline(&coordinator, &incident.id).await;
    assert!(
        entries.iter().any(|e| e.kind == "result" && e.message.contains("alice unblocked 203.0.113.7")),
        "the lift is on the incident's record:\n{}",
        show(&entries)
    );
    let again = remedyctl(&url, &["blocks", "unblock", "192.0.2.1"]);
    assert!(!again.0.success() && again.2.contains("no ban of 192.0.2.1"), "{}", again.2);

    // A ban ends by itself: the agents' timeouts drop it from the tables,
    // the coordinator deletes its edge rule, and the record says expired.
    let id = run_manual(&url, "SHORT", false).await;
    let entries = run_end(&coordinator, &id).await;
    let result = about(&entries, "block_briefly").into_iter().find(|e| e.kind == "result").cloned();
    let result = result.unwrap_or_else(|| panic!("no result:\n{}", show(&entries)));
    assert_eq!(result.details.get("status").map(String::as_str), Some("succeeded"), "{}", show(&entries));
    let brief_rule = result.details.get("evidence.edge.rule_id").cloned().unwrap_or_default();
    for node in &nodes {
        eventually(&format!("{BRIEF} expired from {}'s banned_v4", node.name), WAIT, || async {
            (!banned(&node.ns, "banned_v4").iter().any(|a| a == BRIEF)).then_some(())
        })
        .await;
    }
    let expired = eventually("the brief ban's record says expired, at the edge too", WAIT, || async {
        let bans = blocks_json(&url);
        let ban = ban_of(&bans, BRIEF)?.clone();
        (ban["state"] == "expired" && ban["edge"]["state"] == "expired").then_some(ban)
    })
    .await;
    assert_eq!(expired["enforced"], 3, "each node enforced it while it lasted: {expired}");
    assert_eq!(world.requests("DELETE", &format!("{rules}/{brief_rule}")).len(), 1, "{expired}");

    // An address the rails protect is refused by them, with the reason,
    // in a rehearsal and for real; nothing reaches a node.
    for dry_run in [true, false] {
        let id = run_manual(&url, "NEVER", dry_run).await;
        let entries = run_end(&coordinator, &id).await;
        let log = show(&entries);
        let step = about(&entries, "block_friend");
        let refusal = step
            .iter()
            .find(|e| e.details.get("rail").map(String::as_str) == Some("protected_address"))
            .unwrap_or_else(|| panic!("not refused by the address rail (dry run: {dry_run}):\n{log}"));
        assert!(refusal.message.contains("198.51.100.0/24"), "the reason names the range: {}", refusal.message);
        assert!(!step.iter().any(|e| e.kind == "action" || e.kind == "result"), "nothing ran:\n{log}");
    }
    assert!(ban_of(&blocks_json(&url), PROTECTED).is_none(), "no ban recorded");
    for node in &nodes {
        assert!(!banned(&node.ns, "banned_v4").iter().any(|a| a == PROTECTED), "{} holds {PROTECTED}", node.name);
    }
}
