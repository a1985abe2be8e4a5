//! Incident metrics over a period: counts, time to recovery, time to
//! acknowledge, availability, and how often each runbook met its target.
//!
//! [`report`] is pure: it reads incidents and the caller's `now`, nothing
//! else. What each figure means (the JSON API, `remedyctl report -o json`,
//! relies on it):
//!
//! - **The period** is half-open, `[from, to)`. Instants are Unix
//!   milliseconds, as everywhere in the domain.
//! - **Which incidents count** (every figure except availability): those
//!   *opened* within the period, wherever they stand now.
//!   - `total_incidents`: how many.
//!   - `p0_incidents` … `p3_incidents`: by the handling runbook's priority;
//!     `unprioritised_incidents`: no runbook matched, so no priority. An
//!     incident of priority `security` is in none of these, so
//!     `p0 + p1 + p2 + p3 + unprioritised` plus the incidents of priority
//!     `security` make `total_incidents`.
//!   - `security_incidents`: tagged `security` or of priority `security`
//!     (an incident both tagged and of that priority counts once).
//!   - `open_incidents`: not resolved; `resolved_incidents`: resolved;
//!     `acknowledged_incidents`: a person acknowledged them.
//! - **Time to recovery**, `mttr_seconds` (mean) and `mttr_median_seconds`:
//!   `resolved_at - opened_at` over the counted incidents that are resolved.
//!   Open incidents are left out, not counted up to `now`: their recovery
//!   time is not known yet. With nothing resolved both are `None` (`null` in
//!   JSON), never 0: a 0 would read as "recovered instantly", the best
//!   possible figure, when there is no figure at all.
//! - **Time to acknowledge**, `mtta_seconds` (mean) and
//!   `mtta_median_seconds`: `acknowledged_at - opened_at` over the counted
//!   incidents a person acknowledged (the first acknowledgement). Incidents
//!   nobody acknowledged are left out; `None` when there are none.
//! - **Availability**, from incidents tagged `total_outage`, whenever they
//!   were opened: each is down from `opened_at` to `resolved_at`, or to
//!   `now` while it is open, clipped to the period. An outage that began
//!   before the period counts for the part inside it; one still open counts
//!   up to `now` (time after `now`, not yet lived, counts as up: for a
//!   month-to-date figure pass a period that ends at `now`). Overlapping
//!   outages are merged, so no second is counted twice.
//!   - `downtime_seconds`: the merged down time inside the period.
//!   - `outage_incidents`: the `total_outage` incidents that contributed
//!     some of it.
//!   - `availability_percent`: `(period - downtime) / period * 100`,
//!     rounded to 4 decimals. `None` for a period of no length (`to <=
//!     from`): there is no time to have been available in, and 100 would
//!     claim a measurement that was never made.
//! - **Per runbook**, `runbooks`, sorted by runbook id, over the counted
//!   incidents a runbook handled (incidents no runbook matched are not
//!   listed): `incidents`, `resolved`, `mttr_seconds` (mean over the
//!   resolved, `None` when none is), `within_target` (resolved in at most
//!   the runbook's MTTR target) and `target_hit_rate`, `within_target`
//!   divided by the resolved incidents that had a target, from 0 to 1
//!   rounded to 4 decimals, `None` when no resolved incident had one.
//! - **Units**: durations are `f64` seconds rounded to the millisecond.
//!   Where clocks disagree (resolved or acknowledged "before" opened), the
//!   duration counts as 0, never negative.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::incident::Incident;
use crate::runbook::Priority;
use crate::time::Timestamp;

/// The tag of incidents that count against availability.
pub const TOTAL_OUTAGE_TAG: &str = "total_outage";

/// The tag of incidents that count as security incidents (as does priority
/// `security`).
pub const SECURITY_TAG: &str = "security";

/// A span of time, `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// Its first instant, included.
    pub from: Timestamp,
    /// Its end, excluded.
    pub to: Timestamp,
}

impl Period {
    /// Whether `at` falls within the period.
    pub fn contains(self, at: Timestamp) -> bool {
        self.from <= at && at < self.to
    }

    /// Its length in milliseconds; 0 when `to` is not after `from`.
    pub fn length_ms(self) -> u64 {
        span_ms(self.from, self.to)
    }
}

/// Incident metrics over a period. Field names are the JSON API; see the
/// module documentation for what each means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The period's first instant (Unix milliseconds).
    pub from: Timestamp,
    /// The period's end, excluded (Unix milliseconds).
    pub to: Timestamp,
    /// The `now` the report was made at (Unix milliseconds).
    pub generated_at: Timestamp,
    /// Incidents opened within the period.
    pub total_incidents: u64,
    /// Of those, priority P0.
    pub p0_incidents: u64,
    /// Of those, priority P1.
    pub p1_incidents: u64,
    /// Of those, priority P2.
    pub p2_incidents: u64,
    /// Of those, priority P3.
    pub p3_incidents: u64,
    /// Of those, without a priority (no runbook matched).
    pub unprioritised_incidents: u64,
    /// Of those, tagged `security` or of priority `security`.
    pub security_incidents: u64,
    /// Of those, not resolved.
    pub open_incidents: u64,
    /// Of those, resolved.
    pub resolved_incidents: u64,
    /// Of those, acknowledged by a person.
    pub acknowledged_incidents: u64,
    /// Mean time to recovery over the resolved ones; `None` when none is.
    pub mttr_seconds: Option<f64>,
    /// Median time to recovery over the resolved ones; `None` when none is.
    pub mttr_median_seconds: Option<f64>,
    /// Mean time to acknowledge over the acknowledged ones; `None` when none
    /// is.
    pub mtta_seconds: Option<f64>,
    /// Median time to acknowledge over the acknowledged ones; `None` when
    /// none is.
    pub mtta_median_seconds: Option<f64>,
    /// `total_outage` incidents that were down for some of the period,
    /// whenever they were opened.
    pub outage_incidents: u64,
    /// Time within the period with at least one `total_outage` incident
    /// open.
    pub downtime_seconds: f64,
    /// `(period - downtime) / period * 100`, rounded to 4 decimals; `None`
    /// for a period of no length.
    pub availability_percent: Option<f64>,
    /// Per runbook, sorted by runbook id.
    pub runbooks: Vec<RunbookMetrics>,
}

/// One runbook's incidents opened within the period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunbookMetrics {
    /// The runbook's id.
    pub runbook: String,
    /// Incidents it handled.
    pub incidents: u64,
    /// Of those, resolved.
    pub resolved: u64,
    /// Of the resolved, those that took at most the MTTR target.
    pub within_target: u64,
    /// `within_target` over the resolved incidents that had a target, from
    /// 0 to 1 rounded to 4 decimals; `None` when none had one.
    pub target_hit_rate: Option<f64>,
    /// Mean time to recovery over the resolved ones; `None` when none is.
    pub mttr_seconds: Option<f64>,
}

/// Metrics over `incidents` for `period`, as of `now` (open outages count
/// up to it). See the module documentation for each figure's meaning.
pub fn report(incidents: &[Incident], period: Period, now: Timestamp) -> Report {
    let counted: Vec<&Incident> = incidents.iter().filter(|i| period.contains(i.opened_at)).collect();
    let count = |pred: &dyn Fn(&Incident) -> bool| counted.iter().filter(|i| pred(i)).count() as u64;
    let of_priority = |p: Priority| count(&|i| i.priority == Some(p));

    let recoveries: Vec<u64> = counted.iter().filter_map(|i| recovery_ms(i)).collect();
    let acknowledgements: Vec<u64> =
        counted.iter().filter_map(|i| i.acknowledged_at.map(|at| span_ms(i.opened_at, at))).collect();
    let outages = outages(incidents, period, now);
    let downtime_ms = merged_length_ms(outages.iter().map(|&(_, interval)| interval).collect());
    let length_ms = period.length_ms();
    let availability_percent = (length_ms > 0).then(|| {
        let up = length_ms.saturating_sub(downtime_ms) as f64;
        round_to(up / length_ms as f64 * 100.0, 4)
    });

    Report {
        from: period.from,
        to: period.to,
        generated_at: now,
        total_incidents: counted.len() as u64,
        p0_incidents: of_priority(Priority::P0),
        p1_incidents: of_priority(Priority::P1),
        p2_incidents: of_priority(Priority::P2),
        p3_incidents: of_priority(Priority::P3),
        unprioritised_incidents: count(&|i| i.priority.is_none()),
        security_incidents: count(&is_security),
        open_incidents: count(&|i| i.resolved_at.is_none()),
        resolved_incidents: recoveries.len() as u64,
        acknowledged_incidents: acknowledgements.len() as u64,
        mttr_seconds: mean_seconds(&recoveries),
        mttr_median_seconds: median_seconds(&recoveries),
        mtta_seconds: mean_seconds(&acknowledgements),
        mtta_median_seconds: median_seconds(&acknowledgements),
        outage_incidents: outages.len() as u64,
        downtime_seconds: ms_to_seconds(downtime_ms as f64),
        availability_percent,
        runbooks: per_runbook(&counted),
    }
}

/// Whether the incident counts as a security incident.
fn is_security(incident: &Incident) -> bool {
    incident.priority == Some(Priority::Security) || incident.tags.iter().any(|t| t == SECURITY_TAG)
}

/// Milliseconds from opened to resolved (0 if the clocks disagree), for a
/// resolved incident.
fn recovery_ms(incident: &Incident) -> Option<u64> {
    incident.resolved_at.map(|at| span_ms(incident.opened_at, at))
}

/// The `total_outage` incidents' down intervals within the period, in
/// milliseconds, with their incidents; empty intervals are left out.
fn outages(incidents: &[Incident], period: Period, now: Timestamp) -> Vec<(&Incident, (i64, i64))> {
    incidents
        .iter()
        .filter(|i| i.tags.iter().any(|t| t == TOTAL_OUTAGE_TAG))
        .filter_map(|i| {
            let end = i.resolved_at.unwrap_or(now);
            let start = i.opened_at.max(period.from).as_millis();
            let end = end.min(period.to).as_millis();
            (start < end).then_some((i, (start, end)))
        })
        .collect()
}

/// The length of the union of half-open intervals, in milliseconds.
fn merged_length_ms(mut intervals: Vec<(i64, i64)>) -> u64 {
    intervals.sort_unstable();
    let mut total: u64 = 0;
    let mut current: Option<(i64, i64)> = None;
    for (start, end) in intervals {
        match current {
            Some((s, e)) if start <= e => current = Some((s, e.max(end))),
            _ => {
                if let Some((s, e)) = current {
                    total = total.saturating_add(span_ms(Timestamp::from_millis(s), Timestamp::from_millis(e)));
                }
                current = Some((start, end));
            }
        }
    }
    if let Some((s, e)) = current {
        total = total.saturating_add(span_ms(Timestamp::from_millis(s), Timestamp::from_millis(e)));
    }
    total
}

fn per_runbook(counted: &[&Incident]) -> Vec<RunbookMetrics> {
    #[derive(Default)]
    struct Tally {
        incidents: u64,
        recoveries: Vec<u64>,
        with_target: u64,
        within_target: u64,
    }
    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    for incident in counted {
        let Some(runbook) = incident.runbook.as_deref() else { continue };
        let tally = tallies.entry(runbook).or_default();
        tally.incidents += 1;
        let Some(took) = recovery_ms(incident) else { continue };
        tally.recoveries.push(took);
        if let Some(target) = incident.mttr_target_ms {
            tally.with_target += 1;
            if took <= target {
                tally.within_target += 1;
            }
        }
    }
    tallies
        .into_iter()
        .map(|(runbook, t)| RunbookMetrics {
            runbook: runbook.to_owned(),
            incidents: t.incidents,
            resolved: t.recoveries.len() as u64,
            within_target: t.within_target,
            target_hit_rate: (t.with_target > 0).then(|| round_to(t.within_target as f64 / t.with_target as f64, 4)),
            mttr_seconds: mean_seconds(&t.recoveries),
        })
        .collect()
}

/// Milliseconds from `from` to `to`; 0 when `to` is not after `from`. Never
/// overflows: the widest span of two `i64` instants fits in a `u64`.
fn span_ms(from: Timestamp, to: Timestamp) -> u64 {
    let span = i128::from(to.as_millis()) - i128::from(from.as_millis());
    u64::try_from(span.max(0)).unwrap_or(u64::MAX)
}

/// The mean, in seconds rounded to the millisecond.
fn mean_seconds(ms: &[u64]) -> Option<f64> {
    if ms.is_empty() {
        return None;
    }
    let sum: u128 = ms.iter().map(|&m| u128::from(m)).sum();
    Some(ms_to_seconds(sum as f64 / ms.len() as f64))
}

/// The median (the mean of the middle two for an even count), in seconds
/// rounded to the millisecond.
fn median_seconds(ms: &[u64]) -> Option<f64> {
    let mut sorted = ms.to_vec();
    sorted.sort_unstable();
    let mid = sorted.len() / 2;
    let median = match sorted.len() {
        0 => return None,
        n if n % 2 == 1 => sorted[mid] as f64,
        _ => (sorted[mid - 1] as f64 + sorted[mid] as f64) / 2.0,
    };
    Some(ms_to_seconds(median))
}

/// Milliseconds as seconds, rounded to the millisecond.
fn ms_to_seconds(ms: f64) -> f64 {
    ms.round() / 1000.0
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{ConditionKey, ConditionKind, Severity};
    use crate::incident::{IncidentId, IncidentState};

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).expect("an RFC 3339 instant")
    }

    /// 2026-11-26, a whole UTC day: 86 400 s.
    fn day() -> Period {
        Period { from: at("2026-11-26T00:00:00Z"), to: at("2026-11-27T00:00:00Z") }
    }

    fn incident(id: u64, opened: &str) -> Incident {
        Incident {
            id: IncidentId(id),
            key: ConditionKey { kind: ConditionKind::Alert(format!("alert-{id}")), target: format!("alert/{id}") },
            severity: Severity::Critical,
            state: IncidentState::Triggered,
            summary: String::new(),
            opened_at: at(opened),
            started_at: None,
            updated_at: at(opened),
            resolved_at: None,
            finding_count: 1,
            active_sources: BTreeMap::new(),
            runbook: None,
            mttr_target_ms: None,
            mttr_status: None,
            priority: None,
            tags: Vec::new(),
            acknowledged_at: None,
            acknowledged_by: None,
            escalation: None,
            drill: false,
            conversations: Default::default(),
        }
    }

    fn resolved(mut i: Incident, at_: &str) -> Incident {
        i.state = IncidentState::Resolved;
        i.resolved_at = Some(at(at_));
        i
    }

    fn acked(mut i: Incident, at_: &str) -> Incident {
        i.acknowledged_at = Some(at(at_));
        i.acknowledged_by = Some("alice".into());
        i
    }

    fn handled(mut i: Incident, runbook: &str, priority: Priority, target_secs: Option<u64>) -> Incident {
        i.runbook = Some(runbook.into());
        i.priority = Some(priority);
        i.mttr_target_ms = target_secs.map(|s| s * 1000);
        i
    }

    fn tagged(mut i: Incident, tag: &str) -> Incident {
        i.tags.push(tag.into());
        i
    }

    /// A day of incidents; `now` is 2026-11-26T18:00:00Z.
    ///
    /// | id | runbook (target) | priority | opened      | acked    | resolved | took   | notes                        |
    /// |----|------------------|----------|-------------|----------|----------|--------|------------------------------|
    /// | 1  | P1-001 (2m)      | P1       | 08:00:00    | 08:00:30 | 08:01:00 | 60 s   | within target                |
    /// | 2  | P1-001 (2m)      | P1       | 08:10:00    | 08:11:30 | 08:12:00 | 120 s  | exactly on target: hit       |
    /// | 3  | P1-001 (2m)      | P1       | 08:20:00    |          | 08:25:00 | 300 s  | missed                       |
    /// | 4  | P1-001 (2m)      | P1       | 09:00:00    |          | open     |        | excluded from MTTR           |
    /// | 5  | P0-001 (5m)      | P0       | 10:00:00    | 10:02:00 | 10:30:00 | 1800 s | total_outage                 |
    /// | 6  | P0-001 (5m)      | P0       | 10:15:00    |          | 10:45:00 | 1800 s | total_outage, overlaps 5     |
    /// | 7  | P0-001 (5m)      | P0       | 11-25 23:50 |          | 00:20:00 |        | total_outage, day before     |
    /// | 8  | P0-001 (5m)      | P0       | 17:30:00    |          | open     |        | total_outage, down until now |
    /// | 9  | SEC-001 (5m)     | security | 12:00:00    |          | 12:04:00 | 240 s  | tagged security, hit         |
    /// | 10 | none             | none     | 13:00:00    |          | 13:10:00 | 600 s  |                              |
    /// | 11 | P1-001 (2m)      | P1       | 11-27 00:00 |          |          |        | at the end: not counted      |
    fn a_day_of_incidents() -> Vec<Incident> {
        let p1 = |i| handled(i, "P1-001", Priority::P1, Some(120));
        let p0 = |i| tagged(handled(i, "P0-001", Priority::P0, Some(300)), TOTAL_OUTAGE_TAG);
        vec![
            resolved(acked(p1(incident(1, "2026-11-26T08:00:00Z")), "2026-11-26T08:00:30Z"), "2026-11-26T08:01:00Z"),
            resolved(acked(p1(incident(2, "2026-11-26T08:10:00Z")), "2026-11-26T08:11:30Z"), "2026-11-26T08:12:00Z"),
            resolved(p1(incident(3, "2026-11-26T08:20:00Z")), "2026-11-26T08:25:00Z"),
            p1(incident(4, "2026-11-26T09:00:00Z")),
            resolved(acked(p0(incident(5, "2026-11-26T10:00:00Z")), "2026-11-26T10:02:00Z"), "2026-11-26T10:30:00Z"),
            resolved(p0(incident(6, "2026-11-26T10:15:00Z")), "2026-11-26T10:45:00Z"),
            resolved(p0(incident(7, "2026-11-25T23:50:00Z")), "2026-11-26T00:20:00Z"),
            p0(incident(8, "2026-11-26T17:30:00Z")),
            resolved(
                tagged(
                    handled(incident(9, "2026-11-26T12:00:00Z"), "SEC-001", Priority::Security, Some(300)),
                    "security",
                ),
                "2026-11-26T12:04:00Z",
            ),
            resolved(incident(10, "2026-11-26T13:00:00Z"), "2026-11-26T13:10:00Z"),
            p1(incident(11, "2026-11-27T00:00:00Z")),
        ]
    }

    fn the_day() -> Report {
        report(&a_day_of_incidents(), day(), at("2026-11-26T18:00:00Z"))
    }

    #[test]
    fn counts_incidents_opened_within_the_period_by_priority() {
        let r = the_day();
        // Counted: 1-6 and 8-10 (7 opened the day before, 11 at the end,
        // which the period excludes): 9.
        assert_eq!(r.total_incidents, 9);
        assert_eq!(r.p0_incidents, 3); // 5, 6, 8
        assert_eq!(r.p1_incidents, 4); // 1, 2, 3, 4
        assert_eq!(r.p2_incidents, 0);
        assert_eq!(r.p3_incidents, 0);
        assert_eq!(r.unprioritised_incidents, 1); // 10
        assert_eq!(r.security_incidents, 1); // 9, tagged and of priority security: once
        assert_eq!(r.open_incidents, 2); // 4, 8
        assert_eq!(r.resolved_incidents, 7); // 1, 2, 3, 5, 6, 9, 10
        assert_eq!(r.acknowledged_incidents, 3); // 1, 2, 5
        assert_eq!((r.from, r.to, r.generated_at), (day().from, day().to, at("2026-11-26T18:00:00Z")));
    }

    #[test]
    fn mttr_is_over_resolved_incidents_opened_within_the_period() {
        let r = the_day();
        // 60 + 120 + 300 + 1800 + 1800 + 240 + 600 = 4920 s over 7
        // = 702.857142… s, to the millisecond 702.857 s. Open 4 and 8 are
        // left out, and so is 7 (opened the day before).
        assert_eq!(r.mttr_seconds, Some(702.857));
        // Sorted: 60, 120, 240, 300, 600, 1800, 1800: the fourth.
        assert_eq!(r.mttr_median_seconds, Some(300.0));
    }

    #[test]
    fn mtta_is_over_acknowledged_incidents() {
        let r = the_day();
        // 30 s (1), 90 s (2), 120 s (5): mean 80 s, median 90 s.
        assert_eq!(r.mtta_seconds, Some(80.0));
        assert_eq!(r.mtta_median_seconds, Some(90.0));
    }

    #[test]
    fn availability_merges_outages_and_clips_them_to_the_period() {
        let r = the_day();
        // 5 and 6 (10:00-10:30, 10:15-10:45) merge to 10:00-10:45: 2700 s.
        // 7 (23:50 the day before - 00:20) counts from 00:00: 1200 s.
        // 8 (17:30, open) counts until now, 18:00: 1800 s.
        // Downtime 5700 s; (86400 - 5700) / 86400 * 100 = 93.40277…
        assert_eq!(r.downtime_seconds, 5700.0);
        assert_eq!(r.availability_percent, Some(93.4028));
        assert_eq!(r.outage_incidents, 4);
    }

    #[test]
    fn per_runbook_metrics_are_sorted_by_id_with_target_hit_rates() {
        let r = the_day();
        let expected = vec![
            // 5, 6, 8; 5 and 6 resolved in 1800 s against 300 s: 0 of 2.
            RunbookMetrics {
                runbook: "P0-001".into(),
                incidents: 3,
                resolved: 2,
                within_target: 0,
                target_hit_rate: Some(0.0),
                mttr_seconds: Some(1800.0),
            },
            // 1-4; 60 s and 120 s within 120 s, 300 s not: 2 of 3 = 0.6667;
            // MTTR (60 + 120 + 300) / 3 = 160 s.
            RunbookMetrics {
                runbook: "P1-001".into(),
                incidents: 4,
                resolved: 3,
                within_target: 2,
                target_hit_rate: Some(0.6667),
                mttr_seconds: Some(160.0),
            },
            // 9: 240 s within 300 s.
            RunbookMetrics {
                runbook: "SEC-001".into(),
                incidents: 1,
                resolved: 1,
                within_target: 1,
                target_hit_rate: Some(1.0),
                mttr_seconds: Some(240.0),
            },
        ];
        assert_eq!(r.runbooks, expected);
    }

    #[test]
    fn three_resolved_and_one_open_give_an_mttr_of_160_seconds() {
        let incidents = vec![
            resolved(incident(1, "2026-11-26T10:00:00Z"), "2026-11-26T10:01:00Z"), // 60 s
            resolved(incident(2, "2026-11-26T10:00:00Z"), "2026-11-26T10:02:00Z"), // 120 s
            resolved(incident(3, "2026-11-26T10:00:00Z"), "2026-11-26T10:05:00Z"), // 300 s
            incident(4, "2026-11-26T10:00:00Z"),                                   // open
        ];
        let r = report(&incidents, day(), at("2026-11-26T23:00:00Z"));
        // (60 + 120 + 300) / 3 = 160; median 120.
        assert_eq!(r.mttr_seconds, Some(160.0));
        assert_eq!(r.mttr_median_seconds, Some(120.0));
        assert_eq!((r.total_incidents, r.open_incidents, r.resolved_incidents), (4, 1, 3));
        assert_eq!(r.unprioritised_incidents, 4);
        assert!(r.runbooks.is_empty(), "no runbook handled them");
    }

    #[test]
    fn overlapping_total_outages_are_not_counted_twice() {
        let incidents = vec![
            resolved(tagged(incident(1, "2026-11-26T10:00:00Z"), TOTAL_OUTAGE_TAG), "2026-11-26T10:30:00Z"),
            resolved(tagged(incident(2, "2026-11-26T10:15:00Z"), TOTAL_OUTAGE_TAG), "2026-11-26T10:45:00Z"),
            // Inside the first: adds nothing.
            resolved(tagged(incident(3, "2026-11-26T10:05:00Z"), TOTAL_OUTAGE_TAG), "2026-11-26T10:10:00Z"),
            // Starts where the merged outage ends: adjacent, 5 min more.
            resolved(tagged(incident(4, "2026-11-26T10:45:00Z"), TOTAL_OUTAGE_TAG), "2026-11-26T10:50:00Z"),
            // Not an outage.
            resolved(incident(5, "2026-11-26T12:00:00Z"), "2026-11-26T13:00:00Z"),
        ];
        let r = report(&incidents, day(), at("2026-11-26T23:00:00Z"));
        // 10:00-10:50: 3000 s; (86400 - 3000) / 86400 * 100 = 96.52777…
        assert_eq!(r.downtime_seconds, 3000.0);
        assert_eq!(r.availability_percent, Some(96.5278));
        assert_eq!(r.outage_incidents, 4);

        // The two of the brief's example alone: 45 minutes.
        let r = report(&incidents[..2], day(), at("2026-11-26T23:00:00Z"));
        // 2700 s; (86400 - 2700) / 86400 * 100 = 96.875 exactly.
        assert_eq!(r.downtime_seconds, 2700.0);
        assert_eq!(r.availability_percent, Some(96.875));
    }

    #[test]
    fn an_outage_straddling_the_period_start_counts_only_inside_it() {
        let incidents =
            vec![resolved(tagged(incident(1, "2026-11-25T23:50:00Z"), TOTAL_OUTAGE_TAG), "2026-11-26T00:20:00Z")];
        let r = report(&incidents, day(), at("2026-11-26T23:00:00Z"));
        // 00:00-00:20: 1200 s; (86400 - 1200) / 86400 * 100 = 98.61111…
        assert_eq!(r.downtime_seconds, 1200.0);
        assert_eq!(r.availability_percent, Some(98.6111));
        // Opened before the period: not one of its incidents.
        assert_eq!(r.total_incidents, 0);
        assert_eq!(r.outage_incidents, 1);
    }

    #[test]
    fn an_open_outage_counts_until_now_and_no_further_than_the_period() {
        let open = vec![tagged(incident(1, "2026-11-26T23:00:00Z"), TOTAL_OUTAGE_TAG)];
        // Now is 23:30: 1800 s down.
        let r = report(&open, day(), at("2026-11-26T23:30:00Z"));
        assert_eq!(r.downtime_seconds, 1800.0);
        // Now is the next day at 02:00: down until the period's end, 3600 s.
        let r = report(&open, day(), at("2026-11-27T02:00:00Z"));
        assert_eq!(r.downtime_seconds, 3600.0);
        // Now before it opened (clocks disagree): no downtime, no panic.
        let r = report(&open, day(), at("2026-11-26T22:00:00Z"));
        assert_eq!(r.downtime_seconds, 0.0);
        assert_eq!(r.availability_percent, Some(100.0));
        assert_eq!(r.outage_incidents, 0);
    }

    #[test]
    fn an_outage_entirely_outside_the_period_does_not_count() {
        let incidents = vec![
            resolved(tagged(incident(1, "2026-11-25T10:00:00Z"), TOTAL_OUTAGE_TAG), "2026-11-25T11:00:00Z"),
            resolved(tagged(incident(2, "2026-11-27T00:00:00Z"), TOTAL_OUTAGE_TAG), "2026-11-27T01:00:00Z"),
        ];
        let r = report(&incidents, day(), at("2026-11-28T00:00:00Z"));
        assert_eq!((r.downtime_seconds, r.availability_percent, r.outage_incidents), (0.0, Some(100.0), 0));
    }

    #[test]
    fn the_period_includes_its_start_and_excludes_its_end() {
        let incidents = vec![
            incident(1, "2026-11-26T00:00:00Z"),
            incident(2, "2026-11-26T23:59:59.999Z"),
            incident(3, "2026-11-27T00:00:00Z"),
            incident(4, "2026-11-25T23:59:59.999Z"),
        ];
        let r = report(&incidents, day(), at("2026-11-27T01:00:00Z"));
        assert_eq!(r.total_incidents, 2);
        assert!(day().contains(at("2026-11-26T00:00:00Z")));
        assert!(!day().contains(at("2026-11-27T00:00:00Z")));
        assert_eq!(day().length_ms(), 86_400_000);
    }

    #[test]
    fn security_counts_the_tag_or_the_priority_once_each() {
        let incidents = vec![
            tagged(handled(incident(1, "2026-11-26T01:00:00Z"), "SEC-001", Priority::Security, None), SECURITY_TAG),
            handled(incident(2, "2026-11-26T02:00:00Z"), "SEC-002", Priority::Security, None),
            tagged(handled(incident(3, "2026-11-26T03:00:00Z"), "P1-009", Priority::P1, None), SECURITY_TAG),
            handled(incident(4, "2026-11-26T04:00:00Z"), "P2-001", Priority::P2, None),
            handled(incident(5, "2026-11-26T05:00:00Z"), "P3-001", Priority::P3, None),
        ];
        let r = report(&incidents, day(), at("2026-11-26T23:00:00Z"));
        assert_eq!(r.security_incidents, 3);
        assert_eq!((r.p0_incidents, r.p1_incidents, r.p2_incidents, r.p3_incidents), (0, 1, 1, 1));
        assert_eq!(r.unprioritised_incidents, 0);
    }

    #[test]
    fn a_runbook_without_a_target_has_no_hit_rate() {
        let incidents = vec![
            resolved(handled(incident(1, "2026-11-26T01:00:00Z"), "X-001", Priority::P2, None), "2026-11-26T01:01:00Z"),
            handled(incident(2, "2026-11-26T02:00:00Z"), "Y-001", Priority::P2, Some(60)),
        ];
        let r = report(&incidents, day(), at("2026-11-26T23:00:00Z"));
        assert_eq!(r.runbooks.len(), 2);
        assert_eq!((r.runbooks[0].runbook.as_str(), r.runbooks[0].target_hit_rate), ("X-001", None));
        assert_eq!(r.runbooks[0].mttr_seconds, Some(60.0));
        // Y-001 has a target but nothing resolved: no rate, no MTTR.
        assert_eq!((r.runbooks[1].target_hit_rate, r.runbooks[1].mttr_seconds), (None, None));
        assert_eq!((r.runbooks[1].incidents, r.runbooks[1].resolved), (1, 0));
    }

    #[test]
    fn no_incidents_report_no_times_and_full_availability() {
        let r = report(&[], day(), at("2026-11-26T12:00:00Z"));
        assert_eq!(r.total_incidents, 0);
        assert_eq!((r.mttr_seconds, r.mttr_median_seconds), (None, None));
        assert_eq!((r.mtta_seconds, r.mtta_median_seconds), (None, None));
        assert_eq!((r.downtime_seconds, r.availability_percent), (0.0, Some(100.0)));
        assert!(r.runbooks.is_empty());
    }

    #[test]
    fn a_period_of_no_length_has_no_availability() {
        let incidents = a_day_of_incidents();
        let instant = at("2026-11-26T10:20:00Z");
        let r = report(&incidents, Period { from: instant, to: instant }, at("2026-11-26T18:00:00Z"));
        assert_eq!(r.availability_percent, None);
        assert_eq!(r.downtime_seconds, 0.0);
        assert_eq!(r.total_incidents, 0);
        // Backwards is no length either.
        let backwards = Period { from: day().to, to: day().from };
        assert_eq!(backwards.length_ms(), 0);
        let r = report(&incidents, backwards, at("2026-11-26T18:00:00Z"));
        assert_eq!((r.availability_percent, r.total_incidents), (None, 0));
    }

    #[test]
    fn clocks_that_disagree_count_as_zero_and_nothing_panics() {
        // Resolved and acknowledged "before" they opened.
        let skewed = vec![
            resolved(acked(incident(1, "2026-11-26T10:00:00Z"), "2026-11-26T09:00:00Z"), "2026-11-26T09:59:00Z"),
            resolved(tagged(incident(2, "2026-11-26T11:00:00Z"), TOTAL_OUTAGE_TAG), "2026-11-26T10:00:00Z"),
        ];
        let r = report(&skewed, day(), at("2026-11-26T12:00:00Z"));
        assert_eq!((r.mttr_seconds, r.mtta_seconds), (Some(0.0), Some(0.0)));
        assert_eq!((r.downtime_seconds, r.availability_percent), (0.0, Some(100.0)));

        // The widest period there is, and instants at its edges.
        let widest = Period { from: Timestamp::from_millis(i64::MIN), to: Timestamp::from_millis(i64::MAX) };
        let mut edge = tagged(incident(3, "2026-11-26T10:00:00Z"), TOTAL_OUTAGE_TAG);
        edge.opened_at = Timestamp::from_millis(i64::MIN);
        edge.resolved_at = Some(Timestamp::from_millis(i64::MAX));
        edge.acknowledged_at = Some(Timestamp::from_millis(i64::MAX));
        let r = report(&[edge.clone(), edge], widest, Timestamp::from_millis(i64::MAX));
        assert_eq!(r.total_incidents, 2);
        assert_eq!(r.mttr_seconds, Some(u64::MAX as f64 / 1000.0));
        assert_eq!(r.availability_percent, Some(0.0));
    }

    #[test]
    fn json_field_names_are_stable_and_missing_times_are_null() {
        let r = report(&[incident(1, "2026-11-26T10:00:00Z")], day(), at("2026-11-26T12:00:00Z"));
        let json = serde_json::to_value(&r).expect("serializes");
        let mut keys: Vec<&str> = json.as_object().expect("an object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = vec![
            "from",
            "to",
            "generated_at",
            "total_incidents",
            "p0_incidents",
            "p1_incidents",
            "p2_incidents",
            "p3_incidents",
            "unprioritised_incidents",
            "security_incidents",
            "open_incidents",
            "resolved_incidents",
            "acknowledged_incidents",
            "mttr_seconds",
            "mttr_median_seconds",
            "mtta_seconds",
            "mtta_median_seconds",
            "outage_incidents",
            "downtime_seconds",
            "availability_percent",
            "runbooks",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert!(json["mttr_seconds"].is_null());
        assert!(json["mtta_seconds"].is_null());
        assert_eq!(json["from"], serde_json::json!(day().from.as_millis()));
        assert_eq!(json["availability_percent"], serde_json::json!(100.0));

        let r = the_day();
        let json = serde_json::to_value(&r).expect("serializes");
        let runbook = json["runbooks"][1].as_object().expect("an object");
        let mut keys: Vec<&str> = runbook.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["incidents", "mttr_seconds", "resolved", "runbook", "target_hit_rate", "within_target"]);
        let back: Report = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, r);
    }

    #[test]
    fn durations_keep_millisecond_precision() {
        let incidents = vec![
            resolved(incident(1, "2026-11-26T10:00:00Z"), "2026-11-26T10:00:00.001Z"),
            resolved(incident(2, "2026-11-26T10:00:00Z"), "2026-11-26T10:00:00.002Z"),
        ];
        let r = report(&incidents, day(), at("2026-11-26T12:00:00Z"));
        // 1.5 ms rounds to 2 ms.
        assert_eq!(r.mttr_seconds, Some(0.002));
        assert_eq!(r.mttr_median_seconds, Some(0.002));
    }
}
