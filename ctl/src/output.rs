//! Output formats, as kubectl users expect them: `-o table|wide|json|yaml`.

use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

use crate::views::{Agent, Finding, Incident, IncidentDetail};

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
        let mut h = vec!["AGENT", "SEQ", "KIND", "SEVERITY", "STATE", "TARGET", "INCIDENT"];
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
        ];
        if wide {
            c.extend([self.node_name.clone(), or_dash(&self.received_at), self.summary.clone()]);
        }
        c
    }
}

impl Row for Incident {
    fn header(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["ID", "STATE", "SEVERITY", "KIND", "TARGET", "OPENED"];
        if wide {
            h.extend(["FINDINGS", "RESOLVED", "SUMMARY"]);
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
            or_dash(&self.opened_at),
        ];
        if wide {
            c.extend([self.finding_count.to_string(), or_dash(&self.resolved_at), self.summary.clone()]);
        }
        c
    }
}

fn table<R: Row>(rows: &[R], wide: bool, with_header: bool) -> String {
    let mut t = Table::new();
    t.load_style(NOTHING).set_content_arrangement(ContentArrangement::Disabled);
    if with_header {
        t.set_header(R::header(wide));
    }
    for r in rows {
        t.add_row(r.cells(wide));
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
        Format::Table | Format::Wide => println!("{}", table(rows, fmt == Format::Wide, true)),
        _ => println!("{}", structured(fmt, &rows)?),
    }
    Ok(())
}

/// Prints one item of a watch: a row, or one JSON object per line.
pub fn print_watch_item<R: Row + Serialize>(fmt: Format, row: &R, header: bool) -> anyhow::Result<()> {
    match fmt {
        Format::Table | Format::Wide => println!("{}", table(std::slice::from_ref(row), fmt == Format::Wide, header)),
        Format::Json => println!("{}", serde_json::to_string(row)?),
        Format::Yaml => println!("---\n{}", structured(fmt, row)?),
    }
    Ok(())
}

/// Prints an incident with its timeline.
pub fn print_incident(fmt: Format, incident: &IncidentDetail) -> anyhow::Result<()> {
    if matches!(fmt, Format::Json | Format::Yaml) {
        println!("{}", structured(fmt, incident)?);
        return Ok(());
    }
    let i = &incident.incident;
    println!("Incident:  {}", i.id);
    println!("State:     {}", i.state);
    println!("Severity:  {}", i.severity);
    println!("Condition: {} on {}", i.kind, i.target);
    println!("Summary:   {}", i.summary);
    println!("Opened:    {}", or_dash(&i.opened_at));
    println!("Resolved:  {}", or_dash(&i.resolved_at));
    println!("Findings:  {}", i.finding_count);
    println!("Timeline:");
    for e in &incident.timeline {
        println!("  {}  {:<9} {}", or_dash(&e.at), e.kind, e.message);
        if fmt == Format::Wide {
            for (k, v) in &e.details {
                println!("      {k}: {v}");
            }
        }
    }
    Ok(())
}
