//! Escalation policies: who is told about an incident, in what order, when,
//! and when to stop.
//!
//! A policy is a catalog file beside the runbooks:
//!
//! ```yaml
//! apiVersion: remedy.dev/v1
//! kind: EscalationPolicy
//! metadata: {id: p0-chain, title: P0 escalation chain}
//! levels:                              # in order; `after` counts from the start of the climb
//!   - {name: primary on-call, after: 0m, notify: [{schedule: primary}]}
//!   - {name: secondary on-call, after: 2m, notify: [{schedule: secondary}]}
//!   - {name: engineering manager, after: 5m, notify: [{person: em}]}
//!   - {name: CTO, after: 10m, notify: [{person: cto}]}
//!   - {name: CEO, after: 15m, notify: [{person: ceo}], customer_impacting_only: true}
//! ack_timeout: 30m                     # an acknowledgement without resolution lapses; the climb starts again
//! repeat: {times: 1, after: 15m}       # after the last level, climb again (at most `times` more passes)
//! escalate_on_mttr_risk: true          # time to recovery at risk: the next level is told at once
//! template: p0-internal                # the communication template pages are written with (optional)
//! updates: {template: customer-notification, channels: [status-page, customers], every: 30m}  # from 30m after the start
//! ```
//!
//! Targets are `{person: NAME}` (the coordinator's `people:`), `{schedule:
//! ID}` (whoever an on-call schedule names at that moment) or `{channel:
//! NAME}` (a channel itself, such as a team's Slack).
//!
//! The climb's progress lives on the incident ([`Progress`]), so it is in
//! the store: a restarted coordinator or a new leader continues where the
//! last one stopped, and nobody is told twice. [`advance`] is the whole
//! rule: given the policy, the incident and the time, it says who is due now,
//! what the timeline records and when to look again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::catalog::{self, ApiVersion, CatalogKind, Metadata};
use crate::config::{ConfigError, duration, opt_duration};
use crate::incident::{EntryKind, Incident, IncidentState, TimelineEntry};
use crate::time::Timestamp;

/// Tags that make an incident customer-impacting (levels marked
/// `customer_impacting_only` are told only about those).
pub const CUSTOMER_IMPACTING_TAGS: &[&str] = &["customer_impacting", "total_outage"];

/// Most passes a policy may repeat: a page loop that never ends teaches
/// people to mute it.
const MAX_REPEATS: u32 = 10;

/// Who is told, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscalationPolicy {
    /// The name runbooks use (`escalation.policy`).
    pub id: String,
    /// One line for humans.
    pub title: String,
    /// The levels, in order.
    pub levels: Vec<Level>,
    /// How long an acknowledgement holds the climb without a resolution.
    pub ack_timeout: Option<Duration>,
    /// Climbing again after the last level.
    pub repeat: Option<Repeat>,
    /// Tell the next level at once when time to recovery is at risk.
    pub escalate_on_mttr_risk: bool,
    /// The communication template pages are written with.
    pub template: Option<String>,
    /// Periodic updates (customers, the status page) until resolution.
    pub updates: Option<Updates>,
}

/// One level of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// Shown on the timeline (`primary on-call`).
    pub name: String,
    /// When the level is told, from the start of the climb.
    #[serde(with = "duration")]
    pub after: Duration,
    /// Who the level tells.
    pub notify: Vec<Target>,
    /// Told only about customer-impacting incidents (tagged
    /// `customer_impacting` or `total_outage`).
    #[serde(default)]
    pub customer_impacting_only: bool,
}

/// Someone or something to tell.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// A person of the coordinator's `people:`.
    Person(String),
    /// Whoever an on-call schedule names at the moment.
    Schedule(String),
    /// A channel itself.
    Channel(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Person(p) => write!(f, "person {p}"),
            Target::Schedule(s) => write!(f, "schedule {s}"),
            Target::Channel(c) => write!(f, "channel {c}"),
        }
    }
}

/// Climbing again after the last level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repeat {
    /// Passes after the first.
    pub times: u32,
    /// Wait after the last level before the next pass.
    #[serde(with = "duration")]
    pub after: Duration,
}

/// Periodic updates until the incident is resolved, and one at resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Updates {
    /// The communication template.
    pub template: String,
    /// The channels, each told every time.
    pub channels: Vec<String>,
    /// How often.
    #[serde(with = "duration")]
    pub every: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(rename = "apiVersion")]
    _api_version: ApiVersion,
    kind: CatalogKind,
    metadata: Metadata,
    levels: Vec<Level>,
    #[serde(default, with = "opt_duration")]
    ack_timeout: Option<Duration>,
    #[serde(default)]
    repeat: Option<Repeat>,
    #[serde(default = "yes")]
    escalate_on_mttr_risk: bool,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    updates: Option<Updates>,
}

fn yes() -> bool {
    true
}

/// Parses and checks a policy file. References to people, schedules,
/// channels and templates are checked by the caller, which knows them.
pub fn load_policy(source: &str, text: &str) -> Result<EscalationPolicy, ConfigError> {
    let file: PolicyFile = crate::config::parse_yaml(source, text)?;
    let err = |field: &str, message: String| Err(ConfigError::new(source, field, message));
    if let Some((field, message)) =
        catalog::header_problems(CatalogKind::EscalationPolicy, file.kind, &file.metadata).into_iter().next()
    {
        return err(field, message);
    }
    if file.levels.is_empty() {
        return err("levels", "a policy needs at least one level".into());
    }
    let mut names = BTreeSet::new();
    let mut previous = Duration::ZERO;
    for (i, level) in file.levels.iter().enumerate() {
        if level.name.trim().is_empty() || !names.insert(level.name.as_str()) {
            return err(&format!("levels[{i}].name"), format!("`{}` is empty or used twice", level.name));
        }
        if level.after < previous {
            return err(
                &format!("levels[{i}].after"),
                "levels are told in order: `after` may not be earlier than the level before".into(),
            );
        }
        previous = level.after;
        if level.notify.is_empty() {
            return err(&format!("levels[{i}].notify"), "a level must tell someone".into());
        }
    }
    if let Some(timeout) = file.ack_timeout
        && timeout < Duration::from_secs(60)
    {
        return err("ack_timeout", "must be at least 1m".into());
    }
    if let Some(repeat) = file.repeat {
        if repeat.times > MAX_REPEATS {
            return err("repeat.times", format!("at most {MAX_REPEATS}"));
        }
        if repeat.after < Duration::from_secs(60) {
            return err("repeat.after", "must be at least 1m".into());
        }
    }
    if let Some(updates) = &file.updates {
        if updates.every < Duration::from_secs(60) {
            return err("updates.every", "must be at least 1m".into());
        }
        if updates.channels.is_empty() {
            return err("updates.channels", "updates need at least one channel".into());
        }
    }
    Ok(EscalationPolicy {
        title: if file.metadata.title.is_empty() { file.metadata.id.clone() } else { file.metadata.title },
        id: file.metadata.id,
        levels: file.levels,
        ack_timeout: file.ack_timeout,
        repeat: file.repeat,
        escalate_on_mttr_risk: file.escalate_on_mttr_risk,
        template: file.template,
        updates: file.updates,
    })
}

/// How far an incident's escalation got; kept on the incident, so in the
/// store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The policy.
    pub policy: String,
    /// Why people were called (`opened`, `verification did not pass`).
    pub reason: String,
    /// When the climb first started.
    pub started_at: Timestamp,
    /// When the current pass started: level `i` is due at this plus its `after`.
    pub pass_started_at: Timestamp,
    /// Passes completed before this one.
    pub pass: u32,
    /// Levels of this pass already told: the next is `levels[told]`.
    pub told: u32,
    /// When the last level of the pass was told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_done_at: Option<Timestamp>,
    /// The acknowledgement that holds the climb: when, and by whom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_since: Option<Timestamp>,
    /// Who holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
    /// Whether the channels were told of the current hold.
    #[serde(default)]
    pub hold_told: bool,
    /// Time-to-recovery marks (`at_risk`, `breached`) already acted on.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub mttr_marks: BTreeSet<String>,
    /// Channels told so far, with what each returned to continue the
    /// conversation (a status page incident's id; empty when nothing).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<String, String>,
    /// When the next periodic update is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_update_at: Option<Timestamp>,
    /// Periodic updates sent.
    #[serde(default)]
    pub updates_sent: u32,
    /// Whether the channels were told of the resolution.
    #[serde(default)]
    pub resolution_told: bool,
    /// News for the channels already told (automation gave up: why), not
    /// yet sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub news: Option<String>,
    /// Why the last level told reached nobody: the next level is then told
    /// at once rather than when its time comes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreached: Option<String>,
    /// What each customer-facing channel last told of the incident (its
    /// public state: `investigating`, `identified`, `resolved`), so each
    /// hears each state once.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub public: BTreeMap<String, String>,
}

impl Progress {
    /// A climb under the policy named `policy`, starting at `now`.
    pub fn start(policy: &str, reason: &str, now: Timestamp) -> Progress {
        Progress {
            policy: policy.to_owned(),
            reason: reason.to_owned(),
            started_at: now,
            pass_started_at: now,
            pass: 0,
            told: 0,
            pass_done_at: None,
            held_since: None,
            held_by: None,
            hold_told: false,
            mttr_marks: BTreeSet::new(),
            channels: BTreeMap::new(),
            next_update_at: None,
            updates_sent: 0,
            resolution_told: false,
            news: None,
            unreached: None,
            public: BTreeMap::new(),
        }
    }
}

/// How long the last level's pages keep trying when nothing follows it (no
/// `repeat`): long enough to outlast a pager's short outage.
pub const LAST_LEVEL_PATIENCE: Duration = Duration::from_secs(10 * 60);

/// A level due now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Its index in the policy.
    pub level: usize,
    /// Its name.
    pub name: String,
    /// Who it tells.
    pub targets: Vec<Target>,
    /// Why now (`2m after the climb started`, `time to recovery at risk`).
    pub why: String,
    /// Until when its deliveries keep trying: when the next level is due
    /// (the next pass's start after the last level; [`LAST_LEVEL_PATIENCE`]
    /// when none follows). Never before the moment it is told.
    pub deadline: Timestamp,
}

/// Something the channels already told must now hear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowUp {
    /// A person acknowledged the incident.
    Acknowledged,
    /// The incident is resolved: the last word to every channel told.
    Resolved,
}

/// What [`advance`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Advance {
    /// The progress after this moment; commit it with `entries`.
    pub progress: Progress,
    /// Levels to tell now, in order.
    pub pages: Vec<Page>,
    /// Channels already told that must hear of an acknowledgement or the
    /// resolution.
    pub follow_up: Option<FollowUp>,
    /// News for the channels already told, to send now.
    pub news: Option<String>,
    /// Whether a periodic update is due now.
    pub update_due: bool,
    /// Timeline entries (a lapsed acknowledgement, a skipped level).
    pub entries: Vec<TimelineEntry>,
    /// The incident's new state (`escalated` again after a lapsed
    /// acknowledgement).
    pub state: Option<IncidentState>,
    /// When to look again; `None`: only when the incident changes.
    pub wake_at: Option<Timestamp>,
}

impl Advance {
    /// Whether anything is to be done or recorded.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
            && self.follow_up.is_none()
            && self.news.is_none()
            && !self.update_due
            && self.entries.is_empty()
            && self.state.is_none()
    }
}

/// Whether levels marked `customer_impacting_only` are told about `incident`.
pub fn customer_impacting(incident: &Incident) -> bool {
    incident.tags.iter().any(|t| CUSTOMER_IMPACTING_TAGS.contains(&t.as_str()))
}

/// Moves an incident's escalation to `now`: the levels that came due
/// (every one not yet told: a coordinator that was down tells late rather
/// than never, and never twice), the acknowledgement that lapsed, the
/// follow-ups owed to channels, and when to look again.
pub fn advance(policy: &EscalationPolicy, incident: &Incident, progress: &Progress, now: Timestamp) -> Advance {
    let mut out = Advance {
        progress: progress.clone(),
        pages: Vec::new(),
        follow_up: None,
        news: None,
        update_due: false,
        entries: Vec::new(),
        state: None,
        wake_at: None,
    };
    let p = &mut out.progress;
    out.news = p.news.take();
    if incident.state.is_closed() {
        if !p.resolution_told {
            p.resolution_told = true;
            // Customer-facing channels hear the resolution as their story's
            // last state (once), not as another periodic update.
            out.follow_up = Some(FollowUp::Resolved);
        }
        return out;
    }
    if let Some(since) = p.held_since {
        let lapses_at = policy.ack_timeout.map(|t| since.plus(t));
        match lapses_at {
            Some(at) if now >= at => {
                let by = p.held_by.take().unwrap_or_else(|| "someone".into());
                let waited = crate::config::format_duration(now.since(since));
                out.entries.push(entry(
                    now,
                    EntryKind::Escalated,
                    format!(
                        "acknowledgement by {by} lapsed after {waited} without a resolution; {} starts again",
                        policy.id
                    ),
                    &[("policy", &policy.id), ("by", &by)],
                ));
                p.held_since = None;
                p.hold_told = false;
                p.pass_started_at = now;
                p.told = 0;
                p.pass_done_at = None;
                out.state = Some(IncidentState::Escalated);
            }
            _ => {
                if !p.hold_told {
                    p.hold_told = true;
                    out.follow_up = Some(FollowUp::Acknowledged);
                }
                out.wake_at = lapses_at;
                schedule_update(policy, p, now, &mut out.update_due, &mut out.wake_at);
                return out;
            }
        }
    }
    let levels = &policy.levels;
    // Time to recovery at risk: the next level is told now, and the levels
    // after it keep their spacing from this moment.
    let mut forced = None;
    if policy.escalate_on_mttr_risk
        && let Some(mark) = &incident.mttr_status
        && !p.mttr_marks.contains(mark)
    {
        p.mttr_marks.insert(mark.clone());
        if (p.told as usize) < levels.len() {
            forced = Some(format!("time to recovery {}", mark.replace('_', " ")));
        }
    }
    // Nobody at the last level could be told: the next one is, at once.
    if let Some(why) = p.unreached.take()
        && forced.is_none()
        && (p.told as usize) < levels.len()
    {
        forced = Some(why);
    }
    loop {
        while let Some(level) = levels.get(p.told as usize) {
            let index = p.told as usize;
            if level.customer_impacting_only && !customer_impacting(incident) {
                p.told += 1;
                if p.pass == 0 {
                    out.entries.push(entry(
                        now,
                        EntryKind::Notified,
                        format!("{} not told: {} is not customer-impacting", level.name, incident.id),
                        &[("policy", &policy.id), ("level", &level.name)],
                    ));
                }
                continue;
            }
            let due = p.pass_started_at.plus(level.after);
            let why = if let Some(why) = forced.take() {
                // Keep the following levels' spacing from this moment.
                p.pass_started_at = Timestamp::from_millis(now.as_millis().saturating_sub(millis(level.after)));
                why
            } else if now >= due {
                format!("{} after the climb started", crate::config::format_duration(level.after))
            } else {
                out.wake_at = Some(due);
                break;
            };
            let deadline = match (levels.get(index + 1), policy.repeat) {
                (Some(next), _) => p.pass_started_at.plus(next.after),
                (None, Some(repeat)) if p.pass < repeat.times => now.plus(repeat.after),
                (None, _) => now.plus(LAST_LEVEL_PATIENCE),
            }
            .max(now);
            out.pages.push(Page {
                level: index,
                name: level.name.clone(),
                targets: level.notify.clone(),
                why,
                deadline,
            });
            p.told += 1;
        }
        if (p.told as usize) < levels.len() {
            break;
        }
        let done_at = *p.pass_done_at.get_or_insert(now);
        match policy.repeat {
            Some(repeat) if p.pass < repeat.times => {
                let next = done_at.plus(repeat.after);
                if now >= next {
                    p.pass += 1;
                    p.told = 0;
                    p.pass_started_at = now;
                    p.pass_done_at = None;
                    continue;
                }
                out.wake_at = Some(next);
            }
            _ => {}
        }
        break;
    }
    schedule_update(policy, p, now, &mut out.update_due, &mut out.wake_at);
    out
}

fn schedule_update(
    policy: &EscalationPolicy,
    p: &mut Progress,
    now: Timestamp,
    due: &mut bool,
    wake_at: &mut Option<Timestamp>,
) {
    let Some(updates) = &policy.updates else { return };
    // The first notice is the runbook's own (a `notify` step at once);
    // updates follow every interval after the climb starts.
    let next = *p.next_update_at.get_or_insert(p.started_at.plus(updates.every));
    let next = if now >= next {
        *due = true;
        p.updates_sent += 1;
        let following = now.plus(updates.every);
        p.next_update_at = Some(following);
        following
    } else {
        next
    };
    *wake_at = Some(wake_at.map_or(next, |w| w.min(next)));
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn entry(at: Timestamp, kind: EntryKind, message: String, details: &[(&str, &str)]) -> TimelineEntry {
    TimelineEntry {
        at,
        kind,
        message,
        details: details.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
    }
}

/// A person who can be told, as the coordinator's `people:` describes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// Their address, for email channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Channels to reach them through, in order: the first that delivers
    /// is enough, the next are the fallback.
    pub notify: Vec<String>,
}

/// One person (or a channel itself) to reach for a page, resolved at the
/// moment of the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// Who (`alice`, `channel slack-ops`).
    pub who: String,
    /// How it was chosen (`schedule primary`).
    pub via: String,
    /// Channels to try in order.
    pub channels: Vec<String>,
    /// Where email goes.
    pub email: Option<String>,
}

/// Resolves a level's targets at `now`: schedules name their on-call
/// person. Targets nobody can be found for come back as errors to record,
/// never silently dropped.
pub fn recipients(
    targets: &[Target],
    people: &BTreeMap<String, Person>,
    on_call: impl Fn(&str) -> Result<Option<String>, String>,
) -> (Vec<Recipient>, Vec<String>) {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let mut seen = BTreeSet::new();
    let mut person =
        |name: &str, via: String, found: &mut Vec<Recipient>, missing: &mut Vec<String>| match people.get(name) {
            Some(p) if seen.insert(name.to_owned()) => {
                found.push(Recipient { who: name.to_owned(), via, channels: p.notify.clone(), email: p.email.clone() })
            }
            Some(_) => {}
            None => missing.push(format!("{via} names {name}, who is not among the coordinator's people")),
        };
    for target in targets {
        match target {
            Target::Person(name) => person(name, target.to_string(), &mut found, &mut missing),
            Target::Schedule(id) => match on_call(id) {
                Ok(Some(name)) => person(&name, target.to_string(), &mut found, &mut missing),
                Ok(None) => missing.push(format!("nobody is on call in schedule {id}")),
                Err(e) => missing.push(e),
            },
            Target::Channel(name) => found.push(Recipient {
                who: format!("channel {name}"),
                via: target.to_string(),
                channels: vec![name.clone()],
                email: None,
            }),
        }
    }
    (found, missing)
}

pub mod looks;

#[cfg(test)]
mod tests;
