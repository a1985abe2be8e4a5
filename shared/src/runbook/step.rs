//! Steps and verification checks.
//!
//! A step is an id, an optional `when` condition, exactly one action written
//! as a key named after its kind, and what to do if it fails:
//!
//! ```yaml
//! - id: restart_api
//!   when: steps.errors.database > 10
//!   rollout_restart: {namespace: saas-idp-production, name: saas-idp-api}
//!   on_failure: escalate
//! ```
//!
//! Step ids are lowercase identifiers (`[a-z][a-z0-9_]*`) because templates
//! and conditions read results as `steps.<id>.<key>`, where a `-` would be
//! a subtraction.

use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::action::{Action, ActionClass, ActionKind};
use super::condition::Condition;
use super::guard_rails::GuardRails;
use crate::config::duration;

/// What happens when a step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Record the failure and go on to the next step; the failure still
    /// counts against the run (verification decides the outcome).
    Next,
    /// Stop the runbook and escalate now.
    Escalate,
    /// Record the failure and go on as if the step had succeeded: for
    /// best-effort steps such as evidence and notifications.
    Continue,
}

impl OnFailure {
    /// The snake_case name used in runbooks.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Next => "next",
            OnFailure::Escalate => "escalate",
            OnFailure::Continue => "continue",
        }
    }
}

/// One step of a runbook.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Unique within the runbook; `steps.<id>` in templates and conditions.
    pub id: String,
    /// What the step is for, for humans.
    pub description: Option<String>,
    /// Run only when this holds (evaluated just before the step).
    pub when: Option<Condition>,
    /// What the step does.
    pub action: Action,
    /// What happens when it fails; see [`Step::on_failure`].
    pub on_failure: Option<OnFailure>,
    /// Marks the step destructive (trigger re-checked just before it runs);
    /// see [`Step::is_destructive`].
    pub destructive: Option<bool>,
    /// Whether a person must approve it; see [`Step::requires_approval`].
    pub requires_approval: Option<bool>,
}

impl Step {
    /// The action's kind.
    pub fn kind(&self) -> ActionKind {
        self.action.kind()
    }

    /// Whether the step gathers evidence.
    pub fn is_evidence(&self) -> bool {
        self.kind().class() == ActionClass::Evidence
    }

    /// What happens when the step fails: as written, else `continue` for
    /// evidence (a failed probe during an outage is itself evidence) and
    /// `escalate` for changes (a failed change hands over to people).
    pub fn on_failure(&self) -> OnFailure {
        self.on_failure.unwrap_or(if self.is_evidence() { OnFailure::Continue } else { OnFailure::Escalate })
    }

    /// Whether the trigger must be re-checked just before the step: its kind
    /// is destructive by nature, or the step says so.
    pub fn is_destructive(&self) -> bool {
        self.kind().is_destructive() || self.destructive == Some(true)
    }

    /// Whether a person must approve the step before it runs: as the step
    /// says, else as the runbook's guard rails say for its kind.
    pub fn requires_approval(&self, rails: &GuardRails) -> bool {
        self.requires_approval.unwrap_or_else(|| rails.requires_approval.contains(&self.kind()))
    }
}

/// A check that tells whether remediation worked.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Unique within the runbook (shares the `steps.<id>` namespace).
    pub id: String,
    /// What the check is for, for humans.
    pub description: Option<String>,
    /// An evidence action; a check passes when it succeeds...
    pub action: Action,
    /// ...and, if given, this holds (the result is `steps.<id>`).
    pub expect: Option<Condition>,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}

/// How the runbook knows it worked: checks repeated every `interval` until
/// all pass or `within` has passed since remediation ended, which escalates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    /// The deadline, counted from the end of the last step.
    #[serde(with = "duration")]
    pub within: Duration,
    /// How often to repeat the checks.
    #[serde(with = "duration", default = "default_interval")]
    pub interval: Duration,
    /// All must pass.
    pub checks: Vec<Check>,
}

// ---------------------------------------------------------------- serde

/// Stores `value` in `slot`, refusing a second occurrence of `key`.
fn set_once<T, E: de::Error>(slot: &mut Option<T>, value: T, key: &str) -> Result<(), E> {
    if slot.replace(value).is_some() {
        return Err(E::custom(format_args!("duplicate field `{key}`")));
    }
    Ok(())
}

fn action_kinds() -> String {
    ActionKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
}

/// Visits a map made of named fields plus exactly one action entry; the
/// closure reads the named fields and returns `false` for keys it does not
/// know.
fn visit_with_action<'de, A, F>(mut map: A, what: &str, fields: &str, mut field: F) -> Result<Action, A::Error>
where
    A: MapAccess<'de>,
    F: FnMut(&str, &mut A) -> Result<bool, A::Error>,
{
    let mut action: Option<Action> = None;
    while let Some(key) = map.next_key::<String>()? {
        if field(&key, &mut map)? {
            continue;
        }
        match Action::next_value_named(&key, &mut map)? {
            Some(found) => {
                if let Some(first) = &action {
                    return Err(de::Error::custom(format_args!(
                        "a {what} has exactly one action, found `{}` and `{key}`",
                        first.kind()
                    )));
                }
                action = Some(found);
            }
            None => {
                let message =
                    format!("unknown field `{key}`: a {what} has {fields}, and one action among: {}", action_kinds());
                // Failing inside the value, not here, makes the error point at
                // the unknown entry (its line, and the path `steps[1].<key>`)
                // rather than at the start of the step.
                return Err(map
                    .next_value_seed(Refuse(message))
                    .err()
                    .unwrap_or_else(|| de::Error::custom("unknown field")));
            }
        }
    }
    action.ok_or_else(|| de::Error::custom(format_args!("a {what} needs an action, one of: {}", action_kinds())))
}

/// A value that is refused, whatever it is.
struct Refuse(String);

impl<'de> de::DeserializeSeed<'de> for Refuse {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        Err(de::Error::custom(self.0))
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct StepVisitor;
        impl<'de> Visitor<'de> for StepVisitor {
            type Value = Step;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a step: a mapping with `id` and one action")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Step, A::Error> {
                let (mut id, mut description, mut when) = (None, None, None);
                let (mut on_failure, mut destructive, mut requires_approval) = (None, None, None);
                let action = visit_with_action(
                    map,
                    "step",
                    "id, description, when, on_failure, destructive, requires_approval",
                    |key, map: &mut A| {
                        match key {
                            "id" => set_once(&mut id, map.next_value::<String>()?, key)?,
                            "description" => set_once(&mut description, map.next_value::<String>()?, key)?,
                            "when" => set_once(&mut when, map.next_value::<Condition>()?, key)?,
                            "on_failure" => set_once(&mut on_failure, map.next_value::<OnFailure>()?, key)?,
                            "destructive" => set_once(&mut destructive, map.next_value::<bool>()?, key)?,
                            "requires_approval" => set_once(&mut requires_approval, map.next_value::<bool>()?, key)?,
                            _ => return Ok(false),
                        }
                        Ok(true)
                    },
                )?;
                let id = id.ok_or_else(|| de::Error::missing_field("id"))?;
                Ok(Step { id, description, when, action, on_failure, destructive, requires_approval })
            }
        }
        de.deserialize_map(StepVisitor)
    }
}

impl Serialize for Step {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("id", &self.id)?;
        if let Some(d) = &self.description {
            map.serialize_entry("description", d)?;
        }
        if let Some(w) = &self.when {
            map.serialize_entry("when", w)?;
        }
        self.action.serialize_entry(&mut map)?;
        if let Some(f) = self.on_failure {
            map.serialize_entry("on_failure", &f)?;
        }
        if let Some(d) = self.destructive {
            map.serialize_entry("destructive", &d)?;
        }
        if let Some(r) = self.requires_approval {
            map.serialize_entry("requires_approval", &r)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Check {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct CheckVisitor;
        impl<'de> Visitor<'de> for CheckVisitor {
            type Value = Check;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a check: a mapping with `id` and one evidence action")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Check, A::Error> {
                let (mut id, mut description, mut expect) = (None, None, None);
                let action = visit_with_action(map, "check", "id, description, expect", |key, map: &mut A| {
                    match key {
                        "id" => set_once(&mut id, map.next_value::<String>()?, key)?,
                        "description" => set_once(&mut description, map.next_value::<String>()?, key)?,
                        "expect" => set_once(&mut expect, map.next_value::<Condition>()?, key)?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                let id = id.ok_or_else(|| de::Error::missing_field("id"))?;
                Ok(Check { id, description, action, expect })
            }
        }
        de.deserialize_map(CheckVisitor)
    }
}

impl Serialize for Check {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("id", &self.id)?;
        if let Some(d) = &self.description {
            map.serialize_entry("description", d)?;
        }
        self.action.serialize_entry(&mut map)?;
        if let Some(e) = &self.expect {
            map.serialize_entry("expect", e)?;
        }
        map.end()
    }
}
