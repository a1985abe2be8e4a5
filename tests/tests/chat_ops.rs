//! Acknowledgements and approvals from PagerDuty and Slack, end to end: a
//! real coordinator on loopback pages through PagerDuty and Slack channels
//! that post to the world server, and the tests play PagerDuty's webhook
//! and Slack's buttons, signed as they sign, against its HTTP port.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use remedy_coordinator::chatops;
use remedy_e2e::procs::{Coordinator, eventually, http_request_with};
use remedy_e2e::world::{World, alert_payload};
use remedy_proto::v1 as pb;
use remedy_shared::Timestamp;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const PD_SECRET: &str = "pd-webhook-secret-for-tests";
const SLACK_SECRET: &str = "slack-signing-secret-for-tests";

/// The two alert runbooks paging through the `chatops` policy, and a
/// manual one whose only step waits for an approval. Each step is gated,
/// so each incident stays open until someone answers.
fn catalog(dir: &Path) -> PathBuf {
    let target = dir.join("runbooks");
    std::fs::create_dir_all(&target).unwrap();
    let gated = |url: &str| {
        format!(
            "steps:\n  - id: gated\n    http: {{method: POST, url: '{url}', timeout: 2s}}\n    requires_approval: true\n    on_failure: continue\n"
        )
    };
    for (id, alert) in [("PD-ACKED", "ChatOpsAcked"), ("PD-CONTROL", "ChatOpsControl")] {
        let text = format!(
            "apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {{id: {id}, title: {id}}}\npriority: P1\nmttr_target: 1h\n\
             triggers: {{alerts: [{{name: {alert}}}]}}\n{}escalation: {{policy: chatops, page_on_open: true}}\n",
            gated("http://127.0.0.1:9/never")
        );
        std::fs::write(target.join(format!("{id}.yaml")), text).unwrap();
    }
    target
}

fn manual_runbook(catalog: &Path, world: &World) {
    let text = format!(
        "apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {{id: GATE, title: Gated}}\npriority: P2\nmttr_target: 1h\n\
         triggers: {{manual: true}}\nsteps:\n  - id: gated\n    http: {{method: POST, url: '{}/gated', timeout: 2s}}\n\
         \x20   requires_approval: true\n    on_failure: continue\nescalation: {{policy: chatops}}\nguard_rails: {{cooldown: 0s}}\n",
        world.url()
    );
    std::fs::write(catalog.join("gate.yaml"), text).unwrap();
    // The second level comes 15 s on: time enough for the test to
    // acknowledge one incident before it, however slow the machine.
    let policy = "apiVersion: remedy.dev/v1\nkind: EscalationPolicy\nmetadata: {id: chatops}\n\
                  levels: [{name: first, after: 0m, notify: [{person: alice}, {channel: ops-slack}]},\n\
                  \x20        {name: second, after: 15s, notify: [{person: bob}]}]\n";
    std::fs::write(catalog.join("chatops.policy.yaml"), policy).unwrap();
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A coordinator paging alice through PagerDuty (and the ops Slack) and bob
/// through a webhook, with both doors open and the two-person rule on.
async fn coordinator(dir: &Path, world: &World) -> Coordinator {
    let runbooks = catalog(dir);
    manual_runbook(&runbooks, world);
    let retries = "retries: {attempts: 2, initial: 10ms, max: 50ms}";
    let config = format!(
        "channels:\n\
         \x20 pager: {{type: pagerduty, routing_key_file: '{}', events_url: '{}/pd/enqueue', {retries}}}\n\
         \x20 ops-slack: {{type: slack, webhook_url_file: '{}', {retries}}}\n\
         \x20 bob-hook: {{type: webhook, url: '{}/hooks/bob', secret_file: '{}', {retries}}}\n\
         people:\n  alice: {{notify: [pager]}}\n  bob: {{notify: [bob-hook]}}\n\
         authorization:\n  two_person_approvals: true\n  roles: {{operator: ['user:ada', 'user:otto'], viewer: ['user:viola']}}\n\
         pagerduty_webhook: {{secret_file: '{}'}}\n\
         slack:\n  signing_secret_file: '{}'\n  users: {{UADA: ada, UOTTO: otto, UVIOLA: viola}}\n\
         \x20 approvals_webhook_url_file: '{}'\n",
        write(dir, "pd-routing-key", "routing-key-0123456789"),
        world.url(),
        write(dir, "slack-url", &format!("{}/slack/ops", world.url())),
        world.url(),
        write(dir, "hook-secret", "hook-secret-for-tests"),
        write(dir, "pd-webhook-secrets", &format!("an-older-secret\n{PD_SECRET}\n")),
        write(dir, "slack-signing", SLACK_SECRET),
        write(dir, "slack-approvals-url", &format!("{}/slack/approvals", world.url())),
    );
    let config = write(dir, "coordinator.yaml", &config);
    Coordinator::start_with(&dir.join("c"), &["--config", &config, "--runbooks-dir", runbooks.to_str().unwrap()]).await
}

/// The open incident an alert opened, by its runbook.
async fn incident_of(c: &Coordinator, runbook: &str) -> String {
    eventually(&format!("the {runbook} incident"), WAIT, || async {
        let mut admin = c.admin().await;
        let list = admin.list_incidents(pb::ListIncidentsRequest::default()).await.ok()?.into_inner();
        list.incidents.into_iter().find(|i| i.runbook_id == runbook).map(|i| i.id)
    })
    .await
}

async fn incident(c: &Coordinator, id: &str) -> pb::Incident {
    c.admin().await.get_incident(pb::GetIncidentRequest { id: id.to_owned() }).await.unwrap().into_inner()
}

fn entries<'a>(incident: &'a pb::Incident, kind: &str) -> Vec<&'a pb::TimelineEntry> {
    incident.timeline.iter().filter(|e| e.kind == kind).collect()
}

fn now_rfc3339(offset_secs: i64) -> String {
    let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64;
    Timestamp::from_millis(ms + offset_secs * 1000).to_string()
}

fn pd_event(id: &str, event_type: &str, incident: &str, agent: &str, occurred_at: &str) -> String {
    json!({ "event": {
        "id": id, "event_type": event_type, "resource_type": "incident", "occurred_at": occurred_at,
        "agent": { "id": "PLH1HKV", "summary": agent, "type": "user_reference" }, "client": null,
        "data": { "id": "Q2S1BGCMQCZ9XZ", "type": "incident", "status": "acknowledged",
                  "incident_key": format!("remedy-{incident}"), "title": "paged by Remedy" }
    }})
    .to_string()
}

/// Posts `body` to PagerDuty's door signed with `secret`: (status, body).
async fn pd_post(c: &Coordinator, body: &str, secret: &str) -> (u16, String) {
    let signature = format!("v1={}", chatops::sign(secret.as_bytes(), &[body.as_bytes()]));
    let headers = [("X-PagerDuty-Signature", signature.as_str())];
    http_request_with(c.http, "POST", "/api/v1/pagerduty/webhook", &headers, Some(body)).await.unwrap()
}

/// PagerDuty events this coordinator sent for `incident` with `action`.
fn pd_sent(world: &World, incident: &str, action: &str) -> usize {
    world
        .requests("POST", "/pd/enqueue")
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
        .filter(|e| e["dedup_key"] == format!("remedy-{incident}") && e["event_action"] == action)
        .count()
}

fn bob_paged(world: &World, incident: &str) -> bool {
    world
        .requests("POST", "/hooks/bob")
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
        .any(|m| m["incident_id"] == incident && m["event"] == "trigger")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_acknowledges_and_remedys_own_acknowledgement_reaches_pagerduty() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::start().await;
    let mut c = coordinator(dir.path(), &world).await;
    let now = Timestamp::parse_rfc3339(&now_rfc3339(0)).unwrap();
    let notify = |alert: &str| alert_payload(alert, &[], "firing", &now.to_string());
    assert_eq!(c.notify(&notify("ChatOpsAcked")).await.0, 200);
    let acked = incident_of(&c, "PD-ACKED").await;
    assert_eq!(c.notify(&notify("ChatOpsControl")).await.0, 200);
    let control = incident_of(&c, "PD-CONTROL").await;
    eventually("PagerDuty paged for both", WAIT, || async {
        (pd_sent(&world, &acked, "trigger") > 0 && pd_sent(&world, &control, "trigger") > 0).then_some(())
    })
    .await;
    let slack = world.wait_for("POST", "/slack/ops", 1).await;
    let message: Value = serde_json::from_str(&slack[0].body).unwrap();
    let button = &message["blocks"][1]["elements"][0];
    assert_eq!(button["action_id"], "remedy_ack", "{message}");
    assert!(message["text"].as_str().unwrap().contains("INC-"), "the text stays: {message}");

    // A forged event (another secret) is refused and changes nothing.
    let ack = pd_event("EVT-1", "incident.acknowledged", &acked, "Alice Smith", &now_rfc3339(-5));
    let (code, body) = pd_post(&c, &ack, "not-the-secret").await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = http_request_with(c.http, "POST", "/api/v1/pagerduty/webhook", &[], Some(&ack)).await.unwrap();
    assert_eq!(code, 401, "no signature: {body}");
    assert!(entries(&incident(&c, &acked).await, "acknowledged").is_empty());

    // Signed, it acknowledges as PagerDuty's user; the climb holds.
    let (code, body) = pd_post(&c, &ack, PD_SECRET).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("acknowledged by pagerduty:Alice_Smith"), "{body}");
    let after = incident(&c, &acked).await;
    assert_eq!(after.acknowledged_by, "pagerduty:Alice_Smith");
    let acks = entries(&after, "acknowledged");
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].details.get("via").map(String::as_str), Some("pagerduty"));
    assert_eq!(acks[0].details.get("pagerduty_event").map(String::as_str), Some("EVT-1"));

    // Replayed, and stale: nothing more happens.
    let (code, body) = pd_post(&c, &ack, PD_SECRET).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("received already"), "{body}");
    let stale = pd_event("EVT-2", "incident.acknowledged", &control, "Mallory", &now_rfc3339(-2 * 3600));
    let (code, body) = pd_post(&c, &stale, PD_SECRET).await;
    assert_eq!(code, 401, "{body}");
    let other = pd_event("EVT-3", "incident.priority_updated", &control, "Alice Smith", &now_rfc3339(0));
    assert_eq!(pd_post(&c, &other, PD_SECRET).await.0, 200);
    let unknown = pd_event("EVT-4", "incident.acknowledged", "INC-999999", "Alice Smith", &now_rfc3339(0));
    assert_eq!(pd_post(&c, &unknown, PD_SECRET).await.0, 202);
    assert_eq!(pd_post(&c, "{not json", PD_SECRET).await.0, 400);
    assert!(entries(&incident(&c, &control).await, "acknowledged").is_empty(), "the control is untouched");

    // When the control's second level is paged, the acknowledged one's is
    // past due too: it was opened first, and it was not paged.
    eventually("bob paged for the control incident", WAIT, || async { bob_paged(&world, &control).then_some(()) })
        .await;
    assert!(!bob_paged(&world, &acked), "the acknowledged incident kept climbing");

    // The audit names PagerDuty's user and the door.
    let audit = c.admin().await.list_audit(pb::ListAuditRequest::default()).await.unwrap().into_inner();
    let entry = audit.entries.iter().find(|e| e.actor == "pagerduty:Alice_Smith").expect("audited");
    assert_eq!(entry.operation, "AcknowledgeIncident");
    assert!(format!("{entry:?}").contains("pagerduty"), "{entry:?}");

    // Remedy's own acknowledgement tells PagerDuty (the channel was paged),
    // and PagerDuty's echo of it changes nothing.
    let mut admin = c.admin().await;
    admin
        .acknowledge_incident(pb::IncidentCommand {
            id: control.clone(),
            requested_by: "user:carol".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    eventually("PagerDuty told of the acknowledgement", WAIT, || async {
        (pd_sent(&world, &control, "acknowledge") == 1).then_some(())
    })
    .await;
    let echo = pd_event("EVT-5", "incident.acknowledged", &control, "Remedy integration", &now_rfc3339(0));
    let (code, body) = pd_post(&c, &echo, PD_SECRET).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ignored"), "{body}");
    let control_now = incident(&c, &control).await;
    assert_eq!(control_now.acknowledged_by, "user:carol");
    assert_eq!(entries(&control_now, "acknowledged").len(), 1);

    // After a restart the memory is gone, the timeline is not.
    c.restart().await;
    let (code, body) = pd_post(&c, &ack, PD_SECRET).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("received already"), "{body}");
}

/// Posts a Slack `block_actions` request for `user` pressing `action_id`
/// with `value`, signed at `timestamp` with `secret`: (status, body) and
/// the request's headers and body, to replay it.
async fn slack_press(
    c: &Coordinator,
    user: &str,
    action_id: &str,
    value: &str,
    timestamp: i64,
    secret: &str,
) -> (u16, String) {
    let body = slack_body(user, action_id, value);
    slack_post(c, &body, timestamp, secret).await
}

fn slack_body(user: &str, action_id: &str, value: &str) -> String {
    static PRESSES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PRESSES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let payload = json!({
        "type": "block_actions", "user": { "id": user, "username": user.to_lowercase(), "team_id": "T0001" },
        "team": { "id": "T0001", "domain": "example" }, "trigger_id": format!("1.2.{n}"),
        "response_url": "https://hooks.slack.com/actions/T0001/1/x",
        "actions": [{ "action_id": action_id, "block_id": "remedy", "value": value, "type": "button",
                      "action_ts": format!("1700000000.{n:06}") }]
    });
    let encoded: String = payload
        .to_string()
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    format!("payload={encoded}")
}

async fn slack_post(c: &Coordinator, body: &str, timestamp: i64, secret: &str) -> (u16, String) {
    let ts = timestamp.to_string();
    let signature = chatops::slack::signature(secret.as_bytes(), &ts, body.as_bytes());
    let headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("X-Slack-Request-Timestamp", ts.as_str()),
        ("X-Slack-Signature", signature.as_str()),
    ];
    http_request_with(c.http, "POST", "/api/v1/slack/actions", &headers, Some(body)).await.unwrap()
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn pending(c: &Coordinator, id: &str) -> Option<pb::Approval> {
    let list = c
        .admin()
        .await
        .list_approvals(pb::ListApprovalsRequest { all: true, ..Default::default() })
        .await
        .ok()?
        .into_inner();
    list.approvals.into_iter().find(|a| a.incident_id == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_button_approves_as_the_mapped_person_under_the_two_person_rule() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::start().await;
    let c = coordinator(dir.path(), &world).await;
    let id = c
        .admin()
        .await
        .run_runbook(pb::RunRunbookRequest {
            runbook_id: "GATE".into(),
            requested_by: "user:ada".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .incident_id;
    let request =
        eventually("the approval request", WAIT, || async { pending(&c, &id).await.filter(|a| a.status == "pending") })
            .await;
    // The request is announced in Slack once, its buttons carrying its key.
    let announced = world.wait_for("POST", "/slack/approvals", 1).await;
    let message: Value = serde_json::from_str(&announced[0].body).unwrap();
    let buttons = message["blocks"][1]["elements"].as_array().unwrap();
    assert_eq!(
        (buttons[0]["action_id"].as_str(), buttons[1]["action_id"].as_str()),
        (Some("remedy_approve"), Some("remedy_deny"))
    );
    let key = buttons[0]["value"].as_str().unwrap().to_owned();
    assert_eq!(key, format!("{}/{}#{}", request.incident_id, request.step_id, request.attempt));
    assert!(message["text"].as_str().unwrap().contains("Approval needed"), "{message}");

    // The run's starter may not approve it, even from Slack.
    let (code, body) = slack_press(&c, "UADA", "remedy_approve", &key, unix_now(), SLACK_SECRET).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ephemeral") && body.contains("two-person rule"), "{body}");
    // Nobody unknown, nothing unsigned, nothing stale; a viewer may not.
    let (code, body) = slack_press(&c, "UNOBODY", "remedy_approve", &key, unix_now(), SLACK_SECRET).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("does not know you"), "{body}");
    let (code, _) = slack_press(&c, "UOTTO", "remedy_approve", &key, unix_now(), "not-the-secret").await;
    assert_eq!(code, 401);
    let (code, _) = slack_press(&c, "UOTTO", "remedy_approve", &key, unix_now() - 600, SLACK_SECRET).await;
    assert_eq!(code, 401);
    let (code, body) = slack_press(&c, "UVIOLA", "remedy_approve", &key, unix_now(), SLACK_SECRET).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("viewer"), "{body}");
    assert_eq!(pending(&c, &id).await.unwrap().status, "pending", "nothing above answered it");
    assert!(world.requests("POST", "/gated").is_empty());

    // Pressing Acknowledge acknowledges as the mapped person.
    let (code, body) = slack_press(&c, "UOTTO", "remedy_ack", &id, unix_now(), SLACK_SECRET).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("acknowledged by user:otto"), "{body}");
    let acked = incident(&c, &id).await;
    assert_eq!(acked.acknowledged_by, "user:otto");
    assert_eq!(entries(&acked, "acknowledged")[0].details.get("via").map(String::as_str), Some("slack"));

    // Someone else, mapped and with the role, approves: the run proceeds.
    let press = slack_body("UOTTO", "remedy_approve", &key);
    let at = unix_now();
    let (code, body) = slack_post(&c, &press, at, SLACK_SECRET).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("granted by user:otto"), "{body}");
    world.wait_for("POST", "/gated", 1).await;
    assert_eq!(world.requests("POST", "/slack/approvals").len(), 1, "announced once");

    // The same press again does nothing and is not an error to Slack.
    let (code, body) = slack_post(&c, &press, at, SLACK_SECRET).await;
    assert_eq!((code, body.as_str()), (200, "{}"));
    let timeline = incident(&c, &id).await;
    let via_slack: Vec<_> = entries(&timeline, "approval")
        .into_iter()
        .filter(|e| e.details.get("via").map(String::as_str) == Some("slack"))
        .collect();
    assert_eq!(via_slack.len(), 1, "{:?}", timeline.timeline);
    assert_eq!(via_slack[0].details.get("by").map(String::as_str), Some("user:otto"));
    let audit = c.admin().await.list_audit(pb::ListAuditRequest::default()).await.unwrap().into_inner();
    let slack_answers: Vec<_> = audit
        .entries
        .iter()
        .filter(|e| e.operation == "AnswerApproval" && format!("{e:?}").contains("slack"))
        .collect();
    assert_eq!(slack_answers.len(), 3, "ada refused, viola refused, otto granted: {slack_answers:?}");
    assert!(slack_answers.iter().any(|e| e.actor == "user:otto" && e.outcome == "ok"));
}
