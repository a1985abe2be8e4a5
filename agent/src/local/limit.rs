//! A budget per sliding hour and a cooldown per target, for actions the
//! agent takes on its own node. A dry run checks and spends nothing.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use remedy_shared::Timestamp;
use remedy_shared::budget::SlidingBudget;
use serde::Serialize;

/// The budget's window.
pub const HOUR: Duration = Duration::from_secs(3600);

/// Why an action may not run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exhausted {
    /// The hour's budget is spent.
    Budget {
        /// Runs in the last hour.
        used: usize,
        /// The budget.
        max: u32,
        /// When one more fits.
        next_free: Option<Timestamp>,
    },
    /// The same target ran too recently.
    Cooldown {
        /// The target.
        target: String,
        /// When it ran.
        last: Timestamp,
        /// When it may run again.
        until: Timestamp,
    },
}

impl Exhausted {
    /// A short name for metrics and evidence.
    pub fn reason(&self) -> &'static str {
        match self {
            Exhausted::Budget { .. } => "budget",
            Exhausted::Cooldown { .. } => "cooldown",
        }
    }
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exhausted::Budget { used, max, next_free } => {
                write!(f, "the budget of {max} per hour is spent ({used} in the last hour)")?;
                if let Some(at) = next_free {
                    write!(f, "; the next is allowed at {at}")?;
                }
                Ok(())
            }
            Exhausted::Cooldown { target, last, until } => {
                write!(f, "`{target}` is cooling down: it ran at {last}, the next run is allowed at {until}")
            }
        }
    }
}

/// What /debug/state shows of a limiter.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LimitStatus {
    /// Runs in the last hour.
    pub used_last_hour: usize,
    /// The budget per hour.
    pub max_per_hour: u32,
    /// The cooldown per target, seconds.
    pub cooldown_seconds: u64,
    /// Targets still cooling down, and until when.
    pub cooling: Vec<(String, Timestamp)>,
}

/// A budget of `max_per_hour` runs, and `cooldown` between two runs on the
/// same target.
#[derive(Debug)]
pub struct Limiter {
    budget: SlidingBudget,
    cooldown: Duration,
    last: HashMap<String, Timestamp>,
}

impl Limiter {
    /// A limiter; `max_per_hour` is at least 1 (checked in configuration).
    pub fn new(max_per_hour: u32, cooldown: Duration) -> Limiter {
        Limiter { budget: SlidingBudget::new(max_per_hour, HOUR), cooldown, last: HashMap::new() }
    }

    fn forget(&mut self, now: Timestamp) {
        let cooldown = self.cooldown;
        self.last.retain(|_, at| now.since(*at) < cooldown);
    }

    /// `Ok` when one more run on `target` fits now; nothing is taken.
    pub fn check(&mut self, target: &str, now: Timestamp) -> Result<(), Exhausted> {
        self.forget(now);
        if let Some(last) = self.last.get(target) {
            return Err(Exhausted::Cooldown {
                target: target.to_owned(),
                last: *last,
                until: last.plus(self.cooldown),
            });
        }
        self.budget.check(now).map_err(|spent| Exhausted::Budget {
            used: spent.used,
            max: spent.max,
            next_free: spent.next_free,
        })
    }

    /// Checks and takes one run on `target`.
    pub fn take(&mut self, target: &str, now: Timestamp) -> Result<(), Exhausted> {
        self.check(target, now)?;
        // Checked just above, under the same `&mut`: it fits.
        let _ = self.budget.take(now);
        if !self.cooldown.is_zero() {
            self.last.insert(target.to_owned(), now);
        }
        Ok(())
    }

    /// Runs in the last hour.
    pub fn used(&mut self, now: Timestamp) -> usize {
        self.budget.used(now)
    }

    /// The budget per hour.
    pub fn max_per_hour(&self) -> u32 {
        self.budget.max()
    }

    /// For /debug/state.
    pub fn status(&mut self, now: Timestamp) -> LimitStatus {
        self.forget(now);
        let mut cooling: Vec<(String, Timestamp)> =
            self.last.iter().map(|(t, at)| (t.clone(), at.plus(self.cooldown))).collect();
        cooling.sort();
        LimitStatus {
            used_last_hour: self.budget.used(now),
            max_per_hour: self.budget.max(),
            cooldown_seconds: self.cooldown.as_secs(),
            cooling,
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
    fn the_budget_slides_over_the_hour() {
        let mut l = Limiter::new(2, Duration::ZERO);
        l.take("a", at(0)).unwrap();
        l.take("a", at(10)).unwrap();
        let e = l.check("b", at(20)).unwrap_err();
        assert_eq!(e.reason(), "budget");
        assert_eq!(e, Exhausted::Budget { used: 2, max: 2, next_free: Some(at(3600)) });
        assert!(e.to_string().starts_with("the budget of 2 per hour is spent (2 in the last hour)"), "{e}");
        assert!(l.check("b", at(3600)).is_ok());
        assert_eq!(l.used(at(3610)), 0);
    }

    #[test]
    fn the_cooldown_is_per_target_and_a_check_takes_nothing() {
        let mut l = Limiter::new(10, Duration::from_secs(60));
        l.check("a", at(0)).unwrap();
        l.check("a", at(0)).unwrap();
        assert_eq!(l.used(at(0)), 0);
        l.take("a", at(0)).unwrap();
        let e = l.take("a", at(59)).unwrap_err();
        assert_eq!(e, Exhausted::Cooldown { target: "a".into(), last: at(0), until: at(60) });
        assert_eq!(e.reason(), "cooldown");
        l.take("b", at(59)).unwrap();
        l.take("a", at(60)).unwrap();
        assert_eq!(l.status(at(60)).used_last_hour, 3);
    }
}
