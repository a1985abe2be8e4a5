//! Incident metrics from the store: the admin API's report and the
//! Prometheus gauges over the last 30 days. The arithmetic is pure
//! (`remedy_shared::report`); this module reads the incidents.

use std::sync::Arc;
use std::time::Duration;

use remedy_shared::Timestamp;
use remedy_shared::incident::Incident;
use remedy_shared::report::{Period, Report, report};

use tokio::sync::broadcast;

use crate::metrics::{Metrics, PriorityLabels, WindowLabels};
use crate::recorder::now;
use crate::store::{Store, StoreError};

/// Most incidents a report reads, newest first. Ids grow with time, so a
/// period within the newest this many is complete; a report reaching
/// further back says how many it read.
pub const MAX_REPORT_INCIDENTS: usize = 100_000;

/// The window the Prometheus gauges cover.
pub const METRICS_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often the gauges are recomputed.
const METRICS_EVERY: Duration = Duration::from_secs(60);

/// The report over `period`, at `now`.
pub fn for_period(store: &dyn Store, period: Period, now: Timestamp) -> Result<Report, StoreError> {
    let incidents = store.list_incidents(true, MAX_REPORT_INCIDENTS)?;
    Ok(report(&incidents, period, now))
}

/// Keeps the gauges (`remedy_mttr_seconds{window="30d"}`, ...) current
/// until `stopped` completes: after incidents change (at most once a
/// second), and every minute as the window moves.
pub async fn keep_metrics(
    store: Arc<dyn Store>,
    metrics: Metrics,
    mut changes: broadcast::Receiver<Incident>,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(METRICS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stopped => return,
            _ = tick.tick() => {}
            change = changes.recv() => {
                if matches!(change, Err(broadcast::error::RecvError::Closed)) {
                    return;
                }
                // A burst of changes is one recomputation.
                tokio::time::sleep(Duration::from_secs(1)).await;
                while !matches!(changes.try_recv(), Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)) {}
            }
        }
        let store = store.clone();
        let at = now();
        let period =
            Period { from: Timestamp::from_millis(at.as_millis() - METRICS_WINDOW.as_millis() as i64), to: at };
        match tokio::task::spawn_blocking(move || for_period(store.as_ref(), period, at)).await {
            Ok(Ok(r)) => publish(&metrics, &r),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot compute the incident metrics"),
            Err(e) => tracing::warn!(error = %e, "the incident metrics task failed"),
        }
    }
}

fn publish(metrics: &Metrics, r: &Report) {
    let window = WindowLabels { window: "30d".to_owned() };
    // A figure with nothing to average over is absent, not zero: zero
    // would read as instant recovery.
    match r.mttr_seconds {
        Some(v) => {
            metrics.mttr_seconds.get_or_create(&window).set(v);
        }
        None => {
            metrics.mttr_seconds.remove(&window);
        }
    }
    match r.mtta_seconds {
        Some(v) => {
            metrics.mtta_seconds.get_or_create(&window).set(v);
        }
        None => {
            metrics.mtta_seconds.remove(&window);
        }
    }
    if let Some(v) = r.availability_percent {
        metrics.availability_percent.get_or_create(&window).set(v);
    }
    let counts = [
        ("P0", r.p0_incidents),
        ("P1", r.p1_incidents),
        ("P2", r.p2_incidents),
        ("P3", r.p3_incidents),
        ("security_tagged", r.security_incidents),
        ("all", r.total_incidents),
    ];
    for (priority, n) in counts {
        let labels = PriorityLabels { window: "30d".to_owned(), priority: priority.to_owned() };
        metrics.window_incidents.get_or_create(&labels).set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
