//! The stream to the coordinator: hello, findings out of the spool,
//! acknowledgements back, heartbeats, and reconnection with backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use remedy_proto::MAX_MESSAGE_BYTES;
use remedy_proto::convert;
use remedy_proto::v1 as pb;
use remedy_proto::v1::agent_message::Body as AgentBody;
use remedy_proto::v1::agent_service_client::AgentServiceClient;
use remedy_proto::v1::coordinator_message::Body as CoordinatorBody;
use remedy_shared::Timestamp;
use remedy_shared::backoff::Backoff;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::clock::now;
use crate::directives::Executor;
use crate::handler::Handlers;
use crate::infrastructure::OwnInfrastructure;
use crate::outbox::Outbox;
use crate::published::Published;
use crate::signals::NodeStatus;

/// Findings per batch, at most; [`remedy_proto::MAX_BATCH_BYTES`] bounds
/// a batch's size too, so large findings go in smaller batches.
const BATCH: usize = 500;
/// Findings sent and not yet acknowledged, at most. Bounds what a slow
/// coordinator can make the agent hold in memory and on the wire.
const MAX_IN_FLIGHT: u64 = 5_000;

/// What the stream needs to know.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Coordinator URL.
    pub coordinator: String,
    /// The TLS material and the name to check the coordinator against;
    /// `None`: plaintext.
    pub tls: Option<(Arc<remedy_proto::tls::ClientTls>, Option<String>)>,
    /// Heartbeat interval until the coordinator says otherwise.
    pub heartbeat_interval: Duration,
    /// First reconnection delay.
    pub reconnect_initial: Duration,
    /// Longest reconnection delay.
    pub reconnect_max: Duration,
    /// Silence after which an HTTP/2 ping goes to the coordinator.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// Node labels for the hello.
    pub labels: BTreeMap<String, String>,
}

/// Where the stream to the coordinator stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Dialling.
    Connecting,
    /// Stream open and welcomed.
    Connected,
    /// Waiting before the next attempt.
    Backoff,
}

/// The stream's status, for /readyz and /debug/state.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    /// Where it stands.
    pub state: ConnectionState,
    /// The coordinator dialled.
    pub coordinator: String,
    /// The coordinator replica that welcomed us.
    pub coordinator_id: Option<String>,
    /// Since when in this state.
    pub since: Timestamp,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Highest sequence the coordinator acknowledged.
    pub last_acked: u64,
}

impl Connection {
    /// Not connected yet: dialling `coordinator` since `now`.
    pub fn connecting(coordinator: String, now: Timestamp) -> Connection {
        Connection {
            state: ConnectionState::Connecting,
            coordinator,
            coordinator_id: None,
            since: now,
            last_error: None,
            last_acked: 0,
        }
    }
}

/// The stream's metrics.
#[derive(Debug, Clone, Default)]
pub struct StreamMetrics {
    /// 1 while a stream to the coordinator is open.
    pub connected: Gauge,
    /// Connection attempts that failed or streams that broke.
    pub reconnects: Counter,
}

impl StreamMetrics {
    /// Registers them.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("connected", "1 while the stream to the coordinator is open", self.connected.clone());
        registry.register("reconnects", "Failed connection attempts and broken streams", self.reconnects.clone());
    }
}

/// What the stream works with, besides its settings.
#[derive(Debug, Clone)]
pub struct Link {
    /// This agent's identity, as the hello says it.
    pub agent_id: String,
    /// The node, as the hello says it.
    pub node_name: String,
    /// Findings to send; acknowledgements drop them.
    pub outbox: Outbox,
    /// The directives this agent runs; the hello announces them.
    pub handlers: Arc<Handlers>,
    /// The latest sample, sent with each heartbeat.
    pub node: Published<NodeStatus>,
    /// Where the stream stands, published for /readyz and /debug/state.
    pub connection: Published<Connection>,
    /// The stream's metrics.
    pub metrics: StreamMetrics,
    /// This node's addresses (announced in each hello) and the cluster's
    /// ranges (as the coordinator sends them).
    pub infrastructure: OwnInfrastructure,
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("cannot reach the coordinator: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("coordinator refused: {} ({:?})", .0.message(), .0.code())]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Spool(#[from] crate::spool::SpoolError),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Keeps a stream to the coordinator open until `stop` turns true.
pub async fn run(link: Link, config: StreamConfig, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(config.reconnect_initial, config.reconnect_max);
    // One executor for every stream: a directive still running when a stream
    // breaks sends its result on the next one.
    let (executor, mut results) = Executor::new(link.handlers.clone());
    loop {
        set_state(&link, ConnectionState::Connecting, None);
        let outcome = tokio::select! {
            r = session(&link, &config, &mut backoff, &executor, &mut results) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        link.metrics.connected.set(0);
        link.metrics.reconnects.inc();
        let error = match outcome {
            Ok(()) => "the coordinator closed the stream".to_owned(),
            Err(e) => e.to_string(),
        };
        let delay = backoff.next_delay(rand::random::<f64>());
        tracing::warn!(error = %error, retry_in = ?delay, "stream to the coordinator ended");
        set_state(&link, ConnectionState::Backoff, Some(error));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn set_state(link: &Link, state: ConnectionState, error: Option<String>) {
    let mut connection = link.connection.lock();
    connection.state = state;
    connection.since = now();
    if error.is_some() {
        connection.last_error = error;
    }
}

async fn session(
    link: &Link,
    config: &StreamConfig,
    backoff: &mut Backoff,
    executor: &Executor,
    results: &mut mpsc::Receiver<pb::ActionResult>,
) -> Result<(), StreamError> {
    let endpoint = Endpoint::from_shared(config.coordinator.clone())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout);
    let channel = match &config.tls {
        // Each connection takes the newest certificate from disk.
        Some((tls, server_name)) => remedy_proto::tls::channel(endpoint, tls.clone(), server_name.clone())
            .map_err(|e| StreamError::Protocol(e.to_string()))?,
        None => endpoint.connect().await?,
    };
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (out, out_rx) = mpsc::channel::<pb::AgentMessage>(16);
    let last_sequence = link.outbox.figures().last_sequence;
    let hello = pb::Hello {
        agent_id: link.agent_id.clone(),
        node_name: link.node_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        capabilities: link.handlers.announced(),
        labels: config.labels.clone().into_iter().collect(),
        last_sequence,
        // Read at every connection: an address added since is announced.
        node_addresses: link.infrastructure.refresh_node().iter().map(ToString::to_string).collect(),
    };
    send(&out, AgentBody::Hello(hello)).await?;
    let mut inbound = client.connect(ReceiverStream::new(out_rx)).await?.into_inner();
    let welcome = match inbound.message().await?.and_then(|m| m.body) {
        Some(CoordinatorBody::Welcome(w)) => w,
        other => return Err(StreamError::Protocol(format!("expected a welcome, got {other:?}"))),
    };
    let mut acked = welcome.acked_sequence;
    apply_ack(link, acked).await?;
    if acked > last_sequence {
        tracing::warn!(
            acked,
            last_sequence,
            "the coordinator holds sequences this agent never assigned; skipping past them"
        );
        link.outbox.with_spool(move |s| s.fast_forward(acked)).await?;
    }
    {
        let mut connection = link.connection.lock();
        connection.coordinator_id = Some(welcome.coordinator_id.clone());
        connection.last_error = None;
    }
    set_state(link, ConnectionState::Connected, None);
    link.metrics.connected.set(1);
    backoff.reset();
    tracing::info!(coordinator = %welcome.coordinator_id, acked, "connected to the coordinator");

    let heartbeat_every = match welcome.heartbeat_interval_ms {
        0 => config.heartbeat_interval,
        ms => Duration::from_millis(ms),
    };
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Everything at or below `sent` is on the wire or acknowledged.
    let mut sent = acked;
    loop {
        sent = send_pending(link, &out, sent, acked).await?;
        tokio::select! {
            msg = inbound.message() => {
                let Some(msg) = msg? else { return Ok(()) };
                match msg.body {
                    Some(CoordinatorBody::Ack(ack)) => {
                        if ack.acked_sequence > acked {
                            acked = ack.acked_sequence;
                            apply_ack(link, acked).await?;
                        }
                    }
                    Some(CoordinatorBody::Directive(d)) => {
                        tracing::info!(
                            directive = %d.id, action = %d.action, incident = %d.incident_id, step = %d.step_id,
                            dry_run = d.dry_run, "directive received"
                        );
                        executor.submit(d);
                    }
                    Some(CoordinatorBody::Infrastructure(known)) => {
                        link.infrastructure.set_cluster(known.ranges.iter().map(String::as_str));
                    }
                    Some(CoordinatorBody::ConfigUpdate(update)) => {
                        if update.heartbeat_interval_ms > 0 {
                            heartbeat = tokio::time::interval(Duration::from_millis(update.heartbeat_interval_ms));
                        }
                    }
                    Some(CoordinatorBody::Welcome(_)) | None => {
                        return Err(StreamError::Protocol("unexpected message from the coordinator".into()));
                    }
                }
            }
            _ = heartbeat.tick() => {
                let figures = link.outbox.figures();
                let snapshot = link.node.lock().snapshot.as_ref().map(convert::snapshot_to_proto);
                send(&out, AgentBody::Heartbeat(pb::Heartbeat {
                    snapshot,
                    spool_depth: figures.depth as u64,
                    spool_dropped_total: figures.dropped_total,
                })).await?;
            }
            () = link.outbox.submitted() => {}
            Some(result) = results.recv() => {
                let id = result.directive_id.clone();
                if let Err(e) = send(&out, AgentBody::ActionResult(result)).await {
                    tracing::warn!(directive = %id, "a directive result was not delivered: the stream closed");
                    return Err(e);
                }
            }
        }
    }
}

async fn send(out: &mpsc::Sender<pb::AgentMessage>, body: AgentBody) -> Result<(), StreamError> {
    out.send(pb::AgentMessage { body: Some(body) })
        .await
        .map_err(|_| StreamError::Protocol("the stream closed while sending".into()))
}

async fn apply_ack(link: &Link, acked: u64) -> Result<(), StreamError> {
    link.outbox.acknowledge(acked).await?;
    link.connection.lock().last_acked = acked;
    Ok(())
}

/// Sends spooled findings above `sent` while the in-flight window allows,
/// in batches bounded in count and in encoded bytes (a batch above the
/// coordinator's message limit would be refused on every reconnection and
/// deliver nothing more); returns the new `sent` mark.
async fn send_pending(
    link: &Link,
    out: &mpsc::Sender<pb::AgentMessage>,
    mut sent: u64,
    acked: u64,
) -> Result<u64, StreamError> {
    while sent.saturating_sub(acked) < MAX_IN_FLIGHT {
        let room = (MAX_IN_FLIGHT - sent.saturating_sub(acked)).min(BATCH as u64) as usize;
        let after = sent;
        let (findings, oldest) = link
            .outbox
            .with_spool(move |s| Ok((s.read_after(after, room, remedy_proto::MAX_BATCH_BYTES)?, s.oldest_retained()?)))
            .await?;
        let Some(last) = findings.last().map(|f| f.sequence) else { break };
        send(out, AgentBody::Findings(pb::FindingBatch { findings, oldest_retained_sequence: oldest })).await?;
        sent = last;
    }
    Ok(sent)
}
