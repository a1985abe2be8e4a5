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

/// The shipped brute-force configuration (`deploy/base/config/agent.yaml`),
/// as the agent would read it.
fn shipped_brute_force() -> remedy_shared::logs::BruteForceConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/config/agent.yaml");
    let text = std::fs::read_to_string(&path).expect("read the shipped agent configuration");
    remedy_shared::logs::bruteforce::config_from_file("agent.yaml", &text).expect("the shipped configuration")
}

/// `brute_force` as YAML under `logs:` (JSON is YAML).
fn brute_force_yaml(config: &remedy_shared::logs::BruteForceConfig) -> String {
    format!("  brute_force: {}\n", serde_json::to_string(config).expect("the configuration as JSON"))
}

/// Writes `lines` as the log of `container` in `namespace/pod` under `root`.
fn container_log_of(root: &Path, namespace: &str, pod: &str, container: &str, lines: &[String]) -> PathBuf {
    let dir = root.join(format!("{namespace}_{pod}_0f1e2d3c-uid")).join(container);
    std::fs::create_dir_all(&dir).expect("create the container's log directory");
    let file = dir.join("0.log");
    std::fs::write(&file, lines.concat()).expect("write the container log");
    file
}

/// One annotated sample of `tests/corpus/auth/`: the address it counts
/// against and the user, or `None` when it is not counted.
type Sample = (Option<(String, String)>, String);

fn corpus(name: &str) -> Vec<Sample> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/auth").join(name);
    let text = std::fs::read_to_string(&path).expect("read a corpus file");
    let mut out = Vec::new();
    let mut pending = None;
    for line in text.lines() {
        if let Some(note) = line.strip_prefix("#> ") {
            pending = Some(note.strip_prefix("counts ").map(|rest| match rest.split_once(" user ") {
                Some((addr, user)) => (addr.to_owned(), user.to_owned()),
                None => (rest.to_owned(), String::new()),
            }));
        } else if !line.starts_with('#') && !line.is_empty() {
            out.push((pending.take().expect("every sample is annotated"), line.to_owned()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_sample_counts_in_the_real_agent_as_annotated() {
    let dir = tempfile::tempdir().expect("temp dir");
    let world = World::start().await;
    let catalog = write_runbook(
        dir.path(),
        "NOTHING",
        "priority: P3\nmttr_target: 1h\nescalation: {policy: test-chain}\ntriggers: {manual: true}\n\
         steps:\n  - id: look\n    probe_http: {url: 'http://127.0.0.1:9/'}\n",
    );
    let coordinator = start(dir.path(), &world, &catalog, "").await;

    let root = dir.path().join("pods");
    let auth_log = dir.path().join("auth.log");
    let sshd = corpus("sshd.log");
    std::fs::write(&auth_log, sshd.iter().map(|(_, l)| format!("{l}\n")).collect::<String>()).expect("auth.log");
    let cri_lines = |samples: &[Sample]| samples.iter().map(|(_, l)| cri(l)).collect::<Vec<_>>();
    let (nginx, envoy, app) = (corpus("nginx.log"), corpus("envoy.log"), corpus("auth-service.log"));
    container_log_of(
        &root,
        "ingress-nginx",
        "ingress-nginx-controller-6c9b7d5f4f-k2m7q",
        "controller",
        &cri_lines(&nginx),
    );
    container_log_of(&root, "envoy-gateway-system", "envoy-default-eg-5c4b8d7f9-x2x4k", "envoy", &cri_lines(&envoy));
    container_log_of(&root, "saas-idp-production", "auth-service-7d9f8b6c5d-x2k7p", "auth", &cri_lines(&app));

    // The shipped rules and sources, the node's auth log at this test's
    // path; every counted address reported at its first failure.
    let mut config = shipped_brute_force();
    config.raise_at = 1;
    config.clear_below = 0;
    let auth_log_path = auth_log.display().to_string();
    for source in &mut config.sources {
        if !source.scope.files.is_empty() {
            source.scope.files = vec![auth_log_path.clone()];
        }
    }
    let extra = format!("  files: [{auth_log_path}]\n{}", brute_force_yaml(&config));
    let agent = tailing_agent(&dir.path().join("agents"), "node-corpus", &coordinator, &root, &extra).await;

    let all: Vec<&Sample> = sshd.iter().chain(&nginx).chain(&envoy).chain(&app).collect();
    let counted: std::collections::BTreeMap<String, String> =
        all.iter().filter_map(|(c, _)| c.clone()).map(|(a, u)| (format!("ip/{a}"), u)).collect();
    let expected_failures = all.iter().filter(|(c, _)| c.is_some()).count();
    assert_eq!(counted.len(), expected_failures, "each counted address appears once in the corpus");

    let state = eventually("every sample read", Duration::from_secs(30), || async {
        let state = agent.debug_state().await;
        (state["log_detectors"]["brute_force"]["lines"].as_u64() == Some(all.len() as u64)).then_some(state)
    })
    .await;
    let seen = &state["log_detectors"]["brute_force"];
    assert_eq!(seen["failures"].as_u64(), Some(expected_failures as u64), "{seen}");
    let found = eventually("every counted address reported", Duration::from_secs(30), || async {
        let found = findings_of(&coordinator, "brute_force").await;
        let targets: std::collections::BTreeSet<String> =
            found.iter().filter_map(|f| f.finding.as_ref().map(|b| b.target.clone())).collect();
        (targets.len() >= counted.len()).then_some(found)
    })
    .await;
    let mut reported = std::collections::BTreeMap::new();
    for f in found.iter().filter_map(|f| f.finding.as_ref()) {
        reported.insert(f.target.clone(), f.evidence.get("users").cloned().unwrap_or_default());
    }
    assert_eq!(reported, counted, "each annotated address with its user, and no other");

    // remedyctl says the same of the sshd samples, offline.
    let output = std::process::Command::new(remedy_e2e::procs::bin("remedyctl"))
        .args(["rules", "test", "-o", "json", "--log-file", "/var/log/auth.log"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/config/agent.yaml"))
        .stdin(std::fs::File::open(&auth_log).expect("open auth.log"))
        .output()
        .expect("run remedyctl rules test");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let verdicts: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(verdicts.len(), sshd.len());
    for ((expected, line), verdict) in sshd.iter().zip(&verdicts) {
        let got = (verdict["counted"] == true).then(|| verdict["source"].as_str().unwrap_or_default().to_owned());
        assert_eq!(got, expected.as_ref().map(|(a, _)| a.clone()), "{line}: {verdict}");
    }
}

/// A login service writing the seed platform's auth-service logs: two
/// pods, one logging JSON, one logfmt, as the shipped rules expect. Its
/// peer is the test's client on loopback, standing for the ingress.
async fn login_service(root: &Path, pod: &str, logfmt: bool) -> std::net::SocketAddr {
    use axum::extract::ConnectInfo;
    use axum::http::{HeaderMap, StatusCode};
    let file = container_log_of(root, "saas-idp-production", pod, "auth", &[]);
    let log = std::sync::Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new().append(true).open(&file).expect("open the service's log"),
    ));
    let app = axum::Router::new().route(
        "/login",
        axum::routing::post(
            move |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>, headers: HeaderMap, body: String| {
                let log = log.clone();
                async move {
                    let attempt: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let user = attempt["user"].as_str().unwrap_or_default().to_owned();
                    let ok = attempt["password"] == "correct horse battery staple";
                    let event = if ok { "login_ok" } else { "login_failed" };
                    let xff = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("");
                    let message = if logfmt {
                        format!("level=warn event={event} user={user:?} peer={peer} x_forwarded_for={xff:?}")
                    } else {
                        serde_json::json!({"level": "warn", "event": event, "user": user, "peer": peer.to_string(), "x_forwarded_for": xff})
                            .to_string()
                    };
                    use std::io::Write;
                    let written = remedy_shared::sync::lock(&log).write_all(cri(&message).as_bytes());
                    written.expect("write the service's log");
                    if ok { StatusCode::OK } else { StatusCode::UNAUTHORIZED }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the login service");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attack_on_the_login_service_runs_sec_001_against_the_attacker_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let world = World::start().await;
    let catalog = remedy_e2e::runs::seed_catalog(dir.path(), &world);
    let coordinator = start(dir.path(), &world, &catalog, "").await;

    let root = dir.path().join("pods");
    let json_pod = login_service(&root, "auth-service-7d9f8b6c5d-x2k7p", false).await;
    let logfmt_pod = login_service(&root, "auth-service-7d9f8b6c5d-p8q9r", true).await;
    // The shipped rules; the test's client on loopback plays the ingress,
    // the one trusted proxy here.
    let mut config = shipped_brute_force();
    config.trusted_proxies = vec!["127.0.0.1/32".parse().expect("a CIDR")];
    let agent =
        tailing_agent(&dir.path().join("agents"), "node-a", &coordinator, &root, &brute_force_yaml(&config)).await;

    let attempt = |pod: std::net::SocketAddr, xff: &'static str, user: &'static str, password: &'static str| async move {
        let body = serde_json::json!({"user": user, "password": password}).to_string();
        let headers = [("X-Forwarded-For", xff)];
        remedy_e2e::procs::http_request_with(pod, "POST", "/login", &headers, Some(&body)).await.expect("a login")
    };
    // A person mistyping twice, then in.
    for password in ["correct horse", "battery", "correct horse battery staple"] {
        attempt(json_pod, "198.51.100.60", "alice", password).await;
    }
    // The attacker, across both pods, with a victim's address written into
    // the left of its header.
    for (i, user) in ["admin", "root", "alice", "bob", "carol", "dave"].iter().cycle().take(12).enumerate() {
        let pod = if i % 2 == 0 { json_pod } else { logfmt_pod };
        let (code, _) = attempt(pod, "192.0.2.99, 203.0.113.50", user, "hunter2").await;
        assert_eq!(code, 401);
    }

    let incident = incident_for(&coordinator, "SEC-001").await;
    let entries = run_end(&coordinator, &incident.id).await;
    let log = show(&entries);
    assert!(entries.iter().any(|e| e.message.contains("brute_force")), "started by the finding:\n{log}");
    // The agent's count of the attacker's failures, asked by the runbook
    // (at least the ten that raised the finding; the last two may not have
    // been read yet).
    let snapshot = about(&entries, "auth_failures").into_iter().find(|e| e.kind == "result").expect("the snapshot");
    assert!(
        snapshot.details.iter().any(|(k, v)| k.ends_with("auth_failures.203.0.113.50")
            && v.parse::<u64>().is_ok_and(|n| (10..=12).contains(&n))),
        "{log}"
    );
    // The block is weighed against the attacker's address, nobody else's.
    let block = about(&entries, "block_attacker");
    assert!(
        block.iter().any(|e| e.kind == "decision" && e.details.get("targets").is_some_and(|t| t == "ip/203.0.113.50")),
        "{log}"
    );
    let reported: std::collections::BTreeSet<String> = findings_of(&coordinator, "brute_force")
        .await
        .iter()
        .filter_map(|f| f.finding.as_ref().map(|b| b.target.clone()))
        .collect();
    assert_eq!(reported, std::collections::BTreeSet::from(["ip/203.0.113.50".to_owned()]));
    // Every attempt counted, the person's two mistakes among them.
    eventually("all fourteen failures counted", Duration::from_secs(30), || async {
        let state = agent.debug_state().await;
        (state["log_detectors"]["brute_force"]["failures"].as_u64() == Some(14)).then_some(())
    })
    .await;
}

#[test]
fn a_rule_a_client_could_fool_stops_the_agent_and_remedyctl_with_exit_64_naming_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        "logs:\n  brute_force:\n    rules:\n      - name: app\n        regex: '^login failed for (?P<user>.*) from (?P<addr>[0-9.]+)'\n",
    )
    .expect("write the configuration");
    let run = |binary: &str, args: &[&str]| {
        let out = std::process::Command::new(remedy_e2e::procs::bin(binary))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the binary");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let path = config.to_str().unwrap_or_default();
    let (code, err) = run("remedy-agent", &["--config", path, "--node-name", "n", "--insecure"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("field `logs.brute_force.rules[0].regex`") && err.contains("free text"), "{err}");
    let (code, err) = run("remedyctl", &["rules", "test", path]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("field `logs.brute_force.rules[0].regex`"), "{err}");
}
