//! The runbook engine's commands: run a runbook, answer approvals, stop and
//! restart automation, reset breakers.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use clap::{Args, Subcommand};
use remedy_proto::v1 as pb;
use serde::Serialize;

use crate::client::Ctx;
use crate::output::{self, Format};
use crate::paging::{PageArgs, follow};
use crate::views;

/// `run RUNBOOK`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Runbook id, as `remedyctl runbooks list` shows it.
    pub runbook: String,
    /// Override a declared param (repeatable); the runbook must declare it.
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Rehearse: the same guard rails, nothing changed, outcomes recorded as
    /// "would have".
    #[arg(long)]
    pub dry_run: bool,
    /// An exercise: the incident is a drill, left out of MTTR and
    /// availability (`report --include-drills` counts it). A dry run always
    /// is one.
    #[arg(long)]
    pub drill: bool,
    /// Wait for the run to end (finished, escalated, or the incident
    /// resolved), then print the timeline.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, e.g. 30s, 5m.
    #[arg(long, default_value = "5m", value_parser = parse_timeout, requires = "wait")]
    pub timeout: Duration,
}

/// `approvals`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ApprovalsArgs {
    /// Include answered and expired requests.
    #[arg(long, short = 'A')]
    pub all: bool,
    #[command(flatten)]
    pub page: PageArgs,
    #[command(subcommand)]
    pub command: Option<ApprovalCommand>,
}

/// What to do with approval requests.
#[derive(Debug, Subcommand)]
pub enum ApprovalCommand {
    /// Approval requests, pending first (the default).
    List {
        /// Include answered and expired requests.
        #[arg(long, short = 'A')]
        all: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Grants a request: the step runs.
    Approve(AnswerArgs),
    /// Denies a request: the step is refused, with the reason on the
    /// timeline.
    Deny {
        #[command(flatten)]
        target: AnswerArgs,
        /// Why (required: it is written on the incident's timeline).
        #[arg(long)]
        reason: String,
    },
}

/// Which request: `INCIDENT STEP [--attempt N]`, or the KEY `approvals`
/// lists (`INC-000042/step#1`).
#[derive(Debug, Args)]
pub struct AnswerArgs {
    /// Incident id (INC-000042), or a whole KEY such as INC-000042/restart_api#1.
    pub incident: String,
    /// Step id (omit when giving a KEY).
    pub step: Option<String>,
    /// Which execution of the step [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub attempt: Option<u32>,
}

impl AnswerArgs {
    /// The request named, or why the arguments name none.
    pub fn key(&self) -> Result<ApprovalKey, String> {
        approval_key(&self.incident, self.step.as_deref(), self.attempt)
    }
}

/// `breaker`.
#[derive(Debug, Subcommand)]
pub enum BreakerCommand {
    /// Closes an open breaker so automation may act again.
    Reset {
        /// `global` or `runbook/<id>`, as `remedyctl automation` lists them.
        scope: String,
    },
}

/// `--param KEY=VALUE`, split at the first `=` (values may hold more).
pub fn parse_param(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("expected KEY=VALUE (e.g. --param replicas=3); `{text}` has no `=`"));
    };
    if key.is_empty() {
        return Err(format!("expected KEY=VALUE; `{text}` has no name before `=`"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("param name `{}` contains spaces", key.escape_debug()));
    }
    Ok((key.to_owned(), value.to_owned()))
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    remedy_shared::config::parse_duration(text)
}

/// The params of a run; a name given twice is refused rather than one
/// value silently winning.
pub fn params_map(params: &[(String, String)]) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::with_capacity(params.len());
    for (key, value) in params {
        if let Some(earlier) = map.insert(key.clone(), value.clone()) {
            return Err(format!("--param `{key}` is given twice (`{earlier}`, then `{value}`)"));
        }
    }
    Ok(map)
}

/// One execution of one step, as the coordinator keys approval requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalKey {
    /// INC-000042 (the coordinator checks the form).
    pub incident_id: String,
    /// Step id.
    pub step_id: String,
    /// From 1.
    pub attempt: u32,
}

/// Reads `INCIDENT STEP [--attempt N]`, or a KEY `INCIDENT/STEP[#N]` as
/// `approvals` lists and timelines show it.
pub fn approval_key(incident: &str, step: Option<&str>, attempt: Option<u32>) -> Result<ApprovalKey, String> {
    if attempt == Some(0) {
        return Err("attempts count from 1".to_owned());
    }
    let (incident_id, step_id, attempt) = match step {
        Some(step) => (incident.trim(), step.trim(), attempt.unwrap_or(1)),
        None => {
            let Some((incident_id, rest)) = incident.split_once('/') else {
                return Err(format!(
                    "`{incident}` is not an approval key: give INCIDENT STEP, or a KEY as \
                     `remedyctl approvals` lists it (INC-000042/restart_api#1)"
                ));
            };
            let (step_id, from_key) = match rest.rsplit_once('#') {
                Some((step_id, n)) => {
                    let n: u32 = n.parse().map_err(|_| format!("attempt `{n}` in `{incident}` is not a number"))?;
                    if n == 0 {
                        return Err("attempts count from 1".to_owned());
                    }
                    (step_id, Some(n))
                }
                None => (rest, None),
            };
            let attempt = match (from_key, attempt) {
                (Some(a), Some(b)) if a != b => {
                    return Err(format!("`{incident}` names attempt {a} but --attempt says {b}"));
                }
                (a, b) => a.or(b).unwrap_or(1),
            };
            (incident_id.trim(), step_id.trim(), attempt)
        }
    };
    if incident_id.is_empty() {
        return Err("the incident id is empty".to_owned());
    }
    if step_id.is_empty() {
        return Err("the step id is empty".to_owned());
    }
    Ok(ApprovalKey { incident_id: incident_id.to_owned(), step_id: step_id.to_owned(), attempt })
}

/// How a run ended, from the run status the coordinator sends with the
/// incident (a resolved incident stops its run too); `None` while it goes
/// on. The words are the timeline's newest entry of the kind that ended it.
pub fn run_end(incident: &pb::Incident) -> Option<String> {
    let newest = |kind: &str| incident.timeline.iter().rev().find(|e| e.kind == kind).map(|e| e.message.clone());
    match incident.run_status() {
        pb::RunStatus::Succeeded => Some(newest("runbook").unwrap_or_else(|| "the run succeeded".to_owned())),
        pb::RunStatus::Escalated => Some(newest("escalated").unwrap_or_else(|| "the run was escalated".to_owned())),
        pb::RunStatus::Cancelled => Some("the incident was resolved".to_owned()),
        _ if incident.state == pb::IncidentState::Resolved as i32 => Some("the incident was resolved".to_owned()),
        _ => None,
    }
}

/// What `run` prints.
#[derive(Debug, Serialize)]
struct RunOutcome {
    incident_id: String,
    runbook_id: String,
    dry_run: bool,
    /// With `--wait`: how the run ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    ended: Option<String>,
    /// With `--wait`: what the run did (verdict, verification, steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<Outcome>,
    /// With `--wait`: the incident and its timeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    incident: Option<views::IncidentDetail>,
}

/// What a finished run did, as the coordinator recorded it.
#[derive(Debug, Serialize)]
struct Outcome {
    verdict: String,
    verification: String,
    steps: BTreeMap<&'static str, u32>,
}

impl From<&pb::RunOutcome> for Outcome {
    fn from(o: &pb::RunOutcome) -> Self {
        let steps = [
            ("succeeded", o.steps_succeeded),
            ("observed", o.steps_observed),
            ("rehearsed", o.steps_rehearsed),
            ("refused", o.steps_refused),
            ("failed", o.steps_failed),
            ("skipped", o.steps_skipped),
        ];
        Outcome {
            verdict: o.verdict.clone(),
            verification: o.verification.clone(),
            steps: steps.into_iter().filter(|(_, n)| *n > 0).collect(),
        }
    }
}

impl Outcome {
    /// "2 succeeded, 1 rehearsed"; "none" when no step counted.
    fn steps_line(&self) -> String {
        let parts: Vec<String> = self.steps.iter().map(|(state, n)| format!("{n} {state}")).collect();
        if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }
    }
}

/// `run RUNBOOK [--param k=v]... [--dry-run] [--wait [--timeout 5m]]`.
pub async fn run(ctx: &mut Ctx, args: RunArgs) -> anyhow::Result<()> {
    let params = params_map(&args.params).map_err(anyhow::Error::msg)?;
    let by = ctx.who()?;
    let request = pb::RunRunbookRequest {
        runbook_id: args.runbook.clone(),
        params,
        dry_run: args.dry_run,
        requested_by: by,
        drill: args.drill,
    };
    let incident_id = match ctx.client.run_runbook(request).await {
        Ok(reply) => reply.into_inner().incident_id,
        Err(status) if status.code() == tonic::Code::NotFound => {
            anyhow::bail!("{} (the catalog: `remedyctl runbooks list`)", status.message())
        }
        Err(status) => return Err(ctx.explain(status)),
    };
    let mut outcome = RunOutcome {
        incident_id,
        runbook_id: args.runbook,
        dry_run: args.dry_run,
        ended: None,
        outcome: None,
        incident: None,
    };
    let human = matches!(ctx.fmt, Format::Table | Format::Wide);
    if human {
        let how = if outcome.dry_run { " (dry run: nothing is changed)" } else { "" };
        outln!("{} opened: runbook {} started{how}", outcome.incident_id, outcome.runbook_id);
    }
    if !args.wait {
        if !human {
            output::print_one(ctx.fmt, &outcome, |_| String::new())?;
        }
        return Ok(());
    }
    let (incident, ended) = wait_for_end(ctx, &outcome.incident_id, args.timeout).await?;
    outcome.ended = ended.clone();
    outcome.outcome = incident.run_outcome.as_ref().map(Outcome::from);
    let detail = views::IncidentDetail::from(incident);
    if human {
        if let Some(how) = &ended {
            outln!("Run ended: {how}");
        }
        if let Some(o) = &outcome.outcome {
            outln!("Outcome: {} (steps: {}); verification: {}", o.verdict, o.steps_line(), o.verification);
        }
        outln!("{}", output::timeline_table(&detail.timeline, ctx.fmt == Format::Wide));
    } else {
        outcome.incident = Some(detail);
        output::print_one(ctx.fmt, &outcome, |_| String::new())?;
    }
    match ended {
        Some(_) => Ok(()),
        None => anyhow::bail!(
            "the run of {} did not end within {}; it goes on: follow it with `remedyctl incident timeline {}`",
            outcome.incident_id,
            views::short_duration(args.timeout),
            outcome.incident_id
        ),
    }
}

/// Polls the incident until its run ends or `limit` passes; returns the
/// incident as last seen and how the run ended (`None`: it did not).
async fn wait_for_end(ctx: &mut Ctx, id: &str, limit: Duration) -> anyhow::Result<(pb::Incident, Option<String>)> {
    const EVERY: Duration = Duration::from_millis(500);
    let deadline = tokio::time::Instant::now() + limit;
    let mut last: Option<pb::Incident> = None;
    loop {
        match ctx.client.get_incident(pb::GetIncidentRequest { id: id.to_owned() }).await {
            Ok(reply) => {
                let incident = reply.into_inner();
                if let Some(how) = run_end(&incident) {
                    return Ok((incident, Some(how)));
                }
                last = Some(incident);
            }
            // A coordinator restarting mid-run comes back; wait for it.
            Err(status) if status.code() == tonic::Code::Unavailable => {}
            Err(status) => return Err(ctx.explain(status)),
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let incident =
                last.ok_or_else(|| anyhow::anyhow!("cannot reach the coordinator at {} to follow {id}", ctx.url))?;
            return Ok((incident, None));
        }
        tokio::time::sleep(EVERY.min(deadline - now)).await;
    }
}

/// `approvals [list] [--all]`, `approvals approve ...`, `approvals deny ...`.
pub async fn approvals(ctx: &mut Ctx, args: ApprovalsArgs) -> anyhow::Result<()> {
    let (target, deny) = match args.command {
        None => return list_approvals(ctx, args.all, args.page).await,
        Some(ApprovalCommand::List { all, page }) => {
            return list_approvals(ctx, all || args.all, page.or(args.page)).await;
        }
        Some(ApprovalCommand::Approve(target)) => (target, None),
        Some(ApprovalCommand::Deny { target, reason }) => (target, Some(reason)),
    };
    let key = target.key().map_err(anyhow::Error::msg)?;
    if deny.as_ref().is_some_and(|r| r.trim().is_empty()) {
        anyhow::bail!("--reason is empty: a denial is written on the incident's timeline with why");
    }
    let by = ctx.who()?;
    let request = pb::AnswerApprovalRequest {
        incident_id: key.incident_id.clone(),
        step_id: key.step_id.clone(),
        attempt: key.attempt,
        approve: deny.is_none(),
        requested_by: by.clone(),
        reason: deny.unwrap_or_default(),
    };
    let approval = match ctx.client.answer_approval(request).await {
        Ok(reply) => views::Approval::from(reply.into_inner()),
        Err(status) if status.code() == tonic::Code::NotFound => {
            anyhow::bail!("{} (requests: `remedyctl approvals --all`)", status.message())
        }
        Err(status) => return Err(ctx.explain(status)),
    };
    output::print_one(ctx.fmt, &approval, |a| format!("approval {} {} by {by}", a.key, a.status))
}

async fn list_approvals(ctx: &mut Ctx, all: bool, page: PageArgs) -> anyhow::Result<()> {
    let approvals = follow!(
        ctx,
        page,
        |page_size, page_token| ctx.client.list_approvals(pb::ListApprovalsRequest { all, page_size, page_token }),
        approvals
    );
    output::print_list(ctx.fmt, &approvals.into_iter().map(views::Approval::from).collect::<Vec<_>>())
}

fn print_automation(fmt: Format, automation: pb::Automation) -> anyhow::Result<()> {
    output::print_one(fmt, &views::Automation::from(automation), output::automation_text)
}

/// `automation`: paused or not, by whom and why; open breakers.
pub async fn automation(ctx: &mut Ctx) -> anyhow::Result<()> {
    let state = ctx.client.get_automation(pb::GetAutomationRequest {}).await.map_err(|s| ctx.explain(s))?.into_inner();
    print_automation(ctx.fmt, state)
}

/// `pause --reason TEXT`: every action but notifications stops.
pub async fn pause(ctx: &mut Ctx, reason: String) -> anyhow::Result<()> {
    if reason.trim().is_empty() {
        anyhow::bail!("--reason is empty: whoever finds automation paused needs to know why");
    }
    let request = pb::PauseAutomationRequest { requested_by: ctx.who()?, reason };
    let state = ctx.client.pause_automation(request).await.map_err(|s| ctx.explain(s))?.into_inner();
    print_automation(ctx.fmt, state)
}

/// `resume`.
pub async fn resume(ctx: &mut Ctx) -> anyhow::Result<()> {
    let request = pb::ResumeAutomationRequest { requested_by: ctx.who()? };
    let state = ctx.client.resume_automation(request).await.map_err(|s| ctx.explain(s))?.into_inner();
    print_automation(ctx.fmt, state)
}

/// `breaker reset SCOPE`.
pub async fn breaker(ctx: &mut Ctx, command: BreakerCommand) -> anyhow::Result<()> {
    let BreakerCommand::Reset { scope } = command;
    let request = pb::ResetBreakerRequest { scope, requested_by: ctx.who()? };
    let state = ctx.client.reset_breaker(request).await.map_err(|s| ctx.explain(s))?.into_inner();
    print_automation(ctx.fmt, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_split_at_the_first_equals_sign() {
        assert_eq!(parse_param("replicas=3").unwrap(), ("replicas".into(), "3".into()));
        assert_eq!(parse_param("url=http://x/?a=b").unwrap(), ("url".into(), "http://x/?a=b".into()));
        assert_eq!(parse_param("note=").unwrap(), ("note".into(), String::new()));
        let err = parse_param("replicas").unwrap_err();
        assert!(err.contains("KEY=VALUE") && err.contains("`replicas`"), "{err}");
        assert!(parse_param("=3").unwrap_err().contains("no name"));
        assert!(parse_param("a b=3").is_err());
        assert!(parse_param("").is_err());
    }

    #[test]
    fn a_param_given_twice_is_refused() {
        let one = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let map = params_map(&[one("a", "1"), one("b", "2")]).unwrap();
        assert_eq!(map.get("a").map(String::as_str), Some("1"));
        let err = params_map(&[one("a", "1"), one("a", "2")]).unwrap_err();
        assert!(err.contains("`a` is given twice"), "{err}");
    }

    fn key(incident: &str, step: &str, attempt: u32) -> ApprovalKey {
        ApprovalKey { incident_id: incident.into(), step_id: step.into(), attempt }
    }

    #[test]
    fn approval_keys_come_as_two_arguments_or_as_listed() {
        assert_eq!(approval_key("INC-000042", Some("restart"), None).unwrap(), key("INC-000042", "restart", 1));
        assert_eq!(approval_key("INC-000042", Some("restart"), Some(3)).unwrap(), key("INC-000042", "restart", 3));
        assert_eq!(approval_key("INC-000042/restart#2", None, None).unwrap(), key("INC-000042", "restart", 2));
        assert_eq!(approval_key("INC-000042/restart", None, Some(4)).unwrap(), key("INC-000042", "restart", 4));
        assert_eq!(approval_key("INC-000042/restart#2", None, Some(2)).unwrap(), key("INC-000042", "restart", 2));
        assert_eq!(approval_key("42/restart", None, None).unwrap(), key("42", "restart", 1));
    }

    #[test]
    fn malformed_approval_keys_say_what_is_wrong() {
        assert!(approval_key("INC-000042", None, None).unwrap_err().contains("not an approval key"));
        assert!(approval_key("INC-000042/restart#x", None, None).unwrap_err().contains("not a number"));
        assert!(approval_key("INC-000042/restart#0", None, None).unwrap_err().contains("from 1"));
        assert!(approval_key("INC-000042", Some("s"), Some(0)).unwrap_err().contains("from 1"));
        assert!(approval_key("INC-000042/restart#2", None, Some(3)).unwrap_err().contains("attempt 2"));
        assert!(approval_key("/restart", None, None).unwrap_err().contains("incident id is empty"));
        assert!(approval_key("INC-1/", None, None).unwrap_err().contains("step id is empty"));
        assert!(approval_key("INC-1", Some(" "), None).unwrap_err().contains("step id is empty"));
        assert!(approval_key("INC-1/#", None, None).is_err());
    }

    fn entry(kind: &str, message: &str) -> pb::TimelineEntry {
        pb::TimelineEntry { kind: kind.into(), message: message.into(), ..Default::default() }
    }

    #[test]
    fn a_run_ends_when_it_finishes_escalates_or_its_incident_is_resolved() {
        let mut incident = pb::Incident {
            state: pb::IncidentState::Mitigating as i32,
            timeline: vec![entry("opened", "x"), entry("runbook", "runbook R started")],
            run_status: pb::RunStatus::Running as i32,
            ..Default::default()
        };
        assert_eq!(run_end(&incident), None);
        // Words on the timeline alone end nothing: the status does.
        incident.timeline.push(entry("runbook", "runbook R finished: every step ran"));
        assert_eq!(run_end(&incident), None);
        incident.run_status = pb::RunStatus::Succeeded as i32;
        assert_eq!(run_end(&incident).as_deref(), Some("runbook R finished: every step ran"));
        incident.timeline.push(entry("escalated", "escalated to p2-chain: step failed"));
        incident.run_status = pb::RunStatus::Escalated as i32;
        assert_eq!(run_end(&incident).as_deref(), Some("escalated to p2-chain: step failed"));
        incident.run_status = pb::RunStatus::Running as i32;
        incident.state = pb::IncidentState::Resolved as i32;
        assert_eq!(run_end(&incident).as_deref(), Some("the incident was resolved"));
    }
}
