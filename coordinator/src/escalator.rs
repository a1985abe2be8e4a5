//! The escalator: tells people about incidents, level by level, as the
//! incident's escalation policy says, until someone acknowledges or the
//! incident resolves; keeps customers and the status page updated; and
//! tells every channel it paged when the incident is acknowledged or over.
//!
//! The rule is pure (`remedy_shared::escalation::advance`); this task reads
//! the incident as committed, delivers through the channels and commits
//! the progress with what happened. Progress is on the incident, so in the
//! store: after a restart or a leader change the climb continues where it
//! stopped. A level is recorded as told once its deliveries were tried,
//! failed or not: a channel that fails falls back to the person's next
//! channel and is on the timeline, but never holds the climb. A crash
//! between a delivery and its commit repeats that one level on restart
//! (PagerDuty's dedup key folds the repeat into the same incident); a
//! page is never lost for fear of a duplicate. Incidents that come due at
//! the same moment are handled together, so a slow channel for one does
//! not hold up another's pages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use remedy_shared::Timestamp;
use remedy_shared::comms::{CommsContext, CommunicationTemplate, Links};
use remedy_shared::escalation::{self, Advance, EscalationPolicy, FollowUp, Page, Person, Progress};
use remedy_shared::incident::{EntryKind, Incident, IncidentId, IncidentState, TimelineEntry};
use remedy_shared::oncall::Schedule;
use tokio::sync::broadcast;

use crate::channels::{Channels, Delivery, Event, Message, StatusUpdate};
pub use crate::clock::{Clock, ManualClock};
use crate::metrics::Metrics;
use crate::recorder::{EscalationUpdate, Recorder};
use crate::store::Store;

/// Who can be told and how: the catalog's policies, schedules and
/// templates, and the coordinator's people and links.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// Escalation policies by id.
    pub policies: BTreeMap<String, EscalationPolicy>,
    /// On-call schedules by id.
    pub schedules: BTreeMap<String, Schedule>,
    /// Communication templates by id.
    pub templates: BTreeMap<String, CommunicationTemplate>,
    /// People by name.
    pub people: BTreeMap<String, Person>,
    /// Links templates show (war room, status page, incident pages).
    pub links: Links,
}

/// What of an incident moves its escalation.
#[derive(Debug, PartialEq)]
struct Relevant {
    state: IncidentState,
    mttr_status: Option<String>,
    tags: Vec<String>,
    progress: Option<Progress>,
}

impl Relevant {
    fn of(incident: &Incident) -> Relevant {
        Relevant {
            state: incident.state,
            mttr_status: incident.mttr_status.clone(),
            tags: incident.tags.clone(),
            progress: incident.escalation.clone(),
        }
    }

    /// Nothing more will happen: the resolution was told.
    fn done(&self) -> bool {
        self.progress.as_ref().is_some_and(|p| p.resolution_told)
    }
}

/// The task; see the module documentation.
#[derive(Clone)]
pub struct Escalator {
    recorder: Recorder,
    store: Arc<dyn Store>,
    channels: Channels,
    directory: Arc<Directory>,
    clock: Clock,
    metrics: Metrics,
}

impl std::fmt::Debug for Escalator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Escalator").finish_non_exhaustive()
    }
}

/// Incidents the escalator looks at when it starts: open ones and the
/// recently resolved whose channels may not have heard of the resolution.
const STARTUP_SCAN: usize = 1_000;

/// The wake-up for a scan that failed (no incident has id 0).
const RESCAN: IncidentId = IncidentId(0);

impl Escalator {
    /// An escalator over the committed incidents of `store`.
    pub fn new(
        recorder: Recorder,
        store: Arc<dyn Store>,
        channels: Channels,
        directory: Arc<Directory>,
        clock: Clock,
        metrics: Metrics,
    ) -> Escalator {
        Escalator { recorder, store, channels, directory, clock, metrics }
    }

    /// Runs until `stopped` completes.
    pub async fn run(self, stopped: impl Future<Output = ()>) {
        tokio::pin!(stopped);
        let mut events = self.recorder.subscribe();
        let mut wake: BTreeMap<IncidentId, Timestamp> = BTreeMap::new();
        // What each escalating incident looked like at its last change that
        // mattered here: findings joining an incident change it many times
        // a second, and none of that moves its escalation.
        let mut seen: BTreeMap<IncidentId, Relevant> = BTreeMap::new();
        self.rescan(&mut wake).await;
        loop {
            let next = wake.values().min().copied();
            tokio::select! {
                () = &mut stopped => return,
                event = events.recv() => match event {
                    Ok(incident) if incident.escalation.is_some() => {
                        let relevant = Relevant::of(&incident);
                        if seen.get(&incident.id) != Some(&relevant) {
                            if relevant.done() {
                                seen.remove(&incident.id);
                            } else {
                                seen.insert(incident.id, relevant);
                            }
                            self.look_at(incident.id, &mut wake).await;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "the escalator fell behind the incident changes; looking at every incident again");
                        self.rescan(&mut wake).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = self.clock.sleep_until(next) => {
                    let now = self.clock.now();
                    let due: Vec<IncidentId> = wake.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect();
                    if due.contains(&RESCAN) {
                        self.rescan(&mut wake).await;
                    }
                    let due = due.into_iter().filter(|id| *id != RESCAN).collect();
                    self.look_at_all(due, &mut wake).await;
                }
            }
        }
    }

    async fn rescan(&self, wake: &mut BTreeMap<IncidentId, Timestamp>) {
        let incidents = match self.store.list_incidents(true, STARTUP_SCAN) {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(error = %e, "the escalator cannot list incidents; retrying in 5s");
                wake.insert(RESCAN, self.clock.now().plus(Duration::from_secs(5)));
                return;
            }
        };
        wake.remove(&RESCAN);
        let pending = incidents
            .iter()
            .filter(|i| i.escalation.as_ref().is_some_and(|p| !p.resolution_told))
            .map(|i| i.id)
            .collect();
        self.look_at_all(pending, wake).await;
    }

    /// Moves one incident's escalation to now, reading it as committed (an
    /// event may be older than what this task itself just wrote).
    async fn look_at(&self, id: IncidentId, wake: &mut BTreeMap<IncidentId, Timestamp>) {
        self.look_at_all(vec![id], wake).await;
    }

    /// Looks at several incidents at once: a channel that is slow for one
    /// incident's people does not hold up another's.
    async fn look_at_all(&self, ids: Vec<IncidentId>, wake: &mut BTreeMap<IncidentId, Timestamp>) {
        for id in &ids {
            wake.remove(id);
        }
        let next = futures::future::join_all(ids.iter().map(|id| self.advance_one(*id))).await;
        for (id, at) in ids.into_iter().zip(next) {
            if let Some(at) = at {
                wake.insert(id, at);
            }
        }
    }

    /// Moves one incident's escalation to now; when to look at it again.
    async fn advance_one(&self, id: IncidentId) -> Option<Timestamp> {
        let retry = || Some(self.clock.now().plus(Duration::from_secs(5)));
        let (incident, timeline) = match self.store.get_incident(id) {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(incident = %id, error = %e, "cannot read the incident; trying again in 5s");
                return retry();
            }
        };
        let progress = incident.escalation.clone()?;
        let Some(policy) = self.directory.policies.get(&progress.policy) else {
            tracing::error!(incident = %id, policy = %progress.policy, "the escalation policy is not in the catalog; nobody is told");
            return None;
        };
        let now = self.clock.now();
        let advance = escalation::advance(policy, &incident, &progress, now);
        let wake_at = advance.wake_at;
        if advance.is_empty() && advance.progress == progress {
            return wake_at;
        }
        let update = self.carry_out(policy, &incident, &timeline, advance, now).await;
        if let Err(e) = self.recorder.escalation_update(update).await {
            // Told but not recorded: looked at again shortly, when the
            // store may take it. The deliveries may then repeat.
            tracing::error!(incident = %id, error = %e, "cannot record the escalation's progress");
            return retry();
        }
        wake_at
    }

    async fn carry_out(
        &self,
        policy: &EscalationPolicy,
        incident: &Incident,
        timeline: &[TimelineEntry],
        advance: Advance,
        now: Timestamp,
    ) -> EscalationUpdate {
        let seen_hold = incident.escalation.as_ref().and_then(|p| p.held_since);
        let seen_news = incident.escalation.as_ref().and_then(|p| p.news.clone());
        let Advance { mut progress, pages, follow_up, news, update_due, mut entries, state, wake_at: _ } = advance;
        if let Some(news) = news {
            self.tell_news(incident, &news, &mut progress, &mut entries, now).await;
        }
        for page in &pages {
            self.page(policy, incident, timeline, page, &mut progress, &mut entries, now).await;
        }
        if let Some(follow_up) = follow_up {
            self.follow_up(incident, follow_up, &mut progress, &mut entries, now).await;
        }
        if update_due && let Some(updates) = &policy.updates {
            self.update(incident, timeline, updates, &mut progress, &mut entries, now).await;
        }
        EscalationUpdate { id: incident.id, seen_hold, seen_news, progress, entries, state }
    }

    #[allow(clippy::too_many_arguments)] // one page's whole context; a struct would only rename it
    async fn page(
        &self,
        policy: &EscalationPolicy,
        incident: &Incident,
        timeline: &[TimelineEntry],
        page: &Page,
        progress: &mut Progress,
        entries: &mut Vec<TimelineEntry>,
        now: Timestamp,
    ) {
        let directory = &self.directory;
        let (recipients, missing) =
            escalation::recipients(&page.targets, &directory.people, |id| match directory.schedules.get(id) {
                Some(schedule) => Ok(schedule.on_call(now)),
                None => Err(format!("schedule {id} is not in the catalog")),
            });
        let details = |extra: &[(&str, &str)]| {
            let mut d =
                BTreeMap::from([("policy".to_owned(), policy.id.clone()), ("level".to_owned(), page.name.clone())]);
            d.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
            d
        };
        for why in &missing {
            entries.push(entry(now, format!("{}: {why}; nobody was told through it", page.name), details(&[])));
        }
        if recipients.is_empty() {
            entries.push(entry(
                now,
                format!("{} ({}): nobody could be told", page.name, page.why),
                details(&[("outcome", "nobody")]),
            ));
            return;
        }
        let (title, body) = self.written(policy.template.as_deref(), incident, timeline, progress, now);
        for recipient in recipients {
            let message = Message {
                email_to: recipient.email.iter().cloned().collect(),
                ..self.message(incident, Event::Trigger, &title, &body, None)
            };
            let deliveries = self.channels.send_first(&recipient.channels, &message).await;
            let told = self.record(&deliveries, progress);
            let who = &recipient.who;
            let how = describe(&deliveries);
            let (message, outcome) = match &told {
                Some(channel) => (format!("told {who} ({}, {}) through {channel}: {how}", page.name, page.why), "told"),
                None if recipient.channels.is_empty() => {
                    (format!("{who} has no channels to be told through"), "failed")
                }
                None => (format!("could not tell {who} ({}): {how}", page.name), "failed"),
            };
            entries.push(entry(now, message, details(&[("who", who), ("via", &recipient.via), ("outcome", outcome)])));
        }
    }

    /// Tells every channel already told that automation gave up, and why.
    async fn tell_news(
        &self,
        incident: &Incident,
        news: &str,
        progress: &mut Progress,
        entries: &mut Vec<TimelineEntry>,
        now: Timestamp,
    ) {
        let title = format!("{} needs people: {news}", incident.id);
        self.tell_told(incident, Event::Update, &title, "told that automation gave up", progress, entries, now).await;
    }

    async fn follow_up(
        &self,
        incident: &Incident,
        follow_up: FollowUp,
        progress: &mut Progress,
        entries: &mut Vec<TimelineEntry>,
        now: Timestamp,
    ) {
        let (event, what) = match follow_up {
            FollowUp::Acknowledged => {
                let by = progress.held_by.clone().unwrap_or_else(|| "someone".into());
                (Event::Acknowledge, format!("acknowledged by {by}"))
            }
            FollowUp::Resolved => (Event::Resolve, "resolved".to_owned()),
        };
        let title = format!("{} {what}", incident.id);
        let phrase = format!("told the incident is {what}");
        self.tell_told(incident, event, &title, &phrase, progress, entries, now).await;
    }

    /// Sends `title` to every channel told so far (continuing each one's
    /// conversation), recording each delivery as `<channel> <phrase>: ...`.
    #[allow(clippy::too_many_arguments)] // the message, and where its outcome is kept
    async fn tell_told(
        &self,
        incident: &Incident,
        event: Event,
        title: &str,
        phrase: &str,
        progress: &mut Progress,
        entries: &mut Vec<TimelineEntry>,
        now: Timestamp,
    ) {
        let channels: Vec<(String, String)> = progress.channels.clone().into_iter().collect();
        for (channel, reference) in channels {
            let reference = (!reference.is_empty()).then_some(reference);
            let message = self.message(incident, event, title, title, reference);
            let delivery = self.channels.send(&channel, &message).await;
            self.record(std::slice::from_ref(&delivery), progress);
            entries.push(entry(
                now,
                format!("{channel} {phrase}: {}", describe(std::slice::from_ref(&delivery))),
                outcome_details(&[("channel", &channel)], delivery.ok),
            ));
        }
    }

    async fn update(
        &self,
        incident: &Incident,
        timeline: &[TimelineEntry],
        updates: &escalation::Updates,
        progress: &mut Progress,
        entries: &mut Vec<TimelineEntry>,
        now: Timestamp,
    ) {
        let (title, body) = self.written(Some(&updates.template), incident, timeline, progress, now);
        let over = incident.state.is_closed();
        let status = StatusUpdate {
            component_status: if over { "operational" } else { "major_outage" }.to_owned(),
            incident_status: match incident.state {
                IncidentState::Resolved => "resolved",
                IncidentState::Mitigating | IncidentState::Acknowledged => "identified",
                IncidentState::Triggered | IncidentState::Escalated => "investigating",
            }
            .to_owned(),
        };
        let event = if over { Event::Resolve } else { Event::Update };
        for channel in &updates.channels {
            let reference = progress.channels.get(channel).filter(|r| !r.is_empty()).cloned();
            let message =
                Message { status: Some(status.clone()), ..self.message(incident, event, &title, &body, reference) };
            let delivery = self.channels.send(channel, &message).await;
            self.record(std::slice::from_ref(&delivery), progress);
            entries.push(entry(
                now,
                format!(
                    "update {} sent through {channel}: {}",
                    updates.template,
                    describe(std::slice::from_ref(&delivery))
                ),
                outcome_details(&[("channel", channel), ("template", &updates.template)], delivery.ok),
            ));
        }
    }

    /// A message's subject and body: from the template, or plain words
    /// when there is none (or it fails: a page goes out regardless).
    fn written(
        &self,
        template: Option<&str>,
        incident: &Incident,
        timeline: &[TimelineEntry],
        progress: &Progress,
        now: Timestamp,
    ) -> (String, String) {
        let plain = || {
            let priority = incident.priority.map(|p| format!("[{p}] ")).unwrap_or_default();
            let runbook = incident.runbook.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            (
                format!("{priority}{} {}{runbook}", incident.id, incident.summary),
                format!(
                    "{} {}: {}\nstate: {}\nopened: {}\n",
                    incident.id,
                    incident.summary,
                    progress.reason,
                    incident.state.as_str(),
                    incident.opened_at
                ),
            )
        };
        let Some(id) = template else { return plain() };
        let Some(template) = self.directory.templates.get(id) else {
            tracing::error!(template = id, "the communication template is not in the catalog; writing plainly");
            return plain();
        };
        let next_update = progress.next_update_at;
        let context = CommsContext::from_incident(incident, timeline, &self.directory.links, None, next_update, now);
        match template.render(&context) {
            Ok(rendered) => (rendered.subject, rendered.body),
            Err(e) => {
                tracing::error!(template = id, error = %e, "the communication template failed; writing plainly");
                plain()
            }
        }
    }

    fn message(
        &self,
        incident: &Incident,
        event: Event,
        title: &str,
        body: &str,
        reference: Option<String>,
    ) -> Message {
        let id = incident.id.to_string();
        let links = self.directory.links.incident(&id).map(|l| ("incident".to_owned(), l)).into_iter().collect();
        Message { reference, links, ..Message::new(id, event, incident.severity.as_str(), title, body) }
    }

    /// Keeps what the channels returned and counts the deliveries; the
    /// channel that delivered, if one did.
    fn record(&self, deliveries: &[Delivery], progress: &mut Progress) -> Option<String> {
        let mut told = None;
        for d in deliveries {
            let outcome = if d.ok {
                "delivered"
            } else if d.skipped_by_breaker {
                "breaker_open"
            } else {
                "failed"
            };
            self.metrics
                .notifications
                .get_or_create(&crate::metrics::NotificationLabels {
                    channel: d.channel.clone(),
                    outcome: outcome.to_owned(),
                })
                .inc();
            if d.ok {
                let reference = d.reference.clone().or_else(|| progress.channels.get(&d.channel).cloned());
                progress.channels.insert(d.channel.clone(), reference.unwrap_or_default());
                told.get_or_insert_with(|| d.channel.clone());
            }
        }
        told
    }
}

/// The deliveries in one line: `pager: HTTP 202 (1 attempt); mail failed: ...`.
fn describe(deliveries: &[Delivery]) -> String {
    if deliveries.is_empty() {
        return "no channel was tried".to_owned();
    }
    let parts: Vec<String> = deliveries
        .iter()
        .map(|d| {
            let attempts = if d.attempts == 1 { "1 attempt".to_owned() } else { format!("{} attempts", d.attempts) };
            if d.ok {
                format!("{}: {} ({attempts})", d.channel, d.detail)
            } else {
                format!("{} failed: {} ({attempts})", d.channel, d.detail)
            }
        })
        .collect();
    parts.join("; ")
}

fn outcome_details(pairs: &[(&str, &str)], ok: bool) -> BTreeMap<String, String> {
    let mut details: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    details.insert("outcome".to_owned(), if ok { "told" } else { "failed" }.to_owned());
    details
}

fn entry(at: Timestamp, message: String, details: BTreeMap<String, String>) -> TimelineEntry {
    TimelineEntry { at, kind: EntryKind::Notified, message, details }
}

/// Every channel and template a directory names that is not there, and
/// every runbook's policy that is missing: (field, message), for the
/// catalog's load to refuse or warn about.
pub fn missing_references(directory: &Directory, channels: &BTreeSet<String>) -> Vec<(String, String)> {
    let mut missing = Vec::new();
    for (id, policy) in &directory.policies {
        if let Some(t) = &policy.template
            && !directory.templates.contains_key(t)
        {
            missing.push((format!("{id}: template"), format!("no communication template `{t}` in the catalog")));
        }
        if let Some(u) = &policy.updates {
            if !directory.templates.contains_key(&u.template) {
                missing.push((
                    format!("{id}: updates.template"),
                    format!("no communication template `{}` in the catalog", u.template),
                ));
            }
            for c in &u.channels {
                if !channels.contains(c) {
                    missing.push((format!("{id}: updates.channels"), format!("no channel `{c}` is configured")));
                }
            }
        }
        for (i, level) in policy.levels.iter().enumerate() {
            for target in &level.notify {
                let problem = match target {
                    escalation::Target::Schedule(s) if !directory.schedules.contains_key(s) => {
                        Some(format!("no on-call schedule `{s}` in the catalog"))
                    }
                    escalation::Target::Person(p) if !directory.people.contains_key(p) => {
                        Some(format!("`{p}` is not among the coordinator's people"))
                    }
                    escalation::Target::Channel(c) if !channels.contains(c) => {
                        Some(format!("no channel `{c}` is configured"))
                    }
                    _ => None,
                };
                if let Some(problem) = problem {
                    missing.push((format!("{id}: levels[{i}].notify"), problem));
                }
            }
        }
    }
    for (id, schedule) in &directory.schedules {
        let named = schedule.participants().iter().chain(schedule.overrides().iter().map(|o| &o.person));
        for person in named.collect::<BTreeSet<_>>() {
            if !directory.people.contains_key(person) {
                missing.push((format!("schedule {id}"), format!("`{person}` is not among the coordinator's people")));
            }
        }
    }
    for (name, person) in &directory.people {
        for c in &person.notify {
            if !channels.contains(c) {
                missing.push((format!("people.{name}.notify"), format!("no channel `{c}` is configured")));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(participants: &str) -> Schedule {
        let text = format!(
            "apiVersion: remedy.dev/v1\nkind: OnCallSchedule\nmetadata: {{id: primary, title: Primary}}\n\
             time_zone: UTC\nrotation: {{participants: [{participants}], every: 1d, handoff: {{time: '09:00'}}, starts: 2026-01-05}}\n"
        );
        remedy_shared::oncall::load_schedule("s.yaml", &text).unwrap()
    }

    #[test]
    fn every_name_the_catalog_uses_that_the_site_lacks_is_listed() {
        let policy = remedy_shared::escalation::load_policy(
            "p.yaml",
            "apiVersion: remedy.dev/v1\nkind: EscalationPolicy\nmetadata: {id: p0}\n\
             levels: [{name: a, after: 0m, notify: [{schedule: primary}, {person: cto}, {channel: ops}, {channel: pager}]}]\n",
        )
        .unwrap();
        let directory = Directory {
            policies: BTreeMap::from([("p0".to_owned(), policy)]),
            schedules: BTreeMap::from([("primary".to_owned(), schedule("alice, bob"))]),
            people: BTreeMap::from([("alice".to_owned(), Person { email: None, notify: vec!["pager".into()] })]),
            ..Directory::default()
        };
        let channels = BTreeSet::from(["pager".to_owned()]);
        let missing = missing_references(&directory, &channels);
        let text = format!("{missing:?}");
        assert_eq!(missing.len(), 3, "{text}");
        assert!(text.contains("`cto` is not among"), "{text}");
        assert!(text.contains("no channel `ops`"), "{text}");
        assert!(text.contains("schedule primary") && text.contains("`bob`"), "{text}");
    }
}
