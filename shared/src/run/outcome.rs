//! What a run did, as a field rather than a sentence: each step's state,
//! the counts, whether verification really ran, and one verdict.
//!
//! The record never says more than what happened. A run whose changes were
//! all rehearsed (a dry run, or steps with no actuator in this release) is
//! "rehearsed only", never "succeeded"; one whose steps were refused by the
//! rails is "refused"; one where some changes happened and others did not
//! is "partially succeeded". "Verification passed" is said only when a
//! check ran against the real system: a runbook without verification says
//! so, and a rehearsed check proves nothing.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// How one step of a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// A change that really happened.
    Succeeded,
    /// Evidence gathered (looking changes nothing).
    Observed,
    /// A change rehearsed only: a dry run, or no actuator here.
    Rehearsed,
    /// The rails refused it (or sent it to a person instead).
    Refused,
    /// Tried and failed, timed out, or could not be rendered or resolved.
    Failed,
    /// Its `when` was false, or the incident closed while it waited.
    Skipped,
}

impl StepState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Succeeded => "succeeded",
            StepState::Observed => "observed",
            StepState::Rehearsed => "rehearsed",
            StepState::Refused => "refused",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
        }
    }
}

/// How many steps ended in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCounts {
    /// Changes that happened.
    pub succeeded: u32,
    /// Evidence gathered.
    pub observed: u32,
    /// Changes rehearsed only.
    pub rehearsed: u32,
    /// Refused by the rails.
    pub refused: u32,
    /// Failed.
    pub failed: u32,
    /// Skipped.
    pub skipped: u32,
}

impl StepCounts {
    /// The counts of `states`.
    pub fn of<'a>(states: impl IntoIterator<Item = &'a StepState>) -> Self {
        let mut c = StepCounts::default();
        for s in states {
            let n = match s {
                StepState::Succeeded => &mut c.succeeded,
                StepState::Observed => &mut c.observed,
                StepState::Rehearsed => &mut c.rehearsed,
                StepState::Refused => &mut c.refused,
                StepState::Failed => &mut c.failed,
                StepState::Skipped => &mut c.skipped,
            };
            *n = n.saturating_add(1);
        }
        c
    }
}

impl fmt::Display for StepCounts {
    /// "3 succeeded, 1 rehearsed, 1 skipped": the non-zero counts, in a
    /// fixed order; "no steps" when there are none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [
            (self.succeeded, "succeeded"),
            (self.observed, "observed"),
            (self.rehearsed, "rehearsed"),
            (self.refused, "refused"),
            (self.failed, "failed"),
            (self.skipped, "skipped"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if parts.is_empty() { f.write_str("no steps") } else { f.write_str(&parts.join(", ")) }
    }
}

/// Whether a run's verification really ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    /// Its checks ran against the real system and passed.
    Passed,
    /// They ran and did not pass in time.
    NotPassed,
    /// A check could only be rehearsed, or could not run here: it proves
    /// nothing.
    Unverified,
    /// The runbook has no verification.
    NotConfigured,
}

impl Verification {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verification::Passed => "passed",
            Verification::NotPassed => "not_passed",
            Verification::Unverified => "unverified",
            Verification::NotConfigured => "not_configured",
        }
    }

    /// How the timeline says it.
    pub fn describe(self) -> &'static str {
        match self {
            Verification::Passed => "verification passed",
            Verification::NotPassed => "verification did not pass",
            Verification::Unverified => "nothing was verified against the real system",
            Verification::NotConfigured => "the runbook has no verification",
        }
    }
}

/// One word for what a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every change it asked for happened (and nothing failed or was
    /// refused); verification passed or is not configured.
    Succeeded,
    /// Some changes happened, others did not (failed, refused, or only
    /// rehearsed), or verification did not pass.
    PartiallySucceeded,
    /// No change happened: every change was a rehearsal.
    RehearsedOnly,
    /// No change happened because the rails refused.
    Refused,
    /// No change happened, and at least one failed.
    Failed,
}

impl Verdict {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Succeeded => "succeeded",
            Verdict::PartiallySucceeded => "partially_succeeded",
            Verdict::RehearsedOnly => "rehearsed_only",
            Verdict::Refused => "refused",
            Verdict::Failed => "failed",
        }
    }

    /// How the timeline says it.
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::Succeeded => "succeeded",
            Verdict::PartiallySucceeded => "partially succeeded",
            Verdict::RehearsedOnly => "rehearsed only, nothing changed",
            Verdict::Refused => "refused, nothing changed",
            Verdict::Failed => "failed, nothing changed",
        }
    }
}

/// A finished run's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// The verdict.
    pub verdict: Verdict,
    /// Steps in each state (the last attempt's).
    pub steps: StepCounts,
    /// Whether verification really ran.
    pub verification: Verification,
}

impl RunOutcome {
    /// Judges a run from its steps' states and its verification.
    pub fn judge(states: &BTreeMap<String, StepState>, verification: Verification) -> Self {
        let steps = StepCounts::of(states.values());
        let shortfall = steps.failed + steps.refused + steps.rehearsed;
        let verdict = if steps.succeeded > 0 {
            if shortfall > 0 || verification == Verification::NotPassed {
                Verdict::PartiallySucceeded
            } else {
                Verdict::Succeeded
            }
        } else if steps.failed > 0 {
            Verdict::Failed
        } else if steps.refused > 0 {
            Verdict::Refused
        } else if steps.rehearsed > 0 {
            Verdict::RehearsedOnly
        } else if verification == Verification::NotPassed {
            // Only evidence, and what it showed did not pass.
            Verdict::Failed
        } else {
            // Nothing to change, and nothing went wrong: looking, telling
            // and skipping is all this run was asked to do.
            Verdict::Succeeded
        };
        RunOutcome { verdict, steps, verification }
    }

    /// "partially succeeded (2 succeeded, 1 rehearsed); the runbook has no
    /// verification".
    pub fn describe(&self) -> String {
        format!("{} ({}); {}", self.verdict.describe(), self.steps, self.verification.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(list: &[StepState]) -> BTreeMap<String, StepState> {
        list.iter().enumerate().map(|(i, s)| (format!("s{i}"), *s)).collect()
    }

    fn verdict(list: &[StepState], v: Verification) -> Verdict {
        RunOutcome::judge(&states(list), v).verdict
    }

    #[test]
    fn a_run_never_reads_as_a_success_when_nothing_changed() {
        use StepState::*;
        use Verification::*;
        assert_eq!(verdict(&[Observed, Succeeded, Skipped], Passed), Verdict::Succeeded);
        assert_eq!(verdict(&[Observed, Succeeded], NotConfigured), Verdict::Succeeded);
        assert_eq!(verdict(&[Observed, Rehearsed, Rehearsed], Passed), Verdict::RehearsedOnly);
        assert_eq!(verdict(&[Succeeded, Rehearsed], NotConfigured), Verdict::PartiallySucceeded);
        assert_eq!(verdict(&[Succeeded, Refused], Passed), Verdict::PartiallySucceeded);
        assert_eq!(verdict(&[Succeeded], NotPassed), Verdict::PartiallySucceeded);
        assert_eq!(verdict(&[Refused, Rehearsed], NotConfigured), Verdict::Refused);
        assert_eq!(verdict(&[Refused, Failed], NotConfigured), Verdict::Failed);
        assert_eq!(verdict(&[Observed], NotPassed), Verdict::Failed);
        assert_eq!(verdict(&[Observed, Skipped], Unverified), Verdict::Succeeded);
    }

    #[test]
    fn the_outcome_reads_with_its_counts_and_what_was_verified() {
        use StepState::*;
        let outcome = RunOutcome::judge(&states(&[Succeeded, Succeeded, Rehearsed, Skipped]), Verification::Unverified);
        assert_eq!(
            outcome.describe(),
            "partially succeeded (2 succeeded, 1 rehearsed, 1 skipped); nothing was verified against the real system"
        );
        assert_eq!(outcome.steps, StepCounts { succeeded: 2, rehearsed: 1, skipped: 1, ..StepCounts::default() });
        assert_eq!(StepCounts::default().to_string(), "no steps");
    }
}
