//! `remedyctl`: the admin client.

#![forbid(unsafe_code)]

/// `println!` that ends remedyctl quietly when its reader went away
/// (`remedyctl audit | head -1`), as other Unix tools do, instead of
/// panicking on the broken pipe.
macro_rules! outln {
    () => { $crate::output::write_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!`, likewise.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_out(format_args!($($arg)*)) };
}

mod blocks;
mod client;
mod connection;
mod engine;
mod incidents;
mod output;
mod paging;
mod reports;
mod rules;
mod runbooks;
mod views;
mod who;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use remedy_proto::v1 as pb;

use crate::blocks::BlocksArgs;
use crate::client::Ctx;
use crate::engine::{ApprovalCommand, ApprovalsArgs, BreakerCommand, RunArgs};
use crate::incidents::Verb;
use crate::output::Format;
use crate::paging::{PageArgs, follow};
use crate::rules::RulesCommand;
use crate::runbooks::RunbookCommand;

#[derive(Debug, Parser)]
#[command(name = "remedyctl", version, about = "Remedy's admin client")]
struct Cli {
    #[command(flatten)]
    connection: connection::ConnectionFlags,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Who gives commands that change something (recorded on timelines);
    /// default: $REMEDY_USER, else $USER, else the OS user name.
    #[arg(long = "as", global = true, value_name = "NAME")]
    as_user: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Agents that ever connected.
    Agents {
        #[command(flatten)]
        page: PageArgs,
    },
    /// The audit log as JSON lines, oldest first (admin only), as it stood
    /// when the command started.
    Audit {
        /// Only entries after this position.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Certificates for a local installation.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Findings received, in (agent, sequence) order.
    Findings {
        /// Only from this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only of this kind.
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Incidents, newest first.
    Incidents {
        /// Include resolved incidents.
        #[arg(long, short = 'A')]
        all: bool,
        /// Keep watching and print every change (the current ones first,
        /// at most 5,000; --limit and --chunk-size do not apply).
        #[arg(long, short = 'w')]
        watch: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One incident.
    Incident {
        #[command(subcommand)]
        command: IncidentCommand,
    },
    /// Acknowledges an open incident: a person is on it (automation goes on).
    Ack {
        /// Incident id, e.g. INC-000042.
        id: String,
    },
    /// Resolves an open incident; its runbook run, if any, stops.
    Resolve {
        /// Incident id, e.g. INC-000042.
        id: String,
        /// Why (written on the timeline).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Runbooks: the coordinator's catalog, or files checked offline.
    #[command(alias = "runbook")]
    Runbooks {
        #[command(subcommand)]
        command: RunbookCommand,
    },
    /// The agent's failed-login rules, tested offline against sample lines.
    #[command(alias = "rule")]
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Runs a runbook now: opens an incident for it and starts its run.
    Run(RunArgs),
    /// Approval requests: list, approve, deny.
    #[command(alias = "approval")]
    Approvals(ApprovalsArgs),
    /// Stops every action except notifications until `resume`.
    Pause {
        /// Why (shown to whoever finds automation paused).
        #[arg(long)]
        reason: String,
    },
    /// Lets automation act again after `pause`.
    Resume,
    /// Whether automation is paused (by whom, why, since when) and which
    /// breakers are open.
    Automation,
    /// Circuit breakers.
    Breaker {
        #[command(subcommand)]
        command: BreakerCommand,
    },
    /// IP bans placed on the agents, with their enforcement per node;
    /// `blocks unblock IP` lifts one everywhere.
    #[command(alias = "block")]
    Blocks(BlocksArgs),
    /// Incident metrics over a period: MTTR, MTTA, availability, counts by
    /// priority, each runbook's MTTR-target hit rate.
    Report {
        /// Start of the period: a duration back from its end (`30d`,
        /// `12h`) or an RFC 3339 time.
        #[arg(long, default_value = "30d")]
        since: String,
        /// End of the period (RFC 3339 or a duration back from now);
        /// default: now.
        #[arg(long)]
        until: Option<String>,
        /// Count drills (dry runs and `run --drill`) too; by default they
        /// are left out of every figure.
        #[arg(long)]
        include_drills: bool,
    },
}

#[derive(Debug, Subcommand)]
enum IncidentCommand {
    /// An incident with its timeline.
    Show {
        /// Incident id, e.g. INC-000042.
        id: String,
    },
    /// An incident's timeline: time, kind, message (details with -o wide,
    /// json or yaml).
    Timeline {
        /// Incident id, e.g. INC-000042.
        id: String,
    },
    /// The post-incident review draft (Markdown): summary, the whole
    /// timeline in order, and sections for people to fill.
    Review {
        /// Incident id, e.g. INC-000042.
        id: String,
        /// Write it to this file instead of standard output.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

impl Command {
    /// Checks what clap cannot see one argument at a time, so such mistakes
    /// are usage errors too; the error names the subcommand whose usage
    /// applies.
    fn check(&self) -> Result<(), (&'static str, String)> {
        match self {
            Command::Run(args) => engine::params_map(&args.params).map(drop).map_err(|e| ("run", e)),
            Command::Approvals(ApprovalsArgs {
                command: Some(ApprovalCommand::Approve(target) | ApprovalCommand::Deny { target, .. }),
                ..
            }) => target.key().map(drop).map_err(|e| ("approvals", e)),
            _ => Ok(()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err((name, problem)) = cli.command.check() {
        // Reported like clap's own errors (exit 2), with the subcommand's usage.
        let mut command = Cli::command();
        command.build();
        let usage = command.find_subcommand_mut(name).map(|c| c.error(ErrorKind::ValueValidation, &problem));
        usage.unwrap_or_else(|| Cli::command().error(ErrorKind::ValueValidation, &problem)).exit();
    }
    // Offline and pure: no runtime, no coordinator; exit 64 on a bad file.
    if let Command::Rules { command: RulesCommand::Test(args) } = &cli.command {
        return rules::test(args, cli.output);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("remedyctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remedyctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Runbooks { command: RunbookCommand::Validate { paths } } = &cli.command {
        return runbooks::validate(paths, cli.output);
    }
    if let Command::Pki { command: PkiCommand::Init { dir, node, user, write_config } } = &cli.command {
        return pki_init(dir, node, user, write_config.as_deref(), &cli.connection);
    }
    let target = connection::resolve(&cli.connection)?;
    let mut ctx = Ctx::connect(&target, cli.output, cli.as_user).await?;
    let ctx = &mut ctx;
    match cli.command {
        Command::Agents { page } => {
            let agents = follow!(
                ctx,
                page,
                |page_size, page_token| ctx.client.list_agents(pb::ListAgentsRequest { page_size, page_token }),
                agents
            );
            output::print_list(ctx.fmt, &agents.into_iter().map(views::Agent::from).collect::<Vec<_>>())
        }
        Command::Findings { agent, kind, page } => findings(ctx, agent, kind, page).await,
        Command::Incidents { all, watch: false, page } => incidents::list(ctx, all, page).await,
        Command::Incidents { all, watch: true, .. } => incidents::watch(ctx, all).await,
        Command::Incident { command: IncidentCommand::Show { id } } => incidents::show(ctx, &id).await,
        Command::Incident { command: IncidentCommand::Timeline { id } } => incidents::timeline(ctx, &id).await,
        Command::Incident { command: IncidentCommand::Review { id, out } } => {
            reports::review(ctx, &id, out.as_deref()).await
        }
        Command::Ack { id } => incidents::command(ctx, Verb::Acknowledge, &id, None).await,
        Command::Resolve { id, reason } => incidents::command(ctx, Verb::Resolve, &id, reason).await,
        Command::Runbooks { command: RunbookCommand::List { page } } => runbooks::list(ctx, page).await,
        Command::Runbooks { command: RunbookCommand::Show { id } } => runbooks::show(ctx, id).await,
        Command::Runbooks { command: RunbookCommand::Validate { .. } }
        | Command::Pki { .. }
        | Command::Rules { .. } => {
            unreachable!("handled before connecting")
        }
        Command::Audit { after, page } => audit(ctx, after, page).await,
        Command::Run(args) => engine::run(ctx, args).await,
        Command::Approvals(args) => engine::approvals(ctx, args).await,
        Command::Pause { reason } => engine::pause(ctx, reason).await,
        Command::Resume => engine::resume(ctx).await,
        Command::Automation => engine::automation(ctx).await,
        Command::Breaker { command } => engine::breaker(ctx, command).await,
        Command::Blocks(args) => blocks::blocks(ctx, args).await,
        Command::Report { since, until, include_drills } => {
            reports::report(ctx, &since, until.as_deref(), include_drills).await
        }
    }
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Creates a CA and certificates for a coordinator, one agent and one
    /// user under DIR, keeping any that exist.
    Init {
        /// Where the files go.
        #[arg(long, default_value = ".remedy/pki")]
        dir: std::path::PathBuf,
        /// The agent's node name.
        #[arg(long)]
        node: String,
        /// The user's name (their certificate says `remedy://user/NAME`).
        #[arg(long, default_value = "admin")]
        user: String,
        /// Also write a remedyctl config file here with a `local` context
        /// using the user's certificate.
        #[arg(long)]
        write_config: Option<std::path::PathBuf>,
    },
}

fn pki_init(
    dir: &std::path::Path,
    node: &str,
    user: &str,
    write_config: Option<&std::path::Path>,
    flags: &connection::ConnectionFlags,
) -> anyhow::Result<()> {
    let pki = remedy_proto::pki::init_local(dir, node, user).map_err(anyhow::Error::msg)?;
    outln!("CA           {}", pki.ca.display());
    outln!("coordinator  {} {}", pki.coordinator.0.display(), pki.coordinator.1.display());
    outln!("agent {node:<6} {} {}", pki.agent.0.display(), pki.agent.1.display());
    outln!("user {user:<7} {} {}", pki.user.0.display(), pki.user.1.display());
    if let Some(path) = write_config {
        let url = flags.coordinator.clone().unwrap_or_else(|| "https://127.0.0.1:7070".into());
        let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let pki = remedy_proto::pki::LocalPki {
            ca: absolute(&pki.ca),
            coordinator: pki.coordinator.clone(),
            agent: pki.agent.clone(),
            user: (absolute(&pki.user.0), absolute(&pki.user.1)),
        };
        connection::write_context(path, "local", &url, &pki)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        outln!("context local in {}", path.display());
    }
    Ok(())
}

/// `audit`: JSON lines, streamed page by page. Reading the log is itself
/// audited, so the reading stops at the log's end as the first page saw it
/// rather than follow the entries its own calls add.
async fn audit(ctx: &mut Ctx, after: u64, page: PageArgs) -> anyhow::Result<()> {
    let mut pager = paging::Pager::new(page);
    let mut end: Option<u64> = None;
    while let Some((page_size, page_token)) = pager.next_request() {
        let request = pb::ListAuditRequest { after_seq: after, page_size, page_token, ..Default::default() };
        let answer = ctx.client.list_audit(request).await.map_err(|s| ctx.explain(s))?.into_inner();
        let end = *end.get_or_insert(answer.last_seq);
        let reached_end = answer.entries.last().is_some_and(|e| e.seq >= end);
        let entries: Vec<_> = answer.entries.into_iter().filter(|e| e.seq <= end).collect();
        let next_token = if reached_end { String::new() } else { answer.next_page_token };
        for e in pager.take(entries, next_token)? {
            let line = serde_json::json!({
                "seq": e.seq,
                "at": remedy_shared::Timestamp::from_millis(e.at_ms).to_string(),
                "actor": e.actor,
                "kind": e.kind,
                "operation": e.operation,
                "target": e.target,
                "arguments": e.arguments.iter().collect::<std::collections::BTreeMap<_, _>>(),
                "outcome": e.outcome,
            });
            outln!("{line}");
        }
    }
    Ok(())
}

/// Every finding that matches, page by page.
async fn findings(ctx: &mut Ctx, agent: Option<String>, kind: Option<String>, page: PageArgs) -> anyhow::Result<()> {
    let (agent_id, kind) = (agent.unwrap_or_default(), kind.unwrap_or_default());
    let all = follow!(
        ctx,
        page,
        |page_size, page_token| ctx.client.list_findings(pb::ListFindingsRequest {
            agent_id: agent_id.clone(),
            kind: kind.clone(),
            page_size,
            page_token,
        }),
        findings
    );
    output::print_list(ctx.fmt, &all.into_iter().map(views::Finding::from).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("remedyctl").chain(args.iter().copied()))
    }

    #[test]
    fn a_param_without_equals_is_a_usage_error_naming_the_argument() {
        let err = parse(&["run", "P0-001", "--param", "replicas"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        let text = err.to_string();
        assert!(text.contains("--param <KEY=VALUE>") && text.contains("replicas"), "{text}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn commands_parse_as_documented() {
        let cli = parse(&["--as", "alice", "run", "R", "-p", "a=1", "--param", "b=2", "--dry-run"]).unwrap();
        assert_eq!(cli.as_user.as_deref(), Some("alice"));
        let Command::Run(args) = cli.command else { panic!("run") };
        assert_eq!(args.params.len(), 2);
        assert!(args.dry_run && !args.wait);
        let Command::Run(args) = parse(&["run", "R", "--wait", "--timeout", "30s"]).unwrap().command else {
            panic!("run")
        };
        assert_eq!(args.timeout, std::time::Duration::from_secs(30));
        assert!(parse(&["run", "R", "--timeout", "30s"]).is_err(), "--timeout needs --wait");
        assert!(parse(&["approvals"]).is_ok());
        assert!(parse(&["approvals", "--all"]).is_ok());
        assert!(parse(&["approvals", "list", "--all"]).is_ok());
        assert!(parse(&["approvals", "approve", "INC-1", "step", "--attempt", "2"]).is_ok());
        assert!(parse(&["approvals", "approve", "INC-1/step#2"]).is_ok());
        assert!(parse(&["approvals", "approve", "INC-1", "step", "--attempt", "0"]).is_err());
        assert!(parse(&["approvals", "deny", "INC-1", "step"]).is_err(), "a denial needs --reason");
        assert!(parse(&["pause"]).is_err(), "a pause needs --reason");
        assert!(parse(&["pause", "--reason", "freeze", "-o", "json"]).is_ok());
        assert!(parse(&["breaker", "reset", "global"]).is_ok());
        assert!(parse(&["resolve", "INC-1", "--reason", "fixed by hand"]).is_ok());
        assert!(parse(&["incident", "timeline", "INC-1", "-o", "wide"]).is_ok());
        assert!(parse(&["blocks"]).is_ok());
        assert!(parse(&["blocks", "-A", "-o", "json"]).is_ok());
        assert!(parse(&["blocks", "unblock", "203.0.113.7"]).is_ok());
        assert!(parse(&["blocks", "unblock"]).is_err(), "unblock names the address");
        for list in [&["incidents", "-A"][..], &["findings"], &["agents"], &["audit"], &["runbooks", "list"]] {
            let mut args = list.to_vec();
            args.extend(["--limit", "5", "--chunk-size", "100"]);
            assert!(parse(&args).is_ok(), "{args:?}");
        }
        assert!(parse(&["approvals", "list", "--chunk-size", "2"]).is_ok());
        assert!(parse(&["blocks", "-A", "--limit", "3"]).is_ok());
        let err = parse(&["incidents", "--chunk-size", "0"]).unwrap_err();
        assert!(err.to_string().contains("--chunk-size"), "{err}");
        assert!(parse(&["incidents", "--chunk-size", "5001"]).is_err(), "the coordinator's page is at most 5,000");
    }

    #[test]
    fn cross_argument_mistakes_are_caught_before_connecting() {
        let cli = parse(&["run", "R", "-p", "a=1", "-p", "a=2"]).unwrap();
        let (name, problem) = cli.command.check().unwrap_err();
        assert_eq!(name, "run");
        assert!(problem.contains("given twice"), "{problem}");
        let cli = parse(&["approvals", "approve", "INC-1"]).unwrap();
        let (name, problem) = cli.command.check().unwrap_err();
        assert_eq!(name, "approvals");
        assert!(problem.contains("not an approval key"), "{problem}");
        let cli = parse(&["approvals", "deny", "INC-1/s#1", "--reason", "no"]).unwrap();
        assert!(cli.command.check().is_ok());
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
