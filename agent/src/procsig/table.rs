//! The node's process table, read with sysinfo: the one part of process
//! signals that touches `/proc`.

use serde::Serialize;
use sysinfo::{
    MemoryRefreshKind, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, RefreshKind, System, UpdateKind,
};

/// One process as the judges see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcSample {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: Option<u32>,
    /// Start time, seconds since the epoch: with the pid, tells a reused pid
    /// from the process that had it before.
    pub start_time: u64,
    /// The kernel's name for it (`comm`, at most 15 bytes).
    pub name: String,
    /// Command line, cut to the configured length.
    pub cmdline: String,
    /// Resident memory.
    pub memory_bytes: u64,
    /// CPU since the previous read, percent of one core.
    pub cpu_percent: f64,
    /// Exited and not reaped by its parent.
    pub zombie: bool,
}

/// Every process of the node at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcTable {
    /// The node's memory, for thresholds in percent.
    pub memory_total_bytes: u64,
    /// The processes (threads left out).
    pub processes: Vec<ProcSample>,
}

/// Reads process tables; CPU use is measured between two reads.
#[derive(Debug)]
pub struct Collector {
    system: System,
    cmdline_bytes: usize,
}

impl Collector {
    /// A collector quoting at most `cmdline_bytes` of each command line.
    pub fn new(cmdline_bytes: usize) -> Result<Self, sysinfo::Error> {
        let system = System::new_with_specifics(RefreshKind::nothing())?;
        Ok(Collector { system, cmdline_bytes })
    }

    /// Reads the table (blocking: it walks `/proc`).
    pub fn read(&mut self) -> ProcTable {
        self.system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory().with_cmd(UpdateKind::OnlyIfNotSet).without_tasks(),
        );
        let processes = self
            .system
            .processes()
            .values()
            .filter(|p| p.thread_kind().is_none())
            .map(|p| ProcSample {
                pid: p.pid().as_u32(),
                ppid: p.parent().map(|pp| pp.as_u32()),
                start_time: p.start_time(),
                name: p.name().to_string_lossy().into_owned(),
                cmdline: cut(
                    &p.cmd().iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
                    self.cmdline_bytes,
                ),
                memory_bytes: p.memory(),
                cpu_percent: f64::from(p.cpu_usage()),
                zombie: p.status() == ProcessStatus::Zombie,
            })
            .collect();
        ProcTable { memory_total_bytes: self.system.total_memory(), processes }
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
pub fn cut(text: &str, max: usize) -> String {
    remedy_shared::text::truncate_to_fit(text, max, remedy_shared::text::Unit::Bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_of_this_machine_has_this_process_with_its_command_line() {
        let mut c = Collector::new(64).unwrap();
        let table = c.read();
        assert!(table.memory_total_bytes > 0);
        let me = table.processes.iter().find(|p| p.pid == std::process::id()).expect("this test process");
        assert!(me.memory_bytes > 0 && !me.zombie && me.start_time > 0);
        assert!(!me.cmdline.is_empty() && me.cmdline.len() <= 64, "{}", me.cmdline);
    }

    #[test]
    fn cutting_keeps_characters_whole() {
        assert_eq!(cut("short", 16), "short");
        let long = "é".repeat(20);
        let c = cut(&long, 16);
        assert!(c.len() <= 16 && c.ends_with('…'), "{c}");
    }
}
