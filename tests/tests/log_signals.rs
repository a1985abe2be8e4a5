//! Log lines to findings to runbooks, with real processes: agents tail CRI
//! container logs written by the test, classify error lines and count
//! failed logins, and the coordinator decides from what they report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use remedy_e2e::procs::{Agent, Coordinator, eventually};
use remedy_e2e::runs::{about, incident_for, run_end, show, start};
use remedy_e2e::world::World;
use remedy_proto::v1 as pb;

/// A CRI log line as the kubelet writes it.
fn cri(message: &str) -> String {
    format!("2026-11-27T03:00:00.000000000Z stdout F {message}\n")
}

/// Writes `lines` as the container log of `namespace/pod` under `root`.
fn container_log(root: &Path, namespace: &str, pod: &str, lines: &[String]) {
    let dir = root.join(format!("{namespace}_{pod}_0f1e2d3c-uid")).join("app");
    std::fs::create_dir_all(&dir).expect("create the pod's log directory");
    std::fs::write(dir.join("0.log"), lines.concat()).expect("write the container log");
}

/// An agent tailing `root` from the beginning, with `extra` YAML under
/// `logs:`.
async fn tailing_agent(dir: &Path, node: &str, coordinator: &Coordinator, root: &Path, extra: &str) -> Agent {
    std::fs::create_dir_all(dir).expect("agent dir");
    let config = dir.join("agent.yaml");
    let text = format!(
        "logs:\n  root: {}\n  first_start: beginning\n  discover_interval: 100ms\n  poll_interval: 50ms\n{extra}",
        root.display()
    );
    std::fs::write(&config, text).expect("write the agent's configuration");
    Agent::start_with(&dir.join(node), node, &coordinator.url(), &["--config", config.to_str().unwrap_or_default()])
        .await
}

async fn findings_of(coordinator: &Coordinator, kind: &str) -> Vec<pb::StoredFinding> {
    let mut admin = coordinator.admin().await;
    let request = pb::ListFindingsRequest { kind: kind.into(), ..Default::default() };
    admin.list_findings(request).await.map(|r| r.into_inner().findings).unwrap_or_default()
}

fn write_runbook(dir: &Path, id: &str, text: &str) -> PathBuf {
    let catalog = dir.join("runbooks");
    std::fs::create_dir_all(&catalog).expect("catalog dir");
    let head = format!("apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {{id: {id}, title: {id} test}}\n");
    std::fs::write(catalog.join(format!("{id}.yaml")), format!("{head}{text}")).expect("write runbook");
    remedy_e2e::runs::policy(&catalog, "test-chain");
    catalog
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_spike_across_three_agents_is_summed_by_the_coordinator() {
    let dir = tempfile::tempdir().expect("temp dir");
    let world = World::start().await;
    // P1-002's trigger: database errors of saas-idp-api above ten, summed
    // over the nodes.
    let catalog = write_runbook(
        dir.path(),
        "ERRORS",
        &format!(
            "priority: P1\nmttr_target: 15m\nescalation: {{policy: test-chain}}\ntriggers:\n  findings:\n\
             \x20   - {{kind: high_error_rate, matchers: ['app=\"saas-idp-api\"'], evidence: database, above: 10, aggregate: sum_across_nodes}}\n\
             steps:\n  - id: errors\n    agent_snapshot: {{agents: all, include: [error_counts], selector: app=saas-idp-api, combine: sum}}\n\
             \x20 - id: restart\n    when: steps.errors.database > 10\n    http: {{method: POST, url: '{}/errors/restart'}}\n",
            world.url()
        ),
    );
    let coordinator = start(dir.path(), &world, &catalog, "").await;

    // Each node runs one pod of the Deployment and logs four database
    // errors among ordinary lines: four is enough for each agent to report
    // (raise_at 4), nowhere near ten alone; twelve together.
    let pods = ["saas-idp-api-7d9f8b6c5d-x2x4k", "saas-idp-api-7d9f8b6c5d-p8q9r", "saas-idp-api-7d9f8b6c5d-zt7wm"];
    let mut agents = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let root = dir.path().join(format!("pods-{i}"));
        let mut lines = Vec::new();
        for n in 0..20 {
            lines.push(cri(&format!("level=info msg=\"request served\" n={n}")));
            if n % 5 == 0 {
                lines.push(cri("level=error msg=\"database connection refused: postgres primary unreachable\""));
            }
        }
        container_log(&root, "saas-idp-production", pod, &lines);
        let node = format!("node-{i}");
        let extra = "  errors: {raise_at: 4, clear_below: 1}\n";
        agents.push(tailing_agent(&dir.path().join("agents"), &node, &coordinator, &root, extra).await);
    }

    let incident = incident_for(&coordinator, "ERRORS").await;
    assert!(incident.summary.contains("summed over 3 nodes is 12"), "{}", incident.summary);
    let entries = run_end(&coordinator, &incident.id).await;
    // The runbook asked every node for its counts (P1-002's `errors` step)
    // and decided on their sum.
    let snapshot = about(&entries, "errors").into_iter().find(|e| e.kind == "result").expect("the snapshot's result");
    assert_eq!(snapshot.details.get("evidence.database").map(String::as_str), Some("12"), "{}", show(&entries));
    assert_eq!(world.requests("POST", "/errors/restart").len(), 1, "{}", show(&entries));
    // Each agent named the Deployment (read from its pod's name) and the
    // categories it counted.
    let reported = findings_of(&coordinator, "high_error_rate").await;
    let nodes: std::collections::BTreeSet<&str> = reported.iter().map(|f| f.node_name.as_str()).collect();
    assert_eq!(nodes.len(), 3, "one report per node: {reported:?}");
    for finding in &reported {
        let body = finding.finding.as_ref().expect("a finding body");
        assert_eq!(body.target, "deployment/saas-idp-production/saas-idp-api");
        assert_eq!(body.evidence.get("database").map(String::as_str), Some("4"), "{:?}", body.evidence);
        assert_eq!(body.evidence.get("timeout").map(String::as_str), Some("0"), "{:?}", body.evidence);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brute_force_attack_in_an_nginx_log_names_the_attackers_and_nobody_else() {
    let dir = tempfile::tempdir().expect("temp dir");
    let world = World::start().await;
    let catalog = write_runbook(
        dir.path(),
        "NOTHING",
        "priority: P3\nmttr_target: 1h\nescalation: {policy: test-chain}\ntriggers: {manual: true}\n\
         steps:\n  - id: look\n    probe_http: {url: 'http://127.0.0.1:9/'}\n",
    );
    let coordinator = start(dir.path(), &world, &catalog, "").await;

    let access = |ip: &str, method: &str, path: &str, status: u16| {
        cri(&format!(
            "{ip} - - [27/Nov/2026:03:00:00 +0000] \"{method} {path} HTTP/1.1\" {status} 153 \"-\" \"Mozilla/5.0\""
        ))
    };
    let mut lines = Vec::new();
    for n in 0..40 {
        lines.push(access("203.0.113.7", "POST", "/login", 401));
        lines.push(access("198.51.100.10", "GET", &format!("/static/app.js?v={n}"), 200));
        if n < 25 {
            lines.push(access("2001:db8::66", "POST", "/api/v1/auth", 403));
        }
        if n < 15 {
            // Someone who logs in fine every time, and an allow-listed
            // scanner: neither is an attacker.
            lines.push(access("198.51.100.20", "POST", "/login", 302));
            lines.push(access("192.0.2.50", "POST", "/login", 401));
        }
        if n < 3 {
            lines.push(access("198.51.100.30", "POST", "/login", 401));
        }
    }
    let root = dir.path().join("pods");
    container_log(&root, "ingress-nginx", "ingress-nginx-controller-6c9b7d5f4f-k2m7q", &lines);
    let extra = "  brute_force: {raise_at: 10, allow_list: [192.0.2.0/24]}\n";
    let agent = tailing_agent(&dir.path().join("agents"), "node-edge", &coordinator, &root, extra).await;

    let found = eventually("both attackers reported", Duration::from_secs(30), || async {
        let found = findings_of(&coordinator, "brute_force").await;
        (found.len() >= 2).then_some(found)
    })
    .await;
    let targets = |found: &[pb::StoredFinding]| -> std::collections::BTreeSet<String> {
        found.iter().filter_map(|f| f.finding.as_ref().map(|b| b.target.clone())).collect()
    };
    let attackers: std::collections::BTreeSet<String> =
        ["ip/2001:db8::66", "ip/203.0.113.7"].iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(targets(&found), attackers, "only the attackers");

    // Every line was read; the failures counted are the attackers' and the
    // one-off typist's, the allow-listed scanner's were suppressed.
    let state = eventually("every line classified", Duration::from_secs(30), || async {
        let state = agent.debug_state().await;
        (state["log_detectors"]["brute_force"]["lines"].as_u64() == Some(lines.len() as u64)).then_some(state)
    })
    .await;
    let counted = &state["log_detectors"]["brute_force"];
    assert_eq!(counted["failures"].as_u64(), Some(40 + 25 + 3), "{counted}");
    assert_eq!(counted["suppressed"].as_u64(), Some(15), "{counted}");
    assert_eq!(targets(&findings_of(&coordinator, "brute_force").await), attackers, "nobody else, even later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarding_headers_blame_nobody_and_clients_behind_trusted_proxies_are_found() {
    let dir = tempfile::tempdir().expect("temp dir");
    let world = World::start().await;
    let catalog = write_runbook(
        dir.path(),
        "NOTHING",
        "priority: P3\nmttr_target: 1h\nescalation: {policy: test-chain}\ntriggers: {manual: true}\n\
         steps:\n  - id: look\n    probe_http: {url: 'http://127.0.0.1:9/'}\n",
    );
    let coordinator = start(dir.path(), &world, &catalog, "").await;

    let nginx = |peer: &str, xff: &str| {
        cri(&format!(
            "{peer} - - [27/Nov/2026:03:00:00 +0000] \"POST /login HTTP/1.1\" 401 153 \"-\" \"Mozilla/5.0\" \"{xff}\""
        ))
    };
    let envoy = |xff: &str, peer: Option<&str>| {
        let peer = peer.map(|p| format!(" {p}")).unwrap_or_default();
        cri(&format!(
            "[2026-11-27T03:00:00.000Z] \"POST /oauth/token HTTP/1.1\" 401 - 154 0 12 11 \"{xff}\" \"curl/8.0\" \"c2f1\" \"idp.example.com\" \"10.1.2.3:8080\"{peer}"
        ))
    };
    let json = |ip: &str, xff: &str| {
        cri(&format!(r#"{{"event":"login_failed","ip":"{ip}","x_forwarded_for":"{xff}","user":"alice"}}"#))
    };
    // Six failures each, raise_at five. The 192.0.2.0/24 addresses are
    // victims written into headers by clients; 10.0.0.0/8 are the
    // platform's proxies.
    let (mut ingress, mut edge, mut edge_trusted, mut app) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..6 {
        // An attacker connecting directly names a victim in its header.
        ingress.push(nginx("198.51.100.66", "192.0.2.1"));
        // Real clients behind the trusted ingress proxy, one with a forged
        // left part the proxy appended to.
        ingress.push(nginx("10.0.0.7", "203.0.113.77"));
        ingress.push(nginx("10.0.0.7", "192.0.2.2, 203.0.113.78, 10.0.0.3"));
        // Envoy's default format, no peer: its header is whatever the
        // client sent. Nobody is counted.
        edge.push(envoy("192.0.2.3", None));
        // The same with the peer appended to the line.
        edge.push(envoy("192.0.2.4", Some("198.51.100.67:40000")));
        // A source configured as appending the peer to the header.
        edge_trusted.push(envoy("192.0.2.5, 203.0.113.79", None));
        edge_trusted.push(envoy("192.0.2.6, 203.0.113.80, 10.0.0.9", None));
        // A JSON application log: the same rule.
        app.push(json("198.51.100.68", "192.0.2.7"));
        app.push(json("10.0.0.5", "192.0.2.8, 203.0.113.81"));
    }
    let root = dir.path().join("pods");
    container_log(&root, "ingress-nginx", "ingress-nginx-controller-6c9b7d5f4f-k2m7q", &ingress);
    container_log(&root, "edge", "gateway-7d9f8b6c5d-x2x4k", &edge);
    container_log(&root, "edge-trusted", "gateway-7d9f8b6c5d-p8q9r", &edge_trusted);
    container_log(&root, "shop", "login-api-7d9f8b6c5d-zt7wm", &app);
    let extra = "  brute_force:\n    raise_at: 5\n    clear_below: 1\n    trusted_proxies: [10.0.0.0/8]\n\
                 \x20   sources:\n      - {match: {namespaces: [edge-trusted]}, proxy_appends_peer: true}\n";
    let agent = tailing_agent(&dir.path().join("agents"), "node-edge", &coordinator, &root, extra).await;

    let total = ingress.len() + edge.len() + edge_trusted.len() + app.len();
    let state = eventually("every line classified", Duration::from_secs(30), || async {
        let state = agent.debug_state().await;
        (state["log_detectors"]["brute_force"]["lines"].as_u64() == Some(total as u64)).then_some(state)
    })
    .await;
    let attackers: std::collections::BTreeSet<String> = [
        "198.51.100.66",
        "203.0.113.77",
        "203.0.113.78",
        "198.51.100.67",
        "203.0.113.79",
        "203.0.113.80",
        "198.51.100.68",
        "203.0.113.81",
    ]
    .iter()
    .map(|ip| format!("ip/{ip}"))
    .collect();
    let found = eventually("every real attacker reported", Duration::from_secs(30), || async {
        let found = findings_of(&coordinator, "brute_force").await;
        (found.len() >= attackers.len()).then_some(found)
    })
    .await;
    let targets: std::collections::BTreeSet<String> =
        found.iter().filter_map(|f| f.finding.as_ref().map(|b| b.target.clone())).collect();
    assert_eq!(targets, attackers, "only the real attackers, never a victim named in a header nor a proxy");
    let counted = &state["log_detectors"]["brute_force"];
    assert_eq!(counted["failures"].as_u64(), Some(8 * 6), "{counted}");
    assert_eq!(counted["no_peer"].as_u64(), Some(6), "the peerless Envoy lines: {counted}");
}
