//! The `gc_nudge` directive: asks the runtime of matching processes on
//! this node to collect garbage, the way its selector is configured (a
//! signal it handles, a POST to a loopback admin endpoint, or
//! `jcmd PID GC.run`), and reports their memory before and after.
//!
//! Parameters, all strings; any other is refused, naming it:
//!
//! - `selector` (required): a configured selector's `name`, or its
//!   `pod_selector` (so a runbook's `gc_nudge.selector`, such as
//!   `app=saas-idp-api`, is forwarded unchanged).
//! - `namespace` (optional): must equal the selector's configured
//!   namespace when it has one.
//! - `pid` (optional): nudge this process only; one that does not match the
//!   selector is refused with the reason.
//! - `max_pods` (optional, default 1): at most this many processes (the
//!   largest by RSS), never more than `local_actions.gc_nudge.max_processes`.
//!
//! A process matches when its name (`/proc/PID/comm`) matches the
//! selector's `process_name` and its command line matches its `cmdline`
//! (each when configured; at least one always is). The agent never nudges
//! itself. Before acting, a process's start time is read again so a PID
//! reused meanwhile is not touched.
//!
//! Outcomes: `succeeded` (every chosen process was nudged); `failed` (no
//! matching process, or a nudge failed); `dry_run` (what would be nudged,
//! with current memory; nothing sent, nothing of the budget spent);
//! `refused` (a parameter, a process that does not match, GC nudges off,
//! the budget or the cooldown). The evidence names `selector`, `method`,
//! `nudged`, and per process `<pid>.process`, `<pid>.rss_before_bytes`,
//! `<pid>.rss_after_bytes`, `<pid>.freed_bytes` (negative when it grew),
//! `<pid>.settled` and `<pid>.result`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use nix::sys::signal::kill;
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::{Method, NudgeConfig, Selector};

/// The parameters, as refusals list them.
const PARAMS: &str = "selector, namespace, pid, max_pods";
/// How often memory is read while it settles.
const POLL: Duration = Duration::from_millis(50);
/// Longest an HTTP nudge or a `jcmd` may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a command line read.
const CMDLINE_BYTES: usize = 4096;

/// What a `gc_nudge` directive asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NudgeParams {
    /// The selector, by name or pod selector.
    pub selector: String,
    /// The namespace, if given.
    pub namespace: Option<String>,
    /// One process.
    pub pid: Option<i32>,
    /// Most processes.
    pub max: u32,
}

/// Reads a `gc_nudge`'s parameters; the error names the parameter.
pub fn nudge_params(params: &HashMap<String, String>, config: &NudgeConfig) -> Result<NudgeParams, String> {
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    if let Some(unknown) =
        keys.into_iter().find(|k| !matches!(k.as_str(), "selector" | "namespace" | "pid" | "max_pods"))
    {
        return Err(format!("unknown parameter `{unknown}` (gc_nudge takes {PARAMS})"));
    }
    let selector = params.get("selector").map(|s| s.trim().to_owned()).unwrap_or_default();
    if selector.is_empty() {
        return Err("selector: missing; name a configured selector (or its pod_selector)".to_owned());
    }
    let namespace = params.get("namespace").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let pid = params
        .get("pid")
        .map(|t| match t.trim().parse::<i32>() {
            Ok(p) if p > 1 => Ok(p),
            _ => Err(format!("pid: `{t}` is not a process id above 1")),
        })
        .transpose()?;
    let max = params
        .get("max_pods")
        .map(|t| match t.trim().parse::<u32>() {
            Ok(n) if (1..=config.max_processes).contains(&n) => Ok(n),
            _ => Err(format!("max_pods: `{t}` is not a number from 1 to {}", config.max_processes)),
        })
        .transpose()?
        .unwrap_or(1);
    Ok(NudgeParams { selector, namespace, pid, max })
}

/// The configured selector a directive names, or why there is none.
pub fn choose<'a>(config: &'a NudgeConfig, p: &NudgeParams) -> Result<&'a Selector, String> {
    let s = config
        .selectors
        .iter()
        .find(|s| s.name == p.selector)
        .or_else(|| config.selectors.iter().find(|s| s.pod_selector.as_deref() == Some(p.selector.as_str())))
        .ok_or_else(|| {
            let names: Vec<&str> = config.selectors.iter().map(|s| s.name.as_str()).collect();
            format!(
                "selector: no configured selector is named or selects `{}` (configured: {})",
                p.selector,
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            )
        })?;
    if let (Some(want), Some(have)) = (&p.namespace, &s.namespace)
        && want != have
    {
        return Err(format!("namespace: selector `{}` stands for namespace `{have}`, not `{want}`", s.name));
    }
    Ok(s)
}

/// A process as read from `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Its id.
    pub pid: i32,
    /// `/proc/PID/comm`.
    pub name: String,
    /// Arguments joined by spaces.
    pub cmdline: String,
    /// Start time in clock ticks since boot, which tells a reused PID.
    pub start: u64,
}

/// Why `p` does not match `s`, if it does not.
pub fn mismatch(s: &Selector, p: &Process) -> Option<String> {
    if let Some(re) = &s.process_name
        && !re.is_match(&p.name)
    {
        return Some(format!("process_name `{}` does not match `{}`", re.as_str(), p.name));
    }
    if let Some(re) = &s.cmdline
        && !re.is_match(&p.cmdline)
    {
        return Some(format!("cmdline `{}` does not match `{}`", re.as_str(), p.cmdline));
    }
    None
}

/// Reads a process; `None` when it is gone.
pub fn read_process(pid: i32) -> Option<Process> {
    let base = format!("/proc/{pid}");
    let name = std::fs::read_to_string(format!("{base}/comm")).ok()?.trim_end().to_owned();
    let mut raw = std::fs::read(format!("{base}/cmdline")).ok()?;
    raw.truncate(CMDLINE_BYTES);
    let cmdline = String::from_utf8_lossy(&raw).split('\0').filter(|a| !a.is_empty()).collect::<Vec<_>>().join(" ");
    let start = start_time(pid)?;
    Some(Process { pid, name, cmdline, start })
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the name, which may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Resident memory, bytes; `None` when the process is gone.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Matching processes, largest first, at most `max`; never this agent.
pub fn matching(s: &Selector, max: u32) -> Vec<(Process, u64)> {
    let me = std::process::id() as i32;
    let mut found: Vec<(Process, u64)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(read_process)
        .filter(|p| mismatch(s, p).is_none())
        .filter_map(|p| rss_bytes(p.pid).map(|r| (p, r)))
        .collect();
    found.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.pid.cmp(&b.0.pid)));
    found.truncate(max as usize);
    found
}

/// Whether `jcmd` is on the PATH.
fn jcmd_path() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("jcmd")).find(|p| p.is_file())
}

/// Sends the nudge; `Ok` with what happened.
async fn send(method: &Method, p: &Process) -> Result<String, String> {
    if read_process(p.pid).map(|now| now.start) != Some(p.start) {
        return Err("the process exited (or its id was reused) before the nudge".to_owned());
    }
    match method {
        Method::Signal(sig) => {
            kill(Pid::from_raw(p.pid), *sig).map_err(|e| format!("cannot send {}: {e}", sig.as_str()))?;
            Ok(format!("sent {}", sig.as_str()))
        }
        Method::Http { addr, path } => {
            let call = async {
                let mut s =
                    tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
                let request =
                    format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                s.write_all(request.as_bytes()).await.map_err(|e| format!("cannot send to {addr}: {e}"))?;
                let mut head = vec![0u8; 256];
                let n = s.read(&mut head).await.map_err(|e| format!("no answer from {addr}: {e}"))?;
                let line = String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or_default().to_owned();
                let code: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                if (200..300).contains(&code) {
                    Ok(format!("POST http://{addr}{path}: {line}"))
                } else {
                    Err(format!("POST http://{addr}{path} answered `{line}`"))
                }
            };
            tokio::time::timeout(CALL_TIMEOUT, call).await.map_err(|_| format!("POST http://{addr}{path} timed out"))?
        }
        Method::Jcmd => {
            let jcmd = jcmd_path().ok_or("jcmd is not on this agent's PATH")?;
            let run =
                tokio::process::Command::new(jcmd).arg(p.pid.to_string()).arg("GC.run").kill_on_drop(true).output();
            let out = tokio::time::timeout(CALL_TIMEOUT, run)
                .await
                .map_err(|_| "jcmd timed out".to_owned())?
                .map_err(|e| format!("cannot run jcmd: {e}"))?;
            let said = String::from_utf8_lossy(&out.stdout);
            let text = remedy_shared::text::prefix(said.trim(), 200, remedy_shared::text::Unit::Chars);
            if out.status.success() {
                Ok(format!("jcmd GC.run: {text}"))
            } else {
                Err(format!("jcmd failed ({}): {text}", out.status))
            }
        }
    }
}

/// Reads memory until it has changed and then held still for two reads,
/// or `settle` has passed. Returns the last reading and whether it settled.
async fn settle(pid: i32, before: u64, settle: Duration) -> (Option<u64>, bool) {
    let deadline = Instant::now() + settle;
    let mut last = rss_bytes(pid);
    let mut steady = 0;
    let mut changed = last != Some(before);
    while Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        let now = rss_bytes(pid);
        if now.is_none() {
            return (None, false);
        }
        changed |= now != Some(before);
        steady = if now == last { steady + 1 } else { 0 };
        last = now;
        if changed && steady >= 2 {
            return (last, true);
        }
    }
    (last, false)
}

/// One process's result.
#[derive(Debug, Clone)]
pub struct Nudged {
    /// The process.
    pub process: Process,
    /// Memory before.
    pub before: u64,
    /// Memory after, if it still runs.
    pub after: Option<u64>,
    /// Whether memory settled within the wait.
    pub settled: bool,
    /// What happened, or why it failed.
    pub result: Result<String, String>,
}

/// Nudges each process, then waits for their memory to settle.
pub async fn nudge(method: &Method, targets: Vec<(Process, u64)>, wait: Duration) -> Vec<Nudged> {
    let mut out = Vec::with_capacity(targets.len());
    for (process, before) in targets {
        let before = rss_bytes(process.pid).unwrap_or(before);
        let result = send(method, &process).await;
        out.push(Nudged { process, before, after: None, settled: false, result });
    }
    for n in &mut out {
        if n.result.is_ok() {
            (n.after, n.settled) = settle(n.process.pid, n.before, wait).await;
        } else {
            n.after = rss_bytes(n.process.pid);
        }
    }
    out
}

/// Evidence of one process.
pub fn evidence(n: &Nudged, dry_run: bool, e: &mut BTreeMap<String, String>) {
    let key = |k: &str| format!("{}.{k}", n.process.pid);
    e.insert(key("process"), n.process.name.clone());
    e.insert(key("rss_before_bytes"), n.before.to_string());
    if dry_run {
        return;
    }
    if let Some(after) = n.after {
        e.insert(key("rss_after_bytes"), after.to_string());
        e.insert(key("freed_bytes"), (n.before as i64 - after as i64).to_string());
    }
    e.insert(key("settled"), n.settled.to_string());
    e.insert(
        key("result"),
        match &n.result {
            Ok(m) => m.clone(),
            Err(m) => format!("failed: {m}"),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NudgeConfig {
        let yaml = "gc_nudge:\n  selectors:\n    - {name: api, namespace: prod, pod_selector: app=api, process_name: '^node$', cmdline: 'server\\.js', signal: usr1}\n";
        super::super::config::resolve("t", remedy_shared::config::parse_yaml("t", yaml).unwrap()).unwrap().gc_nudge
    }

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_selector_is_chosen_by_name_or_by_pod_selector() {
        let c = config();
        for by in ["api", "app=api"] {
            let p = nudge_params(&params(&[("selector", by), ("namespace", "prod")]), &c).unwrap();
            assert_eq!(choose(&c, &p).unwrap().name, "api");
            assert_eq!(p.max, 1);
        }
        let p = nudge_params(&params(&[("selector", "app=web")]), &c).unwrap();
        assert_eq!(
            choose(&c, &p).unwrap_err(),
            "selector: no configured selector is named or selects `app=web` (configured: api)"
        );
        let p = nudge_params(&params(&[("selector", "api"), ("namespace", "dev")]), &c).unwrap();
        assert_eq!(choose(&c, &p).unwrap_err(), "namespace: selector `api` stands for namespace `prod`, not `dev`");
    }

    #[test]
    fn bad_parameters_are_refused_naming_them() {
        let c = config();
        let cases = [
            (params(&[]), "selector: missing"),
            (params(&[("selector", "api"), ("pid", "1")]), "pid: `1` is not a process id above 1"),
            (params(&[("selector", "api"), ("max_pods", "5")]), "max_pods: `5` is not a number from 1 to 4"),
            (params(&[("selector", "api"), ("signal", "KILL")]), "unknown parameter `signal` (gc_nudge takes"),
        ];
        for (p, expected) in cases {
            let e = nudge_params(&p, &c).unwrap_err();
            assert!(e.starts_with(expected), "{p:?}: {e}");
        }
    }

    #[test]
    fn a_process_that_does_not_match_says_which_pattern_failed() {
        let c = config();
        let s = &c.selectors[0];
        let p = |name: &str, cmdline: &str| Process { pid: 7, name: name.into(), cmdline: cmdline.into(), start: 1 };
        assert_eq!(mismatch(s, &p("node", "node /app/server.js")), None);
        assert_eq!(mismatch(s, &p("python3", "python3 x")).unwrap(), "process_name `^node$` does not match `python3`");
        assert_eq!(
            mismatch(s, &p("node", "node other.js")).unwrap(),
            "cmdline `server\\.js` does not match `node other.js`"
        );
    }

    #[test]
    fn this_process_reads_as_itself() {
        let me = read_process(std::process::id() as i32).unwrap();
        assert!(me.start > 0 && !me.name.is_empty());
        assert!(rss_bytes(me.pid).unwrap() > 0);
    }
}
