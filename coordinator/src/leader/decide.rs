//! The election's decisions, pure: no clock, no network.
//!
//! Times here are *monotonic offsets*: a [`Duration`] since an arbitrary
//! start chosen by the caller (the elector uses the moment it was made).
//! Wall-clock times written in the Lease (`renewTime`, `acquireTime`) are
//! for people and other tools; expiry is never judged by comparing them with
//! this machine's clock. As in client-go, a candidate measures a lease's
//! expiry from when *it* last saw the lease change (a new
//! `resourceVersion`), so a skewed clock on either side cannot make a live
//! lease look expired, nor a dead one look alive forever.

use std::time::Duration;

use remedy_shared::Timestamp;

/// Timings of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long a lease lasts without renewal (`leaseDurationSeconds`,
    /// rounded up to whole seconds in the Lease). The leader stops acting
    /// `duration - retry` after it sent its last successful renewal.
    pub duration: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
    /// How often a candidate looks again, and how soon a failed renewal is
    /// retried. Also the leader's safety margin: it stops acting this long
    /// before anyone else could take its lease.
    pub retry: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        LeaseTimings {
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry: Duration::from_secs(2),
        }
    }
}

impl LeaseTimings {
    /// Checks that the timings can work: a renewal, and a retry of it, fit
    /// in the lease duration.
    pub fn validate(&self) -> Result<(), String> {
        if self.duration < Duration::from_secs(1) {
            return Err(format!("lease duration {:?} is below the Lease's one-second resolution", self.duration));
        }
        if self.renew_every.is_zero() || self.retry.is_zero() {
            return Err("renew and retry intervals must be above zero".into());
        }
        if self.renew_every >= self.duration {
            return Err(format!(
                "renewing every {:?} cannot keep a {:?} lease: renew well within the duration",
                self.renew_every, self.duration
            ));
        }
        if self.retry >= self.duration {
            return Err(format!(
                "retry interval {:?} must be below the lease duration {:?}",
                self.retry, self.duration
            ));
        }
        Ok(())
    }

    /// `leaseDurationSeconds` written in the Lease: the duration rounded up,
    /// so others never wait less than this process believes it leads.
    pub fn lease_seconds(&self) -> i32 {
        let secs = self.duration.as_secs() + u64::from(self.duration.subsec_nanos() > 0);
        i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
    }

    /// How long one API call of the election may take.
    pub fn request_timeout(&self) -> Duration {
        (self.duration / 2).max(Duration::from_secs(1))
    }
}

/// What one read of the Lease says, without Kubernetes types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `holderIdentity`; `None` when empty or absent (the lease is free).
    pub holder: Option<String>,
    /// `leaseDurationSeconds`.
    pub duration: Duration,
    /// `leaseTransitions`.
    pub transitions: u32,
    /// `acquireTime`, to the millisecond.
    pub acquired_at: Option<Timestamp>,
    /// `renewTime`, to the millisecond (informational only).
    pub renewed_at: Option<Timestamp>,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
}

/// A record as this process saw it, and when it last saw it change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The record last read (or written) by this process.
    pub record: LeaseRecord,
    /// When this process first saw `record.resource_version`.
    pub since: Duration,
}

/// Folds a fresh read into what was observed before: the expiry clock
/// starts again only when the `resourceVersion` changed.
pub fn observe(previous: Option<&Observed>, record: LeaseRecord, now: Duration) -> Observed {
    let since = match previous {
        Some(p) if p.record.resource_version == record.resource_version => p.since,
        _ => now,
    };
    Observed { record, since }
}

/// Whether the observed lease has expired, judged only by this process's
/// own clock: `leaseDurationSeconds` passed since it saw the lease change.
pub fn expired(observed: &Observed, now: Duration) -> bool {
    now >= observed.since.saturating_add(observed.record.duration)
}

/// How long until the observed lease expires (zero when it has).
pub fn expires_in(observed: &Observed, now: Duration) -> Duration {
    observed.since.saturating_add(observed.record.duration).saturating_sub(now)
}

/// What the elector does next with the lease it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// There is no Lease: create it, held by this process (transitions 0).
    Create,
    /// The lease is free or expired: take it, with `transitions` (one more
    /// than the lease says).
    Acquire {
        /// `leaseTransitions` to write.
        transitions: u32,
    },
    /// This process holds the lease: renew it.
    Renew,
    /// Someone holds the lease and it has not expired: look again later.
    Wait {
        /// Who holds it.
        holder: String,
        /// When it expires, by this process's observation.
        expires_in: Duration,
    },
}

/// Decides what to do with the lease as observed.
///
/// `held` is the `leaseTransitions` of the term this process holds, if it
/// holds one. A lease naming this identity that this process does not hold
/// (a previous run of it, or another process wrongly given the same
/// identity) is treated like anyone else's: it is taken only once expired,
/// and with a new transition, so a token of that earlier term never passes a
/// check again.
pub fn next_action(identity: &str, held: Option<u32>, observed: Option<&Observed>, now: Duration) -> Next {
    let Some(observed) = observed else {
        return Next::Create;
    };
    let record = &observed.record;
    let take = Next::Acquire { transitions: record.transitions.saturating_add(1) };
    match record.holder.as_deref() {
        None => take,
        Some(holder) if holder == identity && held == Some(record.transitions) => Next::Renew,
        Some(_) if expired(observed, now) => take,
        Some(holder) => Next::Wait { holder: holder.to_owned(), expires_in: expires_in(observed, now) },
    }
}

/// Until when a leader may act on a renewal (or acquisition) it sent at
/// `sent`: the lease duration by its own clock, less a margin of `retry`.
/// Others measure a whole duration from when they saw the write, which is
/// later still, so the two never overlap; the margin absorbs differences in
/// clock rates and the delay between a check and the action it allows.
pub fn lead_until(sent: Duration, timings: &LeaseTimings) -> Duration {
    sent.saturating_add(timings.duration.saturating_sub(timings.retry))
}

/// Whether a leader whose lease runs until `valid_until` may still act.
pub fn still_leading(valid_until: Duration, now: Duration) -> bool {
    now < valid_until
}

/// How a round of the election ended, for when the next one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundEnd {
    /// This process leads; its last successful write was sent at `sent`.
    Led {
        /// When the write was sent.
        sent: Duration,
        /// Until when it leads.
        valid_until: Duration,
    },
    /// This process leads but the round failed (an error, a timeout).
    LeadFailed {
        /// Until when it still leads.
        valid_until: Duration,
    },
    /// Someone else holds the lease, expiring in `expires_in`.
    Waiting {
        /// By this process's observation.
        expires_in: Duration,
    },
    /// Nothing is known (the read failed): look again after the retry
    /// interval.
    Unknown,
}

/// When the next round starts. A leader renews every `renew_every` and
/// retries a failed renewal every `retry`, never sleeping past the end of
/// its lease (it steps down then); a candidate looks every `retry`, or as
/// soon as the holder's lease expires when that comes first.
pub fn next_round(end: RoundEnd, timings: &LeaseTimings, now: Duration) -> Duration {
    match end {
        RoundEnd::Led { sent, valid_until } => sent.saturating_add(timings.renew_every).min(valid_until).max(now),
        RoundEnd::LeadFailed { valid_until } => now.saturating_add(timings.retry).min(valid_until).max(now),
        RoundEnd::Waiting { expires_in } => now.saturating_add(timings.retry.min(expires_in)),
        RoundEnd::Unknown => now.saturating_add(timings.retry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn record(holder: Option<&str>, transitions: u32, rv: &str) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_owned),
            duration: s(15),
            transitions,
            acquired_at: Some(Timestamp::from_millis(1_000)),
            renewed_at: Some(Timestamp::from_millis(2_000)),
            resource_version: rv.to_owned(),
        }
    }

    #[test]
    fn default_timings_are_those_of_client_go_and_valid() {
        let t = LeaseTimings::default();
        assert_eq!((t.duration, t.renew_every, t.retry), (s(15), s(5), s(2)));
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(t.lease_seconds(), 15);
        assert_eq!(t.request_timeout(), ms(7_500));
    }

    #[test]
    fn timings_that_cannot_keep_a_lease_are_refused() {
        let bad = LeaseTimings { duration: s(5), renew_every: s(5), retry: s(1) };
        assert!(bad.validate().unwrap_err().contains("renew"));
        let bad = LeaseTimings { duration: ms(500), renew_every: ms(100), retry: ms(100) };
        assert!(bad.validate().unwrap_err().contains("one-second"));
        let bad = LeaseTimings { duration: s(2), renew_every: ms(500), retry: s(3) };
        assert!(bad.validate().unwrap_err().contains("retry"));
        let bad = LeaseTimings { duration: s(2), renew_every: Duration::ZERO, retry: s(1) };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn lease_seconds_round_up_so_others_never_wait_less_than_the_leader_leads() {
        let t = LeaseTimings { duration: ms(2_500), renew_every: ms(500), retry: ms(300) };
        assert_eq!(t.lease_seconds(), 3);
        assert_eq!(t.request_timeout(), ms(1_250));
        let short = LeaseTimings { duration: s(2), renew_every: ms(500), retry: ms(300) };
        assert_eq!(short.request_timeout(), s(1));
    }

    #[test]
    fn expiry_clock_restarts_only_when_the_resource_version_changes() {
        let first = observe(None, record(Some("a"), 0, "10"), s(100));
        assert_eq!(first.since, s(100));
        // Same version read again later: still measured from the first sight.
        let again = observe(Some(&first), record(Some("a"), 0, "10"), s(110));
        assert_eq!(again.since, s(100));
        assert!(!expired(&again, s(114)));
        assert!(expired(&again, s(115)));
        // A renewal (new version) restarts it.
        let renewed = observe(Some(&again), record(Some("a"), 0, "11"), s(112));
        assert_eq!(renewed.since, s(112));
        assert!(!expired(&renewed, s(126)));
        assert_eq!(expires_in(&renewed, s(120)), s(7));
        assert_eq!(expires_in(&renewed, s(200)), Duration::ZERO);
    }

    #[test]
    fn wall_clock_times_in_the_lease_do_not_decide_expiry() {
        // The holder's clock is far behind: its renewTime looks an hour old
        // to us, but we just saw it change, so it is alive.
        let mut behind = record(Some("a"), 3, "20");
        behind.renewed_at = Some(Timestamp::from_millis(0));
        let seen = observe(None, behind, s(50));
        assert!(!expired(&seen, s(51)));
        assert_eq!(next_action("b", None, Some(&seen), s(51)), Next::Wait { holder: "a".into(), expires_in: s(14) });

        // The holder's clock is far ahead: its renewTime is in our future,
        // but it has not changed for longer than the duration: expired.
        let mut ahead = record(Some("a"), 3, "21");
        ahead.renewed_at = Some(Timestamp::from_millis(i64::MAX / 2));
        let seen = observe(None, ahead, s(50));
        let later = observe(Some(&seen), seen.record.clone(), s(66));
        assert!(expired(&later, s(66)));
        assert_eq!(next_action("b", None, Some(&later), s(66)), Next::Acquire { transitions: 4 });
    }

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(next_action("a", None, None, s(0)), Next::Create);
    }

    #[test]
    fn a_free_lease_is_taken_at_once_with_one_more_transition() {
        let free = observe(None, record(None, 7, "5"), s(10));
        assert_eq!(next_action("a", None, Some(&free), s(10)), Next::Acquire { transitions: 8 });
    }

    #[test]
    fn someone_elses_live_lease_is_waited_for_then_taken_once_expired() {
        let held = observe(None, record(Some("b"), 2, "5"), s(10));
        assert_eq!(next_action("a", None, Some(&held), s(20)), Next::Wait { holder: "b".into(), expires_in: s(5) });
        assert_eq!(next_action("a", None, Some(&held), s(25)), Next::Acquire { transitions: 3 });
    }

    #[test]
    fn the_holder_renews_only_the_term_it_holds() {
        let mine = observe(None, record(Some("a"), 4, "9"), s(10));
        assert_eq!(next_action("a", Some(4), Some(&mine), s(11)), Next::Renew);
        // Even past the observed expiry: it is the holder's own lease, and
        // its validity is judged by `lead_until`, not here.
        assert_eq!(next_action("a", Some(4), Some(&mine), s(40)), Next::Renew);
    }

    #[test]
    fn a_claim_under_our_name_that_we_do_not_hold_is_someone_elses() {
        // A previous run of this identity, or a duplicate identity: wait for
        // expiry, then take it as a new term so its old tokens fail.
        let stale = observe(None, record(Some("a"), 4, "9"), s(10));
        assert_eq!(next_action("a", None, Some(&stale), s(11)), Next::Wait { holder: "a".into(), expires_in: s(14) });
        assert_eq!(
            next_action("a", Some(3), Some(&stale), s(11)),
            Next::Wait { holder: "a".into(), expires_in: s(14) }
        );
        assert_eq!(next_action("a", None, Some(&stale), s(25)), Next::Acquire { transitions: 5 });
    }

    #[test]
    fn a_leader_stops_acting_a_margin_before_its_last_renewal_can_expire() {
        let t = LeaseTimings::default();
        let valid_until = lead_until(s(100), &t);
        assert_eq!(valid_until, s(113));
        assert!(still_leading(valid_until, ms(112_999)));
        assert!(!still_leading(valid_until, s(113)));
        // A candidate who saw that renewal land (after it was sent) cannot
        // take the lease before the leader has stopped, with `retry` to spare.
        let seen = observe(None, record(Some("a"), 0, "1"), ms(100_050));
        assert!(!expired(&seen, s(115)));
        assert!(expired(&seen, ms(115_050)));
        let short = LeaseTimings { duration: s(2), renew_every: ms(500), retry: ms(300) };
        assert_eq!(lead_until(s(10), &short), ms(11_700));
    }

    #[test]
    fn rounds_are_scheduled_by_role() {
        let t = LeaseTimings::default();
        // Leader: renew `renew_every` after the last renewal was sent.
        assert_eq!(next_round(RoundEnd::Led { sent: s(100), valid_until: s(115) }, &t, s(101)), s(105));
        // Failing leader: retry, but wake no later than the end of its lease.
        assert_eq!(next_round(RoundEnd::LeadFailed { valid_until: s(113) }, &t, s(110)), s(112));
        assert_eq!(next_round(RoundEnd::LeadFailed { valid_until: s(113) }, &t, s(112)), s(113));
        assert_eq!(next_round(RoundEnd::LeadFailed { valid_until: s(113) }, &t, s(114)), s(114));
        // Candidate: every retry, or at the holder's expiry when sooner.
        assert_eq!(next_round(RoundEnd::Waiting { expires_in: s(10) }, &t, s(50)), s(52));
        assert_eq!(next_round(RoundEnd::Waiting { expires_in: ms(300) }, &t, s(50)), ms(50_300));
        assert_eq!(next_round(RoundEnd::Unknown, &t, s(50)), s(52));
    }
}
