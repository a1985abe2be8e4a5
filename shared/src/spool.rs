//! Which finding to shed when an agent's spool is full.
//!
//! The spool keeps unacknowledged findings until the coordinator persists
//! them. Its size is bounded so a long outage cannot fill the node's disk;
//! when it is full the least severe finding goes first (the oldest among
//! equals), so a flood of informational findings can never push out a
//! critical one. Every drop is reported by the caller.

use std::collections::BTreeSet;

use crate::finding::Severity;

/// In-memory index of a spool's contents by severity, with its capacity.
#[derive(Debug, Clone)]
pub struct SpoolIndex {
    capacity: usize,
    by_severity: BTreeSet<(Severity, u64)>,
}

/// What to do with a finding offered to a spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// There is room: store it.
    Store,
    /// Store it after dropping the spooled finding with this sequence.
    StoreEvicting(u64),
    /// Drop the offered finding: everything spooled is more severe.
    Reject,
}

impl SpoolIndex {
    /// An empty index holding at most `capacity` findings (at least one).
    pub fn new(capacity: usize) -> Self {
        SpoolIndex { capacity: capacity.max(1), by_severity: BTreeSet::new() }
    }

    /// Findings indexed.
    pub fn len(&self) -> usize {
        self.by_severity.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.by_severity.is_empty()
    }

    /// The most findings it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Decides where a finding of `severity` goes. Does not change the index.
    pub fn admit(&self, severity: Severity) -> Admission {
        if self.by_severity.len() < self.capacity {
            return Admission::Store;
        }
        match self.by_severity.first() {
            Some(&(lowest, sequence)) if lowest <= severity => Admission::StoreEvicting(sequence),
            _ => Admission::Reject,
        }
    }

    /// Records a stored finding.
    pub fn insert(&mut self, severity: Severity, sequence: u64) {
        self.by_severity.insert((severity, sequence));
    }

    /// Forgets a finding (acknowledged or evicted).
    pub fn remove(&mut self, severity: Severity, sequence: u64) {
        self.by_severity.remove(&(severity, sequence));
    }

    /// Forgets every finding at or below `sequence`, returning how many.
    pub fn remove_through(&mut self, sequence: u64) -> usize {
        let before = self.by_severity.len();
        self.by_severity.retain(|&(_, s)| s > sequence);
        before - self.by_severity.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_while_there_is_room() {
        let mut idx = SpoolIndex::new(2);
        assert_eq!(idx.admit(Severity::Info), Admission::Store);
        idx.insert(Severity::Info, 1);
        assert_eq!(idx.admit(Severity::Info), Admission::Store);
    }

    #[test]
    fn when_full_the_oldest_of_the_least_severe_goes_first() {
        let mut idx = SpoolIndex::new(3);
        idx.insert(Severity::Critical, 1);
        idx.insert(Severity::Info, 2);
        idx.insert(Severity::Info, 3);
        assert_eq!(idx.admit(Severity::Warning), Admission::StoreEvicting(2));
        assert_eq!(idx.admit(Severity::Info), Admission::StoreEvicting(2));
    }

    #[test]
    fn a_less_severe_newcomer_is_rejected_when_all_are_more_severe() {
        let mut idx = SpoolIndex::new(1);
        idx.insert(Severity::Critical, 1);
        assert_eq!(idx.admit(Severity::Warning), Admission::Reject);
    }

    #[test]
    fn acknowledgement_removes_through_a_sequence() {
        let mut idx = SpoolIndex::new(10);
        for s in 1..=5 {
            idx.insert(Severity::Warning, s);
        }
        assert_eq!(idx.remove_through(3), 3);
        assert_eq!(idx.len(), 2);
    }
}
