//! Cluster-wide IP bans: what the coordinator asked the agents to block,
//! until when, and what each node did with it.
//!
//! The agents enforce a ban in their own nftables table, with its own
//! timeout, so a ban ends on every node at its end even when this
//! coordinator is gone; the record here only says so (`expired` once its
//! end has passed). A ban is sent to every connected agent that announces
//! `block_ip`; an agent that connects later is sent the active bans with
//! what remains of them ([`Bans::reassert`]). A person lifts a ban
//! everywhere with `unblock_ip` ([`Bans::unblock`]).
//!
//! Records live in the store (see [`crate::store::BanRecord`]); writes go
//! straight to it rather than through the writer, since a ban belongs to no
//! incident's transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use remedy_shared::Timestamp;

use crate::actuators::agent::{AgentAnswer, Outcome, send_and_collect};
use crate::clock::Clock;
use crate::directives::{AgentInfo, DirectiveSpec, Directives, Target};
use crate::edge::Edge;
use crate::store::{BanNode, BanRecord, EdgeBan, Store, StoreError};

/// The directive that blocks an address on an agent.
pub const BLOCK_IP: &str = "block_ip";
/// The directive that lifts a ban on an agent.
pub const UNBLOCK_IP: &str = "unblock_ip";
/// How often [`Bans::reassert`] looks for agents that connected since.
pub const REASSERT_EVERY: Duration = Duration::from_secs(2);
/// Longest a lift or a re-send waits for the agents.
const AGENT_WAIT: Duration = Duration::from_secs(15);

/// Where a ban stands.
pub fn ban_state(ban: &BanRecord, at: Timestamp) -> &'static str {
    if ban.unblocked.is_some() {
        "unblocked"
    } else if ban.until <= at {
        "expired"
    } else {
        "active"
    }
}

/// A node's state after a `block_ip` (`lifting: false`) or `unblock_ip`
/// answer. Anything short of done is `failed` with the agent's reason,
/// except the agent's own protections saying no: `refused`.
pub(crate) fn node_state(outcome: Outcome, lifting: bool) -> &'static str {
    match outcome {
        Outcome::Succeeded if lifting => "unblocked",
        Outcome::Succeeded => "enforced",
        Outcome::DryRun => "dry_run",
        Outcome::Refused => "refused",
        Outcome::Failed | Outcome::Unsupported | Outcome::TimedOut | Outcome::Unreachable | Outcome::Sent => "failed",
    }
}

/// Why a lift did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UnblockError {
    /// No ban of the address is recorded.
    #[error("no ban of {0} is recorded")]
    NotFound(String),
    /// No connected agent can lift it.
    #[error("no connected agent announces `unblock_ip`: nothing lifted {0}")]
    NoAgent(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The bans, over the store and the agents' directive hub. Cheap to clone.
#[derive(Clone)]
pub struct Bans {
    store: Arc<dyn Store>,
    directives: Directives,
    edge: Option<Arc<Edge>>,
}

impl fmt::Debug for Bans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bans")
    }
}

impl Bans {
    /// Bans kept in `store`, sent through `directives` and dated by their
    /// clock.
    pub fn new(store: Arc<dyn Store>, directives: Directives) -> Self {
        Bans { store, directives, edge: None }
    }

    /// The time now, by the clock directives are dated by.
    pub fn now(&self) -> Timestamp {
        self.directives.clock().now()
    }

    /// Also blocks at `edge` when a step asks for it.
    pub fn with_edge(mut self, edge: Arc<Edge>) -> Self {
        self.edge = Some(edge);
        self
    }

    /// The edge provider, when one is configured.
    pub fn edge(&self) -> Option<&Edge> {
        self.edge.as_deref()
    }

    /// The connected agents that can run `directive`.
    pub fn agents_with(&self, directive: &str) -> Vec<AgentInfo> {
        self.directives.connected().into_iter().filter(|a| a.capabilities.contains(directive)).collect()
    }

    /// How many agents are connected, whatever they can do.
    pub fn connected_count(&self) -> usize {
        self.directives.connected().len()
    }

    /// Every recorded ban, newest first.
    pub async fn list(&self) -> Result<Vec<BanRecord>, StoreError> {
        let store = self.store.clone();
        let mut bans = blocking(move || store.list_bans()).await?;
        bans.sort_by(|a, b| b.blocked_at.cmp(&a.blocked_at).then_with(|| a.ip.cmp(&b.ip)));
        Ok(bans)
    }

    /// The ban of `ip`, if one is recorded.
    pub async fn get(&self, ip: &str) -> Result<Option<BanRecord>, StoreError> {
        Ok(self.list().await?.into_iter().find(|b| b.ip == ip))
    }

    /// Records `ban`.
    pub async fn put(&self, ban: BanRecord) -> Result<(), StoreError> {
        let store = self.store.clone();
        blocking(move || store.put_ban(&ban)).await
    }

    /// Sends `spec` to the agents `ids` and collects their answers until
    /// `wait` has passed.
    pub(crate) async fn send(&self, ids: BTreeSet<String>, spec: &DirectiveSpec, wait: Duration) -> Vec<AgentAnswer> {
        send_and_collect(&self.directives, &Target::Agents(ids), spec, true, wait).await
    }

    /// Lifts the ban of `ip` on every connected agent that can, and records
    /// who did. The record is kept (state `unblocked`) with each node's
    /// answer; a node that failed to lift it still drops it at its end.
    pub async fn unblock(&self, ip: &str, by: &str) -> Result<BanRecord, UnblockError> {
        let Some(mut ban) = self.get(ip).await? else {
            return Err(UnblockError::NotFound(ip.to_owned()));
        };
        let ids: BTreeSet<String> = self.agents_with(UNBLOCK_IP).into_iter().map(|a| a.agent_id).collect();
        let at_edge = ban.edge.as_ref().is_some_and(|e| e.state == "enforced" || e.state == "failed");
        if ids.is_empty() && !at_edge {
            return Err(UnblockError::NoAgent(ip.to_owned()));
        }
        let answers = if ids.is_empty() {
            Vec::new()
        } else {
            let params = BTreeMap::from([("ip".to_owned(), ip.to_owned())]);
            self.send(ids, &spec(UNBLOCK_IP, params, false, &ban, self.now()), AGENT_WAIT).await
        };
        if at_edge && let Some(edge) = ban.edge.as_mut() {
            lift_at_edge(self.edge(), edge, "unblocked", self.directives.clock()).await;
        }
        let at = self.now();
        for a in answers {
            ban.nodes.insert(
                a.label,
                BanNode { agent_id: a.agent_id, state: node_state(a.outcome, true).to_owned(), reason: a.message, at },
            );
        }
        ban.unblocked = Some((by.to_owned(), at));
        self.put(ban.clone()).await?;
        Ok(ban)
    }

    /// Takes back a block that could not be enforced everywhere it had to
    /// be: a ban that holds on some nodes only is the worst of both (the
    /// address is cut off from part of the cluster, the attacker goes
    /// through the rest). Sends `unblock_ip` to the agents in `applied`
    /// (those that enforced it), lifts the edge rule placed for it, marks
    /// each node `rolled_back` or `rollback_failed` with why, and ends the
    /// record (lifted by `remedy`) so that it is never re-sent to a node
    /// that connects later. Returns, per node, whether it came off and why
    /// not.
    pub(crate) async fn roll_back(
        &self,
        ban: &mut BanRecord,
        applied: BTreeSet<String>,
        why: &str,
    ) -> BTreeMap<String, Result<(), String>> {
        let mut outcome = BTreeMap::new();
        if !applied.is_empty() {
            let params = BTreeMap::from([("ip".to_owned(), ban.ip.clone())]);
            let answers = self.send(applied, &spec(UNBLOCK_IP, params, false, ban, self.now()), AGENT_WAIT).await;
            let at = self.now();
            for a in answers {
                let (state, result) = match a.outcome {
                    Outcome::Succeeded => ("rolled_back", Ok(())),
                    _ => ("rollback_failed", Err(a.message.clone())),
                };
                let reason = match &result {
                    Ok(()) => format!("enforced, then removed: {why}"),
                    Err(e) => format!("enforced, and could not be removed ({e}); it ends by itself at {}", ban.until),
                };
                ban.nodes
                    .insert(a.label.clone(), BanNode { agent_id: a.agent_id, state: state.to_owned(), reason, at });
                outcome.insert(a.label, result);
            }
        }
        if let Some(edge) = ban.edge.as_mut().filter(|e| e.state == "enforced") {
            lift_at_edge(self.edge(), edge, "rolled_back", self.directives.clock()).await;
        }
        ban.unblocked = Some((format!("remedy (rolled back: {why})"), self.now()));
        outcome
    }

    /// Sends the active bans, with what remains of each, to the agents that
    /// announce `block_ip` and were not connected at the previous call
    /// (`seen` carries them from one call to the next). Returns how many
    /// directives went out.
    pub async fn reassert(&self, seen: &mut BTreeSet<String>) -> Result<usize, StoreError> {
        self.expire_at_edge().await?;
        let agents = self.agents_with(BLOCK_IP);
        let current: BTreeSet<String> = agents.iter().map(|a| a.agent_id.clone()).collect();
        let new: BTreeSet<String> = current.difference(seen).cloned().collect();
        *seen = current;
        if new.is_empty() {
            return Ok(0);
        }
        let at = self.now();
        let mut sent = 0;
        for mut ban in self.list().await?.into_iter().filter(|b| ban_state(b, at) == "active") {
            let remaining = ban.until.since(at);
            let seconds = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
            let params = BTreeMap::from([
                ("ip".to_owned(), ban.ip.clone()),
                ("duration".to_owned(), format!("{}s", seconds.max(1))),
                ("reason".to_owned(), ban.reason.clone()),
            ]);
            let answers = self.send(new.clone(), &spec(BLOCK_IP, params, false, &ban, self.now()), AGENT_WAIT).await;
            sent += answers.len();
            let at = self.now();
            for a in answers {
                ban.nodes.insert(
                    a.label.clone(),
                    BanNode {
                        agent_id: a.agent_id,
                        state: node_state(a.outcome, false).to_owned(),
                        reason: format!("sent when the agent connected: {}", a.message),
                        at,
                    },
                );
            }
            self.put(ban).await?;
        }
        Ok(sent)
    }

    /// Removes the edge rules of bans past their end: the edge, unlike the
    /// agents, keeps a rule until it is deleted. A removal that fails is
    /// tried again at the next pass.
    async fn expire_at_edge(&self) -> Result<(), StoreError> {
        if self.edge.is_none() {
            return Ok(());
        }
        let at = self.now();
        for mut ban in self.list().await? {
            let due = ban_state(&ban, at) == "expired"
                && ban
                    .edge
                    .as_ref()
                    .is_some_and(|e| e.state == "enforced" || (e.state == "failed" && !e.rule_id.is_empty()));
            if !due {
                continue;
            }
            if let Some(edge) = ban.edge.as_mut() {
                lift_at_edge(self.edge(), edge, "expired", self.directives.clock()).await;
            }
            self.put(ban).await?;
        }
        Ok(())
    }

    /// Calls [`reassert`](Self::reassert) every [`REASSERT_EVERY`] until
    /// `stopped` completes.
    pub async fn keep_reasserting(self, stopped: impl std::future::Future<Output = ()>) {
        tokio::pin!(stopped);
        let mut seen = BTreeSet::new();
        let mut every = tokio::time::interval(REASSERT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stopped => return,
                _ = every.tick() => {
                    match self.reassert(&mut seen).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(directives = n, "active bans sent to agents that connected"),
                        // The agents are forgotten so the next pass tries again.
                        Err(e) => {
                            seen.clear();
                            tracing::warn!(error = %e, "cannot read the bans to send to new agents");
                        }
                    }
                }
            }
        }
    }
}

/// Deletes `edge`'s rule; its state becomes `done` or `failed` with why.
async fn lift_at_edge(provider: Option<&Edge>, edge: &mut EdgeBan, done: &str, clock: &Clock) {
    let result = match provider {
        _ if edge.rule_id.is_empty() => Err("no rule was created at the edge".to_owned()),
        Some(provider) => provider.unblock(&edge.rule_id).await.map_err(|e| e.to_string()),
        None => Err("no edge provider is configured now".to_owned()),
    };
    edge.at = clock.now();
    match result {
        Ok(()) => {
            edge.state = done.to_owned();
            edge.reason = String::new();
        }
        Err(e) => {
            edge.state = "failed".to_owned();
            edge.reason = e;
        }
    }
}

/// A directive about `ban`, on the record of its incident and step.
fn spec(
    action: &str,
    params: BTreeMap<String, String>,
    dry_run: bool,
    ban: &BanRecord,
    now: Timestamp,
) -> DirectiveSpec {
    DirectiveSpec {
        action: action.to_owned(),
        params,
        deadline: now.plus(AGENT_WAIT),
        dry_run,
        incident_id: ban.incident_id.map(|i| i.to_string()).unwrap_or_default(),
        step_id: ban.step_id.clone(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(until: i64, unblocked: bool) -> BanRecord {
        BanRecord {
            ip: "203.0.113.7".into(),
            reason: "r".into(),
            incident_id: None,
            step_id: "s".into(),
            blocked_at: Timestamp::from_millis(0),
            until: Timestamp::from_millis(until),
            nodes: BTreeMap::new(),
            unblocked: unblocked.then(|| ("ann".to_owned(), Timestamp::from_millis(5))),
            edge: None,
        }
    }

    #[test]
    fn a_ban_is_active_until_its_end_or_its_lifting() {
        let at = Timestamp::from_millis(1_000);
        assert_eq!(ban_state(&ban(2_000, false), at), "active");
        assert_eq!(ban_state(&ban(1_000, false), at), "expired");
        assert_eq!(ban_state(&ban(2_000, true), at), "unblocked");
    }

    #[test]
    fn only_the_agents_protections_read_as_refused() {
        assert_eq!(node_state(Outcome::Succeeded, false), "enforced");
        assert_eq!(node_state(Outcome::Succeeded, true), "unblocked");
        assert_eq!(node_state(Outcome::Refused, false), "refused");
        for o in [Outcome::Failed, Outcome::Unsupported, Outcome::TimedOut, Outcome::Unreachable] {
            assert_eq!(node_state(o, false), "failed");
        }
    }

    #[tokio::test]
    async fn bans_survive_in_the_store_and_list_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let bans = Bans::new(store.clone(), Directives::default());
        let mut old = ban(9_000, false);
        old.ip = "198.51.100.1".into();
        bans.put(old).await.unwrap();
        let mut new = ban(9_000, false);
        new.blocked_at = Timestamp::from_millis(10);
        bans.put(new).await.unwrap();
        let listed: Vec<String> = bans.list().await.unwrap().into_iter().map(|b| b.ip).collect();
        assert_eq!(listed, vec!["203.0.113.7", "198.51.100.1"]);
        drop(bans);
        drop(store);
        let again = crate::store::embedded::EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(again.list_bans().unwrap().len(), 2);
        assert!(again.load().unwrap().guard.is_none(), "bans are not the rails' memory");
    }

    #[tokio::test]
    async fn lifting_needs_a_recorded_ban_and_an_agent() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let bans = Bans::new(store, Directives::default());
        assert!(matches!(bans.unblock("203.0.113.7", "ann").await, Err(UnblockError::NotFound(_))));
        bans.put(ban(i64::MAX, false)).await.unwrap();
        assert!(matches!(bans.unblock("203.0.113.7", "ann").await, Err(UnblockError::NoAgent(_))));
    }
}
