//! Incidents: list, watch, show, timeline, and a person's commands on one
//! (acknowledge, resolve).

use remedy_proto::v1 as pb;

use crate::client::Ctx;
use crate::output::{self, Format};
use crate::paging::{PageArgs, follow};
use crate::views;

/// `incidents [-A]`: every page, newest first.
pub async fn list(ctx: &mut Ctx, all: bool, page: PageArgs) -> anyhow::Result<()> {
    let incidents = follow!(
        ctx,
        page,
        |page_size, page_token| ctx.client.list_incidents(pb::ListIncidentsRequest {
            include_resolved: all,
            page_size,
            page_token,
            ..Default::default()
        }),
        incidents
    );
    output::print_list(ctx.fmt, &incidents.into_iter().map(views::Incident::from).collect::<Vec<_>>())
}

/// `incidents --watch`: the current ones, then every change.
pub async fn watch(ctx: &mut Ctx, all: bool) -> anyhow::Result<()> {
    let mut stream = ctx
        .client
        .watch_incidents(pb::WatchIncidentsRequest { include_resolved: all })
        .await
        .map_err(|s| ctx.explain(s))?
        .into_inner();
    let mut header = true;
    while let Some(event) = stream.message().await.map_err(|s| ctx.explain(s))? {
        if let Some(incident) = event.incident {
            output::print_watch_item(ctx.fmt, &views::Incident::from(incident), header)?;
            header = false;
        }
    }
    Ok(())
}

/// One incident with its whole timeline, from the coordinator.
pub async fn get(ctx: &mut Ctx, id: &str) -> anyhow::Result<pb::Incident> {
    let request = pb::GetIncidentRequest { id: id.to_owned() };
    Ok(ctx.client.get_incident(request).await.map_err(|s| ctx.explain(s))?.into_inner())
}

/// `incident show ID`.
pub async fn show(ctx: &mut Ctx, id: &str) -> anyhow::Result<()> {
    let incident = get(ctx, id).await?;
    output::print_incident(ctx.fmt, &views::IncidentDetail::from(incident))
}

/// `incident timeline ID`: the record alone, one line per entry (JSON and
/// YAML carry each entry's details).
pub async fn timeline(ctx: &mut Ctx, id: &str) -> anyhow::Result<()> {
    let incident = get(ctx, id).await?;
    let entries: Vec<views::Entry> = incident.timeline.into_iter().map(views::Entry::from).collect();
    match ctx.fmt {
        Format::Table | Format::Wide => {
            outln!("{}", output::timeline_table(&entries, ctx.fmt == Format::Wide));
            Ok(())
        }
        fmt => output::print_list(fmt, &entries),
    }
}

/// What a person asks of one incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `ack`.
    Acknowledge,
    /// `resolve`.
    Resolve,
}

impl Verb {
    fn infinitive(self) -> &'static str {
        match self {
            Verb::Acknowledge => "acknowledge",
            Verb::Resolve => "resolve",
        }
    }
}

/// `ack ID` and `resolve ID [--reason]`.
pub async fn command(ctx: &mut Ctx, verb: Verb, id: &str, reason: Option<String>) -> anyhow::Result<()> {
    let by = ctx.who()?;
    let request =
        pb::IncidentCommand { id: id.to_owned(), requested_by: by.clone(), reason: reason.unwrap_or_default() };
    let answer = match verb {
        Verb::Acknowledge => ctx.client.acknowledge_incident(request).await,
        Verb::Resolve => ctx.client.resolve_incident(request).await,
    };
    let incident = match answer {
        Ok(reply) => reply.into_inner(),
        // The server names the state of an incident that is over.
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            return Err(anyhow::anyhow!("cannot {} {id}: {}", verb.infinitive(), status.message()));
        }
        Err(status) => return Err(ctx.explain(status)),
    };
    // Say who the coordinator recorded, not the name sent: an authenticated
    // caller's identity (`user:alice`) replaces what the request says.
    let recorded = match get(ctx, &incident.id).await {
        Ok(full) => recorded_by(&full.timeline, verb_done(verb)),
        Err(_) => None,
    };
    let by = recorded.or_else(|| (verb == Verb::Acknowledge).then(|| incident.acknowledged_by.clone())).unwrap_or(by);
    let by = if by.is_empty() { "(unknown)".to_owned() } else { by };
    let view = views::Incident::from(incident);
    output::print_one(ctx.fmt, &view, |i| format!("{} {} by {by} (state: {})", i.id, verb_done(verb), i.state))
}

/// Who the coordinator recorded for the latest timeline entry of `kind`
/// ("acknowledged", "resolved"): its `by` detail.
fn recorded_by(timeline: &[pb::TimelineEntry], kind: &str) -> Option<String> {
    timeline.iter().rev().find(|e| e.kind == kind).and_then(|e| e.details.get("by")).filter(|b| !b.is_empty()).cloned()
}

fn verb_done(verb: Verb) -> &'static str {
    match verb {
        Verb::Acknowledge => "acknowledged",
        Verb::Resolve => "resolved",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, by: &str) -> pb::TimelineEntry {
        pb::TimelineEntry {
            kind: kind.to_owned(),
            details: [("by".to_owned(), by.to_owned())].into_iter().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_name_shown_is_the_one_the_coordinator_recorded() {
        let timeline =
            vec![entry("acknowledged", "user:first"), entry("finding", "x"), entry("acknowledged", "user:admin")];
        assert_eq!(recorded_by(&timeline, "acknowledged").as_deref(), Some("user:admin"), "the latest one");
        assert_eq!(recorded_by(&timeline, "resolved"), None);
        assert_eq!(recorded_by(&[entry("resolved", "")], "resolved"), None, "never an empty name");
    }
}
