//! Node resources from sysinfo, refreshing only what the snapshot uses.

use std::collections::BTreeSet;

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use remedy_shared::Timestamp;
use remedy_shared::finding::Finding;
use remedy_shared::signals::{DiskUsage, ProcessUsage, ResourceSnapshot};
use serde::Serialize;
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, ProcessRefreshKind, ProcessesToUpdate, RefreshKind, System};

/// Filesystems that say nothing about a node's disks.
const PSEUDO_FILESYSTEMS: &[&str] =
    &["tmpfs", "devtmpfs", "overlay", "squashfs", "proc", "sysfs", "cgroup", "cgroup2", "nsfs"];

/// Takes resource snapshots.
#[derive(Debug)]
pub struct Sampler {
    system: System,
    /// `None` where the platform cannot list disks: snapshots then have none.
    disks: Option<Disks>,
    top_processes: usize,
}

impl Sampler {
    /// A sampler listing `top_processes` processes by CPU and by memory.
    pub fn new(top_processes: usize) -> Result<Self, sysinfo::Error> {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        )?;
        let disks = Disks::new_with_refreshed_list().ok();
        Ok(Sampler { system, disks, top_processes })
    }

    /// Cores on the node (at least one).
    pub fn cores(&self) -> usize {
        self.system.cpus().len().max(1)
    }

    /// Refreshes and returns a snapshot. CPU use is measured between two
    /// calls, so the first snapshot's CPU figure covers the time since
    /// construction.
    pub fn sample(&mut self, now: Timestamp) -> ResourceSnapshot {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        if let Some(disks) = self.disks.as_mut() {
            disks.refresh(true);
        }
        let load = System::load_average().map(|l| [l.one, l.five, l.fifteen]).unwrap_or([f64::NAN; 3]);
        let mut seen = BTreeSet::new();
        let disks = self
            .disks
            .iter()
            .flat_map(|d| d.iter())
            .filter(|d| !PSEUDO_FILESYSTEMS.contains(&d.file_system().to_string_lossy().as_ref()))
            .filter(|d| seen.insert(d.mount_point().to_path_buf()))
            .map(|d| DiskUsage {
                mount_point: d.mount_point().display().to_string(),
                total_bytes: d.total_space(),
                available_bytes: d.available_space(),
            })
            .collect();
        ResourceSnapshot {
            taken_at: now,
            cpu_percent: f64::from(self.system.global_cpu_usage()),
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            load,
            disks,
            top_processes: self.top_processes(),
        }
    }

    fn top_processes(&mut self) -> Vec<ProcessUsage> {
        if self.top_processes == 0 {
            return Vec::new();
        }
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let mut all: Vec<ProcessUsage> = self
            .system
            .processes()
            .values()
            .map(|p| ProcessUsage {
                pid: p.pid().as_u32(),
                name: p.name().to_string_lossy().into_owned(),
                cpu_percent: f64::from(p.cpu_usage()),
                memory_bytes: p.memory(),
            })
            .collect();
        let mut top = BTreeSet::new();
        all.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent));
        top.extend(all.iter().take(self.top_processes).map(|p| p.pid));
        all.sort_by_key(|p| std::cmp::Reverse(p.memory_bytes));
        top.extend(all.iter().take(self.top_processes).map(|p| p.pid));
        all.retain(|p| top.contains(&p.pid));
        all
    }
}

/// The node as the latest sample saw it: what snapshots and heartbeats
/// report, and what /debug/state shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeStatus {
    /// The latest snapshot.
    pub snapshot: Option<ResourceSnapshot>,
    /// Findings raised and not cleared.
    pub active_findings: Vec<Finding>,
}

/// Samples resources every `interval`, runs the detectors, publishes the
/// node's status and spools what the detectors raise, until `stopped`.
pub async fn run(
    mut sampler: Sampler,
    mut detectors: crate::detectors::NodeDetectors,
    outbox: crate::outbox::Outbox,
    node: crate::published::Published<NodeStatus>,
    samples: Counter,
    interval: Duration,
    stopped: impl Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stopped => return,
        }
        let at = crate::clock::now();
        let snapshot = sampler.sample(at);
        samples.inc();
        let findings = detectors.observe(&snapshot, at);
        {
            let mut status = node.lock();
            status.snapshot = Some(snapshot);
            status.active_findings = detectors.raised().cloned().collect();
        }
        if let Err(e) = outbox.submit(findings).await {
            tracing::error!(error = %e, "cannot spool findings");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_of_this_machine_has_memory_and_a_root_filesystem() {
        let mut sampler = Sampler::new(3).unwrap();
        let snap = sampler.sample(Timestamp::from_millis(1));
        assert!(snap.memory_total_bytes > 0);
        assert!(snap.memory_used_bytes <= snap.memory_total_bytes);
        assert!(!snap.disks.is_empty(), "expected at least one real filesystem");
        assert!(!snap.top_processes.is_empty() && snap.top_processes.len() <= 6, "{:?}", snap.top_processes);
        assert!(snap.top_processes.iter().any(|p| p.memory_bytes > 0), "the heaviest processes use memory");
    }
}
