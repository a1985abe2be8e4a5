//! Exactly-once accounting of per-agent finding sequences.
//!
//! Agents number their findings 1, 2, 3... and resend until acknowledged,
//! so the coordinator sees duplicates (after a reconnect) and gaps (batches
//! in flight when a stream broke, findings an agent shed under pressure).
//! The tracker says whether a sequence is new and what may be acknowledged:
//! the highest sequence below which nothing is missing.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Most out-of-order sequences held above the contiguous mark. An agent that
/// leaves a larger gap is misbehaving; its batch is refused rather than
/// letting the bookkeeping grow without bound.
pub const MAX_PENDING: usize = 100_000;

/// Per-agent record of which sequences were persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceTracker {
    /// Every sequence at or below this is persisted or settled.
    contiguous: u64,
    /// Persisted sequences above `contiguous + 1`, waiting for the gap to fill.
    pending: BTreeSet<u64>,
}

/// The verdict on one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Not seen before: persist it.
    New,
    /// Already persisted: count it as a duplicate and drop it.
    Duplicate,
}

/// Why a sequence was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// Sequences start at 1.
    #[error("sequence 0 is not valid; sequences start at 1")]
    Zero,
    /// Too far ahead of the contiguous mark.
    #[error("sequence {sequence} leaves more than {MAX_PENDING} findings missing after {contiguous}")]
    TooFarAhead {
        /// The refused sequence.
        sequence: u64,
        /// The contiguous mark.
        contiguous: u64,
    },
}

impl SequenceTracker {
    /// A tracker that has settled everything up to `contiguous`.
    pub fn starting_at(contiguous: u64) -> Self {
        SequenceTracker { contiguous, pending: BTreeSet::new() }
    }

    /// Highest sequence with nothing missing at or below it: what to ack.
    pub fn contiguous(&self) -> u64 {
        self.contiguous
    }

    /// How many persisted sequences wait above a gap.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Classifies `sequence` without recording it.
    pub fn check(&self, sequence: u64) -> Result<Accept, SequenceError> {
        if sequence == 0 {
            return Err(SequenceError::Zero);
        }
        if sequence <= self.contiguous || self.pending.contains(&sequence) {
            return Ok(Accept::Duplicate);
        }
        if sequence - self.contiguous > MAX_PENDING as u64 {
            return Err(SequenceError::TooFarAhead { sequence, contiguous: self.contiguous });
        }
        Ok(Accept::New)
    }

    /// Records `sequence` as persisted. Call only after it was persisted (or in
    /// the same transaction), so the acknowledgement never runs ahead of the
    /// data.
    pub fn record(&mut self, sequence: u64) -> Result<Accept, SequenceError> {
        let verdict = self.check(sequence)?;
        if verdict == Accept::New {
            self.pending.insert(sequence);
            self.advance();
        }
        Ok(verdict)
    }

    /// Everything below `oldest_retained` will never arrive (the agent shed
    /// it and counted the drop): stop waiting for it.
    pub fn settle_below(&mut self, oldest_retained: u64) {
        let settled = oldest_retained.saturating_sub(1);
        if settled > self.contiguous {
            self.contiguous = settled;
            self.pending = self.pending.split_off(&(settled + 1));
            self.advance();
        }
    }

    fn advance(&mut self) {
        while self.pending.first() == Some(&(self.contiguous + 1)) {
            self.pending.pop_first();
            self.contiguous += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_sequences_advance_the_mark() {
        let mut t = SequenceTracker::default();
        for s in 1..=5 {
            assert_eq!(t.record(s), Ok(Accept::New));
        }
        assert_eq!(t.contiguous(), 5);
        assert_eq!(t.pending_len(), 0);
    }

    #[test]
    fn duplicates_are_recognised_below_and_above_a_gap() {
        let mut t = SequenceTracker::default();
        t.record(1).unwrap();
        t.record(3).unwrap();
        assert_eq!(t.contiguous(), 1);
        assert_eq!(t.record(1), Ok(Accept::Duplicate));
        assert_eq!(t.record(3), Ok(Accept::Duplicate));
        assert_eq!(t.record(2), Ok(Accept::New));
        assert_eq!(t.contiguous(), 3);
    }

    #[test]
    fn settling_a_shed_range_moves_past_the_gap() {
        let mut t = SequenceTracker::default();
        t.record(1).unwrap();
        t.record(7).unwrap();
        t.record(8).unwrap();
        t.settle_below(7);
        assert_eq!(t.contiguous(), 8);
        assert_eq!(t.record(4), Ok(Accept::Duplicate));
    }

    #[test]
    fn refuses_zero_and_runaway_sequences() {
        let mut t = SequenceTracker::default();
        assert_eq!(t.record(0), Err(SequenceError::Zero));
        let far = MAX_PENDING as u64 + 1;
        assert_eq!(t.record(far), Err(SequenceError::TooFarAhead { sequence: far, contiguous: 0 }));
        assert_eq!(t.contiguous(), 0);
    }
}
