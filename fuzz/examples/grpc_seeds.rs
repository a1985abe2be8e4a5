//! Writes the `grpc` target's seed corpus: real messages as agents and
//! admin clients send them, encoded. Run from the workspace root with
//! `cargo run -p remedy-fuzz --example grpc_seeds`.

use std::collections::HashMap;

use prost::Message;
use remedy_proto::v1 as pb;
use remedy_proto::v1::agent_message::Body;

fn finding(kind: &str, target: &str, evidence: &[(&str, &str)]) -> pb::Finding {
    pb::Finding {
        kind: kind.into(),
        severity: pb::Severity::Critical as i32,
        state: pb::FindingState::Active as i32,
        target: target.into(),
        labels: HashMap::from([("node".to_owned(), "node-a".to_owned())]),
        evidence: evidence.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        summary: format!("{kind} on {target}"),
        first_seen_ms: 1_795_000_000_000,
        last_seen_ms: 1_795_000_060_000,
        expires_at_ms: 1_795_000_360_000,
    }
}

fn agent(body: Body) -> Vec<u8> {
    pb::AgentMessage { body: Some(body) }.encode_to_vec()
}

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/grpc");
    std::fs::create_dir_all(&dir)?;
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "hello",
            agent(Body::Hello(pb::Hello {
                agent_id: "0b6c1a2e-4f1d".into(),
                node_name: "node-a".into(),
                version: "0.1.0".into(),
                capabilities: vec!["snapshot".into(), "restart_pod".into(), "block_ip".into()],
                labels: HashMap::from([("zone".to_owned(), "eu-1".to_owned())]),
                last_sequence: 41,
                node_addresses: vec!["10.0.0.2".into(), "fd00::2".into(), "127.0.0.1".into()],
            })),
        ),
        (
            "heartbeat",
            agent(Body::Heartbeat(pb::Heartbeat {
                snapshot: Some(pb::ResourceSnapshot {
                    taken_at_ms: 1_795_000_000_000,
                    cpu_percent: 93.5,
                    memory_used_bytes: 7 << 30,
                    memory_total_bytes: 8 << 30,
                    load1: 3.2,
                    load5: 2.1,
                    load15: 1.0,
                    disks: vec![pb::DiskUsage { mount_point: "/var".into(), total_bytes: 100, available_bytes: 3 }],
                    top_processes: vec![pb::ProcessUsage {
                        pid: 4242,
                        name: "java".into(),
                        cpu_percent: 180.0,
                        memory_bytes: 3 << 30,
                    }],
                }),
                spool_depth: 2,
                spool_dropped_total: 0,
            })),
        ),
        (
            "findings",
            agent(Body::Findings(pb::FindingBatch {
                findings: vec![
                    pb::SequencedFinding {
                        sequence: 42,
                        finding: Some(finding("disk_usage_high", "mount/node-a:/var", &[("used_percent", "97")])),
                    },
                    pb::SequencedFinding {
                        sequence: 43,
                        finding: Some(finding("brute_force", "ip/203.0.113.7", &[("failures", "120")])),
                    },
                ],
                oldest_retained_sequence: 40,
            })),
        ),
        (
            "action-result",
            agent(Body::ActionResult(pb::ActionResult { directive_id: "d-1".into(), ..Default::default() })),
        ),
        (
            "incident-command",
            pb::IncidentCommand { id: "INC-000042".into(), requested_by: "alice".into(), reason: "fixed".into() }
                .encode_to_vec(),
        ),
        (
            "answer-approval",
            pb::AnswerApprovalRequest {
                incident_id: "INC-000042".into(),
                step_id: "block".into(),
                attempt: 1,
                approve: true,
                requested_by: "alice".into(),
                reason: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            "reset-breaker",
            pb::ResetBreakerRequest { scope: "runbook/P0-001".into(), requested_by: "alice".into() }.encode_to_vec(),
        ),
        (
            "list-findings",
            pb::ListFindingsRequest {
                agent_id: "node-a".into(),
                kind: "brute_force".into(),
                page_size: 10,
                page_token: "findings/42:node-a".into(),
            }
            .encode_to_vec(),
        ),
        (
            "run-runbook",
            pb::RunRunbookRequest {
                runbook_id: "SEC-001".into(),
                params: HashMap::from([("ip".to_owned(), "203.0.113.7".to_owned())]),
                dry_run: true,
                requested_by: "alice".into(),
                drill: true,
            }
            .encode_to_vec(),
        ),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}
