//! `AdminService`: what remedyctl reads and watches.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use remedy_proto::convert;
use remedy_proto::v1 as pb;
use remedy_shared::incident::IncidentId;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::recorder::Recorder;
use crate::registry::Registry;
use crate::store::{AgentRecord, FindingQuery, Store, StoreError, StoredFinding};

const DEFAULT_PAGE: usize = 500;
const MAX_PAGE: usize = 5_000;

/// The admin API.
#[derive(Clone)]
pub struct AdminService {
    /// Where everything is kept.
    pub store: Arc<dyn Store>,
    /// Live view of agents.
    pub registry: Arc<Registry>,
    /// Source of incident changes.
    pub recorder: Recorder,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService").finish_non_exhaustive()
    }
}

fn store_status(e: StoreError) -> Status {
    Status::unavailable(format!("cannot read the store: {e}"))
}

impl AdminService {
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
        }
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

/// Page tokens are "<sequence>:<agent id>" of the last item returned.
fn parse_page_token(token: &str) -> Result<Option<(String, u64)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Status::invalid_argument(format!("page_token `{token}` was not issued by this server"));
    let (seq, agent) = token.split_once(':').ok_or_else(invalid)?;
    Ok(Some((agent.to_owned(), seq.parse().map_err(|_| invalid())?)))
}

fn parse_incident_id(id: &str) -> Result<IncidentId, Status> {
    id.parse().map_err(Status::invalid_argument)
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminService {
    async fn list_agents(&self, _: Request<pb::ListAgentsRequest>) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let records = self.read(|s| s.list_agents()).await?;
        let agents = records.into_iter().map(|r| self.agent_to_proto(r)).collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
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
        let limit = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let query = FindingQuery {
            agent_id: (!req.agent_id.is_empty()).then_some(req.agent_id),
            kind,
            after: parse_page_token(&req.page_token)?,
            limit,
        };
        let page = self.read(move |s| s.list_findings(&query)).await?;
        let next_page_token = match page.last() {
            Some(last) if page.len() == limit => format!("{}:{}", last.sequence, last.agent_id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListFindingsResponse {
            findings: page.into_iter().map(finding_to_proto).collect(),
            next_page_token,
        }))
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
        let limit = match req.limit as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let incidents = self.read(move |s| s.list_incidents(req.include_resolved, limit)).await?;
        Ok(Response::new(pb::ListIncidentsResponse {
            incidents: incidents.iter().map(|i| convert::incident_to_proto(i, &[])).collect(),
        }))
    }

    async fn get_incident(&self, request: Request<pb::GetIncidentRequest>) -> Result<Response<pb::Incident>, Status> {
        let raw = request.into_inner().id;
        let id = parse_incident_id(&raw)?;
        let found = self.read(move |s| s.get_incident(id)).await?;
        let (incident, timeline) = found.ok_or_else(|| Status::not_found(format!("no incident {id}")))?;
        Ok(Response::new(convert::incident_to_proto(&incident, &timeline)))
    }

    type WatchIncidentsStream = Pin<Box<dyn Stream<Item = Result<pb::IncidentEvent, Status>> + Send>>;

    async fn watch_incidents(
        &self,
        request: Request<pb::WatchIncidentsRequest>,
    ) -> Result<Response<Self::WatchIncidentsStream>, Status> {
        let include_resolved = request.into_inner().include_resolved;
        // Subscribe before listing so no change falls between the two.
        let mut changes = self.recorder.subscribe();
        let initial = self.read(move |s| s.list_incidents(include_resolved, MAX_PAGE)).await?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(parse_page_token("42:node-a:x").unwrap(), Some(("node-a:x".to_owned(), 42)));
        assert_eq!(parse_page_token("").unwrap(), None);
        assert_eq!(parse_page_token("abc").unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
