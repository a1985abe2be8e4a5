//! The escalator: tells people about incidents, level by level, as the
//! incident's escalation policy says, until someone acknowledges or the
//! incident resolves; keeps customers and the status page updated; and
//! tells every channel it paged when the incident is acknowledged or over.
//!
//! The rule is pure (`remedy_shared::escalation::advance`); this task reads
//! the incident as committed, delivers through the channels and commits
//! the progress with what happened. Progress is on the incident, so in the
//! store: after a restart or a leader change the climb continues where it
//! stopped. A level counts as done once its deliveries were tried, failed
//! or not: a channel that fails falls back to the person's next channel,
//! and a delivery that finally failed is a `notified` entry with outcome
//! `failed` (`could not tell ...`, never `told`) and counted in
//! `remedy_notifications_total{outcome="failed"}`, but never holds the
//! climb. A crash between a delivery and its commit repeats that one level
//! on restart (PagerDuty's dedup key folds the repeat into the same
//! incident); a page is never lost for fear of a duplicate.
//!
//! Nothing waits on anything it does not need: every delivery of a level
//! (every recipient, every channel told a follow-up) runs at once, each
//! bounded by its channel's attempts and timeouts; each incident advances
//! as a task of its own, at most one per incident (so its commits never
//! interleave) and at most [`MAX_ADVANCING`] at once; and the loop that
//! watches the clock and the incidents never waits on a delivery. A
//! channel that hangs for one person delays neither the other people of
//! the level nor any other incident.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use remedy_shared::Timestamp;
use remedy_shared::comms::{Audience, CommsContext, CommunicationTemplate, Links, PublicState};
use remedy_shared::escalation::looks::Looks;
use remedy_shared::escalation::{self, Advance, EscalationPolicy, FollowUp, Page, Person, Progress, Recipient};
use remedy_shared::incident::{EntryKind, Incident, IncidentId, IncidentState, TimelineEntry};
use remedy_shared::oncall::Schedule;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

use crate::channels::{Channels, Delivery, Event, Message, Patience, StatusUpdate};
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

/// Most incidents advanced at once: an advance may wait on channels for
/// as long as their retries allow, and a storm of incidents must not start
/// unbounded work. The rest wait their turn, first come first served.
pub const MAX_ADVANCING: usize = 64;

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
    ///
    /// The loop itself never waits on a channel: each incident's advance
    /// runs as a task of its own and hands back when to look again, so a
    /// channel hanging for one incident holds up neither another incident
    /// nor this loop's clock ([`Looks`] keeps them apart and in order).
    /// Stopping drops the advances under way, as a crash would: their
    /// levels were not committed and are told again by whoever runs next.
    pub async fn run(self, stopped: impl Future<Output = ()>) {
        tokio::pin!(stopped);
        let mut events = self.recorder.subscribe();
        let mut looks = Looks::new(MAX_ADVANCING);
        let mut advancing: JoinSet<(IncidentId, Option<Timestamp>)> = JoinSet::new();
        let mut tasks: HashMap<tokio::task::Id, IncidentId> = HashMap::new();
        // Tells a running advance that its incident was acknowledged or
        // resolved meanwhile: pages still retrying stop.
        let mut stops: HashMap<IncidentId, watch::Sender<bool>> = HashMap::new();
        // What each escalating incident looked like at its last change that
        // mattered here: findings joining an incident change it many times
        // a second, and none of that moves its escalation.
        let mut seen: BTreeMap<IncidentId, Relevant> = BTreeMap::new();
        let mut rescan_at = self.rescan(&mut looks);
        loop {
            for id in looks.start() {
                let this = self.clone();
                let (stop_tx, stop) = watch::channel(false);
                let task = advancing.spawn(async move { (id, this.advance_one(id, stop).await) });
                tasks.insert(task.id(), id);
                stops.insert(id, stop_tx);
            }
            let next = [looks.next_wake(), rescan_at].into_iter().flatten().min();
            tokio::select! {
                () = &mut stopped => return,
                Some(joined) = advancing.join_next_with_id() => match joined {
                    Ok((task, (id, wake_at))) => {
                        tasks.remove(&task);
                        stops.remove(&id);
                        looks.finished(id, wake_at);
                    }
                    Err(e) => {
                        let Some(id) = tasks.remove(&e.id()) else { continue };
                        stops.remove(&id);
                        tracing::error!(incident = %id, error = %e, "advancing the escalation failed; trying again in 5s");
                        looks.finished(id, Some(self.clock.now().plus(Duration::from_secs(5))));
                    }
                },
                event = events.recv() => match event {
                    Ok(incident) if incident.escalation.is_some() => {
                        if matches!(incident.state, IncidentState::Acknowledged | IncidentState::Resolved)
                            && let Some(stop) = stops.get(&incident.id)
                        {
                            stop.send_replace(true);
                        }
                        let relevant = Relevant::of(&incident);
                        if seen.get(&incident.id) != Some(&relevant) {
                            if relevant.done() {
                                seen.remove(&incident.id);
                            } else {
                                seen.insert(incident.id, relevant);
                            }
                            // Read as committed when its turn comes: an
                            // event may be older than what an advance wrote.
                            looks.want(incident.id);
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "the escalator fell behind the incident changes; looking at every incident again");
                        rescan_at = self.rescan(&mut looks);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = self.clock.sleep_until(next) => {
                    let now = self.clock.now();
                    if rescan_at.is_some_and(|at| at <= now) {
                        rescan_at = self.rescan(&mut looks);
                    }
                    looks.due(now);
                }
            }
        }
    }

    /// Asks for a look at every incident whose escalation may not be over;
    /// when to scan again if the store could not be read.
    fn rescan(&self, looks: &mut Looks) -> Option<Timestamp> {
        let incidents = match self.store.list_incidents(true, STARTUP_SCAN) {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(error = %e, "the escalator cannot list incidents; retrying in 5s");
                return Some(self.clock.now().plus(Duration::from_secs(5)));
            }
        };
        for incident in incidents.iter().filter(|i| i.escalation.as_ref().is_some_and(|p| !p.resolution_told)) {
            looks.want(incident.id);
        }
        None
    }

    /// Moves one incident's escalation to now; when to look at it again.
    async fn advance_one(&self, id: IncidentId, stop: watch::Receiver<bool>) -> Option<Timestamp> {
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
        let mut wake_at = advance.wake_at;
        let public_due = !self.public_due(&incident, &advance.progress).is_empty();
        if advance.is_empty() && advance.progress == progress && !public_due {
            return wake_at;
        }
        let update = self.carry_out(policy, &incident, &timeline, advance, now, stop).await;
        // A customer channel that could not hear where the story stands is
        // tried again each minute, for an hour after the incident's last
        // change: a status page never stays "investigating" for want of a
        // second try.
        if !self.public_due(&incident, &update.progress).is_empty() && now < incident.updated_at.plus(PUBLIC_RETRY_FOR)
        {
            let again = now.plus(PUBLIC_RETRY_EVERY);
            wake_at = Some(wake_at.map_or(again, |w| w.min(again)));
        }
        if let Err(e) = self.recorder.escalation_update(update).await {
            // Told but not recorded: looked at again shortly, when the
            // store may take it. The deliveries may then repeat.
            tracing::error!(incident = %id, error = %e, "cannot record the escalation's progress");
            return retry();
        }
        wake_at
    }

    /// The customer channels in the incident's public story that have not
    /// heard where it stands now. A channel is in the story once it was
    /// told anything of it: by a runbook step (a status page opened, a
    /// customer notice) or by a periodic update. Internal channels are
    /// told through follow-ups instead.
    fn public_due(&self, incident: &Incident, progress: &Progress) -> Vec<String> {
        let now_state = PublicState::of(incident.state);
        let mut story: BTreeMap<String, Option<PublicState>> = BTreeMap::new();
        for channel in incident.conversations.keys() {
            // A step's message opened the story: it told of an open incident.
            story.insert(channel.clone(), Some(PublicState::Investigating));
        }
        for (channel, told) in &progress.public {
            story.insert(channel.clone(), PublicState::parse(told));
        }
        story
            .into_iter()
            .filter(|(channel, told)| {
                self.channels.audience(channel) == Some(Audience::Customers) && *told != Some(now_state)
            })
            .map(|(channel, _)| channel)
            .collect()
    }

    /// Tells each customer channel in the story where it stands now, once
    /// per state: the policy's customer template in that state's words,
    /// else plain public words. Never the incident's id, the people's
    /// names or what automation did.
    #[allow(clippy::too_many_arguments)] // the story's context, and where its outcome is kept
    async fn tell_public(
        &self,
        policy: &EscalationPolicy,
        incident: &Incident,
        timeline: &[TimelineEntry],
        progress: &mut Progress,
        entries: &mut Vec<TimelineEntry>,
        now: Timestamp,
    ) {
        let due = self.public_due(incident, progress);
        if due.is_empty() {
            return;
        }
        let state = PublicState::of(incident.state);
        let template = policy.updates.as_ref().map(|u| u.template.as_str());
        let (title, body, audience) = self.written_for(template, Some(state), incident, timeline, progress, now);
        if audience != Audience::Customers {
            // Checked when the coordinator starts; kept here so no path
            // can ever send internal words to customers.
            tracing::error!(incident = %incident.id, "no customer template for the public story; using plain public words");
        }
        let (title, body) = if audience == Audience::Customers { (title, body) } else { plain_public(state) };
        let event = match state {
            PublicState::Investigating => Event::Trigger,
            PublicState::Identified => Event::Update,
            PublicState::Resolved => Event::Resolve,
        };
        let sends: Vec<(String, Message)> = due
            .into_iter()
            .map(|channel| {
                let reference = conversation(incident, progress, &channel);
                let message = Message {
                    status: Some(status_update(state, incident)),
                    audience: Audience::Customers,
                    links: self.public_links(),
                    ..self.message(incident, event, &title, &body, reference)
                };
                (channel, message)
            })
            .collect();
        for ((channel, _), delivery) in sends.iter().zip(self.send_each(&sends).await) {
            self.record(std::slice::from_ref(&delivery), progress);
            let how = describe(std::slice::from_ref(&delivery));
            let verb = if delivery.ok {
                progress.public.insert(channel.clone(), state.as_str().to_owned());
                "told"
            } else {
                "could not be told"
            };
            entries.push(entry(
                now,
                format!("{channel} {verb} customers the incident is {}: {how}", state.as_str()),
                outcome_details(&[("channel", channel), ("public_state", state.as_str())], delivery.ok),
            ));
        }
    }

    async fn carry_out(
        &self,
        policy: &EscalationPolicy,
        incident: &Incident,
        timeline: &[TimelineEntry],
        advance: Advance,
        now: Timestamp,
        stop: watch::Receiver<bool>,
    ) -> EscalationUpdate {
        let seen_hold = incident.escalation.as_ref().and_then(|p| p.held_since);
        let seen_news = incident.escalation.as_ref().and_then(|p| p.news.clone());
        let Advance { mut progress, pages, follow_up, news, update_due, mut entries, state, wake_at: _ } = advance;
        if let Some(news) = news {
            self.tell_news(incident, &news, &mut progress, &mut entries, now).await;
        }
        if !pages.is_empty() {
            self.page(policy, incident, timeline, &pages, (&mut progress, &mut entries), now, stop).await;
        }
        if let Some(follow_up) = follow_up {
            self.follow_up(incident, follow_up, &mut progress, &mut entries, now).await;
        }
        if update_due && let Some(updates) = &policy.updates {
            self.update(incident, timeline, updates, &mut progress, &mut entries, now).await;
        }
        self.tell_public(policy, incident, timeline, &mut progress, &mut entries, now).await;
        EscalationUpdate { id: incident.id, seen_hold, seen_news, progress, entries, state }
    }

    /// Tells every recipient of every level in `pages` at once: each one's
    /// delivery keeps trying until its level's deadline (the person's
    /// channels sharing that time in order) or until the incident is
    /// acknowledged or resolved meanwhile, and a channel that hangs for one
    /// person holds up nobody else. The entries are recorded in the levels'
    /// order once every delivery is done. A level that reached nobody makes
    /// the next level due at once.
    #[allow(clippy::too_many_arguments)] // the pages' whole context; a struct would only rename it
    async fn page(
        &self,
        policy: &EscalationPolicy,
        incident: &Incident,
        timeline: &[TimelineEntry],
        pages: &[Page],
        (progress, entries): (&mut Progress, &mut Vec<TimelineEntry>),
        now: Timestamp,
        stop: watch::Receiver<bool>,
    ) {
        let directory = &self.directory;
        let details = |page: &Page, extra: &[(&str, &str)]| {
            let mut d =
                BTreeMap::from([("policy".to_owned(), policy.id.clone()), ("level".to_owned(), page.name.clone())]);
            d.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
            d
        };
        // Per level: what is known before anything is sent, then who is sent what.
        let mut planned = Vec::new();
        for page in pages {
            let (recipients, missing) =
                escalation::recipients(&page.targets, &directory.people, |id| match directory.schedules.get(id) {
                    Some(schedule) => Ok(schedule.on_call(now)),
                    None => Err(format!("schedule {id} is not in the catalog")),
                });
            let mut known: Vec<TimelineEntry> = missing
                .iter()
                .map(|why| entry(now, format!("{}: {why}; nobody was told through it", page.name), details(page, &[])))
                .collect();
            if recipients.is_empty() {
                known.push(entry(
                    now,
                    format!("{} ({}): nobody could be told", page.name, page.why),
                    details(page, &[("outcome", "nobody")]),
                ));
                planned.push((page, known, Vec::new()));
                continue;
            }
            let (title, body) = self.written(policy.template.as_deref(), incident, timeline, progress, now);
            let sends: Vec<(Recipient, Message)> = recipients
                .into_iter()
                .map(|recipient| {
                    let message = Message {
                        email_to: recipient.email.iter().cloned().collect(),
                        ..self.message(incident, Event::Trigger, &title, &body, None)
                    };
                    (recipient, message)
                })
                .collect();
            planned.push((page, known, sends));
        }
        let patience =
            |page: &Page| Patience::until(tokio::time::Instant::now() + page.deadline.since(now), Some(stop.clone()));
        let delivered = futures::future::join_all(planned.iter().map(|(page, _, sends)| {
            let patience = patience(page);
            async move {
                futures::future::join_all(
                    sends.iter().map(|(r, m)| self.channels.send_first(&r.channels, m, &patience)),
                )
                .await
            }
        }))
        .await;
        let mut last_unreached = None;
        for ((page, known, sends), deliveries) in planned.into_iter().zip(delivered) {
            entries.extend(known);
            let mut reached = false;
            for ((recipient, _), deliveries) in sends.iter().zip(deliveries) {
                let told = self.record(&deliveries, progress);
                let who = &recipient.who;
                let how = describe(&deliveries);
                let stopped = deliveries.last().is_some_and(|d| d.stopped);
                reached |= told.is_some() || stopped;
                let (message, outcome) = match &told {
                    Some(channel) => {
                        (format!("told {who} ({}, {}) through {channel}: {how}", page.name, page.why), "told")
                    }
                    None if stopped => (
                        format!(
                            "stopped paging {who} ({}): {} was acknowledged or resolved meanwhile: {how}",
                            page.name, incident.id
                        ),
                        "stopped",
                    ),
                    None if recipient.channels.is_empty() => {
                        (format!("{who} has no channels to be told through"), "failed")
                    }
                    None => (format!("could not tell {who} ({}): {how}", page.name), "failed"),
                };
                let details = details(page, &[("who", who), ("via", &recipient.via), ("outcome", outcome)]);
                entries.push(entry(now, message, details));
            }
            last_unreached = (!reached).then(|| format!("nobody at {} could be told", page.name));
        }
        if let Some(why) = last_unreached {
            self.metrics.levels_unreached.inc();
            if let Some(next) = policy.levels.get(progress.told as usize) {
                entries.push(TimelineEntry {
                    at: now,
                    kind: EntryKind::Escalated,
                    message: format!("{why}: {} is told now", next.name),
                    details: BTreeMap::from([("policy".to_owned(), policy.id.clone())]),
                });
                progress.unreached = Some(why);
            }
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
        self.tell_told(incident, Event::Update, &title, "that automation gave up", progress, entries, now).await;
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
        let phrase = format!("the incident is {what}");
        if follow_up == FollowUp::Resolved {
            // A conversation a runbook step began on an internal channel
            // ends with the incident even if no page went there (a public
            // one ends with the public story).
            for channel in incident.conversations.keys() {
                if self.channels.audience(channel) != Some(Audience::Customers) {
                    progress.channels.entry(channel.clone()).or_default();
                }
            }
        }
        self.tell_told(incident, event, &title, &phrase, progress, entries, now).await;
    }

    /// Sends `title` to every channel told so far, all at once (continuing
    /// each one's conversation), recording each delivery as `<channel> told
    /// <phrase>: ...`, or `<channel> could not be told <phrase>: ...`.
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
        // Customers hear the public story instead: never who acknowledged,
        // never the incident's id.
        let sends: Vec<(String, Message)> = progress
            .channels
            .keys()
            .filter(|channel| self.channels.audience(channel) != Some(Audience::Customers))
            .map(|channel| {
                let reference = conversation(incident, progress, channel);
                (channel.clone(), self.message(incident, event, title, title, reference))
            })
            .collect();
        for ((channel, _), delivery) in sends.iter().zip(self.send_each(&sends).await) {
            self.record(std::slice::from_ref(&delivery), progress);
            let how = describe(std::slice::from_ref(&delivery));
            // A channel that did not take the message was not told.
            let verb = if delivery.ok { "told" } else { "could not be told" };
            let message = format!("{channel} {verb} {phrase}: {how}");
            entries.push(entry(now, message, outcome_details(&[("channel", channel)], delivery.ok)));
        }
    }

    /// A periodic update to the policy's update channels, in the words of
    /// where the incident stands. A customer channel it reaches joins the
    /// public story at that state.
    async fn update(
        &self,
        incident: &Incident,
        timeline: &[TimelineEntry],
        updates: &escalation::Updates,
        progress: &mut Progress,
        entries: &mut Vec<TimelineEntry>,
        now: Timestamp,
    ) {
        let state = PublicState::of(incident.state);
        let (title, body, audience) =
            self.written_for(Some(&updates.template), Some(state), incident, timeline, progress, now);
        let event = if incident.state.is_closed() { Event::Resolve } else { Event::Update };
        let sends: Vec<(String, Message)> = updates
            .channels
            .iter()
            .map(|channel| {
                let reference = conversation(incident, progress, channel);
                let base = self.message(incident, event, &title, &body, reference);
                let links = if audience == Audience::Customers { self.public_links() } else { base.links.clone() };
                let message = Message { status: Some(status_update(state, incident)), audience, links, ..base };
                (channel.clone(), message)
            })
            .collect();
        for ((channel, _), delivery) in sends.iter().zip(self.send_each(&sends).await) {
            self.record(std::slice::from_ref(&delivery), progress);
            if delivery.ok && self.channels.audience(channel) == Some(Audience::Customers) {
                progress.public.insert(channel.clone(), state.as_str().to_owned());
            }
            let how = describe(std::slice::from_ref(&delivery));
            let sent = if delivery.ok { "sent" } else { "not sent" };
            entries.push(entry(
                now,
                format!("update {} {sent} through {channel}: {how}", updates.template),
                outcome_details(&[("channel", channel), ("template", &updates.template)], delivery.ok),
            ));
        }
    }

    /// Sends each message to its channel, all at once: one channel that
    /// hangs holds up none of the others. The deliveries in `sends`' order.
    async fn send_each(&self, sends: &[(String, Message)]) -> Vec<Delivery> {
        futures::future::join_all(sends.iter().map(|(channel, message)| self.channels.send(channel, message))).await
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
        let (title, body, _) = self.written_for(template, None, incident, timeline, progress, now);
        (title, body)
    }

    /// [`Escalator::written`] at a state of the public story (the
    /// template's words for it), with who the words are for: the
    /// template's audience, or internal for plain words.
    fn written_for(
        &self,
        template: Option<&str>,
        state: Option<PublicState>,
        incident: &Incident,
        timeline: &[TimelineEntry],
        progress: &Progress,
        now: Timestamp,
    ) -> (String, String, Audience) {
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
                Audience::Internal,
            )
        };
        let Some(id) = template else { return plain() };
        let Some(template) = self.directory.templates.get(id) else {
            tracing::error!(template = id, "the communication template is not in the catalog; writing plainly");
            return plain();
        };
        let next_update = progress.next_update_at;
        let context = CommsContext::from_incident(incident, timeline, &self.directory.links, None, next_update, now);
        let rendered = match state {
            Some(state) => template.render_for(state, &context),
            None => template.render(&context),
        };
        match rendered {
            Ok(rendered) => (rendered.subject, rendered.body, template.audience),
            Err(e) => {
                tracing::error!(template = id, error = %e, "the communication template failed; writing plainly");
                // Plain words are internal: a customer channel refuses them.
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

    /// The links customers may follow: the public status page, never the
    /// incident's internal page.
    fn public_links(&self) -> BTreeMap<String, String> {
        self.directory.links.status_page.iter().map(|l| ("status_page".to_owned(), l.clone())).collect()
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
            } else if d.stopped {
                "stopped"
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

/// How long a customer channel that could not be told where the story
/// stands is tried again after the incident's last change, and how often.
const PUBLIC_RETRY_FOR: Duration = Duration::from_secs(60 * 60);
const PUBLIC_RETRY_EVERY: Duration = Duration::from_secs(60);

/// What a status page shows at `state`: the incident's status, and its
/// components by severity until it is over.
fn status_update(state: PublicState, incident: &Incident) -> StatusUpdate {
    let component_status = match (state, incident.severity.as_str()) {
        (PublicState::Resolved, _) => "operational",
        (_, "critical") => "major_outage",
        (_, "warning") => "partial_outage",
        _ => "degraded_performance",
    };
    StatusUpdate { component_status: component_status.to_owned(), incident_status: state.as_str().to_owned() }
}

/// Words for customers when the policy has no customer template: nothing
/// of the incident but where it stands.
fn plain_public(state: PublicState) -> (String, String) {
    let (title, body) = match state {
        PublicState::Investigating => {
            ("Service disruption", "We are investigating a problem affecting our service. Updates will follow.")
        }
        PublicState::Identified => {
            ("Service disruption: cause identified", "We have identified the problem and are working on a fix.")
        }
        PublicState::Resolved => {
            ("Service disruption resolved", "The problem has been resolved and the service is operating normally.")
        }
    };
    (title.to_owned(), body.to_owned())
}

/// What continues `channel`'s conversation about the incident: the one
/// the incident keeps (whoever began it, a runbook step included), else
/// what this climb was told.
fn conversation(incident: &Incident, progress: &Progress, channel: &str) -> Option<String> {
    incident
        .conversation(channel)
        .map(str::to_owned)
        .or_else(|| progress.channels.get(channel).filter(|r| !r.is_empty()).cloned())
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

/// Every place where words written for the people handling an incident
/// would go to a customer channel: a policy's `updates` whose template is
/// internal (or missing, so written plainly) but whose channels include a
/// customer one, and a level that pages a customer channel. (field,
/// message), for the coordinator to refuse at start: internal text never
/// reaches a customer channel.
pub fn audience_conflicts(directory: &Directory, channels: &Channels) -> Vec<(String, String)> {
    let mut conflicts = Vec::new();
    let customers = |c: &str| channels.audience(c) == Some(Audience::Customers);
    for (id, policy) in &directory.policies {
        if let Some(u) = &policy.updates {
            let audience = directory.templates.get(&u.template).map(|t| t.audience);
            for c in u.channels.iter().filter(|c| customers(c)) {
                if audience != Some(Audience::Customers) {
                    conflicts.push((
                        format!("{id}: updates.template"),
                        format!(
                            "`{c}` reaches customers but template `{}` is not written for them (`audience: customers`)",
                            u.template
                        ),
                    ));
                }
            }
        }
        for (i, level) in policy.levels.iter().enumerate() {
            for target in &level.notify {
                if let escalation::Target::Channel(c) = target
                    && customers(c)
                {
                    conflicts.push((
                        format!("{id}: levels[{i}].notify"),
                        format!("`{c}` reaches customers; pages are for the people handling the incident"),
                    ));
                }
            }
        }
    }
    for (name, person) in &directory.people {
        for c in person.notify.iter().filter(|c| customers(c)) {
            conflicts.push((
                format!("people.{name}.notify"),
                format!("`{c}` reaches customers; a person is paged through an internal channel"),
            ));
        }
    }
    conflicts
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
