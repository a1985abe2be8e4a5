//! When the escalator looks at which incident: the bookkeeping that lets
//! incidents advance side by side while each one's own steps stay in order.
//!
//! An advance may wait on channels for as long as their retries allow, so
//! the escalator runs each incident's advance on its own and keeps only
//! this record: at most one advance per incident at a time (its commits
//! then never interleave), at most `limit` at once (a storm of incidents
//! cannot start unbounded work; the rest wait their turn, first come first
//! served), and a look asked for while one is running happens right after
//! it, reading what it committed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::incident::IncidentId;
use crate::time::Timestamp;

/// Which incidents are being advanced, waiting, or due later.
#[derive(Debug, Clone)]
pub struct Looks {
    limit: usize,
    /// When to look at an incident that is neither running nor waiting.
    wake: BTreeMap<IncidentId, Timestamp>,
    running: BTreeSet<IncidentId>,
    /// Running incidents to look at again once their advance returns.
    again: BTreeSet<IncidentId>,
    waiting: VecDeque<IncidentId>,
}

impl Looks {
    /// At most `limit` advances at once (at least one).
    pub fn new(limit: usize) -> Looks {
        Looks {
            limit: limit.max(1),
            wake: BTreeMap::new(),
            running: BTreeSet::new(),
            again: BTreeSet::new(),
            waiting: VecDeque::new(),
        }
    }

    /// Asks for a look at `id` now: it waits its turn, or, if it is being
    /// advanced, is looked at again once that advance returns.
    pub fn want(&mut self, id: IncidentId) {
        self.wake.remove(&id);
        if self.running.contains(&id) {
            self.again.insert(id);
        } else if !self.waiting.contains(&id) {
            self.waiting.push_back(id);
        }
    }

    /// Asks for a look at every incident whose wake-up is at or before `now`.
    pub fn due(&mut self, now: Timestamp) {
        let due: Vec<IncidentId> = self.wake.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect();
        for id in due {
            self.want(id);
        }
    }

    /// The incidents to start advancing now, in the order they were asked
    /// for, as many as the limit has room for; each counts as running until
    /// [`Looks::finished`].
    pub fn start(&mut self) -> Vec<IncidentId> {
        let mut started = Vec::new();
        while self.running.len() < self.limit
            && let Some(id) = self.waiting.pop_front()
        {
            self.running.insert(id);
            started.push(id);
        }
        started
    }

    /// `id`'s advance returned, saying when to look again (`None`: only when
    /// the incident changes).
    pub fn finished(&mut self, id: IncidentId, wake_at: Option<Timestamp>) {
        self.running.remove(&id);
        if self.again.remove(&id) {
            self.want(id);
        } else if let Some(at) = wake_at {
            self.wake.insert(id, at);
        }
    }

    /// The earliest wake-up of an incident not running or waiting.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.wake.values().min().copied()
    }

    /// How many advances are running.
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn incidents_start_side_by_side_but_one_incident_never_twice_at_once() {
        let mut looks = Looks::new(64);
        looks.want(IncidentId(1));
        looks.want(IncidentId(2));
        assert_eq!(looks.start(), [IncidentId(1), IncidentId(2)]);
        // Incident 1 changes while it is being advanced: it is not started
        // again until that advance returns, and then at once.
        looks.want(IncidentId(1));
        assert!(looks.start().is_empty());
        looks.finished(IncidentId(1), Some(at(1_000)));
        assert_eq!(looks.start(), [IncidentId(1)], "looked at again, not put off to its wake-up");
        looks.finished(IncidentId(1), Some(at(1_000)));
        assert_eq!(looks.next_wake(), Some(at(1_000)));
        // Incident 2 is still running; incident 1 is due.
        looks.due(at(999));
        assert!(looks.start().is_empty(), "not due yet");
        looks.due(at(1_000));
        assert_eq!(looks.start(), [IncidentId(1)]);
        assert_eq!(looks.next_wake(), None, "a running incident has no wake-up of its own");
        assert_eq!(looks.running(), 2);
    }

    #[test]
    fn beyond_the_limit_incidents_wait_their_turn_in_order() {
        let mut looks = Looks::new(2);
        for id in 1..=4 {
            looks.want(IncidentId(id));
        }
        looks.want(IncidentId(3));
        assert_eq!(looks.start(), [IncidentId(1), IncidentId(2)]);
        looks.finished(IncidentId(2), None);
        assert_eq!(looks.start(), [IncidentId(3)], "one place freed, the next in line takes it");
        looks.finished(IncidentId(1), None);
        looks.finished(IncidentId(3), None);
        assert_eq!(looks.start(), [IncidentId(4)], "asked for twice, started once");
        assert_eq!(looks.running(), 1);
        assert_eq!(looks.next_wake(), None, "nothing to look at unless it changes");
    }
}
