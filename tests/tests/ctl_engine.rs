//! remedyctl's runbook-engine commands against a real coordinator: the real
//! `remedyctl` binary runs a manual runbook (rehearsed, then live) that
//! probes and POSTs to an HTTP server in this test, pauses and resumes
//! automation, acknowledges and resolves incidents, and reports the
//! coordinator's refusals clearly with a non-zero exit. Every address is on
//! loopback.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use remedy_e2e::procs::{Coordinator, eventually, remedyctl};
use remedy_e2e::world::World;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);
const RUNBOOK: &str = "CTL-001";

/// A manual runbook: probe the world's health, then POST to it. No
/// verification, so the run ends when its steps do.
fn write_runbook(dir: &Path, world: &World) -> PathBuf {
    let runbooks = dir.join("runbooks");
    std::fs::create_dir_all(&runbooks).unwrap();
    let text = format!(
        r#"apiVersion: remedy.dev/v1
kind: Runbook
metadata:
  id: {RUNBOOK}
  title: remedyctl drives the engine
priority: P3
mttr_target: 10m
params:
  base: {base}
triggers:
  manual: true
steps:
  - id: probe
    probe_http:
      url: "{{{{ params.base }}}}/health"
  - id: poke
    http:
      method: POST
      url: "{{{{ params.base }}}}/admin/poke"
escalation:
  policy: test-chain
guard_rails:
  cooldown: 0s
"#,
        base = world.url()
    );
    std::fs::write(runbooks.join("ctl-001.yaml"), text).unwrap();
    // Steps that rehearse for different reasons: no cluster is configured,
    // and a channel this coordinator does not have.
    let rehearsing = r#"apiVersion: remedy.dev/v1
kind: Runbook
metadata:
  id: CTL-002
  title: steps that rehearse here
priority: P2
mttr_target: 10m
triggers:
  manual: true
steps:
  - id: pods
    list_pods:
      namespace: shop
  - id: tell
    notify:
      channel: nowhere
      message: hi
escalation:
  policy: test-chain
"#;
    std::fs::write(runbooks.join("ctl-002.yaml"), rehearsing).unwrap();
    remedy_e2e::runs::policy(&runbooks, "test-chain");
    runbooks
}

/// The real remedyctl, off the runtime's threads (it blocks until it exits,
/// and the world server needs the runtime meanwhile).
async fn ctl(url: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        remedyctl(&url, &args)
    })
    .await
    .unwrap()
}

/// Runs remedyctl, requires success, parses its JSON output.
async fn ctl_json(url: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let (status, out, err) = ctl(url, &all).await;
    assert!(status.success(), "remedyctl {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("remedyctl {args:?} printed no JSON ({e}): {out}"))
}

/// Runs remedyctl, requires failure; returns its stderr.
async fn ctl_fails(url: &str, args: &[&str]) -> (ExitStatus, String) {
    let (status, out, err) = ctl(url, args).await;
    assert!(!status.success(), "remedyctl {args:?} should have failed; printed {out}");
    assert!(out.is_empty(), "errors go to stderr, not stdout: {out}");
    (status, err)
}

/// Starts a run through remedyctl; returns the incident it opened.
async fn run(url: &str, extra: &[&str]) -> String {
    let mut args = vec!["--as", "tester", "run", RUNBOOK];
    args.extend(extra);
    let out = ctl_json(url, &args).await;
    let id = out["incident_id"].as_str().unwrap_or_else(|| panic!("no incident id in {out}")).to_owned();
    assert!(id.starts_with("INC-"), "{out}");
    id
}

fn ended(entries: &[Value]) -> bool {
    entries.iter().any(|e| {
        (e["kind"] == "runbook" && e["message"].as_str().is_some_and(|m| m.contains("finished")))
            || e["kind"] == "escalated"
    })
}

/// Polls `remedyctl incident timeline ID -o json` until the run has ended.
async fn timeline_when_ended(url: &str, id: &str) -> Vec<Value> {
    eventually(&format!("the run of {id} to end"), WAIT, || async move {
        let (status, out, _) = ctl(url, &["incident", "timeline", id, "-o", "json"]).await;
        let entries: Vec<Value> = serde_json::from_str(&out).ok()?;
        (status.success() && ended(&entries)).then_some(entries)
    })
    .await
}

fn show(entries: &[Value]) -> String {
    entries.iter().map(|e| format!("  [{}] {} {}\n", e["kind"], e["message"], e["details"])).collect()
}

fn about<'a>(entries: &'a [Value], step: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["details"]["step"] == step).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remedyctl_drives_the_runbook_engine() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::start().await;
    let runbooks = write_runbook(dir.path(), &world);
    let coordinator =
        Coordinator::start_with(&dir.path().join("c"), &["--runbooks-dir", runbooks.to_str().unwrap()]).await;
    let url = coordinator.url();
    let url = url.as_str();

    // The catalog.
    let listed = ctl_json(url, &["runbooks", "list"]).await;
    let ours = listed.as_array().unwrap().iter().find(|r| r["id"] == RUNBOOK).expect("our runbook is listed");
    assert_eq!(ours["manual"], true);
    assert_eq!(ours["steps"], serde_json::json!(["probe", "poke"]));
    let (status, out, err) = ctl(url, &["runbooks", "show", RUNBOOK]).await;
    assert!(status.success(), "{err}");
    assert!(out.contains("MTTR target: 10m") && out.contains("Definition:") && out.contains("probe_http"), "{out}");
    assert!(!out.contains("rehearsal"), "every step of {RUNBOOK} can act here: {out}");
    // Every step that would rehearse is marked, with why.
    let (status, out, err) = ctl(url, &["runbooks", "show", "CTL-002"]).await;
    assert!(status.success(), "{err}");
    assert!(out.contains("pods   rehearsal: no Kubernetes cluster is configured"), "{out}");
    assert!(out.contains("tell   rehearsal: channel `nowhere` is not configured"), "{out}");
    let shown = ctl_json(url, &["runbooks", "show", "CTL-002"]).await;
    assert_eq!(shown["dry_run_steps"], serde_json::json!(["pods", "tell"]), "{shown}");

    // A rehearsal: decisions are recorded as "would have", the probe looks
    // (looking changes nothing), the POST is not sent.
    let rehearsal = run(url, &["--dry-run"]).await;
    let entries = timeline_when_ended(url, &rehearsal).await;
    let log = show(&entries);
    let decisions: Vec<&Value> = entries.iter().filter(|e| e["kind"] == "decision").collect();
    assert!(decisions.iter().any(|e| e["details"]["outcome"] == "would_allow"), "{log}");
    assert!(
        about(&entries, "poke").iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("[dry_run]"))),
        "{log}"
    );
    assert!(!world.requests("GET", "/health").is_empty(), "the probe ran in the rehearsal:\n{log}");
    assert!(world.requests("POST", "/admin/poke").is_empty(), "a rehearsal sends nothing:\n{log}");
    let (status, out, err) = ctl(url, &["incident", "timeline", &rehearsal]).await;
    assert!(status.success(), "{err}");
    let header = out.lines().next().unwrap_or_default();
    assert!(header.starts_with("TIME") && header.contains("KIND") && header.ends_with("MESSAGE"), "{out}");
    assert_eq!(out.lines().count(), entries.len() + 1, "one line per entry:\n{out}");

    // Live, waiting for the end in remedyctl itself: the POST arrives once.
    let out = ctl_json(url, &["--as", "tester", "run", RUNBOOK, "--wait", "--timeout", "2m"]).await;
    let live = out["incident_id"].as_str().unwrap().to_owned();
    assert!(out["ended"].as_str().is_some_and(|m| m.contains("finished")), "{out:#}");
    let timeline = out["incident"]["timeline"].as_array().unwrap();
    assert!(timeline.iter().any(|e| e["details"]["outcome"] == "allowed"), "{out:#}");
    assert_eq!(world.requests("POST", "/admin/poke").len(), 1, "the live run POSTed once:\n{out:#}");
    let shown = ctl_json(url, &["incident", "show", &live]).await;
    assert_eq!(shown["runbook_id"], RUNBOOK);
    assert_eq!(shown["mttr_target"], "10m");

    // Paused: the change is refused, naming the pause and who paused.
    let (_, err) = ctl_fails(url, &["--as", "", "pause", "--reason", "x"]).await;
    assert!(err.contains("--as is empty"), "{err}");
    let paused = ctl_json(url, &["--as", "tester", "pause", "--reason", "x"]).await;
    assert_eq!(paused["paused"], true);
    let state = ctl_json(url, &["automation"]).await;
    assert_eq!((&state["paused_by"], &state["pause_reason"]), (&Value::from("tester"), &Value::from("x")));
    let (_, err) = ctl_fails(url, &["--as", "tester", "pause", "--reason", "again"]).await;
    assert!(err.contains("already paused"), "{err}");
    let refused = run(url, &[]).await;
    let entries = timeline_when_ended(url, &refused).await;
    let log = show(&entries);
    let poke = about(&entries, "poke");
    let refusal = poke.iter().find(|e| e["details"]["rail"] == "global_pause").unwrap_or_else(|| panic!("{log}"));
    assert!(refusal["message"].as_str().is_some_and(|m| m.contains("paused") && m.contains("tester")), "{log}");
    assert_eq!(world.requests("POST", "/admin/poke").len(), 1, "nothing sent while paused:\n{log}");
    let resumed = ctl_json(url, &["--as", "tester", "resume"]).await;
    assert_eq!(resumed["paused"], false);
    let (_, err) = ctl_fails(url, &["--as", "tester", "resume"]).await;
    assert!(err.contains("not paused"), "{err}");

    // A person's commands on the incident the paused run escalated.
    let acked = ctl_json(url, &["--as", "tester", "ack", &refused]).await;
    assert_eq!(acked["state"], "acknowledged");
    let (status, out, err) = ctl(url, &["--as", "tester", "resolve", &refused, "--reason", "done by hand"]).await;
    assert!(status.success(), "{err}");
    assert!(out.contains(&refused) && out.contains("resolved"), "{out}");
    assert!(out.contains("resolved by tester"), "the name the coordinator recorded: {out}");
    for verb in ["ack", "resolve"] {
        let (_, err) = ctl_fails(url, &["--as", "tester", verb, &refused]).await;
        assert!(err.contains(&refused) && err.contains("resolved"), "{verb} on a resolved incident: {err}");
    }
    let entries = ctl_json(url, &["incident", "timeline", &refused]).await;
    let entries = entries.as_array().unwrap();
    assert!(entries.iter().any(|e| e["kind"] == "acknowledged" && e["details"]["by"] == "tester"), "{entries:?}");
    assert!(
        entries.iter().any(|e| e["kind"] == "resolved" && e["message"] == "resolved by tester: done by hand"),
        "{entries:?}"
    );

    // Refusals read clearly and exit non-zero.
    let (_, err) = ctl_fails(url, &["--as", "tester", "run", "NOPE"]).await;
    assert!(err.contains("no runbook `NOPE`"), "{err}");
    let (_, err) = ctl_fails(url, &["--as", "tester", "run", RUNBOOK, "--param", "nope=1"]).await;
    assert!(err.contains("no param `nope`"), "{err}");
    let (status, err) = ctl_fails(url, &["--as", "tester", "run", RUNBOOK, "--param", "nope"]).await;
    assert_eq!(status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("--param"), "{err}");
    let (_, err) = ctl_fails(url, &["incident", "timeline", "INC-999999"]).await;
    assert!(err.contains("no incident INC-999999"), "{err}");
    let (_, err) = ctl_fails(url, &["--as", "tester", "breaker", "reset", "runbook/NOPE"]).await;
    assert!(err.contains("breaker is not open"), "{err}");
    let (_, err) = ctl_fails(url, &["--as", "tester", "breaker", "reset", "everything"]).await;
    assert!(err.contains("unknown scope"), "{err}");
    let (_, err) = ctl_fails(url, &["--as", "tester", "approvals", "approve", &refused, "poke"]).await;
    assert!(err.contains("no approval request"), "{err}");
    assert_eq!(ctl_json(url, &["approvals", "--all"]).await, serde_json::json!([]));

    // Tables give ages, as kubectl does; JSON keeps the moment in RFC 3339.
    let (status, out, err) = ctl(url, &["incidents", "-A"]).await;
    assert!(status.success(), "{err}");
    let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header.last(), Some(&"AGE"), "{out}");
    let row = out.lines().find(|l| l.starts_with(refused.as_str())).unwrap_or_else(|| panic!("{out}"));
    let age = row.split_whitespace().last().unwrap();
    assert!(age.ends_with('s') || age.ends_with('m'), "a young incident's age: {row}");
    let listed = ctl_json(url, &["incidents", "-A"]).await;
    let opened = listed[0]["opened_at"].as_str().unwrap();
    assert!(opened.contains('T') && opened.ends_with('Z'), "RFC 3339: {opened}");

    // Runbook ids in any case; a near miss is answered with a suggestion.
    let shown = ctl_json(url, &["runbooks", "show", &RUNBOOK.to_lowercase()]).await;
    assert_eq!(shown["id"], RUNBOOK, "{shown}");
    let (_, err) = ctl_fails(url, &["runbooks", "show", "ctl-01"]).await;
    assert!(err.contains("no runbook `ctl-01`") && err.contains("did you mean CTL-001?"), "{err}");
    let (_, err) = ctl_fails(url, &["--as", "tester", "run", "CTL-0001", "--dry-run"]).await;
    assert!(err.contains("did you mean CTL-001?"), "{err}");
    let out = ctl_json(url, &["--as", "tester", "run", &RUNBOOK.to_lowercase(), "--dry-run"]).await;
    let lower = out["incident_id"].as_str().unwrap().to_owned();
    let incident = ctl_json(url, &["incident", "show", &lower]).await;
    assert_eq!(incident["runbook_id"], RUNBOOK, "the run records the catalog's id: {incident}");
    // A P3 runbook's manual run opens a warning (P0, P1 and security: critical).
    assert_eq!(incident["severity"], "warning", "{incident}");
}
