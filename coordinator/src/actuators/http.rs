//! The `http` action (call a URL and check the answer: a circuit-breaker
//! reset, a cache-warm endpoint) and `probe_http` (record a URL's status
//! and latency).

use std::time::Duration;

use serde::Deserialize;

use super::{ActionCall, ActionReport, ActionStatus, Actuator};
use remedy_shared::config::opt_duration;
use remedy_shared::text::{self, Unit};

/// Longest part of a response body kept as evidence.
const MAX_EVIDENCE_BODY: usize = 512;

/// Performs `http` and `probe_http` actions with one shared client.
#[derive(Debug, Clone)]
pub struct HttpActuator {
    client: reqwest::Client,
}

impl HttpActuator {
    /// An actuator with its own connection pool. Redirects are not followed:
    /// an action goes where the runbook says, or fails saying where it was sent.
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("remedy-coordinator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpActuator { client })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpParams {
    #[serde(default = "get")]
    method: String,
    url: String,
    #[serde(default)]
    body: Option<serde_json::Value>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// Exact status expected; absent means any 2xx.
    #[serde(default)]
    expected_status: Option<u16>,
    #[serde(default, with = "opt_duration")]
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeParams {
    #[serde(default = "get")]
    method: String,
    url: String,
    #[serde(default = "ok_status")]
    expected_status: u16,
    #[serde(default, with = "opt_duration")]
    timeout: Option<Duration>,
}

fn ok_status() -> u16 {
    200
}

fn get() -> String {
    "GET".to_owned()
}

/// A request ready to send, from either action's parameters.
struct Prepared {
    method: reqwest::Method,
    url: reqwest::Url,
    body: Option<serde_json::Value>,
    headers: std::collections::BTreeMap<String, String>,
    expected: Option<u16>,
    timeout: Duration,
}

fn prepare(call: &ActionCall) -> Result<Prepared, String> {
    let params = call.params.clone();
    let (method, url, body, headers, expected, timeout) = match call.kind.as_str() {
        "probe_http" => {
            let p: ProbeParams = serde_json::from_value(params).map_err(|e| format!("probe_http parameters: {e}"))?;
            (p.method, p.url, None, Default::default(), Some(p.expected_status), p.timeout)
        }
        _ => {
            let p: HttpParams = serde_json::from_value(params).map_err(|e| format!("http parameters: {e}"))?;
            (p.method, p.url, p.body, p.headers, p.expected_status, p.timeout)
        }
    };
    let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{method}` is not an HTTP method"))?;
    let url = reqwest::Url::parse(&url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{url}` is not an http or https URL"));
    }
    let timeout = timeout.unwrap_or(Duration::from_secs(10)).min(call.deadline);
    Ok(Prepared { method, url, body, headers, expected, timeout })
}

#[tonic::async_trait]
impl Actuator for HttpActuator {
    fn kinds(&self) -> &'static [&'static str] {
        &["http", "probe_http"]
    }

    async fn execute(&self, call: &ActionCall) -> ActionReport {
        let p = match prepare(call) {
            Ok(p) => p,
            Err(e) => return ActionReport::new(ActionStatus::Invalid, e),
        };
        let target = format!("{} {}", p.method, p.url);
        if call.dry_run {
            return ActionReport::new(ActionStatus::DryRun, format!("would send {target}")).with("request", &target);
        }
        let probe = call.kind == "probe_http";
        let mut request = self.client.request(p.method, p.url).timeout(p.timeout);
        let started = tokio::time::Instant::now();
        for (k, v) in &p.headers {
            request = request.header(k, v);
        }
        if let Some(body) = &p.body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return ActionReport::new(
                    ActionStatus::TimedOut,
                    format!("{target}: no answer within {:?}", p.timeout),
                )
                .with("request", &target)
                .with("ok", false);
            }
            Err(e) => {
                let mut cause: &dyn std::error::Error = &e;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                return ActionReport::new(ActionStatus::Failed, format!("{target}: {cause}"))
                    .with("request", &target)
                    .with("ok", false);
            }
        };
        let status = response.status().as_u16();
        let latency_ms = started.elapsed().as_millis();
        let body = if probe { String::new() } else { response.text().await.unwrap_or_default() };
        let snippet = text::truncate(&body, MAX_EVIDENCE_BODY, Unit::Chars);
        let ok = match p.expected {
            Some(want) => status == want,
            None => (200..300).contains(&status),
        };
        let expectation = p.expected.map_or("2xx".to_owned(), |s| s.to_string());
        let report = if ok {
            ActionReport::new(ActionStatus::Succeeded, format!("{target} answered {status}"))
        } else {
            ActionReport::new(ActionStatus::Failed, format!("{target} answered {status}, expected {expectation}"))
        };
        let report =
            report.with("request", &target).with("status", status).with("ok", ok).with("latency_ms", latency_ms);
        if probe { report } else { report.with("body", snippet) }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::{get, post};

    use super::*;

    async fn server() -> SocketAddr {
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/admin/circuit-breaker/reset", post(|body: String| async move { (StatusCode::ACCEPTED, body) }))
            .route("/broken", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn call(kind: &str, params: serde_json::Value, dry_run: bool) -> ActionCall {
        ActionCall {
            incident_id: "INC-000001".into(),
            step_id: "reset".into(),
            kind: kind.into(),
            params,
            dry_run,
            deadline: Duration::from_secs(5),
            accepted_risk: None,
        }
    }

    #[tokio::test]
    async fn a_post_with_the_expected_status_succeeds_and_keeps_the_answer_as_evidence() {
        let addr = server().await;
        let actuator = HttpActuator::new().unwrap();
        let params = serde_json::json!({
            "method": "post", "url": format!("http://{addr}/admin/circuit-breaker/reset"),
            "body": {"services": ["analytics"]}, "expected_status": 202
        });
        let report = actuator.execute(&call("http", params, false)).await;
        assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
        assert_eq!(report.evidence["status"], "202");
        assert_eq!(report.evidence["body"], r#"{"services":["analytics"]}"#);
    }

    #[tokio::test]
    async fn a_non_2xx_answer_fails_naming_the_status() {
        let addr = server().await;
        let report = HttpActuator::new()
            .unwrap()
            .execute(&call("http", serde_json::json!({ "url": format!("http://{addr}/broken") }), false))
            .await;
        assert_eq!(report.status, ActionStatus::Failed);
        assert!(report.message.ends_with("answered 503, expected 2xx"), "{}", report.message);
        assert_eq!(report.evidence["body"], "down");
    }

    #[tokio::test]
    async fn a_slow_server_times_out_at_the_configured_timeout() {
        let addr = server().await;
        let params = serde_json::json!({ "url": format!("http://{addr}/slow"), "timeout": "200ms" });
        let report = HttpActuator::new().unwrap().execute(&call("http", params, false)).await;
        assert_eq!(report.status, ActionStatus::TimedOut, "{report:?}");
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_with_the_cause() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let report = HttpActuator::new()
            .unwrap()
            .execute(&call("http", serde_json::json!({ "url": format!("http://{addr}/health") }), false))
            .await;
        assert_eq!(report.status, ActionStatus::Failed);
        assert!(report.message.to_lowercase().contains("refused"), "{}", report.message);
    }

    #[tokio::test]
    async fn dry_run_sends_nothing_and_bad_parameters_are_invalid() {
        let report = HttpActuator::new()
            .unwrap()
            .execute(&call("http", serde_json::json!({ "method": "POST", "url": "http://127.0.0.1:9/hook" }), true))
            .await;
        assert_eq!(report.status, ActionStatus::DryRun);
        assert_eq!(report.message, "would send POST http://127.0.0.1:9/hook");
        let report = HttpActuator::new()
            .unwrap()
            .execute(&call("http", serde_json::json!({ "url": "ftp://example/x" }), true))
            .await;
        assert_eq!(report.status, ActionStatus::Invalid);
        let report =
            HttpActuator::new().unwrap().execute(&call("http", serde_json::json!({ "ur": "http://x/" }), true)).await;
        assert_eq!(report.status, ActionStatus::Invalid);
        assert!(report.message.contains("unknown field `ur`"), "{}", report.message);
    }
}
