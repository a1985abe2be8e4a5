//! Node resource signals as the domain sees them.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// A point-in-time view of a node's resources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceSnapshot {
    /// When it was taken.
    pub taken_at: Timestamp,
    /// Node-wide CPU use, percent of all cores.
    pub cpu_percent: f64,
    /// Memory in use, bytes.
    pub memory_used_bytes: u64,
    /// Memory installed, bytes.
    pub memory_total_bytes: u64,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    /// Watched filesystems.
    pub disks: Vec<DiskUsage>,
    /// Heaviest processes by CPU and memory.
    pub top_processes: Vec<ProcessUsage>,
}

impl ResourceSnapshot {
    /// Memory in use, percent of installed memory (NaN when unknown).
    pub fn memory_percent(&self) -> f64 {
        percent(self.memory_used_bytes, self.memory_total_bytes)
    }
}

/// Space on one filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskUsage {
    /// Mount point.
    pub mount_point: String,
    /// Size, bytes.
    pub total_bytes: u64,
    /// Free for unprivileged users, bytes.
    pub available_bytes: u64,
}

impl DiskUsage {
    /// Space in use, percent (NaN when the size is unknown).
    pub fn used_percent(&self) -> f64 {
        percent(self.total_bytes.saturating_sub(self.available_bytes), self.total_bytes)
    }
}

/// Resource use of one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// Process id.
    pub pid: u32,
    /// Executable name.
    pub name: String,
    /// CPU, percent of one core.
    pub cpu_percent: f64,
    /// Resident memory, bytes.
    pub memory_bytes: u64,
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 { f64::NAN } else { part as f64 * 100.0 / whole as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_percentages_and_unknown_sizes() {
        let d = DiskUsage { mount_point: "/".into(), total_bytes: 200, available_bytes: 50 };
        assert_eq!(d.used_percent(), 75.0);
        let empty = DiskUsage { mount_point: "/".into(), total_bytes: 0, available_bytes: 0 };
        assert!(empty.used_percent().is_nan());
    }
}
