//! Communication templates: what people and customers are told about an
//! incident, written in YAML beside the runbooks.
//!
//! ```yaml
//! apiVersion: remedy.dev/v1
//! kind: CommunicationTemplate
//! metadata: {id: p0-internal, title: P0 incident communication}
//! audience: internal          # internal | customers
//! subject: "[P0 INCIDENT] SaaS IDP Platform Outage - {{INCIDENT_ID}}"
//! body: |
//!   START TIME: {{START_TIME}}
//!   CURRENT STATUS: {{STATUS}}
//!   ...
//! ```
//!
//! A template may give other words for later states of the incident's
//! public story (what a status page and customers see), each a `body` and
//! optionally a `subject`; the top-level pair is for `investigating` and
//! any state without its own:
//!
//! ```yaml
//! states:
//!   identified: {body: "We have identified the cause ..."}
//!   resolved: {subject: "Resolved: ...", body: "... has been resolved."}
//! ```
//!
//! A template for `customers` may not name what is for the people handling
//! the incident only ([`INTERNAL_ONLY`]: its id, links, runbook, actions,
//! title and summary): internal words never reach a customer channel.
//!
//! `subject` (one line) and `body` are minijinja templates rendered with
//! the same rules as runbook templates (`runbook::Renderer`): an undefined
//! variable is an error, never a blank; nothing is HTML-escaped; a template
//! that runs too long is stopped. They read the variables of
//! [`CommsContext`], and only those:
//!
//! ```text
//! INCIDENT_ID         INC-000042
//! TITLE               what raised the incident: the alert's name, or "<finding kind> on <target>"
//! SUMMARY             the incident's latest summary
//! PRIORITY            P0..P3, security; "unknown" before a runbook took the incident
//! SEVERITY            info, warning, critical
//! STATUS              Investigating, Mitigating, Escalated to people, Acknowledged, Resolved
//! START_TIME          when the condition began (the alert's startsAt, the first
//!                     finding's first_seen; else when it opened), RFC 3339 in UTC
//!                     to the second: 2026-11-26T10:00:00Z
//! DATE                the day of START_TIME, UTC: 2026-11-26
//! DURATION            how long it has lasted (until resolved, if it is): 12m 30s
//! IMPACT              the incident's latest summary (IMPACT_DESCRIPTION: the same text)
//! ETA                 opened + the runbook's MTTR target, RFC 3339; "unknown" without a target
//! NEXT_UPDATE_TIME    RFC 3339, or "at resolution" when no update is planned
//! ACTIONS             the actions that succeeded, in order, as a list
//! ACTION_1..ACTION_5  the first five of them; "none yet" where there are fewer
//! ACTIONS_TEXT        ACTIONS as "- ..." lines; "none yet" when there are none
//! RUNBOOK             the runbook handling it; "none" before one matched
//! WAR_ROOM_LINK       Links::war_room; "n/a" when unset
//! STATUS_PAGE_LINK    Links::status_page; "n/a" when unset
//! INCIDENT_LINK       Links::incident_base + "/" + INCIDENT_ID; "n/a" when unset
//! CUSTOMER_NAME       the customer addressed; "Customer" when none is named
//! ```
//!
//! Every variable is always defined, whatever stage the incident is at, so
//! a template that renders at load renders at 3 a.m.: [`load_template`]
//! refuses a template that names any other variable (on any branch, taken
//! or not), then renders it against [`CommsContext::sample`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::catalog::{self, ApiVersion, CatalogKind, Metadata};
use crate::config::{ConfigError, parse_yaml};
use crate::incident::{EntryKind, Incident, IncidentState, TimelineEntry};
use crate::runbook::locate::SourceMap;
use crate::runbook::{Renderer, TemplateError};
use crate::time::Timestamp;

/// Who a template is written for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    /// The people handling the incident, and the company around them.
    #[default]
    Internal,
    /// Customers (`customer` is read too).
    #[serde(alias = "customer")]
    Customers,
}

impl Audience {
    /// The name files use.
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Internal => "internal",
            Audience::Customers => "customers",
        }
    }
}

/// The variables a template for customers may not name: what only the
/// people handling the incident should read.
pub const INTERNAL_ONLY: &[&str] = &[
    "INCIDENT_ID",
    "INCIDENT_LINK",
    "WAR_ROOM_LINK",
    "RUNBOOK",
    "TITLE",
    "SUMMARY",
    "IMPACT",
    "ACTIONS",
    "ACTIONS_TEXT",
    "ACTION_1",
    "ACTION_2",
    "ACTION_3",
    "ACTION_4",
    "ACTION_5",
];

/// Where an incident's public story stands: what a status page and
/// customers are told, each once. Statuspage's own incident statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublicState {
    /// Open, and nobody has taken it yet (or automation alone is on it).
    Investigating,
    /// A person acknowledged it: the cause is being worked on.
    Identified,
    /// Over.
    Resolved,
}

impl PublicState {
    /// The public state of an incident in `state`.
    pub fn of(state: IncidentState) -> PublicState {
        match state {
            IncidentState::Triggered | IncidentState::Escalated | IncidentState::Mitigating => {
                PublicState::Investigating
            }
            IncidentState::Acknowledged => PublicState::Identified,
            IncidentState::Resolved => PublicState::Resolved,
        }
    }

    /// The lowercase name, as files and Statuspage write it.
    pub fn as_str(self) -> &'static str {
        match self {
            PublicState::Investigating => "investigating",
            PublicState::Identified => "identified",
            PublicState::Resolved => "resolved",
        }
    }

    /// Reads [`PublicState::as_str`]'s names.
    pub fn parse(text: &str) -> Option<PublicState> {
        [PublicState::Investigating, PublicState::Identified, PublicState::Resolved]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A communication template, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommunicationTemplate {
    /// `metadata.id`, e.g. `p0-internal`.
    pub id: String,
    /// `metadata.title`.
    pub title: String,
    /// Who it is written for.
    pub audience: Audience,
    subject: String,
    body: String,
    /// Other words for later public states: (subject, body), the subject
    /// `None` when the top-level one stands.
    states: BTreeMap<PublicState, (Option<String>, String)>,
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The subject, one line.
    pub subject: String,
    /// The body.
    pub body: String,
}

impl CommunicationTemplate {
    /// The message for `context`. The subject comes out on one line: line
    /// breaks from the values (a multi-line summary) become spaces. The
    /// body ends without the final line break of a `body: |` block, as
    /// minijinja renders it.
    pub fn render(&self, context: &CommsContext) -> Result<Rendered, TemplateError> {
        self.render_pair(&self.subject, &self.body, context)
    }

    /// The message for `context` at `state` of the public story: that
    /// state's words if the template has them, else the top-level ones.
    pub fn render_for(&self, state: PublicState, context: &CommsContext) -> Result<Rendered, TemplateError> {
        match self.states.get(&state) {
            Some((subject, body)) => self.render_pair(subject.as_deref().unwrap_or(&self.subject), body, context),
            None => self.render(context),
        }
    }

    /// Whether the template has words of its own for `state`.
    pub fn has_state(&self, state: PublicState) -> bool {
        self.states.contains_key(&state)
    }

    fn render_pair(&self, subject: &str, body: &str, context: &CommsContext) -> Result<Rendered, TemplateError> {
        let renderer = Renderer::new();
        let value = context.to_value();
        let subject = renderer.render_str(subject, &value)?;
        let body = renderer.render_str(body, &value)?;
        Ok(Rendered { subject: subject.split_whitespace().collect::<Vec<_>>().join(" "), body })
    }
}

/// Where people and customers can follow an incident; what a site
/// configures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// The war room (a chat channel or a call); `WAR_ROOM_LINK`.
    pub war_room: Option<String>,
    /// The public status page; `STATUS_PAGE_LINK`.
    pub status_page: Option<String>,
    /// Where incidents are shown, without the id: `INCIDENT_LINK` is this,
    /// `/`, and the incident's id.
    pub incident_base: Option<String>,
}

impl Links {
    /// Where the incident `id` is shown, when `incident_base` is set.
    pub fn incident(&self, id: &str) -> Option<String> {
        let base = self.incident_base.as_deref().map(str::trim).filter(|b| !b.is_empty())?;
        Some(format!("{}/{id}", base.trim_end_matches('/')))
    }
}

/// What an unset link renders as.
pub const NO_LINK: &str = "n/a";

/// What an action slot, or the list of actions, renders as before the
/// actions to fill it have happened.
pub const NO_ACTION_YET: &str = "none yet";

/// The variables every template may use, under the names templates write
/// (`INCIDENT_ID`...); see the module's documentation for each. One struct,
/// so that the sample templates are checked against and the context they
/// render from cannot disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct CommsContext {
    /// `INCIDENT_ID`: `INC-000042`.
    pub incident_id: String,
    /// `TITLE`: what raised the incident.
    pub title: String,
    /// `SUMMARY`: the incident's latest summary.
    pub summary: String,
    /// `PRIORITY`: `P0`..`P3`, `security`, or `unknown`.
    pub priority: String,
    /// `SEVERITY`: `info`, `warning`, `critical`.
    pub severity: String,
    /// `STATUS`: where the incident stands, for humans.
    pub status: String,
    /// `START_TIME`: when the condition began (see [`Incident::started`]), RFC 3339 in UTC.
    pub start_time: String,
    /// `DATE`: the day of `START_TIME`, UTC, `YYYY-MM-DD`.
    pub date: String,
    /// `DURATION`: how long it has lasted, like `12m 30s`.
    pub duration: String,
    /// `IMPACT`: what it does to users.
    pub impact: String,
    /// `IMPACT_DESCRIPTION`: the same text as `IMPACT`.
    pub impact_description: String,
    /// `ETA`: when recovery is aimed for, or `unknown`.
    pub eta: String,
    /// `NEXT_UPDATE_TIME`: when the next update comes, or `at resolution`.
    pub next_update_time: String,
    /// `ACTIONS`: the actions that succeeded, in order.
    pub actions: Vec<String>,
    /// `ACTION_1`: the first action, or `none yet`.
    pub action_1: String,
    /// `ACTION_2`: the second action, or `none yet`.
    pub action_2: String,
    /// `ACTION_3`: the third action, or `none yet`.
    pub action_3: String,
    /// `ACTION_4`: the fourth action, or `none yet`.
    pub action_4: String,
    /// `ACTION_5`: the fifth action, or `none yet`.
    pub action_5: String,
    /// `ACTIONS_TEXT`: the actions as `- ...` lines, or `none yet`.
    pub actions_text: String,
    /// `RUNBOOK`: the runbook handling it, or `none`.
    pub runbook: String,
    /// `WAR_ROOM_LINK`, or `n/a`.
    pub war_room_link: String,
    /// `STATUS_PAGE_LINK`, or `n/a`.
    pub status_page_link: String,
    /// `INCIDENT_LINK`, or `n/a`.
    pub incident_link: String,
    /// `CUSTOMER_NAME`, or `Customer`.
    pub customer_name: String,
}

impl CommsContext {
    /// A context with every variable filled as a real incident would fill
    /// it; templates are checked against it when they load.
    pub fn sample() -> CommsContext {
        use crate::finding::{ConditionKey, ConditionKind, Severity};
        let opened = Timestamp::from_millis(1_795_687_200_000); // 2026-11-26T10:00:00Z
        let incident = Incident {
            id: crate::incident::IncidentId(42),
            key: ConditionKey { kind: ConditionKind::Alert("P0_SystemDown".to_owned()), target: "alert/0".to_owned() },
            severity: Severity::Critical,
            state: IncidentState::Mitigating,
            summary: "saas-idp-api answers no health checks".to_owned(),
            opened_at: opened,
            started_at: None,
            updated_at: opened,
            resolved_at: None,
            finding_count: 1,
            active_sources: Default::default(),
            runbook: Some("P0-001".to_owned()),
            mttr_target_ms: Some(300_000),
            mttr_status: None,
            priority: Some(crate::runbook::Priority::P0),
            tags: vec!["total_outage".to_owned()],
            acknowledged_at: None,
            acknowledged_by: None,
            escalation: None,
            drill: false,
            conversations: Default::default(),
        };
        let result = |step: &str, message: &str| TimelineEntry {
            at: opened,
            kind: EntryKind::Result,
            message: format!("succeeded: {message}"),
            details: [("step".to_owned(), step.to_owned()), ("status".to_owned(), "succeeded".to_owned())].into(),
        };
        let timeline = [
            result("restart_api", "restarted deployment/saas-idp-api"),
            result("scale_api", "scaled deployment/saas-idp-api to 6 replicas"),
        ];
        let links = Links {
            war_room: Some("https://chat.example.com/incident-42".to_owned()),
            status_page: Some("https://status.example.com".to_owned()),
            incident_base: Some("https://remedy.example.com/incidents".to_owned()),
        };
        let next_update = opened.plus(Duration::from_secs(1800));
        let now = opened.plus(Duration::from_secs(250));
        CommsContext::from_incident(&incident, &timeline, &links, Some("Example Corp"), Some(next_update), now)
    }

    /// The context of `incident` at `now`.
    ///
    /// The actions are the timeline's `result` entries whose `status` is
    /// `succeeded`, in order, each as `<step>: <result message>`.
    /// `customer_name` is `None` for internal messages; `next_update` is
    /// when the next message is planned, if one is.
    pub fn from_incident(
        incident: &Incident,
        timeline: &[TimelineEntry],
        links: &Links,
        customer_name: Option<&str>,
        next_update: Option<Timestamp>,
        now: Timestamp,
    ) -> CommsContext {
        let id = incident.id.to_string();
        let end = match (incident.state, incident.resolved_at) {
            (IncidentState::Resolved, Some(at)) => at,
            _ => now,
        };
        let lasted = Duration::from_secs(end.since(incident.opened_at).as_secs());
        let title = match &incident.key.kind {
            crate::finding::ConditionKind::Alert(name) => name.clone(),
            _ => incident.key.to_string(),
        };
        let link = |l: &Option<String>| l.as_deref().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned);
        let mut context = CommsContext {
            title,
            summary: incident.summary.clone(),
            priority: incident.priority.map_or("unknown", |p| p.as_str()).to_owned(),
            severity: incident.severity.as_str().to_owned(),
            status: status_text(incident.state).to_owned(),
            start_time: rfc3339_seconds(incident.started()),
            date: utc_date(incident.started()),
            duration: humantime::format_duration(lasted).to_string(),
            impact: incident.summary.clone(),
            impact_description: incident.summary.clone(),
            eta: incident.mttr_target_ms.map_or_else(
                || "unknown".to_owned(),
                |ms| rfc3339_seconds(incident.opened_at.plus(Duration::from_millis(ms))),
            ),
            next_update_time: next_update.map_or_else(|| "at resolution".to_owned(), rfc3339_seconds),
            actions: Vec::new(),
            action_1: String::new(),
            action_2: String::new(),
            action_3: String::new(),
            action_4: String::new(),
            action_5: String::new(),
            actions_text: String::new(),
            runbook: incident.runbook.clone().unwrap_or_else(|| "none".to_owned()),
            war_room_link: link(&links.war_room).unwrap_or_else(|| NO_LINK.to_owned()),
            status_page_link: link(&links.status_page).unwrap_or_else(|| NO_LINK.to_owned()),
            incident_link: links.incident(&id).unwrap_or_else(|| NO_LINK.to_owned()),
            customer_name: customer_name.map(str::trim).filter(|n| !n.is_empty()).unwrap_or("Customer").to_owned(),
            incident_id: id,
        };
        context.set_actions(actions_taken(timeline));
        context
    }

    /// Sets `ACTIONS` and what is derived from it.
    fn set_actions(&mut self, actions: Vec<String>) {
        let slot = |i: usize| actions.get(i).cloned().unwrap_or_else(|| NO_ACTION_YET.to_owned());
        self.action_1 = slot(0);
        self.action_2 = slot(1);
        self.action_3 = slot(2);
        self.action_4 = slot(3);
        self.action_5 = slot(4);
        self.actions_text = if actions.is_empty() {
            NO_ACTION_YET.to_owned()
        } else {
            actions.iter().map(|a| format!("- {a}")).collect::<Vec<_>>().join("\n")
        };
        self.actions = actions;
    }

    /// The context as a template value.
    pub fn to_value(&self) -> minijinja::Value {
        crate::runbook::json_to_value(&serde_json::to_value(self).unwrap_or_default())
    }

    /// The names templates may use, sorted.
    pub fn names() -> BTreeSet<String> {
        match serde_json::to_value(CommsContext::sample()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => BTreeSet::new(),
        }
    }
}

/// `STATUS` for a state.
fn status_text(state: IncidentState) -> &'static str {
    match state {
        IncidentState::Triggered => "Investigating",
        IncidentState::Mitigating => "Mitigating",
        IncidentState::Escalated => "Escalated to people",
        IncidentState::Acknowledged => "Acknowledged",
        IncidentState::Resolved => "Resolved",
    }
}

/// The succeeded results of a timeline, as `<step>: <message>`.
fn actions_taken(timeline: &[TimelineEntry]) -> Vec<String> {
    timeline
        .iter()
        .filter(|e| e.kind == EntryKind::Result && e.details.get("status").is_some_and(|s| s == "succeeded"))
        .map(|e| {
            let message = e.message.strip_prefix("succeeded:").unwrap_or(&e.message).trim();
            match (e.details.get("step").map(|s| s.trim()).filter(|s| !s.is_empty()), message.is_empty()) {
                (Some(step), false) => format!("{step}: {message}"),
                (Some(step), true) => format!("{step} succeeded"),
                (None, false) => message.to_owned(),
                (None, true) => "an action succeeded".to_owned(),
            }
        })
        .collect()
}

/// RFC 3339 in UTC to the second (`2026-11-26T10:00:00Z`); Unix
/// milliseconds beyond the calendar.
fn rfc3339_seconds(t: Timestamp) -> String {
    match jiff::Timestamp::from_second(t.as_millis().div_euclid(1000)) {
        Ok(ts) => ts.to_string(),
        Err(_) => t.to_string(),
    }
}

/// The UTC day of `t`, `YYYY-MM-DD`.
fn utc_date(t: Timestamp) -> String {
    match jiff::Timestamp::from_millisecond(t.as_millis()) {
        Ok(ts) => jiff::tz::TimeZone::UTC.to_datetime(ts).date().to_string(),
        Err(_) => t.to_string(),
    }
}

// ---------------------------------------------------------------- the file

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "apiVersion")]
    _api_version: ApiVersion,
    kind: CatalogKind,
    metadata: Metadata,
    audience: Audience,
    subject: String,
    body: String,
    #[serde(default)]
    states: BTreeMap<PublicState, StateFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    #[serde(default)]
    subject: Option<String>,
    body: String,
}

/// Parses and checks one template file's text.
///
/// Refuses unknown fields, and templates that name a variable
/// [`CommsContext`] does not have (`{{ INCIDENT_IDD }}`), on any branch, or
/// that do not render against [`CommsContext::sample`] (a syntax error, an
/// attribute of nothing, a loop that runs too long). The error names the
/// field (`subject` or `body`), the variable, and the file's line. So a typo
/// fails when the template loads, not when an incident needs it.
pub fn load_template(source: &str, text: &str) -> Result<CommunicationTemplate, ConfigError> {
    let file: File = parse_yaml(source, text)?;
    let map = SourceMap::parse(text);
    // `line`: the template's own line (1-based), when known.
    let fail = |field: &str, line: Option<usize>, message: String| {
        let line = file_line(text, map.as_ref(), field, line);
        let message = match line {
            Some(line) => format!("{message} (line {line})"),
            None => message,
        };
        ConfigError::new(source, field, message)
    };
    if let Some((field, message)) =
        catalog::header_problems(CatalogKind::CommunicationTemplate, file.kind, &file.metadata).into_iter().next()
    {
        return Err(fail(field, None, message));
    }
    // (field, template text): every text the file holds.
    let mut texts: Vec<(String, &String)> =
        vec![("subject".to_owned(), &file.subject), ("body".to_owned(), &file.body)];
    for (state, words) in &file.states {
        if let Some(subject) = &words.subject {
            texts.push((format!("states.{}.subject", state.as_str()), subject));
        }
        texts.push((format!("states.{}.body", state.as_str()), &words.body));
    }
    for (field, text) in &texts {
        if field.ends_with("subject") {
            if text.trim().is_empty() {
                return Err(fail(field, None, "a message needs a subject".to_owned()));
            }
            if text.contains('\n') {
                return Err(fail(field, None, "a subject is one line".to_owned()));
            }
        } else if text.trim().is_empty() {
            return Err(fail(field, None, "a message needs a body".to_owned()));
        }
    }

    let renderer = Renderer::new();
    let names = CommsContext::names();
    let sample = CommsContext::sample().to_value();
    for (field, template) in &texts {
        let field = field.as_str();
        let used = renderer.undeclared_names(template);
        if file.audience == Audience::Customers
            && let Some(internal) = used.iter().find(|n| INTERNAL_ONLY.contains(&n.as_str()))
        {
            let message = format!(
                "`{internal}` is for the people handling the incident and may not be shown to customers \
                 (a template for customers may not name {})",
                INTERNAL_ONLY.join(", ")
            );
            return Err(fail(field, line_of_name(template, internal), message));
        }
        if let Some(unknown) = renderer.undeclared_names(template).into_iter().find(|n| !names.contains(n)) {
            let hint = match closest(&unknown, &names) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("the variables are {}", names.iter().cloned().collect::<Vec<_>>().join(", ")),
            };
            let message = format!("`{unknown}` is not a variable of communication templates; {hint}");
            return Err(fail(field, line_of_name(template, &unknown), message));
        }
        if let Err(e) = renderer.render_str(template, &sample) {
            return Err(fail(field, e.line, e.message));
        }
    }

    Ok(CommunicationTemplate {
        id: file.metadata.id,
        title: file.metadata.title,
        audience: file.audience,
        subject: file.subject,
        body: file.body,
        states: file.states.into_iter().map(|(state, words)| (state, (words.subject, words.body))).collect(),
    })
}

/// The first line (1-based) of `template` where `name` stands as a whole
/// word.
fn line_of_name(template: &str, name: &str) -> Option<usize> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    template
        .lines()
        .position(|line| {
            line.match_indices(name).any(|(at, _)| {
                let before = line[..at].chars().next_back();
                let after = line[at + name.len()..].chars().next();
                !before.is_some_and(ident) && !after.is_some_and(ident)
            })
        })
        .map(|i| i + 1)
}

/// The file's line for line `line` of the template in `field`: a block
/// scalar (`body: |`) starts on the line after its key; a quoted or plain
/// one on its key's line.
fn file_line(text: &str, map: Option<&SourceMap>, field: &str, line: Option<usize>) -> Option<u64> {
    let at = map?.locate(field)?;
    let Some(line) = line else { return Some(at.line()) };
    let key_line = text.lines().nth(usize::try_from(at.line()).ok()?.checked_sub(1)?)?;
    let value = key_line.split_once(':').map_or(key_line, |(_, v)| v);
    // `|`, `|-`, `>+2`..., perhaps with a comment after it.
    let header = value.split(" #").next().unwrap_or(value).trim();
    let block =
        header.strip_prefix(['|', '>']).is_some_and(|rest| rest.chars().all(|c| matches!(c, '-' | '+' | '1'..='9')));
    let offset = u64::try_from(line).ok()?;
    Some(if block { at.line() + offset } else { (at.line() + offset).saturating_sub(1) })
}

/// A known name close to `unknown` (a typo of it), if there is one.
fn closest(unknown: &str, names: &BTreeSet<String>) -> Option<String> {
    let upper = unknown.to_ascii_uppercase();
    names
        .iter()
        .map(|n| (edit_distance(&upper, n), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 5))
        .min()
        .map(|(_, n)| n.clone())
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::finding::{ConditionKey, ConditionKind, Severity};
    use crate::incident::IncidentId;
    use crate::runbook::Priority;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap_or_else(|| panic!("`{text}` is RFC 3339"))
    }

    fn seed(name: &str) -> CommunicationTemplate {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runbooks").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        load_template(name, &text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn incident() -> Incident {
        Incident {
            id: IncidentId(42),
            key: ConditionKey { kind: ConditionKind::Alert("P0_SystemDown".into()), target: "alert/3fa2".into() },
            severity: Severity::Critical,
            state: IncidentState::Mitigating,
            summary: "saas-idp-api answers no health checks".into(),
            opened_at: at("2026-11-26T10:00:00.250Z"),
            started_at: None,
            updated_at: at("2026-11-26T10:03:00Z"),
            resolved_at: None,
            finding_count: 3,
            active_sources: BTreeMap::new(),
            runbook: Some("P0-001".into()),
            mttr_target_ms: Some(300_000),
            mttr_status: None,
            priority: Some(Priority::P0),
            tags: vec!["total_outage".into()],
            acknowledged_at: None,
            acknowledged_by: None,
            escalation: None,
            drill: false,
            conversations: Default::default(),
        }
    }

    fn entry(kind: EntryKind, message: &str, details: &[(&str, &str)]) -> TimelineEntry {
        TimelineEntry {
            at: at("2026-11-26T10:01:00Z"),
            kind,
            message: message.into(),
            details: details.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    /// As the engine writes them: an action started, its result.
    fn timeline() -> Vec<TimelineEntry> {
        vec![
            entry(EntryKind::Opened, "opened by alertmanager", &[]),
            entry(EntryKind::Runbook, "runbook P0-001 started (live, attempt 1)", &[("mode", "live")]),
            entry(EntryKind::Action, "scale deployment/saas-idp-api started", &[("step", "scale_api")]),
            entry(
                EntryKind::Result,
                "succeeded: scaled deployment/saas-idp-api from 3 to 6 replicas",
                &[("step", "scale_api"), ("status", "succeeded"), ("key", "k1")],
            ),
            entry(
                EntryKind::Result,
                "failed: circuit breaker reset answered 503",
                &[("step", "reset_breakers"), ("status", "failed")],
            ),
            entry(
                EntryKind::Result,
                "dry_run: would have run pg_failover",
                &[("step", "failover"), ("status", "dry_run")],
            ),
            entry(EntryKind::Result, "step x (k9) already ran; not run again", &[("step", "x")]),
            entry(EntryKind::Result, "succeeded: ", &[("step", "clear_failed_pods"), ("status", "succeeded")]),
        ]
    }

    fn links() -> Links {
        Links {
            war_room: Some("https://chat.example.com/inc-42".into()),
            status_page: Some("https://status.example.com".into()),
            incident_base: Some("https://remedy.example.com/incidents/".into()),
        }
    }

    fn context(timeline: &[TimelineEntry]) -> CommsContext {
        CommsContext::from_incident(
            &incident(),
            timeline,
            &links(),
            Some("Example Corp"),
            Some(at("2026-11-26T10:30:00Z")),
            at("2026-11-26T10:04:10.900Z"),
        )
    }

    #[test]
    fn the_context_comes_from_the_incident_and_its_succeeded_results() {
        let c = context(&timeline());
        assert_eq!(c.incident_id, "INC-000042");
        assert_eq!(c.title, "P0_SystemDown");
        assert_eq!(c.priority, "P0");
        assert_eq!(c.severity, "critical");
        assert_eq!(c.status, "Mitigating");
        assert_eq!(c.start_time, "2026-11-26T10:00:00Z");
        assert_eq!(c.date, "2026-11-26");
        assert_eq!(c.duration, "4m 10s");
        assert_eq!(c.impact, "saas-idp-api answers no health checks");
        assert_eq!(c.impact_description, c.impact);
        assert_eq!(c.eta, "2026-11-26T10:05:00Z");
        assert_eq!(c.next_update_time, "2026-11-26T10:30:00Z");
        assert_eq!(
            c.actions,
            ["scale_api: scaled deployment/saas-idp-api from 3 to 6 replicas", "clear_failed_pods succeeded"]
        );
        assert_eq!(c.action_1, c.actions[0]);
        assert_eq!(c.action_2, c.actions[1]);
        assert_eq!(c.action_3, "none yet");
        assert_eq!(c.action_5, "none yet");
        assert_eq!(
            c.actions_text,
            "- scale_api: scaled deployment/saas-idp-api from 3 to 6 replicas\n- clear_failed_pods succeeded"
        );
        assert_eq!(c.runbook, "P0-001");
        assert_eq!(c.war_room_link, "https://chat.example.com/inc-42");
        assert_eq!(c.incident_link, "https://remedy.example.com/incidents/INC-000042");
        assert_eq!(c.customer_name, "Example Corp");
    }

    #[test]
    fn what_is_not_known_yet_still_has_a_value() {
        let mut early = incident();
        early.state = IncidentState::Triggered;
        early.runbook = None;
        early.priority = None;
        early.mttr_target_ms = None;
        early.key = ConditionKey {
            kind: ConditionKind::Finding(crate::FindingKind::HighErrorRate),
            target: "deployment/saas-idp-api".into(),
        };
        let c = CommsContext::from_incident(&early, &[], &Links::default(), None, None, early.opened_at);
        assert_eq!(c.status, "Investigating");
        assert_eq!(c.title, "high_error_rate on deployment/saas-idp-api");
        assert_eq!(c.priority, "unknown");
        assert_eq!(c.eta, "unknown");
        assert_eq!(c.next_update_time, "at resolution");
        assert_eq!(c.duration, "0s");
        assert_eq!(c.runbook, "none");
        assert!(c.actions.is_empty());
        assert_eq!([&c.action_1, &c.action_2, &c.action_5], ["none yet"; 3]);
        assert_eq!(c.actions_text, "none yet");
        assert_eq!([&c.war_room_link, &c.status_page_link, &c.incident_link], ["n/a"; 3]);
        assert_eq!(c.customer_name, "Customer");
    }

    #[test]
    fn each_state_has_its_status_and_a_resolved_incident_stops_its_clock() {
        let cases = [
            (IncidentState::Triggered, "Investigating"),
            (IncidentState::Mitigating, "Mitigating"),
            (IncidentState::Escalated, "Escalated to people"),
            (IncidentState::Acknowledged, "Acknowledged"),
            (IncidentState::Resolved, "Resolved"),
        ];
        for (state, text) in cases {
            let mut i = incident();
            i.state = state;
            i.resolved_at = (state == IncidentState::Resolved).then(|| at("2026-11-26T10:03:00Z"));
            let c = CommsContext::from_incident(&i, &[], &links(), None, None, at("2026-11-26T12:00:00Z"));
            assert_eq!(c.status, text);
            let expected = if state == IncidentState::Resolved { "2m 59s" } else { "1h 59m 59s" };
            assert_eq!(c.duration, expected, "{state:?}");
        }
    }

    #[test]
    fn the_seed_p0_communication_renders_from_a_real_incident() {
        let t = seed("comms-p0-internal.yaml");
        assert_eq!((t.id.as_str(), t.audience), ("p0-internal", Audience::Internal));
        let out = t.render(&context(&timeline())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.subject, "[P0 INCIDENT] SaaS IDP Platform Outage - INC-000042");
        for expected in [
            "START TIME: 2026-11-26T10:00:00Z\n",
            "ESTIMATED RESOLUTION: 2026-11-26T10:05:00Z\n",
            "CURRENT STATUS: Mitigating\n",
            "ACTIONS TAKEN:\n- scale_api: scaled deployment/saas-idp-api from 3 to 6 replicas\n- clear_failed_pods succeeded\n",
            "NEXT UPDATE: 2026-11-26T10:30:00Z\n",
            "War Room: https://chat.example.com/inc-42\n",
            "Status Page: https://status.example.com",
        ] {
            assert!(out.body.contains(expected), "{expected:?} not in:\n{}", out.body);
        }
        assert!(!out.body.contains("{{"), "{}", out.body);
        assert!(
            !out.body.contains("reset_breakers") && !out.body.contains("failover"),
            "only what succeeded: {}",
            out.body
        );
    }

    #[test]
    fn the_seed_customer_notification_renders_from_a_real_incident() {
        let t = seed("comms-customer-notification.yaml");
        assert_eq!((t.id.as_str(), t.audience), ("customer-notification", Audience::Customers));
        let out = t.render(&context(&timeline())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.subject, "Service Disruption - SaaS IDP Platform");
        assert!(out.body.starts_with("Dear Example Corp,\n"), "{}", out.body);
        for expected in [
            "IMPACT: saas-idp-api answers no health checks\n",
            "START TIME: 2026-11-26T10:00:00Z\n",
            "CURRENT STATUS: Mitigating\n",
            "Latest updates: https://status.example.com\n",
            "Best regards,\nSaaS IDP Operations Team",
        ] {
            assert!(out.body.contains(expected), "{expected:?} not in:\n{}", out.body);
        }
        // Nothing internal reaches customers.
        assert!(!out.body.contains("INC-000042") && !out.body.contains("scale_api"), "{}", out.body);
    }

    #[test]
    fn the_seed_customer_notification_has_words_for_each_state_of_the_public_story() {
        let t = seed("comms-customer-notification.yaml");
        let c = context(&timeline());
        let said = |state| t.render_for(state, &c).unwrap_or_else(|e| panic!("{e}"));
        let investigating = said(PublicState::Investigating);
        assert_eq!(investigating, t.render(&c).expect("renders"), "the top-level words are the first state's");
        let identified = said(PublicState::Identified);
        assert!(identified.subject.ends_with("cause identified"), "{}", identified.subject);
        let resolved = said(PublicState::Resolved);
        assert_eq!(resolved.subject, "Resolved: Service Disruption - SaaS IDP Platform");
        assert!(resolved.body.contains(&format!("has been resolved after {}.", c.duration)), "{}", resolved.body);
        assert!(!resolved.body.contains("currently experiencing"), "a resolution says it is over: {}", resolved.body);
        for words in [&investigating, &identified, &resolved] {
            assert!(!words.body.contains("INC-000042") && !words.subject.contains("INC-"), "{words:?}");
        }
    }

    #[test]
    fn a_template_for_customers_may_not_name_what_is_internal() {
        let customers = "subject: Outage\n";
        let refused = |rest: &str| {
            let text = HEADER.replace("audience: internal", "audience: customers");
            load_template("t.yaml", &format!("{text}{rest}")).expect_err(rest)
        };
        for (body, field) in [
            ("body: 'Incident {{INCIDENT_ID}}'", "body"),
            ("body: ok\nstates: {resolved: {body: 'done: {{ACTIONS_TEXT}}'}}", "states.resolved.body"),
            ("body: ok\nstates: {identified: {subject: '{{SUMMARY}}', body: x}}", "states.identified.subject"),
        ] {
            let e = refused(&format!("{customers}{body}\n"));
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains("may not be shown to customers"), "{e}");
        }
        // The same words are fine for the people handling the incident.
        assert!(template("subject: Outage\nbody: 'Incident {{INCIDENT_ID}}'\n").is_ok());
        // A state that is not one of the story's is refused.
        let e = refused("subject: s\nbody: b\nstates: {monitoring: {body: x}}\n");
        assert!(e.field.starts_with("states") && e.message.contains("unknown variant `monitoring`"), "{e}");
    }

    #[test]
    fn a_template_rendered_before_any_action_still_renders() {
        let t = seed("comms-p0-internal.yaml");
        let no_success: Vec<TimelineEntry> =
            timeline().into_iter().filter(|e| e.details.get("status").is_none_or(|s| s != "succeeded")).collect();
        assert_eq!(no_success.len(), 6);
        let out = t.render(&context(&no_success)).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.body.contains("ACTIONS TAKEN:\n- none yet\n- none yet\n"), "{}", out.body);
        let bare = CommsContext::from_incident(&incident(), &[], &Links::default(), None, None, incident().opened_at);
        let out = seed("comms-customer-notification.yaml").render(&bare).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.body.starts_with("Dear Customer,\n") && out.body.contains("Latest updates: n/a\n\nBest regards,"),
            "{}",
            out.body
        );
    }

    const HEADER: &str =
        "apiVersion: remedy.dev/v1\nkind: CommunicationTemplate\nmetadata: {id: t, title: T}\naudience: internal\n";

    fn template(rest: &str) -> Result<CommunicationTemplate, ConfigError> {
        load_template("t.yaml", &format!("{HEADER}{rest}"))
    }

    fn refused(rest: &str) -> ConfigError {
        match template(rest) {
            Ok(t) => panic!("accepted: {t:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn an_unknown_variable_is_refused_at_load_naming_it_its_field_and_line() {
        let err = refused("subject: \"[P0] {{INCIDENT_IDD}}\"\nbody: \"{{ STATUS }}\"\n");
        assert_eq!((err.file.as_str(), err.field.as_str()), ("t.yaml", "subject"));
        assert!(err.message.contains("`INCIDENT_IDD` is not a variable"), "{err}");
        assert!(err.message.contains("did you mean `INCIDENT_ID`?"), "{err}");
        assert!(err.message.ends_with("(line 5)"), "{err}");

        let err = refused(
            "subject: s\nbody: |\n  START: {{ START_TIME }}\n  STATUS: {{ STATUS }}\n  ETA: {{ ETA }} {{ eta }}\n",
        );
        assert_eq!(err.field, "body");
        assert!(err.message.contains("`eta` is not a variable") && err.message.contains("`ETA`"), "{err}");
        assert!(err.message.ends_with("(line 9)"), "the file's line: {err}");

        let err = refused("subject: s\nbody: |-  # the message\n  START: {{ START_TIME }}\n  {{ STAUTS }}\n");
        assert!(err.message.contains("`STAUTS`") && err.message.contains("`STATUS`"), "{err}");
        assert!(err.message.ends_with("(line 8)"), "{err}");

        // On a branch the sample never takes, too.
        let err = refused("subject: s\nbody: |\n  {% if ACTIONS | length > 5 %}\n  {{ ACTION_6 }}\n  {% endif %}\n");
        assert!(err.message.contains("`ACTION_6`"), "{err}");
        assert!(err.message.ends_with("(line 8)"), "{err}");

        let err = refused("subject: s\nbody: \"{{ WHATEVER }}\"\n");
        assert!(err.message.contains("the variables are ACTIONS, ACTIONS_TEXT, ACTION_1"), "{err}");
    }

    #[test]
    fn what_renders_wrong_against_the_sample_is_refused_at_load() {
        let err = refused("subject: s\nbody: |\n  fine\n  {{ STATUS.nope.deeper }}\n");
        assert_eq!(err.field, "body");
        assert!(err.message.ends_with("(line 8)"), "{err}");
        let err = refused("subject: s\nbody: |\n  {{ STATUS\n");
        assert!(err.message.contains("syntax error"), "{err}");
        // Names set in the template itself, loop variables and the
        // renderer's functions are fine.
        let ok = template(
            "subject: s\nbody: |\n  {% set n = ACTIONS | length %}{{ n }}\n  {% for a in ACTIONS %}{{ loop.index }}. {{ a }}\n  {% endfor %}{{ range(2) | list }}\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn an_unknown_field_or_a_bad_header_is_refused() {
        let err = refused("subject: s\nbody: b\nfooter: f\n");
        assert_eq!(err.field, "footer");
        assert!(err.message.contains("unknown field"), "{err}");
        let err = load_template("t.yaml", &format!("{}subject: s\nbody: b\n", HEADER.replace("internal", "everyone")))
            .unwrap_err();
        assert_eq!(err.field, "audience");
        let err = load_template(
            "t.yaml",
            &format!("{}subject: s\nbody: b\n", HEADER.replace("CommunicationTemplate", "Runbook")),
        )
        .unwrap_err();
        assert_eq!(err.field, "kind");
        let err = refused("subject: \"\"\nbody: b\n");
        assert_eq!(err.field, "subject");
        let err = refused("subject: |\n  two\n  lines\nbody: b\n");
        assert!(err.field == "subject" && err.message.contains("one line"), "{err}");
        let err = refused("subject: s\nbody: \" \"\n");
        assert_eq!(err.field, "body");
        let err = refused("body: b\n");
        assert!(err.message.contains("subject"), "{err}");
    }

    #[test]
    fn a_template_that_loops_without_end_is_stopped_by_fuel_not_hung() {
        let forever = "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}";
        let err = refused(&format!("subject: s\nbody: \"{forever}\"\n"));
        assert!(err.message.contains("runs more than"), "{err}");
        // Looping only when there are no actions: loads (the sample has
        // some), and then stops with an error instead of hanging.
        let t = template(&format!("subject: s\nbody: \"{{% if not ACTIONS %}}{forever}{{% endif %}}ok\"\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.render(&CommsContext::sample()).map(|r| r.body).as_deref(), Ok("ok"));
        let early = CommsContext::from_incident(&incident(), &[], &links(), None, None, incident().opened_at);
        let err = t.render(&early).unwrap_err();
        assert!(err.message.contains("runs more than"), "{err}");
    }

    #[test]
    fn the_subject_stays_on_one_line_whatever_the_values_hold() {
        let t = template("subject: \"{{ INCIDENT_ID }}: {{ SUMMARY }}\"\nbody: \"{{ SUMMARY }}\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut c = CommsContext::sample();
        c.summary = "api down\n  db slow".into();
        let out = t.render(&c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.subject, "INC-000042: api down db slow");
        assert_eq!(out.body, "api down\n  db slow");
    }

    #[test]
    fn the_names_are_the_context_fields_in_upper_case() {
        let names = CommsContext::names();
        for name in
            ["INCIDENT_ID", "START_TIME", "ETA", "STATUS", "ACTION_1", "ACTION_2", "ACTION_5", "NEXT_UPDATE_TIME"]
        {
            assert!(names.contains(name), "{name}");
        }
        for name in ["WAR_ROOM_LINK", "STATUS_PAGE_LINK", "CUSTOMER_NAME", "IMPACT_DESCRIPTION", "ACTIONS_TEXT"] {
            assert!(names.contains(name), "{name}");
        }
        assert_eq!(names.len(), 25);
        assert_eq!(closest("STATSU", &names).as_deref(), Some("STATUS"));
        assert_eq!(closest("incident_id", &names).as_deref(), Some("INCIDENT_ID"));
        assert_eq!(closest("FOO", &names), None);
    }
}
