//! The coordinator's HTTP side: health, metrics, the Alertmanager webhook,
//! and the doors people act through from PagerDuty and Slack
//! ([`crate::chatops`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use remedy_proto::listen::Gate;

use crate::alertmanager;
use crate::chatops;
use crate::metrics::Metrics;
use crate::recorder::Recorder;

/// Serves `/healthz`, `/readyz`, `/metrics`, the Alertmanager webhook,
/// `/api/v1/pagerduty/webhook` and `/api/v1/slack/actions` until `shutdown` resolves, under `gate`'s deadlines and caps.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gate: Arc<Gate>,
    metrics: Metrics,
    webhook: alertmanager::Webhook,
    chatops: chatops::ChatOps,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let alerts = Router::new().route("/api/v1/alertmanager", post(alertmanager::receive)).with_state(webhook.clone());
    let doors = Router::new()
        .route("/api/v1/pagerduty/webhook", post(chatops::pagerduty::receive))
        .route("/api/v1/slack/actions", post(chatops::slack::receive))
        .with_state(chatops);
    let ready = Router::new().route("/readyz", get(readyz)).with_state(webhook.recorder);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(render_metrics))
        .with_state(metrics)
        .merge(alerts)
        .merge(doors)
        .merge(ready);
    remedy_proto::listen::serve_http(listener, gate, app, shutdown).await
}

/// Serves a replica that is waiting for the lease: `/healthz` answers (the
/// process is alive and taking part in the election); everything else is
/// 503, so nobody mistakes a standby for the leader. Serves until
/// `shutdown` resolves, under the same deadlines and caps as the leader.
pub async fn serve_standby(
    listener: tokio::net::TcpListener,
    gate: Arc<Gate>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app =
        Router::new().route("/healthz", get(|| async { "ok (standby: waiting for the lease)\n" })).fallback(|| async {
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "this coordinator is a standby; the leader serves this\n")
        });
    remedy_proto::listen::serve_http(listener, gate, app, shutdown).await
}

/// Ready while the store commits: a coordinator whose store refuses writes
/// acknowledges nothing, so it should not be sent more.
async fn readyz(State(recorder): State<Recorder>) -> impl IntoResponse {
    match recorder.store_failure() {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(cause) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: the store cannot commit: {cause}\n")),
    }
}

/// OpenMetrics to a scraper that asks for it, the classic text format
/// otherwise.
async fn render_metrics(State(metrics): State<Metrics>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    use remedy_proto::selfmetrics::{CLASSIC, OPENMETRICS, to_classic, wants_openmetrics};
    let text = metrics.render();
    if wants_openmetrics(headers.get(header::ACCEPT).and_then(|a| a.to_str().ok())) {
        ([(header::CONTENT_TYPE, OPENMETRICS)], text)
    } else {
        ([(header::CONTENT_TYPE, CLASSIC)], to_classic(&text))
    }
}
