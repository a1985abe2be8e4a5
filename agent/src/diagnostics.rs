//! The agent's local diagnostics endpoint.
//!
//! Read-only routes answer anyone who can reach the address (loopback by
//! default). The one route that changes state, `POST /v1/findings`, lets
//! node-local tools report findings through the agent's spool; it answers
//! only to loopback peers, whatever address the endpoint is bound to, and
//! [`SubmitGate`] decides who among them: a bearer token from
//! `diagnostics.tokens_file`, or anyone on the node only under `--insecure`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use remedy_shared::connections::ConnectionLimits;
use remedy_shared::finding::{Finding, FindingKind, FindingState, Severity};
use serde::{Deserialize, Serialize};

use crate::clock::now;
use crate::infrastructure::{InfrastructureStatus, OwnInfrastructure};
use crate::local::LocalStatus;
use crate::logs::LogsStatus;
use crate::logs::detect::DetectorsStatus;
use crate::metrics::Metrics;
use crate::nft::BlockingStatus;
use crate::outbox::{Outbox, SpoolFigures, SubmitError};
use crate::pods::PodsStatus;
use crate::procsig::ProcessesStatus;
use crate::published::Published;
use crate::signals::NodeStatus;
use crate::stream::{Connection, ConnectionState};

/// Largest request body accepted, bytes: room for one finding at
/// [`remedy_proto::MAX_FINDING_BYTES`] with JSON's quoting, so a finding
/// above that limit is answered with the reason (413) by the outbox.
const MAX_BODY: usize = 2 * remedy_proto::MAX_FINDING_BYTES;
/// Most findings in one request.
const MAX_SUBMIT: usize = 1_000;
/// Longest `ttl_seconds` a submitted finding may ask for: the limit on
/// any node's finding (24 hours).
const MAX_TTL_SECONDS: u64 = remedy_shared::finding::MAX_NODE_TTL.as_secs();

/// Who may submit findings by hand.
#[derive(Debug)]
pub enum SubmitGate {
    /// Holders of these tokens (each names a person, like the admin API's).
    Tokens(remedy_shared::auth::Tokens),
    /// Any local process: only with `--insecure`, where nothing else is
    /// authenticated either.
    AnyLocalProcess,
    /// Nobody: TLS is on and no tokens file is configured.
    Closed,
}

impl SubmitGate {
    fn admit(&self, headers: &axum::http::HeaderMap) -> Result<(), (StatusCode, String)> {
        let header = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
        match self {
            SubmitGate::AnyLocalProcess => Ok(()),
            SubmitGate::Closed => Err((
                StatusCode::FORBIDDEN,
                "submitting findings needs a bearer token: configure diagnostics.tokens_file".into(),
            )),
            SubmitGate::Tokens(tokens) => match remedy_proto::tokens::bearer(header) {
                remedy_proto::tokens::Bearer::Token(t) if remedy_proto::tokens::identify(tokens, t).is_some() => Ok(()),
                remedy_proto::tokens::Bearer::Absent => {
                    Err((StatusCode::UNAUTHORIZED, "an `Authorization: Bearer TOKEN` header is required".into()))
                }
                _ => Err((StatusCode::UNAUTHORIZED, "the bearer token is not known".into())),
            },
        }
    }
}

/// What the endpoint shows, and where findings submitted by hand go: each
/// feature's published status, handed over by `main`.
#[derive(Debug, Clone)]
pub struct Board {
    /// This agent's identity.
    pub agent_id: String,
    /// The node.
    pub node_name: String,
    /// Where submitted findings go; its figures are shown.
    pub outbox: Outbox,
    /// Every metric.
    pub metrics: Metrics,
    /// The stream to the coordinator.
    pub connection: Published<Connection>,
    /// The latest sample and the node's findings.
    pub node: Published<NodeStatus>,
    /// This node's pods.
    pub pods: Published<PodsStatus>,
    /// Log tailing.
    pub logs: Published<LogsStatus>,
    /// IP blocking.
    pub blocking: Published<BlockingStatus>,
    /// What the log detectors have seen.
    pub log_detectors: Published<DetectorsStatus>,
    /// Process signals.
    pub processes: Published<ProcessesStatus>,
    /// Log cleanup and GC nudges.
    pub local_actions: Published<LocalStatus>,
    /// The addresses never reported nor blocked.
    pub infrastructure: OwnInfrastructure,
}

/// Serves the endpoint until `shutdown` resolves, with the default
/// connection deadlines and caps: local tools are not to hold it open.
pub async fn serve(
    listener: tokio::net::TcpListener,
    board: Board,
    gate: Arc<SubmitGate>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = remedy_proto::listen::Gate::new(ConnectionLimits::default(), board.metrics.on_close());
    let app = router(Arc::new(board)).layer(axum::Extension(gate));
    remedy_proto::listen::serve_http(listener, connections, app, shutdown).await
}

fn router(board: Arc<Board>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/state", get(debug_state))
        .route("/v1/findings", post(submit))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(board)
}

async fn readyz(State(board): State<Arc<Board>>) -> Response {
    let connection = board.connection.get();
    if connection.state == ConnectionState::Connected {
        (StatusCode::OK, "ready: connected to the coordinator\n").into_response()
    } else {
        let why = connection.last_error.unwrap_or_else(|| "not connected yet".into());
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response()
    }
}

/// OpenMetrics to a scraper that asks for it, the classic text format
/// otherwise.
async fn metrics(State(board): State<Arc<Board>>, headers: axum::http::HeaderMap) -> Response {
    use remedy_proto::selfmetrics::{CLASSIC, OPENMETRICS, to_classic, wants_openmetrics};
    let text = board.metrics.render();
    if wants_openmetrics(headers.get(header::ACCEPT).and_then(|a| a.to_str().ok())) {
        ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
    } else {
        ([(header::CONTENT_TYPE, CLASSIC)], to_classic(&text)).into_response()
    }
}

/// `/debug/state`: every feature's status at one moment.
#[derive(Serialize)]
struct DebugState {
    agent_id: String,
    node_name: String,
    version: &'static str,
    /// The stream.
    connection: Connection,
    /// The latest snapshot and the findings raised and not cleared.
    #[serde(flatten)]
    node: NodeStatus,
    pods: PodsStatus,
    logs: LogsStatus,
    blocking: BlockingStatus,
    log_detectors: DetectorsStatus,
    processes: ProcessesStatus,
    local_actions: LocalStatus,
    spool: SpoolFigures,
    /// This node's addresses and the cluster's, as the coordinator sent them.
    infrastructure: InfrastructureStatus,
}

async fn debug_state(State(board): State<Arc<Board>>) -> Json<DebugState> {
    Json(DebugState {
        agent_id: board.agent_id.clone(),
        node_name: board.node_name.clone(),
        version: env!("CARGO_PKG_VERSION"),
        connection: board.connection.get(),
        node: board.node.get(),
        pods: board.pods.get(),
        logs: board.logs.get(),
        blocking: board.blocking.get(),
        log_detectors: board.log_detectors.get(),
        processes: board.processes.get(),
        local_actions: board.local_actions.get(),
        spool: board.outbox.figures(),
        infrastructure: board.infrastructure.status(),
    })
}

/// A finding reported by a node-local tool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Submitted {
    kind: String,
    severity: Severity,
    #[serde(default = "active")]
    state: FindingState,
    target: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    evidence: BTreeMap<String, String>,
    #[serde(default)]
    summary: String,
    /// Seconds until an unrefreshed active finding stops counting.
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

fn active() -> FindingState {
    FindingState::Active
}

#[derive(Serialize)]
struct Accepted {
    stored: usize,
    dropped: usize,
    first_sequence: u64,
    last_sequence: u64,
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn submit(
    State(board): State<Arc<Board>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::Extension(gate): axum::Extension<Arc<SubmitGate>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({ "error": "findings are accepted from this node only" })),
        )
            .into_response();
    }
    if let Err((code, why)) = gate.admit(&headers) {
        return (code, Json(serde_json::json!({ "error": why }))).into_response();
    }
    let submitted: Vec<Submitted> = match serde_json::from_slice(&body) {
        Ok(list) => list,
        Err(e) => return bad_request(format!("body must be a JSON array of findings: {e}")),
    };
    if submitted.len() > MAX_SUBMIT {
        return bad_request(format!("at most {MAX_SUBMIT} findings per request"));
    }
    let at = now();
    let mut findings = Vec::with_capacity(submitted.len());
    for (i, s) in submitted.into_iter().enumerate() {
        let kind: FindingKind = match s.kind.parse() {
            Ok(k) => k,
            Err(e) => return bad_request(format!("finding {i}: {e}")),
        };
        if let Some(ttl) = s.ttl_seconds
            && ttl > MAX_TTL_SECONDS
        {
            return bad_request(format!(
                "finding {i}: ttl_seconds {ttl} is above the limit of {MAX_TTL_SECONDS} (24 hours)"
            ));
        }
        let finding = Finding {
            kind,
            severity: s.severity,
            state: s.state,
            target: s.target,
            labels: s.labels,
            evidence: s.evidence,
            summary: s.summary,
            first_seen: at,
            last_seen: at,
            expires_at: s.ttl_seconds.map(|t| at.plus(std::time::Duration::from_secs(t))),
        };
        if let Err(e) = finding.validate().and_then(|()| finding.check_from_node()) {
            return bad_request(format!("finding {i}: {e}"));
        }
        // A local tool can shorten what it sends, so a field over its
        // limit is refused whole rather than cut.
        if let Err(e) = finding.check_sizes() {
            return (StatusCode::PAYLOAD_TOO_LARGE, Json(serde_json::json!({ "error": format!("finding {i}: {e}") })))
                .into_response();
        }
        findings.push(finding);
    }
    match board.outbox.submit(findings).await {
        Ok(r) => (
            StatusCode::ACCEPTED,
            Json(Accepted {
                stored: r.stored,
                dropped: r.dropped,
                first_sequence: r.first_sequence,
                last_sequence: r.last_sequence,
            }),
        )
            .into_response(),
        Err(e @ SubmitError::TooLarge { .. }) => {
            (StatusCode::PAYLOAD_TOO_LARGE, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
        }
        Err(e @ SubmitError::Spool(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
        }
    }
}
