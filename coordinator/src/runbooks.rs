//! The runbook catalog: every `*.yaml` file of a directory, parsed and
//! validated before the coordinator starts. A bad runbook stops the start
//! with the file, line and field named (exit 64): a catalog that half loads
//! would leave incidents without the response someone wrote for them.
//! Files of the other kinds that live beside runbooks (communication
//! templates) are passed over here.

use std::collections::BTreeMap;
use std::path::Path;

use remedy_shared::catalog::{CatalogKind, peek_kind};
use remedy_shared::config::ConfigError;
use remedy_shared::runbook::{ActionCatalog, Runbook, ValidationReport, load_runbook};

/// A loaded runbook and what it cannot do yet.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The runbook.
    pub runbook: Runbook,
    /// Its steps that run in dry-run until their actuator arrives.
    pub report: ValidationReport,
}

/// Loads every `*.yaml`/`*.yml` file under `dir` (not recursively), in name
/// order, but those whose `kind` is another known kind (not `Runbook`).
pub fn load_dir(dir: &Path, catalog: &ActionCatalog) -> Result<Vec<Loaded>, ConfigError> {
    let source = dir.display().to_string();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ConfigError::new(&source, "runbooks_dir", format!("cannot read the directory: {e}")))?;
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml") && p.is_file())
        .collect();
    files.sort();
    let mut loaded = Vec::with_capacity(files.len());
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for path in files {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::new(&name, "", format!("cannot read the file: {e}")))?;
        if peek_kind(&text).is_some_and(|kind| kind != CatalogKind::Runbook) {
            continue;
        }
        let (runbook, report) = load_runbook(&name, &text, catalog).map_err(|invalid| {
            let first = invalid.errors.first().map(|e| (e.field.clone(), e.to_string())).unwrap_or_default();
            ConfigError::new(&name, first.0, invalid.to_string())
        })?;
        if let Some(other) = ids.insert(runbook.id().to_owned(), name.clone()) {
            return Err(ConfigError::new(
                &name,
                "metadata.id",
                format!("`{}` is also the id of {other}", runbook.id()),
            ));
        }
        loaded.push(Loaded { runbook, report });
    }
    Ok(loaded)
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
        let ids: Vec<&str> = loaded.iter().map(|l| l.runbook.id()).collect();
        assert_eq!(ids.len(), 7, "{ids:?}");
        for id in ["P0-001", "P0-002", "P0-003", "P1-001", "P1-002", "P2-001", "SEC-001"] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
        let p0 = loaded.iter().find(|l| l.runbook.id() == "P0-001").unwrap();
        let waiting: Vec<&str> = p0.report.unavailable.iter().map(|u| u.kind.as_str()).collect();
        assert!(!waiting.contains(&"scale") && !waiting.contains(&"delete_pods"), "Kubernetes kinds run: {waiting:?}");
        assert!(!waiting.contains(&"pg_failover"), "database failover has its actuator: {waiting:?}");
        let p1 = loaded.iter().find(|l| l.runbook.id() == "P1-001").unwrap();
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
    fn other_kinds_beside_the_runbooks_are_passed_over_and_a_misspelt_kind_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(catalog_dir().join("p0-003-authentication-failure.yaml")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), &text).unwrap();
        let comms = "apiVersion: remedy.dev/v1\nkind: CommunicationTemplate\nmetadata: {id: c, title: C}\n\
                     audience: internal\nsubject: \"{{INCIDENT_ID}}\"\nbody: \"{{STATUS}}\"\n";
        std::fs::write(dir.path().join("comms.yaml"), comms).unwrap();
        let loaded = load_dir(dir.path(), &ActionCatalog::this_release()).unwrap();
        assert_eq!(loaded.iter().map(|l| l.runbook.id()).collect::<Vec<_>>(), ["P0-003"]);

        std::fs::write(dir.path().join("comms.yaml"), comms.replace("kind: CommunicationTemplate", "kind: Runbok"))
            .unwrap();
        let err = load_dir(dir.path(), &ActionCatalog::this_release()).unwrap_err();
        assert!(err.file.ends_with("comms.yaml") && err.message.contains("Runbok"), "{err}");
    }
}
