//! The working core, end to end with real processes on loopback: findings
//! flow from agents to the coordinator and out through remedyctl, nothing
//! is lost or counted twice across crashes, bad input is refused precisely,
//! and bad configuration exits 64 naming the field.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use remedy_e2e::findings::{
    assert_each_incident_counts_its_findings_once, post_batches, probe, spools_drained, submit_spread,
};
use remedy_e2e::procs::{Agent, Coordinator, all_findings, eventually, remedyctl};
use remedy_proto::v1 as pb;
use remedy_proto::v1::agent_message::Body;
use remedy_proto::v1::agent_service_client::AgentServiceClient;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_flow_from_an_agent_to_remedyctl() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&dir.path().join("c")).await;
    let agent = Agent::start(&dir.path().join("a"), "node-1", &coordinator.url()).await;
    let findings = json!([
        { "kind": "probe_failed", "severity": "critical", "target": "service/api", "summary": "api /health failed",
          "labels": { "namespace": "prod" }, "evidence": { "status": "503" } },
        { "kind": "disk_usage_high", "severity": "warning", "target": "mount/node-1:/var", "summary": "/var at 91%" },
    ]);
    let (code, body) = agent.submit(&findings).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["stored"], 2);

    let url = coordinator.url();
    let listed: Vec<serde_json::Value> = eventually("two findings in remedyctl", WAIT, || {
        let url = url.clone();
        async move {
            let (status, out, _) = remedyctl(&url, &["findings", "-o", "json"]);
            let list: Vec<serde_json::Value> = serde_json::from_str(&out).ok()?;
            (status.success() && list.len() == 2).then_some(list)
        }
    })
    .await;
    let api = listed.iter().find(|f| f["target"] == "service/api").expect("the api finding");
    assert_eq!(api["kind"], "probe_failed");
    assert_eq!(api["severity"], "critical");
    assert_eq!(api["node_name"], "node-1");
    assert_eq!(api["labels"]["namespace"], "prod");
    assert_eq!(api["evidence"]["status"], "503");
    assert!(api["agent_id"].as_str().unwrap().starts_with("node-1-"));
    let incident_id = api["incident_id"].as_str().unwrap().to_owned();
    assert!(incident_id.starts_with("INC-"), "{incident_id}");

    let (status, out, err) = remedyctl(&url, &["incidents", "-o", "json"]);
    assert!(status.success(), "{err}");
    let incidents: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(incidents.len(), 2);

    let (status, out, err) = remedyctl(&url, &["incident", "show", &incident_id, "-o", "json"]);
    assert!(status.success(), "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["state"], "triggered");
    assert_eq!(shown["timeline"][0]["kind"], "opened");
    assert_eq!(shown["timeline"][0]["details"]["evidence.status"], "503");

    let (status, out, _) = remedyctl(&url, &["agents"]);
    assert!(status.success());
    assert!(out.lines().next().unwrap().starts_with("AGENT"), "{out}");
    assert!(out.contains("node-1"), "{out}");

    let (status, _, err) = remedyctl(&url, &["incident", "show", "INC-999999"]);
    assert!(!status.success());
    assert!(err.contains("no incident INC-999999"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_incidents_as_they_open() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&dir.path().join("c")).await;
    let agent = Agent::start(&dir.path().join("a"), "node-w", &coordinator.url()).await;
    let mut admin = coordinator.admin().await;
    let mut watch =
        admin.watch_incidents(pb::WatchIncidentsRequest { include_resolved: false }).await.unwrap().into_inner();
    agent.submit(&json!([probe("service/watched", "down")])).await;
    let event = tokio::time::timeout(WAIT, watch.next()).await.expect("an incident event").unwrap().unwrap();
    let incident = event.incident.unwrap();
    assert_eq!(incident.target, "service/watched");
    assert!(!event.initial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_stream_loses_nothing_and_counts_nothing_twice() {
    const AGENTS: usize = 3;
    const PER_AGENT: usize = 3_400;
    const TARGETS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = Coordinator::start(&dir.path().join("c")).await;
    let mut agents = Vec::new();
    for n in 0..AGENTS {
        agents.push(Agent::start(&dir.path().join(format!("a{n}")), &format!("node-{n}"), &coordinator.url()).await);
    }
    let submitted = submit_spread(&agents, PER_AGENT, TARGETS);

    // First third while the coordinator runs, the rest while it is dead and
    // then again alive: findings are in flight when it dies.
    let third = PER_AGENT / 3;
    for a in &agents {
        post_batches(a, &submitted[&a.node][..third]).await;
    }
    coordinator.kill();
    for a in &agents {
        post_batches(a, &submitted[&a.node][third..2 * third]).await;
    }
    coordinator.restart().await;
    for a in &agents {
        post_batches(a, &submitted[&a.node][2 * third..]).await;
    }

    let total = AGENTS * PER_AGENT;
    let mut admin = coordinator.admin().await;
    eventually("every finding persisted and every spool drained", WAIT, || {
        let mut admin = admin.clone();
        let agents = &agents;
        async move {
            let stored = all_findings(&mut admin).await;
            (stored.len() == total && spools_drained(agents).await).then_some(())
        }
    })
    .await;

    let stored = all_findings(&mut admin).await;
    assert_eq!(stored.len(), total);
    for a in &agents {
        let mine: Vec<_> = stored.values().filter(|f| f.node_name == a.node).collect();
        let sequences: Vec<u64> = mine.iter().map(|f| f.sequence).collect();
        assert_eq!(
            sequences,
            (1..=PER_AGENT as u64).collect::<Vec<_>>(),
            "sequences of {} are 1..=N, once each",
            a.node
        );
        let summaries: BTreeSet<&str> = mine.iter().map(|f| f.finding.as_ref().unwrap().summary.as_str()).collect();
        let expected: BTreeSet<&str> = submitted[&a.node].iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(summaries, expected, "every submitted finding of {} arrived", a.node);
    }
    assert_each_incident_counts_its_findings_once(&mut admin, &submitted, AGENTS * TARGETS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_with_unacknowledged_findings_delivers_them_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Start the coordinator later: until then nothing can be acknowledged.
    let coordinator_dir = dir.path().join("c");
    let grpc = remedy_e2e::procs::free_addr();
    let mut agent = Agent::start(&dir.path().join("a"), "node-r", &format!("http://{grpc}")).await;
    assert_eq!(agent.readyz().await, 503, "not ready without a coordinator");
    let items: Vec<(String, String)> = (0..500).map(|i| (format!("service/r{}", i % 7), format!("r {i}"))).collect();
    post_batches(&agent, &items).await;
    let state = agent.debug_state().await;
    assert_eq!(state["spool"]["depth"], 500);
    let agent_id = state["agent_id"].as_str().unwrap().to_owned();
    agent.kill();

    let coordinator = Coordinator::start_on(&coordinator_dir, grpc, &[]).await;
    agent.restart().await;
    assert_eq!(agent.debug_state().await["agent_id"], agent_id.as_str(), "a restart keeps the identity");
    let mut admin = coordinator.admin().await;
    let stored = eventually("the spooled findings delivered", WAIT, || {
        let mut admin = admin.clone();
        async move {
            let stored = all_findings(&mut admin).await;
            (stored.len() == 500).then_some(stored)
        }
    })
    .await;
    let sequences: Vec<u64> = stored
        .keys()
        .map(|(a, s)| {
            assert_eq!(a, &agent_id);
            *s
        })
        .collect();
    assert_eq!(sequences, (1..=500).collect::<Vec<_>>());
    eventually("the spool drained and the agent ready", WAIT, || async {
        (agent.debug_state().await["spool"]["depth"] == 0 && agent.readyz().await == 200).then_some(())
    })
    .await;
    assert_eq!(all_findings(&mut admin).await.len(), 500, "nothing more arrived after the drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_too_large_for_one_batch_together_all_arrive_after_the_coordinator_returns() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = remedy_e2e::procs::free_addr();
    let agent = Agent::start(&dir.path().join("a"), "node-big", &format!("http://{grpc}")).await;
    // Twenty findings as large as a finding may be (64 evidence values of
    // 4 KiB): together far above the 4 MiB a message may take.
    const COUNT: usize = 20;
    let evidence: serde_json::Map<String, serde_json::Value> = (0..remedy_shared::limits::MAX_ENTRIES)
        .map(|i| (format!("padding{i:02}"), "p".repeat(remedy_shared::limits::MAX_VALUE_BYTES).into()))
        .collect();
    for i in 0..COUNT {
        let (code, body) = agent
            .submit(&json!([{ "kind": "probe_failed", "severity": "warning", "target": format!("service/big{i}"),
                "summary": format!("big {i}"), "evidence": evidence }]))
            .await;
        assert_eq!(code, 202, "{body}");
    }
    let finding_bytes = remedy_shared::limits::MAX_ENTRIES * remedy_shared::limits::MAX_VALUE_BYTES;
    assert!(COUNT * finding_bytes > remedy_proto::MAX_MESSAGE_BYTES);
    assert_eq!(agent.debug_state().await["spool"]["depth"], COUNT);

    let coordinator = Coordinator::start_on(&dir.path().join("c"), grpc, &[]).await;
    let mut admin = coordinator.admin().await;
    let summaries: BTreeSet<String> = eventually("every large finding delivered", WAIT, || {
        let mut admin = admin.clone();
        async move {
            let stored = findings_in_small_pages(&mut admin).await;
            (stored.len() == COUNT).then_some(stored)
        }
    })
    .await;
    let expected: BTreeSet<String> = (0..COUNT).map(|i| format!("big {i}")).collect();
    assert_eq!(summaries, expected);
    eventually("the spool drained and the agent ready", WAIT, || async {
        (agent.debug_state().await["spool"]["depth"] == 0 && agent.readyz().await == 200).then_some(())
    })
    .await;
    let stored = findings_in_small_pages(&mut admin).await;
    assert_eq!(stored.len(), COUNT, "each arrived once");
}

/// The summaries of every stored finding with its evidence intact, two
/// findings per page: a page of large findings must stay under the
/// admin client's message limit itself.
async fn findings_in_small_pages(
    admin: &mut remedy_proto::v1::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_findings(pb::ListFindingsRequest { page_size: 2, page_token, ..Default::default() })
            .await
            .expect("list findings")
            .into_inner();
        for f in page.findings {
            let finding = f.finding.expect("a stored finding has its finding");
            assert_eq!(finding.evidence.len(), remedy_shared::limits::MAX_ENTRIES, "evidence arrives whole");
            assert!(finding.evidence.values().all(|v| v.len() == remedy_shared::limits::MAX_VALUE_BYTES));
            out.insert(finding.summary);
        }
        page_token = page.next_page_token;
        if page_token.is_empty() {
            return out;
        }
    }
}

fn hello(agent: &str, node: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(Body::Hello(pb::Hello {
            agent_id: agent.into(),
            node_name: node.into(),
            version: "test".into(),
            ..Default::default()
        })),
    }
}

fn batch(sequence: u64, kind: &str, summary: String) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(Body::Findings(pb::FindingBatch {
            findings: vec![pb::SequencedFinding {
                sequence,
                finding: Some(pb::Finding {
                    kind: kind.into(),
                    severity: pb::Severity::Warning as i32,
                    state: pb::FindingState::Active as i32,
                    target: "service/raw".into(),
                    summary,
                    first_seen_ms: 1,
                    last_seen_ms: 1,
                    ..Default::default()
                }),
            }],
            oldest_retained_sequence: 0,
        })),
    }
}

/// Opens a raw stream, sends `messages`, and returns the status it ends with.
async fn stream_status(url: &str, messages: Vec<pb::AgentMessage>) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned()).unwrap().connect().await.unwrap();
    let mut client = AgentServiceClient::new(channel);
    let outbound = tokio_stream::iter(messages).chain(tokio_stream::pending());
    let mut inbound = match client.connect(outbound).await {
        Ok(r) => r.into_inner(),
        Err(status) => return status,
    };
    loop {
        match tokio::time::timeout(WAIT, inbound.message()).await.expect("the stream ends with a status") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => return status,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_precise_statuses_and_everyone_else_is_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&dir.path().join("c")).await;
    let agent = Agent::start(&dir.path().join("a"), "node-ok", &coordinator.url()).await;
    let url = coordinator.url();

    let status = stream_status(&url, vec![hello("raw", "")]).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "hello.node_name must not be empty");

    let status = stream_status(&url, vec![batch(1, "probe_failed", "x".into())]).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    let status = stream_status(&url, vec![hello("raw", "n"), batch(1, "probe_faild", "typo".into())]).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("unknown finding kind `probe_faild`"), "{status:?}");

    // A node may not claim the coordinator's own judgements, even over its
    // stream with a valid hello.
    let status = stream_status(&url, vec![hello("raw", "n"), batch(1, "agent_stale", "forged".into())]).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("kind `agent_stale` is raised by the coordinator only"), "{status:?}");

    let status = stream_status(&url, vec![hello("raw", "n"), batch(0, "probe_failed", "zero".into())]).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("sequence 0"), "{status:?}");

    let huge = "x".repeat(remedy_proto::MAX_MESSAGE_BYTES + 1024);
    let status = stream_status(&url, vec![hello("raw", "n"), batch(1, "probe_failed", huge)]).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // None of the refused messages left anything behind; the real agent's
    // finding still flows.
    let (code, _) = agent.submit(&json!([probe("service/after", "still served")])).await;
    assert_eq!(code, 202);
    let admin = coordinator.admin().await;
    let stored = eventually("the healthy agent's finding", WAIT, || {
        let mut admin = admin.clone();
        async move {
            let stored = all_findings(&mut admin).await;
            (!stored.is_empty()).then_some(stored)
        }
    })
    .await;
    assert_eq!(stored.len(), 1, "only the valid finding was stored: {stored:?}");
    assert_eq!(stored.values().next().unwrap().node_name, "node-ok");
    assert!(coordinator.metric("remedy_findings_rejected_total").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_endpoint_refuses_bad_findings_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&dir.path().join("c")).await;
    let agent = Agent::start(&dir.path().join("a"), "node-b", &coordinator.url()).await;
    let (code, body) =
        agent.submit(&json!([{ "kind": "cpu_melted", "severity": "warning", "target": "node/x" }])).await;
    assert_eq!(code, 400);
    assert_eq!(body["error"], "finding 0: unknown finding kind `cpu_melted`");
    let (code, body) = agent.submit(&json!([{ "kind": "probe_failed", "severity": "warning", "target": "" }])).await;
    assert_eq!(code, 400);
    assert_eq!(body["error"], "finding 0: finding target must not be empty");
    let (code, _) = agent.submit(&json!({ "not": "a list" })).await;
    assert_eq!(code, 400);
    // A finding no batch could carry is refused whole, with the reason,
    // together with the small one beside it: nothing is half-taken.
    let huge = "x".repeat(remedy_proto::MAX_FINDING_BYTES + 1);
    let (code, body) = agent
        .submit(&json!([probe("service/small", "fine"), { "kind": "probe_failed", "severity": "warning",
            "target": "service/huge", "summary": huge }]))
        .await;
    assert_eq!(code, 413, "{body}");
    let error = body["error"].as_str().unwrap();
    assert_eq!(error, format!("finding 1: summary is {} bytes, over the limit of 4096", huge.len()));
    // The same for a value over its limit, named by its key.
    let (code, body) = agent
        .submit(&json!([{ "kind": "probe_failed", "severity": "warning", "target": "service/huge",
            "evidence": { "body": "x".repeat(4097) } }]))
        .await;
    assert_eq!(code, 413, "{body}");
    assert_eq!(body["error"], "finding 0: evidence.body is 4097 bytes, over the limit of 4096");
    // Only what a node sees: the coordinator's own kinds are refused.
    for kind in ["agent_stale", "mttr_at_risk", "database_split_brain"] {
        let (code, body) = agent.submit(&json!([{ "kind": kind, "severity": "critical", "target": "node/x" }])).await;
        assert_eq!(code, 400, "{kind}: {body}");
        assert_eq!(
            body["error"],
            format!("finding 0: kind `{kind}` is raised by the coordinator only; a node may not report it")
        );
    }
    // A TTL above a day is refused, naming the limit.
    let (code, body) = agent
        .submit(&json!([{ "kind": "probe_failed", "severity": "warning", "target": "service/x",
            "ttl_seconds": 86_401 }]))
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"], "finding 0: ttl_seconds 86401 is above the limit of 86400 (24 hours)");
    assert_eq!(agent.debug_state().await["spool"]["last_sequence"], 0, "nothing was spooled");
    // A day itself is allowed.
    let (code, body) = agent
        .submit(&json!([{ "kind": "probe_failed", "severity": "warning", "target": "service/x",
            "ttl_seconds": 86_400 }]))
        .await;
    assert_eq!(code, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_becomes_an_incident_and_its_return_resolves_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.yaml");
    std::fs::write(&config, "heartbeat_interval: 200ms\nstale_after: 1s\n").unwrap();
    let coordinator = Coordinator::start_with(&dir.path().join("c"), &["--config", config.to_str().unwrap()]).await;
    let mut agent = Agent::start(&dir.path().join("a"), "node-s", &coordinator.url()).await;
    let agent_id = eventually("the agent connected", WAIT, || async {
        let s = agent.debug_state().await;
        (s["connection"]["state"] == "connected").then(|| s["agent_id"].as_str().unwrap().to_owned())
    })
    .await;
    agent.kill();
    let mut admin = coordinator.admin().await;
    let target = format!("agent/{agent_id}");
    let opened = eventually("an agent_stale incident", WAIT, || {
        let mut admin = admin.clone();
        let target = target.clone();
        async move {
            let list = admin
                .list_incidents(pb::ListIncidentsRequest { include_resolved: false, ..Default::default() })
                .await
                .ok()?
                .into_inner();
            list.incidents.into_iter().find(|i| i.kind == "agent_stale" && i.target == target)
        }
    })
    .await;
    agent.restart().await;
    eventually("the stale incident resolved", WAIT, || {
        let mut admin = admin.clone();
        let id = opened.id.clone();
        async move {
            let i = admin.get_incident(pb::GetIncidentRequest { id }).await.ok()?.into_inner();
            (i.state == pb::IncidentState::Resolved as i32).then_some(())
        }
    })
    .await;
    let detail = admin.get_incident(pb::GetIncidentRequest { id: opened.id }).await.unwrap().into_inner();
    let kinds: Vec<&str> = detail.timeline.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, vec!["opened", "cleared", "resolved"]);
}

fn run(binary: &str, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(remedy_e2e::procs::bin(binary)).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_configuration_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let unknown = write("unknown.yaml", "grpc_listen: 127.0.0.1:7070\nheartbeat_intervall: 5s\n");
    let (code, err) = run("remedy-coordinator", &["--config", &unknown]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("field `heartbeat_intervall`") && err.contains("unknown.yaml"), "{err}");

    let duration = write("duration.yaml", "detectors:\n  disk_usage_high:\n    for: a while\n");
    let (code, err) = run("remedy-agent", &["--config", &duration, "--node-name", "n"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("field `detectors.disk_usage_high.for`") && err.contains("invalid duration"), "{err}");

    let missing = dir.path().join("missing.yaml").display().to_string();
    let (code, err) = run("remedy-agent", &["--config", &missing, "--node-name", "n"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("missing.yaml") && err.contains("cannot read the file"), "{err}");

    let (code, err) = run("remedy-coordinator", &["--grpc-listen", "everywhere"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("field `grpc_listen`"), "{err}");

    let nowhere = dir.path().join("no-kubeconfig").display().to_string();
    let (code, err) = run("remedy-coordinator", &["--insecure", "--kubeconfig", &nowhere]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("field `kubernetes.kubeconfig`") && err.contains("no-kubeconfig"), "{err}");

    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir(&runbooks).unwrap();
    let seed = std::fs::read_to_string(seed_runbook()).unwrap();
    std::fs::write(runbooks.join("broken.yaml"), seed.replacen("mttr_target:", "mttr_targt:", 1)).unwrap();
    let (code, err) = run("remedy-coordinator", &["--insecure", "--runbooks-dir", runbooks.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("broken.yaml:") && err.contains("mttr_targt"), "file, line and field named: {err}");

    // Plaintext is never the default: without certificates or --insecure,
    // both refuse to start and say what to give.
    let (code, err) = run("remedy-coordinator", &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("field `tls.cert`") && err.contains("--insecure"), "{err}");
    let (code, err) = run("remedy-agent", &["--node-name", "n", "--coordinator", "http://127.0.0.1:9"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("field `coordinator`") && err.contains("--insecure"), "{err}");
    let (code, err) = run("remedy-agent", &["--node-name", "n"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("field `tls.cert`"), "{err}");
    let garbage = write("garbage.pem", "not a certificate");
    let (code, err) =
        run("remedy-coordinator", &["--tls-cert", &garbage, "--tls-key", &garbage, "--tls-client-ca", &garbage]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("field `tls`") && err.contains("garbage.pem"), "{err}");
}

fn seed_runbook() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runbooks/p0-003-authentication-failure.yaml")
}

#[test]
fn remedyctl_validates_runbooks_offline_and_names_what_waits_for_an_actuator() {
    let catalog = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runbooks");
    let unused = "http://127.0.0.1:9";
    let (status, out, err) = remedyctl(unused, &["runbooks", "validate", catalog.to_str().unwrap(), "-o", "json"]);
    assert!(status.success(), "{err}");
    let verdicts: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    // Every file of the catalog, whatever its kind, checked as the
    // coordinator loads it.
    assert_eq!(verdicts.len(), std::fs::read_dir(&catalog).unwrap().count());
    assert!(verdicts.iter().all(|v| v["valid"] == true), "{verdicts:#?}");
    let kinds: std::collections::BTreeSet<&str> = verdicts.iter().filter_map(|v| v["kind"].as_str()).collect();
    assert_eq!(kinds.len(), 4, "runbooks, policies, schedules and templates: {kinds:?}");
    assert_eq!(verdicts.iter().filter(|v| v["kind"] == "Runbook").count(), 7);
    let p0 = verdicts.iter().find(|v| v["runbook"] == "P0-001").unwrap();
    let waiting = p0["dry_run_until_actuator"].as_array().unwrap();
    assert!(!waiting.iter().any(|s| s == "scale_api (scale)"), "scaling has its actuator: {p0}");
    assert!(!waiting.iter().any(|s| s == "failover_database (pg_failover)"), "failover has its actuator: {p0}");
    let p1 = verdicts.iter().find(|v| v["runbook"] == "P1-001").unwrap();
    let waiting = p1["dry_run_until_actuator"].as_array().unwrap();
    assert!(waiting.iter().any(|s| s == "shed_non_critical (circuit_breaker)"), "{p1}");

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let seed = std::fs::read_to_string(seed_runbook()).unwrap();
    std::fs::write(&broken, seed.replacen("mttr_target:", "mttr_targt:", 1)).unwrap();
    let (status, _, err) = remedyctl(unused, &["runbooks", "validate", broken.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("broken.yaml:") && err.contains("mttr_targt"), "{err}");
    assert!(err.contains("1 of 1 catalog files are invalid"), "{err}");

    // A catalog whose runbook names a policy it does not have is refused,
    // as the coordinator would refuse it at start.
    let alone = dir.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    std::fs::copy(seed_runbook(), alone.join("p0-003.yaml")).unwrap();
    let (status, _, err) = remedyctl(unused, &["runbooks", "validate", alone.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("field `escalation.policy`") && err.contains("no escalation policy `p0-chain`"), "{err}");
}

/// `remedyctl ... | head -1`: a reader that goes away ends remedyctl
/// quietly and successfully, never with a panic about a broken pipe. The
/// pipe's read end is closed before remedyctl starts, so its first write
/// meets the broken pipe whatever the timing.
#[test]
fn remedyctl_ends_quietly_when_its_reader_goes_away() {
    let catalog = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runbooks");
    for format in ["table", "json", "yaml", "wide"] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let output = std::process::Command::new(remedy_e2e::procs::bin("remedyctl"))
            .args(["runbooks", "validate", catalog.to_str().expect("utf-8 path"), "-o", format])
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run remedyctl");
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "-o {format}: {:?} {err}", output.status);
        assert!(err.is_empty(), "-o {format}: nothing on stderr: {err}");
    }
}

#[test]
fn remedyctl_explains_an_unreachable_coordinator_without_a_trace() {
    let addr = remedy_e2e::procs::free_addr();
    let (status, _, err) = remedyctl(&format!("http://{addr}"), &["agents"]);
    assert_eq!(status.code(), Some(1));
    assert!(err.starts_with(&format!("remedyctl: cannot reach the coordinator at http://{addr}")), "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_past_their_retention_are_forgotten_but_an_open_incident_keeps_its_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.yaml");
    std::fs::write(&config, "retention: { findings: 1s, resolved_incidents: 1s, audit: 0s, check_every: 1s }\n")
        .unwrap();
    let coordinator = Coordinator::start_with(&dir.path().join("c"), &["--config", config.to_str().unwrap()]).await;
    let agent = Agent::start(&dir.path().join("a"), "node-r", &coordinator.url()).await;
    let (code, body) =
        agent.submit(&json!([probe("service/kept", "stays open"), probe("service/gone", "will be resolved")])).await;
    assert_eq!(code, 202, "{body}");
    let mut admin = coordinator.admin().await;
    let stored = eventually("both findings stored", WAIT, || {
        let mut admin = admin.clone();
        async move {
            let stored = all_findings(&mut admin).await;
            (stored.len() == 2).then_some(stored)
        }
    })
    .await;
    let incident_of = |target: &str| {
        stored.values().find(|f| f.finding.as_ref().unwrap().target == target).unwrap().incident_id.clone()
    };
    let (kept, gone) = (incident_of("service/kept"), incident_of("service/gone"));
    admin
        .resolve_incident(pb::IncidentCommand {
            id: gone.clone(),
            requested_by: "tester".into(),
            reason: "done".into(),
        })
        .await
        .expect("resolve");

    // Past a second, the resolved incident and its finding are forgotten;
    // the open one keeps its finding however old.
    eventually("the resolved incident forgotten", WAIT, || {
        let mut admin = admin.clone();
        let gone = gone.clone();
        async move {
            let status = admin.get_incident(pb::GetIncidentRequest { id: gone }).await.err()?;
            (status.code() == Code::NotFound).then_some(())
        }
    })
    .await;
    let left = eventually("only the open incident's finding left", WAIT, || {
        let mut admin = admin.clone();
        async move {
            let stored = all_findings(&mut admin).await;
            (stored.len() == 1).then_some(stored)
        }
    })
    .await;
    assert_eq!(left.values().next().unwrap().incident_id, kept);
    admin.get_incident(pb::GetIncidentRequest { id: kept }).await.expect("the open incident stays");
    // The audit log is kept for ever here: the resolution is still in it.
    let audit = admin.list_audit(pb::ListAuditRequest::default()).await.expect("audit").into_inner();
    assert!(audit.entries.iter().any(|e| e.operation == "ResolveIncident"), "{:?}", audit.entries);
}
