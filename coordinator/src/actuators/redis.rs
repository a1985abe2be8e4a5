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
//! pattern). Warm-up sets are configured lists of commands, run in order.
//! Every action reports the keys it touched. Passwords come from files,
//! read at each connection, never in evidence or logs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use remedy_shared::config::duration;
use remedy_shared::runbook::{CacheWarm, RedisDeleteKeys, RedisFlush, RedisPing, USER_PLACEHOLDER};
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
/// reason); never the password, which the client does not print.
fn describe(e: &redis::RedisError) -> String {
    e.to_string()
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
    let info = ConnectionAddr::Tcp(cache.host.clone(), cache.port)
        .into_connection_info()
        .map_err(|e| describe(&e))?
        .set_redis_settings(settings);
    let client = redis::Client::open(info).map_err(|e| describe(&e))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(cache.connect_timeout))
        .set_response_timeout(Some(cache.response_timeout));
    let connecting = client.get_multiplexed_async_connection_with_config(&config);
    match tokio::time::timeout(cache.connect_timeout + cache.response_timeout, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no connection within {:?}", cache.connect_timeout)),
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
/// pattern with any user when none is named. A pattern that would match
/// every key is refused.
fn patterns(p: &RedisDeleteKeys) -> Result<Vec<String>, String> {
    let users: Vec<&str> =
        p.scoped_to_users.as_deref().unwrap_or("").split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
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
    fn users_become_one_literal_pattern_each_and_nobody_named_means_any_user() {
        let scoped = patterns(&deletion("session:{user}:*", Some("alice, bob*,")));
        assert_eq!(scoped, Ok(vec!["session:alice:*".to_owned(), "session:bob\\*:*".to_owned()]));
        assert_eq!(patterns(&deletion("session:{user}:*", Some(""))), Ok(vec!["session:*:*".to_owned()]));
        assert_eq!(patterns(&deletion("session:*", None)), Ok(vec!["session:*".to_owned()]));
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
}
