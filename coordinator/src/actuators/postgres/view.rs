//! The agents' view of a member: when the coordinator cannot reach the
//! primary, every connected agent is asked (directive `reach`, protocol
//! `postgres`) whether its node can. A primary the nodes still reach is
//! not dead: the coordinator is cut off from it, and the applications on
//! those nodes may still be writing to it. Only a node that answered that
//! it tried and could not reach it counts towards it being down; an agent
//! that did not answer, could not try, or runs a version without the
//! check is silence ([`Reach::Silent`]), never evidence.

use std::collections::BTreeMap;
use std::time::Duration;

use remedy_shared::failover::{NodeReport, Reach};

use crate::directives::{Answer, Delivery, DirectiveSpec, Directives, Pending, Target, Undelivered};

use super::config::{DatabaseConfig, MemberConfig};

/// The agents' directive.
const REACH: &str = "reach";
/// Beyond the agents' own timeout: for their answer to travel back.
const ANSWER_SLACK: Duration = Duration::from_secs(2);

/// What the agents saw of one member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AgentsLook {
    /// What each agent's node said.
    pub reports: Vec<NodeReport>,
    /// One line per agent, for the timeline.
    pub lines: Vec<String>,
}

impl AgentsLook {
    /// The whole look in one line.
    pub fn summary(&self, member: &str) -> String {
        if self.lines.is_empty() {
            return format!("no agent is connected to say whether its node reaches {member}");
        }
        let reached = self.reports.iter().filter(|r| r.reach == Reach::Reached).count();
        format!("{member} seen from {reached} of {} nodes: {}", self.lines.len(), self.lines.join("; "))
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
    for (node, reach, line) in answers {
        seen.lines.push(format!("{node}: {line}"));
        seen.reports.push(NodeReport { node, reach });
    }
    seen
}

/// What one agent's result says: its `verdict`, or for an agent from
/// before verdicts, `reached` alone.
fn judge(evidence: &std::collections::HashMap<String, String>, message: &str) -> (Reach, String) {
    let millis = evidence.get("millis").cloned().unwrap_or_default();
    let error = evidence.get("error").cloned().unwrap_or_else(|| message.to_owned());
    let reached = evidence.get("reached").map(String::as_str);
    match (evidence.get("verdict").map(String::as_str), reached) {
        (Some("reached"), _) | (None, Some("true")) => (Reach::Reached, format!("reached in {millis} ms")),
        (Some("unreachable"), _) | (None, Some("false")) => {
            (Reach::CannotReach(error.clone()), format!("cannot reach ({error})"))
        }
        (Some("inconclusive"), _) => (Reach::Silent(error.clone()), format!("could not try ({error})")),
        _ => (Reach::Silent(message.to_owned()), format!("no verdict ({message})")),
    }
}

/// One agent's answer: its node, what it said, and the line for people.
async fn answer(p: Pending, until: tokio::time::Instant) -> (String, Reach, String) {
    let node = if p.node_name.is_empty() { p.agent_id.clone() } else { p.node_name.clone() };
    let silent = |why: &str| (Reach::Silent(why.to_owned()), why.to_owned());
    let (reach, line) = match p.delivery {
        Delivery::Waiting(waiter) => match waiter.wait(until).await {
            Answer::Result(r) => judge(&r.evidence, &r.message),
            Answer::Disconnected => silent("disconnected before answering"),
            Answer::TimedOut => silent("did not answer in time"),
        },
        Delivery::Sent { .. } => silent("not waited for"),
        Delivery::NotSent(Undelivered::Unsupported { .. }) => {
            silent("not asked: this agent's version cannot check reachability")
        }
        Delivery::NotSent(why) => silent(&format!("not asked ({why:?})")),
    };
    (node, reach, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn only_a_node_that_tried_counts_as_one_that_cannot_reach() {
        let reached = judge(&said(&[("reached", "true"), ("verdict", "reached"), ("millis", "3")]), "");
        assert_eq!(reached, (Reach::Reached, "reached in 3 ms".to_owned()));
        let tried = said(&[("reached", "false"), ("verdict", "unreachable"), ("error", "connection refused")]);
        assert_eq!(judge(&tried, "").0, Reach::CannotReach("connection refused".into()));
        let unresolved = said(&[("reached", "false"), ("verdict", "inconclusive"), ("error", "cannot resolve")]);
        let (reach, line) = judge(&unresolved, "");
        assert_eq!((reach, line.as_str()), (Reach::Silent("cannot resolve".into()), "could not try (cannot resolve)"));
        // An agent from before verdicts: what it said of reaching stands.
        assert_eq!(
            judge(&said(&[("reached", "false"), ("error", "timed out")]), "").0,
            Reach::CannotReach("timed out".into())
        );
        // A result that says neither is no verdict.
        assert!(matches!(judge(&said(&[]), "refused: unknown parameter").0, Reach::Silent(_)));
    }
}
