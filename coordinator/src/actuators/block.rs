//! The `block_ip` action: one address blocked on every node, each node's
//! enforcement reported and recorded.
//!
//! The rails weigh the address itself (`ip/<address>`, an address kind:
//! `never_block`, Remedy's own infrastructure (every node, the pod and
//! service ranges, the API server, the coordinator: see
//! [`crate::infrastructure`]) and the wide-block approval apply), in every
//! mode, before anything is sent. The directive then goes to every connected agent that
//! announces `block_ip`; each answer becomes `nodes.<node>.state`:
//! `enforced`, `refused` (the agent's own protections: its addresses, pod
//! and service ranges) or `failed` (with `nodes.<node>.reason`). The action
//! succeeds only when every such agent enforces it. No agent that can block
//! is a failure that says so, never "blocked on 0 nodes".
//!
//! A live block is all or nothing: when a node refuses or fails it, or the
//! edge does, the nodes that applied it remove it again (and the edge rule
//! placed for it is deleted); the report says so per node
//! (`nodes.<node>.rollback`: `removed` or `failed`, `rolled_back`: how
//! many) and the ban's record ends, so it is never re-sent. An earlier ban
//! of the same address still in force is left alone (`rollback:
//! kept_earlier_ban`).
//!
//! A live block is recorded in the coordinator's bans ([`crate::bans`])
//! before it is sent, then with each node's answer; its end is enforced by
//! the agents' own timeouts. A dry run sends the directive in dry-run (the
//! agents check everything and change nothing) and records nothing.
//!
//! `edge: true` also blocks at the edge provider ([`crate::edge`]) when one
//! is configured, after the nodes: `edge.state` `enforced` (with
//! `edge.rule_id`) or `failed` (with `edge.reason`, and the action fails);
//! `dry_run` in a dry run, where nothing is sent to the edge. Without a
//! provider the evidence says `not_configured`, and the nodes' block
//! stands on its own.
//!
//! Evidence: `ip`, `duration_seconds`, `until`, `agents`, `enforced`,
//! `refused`, `failed`, per node `nodes.<node>.state`,
//! `nodes.<node>.reason` (when not enforced) and `nodes.<node>.expires_at`
//! (the agent's own end), and `edge.*` when the step asks for the edge.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use remedy_shared::guard::TargetRef;
use remedy_shared::incident::IncidentId;
use remedy_shared::runbook::BlockIp;
use remedy_shared::text::{self, Unit};

use super::{ActionCall, ActionReport, ActionStatus, Actuator, Resolved};
use crate::actuators::agent::AgentAnswer;
use crate::bans::{BLOCK_IP, Bans, node_state};
use crate::directives::DirectiveSpec;
use crate::store::{BanNode, BanRecord, EdgeBan};

/// Longest the action waits for the agents, whatever its deadline.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// Longest reason the agents keep.
const MAX_REASON: usize = 256;

/// Performs `block_ip` through the agents.
#[derive(Debug, Clone)]
pub struct BlockActuator {
    bans: Bans,
}

impl BlockActuator {
    /// Blocks through `bans`.
    pub fn new(bans: Bans) -> Self {
        BlockActuator { bans }
    }
}

fn params(call: &ActionCall) -> Result<BlockIp, String> {
    let p: BlockIp = serde_json::from_value(call.params.clone()).map_err(|e| format!("block_ip parameters: {e}"))?;
    if p.ip.trim().is_empty() {
        return Err("block_ip parameters: `ip` is empty: no address to block".to_owned());
    }
    Ok(p)
}

/// Whole seconds, rounded up: the agents take durations in seconds.
fn seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[tonic::async_trait]
impl Actuator for BlockActuator {
    fn kinds(&self) -> &'static [&'static str] {
        &["block_ip"]
    }

    /// The address, as the rails weigh it. Whether any agent can block is
    /// left to `execute`: a protected address is refused by the rails first,
    /// with their reason, whoever is connected.
    async fn resolve(&self, call: &ActionCall) -> Option<Result<Resolved, String>> {
        Some(params(call).map(|p| Resolved { targets: vec![TargetRef::new("ip", p.ip.trim())], ..Resolved::default() }))
    }

    async fn execute(&self, call: &ActionCall) -> ActionReport {
        let p = match params(call) {
            Ok(p) => p,
            Err(e) => return ActionReport::new(ActionStatus::Invalid, e),
        };
        let ip = p.ip.trim().to_owned();
        let secs = seconds(p.duration);
        if secs == 0 {
            return ActionReport::new(
                ActionStatus::Invalid,
                "block_ip parameters: `duration` must be longer than zero",
            );
        }
        let until = self.bans.now().plus(Duration::from_secs(secs));
        let reason = text::prefix(p.reason.trim(), MAX_REASON, Unit::Bytes).to_owned();
        let base = |report: ActionReport| {
            let report = report.with("ip", &ip).with("duration_seconds", secs).with("until", until);
            match (p.edge, self.bans.edge()) {
                (true, None) => report
                    .with("edge.state", "not_configured")
                    .with("edge.reason", "no edge provider is configured (`edge:` in the coordinator's configuration)"),
                _ => report,
            }
        };

        let blockers: BTreeSet<String> = self.bans.agents_with(BLOCK_IP).into_iter().map(|a| a.agent_id).collect();
        if blockers.is_empty() {
            let connected = self.bans.connected_count();
            return base(
                ActionReport::new(
                    ActionStatus::Failed,
                    format!(
                        "no agent can block {ip}: none of the {connected} connected agents announces `block_ip` \
                         (IP blocking off or unsupported)"
                    ),
                )
                .with("agents", 0),
            );
        }

        let previous = match self.bans.get(&ip).await {
            Ok(found) => found.filter(|b| crate::bans::ban_state(b, self.bans.now()) == "active"),
            Err(e) => {
                return base(ActionReport::new(ActionStatus::Failed, format!("not sent: cannot read the bans: {e}")));
            }
        };
        let mut record = BanRecord {
            ip: ip.clone(),
            reason: reason.clone(),
            incident_id: call.incident_id.parse::<IncidentId>().ok(),
            step_id: call.step_id.clone(),
            blocked_at: self.bans.now(),
            until,
            nodes: BTreeMap::new(),
            unblocked: None,
            edge: None,
        };
        // Recorded before it is sent: a coordinator that dies meanwhile still
        // knows which address it may have blocked, and until when.
        if !call.dry_run
            && let Err(e) = self.bans.put(record.clone()).await
        {
            return base(ActionReport::new(ActionStatus::Failed, format!("not sent: cannot record the ban: {e}")));
        }
        let mut directive =
            BTreeMap::from([("ip".to_owned(), ip.clone()), ("duration".to_owned(), format!("{secs}s"))]);
        if !reason.is_empty() {
            directive.insert("reason".to_owned(), reason.clone());
        }
        let wait = call.deadline.min(MAX_WAIT);
        let spec = DirectiveSpec {
            action: BLOCK_IP.to_owned(),
            params: directive,
            deadline: self.bans.now().plus(wait),
            dry_run: call.dry_run,
            incident_id: call.incident_id.clone(),
            step_id: call.step_id.clone(),
        };
        let answers = self.bans.send(blockers, &spec, wait).await;
        let mut report = base(block_report(&ip, &answers, call.dry_run));
        if p.edge
            && let Some(edge) = self.bans.edge()
        {
            if call.dry_run {
                report = report.with("edge.state", "dry_run");
            } else {
                let notes = if reason.is_empty() { format!("remedy {}", call.incident_id) } else { reason.clone() };
                // The edge refuses a second rule for the same address: a ban
                // placed again keeps the rule it has.
                let held = previous
                    .as_ref()
                    .and_then(|b| b.edge.clone())
                    .filter(|e| e.state == "enforced" && !e.rule_id.is_empty());
                let placed = match held {
                    Some(e) => Ok(e.rule_id),
                    None => edge.block(&ip, &notes).await,
                };
                let (state, rule_id, why) = match placed {
                    Ok(id) => ("enforced", id, String::new()),
                    Err(e) => ("failed", String::new(), e.to_string()),
                };
                report = report.with("edge.state", state);
                if !rule_id.is_empty() {
                    report = report.with("edge.rule_id", &rule_id);
                }
                if state == "failed" {
                    report.status = ActionStatus::Failed;
                    report.message = format!("{}; edge: {why}", report.message);
                    report = report.with("edge.reason", &why);
                }
                record.edge = Some(EdgeBan { rule_id, state: state.to_owned(), reason: why, at: self.bans.now() });
            }
        }
        if call.dry_run {
            return report;
        }
        let at = self.bans.now();
        for a in &answers {
            record.nodes.insert(
                a.label.clone(),
                BanNode {
                    agent_id: a.agent_id.clone(),
                    state: node_state(a.outcome, false).to_owned(),
                    reason: a.message.clone(),
                    at,
                },
            );
        }
        if report.status != ActionStatus::Succeeded {
            report = self.all_or_nothing(report, &mut record, &answers, previous.as_ref()).await;
        }
        match self.bans.put(record).await {
            Ok(()) => report,
            Err(e) => ActionReport {
                status: ActionStatus::Failed,
                message: format!("{}; the nodes' answers could not be recorded: {e}", report.message),
                evidence: report.evidence,
            },
        }
    }
}

impl BlockActuator {
    /// A block is all or nothing: one that failed somewhere (a node that
    /// refused or did not answer, the edge) is taken back from every node
    /// that applied it, and the report says so, node by node. An earlier
    /// ban of the same address that is still in force is left as it is:
    /// the nodes held it before this step, and lifting it would undo a
    /// decision this step did not make.
    async fn all_or_nothing(
        &self,
        mut report: ActionReport,
        record: &mut BanRecord,
        answers: &[AgentAnswer],
        previous: Option<&BanRecord>,
    ) -> ActionReport {
        if let Some(earlier) = previous {
            let note = format!(
                "not rolled back: an earlier ban of this address (step {}) is in force until {}",
                earlier.step_id, earlier.until
            );
            report.message = format!("{}; {note}", report.message);
            return report.with("rollback", "kept_earlier_ban");
        }
        let applied: BTreeSet<String> =
            answers.iter().filter(|a| node_state(a.outcome, false) == "enforced").map(|a| a.agent_id.clone()).collect();
        let edge_applied = record.edge.as_ref().is_some_and(|e| e.state == "enforced");
        if applied.is_empty() && !edge_applied {
            return report.with("rollback", "nothing_applied").with("rolled_back", 0);
        }
        let outcome = self.bans.roll_back(record, applied, "the block was not enforced everywhere").await;
        let removed = outcome.values().filter(|r| r.is_ok()).count();
        let stuck: Vec<String> =
            outcome.iter().filter_map(|(node, r)| r.as_ref().err().map(|e| format!("{node} ({e})"))).collect();
        for (node, r) in &outcome {
            report = report.with(&format!("nodes.{node}.rollback"), if r.is_ok() { "removed" } else { "failed" });
        }
        report =
            report.with("rolled_back", removed).with("rollback", if stuck.is_empty() { "done" } else { "partial" });
        let mut said = format!("rolled back on the {removed} node(s) that had applied it");
        if !stuck.is_empty() {
            said.push_str(&format!(
                "; still in force on {} until it ends by itself at {}",
                stuck.join(", "),
                record.until
            ));
        }
        if let Some(edge) = record.edge.as_ref().filter(|_| edge_applied) {
            report = report.with("edge.rollback", &edge.state);
            said.push_str(&format!("; edge rule: {}", edge.state));
        }
        report.message = format!("{}; {said}", report.message);
        report
    }
}

/// The report of one block from the agents' answers.
fn block_report(ip: &str, answers: &[AgentAnswer], dry_run: bool) -> ActionReport {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::from([("enforced", 0), ("refused", 0), ("failed", 0)]);
    let mut evidence = BTreeMap::new();
    let mut problems = Vec::new();
    for a in answers {
        let state = node_state(a.outcome, false);
        let fine = state == "enforced" || (dry_run && state == "dry_run");
        *counts.entry(if fine { "enforced" } else { state }).or_default() += 1;
        evidence.insert(format!("nodes.{}.state", a.label), state.to_owned());
        if !fine || dry_run {
            evidence.insert(format!("nodes.{}.reason", a.label), a.message.clone());
        }
        if !fine {
            problems.push(format!("{}: {} ({})", a.label, state, a.message));
        }
        if let Some(end) = a.evidence.get("expires_at") {
            evidence.insert(format!("nodes.{}.expires_at", a.label), end.clone());
        }
    }
    for (k, v) in &counts {
        evidence.insert((*k).to_owned(), v.to_string());
    }
    evidence.insert("agents".to_owned(), answers.len().to_string());
    let enforced = counts["enforced"];
    let status = match (problems.is_empty(), dry_run) {
        (true, true) => ActionStatus::DryRun,
        (true, false) => ActionStatus::Succeeded,
        (false, _) => ActionStatus::Failed,
    };
    let mut message = if dry_run {
        format!("{ip} would be blocked on {enforced} of {} nodes (dry run: nothing changed)", answers.len())
    } else {
        format!("{ip} blocked on {enforced} of {} nodes", answers.len())
    };
    if !problems.is_empty() {
        message.push_str("; ");
        message.push_str(&problems.join("; "));
    }
    ActionReport { status, message, evidence }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuators::agent::Outcome;
    use crate::directives::{AgentInfo, Directives};
    use std::sync::Arc;

    fn answer(node: &str, outcome: Outcome, message: &str) -> AgentAnswer {
        AgentAnswer {
            agent_id: format!("{node}-id"),
            node: node.into(),
            label: node.into(),
            outcome,
            message: message.into(),
            evidence: BTreeMap::from([("expires_at".to_owned(), "2026-01-01T00:00:00Z".to_owned())]),
        }
    }

    #[test]
    fn a_block_succeeds_only_when_every_node_enforces_it() {
        let all = [answer("n1", Outcome::Succeeded, "ok"), answer("n2", Outcome::Succeeded, "ok")];
        let report = block_report("203.0.113.7", &all, false);
        assert_eq!(report.status, ActionStatus::Succeeded);
        assert_eq!(report.message, "203.0.113.7 blocked on 2 of 2 nodes");
        assert_eq!(report.evidence["nodes.n1.state"], "enforced");
        assert_eq!(report.evidence["nodes.n2.expires_at"], "2026-01-01T00:00:00Z");
        assert_eq!(report.evidence["enforced"], "2");
        assert!(!report.evidence.contains_key("nodes.n1.reason"));

        let mixed = [
            answer("n1", Outcome::Succeeded, "ok"),
            answer("n2", Outcome::Refused, "not blocking 10.0.0.2: an address of this node"),
            answer("n3", Outcome::TimedOut, "no answer within 5s"),
        ];
        let report = block_report("10.0.0.2", &mixed, false);
        assert_eq!(report.status, ActionStatus::Failed);
        assert_eq!(report.evidence["nodes.n2.state"], "refused");
        assert_eq!(report.evidence["nodes.n2.reason"], "not blocking 10.0.0.2: an address of this node");
        assert_eq!(report.evidence["nodes.n3.state"], "failed");
        assert_eq!((report.evidence["refused"].as_str(), report.evidence["failed"].as_str()), ("1", "1"));
        assert!(report.message.contains("n2: refused (not blocking"), "{}", report.message);

        let rehearsed = [answer("n1", Outcome::DryRun, "dry run: would block")];
        let report = block_report("203.0.113.7", &rehearsed, true);
        assert_eq!(report.status, ActionStatus::DryRun);
        assert_eq!(report.evidence["nodes.n1.state"], "dry_run");
    }

    fn call(params: serde_json::Value, dry_run: bool) -> ActionCall {
        ActionCall {
            incident_id: "INC-000001".into(),
            step_id: "block".into(),
            kind: "block_ip".into(),
            params,
            dry_run,
            deadline: Duration::from_secs(5),
            accepted_risk: None,
        }
    }

    fn actuator(directives: Directives) -> (BlockActuator, Bans, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let bans = Bans::new(store, directives);
        (BlockActuator::new(bans.clone()), bans, dir)
    }

    #[tokio::test]
    async fn the_rails_weigh_the_address_and_no_blocking_agent_is_a_failure() {
        let directives = Directives::default();
        let (tx, _inbox) = tokio::sync::mpsc::channel(8);
        let _reg = directives.register(
            AgentInfo {
                agent_id: "a1".into(),
                node_name: "n1".into(),
                labels: BTreeMap::new(),
                capabilities: ["snapshot".to_owned()].into(),
            },
            tx,
        );
        let (actuator, bans, _dir) = actuator(directives);
        let params = serde_json::json!({ "ip": " 203.0.113.7 ", "duration": "1h", "edge": true, "reason": "r" });
        let resolved = actuator.resolve(&call(params.clone(), true)).await.unwrap().unwrap();
        assert_eq!(resolved.targets, vec![TargetRef::new("ip", "203.0.113.7")]);

        for dry_run in [true, false] {
            let report = actuator.execute(&call(params.clone(), dry_run)).await;
            assert_eq!(report.status, ActionStatus::Failed);
            assert!(
                report.message.starts_with("no agent can block 203.0.113.7: none of the 1 connected"),
                "{report:?}"
            );
            assert_eq!(report.evidence["edge.state"], "not_configured");
            assert_eq!(report.evidence["duration_seconds"], "3600");
        }
        assert!(bans.list().await.unwrap().is_empty(), "nothing sent, nothing recorded");

        let bad = actuator.resolve(&call(serde_json::json!({ "ip": "", "duration": "1h", "reason": "r" }), true)).await;
        assert!(matches!(bad, Some(Err(e)) if e.contains("`ip` is empty")));
    }
}
