//! The `block_ip`, `unblock_ip` and `list_blocks` directives.
//!
//! Parameters, all strings; any other is refused, naming it:
//!
//! - `block_ip`: `ip` (required; an IPv4 or IPv6 address, or a CIDR with no
//!   host bits set), `duration` (required; `30s`, `1h`, `7d`: at least a
//!   second, at most [`MAX_DURATION`]), `reason` (optional, kept with the
//!   ban). Blocking what is already blocked sets its new end.
//! - `unblock_ip`: `ip`, exactly as it was blocked.
//! - `list_blocks`: none.
//!
//! A block is refused, changing nothing, when it covers loopback,
//! link-local addresses, an address of this node (read from /proc at the
//! time of the directive), a configured pod or service range or a
//! `never_block` range, or when it is wider than `blocking.max_prefix_v4`
//! / `max_prefix_v6` (those need an approval, given by the coordinator's
//! rails, never by the agent); also when it overlaps another ban without
//! being the same prefix, or `blocking.max_bans` are held.
//!
//! Outcomes: `succeeded` (the change is in the table: the reply comes after
//! an enforcement pass); `dry_run` (every check passed and nft accepted the
//! change with `--check`; nothing changed); `refused` (a parameter or a
//! protection; `reason` in the evidence); `failed` (nft failed, the state
//! directory cannot be written; a recorded ban is retried at every pass).
//! The evidence names `ip`, `table`, and for a block `duration_seconds`,
//! `expires_at` and `state`; `list_blocks` lists `bans`, and per ban
//! `<ip>.expires_at`, `<ip>.remaining_seconds`, `<ip>.state`,
//! `<ip>.drifts` and `<ip>.reason` (the first [`LISTED`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use nftables::batch::Batch;

use super::cidr::{Cidr, Refusal};
use super::{Ban, Blocker, Blocking, BlockingStatus, Tracked, ruleset};
use remedy_shared::guard::{Infrastructure, IpNet};

use crate::clock::now;
use crate::handler::{Handlers, Outcome, Reply, Request};
use crate::infrastructure::OwnInfrastructure;
use crate::published::Published;

/// Blocks an address or a prefix for a while.
pub const BLOCK_IP: &str = "block_ip";
/// Lifts a ban.
pub const UNBLOCK_IP: &str = "unblock_ip";
/// Lists the bans and whether each is in force.
pub const LIST_BLOCKS: &str = "list_blocks";
/// The three, as announced.
pub const DIRECTIVES: &[&str] = &[BLOCK_IP, UNBLOCK_IP, LIST_BLOCKS];
/// Longest ban.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Bans listed one by one in `list_blocks`'s evidence.
pub const LISTED: usize = 200;
/// Longest `reason` kept.
const MAX_REASON: usize = 256;

/// What a `block_ip` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockParams {
    /// Address or prefix.
    pub ip: Cidr,
    /// For how long.
    pub duration: Duration,
    /// Why.
    pub reason: String,
}

fn only(params: &HashMap<String, String>, directive: &str, allowed: &[&str]) -> Result<(), String> {
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    match keys.into_iter().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(unknown) if allowed.is_empty() => Err(format!("unknown parameter `{unknown}` ({directive} takes none)")),
        Some(unknown) => Err(format!("unknown parameter `{unknown}` ({directive} takes {})", allowed.join(", "))),
    }
}

fn ip_param(params: &HashMap<String, String>) -> Result<Cidr, String> {
    let text = params.get("ip").ok_or("ip: missing; name an address or a CIDR")?;
    text.parse().map_err(|e| format!("ip: {e}"))
}

/// Reads a `block_ip`'s parameters; the error names the parameter at fault.
pub fn block_params(params: &HashMap<String, String>) -> Result<BlockParams, String> {
    only(params, BLOCK_IP, &["ip", "duration", "reason"])?;
    let ip = ip_param(params)?;
    let text = params.get("duration").ok_or("duration: missing; say for how long, like 1h")?;
    let duration = remedy_shared::config::parse_duration(text).map_err(|e| format!("duration: {e}"))?;
    if duration < Duration::from_secs(1) || duration > MAX_DURATION {
        return Err(format!("duration: `{}` is not between 1s and 365d", text.trim()));
    }
    let reason = params.get("reason").map(|r| r.trim()).unwrap_or_default();
    if reason.len() > MAX_REASON {
        return Err(format!("reason: longer than {MAX_REASON} bytes"));
    }
    Ok(BlockParams { ip, duration, reason: reason.to_owned() })
}

fn refused(message: impl Into<String>) -> Reply {
    Reply::new(Outcome::Refused, message)
}

fn off(status: &Published<BlockingStatus>) -> Reply {
    let why = status.lock().off.clone().unwrap_or_else(|| "not started".into());
    refused(format!("IP blocking is off on this agent ({why})"))
}

/// Serves the three directives: announced while blocking is on, answered
/// with why not while it is off. A block covering any range of `own` is
/// refused, whoever asks.
pub fn register(handlers: &mut Handlers, blocking: &Blocking, own: &OwnInfrastructure) {
    for name in DIRECTIVES {
        let blocker = blocking.blocker.clone();
        let status = blocking.status.clone();
        let own = own.clone();
        let handler = move |request: Request| {
            let blocker = blocker.clone();
            let status = status.clone();
            let own = own.current();
            async move { run(blocker.as_deref(), &status, &own, &request).await }
        };
        if blocking.blocker.is_some() {
            handlers.announce(name, handler);
        } else {
            handlers.answer_unannounced(name, handler);
        }
    }
}

/// Runs one of the three directives.
async fn run(
    blocker: Option<&Blocker>,
    status: &Published<BlockingStatus>,
    own: &Infrastructure,
    request: &Request,
) -> Reply {
    let (params, dry_run) = (&request.params, request.dry_run);
    let reply = match request.action.as_str() {
        BLOCK_IP => match block_params(params) {
            Err(e) => refused(e),
            Ok(wanted) => match blocker {
                None => off(status),
                Some(b) => b.block(&request.id, wanted, own, dry_run).await,
            },
        },
        UNBLOCK_IP => match only(params, UNBLOCK_IP, &["ip"]).and_then(|()| ip_param(params)) {
            Err(e) => refused(e),
            Ok(ip) => match blocker {
                None => off(status),
                Some(b) => b.unblock(ip, dry_run).await,
            },
        },
        _ => match only(params, LIST_BLOCKS, &[]) {
            Err(e) => refused(e),
            Ok(()) => match blocker {
                None => off(status),
                Some(b) => b.list(dry_run).await,
            },
        },
    };
    match (dry_run, reply.outcome) {
        (true, Outcome::Refused | Outcome::Failed) if !reply.message.starts_with("dry run") => {
            Reply { message: format!("dry run: {}", reply.message), ..reply }
        }
        _ => reply,
    }
}

impl Blocker {
    fn refuse(&self, refusal: &Refusal, ip: &Cidr, dry_run: bool, mut evidence: BTreeMap<String, String>) -> Reply {
        if !dry_run {
            self.metrics.refused.get_or_create(&vec![("reason".to_owned(), refusal.reason().to_owned())]).inc();
        }
        evidence.insert("reason".into(), refusal.reason().into());
        tracing::info!(%ip, reason = refusal.reason(), "block refused: {refusal}");
        Reply { outcome: Outcome::Refused, message: format!("not blocking {ip}: {refusal}"), evidence }
    }

    async fn block(&self, directive_id: &str, wanted: BlockParams, own: &Infrastructure, dry_run: bool) -> Reply {
        let ip = wanted.ip;
        let mut evidence = BTreeMap::from([
            ("ip".to_owned(), ip.to_string()),
            ("table".to_owned(), self.table()),
            ("dry_run".to_owned(), dry_run.to_string()),
            ("duration_seconds".to_owned(), wanted.duration.as_secs().to_string()),
            ("blocked".to_owned(), "false".to_owned()),
        ]);
        let node = match remedy_proto::interfaces::local_addresses() {
            Ok(n) => n,
            Err(e) => {
                return Reply {
                    outcome: Outcome::Failed,
                    message: format!("not blocking {ip}: cannot read this node's addresses to protect them: {e}"),
                    evidence,
                };
            }
        };
        let protected = &self.config.protected;
        if let Err(refusal) = protected.check(&ip, &node) {
            return self.refuse(&refusal, &ip, dry_run, evidence);
        }
        let covered = ip.to_string().parse::<IpNet>().ok().and_then(|net| own.covering(&net));
        if let Some((range, owner)) = covered {
            let refusal = Refusal::Infrastructure { range: range.to_string(), owner: owner.to_owned() };
            return self.refuse(&refusal, &ip, dry_run, evidence);
        }
        let mut inner = self.inner.lock().await;
        if let Some(other) = inner.bans.keys().find(|k| **k != ip && k.overlaps(&ip)) {
            return self.refuse(&Refusal::Overlaps(*other), &ip, dry_run, evidence);
        }
        let again = inner.bans.contains_key(&ip);
        if !again && inner.bans.len() >= self.config.max_bans {
            return self.refuse(&Refusal::TooMany(self.config.max_bans), &ip, dry_run, evidence);
        }
        let at = now();
        let expires_at = at.plus(wanted.duration);
        evidence.insert("expires_at".into(), expires_at.to_string());
        let reason = if wanted.reason.is_empty() { String::new() } else { format!(" ({})", wanted.reason) };
        let what = format!("{ip} for {}s until {expires_at}{reason}", wanted.duration.as_secs());
        if dry_run {
            let mut batch = Batch::new();
            ruleset::structure(&mut batch, &self.config.table);
            ruleset::add_bans(&mut batch, &self.config.table, &[(ip, wanted.duration.as_secs())]);
            return match self.apply(batch, true).await {
                Ok(()) => Reply {
                    outcome: Outcome::DryRun,
                    message: format!(
                        "dry run: would block {what} in table {}; nft accepted the change (--check)",
                        self.table()
                    ),
                    evidence,
                },
                Err(e) => Reply {
                    outcome: Outcome::Failed,
                    message: format!("dry run: nft would not take the ban of {ip}: {e}"),
                    evidence,
                },
            };
        }
        let ban =
            Ban { ip, expires_at, set_at: at, reason: wanted.reason.clone(), by: format!("directive {directive_id}") };
        let previous = inner.bans.get(&ip).cloned();
        match inner.bans.get_mut(&ip) {
            Some(t) => {
                t.ban = ban;
                t.refresh = true;
            }
            None => {
                inner.bans.insert(ip, Tracked::new(ban));
            }
        }
        if let Err(e) = self.persist(&inner) {
            match previous {
                Some(p) => inner.bans.insert(ip, p),
                None => inner.bans.remove(&ip),
            };
            return Reply {
                outcome: Outcome::Failed,
                message: format!("not blocking {ip}: the ban cannot be kept: {e}"),
                evidence,
            };
        }
        let pass = self.enforce_one(&mut inner, ip).await;
        let state = inner.bans.get(&ip).map(|t| t.state);
        evidence.insert("state".into(), state.map(state_name).unwrap_or("expired").to_owned());
        match pass {
            Ok(_) => {
                evidence.insert("blocked".into(), "true".into());
                let verb = if again { "blocked again (new end)" } else { "blocked" };
                Reply {
                    outcome: Outcome::Succeeded,
                    message: format!("{verb} {what} in table {} (input and forward)", self.table()),
                    evidence,
                }
            }
            Err(e) => Reply {
                outcome: Outcome::Failed,
                message: format!(
                    "the ban of {ip} is kept but not in force: {e}; tried again every {:?}",
                    self.config.reconcile_interval
                ),
                evidence,
            },
        }
    }

    async fn unblock(&self, ip: Cidr, dry_run: bool) -> Reply {
        let mut evidence = BTreeMap::from([
            ("ip".to_owned(), ip.to_string()),
            ("table".to_owned(), self.table()),
            ("dry_run".to_owned(), dry_run.to_string()),
        ]);
        let mut inner = self.inner.lock().await;
        let Some(previous) = inner.bans.get(&ip).cloned() else {
            evidence.insert("was_blocked".into(), "false".into());
            let outcome = if dry_run { Outcome::DryRun } else { Outcome::Succeeded };
            let prefix = if dry_run { "dry run: " } else { "" };
            return Reply { outcome, message: format!("{prefix}{ip} is not blocked here: nothing to do"), evidence };
        };
        evidence.insert("was_blocked".into(), "true".into());
        if dry_run {
            return Reply {
                outcome: Outcome::DryRun,
                message: format!("dry run: would unblock {ip} (blocked until {})", previous.ban.expires_at),
                evidence,
            };
        }
        inner.bans.remove(&ip);
        if let Err(e) = self.persist(&inner) {
            inner.bans.insert(ip, previous);
            return Reply {
                outcome: Outcome::Failed,
                message: format!("not unblocking {ip}: the change cannot be kept: {e}"),
                evidence,
            };
        }
        inner.removals.insert(ip);
        match self.lift_one(&mut inner, ip).await {
            Ok(_) => Reply {
                outcome: Outcome::Succeeded,
                message: format!("unblocked {ip} in table {}", self.table()),
                evidence,
            },
            Err(e) => Reply {
                outcome: Outcome::Failed,
                message: format!("{ip} is no longer kept, but nft failed to remove it: {e}; tried again at every pass"),
                evidence,
            },
        }
    }

    async fn list(&self, dry_run: bool) -> Reply {
        let mut inner = self.inner.lock().await;
        // Checking the table first makes the list say what is in force now;
        // a rehearsal only reads what the last pass found.
        let pass = if dry_run { Ok(Default::default()) } else { self.pass(&mut inner).await };
        let at = now();
        let mut evidence = BTreeMap::from([
            ("table".to_owned(), self.table()),
            ("bans".to_owned(), inner.bans.len().to_string()),
            ("listed".to_owned(), inner.bans.len().min(LISTED).to_string()),
            ("drift_total".to_owned(), self.metrics.drift.get().to_string()),
        ]);
        let mut drifted = 0;
        for (i, t) in inner.bans.values().enumerate() {
            if t.state != super::Enforcement::Enforced {
                drifted += 1;
            }
            if i >= LISTED {
                continue;
            }
            let s = super::ban_status(t, at);
            let key = |k: &str| format!("{}.{k}", s.ip);
            evidence.insert(key("expires_at"), s.expires_at.to_string());
            evidence.insert(key("remaining_seconds"), s.remaining_seconds.to_string());
            evidence.insert(key("state"), state_name(s.state).to_owned());
            evidence.insert(key("drifts"), s.drifts.to_string());
            evidence.insert(key("reason"), s.reason.clone());
        }
        match pass {
            Ok(pass) => {
                let fixed = if pass.drift.is_empty() {
                    String::new()
                } else {
                    format!("; put back just now: {}", pass.drift.join("; "))
                };
                Reply {
                    outcome: if dry_run { Outcome::DryRun } else { Outcome::Succeeded },
                    message: format!(
                        "{} bans in table {}, {} not enforced at the last check{fixed}",
                        inner.bans.len(),
                        self.table(),
                        drifted
                    ),
                    evidence,
                }
            }
            Err(e) => Reply {
                outcome: Outcome::Failed,
                message: format!("cannot check table {}: {e}", self.table()),
                evidence,
            },
        }
    }
}

fn state_name(s: super::Enforcement) -> &'static str {
    match s {
        super::Enforcement::Pending => "pending",
        super::Enforcement::Enforced => "enforced",
        super::Enforcement::Drifted => "drifted",
        super::Enforcement::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_block_names_an_address_or_prefix_and_a_duration() {
        let p = block_params(&params(&[("ip", "198.51.100.7"), ("duration", "1h"), ("reason", " ssh brute force ")]))
            .unwrap();
        assert_eq!(p.ip.to_string(), "198.51.100.7");
        assert_eq!(p.duration, Duration::from_secs(3600));
        assert_eq!(p.reason, "ssh brute force");
        let p = block_params(&params(&[("ip", "2001:db8::/64"), ("duration", "90s")])).unwrap();
        assert_eq!((p.ip.prefix_len(), p.reason.as_str()), (64, ""));
    }

    #[test]
    fn bad_parameters_are_refused_naming_the_parameter() {
        let cases = [
            (params(&[("duration", "1h")]), "ip: missing"),
            (params(&[("ip", "10.0.0.300"), ("duration", "1h")]), "ip: `10.0.0.300` is not an IPv4 or IPv6"),
            (params(&[("ip", "10.0.0.1/24"), ("duration", "1h")]), "ip: `10.0.0.1/24`: 10.0.0.1/24 has host bits"),
            (params(&[("ip", "10.0.0.1")]), "duration: missing"),
            (params(&[("ip", "10.0.0.1"), ("duration", "soon")]), "duration: invalid duration"),
            (params(&[("ip", "10.0.0.1"), ("duration", "0s")]), "duration: `0s` is not between 1s and 365d"),
            (params(&[("ip", "10.0.0.1"), ("duration", "400d")]), "duration: `400d` is not between"),
            (params(&[("ip", "10.0.0.1"), ("duration", "1h"), ("force", "yes")]), "unknown parameter `force`"),
        ];
        for (p, expected) in cases {
            let e = block_params(&p).unwrap_err();
            assert!(e.starts_with(expected), "{p:?}: {e}");
        }
        assert!(only(&params(&[("ip", "1")]), LIST_BLOCKS, &[]).unwrap_err().contains("list_blocks takes none"));
    }

    #[tokio::test]
    async fn with_blocking_off_each_directive_says_so_after_checking_its_parameters() {
        let status = Published::new(BlockingStatus {
            off: Some("blocking.enabled is false".into()),
            ..BlockingStatus::default()
        });
        let request = |id: &str, action: &str, p: &[(&str, &str)], dry_run: bool| Request {
            id: id.into(),
            action: action.into(),
            params: params(p),
            dry_run,
        };
        let reply = run(
            None,
            &status,
            &Infrastructure::default(),
            &request("d1", BLOCK_IP, &[("ip", "198.51.100.7"), ("duration", "1h")], false),
        )
        .await;
        assert_eq!(reply.outcome, Outcome::Refused);
        assert_eq!(reply.message, "IP blocking is off on this agent (blocking.enabled is false)");
        let reply = run(None, &status, &Infrastructure::default(), &request("d2", UNBLOCK_IP, &[], true)).await;
        assert_eq!(reply.message, "dry run: ip: missing; name an address or a CIDR");
        let reply = run(None, &status, &Infrastructure::default(), &request("d3", LIST_BLOCKS, &[], false)).await;
        assert_eq!(reply.outcome, Outcome::Refused);
    }
}
