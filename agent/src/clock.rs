//! The wall clock, read in one place.
//!
//! Everything else in the agent asks here for the time of day, and measures
//! durations and deadlines with tokio's monotonic clock
//! (`tokio::time::Instant`), which tests can pause. `agent/clippy.toml`
//! refuses `std::time::Instant::now` and `std::time::SystemTime::now`
//! anywhere else, so a new reading of the clock cannot slip in unseen.

use std::time::SystemTime;

use remedy_shared::Timestamp;

/// Now, as the domain's timestamp.
pub fn now() -> Timestamp {
    let ms = wall()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Timestamp::from_millis(ms)
}

/// Now, as the operating system's time, to compare with file times.
#[allow(clippy::disallowed_methods, reason = "this is the one place the agent reads the wall clock")]
pub fn wall() -> SystemTime {
    SystemTime::now()
}
