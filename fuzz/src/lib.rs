//! Fuzz targets: every parser that takes input from outside the process,
//! each as a function of arbitrary bytes that must never panic.
//!
//! The same functions run under libFuzzer (`fuzz_targets/`, through
//! `cargo fuzz`, see `docs/fuzzing.md`) and in the replay test
//! (`tests/replay.rs`), which feeds them every committed corpus entry and
//! every committed crash, so a crash once found stays fixed.
//!
//! A target does what the program does with such input, a little further
//! than the parser itself: an alert or a finding that decodes is turned into
//! the signal the recorder applies to an incident; a runbook that parses is
//! validated the way the coordinator loads it. A panic anywhere along that
//! path is a defect, whichever function it comes from.

use std::collections::BTreeMap;

use prost::Message;
use remedy_proto::convert;
use remedy_proto::v1 as pb;
use remedy_shared::incident::{self, IncidentId, Outcome, Signal};
use remedy_shared::logs::cri;
use remedy_shared::runbook::{
    self, ActionCatalog, Availability, Condition, IncidentContext, Renderer, TemplateContext,
};
use remedy_shared::{FindingKind, Timestamp};

/// One fuzz target: its name (the directory under `corpus/` and
/// `regressions/`, and the libFuzzer binary) and its function.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The target's name.
    pub name: &'static str,
    /// Runs one input; panics only on a defect.
    pub run: fn(&[u8]),
}

/// Every target, in the order `make fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target { name: "cri", run: cri },
    Target { name: "alertmanager", run: alertmanager },
    Target { name: "runbook", run: runbook },
    Target { name: "template", run: template },
    Target { name: "grpc", run: grpc },
];

/// A fixed "now" for the domain functions that take one: the targets must
/// be deterministic for a crash to replay.
const NOW: Timestamp = Timestamp::from_millis(1_795_000_000_000);

/// Container log bytes as the tailer reads them: split into lines, each
/// parsed as CRI and its timestamp read; and the same bytes as the pod and
/// container directory names and the file name the tailer interprets
/// (`<pod dir>/<container dir>/<file>`).
pub fn cri(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        if let Some(parsed) = cri::parse_line(line) {
            let _ = cri::parse_timestamp(parsed.timestamp).map(|t| t.to_string());
            let _ = String::from_utf8_lossy(parsed.message);
        }
    }
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '/');
    let (pod_dir, container_dir, file) =
        (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let _ = cri::parse_pod_dirs(pod_dir, container_dir);
    let _ = cri::file_role(file);
    let _ = cri::is_compressed(file);
}

/// An Alertmanager webhook body, and every alert it holds applied to an
/// incident as the recorder does: opened, refreshed, expired.
pub fn alertmanager(data: &[u8]) {
    match remedy_coordinator::alertmanager::parse(data) {
        Ok(alerts) => {
            for alert in &alerts {
                let _ = (alert.dedup_key(), alert.severity(), alert.summary());
                let _ = alert.ends_at.map(|t| t.to_string());
                apply_to_incident(&Signal::from_alert(alert));
            }
        }
        Err(reason) => drop(reason),
    }
}

/// A runbook file: parsed, then validated as the coordinator loads it (with
/// this release's catalog, and with every action available so validation
/// reaches every step), shown as YAML, and that YAML parsed again.
pub fn runbook(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let file = "fuzz.yaml";
    match runbook::load_runbook(file, text, &ActionCatalog::this_release()) {
        Ok((loaded, report)) => {
            let _ = report.fully_available();
            let _ = loaded.resolve_params(&BTreeMap::new());
            let shown = loaded.to_yaml();
            let _ = runbook::parse_runbook(file, &shown).map_err(|e| e.to_string());
        }
        Err(invalid) => drop(invalid.to_string()),
    }
    if let Ok(parsed) = runbook::parse_runbook(file, text) {
        let _ = runbook::validate(&parsed, &ActionCatalog::every_kind(Availability::Now)).map_err(|e| e.to_string());
    }
}

/// A template, rendered against the context of a run and against the
/// sample context runbooks are checked with at load; the same text read as
/// a `when`/`expect` condition and evaluated against that context.
///
/// The input is the template's source, optionally followed by a NUL byte and
/// the run's context as JSON (a [`TemplateContext`], or any JSON value used
/// as the whole context); without one, a context with every section filled
/// is used.
pub fn template(data: &[u8]) {
    let (source, context) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let Ok(source) = std::str::from_utf8(source) else { return };
    let (value, json) = match context.and_then(|c| serde_json::from_slice::<serde_json::Value>(c).ok()) {
        Some(json) => match serde_json::from_value::<TemplateContext>(json.clone()) {
            Ok(ctx) => (ctx.to_value(), ctx.to_json()),
            Err(_) => (runbook::json_to_value(&json), json),
        },
        None => {
            let ctx = filled_context();
            (ctx.to_value(), ctx.to_json())
        }
    };
    let renderer = Renderer::new();
    let _ = renderer.render_str(source, &value).map_err(|e| e.to_string());
    let incident = filled_context().incident;
    let sample =
        runbook::sample_context(&incident, &BTreeMap::from([("ip".to_owned(), "10.0.0.9".to_owned())]), &["snapshot"]);
    let _ = renderer.render_str(source, &sample).map_err(|e| e.to_string());
    match Condition::parse(source) {
        Ok(condition) => {
            let _ = condition.paths();
            let _ = condition.evaluate(&json).map_err(|e| e.to_string());
        }
        Err(syntax) => drop(syntax.to_string()),
    }
}

/// Bytes from a gRPC stream or call, decoded as each message agents and
/// admin clients send, and each decoded value converted into the domain as
/// the coordinator does: findings validated and applied to an incident,
/// snapshots converted, ids, scopes and kinds parsed.
pub fn grpc(data: &[u8]) {
    use pb::agent_message::Body;
    if let Ok(message) = pb::AgentMessage::decode(data) {
        match message.body {
            Some(Body::Hello(hello)) => drop(convert::sorted(hello.labels)),
            Some(Body::Heartbeat(heartbeat)) => drop(heartbeat.snapshot.map(convert::snapshot_from_proto)),
            Some(Body::Findings(batch)) => {
                for item in batch.findings {
                    let Some(wire) = item.finding else { continue };
                    let Ok(finding) = convert::finding_from_proto(wire) else { continue };
                    // What decoded must encode to the same finding: the
                    // spool and the store keep findings in wire form.
                    let again = convert::finding_from_proto(convert::finding_to_proto(&finding));
                    assert_eq!(again.as_ref(), Ok(&finding), "a decoded finding does not survive encoding");
                    let _ = (finding.first_seen.to_string(), finding.holds_at(NOW));
                    apply_to_incident(&Signal::from_finding("fuzz-agent", &finding));
                }
            }
            Some(Body::ActionResult(result)) => drop(result),
            None => {}
        }
    }
    if let Ok(command) = pb::IncidentCommand::decode(data) {
        let _ = command.id.parse::<IncidentId>();
    }
    if let Ok(request) = pb::GetIncidentRequest::decode(data) {
        let _ = request.id.parse::<IncidentId>();
    }
    if let Ok(answer) = pb::AnswerApprovalRequest::decode(data) {
        let _ = answer.incident_id.parse::<IncidentId>();
    }
    if let Ok(reset) = pb::ResetBreakerRequest::decode(data) {
        let _ = reset.scope.parse::<remedy_shared::guard::Scope>();
    }
    if let Ok(list) = pb::ListFindingsRequest::decode(data) {
        let _ = list.kind.parse::<FindingKind>();
    }
    let _ = pb::RunRunbookRequest::decode(data);
    let _ = pb::UnblockRequest::decode(data);
    let _ = pb::PauseAutomationRequest::decode(data);
}

/// Opens an incident from `signal`, applies it again to that incident,
/// and lets its sources expire, as the recorder would over time.
fn apply_to_incident(signal: &Signal) {
    let Outcome::Changed { incident: opened, .. } = incident::apply_signal(None, signal, IncidentId(1), NOW) else {
        return;
    };
    let later = NOW.plus(std::time::Duration::from_secs(60));
    let current = match incident::apply_signal(Some(&opened), signal, IncidentId(2), later) {
        Outcome::Changed { incident, .. } => incident,
        _ => opened,
    };
    let _ = incident::next_expiry(&current);
    let _ = incident::expire_sources(&current, later.plus(std::time::Duration::from_secs(86_400)));
}

/// A run context with every section filled, so templates reading alerts,
/// findings, params and step results all have something to read.
fn filled_context() -> TemplateContext {
    let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let mut ctx = TemplateContext {
        incident: IncidentContext {
            id: "INC-000042".into(),
            started_at: "2026-11-26T10:00:00.000Z".into(),
            priority: "P1".into(),
            runbook: "P1-002".into(),
            title: "High error rate".into(),
            summary: "5xx above 5%".into(),
            mode: "live".into(),
        },
        params: map(&[("ip", "10.0.0.9"), ("replicas", "3")]),
        ..TemplateContext::default()
    };
    ctx.alert.name = "P1_HighErrorRate".into();
    ctx.alert.labels = map(&[("namespace", "prod"), ("deployment", "api")]);
    ctx.finding.kind = "log_error_rate".into();
    ctx.finding.evidence = map(&[("rate", "0.12"), ("count", "42")]);
    ctx.steps.insert("snapshot".into(), serde_json::json!({"nodes": {"a": {"cpu": 93.5}}, "pods": ["api-1", "api-2"]}));
    ctx
}
