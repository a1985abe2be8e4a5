//! Findings on their way to the coordinator: the spool that keeps them
//! until acknowledged, and the signal that wakes the stream when new ones
//! arrive. Every feature that raises findings submits them here.

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use remedy_shared::finding::Finding;
use serde::Serialize;
use tokio::sync::Notify;

use crate::spool::{AppendReport, Spool, SpoolError};
use remedy_shared::sync::lock;

/// The outbox's metrics.
#[derive(Debug, Clone, Default)]
pub struct OutboxMetrics {
    /// Findings raised (spooled or dropped).
    pub findings_raised: Counter,
    /// Findings acknowledged by the coordinator.
    pub findings_acked: Counter,
    /// Findings dropped because the spool was full.
    pub spool_dropped: Counter,
    /// Findings in the spool.
    pub spool_depth: Gauge,
}

impl OutboxMetrics {
    /// Registers them.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("findings_raised", "Findings raised on this node", self.findings_raised.clone());
        registry.register("findings_acked", "Findings the coordinator acknowledged", self.findings_acked.clone());
        registry.register(
            "spool_dropped",
            "Findings dropped because the spool was full (least severe first)",
            self.spool_dropped.clone(),
        );
        registry.register(
            "spool_depth",
            "Findings waiting for the coordinator's acknowledgement",
            self.spool_depth.clone(),
        );
    }
}

/// The spool and its wake-up signal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    spool: Mutex<Spool>,
    new_findings: Notify,
    metrics: OutboxMetrics,
}

impl Outbox {
    /// An outbox around an opened spool.
    pub fn new(spool: Spool, metrics: OutboxMetrics) -> Outbox {
        metrics.spool_depth.set(spool.depth() as i64);
        Outbox { inner: Arc::new(Inner { spool: Mutex::new(spool), new_findings: Notify::new(), metrics }) }
    }

    /// Runs `f` on the spool on a blocking thread (spool writes wait for the disk).
    pub async fn with_spool<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut spool = lock(&inner.spool);
            let result = f(&mut spool);
            inner.metrics.spool_depth.set(spool.depth() as i64);
            result
        })
        .await
        .map_err(|e| SpoolError::from_panic(e.to_string()))?
    }

    /// Spools findings durably and wakes the sender. A finding above
    /// [`remedy_proto::MAX_FINDING_BYTES`] could never be delivered: the
    /// whole submission is refused and nothing of it is spooled.
    pub async fn submit(&self, findings: Vec<Finding>) -> Result<AppendReport, SubmitError> {
        if findings.is_empty() {
            return Ok(AppendReport::default());
        }
        for (index, finding) in findings.iter().enumerate() {
            let bytes = encoded_len(finding);
            if bytes > remedy_proto::MAX_FINDING_BYTES {
                return Err(SubmitError::TooLarge { index, bytes, max: remedy_proto::MAX_FINDING_BYTES });
            }
        }
        let count = findings.len() as u64;
        let report = self.with_spool(move |s| s.append(&findings)).await?;
        let m = &self.inner.metrics;
        m.findings_raised.inc_by(count);
        if report.dropped > 0 {
            m.spool_dropped.inc_by(report.dropped as u64);
            tracing::warn!(dropped = report.dropped, "spool full: dropped the least severe findings");
        }
        self.inner.new_findings.notify_one();
        Ok(report)
    }

    /// Drops what the coordinator acknowledged, up to `acked`.
    pub async fn acknowledge(&self, acked: u64) -> Result<usize, SpoolError> {
        let removed = self.with_spool(move |s| s.ack(acked)).await?;
        self.inner.metrics.findings_acked.inc_by(removed as u64);
        Ok(removed)
    }

    /// Waits until findings were submitted since the last wake-up.
    pub async fn submitted(&self) {
        self.inner.new_findings.notified().await;
    }

    /// The spool's figures for /debug/state.
    pub fn figures(&self) -> SpoolFigures {
        let spool = lock(&self.inner.spool);
        SpoolFigures {
            depth: spool.depth(),
            capacity: spool.capacity(),
            last_sequence: spool.last_sequence(),
            dropped_total: spool.dropped_total(),
        }
    }
}

/// Why findings were not spooled.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// One finding is larger than any batch may carry.
    #[error(
        "finding {index} takes {bytes} bytes encoded, more than the {max} one finding may take: it could never be \
         delivered (shorten its summary, labels or evidence)"
    )]
    TooLarge {
        /// Its position in the submission.
        index: usize,
        /// Its size in a batch, bytes.
        bytes: usize,
        /// The most a finding may take.
        max: usize,
    },
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// What `finding` takes in a batch, with the largest sequence number it
/// could be given, so a finding accepted here always fits.
fn encoded_len(finding: &Finding) -> usize {
    remedy_proto::batch_entry_len(&remedy_proto::v1::SequencedFinding {
        sequence: u64::MAX,
        finding: Some(remedy_proto::convert::finding_to_proto(finding)),
    })
}

/// The spool as /debug/state shows it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SpoolFigures {
    /// Findings waiting for an acknowledgement.
    pub depth: usize,
    /// Most it holds.
    pub capacity: usize,
    /// Last sequence assigned.
    pub last_sequence: u64,
    /// Findings dropped since start because it was full.
    pub dropped_total: u64,
}
