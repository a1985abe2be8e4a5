//! `AdminService`: what remedyctl reads and watches.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use remedy_proto::convert;
use remedy_proto::v1 as pb;
use remedy_shared::Timestamp;
use remedy_shared::budget::SlidingBudget;
use remedy_shared::incident::IncidentId;
use remedy_shared::limits;
use remedy_shared::sync::lock;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use std::collections::BTreeMap;

use remedy_shared::audit::{AuditEntry, AuditKind};
use remedy_shared::auth::AdminCall;

use remedy_shared::paging::{BadToken, Listing, join_key, split_key};

use crate::auth::Authenticator;
use crate::engine::{Engine, EngineError};
use crate::listing;
use crate::recorder::{ManualRun, RecordError, Recorder};
use crate::registry::Registry;
use crate::store::{AgentRecord, BanRecord, FindingQuery, Store, StoreError, StoredFinding};

/// The most incidents the watch's initial listing sends (one message each).
const WATCH_INITIAL: usize = remedy_shared::paging::MAX_PAGE_SIZE;

/// What the admin calls do, once admitted. Only [`AdminService`], which
/// admits and audits each call, serves them.
#[derive(Clone)]
pub struct Admin {
    /// Where everything is kept.
    pub store: Arc<dyn Store>,
    /// Live view of agents.
    pub registry: Arc<Registry>,
    /// Source of incident changes.
    pub recorder: Recorder,
    /// The runbook engine.
    pub engine: Engine,
    /// The IP bans placed on the agents.
    pub bans: crate::bans::Bans,
    /// Whoever started a run may not approve its steps (two-person rule).
    pub two_person_approvals: bool,
    /// The runbooks, for their titles in reviews.
    pub catalog: Arc<remedy_shared::run::Catalog>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

fn store_status(e: StoreError) -> Status {
    Status::unavailable(format!("cannot read the store: {e}"))
}

impl Admin {
    /// The time now, by the writer's clock.
    pub fn now(&self) -> Timestamp {
        self.recorder.clock().now()
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| Status::internal(format!("store reader failed: {e}")))?
            .map_err(store_status)
    }

    fn agent_to_proto(&self, record: AgentRecord) -> pb::Agent {
        let live = self.registry.get(&record.agent_id).unwrap_or_default();
        pb::Agent {
            acked_sequence: record.tracker.contiguous(),
            agent_id: record.agent_id,
            node_name: record.node_name,
            version: record.version,
            capabilities: record.capabilities,
            labels: record.labels.into_iter().collect(),
            connected: live.connected,
            stale: live.stale,
            last_seen_ms: live.last_seen.as_millis(),
            snapshot: live.snapshot.as_ref().map(convert::snapshot_to_proto),
            spool_depth: live.spool_depth,
            spool_dropped_total: live.spool_dropped,
            node_addresses: record.node_addresses.iter().map(ToString::to_string).collect(),
        }
    }
}

fn ban_to_proto(b: BanRecord, at: remedy_shared::Timestamp) -> pb::Ban {
    pb::Ban {
        state: crate::bans::ban_state(&b, at).to_owned(),
        ip: b.ip,
        reason: b.reason,
        incident_id: b.incident_id.map(|i| i.to_string()).unwrap_or_default(),
        step_id: b.step_id,
        blocked_at_ms: b.blocked_at.as_millis(),
        until_ms: b.until.as_millis(),
        nodes: b
            .nodes
            .into_iter()
            .map(|(node, n)| pb::BanNode {
                node,
                agent_id: n.agent_id,
                state: n.state,
                reason: n.reason,
                at_ms: n.at.as_millis(),
            })
            .collect(),
        edge_state: b.edge.as_ref().map(|e| e.state.clone()).unwrap_or_default(),
        edge_rule_id: b.edge.as_ref().map(|e| e.rule_id.clone()).unwrap_or_default(),
        edge_reason: b.edge.as_ref().map(|e| e.reason.clone()).unwrap_or_default(),
        unblocked_by: b.unblocked.as_ref().map(|(by, _)| by.clone()).unwrap_or_default(),
        unblocked_at_ms: b.unblocked.map(|(_, at)| at.as_millis()).unwrap_or(0),
    }
}

/// A person's lift of a ban, as the rails see it: kind `unblock_ip` on the
/// address. It is weighed, not counted: lifting a ban takes nothing away, so
/// it spends no budget, but a pause or an open breaker still stops it.
fn unblock_request(ban: &BanRecord) -> remedy_shared::guard::ActionRequest {
    remedy_shared::guard::ActionRequest {
        runbook_id: "manual".to_owned(),
        incident_id: ban.incident_id.unwrap_or(IncidentId(0)),
        step_id: "unblock".to_owned(),
        attempt: 1,
        action_kind: crate::bans::UNBLOCK_IP.to_owned(),
        targets: vec![remedy_shared::guard::TargetRef::new("ip", ban.ip.clone())],
        destructive: false,
        requires_approval: false,
        capacity: None,
        population: None,
        trigger_still_holds: None,
        mode: remedy_shared::guard::Mode::Live,
        risk: None,
    }
}

fn finding_to_proto(f: StoredFinding) -> pb::StoredFinding {
    pb::StoredFinding {
        finding: Some(convert::finding_to_proto(&f.finding)),
        agent_id: f.agent_id,
        sequence: f.sequence,
        node_name: f.node_name,
        received_at_ms: f.received_at.as_millis(),
        incident_id: f.incident_id.map(|i| i.to_string()).unwrap_or_default(),
    }
}

fn bad_token(e: BadToken) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A findings page's key: "<sequence>:<agent id>" of the last item.
fn finding_key(agent: &str, sequence: u64) -> String {
    format!("{sequence}:{agent}")
}

fn parse_finding_token(token: &str) -> Result<Option<(String, u64)>, Status> {
    Listing::Findings
        .parse(token, |key| {
            let (seq, agent) = key.split_once(':')?;
            Some((agent.to_owned(), seq.parse().ok()?))
        })
        .map_err(bad_token)
}

/// The page size asked: `page_size`, else the older field it replaces.
fn asked(page_size: u32, older: u32) -> u32 {
    if page_size == 0 { older } else { page_size }
}

/// Where an approvals page stands in their order: pending first, then by
/// when they were asked, then by incident, step and attempt.
type ApprovalKey = (u8, i64, String, String, u32);

fn approval_key(a: &pb::Approval) -> ApprovalKey {
    (u8::from(a.status != "pending"), a.requested_at_ms, a.incident_id.clone(), a.step_id.clone(), a.attempt)
}

fn approval_token_key(k: &ApprovalKey) -> String {
    join_key(&[&k.0.to_string(), &k.1.to_string(), &k.2, &k.4.to_string(), &k.3])
}

fn parse_approval_key(key: &str) -> Option<ApprovalKey> {
    let f = split_key(key, 5)?;
    Some((f[0].parse().ok()?, f[1].parse().ok()?, f[2].to_owned(), f[4].to_owned(), f[3].parse().ok()?))
}

/// Where a bans page stands in their order: newest first, then by address.
fn ban_key(b: &BanRecord) -> (std::cmp::Reverse<i64>, String) {
    (std::cmp::Reverse(b.blocked_at.as_millis()), b.ip.clone())
}

fn parse_incident_id(id: &str) -> Result<IncidentId, Status> {
    id.parse().map_err(Status::invalid_argument)
}

/// Commands are written on timelines with who gave them.
fn required_by(by: &str) -> Result<String, Status> {
    let by = by.trim();
    if by.is_empty() {
        return Err(Status::invalid_argument("requested_by is required: commands are recorded with who gave them"));
    }
    bounded("requested_by", by, limits::MAX_NOTE_BYTES)?;
    Ok(by.to_owned())
}

/// Refuses text a command would keep (on a timeline, in a ban) over its
/// limit, naming the field: a person can shorten it.
fn bounded(field: &str, text: &str, max: usize) -> Result<(), Status> {
    limits::check_name(field, text, max).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn record_status(e: RecordError) -> Status {
    match e {
        RecordError::NoOpenIncident(_) => Status::not_found(e.to_string()),
        RecordError::Transition(_) => Status::failed_precondition(e.to_string()),
        RecordError::BadRun(_) => Status::invalid_argument(e.to_string()),
        RecordError::Store(_) | RecordError::Stopped | RecordError::QueueFull => Status::unavailable(e.to_string()),
        RecordError::Sequence(_) | RecordError::UnknownAgent(_) | RecordError::AgentOfAnotherNode { .. } => {
            Status::internal(e.to_string())
        }
    }
}

fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::Approval(remedy_shared::guard::ApprovalError::NotFound(_)) => Status::not_found(e.to_string()),
        EngineError::Approval(_) | EngineError::Nothing(_) => Status::failed_precondition(e.to_string()),
        EngineError::Record(e) => record_status(e),
    }
}

impl Admin {
    /// A command on an incident that is not open: FAILED_PRECONDITION if it
    /// exists (it is resolved), NOT_FOUND if it never did.
    async fn closed_or_missing(&self, id: IncidentId) -> Status {
        match self.read(move |s| s.get_incident(id)).await {
            Ok(Some((incident, _))) => {
                let since = incident.resolved_at.map(|t| format!(" since {t}")).unwrap_or_default();
                Status::failed_precondition(format!("{id} is {}{since}", incident.state.as_str()))
            }
            Ok(None) => Status::not_found(format!("no incident {id}")),
            Err(status) => status,
        }
    }
}

/// What a person may do to an incident, whichever way they ask: the admin
/// API, PagerDuty's webhook and Slack's buttons all call these, so each
/// rule (an open incident, a bounded reason, the two-person rule) is
/// checked in one place. `details` go on the timeline entry the command
/// writes: how it came (`via`) and what the sender calls it.
impl Admin {
    /// `by` acknowledges incident `id`: the climb of its escalation holds.
    /// FAILED_PRECONDITION when it is acknowledged already or resolved,
    /// NOT_FOUND when there never was one.
    pub async fn acknowledge(
        &self,
        id: IncidentId,
        by: String,
        details: BTreeMap<String, String>,
    ) -> Result<remedy_shared::incident::Incident, Status> {
        match self.recorder.acknowledge_with(id, by, details).await {
            Err(RecordError::NoOpenIncident(id)) => Err(self.closed_or_missing(id).await),
            other => other.map_err(record_status),
        }
    }

    /// `by` resolves incident `id` because of `reason`.
    pub async fn resolve(
        &self,
        id: IncidentId,
        by: String,
        reason: String,
        details: BTreeMap<String, String>,
    ) -> Result<remedy_shared::incident::Incident, Status> {
        bounded("reason", &reason, limits::MAX_NOTE_BYTES)?;
        match self.recorder.resolve_with(id, by, reason, details).await {
            Err(RecordError::NoOpenIncident(id)) => Err(self.closed_or_missing(id).await),
            other => other.map_err(record_status),
        }
    }

    /// `by` grants (`approve`) or denies, because of `reason`, the approval
    /// request `key`. A denial needs a reason; with the two-person rule,
    /// whoever started the run may not grant it (PERMISSION_DENIED).
    pub async fn answer(
        &self,
        key: &remedy_shared::guard::ApprovalKey,
        by: &str,
        approve: bool,
        reason: &str,
        details: BTreeMap<String, String>,
    ) -> Result<pb::Approval, Status> {
        bounded("reason", reason, limits::MAX_NOTE_BYTES)?;
        bounded("step_id", &key.step_id, limits::MAX_KEY_BYTES)?;
        if !approve && reason.trim().is_empty() {
            return Err(Status::invalid_argument("a denial needs a reason: it is written on the incident's timeline"));
        }
        if approve && self.two_person_approvals {
            let id = key.incident_id;
            if let Some(starter) = self.read(move |s| s.get_run(id)).await?.and_then(|run| run.requested_by) {
                remedy_shared::auth::may_approve(by, &starter).map_err(crate::auth::denied_status)?;
            }
        }
        let deny = (!approve).then_some(reason);
        self.engine.answer_with(key, by, deny, details).await.map_err(engine_status)?;
        let guard = self.engine.guard();
        let approval = guard.approval(key).ok_or_else(|| Status::not_found(format!("no approval request {key}")))?;
        Ok(convert::approval_to_proto(approval, self.now()))
    }

    /// Appends the audit entry of a command that came other than through
    /// the admin API (a webhook): `actor` gave `call` on `target`, with
    /// `arguments`, and `outcome` is how it ended.
    pub async fn audit_command<T>(
        &self,
        actor: &str,
        call: AdminCall,
        target: &str,
        arguments: BTreeMap<String, String>,
        outcome: &Result<T, Status>,
    ) -> Result<(), Status> {
        let entry = AuditEntry {
            seq: 0,
            at: self.now(),
            actor: actor.to_owned(),
            kind: AuditKind::AdminCall,
            operation: call.method().to_owned(),
            target: target.to_owned(),
            arguments,
            outcome: match outcome {
                Ok(_) => "ok".to_owned(),
                Err(status) => format!("{:?}: {}", status.code(), status.message()),
            },
        };
        self.recorder.audit(entry).await.map_err(record_status)
    }

    /// The incident and its timeline, if there is one.
    pub async fn incident(
        &self,
        id: IncidentId,
    ) -> Result<Option<(remedy_shared::incident::Incident, Vec<remedy_shared::incident::TimelineEntry>)>, Status> {
        self.read(move |s| s.get_incident(id)).await
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::IncidentEvent, Status>> + Send>>;

impl Admin {
    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let req = request.into_inner();
        let after = Listing::Agents.key(&req.page_token).map_err(bad_token)?;
        // Every record is read: there is one per agent that ever said hello,
        // a few per node, so they stay few; the page bounds the answer.
        let records = self.read(|s| s.list_agents()).await?;
        let mut page = listing::page(req.page_size);
        for r in records.into_iter().filter(|r| after.as_ref().is_none_or(|a| r.agent_id > *a)) {
            if !listing::offer(&mut page, r.agent_id.clone(), self.agent_to_proto(r)) {
                break;
            }
        }
        let (agents, next_page_token) = listing::finish(page, Listing::Agents);
        Ok(Response::new(pb::ListAgentsResponse { agents, next_page_token }))
    }

    async fn get_agent(&self, request: Request<pb::GetAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        let id = request.into_inner().agent_id;
        let records = self.read(|s| s.list_agents()).await?;
        let record = records
            .into_iter()
            .find(|r| r.agent_id == id)
            .ok_or_else(|| Status::not_found(format!("no agent `{id}`")))?;
        Ok(Response::new(self.agent_to_proto(record)))
    }

    async fn list_findings(
        &self,
        request: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<pb::ListFindingsResponse>, Status> {
        let req = request.into_inner();
        let kind = if req.kind.is_empty() {
            None
        } else {
            Some(
                req.kind
                    .parse()
                    .map_err(|e: remedy_shared::finding::UnknownKind| Status::invalid_argument(e.to_string()))?,
            )
        };
        let query = FindingQuery {
            agent_id: (!req.agent_id.is_empty()).then_some(req.agent_id),
            kind,
            after: parse_finding_token(&req.page_token)?,
            limit: 0,
        };
        let page = self
            .read(move |s| {
                let mut page = listing::page(req.page_size);
                s.scan_findings(&query, &mut |f| {
                    listing::offer(&mut page, finding_key(&f.agent_id, f.sequence), finding_to_proto(f))
                })?;
                Ok(page)
            })
            .await?;
        let (findings, next_page_token) = listing::finish(page, Listing::Findings);
        Ok(Response::new(pb::ListFindingsResponse { findings, next_page_token }))
    }

    async fn get_finding(
        &self,
        request: Request<pb::GetFindingRequest>,
    ) -> Result<Response<pb::StoredFinding>, Status> {
        let req = request.into_inner();
        let (agent, seq) = (req.agent_id.clone(), req.sequence);
        let found = self.read(move |s| s.get_finding(&agent, seq)).await?;
        let f =
            found.ok_or_else(|| Status::not_found(format!("no finding {} from `{}`", req.sequence, req.agent_id)))?;
        Ok(Response::new(finding_to_proto(f)))
    }

    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let req = request.into_inner();
        let before =
            Listing::Incidents.parse(&req.page_token, |k| k.parse().ok().map(IncidentId)).map_err(bad_token)?;
        let size = asked(req.page_size, req.limit);
        let page = self
            .read(move |s| {
                let mut page = listing::page(size);
                s.scan_incidents(req.include_resolved, before, &mut |i| {
                    listing::offer(&mut page, i.id.0.to_string(), convert::incident_to_proto(&i, &[]))
                })?;
                Ok(page)
            })
            .await?;
        let (incidents, next_page_token) = listing::finish(page, Listing::Incidents);
        Ok(Response::new(pb::ListIncidentsResponse { incidents, next_page_token }))
    }

    async fn get_incident(&self, request: Request<pb::GetIncidentRequest>) -> Result<Response<pb::Incident>, Status> {
        let raw = request.into_inner().id;
        let id = parse_incident_id(&raw)?;
        let found = self.read(move |s| Ok((s.get_incident(id)?, s.get_run(id)?))).await?;
        let (found, run) = found;
        let (incident, timeline) = found.ok_or_else(|| Status::not_found(format!("no incident {id}")))?;
        let mut reply = convert::incident_to_proto(&incident, &timeline);
        if let Some(run) = run {
            reply.run_status = convert::run_status_to_proto(run.status) as i32;
            reply.run_outcome = run.outcome.as_ref().map(convert::run_outcome_to_proto);
        }
        Ok(Response::new(reply))
    }

    async fn watch_incidents(
        &self,
        request: Request<pb::WatchIncidentsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let include_resolved = request.into_inner().include_resolved;
        // Subscribe before listing so no change falls between the two.
        let mut changes = self.recorder.subscribe();
        let initial = self.read(move |s| s.list_incidents(include_resolved, WATCH_INITIAL)).await?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            for incident in initial.iter().rev() {
                let event =
                    pb::IncidentEvent { incident: Some(convert::incident_to_proto(incident, &[])), initial: true };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            loop {
                let event = match changes.recv().await {
                    Ok(incident) => Ok(pb::IncidentEvent {
                        incident: Some(convert::incident_to_proto(&incident, &[])),
                        initial: false,
                    }),
                    Err(RecvError::Lagged(n)) => {
                        Err(Status::aborted(format!("the watch fell {n} changes behind; watch again to resynchronise")))
                    }
                    Err(RecvError::Closed) => return,
                };
                let failed = event.is_err();
                if tx.send(event).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn acknowledge_incident(
        &self,
        request: Request<pb::IncidentCommand>,
    ) -> Result<Response<pb::Incident>, Status> {
        let req = request.into_inner();
        let id = parse_incident_id(&req.id)?;
        let by = required_by(&req.requested_by)?;
        let incident = self.acknowledge(id, by, BTreeMap::new()).await?;
        Ok(Response::new(convert::incident_to_proto(&incident, &[])))
    }

    async fn resolve_incident(&self, request: Request<pb::IncidentCommand>) -> Result<Response<pb::Incident>, Status> {
        let req = request.into_inner();
        let id = parse_incident_id(&req.id)?;
        let by = required_by(&req.requested_by)?;
        let incident = self.resolve(id, by, req.reason, BTreeMap::new()).await?;
        Ok(Response::new(convert::incident_to_proto(&incident, &[])))
    }

    async fn list_runbooks(
        &self,
        request: Request<pb::ListRunbooksRequest>,
    ) -> Result<Response<pb::ListRunbooksResponse>, Status> {
        let req = request.into_inner();
        let catalog = self.engine.catalog();
        let all = catalog.runbooks();
        // The catalog is loaded at start and never changes, so a page starts
        // just after the runbook the last one ended with.
        let start = match Listing::Runbooks.key(&req.page_token).map_err(bad_token)? {
            None => 0,
            Some(id) => {
                let at = all.iter().position(|r| r.id() == id);
                at.ok_or_else(|| bad_token(BadToken(req.page_token.clone())))? + 1
            }
        };
        let mut page = listing::page(req.page_size);
        for r in &all[start..] {
            let item = convert::runbook_to_proto(r, self.engine.rehearsed_steps(r), false);
            if !listing::offer(&mut page, r.id().to_owned(), item) {
                break;
            }
        }
        let (runbooks, next_page_token) = listing::finish(page, Listing::Runbooks);
        Ok(Response::new(pb::ListRunbooksResponse { runbooks, next_page_token }))
    }

    async fn get_runbook(&self, request: Request<pb::GetRunbookRequest>) -> Result<Response<pb::Runbook>, Status> {
        let id = request.into_inner().id;
        let catalog = self.engine.catalog();
        let runbook = catalog.get(&id).ok_or_else(|| Status::not_found(catalog.not_found(&id)))?;
        Ok(Response::new(convert::runbook_to_proto(runbook, self.engine.rehearsed_steps(runbook), true)))
    }

    async fn run_runbook(
        &self,
        request: Request<pb::RunRunbookRequest>,
    ) -> Result<Response<pb::RunRunbookResponse>, Status> {
        let req = request.into_inner();
        let by = required_by(&req.requested_by)?;
        bounded("runbook_id", &req.runbook_id, limits::MAX_KEY_BYTES)?;
        let params: BTreeMap<String, String> = req.params.into_iter().collect();
        limits::check_map("params", &params).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Any case finds the runbook; the run records the catalog's id.
        let catalog = self.engine.catalog();
        let runbook_id = match catalog.get(&req.runbook_id) {
            Some(runbook) => runbook.id().to_owned(),
            None => return Err(Status::not_found(catalog.not_found(&req.runbook_id))),
        };
        let run = ManualRun { runbook_id, params, dry_run: req.dry_run, drill: req.drill, by };
        let id = self.engine.run_manual(run).await.map_err(record_status)?;
        Ok(Response::new(pb::RunRunbookResponse { incident_id: id.to_string() }))
    }

    async fn list_approvals(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let req = request.into_inner();
        let after = Listing::Approvals.parse(&req.page_token, parse_approval_key).map_err(bad_token)?;
        let now = self.now();
        // The guard rails hold every request in memory; a page is cut from
        // them in their order.
        let mut approvals: Vec<(ApprovalKey, pb::Approval)> = {
            let guard = self.engine.guard();
            guard
                .approvals()
                .iter()
                .filter(|a| req.all || a.is_pending(now))
                .map(|a| convert::approval_to_proto(a, now))
                .map(|a| (approval_key(&a), a))
                .filter(|(k, _)| after.as_ref().is_none_or(|after| k > after))
                .collect()
        };
        approvals.sort_by(|a, b| a.0.cmp(&b.0));
        let mut page = listing::page(req.page_size);
        for (key, a) in approvals {
            if !listing::offer(&mut page, approval_token_key(&key), a) {
                break;
            }
        }
        let (approvals, next_page_token) = listing::finish(page, Listing::Approvals);
        Ok(Response::new(pb::ListApprovalsResponse { approvals, next_page_token }))
    }

    async fn answer_approval(
        &self,
        request: Request<pb::AnswerApprovalRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        let req = request.into_inner();
        let by = required_by(&req.requested_by)?;
        let key = remedy_shared::guard::ApprovalKey {
            incident_id: parse_incident_id(&req.incident_id)?,
            step_id: req.step_id,
            attempt: req.attempt,
        };
        let approval = self.answer(&key, &by, req.approve, &req.reason, BTreeMap::new()).await?;
        Ok(Response::new(approval))
    }

    async fn get_automation(&self, _: Request<pb::GetAutomationRequest>) -> Result<Response<pb::Automation>, Status> {
        Ok(Response::new(convert::automation_to_proto(&self.engine.guard())))
    }

    async fn pause_automation(
        &self,
        request: Request<pb::PauseAutomationRequest>,
    ) -> Result<Response<pb::Automation>, Status> {
        let req = request.into_inner();
        let by = required_by(&req.requested_by)?;
        bounded("reason", &req.reason, limits::MAX_NOTE_BYTES)?;
        self.engine.pause(&by, &req.reason).await.map_err(engine_status)?;
        Ok(Response::new(convert::automation_to_proto(&self.engine.guard())))
    }

    async fn resume_automation(
        &self,
        request: Request<pb::ResumeAutomationRequest>,
    ) -> Result<Response<pb::Automation>, Status> {
        let by = required_by(&request.into_inner().requested_by)?;
        self.engine.resume(&by).await.map_err(engine_status)?;
        Ok(Response::new(convert::automation_to_proto(&self.engine.guard())))
    }

    async fn list_bans(&self, request: Request<pb::ListBansRequest>) -> Result<Response<pb::ListBansResponse>, Status> {
        let req = request.into_inner();
        let after = Listing::Bans
            .parse(&req.page_token, |k| {
                let f = split_key(k, 2)?;
                Some((std::cmp::Reverse(f[0].parse::<i64>().ok()?), f[1].to_owned()))
            })
            .map_err(bad_token)?;
        let at = self.now();
        // Bans are one per blocked address, kept in one table of the local
        // file; all are read, newest first, and a page is cut from them.
        let bans = self.bans.list().await.map_err(store_status)?;
        let mut page = listing::page(req.page_size);
        let listed = bans
            .into_iter()
            .filter(|b| req.include_inactive || crate::bans::ban_state(b, at) == "active")
            .filter(|b| after.as_ref().is_none_or(|after| ban_key(b) > *after));
        for b in listed {
            let key = join_key(&[&b.blocked_at.as_millis().to_string(), &b.ip]);
            if !listing::offer(&mut page, key, ban_to_proto(b, at)) {
                break;
            }
        }
        let (bans, next_page_token) = listing::finish(page, Listing::Bans);
        Ok(Response::new(pb::ListBansResponse { bans, next_page_token }))
    }

    async fn unblock(&self, request: Request<pb::UnblockRequest>) -> Result<Response<pb::Ban>, Status> {
        let req = request.into_inner();
        let by = required_by(&req.requested_by)?;
        bounded("ip", &req.ip, limits::MAX_KEY_BYTES)?;
        let ip = req.ip.trim().to_owned();
        if ip.is_empty() {
            return Err(Status::invalid_argument("ip is required: name the address as it was blocked"));
        }
        let ban = self
            .bans
            .get(&ip)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no ban of {ip} is recorded")))?;
        let guard_request = unblock_request(&ban);
        let decision = self.engine.weigh_without_spending(&guard_request);
        let note = decision.note(&guard_request);
        let mut details = note.details.clone();
        details.insert("requested_by".into(), by.clone());
        let mut entries = vec![remedy_shared::incident::TimelineEntry {
            at: self.now(),
            kind: remedy_shared::incident::EntryKind::Decision,
            message: note.message.clone(),
            details,
        }];
        let refused = !decision.is_allowed();
        let outcome = if refused {
            Err(Status::failed_precondition(note.message.clone()))
        } else {
            self.bans.unblock(&ip, &by).await.map_err(|e| match e {
                crate::bans::UnblockError::NotFound(_) => Status::not_found(e.to_string()),
                crate::bans::UnblockError::NoAgent(_) => Status::failed_precondition(e.to_string()),
                crate::bans::UnblockError::Store(e) => store_status(e),
            })
        };
        if let Ok(lifted) = &outcome {
            let mut details = std::collections::BTreeMap::from([
                ("ip".to_owned(), ip.clone()),
                ("requested_by".to_owned(), by.clone()),
            ]);
            let mut lifted_on = 0;
            for (node, n) in &lifted.nodes {
                details.insert(format!("nodes.{node}.state"), n.state.clone());
                lifted_on += usize::from(n.state == "unblocked");
            }
            if let Some(edge) = &lifted.edge {
                details.insert("edge.state".into(), edge.state.clone());
            }
            entries.push(remedy_shared::incident::TimelineEntry {
                at: self.now(),
                kind: remedy_shared::incident::EntryKind::Result,
                message: format!("{by} unblocked {ip}: lifted on {lifted_on} of {} nodes", lifted.nodes.len()),
                details,
            });
        }
        if let Some(id) = ban.incident_id {
            let update = crate::recorder::RunUpdate { incident: Some(id), entries, ..Default::default() };
            self.recorder.run_update(update).await.map_err(record_status)?;
        }
        let lifted = outcome?;
        Ok(Response::new(ban_to_proto(lifted, self.now())))
    }

    async fn reset_breaker(
        &self,
        request: Request<pb::ResetBreakerRequest>,
    ) -> Result<Response<pb::Automation>, Status> {
        let req = request.into_inner();
        let by = required_by(&req.requested_by)?;
        bounded("scope", &req.scope, limits::MAX_KEY_BYTES)?;
        let scope: remedy_shared::guard::Scope = req.scope.parse().map_err(Status::invalid_argument)?;
        self.engine.reset_breaker(&scope, &by).await.map_err(engine_status)?;
        Ok(Response::new(convert::automation_to_proto(&self.engine.guard())))
    }
    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let req = request.into_inner();
        let after = Listing::Audit.parse(&req.page_token, |k| k.parse::<u64>().ok()).map_err(bad_token)?;
        let after = after.unwrap_or(req.after_seq);
        let size = asked(req.page_size, req.limit);
        let page = self
            .read(move |s| {
                let last_seq = s.last_audit_seq()?;
                let mut page = listing::page(size);
                s.scan_audit(after, &mut |e| {
                    listing::offer(&mut page, e.seq.to_string(), convert::audit_to_proto(&e))
                })?;
                Ok((page, last_seq))
            })
            .await?;
        let (page, last_seq) = page;
        let (entries, next_page_token) = listing::finish(page, Listing::Audit);
        Ok(Response::new(pb::ListAuditResponse { entries, next_page_token, last_seq }))
    }

    async fn review_incident(
        &self,
        request: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::IncidentReview>, Status> {
        let id = parse_incident_id(&request.into_inner().id)?;
        let found = self.read(move |s| s.get_incident(id)).await?;
        let (incident, timeline) = found.ok_or_else(|| Status::not_found(format!("no incident {id}")))?;
        let title = incident.runbook.as_deref().and_then(|r| self.catalog.get(r)).map(|r| r.metadata.title.clone());
        let markdown = remedy_shared::review::review_markdown(&remedy_shared::review::ReviewInput {
            incident: &incident,
            timeline: &timeline,
            runbook_title: title.as_deref(),
            now: self.now(),
        });
        Ok(Response::new(pb::IncidentReview { id: id.to_string(), markdown }))
    }

    async fn get_report(&self, request: Request<pb::GetReportRequest>) -> Result<Response<pb::IncidentReport>, Status> {
        let req = request.into_inner();
        let at = self.now();
        let until = if req.until_ms == 0 { at } else { Timestamp::from_millis(req.until_ms) };
        let since = if req.since_ms == 0 {
            Timestamp::from_millis(until.as_millis().saturating_sub(crate::reports::METRICS_WINDOW.as_millis() as i64))
        } else {
            Timestamp::from_millis(req.since_ms)
        };
        if since >= until || since.as_millis() < 0 {
            return Err(Status::invalid_argument(format!(
                "the period [{since}, {until}) is empty: since_ms must be before until_ms"
            )));
        }
        let period = remedy_shared::report::Period { from: since, to: until };
        let drills = req.include_drills;
        let report = self.read(move |s| crate::reports::for_period(s, period, at, drills)).await?;
        let json =
            serde_json::to_string(&report).map_err(|e| Status::internal(format!("cannot encode the report: {e}")))?;
        Ok(Response::new(pb::IncidentReport { since_ms: since.as_millis(), until_ms: until.as_millis(), json }))
    }
}

/// Requests that name who gives them. An authenticated caller's identity
/// replaces whatever the request says, so nobody can act under another
/// name.
trait RequestedBy: std::fmt::Debug {
    fn requested_by(&mut self) -> Option<&mut String> {
        None
    }

    /// The request as its audit entry keeps it.
    fn audited(&self, _catalog: &remedy_shared::run::Catalog) -> String {
        format!("{self:?}")
    }
}

impl RequestedBy for pb::RunRunbookRequest {
    fn requested_by(&mut self) -> Option<&mut String> {
        Some(&mut self.requested_by)
    }

    /// Without the values of secret params (declared so, or named like a
    /// secret): the audit log keeps who ran what, never the secret. An
    /// unknown runbook's params are all hidden, as nothing says which are
    /// secret.
    fn audited(&self, catalog: &remedy_shared::run::Catalog) -> String {
        let runbook = catalog.get(&self.runbook_id);
        let mut shown = self.clone();
        for (name, value) in &mut shown.params {
            if runbook.is_none_or(|r| r.is_secret_param(name)) {
                *value = remedy_shared::audit::REDACTED.to_owned();
            }
        }
        format!("{shown:?}")
    }
}

macro_rules! requested_by {
    ($($t:ty),*) => { $(impl RequestedBy for $t { fn requested_by(&mut self) -> Option<&mut String> { Some(&mut self.requested_by) } })* };
}
macro_rules! no_requested_by {
    ($($t:ty),*) => { $(impl RequestedBy for $t {})* };
}
requested_by!(
    pb::IncidentCommand,
    pb::AnswerApprovalRequest,
    pb::PauseAutomationRequest,
    pb::ResumeAutomationRequest,
    pb::ResetBreakerRequest,
    pb::UnblockRequest
);
no_requested_by!(
    pb::ListAgentsRequest,
    pb::GetAgentRequest,
    pb::ListFindingsRequest,
    pb::GetFindingRequest,
    pb::ListIncidentsRequest,
    pb::GetIncidentRequest,
    pb::WatchIncidentsRequest,
    pb::ListRunbooksRequest,
    pb::GetRunbookRequest,
    pb::ListApprovalsRequest,
    pb::GetAutomationRequest,
    pb::ListBansRequest,
    pb::ListAuditRequest,
    pb::GetReportRequest
);

/// The admin API: every call is admitted by the [`Authenticator`] (who is
/// calling, and does their role allow this call) before [`Admin`] does it,
/// and every call, admitted or refused, leaves an audit entry.
#[derive(Debug, Clone)]
pub struct AdminService {
    admin: Admin,
    auth: Authenticator,
    anonymous: Arc<Mutex<AnonymousRefusals>>,
    metrics: crate::metrics::Metrics,
}

/// Longest request text an audit entry keeps of an allowed call; the rest
/// is counted, not stored.
const AUDITED_REQUEST_BYTES: usize = 4096;
/// Anonymous refusals recorded one by one per minute; the rest are only
/// counted, and the next one recorded says how many were not.
const ANONYMOUS_AUDITED_PER_MINUTE: u32 = 30;

/// The budget of anonymous refusals recorded one by one, and how many went
/// unrecorded since the last one that was.
#[derive(Debug)]
struct AnonymousRefusals {
    budget: SlidingBudget,
    unrecorded: u64,
}

impl AdminService {
    /// The admin API over `admin`, guarded by `auth`; refusals it does not
    /// record one by one are counted in `metrics`.
    pub fn new(admin: Admin, auth: Authenticator, metrics: crate::metrics::Metrics) -> AdminService {
        let anonymous = AnonymousRefusals {
            budget: SlidingBudget::new(ANONYMOUS_AUDITED_PER_MINUTE, std::time::Duration::from_secs(60)),
            unrecorded: 0,
        };
        AdminService { admin, auth, anonymous: Arc::new(Mutex::new(anonymous)), metrics }
    }

    async fn guarded<T, R, Fut>(
        &self,
        mut request: Request<T>,
        call: AdminCall,
        handler: impl FnOnce(Admin, Request<T>) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        T: std::fmt::Debug + RequestedBy + prost::Message,
        Fut: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        let request_bytes = request.get_ref().encoded_len();
        let remote = request
            .remote_addr()
            .or_else(|| request.extensions().get::<remedy_proto::tls::PeerInfo>().and_then(|p| p.remote));
        let admitted = self.auth.admin(&request, call).and_then(|caller| {
            if let Some(by) = request.get_mut().requested_by() {
                *by = caller.by(by)?;
            }
            Ok(caller)
        });
        // What an entry keeps of the request: an allowed call's text, cut
        // to a bound; a refused call's size only, so that nobody can fill
        // the audit log by being refused with large arguments.
        let mut arguments = BTreeMap::from([("request_bytes".to_owned(), request_bytes.to_string())]);
        let (actor, result) = match admitted {
            Ok(caller) => {
                let text = request.get_ref().audited(&self.admin.catalog);
                let kept = remedy_shared::text::prefix(&text, AUDITED_REQUEST_BYTES, remedy_shared::text::Unit::Bytes);
                let cut = if kept.len() < text.len() { " … (cut)" } else { "" };
                arguments.insert("request".to_owned(), format!("{kept}{cut}"));
                (caller.actor(), handler(self.admin.clone(), request).await)
            }
            Err(status) => {
                let who = remote.map(|r| format!("unauthenticated ({r})")).unwrap_or_else(|| "unauthenticated".into());
                if status.code() == tonic::Code::Unauthenticated {
                    match self.anonymous_refusal() {
                        Some(unrecorded) if unrecorded > 0 => {
                            arguments.insert("unrecorded_refusals_before".to_owned(), unrecorded.to_string());
                        }
                        Some(_) => {}
                        None => {
                            tracing::debug!(%who, method = call.method(), "anonymous call refused (counted, not recorded)");
                            return Err(status);
                        }
                    }
                    (who, Err(status))
                } else {
                    (self.identity_of(&request), Err(status))
                }
            }
        };
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        };
        let entry = AuditEntry {
            seq: 0,
            at: self.admin.now(),
            actor,
            kind: AuditKind::AdminCall,
            operation: call.method().to_owned(),
            target: String::new(),
            arguments,
            outcome,
        };
        if let Err(e) = self.admin.recorder.audit(entry).await {
            // A call whose audit entry cannot be kept is not answered as if
            // it had been: the caller sees the store's failure.
            tracing::error!(error = %e, method = call.method(), "cannot write the audit entry");
            return Err(record_status(e));
        }
        result
    }

    /// The actor of a refused call whose identity is known: its
    /// certificate's, or the user its token names.
    fn identity_of<T>(&self, request: &Request<T>) -> String {
        self.auth.claimed(request).map(|i| i.to_string()).unwrap_or_else(|| "unknown caller".to_owned())
    }

    /// Whether this anonymous refusal is recorded: `Some(n)` when it is,
    /// `n` being how many before it were only counted; `None` when the
    /// minute's budget is spent (it is counted, and the metric says so).
    fn anonymous_refusal(&self) -> Option<u64> {
        let now = self.admin.now();
        let mut a = lock(&self.anonymous);
        if a.budget.take(now).is_ok() {
            return Some(std::mem::take(&mut a.unrecorded));
        }
        a.unrecorded += 1;
        self.metrics.admin_refusals_unrecorded.inc();
        None
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminService {
    async fn list_agents(&self, r: Request<pb::ListAgentsRequest>) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.guarded(r, AdminCall::ListAgents, |a, r| async move { a.list_agents(r).await }).await
    }

    async fn get_agent(&self, r: Request<pb::GetAgentRequest>) -> Result<Response<pb::Agent>, Status> {
        self.guarded(r, AdminCall::GetAgent, |a, r| async move { a.get_agent(r).await }).await
    }

    async fn list_findings(
        &self,
        r: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<pb::ListFindingsResponse>, Status> {
        self.guarded(r, AdminCall::ListFindings, |a, r| async move { a.list_findings(r).await }).await
    }

    async fn get_finding(&self, r: Request<pb::GetFindingRequest>) -> Result<Response<pb::StoredFinding>, Status> {
        self.guarded(r, AdminCall::GetFinding, |a, r| async move { a.get_finding(r).await }).await
    }

    async fn list_incidents(
        &self,
        r: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        self.guarded(r, AdminCall::ListIncidents, |a, r| async move { a.list_incidents(r).await }).await
    }

    async fn get_incident(&self, r: Request<pb::GetIncidentRequest>) -> Result<Response<pb::Incident>, Status> {
        self.guarded(r, AdminCall::GetIncident, |a, r| async move { a.get_incident(r).await }).await
    }

    async fn review_incident(
        &self,
        r: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::IncidentReview>, Status> {
        self.guarded(r, AdminCall::ReviewIncident, |a, r| async move { a.review_incident(r).await }).await
    }

    async fn get_report(&self, r: Request<pb::GetReportRequest>) -> Result<Response<pb::IncidentReport>, Status> {
        self.guarded(r, AdminCall::GetReport, |a, r| async move { a.get_report(r).await }).await
    }

    type WatchIncidentsStream = WatchStream;

    async fn watch_incidents(&self, r: Request<pb::WatchIncidentsRequest>) -> Result<Response<WatchStream>, Status> {
        self.guarded(r, AdminCall::WatchIncidents, |a, r| async move { a.watch_incidents(r).await }).await
    }

    async fn acknowledge_incident(&self, r: Request<pb::IncidentCommand>) -> Result<Response<pb::Incident>, Status> {
        self.guarded(r, AdminCall::AcknowledgeIncident, |a, r| async move { a.acknowledge_incident(r).await }).await
    }

    async fn resolve_incident(&self, r: Request<pb::IncidentCommand>) -> Result<Response<pb::Incident>, Status> {
        self.guarded(r, AdminCall::ResolveIncident, |a, r| async move { a.resolve_incident(r).await }).await
    }

    async fn list_runbooks(
        &self,
        r: Request<pb::ListRunbooksRequest>,
    ) -> Result<Response<pb::ListRunbooksResponse>, Status> {
        self.guarded(r, AdminCall::ListRunbooks, |a, r| async move { a.list_runbooks(r).await }).await
    }

    async fn get_runbook(&self, r: Request<pb::GetRunbookRequest>) -> Result<Response<pb::Runbook>, Status> {
        self.guarded(r, AdminCall::GetRunbook, |a, r| async move { a.get_runbook(r).await }).await
    }

    async fn run_runbook(&self, r: Request<pb::RunRunbookRequest>) -> Result<Response<pb::RunRunbookResponse>, Status> {
        let call = AdminCall::RunRunbook { dry_run: r.get_ref().dry_run };
        self.guarded(r, call, |a, r| async move { a.run_runbook(r).await }).await
    }

    async fn list_approvals(
        &self,
        r: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        self.guarded(r, AdminCall::ListApprovals, |a, r| async move { a.list_approvals(r).await }).await
    }

    async fn answer_approval(&self, r: Request<pb::AnswerApprovalRequest>) -> Result<Response<pb::Approval>, Status> {
        self.guarded(r, AdminCall::AnswerApproval, |a, r| async move { a.answer_approval(r).await }).await
    }

    async fn get_automation(&self, r: Request<pb::GetAutomationRequest>) -> Result<Response<pb::Automation>, Status> {
        self.guarded(r, AdminCall::GetAutomation, |a, r| async move { a.get_automation(r).await }).await
    }

    async fn pause_automation(
        &self,
        r: Request<pb::PauseAutomationRequest>,
    ) -> Result<Response<pb::Automation>, Status> {
        self.guarded(r, AdminCall::PauseAutomation, |a, r| async move { a.pause_automation(r).await }).await
    }

    async fn resume_automation(
        &self,
        r: Request<pb::ResumeAutomationRequest>,
    ) -> Result<Response<pb::Automation>, Status> {
        self.guarded(r, AdminCall::ResumeAutomation, |a, r| async move { a.resume_automation(r).await }).await
    }

    async fn reset_breaker(&self, r: Request<pb::ResetBreakerRequest>) -> Result<Response<pb::Automation>, Status> {
        self.guarded(r, AdminCall::ResetBreaker, |a, r| async move { a.reset_breaker(r).await }).await
    }

    async fn list_bans(&self, r: Request<pb::ListBansRequest>) -> Result<Response<pb::ListBansResponse>, Status> {
        self.guarded(r, AdminCall::ListBans, |a, r| async move { a.list_bans(r).await }).await
    }

    async fn unblock(&self, r: Request<pb::UnblockRequest>) -> Result<Response<pb::Ban>, Status> {
        self.guarded(r, AdminCall::Unblock, |a, r| async move { a.unblock(r).await }).await
    }

    async fn list_audit(&self, r: Request<pb::ListAuditRequest>) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.guarded(r, AdminCall::ListAudit, |a, r| async move { a.list_audit(r).await }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_foreign_ones_are_refused() {
        let token = Listing::Findings.token(&finding_key("node-a:x", 42));
        assert_eq!(parse_finding_token(&token).unwrap(), Some(("node-a:x".to_owned(), 42)));
        assert_eq!(parse_finding_token("").unwrap(), None);
        for foreign in ["abc", "42:node-a", "findings/x:node", &Listing::Incidents.token("42")] {
            let status = parse_finding_token(foreign).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{foreign}");
            assert!(status.message().contains("page_token"), "{}", status.message());
        }
    }

    #[test]
    fn approval_keys_round_trip_with_any_step_id() {
        let key = (1, 1_700, "INC-000001".to_owned(), "st|ep".to_owned(), 3);
        assert_eq!(parse_approval_key(&approval_token_key(&key)), Some(key));
        assert_eq!(parse_approval_key("1|2"), None);
    }
}
