//! The post-incident review: a Markdown draft made from an incident's
//! record.
//!
//! It follows the review template section by section: a summary (date,
//! duration, impact, root cause), the timeline, what went well, what could
//! be improved, action items and follow-up actions. Remedy fills in what it
//! recorded: the summary's facts (with the runbook, its MTTR target against
//! the actual time and the time to acknowledge), an account of what
//! automation did, and every timeline entry, automated decisions included,
//! guard-rail refusals with their rail and reason. The root cause and the
//! sections after the timeline are left for people.
//!
//! The timeline is in time order; entries at the same instant keep the
//! order the store gave them. Times are RFC 3339 in UTC. Each entry is one
//! table row whatever its text holds: `|` and `\` are escaped and line
//! breaks become `<br>`.
//!
//! Pure: the time comes in as `now` (for an incident still open).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::incident::{EntryKind, Incident, TimelineEntry};
use crate::text::{Unit, truncate};
use crate::time::Timestamp;

/// What a review is made from.
#[derive(Debug, Clone, Copy)]
pub struct ReviewInput<'a> {
    /// The incident.
    pub incident: &'a Incident,
    /// Its timeline, in the store's order.
    pub timeline: &'a [TimelineEntry],
    /// The title of the runbook that handled it, if it is known.
    pub runbook_title: Option<&'a str>,
    /// The current time: an open incident's duration counts up to it.
    pub now: Timestamp,
}

/// What automation did, counted from a timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Automation {
    /// Actions started (`action` entries), rehearsals included.
    pub actions: u64,
    /// Of those, rehearsals: dry-run or shadow, nothing changed.
    pub rehearsed: u64,
    /// Actions the guard rails refused (`decision` entries whose outcome is
    /// `refused`).
    pub refused: u64,
    /// The refusals by the rail that refused; a refusal that names no rail
    /// is counted in `refused` only.
    pub refused_by_rail: BTreeMap<String, u64>,
    /// Actions that failed (`result` entries whose status is `failed`,
    /// `timed_out` or `invalid`).
    pub failed: u64,
    /// Escalations to people (`escalated` entries).
    pub escalations: u64,
}

/// Counts what automation did on `timeline`.
pub fn automation(timeline: &[TimelineEntry]) -> Automation {
    let mut counts = Automation::default();
    for entry in timeline {
        let detail = |key: &str| entry.details.get(key).map(String::as_str);
        match entry.kind {
            EntryKind::Action => {
                counts.actions += 1;
                if matches!(detail("mode"), Some("dry_run" | "shadow")) {
                    counts.rehearsed += 1;
                }
            }
            EntryKind::Decision if detail("outcome") == Some("refused") => {
                counts.refused += 1;
                if let Some(rail) = detail("rail") {
                    *counts.refused_by_rail.entry(rail.to_owned()).or_default() += 1;
                }
            }
            EntryKind::Result if matches!(detail("status"), Some("failed" | "timed_out" | "invalid")) => {
                counts.failed += 1;
            }
            EntryKind::Escalated => counts.escalations += 1,
            _ => {}
        }
    }
    counts
}

/// The blank people fill in.
const TO_BE_FILLED_IN: &str = "_to be filled in_";

/// Details shown beside an entry's message, in this order, then every
/// `evidence.*` detail. `mode` is shown only when it is not `live`.
const SHOWN_DETAILS: &[&str] = &["step", "mode", "outcome", "rail", "status", "by", "source", "policy"];

/// Longest detail value shown, in characters; longer ones are cut.
const MAX_DETAIL_CHARS: usize = 200;

/// The post-incident review of `input.incident`, as Markdown.
pub fn review_markdown(input: &ReviewInput<'_>) -> String {
    let incident = input.incident;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_review(&mut out, input, incident);
    out
}

fn write_review(out: &mut String, input: &ReviewInput<'_>, incident: &Incident) -> std::fmt::Result {
    writeln!(out, "# Post-Incident Review - {}", incident.id)?;
    writeln!(out)?;
    writeln!(
        out,
        "_A draft from {}'s record, made at {}. The root cause and the sections after the timeline are for people._",
        incident.id, input.now
    )?;
    writeln!(out)?;

    writeln!(out, "## Incident Summary")?;
    writeln!(out)?;
    writeln!(out, "- **Date:** {}", incident.opened_at)?;
    writeln!(out, "- **Duration:** {}", duration_line(incident, input.now))?;
    writeln!(out, "- **Impact:** {}", impact_line(incident))?;
    writeln!(out, "- **Root Cause:** {TO_BE_FILLED_IN}")?;
    writeln!(out, "- **Condition:** {}", inline(&incident.key.to_string()))?;
    writeln!(out, "- **State:** {}", incident.state.as_str())?;
    writeln!(out, "- **Runbook:** {}", runbook_line(incident, input.runbook_title))?;
    writeln!(out, "- **MTTR:** {}", mttr_line(incident, input.now))?;
    writeln!(out, "- **Time to acknowledge:** {}", acknowledge_line(incident))?;
    writeln!(out)?;

    let counts = automation(input.timeline);
    writeln!(out, "## Automation")?;
    writeln!(out)?;
    let rehearsed = match counts.rehearsed {
        0 => String::new(),
        n => format!(" ({n} rehearsed: dry-run or shadow, nothing changed)"),
    };
    writeln!(out, "- **Actions started:** {}{rehearsed}", counts.actions)?;
    let rails = if counts.refused_by_rail.is_empty() {
        String::new()
    } else {
        let rails: Vec<String> =
            counts.refused_by_rail.iter().map(|(rail, n)| format!("{} {n}", inline(rail))).collect();
        format!(" ({})", rails.join(", "))
    };
    writeln!(out, "- **Refused by guard rails:** {}{rails}", counts.refused)?;
    writeln!(out, "- **Failed:** {}", counts.failed)?;
    writeln!(out, "- **Escalations:** {}", counts.escalations)?;
    writeln!(out)?;

    writeln!(out, "## Timeline")?;
    writeln!(out)?;
    if input.timeline.is_empty() {
        writeln!(out, "_No timeline entries were recorded._")?;
    } else {
        let mut entries: Vec<&TimelineEntry> = input.timeline.iter().collect();
        // Stable: entries at the same instant keep the store's order.
        entries.sort_by_key(|e| e.at);
        writeln!(out, "| Time | Kind | Event | Details |")?;
        writeln!(out, "|------|------|-------|---------|")?;
        for entry in entries {
            writeln!(
                out,
                "| {} | {} | {} | {} |",
                entry.at,
                entry.kind.as_str(),
                cell(&entry.message),
                cell(&details_text(entry))
            )?;
        }
    }
    writeln!(out)?;

    writeln!(out, "## What Went Well")?;
    writeln!(out)?;
    writeln!(out, "- {TO_BE_FILLED_IN}")?;
    writeln!(out)?;
    writeln!(out, "## What Could Be Improved")?;
    writeln!(out)?;
    writeln!(out, "- {TO_BE_FILLED_IN}")?;
    writeln!(out)?;
    writeln!(out, "## Action Items")?;
    writeln!(out)?;
    writeln!(out, "| Action | Owner | Due Date | Priority |")?;
    writeln!(out, "|--------|-------|----------|----------|")?;
    writeln!(out, "|  |  |  |  |")?;
    writeln!(out)?;
    writeln!(out, "## Follow-up Actions")?;
    writeln!(out)?;
    for item in [
        "Update runbooks with lessons learned",
        "Implement additional monitoring",
        "Conduct team training",
        "Review and update alerting thresholds",
    ] {
        writeln!(out, "- [ ] {item}")?;
    }
    Ok(())
}

/// Milliseconds from `from` to `to`; 0 when clocks disagree.
fn elapsed_ms(from: Timestamp, to: Timestamp) -> u64 {
    u64::try_from(to.since(from).as_millis()).unwrap_or(u64::MAX)
}

fn duration_line(incident: &Incident, now: Timestamp) -> String {
    match incident.resolved_at {
        Some(resolved) => {
            format!("{} (resolved {resolved})", human(elapsed_ms(incident.opened_at, resolved)))
        }
        None => format!("ongoing, {} so far", human(elapsed_ms(incident.opened_at, now))),
    }
}

fn impact_line(incident: &Incident) -> String {
    let mut parts = Vec::new();
    let summary = inline(&incident.summary);
    if !summary.trim().is_empty() {
        parts.push(summary);
    }
    parts.push(match incident.priority {
        Some(p) => format!("priority {p}"),
        None => "no priority".to_owned(),
    });
    if !incident.tags.is_empty() {
        parts.push(format!("tags {}", inline(&incident.tags.join(", "))));
    }
    parts.push(format!("severity {}", incident.severity));
    parts.join("; ")
}

fn runbook_line(incident: &Incident, title: Option<&str>) -> String {
    match (&incident.runbook, title) {
        (Some(id), Some(title)) => format!("{} - {}", inline(id), inline(title)),
        (Some(id), None) => inline(id),
        (None, _) => "none matched".to_owned(),
    }
}

fn mttr_line(incident: &Incident, now: Timestamp) -> String {
    let target = incident.mttr_target_ms;
    let target_text = match target {
        Some(ms) => format!("target {}", human(ms)),
        None => "no target".to_owned(),
    };
    let (took, so_far) = match incident.resolved_at {
        Some(resolved) => (elapsed_ms(incident.opened_at, resolved), false),
        None => (elapsed_ms(incident.opened_at, now), true),
    };
    let actual = if so_far { format!("ongoing, {} so far", human(took)) } else { format!("actual {}", human(took)) };
    let verdict = match (target, so_far) {
        (None, _) => String::new(),
        (Some(t), false) if took <= t => " (within target)".to_owned(),
        (Some(t), true) if took <= t => " (within target so far)".to_owned(),
        (Some(t), false) => format!(" (missed by {})", human(took - t)),
        (Some(t), true) => format!(" (past target by {})", human(took - t)),
    };
    format!("{target_text}; {actual}{verdict}")
}

fn acknowledge_line(incident: &Incident) -> String {
    match (incident.acknowledged_at, &incident.acknowledged_by) {
        (Some(at), Some(by)) => format!("{} by {}", human(elapsed_ms(incident.opened_at, at)), inline(by)),
        (Some(at), None) => human(elapsed_ms(incident.opened_at, at)),
        (None, _) => "not acknowledged".to_owned(),
    }
}

/// The details worth reading beside an entry's message, `key=value`
/// separated by `; `.
fn details_text(entry: &TimelineEntry) -> String {
    let shown = SHOWN_DETAILS
        .iter()
        .filter_map(|&key| entry.details.get_key_value(key))
        .filter(|(key, value)| !(key.as_str() == "mode" && value.as_str() == "live"));
    let evidence = entry.details.iter().filter(|(key, _)| key.starts_with("evidence."));
    shown
        .chain(evidence)
        .map(|(key, value)| format!("{key}={}", truncate(value, MAX_DETAIL_CHARS, Unit::Chars)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Text made safe for one Markdown table cell: `\` and `|` escaped, line
/// breaks as `<br>`, other control characters as spaces.
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("<br>");
            }
            '\n' => out.push_str("<br>"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Text made safe for one line of a list item: line breaks and other
/// control characters as spaces.
fn inline(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// A duration the way people say it: `450ms`, `45s`, `12m 30s`, `1h 5m`,
/// `2d 3h`. Below a second it shows milliseconds; from a second on, whole
/// seconds.
fn human(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let parts = [(secs / 86_400, "d"), (secs / 3600 % 24, "h"), (secs / 60 % 60, "m"), (secs % 60, "s")];
    parts.iter().filter(|(n, _)| *n > 0).map(|(n, unit)| format!("{n}{unit}")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{ConditionKey, ConditionKind, Severity};
    use crate::incident::{IncidentId, IncidentState};
    use crate::runbook::Priority;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).expect("an RFC 3339 instant")
    }

    fn incident() -> Incident {
        Incident {
            id: IncidentId(42),
            key: ConditionKey { kind: ConditionKind::Alert("P0_SystemDown".into()), target: "alert/f00d".into() },
            severity: Severity::Critical,
            state: IncidentState::Resolved,
            summary: "platform down".into(),
            opened_at: at("2026-11-26T10:00:00Z"),
            started_at: None,
            updated_at: at("2026-11-26T10:12:30Z"),
            resolved_at: Some(at("2026-11-26T10:12:30Z")),
            finding_count: 1,
            active_sources: BTreeMap::new(),
            runbook: Some("P0-001".into()),
            mttr_target_ms: Some(300_000),
            mttr_status: Some("breached".into()),
            priority: Some(Priority::P0),
            tags: vec!["total_outage".into()],
            acknowledged_at: Some(at("2026-11-26T10:02:00Z")),
            acknowledged_by: Some("alice".into()),
            escalation: None,
            drill: false,
            conversations: Default::default(),
        }
    }

    fn entry(when: &str, kind: EntryKind, message: &str, details: &[(&str, &str)]) -> TimelineEntry {
        TimelineEntry {
            at: at(when),
            kind,
            message: message.into(),
            details: details.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    /// Automation allowed and ran a scale, a restart was refused by the
    /// cooldown rail, a circuit-breaker reset failed, people were paged,
    /// alice acknowledged and bob resolved.
    fn timeline() -> Vec<TimelineEntry> {
        vec![
            entry(
                "2026-11-26T10:00:00Z",
                EntryKind::Opened,
                "P0_SystemDown on alert/f00d (critical) reported by alertmanager",
                &[("source", "alertmanager"), ("severity", "critical")],
            ),
            entry(
                "2026-11-26T10:00:01Z",
                EntryKind::Runbook,
                "runbook P0-001 started (live, attempt 1)",
                &[("mode", "live")],
            ),
            entry(
                "2026-11-26T10:00:02Z",
                EntryKind::Decision,
                "allowed: scale deployment/saas-idp-api",
                &[("outcome", "allowed"), ("step", "scale-api"), ("mode", "live")],
            ),
            entry(
                "2026-11-26T10:00:02Z",
                EntryKind::Action,
                "scale deployment/saas-idp-api started",
                &[("step", "scale-api"), ("mode", "live"), ("key", "INC-000042/P0-001/1/scale-api")],
            ),
            entry(
                "2026-11-26T10:00:05Z",
                EntryKind::Result,
                "succeeded: scaled to 10 replicas",
                &[("step", "scale-api"), ("status", "succeeded"), ("evidence.replicas", "10")],
            ),
            entry(
                "2026-11-26T10:00:06Z",
                EntryKind::Decision,
                "refused: restart_pod pod/saas-idp-api-1: restarted 2m ago, cooldown is 10m",
                &[("outcome", "refused"), ("rail", "cooldown"), ("step", "restart-api")],
            ),
            entry(
                "2026-11-26T10:00:07Z",
                EntryKind::Action,
                "[dry_run] reset breaker analytics started",
                &[("step", "reset-breaker"), ("mode", "dry_run")],
            ),
            entry(
                "2026-11-26T10:00:08Z",
                EntryKind::Result,
                "failed: gateway answered 503",
                &[("step", "reset-breaker"), ("status", "failed")],
            ),
            entry("2026-11-26T10:01:00Z", EntryKind::Verification, "verification failed: /health answered 503", &[]),
            entry(
                "2026-11-26T10:01:30Z",
                EntryKind::Escalated,
                "escalated to p0-chain: verification failed",
                &[("policy", "p0-chain"), ("reason", "verification failed")],
            ),
            entry("2026-11-26T10:02:00Z", EntryKind::Acknowledged, "acknowledged by alice", &[("by", "alice")]),
            entry(
                "2026-11-26T10:12:30Z",
                EntryKind::Resolved,
                "resolved by bob: rolled back the release",
                &[("by", "bob")],
            ),
        ]
    }

    fn review(incident: &Incident, timeline: &[TimelineEntry]) -> String {
        review_markdown(&ReviewInput {
            incident,
            timeline,
            runbook_title: Some("System Complete Outage"),
            now: at("2026-11-26T11:00:00Z"),
        })
    }

    /// The lines of the timeline table's body.
    fn timeline_rows(doc: &str) -> Vec<&str> {
        let section = doc.split("## Timeline").nth(1).expect("a timeline").split("\n## ").next().expect("its body");
        section.lines().filter(|l| l.starts_with('|')).skip(2).collect()
    }

    /// Cell delimiters in a table row: pipes not escaped by a backslash.
    fn delimiters(row: &str) -> usize {
        let bytes = row.as_bytes();
        (0..bytes.len()).filter(|&i| bytes[i] == b'|' && (i == 0 || bytes[i - 1] != b'\\')).count()
    }

    fn position(doc: &str, needle: &str) -> usize {
        doc.find(needle).unwrap_or_else(|| panic!("`{needle}` is missing from:\n{doc}"))
    }

    #[test]
    fn the_sections_follow_the_template_in_order() {
        let doc = review(&incident(), &timeline());
        assert!(doc.starts_with("# Post-Incident Review - INC-000042\n"));
        let headings = [
            "## Incident Summary",
            "- **Date:** 2026-11-26T10:00:00.000Z",
            "- **Duration:** 12m 30s (resolved 2026-11-26T10:12:30.000Z)",
            "- **Impact:** platform down; priority P0; tags total_outage; severity critical",
            "- **Root Cause:** _to be filled in_",
            "- **Runbook:** P0-001 - System Complete Outage",
            "- **MTTR:** target 5m; actual 12m 30s (missed by 7m 30s)",
            "- **Time to acknowledge:** 2m by alice",
            "## Automation",
            "## Timeline",
            "| Time | Kind | Event | Details |",
            "## What Went Well",
            "## What Could Be Improved",
            "## Action Items",
            "| Action | Owner | Due Date | Priority |",
            "|  |  |  |  |",
            "## Follow-up Actions",
            "- [ ] Update runbooks with lessons learned",
            "- [ ] Implement additional monitoring",
            "- [ ] Conduct team training",
            "- [ ] Review and update alerting thresholds",
        ];
        let positions: Vec<usize> = headings.iter().map(|h| position(&doc, h)).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "out of order:\n{doc}");
    }

    #[test]
    fn every_step_of_the_response_is_a_row_in_order() {
        let doc = review(&incident(), &timeline());
        let rows = [
            "| 2026-11-26T10:00:00.000Z | opened | P0_SystemDown on alert/f00d (critical) reported by alertmanager | source=alertmanager |",
            "| 2026-11-26T10:00:02.000Z | decision | allowed: scale deployment/saas-idp-api | step=scale-api; outcome=allowed |",
            "| 2026-11-26T10:00:02.000Z | action | scale deployment/saas-idp-api started | step=scale-api |",
            "| 2026-11-26T10:00:05.000Z | result | succeeded: scaled to 10 replicas | step=scale-api; status=succeeded; evidence.replicas=10 |",
            "| 2026-11-26T10:00:06.000Z | decision | refused: restart_pod pod/saas-idp-api-1: restarted 2m ago, cooldown is 10m | step=restart-api; outcome=refused; rail=cooldown |",
            "| 2026-11-26T10:00:07.000Z | action | [dry_run] reset breaker analytics started | step=reset-breaker; mode=dry_run |",
            "| 2026-11-26T10:00:08.000Z | result | failed: gateway answered 503 | step=reset-breaker; status=failed |",
            "| 2026-11-26T10:01:00.000Z | verification | verification failed: /health answered 503 |  |",
            "| 2026-11-26T10:01:30.000Z | escalated | escalated to p0-chain: verification failed | policy=p0-chain |",
            "| 2026-11-26T10:02:00.000Z | acknowledged | acknowledged by alice | by=alice |",
            "| 2026-11-26T10:12:30.000Z | resolved | resolved by bob: rolled back the release | by=bob |",
        ];
        let positions: Vec<usize> = rows.iter().map(|r| position(&doc, r)).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "out of order:\n{doc}");
        assert_eq!(timeline_rows(&doc).len(), timeline().len());
    }

    #[test]
    fn the_automation_summary_counts_actions_refusals_failures_and_escalations() {
        let counts = automation(&timeline());
        assert_eq!(
            counts,
            Automation {
                actions: 2,
                rehearsed: 1,
                refused: 1,
                refused_by_rail: BTreeMap::from([("cooldown".to_owned(), 1)]),
                failed: 1,
                escalations: 1,
            }
        );
        let doc = review(&incident(), &timeline());
        for line in [
            "- **Actions started:** 2 (1 rehearsed: dry-run or shadow, nothing changed)",
            "- **Refused by guard rails:** 1 (cooldown 1)",
            "- **Failed:** 1",
            "- **Escalations:** 1",
        ] {
            position(&doc, line);
        }
    }

    #[test]
    fn entries_are_sorted_by_time_keeping_the_store_order_for_ties() {
        let entries = vec![
            entry("2026-11-26T10:00:05Z", EntryKind::Result, "third", &[]),
            entry("2026-11-26T10:00:00Z", EntryKind::Opened, "first", &[]),
            entry("2026-11-26T10:00:02Z", EntryKind::Decision, "second a", &[]),
            entry("2026-11-26T10:00:02Z", EntryKind::Action, "second b", &[]),
            entry("2026-11-26T10:00:02Z", EntryKind::Result, "second c", &[]),
        ];
        let doc = review(&incident(), &entries);
        let rows = timeline_rows(&doc);
        let events: Vec<&str> = rows.iter().map(|r| r.split(" | ").nth(2).expect("an event cell")).collect();
        assert_eq!(events, ["first", "second a", "second b", "second c", "third"]);
    }

    #[test]
    fn pipes_backslashes_and_line_breaks_stay_inside_their_cell() {
        let entries = vec![
            entry("2026-11-26T10:00:00Z", EntryKind::Opened, "a | b\nc\r\nd\re", &[("source", "x|y\nz")]),
            entry("2026-11-26T10:00:01Z", EntryKind::Result, r"C:\logs\ | tail \|", &[("status", "failed\\")]),
            entry("2026-11-26T10:00:02Z", EntryKind::Finding, "tab\there\u{0}nul", &[]),
            entry("2026-11-26T10:00:03Z", EntryKind::Cleared, "||\n\n|", &[]),
        ];
        let doc = review(&incident(), &entries);
        let rows = timeline_rows(&doc);
        assert_eq!(rows.len(), entries.len(), "{doc}");
        // Four columns: five delimiters in every row.
        for row in &rows {
            assert_eq!(delimiters(row), 5, "{row}");
        }
        assert!(rows[0].contains(r"a \| b<br>c<br>d<br>e"), "{}", rows[0]);
        assert!(rows[0].contains(r"source=x\|y<br>z"), "{}", rows[0]);
        assert!(rows[1].contains(r"C:\\logs\\ \| tail \\\|"), "{}", rows[1]);
        assert!(rows[1].contains(r"status=failed\\ |"), "{}", rows[1]);
        assert!(rows[2].contains("tab here nul"), "{}", rows[2]);
    }

    #[test]
    fn an_open_incident_says_ongoing() {
        let mut open = incident();
        open.state = IncidentState::Escalated;
        open.resolved_at = None;
        open.acknowledged_at = None;
        open.acknowledged_by = None;
        let doc = review(&open, &timeline()[..10]);
        // Opened 10:00, now 11:00.
        position(&doc, "- **Duration:** ongoing, 1h so far");
        position(&doc, "- **MTTR:** target 5m; ongoing, 1h so far (past target by 55m)");
        position(&doc, "- **Time to acknowledge:** not acknowledged");
        position(&doc, "- **State:** escalated");
    }

    #[test]
    fn an_incident_without_a_runbook_or_timeline_still_reads() {
        let mut bare = incident();
        bare.runbook = None;
        bare.mttr_target_ms = None;
        bare.priority = None;
        bare.tags.clear();
        bare.summary = "line one\nline two".into();
        let doc =
            review_markdown(&ReviewInput { incident: &bare, timeline: &[], runbook_title: None, now: bare.opened_at });
        position(&doc, "- **Impact:** line one line two; no priority; severity critical");
        position(&doc, "- **Runbook:** none matched");
        position(&doc, "- **MTTR:** no target; actual 12m 30s\n");
        position(&doc, "_No timeline entries were recorded._");
        position(&doc, "- **Actions started:** 0\n");
        position(&doc, "- **Refused by guard rails:** 0\n");
        assert!(timeline_rows(&doc).is_empty());
    }

    #[test]
    fn a_resolution_within_target_says_so() {
        let mut quick = incident();
        quick.resolved_at = Some(at("2026-11-26T10:05:00Z"));
        let doc = review(&quick, &[]);
        position(&doc, "- **MTTR:** target 5m; actual 5m (within target)");
    }

    #[test]
    fn clocks_that_disagree_give_zero_durations_not_a_panic() {
        let mut skewed = incident();
        skewed.resolved_at = Some(at("2026-11-26T09:00:00Z"));
        skewed.acknowledged_at = Some(at("2026-11-26T09:30:00Z"));
        let doc = review(&skewed, &timeline());
        position(&doc, "- **Duration:** 0s (resolved 2026-11-26T09:00:00.000Z)");
        position(&doc, "- **Time to acknowledge:** 0s by alice");
        let mut extreme = incident();
        extreme.opened_at = Timestamp::from_millis(i64::MIN);
        extreme.resolved_at = Some(Timestamp::from_millis(i64::MAX));
        extreme.mttr_target_ms = Some(u64::MAX);
        let doc = review(&extreme, &timeline());
        position(&doc, "(within target)");
    }

    #[test]
    fn long_detail_values_are_cut() {
        let long = "é".repeat(MAX_DETAIL_CHARS + 10);
        let entries = vec![entry("2026-11-26T10:00:00Z", EntryKind::Result, "big", &[("evidence.dump", &long)])];
        let doc = review(&incident(), &entries);
        let expected = format!("evidence.dump={}…", "é".repeat(MAX_DETAIL_CHARS));
        position(&doc, &expected);
    }

    #[test]
    fn durations_read_the_way_people_say_them() {
        assert_eq!(human(0), "0s");
        assert_eq!(human(450), "450ms");
        assert_eq!(human(45_000), "45s");
        assert_eq!(human(45_999), "45s");
        assert_eq!(human(750_000), "12m 30s");
        assert_eq!(human(3_900_000), "1h 5m");
        assert_eq!(human(183_600_000), "2d 3h");
        assert_eq!(human(u64::MAX), "213503982334d 14h 25m 51s");
    }
}
