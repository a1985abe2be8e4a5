//! Directives: how the coordinator asks agents to act on their node, and
//! how it hears back.
//!
//! Each agent stream registers its outbound sender here once the agent has
//! said hello, and the registration ends with the stream. An actuator sends
//! a directive to a [`Target`]; every agent the target names comes back as a
//! [`Pending`]: sent (with a [`Waiter`] for the answer), or not sent and why
//! (not connected, the directive is not among its capabilities, its stream
//! is closed or backed up). Nothing named is silently dropped.
//!
//! Answers are matched by directive id. One that matches no waiter (late,
//! duplicate, unknown, or from an agent the directive was not sent to) is
//! classified by [`Directives::complete`] for the stream to log and count;
//! none of them can disturb a waiter.
//!
//! The hub lives in memory: directives in flight are lost with the
//! coordinator, and their waiters with them. A stream closing while its
//! agent's directives are unanswered tells their waiters at once, so an
//! action does not wait out its timeout for a node that is gone.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use remedy_proto::v1 as pb;
use remedy_proto::v1::coordinator_message::Body as CoordinatorBody;
use remedy_shared::Timestamp;
use remedy_shared::sync;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::clock::Clock;

/// The sending half of an agent stream, as the agent service holds it.
pub type Outbound = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// Longest a directive waits for room on an agent's stream. A stream this
/// far behind belongs to an agent that is not reading; reporting it beats
/// holding the action.
const SEND_WAIT: Duration = Duration::from_secs(2);
/// Directive ids remembered after they were answered or given up on, so a
/// result arriving after them is told apart from one nobody ever asked for.
const RECENT_IDS: usize = 4096;

/// What an agent said about itself in its hello: enough to choose it as a
/// target and to know what it can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// Its stable identity.
    pub agent_id: String,
    /// The node it runs on; targets name nodes.
    pub node_name: String,
    /// Node labels, for targeting by zone or pool.
    pub labels: BTreeMap<String, String>,
    /// The directives it executes; no other is sent to it.
    pub capabilities: BTreeSet<String>,
}

/// Which agents a directive goes to, once runbook targets are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every agent connected now. No agent connected gives an empty set,
    /// which callers must treat as an error, never as success.
    All,
    /// The agents on this node; a node with no connected agent is reported
    /// as not connected.
    Node(String),
    /// These agents, by id (the agents that reported an incident); each one
    /// not connected is reported as such.
    Agents(BTreeSet<String>),
}

/// A directive as an actuator asks for it; the hub gives each agent's copy
/// its own id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectiveSpec {
    /// The directive's name, one of the agents' capabilities.
    pub action: String,
    /// Its parameters.
    pub params: BTreeMap<String, String>,
    /// When agents give up and answer with a timeout.
    pub deadline: Timestamp,
    /// Validate and report, change nothing.
    pub dry_run: bool,
    /// The incident, for the agents' logs and the timeline.
    pub incident_id: String,
    /// The runbook step.
    pub step_id: String,
}

/// Why a directive was not sent to an agent the target names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undelivered {
    /// No stream from this agent (or from any agent on this node) is open.
    NotConnected,
    /// The agent did not announce the directive in its hello.
    Unsupported {
        /// What it announced.
        capabilities: BTreeSet<String>,
    },
    /// The stream closed as the directive was being sent.
    StreamClosed,
    /// The stream had no room within [`SEND_WAIT`]: the agent is not reading.
    StreamFull,
}

/// How the hub dealt with one targeted agent.
#[derive(Debug)]
pub enum Delivery {
    /// Sent; the waiter hears the answer.
    Waiting(Waiter),
    /// Sent; nobody waits for the answer (the step does not collect).
    Sent {
        /// The id the agent's answer will carry.
        directive_id: String,
    },
    /// Not sent.
    NotSent(Undelivered),
}

/// One targeted agent and what became of its directive.
#[derive(Debug)]
pub struct Pending {
    /// The agent's id; empty when a node was named and no agent is known there.
    pub agent_id: String,
    /// Its node; empty when an agent id was named that never connected.
    pub node_name: String,
    /// Sent or not, and how to hear back.
    pub delivery: Delivery,
}

/// How a wait for an agent's answer ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The agent answered.
    Result(pb::ActionResult),
    /// The agent's stream closed (and no newer one took over) before it
    /// answered; the directive may or may not have run.
    Disconnected,
    /// No answer by the time the caller stopped waiting.
    TimedOut,
}

/// What became of a result an agent sent, for its stream to log and count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// A waiter got it.
    Delivered,
    /// The directive was sent without a waiter; the result is only logged.
    Uncollected,
    /// Its waiter had stopped waiting (timed out or disconnected).
    Late,
    /// The directive was already answered.
    Duplicate,
    /// No directive with this id is known.
    Unknown,
    /// The directive was sent to another agent; the result is ignored.
    WrongAgent {
        /// The agent it was sent to.
        expected: String,
    },
}

/// Hears one agent's answer to one directive. Dropping it stops waiting: a
/// result arriving afterwards is counted as late.
#[derive(Debug)]
pub struct Waiter {
    directive_id: String,
    rx: oneshot::Receiver<Event>,
    hub: Directives,
    done: bool,
}

impl Waiter {
    /// The id the agent's answer carries, for logs.
    pub fn directive_id(&self) -> &str {
        &self.directive_id
    }

    /// Waits for the answer until `until`.
    pub async fn wait(mut self, until: tokio::time::Instant) -> Answer {
        match tokio::time::timeout_at(until, &mut self.rx).await {
            Ok(Ok(Event::Result(result))) => {
                self.done = true;
                Answer::Result(result)
            }
            Ok(Ok(Event::Disconnected)) => {
                self.done = true;
                Answer::Disconnected
            }
            // The hub dropped the entry without a word; only a bug does that,
            // and "disconnected" is the honest description of what we know.
            Ok(Err(_)) => Answer::Disconnected,
            Err(_) => Answer::TimedOut,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.done {
            self.hub.abandon(&self.directive_id);
        }
    }
}

/// A stream's claim on its agent id in the hub. Dropping it unregisters the
/// stream, unless a newer stream of the same agent took over meanwhile: the
/// older stream's end then changes nothing.
#[derive(Debug)]
pub struct Registration {
    agent_id: String,
    generation: u64,
    hub: Directives,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.agent_id, self.generation);
    }
}

/// The hub between agent streams and actuators. Cheap to clone: every clone
/// is the same hub.
#[derive(Debug, Clone)]
pub struct Directives {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    hub: Mutex<Hub>,
    /// Prefix of every directive id this process makes: its start time, so
    /// ids do not repeat across restarts (agents ignore a reused id).
    id_prefix: String,
    /// Dates deadlines, and what waits on the agents' answers.
    clock: Clock,
}

#[derive(Debug)]
enum Event {
    Result(pb::ActionResult),
    Disconnected,
}

#[derive(Debug, Default)]
struct Hub {
    /// Every agent seen since start, connected or not, by id.
    agents: HashMap<String, Known>,
    /// Directives waiting for an answer, by id.
    pending: HashMap<String, PendingEntry>,
    recent: Recent,
    next_generation: u64,
    next_id: u64,
}

#[derive(Debug)]
struct Known {
    info: AgentInfo,
    session: Option<Session>,
}

#[derive(Debug)]
struct Session {
    generation: u64,
    outbound: Outbound,
}

#[derive(Debug)]
struct PendingEntry {
    agent_id: String,
    tx: oneshot::Sender<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    Answered,
    Abandoned,
    Uncollected,
}

/// Ids no longer pending, oldest forgotten first.
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<String>,
    closed: HashMap<String, Closed>,
}

impl Recent {
    fn insert(&mut self, id: String, closed: Closed) {
        if self.closed.insert(id.clone(), closed).is_none() {
            self.order.push_back(id);
            while self.order.len() > RECENT_IDS {
                if let Some(old) = self.order.pop_front() {
                    self.closed.remove(&old);
                }
            }
        }
    }

    fn get(&self, id: &str) -> Option<Closed> {
        self.closed.get(id).copied()
    }
}

/// One agent a target names, before sending.
#[derive(Debug)]
enum Selected {
    Connected(AgentInfo, Outbound),
    Missing { agent_id: String, node_name: String },
}

impl Hub {
    /// The agents `target` names, in (node, agent id) order.
    fn select(&self, target: &Target) -> Vec<Selected> {
        let known: Vec<&Known> = match target {
            Target::All => self.agents.values().filter(|k| k.session.is_some()).collect(),
            Target::Node(node) => {
                let on_node: Vec<&Known> = self.agents.values().filter(|k| &k.info.node_name == node).collect();
                if on_node.is_empty() {
                    return vec![Selected::Missing { agent_id: String::new(), node_name: node.clone() }];
                }
                // An agent id replaced on the node (state wiped) stays known but
                // closed; it is not "the agent on this node" while another is up.
                if on_node.iter().any(|k| k.session.is_some()) {
                    on_node.into_iter().filter(|k| k.session.is_some()).collect()
                } else {
                    on_node
                }
            }
            Target::Agents(ids) => {
                let mut out: Vec<&Known> = Vec::new();
                let mut missing = Vec::new();
                for id in ids {
                    match self.agents.get(id) {
                        Some(k) => out.push(k),
                        None => missing.push(id),
                    }
                }
                let mut selected = select_known(out);
                selected.extend(
                    missing.into_iter().map(|id| Selected::Missing { agent_id: id.clone(), node_name: String::new() }),
                );
                return selected;
            }
        };
        select_known(known)
    }

    fn next_directive_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}", self.next_id)
    }
}

fn select_known(mut known: Vec<&Known>) -> Vec<Selected> {
    known.sort_by(|a, b| (&a.info.node_name, &a.info.agent_id).cmp(&(&b.info.node_name, &b.info.agent_id)));
    known
        .into_iter()
        .map(|k| match &k.session {
            Some(s) => Selected::Connected(k.info.clone(), s.outbound.clone()),
            None => Selected::Missing { agent_id: k.info.agent_id.clone(), node_name: k.info.node_name.clone() },
        })
        .collect()
}

impl Default for Directives {
    fn default() -> Self {
        Directives::new(Clock::System)
    }
}

impl Directives {
    /// A hub with no agents yet, dating directives by `clock`.
    pub fn new(clock: Clock) -> Directives {
        let id_prefix = format!("d{:x}", clock.now().as_millis());
        Directives { inner: Arc::new(Inner { hub: Mutex::new(Hub::default()), id_prefix, clock }) }
    }

    /// The clock directives are dated by: what sends them dates their
    /// deadlines by it too.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    fn lock(&self) -> MutexGuard<'_, Hub> {
        sync::lock(&self.inner.hub)
    }

    /// Makes an agent reachable through `outbound` until the returned
    /// registration drops. A newer registration for the same agent id
    /// replaces this one.
    pub fn register(&self, info: AgentInfo, outbound: Outbound) -> Registration {
        let mut hub = self.lock();
        hub.next_generation += 1;
        let generation = hub.next_generation;
        let agent_id = info.agent_id.clone();
        hub.agents.insert(agent_id.clone(), Known { info, session: Some(Session { generation, outbound }) });
        Registration { agent_id, generation, hub: self.clone() }
    }

    /// Ends a registration unless a newer one replaced it, and tells the
    /// agent's waiters it is gone.
    fn unregister(&self, agent_id: &str, generation: u64) {
        let mut hub = self.lock();
        let Some(known) = hub.agents.get_mut(agent_id) else { return };
        if known.session.as_ref().is_none_or(|s| s.generation != generation) {
            return;
        }
        known.session = None;
        let ids: Vec<String> =
            hub.pending.iter().filter(|(_, p)| p.agent_id == agent_id).map(|(id, _)| id.clone()).collect();
        for id in ids {
            if let Some(entry) = hub.pending.remove(&id) {
                let _ = entry.tx.send(Event::Disconnected);
            }
            hub.recent.insert(id, Closed::Abandoned);
        }
    }

    /// The agents connected now, in (node, agent id) order.
    pub fn connected(&self) -> Vec<AgentInfo> {
        let hub = self.lock();
        let mut out: Vec<AgentInfo> =
            hub.agents.values().filter(|k| k.session.is_some()).map(|k| k.info.clone()).collect();
        out.sort_by(|a, b| (&a.node_name, &a.agent_id).cmp(&(&b.node_name, &b.agent_id)));
        out
    }

    /// Sends `spec` to every agent `target` names that can run it. With
    /// `collect`, each sent directive comes back with a [`Waiter`]. An empty
    /// result means the target named nobody (no agent connected, no ids).
    pub async fn send(&self, target: &Target, spec: &DirectiveSpec, collect: bool) -> Vec<Pending> {
        enum Slot {
            Ready(Pending),
            ToSend { agent: AgentInfo, id: String, outbound: Outbound, waiter: Option<Waiter> },
        }
        let slots: Vec<Slot> = {
            let mut hub = self.lock();
            let selected = hub.select(target);
            let mut slots = Vec::with_capacity(selected.len());
            for s in selected {
                match s {
                    Selected::Missing { agent_id, node_name } => slots.push(Slot::Ready(Pending {
                        agent_id,
                        node_name,
                        delivery: Delivery::NotSent(Undelivered::NotConnected),
                    })),
                    Selected::Connected(agent, _) if !agent.capabilities.contains(&spec.action) => {
                        slots.push(Slot::Ready(Pending {
                            agent_id: agent.agent_id,
                            node_name: agent.node_name,
                            delivery: Delivery::NotSent(Undelivered::Unsupported { capabilities: agent.capabilities }),
                        }))
                    }
                    Selected::Connected(agent, outbound) => {
                        let id = hub.next_directive_id(&self.inner.id_prefix);
                        let waiter = if collect {
                            let (tx, rx) = oneshot::channel();
                            hub.pending.insert(id.clone(), PendingEntry { agent_id: agent.agent_id.clone(), tx });
                            Some(Waiter { directive_id: id.clone(), rx, hub: self.clone(), done: false })
                        } else {
                            hub.recent.insert(id.clone(), Closed::Uncollected);
                            None
                        };
                        slots.push(Slot::ToSend { agent, id, outbound, waiter });
                    }
                }
            }
            slots
        };
        let room = SEND_WAIT.min(spec.deadline.since(self.inner.clock.now()));
        let sends = slots.into_iter().map(|slot| async move {
            let (agent, id, outbound, waiter) = match slot {
                Slot::Ready(p) => return p,
                Slot::ToSend { agent, id, outbound, waiter } => (agent, id, outbound, waiter),
            };
            let message = pb::CoordinatorMessage { body: Some(CoordinatorBody::Directive(to_proto(&id, spec))) };
            let delivery = match tokio::time::timeout(room, outbound.send(Ok(message))).await {
                Ok(Ok(())) => match waiter {
                    Some(w) => Delivery::Waiting(w),
                    None => Delivery::Sent { directive_id: id },
                },
                // Dropping the waiter (if any) forgets the pending entry.
                Ok(Err(_)) => Delivery::NotSent(Undelivered::StreamClosed),
                Err(_) => Delivery::NotSent(Undelivered::StreamFull),
            };
            Pending { agent_id: agent.agent_id, node_name: agent.node_name, delivery }
        });
        futures::future::join_all(sends).await
    }

    /// Hands an agent's result to whoever waits for it, and says what became
    /// of it so the stream can log and count the ones nobody wanted.
    pub fn complete(&self, agent_id: &str, result: pb::ActionResult) -> Completion {
        let mut hub = self.lock();
        let id = result.directive_id.clone();
        if let Some(entry) = hub.pending.get(&id) {
            if entry.agent_id != agent_id {
                return Completion::WrongAgent { expected: entry.agent_id.clone() };
            }
            let delivered = hub.pending.remove(&id).is_some_and(|entry| entry.tx.send(Event::Result(result)).is_ok());
            hub.recent.insert(id, Closed::Answered);
            return if delivered { Completion::Delivered } else { Completion::Late };
        }
        let completion = match hub.recent.get(&id) {
            Some(Closed::Answered) => return Completion::Duplicate,
            Some(Closed::Abandoned) => Completion::Late,
            Some(Closed::Uncollected) => Completion::Uncollected,
            None => return Completion::Unknown,
        };
        // A second copy of this result is a duplicate from now on.
        if let Some(closed) = hub.recent.closed.get_mut(&id) {
            *closed = Closed::Answered;
        }
        completion
    }

    /// Stops waiting for `id`; a result arriving later is late.
    fn abandon(&self, id: &str) {
        let mut hub = self.lock();
        if hub.pending.remove(id).is_some() {
            hub.recent.insert(id.to_owned(), Closed::Abandoned);
        }
    }
}

fn to_proto(id: &str, spec: &DirectiveSpec) -> pb::Directive {
    pb::Directive {
        id: id.to_owned(),
        action: spec.action.clone(),
        params: spec.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        deadline_ms: spec.deadline.as_millis(),
        dry_run: spec.dry_run,
        incident_id: spec.incident_id.clone(),
        step_id: spec.step_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Inbox = mpsc::Receiver<Result<pb::CoordinatorMessage, Status>>;

    fn info(agent_id: &str, node: &str, capabilities: &[&str]) -> AgentInfo {
        AgentInfo {
            agent_id: agent_id.into(),
            node_name: node.into(),
            labels: BTreeMap::new(),
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn connect(hub: &Directives, agent_id: &str, node: &str) -> (Registration, Inbox) {
        let (tx, rx) = mpsc::channel(8);
        (hub.register(info(agent_id, node, &["snapshot"]), tx), rx)
    }

    fn spec(action: &str) -> DirectiveSpec {
        DirectiveSpec {
            action: action.into(),
            params: [("include".to_owned(), "resources".to_owned())].into(),
            deadline: Clock::System.now().plus(Duration::from_secs(30)),
            dry_run: true,
            incident_id: "INC-000007".into(),
            step_id: "nodes".into(),
        }
    }

    fn received(inbox: &mut Inbox) -> pb::Directive {
        match inbox.try_recv() {
            Ok(Ok(pb::CoordinatorMessage { body: Some(CoordinatorBody::Directive(d)) })) => d,
            other => panic!("expected a directive on the stream, got {other:?}"),
        }
    }

    fn result(id: &str, outcome: pb::ActionOutcome) -> pb::ActionResult {
        pb::ActionResult {
            directive_id: id.into(),
            outcome: outcome as i32,
            message: "done".into(),
            evidence: Default::default(),
            finished_at_ms: 1,
        }
    }

    fn waiter(p: Pending) -> Waiter {
        match p.delivery {
            Delivery::Waiting(w) => w,
            other => panic!("expected a waiter, got {other:?}"),
        }
    }

    fn later() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(30)
    }

    #[tokio::test]
    async fn a_directive_reaches_the_agent_and_its_result_reaches_the_waiter() {
        let hub = Directives::default();
        let (_reg, mut inbox) = connect(&hub, "a1", "node-1");
        let mut sent = hub.send(&Target::All, &spec("snapshot"), true).await;
        assert_eq!(sent.len(), 1);
        let d = received(&mut inbox);
        assert_eq!((d.action.as_str(), d.dry_run, d.incident_id.as_str()), ("snapshot", true, "INC-000007"));
        assert_eq!(d.params["include"], "resources");
        let w = waiter(sent.remove(0));
        assert_eq!(w.directive_id(), d.id);
        assert_eq!(hub.complete("a1", result(&d.id, pb::ActionOutcome::Succeeded)), Completion::Delivered);
        match w.wait(later()).await {
            Answer::Result(r) => assert_eq!(r.outcome, pb::ActionOutcome::Succeeded as i32),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn late_duplicate_unknown_and_misaddressed_results_are_told_apart() {
        let hub = Directives::default();
        let (_reg, mut inbox) = connect(&hub, "a1", "node-1");
        let (_reg2, _inbox2) = connect(&hub, "a2", "node-2");
        let mut sent = hub.send(&Target::Node("node-1".into()), &spec("snapshot"), true).await;
        let d = received(&mut inbox);
        let w = waiter(sent.remove(0));
        assert_eq!(
            hub.complete("a2", result(&d.id, pb::ActionOutcome::Succeeded)),
            Completion::WrongAgent { expected: "a1".into() }
        );
        // The caller gives up (its deadline has passed), then the answer comes.
        assert_eq!(w.wait(tokio::time::Instant::now()).await, Answer::TimedOut);
        assert_eq!(hub.complete("a1", result(&d.id, pb::ActionOutcome::Succeeded)), Completion::Late);
        assert_eq!(hub.complete("a1", result(&d.id, pb::ActionOutcome::Succeeded)), Completion::Duplicate);
        assert_eq!(hub.complete("a1", result("never-sent", pb::ActionOutcome::Failed)), Completion::Unknown);

        let mut sent = hub.send(&Target::Node("node-1".into()), &spec("snapshot"), true).await;
        let d = received(&mut inbox);
        assert_eq!(hub.complete("a1", result(&d.id, pb::ActionOutcome::Succeeded)), Completion::Delivered);
        assert_eq!(hub.complete("a1", result(&d.id, pb::ActionOutcome::Succeeded)), Completion::Duplicate);
        assert!(matches!(waiter(sent.remove(0)).wait(later()).await, Answer::Result(_)));
    }

    #[tokio::test]
    async fn results_of_uncollected_directives_are_recognised_once() {
        let hub = Directives::default();
        let (_reg, mut inbox) = connect(&hub, "a1", "node-1");
        let sent = hub.send(&Target::All, &spec("snapshot"), false).await;
        let d = received(&mut inbox);
        assert!(matches!(&sent[0].delivery, Delivery::Sent { directive_id } if *directive_id == d.id));
        assert_eq!(hub.complete("a1", result(&d.id, pb::ActionOutcome::Succeeded)), Completion::Uncollected);
        assert_eq!(hub.complete("a1", result(&d.id, pb::ActionOutcome::Succeeded)), Completion::Duplicate);
    }

    #[tokio::test]
    async fn a_disconnect_tells_the_waiters_at_once() {
        let hub = Directives::default();
        let (reg, mut inbox) = connect(&hub, "a1", "node-1");
        let mut sent = hub.send(&Target::All, &spec("snapshot"), true).await;
        let d = received(&mut inbox);
        let w = waiter(sent.remove(0));
        let waiting = tokio::spawn(w.wait(later()));
        drop(reg);
        assert_eq!(waiting.await.ok(), Some(Answer::Disconnected));
        assert!(hub.connected().is_empty());
        assert_eq!(hub.complete("a1", result(&d.id, pb::ActionOutcome::Succeeded)), Completion::Late);
        // Known but gone: named by node, it is reported, not skipped.
        let sent = hub.send(&Target::Node("node-1".into()), &spec("snapshot"), true).await;
        assert_eq!(sent.len(), 1);
        assert!(matches!(sent[0].delivery, Delivery::NotSent(Undelivered::NotConnected)));
        assert_eq!(sent[0].agent_id, "a1");
    }

    #[tokio::test]
    async fn an_older_stream_ending_after_a_newer_hello_changes_nothing() {
        let hub = Directives::default();
        let (old, _old_inbox) = connect(&hub, "a1", "node-1");
        let (_new, mut new_inbox) = connect(&hub, "a1", "node-1");
        let mut sent = hub.send(&Target::All, &spec("snapshot"), true).await;
        let d = received(&mut new_inbox);
        drop(old);
        assert_eq!(hub.connected().len(), 1, "the newer stream stays registered");
        assert_eq!(hub.complete("a1", result(&d.id, pb::ActionOutcome::Succeeded)), Completion::Delivered);
        assert!(matches!(waiter(sent.remove(0)).wait(later()).await, Answer::Result(_)));
    }

    #[tokio::test]
    async fn agents_that_cannot_be_reached_are_reported_not_dropped() {
        let hub = Directives::default();
        let (_reg, _inbox) = connect(&hub, "a1", "node-1");
        let (tx, closed_inbox) = mpsc::channel(1);
        let _reg2 = hub.register(info("a2", "node-2", &["snapshot"]), tx);
        drop(closed_inbox);

        let sent = hub.send(&Target::All, &spec("reboot"), true).await;
        assert_eq!(sent.len(), 2);
        assert!(
            sent.iter().all(|p| matches!(&p.delivery, Delivery::NotSent(Undelivered::Unsupported { capabilities })
                if capabilities.contains("snapshot"))),
            "{sent:?}"
        );

        let sent = hub.send(&Target::All, &spec("snapshot"), true).await;
        assert_eq!(sent[1].node_name, "node-2");
        assert!(matches!(sent[1].delivery, Delivery::NotSent(Undelivered::StreamClosed)), "{sent:?}");

        let ghost = hub.send(&Target::Node("node-9".into()), &spec("snapshot"), true).await;
        assert_eq!(ghost.len(), 1);
        assert_eq!((ghost[0].agent_id.as_str(), ghost[0].node_name.as_str()), ("", "node-9"));
        assert!(matches!(ghost[0].delivery, Delivery::NotSent(Undelivered::NotConnected)));

        let ids: BTreeSet<String> = ["a1".to_owned(), "never-seen".to_owned()].into();
        let named = hub.send(&Target::Agents(ids), &spec("snapshot"), true).await;
        assert_eq!(named.len(), 2);
        assert!(matches!(named[0].delivery, Delivery::Waiting(_)));
        assert_eq!(named[1].agent_id, "never-seen");
        assert!(matches!(named[1].delivery, Delivery::NotSent(Undelivered::NotConnected)));
    }

    #[tokio::test]
    async fn a_backed_up_stream_is_reported_within_the_deadline() {
        let hub = Directives::default();
        let (tx, _inbox) = mpsc::channel(1);
        let _reg = hub.register(info("a1", "node-1", &["snapshot"]), tx.clone());
        tx.send(Ok(pb::CoordinatorMessage::default())).await.ok();
        let mut short = spec("snapshot");
        short.deadline = Clock::System.now().plus(Duration::from_millis(50));
        let sent = hub.send(&Target::All, &short, true).await;
        assert!(matches!(sent[0].delivery, Delivery::NotSent(Undelivered::StreamFull)), "{sent:?}");
    }

    #[tokio::test]
    async fn no_agent_connected_is_an_empty_set_and_ids_never_repeat() {
        let hub = Directives::default();
        assert!(hub.send(&Target::All, &spec("snapshot"), true).await.is_empty());
        assert!(hub.send(&Target::Agents(BTreeSet::new()), &spec("snapshot"), true).await.is_empty());
        let (_reg, mut inbox) = connect(&hub, "a1", "node-1");
        hub.send(&Target::All, &spec("snapshot"), false).await;
        hub.send(&Target::All, &spec("snapshot"), false).await;
        assert_ne!(received(&mut inbox).id, received(&mut inbox).id);
    }

    #[test]
    fn the_memory_of_closed_ids_is_bounded() {
        let mut recent = Recent::default();
        for i in 0..RECENT_IDS + 10 {
            recent.insert(i.to_string(), Closed::Answered);
        }
        assert_eq!(recent.order.len(), RECENT_IDS);
        assert_eq!(recent.get("0"), None);
        assert_eq!(recent.get(&(RECENT_IDS + 9).to_string()), Some(Closed::Answered));
    }
}
