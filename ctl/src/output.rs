//! Output formats, as kubectl users expect them: `-o table|wide|json|yaml`.

use std::io::Write;

use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

use crate::views::{Agent, Approval, Automation, Entry, Finding, Incident, IncidentDetail, Runbook};

/// Writes to standard output. A reader that went away ends remedyctl at
/// once with success: what it wanted was read. Any other failure to write
/// ends it with a message and exit 1.
pub fn write_out(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("remedyctl: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// Aligned columns, more of them.
    Wide,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Rows that know their columns.
pub trait Row {
    /// Column names; `wide` adds more.
    fn header(wide: bool) -> Vec<&'static str>;
    /// Cells, in header order.
    fn cells(&self, wide: bool) -> Vec<String>;
}

fn or_dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

impl Row for Agent {
    fn header(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["AGENT", "NODE", "CONNECTED", "STALE", "ACKED", "SPOOL"];
        if wide {
            h.extend(["DROPPED", "CPU%", "MEM%", "VERSION", "LAST SEEN"]);
        }
        h
    }
    fn cells(&self, wide: bool) -> Vec<String> {
        let mut c = vec![
            self.agent_id.clone(),
            self.node_name.clone(),
            self.connected.to_string(),
            self.stale.to_string(),
            self.acked_sequence.to_string(),
            self.spool_depth.to_string(),
        ];
        if wide {
            let pct = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
            c.extend([
                self.spool_dropped_total.to_string(),
                pct(self.cpu_percent),
                pct(self.memory_percent),
                self.version.clone(),
                or_dash(&self.last_seen),
            ]);
        }
        c
    }
}

impl Row for Finding {
    fn header(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["AGENT", "SEQ", "KIND", "SEVERITY", "STATE", "TARGET", "INCIDENT", "AGE"];
        if wide {
            h.extend(["NODE", "RECEIVED", "SUMMARY"]);
        }
        h
    }
    fn cells(&self, wide: bool) -> Vec<String> {
        let mut c = vec![
            self.agent_id.clone(),
            self.sequence.to_string(),
            self.kind.clone(),
            self.severity.clone(),
            self.state.clone(),
            self.target.clone(),
            self.incident_id.clone(),
            crate::views::age(self.received_ms, crate::views::now_ms()),
        ];
        if wide {
            c.extend([self.node_name.clone(), or_dash(&self.received_at), self.summary.clone()]);
        }
        c
    }
}

impl Row for Incident {
    fn header(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["ID", "STATE", "SEVERITY", "KIND", "TARGET", "AGE"];
        if wide {
            h.extend(["OPENED", "FINDINGS", "RESOLVED", "SUMMARY"]);
        }
        h
    }
    fn cells(&self, wide: bool) -> Vec<String> {
        let mut c = vec![
            self.id.clone(),
            self.state.clone(),
            self.severity.clone(),
            self.kind.clone(),
            self.target.clone(),
            crate::views::age(self.opened_ms, crate::views::now_ms()),
        ];
        if wide {
            c.extend([
                or_dash(&self.opened_at),
                self.finding_count.to_string(),
                or_dash(&self.resolved_at),
                self.summary.clone(),
            ]);
        }
        c
    }
}

impl Row for Entry {
    fn header(wide: bool) -> Vec<&'static str> {
        if wide { vec!["TIME", "KIND", "STEP", "OUTCOME", "MESSAGE"] } else { vec!["TIME", "KIND", "MESSAGE"] }
    }
    fn cells(&self, wide: bool) -> Vec<String> {
        if !wide {
            return vec![or_dash(&self.at), self.kind.clone(), self.message.clone()];
        }
        let detail = |k: &str| self.details.get(k).cloned();
        let outcome = match (detail("outcome").or_else(|| detail("status")), detail("rail")) {
            (Some(o), Some(rail)) => format!("{o} ({rail})"),
            (Some(o), None) => o,
            (None, Some(rail)) => rail,
            (None, None) => "-".into(),
        };
        vec![or_dash(&self.at), self.kind.clone(), or_dash(&detail("step")), outcome, self.message.clone()]
    }
}

impl Row for Runbook {
    fn header(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["ID", "PRIORITY", "MTTR", "MODE", "MANUAL", "STEPS", "TITLE"];
        if wide {
            h.extend(["REHEARSED STEPS", "SOURCE"]);
        }
        h
    }
    fn cells(&self, wide: bool) -> Vec<String> {
        let mut c = vec![
            self.id.clone(),
            self.priority.clone(),
            or_dash(&self.mttr_target),
            self.mode.clone(),
            self.manual.to_string(),
            self.steps.len().to_string(),
            self.title.clone(),
        ];
        if wide {
            let rehearsed = if self.dry_run_steps.is_empty() { "-".into() } else { self.dry_run_steps.join(",") };
            c.extend([rehearsed, self.source.clone()]);
        }
        c
    }
}

impl Row for Approval {
    fn header(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["KEY", "STATUS", "RUNBOOK", "ACTION", "EXPIRES", "REASON"];
        if wide {
            h.extend(["REQUESTED", "ANSWERED BY", "ANSWER"]);
        }
        h
    }
    fn cells(&self, wide: bool) -> Vec<String> {
        let mut c = vec![
            self.key.clone(),
            self.status.clone(),
            self.runbook_id.clone(),
            self.action.clone(),
            or_dash(&self.expires_at),
            self.reason.clone(),
        ];
        if wide {
            c.extend([or_dash(&self.requested_at), or_dash(&self.answered_by), or_dash(&self.answer_reason)]);
        }
        c
    }
}

/// A cell on one line: a table row is one line, whatever the coordinator
/// or a runbook author put in a message.
fn one_line(cell: String) -> String {
    if cell.chars().any(char::is_control) {
        cell.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
    } else {
        cell
    }
}

fn table<R: Row>(rows: &[R], wide: bool, with_header: bool) -> String {
    let mut t = Table::new();
    t.load_style(NOTHING).set_content_arrangement(ContentArrangement::Disabled);
    if with_header {
        t.set_header(R::header(wide));
    }
    for r in rows {
        t.add_row(r.cells(wide).into_iter().map(one_line).collect::<Vec<_>>());
    }
    // kubectl-style columns: flush left, three spaces apart.
    for column in t.column_iter_mut() {
        column.set_padding((0, 3));
    }
    t.lines().map(|l| l.trim_end().to_owned()).collect::<Vec<_>>().join("\n")
}

fn structured<T: Serialize>(fmt: Format, value: &T) -> anyhow::Result<String> {
    Ok(match fmt {
        Format::Json => serde_json::to_string_pretty(value)?,
        _ => serde_saphyr::to_string(value)?.trim_end().to_owned(),
    })
}

/// Prints a list.
pub fn print_list<R: Row + Serialize>(fmt: Format, rows: &[R]) -> anyhow::Result<()> {
    match fmt {
        Format::Table | Format::Wide if rows.is_empty() => eprintln!("No resources found."),
        Format::Table | Format::Wide => outln!("{}", table(rows, fmt == Format::Wide, true)),
        _ => outln!("{}", structured(fmt, &rows)?),
    }
    Ok(())
}

/// Prints one item of a watch: a row, or one JSON object per line.
pub fn print_watch_item<R: Row + Serialize>(fmt: Format, row: &R, header: bool) -> anyhow::Result<()> {
    match fmt {
        Format::Table | Format::Wide => outln!("{}", table(std::slice::from_ref(row), fmt == Format::Wide, header)),
        Format::Json => outln!("{}", serde_json::to_string(row)?),
        Format::Yaml => outln!("---\n{}", structured(fmt, row)?),
    }
    Ok(())
}

/// Prints one object: structured as asked, else as `human` writes it.
pub fn print_one<T: Serialize>(fmt: Format, value: &T, human: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
    match fmt {
        Format::Json | Format::Yaml => outln!("{}", structured(fmt, value)?),
        Format::Table | Format::Wide => outln!("{}", human(value)),
    }
    Ok(())
}

/// An incident with its timeline, for people.
pub fn incident_text(incident: &IncidentDetail, wide: bool) -> String {
    let i = &incident.incident;
    let mut out = vec![
        format!("Incident:    {}", i.id),
        format!("State:       {}", i.state),
        format!("Severity:    {}", i.severity),
        format!("Condition:   {} on {}", i.kind, i.target),
        format!("Summary:     {}", one_line(i.summary.clone())),
        format!("Runbook:     {} (priority {})", or_dash(&i.runbook_id), or_dash(&i.priority)),
        format!("MTTR target: {}", or_dash(&i.mttr_target)),
        format!("Escalation:  {}", or_dash(&i.escalation)),
        format!(
            "Acknowledged: {}{}",
            or_dash(&i.acknowledged_at),
            i.acknowledged_by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default()
        ),
        format!("Opened:      {}", or_dash(&i.opened_at)),
        format!("Resolved:    {}", or_dash(&i.resolved_at)),
        format!("Findings:    {}", i.finding_count),
        "Timeline:".to_owned(),
    ];
    if wide {
        // Every detail, under its entry.
        for e in &incident.timeline {
            out.push(format!("  {}  {:<12} {}", or_dash(&e.at), e.kind, one_line(e.message.clone())));
            out.extend(e.details.iter().map(|(k, v)| format!("      {k}: {}", one_line(v.clone()))));
        }
    } else {
        out.extend(timeline_table(&incident.timeline, false).lines().map(|l| format!("  {l}")));
    }
    out.join("\n")
}

/// Prints an incident with its timeline.
pub fn print_incident(fmt: Format, incident: &IncidentDetail) -> anyhow::Result<()> {
    print_one(fmt, incident, |i| incident_text(i, fmt == Format::Wide))
}

/// A timeline as a table: one line per entry, messages whole and last so
/// long ones never push the other columns out of line.
pub fn timeline_table(entries: &[Entry], wide: bool) -> String {
    table(entries, wide, true)
}

/// A runbook for people: its header, steps (marking those that run as
/// rehearsals), params and definition.
pub fn runbook_text(r: &Runbook) -> String {
    let mut out = vec![
        format!("Runbook:     {}", r.id),
        format!("Title:       {}", one_line(r.title.clone())),
        format!("Priority:    {}", r.priority),
        format!("MTTR target: {}", or_dash(&r.mttr_target)),
        format!("Mode:        {}", r.mode),
        format!("Manual:      {}", if r.manual { "yes (remedyctl run may start it)" } else { "no" }),
        format!("Source:      {}", if r.source.is_empty() { "-" } else { r.source.as_str() }),
        "Steps:".to_owned(),
    ];
    let width = r.steps.iter().map(|s| s.chars().count()).max().unwrap_or(0);
    for (n, step) in r.steps.iter().enumerate() {
        let line = if r.dry_run_steps.contains(step) {
            let why = r.rehearsal_reasons.get(step).map_or("no actuator for its action here", String::as_str);
            format!("  {:>2}. {step:<width$}   rehearsal: {why}", n + 1)
        } else {
            format!("  {:>2}. {step}", n + 1)
        };
        out.push(line);
    }
    // Verification checks that rehearse prove nothing: name them too.
    let checks: Vec<&String> = r.dry_run_steps.iter().filter(|s| !r.steps.contains(s)).collect();
    if !checks.is_empty() {
        out.push("Checks that rehearse:".to_owned());
        for check in checks {
            let why = r.rehearsal_reasons.get(check).map_or("no actuator for its action here", String::as_str);
            out.push(format!("  {check}: {why}"));
        }
    }
    if r.params.is_empty() {
        out.push("Params:      none".to_owned());
    } else {
        out.push("Params:".to_owned());
        out.extend(r.params.iter().map(|(k, v)| format!("  {k} = {}", one_line(v.clone()))));
    }
    if let Some(definition) = &r.definition {
        out.push("Definition:".to_owned());
        out.extend(definition.trim_end().lines().map(|l| format!("  {l}")));
    }
    out.join("\n")
}

/// Automation's switches for people.
pub fn automation_text(a: &Automation) -> String {
    let mut out = Vec::new();
    if a.paused {
        out.push("Automation: paused (only notifications are sent)".to_owned());
        out.push(format!("Paused by:  {}", or_dash(&a.paused_by)));
        out.push(format!("Reason:     {}", a.pause_reason.as_deref().map_or("-".into(), |r| one_line(r.to_owned()))));
        out.push(format!("Since:      {}", or_dash(&a.paused_since)));
    } else {
        out.push("Automation: running".to_owned());
    }
    if a.open_breakers.is_empty() {
        out.push("Breakers:   none open".to_owned());
    } else {
        out.push("Breakers:   open".to_owned());
        let width = a.open_breakers.keys().map(|k| k.chars().count()).max().unwrap_or(0);
        out.extend(a.open_breakers.iter().map(|(scope, why)| format!("  {scope:<width$}   {}", one_line(why.clone()))));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn entry(kind: &str, message: &str) -> Entry {
        Entry {
            at: Some("2026-01-02T03:04:05.678Z".into()),
            kind: kind.into(),
            message: message.into(),
            details: BTreeMap::from([
                ("step".to_owned(), "reset".to_owned()),
                ("rail".to_owned(), "cooldown".to_owned()),
            ]),
        }
    }

    #[test]
    fn a_timeline_keeps_one_line_per_entry_and_long_messages_whole() {
        let long = format!("refused: http POST http://127.0.0.1:1/admin/reset: {}", "x".repeat(400));
        let entries = vec![
            entry("opened", "opened by remedyctl"),
            entry("decision", &long),
            entry("verification", "line one\nline two\r\n\tindented"),
        ];
        let text = timeline_table(&entries, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "a header and one line per entry:\n{text}");
        assert!(lines[0].starts_with("TIME") && lines[0].contains("KIND"), "{text}");
        // Messages start in one column, wherever they end.
        let column = lines[0].find("MESSAGE").unwrap();
        assert_eq!(lines[1].find("opened by"), Some(column), "{text}");
        assert_eq!(lines[2].find("refused:"), Some(column), "{text}");
        assert!(lines[2].ends_with(&"x".repeat(400)), "not cut");
        assert_eq!(lines[3].find("line one"), Some(column), "{text}");
        assert!(lines[3].contains("line one line two") && lines[3].ends_with("indented"), "{text}");
        assert!(!text.contains('\t') && !text.contains('\r'));
    }

    #[test]
    fn a_wide_timeline_shows_the_step_and_the_rail() {
        let text = timeline_table(&[entry("decision", "refused")], true);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("STEP") && lines[0].contains("OUTCOME"), "{text}");
        assert!(lines[1].contains("reset") && lines[1].contains("cooldown"), "{text}");
    }

    #[test]
    fn a_runbook_shows_its_rehearsed_steps_params_and_definition() {
        let runbook = Runbook {
            id: "P0-001".into(),
            title: "Outage".into(),
            priority: "P0".into(),
            mttr_target: Some("5m".into()),
            mode: "live".into(),
            manual: true,
            steps: vec!["health".into(), "scale_api".into()],
            dry_run_steps: vec!["scale_api".into()],
            rehearsal_reasons: BTreeMap::from([(
                "scale_api".to_owned(),
                "no Kubernetes cluster is configured, so `scale` is only rehearsed".to_owned(),
            )]),
            params: BTreeMap::from([("api_base".to_owned(), "http://api".to_owned())]),
            source: "/r/p0.yaml".into(),
            definition: Some("apiVersion: remedy.dev/v1\nkind: Runbook\n".into()),
        };
        let text = runbook_text(&runbook);
        assert!(text.contains("MTTR target: 5m"), "{text}");
        assert!(text.contains("   1. health\n"), "{text}");
        assert!(text.contains("2. scale_api   rehearsal: no Kubernetes cluster is configured"), "{text}");
        assert!(text.contains("  api_base = http://api"), "{text}");
        assert!(text.ends_with("Definition:\n  apiVersion: remedy.dev/v1\n  kind: Runbook"), "{text}");
    }

    #[test]
    fn automation_names_who_paused_and_the_open_breakers() {
        let paused = Automation {
            paused: true,
            paused_by: Some("alice".into()),
            pause_reason: Some("freeze".into()),
            paused_since: Some("2026-01-02T03:04:05.678Z".into()),
            open_breakers: BTreeMap::from([("runbook/BREAK".to_owned(), "3 failures".to_owned())]),
        };
        let text = automation_text(&paused);
        assert!(text.contains("paused") && text.contains("alice") && text.contains("freeze"), "{text}");
        assert!(text.contains("runbook/BREAK   3 failures"), "{text}");
        let running = Automation {
            paused: false,
            paused_by: None,
            pause_reason: None,
            paused_since: None,
            open_breakers: BTreeMap::new(),
        };
        assert_eq!(automation_text(&running), "Automation: running\nBreakers:   none open");
    }
}
