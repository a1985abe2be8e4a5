//! The agent's spool: findings kept on disk until the coordinator has
//! persisted them.
//!
//! Every finding gets the next sequence number and is written durably
//! before it is sent, so neither a broken stream nor an agent restart loses
//! it. The coordinator's acknowledgement removes everything at or below the
//! acknowledged sequence. The spool is bounded; when full, the policy in
//! [`remedy_shared::spool`] decides what goes, and every drop is counted.

use std::path::Path;

use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use remedy_proto::convert;
use remedy_proto::v1 as pb;
use remedy_shared::Severity;
use remedy_shared::finding::Finding;
use remedy_shared::spool::{Admission, SpoolIndex};

/// Sequence -> severity byte followed by the protobuf-encoded finding.
const FINDINGS: TableDefinition<u64, &[u8]> = TableDefinition::new("findings");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LAST_SEQUENCE: &str = "last_sequence";

/// A spool failure.
#[derive(Debug, thiserror::Error)]
#[error("spool: {0}")]
pub struct SpoolError(String);

impl SpoolError {
    /// A spool operation that panicked on its thread.
    pub fn from_panic(message: String) -> Self {
        SpoolError(format!("spool operation failed: {message}"))
    }
}

fn err(e: impl std::fmt::Display) -> SpoolError {
    SpoolError(e.to_string())
}

/// What happened to appended findings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendReport {
    /// Findings stored.
    pub stored: usize,
    /// Findings dropped to make room, or refused because the spool was full
    /// of more severe ones.
    pub dropped: usize,
    /// Sequence of the first stored finding (0 if none).
    pub first_sequence: u64,
    /// Sequence of the last stored finding (0 if none).
    pub last_sequence: u64,
}

/// The on-disk spool.
#[derive(Debug)]
pub struct Spool {
    db: Database,
    index: SpoolIndex,
    last_sequence: u64,
    dropped_total: u64,
}

fn severity_byte(s: Severity) -> u8 {
    match s {
        Severity::Info => 1,
        Severity::Warning => 2,
        Severity::Critical => 3,
    }
}

fn severity_of(b: u8) -> Severity {
    match b {
        1 => Severity::Info,
        3 => Severity::Critical,
        _ => Severity::Warning,
    }
}

impl Spool {
    /// Opens (or creates) `dir/spool.redb`, holding at most `capacity` findings.
    pub fn open(dir: &Path, capacity: usize) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("spool.redb");
        let db = Database::create(&path).map_err(|e| err(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(err)?;
        {
            txn.open_table(FINDINGS).map_err(err)?;
            txn.open_table(META).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        let mut index = SpoolIndex::new(capacity);
        let last_sequence;
        {
            let read = db.begin_read().map_err(err)?;
            let table = read.open_table(FINDINGS).map_err(err)?;
            for row in table.iter().map_err(err)? {
                let (seq, value) = row.map_err(err)?;
                let severity = severity_of(value.value().first().copied().unwrap_or(2));
                index.insert(severity, seq.value());
            }
            let meta = read.open_table(META).map_err(err)?;
            last_sequence = meta.get(LAST_SEQUENCE).map_err(err)?.map(|v| v.value()).unwrap_or(0);
        }
        Ok(Spool { db, index, last_sequence, dropped_total: 0 })
    }

    /// Findings waiting for an acknowledgement.
    pub fn depth(&self) -> usize {
        self.index.len()
    }

    /// The spool's capacity.
    pub fn capacity(&self) -> usize {
        self.index.capacity()
    }

    /// The last sequence assigned.
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    /// Findings dropped since the agent started.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// The lowest sequence still held; everything below it is acknowledged
    /// or was dropped. With an empty spool: the next sequence to be assigned.
    pub fn oldest_retained(&self) -> Result<u64, SpoolError> {
        let read = self.db.begin_read().map_err(err)?;
        let table = read.open_table(FINDINGS).map_err(err)?;
        let first = table.first().map_err(err)?.map(|(k, _)| k.value());
        Ok(first.unwrap_or(self.last_sequence + 1))
    }

    /// Numbers and stores findings durably, in one transaction.
    pub fn append(&mut self, findings: &[Finding]) -> Result<AppendReport, SpoolError> {
        let mut report = AppendReport::default();
        let mut index = self.index.clone();
        let mut last = self.last_sequence;
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(Durability::Immediate).map_err(err)?;
        {
            let mut table = txn.open_table(FINDINGS).map_err(err)?;
            for finding in findings {
                let admission = index.admit(finding.severity);
                if admission == Admission::Reject {
                    report.dropped += 1;
                    continue;
                }
                if let Admission::StoreEvicting(victim) = admission {
                    let removed = table.remove(victim).map_err(err)?;
                    if let Some(v) = removed {
                        index.remove(severity_of(v.value().first().copied().unwrap_or(2)), victim);
                    }
                    report.dropped += 1;
                }
                last += 1;
                let mut value = vec![severity_byte(finding.severity)];
                convert::finding_to_proto(finding).encode(&mut value).map_err(err)?;
                table.insert(last, value.as_slice()).map_err(err)?;
                index.insert(finding.severity, last);
                if report.stored == 0 {
                    report.first_sequence = last;
                }
                report.stored += 1;
                report.last_sequence = last;
            }
            let mut meta = txn.open_table(META).map_err(err)?;
            meta.insert(LAST_SEQUENCE, last).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        self.index = index;
        self.last_sequence = last;
        self.dropped_total += report.dropped as u64;
        Ok(report)
    }

    /// Removes everything at or below `sequence`; returns how many.
    pub fn ack(&mut self, sequence: u64) -> Result<usize, SpoolError> {
        if self.index.is_empty() {
            return Ok(0);
        }
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(Durability::Immediate).map_err(err)?;
        {
            let mut table = txn.open_table(FINDINGS).map_err(err)?;
            table.retain_in(..=sequence, |_, _| false).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(self.index.remove_through(sequence))
    }

    /// Moves the sequence counter forward to at least `sequence`: the
    /// coordinator already holds findings up to it under this agent's id
    /// (the state directory was restored from an older copy), and reusing
    /// those numbers would make new findings look like duplicates.
    pub fn fast_forward(&mut self, sequence: u64) -> Result<(), SpoolError> {
        if sequence <= self.last_sequence {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut meta = txn.open_table(META).map_err(err)?;
            meta.insert(LAST_SEQUENCE, sequence).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        self.last_sequence = sequence;
        Ok(())
    }

    /// Up to `max` findings with a sequence above `after`, in order, taking
    /// at most `max_bytes` in a batch ([`remedy_proto::batch_entry_len`]).
    /// The first finding is always taken, whatever its size, so a large one
    /// still leaves alone rather than blocking every finding behind it.
    pub fn read_after(
        &self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<pb::SequencedFinding>, SpoolError> {
        let read = self.db.begin_read().map_err(err)?;
        let table = read.open_table(FINDINGS).map_err(err)?;
        let mut out = Vec::new();
        let mut bytes_taken = 0usize;
        for row in table.range(after.saturating_add(1)..).map_err(err)?.take(max) {
            let (seq, value) = row.map_err(err)?;
            let bytes = value.value();
            let finding = pb::Finding::decode(bytes.get(1..).unwrap_or_default()).map_err(err)?;
            let entry = pb::SequencedFinding { sequence: seq.value(), finding: Some(finding) };
            let len = remedy_proto::batch_entry_len(&entry);
            if !out.is_empty() && bytes_taken.saturating_add(len) > max_bytes {
                break;
            }
            bytes_taken = bytes_taken.saturating_add(len);
            out.push(entry);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use remedy_shared::Timestamp;
    use remedy_shared::finding::{FindingKind, FindingState};

    use super::*;

    fn finding(severity: Severity, target: &str) -> Finding {
        Finding {
            kind: FindingKind::ProbeFailed,
            severity,
            state: FindingState::Active,
            target: target.into(),
            labels: BTreeMap::new(),
            evidence: BTreeMap::new(),
            summary: String::new(),
            first_seen: Timestamp::from_millis(1),
            last_seen: Timestamp::from_millis(1),
            expires_at: None,
        }
    }

    #[test]
    fn findings_survive_a_reopen_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(dir.path(), 100).unwrap();
            let report = spool.append(&[finding(Severity::Warning, "a"), finding(Severity::Warning, "b")]).unwrap();
            assert_eq!((report.first_sequence, report.last_sequence), (1, 2));
            assert_eq!(spool.ack(1).unwrap(), 1);
        }
        let mut spool = Spool::open(dir.path(), 100).unwrap();
        assert_eq!(spool.depth(), 1);
        assert_eq!(spool.last_sequence(), 2);
        let pending = spool.read_after(0, 10, usize::MAX).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].sequence, 2);
        assert_eq!(pending[0].finding.as_ref().unwrap().target, "b");
        let report = spool.append(&[finding(Severity::Info, "c")]).unwrap();
        assert_eq!(report.first_sequence, 3, "sequences never repeat after a restart");
    }

    #[test]
    fn a_full_spool_sheds_the_least_severe_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 2).unwrap();
        spool.append(&[finding(Severity::Info, "noise"), finding(Severity::Critical, "fire")]).unwrap();
        let report = spool.append(&[finding(Severity::Warning, "smoke")]).unwrap();
        assert_eq!((report.stored, report.dropped), (1, 1));
        let targets: Vec<String> =
            spool.read_after(0, 10, usize::MAX).unwrap().into_iter().map(|f| f.finding.unwrap().target).collect();
        assert_eq!(targets, vec!["fire", "smoke"]);
        assert_eq!(spool.oldest_retained().unwrap(), 2);
        let report = spool.append(&[finding(Severity::Info, "more noise")]).unwrap();
        assert_eq!((report.stored, report.dropped), (0, 1));
        assert_eq!(spool.dropped_total(), 2);
    }

    #[test]
    fn fast_forward_skips_numbers_the_coordinator_already_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        spool.fast_forward(41).unwrap();
        let report = spool.append(&[finding(Severity::Info, "x")]).unwrap();
        assert_eq!(report.first_sequence, 42);
        assert_eq!(spool.oldest_retained().unwrap(), 42);
    }

    #[test]
    fn a_read_stops_at_the_byte_budget_but_always_takes_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        let mut big = finding(Severity::Warning, "big");
        big.summary = "x".repeat(1_000);
        spool.append(&[big.clone(), big.clone(), big]).unwrap();
        let sequences = |read: Vec<pb::SequencedFinding>| read.iter().map(|f| f.sequence).collect::<Vec<_>>();
        assert_eq!(sequences(spool.read_after(0, 10, 2_100).unwrap()), vec![1, 2], "two fit, the third would not");
        assert_eq!(sequences(spool.read_after(0, 10, 10).unwrap()), vec![1], "one always goes, alone");
        assert_eq!(sequences(spool.read_after(2, 10, 2_100).unwrap()), vec![3]);
    }
}
