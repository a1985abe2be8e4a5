//! The agents' view of a member: when the coordinator cannot reach the
//! primary, every connected agent is asked (directive `reach`, protocol
//! `postgres`) whether its node can. A primary the nodes still reach is
//! not dead: the coordinator is cut off from it, and the applications on
//! those nodes may still be writing to it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::directives::{Answer, Delivery, DirectiveSpec, Directives, Pending, Target, Undelivered};

use super::config::{DatabaseConfig, MemberConfig};

/// The agents' directive.
const REACH: &str = "reach";
/// Beyond the agents' own timeout: for their answer to travel back.
const ANSWER_SLACK: Duration = Duration::from_secs(2);

/// What the agents saw of one member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AgentsLook {
    /// The nodes where PostgreSQL answered on the member's address.
    pub reached: Vec<String>,
    /// One line per agent, for the timeline.
    pub lines: Vec<String>,
}

impl AgentsLook {
    /// The whole look in one line.
    pub fn summary(&self, member: &str) -> String {
        if self.lines.is_empty() {
            return format!("no agent is connected to say whether its node reaches {member}");
        }
        format!("{member} seen from {} of {} nodes: {}", self.reached.len(), self.lines.len(), self.lines.join("; "))
    }
}

/// Asks every connected agent whether its node reaches `member`.
pub(crate) async fn look(
    hub: &Directives,
    db: &DatabaseConfig,
    member: &MemberConfig,
    incident_id: &str,
    step_id: &str,
) -> AgentsLook {
    let wait = db.agent_check_timeout;
    let spec = DirectiveSpec {
        action: REACH.to_owned(),
        params: BTreeMap::from([
            ("address".to_owned(), member.address()),
            ("protocol".to_owned(), "postgres".to_owned()),
            ("timeout_ms".to_owned(), wait.as_millis().to_string()),
        ]),
        deadline: hub.clock().now().plus(wait + ANSWER_SLACK),
        // It changes nothing, and a rehearsal decides on what is seen.
        dry_run: false,
        incident_id: incident_id.to_owned(),
        step_id: step_id.to_owned(),
    };
    let until = tokio::time::Instant::now() + wait + ANSWER_SLACK;
    let pending = hub.send(&Target::All, &spec, true).await;
    let answers = futures::future::join_all(pending.into_iter().map(|p| answer(p, until))).await;
    let mut seen = AgentsLook::default();
    for (node, reached, line) in answers {
        if reached {
            seen.reached.push(node.clone());
        }
        seen.lines.push(format!("{node}: {line}"));
    }
    seen
}

/// One agent's answer: its node, whether it reached, and what it said.
async fn answer(p: Pending, until: tokio::time::Instant) -> (String, bool, String) {
    let node = if p.node_name.is_empty() { p.agent_id.clone() } else { p.node_name.clone() };
    let (reached, line) = match p.delivery {
        Delivery::Waiting(waiter) => match waiter.wait(until).await {
            Answer::Result(r) => {
                let reached = r.evidence.get("reached").map(String::as_str) == Some("true");
                let millis = r.evidence.get("millis").cloned().unwrap_or_default();
                match (reached, r.evidence.get("error")) {
                    (true, _) => (true, format!("reached in {millis} ms")),
                    (false, Some(error)) => (false, format!("cannot reach ({error})")),
                    (false, None) => (false, format!("no verdict ({})", r.message)),
                }
            }
            Answer::Disconnected => (false, "disconnected before answering".to_owned()),
            Answer::TimedOut => (false, "did not answer in time".to_owned()),
        },
        Delivery::Sent { .. } => (false, "not waited for".to_owned()),
        Delivery::NotSent(Undelivered::Unsupported { .. }) => {
            (false, "not asked: this agent's version cannot check reachability".to_owned())
        }
        Delivery::NotSent(why) => (false, format!("not asked ({why:?})")),
    };
    (node, reached, line)
}
