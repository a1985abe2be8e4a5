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
use crate::paging::{PageArgs, follow};
use crate::views::{self, short_duration};

/// `runbooks ...`.
#[derive(Debug, Subcommand)]
pub enum RunbookCommand {
    /// The coordinator's catalog, most urgent first.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
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
pub async fn list(ctx: &mut Ctx, page: PageArgs) -> anyhow::Result<()> {
    let runbooks = follow!(
        ctx,
        page,
        |page_size, page_token| ctx.client.list_runbooks(pb::ListRunbooksRequest { page_size, page_token }),
        runbooks
    );
    output::print_list(ctx.fmt, &runbooks.into_iter().map(views::Runbook::from).collect::<Vec<_>>())
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
    /// `Runbook`, `EscalationPolicy`, `OnCallSchedule` or
    /// `CommunicationTemplate`.
    pub kind: String,
    /// The object's id, whatever its kind.
    pub id: Option<String>,
    /// The runbook's id (runbooks only).
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
        vec!["FILE", "KIND", "ID", "PRIORITY", "MTTR", "VALID", "DRY-RUN UNTIL ACTUATOR"]
    }
    fn cells(&self, _wide: bool) -> Vec<String> {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        vec![
            self.file.clone(),
            self.kind.clone(),
            dash(&self.id),
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

/// What a valid file holds, for the checks across files.
enum Object {
    Runbook(Box<remedy_shared::runbook::Runbook>),
    Policy(remedy_shared::escalation::EscalationPolicy),
    Other,
}

/// The verdict on one file, as the coordinator would load it, and what it
/// holds when valid.
fn check(path: &Path, catalog: &ActionCatalog) -> (Verdict, Option<Object>) {
    let file = path.display().to_string();
    let mut verdict = Verdict {
        file: file.clone(),
        kind: CatalogKind::Runbook.as_str().to_owned(),
        id: None,
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
            return (verdict, None);
        }
    };
    let kind = peek_kind(&text).unwrap_or(CatalogKind::Runbook);
    verdict.kind = kind.as_str().to_owned();
    let loaded = match kind {
        CatalogKind::Runbook => match load_runbook(&file, &text, catalog) {
            Ok((runbook, report)) => {
                verdict.runbook = Some(runbook.id().to_owned());
                verdict.priority = Some(runbook.priority.to_string());
                verdict.mttr_target = Some(short_duration(runbook.mttr_target));
                verdict.dry_run_until_actuator =
                    report.unavailable.iter().map(|u| format!("{} ({})", u.step, u.kind.as_str())).collect();
                Ok((runbook.id().to_owned(), Object::Runbook(Box::new(runbook))))
            }
            Err(invalid) => Err(invalid.errors.iter().map(ToString::to_string).collect()),
        },
        CatalogKind::EscalationPolicy => remedy_shared::escalation::load_policy(&file, &text)
            .map(|p| (p.id.clone(), Object::Policy(p)))
            .map_err(|e| vec![e.to_string()]),
        CatalogKind::OnCallSchedule => remedy_shared::oncall::load_schedule(&file, &text)
            .map(|s| (s.id().to_owned(), Object::Other))
            .map_err(|e| vec![e.to_string()]),
        CatalogKind::CommunicationTemplate => remedy_shared::comms::load_template(&file, &text)
            .map(|t| (t.id.clone(), Object::Other))
            .map_err(|e| vec![e.to_string()]),
    };
    match loaded {
        Ok((id, object)) => {
            verdict.valid = true;
            verdict.id = Some(id);
            (verdict, Some(object))
        }
        Err(errors) => {
            verdict.errors = errors;
            (verdict, None)
        }
    }
}

/// Within a directory, what one file names another must provide (a
/// runbook's policy, a policy's schedules and templates), as the
/// coordinator checks it at start: each miss invalidates the file that
/// names it.
fn check_references(verdicts: &mut [Verdict], objects: &[Option<Object>]) {
    let ids = |kind: CatalogKind| -> std::collections::BTreeSet<&str> {
        verdicts.iter().filter(|v| v.valid && v.kind == kind.as_str()).filter_map(|v| v.id.as_deref()).collect()
    };
    let (policies, schedules, templates) =
        (ids(CatalogKind::EscalationPolicy), ids(CatalogKind::OnCallSchedule), ids(CatalogKind::CommunicationTemplate));
    let pairs = || verdicts.iter().zip(objects).filter_map(|(v, o)| o.as_ref().map(|o| (v.file.as_str(), o)));
    let missing = remedy_shared::catalog::missing_references(
        pairs().filter_map(|(f, o)| if let Object::Runbook(r) = o { Some((f, r.as_ref())) } else { None }),
        pairs().filter_map(|(f, o)| if let Object::Policy(p) = o { Some((f, p)) } else { None }),
        &policies,
        &schedules,
        &templates,
    );
    let missing: Vec<(String, String)> = missing.into_iter().map(|e| (e.file.clone(), e.to_string())).collect();
    for (file, error) in missing {
        if let Some(v) = verdicts.iter_mut().find(|v| v.file == file) {
            v.valid = false;
            v.errors.push(error);
        }
    }
}

/// Validates every file; fails (exit 1) when any is invalid, after printing all.
pub fn validate(paths: &[PathBuf], fmt: Format) -> anyhow::Result<()> {
    let catalog = ActionCatalog::this_release();
    let files = files(paths)?;
    let (mut verdicts, objects): (Vec<Verdict>, Vec<Option<Object>>) =
        files.iter().map(|(path, _)| check(path, &catalog)).unzip();
    // A directory is a catalog, loaded whole: its files must agree.
    if files.iter().any(|(_, in_dir)| *in_dir) {
        check_references(&mut verdicts, &objects);
    }
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
        anyhow::bail!("{invalid} of {} catalog files are invalid", verdicts.len());
    }
    Ok(())
}
