//! The writer's state and the staging of commands on top of it, with no I/O:
//! each command is applied to a [`Stage`], a copy of what it changes, and
//! the writer commits the stage's batch and only then absorbs the stage
//! into the [`State`]. A group whose commit fails leaves the state as it
//! was.

use std::collections::HashMap;
use std::sync::Arc;

use remedy_shared::Timestamp;
use remedy_shared::alert::Alert;
use remedy_shared::escalation::Progress;
use remedy_shared::finding::{ConditionKey, Finding};
use remedy_shared::incident::{self, Incident, IncidentId, Outcome, Signal, TimelineEntry};
use remedy_shared::run::{self, Catalog, Cause, ManualRun, RunRecord, RunStatus, SumKey, TriggerSum};
use remedy_shared::sequence::{Accept, SequenceTracker};

use super::{AgentHello, AlertReceipt, BatchReceipt, EscalationUpdate, RecordError, RunUpdate};
use crate::store::{AgentRecord, COORDINATOR_SOURCE, Counters, Loaded, StoredFinding, WriteBatch};

/// How long an alert notification's key is remembered. Retries and HA
/// replicas repeat a notification within minutes; a week is generous, and
/// bounds the memory the keys take.
const ALERT_KEY_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// What the writer holds in memory, as of the last commit.
pub(super) struct State {
    agents: HashMap<String, AgentRecord>,
    open: HashMap<ConditionKey, Incident>,
    counters: Counters,
    /// Alert notifications already recorded, with when.
    alert_keys: HashMap<String, Timestamp>,
    catalog: Arc<Catalog>,
    /// Runs of open incidents, and unfinished runs.
    runs: HashMap<IncidentId, RunRecord>,
    /// Open incidents by id.
    ids: HashMap<IncidentId, ConditionKey>,
    /// Aggregated triggers' sums, with whether each fired last time it was
    /// judged.
    sums: HashMap<SumKey, TriggerSum>,
}

/// Changes staged for one transaction, on top of the writer's state.
#[derive(Default)]
pub(super) struct Stage {
    agents: HashMap<String, AgentRecord>,
    /// Post-transaction view of open incidents touched (None: closed).
    open: HashMap<ConditionKey, Option<Incident>>,
    counters: Option<Counters>,
    alert_keys: HashMap<String, Timestamp>,
    batch: WriteBatch,
    /// Incidents changed in this transaction, latest version, in order of
    /// first change: a thousand findings joining one incident write it once.
    changed: HashMap<IncidentId, Incident>,
    changed_order: Vec<IncidentId>,
    /// Runs staged now, by incident.
    runs: HashMap<IncidentId, RunRecord>,
    /// Sums staged now.
    sums: HashMap<SumKey, TriggerSum>,
    tally: Tally,
}

/// What staging counted, for the metrics: counted whether or not the
/// commit then succeeds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Tally {
    /// Incidents opened.
    pub(super) incidents_opened: u64,
    /// Findings an agent had sent before.
    pub(super) findings_duplicate: u64,
    /// Alert notifications recorded for the first time.
    pub(super) alerts_received: u64,
    /// Alert notifications seen before.
    pub(super) alerts_duplicate: u64,
}

/// What a committed stage changed, for the writer to publish.
pub(super) struct Absorbed {
    /// Runs new to the state, to be executed.
    pub(super) new_runs: Vec<RunRecord>,
    /// Incidents changed, in order of first change.
    pub(super) changed: Vec<Incident>,
    /// Findings persisted.
    pub(super) findings: usize,
    /// Incidents open now.
    pub(super) open_incidents: usize,
}

impl Stage {
    /// Puts the staged incidents, agents and counters into the batch, which
    /// is then what the transaction writes.
    pub(super) fn seal(&mut self) -> &WriteBatch {
        if let Some(c) = self.counters {
            self.batch.counters = Some(c);
        }
        self.batch.incidents.extend(self.changed_order.iter().filter_map(|id| self.changed.get(id)).cloned());
        self.batch.agents.extend(self.agents.values().cloned());
        &self.batch
    }

    /// What staging counted so far.
    pub(super) fn tally(&self) -> Tally {
        self.tally
    }
}

impl State {
    /// The state `loaded` from the store, matching signals against `catalog`.
    pub(super) fn new(loaded: Loaded, catalog: Arc<Catalog>) -> State {
        State {
            agents: loaded.agents.into_iter().map(|a| (a.agent_id.clone(), a)).collect(),
            ids: loaded.open_incidents.iter().map(|i| (i.id, i.key.clone())).collect(),
            open: loaded.open_incidents.into_iter().map(|i| (i.key.clone(), i)).collect(),
            counters: loaded.counters,
            alert_keys: loaded.alert_keys.into_iter().collect(),
            runs: loaded.runs.into_iter().map(|r| (r.incident_id, r)).collect(),
            sums: run::trigger_sums(&catalog),
            catalog,
        }
    }

    /// Whether the state or `stage` has incident `id`: open, or changed in
    /// this transaction. Otherwise only the store knows it.
    pub(super) fn holds(&self, stage: &Stage, id: IncidentId) -> bool {
        self.current(stage, id).is_some() || stage.changed.contains_key(&id)
    }

    /// Makes `stage`, now committed, the state; returns what it changed.
    pub(super) fn absorb(&mut self, stage: Stage) -> Absorbed {
        self.sums.extend(stage.sums);
        let mut new_runs = Vec::new();
        for (id, run) in stage.runs {
            let pending = run.status == RunStatus::Pending;
            if pending && !self.runs.contains_key(&id) {
                new_runs.push(run.clone());
            }
            self.runs.insert(id, run);
        }
        self.agents.extend(stage.agents);
        self.alert_keys.extend(stage.alert_keys);
        for key in &stage.batch.forgotten_alert_keys {
            self.alert_keys.remove(key);
        }
        if let Some(c) = stage.counters {
            self.counters = c;
        }
        for (key, incident) in stage.open {
            match incident {
                Some(i) => {
                    self.ids.insert(i.id, key.clone());
                    self.open.insert(key, i);
                }
                None => {
                    if let Some(closed) = self.open.remove(&key) {
                        self.ids.remove(&closed.id);
                        // A finished run of a closed incident is no longer
                        // needed in memory; it stays in the store.
                        if self.runs.get(&closed.id).is_some_and(|r| r.status.is_finished()) {
                            self.runs.remove(&closed.id);
                        }
                    }
                }
            }
        }
        let mut changed = stage.changed;
        Absorbed {
            new_runs,
            changed: stage.changed_order.iter().filter_map(|id| changed.remove(id)).collect(),
            findings: stage.batch.findings.len(),
            open_incidents: self.open.len(),
        }
    }

    /// The agent's record, staged for change; `None` for an agent that
    /// never said hello.
    fn agent<'a>(&'a self, stage: &'a mut Stage, agent_id: &str) -> Option<&'a mut AgentRecord> {
        if !stage.agents.contains_key(agent_id) {
            let record = self.agents.get(agent_id)?.clone();
            stage.agents.insert(agent_id.to_owned(), record);
        }
        stage.agents.get_mut(agent_id)
    }

    /// The counters, staged or committed.
    fn counters(&self, stage: &mut Stage) -> Counters {
        stage.counters.unwrap_or(self.counters)
    }

    /// Creates or updates an agent from its hello; returns its highest
    /// contiguous persisted sequence. An agent id is bound to the node of
    /// its first hello: a hello for it from another node is refused before
    /// anything is staged, so that node's record, sequence and findings
    /// stay its own.
    pub(super) fn stage_hello(&self, stage: &mut Stage, hello: AgentHello, now: Timestamp) -> Result<u64, RecordError> {
        let known = stage.agents.get(&hello.agent_id).or_else(|| self.agents.get(&hello.agent_id));
        if let Some(known) = known
            && !known.node_name.is_empty()
            && known.node_name != hello.node_name
        {
            return Err(RecordError::AgentOfAnotherNode {
                agent_id: hello.agent_id,
                bound: known.node_name.clone(),
                claimed: hello.node_name,
            });
        }
        if self.agent(stage, &hello.agent_id).is_none() {
            stage.agents.insert(
                hello.agent_id.clone(),
                AgentRecord {
                    agent_id: hello.agent_id.clone(),
                    node_name: String::new(),
                    version: String::new(),
                    capabilities: Vec::new(),
                    labels: Default::default(),
                    node_addresses: Vec::new(),
                    tracker: SequenceTracker::default(),
                    first_seen: now,
                    last_hello: now,
                },
            );
        }
        let Some(record) = stage.agents.get_mut(&hello.agent_id) else {
            return Ok(0);
        };
        record.node_name = hello.node_name;
        record.version = hello.version;
        record.capabilities = hello.capabilities;
        record.labels = hello.labels;
        record.node_addresses = hello.node_addresses;
        record.last_hello = now;
        Ok(record.tracker.contiguous())
    }

    /// Stages an agent's batch of findings, refusing it whole when one
    /// breaks the sequence rules.
    pub(super) fn stage_findings(
        &self,
        stage: &mut Stage,
        agent_id: &str,
        findings: Vec<(u64, Finding)>,
        oldest_retained: u64,
        now: Timestamp,
    ) -> Result<BatchReceipt, RecordError> {
        let Some(record) = self.agent(stage, agent_id) else {
            return Err(RecordError::UnknownAgent(agent_id.to_owned()));
        };
        // Check the whole batch before staging any of it: a bad batch is
        // refused whole, never half-applied.
        let mut tracker = record.tracker.clone();
        let mut verdicts = Vec::with_capacity(findings.len());
        for (sequence, _) in &findings {
            verdicts.push(tracker.record(*sequence)?);
        }
        if oldest_retained > 0 {
            tracker.settle_below(oldest_retained);
        }
        let node_name = record.node_name.clone();
        record.tracker = tracker;
        let acked = record.tracker.contiguous();
        let mut receipt = BatchReceipt { acked, new: 0, duplicates: 0 };
        for ((sequence, finding), verdict) in findings.into_iter().zip(verdicts) {
            if verdict == Accept::Duplicate {
                receipt.duplicates += 1;
                continue;
            }
            receipt.new += 1;
            self.stage_finding(stage, agent_id, &node_name, sequence, finding, now);
        }
        stage.tally.findings_duplicate += receipt.duplicates as u64;
        Ok(receipt)
    }

    /// Stages each alert notification not recorded before.
    pub(super) fn stage_alerts(&self, stage: &mut Stage, alerts: Vec<Alert>, now: Timestamp) -> AlertReceipt {
        let mut receipt = AlertReceipt { new: 0, duplicates: 0 };
        for alert in alerts {
            let key = alert.dedup_key();
            if self.alert_keys.contains_key(&key) || stage.alert_keys.contains_key(&key) {
                receipt.duplicates += 1;
                continue;
            }
            receipt.new += 1;
            stage.alert_keys.insert(key.clone(), now);
            stage.batch.alert_keys.push((key, now));
            self.stage_signal(stage, &Signal::from_alert(&alert), Cause::Alert(&alert), now);
        }
        stage.tally.alerts_received += receipt.new as u64;
        stage.tally.alerts_duplicate += receipt.duplicates as u64;
        receipt
    }

    /// Stages findings the coordinator raises itself, numbered from its
    /// own counter.
    pub(super) fn stage_own(&self, stage: &mut Stage, findings: Vec<Finding>, node_name: &str, now: Timestamp) {
        for finding in findings {
            let mut counters = self.counters(stage);
            let sequence = counters.next_own_sequence;
            counters.next_own_sequence += 1;
            stage.counters = Some(counters);
            self.stage_finding(stage, COORDINATOR_SOURCE, node_name, sequence, finding, now);
        }
    }

    /// Stages one new finding: its signal, the sums it feeds, and itself.
    fn stage_finding(
        &self,
        stage: &mut Stage,
        source: &str,
        node_name: &str,
        sequence: u64,
        finding: Finding,
        now: Timestamp,
    ) {
        let incident_id = self.stage_signal(
            stage,
            &Signal::from_finding(source, &finding),
            Cause::Finding { source, finding: &finding },
            now,
        );
        self.stage_sums(stage, source, &finding, now);
        stage.batch.findings.push(StoredFinding {
            agent_id: source.to_owned(),
            sequence,
            node_name: node_name.to_owned(),
            received_at: now,
            incident_id,
            finding,
        });
    }

    /// Applies a report to its condition's open incident; returns the
    /// incident it joined, if any.
    fn stage_signal(&self, stage: &mut Stage, signal: &Signal, cause: Cause<'_>, now: Timestamp) -> Option<IncidentId> {
        let open = match stage.open.get(&signal.key) {
            Some(staged) => staged.clone(),
            None => self.open.get(&signal.key).cloned(),
        };
        let mut counters = self.counters(stage);
        match incident::apply_signal(open.as_ref(), signal, IncidentId(counters.next_incident), now) {
            Outcome::Ignored => None,
            Outcome::Changed { incident, entries, opened } => {
                if opened {
                    counters.next_incident += 1;
                    stage.counters = Some(counters);
                    stage.tally.incidents_opened += 1;
                }
                let id = incident.id;
                let (incident, entries) = self.stage_trigger(stage, incident, entries, signal, cause, now);
                self.stage_incident(stage, incident, entries);
                Some(id)
            }
        }
    }

    /// Stages an incident's new state and its timeline entries.
    fn stage_incident(&self, stage: &mut Stage, mut incident: Incident, mut entries: Vec<TimelineEntry>) {
        let still_open = !incident.state.is_closed();
        // A late incident that closes clears the finding that said it was late.
        let mut cleared = None;
        if !still_open
            && incident.mttr_status.is_some()
            && let Some((closed, entry, finding)) = run::mttr_check(&incident, incident.updated_at)
        {
            incident = closed;
            // Staged last, so the clearing is dated by this entry.
            cleared = Some((finding, entry.at));
            entries.push(entry);
        }
        stage.batch.timeline.extend(entries.into_iter().map(|e| (incident.id, e)));
        if stage.changed.insert(incident.id, incident.clone()).is_none() {
            stage.changed_order.push(incident.id);
        }
        stage.open.insert(incident.key.clone(), still_open.then_some(incident));
        if let Some((finding, at)) = cleared {
            self.stage_own(stage, vec![finding], "", at);
        }
    }

    /// The run of `id`, staged or committed.
    fn run_of<'a>(&'a self, stage: &'a Stage, id: IncidentId) -> Option<&'a RunRecord> {
        stage.runs.get(&id).or_else(|| self.runs.get(&id))
    }

    /// The open incident `id`, staged or committed.
    pub(super) fn current(&self, stage: &Stage, id: IncidentId) -> Option<Incident> {
        let key = self.ids.get(&id).cloned().or_else(|| {
            stage.open.iter().find(|(_, i)| i.as_ref().is_some_and(|i| i.id == id)).map(|(k, _)| k.clone())
        })?;
        match stage.open.get(&key) {
            Some(staged) => staged.clone(),
            None => self.open.get(&key).cloned(),
        }
    }

    /// If the signal holds and its incident has no run yet, finds the
    /// runbook it triggers and stages a pending run in the same
    /// transaction: a trigger committed is a run that will happen.
    fn stage_trigger(
        &self,
        stage: &mut Stage,
        incident: Incident,
        mut entries: Vec<TimelineEntry>,
        signal: &Signal,
        cause: Cause<'_>,
        now: Timestamp,
    ) -> (Incident, Vec<TimelineEntry>) {
        if self.run_of(stage, incident.id).is_some() {
            return (incident, entries);
        }
        let Some(started) = run::triggered_run(&self.catalog, &incident, signal, cause, now) else {
            return (incident, entries);
        };
        entries.extend(started.entries);
        stage.batch.runs.push(started.run.clone());
        stage.runs.insert(started.incident.id, started.run);
        (started.incident, entries)
    }

    /// Feeds a finding to the sums of aggregated triggers; a sum that starts
    /// or stops firing raises or clears its runbook's own condition.
    fn stage_sums(&self, stage: &mut Stage, source: &str, finding: &Finding, now: Timestamp) {
        for (id, index, trigger) in self.catalog.aggregated_triggers() {
            if !trigger.selects(finding) {
                continue;
            }
            let key = (id.to_owned(), index);
            let Some(mut sum) = stage.sums.get(&key).or_else(|| self.sums.get(&key)).cloned() else {
                continue;
            };
            if let Some(status) = sum.observe_finding(trigger, source, finding) {
                let signal = run::sum_signal(&key.0, trigger, status, COORDINATOR_SOURCE);
                self.stage_signal(stage, &signal, Cause::Runbook(&key.0), now);
            }
            stage.sums.insert(key, sum);
        }
    }

    /// Stages what the engine did after a step.
    pub(super) fn stage_run_update(
        &self,
        stage: &mut Stage,
        update: RunUpdate,
        now: Timestamp,
    ) -> Result<(), RecordError> {
        let id = match (&update.run, update.incident) {
            (Some(run), _) => Some(run.incident_id),
            (None, id) => id,
        };
        if let Some(id) = id {
            let mut entries = update.entries;
            match self.current(stage, id) {
                Some(open) => {
                    let mut changed = update.state.and_then(|s| incident::progress(&open, s, now));
                    if let Some((policy, why)) = &update.escalate {
                        let base = changed.get_or_insert_with(|| open.clone());
                        match base.escalation.as_mut() {
                            None => base.escalation = Some(Progress::start(policy, why, now)),
                            // People already paged (on open) hear that
                            // automation gave up, and why.
                            Some(progress) => progress.news = Some(why.clone()),
                        }
                    }
                    if let Some((channel, reference)) = &update.conversation
                        && open.conversation(channel).is_none()
                    {
                        let base = changed.get_or_insert_with(|| open.clone());
                        base.remember(channel, reference);
                    }
                    if let Some((by, why)) = &update.resolve {
                        let base = changed.clone().unwrap_or(open);
                        if let Ok((closed, entry)) = incident::resolve(&base, by, why, now) {
                            entries.push(entry);
                            changed = Some(closed);
                        }
                    }
                    match changed {
                        Some(incident) => self.stage_incident(stage, incident, entries),
                        None => stage.batch.timeline.extend(entries.into_iter().map(|e| (id, e))),
                    }
                }
                // Closed meanwhile: the record still gets what happened.
                None => stage.batch.timeline.extend(entries.into_iter().map(|e| (id, e))),
            }
        }
        stage.batch.audit.extend(update.audit);
        if let Some(run) = update.run {
            stage.batch.runs.push(run.clone());
            stage.runs.insert(run.incident_id, run);
        }
        if let Some(guard) = update.guard {
            stage.batch.guard = Some(guard);
        }
        Ok(())
    }

    /// The escalator's progress, merged into the incident as it stands now:
    /// an acknowledgement that arrived after the escalator decided keeps
    /// its hold (and the state it set). A closed incident still takes its
    /// progress (the channels told of the resolution), without touching
    /// the open incidents of its condition.
    ///
    /// `stored` is the incident as the store holds it, read by the writer
    /// when [`State::holds`] says the state does not have it.
    pub(super) fn stage_escalation(
        &self,
        stage: &mut Stage,
        update: EscalationUpdate,
        stored: Option<Incident>,
        now: Timestamp,
    ) -> Result<(), RecordError> {
        let (current, open) = match self.current(stage, update.id) {
            Some(open) => (open, true),
            None => match stage.changed.get(&update.id).cloned() {
                Some(staged) => (staged, false),
                None => (stored.ok_or(RecordError::NoOpenIncident(update.id))?, false),
            },
        };
        let mut incident = current;
        let mut progress = update.progress;
        let now_hold = incident.escalation.as_ref().and_then(|p| p.held_since);
        let same_hold = now_hold == update.seen_hold;
        if let Some(current) = &incident.escalation {
            if !same_hold {
                progress.held_since = current.held_since;
                progress.held_by = current.held_by.clone();
                progress.hold_told = current.hold_told;
            }
            if current.news != update.seen_news {
                progress.news = current.news.clone();
            }
        }
        // What a channel returned to continue the conversation is the
        // incident's, whoever spoke first (a runbook step may have).
        for (channel, reference) in &progress.channels {
            incident.remember(channel, reference);
        }
        incident.escalation = Some(progress);
        if same_hold
            && let Some(state) = update.state
            && !incident.state.is_closed()
        {
            incident.state = state;
        }
        incident.updated_at = incident.updated_at.max(now);
        if open {
            self.stage_incident(stage, incident, update.entries);
        } else {
            stage.batch.timeline.extend(update.entries.into_iter().map(|e| (incident.id, e)));
            if stage.changed.insert(incident.id, incident).is_none() {
                stage.changed_order.push(update.id);
            }
        }
        Ok(())
    }

    /// Opens an incident for a person's run of a runbook, with its run.
    pub(super) fn stage_manual(
        &self,
        stage: &mut Stage,
        request: ManualRun,
        now: Timestamp,
    ) -> Result<IncidentId, RecordError> {
        let mut counters = self.counters(stage);
        let id = IncidentId(counters.next_incident);
        let started =
            run::manual_run(&self.catalog, &request, id, now).map_err(|e| RecordError::BadRun(e.to_string()))?;
        counters.next_incident += 1;
        stage.counters = Some(counters);
        stage.tally.incidents_opened += 1;
        stage.batch.runs.push(started.run.clone());
        stage.runs.insert(id, started.run);
        self.stage_incident(stage, started.incident, started.entries);
        Ok(id)
    }

    /// Stages a person's change to an open incident (acknowledge, resolve).
    pub(super) fn stage_transition(
        &self,
        stage: &mut Stage,
        id: IncidentId,
        change: impl FnOnce(&Incident) -> Result<(Incident, TimelineEntry), incident::TransitionError>,
    ) -> Result<Incident, RecordError> {
        let open = self.current(stage, id).ok_or(RecordError::NoOpenIncident(id))?;
        let (incident, entry) = change(&open)?;
        self.stage_incident(stage, incident.clone(), vec![entry]);
        Ok(incident)
    }

    /// Stages forgetting the records past `retention`.
    pub(super) fn stage_prune(&self, stage: &mut Stage, retention: &crate::store::Retention, now: Timestamp) {
        stage.batch.prune = Some(retention.cutoffs(now));
    }

    /// Stages what time alone changes: sums re-judged, alert keys past
    /// their retention forgotten, MTTR marks, expired sources.
    pub(super) fn stage_sweep(&self, stage: &mut Stage, now: Timestamp) {
        let keys: Vec<(String, usize)> = self.sums.keys().cloned().collect();
        for key in keys {
            let Some(trigger) = self.catalog.get(&key.0).and_then(|r| r.triggers.findings.get(key.1)) else {
                continue;
            };
            let Some(mut sum) = stage.sums.get(&key).or_else(|| self.sums.get(&key)).cloned() else {
                continue;
            };
            if let Some(status) = sum.evaluate(now) {
                let signal = run::sum_signal(&key.0, trigger, status, COORDINATOR_SOURCE);
                self.stage_signal(stage, &signal, Cause::Runbook(&key.0), now);
            }
            stage.sums.insert(key, sum);
        }
        let cutoff = Timestamp::from_millis(now.as_millis().saturating_sub(ALERT_KEY_RETENTION.as_millis() as i64));
        stage
            .batch
            .forgotten_alert_keys
            .extend(self.alert_keys.iter().filter(|(_, at)| **at < cutoff).map(|(k, _)| k.clone()));
        let late: Vec<(Incident, TimelineEntry, Finding)> = self
            .open
            .values()
            .filter(|i| !stage.open.contains_key(&i.key))
            .filter_map(|i| run::mttr_check(i, now))
            .collect();
        for (incident, entry, finding) in late {
            self.stage_incident(stage, incident, vec![entry]);
            self.stage_own(stage, vec![finding], "", now);
        }
        let due: Vec<Incident> = self
            .open
            .values()
            .filter(|i| !stage.open.contains_key(&i.key))
            .filter(|i| incident::next_expiry(i).is_some_and(|at| at <= now))
            .cloned()
            .collect();
        for open in due {
            if let Some((incident, entries)) = incident::expire_sources(&open, now) {
                self.stage_incident(stage, incident, entries);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use remedy_shared::finding::{ConditionKind, FindingKind, FindingState, Severity};
    use remedy_shared::incident::IncidentState;
    use remedy_shared::runbook::parse_runbook;

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000 + s * 1000)
    }

    /// What a new store loads: nothing, numbering from 1.
    fn fresh() -> Loaded {
        Loaded { counters: Counters { next_incident: 1, next_own_sequence: 1 }, ..Loaded::default() }
    }

    /// P1-002's shape: database errors summed over every node above 10.
    fn catalog() -> Arc<Catalog> {
        let runbook = parse_runbook(
            "r.yaml",
            "apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {id: P1-002, title: Database errors}\n\
             priority: P1\nmttr_target: 10m\ntriggers:\n  findings:\n    - {kind: high_error_rate, evidence: database, \
             above: 10, aggregate: sum_across_nodes}\n  manual: true\n\
             steps: [{id: s, notify: {webhook: w, message: m}}]\nescalation: {policy: p}\n",
        )
        .expect("the runbook parses");
        Arc::new(Catalog::new(vec![runbook]))
    }

    fn hello(agent_id: &str) -> AgentHello {
        AgentHello {
            agent_id: agent_id.into(),
            node_name: format!("node-{agent_id}"),
            version: "1.0.0".into(),
            capabilities: vec![],
            labels: BTreeMap::new(),
            node_addresses: vec![],
        }
    }

    fn finding(kind: FindingKind, target: &str, evidence: &[(&str, &str)]) -> Finding {
        Finding {
            kind,
            severity: Severity::Warning,
            state: FindingState::Active,
            target: target.into(),
            labels: BTreeMap::new(),
            evidence: evidence.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            summary: String::new(),
            first_seen: at(0),
            last_seen: at(0),
            expires_at: None,
        }
    }

    #[test]
    fn a_thousand_findings_joining_one_incident_write_it_once() {
        let state = State::new(fresh(), catalog());
        let mut stage = Stage::default();
        state.stage_hello(&mut stage, hello("a1"), at(0)).unwrap();
        let batch = (1..=1000).map(|n| (n, finding(FindingKind::DiskUsageHigh, "mount/n1:/var", &[]))).collect();
        let receipt = state.stage_findings(&mut stage, "a1", batch, 0, at(1)).expect("staged");
        assert_eq!(receipt, BatchReceipt { acked: 1000, new: 1000, duplicates: 0 });
        let batch = stage.seal();
        assert_eq!(batch.findings.len(), 1000);
        assert_eq!(batch.incidents.len(), 1, "one incident, written once");
        assert_eq!(batch.incidents[0].finding_count, 1000);
        assert_eq!(batch.counters.map(|c| c.next_incident), Some(2));
        assert_eq!(batch.agents.len(), 1);
    }

    #[test]
    fn an_agent_id_stays_with_the_node_of_its_first_hello() {
        let state = State::new(fresh(), catalog());
        let mut stage = Stage::default();
        state.stage_hello(&mut stage, hello("a1"), at(0)).expect("first hello");
        let mut other = hello("a1");
        other.node_name = "node-b".into();
        let refused = state.stage_hello(&mut stage, other, at(1));
        assert!(
            matches!(&refused, Err(RecordError::AgentOfAnotherNode { bound, claimed, .. })
                if bound == "node-a1" && claimed == "node-b"),
            "{refused:?}"
        );
        let batch = stage.seal();
        assert_eq!(batch.agents.len(), 1);
        assert_eq!(batch.agents[0].node_name, "node-a1", "the refused hello changed nothing");
        assert_eq!(batch.agents[0].last_hello, at(0));
    }

    #[test]
    fn a_batch_that_breaks_the_sequence_rules_stages_nothing() {
        let state = State::new(fresh(), catalog());
        let mut stage = Stage::default();
        state.stage_hello(&mut stage, hello("a1"), at(0)).unwrap();
        let bad = vec![
            (1, finding(FindingKind::DiskUsageHigh, "mount/n1:/a", &[])),
            (0, finding(FindingKind::DiskUsageHigh, "mount/n1:/b", &[])),
        ];
        assert!(state.stage_findings(&mut stage, "a1", bad, 0, at(1)).is_err());
        assert!(stage.seal().findings.is_empty());
        assert_eq!(stage.tally(), Tally::default());
        let unknown = state.stage_findings(&mut stage, "a2", vec![], 0, at(1));
        assert!(matches!(unknown, Err(RecordError::UnknownAgent(_))), "{unknown:?}");
    }

    #[test]
    fn errors_summed_across_nodes_open_the_runbooks_own_incident_with_its_run() {
        let state = State::new(fresh(), catalog());
        let mut stage = Stage::default();
        let errors = |n: &str| finding(FindingKind::HighErrorRate, "pod/shop/api", &[("database", n)]);
        for agent in ["a", "b"] {
            state.stage_hello(&mut stage, hello(agent), at(0)).unwrap();
        }
        state.stage_findings(&mut stage, "a", vec![(1, errors("6"))], 0, at(1)).expect("staged");
        assert!(stage.runs.is_empty(), "6 alone is not above 10");
        state.stage_findings(&mut stage, "b", vec![(1, errors("6"))], 0, at(2)).expect("staged");
        let batch = stage.seal();
        let own: Vec<&Incident> =
            batch.incidents.iter().filter(|i| i.key.kind == ConditionKind::Runbook("P1-002".into())).collect();
        let [own] = own.as_slice() else { panic!("one incident of the runbook's own: {:?}", batch.incidents) };
        let own = (*own).clone();
        assert_eq!(own.key.target, "sum/database");
        assert_eq!(own.severity, Severity::Critical);
        assert_eq!(batch.runs.len(), 1, "a trigger committed is a run that will happen");
        assert_eq!(batch.runs[0].incident_id, own.id);
        assert_eq!(batch.runs[0].started_by, "high_error_rate database summed over 2 nodes is 12 (> 10)");

        let mut state = state;
        let absorbed = state.absorb(stage);
        assert_eq!(absorbed.new_runs.len(), 1, "handed to the engine once committed");
        let mut next = Stage::default();
        state.stage_findings(&mut next, "a", vec![(2, errors("1"))], 0, at(3)).expect("staged");
        let closed = next.seal().incidents.iter().find(|i| i.id == own.id).cloned().expect("the sum fell");
        assert_eq!(closed.active_sources.len(), 0, "the sum's condition no longer holds: {closed:?}");
    }

    #[test]
    fn sweeping_forgets_alert_keys_past_their_retention() {
        let week = i64::try_from(ALERT_KEY_RETENTION.as_secs()).expect("a week in seconds");
        let loaded = Loaded { alert_keys: vec![("old".into(), at(0)), ("recent".into(), at(week))], ..fresh() };
        let state = State::new(loaded, catalog());
        let mut stage = Stage::default();
        state.stage_sweep(&mut stage, at(week + 1));
        assert_eq!(stage.seal().forgotten_alert_keys, vec!["old".to_owned()]);
    }

    #[test]
    fn an_escalation_keeps_an_acknowledgement_that_arrived_while_it_told_people() {
        let state = State::new(fresh(), catalog());
        let mut stage = Stage::default();
        let request = ManualRun {
            runbook_id: "P1-002".into(),
            params: BTreeMap::new(),
            dry_run: true,
            drill: false,
            by: "ops".into(),
        };
        let id = state.stage_manual(&mut stage, request, at(0)).expect("a manual run");
        let mut climbing = state.current(&stage, id).expect("open");
        climbing.escalation = Some(Progress::start("p", "opened", at(0)));
        state.stage_incident(&mut stage, climbing, vec![]);
        // The escalator decides with no hold, and meanwhile a person acknowledges.
        let seen = state.current(&stage, id).and_then(|i| i.escalation).expect("climbing");
        state.stage_transition(&mut stage, id, |i| incident::acknowledge(i, "user:ada", at(5))).expect("acknowledged");
        let update = EscalationUpdate {
            id,
            seen_hold: None,
            seen_news: None,
            progress: Progress { told: 1, ..seen },
            entries: vec![],
            state: Some(IncidentState::Escalated),
        };
        assert!(state.holds(&stage, id));
        state.stage_escalation(&mut stage, update, None, at(6)).expect("staged");
        let now = state.current(&stage, id).expect("open");
        let progress = now.escalation.expect("climbing");
        assert_eq!(progress.told, 1, "the escalator's progress is kept");
        assert_eq!(progress.held_by.as_deref(), Some("user:ada"), "and so is the person's hold");
        assert_eq!(now.state, IncidentState::Acknowledged, "the hold's state wins over the escalator's");
    }

    #[test]
    fn an_escalation_of_an_incident_nobody_has_is_refused() {
        let state = State::new(fresh(), catalog());
        let mut stage = Stage::default();
        assert!(!state.holds(&stage, IncidentId(9)));
        let update = EscalationUpdate {
            id: IncidentId(9),
            seen_hold: None,
            seen_news: None,
            progress: Progress::start("p", "opened", at(0)),
            entries: vec![],
            state: None,
        };
        let refused = state.stage_escalation(&mut stage, update, None, at(1));
        assert!(matches!(refused, Err(RecordError::NoOpenIncident(IncidentId(9)))), "{refused:?}");
    }
}
