//! Listings page, and each page fits the message limit whatever its items
//! hold: a coordinator with TLS on holds 10,000 incidents with large labels
//! and annotations (and, apart, thousands of large findings), and
//! `remedyctl` lists every one of them page by page.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use remedy_e2e::procs::{Agent, Coordinator, all_findings, eventually, http_request_with, remedyctl};
use remedy_proto::pki::LocalPki;
use remedy_proto::tls::{self, TlsFiles};
use remedy_proto::v1 as pb;
use remedy_proto::v1::admin_service_client::AdminServiceClient;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

const WAIT: Duration = Duration::from_secs(120);
const INCIDENTS: usize = 10_000;
/// Alerts per notification: about 2.3 MB of JSON, below the webhook's 4 MiB.
const PER_NOTIFICATION: usize = 250;
const FINDINGS: usize = 2_000;
const SUBMIT_TOKEN: &str = "listings-submit-token";

/// Who lists: an admin, so the audit log (which counts the pages asked)
/// can be read too.
const CONFIG: &str = "authorization:\n  roles:\n    admin: ['user:tester']\n";

async fn secure_coordinator(dir: &Path, pki: &LocalPki) -> Coordinator {
    Coordinator::start_tls(dir, &pki.coordinator, &pki.ca, CONFIG, &[]).await
}

/// The test's user, over TLS, as remedyctl is.
fn admin(c: &Coordinator, pki: &LocalPki) -> AdminServiceClient<Channel> {
    let files = TlsFiles { cert: Some(pki.user.0.clone()), key: Some(pki.user.1.clone()), ca: pki.ca.clone() };
    let endpoint = Endpoint::from_shared(c.https_url()).unwrap().connect_timeout(Duration::from_secs(5));
    AdminServiceClient::new(tls::channel(endpoint, tls::client(files).unwrap(), None).unwrap())
        .max_decoding_message_size(remedy_proto::MAX_MESSAGE_BYTES)
}

/// `remedyctl ARGS` as the test's user; its standard output, after
/// checking it succeeded.
fn ctl(c: &Coordinator, pki: &LocalPki, args: &[&str]) -> String {
    let path = |p: &PathBuf| p.display().to_string();
    let (ca, cert, key) = (path(&pki.ca), path(&pki.user.0), path(&pki.user.1));
    let mut all = vec!["--ca", &ca, "--cert", &cert, "--key", &key];
    all.extend_from_slice(args);
    let (status, stdout, stderr) = remedyctl(&c.https_url(), &all);
    assert!(status.success(), "remedyctl {args:?} failed: {stderr}");
    stdout
}

/// A text of `len` bytes that starts with `head`, so a cut one shows.
fn filler(head: &str, len: usize) -> String {
    let mut s = head.to_owned();
    while s.len() < len {
        s.push_str(" lorem ipsum dolor sit amet");
    }
    s.truncate(len);
    s
}

/// Alert `n`: its own fingerprint (so its own incident), two 2 KiB labels,
/// a 3 KiB summary and a 2 KiB description: about 9 KiB, as large as
/// intake limits of a few KiB per value allow.
fn alert(n: usize, starts_at: &str) -> serde_json::Value {
    json!({
        "status": "firing",
        "labels": {
            "alertname": "ListingLoad",
            "instance": format!("host-{n:05}"),
            "owner_detail": filler(&format!("owner of {n}"), 2048),
            "route_detail": filler(&format!("route of {n}"), 2048),
        },
        "annotations": {
            "summary": filler(&format!("incident {n:05}:"), 3072),
            "description": filler(&format!("what happened to {n}"), 2048),
        },
        "startsAt": starts_at,
        "fingerprint": format!("fp{n:05}"),
    })
}

/// The incidents of a JSON listing: (id number, target, summary).
fn parse_incidents(json: &str) -> Vec<(u64, String, String)> {
    let list: Vec<serde_json::Value> = serde_json::from_str(json).expect("one JSON document");
    list.iter()
        .map(|i| {
            let id = i["id"].as_str().unwrap().trim_start_matches("INC-").parse().unwrap();
            (id, i["target"].as_str().unwrap().to_owned(), i["summary"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// How many ListIncidents calls the audit log holds.
fn list_calls(c: &Coordinator, pki: &LocalPki) -> usize {
    ctl(c, pki, &["audit"]).lines().filter(|l| l.contains("\"operation\":\"ListIncidents\"")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_large_incidents_are_listed_page_by_page() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pki = remedy_proto::pki::init_local(&dir.path().join("pki"), "node-a", "tester").unwrap();
    let coordinator = secure_coordinator(dir.path(), &pki).await;

    // The fastest real way in: Alertmanager's webhook, many alerts per
    // notification, each alert its own condition and so its own incident.
    // The webhook answers once they are persisted.
    let now = remedy_shared::Timestamp::from_millis(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64,
    )
    .to_string();
    let alerts: Vec<serde_json::Value> = (0..INCIDENTS).map(|n| alert(n, &now)).collect();
    for chunk in alerts.chunks(PER_NOTIFICATION) {
        let body = json!({ "version": "4", "status": "firing", "groupKey": "load", "alerts": chunk }).to_string();
        assert!(body.len() < 4 * 1024 * 1024);
        let (code, answer) = coordinator.notify(&body).await;
        assert_eq!(code, 200, "{answer}");
    }
    let loaded = started.elapsed();

    // One answer of the largest page size: cut by bytes well before the
    // message limit, with a token to go on.
    let mut client = admin(&coordinator, &pki);
    let request = pb::ListIncidentsRequest { include_resolved: true, page_size: 5_000, ..Default::default() };
    let page = client.list_incidents(request).await.expect("a page that fits the message limit").into_inner();
    assert!(page.encoded_len() <= remedy_proto::MAX_PAGE_BYTES, "{} bytes", page.encoded_len());
    assert!(!page.incidents.is_empty() && page.incidents.len() < 5_000, "{} incidents", page.incidents.len());
    assert!(!page.next_page_token.is_empty(), "a page cut by bytes says where to go on");
    let forged = pb::ListIncidentsRequest { page_token: "incidents/not-a-number".into(), ..Default::default() };
    let status = client.list_incidents(forged).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("page_token"), "{status:?}");
    let foreign = pb::ListAuditRequest { page_token: page.next_page_token.clone(), ..Default::default() };
    assert_eq!(client.list_audit(foreign).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // remedyctl follows every page: all 10,000, each once, newest first,
    // with its summary whole, as one JSON document.
    let calls_before = list_calls(&coordinator, &pki);
    let listed = parse_incidents(&ctl(&coordinator, &pki, &["incidents", "-A", "-o", "json", "--chunk-size", "5000"]));
    let calls = list_calls(&coordinator, &pki) - calls_before;
    assert_eq!(listed.len(), INCIDENTS);
    assert!(listed.windows(2).all(|w| w[0].0 > w[1].0), "newest first, each once");
    let targets: BTreeSet<&str> = listed.iter().map(|(_, t, _)| t.as_str()).collect();
    let expected: BTreeSet<String> = (0..INCIDENTS).map(|n| format!("alert/fp{n:05}")).collect();
    assert_eq!(targets, expected.iter().map(String::as_str).collect::<BTreeSet<_>>());
    for (_, target, summary) in &listed {
        let n = target.trim_start_matches("alert/fp");
        assert!(summary.starts_with(&format!("incident {n}:")) && summary.len() == 3072, "{target}: cut");
    }
    // About 30 MB of summaries: many answers of at most 2 MiB each.
    let least = INCIDENTS * 3072 / remedy_proto::MAX_PAGE_BYTES;
    assert!(calls > least, "{calls} ListIncidents calls for 10,000 incidents of 3 KiB");

    // The default table shows them all too: one header and a row each.
    let table = ctl(&coordinator, &pki, &["incidents", "-A"]);
    assert_eq!(table.lines().count(), INCIDENTS + 1);

    // --limit shows the newest N, over several smaller pages.
    let limited = parse_incidents(&ctl(
        &coordinator,
        &pki,
        &["incidents", "-A", "-o", "json", "--limit", "1234", "--chunk-size", "100"],
    ));
    assert_eq!(limited.len(), 1234);
    assert_eq!(limited[..], listed[..1234]);
    eprintln!("10,000 incidents: loaded in {loaded:?}, whole test {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_large_findings_are_listed_completely() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pki = remedy_proto::pki::init_local(&dir.path().join("pki"), "node-a", "tester").unwrap();
    let coordinator = secure_coordinator(dir.path(), &pki).await;
    // With TLS on, findings are submitted by hand only with a token of the
    // agent's diagnostics tokens file.
    let tokens = dir.path().join("agent-tokens.yaml");
    std::fs::write(&tokens, format!("- {{user: loader, token: {SUBMIT_TOKEN}}}\n")).unwrap();
    let agent_config = dir.path().join("agent.yaml");
    std::fs::write(&agent_config, format!("diagnostics:\n  tokens_file: {}\n", tokens.display())).unwrap();
    let path = |p: &Path| p.display().to_string();
    let agent_args = [
        "--tls-cert",
        &path(&pki.agent.0),
        "--tls-key",
        &path(&pki.agent.1),
        "--tls-ca",
        &path(&pki.ca),
        "--config",
        &path(&agent_config),
    ]
    .map(String::from);
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let agent = Agent::start_with(&dir.path().join("agent"), "node-a", &coordinator.https_url(), &agent_args).await;
    let bearer = format!("Bearer {SUBMIT_TOKEN}");

    // Each finding about 7 KiB: a 4 KiB summary and a 3 KiB label, spread
    // over 20 targets. At the default 500 a page would hold 3.5 MB.
    for batch in (0..FINDINGS).collect::<Vec<_>>().chunks(100) {
        let body: Vec<serde_json::Value> = batch
            .iter()
            .map(|n| {
                json!({
                    "kind": "probe_failed",
                    "severity": "warning",
                    "target": format!("service/load-{}", n % 20),
                    "summary": filler(&format!("finding {n:05}:"), 4096),
                    "labels": { "detail": filler(&format!("detail of {n}"), 3072) },
                })
            })
            .collect();
        let body = json!(body).to_string();
        let (code, reply) =
            http_request_with(agent.diagnostics, "POST", "/v1/findings", &[("Authorization", &bearer)], Some(&body))
                .await
                .unwrap();
        assert_eq!(code, 202, "{reply}");
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["dropped"], 0, "the spool must not shed in this test");
    }
    let mut client = admin(&coordinator, &pki);
    eventually("every finding stored", WAIT, || {
        let mut client = client.clone();
        async move { (all_findings(&mut client).await.len() == FINDINGS).then_some(()) }
    })
    .await;

    let request = pb::ListFindingsRequest { page_size: 5_000, ..Default::default() };
    let page = client.list_findings(request).await.expect("a page that fits").into_inner();
    assert!(page.encoded_len() <= remedy_proto::MAX_PAGE_BYTES && !page.next_page_token.is_empty());

    for chunk in ["5000", "500"] {
        let out = ctl(&coordinator, &pki, &["findings", "-o", "json", "--chunk-size", chunk]);
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).expect("one JSON document");
        assert_eq!(list.len(), FINDINGS, "--chunk-size {chunk}");
        let summaries: BTreeSet<String> =
            list.iter().map(|f| f["summary"].as_str().unwrap()[..14].to_owned()).collect();
        let expected: BTreeSet<String> = (0..FINDINGS).map(|n| format!("finding {n:05}:")).collect();
        assert_eq!(summaries, expected, "--chunk-size {chunk}: each finding once");
        assert!(list.iter().all(|f| f["summary"].as_str().unwrap().len() == 4096), "summaries whole");
    }
    let limited = ctl(&coordinator, &pki, &["findings", "-o", "json", "--limit", "7", "--chunk-size", "3"]);
    assert_eq!(serde_json::from_str::<Vec<serde_json::Value>>(&limited).unwrap().len(), 7);
    eprintln!("{FINDINGS} findings: whole test {:?}", started.elapsed());
}
