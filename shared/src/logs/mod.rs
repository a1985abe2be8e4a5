//! Log lines into findings: error classification (P1-002) and brute-force
//! detection (SEC-001).
//!
//! Pure like the rest of the domain: the caller reads the lines and passes
//! the time. Both detectors keep bounded state (bucketed windows, capped key
//! counts, capped samples) and make the common case cheap: most lines are
//! neither errors nor failed logins, and are rejected by one literal scan.

pub mod bruteforce;
pub mod classify;
pub mod cri;
pub mod linetime;
pub mod net;
pub mod recency;
pub mod rules;
pub mod scope;
pub mod sshd;
pub mod syslog;
pub mod window;

use std::fmt;

use crate::config::ConfigError;
use crate::time::Timestamp;

pub use bruteforce::{BruteForceConfig, BruteForceDetector, BruteForceStats, JsonAuthFields};
pub use classify::{CategoryRule, ClassifierConfig, ClassifierStats, ErrorClassifier, KeyBy, WorkloadErrors};
pub use linetime::{LineClock, LineTimeConfig};
pub use net::Cidr;
pub use scope::Scope;

/// One log line, as the tailer hands it over: where it comes from (from the
/// file's path, when it is a container log) and its text without the CRI
/// prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRef<'a> {
    /// The pod's namespace.
    pub namespace: Option<&'a str>,
    /// The pod's name.
    pub pod: Option<&'a str>,
    /// The container's name.
    pub container: Option<&'a str>,
    /// The path of a plain file, as configured (not set for container
    /// logs).
    pub file: Option<&'a str>,
    /// When the runtime wrote the line, if known.
    pub timestamp: Option<Timestamp>,
    /// The line's text.
    pub message: &'a str,
}

impl<'a> LineRef<'a> {
    /// A line with only its text, as from a plain file.
    pub fn plain(message: &'a str) -> Self {
        LineRef { namespace: None, pod: None, container: None, file: None, timestamp: None, message }
    }
}

/// A detector configuration that cannot be used. `field` is the path inside
/// the detector's configuration, for example `categories[1].patterns[0]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct InvalidLogConfig {
    /// Dotted path to the field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl InvalidLogConfig {
    pub(crate) fn new(field: impl Into<String>, message: impl fmt::Display) -> Self {
        InvalidLogConfig { field: field.into(), message: message.to_string() }
    }

    /// The same error as a [`ConfigError`] about `source`, with the field
    /// placed under `prefix` (where the detector's section sits in the file,
    /// for example `logs.classify`; empty for none).
    pub fn in_file(self, source: &str, prefix: &str) -> ConfigError {
        let field = if prefix.is_empty() { self.field } else { format!("{prefix}.{}", self.field) };
        ConfigError::new(source, field, self.message)
    }
}

/// Characters Kubernetes uses for generated name suffixes (pod-template
/// hashes, pod suffixes): no vowels, no look-alike digits.
fn is_safe_encoded(s: &str, lengths: std::ops::RangeInclusive<usize>) -> bool {
    lengths.contains(&s.len()) && s.bytes().all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
}

/// The Deployment a pod belongs to, read from its name when it has the
/// shape a Deployment gives its pods: `<deployment>-<pod-template-hash>-<suffix>`,
/// the hash 6 to 10 and the suffix 5 characters of Kubernetes' safe
/// alphabet. A guess from the name alone: a pod of another kind whose name
/// happens to have that shape is taken for a Deployment's.
pub fn deployment_of(pod: &str) -> Option<&str> {
    let (rest, suffix) = pod.rsplit_once('-')?;
    let (deployment, hash) = rest.rsplit_once('-')?;
    (!deployment.is_empty() && is_safe_encoded(suffix, 5..=5) && is_safe_encoded(hash, 6..=10)).then_some(deployment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_are_read_from_their_pods_names() {
        assert_eq!(deployment_of("saas-idp-api-7d9f8b6c5d-x2k7p"), Some("saas-idp-api"));
        // "abcde" has vowels: not a generated suffix.
        assert_eq!(deployment_of("api-5c4b8d7f9-abcde"), None);
        assert_eq!(deployment_of("web-0"), None, "a StatefulSet pod");
        assert_eq!(deployment_of("node-exporter-x7k2p"), None, "a DaemonSet pod");
        assert_eq!(deployment_of("-7d9f8b6c5d-x2k7p"), None);
    }
}
