//! The coordinator's clock. Everything that stamps or schedules by the wall
//! clock (the writer, the engine, the escalator, the actuators, bans,
//! directives, the leader's lease, reports) is handed one [`Clock`] by
//! `main`, so a test can give them one clock that moves only when the test
//! says: minutes of an escalation pass at once, and every stamp agrees with
//! every timer. Durations and deadlines of I/O are measured with tokio's
//! monotonic clock, which tests can pause. `coordinator/clippy.toml` refuses
//! `std::time::Instant::now`, `std::time::SystemTime::now` and jiff's
//! `Timestamp::now` anywhere but here.

use std::sync::Arc;
use std::time::Duration;

use remedy_shared::Timestamp;
use tokio::sync::watch;

/// The system's wall clock, as the domain's timestamp: the one reading of
/// it in the coordinator.
#[allow(clippy::disallowed_methods, reason = "this is the one place the coordinator reads the wall clock")]
fn system_now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Timestamp::from_millis(ms)
}

/// The coordinator's time: the wall clock, or one a test moves by hand.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// A clock that moves only when told to.
    Manual(Arc<ManualClock>),
}

/// A clock that moves only when told to, waking whoever waits on it.
#[derive(Debug)]
pub struct ManualClock {
    shows: watch::Sender<Timestamp>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Timestamp) -> Arc<ManualClock> {
        Arc::new(ManualClock { shows: watch::channel(start).0 })
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.shows.send_modify(|now| *now = now.plus(by));
    }

    /// The time it shows.
    pub fn now(&self) -> Timestamp {
        *self.shows.borrow()
    }
}

impl Clock {
    /// The time now.
    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => system_now(),
            Clock::Manual(clock) => clock.now(),
        }
    }

    /// Waits until the clock shows `at` (forever when `None`).
    pub async fn sleep_until(&self, at: Option<Timestamp>) {
        match (self, at) {
            (_, None) => std::future::pending().await,
            (Clock::System, Some(at)) => {
                let wait = u64::try_from(at.as_millis().saturating_sub(system_now().as_millis())).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            (Clock::Manual(clock), Some(at)) => {
                let mut moved = clock.shows.subscribe();
                let _ = moved.wait_for(|now| *now >= at).await;
            }
        }
    }
}
