//! What remedyctl prints: plain structs made from the wire types, so JSON
//! and YAML output are stable and readable.

use std::collections::BTreeMap;

use remedy_proto::v1 as pb;
use remedy_shared::Timestamp;
use serde::Serialize;

fn time(ms: i64) -> Option<String> {
    (ms != 0).then(|| Timestamp::from_millis(ms).to_string())
}

fn severity(v: i32) -> String {
    pb::Severity::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("SEVERITY_").to_lowercase())
        .unwrap_or_default()
}

fn incident_state(v: i32) -> String {
    pb::IncidentState::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("INCIDENT_STATE_").to_lowercase())
        .unwrap_or_default()
}

fn finding_state(v: i32) -> String {
    pb::FindingState::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("FINDING_STATE_").to_lowercase())
        .unwrap_or_default()
}

/// An agent.
#[derive(Debug, Serialize)]
pub struct Agent {
    pub agent_id: String,
    pub node_name: String,
    pub version: String,
    pub connected: bool,
    pub stale: bool,
    pub last_seen: Option<String>,
    pub acked_sequence: u64,
    pub spool_depth: u64,
    pub spool_dropped_total: u64,
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    pub labels: BTreeMap<String, String>,
}

impl From<pb::Agent> for Agent {
    fn from(a: pb::Agent) -> Self {
        let memory_percent = a.snapshot.as_ref().and_then(|s| {
            (s.memory_total_bytes > 0).then(|| s.memory_used_bytes as f64 * 100.0 / s.memory_total_bytes as f64)
        });
        Agent {
            cpu_percent: a.snapshot.as_ref().map(|s| s.cpu_percent),
            memory_percent,
            agent_id: a.agent_id,
            node_name: a.node_name,
            version: a.version,
            connected: a.connected,
            stale: a.stale,
            last_seen: time(a.last_seen_ms),
            acked_sequence: a.acked_sequence,
            spool_depth: a.spool_depth,
            spool_dropped_total: a.spool_dropped_total,
            labels: a.labels.into_iter().collect(),
        }
    }
}

/// A stored finding.
#[derive(Debug, Serialize)]
pub struct Finding {
    pub agent_id: String,
    pub sequence: u64,
    pub node_name: String,
    pub kind: String,
    pub severity: String,
    pub state: String,
    pub target: String,
    pub summary: String,
    pub incident_id: String,
    pub received_at: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub evidence: BTreeMap<String, String>,
}

impl From<pb::StoredFinding> for Finding {
    fn from(f: pb::StoredFinding) -> Self {
        let body = f.finding.unwrap_or_default();
        Finding {
            agent_id: f.agent_id,
            sequence: f.sequence,
            node_name: f.node_name,
            kind: body.kind,
            severity: severity(body.severity),
            state: finding_state(body.state),
            target: body.target,
            summary: body.summary,
            incident_id: f.incident_id,
            received_at: time(f.received_at_ms),
            labels: body.labels.into_iter().collect(),
            evidence: body.evidence.into_iter().collect(),
        }
    }
}

/// An incident in a listing.
#[derive(Debug, Serialize)]
pub struct Incident {
    pub id: String,
    pub state: String,
    pub severity: String,
    pub kind: String,
    pub target: String,
    pub summary: String,
    pub opened_at: Option<String>,
    pub updated_at: Option<String>,
    pub resolved_at: Option<String>,
    pub finding_count: u64,
}

impl From<pb::Incident> for Incident {
    fn from(i: pb::Incident) -> Self {
        Incident {
            id: i.id,
            state: incident_state(i.state),
            severity: severity(i.severity),
            kind: i.kind,
            target: i.target,
            summary: i.summary,
            opened_at: time(i.opened_at_ms),
            updated_at: time(i.updated_at_ms),
            resolved_at: time(i.resolved_at_ms),
            finding_count: i.finding_count,
        }
    }
}

/// A timeline entry.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub at: Option<String>,
    pub kind: String,
    pub message: String,
    pub details: BTreeMap<String, String>,
}

/// An incident with its timeline.
#[derive(Debug, Serialize)]
pub struct IncidentDetail {
    #[serde(flatten)]
    pub incident: Incident,
    pub timeline: Vec<Entry>,
}

impl From<pb::Incident> for IncidentDetail {
    fn from(mut i: pb::Incident) -> Self {
        let timeline = std::mem::take(&mut i.timeline)
            .into_iter()
            .map(|e| Entry {
                at: time(e.at_ms),
                kind: e.kind,
                message: e.message,
                details: e.details.into_iter().collect(),
            })
            .collect();
        IncidentDetail { incident: Incident::from(i), timeline }
    }
}
