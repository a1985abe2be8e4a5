//! The agent's configuration: a YAML file, overridden by flags and
//! environment, validated before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use remedy_shared::config::{self, ConfigError};
use serde::Deserialize;

use crate::detectors::Detectors;
use crate::logs::LogsConfig;
use crate::nft::BlockingConfig;
use crate::pods::config::PodsConfig;
use remedy_shared::config::opt_duration;

/// Command line of `remedy-agent`.
#[derive(Debug, Parser)]
#[command(name = "remedy-agent", version, about = "Remedy's node agent: watches the node and reports findings")]
pub struct Cli {
    /// YAML configuration file.
    #[arg(long, env = "REMEDY_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Coordinator gRPC URL.
    #[arg(long, env = "REMEDY_COORDINATOR")]
    pub coordinator: Option<String>,
    /// The node this agent watches (the DaemonSet sets NODE_NAME).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Agent identity; by default generated once and kept in the state directory.
    #[arg(long, env = "REMEDY_AGENT_ID")]
    pub agent_id: Option<String>,
    /// Directory for the spool and the agent's identity.
    #[arg(long, env = "REMEDY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Diagnostics endpoint address.
    #[arg(long, env = "REMEDY_DIAGNOSTICS_LISTEN")]
    pub diagnostics_listen: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "REMEDY_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Kubeconfig file for watching this node's pods; without it, the
    /// in-cluster configuration, KUBECONFIG or ~/.kube/config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Speak plaintext to an `http://` coordinator. For development only;
    /// a warning says so every minute.
    #[arg(long, env = "REMEDY_INSECURE")]
    pub insecure: bool,
    /// This agent's client certificate (PEM); overrides `tls.cert`.
    #[arg(long, env = "REMEDY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM); overrides `tls.key`.
    #[arg(long, env = "REMEDY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CAs that sign the coordinator's certificate (PEM); overrides `tls.ca`.
    #[arg(long, env = "REMEDY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    agent_id: Option<String>,
    node_name: Option<String>,
    coordinator: Option<String>,
    state_dir: Option<PathBuf>,
    diagnostics_listen: Option<String>,
    #[serde(default, with = "opt_duration")]
    sample_interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    heartbeat_interval: Option<Duration>,
    top_processes: Option<usize>,
    spool_capacity: Option<usize>,
    #[serde(default)]
    reconnect: ReconnectFile,
    #[serde(default)]
    keepalive: KeepaliveFile,
    #[serde(default)]
    detectors: crate::detectors::DetectorsFile,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pods: crate::pods::config::PodsFile,
    #[serde(default)]
    logs: crate::logs::config::LogsFile,
    #[serde(default)]
    processes: crate::procsig::config::ProcessesFile,
    #[serde(default)]
    blocking: crate::nft::config::BlockingFile,
    #[serde(default)]
    local_actions: crate::local::config::LocalActionsFile,
    #[serde(default)]
    tls: TlsFile,
    #[serde(default)]
    diagnostics: DiagnosticsFile,
}

/// `tls:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    server_name: Option<String>,
    #[serde(default, with = "opt_duration")]
    reload_every: Option<Duration>,
}

/// `diagnostics:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiagnosticsFile {
    tokens_file: Option<PathBuf>,
}

/// How the agent reaches the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum CoordinatorSecurity {
    /// Mutual TLS.
    Tls {
        /// Client certificate, key and the CAs of the coordinator.
        files: remedy_proto::tls::TlsFiles,
        /// The name the coordinator's certificate must carry (default: the
        /// URL's host).
        server_name: Option<String>,
        /// How often the files are checked for rotation.
        reload_every: Duration,
    },
    /// Plaintext (`--insecure`).
    Insecure,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconnectFile {
    #[serde(default, with = "opt_duration")]
    initial: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    max: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepaliveFile {
    #[serde(default, with = "opt_duration")]
    interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    timeout: Option<Duration>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Explicit identity, if configured.
    pub agent_id: Option<String>,
    /// Node name.
    pub node_name: String,
    /// Coordinator URL.
    pub coordinator: String,
    /// TLS to the coordinator, or (asked for explicitly) plaintext.
    pub security: CoordinatorSecurity,
    /// Bearer tokens of the people who may submit findings through the
    /// diagnostics endpoint; without it, submitting needs `--insecure`.
    pub diagnostics_tokens: Option<PathBuf>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Diagnostics address.
    pub diagnostics_listen: SocketAddr,
    /// Resource sampling interval.
    pub sample_interval: Duration,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Processes listed per snapshot (by CPU and by memory).
    pub top_processes: usize,
    /// Most unacknowledged findings kept.
    pub spool_capacity: usize,
    /// First reconnection delay.
    pub reconnect_initial: Duration,
    /// Longest reconnection delay.
    pub reconnect_max: Duration,
    /// Silence from the coordinator after which the agent pings it.
    pub keepalive_interval: Duration,
    /// How long an unanswered ping may wait before the connection counts
    /// as dead and the agent reconnects.
    pub keepalive_timeout: Duration,
    /// Detectors.
    pub detectors: Detectors,
    /// Node labels announced in the hello.
    pub labels: std::collections::BTreeMap<String, String>,
    /// This node's pods.
    pub pods: PodsConfig,
    /// Log tailing.
    pub logs: LogsConfig,
    /// Process signals: hot processes, zombies, kernel OOM kills.
    pub processes: crate::procsig::ProcessesConfig,
    /// IP blocking with nftables.
    pub blocking: BlockingConfig,
    /// Log cleanup and GC nudges.
    pub local_actions: crate::local::config::LocalActionsConfig,
}

impl Config {
    /// Reads the file named on the command line (if any) and applies flags.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let (source, file) = match &cli.config {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::new(&name, "", format!("cannot read the file: {e}")))?;
                (name.clone(), config::parse_yaml::<FileConfig>(&name, &text)?)
            }
            None => ("defaults".to_owned(), FileConfig::default()),
        };
        resolve(cli, &source, file)
    }
}

fn resolve(cli: &Cli, source: &str, file: FileConfig) -> Result<Config, ConfigError> {
    let err = |field: &str, message: String| ConfigError::new(source, field, message);
    let node_name = cli.node_name.clone().or(file.node_name).or_else(hostname).unwrap_or_default();
    if node_name.trim().is_empty() {
        return Err(err("node_name", "must be set (flag --node-name, NODE_NAME or the file)".into()));
    }
    let bounded = |field: &str, value: &str| {
        remedy_shared::limits::check_name(field, value, remedy_shared::limits::MAX_NAME_BYTES)
            .map_err(|e| err(field, e.to_string()))
    };
    bounded("node_name", &node_name)?;
    if let Some(id) = cli.agent_id.as_ref().or(file.agent_id.as_ref()) {
        bounded("agent_id", id)?;
    }
    let coordinator = cli.coordinator.clone().or(file.coordinator).unwrap_or_else(|| "https://127.0.0.1:7070".into());
    if !(coordinator.starts_with("http://") || coordinator.starts_with("https://")) {
        return Err(err("coordinator", format!("`{coordinator}` is not a URL like https://127.0.0.1:7070")));
    }

    let listen_text =
        cli.diagnostics_listen.clone().or(file.diagnostics_listen).unwrap_or_else(|| "127.0.0.1:7072".into());
    let diagnostics_listen = listen_text
        .parse()
        .map_err(|_| err("diagnostics_listen", format!("`{listen_text}` is not an address like 127.0.0.1:7072")))?;
    let sample_interval = file.sample_interval.unwrap_or(Duration::from_secs(10));
    if sample_interval < Duration::from_millis(100) {
        return Err(err("sample_interval", "must be at least 100ms".into()));
    }
    let heartbeat_interval = file.heartbeat_interval.unwrap_or(Duration::from_secs(10));
    if heartbeat_interval < Duration::from_millis(100) {
        return Err(err("heartbeat_interval", "must be at least 100ms".into()));
    }
    let spool_capacity = file.spool_capacity.unwrap_or(100_000);
    if spool_capacity == 0 {
        return Err(err("spool_capacity", "must be greater than zero".into()));
    }
    let reconnect_initial = file.reconnect.initial.unwrap_or(Duration::from_millis(500));
    let reconnect_max = file.reconnect.max.unwrap_or(Duration::from_secs(30));
    if reconnect_initial.is_zero() || reconnect_max < reconnect_initial {
        return Err(err("reconnect.max", "must be at least reconnect.initial, which must be above zero".into()));
    }
    // A path that drops every packet keeps the socket open and silent; only
    // an unanswered ping tells the agent to give up on it and reconnect.
    let keepalive_interval = file.keepalive.interval.unwrap_or(Duration::from_secs(20));
    if keepalive_interval < Duration::from_millis(100) {
        return Err(err("keepalive.interval", "must be at least 100ms".into()));
    }
    let keepalive_timeout = file.keepalive.timeout.unwrap_or(Duration::from_secs(10));
    if keepalive_timeout < Duration::from_millis(100) {
        return Err(err("keepalive.timeout", "must be at least 100ms".into()));
    }
    let refresh = sample_interval.max(Duration::from_secs(60));
    let detectors = crate::detectors::resolve(source, file.detectors, refresh)?;
    let pods = crate::pods::config::resolve(source, cli.kubeconfig.clone().or(file.kubeconfig), file.pods)?;
    let logs = crate::logs::config::resolve(source, file.logs)?;
    let blocking = crate::nft::config::resolve(source, file.blocking)?;
    let local_actions = crate::local::config::resolve(source, file.local_actions)?;
    let processes = crate::procsig::config::resolve(source, file.processes, sample_interval)?;
    // Last, so that a mistake in the file is named before a missing
    // certificate is.
    let security = security(cli, source, &coordinator, file.tls)?;
    if let Some(path) = &file.diagnostics.tokens_file {
        remedy_proto::tokens::load(path).map_err(|e| err("diagnostics.tokens_file", e))?;
    }
    // The coordinator refuses a hello past these limits, so an agent that
    // would announce them must not start.
    remedy_shared::limits::check_map("labels", &file.labels).map_err(|e| err("labels", e.to_string()))?;
    Ok(Config {
        agent_id: cli.agent_id.clone().or(file.agent_id).filter(|id| !id.trim().is_empty()),
        node_name,
        coordinator,
        security,
        diagnostics_tokens: file.diagnostics.tokens_file,
        state_dir: cli.state_dir.clone().or(file.state_dir).unwrap_or_else(|| PathBuf::from(".remedy/agent")),
        diagnostics_listen,
        sample_interval,
        heartbeat_interval,
        top_processes: file.top_processes.unwrap_or(5),
        spool_capacity,
        reconnect_initial,
        reconnect_max,
        keepalive_interval,
        keepalive_timeout,
        detectors,
        labels: file.labels,
        pods,
        processes,
        logs,
        blocking,
        local_actions,
    })
}

fn security(cli: &Cli, source: &str, coordinator: &str, file: TlsFile) -> Result<CoordinatorSecurity, ConfigError> {
    let err = |field: &str, message: &str| ConfigError::new(source, field, message);
    let cert = cli.tls_cert.clone().or(file.cert);
    let key = cli.tls_key.clone().or(file.key);
    let ca = cli.tls_ca.clone().or(file.ca);
    if coordinator.starts_with("http://") {
        if !cli.insecure {
            return Err(err(
                "coordinator",
                "is plaintext (http://): use https:// with tls.cert, tls.key and tls.ca, or pass --insecure",
            ));
        }
        if cert.is_some() || key.is_some() || ca.is_some() {
            return Err(err("tls", "TLS files are given but the coordinator URL is http://; use https://"));
        }
        return Ok(CoordinatorSecurity::Insecure);
    }
    if cli.insecure {
        return Err(err("coordinator", "--insecure speaks plaintext; the URL must then be http://"));
    }
    let required = |v: Option<PathBuf>, field: &str| {
        v.filter(|p| !p.as_os_str().is_empty()).ok_or_else(|| {
            err(field, "is required: the agent authenticates to the coordinator with a client certificate")
        })
    };
    let files = remedy_proto::tls::TlsFiles {
        cert: Some(required(cert, "tls.cert")?),
        key: Some(required(key, "tls.key")?),
        ca: required(ca, "tls.ca")?,
    };
    let reload_every = file.reload_every.unwrap_or(Duration::from_secs(30));
    if reload_every < Duration::from_millis(100) {
        return Err(err("tls.reload_every", "must be at least 100ms"));
    }
    Ok(CoordinatorSecurity::Tls { files, server_name: file.server_name, reload_every })
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use remedy_shared::Severity;

    use crate::logs::StartAt;
    use crate::pods::config::{PodsMode, RestartFailed};

    /// Parses a command line as the agent does, but never reads the process
    /// environment: a machine where `REMEDY_TLS_CERT` or `NODE_NAME` is set
    /// must not change what these tests see.
    fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> Cli {
        use clap::{CommandFactory, FromArgMatches};
        let command = Cli::command().mut_args(|a| a.env(clap::builder::Resettable::Reset));
        Cli::from_arg_matches(&command.get_matches_from(args)).expect("a command line the agent accepts")
    }

    fn cli() -> Cli {
        parse([
            "remedy-agent",
            "--node-name",
            "n1",
            "--tls-cert",
            "/c.crt",
            "--tls-key",
            "/c.key",
            "--tls-ca",
            "/ca.crt",
        ])
    }

    #[test]
    fn the_coordinator_is_reached_over_mutual_tls_unless_plaintext_is_asked_for() {
        let c = load("{}").unwrap();
        let CoordinatorSecurity::Tls { files, server_name, .. } = c.security else { panic!("TLS by default") };
        assert_eq!((files.ca.as_path(), server_name), (std::path::Path::new("/ca.crt"), None));
        let bare = parse(["remedy-agent", "--node-name", "n1"]);
        assert_eq!(resolve(&bare, "defaults", FileConfig::default()).unwrap_err().field, "tls.cert");
        let plain = parse(["remedy-agent", "--node-name", "n1", "--coordinator", "http://c:7070"]);
        let err = resolve(&plain, "defaults", FileConfig::default()).unwrap_err();
        assert!(err.field == "coordinator" && err.message.contains("--insecure"), "{err}");
        let insecure = parse(["remedy-agent", "--node-name", "n1", "--insecure", "--coordinator", "http://c:7070"]);
        assert_eq!(
            resolve(&insecure, "defaults", FileConfig::default()).unwrap().security,
            CoordinatorSecurity::Insecure
        );
        let mixed = parse(["remedy-agent", "--node-name", "n1", "--insecure"]);
        assert_eq!(resolve(&mixed, "defaults", FileConfig::default()).unwrap_err().field, "coordinator");
    }

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        resolve(&cli(), "agent.yaml", config::parse_yaml("agent.yaml", yaml)?)
    }

    #[test]
    fn defaults_follow_the_documented_ports_and_thresholds() {
        let c = load("{}").unwrap();
        assert_eq!(c.diagnostics_listen.to_string(), "127.0.0.1:7072");
        assert_eq!(c.coordinator, "https://127.0.0.1:7070");
        assert_eq!(c.detectors.disk_usage_high.unwrap().rule.threshold, 85.0);
    }

    #[test]
    fn a_detector_can_be_tuned_or_disabled() {
        let c = load("detectors:\n  node_cpu_high: {threshold: 75, for: 30s, severity: critical}\n  node_load_high: {enabled: false}\n")
            .unwrap();
        let cpu = c.detectors.node_cpu_high.unwrap();
        assert_eq!((cpu.rule.threshold, cpu.rule.clear_below), (75.0, 75.0));
        assert_eq!(cpu.rule.for_duration, Duration::from_secs(30));
        assert_eq!(cpu.severity, Severity::Critical);
        assert!(c.detectors.node_load_high.is_none());
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(
            load("detectors:\n  disk_usage_high: {threshold: 50, clear_below: 60}\n").unwrap_err().field,
            "detectors.disk_usage_high.clear_below"
        );
        assert_eq!(
            load("detectors:\n  disk_usage_high: {for: later}\n").unwrap_err().field,
            "detectors.disk_usage_high.for"
        );
        assert_eq!(load("coordinator: 127.0.0.1:7070\n").unwrap_err().field, "coordinator");
        assert_eq!(load("spool_capacity: 0\n").unwrap_err().field, "spool_capacity");
        assert_eq!(load("detectors:\n  gpu_hot: {}\n").unwrap_err().field, "detectors.gpu_hot");
        // What the coordinator would refuse in the hello is refused here.
        let long = "x".repeat(254);
        assert_eq!(load(&format!("agent_id: {long}\n")).unwrap_err().field, "agent_id");
        assert_eq!(load(&format!("labels: {{zone: {}}}\n", "z".repeat(5000))).unwrap_err().field, "labels");
    }

    #[test]
    fn keepalive_defaults_to_20s_and_10s_and_refuses_tiny_values() {
        let c = load("{}").unwrap();
        assert_eq!((c.keepalive_interval, c.keepalive_timeout), (Duration::from_secs(20), Duration::from_secs(10)));
        let c = load("keepalive: {interval: 1s, timeout: 500ms}\n").unwrap();
        assert_eq!((c.keepalive_interval, c.keepalive_timeout), (Duration::from_secs(1), Duration::from_millis(500)));
        assert_eq!(load("keepalive: {interval: 10ms}\n").unwrap_err().field, "keepalive.interval");
        assert_eq!(load("keepalive: {timeout: 0s}\n").unwrap_err().field, "keepalive.timeout");
        assert_eq!(load("keepalive: {intervall: 1s}\n").unwrap_err().field, "keepalive.intervall");
    }

    #[test]
    fn pod_watching_defaults_to_auto_with_restarts_off() {
        let c = load("{}").unwrap();
        assert_eq!(c.pods.mode, PodsMode::Auto);
        assert_eq!(c.pods.kubeconfig, None);
        assert_eq!(c.pods.restart_failed, RestartFailed { enabled: false, max_per_hour: 3 });
        let crash = c.pods.rules.crash_loop.unwrap();
        assert_eq!((crash.restarts, crash.window), (5, Duration::from_secs(600)));
        assert!(c.pods.rules.oom_killed.is_some() && c.pods.rules.failed.is_some());
        assert_eq!(c.pods.rules.refresh, Duration::from_secs(60));
    }

    #[test]
    fn pod_watching_reads_auto_true_false_and_its_rules() {
        for (text, mode) in [("auto", PodsMode::Auto), ("true", PodsMode::On), ("false", PodsMode::Off)] {
            assert_eq!(load(&format!("pods: {{enabled: {text}}}\n")).unwrap().pods.mode, mode, "{text}");
            assert_eq!(load(&format!("pods: {{enabled: \"{text}\"}}\n")).unwrap().pods.mode, mode, "{text}");
        }
        let c = load(
            "kubeconfig: /etc/kube.yaml\npods:\n  enabled: true\n  refresh: 10s\n  crash_loop: {restarts: 3, window: 2m, clear_after: 1s, severity: critical}\n  oom_killed: {enabled: false}\n  restart_failed: {enabled: true, max_per_hour: 1}\n",
        )
        .unwrap();
        assert_eq!(c.pods.kubeconfig, Some(PathBuf::from("/etc/kube.yaml")));
        let crash = c.pods.rules.crash_loop.unwrap();
        assert_eq!(
            (crash.restarts, crash.window, crash.clear_after),
            (3, Duration::from_secs(120), Duration::from_secs(1))
        );
        assert_eq!(crash.severity, Severity::Critical);
        assert!(c.pods.rules.oom_killed.is_none());
        assert_eq!(c.pods.restart_failed, RestartFailed { enabled: true, max_per_hour: 1 });
        let flag = parse([
            "remedy-agent",
            "--node-name",
            "n1",
            "--insecure",
            "--coordinator",
            "http://c:1",
            "--kubeconfig",
            "/tmp/k",
        ]);
        let c = resolve(&flag, "agent.yaml", config::parse_yaml("agent.yaml", "kubeconfig: /etc/kube.yaml\n").unwrap())
            .unwrap();
        assert_eq!(c.pods.kubeconfig, Some(PathBuf::from("/tmp/k")), "the flag wins over the file");
    }

    #[test]
    fn bad_pod_settings_name_their_field() {
        assert_eq!(load("pods: {enabled: sometimes}\n").unwrap_err().field, "pods.enabled");
        assert_eq!(load("pods: {crash_loop: {restarts: 0}}\n").unwrap_err().field, "pods.crash_loop.restarts");
        assert_eq!(load("pods: {crash_loop: {window: 0s}}\n").unwrap_err().field, "pods.crash_loop.window");
        assert_eq!(load("pods: {refresh: 10ms}\n").unwrap_err().field, "pods.refresh");
        assert_eq!(
            load("pods: {restart_failed: {enabled: true, max_per_hour: 0}}\n").unwrap_err().field,
            "pods.restart_failed.max_per_hour"
        );
        assert_eq!(
            load("pods: {enabled: false, restart_failed: {enabled: true}}\n").unwrap_err().field,
            "pods.restart_failed.enabled"
        );
        assert_eq!(load("pods: {watch_all: true}\n").unwrap_err().field, "pods.watch_all");
    }

    #[test]
    fn log_tailing_defaults_to_the_kubelet_directory_from_the_end() {
        let c = load("{}").unwrap().logs;
        assert!(c.enabled);
        assert_eq!(c.root, PathBuf::from("/var/log/pods"));
        assert!(c.files.is_empty());
        assert_eq!(c.max_line_bytes, 65_536);
        assert_eq!(
            (c.discover_interval, c.poll_interval, c.checkpoint_interval),
            (Duration::from_secs(1), Duration::from_millis(250), Duration::from_secs(5))
        );
        assert_eq!(c.first_start, StartAt::End);
    }

    #[test]
    fn log_tailing_reads_its_settings() {
        let c = load(
            "logs:\n  enabled: false\n  root: /tmp/pods\n  files: [/var/log/auth.log, /var/log/auth.log, /var/log/nginx/access.log]\n  max_line_bytes: 4096\n  discover_interval: 200ms\n  poll_interval: 50ms\n  checkpoint_interval: 2s\n  first_start: beginning\n",
        )
        .unwrap()
        .logs;
        assert!(!c.enabled);
        assert_eq!(c.root, PathBuf::from("/tmp/pods"));
        assert_eq!(c.files, vec![PathBuf::from("/var/log/auth.log"), PathBuf::from("/var/log/nginx/access.log")]);
        assert_eq!(c.max_line_bytes, 4096);
        assert_eq!(
            (c.discover_interval, c.poll_interval, c.checkpoint_interval),
            (Duration::from_millis(200), Duration::from_millis(50), Duration::from_secs(2))
        );
        assert_eq!(c.first_start, StartAt::Beginning);
    }

    #[test]
    fn blocking_is_off_by_default_and_protects_loopback_and_link_local() {
        let c = load("{}").unwrap().blocking;
        assert!(!c.enabled);
        assert_eq!(c.table, "remedy");
        assert_eq!((c.protected.max_prefix_v4, c.protected.max_prefix_v6), (24, 64));
        assert_eq!(c.reconcile_interval, Duration::from_secs(10));
        assert_eq!(c.max_bans, 100_000);
        let never: Vec<String> = c.protected.never_block.iter().map(ToString::to_string).collect();
        assert_eq!(never, ["127.0.0.0/8", "::1", "169.254.0.0/16", "fe80::/10"]);
        let c = load(
            "blocking:\n  enabled: true\n  table: remedy_test\n  never_block: [203.0.113.7]\n  pod_cidrs: [10.244.0.0/16, \"fd00:244::/56\"]\n  service_cidrs: [10.96.0.0/12]\n  max_prefix_v4: 16\n  max_prefix_v6: 48\n  reconcile_interval: 500ms\n  max_bans: 10\n",
        )
        .unwrap()
        .blocking;
        assert!(c.enabled);
        assert_eq!(c.table, "remedy_test");
        assert_eq!(c.protected.never_block.len(), 1);
        assert_eq!(c.protected.pod_cidrs[1].to_string(), "fd00:244::/56");
        assert_eq!((c.protected.max_prefix_v4, c.protected.max_prefix_v6), (16, 48));
        assert_eq!((c.reconcile_interval, c.max_bans), (Duration::from_millis(500), 10));
    }

    #[test]
    fn bad_blocking_settings_name_their_field() {
        let field = |yaml: &str| load(yaml).unwrap_err().field;
        assert_eq!(field("blocking: {table: \"kube proxy\"}\n"), "blocking.table");
        assert_eq!(field("blocking: {table: \"\"}\n"), "blocking.table");
        assert_eq!(field("blocking: {pod_cidrs: [10.244.0.0/16, 10.1.2.3/8]}\n"), "blocking.pod_cidrs[1]");
        assert_eq!(field("blocking: {service_cidrs: [nope]}\n"), "blocking.service_cidrs[0]");
        assert_eq!(field("blocking: {never_block: [\"10.0.0.1/40\"]}\n"), "blocking.never_block[0]");
        assert_eq!(field("blocking: {max_prefix_v4: 4}\n"), "blocking.max_prefix_v4");
        assert_eq!(field("blocking: {max_prefix_v6: 200}\n"), "blocking.max_prefix_v6");
        assert_eq!(field("blocking: {reconcile_interval: 1ms}\n"), "blocking.reconcile_interval");
        assert_eq!(field("blocking: {max_bans: 0}\n"), "blocking.max_bans");
        assert_eq!(field("blocking: {enabled: yes please}\n"), "blocking.enabled");
        assert_eq!(field("blocking: {chains: [input]}\n"), "blocking.chains");
    }

    #[test]
    fn bad_log_settings_name_their_field() {
        let field = |yaml: &str| load(yaml).unwrap_err().field;
        assert_eq!(field("logs: {max_line_bytes: 10}\n"), "logs.max_line_bytes");
        assert_eq!(field("logs: {max_line_bytes: 1073741824}\n"), "logs.max_line_bytes");
        assert_eq!(field("logs: {max_line_bytes: -1}\n"), "logs.max_line_bytes");
        assert_eq!(field("logs: {discover_interval: 1ms}\n"), "logs.discover_interval");
        assert_eq!(field("logs: {poll_interval: 1m}\n"), "logs.poll_interval");
        assert_eq!(field("logs: {checkpoint_interval: 0s}\n"), "logs.checkpoint_interval");
        assert_eq!(field("logs: {checkpoint_interval: soon}\n"), "logs.checkpoint_interval");
        assert_eq!(field("logs: {first_start: middle}\n"), "logs.first_start");
        assert_eq!(field("logs: {line_time: {syslog_zone: Mars/Olympus}}\n"), "logs.line_time.syslog_zone");
        assert_eq!(field("logs: {line_time: {max_age: 10s}}\n"), "logs.line_time.max_age");
        assert_eq!(field("logs: {line_time: {max_ahead: 2d}}\n"), "logs.line_time.max_ahead");
        assert_eq!(field("logs: {line_time: {zone: UTC}}\n"), "logs.line_time.zone");
        assert_eq!(field("logs: {root: \"\"}\n"), "logs.root");
        assert_eq!(field("logs: {files: [/var/log/a.log, \"/var/log/*.log\"]}\n"), "logs.files[1]");
        assert_eq!(field("logs: {files: [\"\"]}\n"), "logs.files[0]");
        assert_eq!(field("logs: {files: [/]}\n"), "logs.files[0]");
        assert_eq!(field("logs: {kmsg: true}\n"), "logs.kmsg");
    }
}
