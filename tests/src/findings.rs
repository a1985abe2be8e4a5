//! Findings submitted through agents' local endpoints, and what tests wait
//! for while they travel.

use std::collections::BTreeMap;

use remedy_proto::v1 as pb;
use remedy_proto::v1::admin_service_client::AdminServiceClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::procs::Agent;

/// A `probe_failed` finding as the local endpoint takes it.
pub fn probe(target: &str, summary: &str) -> serde_json::Value {
    json!({ "kind": "probe_failed", "severity": "warning", "target": target, "summary": summary })
}

/// The findings each agent will submit, per node: (target, unique summary),
/// spread over `targets_per_agent` targets.
pub fn submit_spread(
    agents: &[Agent],
    per_agent: usize,
    targets_per_agent: usize,
) -> BTreeMap<String, Vec<(String, String)>> {
    let mut submitted = BTreeMap::new();
    for agent in agents {
        let mut list = Vec::with_capacity(per_agent);
        for i in 0..per_agent {
            let target = format!("service/{}-{}", agent.node, i % targets_per_agent);
            list.push((target, format!("{} finding {i}", agent.node)));
        }
        submitted.insert(agent.node.clone(), list);
    }
    submitted
}

/// Submits `items` to `agent` in batches of 250; every one must be spooled.
pub async fn post_batches(agent: &Agent, items: &[(String, String)]) {
    for chunk in items.chunks(250) {
        let body: Vec<serde_json::Value> = chunk.iter().map(|(t, s)| probe(t, s)).collect();
        let (code, reply) = agent.submit(&json!(body)).await;
        assert_eq!(code, 202, "{reply}");
        assert_eq!(reply["dropped"], 0, "the spool must not shed in this test");
    }
}

/// Whether every agent's spool is empty: everything it took was acknowledged.
pub async fn spools_drained(agents: &[Agent]) -> bool {
    for a in agents {
        if a.debug_state().await["spool"]["depth"] != 0 {
            return false;
        }
    }
    true
}

/// Each incident counted exactly the findings submitted for its target (a
/// finding applied twice would show as one too many), and there are
/// `incidents` of them.
pub async fn assert_each_incident_counts_its_findings_once(
    admin: &mut AdminServiceClient<Channel>,
    submitted: &BTreeMap<String, Vec<(String, String)>>,
    incidents: usize,
) {
    let listed = admin
        .list_incidents(pb::ListIncidentsRequest { include_resolved: true, ..Default::default() })
        .await
        .expect("list incidents")
        .into_inner()
        .incidents;
    assert_eq!(listed.len(), incidents);
    for incident in listed {
        let expected = submitted.values().flatten().filter(|(t, _)| *t == incident.target).count() as u64;
        assert_eq!(incident.finding_count, expected, "findings counted for {}", incident.target);
    }
}
