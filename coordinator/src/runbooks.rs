//! The catalog: every `*.yaml` file of a directory, parsed and validated
//! before the coordinator starts. Runbooks, and what tells people about
//! their incidents: escalation policies, on-call schedules and
//! communication templates, each file one object named by its `kind:`. A
//! bad file stops the start with the file, line and field named (exit 64):
//! a catalog that half loads would leave incidents without the response
//! someone wrote for them, and a template with a typo would fail at 3 a.m.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use remedy_shared::catalog::{CatalogKind, peek_kind};
use remedy_shared::comms::{CommunicationTemplate, load_template};
use remedy_shared::config::ConfigError;
use remedy_shared::escalation::{EscalationPolicy, load_policy};
use remedy_shared::oncall::{Schedule, load_schedule};
use remedy_shared::runbook::{ActionCatalog, Runbook, ValidationReport, load_runbook};

/// A loaded runbook and what it cannot do yet.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The runbook.
    pub runbook: Runbook,
    /// Its steps that run in dry-run until their actuator arrives.
    pub report: ValidationReport,
}

/// Everything a catalog directory holds.
#[derive(Debug, Clone, Default)]
pub struct LoadedCatalog {
    /// Runbooks, in file name order.
    pub runbooks: Vec<Loaded>,
    /// Escalation policies by id.
    pub policies: BTreeMap<String, EscalationPolicy>,
    /// On-call schedules by id.
    pub schedules: BTreeMap<String, Schedule>,
    /// Communication templates by id.
    pub templates: BTreeMap<String, CommunicationTemplate>,
}

/// Loads every `*.yaml`/`*.yml` file under `dir` (not recursively), in name
/// order. Runbooks must name policies the catalog has, and policies the
/// schedules and templates it has.
pub fn load_dir(dir: &Path, catalog: &ActionCatalog) -> Result<LoadedCatalog, ConfigError> {
    let source = dir.display().to_string();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ConfigError::new(&source, "runbooks_dir", format!("cannot read the directory: {e}")))?;
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml") && p.is_file())
        .collect();
    files.sort();
    let mut loaded = LoadedCatalog::default();
    let mut ids: BTreeMap<(String, String), String> = BTreeMap::new();
    for path in files {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::new(&name, "", format!("cannot read the file: {e}")))?;
        let kind = peek_kind(&text).unwrap_or(CatalogKind::Runbook);
        let id = match kind {
            CatalogKind::EscalationPolicy => {
                let policy = load_policy(&name, &text)?;
                let id = policy.id.clone();
                loaded.policies.insert(id.clone(), policy);
                id
            }
            CatalogKind::OnCallSchedule => {
                let schedule = load_schedule(&name, &text)?;
                let id = schedule.id().to_owned();
                loaded.schedules.insert(id.clone(), schedule);
                id
            }
            CatalogKind::CommunicationTemplate => {
                let template = load_template(&name, &text)?;
                let id = template.id.clone();
                loaded.templates.insert(id.clone(), template);
                id
            }
            // A runbook, or a file whose kind is wrong: the runbook parser
            // names the field and line.
            CatalogKind::Runbook => {
                let (runbook, report) = load_runbook(&name, &text, catalog).map_err(|invalid| {
                    let first = invalid.errors.first().map(|e| (e.field.clone(), e.to_string())).unwrap_or_default();
                    ConfigError::new(&name, first.0, invalid.to_string())
                })?;
                let id = runbook.id().to_owned();
                loaded.runbooks.push(Loaded { runbook, report });
                id
            }
        };
        let kind = kind.as_str();
        if let Some(other) = ids.insert((kind.to_owned(), id.clone()), name.clone()) {
            return Err(ConfigError::new(
                &name,
                "metadata.id",
                format!("`{id}` is also the id of the {kind} in {other}"),
            ));
        }
    }
    check_references(&loaded, &ids)?;
    Ok(loaded)
}

/// References inside the catalog must resolve; people and channels are
/// the coordinator's configuration and are checked against it at start.
fn check_references(loaded: &LoadedCatalog, files: &BTreeMap<(String, String), String>) -> Result<(), ConfigError> {
    let file_of = |kind: &str, id: &str| files.get(&(kind.to_owned(), id.to_owned())).map_or("", String::as_str);
    let missing = remedy_shared::catalog::missing_references(
        loaded.runbooks.iter().map(|l| (l.runbook.source.as_str(), &l.runbook)),
        loaded.policies.values().map(|p| (file_of("EscalationPolicy", &p.id), p)),
        &loaded.policies.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        &loaded.schedules.keys().map(String::as_str).collect(),
        &loaded.templates.keys().map(String::as_str).collect(),
    );
    missing.into_iter().next().map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuators;

    fn catalog_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runbooks")
    }

    #[test]
    fn the_seed_catalog_loads_and_says_what_runs_in_dry_run() {
        let loaded = load_dir(&catalog_dir(), &ActionCatalog::this_release()).unwrap();
        let ids: Vec<&str> = loaded.runbooks.iter().map(|l| l.runbook.id()).collect();
        assert_eq!(ids.len(), 7, "{ids:?}");
        for id in ["P0-001", "P0-002", "P0-003", "P1-001", "P1-002", "P2-001", "SEC-001"] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
        let p0 = loaded.runbooks.iter().find(|l| l.runbook.id() == "P0-001").unwrap();
        let waiting: Vec<&str> = p0.report.unavailable.iter().map(|u| u.kind.as_str()).collect();
        assert!(!waiting.contains(&"scale") && !waiting.contains(&"delete_pods"), "Kubernetes kinds run: {waiting:?}");
        assert!(!waiting.contains(&"pg_failover"), "database failover has its actuator: {waiting:?}");
        let p1 = loaded.runbooks.iter().find(|l| l.runbook.id() == "P1-001").unwrap();
        let waiting: Vec<&str> = p1.report.unavailable.iter().map(|u| u.kind.as_str()).collect();
        assert!(waiting.contains(&"circuit_breaker"), "circuit breakers wait for their actuator: {waiting:?}");
    }

    #[tokio::test]
    async fn this_release_offers_exactly_the_actuators_the_coordinator_has() {
        use remedy_shared::runbook::{ActionKind, Availability};
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn crate::store::Store> =
            std::sync::Arc::new(crate::store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        // Building a client contacts nobody; the address is never dialled.
        let url = "https://127.0.0.1:9".parse().unwrap();
        let client = actuators::kube::client_from_config(kube::Config::new(url)).unwrap();
        let with_cluster =
            actuators::this_release(crate::directives::Directives::default(), store.clone(), Some(client)).unwrap();
        let catalog = ActionCatalog::this_release();
        for kind in ActionKind::ALL {
            let now = catalog.availability(*kind) == Some(Availability::Now);
            assert_eq!(now, with_cluster.available(kind.as_str()), "{}", kind.as_str());
        }
        // Without a cluster, exactly the Kubernetes kinds go missing (and rehearse).
        let alone = actuators::this_release(crate::directives::Directives::default(), store, None).unwrap();
        let missing: Vec<&str> = with_cluster.kinds().filter(|k| !alone.available(k)).collect();
        assert_eq!(missing.len(), actuators::kube::KINDS.len());
        assert!(missing.iter().all(|k| actuators::kube::KINDS.contains(k)), "{missing:?}");
    }

    #[test]
    fn a_broken_runbook_stops_the_load_naming_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(catalog_dir().join("p0-003-authentication-failure.yaml")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), &text).unwrap();
        std::fs::write(dir.path().join("b.yaml"), text.replacen("mttr_target:", "mttr_targt:", 1)).unwrap();
        let err = load_dir(dir.path(), &ActionCatalog::this_release()).unwrap_err();
        assert!(err.file.ends_with("b.yaml"), "{err}");
        assert!(err.message.contains("mttr_targt"), "{err}");
        assert!(err.message.contains("b.yaml:"), "the line is named: {err}");

        std::fs::write(dir.path().join("b.yaml"), &text).unwrap();
        let err = load_dir(dir.path(), &ActionCatalog::this_release()).unwrap_err();
        assert_eq!(err.field, "metadata.id", "{err}");
    }

    #[test]
    fn other_kinds_beside_the_runbooks_load_as_their_kind_and_a_misspelt_kind_is_not_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(catalog_dir().join("p0-003-authentication-failure.yaml")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), &text).unwrap();
        std::fs::copy(catalog_dir().join("escalation-p0-chain.yaml"), dir.path().join("p0.yaml")).unwrap();
        for f in [
            "oncall-primary.yaml",
            "oncall-secondary.yaml",
            "comms-p0-internal.yaml",
            "comms-customer-notification.yaml",
        ] {
            std::fs::copy(catalog_dir().join(f), dir.path().join(f)).unwrap();
        }
        let comms = "apiVersion: remedy.dev/v1\nkind: CommunicationTemplate\nmetadata: {id: c, title: C}\n\
                     audience: internal\nsubject: \"{{INCIDENT_ID}}\"\nbody: \"{{STATUS}}\"\n";
        std::fs::write(dir.path().join("comms.yaml"), comms).unwrap();
        let loaded = load_dir(dir.path(), &ActionCatalog::this_release()).unwrap();
        assert_eq!(loaded.runbooks.iter().map(|l| l.runbook.id()).collect::<Vec<_>>(), ["P0-003"]);
        assert!(loaded.templates.contains_key("c"));

        std::fs::write(dir.path().join("comms.yaml"), comms.replace("kind: CommunicationTemplate", "kind: Runbok"))
            .unwrap();
        let err = load_dir(dir.path(), &ActionCatalog::this_release()).unwrap_err();
        assert!(err.file.ends_with("comms.yaml") && err.message.contains("Runbok"), "{err}");
    }
}
