//! Redis actions, through Redis's own protocol (the `redis` crate):
//! `redis_ping`, `redis_flush`, `redis_delete_keys` and `cache_warm`, on the
//! instances named under `caches:` in the coordinator's configuration.
//!
//! A flush empties one named logical database (`FLUSHDB`), never the whole
//! server unless the step says `all_databases: true`, which validation only
//! accepts with an approval. Keys are deleted by pattern with `SCAN` in
//! batches (`UNLINK`, so the server frees memory off its main thread and
//! other clients keep being served), never `KEYS`, at most `max_keys` per
//! run; with `scoped_to_users` only the named users' keys (`{user}` in the
//! pattern). A scope that renders empty (a finding that names no user, as
//! many authentication failures do) deletes nothing and says so: an empty
//! scope is never "every user". Warm-up sets are configured lists of
//! commands, run in order.
//! Every action reports the keys it touched.
//!
//! An instance is reached as an ACL user (`username`, else the default
//! user) with the password from `password_file`, and over TLS when `tls`
//! is set: the server's certificate must chain to `tls.ca`, the only root
//! trusted, and carry `tls.server_name` (else `host`); there is no way to
//! skip that check. `tls.cert` and `tls.key` present a client certificate
//! to servers with `tls-auth-clients yes`. The password and the TLS files
//! are read at each connection, so rotating them needs no restart, and the
//! password is never in evidence or logs. A connection that fails says
//! which way: certificate not trusted, handshake refused, credentials
//! refused (`WRONGPASS`), or server unreachable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, TlsCertificates,
};
use remedy_shared::config::duration;
use remedy_shared::runbook::{CacheWarm, RedisDeleteKeys, RedisFlush, RedisPing, USER_PLACEHOLDER};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ActionCall, ActionReport, ActionStatus, Actuator};

/// The kinds this actuator performs.
pub const KINDS: &[&str] = &["redis_ping", "redis_flush", "redis_delete_keys", "cache_warm"];

/// Commands a warm-up set may never contain: they empty, reconfigure or
/// stop the server, or block it.
const FORBIDDEN_IN_WARM_SETS: &[&str] = &[
    "FLUSHALL",
    "FLUSHDB",
    "SHUTDOWN",
    "CONFIG",
    "DEBUG",
    "KEYS",
    "MODULE",
    "ACL",
    "REPLICAOF",
    "SLAVEOF",
    "MIGRATE",
    "SWAPDB",
    "MONITOR",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SYNC",
    "PSYNC",
    "FAILOVER",
    "CLIENT",
    "SELECT",
];

/// `caches.<name>` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Host name or address.
    pub host: String,
    /// Port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// ACL user; the default user when omitted.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password; none: no password is sent.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS to the server; none: plain TCP.
    #[serde(default)]
    pub tls: Option<CacheTls>,
    /// Longest a connection may take to open.
    #[serde(default = "five_seconds", with = "duration")]
    pub connect_timeout: Duration,
    /// Longest one command may take.
    #[serde(default = "five_seconds", with = "duration")]
    pub response_timeout: Duration,
    /// Keys asked of each `SCAN` and deleted per `UNLINK`.
    #[serde(default = "default_batch")]
    pub scan_batch: u32,
    /// Warm-up sets by name.
    #[serde(default)]
    pub warm_sets: BTreeMap<String, WarmSet>,
}

/// A warm-up set: commands run in order on one database.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmSet {
    /// The logical database.
    #[serde(default)]
    pub db: u32,
    /// Each command with its arguments (`[SET, "config:flags", "{...}"]`,
    /// or `[EVAL, "...", "0"]` for a script).
    pub commands: Vec<Vec<String>>,
}

/// `caches.<name>.tls`. Every file is PEM and read at each connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheTls {
    /// The CA certificates the server's certificate must chain to; the
    /// only roots trusted for this instance.
    pub ca: PathBuf,
    /// A client certificate chain, for servers that require one
    /// (`tls-auth-clients yes`); given with `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key; given with `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry when it is not `host`
    /// (a Service address that is not in the certificate, an IP address).
    #[serde(default)]
    pub server_name: Option<String>,
}

impl CacheTls {
    /// Reads and parses the files. The error names the field under the
    /// cache (`tls.key`) and the file.
    fn load(&self) -> Result<TlsCertificates, (String, String)> {
        let read = |field: &str, path: &Path| {
            if path.as_os_str().is_empty() {
                return Err((format!("tls.{field}"), "must name a file".to_owned()));
            }
            std::fs::read(path).map_err(|e| (format!("tls.{field}"), format!("`{}`: {e}", path.display())))
        };
        let certificates = |field: &str, path: &Path| {
            let pem = read(field, path)?;
            let parsed: Result<Vec<CertificateDer<'_>>, _> = CertificateDer::pem_slice_iter(&pem).collect();
            match parsed {
                Ok(certs) if !certs.is_empty() => Ok(pem),
                Ok(_) => Err((format!("tls.{field}"), format!("`{}` holds no PEM certificate", path.display()))),
                Err(e) => Err((format!("tls.{field}"), format!("`{}`: {e}", path.display()))),
            }
        };
        let root_cert = certificates("ca", &self.ca)?;
        let client_tls = match (&self.cert, &self.key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err((
                    "tls.key".into(),
                    "a client certificate needs its key: give tls.cert and tls.key together".into(),
                ));
            }
            (None, Some(_)) => {
                return Err((
                    "tls.cert".into(),
                    "a client key needs its certificate: give tls.cert and tls.key together".into(),
                ));
            }
            (Some(cert), Some(key)) => {
                let client_cert = certificates("cert", cert)?;
                let client_key = read("key", key)?;
                // The key's bytes never reach an error message.
                PrivateKeyDer::from_pem_slice(&client_key).map_err(|e| {
                    ("tls.key".to_owned(), format!("`{}` holds no usable private key: {e}", key.display()))
                })?;
                Some(ClientTlsConfig { client_cert, client_key })
            }
        };
        Ok(TlsCertificates { client_tls, root_cert: Some(root_cert) })
    }

    fn validate(&self) -> Result<(), (String, String)> {
        self.load()?;
        if let Some(name) = &self.server_name
            && ServerName::try_from(name.as_str()).is_err()
        {
            return Err(("tls.server_name".into(), format!("`{name}` is not a DNS name or an IP address")));
        }
        Ok(())
    }
}

fn default_port() -> u16 {
    6379
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn default_batch() -> u32 {
    1000
}

impl CacheConfig {
    /// Checks what serde cannot; the error names the field under the cache.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.host.trim().is_empty() {
            return Err(("host".into(), "must not be empty".into()));
        }
        if self.port == 0 {
            return Err(("port".into(), "must not be 0".into()));
        }
        if let Some(file) = &self.password_file
            && let Err(e) = std::fs::metadata(file)
        {
            return Err(("password_file".into(), format!("`{}`: {e}", file.display())));
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        if self.username.as_deref().is_some_and(|u| u.is_empty() || u.contains(char::is_whitespace)) {
            return Err(("username".into(), "must be a name without spaces".into()));
        }
        if self.connect_timeout.is_zero() || self.response_timeout.is_zero() {
            return Err(("connect_timeout".into(), "timeouts must be longer than zero".into()));
        }
        if self.scan_batch == 0 {
            return Err(("scan_batch".into(), "must be at least 1".into()));
        }
        for (name, set) in &self.warm_sets {
            if set.commands.is_empty() {
                return Err((format!("warm_sets.{name}.commands"), "must list at least one command".into()));
            }
            for (i, command) in set.commands.iter().enumerate() {
                let field = format!("warm_sets.{name}.commands[{i}]");
                let Some(verb) = command.first() else {
                    return Err((field, "an empty command".into()));
                };
                if FORBIDDEN_IN_WARM_SETS.contains(&verb.to_ascii_uppercase().as_str()) {
                    return Err((field, format!("`{verb}` is never part of a warm-up")));
                }
            }
        }
        Ok(())
    }
}

/// Performs the Redis kinds on the configured instances.
#[derive(Debug, Clone, Default)]
pub struct RedisActuator {
    caches: BTreeMap<String, CacheConfig>,
}

impl RedisActuator {
    /// An actuator for `caches` (validated by the configuration).
    pub fn new(caches: BTreeMap<String, CacheConfig>) -> Self {
        RedisActuator { caches }
    }

    fn cache(&self, name: &str) -> Result<&CacheConfig, ActionReport> {
        self.caches.get(name).ok_or_else(|| {
            // As with a webhook that is not configured: rehearsed, and said.
            ActionReport::new(
                ActionStatus::DryRun,
                format!("no cache `{name}` is configured on this coordinator (`caches:`): rehearsed, nothing done"),
            )
            .with("instance", name)
        })
    }
}

fn params<T: DeserializeOwned>(call: &ActionCall) -> Result<T, ActionReport> {
    serde_json::from_value(call.params.clone())
        .map_err(|e| ActionReport::new(ActionStatus::Invalid, format!("{} parameters: {e}", call.kind)))
}

/// A Redis error as one line (the server's answer, or the client's
/// reason), saying what the server refused in plain words first. Never the
/// password: neither the client nor the server repeats it.
fn describe(e: &redis::RedisError) -> String {
    match e.code() {
        Some("NOPERM") => format!("the ACL user may not do this (NOPERM): {e}"),
        Some("NOAUTH") => format!("the server wants a password and none was sent (set password_file): {e}"),
        Some("WRONGPASS") => format!("the credentials were refused (WRONGPASS): {e}"),
        _ => e.to_string(),
    }
}

/// The I/O error under a Redis error, if it is one.
fn io_error(e: &redis::RedisError) -> Option<&std::io::Error> {
    use std::error::Error;
    let source = e.source()?;
    // The client keeps its cause behind an `Arc`, which hides the I/O
    // error from `source()` chains; both shapes are looked through.
    if let Some(shared) = source.downcast_ref::<std::sync::Arc<dyn Error + Send + Sync>>() {
        return shared.downcast_ref::<std::io::Error>();
    }
    source.downcast_ref::<std::io::Error>()
}

/// The TLS error under a Redis error, if the handshake or the TLS layer
/// failed.
fn tls_error(e: &redis::RedisError) -> Option<&rustls::Error> {
    io_error(e)?.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Why a connection to `cache` failed, in the words an operator acts on,
/// with the client's own text after them.
fn connect_failure(cache: &CacheConfig, e: &redis::RedisError) -> String {
    use rustls::{AlertDescription as Alert, CertificateError as Cert};
    let at = format!("{}:{}", cache.host, cache.port);
    let name = cache.tls.as_ref().and_then(|t| t.server_name.as_deref()).unwrap_or(&cache.host);
    if let Some(tls) = tls_error(e) {
        let what = match tls {
            rustls::Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
                "the server's certificate was not trusted: it is not issued by the CA in tls.ca".to_owned()
            }
            rustls::Error::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
                format!("the server's certificate is not valid for `{name}` (tls.server_name names the one it carries)")
            }
            rustls::Error::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
                "the server's certificate has expired".to_owned()
            }
            rustls::Error::InvalidCertificate(Cert::NotValidYet | Cert::NotValidYetContext { .. }) => {
                "the server's certificate is not valid yet".to_owned()
            }
            rustls::Error::InvalidCertificate(_) => "the server's certificate was not accepted".to_owned(),
            rustls::Error::AlertReceived(
                Alert::CertificateRequired
                | Alert::BadCertificate
                | Alert::UnknownCA
                | Alert::CertificateUnknown
                | Alert::UnsupportedCertificate
                | Alert::CertificateExpired
                | Alert::CertificateRevoked
                | Alert::AccessDenied,
            ) => {
                if cache.tls.as_ref().is_some_and(|t| t.cert.is_some()) {
                    "the server refused the TLS handshake: it does not accept the client certificate in tls.cert"
                        .to_owned()
                } else {
                    "the server refused the TLS handshake: it requires a client certificate (tls.cert, tls.key)"
                        .to_owned()
                }
            }
            rustls::Error::AlertReceived(_) => "the server refused the TLS handshake".to_owned(),
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. } => {
                format!("the server at {at} does not speak TLS (is {} its tls-port?)", cache.port)
            }
            _ => "the TLS handshake failed".to_owned(),
        };
        return format!("TLS to {at} failed: {what} ({tls})");
    }
    if e.kind() == redis::ErrorKind::AuthenticationFailed || e.code() == Some("WRONGPASS") {
        let user = cache.username.as_deref().unwrap_or("default");
        return format!(
            "the credentials were refused (WRONGPASS): wrong password, or user `{user}` unknown or disabled ({e})"
        );
    }
    if let Some(io) = io_error(e) {
        use std::io::ErrorKind as Io;
        return match io.kind() {
            Io::ConnectionRefused => format!("unreachable: nothing accepts connections at {at} ({io})"),
            Io::TimedOut => format!("unreachable: {at} did not answer within {:?} ({io})", cache.connect_timeout),
            Io::ConnectionReset | Io::ConnectionAborted | Io::UnexpectedEof | Io::BrokenPipe if cache.tls.is_none() => {
                format!(
                    "the server at {at} closed the connection while it was set up (does it want TLS? set tls) ({io})"
                )
            }
            Io::ConnectionReset | Io::ConnectionAborted | Io::UnexpectedEof | Io::BrokenPipe => {
                format!("the server at {at} closed the connection while it was set up ({io})")
            }
            _ => format!("unreachable: {at}: {io}"),
        };
    }
    describe(e)
}

/// Resolves every name to the configured host, so the TLS name checked
/// (`tls.server_name`) can differ from the address dialled.
struct DialHost(String);

impl redis::io::AsyncDNSResolver for DialHost {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        _name: &'b str,
        port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = std::net::SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((self.0.as_str(), port)).await?;
            Ok(Box::new(addrs) as Box<dyn Iterator<Item = std::net::SocketAddr> + Send>)
        })
    }
}

async fn connect(cache: &CacheConfig, db: u32) -> Result<MultiplexedConnection, String> {
    let mut settings = RedisConnectionInfo::default().set_db(i64::from(db));
    if let Some(user) = &cache.username {
        settings = settings.set_username(user);
    }
    if let Some(file) = &cache.password_file {
        let password = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the password file {}: {e}", file.display()))?;
        settings = settings.set_password(password.trim_end_matches(['\r', '\n']));
    }
    let mut config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(cache.connect_timeout))
        .set_response_timeout(Some(cache.response_timeout));
    let client = match &cache.tls {
        None => {
            let info = ConnectionAddr::Tcp(cache.host.clone(), cache.port)
                .into_connection_info()
                .map_err(|e| describe(&e))?
                .set_redis_settings(settings);
            redis::Client::open(info).map_err(|e| describe(&e))?
        }
        Some(tls) => {
            let certificates = tls.load().map_err(|(field, e)| format!("cannot use {field}: {e}"))?;
            if tls.server_name.is_some() {
                config = config.set_dns_resolver(DialHost(cache.host.clone()));
            }
            let host = tls.server_name.clone().unwrap_or_else(|| cache.host.clone());
            let info = ConnectionAddr::TcpTls { host, port: cache.port, insecure: false, tls_params: None }
                .into_connection_info()
                .map_err(|e| describe(&e))?
                .set_redis_settings(settings);
            redis::Client::build_with_tls(info, certificates).map_err(|e| describe(&e))?
        }
    };
    let connecting = client.get_multiplexed_async_connection_with_config(&config);
    match tokio::time::timeout(cache.connect_timeout + cache.response_timeout, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(connect_failure(cache, &e)),
        Err(_) => Err(format!(
            "unreachable: no connection to {}:{} within {:?}",
            cache.host, cache.port, cache.connect_timeout
        )),
    }
}

/// Escapes what `SCAN MATCH` reads as a wildcard, so a user id is matched
/// literally.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `SCAN MATCH` patterns a deletion uses: one per named user, or the
/// pattern with any user when the step has no `scoped_to_users`. A scope
/// that names nobody and a pattern that would match every key are refused.
fn patterns(p: &RedisDeleteKeys) -> Result<Vec<String>, String> {
    let users: Vec<&str> =
        p.scoped_to_users.as_deref().unwrap_or("").split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
    if p.scoped_to_users.is_some() && users.is_empty() {
        return Err("scoped_to_users names no user here: nothing deleted (an empty scope is never every user)".into());
    }
    if !users.is_empty() && !p.pattern.contains(USER_PLACEHOLDER) {
        return Err(format!("`{}` does not say where the user is ({USER_PLACEHOLDER})", p.pattern));
    }
    let out: Vec<String> = if users.is_empty() {
        vec![p.pattern.replace(USER_PLACEHOLDER, "*")]
    } else {
        users.iter().map(|u| p.pattern.replace(USER_PLACEHOLDER, &glob_escape(u))).collect()
    };
    if let Some(every) = out.iter().find(|pat| pat.chars().all(|c| matches!(c, '*' | '?'))) {
        return Err(format!("`{every}` would match every key"));
    }
    Ok(out)
}

#[tonic::async_trait]
impl Actuator for RedisActuator {
    fn kinds(&self) -> &'static [&'static str] {
        KINDS
    }

    async fn execute(&self, call: &ActionCall) -> ActionReport {
        let outcome = match call.kind.as_str() {
            "redis_ping" => self.ping(call).await,
            "redis_flush" => self.flush(call).await,
            "redis_delete_keys" => self.delete_keys(call).await,
            "cache_warm" => self.warm(call).await,
            other => Err(ActionReport::new(ActionStatus::Invalid, format!("`{other}` is not a Redis action"))),
        };
        outcome.unwrap_or_else(|report| report)
    }
}

impl RedisActuator {
    async fn ping(&self, call: &ActionCall) -> Result<ActionReport, ActionReport> {
        let p: RedisPing = params(call)?;
        let cache = self.cache(&p.instance)?;
        let started = Instant::now();
        let answer = async {
            let mut c = connect(cache, 0).await?;
            redis::cmd("PING").query_async::<String>(&mut c).await.map_err(|e| describe(&e))
        }
        .await;
        let millis = started.elapsed().as_millis();
        Ok(match answer {
            Ok(pong) => ActionReport::new(ActionStatus::Succeeded, format!("{} answered {pong}", p.instance))
                .with("answer", pong)
                .with("millis", millis),
            Err(e) => ActionReport::new(ActionStatus::Failed, format!("{} did not answer PING: {e}", p.instance)),
        }
        .with("instance", &p.instance))
    }

    async fn flush(&self, call: &ActionCall) -> Result<ActionReport, ActionReport> {
        let p: RedisFlush = params(call)?;
        let cache = self.cache(&p.instance)?;
        let (db, all) = match (p.db, p.all_databases) {
            (Some(db), false) => (db, false),
            (None, true) => (0, true),
            _ => {
                return Err(ActionReport::new(
                    ActionStatus::Invalid,
                    "redis_flush needs either `db` or `all_databases: true`",
                ));
            }
        };
        let fail = |e: String| ActionReport::new(ActionStatus::Failed, format!("{}: {e}", p.instance));
        let mut c = connect(cache, db).await.map_err(fail)?;
        let before: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.map_err(|e| fail(describe(&e)))?;
        let what = if all { "every database".to_owned() } else { format!("database {db}") };
        let report = ActionReport::new(ActionStatus::Succeeded, String::new())
            .with("instance", &p.instance)
            .with("scope", &what)
            .with("keys_before", before);
        if call.dry_run {
            let mut r = report;
            r.status = ActionStatus::DryRun;
            r.message = format!("would flush {what} of {} ({before} keys in database {db})", p.instance);
            return Ok(r);
        }
        let verb = if all { "FLUSHALL" } else { "FLUSHDB" };
        let _: String = redis::cmd(verb).query_async(&mut c).await.map_err(|e| fail(describe(&e)))?;
        let after: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.map_err(|e| fail(describe(&e)))?;
        let mut r = report.with("keys_after", after);
        r.message = format!("flushed {what} of {}: {before} keys removed from database {db}", p.instance);
        Ok(r)
    }

    async fn delete_keys(&self, call: &ActionCall) -> Result<ActionReport, ActionReport> {
        let p: RedisDeleteKeys = params(call)?;
        let cache = self.cache(&p.instance)?;
        let patterns = patterns(&p).map_err(|e| ActionReport::new(ActionStatus::Invalid, e))?;
        let fail = |e: String| ActionReport::new(ActionStatus::Failed, format!("{}: {e}", p.instance));
        let mut c = connect(cache, p.db).await.map_err(fail)?;
        let mut tally = Tally::default();
        let limit = call.deadline.saturating_sub(Duration::from_secs(2)).max(Duration::from_secs(1));
        let started = Instant::now();
        let run = tokio::time::timeout(
            limit,
            delete_matching(&mut c, cache.scan_batch, &patterns, p.max_keys, call.dry_run, &mut tally),
        )
        .await;
        let verb = if call.dry_run { "would delete" } else { "deleted" };
        let (status, message) = match run {
            Ok(Ok(())) if call.dry_run => (ActionStatus::DryRun, String::new()),
            Ok(Ok(())) => (ActionStatus::Succeeded, String::new()),
            Ok(Err(e)) => (ActionStatus::Failed, format!("; stopped: {e}")),
            Err(_) => (ActionStatus::TimedOut, format!("; stopped after {limit:?}, more keys may match")),
        };
        let capped = if tally.capped {
            format!(", stopped at max_keys {}: more keys may match", p.max_keys)
        } else {
            String::new()
        };
        let report = ActionReport::new(
            status,
            format!(
                "{verb} {} keys matching {} in database {} of {} ({} batches){capped}{message}",
                tally.deleted,
                patterns.join(", "),
                p.db,
                p.instance,
                tally.batches
            ),
        )
        .with("instance", &p.instance)
        .with("db", p.db)
        .with("patterns", patterns.join(", "))
        .with(if call.dry_run { "matching" } else { "deleted" }, tally.deleted)
        .with("scanned_batches", tally.batches)
        .with("capped", tally.capped)
        .with("millis", started.elapsed().as_millis());
        Ok(report)
    }

    async fn warm(&self, call: &ActionCall) -> Result<ActionReport, ActionReport> {
        let p: CacheWarm = params(call)?;
        let cache = self.cache(&p.instance)?;
        let set = cache.warm_sets.get(&p.set).ok_or_else(|| {
            ActionReport::new(ActionStatus::Invalid, format!("cache `{}` has no warm-up set `{}`", p.instance, p.set))
        })?;
        let report =
            ActionReport::new(ActionStatus::Succeeded, String::new()).with("instance", &p.instance).with("set", &p.set);
        if call.dry_run {
            let mut r = report.with("commands", set.commands.len());
            r.status = ActionStatus::DryRun;
            r.message = format!("would run {} commands of warm-up set {}", set.commands.len(), p.set);
            return Ok(r);
        }
        let fail = |e: String| ActionReport::new(ActionStatus::Failed, format!("{}: {e}", p.instance));
        let mut c = connect(cache, set.db).await.map_err(fail)?;
        for (i, command) in set.commands.iter().enumerate() {
            let Some((verb, args)) = command.split_first() else { continue };
            let mut cmd = redis::cmd(verb);
            for a in args {
                cmd.arg(a);
            }
            if let Err(e) = cmd.query_async::<redis::Value>(&mut c).await {
                let mut r = report.with("commands_run", i);
                r.status = ActionStatus::Failed;
                r.message = format!(
                    "warm-up set {} stopped at command {} of {} ({verb}): {}; the {i} before it ran",
                    p.set,
                    i + 1,
                    set.commands.len(),
                    describe(&e)
                );
                return Ok(r);
            }
        }
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap_or(0);
        let mut r = report.with("commands_run", set.commands.len()).with("keys_in_db", keys);
        r.message = format!("ran {} commands of warm-up set {} on {}", set.commands.len(), p.set, p.instance);
        Ok(r)
    }
}

/// What a deletion has done so far, kept outside the future so a timeout
/// still reports it.
#[derive(Debug, Default)]
struct Tally {
    deleted: u64,
    batches: u64,
    capped: bool,
}

async fn delete_matching(
    c: &mut MultiplexedConnection,
    batch: u32,
    patterns: &[String],
    max_keys: u32,
    dry_run: bool,
    tally: &mut Tally,
) -> Result<(), String> {
    let max = u64::from(max_keys);
    for pattern in patterns {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(batch)
                .query_async(c)
                .await
                .map_err(|e| describe(&e))?;
            tally.batches += 1;
            let room = usize::try_from(max.saturating_sub(tally.deleted)).unwrap_or(usize::MAX);
            let take = keys.len().min(room);
            if take > 0 {
                if dry_run {
                    tally.deleted += take as u64;
                } else {
                    // A key SCAN returns twice, or one that expired since,
                    // is not counted: UNLINK says how many it removed.
                    let removed: u64 =
                        redis::cmd("UNLINK").arg(&keys[..take]).query_async(c).await.map_err(|e| describe(&e))?;
                    tally.deleted += removed;
                }
            }
            if take < keys.len() || tally.deleted >= max {
                tally.capped = true;
                return Ok(());
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deletion(pattern: &str, users: Option<&str>) -> RedisDeleteKeys {
        RedisDeleteKeys {
            instance: "sessions".into(),
            db: 0,
            pattern: pattern.into(),
            scoped_to_users: users.map(str::to_owned),
            max_keys: 10,
        }
    }

    #[test]
    fn users_become_one_literal_pattern_each_and_an_unscoped_step_means_any_user() {
        let scoped = patterns(&deletion("session:{user}:*", Some("alice, bob*,")));
        assert_eq!(scoped, Ok(vec!["session:alice:*".to_owned(), "session:bob\\*:*".to_owned()]));
        assert_eq!(patterns(&deletion("session:{user}:*", None)), Ok(vec!["session:*:*".to_owned()]));
        assert_eq!(patterns(&deletion("session:*", None)), Ok(vec!["session:*".to_owned()]));
    }

    #[test]
    fn a_scope_that_names_nobody_deletes_nothing_rather_than_everyone() {
        for empty in ["", " ", ", ,"] {
            let refused = patterns(&deletion("session:{user}:*", Some(empty))).unwrap_err();
            assert!(refused.contains("names no user") && refused.contains("nothing deleted"), "{empty:?}: {refused}");
        }
    }

    #[test]
    fn patterns_matching_everything_or_without_a_user_place_are_refused() {
        assert!(patterns(&deletion("{user}", None)).is_err_and(|e| e.contains("every key")));
        assert!(patterns(&deletion("session:*", Some("alice"))).is_err_and(|e| e.contains("{user}")));
    }

    #[test]
    fn warm_sets_refuse_commands_that_empty_or_stop_the_server() {
        let text = "host: cache\nwarm_sets:\n  critical: {commands: [[SET, a, b], [flushall]]}\n";
        let cache: CacheConfig = remedy_shared::config::parse_yaml("test", text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cache.validate().map_err(|e| e.0), Err("warm_sets.critical.commands[1]".into()));
    }

    /// A CA certificate, a client certificate and its key, written under `dir`.
    fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let ca = rcgen::generate_simple_self_signed(vec!["redis-ca".to_owned()]).unwrap_or_else(|e| panic!("{e}"));
        let client = rcgen::generate_simple_self_signed(vec!["remedy".to_owned()]).unwrap_or_else(|e| panic!("{e}"));
        let (ca_file, cert, key) = (dir.join("ca.crt"), dir.join("client.crt"), dir.join("client.key"));
        for (path, text) in
            [(&ca_file, ca.cert.pem()), (&cert, client.cert.pem()), (&key, client.signing_key.serialize_pem())]
        {
            std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
        }
        (ca_file, cert, key)
    }

    fn field_of(text: &str) -> Result<(), String> {
        let cache: CacheConfig = remedy_shared::config::parse_yaml("test", text).unwrap_or_else(|e| panic!("{e}"));
        cache.validate().map_err(|(field, _)| field)
    }

    #[test]
    fn tls_settings_are_checked_naming_the_field() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (ca, cert, key) = tls_files(dir.path());
        let (ca, cert, key) = (ca.display(), cert.display(), key.display());
        let ok = format!(
            "host: cache\nusername: remedy\ntls: {{ca: {ca}, cert: {cert}, key: {key}, server_name: redis.cache}}\n"
        );
        assert_eq!(field_of(&ok), Ok(()));
        assert_eq!(field_of(&format!("host: cache\ntls: {{ca: {ca}}}\n")), Ok(()));

        // A certificate without its key, or a key without its certificate.
        assert_eq!(field_of(&format!("host: cache\ntls: {{ca: {ca}, cert: {cert}}}\n")), Err("tls.key".into()));
        assert_eq!(field_of(&format!("host: cache\ntls: {{ca: {ca}, key: {key}}}\n")), Err("tls.cert".into()));
        // Files that are missing or hold the wrong thing.
        assert_eq!(field_of("host: cache\ntls: {ca: /nonexistent/ca.crt}\n"), Err("tls.ca".into()));
        assert_eq!(field_of(&format!("host: cache\ntls: {{ca: {key}}}\n")), Err("tls.ca".into()));
        assert_eq!(
            field_of(&format!("host: cache\ntls: {{ca: {ca}, cert: {key}, key: {key}}}\n")),
            Err("tls.cert".into())
        );
        assert_eq!(
            field_of(&format!("host: cache\ntls: {{ca: {ca}, cert: {cert}, key: {cert}}}\n")),
            Err("tls.key".into())
        );
        assert_eq!(field_of("host: cache\ntls: {ca: ''}\n"), Err("tls.ca".into()));
        assert_eq!(
            field_of(&format!("host: cache\ntls: {{ca: {ca}, server_name: 'not a name'}}\n")),
            Err("tls.server_name".into())
        );
        assert_eq!(field_of("host: cache\nusername: ''\n"), Err("username".into()));
    }

    #[test]
    fn there_is_no_way_to_skip_verifying_the_server() {
        for field in ["insecure: true", "verify: false", "skip_verify: true"] {
            let text = format!("host: cache\ntls: {{ca: /etc/ca.crt, {field}}}\n");
            assert!(remedy_shared::config::parse_yaml::<CacheConfig>("test", &text).is_err(), "{field}");
        }
        assert!(remedy_shared::config::parse_yaml::<CacheConfig>("test", "host: cache\ntls: {}\n").is_err());
    }

    #[test]
    fn connection_failures_say_which_way_they_failed() {
        let text = "host: cache\nport: 6380\nusername: remedy\n";
        let cache: CacheConfig = remedy_shared::config::parse_yaml("test", text).unwrap_or_else(|e| panic!("{e}"));
        let tls = |e: rustls::Error| {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
            connect_failure(&cache, &redis::RedisError::from(io))
        };
        let untrusted = tls(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
        assert!(untrusted.contains("certificate was not trusted"), "{untrusted}");
        let refused = tls(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired));
        assert!(refused.contains("refused the TLS handshake") && refused.contains("tls.cert"), "{refused}");
        let plain = tls(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType));
        assert!(plain.contains("does not speak TLS"), "{plain}");
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let gone = connect_failure(&cache, &redis::RedisError::from(io));
        assert!(gone.starts_with("unreachable") && gone.contains("cache:6380"), "{gone}");
        let auth = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "Password authentication failed"));
        let auth = connect_failure(&cache, &auth);
        assert!(auth.contains("credentials were refused") && auth.contains("`remedy`"), "{auth}");
    }
}
