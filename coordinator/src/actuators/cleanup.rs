//! `log_cleanup` across nodes: the directive a runbook step sends, and one
//! report of every node's answer: files deleted and bytes freed per node
//! and in all, and what each node kept and why. A node that deleted
//! nothing fails the step, so a cleanup that freed nothing never reads as
//! success.

use std::collections::BTreeMap;

use remedy_shared::cleanup::{
    BYTES_FREED, BYTES_WOULD_FREE, FILES_DELETED, FILES_WOULD_DELETE, Tally, UNREADABLE_PROCESSES as UNREADABLE,
    kept_summary,
};
use remedy_shared::runbook::LogCleanup;

use super::agent::{AgentAnswer, Counts, agents_word, first_problem};
use super::{ActionReport, ActionStatus};

/// The directive agents run it as.
pub const DIRECTIVE: &str = "log_cleanup";

/// The pool a node action's percentage budget counts in: the nodes whose
/// agents are connected.
pub const POOL: &str = "nodes";

/// The directive's parameters: the step's roots, in the form the agent
/// reads (`[{"path", "globs", "older_than"}]`); the agent keeps them
/// within its own configured roots and ages.
pub(crate) fn directive_params(p: &LogCleanup) -> Result<BTreeMap<String, String>, String> {
    if p.roots.is_empty() {
        return Err("`roots` lists no root".to_owned());
    }
    let roots = serde_json::to_string(&p.roots).map_err(|e| format!("`roots`: {e}"))?;
    Ok(BTreeMap::from([("roots".to_owned(), roots)]))
}

/// One report from every targeted agent's answer. Per agent,
/// `<label>.<key>` for its evidence, `<label>.outcome` and
/// `<label>.message`; in all, `files_deleted` and `bytes_freed` (in a dry
/// run `files_would_delete` and `bytes_would_free`), `kept` and
/// `kept.<reason>`, `nodes_without_deletions`, and the counts. Succeeded
/// only when every agent ran it and each deleted at least one file.
pub(crate) fn report(answers: &[AgentAnswer], dry_run: bool) -> ActionReport {
    let counts = Counts::of(answers, dry_run);
    let mut evidence = BTreeMap::new();
    let mut total = Tally::default();
    let mut per_node = Vec::new();
    let mut nothing = Vec::new();
    let mut unreadable = Vec::new();
    for a in answers {
        for (k, v) in &a.evidence {
            evidence.insert(format!("{}.{k}", a.label), v.clone());
        }
        evidence.insert(format!("{}.outcome", a.label), a.outcome.as_str().to_owned());
        evidence.insert(format!("{}.message", a.label), a.message.clone());
        if !a.outcome.fulfils(dry_run) {
            continue;
        }
        // An answer without a count is read as nothing deleted: the step
        // cannot claim what it cannot show.
        let tally = Tally::from_evidence(&a.evidence).unwrap_or_default();
        if tally.deleted == 0 {
            nothing.push(a.label.as_str());
        }
        // Files only such processes hold open were not seen: said, so a
        // reader knows how far "not open" goes on that node.
        let blind = a.evidence.get(UNREADABLE).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        if blind > 0 {
            let word = if blind == 1 { "process" } else { "processes" };
            unreadable.push(format!("{} could not read the open files of {blind} {word}", a.label));
        }
        per_node.push(format!("{}: {}, {} bytes", a.label, files(tally.deleted), tally.bytes));
        total.add(&tally);
    }
    let (files_key, bytes_key) =
        if dry_run { (FILES_WOULD_DELETE, BYTES_WOULD_FREE) } else { (FILES_DELETED, BYTES_FREED) };
    evidence.insert(files_key.to_owned(), total.deleted.to_string());
    evidence.insert(bytes_key.to_owned(), total.bytes.to_string());
    evidence.insert("kept".to_owned(), total.kept_for_safety().to_string());
    for (reason, n) in total.kept.iter().filter(|(k, _)| k.for_safety()) {
        evidence.insert(format!("kept.{}", reason.name()), n.to_string());
    }
    evidence.insert("nodes_without_deletions".to_owned(), nothing.len().to_string());
    evidence.insert("directive".to_owned(), DIRECTIVE.to_owned());
    counts.add_to(&mut evidence);

    let mut status = counts.status(if dry_run { ActionStatus::DryRun } else { ActionStatus::Succeeded });
    if status == ActionStatus::Succeeded && !nothing.is_empty() {
        status = ActionStatus::Failed;
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    let freed = if dry_run { "would be freed" } else { "freed" };
    let mut message = format!(
        "`{DIRECTIVE}` on {} {}: {verb} {}, {} bytes {freed}",
        counts.agents,
        agents_word(counts.agents),
        files(total.deleted),
        total.bytes
    );
    if per_node.len() > 1 {
        message.push_str(&format!(" ({})", per_node.join("; ")));
    }
    if let Some(kept) = kept_summary(&total.kept) {
        message.push_str("; ");
        message.push_str(&kept);
    }
    if !nothing.is_empty() {
        let what = if dry_run { "nothing would be deleted on" } else { "nothing deleted on" };
        message.push_str(&format!("; {what} {}", nothing.join(", ")));
    }
    if !unreadable.is_empty() {
        message.push_str(&format!("; {}", unreadable.join(", ")));
    }
    if counts.succeeded + counts.sent < counts.agents {
        message.push_str(&format!("; {}", counts.describe()));
    }
    if let Some(problem) = first_problem(answers, dry_run) {
        message.push_str("; ");
        message.push_str(&problem);
    }
    if dry_run {
        message.push_str(" (dry run: nothing changed)");
    }
    ActionReport { status, message, evidence }
}

fn files(n: u64) -> String {
    if n == 1 { "1 file".to_owned() } else { format!("{n} files") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuators::agent::Outcome;

    fn answer(label: &str, outcome: Outcome, pairs: &[(&str, &str)]) -> AgentAnswer {
        AgentAnswer {
            agent_id: format!("id-{label}"),
            node: label.to_owned(),
            label: label.to_owned(),
            outcome,
            message: format!("{} on {label}", outcome.as_str()),
            evidence: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn the_report_adds_up_every_node_and_says_what_was_kept_and_why() {
        let answers = vec![
            answer(
                "node-a",
                Outcome::Succeeded,
                &[("files_deleted", "3"), ("bytes_freed", "54"), ("skipped.open", "1")],
            ),
            answer(
                "node-b",
                Outcome::Succeeded,
                &[
                    ("files_deleted", "1"),
                    ("bytes_freed", "6"),
                    ("skipped.hard_links", "1"),
                    ("skipped.too_young", "4"),
                ],
            ),
        ];
        let r = report(&answers, false);
        assert_eq!(r.status, ActionStatus::Succeeded, "{r:?}");
        assert_eq!(
            r.message,
            "`log_cleanup` on 2 agents: deleted 4 files, 60 bytes freed (node-a: 3 files, 54 bytes; node-b: 1 file, 6 bytes); \
             kept 2: 1 has other links, 1 is open by a process"
        );
        assert_eq!((r.evidence["files_deleted"].as_str(), r.evidence["bytes_freed"].as_str()), ("4", "60"));
        assert_eq!((r.evidence["kept"].as_str(), r.evidence["kept.open"].as_str()), ("2", "1"));
        assert_eq!(r.evidence["node-a.files_deleted"], "3");
        assert!(!r.evidence.contains_key("kept.too_young"), "the age rule is not a safety keep");
    }

    #[test]
    fn a_node_where_nothing_was_deleted_is_never_a_success() {
        let answers = vec![
            answer("node-a", Outcome::Succeeded, &[("files_deleted", "2"), ("bytes_freed", "20")]),
            answer(
                "node-b",
                Outcome::Succeeded,
                &[
                    ("files_deleted", "0"),
                    ("bytes_freed", "0"),
                    ("skipped.open", "2"),
                    ("open_check.unreadable_processes", "1"),
                ],
            ),
        ];
        let r = report(&answers, false);
        assert_eq!(r.status, ActionStatus::Failed);
        let end = "kept 2: 2 are open by a process; nothing deleted on node-b; node-b could not read the open files of 1 process";
        assert!(r.message.ends_with(end), "{}", r.message);
        assert_eq!(r.evidence["nodes_without_deletions"], "1");
        // An answer without a count shows nothing deleted.
        let silent = vec![answer("node-a", Outcome::Succeeded, &[])];
        assert_eq!(report(&silent, false).status, ActionStatus::Failed);
    }

    #[test]
    fn refusals_and_rehearsals_read_as_what_they_are() {
        let refused = vec![
            answer("node-a", Outcome::Succeeded, &[("files_deleted", "1"), ("bytes_freed", "1")]),
            answer("node-b", Outcome::Refused, &[("reason", "cooldown")]),
        ];
        let r = report(&refused, false);
        assert_eq!(r.status, ActionStatus::Failed);
        assert!(r.message.ends_with("1 succeeded, 1 failed; node-b: refused on node-b"), "{}", r.message);
        let dry = vec![answer("node-a", Outcome::DryRun, &[("files_would_delete", "5"), ("bytes_would_free", "50")])];
        let r = report(&dry, true);
        assert_eq!(r.status, ActionStatus::DryRun);
        assert_eq!(
            r.message,
            "`log_cleanup` on 1 agent: would delete 5 files, 50 bytes would be freed (dry run: nothing changed)"
        );
        assert_eq!(r.evidence["files_would_delete"], "5");
        // A rehearsal's answer is no deletion in a live run.
        assert_eq!(report(&dry, false).status, ActionStatus::Failed);
    }

    #[test]
    fn the_directive_carries_the_steps_roots_as_the_agent_reads_them() {
        let step: LogCleanup = serde_json::from_value(serde_json::json!({
            "agents": "reporting",
            "roots": [{ "path": "/tmp", "globs": ["*.log"], "older_than": "1d" }]
        }))
        .unwrap();
        let params = directive_params(&step).unwrap();
        let roots: serde_json::Value = serde_json::from_str(&params["roots"]).unwrap();
        assert_eq!((roots[0]["path"].as_str(), roots[0]["globs"][0].as_str()), (Some("/tmp"), Some("*.log")));
        let age = remedy_shared::config::parse_duration(roots[0]["older_than"].as_str().unwrap()).unwrap();
        assert_eq!(age, std::time::Duration::from_secs(86_400), "the agent reads the age back as written");
        let empty = LogCleanup { roots: Vec::new(), ..step };
        assert_eq!(directive_params(&empty).unwrap_err(), "`roots` lists no root");
    }
}
