//! Trust, end to end with real processes on loopback: mutual TLS on the
//! gRPC port, identities from certificates and tokens, the role table on
//! every admin call, the audit log, certificates rotated under a running
//! coordinator, and secrets kept out of logs, timelines and the audit.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use remedy_e2e::procs::{Agent, Coordinator, eventually, remedyctl};
use remedy_proto::pki::{Authority, Issued, Leaf};
use remedy_proto::tls::{self, TlsFiles};
use remedy_proto::v1 as pb;
use remedy_proto::v1::admin_service_client::AdminServiceClient;
use remedy_proto::v1::agent_service_client::AgentServiceClient;
use remedy_shared::auth::{AdminCall, Identity, Role, required_role};
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const WAIT: Duration = Duration::from_secs(60);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
const TOKEN: &str = "tok-0123456789abcdef-do-not-leak";

/// A CA and files written from it, under one directory.
struct Pki {
    dir: PathBuf,
    ca: Authority,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Authority::generate(&format!("{name} CA")).unwrap();
        std::fs::write(dir.join("ca.crt"), &ca.certificate().cert_pem).unwrap();
        Pki { dir, ca }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn write(&self, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        issued.write(&self.dir, name).unwrap()
    }

    fn issue(&self, name: &str, leaf: Leaf) -> (PathBuf, PathBuf) {
        self.write(name, &self.ca.issue(&leaf, YEAR).unwrap())
    }

    fn client(&self, name: &str, identity: &str) -> (PathBuf, PathBuf) {
        self.issue(name, Leaf::Client(Identity::parse(identity).unwrap()))
    }

    fn server(&self) -> (PathBuf, PathBuf) {
        self.issue("coordinator", Leaf::Server(vec!["localhost".into(), "127.0.0.1".into()]))
    }
}

/// A coordinator serving mutual TLS with `pki`'s server certificate.
async fn secure_coordinator(dir: &Path, pki: &Pki, config: &str) -> Coordinator {
    secure_coordinator_with(dir, pki, config, &[]).await
}

/// The same, with more arguments.
async fn secure_coordinator_with(dir: &Path, pki: &Pki, config: &str, extra: &[&str]) -> Coordinator {
    Coordinator::start_tls(dir, &pki.server(), &pki.ca(), config, extra).await
}

/// The agent of node-1 with its certificate.
async fn secure_agent(dir: &Path, c: &Coordinator, cert: &(PathBuf, PathBuf), ca: &Path) -> Agent {
    let args = [
        "--tls-cert",
        cert.0.to_str().unwrap(),
        "--tls-key",
        cert.1.to_str().unwrap(),
        "--tls-ca",
        ca.to_str().unwrap(),
    ];
    Agent::start_with(dir, "node-1", &c.https_url(), &args).await
}

const ROLES: &str = "tls: {reload_every: 200ms}\nauthorization:\n  roles:\n    viewer: ['user:vera']\n    operator: ['user:otto', 'user:ci-bot']\n    admin: ['user:ada']\n";

fn channel(c: &Coordinator, ca: &Path, cert: Option<&(PathBuf, PathBuf)>) -> Channel {
    let files = TlsFiles { cert: cert.map(|c| c.0.clone()), key: cert.map(|c| c.1.clone()), ca: ca.to_path_buf() };
    let endpoint = Endpoint::from_shared(c.https_url()).unwrap().connect_timeout(Duration::from_secs(5));
    tls::channel(endpoint, tls::client(files).unwrap(), None).unwrap()
}

fn admin(c: &Coordinator, ca: &Path, cert: Option<&(PathBuf, PathBuf)>) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(channel(c, ca, cert))
}

fn hello(node: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            agent_id: format!("{node}-agent"),
            node_name: node.into(),
            version: "test".into(),
            ..Default::default()
        })),
    }
}

/// Opens the agent stream with a hello for `node` and returns how the
/// coordinator answered.
async fn stream_as(
    c: &Coordinator,
    ca: &Path,
    cert: Option<&(PathBuf, PathBuf)>,
    node: &str,
) -> Result<(), tonic::Status> {
    let mut client = AgentServiceClient::new(channel(c, ca, cert));
    let outbound = tokio_stream::iter(vec![hello(node)]).chain(tokio_stream::pending());
    let mut inbound = client.connect(outbound).await?.into_inner();
    match inbound.message().await? {
        Some(_) => Ok(()),
        None => Err(tonic::Status::unknown("the stream ended without a welcome")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_certified_callers_get_in_and_each_speaks_only_for_itself() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "trusted");
    let stranger = Pki::new(dir.path(), "stranger");
    let coordinator = secure_coordinator(dir.path(), &pki, ROLES).await;
    let ca = pki.ca();

    let node1 = pki.client("agent-node-1", "agent:node-1");
    let foreign = stranger.client("agent-node-1-foreign", "agent:node-1");
    let now = SystemTime::now();
    let expired = pki.write(
        "agent-node-1-expired",
        &pki.ca
            .issue_between(
                &Leaf::Client(Identity::parse("agent:node-1").unwrap()),
                now - Duration::from_secs(7200),
                now - Duration::from_secs(3600),
            )
            .unwrap(),
    );
    let node2 = pki.client("agent-node-2", "agent:node-2");
    let ada = pki.client("user-ada", "user:ada");

    // No certificate: the handshake completes, the call does not.
    let status = stream_as(&coordinator, &ca, None, "node-1").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("client certificate"), "{status:?}");
    let status = admin(&coordinator, &ca, None).list_agents(pb::ListAgentsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Another CA, or expired: the handshake itself is refused (a TLS alert;
    // under TLS 1.3 the client learns it as a broken connection, before any
    // gRPC status can exist), and the coordinator says why.
    for (what, cert, reason) in
        [("another CA", &foreign, "UnknownIssuer"), ("expired", &expired, "certificate expired")]
    {
        let status = stream_as(&coordinator, &ca, Some(cert), "node-1").await.unwrap_err();
        assert!(matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled), "{what}: {status:?}");
        assert!(format!("{status:?}").contains("tonic::transport::Error"), "{what}: {status:?}");
        let log = eventually(&format!("the refusal of the {what} certificate in the log"), WAIT, || {
            let log = coordinator.log();
            async move { log.contains(reason).then_some(log) }
        })
        .await;
        assert!(log.contains("TLS handshake refused"), "{what}");
    }

    // A real certificate for node-2 may not say hello as node-1.
    let status = stream_as(&coordinator, &ca, Some(&node2), "node-1").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("may not speak for node node-1"), "{status:?}");

    // An agent's certificate is not a key to the admin API.
    let status =
        admin(&coordinator, &ca, Some(&node1)).list_agents(pb::ListAgentsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("agent certificates may not use the admin API"), "{status:?}");

    // Nothing of the refused ones was recorded.
    let mut ada_admin = admin(&coordinator, &ca, Some(&ada));
    let agents = ada_admin.list_agents(pb::ListAgentsRequest::default()).await.unwrap().into_inner().agents;
    assert!(agents.is_empty(), "refused agents were recorded: {agents:?}");

    // The real agent of node-1, with its certificate, gets in and delivers.
    let agent = secure_agent(&dir.path().join("a"), &coordinator, &node1, &ca).await;
    let finding =
        json!([{ "kind": "probe_failed", "severity": "warning", "target": "service/api", "summary": "down" }]);
    // With TLS on and no tokens file, nobody may submit by hand.
    let (code, body) = agent.submit(&finding).await;
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("diagnostics.tokens_file"), "{body}");
    eventually("node-1 connected over TLS", WAIT, || {
        let mut a = ada_admin.clone();
        async move {
            let agents = a.list_agents(pb::ListAgentsRequest::default()).await.ok()?.into_inner().agents;
            agents.iter().any(|a| a.node_name == "node-1" && a.connected).then_some(())
        }
    })
    .await;

    // remedyctl with a context file: the user's certificate, never a flag.
    let config = dir.path().join("remedyctl.yaml");
    std::fs::write(
        &config,
        format!(
            "current-context: t\ncontexts:\n  - name: t\n    context:\n      coordinator: {}\n      certificate-authority: {}\n      client-certificate: {}\n      client-key: {}\n",
            coordinator.https_url(),
            ca.display(),
            ada.0.display(),
            ada.1.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(remedy_e2e::procs::bin("remedyctl"))
        .args(["--remedyconfig", config.to_str().unwrap(), "agents", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("node-1"));
}

/// A finding batch of one warning at `sequence`.
fn one_finding(sequence: u64, summary: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Findings(pb::FindingBatch {
            findings: vec![pb::SequencedFinding {
                sequence,
                finding: Some(pb::Finding {
                    kind: "probe_failed".into(),
                    severity: pb::Severity::Warning as i32,
                    state: pb::FindingState::Active as i32,
                    target: "service/api".into(),
                    summary: summary.into(),
                    first_seen_ms: 1,
                    last_seen_ms: 1,
                    ..Default::default()
                }),
            }],
            oldest_retained_sequence: 0,
        })),
    }
}

/// The next acknowledgement on a stream, past welcomes and infrastructure.
async fn next_ack(inbound: &mut tonic::Streaming<pb::CoordinatorMessage>) -> u64 {
    loop {
        match inbound.message().await.expect("the stream stays open").expect("a message").body {
            Some(pb::coordinator_message::Body::Ack(ack)) => return ack.acked_sequence,
            Some(_) => continue,
            None => panic!("an empty message"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_certificate_cannot_take_an_agent_id_nor_end_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "trusted");
    let coordinator = secure_coordinator(dir.path(), &pki, ROLES).await;
    let ca = pki.ca();
    let node1 = pki.client("agent-node-1", "agent:node-1");
    let node2 = pki.client("agent-node-2", "agent:node-2");
    let ada = pki.client("user-ada", "user:ada");

    // node-1's agent says hello and has two findings acknowledged.
    let (out, rx) = tokio::sync::mpsc::channel::<pb::AgentMessage>(8);
    out.send(hello("node-1")).await.unwrap();
    let mut client = AgentServiceClient::new(channel(&coordinator, &ca, Some(&node1)));
    let mut inbound = client.connect(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    out.send(one_finding(1, "first")).await.unwrap();
    out.send(one_finding(2, "second")).await.unwrap();
    assert_eq!(next_ack(&mut inbound).await, 1);
    assert_eq!(next_ack(&mut inbound).await, 2);

    // node-2's real certificate says hello with node-1's agent id: refused
    // with the reason, before anything is recorded.
    let intruder = pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            agent_id: "node-1-agent".into(),
            node_name: "node-2".into(),
            version: "test".into(),
            ..Default::default()
        })),
    };
    let mut client = AgentServiceClient::new(channel(&coordinator, &ca, Some(&node2)));
    let outbound = tokio_stream::iter(vec![intruder]).chain(tokio_stream::pending());
    let status = match client.connect(outbound).await {
        Ok(response) => response.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("agent id `node-1-agent` belongs to node node-1")
            && status.message().contains("node node-2 may not use it"),
        "{status:?}"
    );

    // node-1's stream is still open and its numbering goes on where it was.
    out.send(one_finding(3, "third")).await.unwrap();
    assert_eq!(next_ack(&mut inbound).await, 3, "node-1's stream was not ended");
    let mut admin = admin(&coordinator, &ca, Some(&ada));
    let agents = admin.list_agents(pb::ListAgentsRequest::default()).await.unwrap().into_inner().agents;
    let [agent] = agents.as_slice() else { panic!("one agent: {agents:?}") };
    assert_eq!((agent.agent_id.as_str(), agent.node_name.as_str()), ("node-1-agent", "node-1"));
    assert!(agent.connected, "{agent:?}");
    assert_eq!(agent.acked_sequence, 3);
    let findings = admin
        .list_findings(pb::ListFindingsRequest { page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .findings;
    assert_eq!(findings.len(), 3);
    assert!(findings.iter().all(|f| f.agent_id == "node-1-agent" && f.node_name == "node-1"), "{findings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_naming_two_identities_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "trusted");
    let coordinator = secure_coordinator(dir.path(), &pki, ROLES).await;
    let ca = pki.ca();
    // Signed by the trusted CA, naming node-1 and the admin ada at once.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    for uri in ["remedy://agent/node-1", "remedy://user/ada"] {
        params.subject_alt_names.push(rcgen::SanType::URI(uri.try_into().unwrap()));
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let authority = pki.ca.certificate();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&authority.cert_pem, rcgen::KeyPair::from_pem(&authority.key_pem).unwrap())
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let both = pki.write("both", &Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() });

    let reason = "the client certificate carries 2 remedy:// URI names (remedy://agent/node-1, remedy://user/ada)";
    let status = stream_as(&coordinator, &ca, Some(&both), "node-1").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().starts_with(reason), "{status:?}");
    let status = admin(&coordinator, &ca, Some(&both)).list_agents(pb::ListAgentsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().starts_with(reason), "{status:?}");
    let ada = pki.client("user-ada", "user:ada");
    let agents = admin(&coordinator, &ca, Some(&ada)).list_agents(pb::ListAgentsRequest::default()).await.unwrap();
    assert!(agents.into_inner().agents.is_empty(), "nothing of the refused hello was recorded");
}

/// A request for `call` that the coordinator can answer without any setup:
/// it may fail (NOT_FOUND, INVALID_ARGUMENT) but only after authorization.
async fn call(client: &mut AdminServiceClient<Channel>, call: AdminCall) -> Result<(), tonic::Status> {
    let by = String::new();
    match call {
        AdminCall::ListAgents => client.list_agents(pb::ListAgentsRequest::default()).await.map(drop),
        AdminCall::GetAgent => client.get_agent(pb::GetAgentRequest { agent_id: "x".into() }).await.map(drop),
        AdminCall::ListFindings => client.list_findings(pb::ListFindingsRequest::default()).await.map(drop),
        AdminCall::GetFinding => {
            client.get_finding(pb::GetFindingRequest { agent_id: "x".into(), sequence: 1 }).await.map(drop)
        }
        AdminCall::ListIncidents => client.list_incidents(pb::ListIncidentsRequest::default()).await.map(drop),
        AdminCall::GetIncident => {
            client.get_incident(pb::GetIncidentRequest { id: "INC-999999".into() }).await.map(drop)
        }
        AdminCall::WatchIncidents => client.watch_incidents(pb::WatchIncidentsRequest::default()).await.map(drop),
        AdminCall::AcknowledgeIncident => client
            .acknowledge_incident(pb::IncidentCommand {
                id: "INC-999999".into(),
                requested_by: by,
                reason: String::new(),
            })
            .await
            .map(drop),
        AdminCall::ResolveIncident => client
            .resolve_incident(pb::IncidentCommand { id: "INC-999999".into(), requested_by: by, reason: "x".into() })
            .await
            .map(drop),
        AdminCall::ListRunbooks => client.list_runbooks(pb::ListRunbooksRequest::default()).await.map(drop),
        AdminCall::GetRunbook => client.get_runbook(pb::GetRunbookRequest { id: "NOPE".into() }).await.map(drop),
        AdminCall::RunRunbook { dry_run } => client
            .run_runbook(pb::RunRunbookRequest { runbook_id: "NOPE".into(), dry_run, ..Default::default() })
            .await
            .map(drop),
        AdminCall::ListApprovals => client.list_approvals(pb::ListApprovalsRequest::default()).await.map(drop),
        AdminCall::AnswerApproval => client
            .answer_approval(pb::AnswerApprovalRequest {
                incident_id: "INC-999999".into(),
                step_id: "s".into(),
                attempt: 1,
                approve: true,
                ..Default::default()
            })
            .await
            .map(drop),
        AdminCall::GetAutomation => client.get_automation(pb::GetAutomationRequest {}).await.map(drop),
        AdminCall::PauseAutomation => client
            .pause_automation(pb::PauseAutomationRequest { requested_by: by, reason: "test".into() })
            .await
            .map(drop),
        AdminCall::ResumeAutomation => {
            client.resume_automation(pb::ResumeAutomationRequest { requested_by: by }).await.map(drop)
        }
        AdminCall::ResetBreaker => {
            client.reset_breaker(pb::ResetBreakerRequest { scope: "global".into(), requested_by: by }).await.map(drop)
        }
        AdminCall::ListBans => client.list_bans(pb::ListBansRequest::default()).await.map(drop),
        AdminCall::Unblock => {
            client.unblock(pb::UnblockRequest { ip: "203.0.113.9".into(), requested_by: by }).await.map(drop)
        }
        AdminCall::ListAudit => client.list_audit(pb::ListAuditRequest::default()).await.map(drop),
        AdminCall::ReviewIncident => {
            client.review_incident(pb::GetIncidentRequest { id: "INC-999999".into() }).await.map(drop)
        }
        AdminCall::GetReport => client.get_report(pb::GetReportRequest::default()).await.map(drop),
    }
}

fn refused(result: &Result<(), tonic::Status>) -> bool {
    matches!(result, Err(s) if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_make_exactly_the_calls_the_table_allows_and_every_call_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "trusted");
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, format!("- user: ci-bot\n  token: {TOKEN}\n")).unwrap();
    let config = format!("{ROLES}  tokens_file: {}\n", tokens.display());
    let coordinator = secure_coordinator(dir.path(), &pki, &config).await;
    let ca = pki.ca();

    let people =
        [("vera", Some(Role::Viewer)), ("otto", Some(Role::Operator)), ("ada", Some(Role::Admin)), ("eve", None)];
    let mut calls = 0;
    for (name, role) in people {
        let cert = pki.client(&format!("user-{name}"), &format!("user:{name}"));
        let mut client = admin(&coordinator, &ca, Some(&cert));
        for c in AdminCall::ALL {
            let result = call(&mut client, c).await;
            let allowed = role.is_some_and(|r| r >= required_role(c));
            assert_eq!(!refused(&result), allowed, "{name} ({role:?}) on {c:?}: {result:?}");
            calls += 1;
        }
    }

    // A bearer token names its user, who acts with that user's role.
    let mut bot = AdminServiceClient::with_interceptor(channel(&coordinator, &ca, None), |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        Ok(r)
    });
    let ack = bot
        .acknowledge_incident(pb::IncidentCommand { id: "INC-999999".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(ack.code(), Code::NotFound, "an operator may acknowledge: {ack:?}");
    let pause = bot.pause_automation(pb::PauseAutomationRequest::default()).await.unwrap_err();
    assert_eq!(pause.code(), Code::PermissionDenied, "{pause:?}");
    assert!(pause.message().contains("user:ci-bot is operator"), "{pause:?}");

    // The audit log has every call with who made it and how it ended.
    let ada = pki.client("user-ada", "user:ada");
    let mut ada_client = admin(&coordinator, &ca, Some(&ada));
    let entries = ada_client
        .list_audit(pb::ListAuditRequest { after_seq: 0, limit: 5_000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let admin_calls: Vec<_> = entries.iter().filter(|e| e.kind == "admin_call").collect();
    assert!(admin_calls.len() > calls + 1, "{} entries for {} calls", admin_calls.len(), calls);
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "positions are contiguous: {seqs:?}");
    let pause_by_ada = admin_calls
        .iter()
        .find(|e| e.actor == "user:ada" && e.operation == "PauseAutomation")
        .expect("ada's pause is audited");
    assert_eq!(pause_by_ada.outcome, "ok");
    let pause_by_vera = admin_calls
        .iter()
        .find(|e| e.actor == "user:vera" && e.operation == "PauseAutomation")
        .expect("vera's refused pause is audited");
    assert!(pause_by_vera.outcome.starts_with("PermissionDenied"), "{pause_by_vera:?}");
    assert!(admin_calls.iter().any(|e| e.actor == "user:ci-bot" && e.operation == "AcknowledgeIncident"));
    // A command carries the certificate's name, whatever the request says.
    let paused = ada_client
        .pause_automation(pb::PauseAutomationRequest { requested_by: "somebody-else".into(), reason: "drill".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.paused_by, "user:ada");

    // The token is nowhere: not in the log, not in the audit.
    let audit_text = format!("{entries:?}");
    assert!(!audit_text.contains(TOKEN), "the token leaked into the audit log");
    assert!(!coordinator.log().contains(TOKEN), "the token leaked into the coordinator's log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_are_audited_with_their_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "hdr-secret-4f1c2e9b";
    let steps = format!(
        "  - id: call_gateway\n    http:\n      method: POST\n      url: http://127.0.0.1:9/reset\n      headers: {{Authorization: 'Bearer {secret}', X-Trace: t1}}\n      timeout: 2s\n    on_failure: continue\n"
    );
    let runbooks = remedy_e2e::runs::runbook(dir.path(), "AUDIT-1", &steps, "");
    let coordinator =
        Coordinator::start_with(&dir.path().join("c"), &["--runbooks-dir", runbooks.to_str().unwrap()]).await;
    let id = remedy_e2e::runs::run_manual(&coordinator, "AUDIT-1", false).await;
    let mut admin = coordinator.admin().await;
    let action = eventually("the action's audit entry", WAIT, || {
        let mut admin = admin.clone();
        async move {
            let entries = admin.list_audit(pb::ListAuditRequest::default()).await.ok()?.into_inner().entries;
            entries.into_iter().find(|e| e.kind == "action" && e.operation == "http")
        }
    })
    .await;
    assert!(action.actor.ends_with("by tester"), "the run's starter is the actor: {action:?}");
    assert!(action.target.starts_with(&id), "{action:?}");
    assert_eq!(action.arguments["headers.Authorization"], "[redacted]");
    assert_eq!(action.arguments["headers.X-Trace"], "t1");
    assert_eq!(action.arguments["url"], "http://127.0.0.1:9/reset");
    assert!(action.outcome.starts_with("failed"), "nobody listens on port 9: {action:?}");

    let incident = admin.get_incident(pb::GetIncidentRequest { id: id.clone() }).await.unwrap().into_inner();
    let everything = format!(
        "{incident:?} {:?} {}",
        admin.list_audit(pb::ListAuditRequest::default()).await.unwrap().into_inner().entries,
        coordinator.log()
    );
    assert!(!everything.contains(secret), "the header's secret leaked");
    let (status, out, err) = remedyctl(&coordinator.url(), &["audit"]);
    assert!(status.success(), "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().any(|l| l["kind"] == "action" && l["arguments"]["headers.Authorization"] == "[redacted]"));
    assert!(!out.contains(secret));
}

/// The certificate a fresh connection to `addr` is shown.
async fn served_certificate(addr: std::net::SocketAddr, ca: &Path) -> Vec<u8> {
    let files = TlsFiles { cert: None, key: None, ca: ca.to_path_buf() };
    let config = tls::client(files).unwrap().current();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(&config)).connect(name, tcp).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_on_disk_serve_new_connections_and_drop_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "trusted");
    let coordinator = secure_coordinator(dir.path(), &pki, ROLES).await;
    let ca = pki.ca();
    let before = served_certificate(coordinator.grpc, &ca).await;

    let node1 = pki.client("agent-node-1", "agent:node-1");
    let agent = secure_agent(&dir.path().join("a"), &coordinator, &node1, &ca).await;
    eventually("the agent connected", WAIT, || {
        let agent = &agent;
        async move { (agent.readyz().await == 200).then_some(()) }
    })
    .await;
    let since = agent.debug_state().await["connection"]["since"].clone();

    // cert-manager's way: new files appear under the same names.
    pki.server();
    let after = eventually("a new connection shown the new certificate", WAIT, || {
        let (addr, ca, before) = (coordinator.grpc, ca.clone(), before.clone());
        async move {
            let now = served_certificate(addr, &ca).await;
            (now != before).then_some(now)
        }
    })
    .await;
    assert_ne!(after, before);
    assert!(coordinator.log().contains("TLS certificates reloaded"));

    // The agent's stream, opened before the rotation, is the same stream.
    let state = agent.debug_state().await;
    assert_eq!(state["connection"]["state"], "connected", "{state}");
    assert_eq!(state["connection"]["since"], since, "the agent reconnected: {state}");
    let ada = pki.client("user-ada", "user:ada");
    let mut client = admin(&coordinator, &ca, Some(&ada));
    let agents = client.list_agents(pb::ListAgentsRequest::default()).await.unwrap().into_inner().agents;
    assert!(agents.iter().any(|a| a.node_name == "node-1" && a.connected), "{agents:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_two_person_rule_whoever_starts_a_run_cannot_approve_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "trusted");
    let steps = "  - id: gated\n    http: {method: POST, url: 'http://127.0.0.1:9/gated', timeout: 1s}\n    requires_approval: true\n    on_failure: continue\n";
    let runbooks = remedy_e2e::runs::runbook(dir.path(), "GATE", steps, "guard_rails: {cooldown: 0s}\n");
    let config = format!("{ROLES}  two_person_approvals: true\n");
    let coordinator =
        secure_coordinator_with(dir.path(), &pki, &config, &["--runbooks-dir", runbooks.to_str().unwrap()]).await;
    let ca = pki.ca();
    let ada = pki.client("user-ada", "user:ada");
    let otto = pki.client("user-otto", "user:otto");
    let mut as_ada = admin(&coordinator, &ca, Some(&ada));
    let id = as_ada
        .run_runbook(pb::RunRunbookRequest { runbook_id: "GATE".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .incident_id;
    let pending = eventually("the approval request", WAIT, || {
        let mut a = as_ada.clone();
        let id = id.clone();
        async move {
            let list = a
                .list_approvals(pb::ListApprovalsRequest { all: false, ..Default::default() })
                .await
                .ok()?
                .into_inner();
            list.approvals.into_iter().find(|p| p.incident_id == id)
        }
    })
    .await;
    let answer = pb::AnswerApprovalRequest {
        incident_id: id.clone(),
        step_id: pending.step_id.clone(),
        attempt: pending.attempt,
        approve: true,
        requested_by: String::new(),
        reason: String::new(),
    };
    let own = as_ada.answer_approval(answer.clone()).await.unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied, "{own:?}");
    assert!(own.message().contains("two-person rule"), "{own:?}");
    let granted = admin(&coordinator, &ca, Some(&otto)).answer_approval(answer).await.unwrap().into_inner();
    assert_eq!((granted.status.as_str(), granted.answered_by.as_str()), ("granted", "user:otto"));
}

/// The bytes of every file under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_anonymous_refusals_costs_the_store_a_bounded_amount_and_the_audit_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "trusted");
    let coordinator = secure_coordinator(dir.path(), &pki, ROLES).await;
    let ca = pki.ca();
    let ada = pki.client("user-ada", "user:ada");
    let data = dir.path().join("c").join("data");
    let before = bytes_under(&data);

    // A hundred calls without a certificate, each with a 3 MiB argument.
    const FLOOD: u64 = 100;
    let big = "x".repeat(3 * 1024 * 1024);
    let mut anonymous = admin(&coordinator, &ca, None);
    for _ in 0..FLOOD {
        let command = pb::IncidentCommand { id: "INC-000001".into(), reason: big.clone(), ..Default::default() };
        let status = anonymous.resolve_incident(command).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // Stored whole, they would be 300 MiB; a refusal keeps its size only,
    // and past the minute's budget it is only counted.
    let grown = bytes_under(&data).saturating_sub(before);
    assert!(grown < 16 * 1024 * 1024, "the store grew by {grown} bytes");

    // The audit still reads, and shows the refusals as bounded summaries.
    let entries = admin(&coordinator, &ca, Some(&ada))
        .list_audit(pb::ListAuditRequest { after_seq: 0, limit: 5_000, ..Default::default() })
        .await
        .expect("the audit log answers")
        .into_inner()
        .entries;
    let refused: Vec<&pb::AuditEntry> = entries.iter().filter(|e| e.actor.starts_with("unauthenticated")).collect();
    assert_eq!(refused.len(), 30, "one by one up to the minute's budget");
    for e in &refused {
        assert!(!e.arguments.contains_key("request"), "a refused request is not stored: {e:?}");
        let size: u64 = e.arguments.get("request_bytes").and_then(|b| b.parse().ok()).unwrap_or(0);
        assert!(size > 3 * 1024 * 1024, "its size is: {e:?}");
    }
    let counted = coordinator.metric("remedy_admin_refusals_unrecorded_total").await;
    assert_eq!(counted, (FLOOD - 30) as f64, "the rest are counted");
}
