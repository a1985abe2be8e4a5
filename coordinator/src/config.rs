//! The coordinator's configuration: a YAML file, overridden by flags and
//! environment, validated before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use clap::Parser;
use remedy_shared::config::{self, ConfigError};
use remedy_shared::connections::ConnectionLimits;
use remedy_shared::guard::GuardPolicy;
use serde::Deserialize;

use remedy_shared::config::opt_duration;

/// Command line of `remedy-coordinator`.
#[derive(Debug, Parser)]
#[command(
    name = "remedy-coordinator",
    version,
    about = "Remedy's coordinator: takes findings and alerts, keeps incidents"
)]
pub struct Cli {
    /// YAML configuration file.
    #[arg(long, env = "REMEDY_COORDINATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the embedded store.
    #[arg(long, env = "REMEDY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address (agents and remedyctl).
    #[arg(long, env = "REMEDY_GRPC_LISTEN")]
    pub grpc_listen: Option<String>,
    /// HTTP listen address (/healthz, /metrics).
    #[arg(long, env = "REMEDY_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Identity of this replica in logs and welcomes.
    #[arg(long, env = "REMEDY_COORDINATOR_ID")]
    pub id: Option<String>,
    /// Directory of runbook definitions (*.yaml), loaded and validated at start.
    #[arg(long, env = "REMEDY_RUNBOOKS_DIR")]
    pub runbooks_dir: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "REMEDY_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Act on the Kubernetes cluster of this kubeconfig (implies the
    /// `kubernetes` section; overrides its `kubeconfig`).
    #[arg(long, env = "REMEDY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Serve gRPC in plaintext, without TLS: nobody is authenticated by
    /// certificate. For development only; a warning says so every minute.
    #[arg(long, env = "REMEDY_INSECURE")]
    pub insecure: bool,
    /// Server certificate (PEM); overrides `tls.cert`.
    #[arg(long, env = "REMEDY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM); overrides `tls.key`.
    #[arg(long, env = "REMEDY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CAs that sign agents' and people's client certificates (PEM);
    /// overrides `tls.client_ca`.
    #[arg(long, env = "REMEDY_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Bearer tokens the Alertmanager webhook accepts (YAML list of
    /// {user, token}); overrides `alertmanager.tokens_file`.
    #[arg(long, env = "REMEDY_ALERTMANAGER_TOKENS_FILE")]
    pub alertmanager_tokens_file: Option<PathBuf>,
}

/// The file's shape. Every field is optional; defaults are in [`Config`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<String>,
    data_dir: Option<PathBuf>,
    grpc_listen: Option<String>,
    http_listen: Option<String>,
    #[serde(default, with = "opt_duration")]
    heartbeat_interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    stale_after: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    expiry_sweep_interval: Option<Duration>,
    max_batch_findings: Option<usize>,
    runbooks_dir: Option<PathBuf>,
    #[serde(default)]
    channels: BTreeMap<String, crate::channels::ChannelConfig>,
    #[serde(default)]
    people: BTreeMap<String, remedy_shared::escalation::Person>,
    #[serde(default)]
    links: LinksFile,
    #[serde(default)]
    guard_rails: Option<GuardPolicy>,
    #[serde(default)]
    kubernetes: Option<KubernetesFile>,
    #[serde(default)]
    edge: Option<crate::edge::EdgeConfig>,
    #[serde(default)]
    tls: Option<TlsFile>,
    #[serde(default)]
    authorization: Option<AuthorizationFile>,
    #[serde(default)]
    alertmanager: Option<AlertmanagerFile>,
    #[serde(default)]
    pagerduty_webhook: Option<crate::chatops::pagerduty::PagerDutyFile>,
    #[serde(default)]
    slack: Option<crate::chatops::slack::SlackFile>,
    #[serde(default)]
    databases: BTreeMap<String, crate::actuators::postgres::DatabaseConfig>,
    #[serde(default)]
    caches: BTreeMap<String, crate::actuators::redis::CacheConfig>,
    #[serde(default)]
    retention: Option<RetentionFile>,
    connections: Option<ConnectionLimits>,
}

/// `retention:` in the file: how long each kind of record is kept; `0s`
/// keeps it for ever.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionFile {
    #[serde(default, with = "opt_duration")]
    findings: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    audit: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    resolved_incidents: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    check_every: Option<Duration>,
}

impl RetentionFile {
    fn resolve(self, source: &str) -> Result<crate::store::Retention, ConfigError> {
        let defaults = crate::store::Retention::default();
        let keep = |set: Option<Duration>, default: Option<Duration>| match set {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => default,
        };
        let check_every = self.check_every.unwrap_or(defaults.check_every);
        if check_every < Duration::from_secs(1) {
            return Err(ConfigError::new(source, "retention.check_every", "must be at least 1s"));
        }
        Ok(crate::store::Retention {
            findings: keep(self.findings, defaults.findings),
            audit: keep(self.audit, defaults.audit),
            resolved_incidents: keep(self.resolved_incidents, defaults.resolved_incidents),
            check_every,
        })
    }
}

/// `tls:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    #[serde(default, with = "opt_duration")]
    reload_every: Option<Duration>,
}

/// `authorization:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizationFile {
    /// Role name -> identities (`user:NAME`).
    #[serde(default)]
    roles: BTreeMap<String, Vec<String>>,
    tokens_file: Option<PathBuf>,
    /// `viewer`, `operator`, `admin` or `none`.
    insecure_role: Option<String>,
    #[serde(default)]
    two_person_approvals: bool,
}

/// `alertmanager:` in the file: who may send notifications.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertmanagerFile {
    /// Bearer tokens Alertmanager sends (`http_config.authorization`), in the
    /// format of `authorization.tokens_file`.
    tokens_file: Option<PathBuf>,
    /// Which runbooks each sender's alerts may start (sender -> runbook ids
    /// or `prefix*`); a sender not listed may start the catalog's alert
    /// triggers.
    #[serde(default)]
    may_start: remedy_shared::auth::SenderScopes,
}

/// How the gRPC port is served.
#[derive(Debug, Clone, PartialEq)]
pub enum GrpcSecurity {
    /// Mutual TLS with these files, checked for rotation this often.
    Tls {
        /// Certificate, key and client CAs.
        files: remedy_proto::tls::TlsFiles,
        /// How often the files are checked for rotation.
        reload_every: Duration,
    },
    /// Plaintext (`--insecure`).
    Insecure,
}

/// `kubernetes:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesFile {
    kubeconfig: Option<PathBuf>,
    leader_election: Option<LeaderElectionFile>,
}

/// `kubernetes.leader_election:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaderElectionFile {
    lease: Option<String>,
    namespace: Option<String>,
    #[serde(default, with = "opt_duration")]
    duration: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    renew_every: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    retry: Option<Duration>,
}

/// How the coordinator reaches a Kubernetes cluster. Without this section
/// (and without `--kubeconfig`) it reaches none: the Kubernetes action kinds
/// rehearse, so a coordinator started on a laptop never acts on whatever
/// cluster `~/.kube/config` happens to name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// The kubeconfig to use; `None`: `KUBECONFIG`, `~/.kube/config`, then
    /// the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// The Lease that decides which replica acts; `None`: this replica acts
    /// alone.
    pub leader_election: Option<LeaderElectionConfig>,
}

/// The Lease replicas compete for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElectionConfig {
    /// Lease name.
    pub lease: String,
    /// Lease namespace.
    pub namespace: String,
    /// Lease duration, renewal interval and retry interval.
    pub timings: crate::leader::LeaseTimings,
}

/// `links:` in the file: what communication templates link to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinksFile {
    war_room: Option<String>,
    status_page: Option<String>,
    incident_base: Option<String>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Replica identity.
    pub id: String,
    /// Where the embedded store lives.
    pub data_dir: PathBuf,
    /// gRPC address.
    pub grpc_listen: SocketAddr,
    /// HTTP address.
    pub http_listen: SocketAddr,
    /// How often agents must send heartbeats.
    pub heartbeat_interval: Duration,
    /// Silence after which an agent is stale.
    pub stale_after: Duration,
    /// How often expired findings are looked for.
    pub expiry_sweep_interval: Duration,
    /// Most findings accepted in one batch.
    pub max_batch_findings: usize,
    /// Where the runbook catalog is read from, if anywhere.
    pub runbooks_dir: Option<PathBuf>,
    /// The channels people are told through, their secrets read.
    pub channels: crate::channels::Channels,
    /// People escalation policies and schedules name.
    pub people: BTreeMap<String, remedy_shared::escalation::Person>,
    /// What communication templates link to.
    pub links: remedy_shared::comms::Links,
    /// The global guard rails.
    pub guard_rails: GuardPolicy,
    /// The cluster to act on, if any.
    pub kubernetes: Option<KubernetesConfig>,
    /// The edge provider `block_ip` steps with `edge: true` also block at.
    pub edge: Option<crate::edge::EdgeConfig>,
    /// TLS or, asked for explicitly, plaintext.
    pub security: GrpcSecurity,
    /// Who may call what on the admin API.
    pub authorization: crate::auth::AuthorizationConfig,
    /// The bearer tokens the Alertmanager webhook accepts (reread when the
    /// file changes); `None`: the webhook accepts no notification, since
    /// nothing anonymous may start a runbook.
    pub alertmanager_tokens: Option<PathBuf>,
    /// Which runbooks each Alertmanager sender may start.
    pub alertmanager_scopes: remedy_shared::auth::SenderScopes,
    /// The PostgreSQL clusters the data-plane actions reach, by name.
    pub databases: BTreeMap<String, crate::actuators::postgres::DatabaseConfig>,
    /// The Redis instances the data-plane actions reach, by name.
    pub caches: BTreeMap<String, crate::actuators::redis::CacheConfig>,
    /// How long findings, the audit log and resolved incidents are kept.
    pub retention: crate::store::Retention,
    /// Deadlines and caps on the gRPC and HTTP listeners' connections.
    pub connections: ConnectionLimits,
    /// PagerDuty's webhook and Slack's buttons, where configured.
    pub chatops: crate::chatops::ChatOpsConfig,
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
        Self::resolve(cli, &source, file)
    }

    fn resolve(cli: &Cli, source: &str, file: FileConfig) -> Result<Config, ConfigError> {
        let from_flag = |flag: &Option<String>| flag.as_ref().map(|v| ("flags", v.clone()));
        let id = cli.id.clone().or(file.id).unwrap_or_else(default_id);
        let data_dir = cli.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from(".remedy/coordinator"));
        let grpc_listen = parse_addr(
            from_flag(&cli.grpc_listen).or(file.grpc_listen.map(|v| (source, v))),
            "grpc_listen",
            "127.0.0.1:7070",
        )?;
        let http_listen = parse_addr(
            from_flag(&cli.http_listen).or(file.http_listen.map(|v| (source, v))),
            "http_listen",
            "127.0.0.1:7071",
        )?;
        let heartbeat_interval = file.heartbeat_interval.unwrap_or(Duration::from_secs(10));
        let stale_after = file.stale_after.unwrap_or(heartbeat_interval * 3);
        if heartbeat_interval < Duration::from_millis(100) {
            return Err(ConfigError::new(source, "heartbeat_interval", "must be at least 100ms"));
        }
        if stale_after < heartbeat_interval * 2 {
            return Err(ConfigError::new(
                source,
                "stale_after",
                "must be at least twice heartbeat_interval, or every late heartbeat marks an agent stale",
            ));
        }
        let max_batch_findings = file.max_batch_findings.unwrap_or(1_000);
        if max_batch_findings == 0 {
            return Err(ConfigError::new(source, "max_batch_findings", "must be greater than zero"));
        }
        if id.trim().is_empty() {
            return Err(ConfigError::new(source, "id", "must not be empty"));
        }
        let channels = crate::channels::Channels::from_config(source, &file.channels)?;
        for (name, person) in &file.people {
            if person.notify.is_empty() {
                return Err(ConfigError::new(source, format!("people.{name}.notify"), "name at least one channel"));
            }
            for (i, channel) in person.notify.iter().enumerate() {
                if !channels.contains(channel) {
                    return Err(ConfigError::new(
                        source,
                        format!("people.{name}.notify[{i}]"),
                        format!("no channel named `{channel}` (declare it under channels)"),
                    ));
                }
            }
        }
        let links = links(source, file.links)?;
        let guard_rails = file.guard_rails.unwrap_or_default();
        guard_rails.validate(source)?;
        let kubernetes = kubernetes(source, cli.kubeconfig.clone(), file.kubernetes)?;
        if let Some(edge) = &file.edge {
            edge.validate().map_err(|e| ConfigError::new(source, "edge", e))?;
        }
        let security = security(cli, source, file.tls)?;
        let authorization = authorization(source, file.authorization, &security)?;
        let alertmanager = file.alertmanager.unwrap_or_default();
        alertmanager.may_start.validate().map_err(|e| ConfigError::new(source, "alertmanager.may_start", e))?;
        let alertmanager_tokens =
            cli.alertmanager_tokens_file.clone().or(alertmanager.tokens_file).map(|p| absolute(&p));
        if let Some(path) = &alertmanager_tokens {
            remedy_proto::tokens::load(path).map_err(|e| ConfigError::new(source, "alertmanager.tokens_file", e))?;
        }
        data_plane(source, &file.databases, &file.caches)?;
        let retention = file.retention.unwrap_or_default().resolve(source)?;
        let connections = file.connections.unwrap_or_default();
        connections.validate(source, "connections")?;
        let chatops = crate::chatops::ChatOpsConfig {
            pagerduty: file.pagerduty_webhook.map(|p| p.resolve(source)).transpose()?,
            slack: file.slack.map(|s| s.resolve(source)).transpose()?,
        };
        Ok(Config {
            id,
            data_dir: absolute(&data_dir),
            grpc_listen,
            http_listen,
            heartbeat_interval,
            stale_after,
            expiry_sweep_interval: file.expiry_sweep_interval.unwrap_or(Duration::from_secs(5)),
            max_batch_findings,
            runbooks_dir: cli.runbooks_dir.clone().or(file.runbooks_dir).map(|d| absolute(&d)),
            channels,
            people: file.people,
            links,
            guard_rails,
            kubernetes,
            edge: file.edge,
            security,
            authorization,
            alertmanager_tokens,
            alertmanager_scopes: alertmanager.may_start,
            databases: file.databases,
            caches: file.caches,
            retention,
            connections,
            chatops,
        })
    }
}

fn links(source: &str, file: LinksFile) -> Result<remedy_shared::comms::Links, ConfigError> {
    let check = |field: &str, url: &Option<String>| match url {
        Some(u) if reqwest::Url::parse(u).ok().filter(|u| matches!(u.scheme(), "http" | "https")).is_none() => {
            Err(ConfigError::new(source, format!("links.{field}"), format!("`{u}` is not an http(s) URL")))
        }
        _ => Ok(()),
    };
    check("war_room", &file.war_room)?;
    check("status_page", &file.status_page)?;
    check("incident_base", &file.incident_base)?;
    Ok(remedy_shared::comms::Links {
        war_room: file.war_room,
        status_page: file.status_page,
        incident_base: file.incident_base,
    })
}

fn security(cli: &Cli, source: &str, file: Option<TlsFile>) -> Result<GrpcSecurity, ConfigError> {
    let file = file.unwrap_or_default();
    let given = |flag: &Option<PathBuf>, from_file: Option<PathBuf>, field: &str| {
        match (flag.clone(), from_file) {
            (Some(p), _) => Ok(Some(("flags", p))),
            (None, Some(p)) => Ok(Some((source, p))),
            (None, None) => Ok::<_, ConfigError>(None),
        }
        .and_then(|v| match v {
            Some((src, p)) if p.as_os_str().is_empty() => Err(ConfigError::new(src, field, "must name a file")),
            other => Ok(other.map(|(_, p)| absolute(&p))),
        })
    };
    let cert = given(&cli.tls_cert, file.cert, "tls.cert")?;
    let key = given(&cli.tls_key, file.key, "tls.key")?;
    let ca = given(&cli.tls_client_ca, file.client_ca, "tls.client_ca")?;
    if cli.insecure {
        if cert.is_some() || key.is_some() || ca.is_some() {
            return Err(ConfigError::new(
                "flags",
                "insecure",
                "--insecure serves plaintext; remove it or the tls settings, not both",
            ));
        }
        return Ok(GrpcSecurity::Insecure);
    }
    let missing = |field: &str| {
        ConfigError::new(
            source,
            field,
            "is required: gRPC is served over mutual TLS (give tls.cert, tls.key and tls.client_ca, or --insecure for plaintext)",
        )
    };
    let files = remedy_proto::tls::TlsFiles {
        cert: Some(cert.ok_or_else(|| missing("tls.cert"))?),
        key: Some(key.ok_or_else(|| missing("tls.key"))?),
        ca: ca.ok_or_else(|| missing("tls.client_ca"))?,
    };
    let reload_every = file.reload_every.unwrap_or(Duration::from_secs(30));
    if reload_every < Duration::from_millis(100) {
        return Err(ConfigError::new(source, "tls.reload_every", "must be at least 100ms"));
    }
    Ok(GrpcSecurity::Tls { files, reload_every })
}

fn authorization(
    source: &str,
    file: Option<AuthorizationFile>,
    security: &GrpcSecurity,
) -> Result<crate::auth::AuthorizationConfig, ConfigError> {
    use remedy_shared::auth::{Bindings, Identity, Role};
    let file = file.unwrap_or_default();
    let role_named = |name: &str, field: &str| match name {
        "viewer" => Ok(Role::Viewer),
        "operator" => Ok(Role::Operator),
        "admin" => Ok(Role::Admin),
        other => Err(ConfigError::new(source, field, format!("`{other}` is not a role (viewer, operator, admin)"))),
    };
    let mut bindings = Bindings::default();
    for (role, identities) in &file.roles {
        let r = role_named(role, &format!("authorization.roles.{role}"))?;
        for (i, identity) in identities.iter().enumerate() {
            let id = Identity::parse(identity)
                .map_err(|e| ConfigError::new(source, format!("authorization.roles.{role}[{i}]"), e))?;
            bindings.bind(id, r);
        }
    }
    let insecure_role = match file.insecure_role.as_deref() {
        None => Some(Role::Admin),
        Some("none") => None,
        Some(name) => Some(role_named(name, "authorization.insecure_role")?),
    };
    if file.insecure_role.is_some() && *security != GrpcSecurity::Insecure {
        return Err(ConfigError::new(source, "authorization.insecure_role", "applies only with --insecure"));
    }
    if let Some(path) = &file.tokens_file {
        remedy_proto::tokens::load(path).map_err(|e| ConfigError::new(source, "authorization.tokens_file", e))?;
    }
    Ok(crate::auth::AuthorizationConfig {
        bindings,
        tokens_file: file.tokens_file.map(|p| absolute(&p)),
        insecure_role,
        two_person_approvals: file.two_person_approvals,
    })
}

/// Checks `databases:` and `caches:`; the error names the instance and its
/// field.
fn data_plane(
    source: &str,
    databases: &BTreeMap<String, crate::actuators::postgres::DatabaseConfig>,
    caches: &BTreeMap<String, crate::actuators::redis::CacheConfig>,
) -> Result<(), ConfigError> {
    let valid_name =
        |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    for (name, db) in databases {
        if !valid_name(name) {
            return Err(ConfigError::new(source, format!("databases.{name}"), "letters, digits, `-` and `_` only"));
        }
        db.validate().map_err(|(field, e)| ConfigError::new(source, format!("databases.{name}.{field}"), e))?;
    }
    for (name, cache) in caches {
        if !valid_name(name) {
            return Err(ConfigError::new(source, format!("caches.{name}"), "letters, digits, `-` and `_` only"));
        }
        cache.validate().map_err(|(field, e)| ConfigError::new(source, format!("caches.{name}.{field}"), e))?;
    }
    Ok(())
}

fn kubernetes(
    source: &str,
    flag: Option<PathBuf>,
    file: Option<KubernetesFile>,
) -> Result<Option<KubernetesConfig>, ConfigError> {
    let file = match (file, &flag) {
        (None, None) => return Ok(None),
        (file, _) => file.unwrap_or_default(),
    };
    let kubeconfig = flag.or(file.kubeconfig);
    if kubeconfig.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        return Err(ConfigError::new(source, "kubernetes.kubeconfig", "must name a file"));
    }
    let leader_election = match file.leader_election {
        None => None,
        Some(le) => {
            let defaults = crate::leader::LeaseTimings::default();
            let timings = crate::leader::LeaseTimings {
                duration: le.duration.unwrap_or(defaults.duration),
                renew_every: le.renew_every.unwrap_or(defaults.renew_every),
                retry: le.retry.unwrap_or(defaults.retry),
            };
            timings.validate().map_err(|e| ConfigError::new(source, "kubernetes.leader_election", e))?;
            let pod_namespace = std::env::var("POD_NAMESPACE").ok().filter(|n| !n.trim().is_empty());
            let namespace = le.namespace.or(pod_namespace).ok_or_else(|| {
                ConfigError::new(
                    source,
                    "kubernetes.leader_election.namespace",
                    "is required when POD_NAMESPACE is not set",
                )
            })?;
            let lease = le.lease.unwrap_or_else(|| "remedy-coordinator".to_owned());
            for (field, value) in [("lease", &lease), ("namespace", &namespace)] {
                if !is_dns_label(value) {
                    return Err(ConfigError::new(
                        source,
                        format!("kubernetes.leader_election.{field}"),
                        format!("`{value}` is not a valid name (lower-case letters, digits and '-')"),
                    ));
                }
            }
            Some(LeaderElectionConfig { lease, namespace, timings })
        }
    };
    Ok(Some(KubernetesConfig { kubeconfig, leader_election }))
}

/// An RFC 1123 label, which Lease and Namespace names must be.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn parse_addr(value: Option<(&str, String)>, field: &str, default: &str) -> Result<SocketAddr, ConfigError> {
    let (source, text) = value.unwrap_or(("defaults", default.to_owned()));
    text.parse().map_err(|_| ConfigError::new(source, field, format!("`{text}` is not an address like 127.0.0.1:7070")))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn default_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "coordinator".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Cli {
        Cli::parse_from(["remedy-coordinator", "--insecure"])
    }

    #[test]
    fn tls_is_the_default_and_plaintext_must_be_asked_for() {
        let secure = Cli::parse_from(["remedy-coordinator"]);
        let err = Config::resolve(&secure, "defaults", FileConfig::default()).unwrap_err();
        assert_eq!(err.field, "tls.cert", "{err}");
        assert!(err.to_string().contains("--insecure"), "{err}");
        let file: FileConfig = config::parse_yaml("c.yaml", "tls: {cert: /a.crt, key: /a.key}\n").unwrap();
        assert_eq!(Config::resolve(&secure, "c.yaml", file).unwrap_err().field, "tls.client_ca");
        let file: FileConfig =
            config::parse_yaml("c.yaml", "tls: {cert: /a.crt, key: /a.key, client_ca: /ca.crt}\n").unwrap();
        let c = Config::resolve(&secure, "c.yaml", file).unwrap();
        assert!(
            matches!(c.security, GrpcSecurity::Tls { reload_every, .. } if reload_every == Duration::from_secs(30))
        );
        let both = Cli::parse_from(["remedy-coordinator", "--insecure", "--tls-cert", "/a.crt"]);
        assert_eq!(Config::resolve(&both, "defaults", FileConfig::default()).unwrap_err().field, "insecure");
    }

    #[test]
    fn the_pagerduty_and_slack_doors_name_the_field_that_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let resolve = |text: &str| {
            let file: FileConfig = config::parse_yaml("c.yaml", text).unwrap();
            Config::resolve(&cli(), "c.yaml", file)
        };
        let s = secret.display();
        let c = resolve(&format!(
            "pagerduty_webhook: {{secret_file: '{s}'}}\nslack: {{signing_secret_file: '{s}', users: {{U024BE7LH: alice}}}}\n"
        ))
        .unwrap();
        assert_eq!(c.chatops.pagerduty.unwrap().secrets.len(), 1);
        let slack = c.chatops.slack.unwrap();
        assert_eq!(slack.users["U024BE7LH"].to_string(), "user:alice");
        assert!(resolve("").unwrap().chatops.slack.is_none(), "absent: the door is closed");
        let missing = resolve("pagerduty_webhook: {secret_file: /nonexistent/pd}\n").unwrap_err();
        assert_eq!(missing.field, "pagerduty_webhook.secret_file", "{missing}");
        let bad_user =
            resolve(&format!("slack: {{signing_secret_file: '{s}', users: {{U1: 'not a name'}}}}\n")).unwrap_err();
        assert_eq!(bad_user.field, "slack.users.U1", "{bad_user}");
        assert_eq!(resolve("slack: {users: {}}\n").unwrap_err().field, "slack.signing_secret_file");
    }

    #[test]
    fn retention_defaults_to_a_month_of_findings_and_zero_keeps_for_ever() {
        let c = Config::resolve(&cli(), "defaults", FileConfig::default()).unwrap();
        assert_eq!(c.retention.findings, Some(Duration::from_secs(30 * 24 * 3600)));
        let file: FileConfig =
            config::parse_yaml("c.yaml", "retention: {findings: 7d, audit: 0s, check_every: 1m}\n").unwrap();
        let c = Config::resolve(&cli(), "c.yaml", file).unwrap();
        assert_eq!(c.retention.findings, Some(Duration::from_secs(7 * 24 * 3600)));
        assert_eq!(c.retention.audit, None, "0s keeps the audit log for ever");
        assert_eq!(c.retention.resolved_incidents, Some(Duration::from_secs(365 * 24 * 3600)));
        let file: FileConfig = config::parse_yaml("c.yaml", "retention: {check_every: 10ms}\n").unwrap();
        assert_eq!(Config::resolve(&cli(), "c.yaml", file).unwrap_err().field, "retention.check_every");
    }

    #[test]
    fn authorization_names_roles_and_identities_it_cannot_read() {
        let bad_role: FileConfig =
            config::parse_yaml("c.yaml", "authorization: {roles: {root: ['user:a']}}\n").unwrap();
        assert_eq!(Config::resolve(&cli(), "c.yaml", bad_role).unwrap_err().field, "authorization.roles.root");
        let bad_id: FileConfig =
            config::parse_yaml("c.yaml", "authorization: {roles: {admin: ['user:a', 'alice']}}\n").unwrap();
        assert_eq!(Config::resolve(&cli(), "c.yaml", bad_id).unwrap_err().field, "authorization.roles.admin[1]");
        let missing: FileConfig =
            config::parse_yaml("c.yaml", "authorization: {tokens_file: /nonexistent/tokens.yaml}\n").unwrap();
        assert_eq!(Config::resolve(&cli(), "c.yaml", missing).unwrap_err().field, "authorization.tokens_file");
        let c = Config::resolve(&cli(), "defaults", FileConfig::default()).unwrap();
        assert_eq!(c.authorization.insecure_role, Some(remedy_shared::auth::Role::Admin));
    }

    #[test]
    fn defaults_are_the_documented_ports() {
        let c = Config::resolve(&cli(), "defaults", FileConfig::default()).unwrap();
        assert_eq!(c.grpc_listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:7071");
        assert_eq!(c.stale_after, Duration::from_secs(30));
    }

    #[test]
    fn flags_override_the_file_and_bad_addresses_name_the_field() {
        let file: FileConfig = config::parse_yaml("c.yaml", "grpc_listen: 0.0.0.0:1\n").unwrap();
        let mut flags = cli();
        flags.grpc_listen = Some("nonsense".into());
        let err = Config::resolve(&flags, "c.yaml", file).unwrap_err();
        assert_eq!((err.file.as_str(), err.field.as_str()), ("flags", "grpc_listen"));
    }

    #[test]
    fn people_must_name_declared_channels_and_links_must_be_urls() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hmac");
        std::fs::write(&secret, "k").unwrap();
        let text = format!(
            "channels: {{oncall: {{type: webhook, url: 'http://127.0.0.1:9/hook', secret_file: '{}'}}}}\n\
             people: {{alice: {{email: alice@example.com, notify: [oncall, pager]}}}}\n",
            secret.display()
        );
        let text = text.as_str();
        let file: FileConfig = config::parse_yaml("c.yaml", text).unwrap();
        let err = Config::resolve(&cli(), "c.yaml", file).unwrap_err();
        assert_eq!(err.field, "people.alice.notify[1]", "{err}");
        let file: FileConfig = config::parse_yaml("c.yaml", "links: {war_room: 'ftp://x'}\n").unwrap();
        assert_eq!(Config::resolve(&cli(), "c.yaml", file).unwrap_err().field, "links.war_room");
        let err = config::parse_yaml::<FileConfig>("c.yaml", "webhooks: {oncall: 'http://x'}\n").unwrap_err();
        assert!(err.message.contains("webhooks"), "channels replaced webhooks: {err}");
    }

    #[test]
    fn guard_rails_are_validated_naming_the_field() {
        let text = "guard_rails:\n  budgets:\n    - {scope: global, window: 0s, max_actions: 1}\n";
        let file: FileConfig = config::parse_yaml("c.yaml", text).unwrap();
        let err = Config::resolve(&cli(), "c.yaml", file).unwrap_err();
        assert!(err.field.contains("budgets[0].window"), "{err}");
    }

    #[test]
    fn kubernetes_is_off_unless_asked_for_and_leader_election_is_checked() {
        let c = Config::resolve(&cli(), "defaults", FileConfig::default()).unwrap();
        assert_eq!(c.kubernetes, None, "no cluster unless configured");

        let mut flags = cli();
        flags.kubeconfig = Some("/tmp/k".into());
        let c = Config::resolve(&flags, "defaults", FileConfig::default()).unwrap();
        assert_eq!(c.kubernetes.unwrap().kubeconfig, Some(PathBuf::from("/tmp/k")));

        let text =
            "kubernetes:\n  leader_election: {namespace: remedy-system, duration: 4s, renew_every: 1s, retry: 500ms}\n";
        let file: FileConfig = config::parse_yaml("c.yaml", text).unwrap();
        let k = Config::resolve(&cli(), "c.yaml", file).unwrap().kubernetes.unwrap();
        let le = k.leader_election.unwrap();
        assert_eq!((le.lease.as_str(), le.namespace.as_str()), ("remedy-coordinator", "remedy-system"));
        assert_eq!(le.timings.duration, Duration::from_secs(4));

        let text = "kubernetes:\n  leader_election: {namespace: remedy-system, duration: 2s, renew_every: 5s}\n";
        let file: FileConfig = config::parse_yaml("c.yaml", text).unwrap();
        assert_eq!(Config::resolve(&cli(), "c.yaml", file).unwrap_err().field, "kubernetes.leader_election");

        let text = "kubernetes:\n  leader_election: {namespace: Remedy_System}\n";
        let file: FileConfig = config::parse_yaml("c.yaml", text).unwrap();
        let err = Config::resolve(&cli(), "c.yaml", file).unwrap_err();
        assert_eq!(err.field, "kubernetes.leader_election.namespace", "{err}");
    }

    #[test]
    fn databases_and_caches_are_validated_naming_the_instance_and_field() {
        let text = "databases:\n  main:\n    primary: {host: db-0, user: remedy}\n    replicas: [{host: db-1, user: remedy}]\n";
        let file: FileConfig = config::parse_yaml("c.yaml", text).unwrap();
        assert_eq!(Config::resolve(&cli(), "c.yaml", file).unwrap_err().field, "databases.main.replicas[0].name");
        let text = "caches:\n  auth-cache: {host: redis, password_file: /nonexistent/redis-password}\n";
        let file: FileConfig = config::parse_yaml("c.yaml", text).unwrap();
        assert_eq!(Config::resolve(&cli(), "c.yaml", file).unwrap_err().field, "caches.auth-cache.password_file");
        let text =
            "databases:\n  main:\n    primary: {host: db-0, user: remedy}\ncaches:\n  auth-cache: {host: redis}\n";
        let file: FileConfig = config::parse_yaml("c.yaml", text).unwrap();
        let c = Config::resolve(&cli(), "c.yaml", file).unwrap();
        assert_eq!((c.databases.len(), c.caches.len()), (1, 1));
        // An unknown field is an error, as everywhere in the file.
        assert!(config::parse_yaml::<FileConfig>("c.yaml", "caches:\n  a: {host: r, url: redis://r}\n").is_err());
    }

    #[test]
    fn cache_tls_errors_name_the_cache_and_the_tls_field() {
        let text = "caches:\n  auth-cache:\n    host: redis\n    tls: {ca: /nonexistent/ca.crt}\n";
        let file: FileConfig = config::parse_yaml("c.yaml", text).unwrap();
        assert_eq!(Config::resolve(&cli(), "c.yaml", file).unwrap_err().field, "caches.auth-cache.tls.ca");
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["redis-ca".to_owned()]).unwrap();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, ca.cert.pem()).unwrap();
        let text = format!(
            "caches:\n  auth-cache:\n    host: redis\n    tls: {{ca: {}, cert: {}}}\n",
            ca_file.display(),
            ca_file.display()
        );
        let file: FileConfig = config::parse_yaml("c.yaml", &text).unwrap();
        let err = Config::resolve(&cli(), "c.yaml", file).unwrap_err();
        assert_eq!(err.field, "caches.auth-cache.tls.key", "{err}");
    }

    #[test]
    fn stale_after_must_leave_room_for_a_late_heartbeat() {
        let file: FileConfig = config::parse_yaml("c.yaml", "heartbeat_interval: 10s\nstale_after: 15s\n").unwrap();
        let err = Config::resolve(&cli(), "c.yaml", file).unwrap_err();
        assert_eq!(err.field, "stale_after");
    }
}
