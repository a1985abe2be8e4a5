//! Kernel OOM kills from the kernel log, parsed and judged into
//! `node_oom_kill` findings.
//!
//! One kill is several kernel lines. Since Linux 4.19 an
//! `oom-kill:constraint=...,task_memcg=...,task=<name>,pid=<pid>,uid=...`
//! line (which names the cgroup, and so the pod) comes just before
//! `Out of memory: Killed process <pid> (<name>) total-vm:...` (or
//! `Memory cgroup out of memory: Killed process ...`); older kernels print
//! only the latter. The parser joins the two by pid, so each kill is
//! reported once with everything both lines say.
//!
//! The pods watch reports `pod_oom_killed` from the API for containers
//! whose main process was killed; this one sees every kill the kernel makes
//! (a helper process inside a container, a node daemon), as it happens.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use remedy_shared::Severity;
use remedy_shared::Timestamp;
use remedy_shared::finding::{Finding, FindingKind, FindingState};
use serde::Serialize;

use super::table::cut;

/// One kernel log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRecord {
    /// Sequence number (`/dev/kmsg` only).
    pub seq: Option<u64>,
    /// Microseconds since boot (`/dev/kmsg`) when known.
    pub micros: Option<u64>,
    /// The message's first line.
    pub message: String,
}

/// Reads one record: `/dev/kmsg`'s `priority,seq,timestamp,flags;message`
/// (continuation lines after the first ignored), a `dmesg` line
/// (`[  123.456789] message`), a `<3>message` as written to `/dev/kmsg`, or
/// a syslog line with `kernel:` before the message. Anything else is the
/// message itself.
pub fn parse_record(line: &str) -> KernelRecord {
    let first = line.lines().next().unwrap_or("").trim_end();
    if let Some((head, message)) = first.split_once(';') {
        let fields: Vec<&str> = head.split(',').collect();
        if fields.len() >= 3 && fields[..3].iter().all(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit())) {
            return KernelRecord {
                seq: fields[1].parse().ok(),
                micros: fields[2].parse().ok(),
                message: message.to_owned(),
            };
        }
    }
    let mut message = first;
    if let Some((_, rest)) = message.split_once(" kernel: ") {
        message = rest;
    }
    if let Some(rest) = message.strip_prefix('<')
        && let Some((level, rest)) = rest.split_once('>')
        && !level.is_empty()
        && level.bytes().all(|b| b.is_ascii_digit())
    {
        message = rest;
    }
    if let Some(rest) = message.strip_prefix('[')
        && let Some((stamp, rest)) = rest.split_once(']')
        && stamp.trim().bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        message = rest.trim_start();
    }
    KernelRecord { seq: None, micros: None, message: message.to_owned() }
}

/// One process the kernel's OOM killer killed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OomKill {
    /// Its pid (in the node's PID namespace).
    pub pid: u32,
    /// Its name.
    pub process: String,
    /// `CONSTRAINT_NONE` (the node ran out), `CONSTRAINT_MEMCG` (a cgroup's
    /// limit), ...
    pub constraint: Option<String>,
    /// Whether a cgroup's limit, not the node, was exhausted.
    pub cgroup_limit: bool,
    /// The killed task's cgroup.
    pub task_memcg: Option<String>,
    /// The cgroup whose limit was hit.
    pub oom_memcg: Option<String>,
    /// The pod, when the cgroup is a Kubernetes pod's.
    pub pod_uid: Option<String>,
    /// The container, when the cgroup names one.
    pub container_id: Option<String>,
    /// Anonymous resident memory at the kill, kB.
    pub anon_rss_kb: Option<u64>,
    /// Virtual memory at the kill, kB.
    pub total_vm_kb: Option<u64>,
    /// Owner.
    pub uid: Option<u32>,
    /// The kernel's sequence number of the `Killed process` record.
    pub seq: Option<u64>,
    /// The `Killed process` line (or the `oom-kill` one alone).
    pub message: String,
}

/// The fields of an `oom-kill:` line.
fn parse_oom_kill_line(message: &str) -> Option<OomKill> {
    let rest = message.split("oom-kill:").nth(1)?;
    let mut kill = OomKill::default();
    let mut pid = None;
    for field in rest.split(',') {
        let (key, value) = field.split_once('=').unwrap_or((field, ""));
        match key.trim() {
            "constraint" => kill.constraint = Some(value.to_owned()),
            "oom_memcg" => kill.oom_memcg = Some(value.to_owned()),
            "task_memcg" => kill.task_memcg = Some(value.to_owned()),
            "task" => kill.process = value.to_owned(),
            "pid" => pid = value.trim().parse().ok(),
            "uid" => kill.uid = value.trim().parse().ok(),
            _ => {}
        }
    }
    kill.pid = pid?;
    kill.cgroup_limit = kill.constraint.as_deref() == Some("CONSTRAINT_MEMCG");
    kill.message = message.to_owned();
    Some(kill)
}

/// The fields of a `Killed process <pid> (<name>) ...` line.
fn parse_killed_process(message: &str) -> Option<OomKill> {
    let at = message.find("Killed process ")?;
    let rest = &message[at + "Killed process ".len()..];
    let (pid, rest) = rest.split_once(' ')?;
    let pid: u32 = pid.parse().ok()?;
    let rest = rest.strip_prefix('(')?;
    // Names may hold spaces and parentheses; the figures follow the last ")".
    let end = rest.find(") total-vm:").or_else(|| rest.rfind(')'))?;
    let (process, figures) = (&rest[..end], &rest[end + 1..]);
    let kb = |key: &str| -> Option<u64> {
        let value = figures.split(key).nth(1)?;
        value.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some(OomKill {
        pid,
        process: process.to_owned(),
        cgroup_limit: message.contains("Memory cgroup out of memory"),
        anon_rss_kb: kb("anon-rss:"),
        total_vm_kb: kb("total-vm:"),
        uid: kb("UID:").and_then(|u| u32::try_from(u).ok()),
        message: message.to_owned(),
        ..OomKill::default()
    })
}

/// The pod uid and container id in a cgroup path, for the cgroupfs
/// (`/kubepods/burstable/pod<uid>/<container>`) and systemd
/// (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`)
/// layouts.
pub fn pod_of_cgroup(path: &str) -> (Option<String>, Option<String>) {
    if !path.contains("kubepods") {
        return (None, None);
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut pod = None;
    let mut container = None;
    for (i, part) in parts.iter().enumerate() {
        let name = part.strip_suffix(".slice").unwrap_or(part);
        let uid = name.rsplit_once("pod").map(|(_, uid)| uid).filter(|u| looks_like_uid(u));
        if let Some(uid) = uid {
            pod = Some(uid.replace('_', "-"));
            if let Some(next) = parts.get(i + 1) {
                let id = next.strip_suffix(".scope").unwrap_or(next);
                let id = id.rsplit_once('-').map_or(id, |(_, id)| id);
                if !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    container = Some(id.to_owned());
                }
            }
        }
    }
    (pod, container)
}

fn looks_like_uid(s: &str) -> bool {
    s.len() == 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_')
}

/// Kills half-seen (one line of two) wait this long for the other line.
const PAIRING: Duration = Duration::from_secs(2);
/// Half-seen kills held at once; a storm beyond this is reported unpaired.
const MAX_PENDING: usize = 64;

/// Turns kernel records into kills, joining a kill's two lines.
#[derive(Debug, Default)]
pub struct OomParser {
    pending: VecDeque<(OomKill, Timestamp)>,
}

impl OomParser {
    /// Feeds one record; returns the kills it completes.
    pub fn feed(&mut self, record: &KernelRecord, now: Timestamp) -> Vec<OomKill> {
        let message = record.message.as_str();
        if message.contains("oom-kill:") {
            let Some(mut kill) = parse_oom_kill_line(message) else { return Vec::new() };
            kill.seq = record.seq;
            let mut out = Vec::new();
            if self.pending.len() >= MAX_PENDING {
                out.extend(self.pending.pop_front().map(|(k, _)| k));
            }
            self.pending.push_back((kill, now));
            return out;
        }
        let Some(mut killed) = parse_killed_process(message) else { return Vec::new() };
        killed.seq = record.seq;
        if let Some(i) = self.pending.iter().position(|(k, _)| k.pid == killed.pid) {
            let (first, _) = self.pending.remove(i).unwrap_or_default();
            killed.constraint = first.constraint;
            killed.task_memcg = first.task_memcg;
            killed.oom_memcg = first.oom_memcg;
            killed.cgroup_limit |= first.cgroup_limit;
            killed.uid = killed.uid.or(first.uid);
        }
        vec![finish(killed)]
    }

    /// The kills whose second line did not come within the pairing time.
    pub fn flush(&mut self, now: Timestamp) -> Vec<OomKill> {
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|(_, at)| now.since(*at) >= PAIRING) {
            out.extend(self.pending.pop_front().map(|(k, _)| finish(k)));
        }
        out
    }
}

fn finish(mut kill: OomKill) -> OomKill {
    let cgroup = kill.task_memcg.as_deref().or(kill.oom_memcg.as_deref()).unwrap_or("");
    let (pod, container) = pod_of_cgroup(cgroup);
    kill.pod_uid = pod;
    kill.container_id = container;
    kill
}

/// How `node_oom_kill` findings are raised and cleared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OomRule {
    /// How long after a target's last kill its finding clears.
    pub clear_after: Duration,
    /// Severity.
    pub severity: Severity,
}

/// Targets with a held finding, at most; the oldest is let go (its finding
/// expires at the coordinator by itself).
const MAX_TARGETS: usize = 256;

#[derive(Debug)]
struct Held {
    first: Timestamp,
    last: Timestamp,
    kills: u64,
    finding: Finding,
}

/// One `node_oom_kill` per kill, on the pod when the cgroup names one and
/// on the process name otherwise, so repeated kills of one workload join
/// one incident; cleared `clear_after` after the last.
#[derive(Debug)]
pub struct OomJudge {
    node: String,
    rule: OomRule,
    held: BTreeMap<String, Held>,
}

impl OomJudge {
    /// A judge for `node`.
    pub fn new(rule: OomRule, node: String) -> Self {
        OomJudge { node, rule, held: BTreeMap::new() }
    }

    /// Findings held.
    pub fn active(&self) -> impl Iterator<Item = &Finding> {
        self.held.values().map(|h| &h.finding)
    }

    /// The finding for one kill.
    pub fn kill(&mut self, kill: &OomKill, now: Timestamp) -> Finding {
        let target = match &kill.pod_uid {
            Some(uid) => format!("pod-uid/{uid}"),
            None => format!("process/{}/{}", self.node, kill.process),
        };
        if !self.held.contains_key(&target) && self.held.len() >= MAX_TARGETS {
            let oldest = self.held.iter().min_by_key(|(_, h)| h.last).map(|(t, _)| t.clone());
            if let Some(t) = oldest {
                self.held.remove(&t);
            }
        }
        let (first, kills) = self.held.get(&target).map_or((now, 1), |h| (h.first, h.kills + 1));
        let mut labels =
            BTreeMap::from([("node".to_owned(), self.node.clone()), ("process".to_owned(), kill.process.clone())]);
        let mut evidence = BTreeMap::from([
            ("pid".to_owned(), kill.pid.to_string()),
            ("process".to_owned(), kill.process.clone()),
            ("kills".to_owned(), kills.to_string()),
            ("limit".to_owned(), if kill.cgroup_limit { "cgroup" } else { "node" }.to_owned()),
            ("message".to_owned(), cut(&kill.message, 512)),
        ]);
        let optional = [
            ("pod_uid", kill.pod_uid.clone(), true),
            ("container_id", kill.container_id.clone(), true),
            ("constraint", kill.constraint.clone(), false),
            ("task_memcg", kill.task_memcg.clone(), false),
            ("oom_memcg", kill.oom_memcg.clone(), false),
            ("anon_rss_kb", kill.anon_rss_kb.map(|v| v.to_string()), false),
            ("total_vm_kb", kill.total_vm_kb.map(|v| v.to_string()), false),
            ("uid", kill.uid.map(|v| v.to_string()), false),
            ("kernel_seq", kill.seq.map(|v| v.to_string()), false),
        ];
        for (key, value, label) in optional {
            let Some(value) = value else { continue };
            if label {
                labels.insert(key.to_owned(), value.clone());
            }
            evidence.insert(key.to_owned(), cut(&value, 512));
        }
        let rss = kill.anon_rss_kb.map(|kb| format!(" at {} MiB resident", kb / 1024)).unwrap_or_default();
        let place = match &kill.pod_uid {
            Some(uid) => format!("in pod {uid}"),
            None => format!("on {}", self.node),
        };
        let finding = Finding {
            kind: FindingKind::NodeOomKill,
            severity: self.rule.severity,
            state: FindingState::Active,
            target: cut(&target, remedy_shared::finding::MAX_TARGET_LEN),
            labels,
            evidence,
            summary: format!(
                "the kernel OOM-killed {} (pid {}){rss} {place} ({} limit; {kills} kills)",
                kill.process,
                kill.pid,
                if kill.cgroup_limit { "cgroup" } else { "node" }
            ),
            first_seen: first,
            last_seen: now,
            expires_at: Some(now.plus(self.rule.clear_after)),
        };
        self.held.insert(target, Held { first, last: now, kills, finding: finding.clone() });
        finding
    }

    /// Clears targets without a kill for `clear_after`.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Finding> {
        let due: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| now.since(h.last) >= self.rule.clear_after)
            .map(|(t, _)| t.clone())
            .collect();
        due.into_iter()
            .filter_map(|t| self.held.remove(&t))
            .map(|h| {
                let mut f = h.finding;
                f.state = FindingState::Cleared;
                f.summary = format!("no OOM kill on {} for {:?}", f.target, self.rule.clear_after);
                f.last_seen = now;
                f.expires_at = None;
                f
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real kernel output (6.x), cgroup v2 with the systemd driver: a
    /// container over its limit.
    const MEMCG_V2: &[&str] = &[
        "6,2210,9081726354,-;stress invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=-997",
        "4,2211,9081726380,-;CPU: 1 PID: 4242 Comm: stress Not tainted 6.1.0-18-amd64 #1  Debian 6.1.76-1",
        "6,2240,9081726890,-;memory: usage 262144kB, limit 262144kB, failcnt 211",
        "6,2251,9081727012,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=cri-containerd-5f0a9c1d2e3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f.scope,mems_allowed=0,oom_memcg=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8a9b_0c1d2e3f4a5b.slice/cri-containerd-5f0a9c1d2e3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f.scope,task_memcg=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8a9b_0c1d2e3f4a5b.slice/cri-containerd-5f0a9c1d2e3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f.scope,task=stress,pid=4242,uid=0",
        "3,2252,9081727040,-;Memory cgroup out of memory: Killed process 4242 (stress) total-vm:268700kB, anon-rss:261824kB, file-rss:1152kB, shmem-rss:0kB, UID:0 pgtables:560kB oom_score_adj:-997",
        "6,2253,9081729100,-;oom_reaper: reaped process 4242 (stress), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
    ];

    /// The node out of memory (5.x), a process outside any pod, as `dmesg`
    /// prints it.
    const GLOBAL_DMESG: &[&str] = &[
        "[171045.102233] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/user.slice/user-1000.slice/session-3.scope,task=python3,pid=31337,uid=1000",
        "[171045.102260] Out of memory: Killed process 31337 (python3) total-vm:25246168kB, anon-rss:24601984kB, file-rss:4kB, shmem-rss:0kB, UID:1000 pgtables:48248kB oom_score_adj:0",
    ];

    /// cgroup v1 with the cgroupfs driver, from syslog.
    const MEMCG_V1_SYSLOG: &[&str] = &[
        "Nov 27 03:00:01 worker-2 kernel: [ 8812.551021] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=9c8b7a6f5e4d,mems_allowed=0,oom_memcg=/kubepods/burstable/pod8e0cbb4c-2f9b-4f1e-9d3c-1b2a3c4d5e6f,task_memcg=/kubepods/burstable/pod8e0cbb4c-2f9b-4f1e-9d3c-1b2a3c4d5e6f/9c8b7a6f5e4d3c2b1a09f8e7d6c5b4a39c8b7a6f5e4d3c2b1a09f8e7d6c5b4a3,task=java,pid=9876,uid=1000",
        "Nov 27 03:00:01 worker-2 kernel: [ 8812.551094] Memory cgroup out of memory: Killed process 9876 (java) total-vm:4871232kB, anon-rss:1046752kB, file-rss:20480kB, shmem-rss:0kB, UID:1000 pgtables:2420kB oom_score_adj:969",
    ];

    /// A 4.x kernel: no oom-kill line, "Kill process" then "Killed process".
    const OLD_KERNEL: &[&str] = &[
        "<3>[ 5123.000001] Out of memory: Kill process 2121 (Web Content) score 873 or sacrifice child",
        "<3>[ 5123.000090] Killed process 2121 (Web Content) total-vm:3051212kB, anon-rss:1524876kB, file-rss:0kB, shmem-rss:0kB",
    ];

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn kills(lines: &[&str]) -> Vec<OomKill> {
        let mut p = OomParser::default();
        let mut out: Vec<OomKill> = lines.iter().flat_map(|l| p.feed(&parse_record(l), t(0))).collect();
        out.extend(p.flush(t(10_000)));
        out
    }

    #[test]
    fn records_of_every_shape_give_their_message() {
        let r = parse_record("3,2252,9081727040,-;Out of memory: Killed process 1 (x)\n SUBSYSTEM=memory\n");
        assert_eq!(
            (r.seq, r.micros, r.message.as_str()),
            (Some(2252), Some(9081727040), "Out of memory: Killed process 1 (x)")
        );
        assert_eq!(parse_record("[ 12.5] hello; world").message, "hello; world");
        assert_eq!(parse_record("<4>hello").message, "hello");
        assert_eq!(parse_record("Nov 27 03:00:01 h kernel: [1.0] hi").message, "hi");
        assert_eq!(parse_record("just text").message, "just text");
    }

    #[test]
    fn a_container_over_its_limit_is_one_kill_naming_its_pod_and_container() {
        let k = kills(MEMCG_V2);
        assert_eq!(k.len(), 1, "{k:?}");
        let k = &k[0];
        assert_eq!((k.pid, k.process.as_str(), k.cgroup_limit), (4242, "stress", true));
        assert_eq!(k.constraint.as_deref(), Some("CONSTRAINT_MEMCG"));
        assert_eq!(k.pod_uid.as_deref(), Some("0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"));
        assert_eq!(k.container_id.as_deref(), Some("5f0a9c1d2e3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f"));
        assert_eq!((k.anon_rss_kb, k.total_vm_kb, k.uid, k.seq), (Some(261_824), Some(268_700), Some(0), Some(2252)));
    }

    #[test]
    fn the_node_out_of_memory_kills_a_process_outside_any_pod() {
        let k = kills(GLOBAL_DMESG);
        assert_eq!(k.len(), 1);
        assert_eq!((k[0].pid, k[0].process.as_str(), k[0].cgroup_limit), (31337, "python3", false));
        assert_eq!((k[0].pod_uid.as_deref(), k[0].uid), (None, Some(1000)));
        assert_eq!(k[0].task_memcg.as_deref(), Some("/user.slice/user-1000.slice/session-3.scope"));
    }

    #[test]
    fn cgroup_v1_paths_and_syslog_lines_name_the_pod() {
        let k = kills(MEMCG_V1_SYSLOG);
        assert_eq!(k.len(), 1);
        assert_eq!((k[0].pid, k[0].process.as_str()), (9876, "java"));
        assert_eq!(k[0].pod_uid.as_deref(), Some("8e0cbb4c-2f9b-4f1e-9d3c-1b2a3c4d5e6f"));
        assert!(k[0].container_id.as_deref().is_some_and(|c| c.starts_with("9c8b7a6f5e4d")));
    }

    #[test]
    fn old_kernels_report_the_killed_line_once_and_names_keep_their_spaces() {
        let k = kills(OLD_KERNEL);
        assert_eq!(k.len(), 1);
        assert_eq!((k[0].pid, k[0].process.as_str(), k[0].anon_rss_kb), (2121, "Web Content", Some(1_524_876)));
        assert_eq!(k[0].uid, None);
    }

    #[test]
    fn an_oom_kill_line_without_its_pair_is_reported_after_the_pairing_time() {
        let mut p = OomParser::default();
        assert!(p.feed(&parse_record(GLOBAL_DMESG[0]), t(0)).is_empty());
        assert!(p.flush(t(1_000)).is_empty());
        let k = p.flush(t(2_000));
        assert_eq!((k.len(), k[0].pid), (1, 31337));
        assert!(kills(&["usb 1-1: new high-speed USB device", "Out of memory: Killed process x (y)"]).is_empty());
    }

    #[test]
    fn kills_of_one_pod_join_one_finding_that_clears_after_the_quiet_time() {
        let rule = OomRule { clear_after: Duration::from_secs(60), severity: Severity::Critical };
        let mut j = OomJudge::new(rule, "n1".into());
        let k = kills(MEMCG_V2).remove(0);
        let f = j.kill(&k, t(1_000));
        assert_eq!((f.kind, f.state, f.severity), (FindingKind::NodeOomKill, FindingState::Active, Severity::Critical));
        assert_eq!(f.target, "pod-uid/0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b");
        assert_eq!(
            (f.evidence["pid"].as_str(), f.evidence["process"].as_str(), f.evidence["kills"].as_str()),
            ("4242", "stress", "1")
        );
        assert_eq!(f.labels["pod_uid"], "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b");
        assert_eq!(f.evidence["limit"], "cgroup");
        assert_eq!(f.expires_at, Some(t(61_000)));
        assert!(f.validate().is_ok());
        let again = j.kill(&k, t(30_000));
        assert_eq!((again.evidence["kills"].as_str(), again.first_seen), ("2", t(1_000)));
        let other = j.kill(&kills(GLOBAL_DMESG).remove(0), t(31_000));
        assert_eq!(other.target, "process/n1/python3");
        assert_eq!(other.evidence["limit"], "node");
        assert!(j.tick(t(89_999)).is_empty());
        let cleared = j.tick(t(90_000));
        assert_eq!((cleared.len(), cleared[0].state, cleared[0].expires_at), (1, FindingState::Cleared, None));
        assert_eq!(j.active().count(), 1);
    }
}
