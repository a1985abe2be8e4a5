//! Local actions end to end: a real agent runs `log_cleanup` and `gc_nudge`
//! directives sent through the coordinator's agent actuator (in this
//! process), against a real tree of files, mounts in the agent's own mount
//! namespace, and real processes. Needs root (mounts) and python3.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use remedy_coordinator::actuators::agent::AgentActuator;
use remedy_coordinator::actuators::{ActionCall, ActionReport, ActionStatus, Actuator};
use remedy_coordinator::directives::Directives;
use remedy_e2e::procs::{Agent, eventually, http_request, metric_value};
use remedy_e2e::runs::{about, incident_for, result_of, run_end, seed_catalog, show};
use remedy_e2e::world::World;
use remedy_proto::v1 as pb;
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
/// match, a hard link to a file outside, the mount points the agent's
/// namespace mounts on (see [`namespaced`]), a directory that a thread
/// swaps for a symlink to the outside, and the files held open or tailed
/// (made by the caller).
fn tree(base: &Path) -> Tree {
    let root = base.join("root");
    let outside = base.join("outside");
    for dir in ["sub/deep", "bind", "tmpfs", "swap"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for dir in ["bound", "swapped"] {
        std::fs::create_dir_all(outside.join(dir)).unwrap();
    }
    let t = Tree { root, outside };
    for rel in [
        "victim.log",
        "old.log",
        "linked.log",
        "bound-file.log",
        "bound/old.log",
        "bound/deep.log",
        "swapped/a.log",
        "swapped/b.log",
    ] {
        write_old(&t.outside.join(rel), "10 days ago");
    }
    write_old(&t.at("old.log"), "10 days ago");
    write_old(&t.at("sub/deep/old.log.1"), "30 days ago");
    write_old(&t.at("..evil.log"), "10 days ago");
    write_old(&t.at("a..b.log"), "10 days ago");
    write_old(&t.at("notes.txt"), "10 days ago");
    write_old(&t.at("young.log"), "1 minute ago");
    write_old(&t.at("mid.log"), "3 hours ago");
    for name in ["a.log", "b.log", "c.log"] {
        write_old(&t.at(&format!("swap/{name}")), "10 days ago");
    }
    // Mounted over in the agent's namespace.
    write_old(&t.at("filebind.log"), "10 days ago");
    std::fs::hard_link(t.outside.join("linked.log"), t.at("hard.log")).unwrap();
    std::os::unix::fs::symlink(t.outside.join("victim.log"), t.at("link.log")).unwrap();
    std::os::unix::fs::symlink(&t.outside, t.at("linkdir")).unwrap();
    std::os::unix::fs::symlink(t.outside.join("victim.log"), t.at("sub/escape.log")).unwrap();
    age(&t.at("link.log"), "10 days ago");
    t
}

/// Runs the agent in a private mount namespace of its own, where `bind`
/// is a bind mount of a directory outside the root on the same
/// filesystem, `tmpfs` a tmpfs, and `filebind.log` a file outside bound
/// over a name: nothing mounted leaks to the machine, and the mounts go
/// when the agent does.
fn namespaced(t: &Tree) -> Vec<String> {
    let script = "set -e\nmount --bind \"$1\" \"$2\"\nmount -t tmpfs -o size=4m remedy-test \"$3\"\n\
                  mount --bind \"$4\" \"$5\"\nshift 5\nexec \"$@\"";
    let mut args: Vec<String> = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    for path in
        [t.outside.join("bound"), t.at("bind"), t.at("tmpfs"), t.outside.join("bound-file.log"), t.at("filebind.log")]
    {
        args.push(path.display().to_string());
    }
    args
}

/// Swaps `root/swap` for a symlink to `outside/swapped` and back, over and
/// over, until told to stop (or a bounded number of times).
struct Swapper {
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Swapper {
    fn start(t: &Tree) -> Swapper {
        let (dir, away, target) = (t.at("swap"), t.at("swap.away"), t.outside.join("swapped"));
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), swaps.clone());
        let thread = std::thread::spawn(move || {
            let step = |r: std::io::Result<()>, what: &str| r.map_err(|e| format!("{what}: {e}"));
            for _ in 0..10_000_000u64 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                step(std::fs::rename(&dir, &away), "move the directory away")?;
                step(std::os::unix::fs::symlink(&target, &dir), "put a symlink in its place")?;
                n.fetch_add(1, Ordering::Relaxed);
                step(std::fs::remove_file(&dir), "remove the symlink")?;
                step(std::fs::rename(&away, &dir), "move the directory back")?;
            }
            Ok(())
        });
        Swapper { stop, swaps, thread: Some(thread) }
    }

    fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }

    /// Stops it with the directory back in place.
    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let result = self.thread.take().unwrap().join().unwrap();
        assert_eq!(result, Ok(()), "the swapping thread failed");
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Every file under `dir` with its content, recursively, not following
/// symlinks: what "nothing changed" compares.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = path.symlink_metadata().unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

const HOLD: &str = "import sys\nf = open(sys.argv[1], sys.argv[2])\nprint('ready', flush=True)\nsys.stdin.read()\n";
const HANDLER: &str = "import signal, sys\n\
def on_usr1(signum, frame):\n    open(sys.argv[1], 'w').write('nudged')\n\
signal.signal(signal.SIGUSR1, on_usr1)\nprint('ready', flush=True)\n\
while True:\n    signal.pause()\n";

/// A coordinator's agent service and a real agent configured with
/// `yaml` (pods off), started through `wrapper` (none when empty), once
/// its hello announced `announces` and nothing of `not_announced`.
async fn start(
    base: &Path,
    yaml: &str,
    announces: &str,
    not_announced: &str,
    wrapper: &[String],
) -> (Agent, AgentActuator) {
    let config = base.join("agent.yaml");
    std::fs::write(&config, format!("pods: {{enabled: false}}\n{yaml}")).unwrap();
    let (url, directives) = coordinator(&base.join("c")).await;
    let agent =
        Agent::start_wrapped(&base.join("a"), NODE, &url, &["--config", config.to_str().unwrap()], wrapper).await;
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

    // Held open for writing and for reading by other processes, and by this one.
    write_old(&t.at("held.log"), "10 days ago");
    let _writer = Reaped(python(HOLD, &[t.at("held.log").to_str().unwrap(), "a"]));
    write_old(&t.at("read.log"), "10 days ago");
    let _reader = Reaped(python(HOLD, &[t.at("read.log").to_str().unwrap(), "r"]));
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
    let (agent, actuator) = start(&base, &yaml, "log_cleanup", "gc_nudge", &namespaced(&t)).await;
    // The tmpfs exists only in the agent's namespace: reached through its root.
    let tmpfs = PathBuf::from(format!("/proc/{}/root{}", agent.pid().unwrap(), t.at("tmpfs").display()));
    write_old(&tmpfs.join("old.log"), "10 days ago");
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
    let outside_before = contents(&t.outside);
    let key = |rel: &str| format!("file.{}", t.at(rel).display());
    let gone = ["old.log", "sub/deep/old.log.1", "..evil.log", "a..b.log"];
    let kept =
        ["young.log", "mid.log", "notes.txt", "held.log", "read.log", "held_by_test.log", "tailed.log", "hard.log"];

    // A rehearsal lists what would go and deletes nothing.
    let (report, ev) = directive(&actuator, "log_cleanup", json!({}), true).await;
    assert_eq!(report.status, ActionStatus::DryRun, "{report:?}");
    assert_eq!(ev["outcome"], "dry_run", "{ev:?}");
    for rel in gone {
        assert_eq!(ev.get(&key(rel)).map(String::as_str), Some("would_delete"), "{rel}: {ev:?}");
        assert!(t.at(rel).exists(), "a dry run deleted {rel}");
    }

    // The real run, while another thread keeps swapping `swap` for a
    // symlink to the outside and back.
    let swapper = Swapper::start(&t);
    eventually("the swapping thread at work", WAIT, || async { (swapper.swaps() > 0).then_some(()) }).await;
    let (report, ev) = directive(&actuator, "log_cleanup", json!({}), false).await;
    swapper.finish();
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    for rel in gone {
        assert_eq!(ev.get(&key(rel)).map(String::as_str), Some("deleted"), "{rel}: {ev:?}");
        assert!(!t.at(rel).exists(), "{rel} was not deleted");
    }
    for rel in kept {
        assert!(t.at(rel).exists(), "{rel} was deleted");
    }
    for (rel, why) in [
        ("held.log", "open"),
        ("read.log", "open"),
        ("held_by_test.log", "open"),
        ("hard.log", "hard_links"),
        ("tailed.log", "tailer"),
        ("link.log", "symlink"),
        ("linkdir", "symlink"),
        ("sub/escape.log", "symlink"),
        ("bind", "mount"),
        ("tmpfs", "mount"),
        ("filebind.log", "mount"),
    ] {
        assert_eq!(ev.get(&key(rel)).map(String::as_str), Some(why), "{rel}: {ev:?}");
    }
    // The swapped directory's own files may go (they are in the root) or
    // be kept as changed under the swap; nothing else.
    for name in ["a.log", "b.log", "c.log"] {
        let seen = ev.get(&key(&format!("swap/{name}"))).map(String::as_str);
        assert!(matches!(seen, None | Some("deleted" | "changed" | "symlink")), "swap/{name}: {seen:?}");
    }
    let deleted = ev.values().filter(|v| *v == "deleted").count();
    assert_eq!(ev["files_deleted"], deleted.to_string(), "{ev:?}");
    assert_eq!(ev["skipped.too_young"], "2", "{ev:?}");
    assert_eq!((ev["skipped.open"].as_str(), ev["skipped.hard_links"].as_str()), ("3", "1"), "{ev:?}");
    assert_eq!(ev["skipped.mount"], "3", "{ev:?}");
    // The one line says what was kept and why.
    for part in
        ["3 are on other mounts", "1 has other links", "1 is read by the agent's tailer", "3 are open by a process"]
    {
        assert!(ev["message"].contains(part), "{part}: {}", ev["message"]);
    }

    // Nothing outside the root changed: not through the bind mount, the
    // file bound over a name, the hard link, the symlinks or the swap.
    assert_eq!(contents(&t.outside), outside_before, "files outside the root changed");
    assert!(tmpfs.join("old.log").exists(), "the tmpfs was entered");
    assert!(t.at("link.log").symlink_metadata().is_ok() && t.at("linkdir").symlink_metadata().is_ok());

    // Emergency: a lower age, still within the root and its safety checks.
    let (report, ev) = directive(&actuator, "log_cleanup", json!({ "emergency": "true" }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(ev["root.0.emergency"], "true");
    assert_eq!(ev.get(&key("mid.log")).map(String::as_str), Some("deleted"), "{ev:?}");
    assert!(!t.at("mid.log").exists() && t.at("young.log").exists() && t.at("held.log").exists());
    let emergency_deleted: usize = ev["files_deleted"].parse().unwrap();

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
    assert_eq!(contents(&t.outside), outside_before, "files outside the root changed");

    // Budget: the two real runs are spent; the rehearsal and refusals are not.
    let state = agent.debug_state().await;
    assert_eq!(state["local_actions"]["log_cleanup"]["limit"]["used_last_hour"], 2, "{}", state["local_actions"]);

    let body = metrics(&agent).await;
    let total = (deleted + emergency_deleted) as f64;
    assert_eq!(metric_value(&body, "remedy_agent_local_cleanup_files_deleted_total"), total, "{body}");
    assert!(body.contains("remedy_agent_local_cleanup_files_skipped_total{reason=\"mount\"} 6"), "{body}");
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
    let (agent, actuator) = start(&base, &yaml, "gc_nudge", "log_cleanup", &[]).await;

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

/// An agent for `node` of a real coordinator, with log cleanup under
/// `roots` (path, age), the tailer and the pod watch off.
async fn cleaning_agent(base: &Path, node: &str, coordinator: &str, roots: &[(&Path, &str)]) -> Agent {
    let mut yaml = String::from(
        "pods: {enabled: false}\nlogs: {enabled: false}\nlocal_actions:\n  log_cleanup:\n    enabled: true\n    cooldown: 0s\n    roots:\n",
    );
    for (path, age) in roots {
        yaml.push_str(&format!("      - {{path: {}, globs: ['*.log'], older_than: {age}}}\n", path.display()));
    }
    let config = base.join(format!("{node}.yaml"));
    std::fs::write(&config, yaml).unwrap();
    Agent::start_with(&base.join(node), node, coordinator, &["--config", config.to_str().unwrap()]).await
}

/// P2-001 from a node's `disk_usage_high` finding: its `clean_old_logs`
/// step sends `log_cleanup` to that node's agent alone, which deletes its
/// old files (and keeps what it must), and the incident's timeline says
/// how many went and what was kept and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_001_deletes_the_old_logs_of_the_node_whose_disk_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let world = World::start().await;
    let catalog = seed_catalog(&base, &world);
    // The seed cleans /tmp (1 day) and /var/log (7 days) on the node; here,
    // two directories of this test stand for them.
    let (tmp, var) = (base.join("node-a/tmp"), base.join("node-a/var-log"));
    let other = base.join("node-b/tmp");
    for d in [&tmp, &var, &other] {
        std::fs::create_dir_all(d).unwrap();
    }
    let p2 = catalog.join("p2-001-high-resource-usage.yaml");
    let text = std::fs::read_to_string(&p2).unwrap();
    assert!(text.contains("path: /tmp") && text.contains("path: /var/log"), "the seed's roots moved:\n{text}");
    let text = text
        .replace("path: /tmp", &format!("path: {}", tmp.display()))
        .replace("path: /var/log", &format!("path: {}", var.display()));
    std::fs::write(&p2, text).unwrap();
    write_old(&tmp.join("old.log"), "2 days ago");
    write_old(&tmp.join("young.log"), "1 hour ago");
    write_old(&var.join("app.log"), "10 days ago");
    write_old(&var.join("recent.log"), "3 days ago");
    write_old(&var.join("held.log"), "10 days ago");
    let _reader = Reaped(python(HOLD, &[var.join("held.log").to_str().unwrap(), "r"]));
    write_old(&other.join("old.log"), "10 days ago");

    let coordinator = remedy_e2e::runs::start(&base, &world, &catalog, "").await;
    let node_a = cleaning_agent(&base, "node-a", &coordinator.url(), &[(&tmp, "1d"), (&var, "7d")]).await;
    let _node_b = cleaning_agent(&base, "node-b", &coordinator.url(), &[(&other, "1d")]).await;
    let admin = coordinator.admin().await;
    eventually("both agents connected, announcing log_cleanup", WAIT, || {
        let mut admin = admin.clone();
        async move {
            let agents = admin.list_agents(pb::ListAgentsRequest::default()).await.ok()?.into_inner().agents;
            let ready = agents.iter().filter(|a| a.connected && a.capabilities.iter().any(|c| c == "log_cleanup"));
            (ready.count() == 2).then_some(())
        }
    })
    .await;

    let finding = json!([{ "kind": "disk_usage_high", "severity": "warning", "target": "mount/node-a:/var",
        "summary": "/var at 95%", "labels": { "mount": "/var", "node": "node-a" } }]);
    assert_eq!(node_a.submit(&finding).await.0, 202);
    let incident = incident_for(&coordinator, "P2-001").await;
    let entries = run_end(&coordinator, &incident.id).await;
    let log = show(&entries);

    let result = result_of(&entries, "clean_old_logs").unwrap_or_else(|| panic!("no cleanup result:\n{log}"));
    assert_eq!(result.details.get("status").map(String::as_str), Some("succeeded"), "{log}");
    assert!(result.message.contains("deleted 2 files"), "{log}");
    assert!(result.message.contains("kept 1: 1 is open by a process"), "{log}");
    let ev = |k: &str| result.details.get(&format!("evidence.{k}")).cloned().unwrap_or_default();
    assert_eq!((ev("files_deleted"), ev("node-a.files_deleted")), ("2".into(), "2".into()), "{log}");
    assert_eq!(ev("bytes_freed"), (2 * "some old log line\n".len()).to_string(), "{log}");
    assert_eq!(ev("kept.open"), "1", "{log}");
    assert_eq!(ev("agents"), "1", "only the node that reported: {log}");
    assert!(!result.details.contains_key("evidence.node-b.outcome"), "{log}");
    // The decision named that node's agent, weighed as one of two nodes.
    let decided = about(&entries, "clean_old_logs").into_iter().find(|e| e.kind == "decision").cloned();
    assert!(decided.is_some_and(|d| d.details.get("outcome").map(String::as_str) == Some("allowed")), "{log}");

    assert!(!tmp.join("old.log").exists() && !var.join("app.log").exists(), "{log}");
    for kept in [tmp.join("young.log"), var.join("recent.log"), var.join("held.log"), other.join("old.log")] {
        assert!(kept.exists(), "{} was deleted:\n{log}", kept.display());
    }
    // Steps were refused here (no cluster to scale): the run never reads
    // as every step having run, and says which did not.
    assert!(!entries.iter().any(|e| e.message.contains("every step ran")), "{log}");
    let end = entries.iter().rev().find(|e| e.kind == "runbook" || e.kind == "escalated").unwrap();
    if end.kind == "runbook" {
        assert!(end.message.contains("finished: partially succeeded"), "{log}");
        assert!(end.message.contains("did not: step scale_down_analytics: refused"), "{log}");
        let status = admin.clone().get_incident(pb::GetIncidentRequest { id: incident.id.clone() }).await.unwrap();
        let outcome = status.into_inner().run_outcome.unwrap_or_else(|| panic!("no outcome:\n{log}"));
        assert_eq!(outcome.verdict, "partially_succeeded", "{log}");
        assert!(outcome.steps_succeeded >= 1 && outcome.steps_refused >= 1, "{outcome:?}\n{log}");
    }
}
