//! Alertmanager intake, against real Alertmanager processes: an alert posted
//! to Alertmanager opens an incident, runs its runbook, and its resolution
//! resolves it; the
//! same notification from retries or from two replicas acts once; malformed
//! payloads are refused with the reason; nothing anonymous, forged or not
//! JSON gets in, and the sender is named on the incident.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use remedy_e2e::procs::{
    ALERTMANAGER_TOKEN, Coordinator, Proc, eventually, free_addr, http_request, http_request_with,
};
use remedy_e2e::world::World;
use remedy_proto::v1 as pb;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

/// Starts a real Alertmanager whose only receiver is the coordinator's webhook.
async fn alertmanager(dir: &Path, name: &str, coordinator_http: SocketAddr) -> (Proc, SocketAddr) {
    assert!(
        Path::new(ALERTMANAGER).exists(),
        "{ALERTMANAGER} is missing: install Debian's prometheus-alertmanager (`make test` does)"
    );
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    // The credential as an operator gives it: a file Alertmanager reads and
    // sends as `Authorization: Bearer ...`.
    let credentials = dir.join("remedy-token");
    std::fs::write(&credentials, ALERTMANAGER_TOKEN).unwrap();
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "route:\n  receiver: remedy\n  group_by: ['alertname']\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: remedy\n    webhook_configs:\n      - url: http://{coordinator_http}/api/v1/alertmanager\n        send_resolved: true\n\
             \x20       http_config:\n          authorization:\n            credentials_file: {}\n",
            credentials.display()
        ),
    )
    .unwrap();
    let listen = free_addr();
    let args = vec![
        format!("--config.file={}", config.display()),
        format!("--storage.path={}", dir.join("data").display()),
        format!("--web.listen-address={listen}"),
        // One process, no gossip: two of these are two independent replicas.
        "--cluster.listen-address=".to_owned(),
    ];
    let proc = Proc::spawn_program(name, Path::new(ALERTMANAGER), &args, dir.join("alertmanager.log"));
    eventually("Alertmanager ready", WAIT, || async move {
        http_request(listen, "GET", "/-/ready", None).await.ok().filter(|(c, _)| *c == 200)
    })
    .await;
    (proc, listen)
}

async fn post_alert(alertmanager: SocketAddr, starts_at: &str, ends_at: Option<&str>) {
    let mut alert = json!({
        "labels": { "alertname": "P0_SystemDown", "severity": "critical", "namespace": "saas-idp-production" },
        "annotations": { "summary": "SaaS IDP platform down" },
        "startsAt": starts_at,
    });
    if let Some(end) = ends_at {
        alert["endsAt"] = json!(end);
    }
    let (code, body) =
        http_request(alertmanager, "POST", "/api/v2/alerts", Some(&json!([alert]).to_string())).await.unwrap();
    assert_eq!(code, 200, "{body}");
}

fn rfc3339(offset: Duration, later: bool) -> String {
    let now = std::time::SystemTime::now();
    let t = if later { now + offset } else { now - offset };
    humantime_rfc3339(t)
}

fn humantime_rfc3339(t: std::time::SystemTime) -> String {
    let ms = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    remedy_shared::Timestamp::from_millis(ms).to_string()
}

async fn incidents_named(coordinator: &Coordinator, name: &str) -> Vec<pb::Incident> {
    let mut admin = coordinator.admin().await;
    let list =
        admin.list_incidents(pb::ListIncidentsRequest { include_resolved: true, ..Default::default() }).await.unwrap();
    list.into_inner().incidents.into_iter().filter(|i| i.kind == name).collect()
}

/// A catalog with one runbook for P0_SystemDown in the production
/// namespace, whose one step calls the world server.
fn outage_runbook(dir: &Path, world: &World) -> std::path::PathBuf {
    let runbooks = dir.join("runbooks");
    std::fs::create_dir_all(&runbooks).unwrap();
    std::fs::write(
        runbooks.join("outage.yaml"),
        format!(
            "apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {{id: OUTAGE, title: Outage}}\npriority: P0\nmttr_target: 5m\n\
             triggers: {{alerts: [{{name: P0_SystemDown, matchers: ['namespace=\"saas-idp-production\"']}}]}}\n\
             steps:\n  - id: reset\n    http: {{method: POST, url: '{}/admin/reset', headers: {{X-Incident: '{{{{ incident.id }}}}'}}}}\n\
             escalation: {{policy: p0-chain}}\n",
            world.url()
        ),
    )
    .unwrap();
    remedy_e2e::runs::policy(&runbooks, "p0-chain");
    runbooks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_through_a_real_alertmanager_opens_and_resolves_an_incident() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::start().await;
    let runbooks = outage_runbook(dir.path(), &world);
    let coordinator =
        Coordinator::start_with(&dir.path().join("c"), &["--runbooks-dir", runbooks.to_str().unwrap()]).await;
    let (_am, am) = alertmanager(dir.path(), "alertmanager", coordinator.http).await;
    let starts_at = rfc3339(Duration::from_secs(5), false);
    post_alert(am, &starts_at, None).await;

    let opened = eventually("an incident for P0_SystemDown", WAIT, || async {
        incidents_named(&coordinator, "P0_SystemDown").await.into_iter().next()
    })
    .await;
    assert_eq!(opened.severity, pb::Severity::Critical as i32);
    assert_eq!(opened.summary, "SaaS IDP platform down");
    let mut admin = coordinator.admin().await;
    let detail = admin.get_incident(pb::GetIncidentRequest { id: opened.id.clone() }).await.unwrap().into_inner();
    let first = &detail.timeline[0];
    assert_eq!(first.kind, "opened");
    assert_eq!(first.details["source"], "alertmanager");
    assert_eq!(first.details["sent_by"], "user:alertmanager", "the sender is named on the incident");
    assert_eq!(first.details["label.namespace"], "saas-idp-production");
    assert_eq!(opened.runbook_id, "OUTAGE", "the alert's runbook took the incident");

    // The runbook acted, once, for this incident.
    let resets = world.wait_for("POST", "/admin/reset", 1).await;
    assert_eq!(resets[0].headers.get("x-incident"), Some(&opened.id));
    eventually("the run to finish", WAIT, || {
        let mut admin = admin.clone();
        let id = opened.id.clone();
        async move {
            let i = admin.get_incident(pb::GetIncidentRequest { id }).await.ok()?.into_inner();
            i.timeline.iter().any(|e| e.kind == "runbook" && e.message.contains("finished")).then_some(())
        }
    })
    .await;
    assert_eq!(world.requests("POST", "/admin/reset").len(), 1);

    // Ending the alert makes Alertmanager send the resolution.
    post_alert(am, &starts_at, Some(&rfc3339(Duration::from_millis(1), false))).await;
    eventually("the incident resolved by Alertmanager", WAIT, || {
        let mut admin = admin.clone();
        let id = opened.id.clone();
        async move {
            let i = admin.get_incident(pb::GetIncidentRequest { id }).await.ok()?.into_inner();
            (i.state == pb::IncidentState::Resolved as i32).then_some(i)
        }
    })
    .await;
    assert_eq!(incidents_named(&coordinator, "P0_SystemDown").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_alertmanager_replicas_and_five_retries_act_once() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::start().await;
    let runbooks = outage_runbook(dir.path(), &world);
    let coordinator =
        Coordinator::start_with(&dir.path().join("c"), &["--runbooks-dir", runbooks.to_str().unwrap()]).await;
    let (_a, am_a) = alertmanager(dir.path(), "alertmanager-a", coordinator.http).await;
    let (_b, am_b) = alertmanager(dir.path(), "alertmanager-b", coordinator.http).await;
    let starts_at = rfc3339(Duration::from_secs(5), false);
    post_alert(am_a, &starts_at, None).await;
    post_alert(am_b, &starts_at, None).await;
    eventually("both replicas delivered", WAIT, || async {
        let received = coordinator.metric("remedy_alerts_received_total").await;
        let duplicates = coordinator.metric("remedy_alerts_duplicate_total").await;
        (received + duplicates >= 2.0).then_some(())
    })
    .await;

    // The same notification, as a retrying Alertmanager sends it, five times.
    let payload = json!({
        "version": "4", "status": "firing", "receiver": "remedy", "groupKey": "{}:{alertname=\"P1_HighErrorRate\"}",
        "alerts": [{ "status": "firing", "labels": { "alertname": "P1_HighErrorRate" }, "annotations": {},
                     "startsAt": "2026-11-26T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "00000000000000aa" }]
    })
    .to_string();
    let mut accepted = 0;
    for _ in 0..5 {
        let (code, body) = coordinator.notify(&payload).await;
        assert_eq!(code, 200, "{body}");
        accepted += serde_json::from_str::<serde_json::Value>(&body).unwrap()["accepted"].as_u64().unwrap();
    }
    assert_eq!(accepted, 1);

    for name in ["P0_SystemDown", "P1_HighErrorRate"] {
        let incidents = incidents_named(&coordinator, name).await;
        assert_eq!(incidents.len(), 1, "{name}: {incidents:?}");
        assert_eq!(incidents[0].finding_count, 1, "{name} counted once");
    }
    assert_eq!(coordinator.metric("remedy_alerts_received_total").await, 2.0);

    // Two replicas, one incident, one run: the action happened once.
    let outage = incidents_named(&coordinator, "P0_SystemDown").await.remove(0);
    let admin = coordinator.admin().await;
    eventually("the outage run to finish", WAIT, || {
        let mut admin = admin.clone();
        let id = outage.id.clone();
        async move {
            let i = admin.get_incident(pb::GetIncidentRequest { id }).await.ok()?.into_inner();
            i.timeline.iter().any(|e| e.kind == "runbook" && e.message.contains("finished")).then_some(())
        }
    })
    .await;
    assert_eq!(world.requests("POST", "/admin/reset").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_notifications_get_400_with_the_reason_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&dir.path().join("c")).await;
    let cases = [
        ("{not json", "not an Alertmanager notification"),
        (r#"{"version":"3","alerts":[]}"#, "payload version `3` is not supported"),
        (
            r#"{"version":"4","alerts":[{"status":"firing","labels":{},"startsAt":"2026-11-26T10:00:00Z"}]}"#,
            "alerts[0]: labels.alertname is missing",
        ),
    ];
    for (body, reason) in cases {
        let (code, answer) = coordinator.notify(body).await;
        assert_eq!(code, 400, "{body}");
        assert!(answer.contains(reason), "{answer}");
    }
    let mut admin = coordinator.admin().await;
    let list =
        admin.list_incidents(pb::ListIncidentsRequest { include_resolved: true, ..Default::default() }).await.unwrap();
    assert!(list.into_inner().incidents.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_forged_and_non_json_notifications_get_401_or_415_and_record_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&dir.path().join("c")).await;
    // A notification that would open an incident and start P0-001.
    let payload = json!({
        "version": "4", "status": "firing", "receiver": "remedy", "groupKey": "{}:{alertname=\"P0_SystemDown\"}",
        "alerts": [{ "status": "firing", "labels": { "alertname": "P0_SystemDown", "source_ip": "203.0.113.9" },
                     "annotations": {}, "startsAt": "2026-11-26T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z" }]
    })
    .to_string();
    let right = format!("Bearer {ALERTMANAGER_TOKEN}");
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Headers, u16, &str); 6] = [
        (&[], 401, "an `Authorization: Bearer TOKEN` header is required"),
        (&[("Authorization", "Bearer not-the-token")], 401, "the bearer token is not known"),
        (&[("Authorization", "Basic YWxlcnRtYW5hZ2VyOnRva2Vu")], 401, "is not `Bearer TOKEN`"),
        // What a web page can make a browser send without asking: plain
        // text and forms. Even with the right token they are not read.
        (&[("Authorization", &right), ("Content-Type", "text/plain")], 415, "application/json"),
        (&[("Authorization", &right), ("Content-Type", "application/x-www-form-urlencoded")], 415, "application/json"),
        (&[("Content-Type", "text/plain")], 401, "Bearer"),
    ];
    for (headers, want, reason) in cases {
        let (code, answer) =
            http_request_with(coordinator.http, "POST", "/api/v1/alertmanager", headers, Some(&payload)).await.unwrap();
        assert_eq!(code, want, "{headers:?}: {answer}");
        assert!(answer.contains(reason), "{headers:?}: {answer}");
    }
    let mut admin = coordinator.admin().await;
    let list =
        admin.list_incidents(pb::ListIncidentsRequest { include_resolved: true, ..Default::default() }).await.unwrap();
    assert!(list.into_inner().incidents.is_empty(), "a refused notification recorded something");
    assert_eq!(coordinator.metric("remedy_alerts_received_total").await, 0.0);

    // The same notification with the token Alertmanager holds gets in, and
    // the incident names who sent it.
    let (code, answer) = coordinator.notify(&payload).await;
    assert_eq!(code, 200, "{answer}");
    let incident = incidents_named(&coordinator, "P0_SystemDown").await.remove(0);
    let full = admin.get_incident(pb::GetIncidentRequest { id: incident.id }).await.unwrap().into_inner();
    let opened = full.timeline.iter().find(|e| e.details.contains_key("fingerprint")).expect("the alert's entry");
    assert_eq!(opened.details["sent_by"], "user:alertmanager", "{opened:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_starts_only_the_runbooks_its_scope_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.yaml");
    // The harness's Alertmanager (user `alertmanager`) may start the
    // security runbooks only.
    std::fs::write(&config, "alertmanager:\n  may_start: {alertmanager: ['SEC-*']}\n").unwrap();
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runbooks");
    let args = ["--config", config.to_str().unwrap(), "--runbooks-dir", seed.to_str().unwrap()];
    let coordinator = Coordinator::start_with(&dir.path().join("c"), &args).await;
    let firing = |name: &str| {
        json!({
            "version": "4", "status": "firing", "receiver": "remedy", "groupKey": format!("{{}}:{{alertname=\"{name}\"}}"),
            "alerts": [{ "status": "firing", "labels": { "alertname": name, "source_ip": "203.0.113.9" },
                         "annotations": {}, "startsAt": "2026-11-26T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z" }]
        })
        .to_string()
    };
    let (code, answer) = coordinator.notify(&firing("P0_SystemDown")).await;
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("user:alertmanager may not start runbook P0-001 (alert P0_SystemDown)"), "{answer}");
    let mut admin = coordinator.admin().await;
    let list =
        admin.list_incidents(pb::ListIncidentsRequest { include_resolved: true, ..Default::default() }).await.unwrap();
    assert!(list.into_inner().incidents.is_empty(), "an out-of-scope notification recorded something");

    let (code, answer) = coordinator.notify(&firing("P1_BruteForceAttackDetected")).await;
    assert_eq!(code, 200, "{answer}");
    let incident = incidents_named(&coordinator, "P1_BruteForceAttackDetected").await.remove(0);
    assert_eq!(incident.runbook_id, "SEC-001");
}
