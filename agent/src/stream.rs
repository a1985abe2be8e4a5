//! The stream to the coordinator: hello, findings out of the spool,
//! acknowledgements back, heartbeats, and reconnection with backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use remedy_proto::MAX_MESSAGE_BYTES;
use remedy_proto::convert;
use remedy_proto::v1 as pb;
use remedy_proto::v1::agent_message::Body as AgentBody;
use remedy_proto::v1::agent_service_client::AgentServiceClient;
use remedy_proto::v1::coordinator_message::Body as CoordinatorBody;
use remedy_shared::backoff::Backoff;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::clock::now;
use crate::directives::{self, Executor};
use crate::state::{ConnectionState, Shared};

/// Findings per batch.
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
pub async fn run(shared: Arc<Shared>, config: StreamConfig, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(config.reconnect_initial, config.reconnect_max);
    // One executor for every stream: a directive still running when a stream
    // breaks sends its result on the next one.
    let (executor, mut results) = Executor::new(shared.clone());
    loop {
        set_state(&shared, ConnectionState::Connecting, None);
        let outcome = tokio::select! {
            r = session(&shared, &config, &mut backoff, &executor, &mut results) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        shared.metrics.connected.set(0);
        shared.metrics.reconnects.inc();
        let error = match outcome {
            Ok(()) => "the coordinator closed the stream".to_owned(),
            Err(e) => e.to_string(),
        };
        let delay = backoff.next_delay(rand::random::<f64>());
        tracing::warn!(error = %error, retry_in = ?delay, "stream to the coordinator ended");
        set_state(&shared, ConnectionState::Backoff, Some(error));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn set_state(shared: &Shared, state: ConnectionState, error: Option<String>) {
    let mut status = shared.status();
    status.connection.state = state;
    status.connection.since = now();
    if error.is_some() {
        status.connection.last_error = error;
    }
}

async fn session(
    shared: &Arc<Shared>,
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
    let last_sequence = shared.spool_figures().last_sequence;
    let hello = pb::Hello {
        agent_id: shared.agent_id.clone(),
        node_name: shared.node_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        capabilities: directives::capabilities(shared),
        labels: config.labels.clone().into_iter().collect(),
        last_sequence,
    };
    send(&out, AgentBody::Hello(hello)).await?;
    let mut inbound = client.connect(ReceiverStream::new(out_rx)).await?.into_inner();
    let welcome = match inbound.message().await?.and_then(|m| m.body) {
        Some(CoordinatorBody::Welcome(w)) => w,
        other => return Err(StreamError::Protocol(format!("expected a welcome, got {other:?}"))),
    };
    let mut acked = welcome.acked_sequence;
    apply_ack(shared, acked).await?;
    if acked > last_sequence {
        tracing::warn!(
            acked,
            last_sequence,
            "the coordinator holds sequences this agent never assigned; skipping past them"
        );
        shared.with_spool(move |s| s.fast_forward(acked)).await?;
    }
    {
        let mut status = shared.status();
        status.connection.coordinator_id = Some(welcome.coordinator_id.clone());
        status.connection.last_error = None;
    }
    set_state(shared, ConnectionState::Connected, None);
    shared.metrics.connected.set(1);
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
        sent = send_pending(shared, &out, sent, acked).await?;
        tokio::select! {
            msg = inbound.message() => {
                let Some(msg) = msg? else { return Ok(()) };
                match msg.body {
                    Some(CoordinatorBody::Ack(ack)) => {
                        if ack.acked_sequence > acked {
                            acked = ack.acked_sequence;
                            apply_ack(shared, acked).await?;
                        }
                    }
                    Some(CoordinatorBody::Directive(d)) => {
                        tracing::info!(
                            directive = %d.id, action = %d.action, incident = %d.incident_id, step = %d.step_id,
                            dry_run = d.dry_run, "directive received"
                        );
                        executor.submit(d);
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
                let figures = shared.spool_figures();
                let snapshot = shared.status().snapshot.as_ref().map(convert::snapshot_to_proto);
                send(&out, AgentBody::Heartbeat(pb::Heartbeat {
                    snapshot,
                    spool_depth: figures.depth as u64,
                    spool_dropped_total: figures.dropped_total,
                })).await?;
            }
            () = shared.new_findings.notified() => {}
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

async fn apply_ack(shared: &Arc<Shared>, acked: u64) -> Result<(), StreamError> {
    let removed = shared.with_spool(move |s| s.ack(acked)).await?;
    shared.metrics.findings_acked.inc_by(removed as u64);
    shared.status().connection.last_acked = acked;
    Ok(())
}

/// Sends spooled findings above `sent` while the in-flight window allows;
/// returns the new `sent` mark.
async fn send_pending(
    shared: &Arc<Shared>,
    out: &mpsc::Sender<pb::AgentMessage>,
    mut sent: u64,
    acked: u64,
) -> Result<u64, StreamError> {
    while sent.saturating_sub(acked) < MAX_IN_FLIGHT {
        let room = (MAX_IN_FLIGHT - sent.saturating_sub(acked)).min(BATCH as u64) as usize;
        let after = sent;
        let (findings, oldest) =
            shared.with_spool(move |s| Ok((s.read_after(after, room)?, s.oldest_retained()?))).await?;
        let Some(last) = findings.last().map(|f| f.sequence) else { break };
        send(out, AgentBody::Findings(pb::FindingBatch { findings, oldest_retained_sequence: oldest })).await?;
        sent = last;
    }
    Ok(sent)
}
