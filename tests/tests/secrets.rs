//! Secret runbook params: a run uses their values, and nothing written
//! holds them: not the data directory, the timeline, the audit log, the
//! coordinator's log or an answer of the admin API. A run resumed after a
//! restart no longer has them, and the step that needs one fails saying so.

use std::path::Path;

use remedy_e2e::procs::{Coordinator, remedyctl};
use remedy_e2e::runs::{run_end, runbook, timeline};
use remedy_e2e::world::World;
use remedy_proto::v1 as pb;

const TOKEN: &str = "tok-7f3a9c1e55d2";
const NOTE: &str = "note-b81d04e6aa97";

/// Params: `api_token` is secret by its name, `note` is declared secret,
/// `reason` is plain.
fn params(world: &World) -> String {
    format!("params:\n  base: '{}'\n  api_token: ''\n  note: {{secret: true}}\n  reason: none\n", world.url())
}

/// The files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).expect("read a directory").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

fn ctl_ok(url: &str, args: &[&str]) -> String {
    let (status, out, err) = remedyctl(url, args);
    assert!(status.success(), "remedyctl {args:?}: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_params_reach_the_action_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::start().await;
    // The first step sends both secrets; the second fails on purpose with
    // the token in its URL, which its error repeats.
    let steps = "  - id: call\n    http:\n      method: POST\n      url: \"{{ params.base }}/reset?token={{ params.api_token }}\"\n      \
                 headers: {X-Note: \"{{ params.note }}\", X-Reason: \"{{ params.reason }}\"}\n      timeout: 5s\n\
                 \x20 - id: echo\n    http:\n      method: POST\n      url: \"{{ params.base }}/fail/{{ params.api_token }}\"\n      \
                 timeout: 5s\n    on_failure: continue\n";
    let runbooks = runbook(dir.path(), "SECRET-1", steps, &params(&world));
    let coordinator =
        Coordinator::start_with(&dir.path().join("c"), &["--runbooks-dir", runbooks.to_str().unwrap()]).await;
    let url = coordinator.url();
    let token = format!("api_token={TOKEN}");
    let note = format!("note={NOTE}");
    let out = ctl_ok(
        &url,
        &["--as", "tester", "run", "SECRET-1", "-p", &token, "-p", &note, "-p", "reason=visible", "-o", "json"],
    );
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let id = answer["incident_id"].as_str().unwrap_or_else(|| panic!("no incident in {out}")).to_owned();
    let entries = run_end(&coordinator, &id).await;

    // The run used the values.
    let calls = world.wait_for("POST", "/reset", 1).await;
    assert_eq!(calls[0].path, format!("/reset?token={TOKEN}"));
    assert_eq!(calls[0].headers["x-note"], NOTE);
    assert_eq!(calls[0].headers["x-reason"], "visible");
    world.wait_for("POST", &format!("/fail/{TOKEN}"), 1).await;
    let echoed = entries.iter().find(|e| e.message.contains("/fail/")).map(|e| e.message.clone());
    assert!(echoed.as_deref().is_some_and(|m| m.contains("/fail/[redacted]")), "{entries:#?}");

    // Nothing written holds them.
    let mut admin = coordinator.admin().await;
    let incident = admin.get_incident(pb::GetIncidentRequest { id: id.clone() }).await.unwrap().into_inner();
    let audit = admin.list_audit(pb::ListAuditRequest::default()).await.unwrap().into_inner().entries;
    let runbook = admin.get_runbook(pb::GetRunbookRequest { id: "SECRET-1".into() }).await.unwrap().into_inner();
    let shown = [
        format!("{incident:?}"),
        format!("{audit:?}"),
        format!("{runbook:?}"),
        ctl_ok(&url, &["incident", "show", &id, "-o", "json"]),
        ctl_ok(&url, &["incident", "timeline", &id, "-o", "json"]),
        ctl_ok(&url, &["audit"]),
    ];
    let run_call = audit.iter().find(|e| e.operation == "RunRunbook").unwrap_or_else(|| panic!("{audit:#?}"));
    let request = &run_call.arguments["request"];
    assert!(
        request.contains("visible") && request.contains("[redacted]"),
        "plain params stay, secrets hidden: {request}"
    );
    for secret in [TOKEN, NOTE] {
        for (i, text) in shown.iter().enumerate() {
            assert!(!text.contains(secret), "{secret} in answer {i}: {text}");
        }
        assert!(!coordinator.log().contains(secret), "{secret} in the coordinator's log");
        let files = files_containing(&dir.path().join("c"), secret);
        assert!(files.is_empty(), "{secret} written to {files:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumed_after_a_restart_does_not_use_a_secret_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::start().await;
    // The first step hangs until the coordinator is gone; the second needs
    // the token.
    let steps = "  - id: wait\n    http:\n      method: POST\n      url: \"{{ params.base }}/hang/1\"\n      timeout: 50s\n    on_failure: continue\n\
                 \x20 - id: call\n    http:\n      method: POST\n      url: \"{{ params.base }}/reset?token={{ params.api_token }}\"\n      timeout: 5s\n";
    let runbooks = runbook(dir.path(), "SECRET-2", steps, &params(&world));
    let mut coordinator =
        Coordinator::start_with(&dir.path().join("c"), &["--runbooks-dir", runbooks.to_str().unwrap()]).await;
    let url = coordinator.url();
    let token = format!("api_token={TOKEN}");
    let out = ctl_ok(&url, &["--as", "tester", "run", "SECRET-2", "-p", &token, "-o", "json"]);
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let id = answer["incident_id"].as_str().unwrap_or_else(|| panic!("no incident in {out}")).to_owned();
    world.wait_for("POST", "/hang/", 1).await;
    coordinator.restart().await;
    world.release_hung();

    let entries = run_end(&coordinator, &id).await;
    let lost = entries.iter().find(|e| e.message.contains("step call not run"));
    let lost = lost.unwrap_or_else(|| panic!("no refusal of step call: {entries:#?}"));
    assert!(
        lost.message.contains("secret parameter api_token was not kept across the coordinator's restart")
            && lost.message.contains("start the run again"),
        "{}",
        lost.message
    );
    assert!(entries.iter().any(|e| e.kind == "escalated"), "the run ends in people's hands: {entries:#?}");
    assert!(world.requests("POST", "/reset").is_empty(), "the step ran without its secret");
    let all = format!("{:?}", timeline(&coordinator, &id).await);
    assert!(!all.contains(TOKEN));
    assert!(files_containing(&dir.path().join("c"), TOKEN).is_empty());
}
