//! `blocks`: the IP bans the coordinator placed on the agents, and lifting
//! one everywhere.

use clap::{Args, Subcommand};
use remedy_proto::v1 as pb;
use serde::Serialize;

use crate::client::Ctx;
use crate::output::{self, Row};
use crate::paging::{PageArgs, follow};

/// `blocks [list] [-A]` or `blocks unblock IP`.
#[derive(Debug, Args)]
pub struct BlocksArgs {
    /// Include expired and lifted bans.
    #[arg(long, short = 'A')]
    pub all: bool,
    #[command(flatten)]
    pub page: PageArgs,
    #[command(subcommand)]
    pub command: Option<BlocksCommand>,
}

/// What to do with bans.
#[derive(Debug, Subcommand)]
pub enum BlocksCommand {
    /// Bans with their enforcement per node (the default).
    List {
        /// Include expired and lifted bans.
        #[arg(long, short = 'A')]
        all: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Lifts a ban on every agent, recorded with who did it.
    Unblock {
        /// The address or CIDR, as it was blocked.
        ip: String,
    },
}

/// One node's part in a ban.
#[derive(Debug, Serialize)]
pub struct BanNode {
    pub node: String,
    pub agent_id: String,
    /// `enforced`, `refused`, `failed`, `unblocked` or `dry_run`.
    pub state: String,
    pub reason: String,
    pub at: Option<String>,
}

/// A ban as printed.
#[derive(Debug, Serialize)]
pub struct Ban {
    pub ip: String,
    /// `active`, `expired` or `unblocked`.
    pub state: String,
    pub reason: String,
    pub incident_id: Option<String>,
    pub step_id: Option<String>,
    pub blocked_at: Option<String>,
    pub until: Option<String>,
    /// Nodes whose agent enforces it now.
    pub enforced: usize,
    pub nodes: Vec<BanNode>,
    pub unblocked_by: Option<String>,
    pub unblocked_at: Option<String>,
    /// The rule at the edge provider, when the step asked for one.
    pub edge: Option<EdgeRule>,
}

/// A ban's rule at the edge provider.
#[derive(Debug, Serialize)]
pub struct EdgeRule {
    /// `enforced`, `failed`, `expired`, `unblocked` or `not_configured`.
    pub state: String,
    pub rule_id: Option<String>,
    pub reason: Option<String>,
}

fn time(ms: i64) -> Option<String> {
    (ms != 0).then(|| remedy_shared::Timestamp::from_millis(ms).to_string())
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<pb::Ban> for Ban {
    fn from(b: pb::Ban) -> Self {
        Ban {
            enforced: b.nodes.iter().filter(|n| n.state == "enforced").count(),
            ip: b.ip,
            state: b.state,
            reason: b.reason,
            incident_id: non_empty(b.incident_id),
            step_id: non_empty(b.step_id),
            blocked_at: time(b.blocked_at_ms),
            until: time(b.until_ms),
            nodes: b
                .nodes
                .into_iter()
                .map(|n| BanNode {
                    node: n.node,
                    agent_id: n.agent_id,
                    state: n.state,
                    reason: n.reason,
                    at: time(n.at_ms),
                })
                .collect(),
            unblocked_by: non_empty(b.unblocked_by),
            unblocked_at: time(b.unblocked_at_ms),
            edge: non_empty(b.edge_state).map(|state| EdgeRule {
                state,
                rule_id: non_empty(b.edge_rule_id),
                reason: non_empty(b.edge_reason),
            }),
        }
    }
}

impl Row for Ban {
    fn header(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["IP", "STATE", "UNTIL", "ENFORCED", "NODES", "EDGE", "INCIDENT"];
        if wide {
            h.extend(["BLOCKED", "REASON", "UNBLOCKED BY"]);
        }
        h
    }
    fn cells(&self, wide: bool) -> Vec<String> {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let nodes = if self.nodes.is_empty() {
            "-".to_owned()
        } else {
            self.nodes.iter().map(|n| format!("{}={}", n.node, n.state)).collect::<Vec<_>>().join(",")
        };
        let mut c = vec![
            self.ip.clone(),
            self.state.clone(),
            dash(&self.until),
            format!("{}/{}", self.enforced, self.nodes.len()),
            nodes,
            self.edge.as_ref().map(|e| e.state.clone()).unwrap_or_else(|| "-".into()),
            dash(&self.incident_id),
        ];
        if wide {
            c.extend([dash(&self.blocked_at), self.reason.clone(), dash(&self.unblocked_by)]);
        }
        c
    }
}

/// `blocks`, `blocks list`, `blocks unblock IP`.
pub async fn blocks(ctx: &mut Ctx, args: BlocksArgs) -> anyhow::Result<()> {
    match args.command {
        None => list(ctx, args.all, args.page).await,
        Some(BlocksCommand::List { all, page }) => list(ctx, all || args.all, page.or(args.page)).await,
        Some(BlocksCommand::Unblock { ip }) => unblock(ctx, ip).await,
    }
}

async fn list(ctx: &mut Ctx, all: bool, page: PageArgs) -> anyhow::Result<()> {
    let bans = follow!(
        ctx,
        page,
        |page_size, page_token| ctx.client.list_bans(pb::ListBansRequest {
            include_inactive: all,
            page_size,
            page_token
        }),
        bans
    );
    output::print_list(ctx.fmt, &bans.into_iter().map(Ban::from).collect::<Vec<_>>())
}

async fn unblock(ctx: &mut Ctx, ip: String) -> anyhow::Result<()> {
    let by = ctx.who()?;
    let request = pb::UnblockRequest { ip, requested_by: by };
    let ban = ctx.client.unblock(request).await.map_err(|s| ctx.explain(s))?.into_inner();
    output::print_list(ctx.fmt, &[Ban::from(ban)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ban_shows_its_enforcement_per_node_and_at_the_edge() {
        let node = |name: &str, state: &str| pb::BanNode {
            node: name.into(),
            agent_id: format!("{name}-id"),
            state: state.into(),
            reason: String::new(),
            at_ms: 1,
        };
        let ban = Ban::from(pb::Ban {
            ip: "203.0.113.7".into(),
            state: "active".into(),
            incident_id: "INC-000001".into(),
            until_ms: 1_000,
            nodes: vec![node("n1", "enforced"), node("n2", "refused")],
            edge_state: "enforced".into(),
            edge_rule_id: "r1".into(),
            ..Default::default()
        });
        assert_eq!(ban.enforced, 1);
        let cells = ban.cells(false);
        assert_eq!(cells.len(), Ban::header(false).len());
        assert_eq!(cells[3], "1/2");
        assert_eq!(cells[4], "n1=enforced,n2=refused");
        assert_eq!(cells[5], "enforced");
        let json = serde_json::to_value(&ban).unwrap();
        assert_eq!(json["edge"]["rule_id"], "r1");
        assert_eq!(json["step_id"], serde_json::Value::Null);
        let none = Ban::from(pb::Ban { ip: "x".into(), ..Default::default() });
        assert!(none.edge.is_none() && none.cells(true)[4] == "-");
    }
}
