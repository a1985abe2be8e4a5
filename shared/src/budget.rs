//! A budget of uses within a sliding window: at most `max` uses in any
//! window ending now. The one such count the project keeps; callers word
//! the refusal for their own action.

use std::collections::VecDeque;
use std::time::Duration;

use crate::Timestamp;

/// No use fits now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    /// Uses within the window ending now.
    pub used: usize,
    /// The budget.
    pub max: u32,
    /// When the oldest use leaves the window, so one more fits.
    pub next_free: Option<Timestamp>,
}

/// At most `max` uses within any `window`.
#[derive(Debug, Clone)]
pub struct SlidingBudget {
    max: u32,
    window: Duration,
    used: VecDeque<Timestamp>,
}

impl SlidingBudget {
    /// A budget of `max` per `window`.
    pub fn new(max: u32, window: Duration) -> SlidingBudget {
        SlidingBudget { max, window, used: VecDeque::new() }
    }

    fn forget(&mut self, now: Timestamp) {
        while self.used.front().is_some_and(|at| now.since(*at) >= self.window) {
            self.used.pop_front();
        }
    }

    /// Uses within the window ending at `now`.
    pub fn used(&mut self, now: Timestamp) -> usize {
        self.forget(now);
        self.used.len()
    }

    /// The budget.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// `Ok` when one more use fits at `now`; nothing is taken.
    pub fn check(&mut self, now: Timestamp) -> Result<(), Spent> {
        let used = self.used(now);
        if used < self.max as usize {
            return Ok(());
        }
        Err(Spent { used, max: self.max, next_free: self.used.front().map(|at| at.plus(self.window)) })
    }

    /// Takes one use at `now`, if it fits.
    pub fn take(&mut self, now: Timestamp) -> Result<(), Spent> {
        self.check(now)?;
        self.used.push_back(now);
        Ok(())
    }

    /// Gives back the use taken at `at`: the action it was taken for did
    /// not happen.
    pub fn give_back(&mut self, at: Timestamp) {
        if let Some(i) = self.used.iter().rposition(|u| *u == at) {
            self.used.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_millis(s * 1000)
    }

    #[test]
    fn uses_leave_the_window_as_it_slides_and_a_check_takes_nothing() {
        let mut b = SlidingBudget::new(2, Duration::from_secs(3600));
        b.check(at(0)).unwrap();
        assert_eq!(b.used(at(0)), 0);
        b.take(at(0)).unwrap();
        b.take(at(600)).unwrap();
        assert_eq!(b.take(at(1200)), Err(Spent { used: 2, max: 2, next_free: Some(at(3600)) }));
        assert_eq!(b.check(at(3599)).unwrap_err().used, 2);
        b.take(at(3600)).unwrap();
        assert_eq!(b.used(at(4200)), 1, "the use at 600 left the window at 4200");
    }

    #[test]
    fn a_use_given_back_frees_its_place() {
        let mut b = SlidingBudget::new(1, Duration::from_secs(60));
        b.take(at(5)).unwrap();
        b.give_back(at(5));
        assert_eq!(b.used(at(6)), 0);
        b.take(at(6)).unwrap();
        b.give_back(at(99));
        assert_eq!(b.used(at(7)), 1, "giving back a use never taken changes nothing");
    }
}
