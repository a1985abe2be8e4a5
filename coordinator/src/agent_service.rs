//! `AgentService`: one long-lived stream per agent.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use remedy_proto::convert;
use remedy_proto::v1 as pb;
use remedy_proto::v1::agent_message::Body as AgentBody;
use remedy_proto::v1::coordinator_message::Body as CoordinatorBody;
use remedy_shared::Timestamp;
use remedy_shared::finding::{Finding, FindingKind, FindingState, Severity};
use remedy_shared::guard::Infrastructure;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::directives::{AgentInfo, Completion, Directives};
use crate::infrastructure::{InfrastructureMap, MAX_NODE_ADDRESSES};
use crate::metrics::Metrics;
use crate::recorder::{AgentHello, RecordError, Recorder};
use crate::registry::{Registry, Session};
use remedy_shared::limits::{self, LimitError, MAX_ENTRIES, MAX_KEY_BYTES, MAX_NAME_BYTES, check_map, check_name};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most infrastructure ranges sent to an agent: about 1.3 MB at most.
const MAX_SENT_RANGES: usize = 65_536;

/// Shared by every stream.
#[derive(Debug, Clone)]
pub struct AgentService {
    /// This replica's identity.
    pub coordinator_id: String,
    /// The writer.
    pub recorder: Recorder,
    /// Live view of agents.
    pub registry: Arc<Registry>,
    /// Metrics.
    pub metrics: Metrics,
    /// Expected heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Most findings in one batch.
    pub max_batch_findings: usize,
    /// Where connected streams are registered so actuators can send them
    /// directives, and where their results are handed back.
    pub directives: Directives,
    /// Checks that each agent speaks only for its own node.
    pub auth: crate::auth::Authenticator,
    /// Turns true when this process stops. Every open stream then ends
    /// with UNAVAILABLE and its agent reconnects (to the new leader, or to
    /// this coordinator restarted): an agent's stream never ends by itself,
    /// and would otherwise hold the stopping process open, taking findings
    /// nobody acts on.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Remedy's own addresses: each hello adds its node's, and every stream
    /// is sent the whole set, and again whenever it changes.
    pub infrastructure: InfrastructureMap,
}

/// Resolves once `stopping` turns true; never when nobody can set it.
async fn until_stopping(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    if stopping.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

fn message(body: CoordinatorBody) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage { body: Some(body) }
}

/// The ranges of Remedy's own infrastructure, as an agent is sent them.
/// At most [`MAX_SENT_RANGES`] of them, so the message stays far below the
/// stream's size limit however many nodes announce addresses (the
/// coordinator's own rails weigh the whole set).
fn infrastructure_message(ranges: &Infrastructure) -> pb::CoordinatorMessage {
    if ranges.len() > MAX_SENT_RANGES {
        tracing::warn!(
            known = ranges.len(),
            sent = MAX_SENT_RANGES,
            "more infrastructure ranges than an agent is sent; the rails still weigh them all"
        );
    }
    let ranges = ranges.ranges().take(MAX_SENT_RANGES).map(|(net, _)| net.to_string()).collect();
    message(CoordinatorBody::Infrastructure(pb::Infrastructure { ranges }))
}

/// Bounds what an agent says of a directive before the step's result keeps
/// it: a long message or value is cut saying so; evidence over the limits
/// on keys or entries is replaced by the reason, as the step's outcome
/// stands on the result's outcome alone.
fn bound_result(result: &mut pb::ActionResult) {
    limits::clip(&mut result.message, limits::MAX_SUMMARY_BYTES);
    let mut evidence = convert::sorted(std::mem::take(&mut result.evidence));
    if let Err(e) = limits::bound_map("evidence", &mut evidence) {
        evidence = BTreeMap::from([("evidence_refused".to_owned(), e.to_string())]);
    }
    result.evidence = evidence.into_iter().collect();
}

fn limit_status(e: LimitError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Validates a hello; the error is sent as INVALID_ARGUMENT. Every part of
/// it is kept in the agent's record, so every part has a size.
fn validate_hello(hello: pb::Hello) -> Result<AgentHello, Status> {
    for (field, value) in [("agent_id", &hello.agent_id), ("node_name", &hello.node_name)] {
        if value.trim().is_empty() {
            return Err(Status::invalid_argument(format!("hello.{field} must not be empty")));
        }
        check_name(&format!("hello.{field}"), value, MAX_NAME_BYTES).map_err(limit_status)?;
    }
    check_name("hello.version", &hello.version, MAX_KEY_BYTES).map_err(limit_status)?;
    if hello.capabilities.len() > MAX_ENTRIES {
        return Err(limit_status(LimitError::TooMany {
            field: "hello.capabilities".into(),
            count: hello.capabilities.len(),
            max: MAX_ENTRIES,
        }));
    }
    for (i, capability) in hello.capabilities.iter().enumerate() {
        check_name(&format!("hello.capabilities[{i}]"), capability, MAX_KEY_BYTES).map_err(limit_status)?;
    }
    let labels = convert::sorted(hello.labels);
    check_map("hello.labels", &labels).map_err(limit_status)?;
    if hello.node_addresses.len() > MAX_NODE_ADDRESSES {
        return Err(Status::invalid_argument(format!(
            "hello.node_addresses has {} entries, over the limit of {MAX_NODE_ADDRESSES}",
            hello.node_addresses.len()
        )));
    }
    let mut node_addresses = Vec::with_capacity(hello.node_addresses.len());
    for (i, text) in hello.node_addresses.iter().enumerate() {
        match text.trim().parse::<IpAddr>() {
            Ok(a) => node_addresses.push(a),
            Err(_) => {
                let shown = remedy_shared::text::prefix(text, 64, remedy_shared::text::Unit::Bytes);
                return Err(Status::invalid_argument(format!(
                    "hello.node_addresses[{i}] `{shown}` is not an IP address"
                )));
            }
        }
    }
    Ok(AgentHello {
        agent_id: hello.agent_id,
        node_name: hello.node_name,
        version: hello.version,
        capabilities: hello.capabilities,
        labels,
        node_addresses,
    })
}

/// The status an agent sees for a failed write.
fn record_status(e: RecordError) -> Status {
    match e {
        RecordError::Sequence(_) | RecordError::UnknownAgent(_) => Status::invalid_argument(e.to_string()),
        RecordError::AgentOfAnotherNode { .. } => Status::permission_denied(e.to_string()),
        RecordError::Store(_) => Status::unavailable(format!("cannot persist findings now, keep them and retry: {e}")),
        RecordError::Stopped | RecordError::QueueFull => Status::unavailable(e.to_string()),
        RecordError::NoOpenIncident(_) | RecordError::Transition(_) | RecordError::BadRun(_) => {
            Status::failed_precondition(e.to_string())
        }
    }
}

/// Errors from reading the inbound stream, as the agent should see them.
fn inbound_status(status: Status) -> Status {
    // tonic reports an oversized message as OUT_OF_RANGE; gRPC's convention
    // (and what clients retry on) is RESOURCE_EXHAUSTED.
    if status.code() == Code::OutOfRange { Status::resource_exhausted(status.message().to_owned()) } else { status }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentService {
    type ConnectStream = Outbound;

    async fn connect(&self, request: Request<Streaming<pb::AgentMessage>>) -> Result<Response<Outbound>, Status> {
        let (metadata, extensions, mut inbound) = request.into_parts();
        let caller = Request::from_parts(metadata, extensions, ());
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10s of opening the stream"))?
            .map_err(inbound_status)?;
        let hello = match first.and_then(|m| m.body) {
            Some(AgentBody::Hello(hello)) => validate_hello(hello)?,
            Some(_) => return Err(Status::failed_precondition("the first message of a stream must be a hello")),
            None => return Err(Status::failed_precondition("the stream ended before a hello")),
        };
        // Before anything is recorded: one node may not speak for another.
        if let Err(status) = self.auth.agent(&caller, &hello.node_name) {
            tracing::warn!(node = %hello.node_name, error = %status.message(), "agent refused");
            return Err(status);
        }
        // The recorder binds the agent id to its node and refuses another
        // node's hello for it before the registry below replaces (ends)
        // the stream of the agent that holds the id.
        let acked = self.recorder.hello(hello.clone()).await.map_err(|e| {
            if matches!(e, RecordError::AgentOfAnotherNode { .. }) {
                tracing::warn!(agent = %hello.agent_id, node = %hello.node_name, error = %e, "agent refused");
            }
            record_status(e)
        })?;
        self.infrastructure.announce(&hello.node_name, hello.node_addresses.iter().copied());
        let (session, was_stale) =
            self.registry.connect(&hello.agent_id, &hello.node_name, self.recorder.clock().now());
        if was_stale {
            self.raise_stale(&hello.agent_id, &hello.node_name, FindingState::Cleared).await;
        }
        tracing::info!(agent = %hello.agent_id, node = %hello.node_name, acked, "agent connected");
        let (tx, rx) = mpsc::channel(64);
        let welcome = pb::Welcome {
            coordinator_id: self.coordinator_id.clone(),
            acked_sequence: acked,
            heartbeat_interval_ms: u64::try_from(self.heartbeat_interval.as_millis()).unwrap_or(u64::MAX),
        };
        // The channel is new and empty: these sends cannot wait.
        let _ = tx.send(Ok(message(CoordinatorBody::Welcome(welcome)))).await;
        let mut infrastructure = self.infrastructure.subscribe();
        let ranges = infrastructure.borrow_and_update().clone();
        let _ = tx.send(Ok(infrastructure_message(&ranges))).await;
        // Registered only after the welcome is queued: a directive never
        // reaches an agent before its welcome. Dropped when the stream ends.
        let registration = self.directives.register(
            AgentInfo {
                agent_id: hello.agent_id.clone(),
                node_name: hello.node_name.clone(),
                labels: hello.labels.clone(),
                capabilities: hello.capabilities.iter().cloned().collect(),
            },
            tx.clone(),
        );
        let service = self.clone();
        tokio::spawn(async move {
            service.metrics.agent_streams.inc();
            let node = hello.node_name.clone();
            if let Err(status) = service.serve(&session, &node, &mut inbound, &tx, &mut infrastructure).await {
                tracing::warn!(agent = %session.agent_id, code = ?status.code(), message = status.message(), "agent stream ended with an error");
                let _ = tx.send(Err(status)).await;
            }
            drop(registration);
            service.registry.disconnect(&session);
            service.metrics.agent_streams.dec();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl AgentService {
    async fn serve(
        &self,
        session: &Session,
        node: &str,
        inbound: &mut Streaming<pb::AgentMessage>,
        tx: &mpsc::Sender<Result<pb::CoordinatorMessage, Status>>,
        infrastructure: &mut watch::Receiver<Arc<Infrastructure>>,
    ) -> Result<(), Status> {
        let mut stopping = self.stopping.clone();
        loop {
            let next = tokio::select! {
                next = inbound.message() => next.map_err(inbound_status)?,
                Ok(()) = infrastructure.changed() => {
                    let ranges = infrastructure.borrow_and_update().clone();
                    if tx.send(Ok(infrastructure_message(&ranges))).await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                () = session.replaced.notified() => {
                    return Err(Status::aborted("a newer stream from the same agent took over"));
                }
                () = until_stopping(&mut stopping) => {
                    return Err(Status::unavailable("the coordinator is stopping: connect again"));
                }
            };
            let Some(msg) = next else { return Ok(()) };
            if self.registry.touch(session, self.recorder.clock().now()) {
                self.raise_stale(&session.agent_id, node, FindingState::Cleared).await;
            }
            match msg.body {
                Some(AgentBody::Heartbeat(hb)) => {
                    self.registry.heartbeat(
                        session,
                        hb.snapshot.map(convert::snapshot_from_proto),
                        hb.spool_depth,
                        hb.spool_dropped_total,
                    );
                }
                Some(AgentBody::Findings(batch)) => {
                    let acked = self.record(session, batch).await?;
                    let ack = message(CoordinatorBody::Ack(pb::Ack { acked_sequence: acked }));
                    if tx.send(Ok(ack)).await.is_err() {
                        return Ok(());
                    }
                }
                Some(AgentBody::ActionResult(result)) => self.action_result(session, node, result),
                Some(AgentBody::Hello(_)) => {
                    return Err(Status::failed_precondition("hello may only be the first message of a stream"));
                }
                None => return Err(Status::invalid_argument("empty agent message")),
            }
        }
    }

    async fn record(&self, session: &Session, batch: pb::FindingBatch) -> Result<u64, Status> {
        if batch.findings.len() > self.max_batch_findings {
            self.metrics.findings_rejected.inc();
            return Err(Status::invalid_argument(format!(
                "batch of {} findings is over the limit of {}",
                batch.findings.len(),
                self.max_batch_findings
            )));
        }
        let mut findings = Vec::with_capacity(batch.findings.len());
        for item in batch.findings {
            let sequence = item.sequence;
            let decoded = item
                .finding
                .ok_or_else(|| Status::invalid_argument(format!("finding {sequence} has no body")))
                .and_then(|f| {
                    // A node reports only what nodes observe: the
                    // coordinator's own judgements (an agent gone stale, an
                    // MTTR at risk) are never taken from one.
                    convert::finding_from_proto(f)
                        .map_err(|e| e.to_string())
                        .and_then(|f| f.check_from_node().map(|()| f).map_err(|e| e.to_string()))
                        .map_err(|e| Status::invalid_argument(format!("finding {sequence}: {e}")))
                });
            match decoded {
                Ok(f) => findings.push((sequence, f)),
                Err(status) => {
                    self.metrics.findings_rejected.inc();
                    return Err(status);
                }
            }
        }
        let receipt =
            self.recorder.findings(session.agent_id.clone(), findings, batch.oldest_retained_sequence).await.map_err(
                |e| {
                    if matches!(e, RecordError::Sequence(_) | RecordError::UnknownAgent(_)) {
                        self.metrics.findings_rejected.inc();
                    }
                    record_status(e)
                },
            )?;
        Ok(receipt.acked)
    }

    /// Hands a directive's result to its waiter; one nobody waits for is
    /// logged and counted, never an error: a slow agent must not lose its
    /// stream over an answer that came too late.
    fn action_result(&self, session: &Session, node: &str, mut result: pb::ActionResult) {
        bound_result(&mut result);
        let (directive, outcome) = (result.directive_id.clone(), result.outcome);
        let outcome =
            pb::ActionOutcome::try_from(outcome).map_or_else(|_| outcome.to_string(), |o| o.as_str_name().to_owned());
        let agent = session.agent_id.as_str();
        let why = match self.directives.complete(agent, result) {
            Completion::Delivered => {
                tracing::debug!(agent, node, directive, outcome, "directive result");
                return;
            }
            Completion::Uncollected => {
                tracing::info!(agent, node, directive, outcome, "directive result (not collected)");
                return;
            }
            Completion::Late => "its waiter had stopped waiting".to_owned(),
            Completion::Duplicate => "it was already answered".to_owned(),
            Completion::Unknown => "no directive has this id".to_owned(),
            Completion::WrongAgent { expected } => format!("the directive was sent to agent {expected}"),
        };
        self.metrics.directive_results_unmatched.inc();
        tracing::warn!(agent, node, directive, outcome, why, "directive result ignored");
    }

    /// Raises or clears the finding that says an agent went silent.
    pub async fn raise_stale(&self, agent_id: &str, node: &str, state: FindingState) {
        self.recorder
            .raise(vec![stale_finding(agent_id, node, state, self.recorder.clock().now())], node.to_owned())
            .await;
    }
}

/// The coordinator's own finding about a silent agent.
pub fn stale_finding(agent_id: &str, node: &str, state: FindingState, at: Timestamp) -> Finding {
    Finding {
        kind: FindingKind::AgentStale,
        severity: Severity::Warning,
        state,
        target: format!("agent/{agent_id}"),
        labels: [("node".to_owned(), node.to_owned()), ("agent_id".to_owned(), agent_id.to_owned())].into(),
        evidence: Default::default(),
        summary: match state {
            FindingState::Active => format!("agent {agent_id} on {node} missed its heartbeats"),
            FindingState::Cleared => format!("agent {agent_id} on {node} is back"),
        },
        first_seen: at,
        last_seen: at,
        expires_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_without_names_are_refused_naming_the_field() {
        let status = validate_hello(pb::Hello { agent_id: "a".into(), ..Default::default() }).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "hello.node_name must not be empty");
    }

    #[test]
    fn every_part_of_a_hello_has_a_size_named_when_it_is_passed() {
        let base = || pb::Hello { agent_id: "a".into(), node_name: "n".into(), ..Default::default() };
        let refused = |hello: pb::Hello| validate_hello(hello).unwrap_err().message().to_owned();
        assert_eq!(
            refused(pb::Hello { agent_id: "a".repeat(254), ..base() }),
            "hello.agent_id is 254 bytes, over the limit of 253"
        );
        assert_eq!(
            refused(pb::Hello { version: "v".repeat(300), ..base() }),
            "hello.version is 300 bytes, over the limit of 256"
        );
        assert_eq!(
            refused(pb::Hello { capabilities: vec!["c".into(); 65], ..base() }),
            "hello.capabilities has 65 entries, over the limit of 64"
        );
        let labels = [("zone".to_owned(), "z".repeat(5000))].into();
        assert_eq!(refused(pb::Hello { labels, ..base() }), "hello.labels.zone is 5000 bytes, over the limit of 4096");
        assert!(validate_hello(base()).is_ok());
    }

    #[test]
    fn an_agents_answer_is_bounded_before_a_step_keeps_it() {
        let mut result = pb::ActionResult {
            message: "m".repeat(100_000),
            evidence: [("freed".to_owned(), "f".repeat(10_000))].into(),
            ..Default::default()
        };
        bound_result(&mut result);
        assert!(result.message.len() <= limits::MAX_SUMMARY_BYTES);
        assert!(result.evidence["freed"].ends_with("[truncated from 10000 bytes]"));
        let mut many = pb::ActionResult {
            evidence: (0..100).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
            ..Default::default()
        };
        bound_result(&mut many);
        assert_eq!(many.evidence.len(), 1);
        assert_eq!(many.evidence["evidence_refused"], "evidence has 100 entries, over the limit of 64");
    }

    #[test]
    fn oversized_messages_are_reported_as_resource_exhausted() {
        assert_eq!(inbound_status(Status::out_of_range("too big")).code(), Code::ResourceExhausted);
        assert_eq!(inbound_status(Status::cancelled("gone")).code(), Code::Cancelled);
    }
}
