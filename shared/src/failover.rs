//! PostgreSQL failover, decided: what a member answered (its role, WAL
//! positions and timeline), the plan made from the answers of all of them
//! and from what the agents saw of the primary (which replica, how far
//! behind, whom to fence, or why not at all), and which of two members
//! taking writes is the newer primary. Pure, so every refusal is tested
//! without a server; the coordinator's actuator asks the members and the
//! agents and carries the plan out.
//!
//! A primary that does not answer the coordinator is not a dead primary:
//! the coordinator may be the one cut off. It is replaced only on positive
//! evidence ([`DownEvidence`]): a quorum of the nodes that run its clients
//! answered that they cannot reach it either, or it was fenced and the fence
//! confirmed, or a person approved promoting anyway after being told, in
//! the words of [`TWO_WRITERS_RISK`], what that may cost. Silence (no agent
//! connected, an agent that did not answer, the coordinator's own failed
//! connection) is never evidence.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::finding::{Finding, FindingKind, FindingState, Severity};
use crate::time::Timestamp;

/// How long the finding about a split brain the guard fenced stays: long
/// enough to be seen, and for a runbook on it to run.
const FENCED_FINDING_LIFETIME: Duration = Duration::from_secs(3600);

/// What a person accepts when approving a failover nothing showed safe, in
/// the plain words the approval request states.
pub const TWO_WRITERS_RISK: &str = "no node could confirm the primary is down; promoting may create two writers";

/// A WAL position, parsed from PostgreSQL's `X/Y` text.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A WAL position as PostgreSQL writes it.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The timeline in a WAL file name (`00000002000000000000000A`: its first
/// eight hex digits).
pub fn timeline_of_walfile(name: &str) -> Option<u32> {
    let digits = name.get(..8).filter(|_| name.len() == 24)?;
    u32::from_str_radix(digits, 16).ok()
}

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes writes: out of recovery and not sealed by a fence. Read-only
    /// by default is not enough to be anything else, since any session may
    /// still ask for a read-write transaction.
    Primary,
    /// Out of recovery, read-only by default, and nobody but the
    /// coordinator's own role may log in: a fenced old primary.
    Fenced,
    /// In recovery: a standby, promotable.
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Fenced => "fenced",
            Role::Replica => "replica",
        }
    }
}

/// One member as it answered (or did not).
#[derive(Debug, Clone)]
pub struct MemberState {
    pub name: String,
    pub answer: Result<Status, String>,
}

/// What an answering member said.
#[derive(Debug, Clone)]
pub struct Status {
    pub role: Role,
    /// A primary's current WAL position.
    pub current_lsn: Option<u64>,
    /// A replica's received and replayed positions.
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    /// The timeline a member out of recovery writes on. A promotion starts
    /// a new one, higher than any before it on that history, so the member
    /// with the higher timeline is the newer primary whatever anyone
    /// remembers.
    pub timeline: Option<u32>,
    /// A replica asked to promote that has not finished (its `promote`
    /// signal file is there): a promotion under way, whoever asked for it.
    pub promoting: bool,
    /// How long `SELECT 1` took, connection included.
    pub millis: u128,
}

impl Status {
    /// The furthest position this member knows of.
    pub fn known_lsn(&self) -> Option<u64> {
        [self.current_lsn, self.receive_lsn, self.replay_lsn].into_iter().flatten().max()
    }
}

/// What a failover will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The replica to promote.
    pub candidate: String,
    /// Its replayed position now.
    pub candidate_replay_lsn: u64,
    /// The furthest position any member or the last probe knew of.
    pub reference_lsn: u64,
    /// Bytes the candidate has not replayed.
    pub lag_bytes: u64,
    /// Members that answer and take writes: fenced before the promotion.
    pub to_fence: Vec<String>,
    /// The current primary, when it did not answer (fenced when it does).
    pub unreachable_primary: Option<String>,
    /// Why that primary may be replaced; `None` when it answered.
    pub down_evidence: Option<DownEvidence>,
}

/// What the plan is made from.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub members: &'a [MemberState],
    /// The replica the step names, if it does.
    pub preferred: Option<&'a str>,
    /// The member believed to be the primary (configured, or promoted by
    /// the last failover).
    pub current_primary: &'a str,
    /// The primary's furthest position seen by earlier probes.
    pub last_primary_lsn: Option<u64>,
    pub max_lag_bytes: u64,
    pub fence_primary: bool,
    /// A promotion asked earlier and never confirmed.
    pub pending_promotion: Option<&'a str>,
    /// What each agent's node said of the current primary, asked only when
    /// it did not answer the coordinator.
    pub nodes: &'a [NodeReport],
    /// Whose word counts that the primary is down.
    pub quorum: &'a Quorum,
    /// The current primary was fenced and the fence confirmed (or a probe
    /// saw it fenced), and no probe saw it take writes since.
    pub primary_fenced: bool,
    /// A person approved this failover after being told that nothing
    /// showed the primary down ([`Refusal::override_risk`]).
    pub override_accepted: bool,
}

/// What one node said when asked whether it reaches the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// PostgreSQL answered on the primary's address from this node.
    Reached,
    /// The node tried and could not reach it (the reason): its clients
    /// cannot write to it either.
    CannotReach(String),
    /// No verdict (the agent did not answer in time, was not asked, or
    /// could not try): silence, never evidence.
    Silent(String),
}

/// One node's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// The node.
    pub node: String,
    /// What it said.
    pub reach: Reach,
}

/// Whose word counts that a primary the coordinator cannot reach is down:
/// the nodes that run its clients, and how many of them must say so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quorum {
    /// The nodes whose applications use the database; empty: every node
    /// whose agent was asked.
    pub client_nodes: Vec<String>,
    /// How many of them must answer that they cannot reach the primary;
    /// `None`: a majority of them (at least one).
    pub min: Option<u32>,
}

impl Quorum {
    /// Whether `nodes` make the quorum: `Ok` with the nodes that cannot
    /// reach the primary, `Err` with what is missing. A node counts once,
    /// and only for what it said: a silent one counts against.
    fn weigh(&self, nodes: &[NodeReport]) -> Result<Vec<String>, Shortfall> {
        let eligible: Vec<&str> = if self.client_nodes.is_empty() {
            let mut all: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
            all.sort_unstable();
            all.dedup();
            all
        } else {
            self.client_nodes.iter().map(String::as_str).collect()
        };
        let cannot: Vec<String> = eligible
            .iter()
            .filter(|node| {
                let mut answers = nodes.iter().filter(|n| n.node == **node).map(|n| &n.reach).peekable();
                answers.peek().is_some() && answers.all(|r| matches!(r, Reach::CannotReach(_)))
            })
            .map(|node| (*node).to_owned())
            .collect();
        let of = u32::try_from(eligible.len()).unwrap_or(u32::MAX);
        let needed = self.min.unwrap_or(of / 2 + 1).max(1);
        if u32::try_from(cannot.len()).unwrap_or(u32::MAX) >= needed {
            return Ok(cannot);
        }
        let silent =
            eligible.iter().filter(|node| !cannot.iter().any(|c| c == *node)).map(|node| (*node).to_owned()).collect();
        Err(Shortfall { cannot_reach: cannot, silent, needed, of, configured: !self.client_nodes.is_empty() })
    }
}

/// Why the nodes' word was not enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// The nodes that answered that they cannot reach the primary.
    pub cannot_reach: Vec<String>,
    /// The nodes that count and said nothing usable.
    pub silent: Vec<String>,
    /// How many were needed.
    pub needed: u32,
    /// Of how many nodes that count.
    pub of: u32,
    /// Whether the nodes are configured (`client_nodes`) or were every
    /// agent asked.
    pub configured: bool,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.of == 0 {
            return f.write_str("no agent answered for the nodes that run its clients");
        }
        let which = if self.configured { "nodes that run its clients" } else { "nodes asked" };
        write!(
            f,
            "{} of the {} {which} answered that they cannot reach it ({} needed)",
            self.cannot_reach.len(),
            self.of,
            self.needed
        )?;
        if !self.silent.is_empty() {
            write!(f, "; no verdict from {}", self.silent.join(", "))?;
        }
        Ok(())
    }
}

/// Why a primary that did not answer the coordinator may be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownEvidence {
    /// Enough of the nodes that run its clients answered that they cannot
    /// reach it: whatever it still is, their applications cannot write to
    /// it.
    NodesCannotReach {
        /// The nodes that said so.
        nodes: Vec<String>,
    },
    /// It was fenced and the fence confirmed, and it was not seen taking
    /// writes since.
    Fenced,
    /// A person approved promoting without evidence, told the risk.
    Overridden,
}

impl DownEvidence {
    /// The evidence in words, for the timeline.
    pub fn describe(&self, primary: &str) -> String {
        match self {
            DownEvidence::NodesCannotReach { nodes } => {
                format!("{primary} does not answer the coordinator, and cannot be reached from {}", nodes.join(", "))
            }
            DownEvidence::Fenced => format!("{primary} does not answer and was fenced (confirmed) before"),
            DownEvidence::Overridden => {
                format!(
                    "{primary} does not answer and nothing showed it down: a person approved anyway ({TWO_WRITERS_RISK})"
                )
            }
        }
    }
}

/// Why a member cannot be the replica promoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfit {
    /// The name is not one of the database's members: a typo in the step,
    /// or a member since removed from the configuration.
    #[error("not a member of this database")]
    NotAMember,
    /// The member did not answer the probe; the probe's error says why.
    #[error("does not answer ({0})")]
    Silent(String),
    /// The member answered, but out of recovery: promoting it means nothing.
    #[error("is a {}, not a replica", .0.as_str())]
    NotAReplica(Role),
}

/// Why a failover was refused. Every refusal changes nothing; each says what
/// a person would have to settle before another attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An earlier failover asked this replica to promote and never saw it
    /// finish: promoting another could make two primaries, so a person
    /// decides.
    #[error(
        "a promotion of {replica} was asked earlier and never confirmed: promoting another could make two \
         primaries; a person decides"
    )]
    PromotionUnconfirmed {
        /// The replica asked to promote.
        replica: String,
    },
    /// A replica says it is being promoted (its `promote` signal file is
    /// there), whoever asked: a person decides.
    #[error(
        "{replica} is being promoted (asked earlier and not finished): promoting another could make two \
         primaries; a person decides"
    )]
    PromotionUnderWay {
        /// The replica being promoted.
        replica: String,
    },
    /// Members still take writes and the step does not allow fencing them:
    /// the step must set `fence_primary`, or the writers must stop first.
    #[error("{} still takes writes and fence_primary is false: promoting would make two primaries", .writers.join(", "))]
    PrimaryNotFenced {
        /// The members that answered as primaries.
        writers: Vec<String>,
    },
    /// The replica the step names cannot be promoted.
    #[error("replica {replica} cannot be promoted: it {why}")]
    NamedReplicaUnfit {
        /// The replica the step named.
        replica: String,
        /// What is wrong with it.
        why: Unfit,
    },
    /// No member but the primary answers as a replica.
    #[error("no healthy replica to promote: {}", others(.members))]
    NoHealthyReplica {
        /// Every member but the current primary, and why it is not a
        /// candidate; empty when none is configured.
        members: Vec<(String, Unfit)>,
    },
    /// The candidate has not replayed enough of the WAL: promoting it would
    /// lose the writes between, so the step's `max_lag_bytes` refuses it.
    #[error(
        "replica {replica} has replayed up to {} but WAL reaches {}: {lag_bytes} bytes behind, over the limit of \
         {max_lag_bytes} (max_lag_bytes); promoting it would lose those writes",
        format_lsn(*.replay_lsn),
        format_lsn(*.reference_lsn)
    )]
    LagOverLimit {
        /// The candidate.
        replica: String,
        /// Its replayed position.
        replay_lsn: u64,
        /// The furthest position any member or the last probe knew of.
        reference_lsn: u64,
        /// How far behind it is, in bytes.
        lag_bytes: u64,
        /// The limit.
        max_lag_bytes: u64,
    },
    /// The primary does not answer the coordinator but answers agents: the
    /// coordinator is cut off from it, nobody here could fence it, and the
    /// applications on those nodes may still be writing to it.
    #[error(
        "{primary} does not answer the coordinator but answers from {}: the coordinator is cut off from it, not \
         the primary down; promoting now would make two primaries",
        .seen_from.join(", ")
    )]
    PrimaryReachedFromNodes {
        /// The current primary.
        primary: String,
        /// The nodes whose agents reached it.
        seen_from: Vec<String>,
    },
    /// The primary does not answer the coordinator and nothing shows it is
    /// down or fenced: too few of the nodes that run its clients said they
    /// cannot reach it. It may be alive and taking writes from them; only a
    /// person who accepts that may promote ([`Refusal::override_risk`]).
    #[error(
        "{primary} does not answer the coordinator and nothing shows it down or fenced: {nodes}: \
         {TWO_WRITERS_RISK}; a person may approve promoting anyway"
    )]
    PrimaryDownUnconfirmed {
        /// The current primary.
        primary: String,
        /// What the nodes said, and what was missing.
        nodes: Shortfall,
    },
}

impl Refusal {
    /// What a person accepts by approving the failover anyway, in plain
    /// words, when this refusal is one a person may override: only the
    /// want of evidence that the primary is down. Every other refusal
    /// stands whoever approves.
    pub fn override_risk(&self) -> Option<String> {
        match self {
            Refusal::PrimaryDownUnconfirmed { primary, nodes } => {
                Some(format!("{TWO_WRITERS_RISK} ({primary} does not answer the coordinator; {nodes})"))
            }
            _ => None,
        }
    }
}

/// The members of a [`Refusal::NoHealthyReplica`], as its message lists them.
fn others(members: &[(String, Unfit)]) -> String {
    if members.is_empty() {
        return "none is configured".to_owned();
    }
    members.iter().map(|(name, why)| format!("{name} {why}")).collect::<Vec<_>>().join("; ")
}

/// Decides, or says why not. A refusal changes nothing.
pub fn plan(i: &Inputs<'_>) -> Result<Plan, Refusal> {
    if let Some(pending) = i.pending_promotion {
        return Err(Refusal::PromotionUnconfirmed { replica: pending.to_owned() });
    }
    let answering = |role: Role| {
        i.members.iter().filter_map(move |m| m.answer.as_ref().ok().filter(|s| s.role == role).map(|s| (m, s)))
    };
    if let Some((promoting, _)) = answering(Role::Replica).find(|(_, s)| s.promoting) {
        return Err(Refusal::PromotionUnderWay { replica: promoting.name.clone() });
    }
    let to_fence: Vec<String> = answering(Role::Primary).map(|(m, _)| m.name.clone()).collect();
    if !to_fence.is_empty() && !i.fence_primary {
        return Err(Refusal::PrimaryNotFenced { writers: to_fence });
    }
    let replicas: Vec<_> = answering(Role::Replica).collect();
    let why_not = |name: &str| match i.members.iter().find(|m| m.name == name) {
        None => Unfit::NotAMember,
        Some(m) => match &m.answer {
            Err(e) => Unfit::Silent(e.clone()),
            Ok(s) => Unfit::NotAReplica(s.role),
        },
    };
    let chosen = match i.preferred {
        Some(name) => match replicas.iter().find(|(m, _)| m.name == name) {
            Some(r) => *r,
            None => return Err(Refusal::NamedReplicaUnfit { replica: name.to_owned(), why: why_not(name) }),
        },
        None => {
            let best = replicas.iter().copied().reduce(|best, next| {
                if next.1.replay_lsn.unwrap_or(0) > best.1.replay_lsn.unwrap_or(0) { next } else { best }
            });
            match best {
                Some(b) => b,
                None => {
                    let members = i
                        .members
                        .iter()
                        .filter(|m| m.name != i.current_primary)
                        .map(|m| (m.name.clone(), why_not(&m.name)))
                        .collect();
                    return Err(Refusal::NoHealthyReplica { members });
                }
            }
        }
    };
    let candidate_replay_lsn = chosen.1.replay_lsn.unwrap_or(0);
    let reference_lsn = i
        .members
        .iter()
        .filter_map(|m| m.answer.as_ref().ok())
        .filter_map(|s| s.known_lsn())
        .chain(i.last_primary_lsn)
        .max()
        .unwrap_or(candidate_replay_lsn)
        .max(candidate_replay_lsn);
    let lag_bytes = reference_lsn - candidate_replay_lsn;
    if lag_bytes > i.max_lag_bytes {
        return Err(Refusal::LagOverLimit {
            replica: chosen.0.name.clone(),
            replay_lsn: candidate_replay_lsn,
            reference_lsn,
            lag_bytes,
            max_lag_bytes: i.max_lag_bytes,
        });
    }
    let primary_answered = i.members.iter().any(|m| m.name == i.current_primary && m.answer.is_ok());
    let down_evidence = if primary_answered { None } else { Some(down_evidence(i)?) };
    Ok(Plan {
        candidate: chosen.0.name.clone(),
        candidate_replay_lsn,
        reference_lsn,
        lag_bytes,
        to_fence,
        unreachable_primary: (!primary_answered).then(|| i.current_primary.to_owned()),
        down_evidence,
    })
}

/// Why the current primary, which did not answer the coordinator, may be
/// replaced, or the refusal. Asked last, so a person is asked to override
/// only a failover nothing else refuses.
fn down_evidence(i: &Inputs<'_>) -> Result<DownEvidence, Refusal> {
    let mut reached: Vec<String> =
        i.nodes.iter().filter(|n| n.reach == Reach::Reached).map(|n| n.node.clone()).collect();
    reached.sort_unstable();
    reached.dedup();
    if !reached.is_empty() {
        // The applications on those nodes may still be writing to it, and
        // nobody here could fence it: promoting would make two primaries,
        // whoever approves.
        return Err(Refusal::PrimaryReachedFromNodes { primary: i.current_primary.to_owned(), seen_from: reached });
    }
    if i.primary_fenced {
        return Ok(DownEvidence::Fenced);
    }
    match i.quorum.weigh(i.nodes) {
        Ok(nodes) => Ok(DownEvidence::NodesCannotReach { nodes }),
        Err(_) if i.override_accepted => Ok(DownEvidence::Overridden),
        Err(nodes) => Err(Refusal::PrimaryDownUnconfirmed { primary: i.current_primary.to_owned(), nodes }),
    }
}

/// The members taking writes, and which of them to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writers {
    /// Nobody takes writes.
    None,
    /// One primary, as it should be.
    One(String),
    /// Several take writes: `keep` is on the highest timeline, the others
    /// are on older histories and must be fenced.
    Diverged { keep: String, fence: Vec<String> },
    /// Several take writes and their timelines do not say which is newer.
    Undecidable(String),
}

/// Who takes writes, from one probe of every member.
pub fn writers(members: &[MemberState]) -> Writers {
    let writable: Vec<(&str, Option<u32>)> = members
        .iter()
        .filter_map(|m| m.answer.as_ref().ok().filter(|s| s.role == Role::Primary).map(|s| (&*m.name, s.timeline)))
        .collect();
    match writable.as_slice() {
        [] => Writers::None,
        [(one, _)] => Writers::One((*one).to_owned()),
        many => {
            let describe = || {
                many.iter()
                    .map(|(name, tli)| match tli {
                        Some(t) => format!("{name} on timeline {t}"),
                        None => format!("{name} on an unknown timeline"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let highest = many.iter().filter_map(|(_, t)| *t).max();
            let on_highest: Vec<&str> =
                many.iter().filter(|(_, t)| t.is_some() && *t == highest).map(|(n, _)| *n).collect();
            match on_highest.as_slice() {
                [keep] if many.iter().all(|(_, t)| t.is_some()) => Writers::Diverged {
                    keep: (*keep).to_owned(),
                    fence: many.iter().map(|(n, _)| *n).filter(|n| n != keep).map(str::to_owned).collect(),
                },
                _ => Writers::Undecidable(format!(
                    "{} take writes and their timelines do not say which is newer: fence all but one by hand",
                    describe()
                )),
            }
        }
    }
}

/// The coordinator's finding about two writers on `database`: a warning
/// once the older ones are fenced (`fenced`), critical while nobody could
/// tell which is newer, and cleared when one writer is left. `None` when
/// there is nothing to say.
pub fn split_brain_finding(
    database: &str,
    writers: &Writers,
    fenced: &[String],
    was_undecidable: bool,
    now: Timestamp,
) -> Option<Finding> {
    let (severity, state, summary, expires_at, mut labels) = match writers {
        Writers::Diverged { keep, .. } if !fenced.is_empty() => (
            Severity::Warning,
            FindingState::Active,
            format!(
                "{} took writes beside {keep}, the primary on a newer timeline, and were fenced (closed to every session but the coordinator's); \
                 rewind or rebuild them as standbys",
                fenced.join(", ")
            ),
            Some(now.plus(FENCED_FINDING_LIFETIME)),
            BTreeMap::from([("kept".to_owned(), keep.clone()), ("fenced".to_owned(), fenced.join(","))]),
        ),
        Writers::Undecidable(why) if !was_undecidable => {
            (Severity::Critical, FindingState::Active, why.clone(), None, BTreeMap::new())
        }
        Writers::None | Writers::One(_) if was_undecidable => (
            Severity::Critical,
            FindingState::Cleared,
            format!("`{database}` has at most one member taking writes again"),
            None,
            BTreeMap::new(),
        ),
        _ => return None,
    };
    labels.insert("database".to_owned(), database.to_owned());
    Some(Finding {
        kind: FindingKind::DatabaseSplitBrain,
        severity,
        state,
        target: format!("database/{database}"),
        labels,
        evidence: BTreeMap::new(),
        summary,
        first_seen: now,
        last_seen: now,
        expires_at,
    })
}

#[cfg(test)]
mod tests {

    use super::*;

    fn up(name: &str, role: Role, replay: u64) -> MemberState {
        let status = Status {
            role,
            current_lsn: (role != Role::Replica).then_some(replay),
            receive_lsn: (role == Role::Replica).then_some(replay),
            replay_lsn: (role == Role::Replica).then_some(replay),
            timeline: (role != Role::Replica).then_some(1),
            promoting: false,
            millis: 1,
        };
        MemberState { name: name.into(), answer: Ok(status) }
    }

    fn down(name: &str) -> MemberState {
        MemberState { name: name.into(), answer: Err("connection refused".into()) }
    }

    static ANY_NODE: Quorum = Quorum { client_nodes: Vec::new(), min: None };

    fn inputs(members: &[MemberState]) -> Inputs<'_> {
        Inputs {
            members,
            preferred: None,
            current_primary: "primary",
            last_primary_lsn: None,
            max_lag_bytes: 1024,
            fence_primary: true,
            pending_promotion: None,
            nodes: &[],
            quorum: &ANY_NODE,
            primary_fenced: false,
            override_accepted: false,
        }
    }

    fn node(name: &str, reach: Reach) -> NodeReport {
        NodeReport { node: name.into(), reach }
    }

    fn cannot(name: &str) -> NodeReport {
        node(name, Reach::CannotReach("no answer within 2000 ms".into()))
    }

    fn silent(name: &str) -> NodeReport {
        node(name, Reach::Silent("did not answer in time".into()))
    }

    #[test]
    fn the_least_lagging_healthy_replica_is_chosen_and_a_silent_primary_is_watched() {
        let members = [down("primary"), up("r1", Role::Replica, 900), up("r2", Role::Replica, 1000), down("r3")];
        let nodes = [cannot("node-a")];
        let mut confirmed = inputs(&members);
        confirmed.nodes = &nodes;
        let p = plan(&confirmed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((p.candidate.as_str(), p.lag_bytes, p.reference_lsn), ("r2", 0, 1000));
        assert_eq!(p.unreachable_primary.as_deref(), Some("primary"));
        assert_eq!(p.down_evidence, Some(DownEvidence::NodesCannotReach { nodes: vec!["node-a".into()] }));
        assert!(p.to_fence.is_empty());
    }

    #[test]
    fn silence_is_never_evidence_that_the_primary_is_down() {
        let members = [down("primary"), up("r1", Role::Replica, 1000)];
        // No agent at all: the coordinator's own failed connection is all
        // there is, and it may be the one cut off.
        let refused = plan(&inputs(&members)).expect_err("nothing shows the primary down");
        assert!(matches!(&refused, Refusal::PrimaryDownUnconfirmed { primary, .. } if primary == "primary"));
        assert_eq!(
            refused.to_string(),
            "primary does not answer the coordinator and nothing shows it down or fenced: no agent answered for the \
             nodes that run its clients: no node could confirm the primary is down; promoting may create two \
             writers; a person may approve promoting anyway"
        );
        assert_eq!(
            refused.override_risk().as_deref(),
            Some(
                "no node could confirm the primary is down; promoting may create two writers (primary does not \
                 answer the coordinator; no agent answered for the nodes that run its clients)"
            )
        );
        // Agents that did not answer are no better than none, and count
        // against the majority.
        let nodes = [cannot("node-a"), silent("node-b"), silent("node-c")];
        let mut quiet = inputs(&members);
        quiet.nodes = &nodes;
        let refused = plan(&quiet).expect_err("one of three is no majority");
        assert!(
            refused.to_string().contains(
                "1 of the 3 nodes asked answered that they cannot reach it (2 needed); no verdict from node-b, node-c"
            ),
            "{refused}"
        );
        // A majority that cannot reach it is evidence.
        let nodes = [cannot("node-a"), silent("node-b"), cannot("node-c")];
        quiet.nodes = &nodes;
        assert_eq!(
            plan(&quiet).map(|p| p.down_evidence),
            Ok(Some(DownEvidence::NodesCannotReach { nodes: vec!["node-a".into(), "node-c".into()] }))
        );
    }

    #[test]
    fn only_the_configured_client_nodes_count_and_the_quorum_is_theirs() {
        let members = [down("primary"), up("r1", Role::Replica, 1000)];
        let clients = Quorum { client_nodes: vec!["app-1".into(), "app-2".into(), "app-3".into()], min: None };
        // Nodes that run none of its clients say nothing about its writers.
        let nodes = [cannot("batch-1"), cannot("batch-2"), cannot("app-1"), silent("app-2")];
        let mut i = inputs(&members);
        i.quorum = &clients;
        i.nodes = &nodes;
        let refused = plan(&i).expect_err("one client node of three");
        assert!(
            refused.to_string().contains(
                "1 of the 3 nodes that run its clients answered that they cannot reach it (2 needed); no verdict \
                 from app-2, app-3"
            ),
            "{refused}"
        );
        // Two agents on one node are one node, and one that reached it
        // makes it not a node that cannot.
        let twice = [cannot("app-1"), node("app-1", Reach::Reached), cannot("app-2")];
        i.nodes = &twice;
        assert!(matches!(plan(&i), Err(Refusal::PrimaryReachedFromNodes { .. })));
        let all = Quorum { min: Some(3), ..clients.clone() };
        let nodes = [cannot("app-1"), cannot("app-2"), cannot("batch-1")];
        i.quorum = &all;
        i.nodes = &nodes;
        assert!(plan(&i).is_err_and(|e| e.to_string().contains("2 of the 3 nodes that run its clients")));
        let one = Quorum { min: Some(1), ..clients.clone() };
        i.quorum = &one;
        assert_eq!(
            plan(&i).map(|p| p.down_evidence),
            Ok(Some(DownEvidence::NodesCannotReach { nodes: vec!["app-1".into(), "app-2".into()] }))
        );
    }

    #[test]
    fn a_confirmed_fence_or_a_persons_override_is_evidence_but_a_node_that_reaches_the_primary_is_not_overridden() {
        let members = [down("primary"), up("r1", Role::Replica, 1000)];
        let mut fenced = inputs(&members);
        fenced.primary_fenced = true;
        assert_eq!(plan(&fenced).map(|p| p.down_evidence), Ok(Some(DownEvidence::Fenced)));
        let mut approved = inputs(&members);
        approved.override_accepted = true;
        let p = plan(&approved).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.down_evidence, Some(DownEvidence::Overridden));
        assert!(DownEvidence::Overridden.describe("primary").contains(TWO_WRITERS_RISK));
        // A primary the nodes still reach is alive: no approval makes a
        // second writer beside it.
        let nodes = [node("node-a", Reach::Reached), cannot("node-b")];
        approved.nodes = &nodes;
        let refused = plan(&approved).expect_err("the nodes still reach it");
        assert_eq!(refused.override_risk(), None);
        // Nor is an override asked for what a person cannot settle by
        // approving: the other refusals come first.
        let alone = [down("primary")];
        let refused = plan(&inputs(&alone)).expect_err("nobody to promote");
        assert!(matches!(refused, Refusal::NoHealthyReplica { .. }));
        assert_eq!(refused.override_risk(), None);
        // An answering primary needs none of this: the fence decides.
        let answering = [up("primary", Role::Primary, 1000), up("r1", Role::Replica, 1000)];
        assert_eq!(plan(&inputs(&answering)).map(|p| p.down_evidence), Ok(None));
    }

    #[test]
    fn an_answering_primary_is_fenced_and_its_position_counts_in_the_lag() {
        let members = [up("primary", Role::Primary, 1500), up("r1", Role::Replica, 1000)];
        let p = plan(&inputs(&members)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((p.to_fence.clone(), p.lag_bytes, p.unreachable_primary), (vec!["primary".to_owned()], 500, None));
        let mut no_fence = inputs(&members);
        no_fence.fence_primary = false;
        assert!(plan(&no_fence).is_err_and(|e| e.to_string().contains("two primaries")));
    }

    #[test]
    fn no_healthy_replica_too_much_lag_or_a_pending_promotion_is_refused_with_the_reason() {
        let none = [down("primary"), down("r1")];
        assert!(plan(&inputs(&none)).is_err_and(
            |e| e.to_string().contains("no healthy replica") && e.to_string().contains("r1 does not answer")
        ));
        let fenced_only = [down("primary"), up("old", Role::Fenced, 10)];
        assert!(plan(&inputs(&fenced_only)).is_err_and(|e| e.to_string().contains("old is a fenced, not a replica")));
        let behind = [down("primary"), up("r1", Role::Replica, 1000)];
        let mut known = inputs(&behind);
        known.last_primary_lsn = Some(5000);
        assert!(
            plan(&known)
                .is_err_and(|e| e.to_string().contains("4000 bytes behind") && e.to_string().contains("max_lag_bytes"))
        );
        let mut pending = inputs(&behind);
        pending.pending_promotion = Some("r2");
        assert!(plan(&pending).is_err_and(|e| e.to_string().contains("never confirmed")));
        // Asked by a coordinator that is gone: the replica itself says so.
        let mut promoting = [down("primary"), up("r1", Role::Replica, 1000), up("r2", Role::Replica, 1000)];
        if let Ok(s) = &mut promoting[1].answer {
            s.promoting = true;
        }
        assert!(plan(&inputs(&promoting)).is_err_and(|e| e.to_string().contains("r1 is being promoted")));
    }

    #[test]
    fn a_named_replica_must_be_a_healthy_replica() {
        let members = [down("primary"), up("r1", Role::Replica, 1000), down("r2")];
        let mut named = inputs(&members);
        named.preferred = Some("r2");
        assert!(plan(&named).is_err_and(
            |e| e.to_string().contains("r2 cannot be promoted") && e.to_string().contains("does not answer")
        ));
        named.preferred = Some("r1");
        named.primary_fenced = true;
        assert_eq!(plan(&named).map(|p| p.candidate), Ok("r1".to_owned()));
    }

    #[test]
    fn a_primary_only_the_coordinator_cannot_reach_is_not_failed_over() {
        let members = [down("primary"), up("r1", Role::Replica, 1000)];
        let seen = [node("node-a", Reach::Reached)];
        let mut partitioned = inputs(&members);
        partitioned.nodes = &seen;
        assert!(
            plan(&partitioned)
                .is_err_and(|e| e.to_string().contains("answers from node-a") && e.to_string().contains("cut off"))
        );
        // Reachable by the coordinator: the fence decides, not the agents.
        let answering = [up("primary", Role::Primary, 1000), up("r1", Role::Replica, 1000)];
        let mut fenced = inputs(&answering);
        fenced.nodes = &seen;
        assert_eq!(plan(&fenced).map(|p| p.to_fence), Ok(vec!["primary".to_owned()]));
    }

    #[test]
    fn each_refusal_is_its_own_variant_and_reads_as_before() {
        let behind = [down("primary"), up("r1", Role::Replica, 1000)];
        let mut lagging = inputs(&behind);
        lagging.last_primary_lsn = Some(0x1_0000_0400);
        let lag = plan(&lagging).expect_err("too far behind");
        assert!(matches!(lag, Refusal::LagOverLimit { lag_bytes: 0x1_0000_0018, .. }), "{lag:?}");
        assert_eq!(
            lag.to_string(),
            "replica r1 has replayed up to 0/3E8 but WAL reaches 1/400: 4294967320 bytes behind, over the limit of \
             1024 (max_lag_bytes); promoting it would lose those writes"
        );
        let mut pending = inputs(&behind);
        pending.pending_promotion = Some("r2");
        assert_eq!(plan(&pending), Err(Refusal::PromotionUnconfirmed { replica: "r2".into() }),);
        assert_eq!(
            Refusal::PromotionUnconfirmed { replica: "r2".into() }.to_string(),
            "a promotion of r2 was asked earlier and never confirmed: promoting another could make two primaries; \
             a person decides"
        );
        assert_eq!(
            Refusal::PromotionUnderWay { replica: "r1".into() }.to_string(),
            "r1 is being promoted (asked earlier and not finished): promoting another could make two primaries; a \
             person decides"
        );
        let writers = [up("a", Role::Primary, 10), up("b", Role::Primary, 10), up("r1", Role::Replica, 10)];
        let mut unfenced = inputs(&writers);
        unfenced.fence_primary = false;
        let refused = plan(&unfenced).expect_err("two writers, no fence");
        assert_eq!(refused, Refusal::PrimaryNotFenced { writers: vec!["a".into(), "b".into()] });
        assert_eq!(
            refused.to_string(),
            "a, b still takes writes and fence_primary is false: promoting would make two primaries"
        );
        let mut named = inputs(&behind);
        named.preferred = Some("r9");
        let refused = plan(&named).expect_err("no such member");
        assert_eq!(refused, Refusal::NamedReplicaUnfit { replica: "r9".into(), why: Unfit::NotAMember });
        assert_eq!(refused.to_string(), "replica r9 cannot be promoted: it not a member of this database");
        let none = [down("primary"), down("r1"), up("old", Role::Fenced, 10)];
        let refused = plan(&inputs(&none)).expect_err("nobody to promote");
        assert_eq!(
            refused.to_string(),
            "no healthy replica to promote: r1 does not answer (connection refused); old is a fenced, not a replica"
        );
        let alone = [down("primary")];
        assert_eq!(plan(&inputs(&alone)), Err(Refusal::NoHealthyReplica { members: vec![] }));
        assert_eq!(
            Refusal::NoHealthyReplica { members: vec![] }.to_string(),
            "no healthy replica to promote: none is configured"
        );
        let seen = [node("node-b", Reach::Reached), node("node-a", Reach::Reached)];
        let mut partitioned = inputs(&behind);
        partitioned.nodes = &seen;
        let refused = plan(&partitioned).expect_err("the nodes still reach it");
        assert!(matches!(&refused, Refusal::PrimaryReachedFromNodes { primary, .. } if primary == "primary"));
        assert_eq!(
            refused.to_string(),
            "primary does not answer the coordinator but answers from node-a, node-b: the coordinator is cut off \
             from it, not the primary down; promoting now would make two primaries"
        );
    }

    fn on_timeline(name: &str, timeline: Option<u32>) -> MemberState {
        let mut m = up(name, Role::Primary, 100);
        if let Ok(s) = &mut m.answer {
            s.timeline = timeline;
        }
        m
    }

    #[test]
    fn of_two_writers_the_one_on_the_higher_timeline_is_kept() {
        assert_eq!(writers(&[down("a"), up("b", Role::Replica, 1)]), Writers::None);
        assert_eq!(writers(&[on_timeline("a", Some(1)), up("b", Role::Fenced, 1)]), Writers::One("a".into()));
        assert_eq!(
            writers(&[on_timeline("old", Some(1)), on_timeline("new", Some(2)), on_timeline("older", Some(1))]),
            Writers::Diverged { keep: "new".into(), fence: vec!["old".into(), "older".into()] }
        );
        let tie = writers(&[on_timeline("a", Some(2)), on_timeline("b", Some(2))]);
        assert!(matches!(&tie, Writers::Undecidable(why) if why.contains("a on timeline 2, b on timeline 2")));
        let unknown = writers(&[on_timeline("a", None), on_timeline("b", Some(3))]);
        assert!(matches!(&unknown, Writers::Undecidable(why) if why.contains("a on an unknown timeline")));
    }

    #[test]
    fn a_split_brain_is_a_finding_fenced_or_not_and_clears_when_one_writer_is_left() {
        let now = Timestamp::from_millis(1_000);
        let diverged = Writers::Diverged { keep: "new".into(), fence: vec!["old".into()] };
        let fenced = split_brain_finding("main", &diverged, &["old".into()], false, now).unwrap_or_else(|| panic!());
        assert_eq!((fenced.severity, fenced.state), (Severity::Warning, FindingState::Active));
        assert_eq!(
            (fenced.target.as_str(), fenced.labels.get("fenced").map(String::as_str)),
            ("database/main", Some("old"))
        );
        assert!(fenced.expires_at.is_some_and(|at| at > now));
        // A fence that failed is no news: the guard tries again.
        assert_eq!(split_brain_finding("main", &diverged, &[], false, now), None);
        let tie = Writers::Undecidable("a on timeline 2, b on timeline 2 take writes".into());
        let stuck = split_brain_finding("main", &tie, &[], false, now).unwrap_or_else(|| panic!());
        assert_eq!((stuck.severity, stuck.state, stuck.expires_at), (Severity::Critical, FindingState::Active, None));
        assert_eq!(split_brain_finding("main", &tie, &[], true, now), None, "said once");
        let over = split_brain_finding("main", &Writers::One("a".into()), &[], true, now).unwrap_or_else(|| panic!());
        assert_eq!(over.state, FindingState::Cleared);
        assert_eq!(split_brain_finding("main", &Writers::One("a".into()), &[], false, now), None);
    }

    #[test]
    fn lsns_read_and_write_as_postgres_spells_them() {
        assert_eq!(parse_lsn("0/3000148"), Some(0x300_0148));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("garbage"), None);
        assert_eq!(parse_lsn("1/zz"), None);
        assert_eq!(timeline_of_walfile("00000002000000000000000A"), Some(2));
        assert_eq!(timeline_of_walfile("0000000A"), None);
        assert_eq!(timeline_of_walfile("zzzzzzzz000000000000000A"), None);
    }
}
