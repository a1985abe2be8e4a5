//! `remedyctl runbooks`: the catalog the coordinator loaded (`list`,
//! `show`), and `validate`, the same checks the coordinator makes at
//! start-up, offline, so a runbook is fixed before it is deployed.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use remedy_proto::v1 as pb;
use remedy_shared::catalog::{CatalogKind, peek_kind};
use remedy_shared::runbook::{ActionCatalog, load_runbook};
use serde::Serialize;

use crate::client::Ctx;
use crate::output::{self, Format, Row};
use crate::views::{self, short_duration};

/// `runbooks ...`.
#[derive(Debug, Subcommand)]
pub enum RunbookCommand {
    /// The coordinator's catalog, most urgent first.
    List,
    /// One runbook: header, steps (and which run as rehearsals), params and
    /// its definition as the coordinator understood it.
    Show {
        /// Runbook id, e.g. P0-001.
        id: String,
    },
    /// Checks runbook files (or directories of them) offline, as the
    /// coordinator of this release would load them, and says which steps
    /// run in dry-run until their actuator arrives. In a directory, files of
    /// other kinds (communication templates) are passed over, as the
    /// coordinator passes over them.
    Validate {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

/// `runbooks list`.
pub async fn list(ctx: &mut Ctx) -> anyhow::Result<()> {
    let list = ctx.client.list_runbooks(pb::ListRunbooksRequest {}).await.map_err(|s| ctx.explain(s))?.into_inner();
    output::print_list(ctx.fmt, &list.runbooks.into_iter().map(views::Runbook::from).collect::<Vec<_>>())
}

/// `runbooks show ID`.
pub async fn show(ctx: &mut Ctx, id: String) -> anyhow::Result<()> {
    let runbook = match ctx.client.get_runbook(pb::GetRunbookRequest { id }).await {
        Ok(reply) => views::Runbook::from(reply.into_inner()),
        Err(status) if status.code() == tonic::Code::NotFound => {
            anyhow::bail!("{} (the catalog: `remedyctl runbooks list`)", status.message())
        }
        Err(status) => return Err(ctx.explain(status)),
    };
    output::print_one(ctx.fmt, &runbook, output::runbook_text)
}

/// One file's verdict.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub file: String,
    pub runbook: Option<String>,
    pub priority: Option<String>,
    pub mttr_target: Option<String>,
    pub valid: bool,
    /// Steps that run in dry-run until their actuator arrives: "step (kind)".
    pub dry_run_until_actuator: Vec<String>,
    pub errors: Vec<String>,
}

impl Row for Verdict {
    fn header(_wide: bool) -> Vec<&'static str> {
        vec!["FILE", "RUNBOOK", "PRIORITY", "MTTR", "VALID", "DRY-RUN UNTIL ACTUATOR"]
    }
    fn cells(&self, _wide: bool) -> Vec<String> {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        vec![
            self.file.clone(),
            dash(&self.runbook),
            dash(&self.priority),
            dash(&self.mttr_target),
            self.valid.to_string(),
            self.dry_run_until_actuator.join(", "),
        ]
    }
}

/// The files to check, each with whether it was found in a directory
/// (rather than named).
fn files(paths: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, bool)>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            inner.sort();
            out.extend(inner.into_iter().map(|p| (p, true)));
        } else {
            out.push((path.clone(), false));
        }
    }
    Ok(out)
}

/// The verdict on one file; `None` for a file of another kind found in a
/// directory.
fn check(path: &Path, in_dir: bool, catalog: &ActionCatalog) -> Option<Verdict> {
    let file = path.display().to_string();
    let mut verdict = Verdict {
        file: file.clone(),
        runbook: None,
        priority: None,
        mttr_target: None,
        valid: false,
        dry_run_until_actuator: Vec::new(),
        errors: Vec::new(),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            verdict.errors.push(format!("{file}: cannot read the file: {e}"));
            return Some(verdict);
        }
    };
    match peek_kind(&text) {
        Some(kind) if kind != CatalogKind::Runbook && in_dir => return None,
        Some(kind) if kind != CatalogKind::Runbook => {
            verdict.errors.push(format!("{file}: a {}, not a runbook", kind.as_str()));
            return Some(verdict);
        }
        _ => {}
    }
    match load_runbook(&file, &text, catalog) {
        Ok((runbook, report)) => {
            verdict.valid = true;
            verdict.runbook = Some(runbook.id().to_owned());
            verdict.priority = Some(runbook.priority.to_string());
            verdict.mttr_target = Some(short_duration(runbook.mttr_target));
            verdict.dry_run_until_actuator =
                report.unavailable.iter().map(|u| format!("{} ({})", u.step, u.kind.as_str())).collect();
        }
        Err(invalid) => verdict.errors = invalid.errors.iter().map(ToString::to_string).collect(),
    }
    Some(verdict)
}

/// Validates every file; fails (exit 1) when any is invalid, after printing all.
pub fn validate(paths: &[PathBuf], fmt: Format) -> anyhow::Result<()> {
    let catalog = ActionCatalog::this_release();
    let verdicts: Vec<Verdict> =
        files(paths)?.iter().filter_map(|(path, in_dir)| check(path, *in_dir, &catalog)).collect();
    let invalid = verdicts.iter().filter(|v| !v.valid).count();
    output::print_list(fmt, &verdicts)?;
    if matches!(fmt, Format::Table | Format::Wide) {
        for v in &verdicts {
            for e in &v.errors {
                eprintln!("{e}");
            }
        }
    }
    if invalid > 0 {
        anyhow::bail!("{invalid} of {} runbooks are invalid", verdicts.len());
    }
    Ok(())
}
