//! Instants as Unix milliseconds.
//!
//! The domain never reads a clock: callers pass `now`. Milliseconds since the
//! Unix epoch survive restarts and travel on the wire unchanged, which an
//! `Instant` cannot do.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An instant, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch; also used for "never" in optional wire fields.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// An instant from Unix milliseconds.
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Unix milliseconds.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This instant moved forward by `d`, saturating instead of overflowing.
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_millis(d)))
    }

    /// Parses an RFC 3339 instant such as `2026-11-26T10:00:00.123Z` or
    /// `2026-11-26T11:00:00+01:00`. Go's zero time (`0001-01-01T00:00:00Z`,
    /// which Alertmanager sends for "no end") and anything before the Unix
    /// epoch give `None`, as does text that is not RFC 3339.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let text = text.trim();
        let (base, offset_secs) = if let Some(base) = text.strip_suffix('Z').or_else(|| text.strip_suffix('z')) {
            (base, 0i64)
        } else {
            let split = text.len().checked_sub(6)?;
            let (base, offset) = (text.get(..split)?, text.get(split..)?);
            let sign = match offset.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hours: i64 = offset.get(1..3)?.parse().ok()?;
            let minutes: i64 = offset.get(4..6)?.parse().ok()?;
            if offset.as_bytes().get(3) != Some(&b':') || hours > 23 || minutes > 59 {
                return None;
            }
            (base, sign * (hours * 3600 + minutes * 60))
        };
        let utc = humantime::parse_rfc3339(&format!("{base}Z")).ok()?;
        let ms = i64::try_from(utc.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()?;
        Some(Timestamp(ms - offset_secs * 1000))
    }

    /// Time elapsed from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1000);
        let millis = self.0.rem_euclid(1000);
        // RFC 3339 has four-digit years; humantime panics past 9999-12-31.
        const LAST_RFC3339_SECOND: i64 = 253_402_300_799;
        match u64::try_from(secs).ok().filter(|_| secs <= LAST_RFC3339_SECOND) {
            Some(secs) => {
                let t = std::time::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis as u64);
                write!(f, "{}", humantime::format_rfc3339_millis(t))
            }
            None => write!(f, "{}ms", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_never_goes_negative() {
        let a = Timestamp::from_millis(1_000);
        let b = Timestamp::from_millis(4_500);
        assert_eq!(b.since(a), Duration::from_millis(3_500));
        assert_eq!(a.since(b), Duration::ZERO);
    }

    #[test]
    fn parses_rfc3339_with_offsets_and_refuses_zero_time_and_garbage() {
        let z = Timestamp::parse_rfc3339("2023-11-14T22:13:20.123Z");
        assert_eq!(z, Some(Timestamp::from_millis(1_700_000_000_123)));
        assert_eq!(Timestamp::parse_rfc3339("2023-11-14T23:13:20.123+01:00"), z);
        assert_eq!(Timestamp::parse_rfc3339("2023-11-14T20:13:20.123-02:00"), z);
        assert_eq!(Timestamp::parse_rfc3339("2023-11-14T22:13:20.123456789Z"), z);
        assert_eq!(Timestamp::parse_rfc3339("0001-01-01T00:00:00Z"), None);
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
        assert_eq!(Timestamp::parse_rfc3339("2023-11-14T22:13:20+0100"), None);
        assert_eq!(Timestamp::parse_rfc3339(""), None);
    }

    #[test]
    fn displays_as_rfc3339() {
        assert_eq!(Timestamp::from_millis(1_700_000_000_123).to_string(), "2023-11-14T22:13:20.123Z");
        assert_eq!(Timestamp::from_millis(i64::MAX).to_string(), format!("{}ms", i64::MAX));
        assert_eq!(Timestamp::from_millis(-5).to_string(), "-5ms");
    }
}
