//! A circuit breaker for one outside service (a notification channel).
//!
//! Closed, it lets every call through and counts consecutive failures; at
//! `failure_threshold` it opens and refuses calls at once, so a dead service
//! costs nothing but the refusal. After `recovery` it lets one trial call
//! through (half-open): a success closes it, a failure opens it again.
//!
//! Times are *monotonic offsets*: a [`Duration`] since an arbitrary start the
//! caller chose, as in the coordinator's election. Recovery is a span of
//! time, and a wall clock stepped back by NTP must not hold a breaker open
//! for an hour. The caller turns offsets into wall time for people.
//!
//! This is a different thing from the guard rails' breakers (`guard/`),
//! which stop automation until a person resets them: this one protects a
//! delivery path and heals by itself.

use std::time::Duration;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass; this many failed in a row since the last success.
    Closed {
        /// Consecutive failures, below the threshold.
        consecutive_failures: u32,
    },
    /// Calls are refused until `until`.
    Open {
        /// When a trial call will be let through.
        until: Duration,
    },
    /// One trial call is out; others are refused until it reports or
    /// until `until`, when the trial is presumed lost (its caller gave up
    /// without reporting) and another is let through.
    HalfOpen {
        /// When another trial may start if this one never reports.
        until: Duration,
    },
}

/// What [`Breaker::admit`] says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Pass,
    /// The one trial after recovery: go ahead, and report how it went.
    Trial,
    /// Open (or a trial is out): do not call before `until`.
    Refused {
        /// When a call may next be let through.
        until: Duration,
    },
}

impl Admission {
    /// Whether the call may go ahead.
    pub fn allowed(self) -> bool {
        !matches!(self, Admission::Refused { .. })
    }
}

/// A change of state worth telling people about, from [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The breaker opened (from closed, or a failed trial) until `until`.
    Opened {
        /// When the next trial will be let through.
        until: Duration,
    },
    /// The breaker closed again after being open or half-open.
    Closed,
}

/// One breaker's state machine. Not thread-safe by itself: the caller holds
/// it behind a lock and passes `now` in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    failure_threshold: u32,
    recovery: Duration,
    state: BreakerState,
}

impl Breaker {
    /// A closed breaker that opens after `failure_threshold` consecutive
    /// failures (at least one) and tries again after `recovery`.
    pub fn new(failure_threshold: u32, recovery: Duration) -> Self {
        Breaker {
            failure_threshold: failure_threshold.max(1),
            recovery,
            state: BreakerState::Closed { consecutive_failures: 0 },
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// How many consecutive failures open it.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// Asks whether a call may start at `now`. Letting the trial through
    /// moves an open breaker to half-open; the caller must then
    /// [`record`](Self::record) the outcome.
    pub fn admit(&mut self, now: Duration) -> Admission {
        match self.state {
            BreakerState::Closed { .. } => Admission::Pass,
            BreakerState::Open { until } | BreakerState::HalfOpen { until } if now < until => {
                Admission::Refused { until }
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {
                self.state = BreakerState::HalfOpen { until: now.saturating_add(self.recovery) };
                Admission::Trial
            }
        }
    }

    /// Records how an admitted call went, at `now`. Any success closes the
    /// breaker: the service answered, whatever the breaker believed. A
    /// failure counts towards the threshold when closed, re-opens after a
    /// trial, and changes nothing while open (a call admitted before the
    /// breaker opened must not push the trial further away).
    pub fn record(&mut self, ok: bool, now: Duration) -> Option<Transition> {
        match (self.state, ok) {
            (BreakerState::Closed { .. }, true) => {
                self.state = BreakerState::Closed { consecutive_failures: 0 };
                None
            }
            (_, true) => {
                self.state = BreakerState::Closed { consecutive_failures: 0 };
                Some(Transition::Closed)
            }
            (BreakerState::Closed { consecutive_failures }, false) => {
                let failures = consecutive_failures.saturating_add(1);
                if failures >= self.failure_threshold {
                    Some(self.open(now))
                } else {
                    self.state = BreakerState::Closed { consecutive_failures: failures };
                    None
                }
            }
            (BreakerState::HalfOpen { .. }, false) => Some(self.open(now)),
            (BreakerState::Open { .. }, false) => None,
        }
    }

    fn open(&mut self, now: Duration) -> Transition {
        let until = now.saturating_add(self.recovery);
        self.state = BreakerState::Open { until };
        Transition::Opened { until }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let mut b = Breaker::new(3, s(120));
        for _ in 0..2 {
            assert_eq!(b.admit(s(0)), Admission::Pass);
            assert_eq!(b.record(false, s(0)), None);
        }
        assert_eq!(b.state(), BreakerState::Closed { consecutive_failures: 2 });
        assert_eq!(b.admit(s(1)), Admission::Pass);
        assert_eq!(b.record(false, s(1)), Some(Transition::Opened { until: s(121) }));
        assert_eq!(b.admit(s(2)), Admission::Refused { until: s(121) });
        assert!(!b.admit(s(120)).allowed());
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut b = Breaker::new(2, s(10));
        b.record(false, s(0));
        b.record(true, s(0));
        b.record(false, s(0));
        assert_eq!(b.state(), BreakerState::Closed { consecutive_failures: 1 });
    }

    #[test]
    fn after_recovery_exactly_one_trial_passes_and_its_success_closes() {
        let mut b = Breaker::new(1, s(10));
        b.record(false, s(0));
        assert_eq!(b.admit(s(10)), Admission::Trial);
        assert_eq!(b.state(), BreakerState::HalfOpen { until: s(20) });
        // A second caller during the trial is refused.
        assert_eq!(b.admit(s(11)), Admission::Refused { until: s(20) });
        assert_eq!(b.record(true, s(12)), Some(Transition::Closed));
        assert_eq!(b.admit(s(12)), Admission::Pass);
    }

    #[test]
    fn a_failed_trial_opens_again_for_a_full_recovery() {
        let mut b = Breaker::new(1, s(10));
        b.record(false, s(0));
        assert_eq!(b.admit(s(15)), Admission::Trial);
        assert_eq!(b.record(false, s(16)), Some(Transition::Opened { until: s(26) }));
        assert_eq!(b.admit(s(25)), Admission::Refused { until: s(26) });
        assert_eq!(b.admit(s(26)), Admission::Trial);
    }

    #[test]
    fn a_trial_that_never_reports_is_replaced_after_recovery() {
        let mut b = Breaker::new(1, s(10));
        b.record(false, s(0));
        assert_eq!(b.admit(s(10)), Admission::Trial);
        assert_eq!(b.admit(s(19)), Admission::Refused { until: s(20) });
        assert_eq!(b.admit(s(20)), Admission::Trial);
    }

    #[test]
    fn late_failures_while_open_do_not_move_the_trial() {
        let mut b = Breaker::new(1, s(10));
        b.record(false, s(0));
        assert_eq!(b.record(false, s(5)), None);
        assert_eq!(b.state(), BreakerState::Open { until: s(10) });
        // A late success (admitted before it opened) closes it: the service works.
        assert_eq!(b.record(true, s(6)), Some(Transition::Closed));
    }

    #[test]
    fn a_zero_threshold_is_read_as_one_and_huge_offsets_saturate() {
        let mut b = Breaker::new(0, Duration::MAX);
        assert_eq!(b.failure_threshold(), 1);
        assert_eq!(b.record(false, s(1)), Some(Transition::Opened { until: Duration::MAX }));
        assert!(!b.admit(s(u64::MAX / 2)).allowed());
    }
}
