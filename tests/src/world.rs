//! The world a runbook acts on, for tests: one HTTP server on loopback that
//! plays the platform's API (`/health`, `/admin/...`) and every webhook
//! (`/hooks/<name>`), and remembers every request it received.
//!
//! The health answer can be switched, and any path under `/hang/` is held
//! open until the test lets it go, so a test can catch the coordinator in
//! the middle of an action. Paths with `/firewall/access_rules/rules` play
//! Cloudflare's IP access rules API, answering with a rule id; a POST to
//! a path ending `/incidents` plays Statuspage's incident creation,
//! answering with a new incident id (`sp-<n>`). Paths under `/outage/`
//! play a service that is down (500) until the moment the test sets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use tokio::sync::Notify;

use crate::procs::eventually;

/// One request the world received.
#[derive(Debug, Clone)]
pub struct Received {
    /// GET, POST...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// The body, as text.
    pub body: String,
}

#[derive(Debug, Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    health: AtomicU16,
    release: Notify,
    /// Status answered by every path under `/fail/`.
    fail_status: AtomicU16,
    /// Until when paths under `/outage/` answer 500 (always, when unset).
    outage_ends: Mutex<Option<tokio::time::Instant>>,
}

/// The running server; stops when dropped.
#[derive(Debug)]
pub struct World {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl World {
    /// Starts the world on an ephemeral loopback port, healthy.
    pub async fn start() -> World {
        let shared =
            Arc::new(Shared { health: AtomicU16::new(200), fail_status: AtomicU16::new(500), ..Shared::default() });
        let app = Router::new().fallback(answer).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the world's port");
        let addr = listener.local_addr().expect("the world's address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        World { addr, shared, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes `/health` answer `status`.
    pub fn set_health(&self, status: u16) {
        self.shared.health.store(status, Ordering::SeqCst);
    }

    /// Makes paths under `/outage/` answer 500 until `ends`, then 200.
    pub fn outage_until(&self, ends: tokio::time::Instant) {
        *self.shared.outage_ends.lock().unwrap_or_else(|p| p.into_inner()) = Some(ends);
    }

    /// Lets every request held under `/hang/` finish (with 200).
    pub fn release_hung(&self) {
        self.shared.release.notify_waiters();
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Requests with this method whose path starts with `prefix`.
    pub fn requests(&self, method: &str, prefix: &str) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.method == method && r.path.starts_with(prefix)).collect()
    }

    /// Waits until at least `n` such requests arrived; returns them.
    pub async fn wait_for(&self, method: &str, prefix: &str, n: usize) -> Vec<Received> {
        let what = format!("{n} {method} {prefix} request(s) at the world server");
        eventually(&what, Duration::from_secs(60), || async {
            Some(self.requests(method, prefix)).filter(|r| r.len() >= n)
        })
        .await
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let path = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    shared.received.lock().unwrap_or_else(|p| p.into_inner()).push(Received {
        method: method.to_string(),
        path: path.clone(),
        headers: headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let status = |code: u16| StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if path.starts_with("/health") {
        let code = shared.health.load(Ordering::SeqCst);
        return (status(code), if code == 200 { "ok".into() } else { "down".into() });
    }
    if path.starts_with("/hang/") {
        // Held until the test releases it; bounded so a forgotten release
        // cannot keep the server busy for ever.
        let _ = tokio::time::timeout(Duration::from_secs(120), shared.release.notified()).await;
        return (StatusCode::OK, "released".into());
    }
    // Cloudflare's IP access rules: a rule id for a creation, the id back
    // for a deletion, in the API's envelope.
    if let Some(rest) = path.split_once("/firewall/access_rules/rules").map(|(_, rest)| rest) {
        let id = match method.as_str() {
            "POST" => format!("rule-{}", shared.received.lock().unwrap_or_else(|p| p.into_inner()).len()),
            _ => rest.trim_start_matches('/').to_owned(),
        };
        return (StatusCode::OK, format!("{{\"success\":true,\"errors\":[],\"result\":{{\"id\":\"{id}\"}}}}"));
    }
    if method == Method::POST && path.ends_with("/incidents") {
        let n = shared.received.lock().unwrap_or_else(|p| p.into_inner()).len();
        return (StatusCode::CREATED, format!("{{\"id\":\"sp-{n}\",\"status\":\"investigating\"}}"));
    }
    if path.starts_with("/outage/") {
        let ends = *shared.outage_ends.lock().unwrap_or_else(|p| p.into_inner());
        if ends.is_none_or(|ends| tokio::time::Instant::now() < ends) {
            return (StatusCode::INTERNAL_SERVER_ERROR, "down for now".into());
        }
        return (StatusCode::ACCEPTED, "back".into());
    }
    if path.starts_with("/fail/") {
        return (status(shared.fail_status.load(Ordering::SeqCst)), "failing on purpose".into());
    }
    (StatusCode::OK, "ok".into())
}

/// An Alertmanager version 4 webhook payload with one alert.
pub fn alert_payload(name: &str, labels: &[(&str, &str)], status: &str, starts_at: &str) -> String {
    let mut all: BTreeMap<&str, &str> = labels.iter().copied().collect();
    all.insert("alertname", name);
    let fingerprint = format!("{:016x}", fnv(&format!("{all:?}")));
    serde_json::json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{name}\"}}"),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "remedy",
        "groupLabels": {"alertname": name},
        "commonLabels": all,
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [{
            "status": status,
            "labels": all,
            "annotations": {"summary": format!("{name} in a test")},
            "startsAt": starts_at,
            "endsAt": if status == "resolved" { starts_at } else { "0001-01-01T00:00:00Z" },
            "generatorURL": "",
            "fingerprint": fingerprint,
        }],
    })
    .to_string()
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
