//! Counts over a sliding window, in a fixed number of buckets.
//!
//! A bucketed counter bounds memory whatever the rate: an attacker sending
//! a million lines costs the same few bytes as one sending ten. The price is
//! resolution: an event leaves the window up to one bucket late.
//!
//! Events are counted at the time they happened (a line's own time, see
//! [`super::linetime`]), which may come out of order: one older than the
//! newest so far still counts in its own bucket while that bucket is in
//! the window, and not at all once it has left it.

use std::time::Duration;

use crate::time::Timestamp;

/// Buckets per window: the window slides in steps of a twelfth.
pub const BUCKETS: usize = 12;

/// Events in the last `window`, counted in [`BUCKETS`] buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowCounter {
    buckets: [u32; BUCKETS],
    /// Index (time / bucket width) of the newest bucket.
    head: i64,
}

impl Default for WindowCounter {
    fn default() -> Self {
        WindowCounter { buckets: [0; BUCKETS], head: i64::MIN }
    }
}

/// Width of one bucket for `window`, at least 1 ms.
pub fn bucket_width(window: Duration) -> i64 {
    i64::try_from(window.as_millis() / BUCKETS as u128).unwrap_or(i64::MAX).max(1)
}

impl WindowCounter {
    /// Moves the window to `now`, dropping buckets that left it. Time never
    /// runs backwards here: an earlier `now` leaves the window where it is.
    fn advance(&mut self, now: Timestamp, width: i64) {
        let slot = now.as_millis().div_euclid(width);
        if self.head == i64::MIN {
            self.head = slot;
            return;
        }
        if slot <= self.head {
            return;
        }
        let steps = slot - self.head;
        if steps >= BUCKETS as i64 {
            self.buckets = [0; BUCKETS];
        } else {
            for s in 1..=steps {
                self.buckets[(self.head + s).rem_euclid(BUCKETS as i64) as usize] = 0;
            }
        }
        self.head = slot;
    }

    /// Adds `n` events that happened at `at`; `false` (nothing counted)
    /// when `at` is older than the window ending at the newest event.
    pub fn add(&mut self, n: u32, at: Timestamp, width: i64) -> bool {
        self.advance(at, width);
        let slot = at.as_millis().div_euclid(width);
        if self.head - slot >= BUCKETS as i64 {
            return false;
        }
        let i = slot.rem_euclid(BUCKETS as i64) as usize;
        self.buckets[i] = self.buckets[i].saturating_add(n);
        true
    }

    /// The start of the newest bucket, `None` before the first event.
    pub fn newest(&self, width: i64) -> Option<Timestamp> {
        (self.head != i64::MIN).then(|| Timestamp::from_millis(self.head.saturating_mul(width)))
    }

    /// Events in the window ending at `now`.
    pub fn total(&mut self, now: Timestamp, width: i64) -> u64 {
        self.advance(now, width);
        self.buckets.iter().map(|&b| u64::from(b)).sum()
    }
}

/// Raise, refresh and clear of one condition judged on a windowed count:
/// raised at `raise_at`, cleared below `clear_below` (lower, so a count
/// hovering at the threshold does not flap), and sent again every
/// `refresh_every` while it holds so the coordinator does not expire it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    /// When the condition was raised; `None` while it does not hold.
    pub active_since: Option<Timestamp>,
    /// When a finding about it was last produced.
    pub last_sent: Timestamp,
}

/// What [`Hysteresis::judge`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// Newly raised.
    Raised,
    /// Still holds; a refresh is due.
    Refreshed,
    /// No longer holds.
    Cleared,
}

impl Hysteresis {
    /// A condition not raised, first seen at `now`.
    pub fn new(now: Timestamp) -> Self {
        Hysteresis { active_since: None, last_sent: now }
    }

    /// Judges `value` at `now`; `None` when nothing is to be sent. With a
    /// decision, also returns when the condition was raised.
    pub fn judge(
        &mut self,
        value: u64,
        raise_at: u64,
        clear_below: u64,
        refresh_every: Duration,
        now: Timestamp,
    ) -> Option<(Judged, Timestamp)> {
        let judged = match self.active_since {
            None if value >= raise_at => {
                self.active_since = Some(now);
                Judged::Raised
            }
            None => return None,
            Some(_) if value < clear_below => Judged::Cleared,
            Some(_) if now.since(self.last_sent) >= refresh_every => Judged::Refreshed,
            Some(_) => return None,
        };
        let since = self.active_since.unwrap_or(now);
        if judged == Judged::Cleared {
            self.active_since = None;
        }
        self.last_sent = now;
        Some((judged, since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_leave_the_window_after_it_passes() {
        let width = bucket_width(Duration::from_secs(60));
        assert_eq!(width, 5_000);
        let mut w = WindowCounter::default();
        w.add(3, Timestamp::from_millis(0), width);
        w.add(2, Timestamp::from_millis(30_000), width);
        assert_eq!(w.total(Timestamp::from_millis(59_999), width), 5);
        assert_eq!(w.total(Timestamp::from_millis(60_000), width), 2);
        assert_eq!(w.total(Timestamp::from_millis(90_000), width), 0);
        // A late event counts in its own bucket while that is in the
        // window, and not at all once it has left.
        assert!(w.add(1, Timestamp::from_millis(40_000), width));
        assert_eq!(w.total(Timestamp::from_millis(90_000), width), 1);
        assert_eq!(w.total(Timestamp::from_millis(100_000), width), 0, "the 40 s event left");
        assert!(!w.add(1, Timestamp::from_millis(10), width));
        assert_eq!(w.total(Timestamp::from_millis(100_000), width), 0);
    }
}
