//! Threshold detection with a `for` duration and hysteresis.
//!
//! A signal must stay at or above its threshold for the whole `for`
//! duration before a finding is raised (one bad sample is noise), and must
//! fall below a lower `clear_below` level before the finding clears (a value
//! hovering at the threshold would otherwise open and close incidents every
//! sample).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// When a threshold detector raises, refreshes and clears.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThresholdRule {
    /// Raise when the value is at or above this...
    pub threshold: f64,
    /// ...for at least this long.
    pub for_duration: Duration,
    /// Clear only when the value falls below this (at most `threshold`).
    pub clear_below: f64,
    /// While firing, report again this often so the coordinator knows the
    /// condition still holds (the finding expires otherwise).
    pub refresh_every: Duration,
}

/// Where a detector stands.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Below the threshold.
    Normal,
    /// At or above the threshold, not yet for long enough.
    Pending {
        /// When the value first reached the threshold.
        since: Timestamp,
    },
    /// Raised.
    Firing {
        /// When the value first reached the threshold.
        since: Timestamp,
        /// When the finding was last reported.
        reported: Timestamp,
    },
}

/// What the caller should report after an observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// The condition now holds: raise a finding first seen at `since`.
    Raised {
        /// When the value first reached the threshold.
        since: Timestamp,
    },
    /// Still firing and due for a refresh.
    Refreshed {
        /// When the value first reached the threshold.
        since: Timestamp,
    },
    /// The condition ended.
    Cleared {
        /// When the value first reached the threshold.
        since: Timestamp,
    },
}

/// One signal's detector.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdDetector {
    rule: ThresholdRule,
    phase: Phase,
}

impl ThresholdDetector {
    /// A detector in the normal phase.
    pub fn new(rule: ThresholdRule) -> Self {
        ThresholdDetector { rule, phase: Phase::Normal }
    }

    /// Where the detector stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The rule it applies.
    pub fn rule(&self) -> &ThresholdRule {
        &self.rule
    }

    /// Feeds one sample. A NaN (no data) changes nothing: a missing sample
    /// must neither raise nor clear.
    pub fn observe(&mut self, value: f64, now: Timestamp) -> Option<Transition> {
        if value.is_nan() {
            return None;
        }
        let rule = self.rule;
        let (next, transition) = match self.phase {
            Phase::Normal if value >= rule.threshold => {
                if rule.for_duration.is_zero() {
                    (Phase::Firing { since: now, reported: now }, Some(Transition::Raised { since: now }))
                } else {
                    (Phase::Pending { since: now }, None)
                }
            }
            Phase::Normal => (Phase::Normal, None),
            Phase::Pending { since } if value >= rule.threshold => {
                if now.since(since) >= rule.for_duration {
                    (Phase::Firing { since, reported: now }, Some(Transition::Raised { since }))
                } else {
                    (Phase::Pending { since }, None)
                }
            }
            Phase::Pending { .. } => (Phase::Normal, None),
            Phase::Firing { since, .. } if value < rule.clear_below => {
                (Phase::Normal, Some(Transition::Cleared { since }))
            }
            Phase::Firing { since, reported } if now.since(reported) >= rule.refresh_every => {
                (Phase::Firing { since, reported: now }, Some(Transition::Refreshed { since }))
            }
            firing @ Phase::Firing { .. } => (firing, None),
        };
        self.phase = next;
        transition
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> ThresholdRule {
        ThresholdRule {
            threshold: 90.0,
            for_duration: Duration::from_secs(60),
            clear_below: 80.0,
            refresh_every: Duration::from_secs(300),
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_millis(secs * 1000)
    }

    #[test]
    fn raises_only_after_holding_for_the_whole_duration() {
        let mut d = ThresholdDetector::new(rule());
        assert_eq!(d.observe(95.0, t(0)), None);
        assert_eq!(d.observe(95.0, t(59)), None);
        assert_eq!(d.observe(95.0, t(60)), Some(Transition::Raised { since: t(0) }));
    }

    #[test]
    fn a_dip_below_the_threshold_restarts_the_wait() {
        let mut d = ThresholdDetector::new(rule());
        d.observe(95.0, t(0));
        d.observe(85.0, t(30));
        assert_eq!(d.observe(95.0, t(61)), None);
        assert_eq!(d.observe(95.0, t(121)), Some(Transition::Raised { since: t(61) }));
    }

    #[test]
    fn hysteresis_keeps_firing_between_clear_level_and_threshold() {
        let mut d = ThresholdDetector::new(rule());
        d.observe(95.0, t(0));
        d.observe(95.0, t(60));
        assert_eq!(d.observe(85.0, t(70)), None);
        assert!(matches!(d.phase(), Phase::Firing { .. }));
        assert_eq!(d.observe(79.9, t(80)), Some(Transition::Cleared { since: t(0) }));
        assert_eq!(d.phase(), Phase::Normal);
    }

    #[test]
    fn refreshes_while_firing_at_the_configured_interval() {
        let mut d = ThresholdDetector::new(rule());
        d.observe(95.0, t(0));
        d.observe(95.0, t(60));
        assert_eq!(d.observe(95.0, t(359)), None);
        assert_eq!(d.observe(95.0, t(360)), Some(Transition::Refreshed { since: t(0) }));
        assert_eq!(d.observe(95.0, t(361)), None);
    }

    #[test]
    fn zero_duration_raises_on_the_first_sample_and_nan_changes_nothing() {
        let mut d = ThresholdDetector::new(ThresholdRule { for_duration: Duration::ZERO, ..rule() });
        assert_eq!(d.observe(f64::NAN, t(0)), None);
        assert_eq!(d.observe(90.0, t(1)), Some(Transition::Raised { since: t(1) }));
        assert_eq!(d.observe(f64::NAN, t(2)), None);
        assert!(matches!(d.phase(), Phase::Firing { .. }));
    }
}
