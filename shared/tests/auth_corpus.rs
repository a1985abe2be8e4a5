//! Every sample of the failed-login corpus (`tests/corpus/auth/`) through
//! the detector with the shipped configuration
//! (`deploy/base/config/agent.yaml`), each annotation checked: counted
//! against which address and user, or not counted and why.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use remedy_shared::Timestamp;
use remedy_shared::logs::LineRef;
use remedy_shared::logs::bruteforce::{BruteForceDetector, Verdict, config_from_file};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What a sample is annotated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Counts { source: IpAddr, user: Option<String> },
    Not { reason: Option<String> },
}

/// The samples of a corpus file, each with its annotation.
fn samples(name: &str) -> Vec<(Expected, String)> {
    let path = repo().join("tests/corpus/auth").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut pending: Option<Expected> = None;
    for line in text.lines() {
        if let Some(note) = line.strip_prefix("#> ") {
            assert!(pending.is_none(), "two annotations in a row before {line}");
            pending = Some(if let Some(rest) = note.strip_prefix("counts ") {
                let (addr, user) = match rest.split_once(" user ") {
                    Some((a, u)) => (a, Some(u.to_owned())),
                    None => (rest, None),
                };
                Expected::Counts { source: addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}")), user }
            } else {
                let reason = note.strip_prefix("not:").unwrap_or_else(|| panic!("bad annotation {line}")).trim();
                Expected::Not { reason: (!reason.is_empty()).then(|| reason.to_owned()) }
            });
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let expected = pending.take().unwrap_or_else(|| panic!("no annotation for {line}"));
            out.push((expected, line.to_owned()));
        }
    }
    out
}

fn replay(name: &str, source: LineRef<'static>) -> usize {
    let agent = repo().join("deploy/base/config/agent.yaml");
    let text = std::fs::read_to_string(&agent).unwrap_or_else(|e| panic!("{}: {e}", agent.display()));
    let config = config_from_file("agent.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    let mut detector = BruteForceDetector::new(config).unwrap_or_else(|e| panic!("{e}"));
    let samples = samples(name);
    for (i, (expected, message)) in samples.iter().enumerate() {
        let line = LineRef { message, ..source };
        let (verdict, _) = detector.observe_explained(&line, Timestamp::from_millis(i as i64));
        match (expected, &verdict) {
            (Expected::Counts { source, user }, Verdict::Counted { source: got, user: got_user, .. }) => {
                assert_eq!((got, got_user), (source, user), "{name}: {message}");
            }
            (Expected::Not { reason: None }, Verdict::NotCounted { .. } | Verdict::NotRead) => {}
            (Expected::Not { reason: Some(want) }, Verdict::NotCounted { reason, .. }) => {
                assert_eq!(reason, want, "{name}: {message}");
            }
            _ => panic!("{name}: {message}\n  expected {expected:?}\n  got {verdict:?}"),
        }
    }
    samples.len()
}

#[test]
fn every_sshd_and_pam_sample_counts_as_annotated() {
    let source = LineRef { file: Some("/var/log/auth.log"), ..LineRef::plain("") };
    assert!(replay("sshd.log", source) > 60);
}

#[test]
fn every_access_log_sample_counts_as_annotated() {
    let nginx = LineRef {
        namespace: Some("ingress-nginx"),
        pod: Some("ingress-nginx-controller-6c9b7d5f4f-k2m7q"),
        container: Some("controller"),
        ..LineRef::plain("")
    };
    replay("nginx.log", nginx);
    let envoy = LineRef {
        namespace: Some("envoy-gateway-system"),
        pod: Some("envoy-default-eg-5c4b8d7f9-x2x4k"),
        container: Some("envoy"),
        ..LineRef::plain("")
    };
    replay("envoy.log", envoy);
}

#[test]
fn every_login_service_sample_counts_as_annotated() {
    let auth = LineRef {
        namespace: Some("saas-idp-production"),
        pod: Some("auth-service-7d9f8b6c5d-x2k7p"),
        container: Some("auth"),
        ..LineRef::plain("")
    };
    replay("auth-service.log", auth);
}

/// The shipped configuration reads each format only from its own sources:
/// a pod writing sshd's or nginx's lines into its own log names nobody.
#[test]
fn lines_in_another_pods_log_are_not_read() {
    let other = LineRef {
        namespace: Some("shop"),
        pod: Some("web-7d9f8b6c5d-x2k7p"),
        container: Some("web"),
        ..LineRef::plain("")
    };
    let agent = repo().join("deploy/base/config/agent.yaml");
    let config = config_from_file("agent.yaml", &std::fs::read_to_string(agent).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut detector = BruteForceDetector::new(config).unwrap_or_else(|e| panic!("{e}"));
    for name in ["sshd.log", "nginx.log", "envoy.log", "auth-service.log"] {
        for (_, message) in samples(name) {
            let (verdict, _) = detector.observe_explained(&LineRef { message: &message, ..other }, Timestamp::EPOCH);
            assert!(!matches!(verdict, Verdict::Counted { .. }), "{name}: {message}: {verdict:?}");
        }
    }
}
