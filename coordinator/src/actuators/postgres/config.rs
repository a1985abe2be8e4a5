//! `databases:` in the coordinator's configuration: each PostgreSQL
//! cluster by name, its primary and replicas, where each one's password
//! is (a file, read at every connection, never logged), and the limits a
//! failover keeps.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use remedy_shared::config::{duration, opt_duration};
use serde::Deserialize;

/// One PostgreSQL cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The primary as configured; after a failover the actuator finds the
    /// current one by asking every member.
    pub primary: MemberConfig,
    /// The streaming replicas.
    #[serde(default)]
    pub replicas: Vec<MemberConfig>,
    /// Longest a connection may take to open.
    #[serde(default = "five_seconds", with = "duration")]
    pub connect_timeout: Duration,
    /// Longest one query may take.
    #[serde(default = "five_seconds", with = "duration")]
    pub query_timeout: Duration,
    /// A replica further behind than this (bytes of WAL not replayed) is
    /// never promoted.
    #[serde(default = "sixteen_mib")]
    pub max_lag_bytes: u64,
    /// Longest a promotion may take until the replica accepts writes.
    #[serde(default = "thirty_seconds", with = "duration")]
    pub promote_timeout: Duration,
    /// After a failover whose old primary did not answer, it is watched
    /// this long and fenced as soon as it answers again.
    #[serde(default = "one_hour", with = "duration")]
    pub fence_watch: Duration,
    /// A fence also stops every database of the member from taking
    /// connections (`ALTER DATABASE … ALLOW_CONNECTIONS false`), the
    /// coordinator's own `dbname` included; the coordinator then reaches the
    /// fenced member through `template1`, which holds no application data.
    /// Without it the fence still closes every other role's logins, but the
    /// coordinator's own role could still write in the member's databases.
    #[serde(default = "yes")]
    pub fence_connections: bool,
    /// How often the watch asks.
    #[serde(default = "one_second", with = "duration")]
    pub fence_watch_interval: Duration,
    /// How often every member is asked whether more than one takes writes
    /// (the one on the highest timeline is kept, the others fenced), so an
    /// old primary that comes back is caught even after the coordinator
    /// restarted or another one took over; `null` turns it off.
    #[serde(default = "ten_seconds", with = "opt_duration")]
    pub split_brain_check: Option<Duration>,
    /// How long the agents have to say whether their nodes reach a primary
    /// the coordinator cannot.
    #[serde(default = "two_seconds", with = "duration")]
    pub agent_check_timeout: Duration,
    /// The nodes whose applications use this database. When the primary
    /// does not answer the coordinator, only their agents' word that they
    /// cannot reach it either counts as evidence that it is down; empty:
    /// every node whose agent is connected.
    #[serde(default)]
    pub client_nodes: Vec<String>,
    /// How many of those nodes must answer that they cannot reach the
    /// primary before it is replaced without a person; omitted: a majority
    /// of them. A node that does not answer counts against.
    #[serde(default)]
    pub down_quorum: Option<u32>,
    /// How connections to the members are protected: unset, no TLS and
    /// never a password in clear (a member asking for one is refused);
    /// `disable`, no TLS, a cleartext password sent when asked; `require`,
    /// TLS without checking the certificate; `verify-full`, TLS with the
    /// certificate checked against `sslrootcert` and the member's `host`.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// The CA file (PEM) that `verify-full` trusts.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Told the new primary after a failover: `POST` with
    /// `{"database", "primary", "url"}` (`url` is the member's `app_url`).
    #[serde(default)]
    pub repoint_hook: Option<String>,
}

/// `databases.<name>.sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// No TLS; a cleartext password is sent if the server asks.
    Disable,
    /// TLS, any certificate.
    Require,
    /// TLS, the certificate chains to `sslrootcert` and names the host.
    VerifyFull,
}

/// One server of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Its name in runbooks and on the timeline (`primary` for the primary
    /// when omitted; required for replicas).
    #[serde(default)]
    pub name: Option<String>,
    /// Host name or address.
    pub host: String,
    /// Port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The role to log in as (it needs superuser or the grants for
    /// `pg_promote`, `ALTER SYSTEM` and `pg_terminate_backend`).
    pub user: String,
    /// Database to connect to.
    #[serde(default = "default_dbname")]
    pub dbname: String,
    /// A file holding the password; none: no password is sent.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// What applications use to reach this member once it is the primary
    /// (no password in it); `postgresql://host:port/dbname` when omitted.
    #[serde(default)]
    pub app_url: Option<String>,
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn yes() -> bool {
    true
}
fn ten_seconds() -> Option<Duration> {
    Some(Duration::from_secs(10))
}
fn two_seconds() -> Duration {
    Duration::from_secs(2)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn one_hour() -> Duration {
    Duration::from_secs(3600)
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn sixteen_mib() -> u64 {
    16 * 1024 * 1024
}
fn default_port() -> u16 {
    5432
}
fn default_dbname() -> String {
    "postgres".to_owned()
}

impl MemberConfig {
    /// The member's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("primary")
    }

    /// Its `host:port`, as an agent dials it.
    pub fn address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL applications use for it.
    pub fn app_url(&self) -> String {
        self.app_url.clone().unwrap_or_else(|| format!("postgresql://{}:{}/{}", self.host, self.port, self.dbname))
    }
}

impl DatabaseConfig {
    /// Whose word counts that the primary is down.
    pub fn quorum(&self) -> remedy_shared::failover::Quorum {
        remedy_shared::failover::Quorum { client_nodes: self.client_nodes.clone(), min: self.down_quorum }
    }

    /// Every member, the configured primary first.
    pub fn members(&self) -> impl Iterator<Item = &MemberConfig> {
        std::iter::once(&self.primary).chain(self.replicas.iter())
    }

    /// A member by name.
    pub fn member(&self, name: &str) -> Option<&MemberConfig> {
        self.members().find(|m| m.name() == name)
    }

    /// Checks what serde cannot; the error names the field under the
    /// database (`replicas[1].password_file`).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut names = BTreeSet::new();
        for (i, m) in self.members().enumerate() {
            let field = if i == 0 { "primary".to_owned() } else { format!("replicas[{}]", i - 1) };
            if i > 0 && m.name.is_none() {
                return Err((format!("{field}.name"), "a replica needs a name".into()));
            }
            let name = m.name();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')) {
                return Err((format!("{field}.name"), format!("`{name}`: letters, digits, `-` and `_` only")));
            }
            if !names.insert(name) {
                return Err((format!("{field}.name"), format!("`{name}` names two members")));
            }
            if m.host.trim().is_empty() {
                return Err((format!("{field}.host"), "must not be empty".into()));
            }
            if m.port == 0 {
                return Err((format!("{field}.port"), "must not be 0".into()));
            }
            if m.user.trim().is_empty() {
                return Err((format!("{field}.user"), "must not be empty".into()));
            }
            if let Some(file) = &m.password_file
                && let Err(e) = std::fs::metadata(file).and_then(|meta| {
                    if meta.is_file() { Ok(()) } else { Err(std::io::Error::other("not a regular file")) }
                })
            {
                return Err((format!("{field}.password_file"), format!("`{}`: {e}", file.display())));
            }
            if let Some(url) = &m.app_url
                && url.contains('@')
            {
                return Err((
                    format!("{field}.app_url"),
                    "must not carry credentials (they would reach the timeline)".into(),
                ));
            }
        }
        for (field, d) in [
            ("connect_timeout", self.connect_timeout),
            ("query_timeout", self.query_timeout),
            ("promote_timeout", self.promote_timeout),
            ("fence_watch_interval", self.fence_watch_interval),
            ("split_brain_check", self.split_brain_check.unwrap_or(Duration::MAX)),
            ("agent_check_timeout", self.agent_check_timeout),
        ] {
            if d.is_zero() {
                return Err((field.into(), "must be longer than zero".into()));
            }
        }
        let mut nodes = BTreeSet::new();
        for (i, node) in self.client_nodes.iter().enumerate() {
            if node.trim().is_empty() {
                return Err((format!("client_nodes[{i}]"), "must not be empty".into()));
            }
            if !nodes.insert(node.as_str()) {
                return Err((format!("client_nodes[{i}]"), format!("`{node}` is named twice")));
            }
        }
        match self.down_quorum {
            Some(0) => return Err(("down_quorum".into(), "must be at least 1: silence is never evidence".into())),
            Some(n) if !nodes.is_empty() && n as usize > nodes.len() => {
                return Err((
                    "down_quorum".into(),
                    format!("{n} is more than the {} client_nodes: no failover could ever be confirmed", nodes.len()),
                ));
            }
            _ => {}
        }
        if self.agent_check_timeout > Duration::from_secs(60) {
            return Err(("agent_check_timeout".into(), "at most 60s: agents give up on a reach check then".into()));
        }
        match (self.sslmode, &self.sslrootcert) {
            (Some(SslMode::VerifyFull), None) => {
                return Err(("sslrootcert".into(), "sslmode verify-full needs the CA file to trust".into()));
            }
            (Some(SslMode::VerifyFull), Some(file)) => {
                super::tls::roots(file).map_err(|e| ("sslrootcert".to_owned(), e))?;
            }
            (_, Some(_)) => {
                return Err(("sslrootcert".into(), "is read only with sslmode verify-full".into()));
            }
            _ => {}
        }
        if let Some(hook) = &self.repoint_hook {
            let ok = reqwest::Url::parse(hook).ok().is_some_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err(("repoint_hook".into(), format!("`{hook}` is not an http(s) URL")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> DatabaseConfig {
        remedy_shared::config::parse_yaml("test", text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn members_default_their_port_database_and_the_primary_its_name() {
        let db = parse("primary: {host: db-0, user: remedy}\nreplicas: [{name: db-1, host: db-1, user: remedy}]\n");
        assert_eq!(db.validate(), Ok(()));
        assert_eq!(db.primary.name(), "primary");
        assert_eq!(db.member("db-1").map(MemberConfig::app_url), Some("postgresql://db-1:5432/postgres".into()));
        assert_eq!(db.max_lag_bytes, 16 * 1024 * 1024);
        assert_eq!(db.split_brain_check, Some(Duration::from_secs(10)));
        assert_eq!(db.primary.address(), "db-0:5432");
        let off = parse("primary: {host: '::1', user: remedy}\nsplit_brain_check: null\n");
        assert_eq!((off.split_brain_check, off.primary.address()), (None, "[::1]:5432".to_owned()));
    }

    #[test]
    fn bad_members_are_named_by_field() {
        let unnamed = parse("primary: {host: a, user: u}\nreplicas: [{host: b, user: u}]\n");
        assert_eq!(unnamed.validate().map_err(|e| e.0), Err("replicas[0].name".into()));
        let twice = parse("primary: {host: a, user: u}\nreplicas: [{name: primary, host: b, user: u}]\n");
        assert_eq!(twice.validate().map_err(|e| e.0), Err("replicas[0].name".into()));
        let missing = parse("primary: {host: a, user: u, password_file: /nonexistent/pw}\n");
        assert_eq!(missing.validate().map_err(|e| e.0), Err("primary.password_file".into()));
        let secret = parse("primary: {host: a, user: u, app_url: 'postgresql://u:pw@a/db'}\n");
        assert_eq!(secret.validate().map_err(|e| e.0), Err("primary.app_url".into()));
        let unverified = parse("primary: {host: a, user: u}\nsslmode: verify-full\n");
        assert_eq!(unverified.validate().map_err(|e| e.0), Err("sslrootcert".into()));
        let no_ca = parse("primary: {host: a, user: u}\nsslmode: verify-full\nsslrootcert: /nonexistent/ca.crt\n");
        assert_eq!(no_ca.validate().map_err(|e| e.0), Err("sslrootcert".into()));
        let unused = parse("primary: {host: a, user: u}\nsslmode: require\nsslrootcert: /nonexistent/ca.crt\n");
        assert_eq!(unused.validate().map_err(|e| e.0), Err("sslrootcert".into()));
        let bad: Result<DatabaseConfig, _> =
            remedy_shared::config::parse_yaml("test", "primary: {host: a, user: u}\nsslmode: prefer\n");
        assert!(bad.is_err_and(|e| e.to_string().contains("sslmode")));
        let hook = parse("primary: {host: a, user: u}\nrepoint_hook: ftp://x\n");
        assert_eq!(hook.validate().map_err(|e| e.0), Err("repoint_hook".into()));
    }

    #[test]
    fn the_client_nodes_and_their_quorum_must_be_able_to_confirm_anything() {
        let fine = parse("primary: {host: a, user: u}\nclient_nodes: [n1, n2, n3]\ndown_quorum: 3\n");
        assert_eq!(fine.validate(), Ok(()));
        assert_eq!(fine.quorum().min, Some(3));
        let zero = parse("primary: {host: a, user: u}\ndown_quorum: 0\n");
        assert_eq!(zero.validate().map_err(|e| e.0), Err("down_quorum".into()));
        let more = parse("primary: {host: a, user: u}\nclient_nodes: [n1, n2]\ndown_quorum: 3\n");
        assert_eq!(more.validate().map_err(|e| e.0), Err("down_quorum".into()));
        let twice = parse("primary: {host: a, user: u}\nclient_nodes: [n1, n1]\n");
        assert_eq!(twice.validate().map_err(|e| e.0), Err("client_nodes[1]".into()));
        let blank = parse("primary: {host: a, user: u}\nclient_nodes: [' ']\n");
        assert_eq!(blank.validate().map_err(|e| e.0), Err("client_nodes[0]".into()));
        // Any connected agent's node, by default; at least one must answer.
        let default = parse("primary: {host: a, user: u}\n");
        assert_eq!(default.quorum(), remedy_shared::failover::Quorum::default());
    }
}
