//! The `pods:` section, validated: whether this node's pods are watched,
//! the rules that judge them, and the local restart of Failed pods.
//! `crate::config` reads the file into these.

use std::path::PathBuf;
use std::time::Duration;

use remedy_shared::Severity;

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
