//! The cluster's state overlaid on the local file, pure: what a new leader
//! loads, what its local store must import to agree, and how an incident's
//! timeline is bounded in its object.

use std::collections::{BTreeMap, HashMap, HashSet};

use remedy_shared::guard::GuardState;
use remedy_shared::incident::{Incident, IncidentId, TimelineEntry};
use remedy_shared::run::{Intent, RunRecord};

use super::encoding::{ClusterIncident, Timeline, sanitize_entry};
use crate::store::{Counters, Loaded, WriteBatch};

/// Whether `batch` changes anything the cluster keeps: findings, agents and
/// alert keys stay in the local file.
pub(super) fn touches_cluster(batch: &WriteBatch) -> bool {
    !batch.incidents.is_empty()
        || !batch.timeline.is_empty()
        || batch.counters.is_some()
        || !batch.runs.is_empty()
        || batch.guard.is_some()
}

/// Incidents changed or given entries, in the batch's order.
pub(super) fn touched_incidents(batch: &WriteBatch) -> Vec<IncidentId> {
    let mut seen = HashSet::new();
    batch
        .incidents
        .iter()
        .map(|i| i.id)
        .chain(batch.timeline.iter().map(|(id, _)| *id))
        .filter(|id| seen.insert(*id))
        .collect()
}

/// Each counter at the higher of the two: a number spent by either is spent.
pub(super) fn max_counters(a: Counters, b: Counters) -> Counters {
    Counters {
        next_incident: a.next_incident.max(b.next_incident),
        next_own_sequence: a.next_own_sequence.max(b.next_own_sequence),
    }
}

/// What the cluster holds that a new leader needs.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    /// Its open incidents, and those the local file still holds open.
    pub(super) incidents: Vec<ClusterIncident>,
    /// Runs unfinished, or of those incidents.
    pub(super) runs: Vec<RunRecord>,
    /// Idempotency keys of those runs, by incident.
    pub(super) keys: Vec<(IncidentId, Intent)>,
    /// The rails' memory, approvals included.
    pub(super) guard: Option<GuardState>,
    /// The counters.
    pub(super) counters: Counters,
}

/// `local` overlaid with the cluster's state, and what the local store must
/// import to agree. The cluster wins where both have something: each commit
/// reaches it after the local file, so a local copy that differs is either
/// stale (this replica led long ago) or was never acknowledged.
pub(super) fn overlay(
    mut local: Loaded,
    snapshot: Snapshot,
    local_timelines: &HashMap<IncidentId, Vec<TimelineEntry>>,
) -> (Loaded, WriteBatch) {
    let mut import = WriteBatch::default();
    let mut open: BTreeMap<IncidentId, Incident> = local.open_incidents.drain(..).map(|i| (i.id, i)).collect();
    let mut highest = 0;
    for found in snapshot.incidents {
        let id = found.incident.id;
        highest = highest.max(id.0);
        if found.incident.state.is_closed() {
            open.remove(&id);
        } else {
            open.insert(id, found.incident.clone());
        }
        let empty = Vec::new();
        let have = local_timelines.get(&id).unwrap_or(&empty);
        import.timeline.extend(missing_entries(have, &found.timeline).into_iter().map(|e| (id, e)));
        import.incidents.push(found.incident);
    }

    let mut keys: BTreeMap<IncidentId, Vec<Intent>> = BTreeMap::new();
    for (id, intent) in snapshot.keys {
        keys.entry(id).or_default().push(intent);
    }
    let mut runs: BTreeMap<IncidentId, RunRecord> = local.runs.drain(..).map(|r| (r.incident_id, r)).collect();
    for mut run in snapshot.runs {
        let recorded = keys.remove(&run.incident_id).unwrap_or_default();
        merge_keys(&mut run, recorded);
        import.runs.push(run.clone());
        runs.insert(run.incident_id, run);
    }
    local.runs = runs.into_values().filter(|r| !r.status.is_finished() || open.contains_key(&r.incident_id)).collect();
    local.open_incidents = open.into_values().collect();

    if let Some(guard) = snapshot.guard {
        import.guard = Some(guard.clone());
        local.guard = Some(guard);
    }
    let mut counters = max_counters(local.counters, snapshot.counters);
    counters.next_incident = counters.next_incident.max(highest.saturating_add(1));
    if counters != local.counters {
        import.counters = Some(counters);
    }
    local.counters = counters;
    (local, import)
}

/// Adds to `run` the executions whose idempotency key was recorded but that
/// the run's own record does not list (the leader stopped between the two
/// writes): they may have run, so they come back as interrupted, never to
/// run again.
pub(super) fn merge_keys(run: &mut RunRecord, keys: impl IntoIterator<Item = Intent>) {
    let mut extra: Vec<Intent> = keys.into_iter().filter(|k| run.intent(&k.key).is_none()).collect();
    extra.sort_by(|a, b| a.recorded_at.cmp(&b.recorded_at).then_with(|| a.key.cmp(&b.key)));
    run.intents.extend(extra);
}

/// The entries of `cluster` (the newest of a timeline) that `local` (a
/// possibly stale, possibly complete copy) lacks.
pub(super) fn missing_entries(local: &[TimelineEntry], cluster: &[TimelineEntry]) -> Vec<TimelineEntry> {
    let Some(first) = cluster.first() else {
        return Vec::new();
    };
    let local: Vec<TimelineEntry> = local.iter().map(sanitize_entry).collect();
    for start in (0..local.len()).rev().filter(|&p| &local[p] == first) {
        let matched = local[start..].iter().zip(cluster).take_while(|(a, b)| a == b).count();
        if start + matched == local.len() {
            return cluster[matched..].to_vec();
        }
        if matched == cluster.len() {
            return Vec::new();
        }
    }
    cluster.to_vec()
}

/// `base` with `appended` added, cut to the newest `limit` entries and to
/// `max_bytes` of JSON, counting what was cut.
pub(super) fn bounded(
    base: Timeline,
    appended: impl IntoIterator<Item = TimelineEntry>,
    limit: usize,
    max_bytes: usize,
) -> Timeline {
    let Timeline { mut entries, mut dropped } = base;
    entries.extend(appended.into_iter().map(|e| sanitize_entry(&e)));
    let over = entries.len().saturating_sub(limit);
    let mut cut = over;
    let mut bytes: usize = entries[over..].iter().map(entry_bytes).sum();
    while bytes > max_bytes && cut + 1 < entries.len() {
        bytes -= entry_bytes(&entries[cut]);
        cut += 1;
    }
    entries.drain(..cut);
    dropped = dropped.saturating_add(cut as u64);
    Timeline { entries, dropped }
}

/// About what an entry weighs in the object's JSON.
fn entry_bytes(entry: &TimelineEntry) -> usize {
    entry.message.len() + entry.details.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>() + 64
}

#[cfg(test)]
mod tests {
    use remedy_shared::incident::IncidentState;
    use remedy_shared::run::RunStatus;

    use super::super::encoding::MESSAGE_MAX;
    use super::super::fixtures::{at, entry, guard, incident, run};
    use super::*;

    #[test]
    fn a_key_the_run_does_not_list_comes_back_interrupted() {
        let mut r = run(7);
        let recorded = Intent {
            key: "INC-000007/restart#1".into(),
            step_id: "restart".into(),
            recorded_at: at(10),
            outcome: None,
        };
        let listed = r.intents[0].clone();
        merge_keys(&mut r, vec![listed, recorded.clone()]);
        assert_eq!(r.intents.len(), 3, "a key the run lists is not added twice");
        assert_eq!(r.interrupted(), Some(&recorded));
    }

    #[test]
    fn the_timeline_keeps_the_newest_entries_and_counts_the_rest() {
        let base = Timeline { entries: (0..3).map(|n| entry(n, "old")).collect(), dropped: 10 };
        let t = bounded(base, (3..8).map(|n| entry(n, "new")), 4, usize::MAX);
        assert_eq!(t.entries.iter().map(|e| e.at).collect::<Vec<_>>(), (4..8).map(at).collect::<Vec<_>>());
        assert_eq!(t.dropped, 14);
        // Bytes bound it too, but the newest entry always stays.
        let big = "x".repeat(MESSAGE_MAX);
        let t = bounded(Timeline::default(), (0..10).map(|n| entry(n, &big)), 100, 3 * (MESSAGE_MAX + 64));
        assert_eq!(t.entries.len(), 3);
        assert_eq!(t.dropped, 7);
        let t = bounded(Timeline::default(), [entry(0, &big)], 100, 10);
        assert_eq!(t.entries.len(), 1);
    }

    #[test]
    fn missing_entries_are_what_the_local_copy_lacks() {
        let all: Vec<TimelineEntry> = (0..10).map(|n| entry(n, "e")).collect();
        // Empty local store: everything.
        assert_eq!(missing_entries(&[], &all[5..]), all[5..].to_vec());
        // Stale: the tail overlaps the cluster's head.
        assert_eq!(missing_entries(&all[..7], &all[5..]), all[7..].to_vec());
        // Up to date, or ahead (a commit the cluster never took): nothing.
        assert!(missing_entries(&all, &all[5..]).is_empty());
        assert!(missing_entries(&all, &all[3..8]).is_empty());
        // No overlap at all: everything.
        assert_eq!(missing_entries(&all[..2], &all[5..]), all[5..].to_vec());
        assert!(missing_entries(&all, &[]).is_empty());
    }

    #[test]
    fn overlay_prefers_the_cluster_and_imports_it() {
        let stale_open = incident(3, IncidentState::Triggered);
        let local = Loaded {
            open_incidents: vec![stale_open.clone(), incident(4, IncidentState::Triggered)],
            counters: Counters { next_incident: 5, next_own_sequence: 9 },
            runs: vec![run(3)],
            ..Loaded::default()
        };
        let mut closed = stale_open.clone();
        closed.state = IncidentState::Resolved;
        let mut newer = incident(7, IncidentState::Mitigating);
        newer.summary = "from the old leader".into();
        let mut cluster_run = run(7);
        cluster_run.intents.truncate(1);
        let snapshot = Snapshot {
            incidents: vec![
                ClusterIncident { incident: closed, timeline: vec![entry(1, "a")], dropped: 0 },
                ClusterIncident { incident: newer.clone(), timeline: vec![entry(1, "a"), entry(2, "b")], dropped: 0 },
            ],
            runs: vec![cluster_run],
            keys: vec![(IncidentId(7), run(7).intents[1].clone())],
            guard: Some(guard()),
            counters: Counters { next_incident: 6, next_own_sequence: 2 },
        };
        let timelines: HashMap<IncidentId, Vec<TimelineEntry>> = [(IncidentId(3), vec![entry(1, "a")])].into();
        let (loaded, import) = overlay(local, snapshot, &timelines);
        let open: Vec<u64> = loaded.open_incidents.iter().map(|i| i.id.0).collect();
        assert_eq!(open, vec![4, 7], "the cluster closed INC-3; INC-7 is the old leader's");
        assert_eq!(loaded.counters, Counters { next_incident: 8, next_own_sequence: 9 }, "max of both, past INC-7");
        assert_eq!(loaded.guard, Some(guard()));
        let run7 = loaded.runs.iter().find(|r| r.incident_id == IncidentId(7)).expect("the old leader's run");
        assert_eq!(run7.intents, run(7).intents, "the recorded key is back, interrupted");
        assert!(
            loaded.runs.iter().any(|r| r.incident_id == IncidentId(3)),
            "an unfinished run stays loaded whatever its incident: the engine finishes it"
        );
        assert_eq!(import.incidents.len(), 2);
        assert_eq!(
            import.timeline,
            vec![(IncidentId(7), entry(1, "a")), (IncidentId(7), entry(2, "b"))],
            "INC-3's entry was there already"
        );
        assert_eq!(import.counters, Some(loaded.counters));
        assert_eq!(import.runs.len(), 1);
    }

    #[test]
    fn a_batch_touches_the_cluster_only_for_what_lives_there() {
        let mut batch = WriteBatch::default();
        batch.alert_keys.push(("k".into(), at(0)));
        assert!(!touches_cluster(&batch), "findings, agents and alert keys stay local");
        batch.timeline.push((IncidentId(2), entry(0, "x")));
        batch.incidents.push(incident(1, IncidentState::Triggered));
        batch.timeline.push((IncidentId(1), entry(0, "y")));
        assert!(touches_cluster(&batch));
        assert_eq!(touched_incidents(&batch), vec![IncidentId(1), IncidentId(2)]);
    }

    #[test]
    fn an_empty_cluster_leaves_the_local_state_and_imports_nothing() {
        let local = Loaded {
            open_incidents: vec![incident(4, IncidentState::Triggered)],
            counters: Counters { next_incident: 5, next_own_sequence: 2 },
            runs: vec![run(4)],
            ..Loaded::default()
        };
        let (loaded, import) = overlay(local.clone(), Snapshot::default(), &HashMap::new());
        assert_eq!(loaded.open_incidents, local.open_incidents);
        assert_eq!(loaded.runs, local.runs);
        assert_eq!(loaded.counters, local.counters);
        assert!(import.is_empty(), "nothing to import: {import:?}");
    }

    #[test]
    fn the_next_incident_number_passes_every_incident_the_cluster_holds() {
        let local = Loaded { counters: Counters { next_incident: 1, next_own_sequence: 1 }, ..Loaded::default() };
        let snapshot = Snapshot {
            incidents: vec![ClusterIncident {
                incident: incident(41, IncidentState::Resolved),
                timeline: Vec::new(),
                dropped: 0,
            }],
            ..Snapshot::default()
        };
        let (loaded, import) = overlay(local, snapshot, &HashMap::new());
        assert_eq!(loaded.counters.next_incident, 42, "a closed incident's number is spent too");
        assert!(loaded.open_incidents.is_empty());
        assert_eq!(import.counters, Some(loaded.counters));
    }

    #[test]
    fn a_finished_run_of_a_closed_incident_is_imported_but_not_loaded() {
        let mut finished = run(9);
        finished.status = RunStatus::Succeeded;
        let snapshot = Snapshot {
            incidents: vec![ClusterIncident {
                incident: incident(9, IncidentState::Resolved),
                timeline: Vec::new(),
                dropped: 0,
            }],
            runs: vec![finished.clone()],
            ..Snapshot::default()
        };
        let (loaded, import) = overlay(Loaded::default(), snapshot, &HashMap::new());
        assert!(loaded.runs.is_empty(), "nothing left for the engine to do");
        assert_eq!(import.runs, vec![finished]);
    }

    #[test]
    fn counters_take_the_higher_of_each() {
        let a = Counters { next_incident: 9, next_own_sequence: 2 };
        let b = Counters { next_incident: 3, next_own_sequence: 7 };
        assert_eq!(max_counters(a, b), Counters { next_incident: 9, next_own_sequence: 7 });
        assert_eq!(max_counters(b, a), max_counters(a, b));
    }

    #[test]
    fn keys_the_run_does_not_list_come_back_in_the_order_they_were_recorded() {
        let mut r = run(7);
        r.intents.clear();
        let key = |name: &str, ms: i64| Intent {
            key: format!("INC-000007/{name}#1"),
            step_id: name.into(),
            recorded_at: at(ms),
            outcome: None,
        };
        merge_keys(&mut r, vec![key("late", 9), key("b", 2), key("a", 2)]);
        let keys: Vec<&str> = r.intents.iter().map(|i| i.step_id.as_str()).collect();
        assert_eq!(keys, vec!["a", "b", "late"], "by time, then by key");
    }
}
