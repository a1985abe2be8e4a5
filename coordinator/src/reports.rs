//! Incident metrics from the store: the admin API's report and the
//! Prometheus gauges over the last 30 days. The arithmetic is pure
//! (`remedy_shared::report`); this module reads the incidents.

use std::sync::Arc;
use std::time::Duration;

use remedy_shared::Timestamp;
use remedy_shared::incident::Incident;
use remedy_shared::report::{Period, Report, report};

use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::metrics::{Metrics, PriorityLabels, WindowLabels};
use crate::store::{Store, StoreError};

/// Most incidents a report reads, newest first. Ids grow with time, so a
/// period within the newest this many is complete; a report reaching
/// further back says how many it read.
pub const MAX_REPORT_INCIDENTS: usize = 100_000;

/// The window the Prometheus gauges cover.
pub const METRICS_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often the gauges are recomputed.
const METRICS_EVERY: Duration = Duration::from_secs(60);

/// Least time between two recomputations caused by incident changes.
const MIN_SPACING: Duration = Duration::from_secs(10);

/// The report over `period`, at `now`.
/// Drills (dry runs and exercises) count only with `include_drills`: a
/// rehearsal recovers nothing, and must not flatter MTTR or availability.
pub fn for_period(
    store: &dyn Store,
    period: Period,
    now: Timestamp,
    include_drills: bool,
) -> Result<Report, StoreError> {
    let mut incidents = store.list_incidents(true, MAX_REPORT_INCIDENTS)?;
    if !include_drills {
        incidents.retain(|i| !i.drill);
    }
    Ok(report(&incidents, period, now))
}

/// Keeps the gauges (`remedy_mttr_seconds{window="30d"}`, ...) current
/// until `stopped` completes: after incidents change, and every minute as
/// the window moves. A recomputation reads every incident of the window,
/// so under a stream of changes (findings join incidents many times a
/// second) it runs at most once per `MIN_SPACING`.
pub async fn keep_metrics(
    store: Arc<dyn Store>,
    metrics: Metrics,
    clock: Clock,
    mut changes: broadcast::Receiver<Incident>,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(METRICS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = tick.tick() => {}
            change = changes.recv() => {
                if matches!(change, Err(broadcast::error::RecvError::Closed)) {
                    return;
                }
                // A burst of changes is one recomputation.
                let at = (last + MIN_SPACING).max(tokio::time::Instant::now() + Duration::from_secs(1));
                tokio::select! {
                    () = &mut stopped => return,
                    () = tokio::time::sleep_until(at) => {}
                }
                while !matches!(changes.try_recv(), Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)) {}
            }
        }
        last = tokio::time::Instant::now();
        let store = store.clone();
        let at = clock.now();
        let period =
            Period { from: Timestamp::from_millis(at.as_millis() - METRICS_WINDOW.as_millis() as i64), to: at };
        match tokio::task::spawn_blocking(move || for_period(store.as_ref(), period, at, false)).await {
            Ok(Ok(r)) => publish(&metrics, &r),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot compute the incident metrics"),
            Err(e) => tracing::warn!(error = %e, "the incident metrics task failed"),
        }
    }
}

fn publish(metrics: &Metrics, r: &Report) {
    let window = WindowLabels { window: "30d".to_owned() };
    // A figure with nothing to measure is absent, not zero: zero would read
    // as instant recovery (or total downtime).
    let figures = [
        (&metrics.mttr_seconds, r.mttr_seconds),
        (&metrics.mtta_seconds, r.mtta_seconds),
        (&metrics.availability_percent, r.availability_percent),
    ];
    for (gauge, value) in figures {
        match value {
            Some(v) => {
                gauge.get_or_create(&window).set(v);
            }
            None => {
                gauge.remove(&window);
            }
        }
    }
    // The rows partition the window's incidents: they sum to the total.
    let prioritised = r.p0_incidents + r.p1_incidents + r.p2_incidents + r.p3_incidents + r.unprioritised_incidents;
    let counts = [
        ("P0", r.p0_incidents),
        ("P1", r.p1_incidents),
        ("P2", r.p2_incidents),
        ("P3", r.p3_incidents),
        ("security", r.total_incidents.saturating_sub(prioritised)),
        ("none", r.unprioritised_incidents),
    ];
    for (priority, n) in counts {
        let labels = PriorityLabels { window: window.window.clone(), priority: priority.to_owned() };
        metrics.window_incidents.get_or_create(&labels).set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    metrics
        .window_security_incidents
        .get_or_create(&window)
        .set(i64::try_from(r.security_incidents).unwrap_or(i64::MAX));
}
