//! The coordinator's and the agent's own metrics follow Prometheus's
//! conventions: `promtool check metrics` finds nothing in either's
//! `/metrics` (the classic text format, what it is served without an
//! `Accept` asking for OpenMetrics), and both say their build and their
//! process figures.

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

    // A scraper that asks for OpenMetrics gets it.
    let accept = [("Accept", "application/openmetrics-text; version=1.0.0")];
    for addr in [coordinator.http, agent.diagnostics] {
        let (code, body) = http_request_with(addr, "GET", "/metrics", &accept, None).await.unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
    }
}
