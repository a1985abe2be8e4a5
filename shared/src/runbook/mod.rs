//! Runbook definitions: what to do about an incident, written in YAML.
//!
//! One file, one runbook. The shape (Kubernetes-like header, then the
//! runbook's own fields at the top level; there is no `spec:` level because
//! runbooks are read from files and a ConfigMap, not served as objects):
//!
//! ```yaml
//! apiVersion: remedy.dev/v1
//! kind: Runbook
//! metadata:
//!   id: P0-001                      # [A-Za-z0-9][A-Za-z0-9._-]*, unique in the catalog
//!   title: System Complete Outage
//!   description: ...                # optional
//!   tags: [total_outage]            # optional; `total_outage` and `security` feed the metrics
//! priority: P0                      # P0, P1, P2, P3 or security
//! mttr_target: 5m
//! params:                           # optional; literal defaults, overridable per run
//!   api_base: http://saas-idp-api.saas-idp-production.svc:8080
//!   reset_note: {secret: true}      # a secret: its value is never written (see `Param`)
//!   api_token: {secret: true, default: ""}   # secret by name too (`audit::is_secret_key`)
//! triggers:                         # at least one kind
//!   alerts:   [{name: P0_SystemDown, matchers: ['namespace="saas-idp-production"']}]
//!   findings: [{kind: high_error_rate, evidence: database, above: 10, for: 1m, aggregate: sum_across_nodes}]
//!   manual: true
//! steps:                            # in order; see `step`
//!   - id: health
//!     probe_http: {url: "{{ params.api_base }}/health"}
//! verification:                     # optional; see `step::Verification`
//!   within: 2m
//!   checks: [{id: healthy, probe_http: {url: "{{ params.api_base }}/health"}}]
//! escalation:
//!   policy: p0-chain                # a policy configured on the coordinator
//!   page_on_open: true
//!   after_failure: escalate         # or retry (up to guard_rails.max_attempts)
//! guard_rails: {...}                # optional; see `guard_rails`
//! ```
//!
//! [`parse_runbook`] reads one file's text (the caller reads the file);
//! [`validate`] checks it against the actions the coordinator offers;
//! [`load_runbook`] does both. Errors name the file, the line and the field.

mod action;
mod condition;
mod guard_rails;
pub(crate) mod locate;
mod step;
mod template;
mod trigger;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use action::*;
pub use condition::{CompareOp, Condition, ConditionSyntaxError, EvalError, Expr, Path};
pub use guard_rails::{Budget, BudgetScope, GuardRails, Protected};
pub use step::{Check, OnFailure, Step, Verification};
pub use template::{
    AlertContext, FindingContext, IncidentContext, Renderer, TemplateContext, TemplateError, is_template,
    json_to_value, sample_context,
};
pub use trigger::{
    AcrossNodesSum, Aggregate, AlertTrigger, FindingTrigger, LabelMatcher, MatchOp, MatcherError, SumStatus, Triggers,
    matches_alert, matches_finding,
};
pub use validate::{ActionCatalog, Availability, UnavailableAction, ValidationReport, validate};

use crate::catalog::{ApiVersion, CatalogKind, Metadata};
use crate::config::{ConfigError, duration};

/// How urgent incidents handled by the runbook are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priority {
    /// Critical: total outage, data unavailable.
    P0,
    /// High.
    P1,
    /// Medium.
    P2,
    /// Low.
    P3,
    /// A security incident.
    #[serde(rename = "security")]
    Security,
}

impl Priority {
    /// The name used in runbooks and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::P0 => "P0",
            Priority::P1 => "P1",
            Priority::P2 => "P2",
            Priority::P3 => "P3",
            Priority::Security => "security",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens after remediation fails (a step says `escalate`, or
/// verification misses its deadline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterFailure {
    /// Hand the incident to people through the policy; automation stops.
    #[default]
    Escalate,
    /// Run the runbook again, up to `guard_rails.max_attempts`, then escalate.
    Retry,
}

/// Who is told, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    /// An escalation policy configured on the coordinator (e.g. `p0-chain`).
    pub policy: String,
    /// Page the policy's first level as soon as the incident opens, while
    /// automation runs (P0: a person is told at once either way).
    #[serde(default)]
    pub page_on_open: bool,
    /// What happens after remediation fails.
    #[serde(default)]
    pub after_failure: AfterFailure,
}

/// A runbook definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    /// `remedy.dev/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: ApiVersion,
    /// `Runbook` (checked by [`validate`]).
    pub kind: CatalogKind,
    /// Id, title, description, tags.
    pub metadata: Metadata,
    /// How urgent.
    pub priority: Priority,
    /// Time to recovery the runbook aims for; an incident approaching it
    /// raises a finding.
    #[serde(with = "duration")]
    pub mttr_target: Duration,
    /// Declared params with their defaults: `params.<name>` in templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, Param>,
    /// What starts it.
    pub triggers: Triggers,
    /// What it does, in order.
    pub steps: Vec<Step>,
    /// How it knows it worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// Who is told.
    pub escalation: Escalation,
    /// Per-runbook guard-rail settings.
    #[serde(default)]
    pub guard_rails: GuardRails,
    /// The file it was read from (set by [`parse_runbook`], not written in
    /// YAML), so later errors can name it.
    #[serde(skip)]
    pub source: String,
}

impl Runbook {
    /// The runbook's id.
    pub fn id(&self) -> &str {
        &self.metadata.id
    }

    /// The definition as YAML, as the coordinator understood it.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot be shown: {e}\n"))
    }

    /// A step by id.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Whether the value of param `name` is secret: declared so, or named
    /// like a secret (`api_token`, `db_password`, ...: the audit log's
    /// notion, [`crate::audit::is_secret_key`]). A secret value is used by
    /// the run's actions and never written: not in the run's record, the
    /// timeline, the audit log, the logs or an answer.
    pub fn is_secret_param(&self, name: &str) -> bool {
        self.params.get(name).is_some_and(|p| p.secret) || crate::audit::is_secret_key(name)
    }

    /// The declared params as shown to people: a secret's default is
    /// [`crate::audit::REDACTED`], a param without one is `""`.
    pub fn shown_params(&self) -> BTreeMap<String, String> {
        self.params
            .iter()
            .map(|(k, p)| {
                let shown = match &p.default {
                    Some(_) if self.is_secret_param(k) => crate::audit::REDACTED.to_owned(),
                    Some(d) => d.clone(),
                    None => String::new(),
                };
                (k.clone(), shown)
            })
            .collect()
    }

    /// Every declared param with its default, secret ones included; `""`
    /// for a param without one. What templates are checked against at load.
    pub fn declared_params(&self) -> BTreeMap<String, String> {
        self.params.iter().map(|(k, p)| (k.clone(), p.default.clone().unwrap_or_default())).collect()
    }

    /// The params for one run: the declared defaults overridden by
    /// `overrides`, secret ones included (the caller keeps those apart,
    /// see [`Runbook::is_secret_param`]). A name that is not declared is
    /// refused, so that a typo on the command line does not silently run
    /// with the default. A param with no default that is not given is
    /// absent: a template that reads it fails rather than send a blank.
    pub fn resolve_params(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, UndeclaredParam> {
        let mut params: BTreeMap<String, String> =
            self.params.iter().filter_map(|(k, p)| Some((k.clone(), p.default.clone()?))).collect();
        for (name, value) in overrides {
            match self.params.contains_key(name) {
                true => {
                    params.insert(name.clone(), value.clone());
                }
                false => {
                    return Err(UndeclaredParam {
                        runbook_id: self.id().to_owned(),
                        name: name.clone(),
                        declared: self.params.keys().cloned().collect(),
                    });
                }
            }
        }
        Ok(params)
    }
}

/// A declared param. Written as its default alone (`api_base: http://...`),
/// or as a map: `{secret: true}`, `{secret: true, default: "..."}`.
///
/// A secret param's value is kept in memory by the run that uses it and
/// nowhere else; a run resumed after a coordinator restart no longer has a
/// value a person gave, and a step that reads it fails saying so. A
/// secret's default, written in the runbook, is shown as `[redacted]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Param {
    /// The value when a run gives none.
    pub default: Option<String>,
    /// Declared secret (`secret: true`).
    pub secret: bool,
}

impl<'de> Deserialize<'de> for Param {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Param;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a default value, or a map with `default` and `secret`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Param, E> {
                Ok(Param { default: Some(v.to_owned()), secret: false })
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Param, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Param, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Param, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Param, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Param, A::Error> {
                let mut param = Param::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "default" => param.default = Some(map.next_value()?),
                        "secret" => param.secret = map.next_value()?,
                        other => {
                            return Err(serde::de::Error::unknown_field(other, &["default", "secret"]));
                        }
                    }
                }
                Ok(param)
            }
        }
        de.deserialize_any(Visit)
    }
}

impl Serialize for Param {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match (&self.default, self.secret) {
            (Some(default), false) => s.serialize_str(default),
            (default, secret) => {
                let mut map = s.serialize_map(None)?;
                if default.is_some() {
                    // A definition is shown to whoever may read runbooks;
                    // only a secret's default comes here.
                    map.serialize_entry("default", crate::audit::REDACTED)?;
                }
                map.serialize_entry("secret", &secret)?;
                map.end()
            }
        }
    }
}

/// A param given for a run that its runbook does not declare: refused, so
/// that a typo does not silently run with the default.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("runbook {runbook_id} has no param `{name}` (params: {})", .declared.join(", "))]
pub struct UndeclaredParam {
    /// The runbook.
    pub runbook_id: String,
    /// The name given.
    pub name: String,
    /// The params it declares, in order.
    pub declared: Vec<String>,
}

/// A runbook that cannot be used: names the file, the line (when known) and
/// the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RunbookError {
    /// The file the runbook came from.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
    /// Dotted path to the field, e.g. `steps[3].when`; empty for the whole
    /// document.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RunbookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl From<RunbookError> for ConfigError {
    fn from(e: RunbookError) -> Self {
        let location = match e.line {
            Some(line) => format!(" (line {line})"),
            None => String::new(),
        };
        ConfigError::new(e.file, e.field, format!("{}{location}", e.message))
    }
}

/// Every problem found in one runbook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidRunbook {
    /// The problems, in document order where known.
    pub errors: Vec<RunbookError>,
}

impl fmt::Display for InvalidRunbook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<RunbookError> for InvalidRunbook {
    fn from(e: RunbookError) -> Self {
        InvalidRunbook { errors: vec![e] }
    }
}

/// Parses one runbook file's text. Refuses unknown fields, unknown finding
/// and action kinds, bad durations, matchers and conditions, naming the
/// file, line, column and field. Does not check cross-references: see
/// [`validate`].
pub fn parse_runbook(file: &str, text: &str) -> Result<Runbook, RunbookError> {
    let mut failure: Option<(String, Option<serde_saphyr::Location>)> = None;
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, Runbook>(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            failure = Some((field, inner.location()));
            inner
        })
    });
    match parsed {
        Ok(mut runbook) => {
            runbook.source = file.to_owned();
            // Named like a secret is secret, however it was written.
            for (name, param) in &mut runbook.params {
                param.secret |= crate::audit::is_secret_key(name);
            }
            Ok(runbook)
        }
        Err(e) => {
            let (field, location) = failure.unwrap_or_else(|| (String::new(), e.location()));
            let location = location.or_else(|| e.location()).filter(|l| *l != serde_saphyr::Location::UNKNOWN);
            let field = if field == "." { String::new() } else { field };
            Err(RunbookError {
                file: file.to_owned(),
                line: location.map(|l| l.line()),
                column: location.map(|l| l.column()),
                field,
                message: bare_message(&e.to_string()),
            })
        }
    }
}

/// The parser's message without its own location suffix and snippet (the
/// error carries both as fields).
fn bare_message(rendered: &str) -> String {
    let first = rendered.lines().next().unwrap_or(rendered).trim_start_matches("error: ");
    // Custom errors come as "line L column C: message".
    let first = match first.strip_prefix("line ").and_then(|rest| rest.split_once(": ")) {
        Some((position, rest)) if position.contains(" column ") => rest,
        _ => first,
    };
    match first.rfind(" at line ") {
        Some(at) => first[..at].to_owned(),
        None => first.to_owned(),
    }
}

/// Parses and validates one runbook file's text.
pub fn load_runbook(
    file: &str,
    text: &str,
    catalog: &ActionCatalog,
) -> Result<(Runbook, ValidationReport), InvalidRunbook> {
    let runbook = parse_runbook(file, text)?;
    let report = validate::validate_with_source(&runbook, catalog, Some(text))?;
    Ok((runbook, report))
}

/// Serde adapter for optional durations written as text.
pub(crate) mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads `30s`, `2m`...
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(de)?;
        crate::config::parse_duration(&text).map(Some).map_err(serde::de::Error::custom)
    }

    /// Writes the humantime form.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => crate::config::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests;
