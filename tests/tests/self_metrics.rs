//! The coordinator's and the agent's own metrics follow Prometheus's
//! conventions: `promtool check metrics` finds nothing in either's
//! `/metrics` (the classic text format, what it is served without an
//! `Accept` asking for OpenMetrics), both say their build and their
//! process figures, and every metric the self-alerts
//! (deploy/monitoring/prometheusrules.yaml, checked by `promtool check
//! rules`) and the Grafana dashboard name is served by one of them.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use remedy_e2e::procs::{Agent, Coordinator, eventually, http_request, http_request_with};

const PROMTOOL: &str = "/usr/bin/promtool";

/// `promtool check metrics` on `text`: its findings, empty when none.
/// A missing promtool fails the test (scripts/deps.sh installs it).
fn promtool_findings(text: &str) -> String {
    assert!(std::path::Path::new(PROMTOOL).exists(), "{PROMTOOL} is missing: run scripts/deps.sh");
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { findings.trim().to_owned() } else { format!("exit {}: {findings}", out.status) }
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let (code, body) = http_request(addr, "GET", "/metrics", None).await.expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_endpoints_pass_promtool_and_describe_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&dir.path().join("c")).await;
    let agent = Agent::start(&dir.path().join("a"), "node-1", &coordinator.url()).await;
    eventually("the agent to connect", Duration::from_secs(60), || async {
        (agent.readyz().await == 200).then_some(())
    })
    .await;

    for (who, text) in [("coordinator", scrape(coordinator.http).await), ("agent", scrape(agent.diagnostics).await)] {
        let findings = promtool_findings(&text);
        assert!(findings.is_empty(), "promtool on the {who}'s /metrics:\n{findings}\n---\n{text}");
        assert!(!text.contains("# EOF"), "the classic format has no EOF:\n{text}");
        let version = env!("CARGO_PKG_VERSION");
        let info = format!("remedy_build_info{{component=\"{who}\",version=\"{version}\"}} 1");
        assert!(text.contains(&info), "{info} missing from the {who}'s:\n{text}");
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{name} "))),
                "{name} missing from the {who}'s:\n{text}"
            );
        }
    }

    // The rails' state and the webhook's outcomes are there from the start.
    let (code, _) = http_request(coordinator.http, "POST", "/api/v1/alertmanager", Some("{}")).await.unwrap();
    assert_eq!(code, 401);
    let coordinator_text = scrape(coordinator.http).await;
    for line in [
        "remedy_automation_paused 0",
        "remedy_breakers_open 0",
        "remedy_approvals_pending 0",
        "remedy_approvals_oldest_pending_seconds 0.0",
        "remedy_alertmanager_webhook_requests_total{outcome=\"unauthenticated\"} 1",
    ] {
        assert!(coordinator_text.lines().any(|l| l == line), "{line} missing from:\n{coordinator_text}");
    }

    // Every metric the self-alerts and the dashboard name exists.
    let served: std::collections::BTreeSet<String> = [coordinator_text, scrape(agent.diagnostics).await]
        .iter()
        .flat_map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|l| {
            let name = l.strip_prefix("# TYPE ").unwrap_or(&l);
            let end = name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(name.len());
            (end > 0 && !name.starts_with('#')).then(|| name[..end].to_owned())
        })
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = std::fs::read_to_string(root.join("deploy/monitoring/prometheusrules.yaml")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("deploy/monitoring/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&rules).expect("the rules are YAML");
    let groups: Vec<serde_json::Value> =
        docs.iter().flat_map(|d| d["spec"]["groups"].as_array().cloned().unwrap_or_default()).collect();
    let own: Vec<&serde_json::Value> = groups.iter().filter(|g| g["name"] == "remedy.self").collect();
    assert_eq!(own.len(), 1, "one remedy.self group");
    let mut exprs: Vec<String> =
        own[0]["rules"].as_array().unwrap().iter().map(|r| r["expr"].as_str().unwrap().to_owned()).collect();
    assert!(exprs.len() >= 7, "{exprs:?}");
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"].as_str() {
            exprs.push(query.to_owned());
        }
    }
    let mut named = std::collections::BTreeSet::new();
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("remedy_") || word.starts_with("process_") {
                named.insert(word.to_owned());
            }
        }
    }
    assert!(named.len() >= 20, "{named:?}");
    // Families with labels show from their first row on: these get theirs
    // from an action, a refusal, a delivery or a resolved incident, which
    // this test does not make happen.
    const FIRST_ROW_LATER: [&str; 5] = [
        "remedy_actions_total",
        "remedy_refusals_total",
        "remedy_notifications_total",
        "remedy_mttr_seconds",
        "remedy_mtta_seconds",
    ];
    let missing: Vec<&String> =
        named.iter().filter(|n| !served.contains(*n) && !FIRST_ROW_LATER.contains(&n.as_str())).collect();
    assert!(missing.is_empty(), "named by the rules or the dashboard, served by neither: {missing:?}");

    // promtool finds nothing in the rules (the PrometheusRules' groups as
    // a plain rules file; JSON is YAML).
    let file = dir.path().join("rules.json");
    std::fs::write(&file, serde_json::json!({ "groups": groups }).to_string()).unwrap();
    assert!(std::path::Path::new(PROMTOOL).exists(), "{PROMTOOL} is missing: run scripts/deps.sh");
    let out = Command::new(PROMTOOL).args(["check", "rules"]).arg(&file).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check rules:\n{said}");
    assert!(!said.contains("WARNING") && !said.to_lowercase().contains("lint"), "promtool check rules:\n{said}");

    // A scraper that asks for OpenMetrics gets it.
    let accept = [("Accept", "application/openmetrics-text; version=1.0.0")];
    for addr in [coordinator.http, agent.diagnostics] {
        let (code, body) = http_request_with(addr, "GET", "/metrics", &accept, None).await.unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
    }
}
