//! The `pods:` section, validated: whether this node's pods are watched,
//! the rules that judge them, and the local restart of Failed pods.
//! `crate::config` hands this module its part of the file.

use std::path::PathBuf;
use std::time::Duration;

use remedy_shared::Severity;
use remedy_shared::config::{ConfigError, opt_duration};
use serde::Deserialize;

/// Whether the agent watches its node's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodsMode {
    /// When a Kubernetes client can be built.
    Auto,
    /// Always; no client is a configuration error.
    On,
    /// Never.
    Off,
}

/// `pod_crash_loop`: a container waiting in CrashLoopBackOff, or a restart
/// storm (`restarts` or more within `window`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrashLoopRule {
    /// Restarts within `window` that make a storm.
    pub restarts: u32,
    /// The storm's sliding window.
    pub window: Duration,
    /// How long after the last CrashLoopBackOff or storm restart the finding
    /// clears (a crash loop runs between back-offs; this keeps it from
    /// flapping with each short run).
    pub clear_after: Duration,
    /// Severity of its findings.
    pub severity: Severity,
}

/// `pod_oom_killed`: a container whose last termination was OOMKilled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OomKilledRule {
    /// How long after the termination the finding clears, unless another
    /// follows; an older termination is not reported at all.
    pub clear_after: Duration,
    /// Severity of its findings.
    pub severity: Severity,
}

/// `pod_failed`: a pod in phase Failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailedRule {
    /// Severity of its findings.
    pub severity: Severity,
}

/// The pod detectors; `None` is disabled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodRules {
    /// Crash loops and restart storms.
    pub crash_loop: Option<CrashLoopRule>,
    /// OOM kills.
    pub oom_killed: Option<OomKilledRule>,
    /// Failed pods.
    pub failed: Option<FailedRule>,
    /// While a finding holds it is sent again this often; it expires after
    /// three missed refreshes.
    pub refresh: Duration,
}

/// Deleting Failed pods of this node so their controller replaces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartFailed {
    /// Off by default.
    pub enabled: bool,
    /// Deletions within any sliding hour, at most: this rule's and the
    /// `restart_pod` directive's together, even while this rule is off.
    pub max_per_hour: u32,
}

/// Watching the pods bound to this node.
#[derive(Debug, Clone, PartialEq)]
pub struct PodsConfig {
    /// On, off, or when a client can be built.
    pub mode: PodsMode,
    /// Kubeconfig named by `--kubeconfig` or the file's `kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// Detectors.
    pub rules: PodRules,
    /// Local remediation.
    pub restart_failed: RestartFailed,
}

/// `pods:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodsFile {
    /// `auto`, `true` or `false`; read as text or boolean, checked in `resolve`.
    enabled: Option<Toggle>,
    #[serde(default, with = "opt_duration")]
    refresh: Option<Duration>,
    #[serde(default)]
    crash_loop: CrashLoopFile,
    #[serde(default)]
    oom_killed: OomKilledFile,
    #[serde(default)]
    failed: FailedFile,
    #[serde(default)]
    restart_failed: RestartFailedFile,
}

/// A YAML boolean or a word.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Toggle {
    Bool(bool),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CrashLoopFile {
    enabled: Option<bool>,
    restarts: Option<u32>,
    #[serde(default, with = "opt_duration")]
    window: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    clear_after: Option<Duration>,
    severity: Option<Severity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OomKilledFile {
    enabled: Option<bool>,
    #[serde(default, with = "opt_duration")]
    clear_after: Option<Duration>,
    severity: Option<Severity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailedFile {
    enabled: Option<bool>,
    severity: Option<Severity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartFailedFile {
    enabled: Option<bool>,
    max_per_hour: Option<u32>,
}

/// Validates the `pods:` section; `kubeconfig` is the one the flag or the
/// file names.
pub fn resolve(source: &str, kubeconfig: Option<PathBuf>, file: PodsFile) -> Result<PodsConfig, ConfigError> {
    let err = |field: &str, message: &str| ConfigError::new(source, format!("pods.{field}"), message);
    let mode = match file.enabled {
        None => PodsMode::Auto,
        Some(Toggle::Bool(true)) => PodsMode::On,
        Some(Toggle::Bool(false)) => PodsMode::Off,
        Some(Toggle::Text(t)) => match t.trim() {
            "auto" => PodsMode::Auto,
            "true" => PodsMode::On,
            "false" => PodsMode::Off,
            other => return Err(err("enabled", &format!("`{other}` is not one of auto, true, false"))),
        },
    };
    if kubeconfig.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        return Err(ConfigError::new(source, "kubeconfig", "must name a file"));
    }
    let refresh = file.refresh.unwrap_or(Duration::from_secs(60));
    if refresh < Duration::from_secs(1) {
        return Err(err("refresh", "must be at least 1s"));
    }
    let c = file.crash_loop;
    let crash_loop = if c.enabled == Some(false) {
        None
    } else {
        let rule = CrashLoopRule {
            restarts: c.restarts.unwrap_or(5),
            window: c.window.unwrap_or(Duration::from_secs(600)),
            clear_after: c.clear_after.unwrap_or(Duration::from_secs(300)),
            severity: c.severity.unwrap_or(Severity::Warning),
        };
        if rule.restarts == 0 {
            return Err(err("crash_loop.restarts", "must be at least 1"));
        }
        if rule.window < Duration::from_secs(1) {
            return Err(err("crash_loop.window", "must be at least 1s"));
        }
        Some(rule)
    };
    let o = file.oom_killed;
    let oom_killed = (o.enabled != Some(false)).then(|| OomKilledRule {
        clear_after: o.clear_after.unwrap_or(Duration::from_secs(600)),
        severity: o.severity.unwrap_or(Severity::Warning),
    });
    if oom_killed.is_some_and(|r| r.clear_after < Duration::from_secs(1)) {
        return Err(err("oom_killed.clear_after", "must be at least 1s"));
    }
    let f = file.failed;
    let failed = (f.enabled != Some(false)).then(|| FailedRule { severity: f.severity.unwrap_or(Severity::Warning) });
    let r = file.restart_failed;
    let restart_failed =
        RestartFailed { enabled: r.enabled.unwrap_or(false), max_per_hour: r.max_per_hour.unwrap_or(3) };
    if restart_failed.enabled && restart_failed.max_per_hour == 0 {
        return Err(err("restart_failed.max_per_hour", "must be at least 1 (or set restart_failed.enabled: false)"));
    }
    if restart_failed.enabled && mode == PodsMode::Off {
        return Err(err("restart_failed.enabled", "needs pod watching (pods.enabled is false)"));
    }
    Ok(PodsConfig { mode, kubeconfig, rules: PodRules { crash_loop, oom_killed, failed, refresh }, restart_failed })
}
