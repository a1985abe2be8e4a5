//! What the files of a catalog directory hold, and the header they share.
//!
//! Runbooks are not the only kind of file written in Remedy's shape
//! (`apiVersion: remedy.dev/v1`, `kind`, `metadata`): communication
//! templates (`comms`), on-call schedules (`oncall`) and escalation policies
//! (`escalation`) are too, and a communication template lives beside the
//! runbooks whose incidents it announces. A loader that reads one kind peeks
//! at each file's `kind` with [`peek_kind`] and leaves the other kinds to
//! their own loaders.
//!
//! The header is declared here once: [`ApiVersion`], [`CatalogKind`] and
//! [`Metadata`] are the types of its three fields in every kind's file, and
//! [`header_problems`] is the one rule they follow. Each file names the
//! three fields itself, beside its own: serde refuses unknown fields only in
//! a struct that lists all of them, so a shared struct cannot be flattened
//! in.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The only `apiVersion` understood.
pub const API_VERSION: &str = "remedy.dev/v1";

/// `apiVersion: remedy.dev/v1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiVersion {
    /// The first version.
    #[serde(rename = "remedy.dev/v1")]
    V1,
}

/// The kinds of file this release reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CatalogKind {
    /// `kind: Runbook` (`runbook`).
    Runbook,
    /// `kind: CommunicationTemplate` (`comms`).
    CommunicationTemplate,
    /// `kind: OnCallSchedule` (`oncall`).
    OnCallSchedule,
    /// `kind: EscalationPolicy` (`escalation`).
    EscalationPolicy,
}

impl CatalogKind {
    /// The name files use.
    pub fn as_str(self) -> &'static str {
        match self {
            CatalogKind::Runbook => "Runbook",
            CatalogKind::CommunicationTemplate => "CommunicationTemplate",
            CatalogKind::OnCallSchedule => "OnCallSchedule",
            CatalogKind::EscalationPolicy => "EscalationPolicy",
        }
    }
}

impl fmt::Display for CatalogKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `kind` a file's text declares, when it is one this release knows.
///
/// `None` when the text is not YAML, has no `kind`, or names a kind that is
/// unknown (a misspelt `Runbok`, say): the runbook loader then takes the
/// file and says what is wrong with it, so a typo in `kind` is refused
/// instead of the file being passed over in silence.
pub fn peek_kind(text: &str) -> Option<CatalogKind> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(default)]
        kind: Option<CatalogKind>,
    }
    // Anything that does not read as a known kind is the runbook loader's
    // to report.
    serde_saphyr::from_str::<Peek>(text).ok().and_then(|p| p.kind)
}

/// Who a catalog file is and what it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Unique among files of its kind, e.g. `P0-001`:
    /// `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 63 characters.
    pub id: String,
    /// One line for humans. Every kind needs one but escalation policies,
    /// which are shown by their id without it.
    #[serde(default)]
    pub title: String,
    /// More for humans: impact, context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Runbooks only: tags copied to incidents; `total_outage` counts
    /// against availability, `security` counts as a security incident.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl Metadata {
    /// What is wrong with the id, if anything (the field is `metadata.id`).
    pub fn check_id(&self) -> Result<(), String> {
        check_id(&self.id)
    }
}

/// What is wrong with the header of a file read as `expected` that declares
/// `declared` and `metadata`, as (field, message) pairs: another kind, an
/// id that is not one, a missing title, tags outside a runbook.
pub fn header_problems(
    expected: CatalogKind,
    declared: CatalogKind,
    metadata: &Metadata,
) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if declared != expected {
        problems.push(("kind", format!("`{declared}` is not {expected}")));
    }
    if let Err(e) = metadata.check_id() {
        problems.push(("metadata.id", e));
    }
    if expected != CatalogKind::EscalationPolicy && metadata.title.trim().is_empty() {
        problems.push(("metadata.title", "must not be empty".to_owned()));
    }
    if expected != CatalogKind::Runbook && !metadata.tags.is_empty() {
        problems.push(("metadata.tags", format!("only runbooks have tags, not a {expected}")));
    }
    problems
}

/// What is wrong with a catalog file's id, if anything.
pub fn check_id(id: &str) -> Result<(), String> {
    let valid = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.len() <= 63
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!("`{id}` is not an id: letters, digits, `.`, `_` and `-`, starting with a letter or digit"))
    }
}

/// What one file of a catalog names that another file must provide: a
/// runbook's escalation policy, a policy's schedules and templates. Given
/// (file, object) pairs and the ids present, every reference that does not
/// resolve, naming the referring file and field. People and channels are
/// not catalog files and are not checked here.
pub fn missing_references<'a>(
    runbooks: impl IntoIterator<Item = (&'a str, &'a crate::runbook::Runbook)>,
    policies: impl IntoIterator<Item = (&'a str, &'a crate::escalation::EscalationPolicy)>,
    policy_ids: &std::collections::BTreeSet<&str>,
    schedule_ids: &std::collections::BTreeSet<&str>,
    template_ids: &std::collections::BTreeSet<&str>,
) -> Vec<crate::config::ConfigError> {
    use crate::config::ConfigError;
    let mut missing = Vec::new();
    for (file, runbook) in runbooks {
        let policy = runbook.escalation.policy.as_str();
        if !policy_ids.contains(policy) {
            missing.push(ConfigError::new(
                file,
                "escalation.policy",
                format!("no escalation policy `{policy}` in the catalog (a file with kind: EscalationPolicy)"),
            ));
        }
    }
    for (file, policy) in policies {
        if let Some(t) = policy.template.as_deref().filter(|t| !template_ids.contains(t)) {
            missing.push(ConfigError::new(file, "template", format!("no communication template `{t}` in the catalog")));
        }
        if let Some(t) = policy.updates.as_ref().map(|u| u.template.as_str()).filter(|t| !template_ids.contains(t)) {
            missing.push(ConfigError::new(
                file,
                "updates.template",
                format!("no communication template `{t}` in the catalog"),
            ));
        }
        for (i, level) in policy.levels.iter().enumerate() {
            for (j, target) in level.notify.iter().enumerate() {
                if let crate::escalation::Target::Schedule(s) = target
                    && !schedule_ids.contains(s.as_str())
                {
                    missing.push(ConfigError::new(
                        file,
                        format!("levels[{i}].notify[{j}]"),
                        format!("no on-call schedule `{s}` in the catalog (a file with kind: OnCallSchedule)"),
                    ));
                }
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_read_without_the_rest_of_the_file() {
        let comms = "apiVersion: remedy.dev/v1\nkind: CommunicationTemplate\nmetadata: {id: x}\nbody: |\n  {{ X }}\n";
        assert_eq!(peek_kind(comms), Some(CatalogKind::CommunicationTemplate));
        assert_eq!(peek_kind("kind: OnCallSchedule\nrotation: {every: 1w}\n"), Some(CatalogKind::OnCallSchedule));
        assert_eq!(peek_kind("kind: Runbook\nsteps: []\n"), Some(CatalogKind::Runbook));
    }

    #[test]
    fn an_unknown_missing_or_unreadable_kind_is_left_to_the_runbook_loader() {
        assert_eq!(peek_kind("kind: Runbok\n"), None);
        assert_eq!(peek_kind("metadata: {id: x}\n"), None);
        assert_eq!(peek_kind("kind: [1, 2]\n"), None);
        assert_eq!(peek_kind(": : :\n  - ["), None);
        assert_eq!(peek_kind(""), None);
    }

    #[test]
    fn a_header_is_refused_for_another_kind_a_bad_id_a_missing_title_or_misplaced_tags() {
        let meta = |id: &str, title: &str, tags: &[&str]| Metadata {
            id: id.to_owned(),
            title: title.to_owned(),
            description: None,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        };
        let fields = |expected, declared, m: &Metadata| {
            header_problems(expected, declared, m).into_iter().map(|(field, _)| field).collect::<Vec<_>>()
        };
        let good = meta("p0", "P0", &["total_outage"]);
        assert!(fields(CatalogKind::Runbook, CatalogKind::Runbook, &good).is_empty());
        assert_eq!(fields(CatalogKind::Runbook, CatalogKind::OnCallSchedule, &good), ["kind"]);
        assert_eq!(fields(CatalogKind::OnCallSchedule, CatalogKind::OnCallSchedule, &good), ["metadata.tags"]);
        let bare = meta("-p0", "", &[]);
        assert_eq!(
            fields(CatalogKind::CommunicationTemplate, CatalogKind::CommunicationTemplate, &bare),
            ["metadata.id", "metadata.title"]
        );
        assert_eq!(fields(CatalogKind::EscalationPolicy, CatalogKind::EscalationPolicy, &bare), ["metadata.id"]);
    }

    #[test]
    fn ids_follow_the_runbook_rule() {
        let meta =
            |id: &str| Metadata { id: id.to_owned(), title: "t".to_owned(), description: None, tags: Vec::new() };
        assert!(meta("p0-internal").check_id().is_ok());
        assert!(meta("P0.primary_2").check_id().is_ok());
        assert!(meta("").check_id().is_err());
        assert!(meta("-x").check_id().is_err());
        assert!(meta("a b").check_id().is_err());
        assert!(meta(&"a".repeat(64)).check_id().is_err());
    }
}
