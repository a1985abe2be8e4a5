//! `remedyctl`: the admin client.

#![forbid(unsafe_code)]

mod output;
mod runbooks;
mod views;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use remedy_proto::MAX_MESSAGE_BYTES;
use remedy_proto::v1 as pb;
use remedy_proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::output::Format;

#[derive(Debug, Parser)]
#[command(name = "remedyctl", version, about = "Remedy's admin client")]
struct Cli {
    /// Coordinator gRPC URL.
    #[arg(long, global = true, env = "REMEDY_COORDINATOR", default_value = "http://127.0.0.1:7070")]
    coordinator: String,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Agents that ever connected.
    Agents,
    /// Findings received, in (agent, sequence) order.
    Findings {
        /// Only from this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Incidents, newest first.
    Incidents {
        /// Include resolved incidents.
        #[arg(long, short = 'A')]
        all: bool,
        /// Keep watching and print every change.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// One incident.
    Incident {
        #[command(subcommand)]
        command: IncidentCommand,
    },
    /// Runbook definitions.
    #[command(alias = "runbook")]
    Runbooks {
        #[command(subcommand)]
        command: RunbookCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RunbookCommand {
    /// Checks runbook files (or directories of them) offline, as the
    /// coordinator of this release would load them, and says which steps
    /// run in dry-run until their actuator arrives.
    Validate {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum IncidentCommand {
    /// An incident with its timeline.
    Show {
        /// Incident id, e.g. INC-000042.
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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

/// Errors worded for the person at the terminal: no stack traces.
fn explain(coordinator: &str, status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unavailable => {
            anyhow::anyhow!("cannot reach the coordinator at {coordinator}: {}", status.message())
        }
        tonic::Code::NotFound | tonic::Code::InvalidArgument => anyhow::anyhow!("{}", status.message()),
        code => anyhow::anyhow!("the coordinator answered {code:?}: {}", status.message()),
    }
}

async fn connect(coordinator: &str) -> anyhow::Result<AdminServiceClient<Channel>> {
    let endpoint = Endpoint::from_shared(coordinator.to_owned())
        .map_err(|_| anyhow::anyhow!("`{coordinator}` is not a URL like http://127.0.0.1:7070"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        // The innermost cause says what happened ("Connection refused").
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        anyhow::anyhow!("cannot reach the coordinator at {coordinator}: {cause}")
    })?;
    Ok(AdminServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Runbooks { command: RunbookCommand::Validate { paths } } = &cli.command {
        return runbooks::validate(paths, cli.output);
    }
    let url = cli.coordinator.clone();
    let mut client = connect(&url).await?;
    let fmt = cli.output;
    match cli.command {
        Command::Agents => {
            let agents = client.list_agents(pb::ListAgentsRequest {}).await.map_err(|s| explain(&url, s))?.into_inner();
            output::print_list(fmt, &agents.agents.into_iter().map(views::Agent::from).collect::<Vec<_>>())
        }
        Command::Findings { agent, kind, limit } => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let want = if limit == 0 { 5_000 } else { (limit - all.len()).min(5_000) };
                let request = pb::ListFindingsRequest {
                    agent_id: agent.clone().unwrap_or_default(),
                    kind: kind.clone().unwrap_or_default(),
                    page_size: want as u32,
                    page_token,
                };
                let page = client.list_findings(request).await.map_err(|s| explain(&url, s))?.into_inner();
                all.extend(page.findings.into_iter().map(views::Finding::from));
                page_token = page.next_page_token;
                if page_token.is_empty() || (limit > 0 && all.len() >= limit) {
                    break;
                }
            }
            output::print_list(fmt, &all)
        }
        Command::Incidents { all, watch: false } => {
            let list = client
                .list_incidents(pb::ListIncidentsRequest { include_resolved: all, limit: 0 })
                .await
                .map_err(|s| explain(&url, s))?
                .into_inner();
            output::print_list(fmt, &list.incidents.into_iter().map(views::Incident::from).collect::<Vec<_>>())
        }
        Command::Incidents { all, watch: true } => {
            let mut stream = client
                .watch_incidents(pb::WatchIncidentsRequest { include_resolved: all })
                .await
                .map_err(|s| explain(&url, s))?
                .into_inner();
            let mut header = true;
            while let Some(event) = stream.message().await.map_err(|s| explain(&url, s))? {
                if let Some(incident) = event.incident {
                    output::print_watch_item(fmt, &views::Incident::from(incident), header)?;
                    header = false;
                }
            }
            Ok(())
        }
        Command::Runbooks { .. } => unreachable!("handled before connecting"),
        Command::Incident { command: IncidentCommand::Show { id } } => {
            let incident =
                client.get_incident(pb::GetIncidentRequest { id }).await.map_err(|s| explain(&url, s))?.into_inner();
            output::print_incident(fmt, &views::IncidentDetail::from(incident))
        }
    }
}
