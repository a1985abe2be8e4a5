//! Process signals with real processes: a child the test starts that holds
//! memory is reported hot and cleared once killed, a parent that never
//! reaps its children is named for its zombies, and OOM kills written to a
//! kernel log file reach the coordinator with their pod.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use remedy_e2e::procs::{Agent, Coordinator, eventually};
use remedy_proto::v1 as pb;

/// Longest any child of the test lives, even if the test dies first.
const CHILD_LIFETIME_SECS: u32 = 60;

/// A child process of the test, killed and reaped on drop.
struct Kid(Child);

impl Kid {
    /// Runs a Python program that prints `ready` once set up, then sleeps.
    fn python(program: &str) -> Kid {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(program)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 is needed for the process signals tests");
        let stdout = child.stdout.take().expect("the child's stdout");
        let mut line = String::new();
        // Bounded by the child: it prints `ready` or exits (end of file).
        BufReader::new(stdout).read_line(&mut line).expect("read the child's first line");
        assert_eq!(line.trim(), "ready", "the child did not set up");
        Kid(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An agent whose only findings of interest come from `processes` (YAML
/// under `processes:`).
async fn agent(dir: &Path, coordinator: &Coordinator, processes: &str) -> Agent {
    std::fs::create_dir_all(dir).expect("agent dir");
    let config = dir.join("agent.yaml");
    let text = format!("logs: {{enabled: false}}\npods: {{enabled: false}}\nprocesses:\n{processes}");
    std::fs::write(&config, text).expect("write the agent's configuration");
    Agent::start_with(
        &dir.join("agent"),
        "node-procs",
        &coordinator.url(),
        &["--config", config.to_str().unwrap_or("")],
    )
    .await
}

async fn findings_of(coordinator: &Coordinator, kind: &str) -> Vec<pb::Finding> {
    let mut admin = coordinator.admin().await;
    let request = pb::ListFindingsRequest { kind: kind.into(), page_size: 5_000, ..Default::default() };
    let found = admin.list_findings(request).await.map(|r| r.into_inner().findings).unwrap_or_default();
    found.into_iter().filter_map(|f| f.finding).collect()
}

/// The first finding of `kind` that `pick` accepts, waiting for it.
async fn wait_for_finding(
    coordinator: &Coordinator,
    kind: &str,
    what: &str,
    pick: impl Fn(&pb::Finding) -> bool,
) -> pb::Finding {
    eventually(what, Duration::from_secs(30), || async {
        findings_of(coordinator, kind).await.into_iter().find(|f| pick(f))
    })
    .await
}

fn state(f: &pb::Finding) -> pb::FindingState {
    pb::FindingState::try_from(f.state).unwrap_or(pb::FindingState::Unspecified)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_holding_memory_is_reported_hot_and_cleared_once_killed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator = Coordinator::start(&dir.path().join("coordinator")).await;
    // Written byte by byte, so the pages are resident (a zeroed buffer may
    // not be).
    let mut hog = Kid::python(&format!(
        "import time\nx = bytearray(b'\\x01') * (300 << 20)\nprint('ready', flush=True)\ntime.sleep({CHILD_LIFETIME_SECS})\n"
    ));
    let pid = hog.pid().to_string();
    let agent = agent(
        dir.path(),
        &coordinator,
        "  interval: 200ms\n  memory: {threshold: 250MiB, clear_below: 200MiB, for: 400ms}\n  cpu: {enabled: false}\n  zombies: {enabled: false}\n",
    )
    .await;

    let target = format!("process/node-procs/{pid}/memory");
    let hot = wait_for_finding(&coordinator, "process_hot", "the hog reported hot", |f| {
        f.target == target && state(f) == pb::FindingState::Active
    })
    .await;
    assert_eq!(hot.labels.get("pid"), Some(&pid), "{hot:?}");
    assert!(hot.labels.get("process").is_some_and(|n| n.starts_with("python")), "{hot:?}");
    assert!(hot.evidence.get("cmdline").is_some_and(|c| c.contains("bytearray")), "{hot:?}");
    let value: f64 = hot.evidence.get("value").and_then(|v| v.parse().ok()).expect("a value");
    assert!(value >= (250 << 20) as f64, "{hot:?}");
    assert_eq!(hot.evidence.get("threshold").map(String::as_str), Some(&*(250u64 << 20).to_string()));
    let state_json = agent.debug_state().await;
    let tracked = &state_json["processes"]["tracked"];
    assert!(
        tracked.as_array().is_some_and(|t| t.iter().any(|p| p["pid"].as_u64() == hot.labels["pid"].parse().ok())),
        "{tracked}"
    );

    hog.kill();
    let cleared = wait_for_finding(&coordinator, "process_hot", "the hog's finding cleared", |f| {
        f.target == target && state(f) == pb::FindingState::Cleared
    })
    .await;
    assert_eq!(cleared.evidence.get("cleared_because").map(String::as_str), Some("exited"), "{cleared:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombies_left_by_a_parent_are_reported_naming_the_parent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator = Coordinator::start(&dir.path().join("coordinator")).await;
    // Five children exit at once and are never waited for.
    let parent = Kid::python(&format!(
        "import os, time\nfor _ in range(5):\n    if os.fork() == 0:\n        os._exit(0)\n\
         print('ready', flush=True)\ntime.sleep({CHILD_LIFETIME_SECS})\n"
    ));
    let ppid = parent.pid().to_string();
    let agent = agent(
        dir.path(),
        &coordinator,
        "  interval: 200ms\n  memory: {enabled: false}\n  cpu: {enabled: false}\n  zombies: {threshold: 5, for: 400ms}\n",
    )
    .await;

    let found = wait_for_finding(&coordinator, "process_zombies", "the zombies reported", |f| {
        state(f) == pb::FindingState::Active
    })
    .await;
    assert_eq!(found.target, "node/node-procs");
    let count: usize = found.evidence.get("count").and_then(|c| c.parse().ok()).expect("a count");
    assert!(count >= 5, "{found:?}");
    let parents = found.evidence.get("parents").cloned().unwrap_or_default();
    assert!(parents.contains(&format!("(pid {ppid}): 5")), "the parent is named with its five zombies: {parents}");
    let state_json = agent.debug_state().await;
    let listed = &state_json["processes"]["zombies"]["parents"];
    assert!(
        listed
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["pid"].as_u64() == ppid.parse().ok() && p["zombies"] == 5)),
        "{listed}"
    );
}

/// A kill inside a pod (cgroup v2, systemd driver), as the kernel writes it
/// to /dev/kmsg; the pid and name are made up so nothing real matches.
fn kill_records(seq: u64, pid: u32, name: &str, pod: &str) -> String {
    let cgroup = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9.scope",
        pod.replace('-', "_")
    );
    format!(
        "6,{seq},9081727012,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=cri-containerd-0a1b.scope,mems_allowed=0,oom_memcg={cgroup},task_memcg={cgroup},task={name},pid={pid},uid=0\n\
         3,{},9081727040,-;Memory cgroup out of memory: Killed process {pid} ({name}) total-vm:268700kB, anon-rss:261824kB, file-rss:1152kB, shmem-rss:0kB, UID:0 pgtables:560kB oom_score_adj:-997\n",
        seq + 1
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kills_in_the_kernel_log_reach_the_coordinator_with_their_pod() {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator = Coordinator::start(&dir.path().join("coordinator")).await;
    let kern = dir.path().join("kmsg.log");
    let pod = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
    // A kill from before the agent started: old news, never reported.
    std::fs::write(&kern, kill_records(100, 3_999_001, "remedy-e2e-old", pod)).expect("write the kernel log");
    let agent = agent(
        dir.path(),
        &coordinator,
        &format!(
            "  memory: {{enabled: false}}\n  cpu: {{enabled: false}}\n  zombies: {{enabled: false}}\n  oom_kills: {{source: {}, clear_after: 2s, severity: critical}}\n",
            kern.display()
        ),
    )
    .await;
    eventually("the kernel log opened", Duration::from_secs(30), || async {
        let state = agent.debug_state().await;
        (state["processes"]["kernel_log"]["readable"] == true).then_some(())
    })
    .await;

    let mut file = std::fs::OpenOptions::new().append(true).open(&kern).expect("open the kernel log");
    file.write_all(kill_records(200, 3_999_002, "remedy-e2e-oom", pod).as_bytes()).expect("append a kill");
    drop(file);

    let target = format!("pod-uid/{pod}");
    let kill = wait_for_finding(&coordinator, "node_oom_kill", "the OOM kill reported", |f| {
        f.target == target && state(f) == pb::FindingState::Active
    })
    .await;
    let evidence = |key: &str| kill.evidence.get(key).map(String::as_str);
    assert_eq!((evidence("pid"), evidence("process")), (Some("3999002"), Some("remedy-e2e-oom")), "{kill:?}");
    assert_eq!(
        (evidence("limit"), evidence("kills"), evidence("anon_rss_kb")),
        (Some("cgroup"), Some("1"), Some("261824"))
    );
    assert_eq!(kill.labels.get("pod_uid").map(String::as_str), Some(pod));
    assert_eq!(
        kill.labels.get("container_id").map(String::as_str),
        Some("0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9")
    );
    assert_eq!(pb::Severity::try_from(kill.severity), Ok(pb::Severity::Critical));

    let cleared = wait_for_finding(&coordinator, "node_oom_kill", "the OOM kill's finding cleared", |f| {
        f.target == target && state(f) == pb::FindingState::Cleared
    })
    .await;
    assert_eq!(cleared.evidence.get("pid").map(String::as_str), Some("3999002"));
    let all = findings_of(&coordinator, "node_oom_kill").await;
    assert!(
        all.iter().all(|f| f.evidence.get("pid").map(String::as_str) != Some("3999001")),
        "a kill from before the start was reported: {all:?}"
    );
    let state_json = agent.debug_state().await;
    assert_eq!(state_json["processes"]["oom_kills"][0]["pid"], 3_999_002, "{}", state_json["processes"]);
}
