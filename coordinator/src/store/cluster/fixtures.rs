//! Values the cluster store's unit tests feed the pure conversions.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use remedy_shared::Timestamp;
use remedy_shared::finding::{ConditionKey, ConditionKind, FindingKind, Severity};
use remedy_shared::guard::{GuardState, Mode};
use remedy_shared::incident::{EntryKind, Incident, IncidentId, IncidentState, TimelineEntry};
use remedy_shared::run::{Intent, RunOutcome, RunRecord, RunStatus, StepState, Verification};
use serde_json::{Map, Value, json};

use super::encoding::{Desired, new_object};

/// A time `ms` after a fixed instant.
pub(super) fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(1_700_000_000_000 + ms)
}

/// The object as the API server returns it after `desired` was written.
pub(super) fn stored(desired: &Desired) -> DynamicObject {
    let mut data = Map::new();
    if let Some(spec) = &desired.spec {
        data.insert("spec".into(), spec.clone());
    }
    data.insert("status".into(), desired.status.clone());
    let mut object = new_object(desired);
    object.data = Value::Object(data);
    object.metadata.resource_version = Some("7".into());
    object
}

/// A decision entry at `at(n)`.
pub(super) fn entry(n: i64, message: &str) -> TimelineEntry {
    TimelineEntry { at: at(n), kind: EntryKind::Decision, message: message.into(), details: BTreeMap::new() }
}

/// An incident with every optional field set.
pub(super) fn incident(id: u64, state: IncidentState) -> Incident {
    Incident {
        id: IncidentId(id),
        key: ConditionKey { kind: ConditionKind::Finding(FindingKind::DiskUsageHigh), target: "mount/n1:/var".into() },
        severity: Severity::Critical,
        state,
        summary: "disk 97%".into(),
        opened_at: at(0),
        started_at: Some(at(-60)),
        updated_at: at(5),
        resolved_at: state.is_closed().then(|| at(9)),
        finding_count: 3,
        active_sources: [("agent-a".to_owned(), Some(at(60_000))), ("agent-b".to_owned(), None)].into(),
        runbook: Some("P2-001".into()),
        mttr_target_ms: Some(900_000),
        mttr_status: Some("at_risk".into()),
        priority: Some(remedy_shared::runbook::Priority::P2),
        tags: vec!["total_outage".into()],
        acknowledged_at: Some(at(3)),
        acknowledged_by: Some("user:alice".into()),
        escalation: None,
        drill: false,
        conversations: [("status-page".to_owned(), "sp-1".to_owned())].into(),
    }
}

/// A running run with one finished and one unfinished execution.
pub(super) fn run(id: u64) -> RunRecord {
    let mut context = remedy_shared::runbook::TemplateContext::default();
    context.incident.id = IncidentId(id).to_string();
    context.params.insert("namespace".into(), "shop".into());
    context.steps.insert("health".into(), json!({ "ok": false, "status": 503, "nested": { "list": [1, "two"] } }));
    RunRecord {
        incident_id: IncidentId(id),
        runbook_id: "P2-001".into(),
        mode: Mode::Live,
        started_by: "finding disk_usage_high".into(),
        requested_by: Some("user:ada".into()),
        context,
        secret_params: ["api_token".to_owned()].into(),
        secret_values: Default::default(),
        next_step: 2,
        attempt: 1,
        status: RunStatus::Running,
        created_at: at(1),
        updated_at: at(4),
        intents: vec![
            Intent {
                key: format!("{}/snapshot#1", IncidentId(id)),
                step_id: "snapshot".into(),
                recorded_at: at(2),
                outcome: Some("succeeded".into()),
            },
            Intent {
                key: format!("{}/cleanup#1", IncidentId(id)),
                step_id: "cleanup".into(),
                recorded_at: at(3),
                outcome: None,
            },
        ],
        failures: vec!["probe: 503".into()],
        steps: BTreeMap::from([("snapshot".to_owned(), StepState::Observed)]),
        outcome: Some(RunOutcome::judge(
            &BTreeMap::from([("snapshot".to_owned(), StepState::Observed)]),
            Verification::Unverified,
        )),
    }
}

/// A guard state in the domain's serde form: its fields are private.
pub(super) fn guard() -> GuardState {
    serde_json::from_value(json!({
        "paused": { "by": "alice", "since": at(1).as_millis(), "reason": "change freeze" },
        "actions": [{
            "at": at(2).as_millis(), "runbook_id": "P2-001", "incident_id": 7, "step_id": "cleanup",
            "attempt": 1, "action_kind": "log_cleanup", "targets": ["node/n1"], "pool": "nodes", "mode": "live"
        }, {
            "at": at(3).as_millis(), "runbook_id": "P2-001", "incident_id": 7, "step_id": "scale",
            "attempt": 1, "action_kind": "scale", "targets": [], "pool": null, "mode": "shadow"
        }],
        "failures": [{ "at": at(3).as_millis(), "runbook_id": "P2-001", "action_kind": "scale", "reason": "409" }],
        "breakers": { "runbook/P2-001": { "since": at(4).as_millis(), "reason": "3 failures" } },
        "breaker_resets": { "global": at(0).as_millis() },
        "approvals": [{
            "key": { "incident_id": 7, "step_id": "failover", "attempt": 1 },
            "runbook_id": "P0-002", "action": "pg_failover db-0 -> db-1",
            "reason": { "why": "action_kind", "kind": "pg_failover" },
            "requested_at": at(5).as_millis(), "expires_at": at(305_000).as_millis(),
            "status": { "status": "granted", "by": "bob", "at": at(6).as_millis(),
                        "valid_until": at(906_000).as_millis() }
        }, {
            "key": { "incident_id": 7, "step_id": "block", "attempt": 2 },
            "runbook_id": "P1-003", "action": "block_ip 10.0.0.0/8",
            "reason": { "why": "wide_block", "network": "10.0.0.0/8" },
            "requested_at": at(5).as_millis(), "expires_at": at(305_000).as_millis(),
            "status": { "status": "pending" }
        }]
    }))
    .expect("a guard state")
}
