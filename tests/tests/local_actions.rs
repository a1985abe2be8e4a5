//! Local actions end to end: a real agent runs `log_cleanup` and `gc_nudge`
//! directives sent through the coordinator's agent actuator (in this
//! process), against a real tree of files and real processes.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use remedy_coordinator::actuators::agent::AgentActuator;
use remedy_coordinator::actuators::{ActionCall, ActionReport, ActionStatus, Actuator};
use remedy_coordinator::directives::Directives;
use remedy_e2e::procs::{Agent, eventually, http_request, metric_value};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const NODE: &str = "node-l";

/// The agent service on an ephemeral loopback port: its URL and its hub.
async fn coordinator(dir: &Path) -> (String, Directives) {
    remedy_e2e::in_process::agent_service(dir).await
}

/// Sends `directive` with `params` to the agent, as a runbook's `agent`
/// step would.
async fn directive(
    actuator: &AgentActuator,
    name: &str,
    params: serde_json::Value,
    dry_run: bool,
) -> (ActionReport, BTreeMap<String, String>) {
    let call = ActionCall {
        incident_id: "INC-000001".into(),
        step_id: "step".into(),
        kind: "agent".into(),
        params: json!({ "agents": { "node": NODE }, "directive": name, "params": params, "timeout": "30s" }),
        dry_run,
        deadline: Duration::from_secs(30),
        accepted_risk: None,
    };
    let report = actuator.execute(&call).await;
    let prefix = format!("{NODE}.");
    let agent =
        report.evidence.iter().filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_owned(), v.clone()))).collect();
    (report, agent)
}

/// Sets a file's modification time `ago` in the past, without a shell.
fn age(path: &Path, ago: &str) {
    let status = Command::new("touch").arg("-h").arg("-m").arg("-d").arg(ago).arg(path).status().expect("run touch");
    assert!(status.success(), "touch {}", path.display());
}

fn write_old(path: &Path, ago: &str) {
    std::fs::write(path, "some old log line\n").unwrap();
    age(path, ago);
}

/// A python3 child started with `script` and `args`, once it printed `ready`.
fn python(script: &str, args: &[&str]) -> Child {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is installed");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the child started");
    child
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Tree {
    root: PathBuf,
    outside: PathBuf,
}

impl Tree {
    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

/// The tree cleanup runs against: old and young files, names with `..`,
/// symlinks out of the root, a symlinked directory, a file that does not
/// match, and the files held open or tailed (made by the caller).
fn tree(base: &Path) -> Tree {
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(root.join("sub/deep")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let t = Tree { root, outside };
    write_old(&t.outside.join("victim.log"), "10 days ago");
    write_old(&t.outside.join("old.log"), "10 days ago");
    write_old(&t.at("old.log"), "10 days ago");
    write_old(&t.at("sub/deep/old.log.1"), "30 days ago");
    write_old(&t.at("..evil.log"), "10 days ago");
    write_old(&t.at("a..b.log"), "10 days ago");
    write_old(&t.at("notes.txt"), "10 days ago");
    write_old(&t.at("young.log"), "1 minute ago");
    write_old(&t.at("mid.log"), "3 hours ago");
    std::os::unix::fs::symlink(t.outside.join("victim.log"), t.at("link.log")).unwrap();
    std::os::unix::fs::symlink(&t.outside, t.at("linkdir")).unwrap();
    std::os::unix::fs::symlink(t.outside.join("victim.log"), t.at("sub/escape.log")).unwrap();
    age(&t.at("link.log"), "10 days ago");
    t
}

const HOLD: &str = "import sys\nf = open(sys.argv[1], 'a')\nprint('ready', flush=True)\nsys.stdin.read()\n";
const HANDLER: &str = "import signal, sys\n\
def on_usr1(signum, frame):\n    open(sys.argv[1], 'w').write('nudged')\n\
signal.signal(signal.SIGUSR1, on_usr1)\nprint('ready', flush=True)\n\
while True:\n    signal.pause()\n";

/// A coordinator's agent service and a real agent configured with
/// `yaml` (pods off), once its hello announced `announces` and nothing of
/// `not_announced`.
async fn start(base: &Path, yaml: &str, announces: &str, not_announced: &str) -> (Agent, AgentActuator) {
    let config = base.join("agent.yaml");
    std::fs::write(&config, format!("pods: {{enabled: false}}\n{yaml}")).unwrap();
    let (url, directives) = coordinator(&base.join("c")).await;
    let agent = Agent::start_with(&base.join("a"), NODE, &url, &["--config", config.to_str().unwrap()]).await;
    let registered = eventually("the agent registered for directives", WAIT, || {
        let directives = directives.clone();
        async move { directives.connected().into_iter().find(|a| a.node_name == NODE) }
    })
    .await;
    assert!(registered.capabilities.contains(announces), "the hello announces {announces}: {registered:?}");
    assert!(!registered.capabilities.contains(not_announced), "{not_announced} is off: {registered:?}");
    (agent, AgentActuator::new(directives))
}

async fn metrics(agent: &Agent) -> String {
    http_request(agent.diagnostics, "GET", "/metrics", None).await.unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_cleanup_deletes_only_old_matching_unheld_files_inside_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let t = tree(&base);

    // Held open for writing by another process, and by this one.
    write_old(&t.at("held.log"), "10 days ago");
    let _holder = Reaped(python(HOLD, &[t.at("held.log").to_str().unwrap()]));
    write_old(&t.at("held_by_test.log"), "10 days ago");
    let _held = std::fs::OpenOptions::new().append(true).open(t.at("held_by_test.log")).unwrap();
    age(&t.at("held_by_test.log"), "10 days ago");
    // Read by the agent's own tailer.
    write_old(&t.at("tailed.log"), "10 days ago");

    let yaml = format!(
        r#"logs:
  root: {pods}
  files: [{tailed}]
local_actions:
  log_cleanup:
    enabled: true
    max_per_hour: 100
    cooldown: 0s
    roots:
      - {{path: {root}, globs: ['*.log', '*.log.*'], older_than: 1d, emergency_older_than: 1h}}
"#,
        pods = base.join("no-pods").display(),
        tailed = t.at("tailed.log").display(),
        root = t.root.display(),
    );
    let (agent, actuator) = start(&base, &yaml, "log_cleanup", "gc_nudge").await;
    let tailed = t.at("tailed.log").display().to_string();
    eventually("the tailer has tailed.log open", WAIT, || {
        let tailed = tailed.clone();
        let agent = &agent;
        async move {
            let state = agent.debug_state().await;
            state["logs"]["files"].as_array()?.iter().any(|f| f["path"].as_str() == Some(tailed.as_str())).then_some(())
        }
    })
    .await;
    let key = |rel: &str| format!("file.{}", t.at(rel).display());
    let gone = ["old.log", "sub/deep/old.log.1", "..evil.log", "a..b.log"];
    let kept = ["young.log", "mid.log", "notes.txt", "held.log", "held_by_test.log", "tailed.log"];

    // A rehearsal lists what would go and deletes nothing.
    let (report, ev) = directive(&actuator, "log_cleanup", json!({}), true).await;
    assert_eq!(report.status, ActionStatus::DryRun, "{report:?}");
    assert_eq!(ev["outcome"], "dry_run", "{ev:?}");
    for rel in gone {
        assert_eq!(ev.get(&key(rel)).map(String::as_str), Some("would_delete"), "{rel}: {ev:?}");
        assert!(t.at(rel).exists(), "a dry run deleted {rel}");
    }
    assert_eq!(ev["files_would_delete"], "4", "{ev:?}");

    // The real run.
    let (report, ev) = directive(&actuator, "log_cleanup", json!({}), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    for rel in gone {
        assert_eq!(ev.get(&key(rel)).map(String::as_str), Some("deleted"), "{rel}: {ev:?}");
        assert!(!t.at(rel).exists(), "{rel} was not deleted");
    }
    for rel in kept {
        assert!(t.at(rel).exists(), "{rel} was deleted");
    }
    for (rel, why) in [
        ("held.log", "open_for_writing"),
        ("held_by_test.log", "open_for_writing"),
        ("tailed.log", "tailer"),
        ("link.log", "symlink"),
        ("linkdir", "symlink"),
        ("sub/escape.log", "symlink"),
    ] {
        assert_eq!(ev.get(&key(rel)).map(String::as_str), Some(why), "{rel}: {ev:?}");
    }
    assert_eq!(ev["files_deleted"], "4", "{ev:?}");
    assert_eq!(ev["bytes_freed"], (4 * "some old log line\n".len()).to_string(), "{ev:?}");
    assert_eq!(ev["skipped.too_young"], "2", "{ev:?}");
    assert_eq!(ev["skipped.open_for_writing"], "2", "{ev:?}");
    assert!(t.outside.join("victim.log").exists() && t.outside.join("old.log").exists(), "nothing outside the root");
    assert!(t.at("link.log").symlink_metadata().is_ok() && t.at("linkdir").symlink_metadata().is_ok());

    // Emergency: a lower age, still within the root and its safety checks.
    let (report, ev) = directive(&actuator, "log_cleanup", json!({ "emergency": "true" }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(ev["root.0.emergency"], "true");
    assert_eq!(ev.get(&key("mid.log")).map(String::as_str), Some("deleted"), "{ev:?}");
    assert!(!t.at("mid.log").exists() && t.at("young.log").exists() && t.at("held.log").exists());

    // A root outside the configured one, by name or through `..`, and an
    // age younger than the configured one: refused, nothing touched.
    let outside = json!([{ "path": t.outside.display().to_string(), "globs": ["*.log"], "older_than": "1d" }]);
    let (report, ev) = directive(&actuator, "log_cleanup", json!({ "roots": outside.to_string() }), false).await;
    assert_eq!(report.status, ActionStatus::Failed, "{report:?}");
    assert_eq!(ev["outcome"], "refused");
    assert!(ev["message"].contains("is outside_root: not within a configured root"), "{ev:?}");
    let escape = json!([{ "path": format!("{}/../outside", t.root.display()), "older_than": "1d" }]);
    let (_, ev) = directive(&actuator, "log_cleanup", json!({ "roots": escape.to_string() }), false).await;
    assert_eq!(ev["outcome"], "refused");
    assert!(ev["message"].contains("outside_root"), "{ev:?}");
    let young = json!([{ "path": t.root.display().to_string(), "older_than": "1m" }]);
    let (_, ev) = directive(&actuator, "log_cleanup", json!({ "roots": young.to_string() }), false).await;
    assert_eq!(ev["outcome"], "refused");
    assert!(ev["message"].starts_with("roots[0].older_than: 1m is younger than this agent allows"), "{ev:?}");
    assert!(t.at("young.log").exists());
    assert!(t.outside.join("victim.log").exists() && t.outside.join("old.log").exists());

    // Budget: the two real runs are spent; the rehearsal and refusals are not.
    let state = agent.debug_state().await;
    assert_eq!(state["local_actions"]["log_cleanup"]["limit"]["used_last_hour"], 2, "{}", state["local_actions"]);

    let body = metrics(&agent).await;
    assert_eq!(metric_value(&body, "remedy_agent_local_cleanup_files_deleted_total"), 5.0, "{body}");
    assert!(body.contains("remedy_agent_local_cleanup_files_skipped_total{reason=\"symlink\"} 6"), "{body}");
    assert_eq!(state["local_actions"]["log_cleanup"]["last"]["outcome"], "refused", "{}", state["local_actions"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_nudge_signals_only_matching_processes_and_reports_their_memory() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let tag = format!("gc-nudge-target-{}", std::process::id());
    let yaml = format!(
        r#"logs: {{enabled: false}}
local_actions:
  gc_nudge:
    enabled: true
    cooldown: 0s
    settle: 500ms
    selectors:
      - {{name: py-worker, pod_selector: app=py-worker, process_name: '^python3', cmdline: '{tag}', signal: usr1}}
"#
    );
    let (agent, actuator) = start(&base, &yaml, "gc_nudge", "log_cleanup").await;

    // The matching process gets its signal; memory is reported.
    let marker = base.join("nudged");
    let other_marker = base.join("other-nudged");
    let target = Reaped(python(HANDLER, &[marker.to_str().unwrap(), &tag]));
    let other = Reaped(python(HANDLER, &[other_marker.to_str().unwrap(), "some-other-process"]));
    let pid = target.0.id();

    let (report, ev) = directive(&actuator, "gc_nudge", json!({ "selector": "app=py-worker" }), true).await;
    assert_eq!(report.status, ActionStatus::DryRun, "{report:?}");
    assert_eq!(ev["pids"], pid.to_string(), "{ev:?}");
    assert!(!marker.exists(), "a dry run sent nothing");

    let (report, ev) = directive(&actuator, "gc_nudge", json!({ "selector": "py-worker" }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!((ev["nudged"].as_str(), ev["pids"].as_str()), ("1", pid.to_string().as_str()), "{ev:?}");
    assert_eq!(ev[&format!("{pid}.result")], "sent SIGUSR1");
    for k in ["rss_before_bytes", "rss_after_bytes"] {
        let v: u64 = ev[&format!("{pid}.{k}")].parse().unwrap();
        assert!(v > 0, "{k}: {ev:?}");
    }
    assert!(ev.contains_key(&format!("{pid}.freed_bytes")), "{ev:?}");
    eventually("the matching process handled the nudge", WAIT, || {
        let marker = marker.clone();
        async move { (std::fs::read_to_string(&marker).ok()? == "nudged").then_some(()) }
    })
    .await;

    // A process that does not match is refused, with the reason, untouched.
    let other_pid = other.0.id();
    let (report, ev) =
        directive(&actuator, "gc_nudge", json!({ "selector": "py-worker", "pid": other_pid.to_string() }), false).await;
    assert_eq!(report.status, ActionStatus::Failed, "{report:?}");
    assert_eq!(ev["outcome"], "refused");
    assert!(ev["message"].contains("does not match selector `py-worker`: cmdline"), "{ev:?}");
    assert_eq!(ev["reason"], "not_matching");
    assert!(!other_marker.exists(), "the refused process was not signalled");
    assert!(std::fs::metadata(format!("/proc/{other_pid}")).is_ok(), "and still runs");

    let body = metrics(&agent).await;
    assert!(body.contains("remedy_agent_local_gc_nudges_total{selector=\"py-worker\",result=\"nudged\"} 1"), "{body}");
    let state = agent.debug_state().await;
    assert_eq!(state["local_actions"]["gc_nudge"]["last"]["outcome"], "refused", "{}", state["local_actions"]);
    assert_eq!(state["local_actions"]["gc_nudge"]["limit"]["used_last_hour"], 1, "{}", state["local_actions"]);
    drop(target);
    drop(other);
}
