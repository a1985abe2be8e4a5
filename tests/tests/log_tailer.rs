//! The agent's log tailer in the real binary: container logs and a plain
//! file read from a pod log directory it was pointed at, counted on
//! /metrics, shown in /debug/state, checkpointed in the state directory;
//! bad settings exit 64 naming the field.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::time::Duration;

use remedy_e2e::procs::{self, Agent, bin, eventually, http_request, metric_value};

const WAIT: Duration = Duration::from_secs(60);

async fn metric(agent: &Agent, name: &str) -> f64 {
    let (_, body) = http_request(agent.diagnostics, "GET", "/metrics", None).await.expect("GET /metrics");
    metric_value(&body, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_tails_container_logs_and_plain_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pods");
    let auth = dir.path().join("auth.log");
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "pods: {{enabled: false}}\nlogs:\n  root: {}\n  files: [{}]\n  discover_interval: 100ms\n  poll_interval: 20ms\n  checkpoint_interval: 200ms\n",
            root.display(),
            auth.display()
        ),
    )
    .unwrap();
    // Nothing listens there: the tailer does not need the coordinator.
    let coordinator = format!("http://{}", procs::free_addr());
    let agent =
        Agent::start_with(&dir.path().join("a"), "node-1", &coordinator, &["--config", config.to_str().unwrap()]).await;
    // The tailer publishes what it found after its first scan.
    let a = &agent;
    let missing_root = root.display().to_string();
    eventually("the missing root named in /debug/state", WAIT, || async {
        let state = a.debug_state().await;
        let unreadable = state["logs"]["unreadable"].as_array().cloned().unwrap_or_default();
        unreadable.iter().any(|u| u["path"] == missing_root.as_str()).then_some(())
    })
    .await;

    // Created after the agent started: read from the first line.
    let container = root.join("shop_checkout-7d9f8b6c5-x2x4q_4b1f0c2e-8d7a-4a51-9a2e-1c3d5e7f9a0b/api");
    std::fs::create_dir_all(&container).unwrap();
    let mut cri = std::fs::File::create(container.join("0.log")).unwrap();
    for n in 0..300 {
        writeln!(cri, "2026-11-27T03:41:27.123456789Z stdout F request {n} done").unwrap();
    }
    writeln!(cri, "2026-11-27T03:41:28Z stderr P joined ").unwrap();
    writeln!(cri, "2026-11-27T03:41:28Z stderr F line").unwrap();
    let mut plain = std::fs::File::create(&auth).unwrap();
    for n in 0..50 {
        writeln!(plain, "sshd[1]: Failed password for root from 203.0.113.{n} port 22 ssh2").unwrap();
    }

    eventually("351 lines on /metrics", WAIT, || async move {
        (metric(a, "remedy_agent_log_lines_read_total").await == 351.0).then_some(())
    })
    .await;
    assert_eq!(metric(a, "remedy_agent_log_lines_accepted_total").await, 351.0);
    assert_eq!(metric(a, "remedy_agent_log_files_open").await, 2.0);
    assert!(metric(a, "remedy_agent_log_bytes_read_total").await > 10_000.0);

    let files = eventually("both files in /debug/state", WAIT, || async move {
        let state = a.debug_state().await;
        let files = state["logs"]["files"].as_array().cloned().unwrap_or_default();
        (files.iter().map(|f| f["lines"].as_u64().unwrap_or(0)).sum::<u64>() == 351).then_some(files)
    })
    .await;
    let cri_file = files.iter().find(|f| f["kind"] == "cri").unwrap();
    assert_eq!(
        (&cri_file["namespace"], &cri_file["pod"], &cri_file["container"]),
        (&"shop".into(), &"checkout-7d9f8b6c5-x2x4q".into(), &"api".into())
    );
    assert_eq!(cri_file["lines"], 301);
    assert_eq!(cri_file["offset"], cri_file["size"]);
    let plain_file = files.iter().find(|f| f["kind"] == "plain").unwrap();
    assert_eq!(plain_file["lines"], 50);

    let checkpoint = dir.path().join("a/state/log-checkpoint.json");
    eventually("the checkpoint at the end of both files", WAIT, || {
        let checkpoint = checkpoint.clone();
        async move {
            let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&checkpoint).ok()?).ok()?;
            let lines: u64 = doc["files"].as_array()?.iter().map(|f| f["lines"].as_u64().unwrap_or(0)).sum();
            (lines == 351).then_some(())
        }
    })
    .await;
}

#[test]
fn bad_log_settings_exit_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, field) in [
        ("logs: {max_line_bytes: 10}\n", "logs.max_line_bytes"),
        ("logs: {files: [\"/var/log/*.log\"]}\n", "logs.files[0]"),
        ("logs: {discover_interval: never}\n", "logs.discover_interval"),
    ] {
        let config = dir.path().join("agent.yaml");
        std::fs::write(&config, yaml).unwrap();
        let out = std::process::Command::new(bin("remedy-agent"))
            .args(["--node-name", "node-x", "--config", config.to_str().unwrap()])
            .args(["--state-dir", dir.path().join("s").to_str().unwrap()])
            .args(["--diagnostics-listen", &procs::free_addr().to_string()])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{yaml}: {stderr}");
        assert!(stderr.contains(&format!("field `{field}`")), "{yaml}: {stderr}");
    }
}
