//! The embedded store: one redb file in the data directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use remedy_shared::sync::{lock, read, write};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use remedy_shared::audit::AuditEntry;
use remedy_shared::incident::{Incident, IncidentId, TimelineEntry};
use remedy_shared::run::RunRecord;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    AgentRecord, BanRecord, Counters, FindingQuery, Loaded, Prune, Store, StoreError, StoredFinding, WriteBatch,
};

const FINDINGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("findings");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const INCIDENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("incidents");
/// Keyed by (incident, entry number); entry numbers come from one global
/// counter so appends never need to read the table first.
const TIMELINE: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("timeline");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Alert notification key -> when it was recorded (Unix ms).
const ALERT_KEYS: TableDefinition<&str, i64> = TableDefinition::new("alert_keys");
/// Incident number -> its runbook run.
const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs");
/// Named documents: the guard rails' memory.
const DOCUMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("documents");
/// The audit log, by position; only ever appended to.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const GUARD_STATE: &str = "guard_state";
/// Bans are documents keyed by this prefix and their address.
const BAN_PREFIX: &str = "ban/";

/// redb's page cache.
const CACHE_BYTES: usize = 64 * 1024 * 1024;
const NEXT_INCIDENT: &str = "next_incident";
const NEXT_OWN_SEQUENCE: &str = "next_own_sequence";
const NEXT_ENTRY: &str = "next_timeline_entry";
/// The last audit position ever given.
const LAST_AUDIT: &str = "last_audit_seq";

/// A redb-backed [`Store`].
///
/// After a write fails (a full disk, an I/O error) redb refuses every later
/// operation until the file is closed and opened again, which also repairs
/// what the failed commit left behind. So the next write closes and reopens
/// the file first: once the cause is gone, writing resumes without a
/// restart. Until the reopen succeeds, every operation reports why.
#[derive(Debug)]
pub struct EmbeddedStore {
    path: PathBuf,
    /// `None` between closing the failed file and a successful reopen.
    db: RwLock<Option<Database>>,
    /// A write failed since the file was last opened.
    write_failed: AtomicBool,
    /// Why the last reopen failed.
    reopen_error: Mutex<Option<String>>,
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/coordinator.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| backend(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("coordinator.redb");
        let db = open_database(&path)?;
        Ok(EmbeddedStore {
            path,
            db: RwLock::new(Some(db)),
            write_failed: AtomicBool::new(false),
            reopen_error: Mutex::new(None),
        })
    }

    /// Runs `f` on the open database.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let guard = read(&self.db);
        match guard.as_ref() {
            Some(db) => f(db),
            None => {
                let why = lock(&self.reopen_error).clone();
                Err(backend(format!(
                    "the store is closed after a failed write and could not be reopened yet: {}",
                    why.unwrap_or_else(|| "reopening".into())
                )))
            }
        }
    }

    /// Runs a write transaction, reopening the file first if an earlier
    /// write failed.
    fn write<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.write_failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let result = self.with_db(f);
        if result.is_err() {
            self.write_failed.store(true, Ordering::Release);
        }
        result
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = write(&self.db);
        if !self.write_failed.load(Ordering::Acquire) {
            return Ok(());
        }
        // The old handle must be gone before the file can be opened again:
        // redb locks it while open.
        drop(slot.take());
        match open_database(&self.path) {
            Ok(db) => {
                *slot = Some(db);
                self.write_failed.store(false, Ordering::Release);
                *lock(&self.reopen_error) = None;
                tracing::info!(path = %self.path.display(), "store reopened after a failed write; writing resumes");
                Ok(())
            }
            Err(e) => {
                *lock(&self.reopen_error) = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// Opens (or creates) the file, creating every table.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    // The store is written by one thread and read by admin calls; a modest
    // page cache keeps the coordinator's memory flat (redb's default is
    // 1 GiB, reached under sustained ingest).
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| backend(format!("cannot open {}: {e}", path.display())))?;
    let txn = db.begin_write().map_err(backend)?;
    {
        txn.open_table(FINDINGS).map_err(backend)?;
        txn.open_table(AGENTS).map_err(backend)?;
        txn.open_table(INCIDENTS).map_err(backend)?;
        txn.open_table(TIMELINE).map_err(backend)?;
        txn.open_table(META).map_err(backend)?;
        txn.open_table(ALERT_KEYS).map_err(backend)?;
        txn.open_table(RUNS).map_err(backend)?;
        txn.open_table(DOCUMENTS).map_err(backend)?;
        txn.open_table(AUDIT).map_err(backend)?;
    }
    txn.commit().map_err(backend)?;
    Ok(db)
}

/// How many records one prune forgot.
#[derive(Debug, Default, PartialEq, Eq)]
struct Pruned {
    findings: usize,
    audit: usize,
    incidents: usize,
}

/// Forgets what `prune` names, inside the commit's transaction.
fn forget(txn: &redb::WriteTransaction, prune: &Prune) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    let mut incidents = txn.open_table(INCIDENTS).map_err(backend)?;
    let mut open = HashSet::new();
    let mut gone = Vec::new();
    for row in incidents.iter().map_err(backend)? {
        let (id, bytes) = row.map_err(backend)?;
        let incident: Incident = decode("incidents", bytes.value())?;
        match (incident.resolved_at, prune.incidents_resolved_before) {
            (None, _) => {
                open.insert(id.value());
            }
            (Some(resolved), Some(cutoff)) if resolved < cutoff => gone.push(id.value()),
            _ => {}
        }
    }
    if !gone.is_empty() {
        let mut timeline = txn.open_table(TIMELINE).map_err(backend)?;
        let mut runs = txn.open_table(RUNS).map_err(backend)?;
        for id in &gone {
            incidents.remove(id).map_err(backend)?;
            runs.remove(id).map_err(backend)?;
            timeline.retain_in((*id, 0)..=(*id, u64::MAX), |_, _| false).map_err(backend)?;
        }
        pruned.incidents = gone.len();
    }
    if let Some(cutoff) = prune.findings_before {
        let mut findings = txn.open_table(FINDINGS).map_err(backend)?;
        let mut failed = None;
        findings
            .retain(|_, bytes| match decode::<StoredFinding>("findings", bytes) {
                Ok(f) => {
                    let keep = f.received_at >= cutoff || f.incident_id.is_some_and(|id| open.contains(&id.0));
                    pruned.findings += usize::from(!keep);
                    keep
                }
                Err(e) => {
                    failed.get_or_insert(e);
                    true
                }
            })
            .map_err(backend)?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    if let Some(cutoff) = prune.audit_before {
        // Entries are appended in time order: the old ones are a prefix.
        let mut audit = txn.open_table(AUDIT).map_err(backend)?;
        let mut last_old = None;
        for row in audit.iter().map_err(backend)? {
            let (seq, bytes) = row.map_err(backend)?;
            let entry: AuditEntry = decode("audit", bytes.value())?;
            if entry.at >= cutoff {
                break;
            }
            last_old = Some(seq.value());
            pruned.audit += 1;
        }
        if let Some(last) = last_old {
            audit.retain_in(..=last, |_, _| false).map_err(backend)?;
        }
    }
    Ok(pruned)
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain data structs to JSON cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { table, message: e.to_string() })
}

impl Store for EmbeddedStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let get = |key: &str| -> Result<u64, StoreError> {
                Ok(meta.get(key).map_err(backend)?.map(|v| v.value()).unwrap_or(0))
            };
            let counters = Counters {
                next_incident: get(NEXT_INCIDENT)?.max(1),
                next_own_sequence: get(NEXT_OWN_SEQUENCE)?.max(1),
            };
            let agents = read_agents(db)?;
            let incidents = txn.open_table(INCIDENTS).map_err(backend)?;
            let mut open_incidents = Vec::new();
            for row in incidents.iter().map_err(backend)? {
                let (_, value) = row.map_err(backend)?;
                let incident: Incident = decode("incidents", value.value())?;
                if !incident.state.is_closed() {
                    open_incidents.push(incident);
                }
            }
            let keys = txn.open_table(ALERT_KEYS).map_err(backend)?;
            let mut alert_keys = Vec::new();
            for row in keys.iter().map_err(backend)? {
                let (key, at) = row.map_err(backend)?;
                alert_keys.push((key.value().to_owned(), remedy_shared::Timestamp::from_millis(at.value())));
            }
            let open_ids: std::collections::HashSet<u64> = open_incidents.iter().map(|i| i.id.0).collect();
            let mut runs = Vec::new();
            for row in txn.open_table(RUNS).map_err(backend)?.iter().map_err(backend)? {
                let (id, value) = row.map_err(backend)?;
                let run: RunRecord = decode("runs", value.value())?;
                if open_ids.contains(&id.value()) || !run.status.is_finished() {
                    runs.push(run);
                }
            }
            let documents = txn.open_table(DOCUMENTS).map_err(backend)?;
            let guard =
                documents.get(GUARD_STATE).map_err(backend)?.map(|v| decode("documents", v.value())).transpose()?;
            Ok(Loaded { agents, open_incidents, counters, alert_keys, runs, guard })
        })
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write(|db| {
            let mut txn = db.begin_write().map_err(backend)?;
            txn.set_durability(Durability::Immediate).map_err(backend)?;
            {
                let mut findings = txn.open_table(FINDINGS).map_err(backend)?;
                for f in &batch.findings {
                    findings.insert((f.agent_id.as_str(), f.sequence), encode(f).as_slice()).map_err(backend)?;
                }
                let mut agents = txn.open_table(AGENTS).map_err(backend)?;
                for a in &batch.agents {
                    agents.insert(a.agent_id.as_str(), encode(a).as_slice()).map_err(backend)?;
                }
                let mut incidents = txn.open_table(INCIDENTS).map_err(backend)?;
                for i in &batch.incidents {
                    incidents.insert(i.id.0, encode(i).as_slice()).map_err(backend)?;
                }
                let mut meta = txn.open_table(META).map_err(backend)?;
                if !batch.timeline.is_empty() {
                    let mut next = meta.get(NEXT_ENTRY).map_err(backend)?.map(|v| v.value()).unwrap_or(0);
                    let mut timeline = txn.open_table(TIMELINE).map_err(backend)?;
                    for (id, entry) in &batch.timeline {
                        timeline.insert((id.0, next), encode(entry).as_slice()).map_err(backend)?;
                        next += 1;
                    }
                    meta.insert(NEXT_ENTRY, next).map_err(backend)?;
                }
                let mut keys = txn.open_table(ALERT_KEYS).map_err(backend)?;
                for (key, at) in &batch.alert_keys {
                    keys.insert(key.as_str(), at.as_millis()).map_err(backend)?;
                }
                for key in &batch.forgotten_alert_keys {
                    keys.remove(key.as_str()).map_err(backend)?;
                }
                let mut runs = txn.open_table(RUNS).map_err(backend)?;
                for run in &batch.runs {
                    runs.insert(run.incident_id.0, encode(run).as_slice()).map_err(backend)?;
                }
                if let Some(guard) = &batch.guard {
                    let mut documents = txn.open_table(DOCUMENTS).map_err(backend)?;
                    documents.insert(GUARD_STATE, encode(guard).as_slice()).map_err(backend)?;
                }
                if !batch.audit.is_empty() {
                    let mut audit = txn.open_table(AUDIT).map_err(backend)?;
                    // The last position ever given, kept apart from the
                    // table: retention may have emptied it, and a position
                    // is never given twice.
                    let in_table = audit.last().map_err(backend)?.map(|(k, _)| k.value()).unwrap_or(0);
                    let mut seq = meta.get(LAST_AUDIT).map_err(backend)?.map(|v| v.value()).unwrap_or(0).max(in_table);
                    for entry in &batch.audit {
                        seq += 1;
                        let entry = AuditEntry { seq, ..entry.clone() };
                        audit.insert(seq, encode(&entry).as_slice()).map_err(backend)?;
                    }
                    meta.insert(LAST_AUDIT, seq).map_err(backend)?;
                }
                if let Some(c) = batch.counters {
                    meta.insert(NEXT_INCIDENT, c.next_incident).map_err(backend)?;
                    meta.insert(NEXT_OWN_SEQUENCE, c.next_own_sequence).map_err(backend)?;
                }
            }
            // After the tables above are closed: a table is open at most
            // once in a transaction.
            if let Some(prune) = &batch.prune {
                let pruned = forget(&txn, prune)?;
                if pruned != Pruned::default() {
                    tracing::info!(
                        findings = pruned.findings,
                        audit_entries = pruned.audit,
                        incidents = pruned.incidents,
                        "forgot records past their retention"
                    );
                }
            }
            txn.commit().map_err(backend)
        })
    }

    fn scan_findings(
        &self,
        query: &FindingQuery,
        visit: &mut dyn FnMut(StoredFinding) -> bool,
    ) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(FINDINGS).map_err(backend)?;
            let start: (&str, u64) = match (&query.after, &query.agent_id) {
                (Some((agent, seq)), _) => (agent.as_str(), seq.saturating_add(1)),
                (None, Some(agent)) => (agent.as_str(), 0),
                (None, None) => ("", 0),
            };
            for row in table.range(start..).map_err(backend)? {
                let (key, value) = row.map_err(backend)?;
                let (agent, _) = key.value();
                if query.agent_id.as_deref().is_some_and(|a| a != agent) {
                    break;
                }
                let f: StoredFinding = decode("findings", value.value())?;
                if query.kind.is_some_and(|k| k != f.finding.kind) {
                    continue;
                }
                if !visit(f) {
                    break;
                }
            }
            Ok(())
        })
    }

    fn get_finding(&self, agent_id: &str, sequence: u64) -> Result<Option<StoredFinding>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(FINDINGS).map_err(backend)?;
            table.get((agent_id, sequence)).map_err(backend)?.map(|v| decode("findings", v.value())).transpose()
        })
    }

    fn scan_incidents(
        &self,
        include_resolved: bool,
        before: Option<IncidentId>,
        visit: &mut dyn FnMut(Incident) -> bool,
    ) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(INCIDENTS).map_err(backend)?;
            // Keyed by number, so a page seeks to where the last one ended.
            let rows = match before {
                Some(id) => table.range(..id.0).map_err(backend)?,
                None => table.range(0..).map_err(backend)?,
            };
            for row in rows.rev() {
                let (_, value) = row.map_err(backend)?;
                let incident: Incident = decode("incidents", value.value())?;
                if (include_resolved || !incident.state.is_closed()) && !visit(incident) {
                    break;
                }
            }
            Ok(())
        })
    }

    fn get_run(&self, id: IncidentId) -> Result<Option<RunRecord>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(RUNS).map_err(backend)?;
            table.get(id.0).map_err(backend)?.map(|v| decode("runs", v.value())).transpose()
        })
    }

    fn get_incident(&self, id: IncidentId) -> Result<Option<(Incident, Vec<TimelineEntry>)>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let incidents = txn.open_table(INCIDENTS).map_err(backend)?;
            let Some(value) = incidents.get(id.0).map_err(backend)? else {
                return Ok(None);
            };
            let incident: Incident = decode("incidents", value.value())?;
            let timeline = txn.open_table(TIMELINE).map_err(backend)?;
            let mut entries = Vec::new();
            for row in timeline.range((id.0, 0)..=(id.0, u64::MAX)).map_err(backend)? {
                let (_, value) = row.map_err(backend)?;
                entries.push(decode("timeline", value.value())?);
            }
            Ok(Some((incident, entries)))
        })
    }

    fn list_bans(&self) -> Result<Vec<BanRecord>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let documents = txn.open_table(DOCUMENTS).map_err(backend)?;
            let mut out = Vec::new();
            for row in documents.range(BAN_PREFIX..).map_err(backend)? {
                let (key, value) = row.map_err(backend)?;
                if !key.value().starts_with(BAN_PREFIX) {
                    break;
                }
                out.push(decode("documents", value.value())?);
            }
            Ok(out)
        })
    }

    fn put_ban(&self, ban: &BanRecord) -> Result<(), StoreError> {
        self.write(|db| {
            let mut txn = db.begin_write().map_err(backend)?;
            txn.set_durability(Durability::Immediate).map_err(backend)?;
            {
                let mut documents = txn.open_table(DOCUMENTS).map_err(backend)?;
                let key = format!("{BAN_PREFIX}{}", ban.ip);
                documents.insert(key.as_str(), encode(ban).as_slice()).map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })
    }

    fn last_audit_seq(&self) -> Result<u64, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(AUDIT).map_err(backend)?;
            Ok(table.last().map_err(backend)?.map(|(seq, _)| seq.value()).unwrap_or(0))
        })
    }

    fn scan_audit(&self, after: u64, visit: &mut dyn FnMut(AuditEntry) -> bool) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(AUDIT).map_err(backend)?;
            for row in table.range(after.saturating_add(1)..).map_err(backend)? {
                let (_, value) = row.map_err(backend)?;
                if !visit(decode("audit", value.value())?) {
                    break;
                }
            }
            Ok(())
        })
    }

    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.with_db(read_agents)
    }
}

fn read_agents(db: &Database) -> Result<Vec<AgentRecord>, StoreError> {
    let txn = db.begin_read().map_err(backend)?;
    let table = txn.open_table(AGENTS).map_err(backend)?;
    let mut out = Vec::new();
    for row in table.iter().map_err(backend)? {
        let (_, value) = row.map_err(backend)?;
        out.push(decode("agents", value.value())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use remedy_shared::Timestamp;
    use remedy_shared::finding::{Finding, FindingKind, FindingState, Severity};
    use remedy_shared::incident::{self, Outcome};
    use remedy_shared::sequence::SequenceTracker;

    use super::*;

    fn finding(target: &str) -> Finding {
        Finding {
            kind: FindingKind::DiskUsageHigh,
            severity: Severity::Warning,
            state: FindingState::Active,
            target: target.into(),
            labels: BTreeMap::new(),
            evidence: BTreeMap::new(),
            summary: "disk".into(),
            first_seen: Timestamp::from_millis(1),
            last_seen: Timestamp::from_millis(1),
            expires_at: None,
        }
    }

    #[test]
    fn a_committed_batch_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let f = finding("mount/n1:/var");
        let Outcome::Changed { incident, entries, .. } =
            incident::apply_finding(None, "a1", &f, IncidentId(1), Timestamp::from_millis(5))
        else {
            panic!("expected an incident")
        };
        let mut tracker = SequenceTracker::default();
        tracker.record(1).unwrap();
        let runbook = remedy_shared::runbook::parse_runbook(
            "r.yaml",
            "apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {id: R, title: t}\npriority: P1\nmttr_target: 5m\n\
             triggers: {manual: true}\nsteps: [{id: s, notify: {webhook: w, message: m}}]\nescalation: {policy: p}\n",
        )
        .unwrap();
        let mut run = RunRecord::new(
            IncidentId(1),
            &runbook,
            remedy_shared::guard::Mode::Live,
            "t".into(),
            Default::default(),
            Timestamp::from_millis(5),
        );
        run.record_intent("s", Timestamp::from_millis(6));
        let mut guard = remedy_shared::guard::GuardState::new();
        guard.pause("ops", "maintenance", Timestamp::from_millis(7));
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let batch = WriteBatch {
                findings: vec![StoredFinding {
                    agent_id: "a1".into(),
                    sequence: 1,
                    node_name: "n1".into(),
                    received_at: Timestamp::from_millis(5),
                    incident_id: Some(IncidentId(1)),
                    finding: f,
                }],
                agents: vec![AgentRecord {
                    agent_id: "a1".into(),
                    node_name: "n1".into(),
                    version: "0".into(),
                    capabilities: vec![],
                    labels: BTreeMap::new(),
                    node_addresses: vec![],
                    tracker,
                    first_seen: Timestamp::from_millis(1),
                    last_hello: Timestamp::from_millis(1),
                }],
                incidents: vec![incident.clone()],
                timeline: entries.into_iter().map(|e| (IncidentId(1), e)).collect(),
                counters: Some(Counters { next_incident: 2, next_own_sequence: 1 }),
                alert_keys: vec![("f|firing|t".into(), Timestamp::from_millis(5))],
                forgotten_alert_keys: vec![],
                runs: vec![run.clone()],
                guard: Some(guard.clone()),
                audit: vec![],
                prune: None,
            };
            store.commit(&batch).unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.counters.next_incident, 2);
        assert_eq!(loaded.alert_keys, vec![("f|firing|t".to_owned(), Timestamp::from_millis(5))]);
        assert_eq!(loaded.open_incidents, vec![incident]);
        assert_eq!(loaded.agents[0].tracker.contiguous(), 1);
        assert_eq!(loaded.runs, vec![run.clone()], "the run and its recorded step survive a restart");
        assert_eq!(loaded.guard, Some(guard), "the pause survives a restart");
        assert_eq!(store.get_run(IncidentId(1)).unwrap(), Some(run));
        let (_, timeline) = store.get_incident(IncidentId(1)).unwrap().unwrap();
        assert_eq!(timeline.len(), 1);
        let page = store.list_findings(&FindingQuery { limit: 10, ..Default::default() }).unwrap();
        assert_eq!(page.len(), 1);
        assert!(store.get_finding("a1", 2).unwrap().is_none());
    }

    #[test]
    fn the_audit_log_is_appended_in_order_and_read_from_a_position() {
        use remedy_shared::audit::{AuditEntry, AuditKind};
        let dir = tempfile::tempdir().unwrap();
        let entry = |op: &str| AuditEntry {
            seq: 0,
            at: Timestamp::from_millis(1),
            actor: "user:a".into(),
            kind: AuditKind::AdminCall,
            operation: op.into(),
            target: String::new(),
            arguments: BTreeMap::new(),
            outcome: "ok".into(),
        };
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store.commit(&WriteBatch { audit: vec![entry("A"), entry("B")], ..Default::default() }).unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.commit(&WriteBatch { audit: vec![entry("C")], ..Default::default() }).unwrap();
        let all = store.list_audit(0, 100).unwrap();
        let seen: Vec<(u64, &str)> = all.iter().map(|e| (e.seq, e.operation.as_str())).collect();
        assert_eq!(seen, vec![(1, "A"), (2, "B"), (3, "C")], "positions continue across a reopen");
        let after = store.list_audit(1, 1).unwrap();
        assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
        assert_eq!(store.last_audit_seq().unwrap(), 3);
    }

    #[test]
    fn incidents_are_scanned_newest_first_from_where_a_page_ended() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut incidents = Vec::new();
        for n in 1..=5u64 {
            let f = finding(&format!("mount/n{n}:/var"));
            let Outcome::Changed { mut incident, .. } =
                incident::apply_finding(None, "a1", &f, IncidentId(n), Timestamp::from_millis(5))
            else {
                panic!("expected an incident")
            };
            if n == 2 {
                incident.state = remedy_shared::incident::IncidentState::Resolved;
            }
            incidents.push(incident);
        }
        store.commit(&WriteBatch { incidents, ..Default::default() }).unwrap();
        let scan = |include_resolved: bool, before: Option<u64>, take: usize| {
            let mut seen = Vec::new();
            store
                .scan_incidents(include_resolved, before.map(IncidentId), &mut |i| {
                    seen.push(i.id.0);
                    seen.len() < take
                })
                .unwrap();
            seen
        };
        assert_eq!(scan(true, None, 2), vec![5, 4], "the visitor stops the scan");
        assert_eq!(scan(true, Some(4), 10), vec![3, 2, 1], "a page starts below the last one's end");
        assert_eq!(scan(false, Some(4), 10), vec![3, 1], "resolved ones only when asked");
        assert_eq!(scan(true, Some(1), 10), Vec::<u64>::new());
    }

    #[test]
    fn retention_forgets_old_records_but_never_an_open_incidents_evidence_nor_an_audit_position() {
        use remedy_shared::audit::{AuditEntry, AuditKind};
        use remedy_shared::incident::IncidentState;
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let ms = Timestamp::from_millis;
        let incident = |id: u64, resolved_at: Option<i64>| {
            let Outcome::Changed { mut incident, .. } =
                incident::apply_finding(None, "a1", &finding(&format!("mount/n{id}:/var")), IncidentId(id), ms(10))
            else {
                panic!("expected an incident")
            };
            if let Some(at) = resolved_at {
                incident.state = IncidentState::Resolved;
                incident.resolved_at = Some(ms(at));
            }
            incident
        };
        let stored = |sequence: u64, received: i64, incident: u64| StoredFinding {
            agent_id: "a1".into(),
            sequence,
            node_name: "n1".into(),
            received_at: ms(received),
            incident_id: Some(IncidentId(incident)),
            finding: finding("mount/n1:/var"),
        };
        let entry = |at: i64| AuditEntry {
            seq: 0,
            at: ms(at),
            actor: "user:a".into(),
            kind: AuditKind::AdminCall,
            operation: "X".into(),
            target: String::new(),
            arguments: BTreeMap::new(),
            outcome: "ok".into(),
        };
        store
            .commit(&WriteBatch {
                // 1 is still open; 2 was resolved long ago; 3 lately.
                incidents: vec![incident(1, None), incident(2, Some(100)), incident(3, Some(5_000))],
                findings: vec![stored(1, 10, 1), stored(2, 10, 2), stored(3, 5_000, 3)],
                audit: vec![entry(10), entry(20), entry(5_000)],
                ..Default::default()
            })
            .unwrap();
        let cutoff = Some(ms(1_000));
        let prune = Prune { findings_before: cutoff, audit_before: cutoff, incidents_resolved_before: cutoff };
        store.commit(&WriteBatch { prune: Some(prune), ..Default::default() }).unwrap();

        let findings = store.list_findings(&FindingQuery { limit: 10, ..Default::default() }).unwrap();
        let kept: Vec<u64> = findings.iter().map(|f| f.sequence).collect();
        assert_eq!(kept, vec![1, 3], "the open incident's old finding and the recent one stay");
        assert!(store.get_incident(IncidentId(1)).unwrap().is_some());
        assert!(store.get_incident(IncidentId(2)).unwrap().is_none(), "resolved long ago: forgotten");
        assert!(store.get_incident(IncidentId(3)).unwrap().is_some());
        let audit: Vec<u64> = store.list_audit(0, 10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(audit, vec![3]);

        // Forgetting the whole log never reuses a position.
        let everything = Some(ms(10_000));
        store
            .commit(&WriteBatch {
                prune: Some(Prune { audit_before: everything, ..Default::default() }),
                ..Default::default()
            })
            .unwrap();
        assert!(store.list_audit(0, 10).unwrap().is_empty());
        store.commit(&WriteBatch { audit: vec![entry(20_000)], ..Default::default() }).unwrap();
        let audit: Vec<u64> = store.list_audit(0, 10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(audit, vec![4]);
    }
}
