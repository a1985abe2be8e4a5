//! The `local_actions:` section of the agent's configuration: where log
//! cleanup may delete, which processes a GC nudge may reach and how, and
//! the budget and cooldown of each.

use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use regex::Regex;
use remedy_shared::config::ConfigError;
use remedy_shared::config::opt_duration;
use serde::Deserialize;

/// As written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalActionsFile {
    #[serde(default)]
    log_cleanup: CleanupFile,
    #[serde(default)]
    gc_nudge: NudgeFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CleanupFile {
    enabled: Option<bool>,
    roots: Option<Vec<RootFile>>,
    max_files: Option<usize>,
    #[serde(default, with = "opt_duration")]
    max_duration: Option<Duration>,
    max_depth: Option<usize>,
    max_per_hour: Option<u32>,
    #[serde(default, with = "opt_duration")]
    cooldown: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RootFile {
    path: PathBuf,
    globs: Option<Vec<String>>,
    #[serde(default, with = "opt_duration")]
    older_than: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    emergency_older_than: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NudgeFile {
    enabled: Option<bool>,
    #[serde(default)]
    selectors: Vec<SelectorFile>,
    max_processes: Option<u32>,
    #[serde(default, with = "opt_duration")]
    settle: Option<Duration>,
    max_per_hour: Option<u32>,
    #[serde(default, with = "opt_duration")]
    cooldown: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorFile {
    name: String,
    namespace: Option<String>,
    pod_selector: Option<String>,
    process_name: Option<String>,
    cmdline: Option<String>,
    signal: Option<String>,
    http: Option<HttpFile>,
    #[serde(default)]
    jcmd: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    #[serde(default = "loopback")]
    host: IpAddr,
    port: u16,
    path: String,
}

fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// Both local actions, validated.
#[derive(Debug, Clone)]
pub struct LocalActionsConfig {
    /// Deleting old log files under allowed roots.
    pub log_cleanup: CleanupConfig,
    /// Asking runtimes to collect garbage.
    pub gc_nudge: NudgeConfig,
}

/// Log cleanup, validated.
#[derive(Debug, Clone)]
pub struct CleanupConfig {
    /// Off by default: it deletes files.
    pub enabled: bool,
    /// The only places it deletes in; the seed's `/tmp` (1 day) and
    /// `/var/log` (7 days) by default.
    pub roots: Vec<CleanupRoot>,
    /// Most files deleted in one run.
    pub max_files: usize,
    /// Longest a run walks and deletes.
    pub max_duration: Duration,
    /// Deepest directory level walked below a root.
    pub max_depth: usize,
    /// Runs per sliding hour.
    pub max_per_hour: u32,
    /// Least time between two runs.
    pub cooldown: Duration,
}

/// One place cleanup may delete in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupRoot {
    /// An absolute directory without symlinks in its path.
    pub path: PathBuf,
    /// File name globs; a file must match one.
    pub globs: Vec<String>,
    /// Files last modified longer ago than this go; a directive may ask
    /// for older, never for younger.
    pub older_than: Duration,
    /// The age used in emergency mode (a disk above its threshold).
    pub emergency_older_than: Duration,
}

/// GC nudges, validated.
#[derive(Debug, Clone)]
pub struct NudgeConfig {
    /// Off by default.
    pub enabled: bool,
    /// The processes it may reach, and how.
    pub selectors: Vec<Selector>,
    /// Most processes nudged by one directive.
    pub max_processes: u32,
    /// Longest wait for memory to settle after a nudge.
    pub settle: Duration,
    /// Nudges (directives) per sliding hour.
    pub max_per_hour: u32,
    /// Least time between two nudges of the same selector.
    pub cooldown: Duration,
}

/// Which processes a nudge may reach, and how it reaches them.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Its name, which a directive gives as `selector`.
    pub name: String,
    /// The namespace of the pods it stands for, when a directive names one.
    pub namespace: Option<String>,
    /// The pods' label selector, which a directive may give instead of the
    /// name (a runbook's `gc_nudge.selector`).
    pub pod_selector: Option<String>,
    /// The process name (`/proc/PID/comm`) must match.
    pub process_name: Option<Regex>,
    /// The command line, arguments joined by spaces, must match.
    pub cmdline: Option<Regex>,
    /// How the process is asked.
    pub method: Method,
}

/// How a runtime is asked to collect garbage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// A signal the runtime handles (e.g. SIGUSR1 to a Node.js started with a handler).
    Signal(Signal),
    /// `POST http://ADDR/PATH`, loopback only.
    Http {
        /// Loopback address and port.
        addr: SocketAddr,
        /// Path, starting with `/`.
        path: String,
    },
    /// `jcmd PID GC.run`, without a shell.
    Jcmd,
}

impl Method {
    /// As evidence shows it.
    pub fn describe(&self) -> String {
        match self {
            Method::Signal(s) => format!("signal {}", s.as_str()),
            Method::Http { addr, path } => format!("POST http://{addr}{path}"),
            Method::Jcmd => "jcmd PID GC.run".to_owned(),
        }
    }
}

const DAY: Duration = Duration::from_secs(86_400);

fn default_roots() -> Vec<CleanupRoot> {
    vec![
        CleanupRoot {
            path: PathBuf::from("/tmp"),
            globs: vec!["*.log".into()],
            older_than: DAY,
            emergency_older_than: Duration::from_secs(3600),
        },
        CleanupRoot {
            path: PathBuf::from("/var/log"),
            globs: vec!["*.log".into(), "*.log.*".into(), "*.gz".into()],
            older_than: 7 * DAY,
            emergency_older_than: DAY,
        },
    ]
}

/// Whether `path` is absolute, not `/`, and has no `.` or `..` component.
pub fn plain_absolute(path: &Path) -> bool {
    path.is_absolute()
        && path.components().count() > 1
        && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path.to_string_lossy().split('/').any(|s| s == "." || s == "..")
}

/// Whether `glob` is a file name pattern this agent reads.
pub fn valid_glob(glob: &str) -> bool {
    !glob.is_empty() && !glob.contains('/') && glob != "*" && glob.chars().any(|c| c != '*' && c != '?')
}

/// Validates the section; the error names the field at fault.
pub fn resolve(source: &str, file: LocalActionsFile) -> Result<LocalActionsConfig, ConfigError> {
    Ok(LocalActionsConfig { log_cleanup: cleanup(source, file.log_cleanup)?, gc_nudge: nudge(source, file.gc_nudge)? })
}

fn cleanup(source: &str, file: CleanupFile) -> Result<CleanupConfig, ConfigError> {
    let err =
        |field: &str, message: &str| ConfigError::new(source, format!("local_actions.log_cleanup.{field}"), message);
    let roots = match file.roots {
        None => default_roots(),
        Some(list) => {
            let mut roots = Vec::with_capacity(list.len());
            for (i, r) in list.into_iter().enumerate() {
                let field = |f: &str| format!("roots[{i}].{f}");
                if !plain_absolute(&r.path) {
                    return Err(err(&field("path"), "must be an absolute directory other than /, without `.` or `..`"));
                }
                let globs = r.globs.unwrap_or_else(|| vec!["*.log".into()]);
                if globs.is_empty() {
                    return Err(err(&field("globs"), "must list at least one file name glob"));
                }
                if let Some(g) = globs.iter().find(|g| !valid_glob(g)) {
                    return Err(err(
                        &field("globs"),
                        &format!("`{g}` is not a file name glob (no `/`, and not one that matches every name)"),
                    ));
                }
                let older_than = r.older_than.unwrap_or(DAY);
                if older_than < Duration::from_secs(60) {
                    return Err(err(&field("older_than"), "must be at least 1m"));
                }
                let emergency_older_than = r.emergency_older_than.unwrap_or(older_than);
                if emergency_older_than < Duration::from_secs(60) || emergency_older_than > older_than {
                    return Err(err(&field("emergency_older_than"), "must be at least 1m and at most older_than"));
                }
                roots.push(CleanupRoot { path: r.path, globs, older_than, emergency_older_than });
            }
            roots
        }
    };
    for (i, a) in roots.iter().enumerate() {
        if roots[..i].iter().any(|b| a.path.starts_with(&b.path) || b.path.starts_with(&a.path)) {
            return Err(err(&format!("roots[{i}].path"), "must not be inside another root, nor contain one"));
        }
    }
    let max_files = file.max_files.unwrap_or(1_000);
    if !(1..=100_000).contains(&max_files) {
        return Err(err("max_files", "must be between 1 and 100000"));
    }
    let max_duration = file.max_duration.unwrap_or(Duration::from_secs(10));
    if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&max_duration) {
        return Err(err("max_duration", "must be between 100ms and 5m"));
    }
    let max_depth = file.max_depth.unwrap_or(16);
    if !(1..=64).contains(&max_depth) {
        return Err(err("max_depth", "must be between 1 and 64"));
    }
    let max_per_hour = file.max_per_hour.unwrap_or(6);
    if !(1..=3600).contains(&max_per_hour) {
        return Err(err("max_per_hour", "must be between 1 and 3600"));
    }
    let cooldown = file.cooldown.unwrap_or(Duration::from_secs(300));
    if cooldown > Duration::from_secs(86_400) {
        return Err(err("cooldown", "must be at most 1d"));
    }
    Ok(CleanupConfig {
        enabled: file.enabled.unwrap_or(false),
        roots,
        max_files,
        max_duration,
        max_depth,
        max_per_hour,
        cooldown,
    })
}

fn nudge(source: &str, file: NudgeFile) -> Result<NudgeConfig, ConfigError> {
    let err = |field: &str, message: &str| ConfigError::new(source, format!("local_actions.gc_nudge.{field}"), message);
    let mut selectors: Vec<Selector> = Vec::with_capacity(file.selectors.len());
    for (i, s) in file.selectors.into_iter().enumerate() {
        let field = |f: &str| format!("selectors[{i}].{f}");
        let name = s.name.trim().to_owned();
        let valid_name = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !valid_name {
            return Err(err(&field("name"), "must be 1 to 63 letters, digits, `-`, `_` or `.`"));
        }
        if selectors.iter().any(|o| o.name == name) {
            return Err(err(&field("name"), &format!("`{name}` is used by another selector")));
        }
        let regex = |f: &str, text: Option<String>| -> Result<Option<Regex>, ConfigError> {
            text.map(|t| Regex::new(&t).map_err(|e| err(&field(f), &format!("not a regular expression: {e}"))))
                .transpose()
        };
        let process_name = regex("process_name", s.process_name)?;
        let cmdline = regex("cmdline", s.cmdline)?;
        if process_name.is_none() && cmdline.is_none() {
            return Err(err(
                &field("process_name"),
                "give process_name or cmdline (or both): a selector never means every process",
            ));
        }
        let pod_selector = s.pod_selector.map(|p| p.trim().to_owned());
        if pod_selector.as_deref().is_some_and(str::is_empty) {
            return Err(err(&field("pod_selector"), "must not be empty"));
        }
        let method = match (s.signal, s.http, s.jcmd) {
            (Some(sig), None, false) => {
                let upper = sig.trim().to_ascii_uppercase();
                let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
                let signal = Signal::from_str(&full)
                    .map_err(|_| err(&field("signal"), &format!("`{sig}` is not a signal name")))?;
                if matches!(
                    signal,
                    Signal::SIGKILL
                        | Signal::SIGSTOP
                        | Signal::SIGTERM
                        | Signal::SIGINT
                        | Signal::SIGQUIT
                        | Signal::SIGABRT
                        | Signal::SIGSEGV
                        | Signal::SIGBUS
                ) {
                    return Err(err(
                        &field("signal"),
                        &format!("{} stops or kills a process; a nudge must not", signal.as_str()),
                    ));
                }
                Method::Signal(signal)
            }
            (None, Some(h), false) => {
                if !h.host.is_loopback() {
                    return Err(err(
                        &field("http.host"),
                        &format!("{} is not a loopback address; only loopback is reached", h.host),
                    ));
                }
                if h.port == 0 {
                    return Err(err(&field("http.port"), "must be a port above 0"));
                }
                if !h.path.starts_with('/') || h.path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
                    return Err(err(&field("http.path"), "must start with `/` and have no spaces"));
                }
                Method::Http { addr: SocketAddr::new(h.host, h.port), path: h.path }
            }
            (None, None, true) => Method::Jcmd,
            _ => return Err(err(&field("signal"), "give exactly one of signal, http, jcmd: true")),
        };
        selectors.push(Selector { name, namespace: s.namespace, pod_selector, process_name, cmdline, method });
    }
    let max_processes = file.max_processes.unwrap_or(4);
    if !(1..=64).contains(&max_processes) {
        return Err(err("max_processes", "must be between 1 and 64"));
    }
    let settle = file.settle.unwrap_or(Duration::from_secs(2));
    if settle > Duration::from_secs(30) {
        return Err(err("settle", "must be at most 30s"));
    }
    let max_per_hour = file.max_per_hour.unwrap_or(12);
    if !(1..=3600).contains(&max_per_hour) {
        return Err(err("max_per_hour", "must be between 1 and 3600"));
    }
    let cooldown = file.cooldown.unwrap_or(Duration::from_secs(60));
    if cooldown > Duration::from_secs(86_400) {
        return Err(err("cooldown", "must be at most 1d"));
    }
    Ok(NudgeConfig { enabled: file.enabled.unwrap_or(false), selectors, max_processes, settle, max_per_hour, cooldown })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<LocalActionsConfig, ConfigError> {
        resolve("agent.yaml", remedy_shared::config::parse_yaml("agent.yaml", yaml)?)
    }

    fn field(yaml: &str) -> String {
        load(yaml).unwrap_err().field
    }

    #[test]
    fn defaults_are_the_seeds_roots_and_both_actions_are_off() {
        let c = load("{}").unwrap();
        assert!(!c.log_cleanup.enabled && !c.gc_nudge.enabled);
        let roots = &c.log_cleanup.roots;
        assert_eq!((roots[0].path.to_str(), roots[0].older_than), (Some("/tmp"), DAY));
        assert_eq!((roots[1].path.to_str(), roots[1].older_than), (Some("/var/log"), 7 * DAY));
        assert_eq!(roots[1].globs, ["*.log", "*.log.*", "*.gz"]);
        assert_eq!((c.log_cleanup.max_per_hour, c.log_cleanup.cooldown), (6, Duration::from_secs(300)));
    }

    #[test]
    fn a_selector_with_a_signal() {
        let c = load(
            "gc_nudge:\n  enabled: true\n  selectors:\n    - {name: api, process_name: '^node$', signal: usr1, pod_selector: app=saas-idp-api}\n    - {name: jvm, cmdline: 'java .*', jcmd: true}\n    - {name: admin, cmdline: x, http: {port: 9000, path: /gc}}\n",
        )
        .unwrap();
        let s = &c.gc_nudge.selectors;
        assert_eq!(s[0].method, Method::Signal(Signal::SIGUSR1));
        assert_eq!(s[1].method, Method::Jcmd);
        assert_eq!(s[2].method.describe(), "POST http://127.0.0.1:9000/gc");
    }

    #[test]
    fn bad_values_name_their_field() {
        let lc = "local_actions.log_cleanup.";
        let gc = "local_actions.gc_nudge.";
        let cases = [
            ("log_cleanup: {roots: [{path: tmp}]}", format!("{lc}roots[0].path")),
            ("log_cleanup: {roots: [{path: /}]}", format!("{lc}roots[0].path")),
            ("log_cleanup: {roots: [{path: /var/../etc}]}", format!("{lc}roots[0].path")),
            ("log_cleanup: {roots: [{path: /tmp, globs: ['*']}]}", format!("{lc}roots[0].globs")),
            ("log_cleanup: {roots: [{path: /tmp, globs: ['a/*.log']}]}", format!("{lc}roots[0].globs")),
            ("log_cleanup: {roots: [{path: /tmp, older_than: 1s}]}", format!("{lc}roots[0].older_than")),
            (
                "log_cleanup: {roots: [{path: /tmp, older_than: 1h, emergency_older_than: 2h}]}",
                format!("{lc}roots[0].emergency_older_than"),
            ),
            ("log_cleanup: {roots: [{path: /var}, {path: /var/log}]}", format!("{lc}roots[1].path")),
            ("log_cleanup: {max_files: 0}", format!("{lc}max_files")),
            ("log_cleanup: {max_per_hour: 0}", format!("{lc}max_per_hour")),
            ("log_cleanup: {max_duration: 1ms}", format!("{lc}max_duration")),
            ("gc_nudge: {selectors: [{name: a, signal: usr1}]}", format!("{gc}selectors[0].process_name")),
            (
                "gc_nudge: {selectors: [{name: a, process_name: '(', signal: usr1}]}",
                format!("{gc}selectors[0].process_name"),
            ),
            ("gc_nudge: {selectors: [{name: a, process_name: x, signal: kill}]}", format!("{gc}selectors[0].signal")),
            ("gc_nudge: {selectors: [{name: a, process_name: x, signal: nope}]}", format!("{gc}selectors[0].signal")),
            ("gc_nudge: {selectors: [{name: a, process_name: x}]}", format!("{gc}selectors[0].signal")),
            (
                "gc_nudge: {selectors: [{name: a, process_name: x, http: {host: 10.0.0.1, port: 1, path: /gc}}]}",
                format!("{gc}selectors[0].http.host"),
            ),
            (
                "gc_nudge: {selectors: [{name: a, process_name: x, signal: usr1}, {name: a, process_name: y, signal: hup}]}",
                format!("{gc}selectors[1].name"),
            ),
            ("gc_nudge: {max_per_hour: 0}", format!("{gc}max_per_hour")),
        ];
        for (yaml, expected) in cases {
            assert_eq!(field(yaml), expected, "{yaml}");
        }
    }
}
