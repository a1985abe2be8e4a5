//! What both binaries say about themselves on `/metrics`:
//! `remedy_build_info` and the standard process metrics, read from
//! `/proc/self` at each scrape (prometheus-client has no process
//! collector), and the classic text format for scrapers and `promtool`
//! that ask for it.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic Prometheus text format.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Registers `remedy_build_info{component,version}` and the process
/// metrics in an unprefixed registry.
pub fn register(registry: &mut Registry, component: &'static str, version: &'static str) {
    registry.register_collector(Box::new(SelfCollector { component, version }));
}

#[derive(Debug)]
struct SelfCollector {
    component: &'static str,
    version: &'static str,
}

impl Collector for SelfCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = ConstGauge::new(1i64);
        let mut family = encoder.encode_descriptor(
            "remedy_build_info",
            "Always 1; the labels say which component and version this process runs",
            None,
            info.metric_type(),
        )?;
        let labels = [("component", self.component), ("version", self.version)];
        info.encode(family.encode_family(&labels)?)?;
        let Some(p) = ProcessStats::read() else { return Ok(()) };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", p.resident_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", p.virtual_bytes),
            ("process_open_fds", "Number of open file descriptors", p.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors", p.max_fds),
            ("process_start_time_seconds", "Start time of the process since the Unix epoch in seconds", p.start_time),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// This process's figures, each absent when it cannot be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time.
    pub cpu_seconds: f64,
    /// Resident set size.
    pub resident_bytes: Option<f64>,
    /// Virtual memory size.
    pub virtual_bytes: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<f64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<f64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time: Option<f64>,
}

/// Clock ticks a second: Linux reports 100 to user space on every
/// architecture it runs Kubernetes nodes on.
const TICKS: f64 = 100.0;

impl ProcessStats {
    /// Reads `/proc/self`; `None` where there is no procfs.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let mut p = Self::from_stat(&stat)?;
        if let Some(start_ticks) = p.start_time {
            let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
            p.start_time = boot.map(|b| b + start_ticks / TICKS);
        }
        p.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
        p.max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| max_fds(&l));
        Some(p)
    }

    /// Parses `/proc/self/stat`; `start_time` is left in clock ticks
    /// since boot.
    pub fn from_stat(stat: &str) -> Option<Self> {
        // The command name is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Field 3 (state) is fields[0]; utime is field 14, stime 15,
        // starttime 22, vsize 23, rss (pages) 24.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        let page = 4096.0;
        Some(Self {
            cpu_seconds: (field(14)? + field(15)?) / TICKS,
            resident_bytes: field(24).map(|pages| pages * page),
            virtual_bytes: field(23),
            open_fds: None,
            max_fds: None,
            start_time: field(22),
        })
    }
}

fn boot_time(stat: &str) -> Option<f64> {
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

fn max_fds(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Whether a scraper's `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Rewrites prometheus-client's OpenMetrics text as the classic text
/// format: a counter's family is named with its `_total` suffix, and the
/// `# UNIT` and `# EOF` lines go.
pub fn to_classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|kind| {
            let rest = line.strip_prefix(kind)?;
            let (name, tail) = rest.split_once(' ')?;
            let tail = if tail == "unknown" { "untyped" } else { tail };
            Some(if counters.contains(name) {
                format!("{kind}{name}_total {tail}")
            } else {
                format!("{kind}{name} {tail}")
            })
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_with_spaces_in_the_name() {
        let stat =
            "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1000 123456789 300 18446744073709551615";
        let p = ProcessStats::from_stat(stat).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.start_time, Some(1000.0));
        assert_eq!(p.virtual_bytes, Some(123456789.0));
        assert_eq!(p.resident_bytes, Some(300.0 * 4096.0));
    }

    #[test]
    fn classic_names_counters_with_their_suffix() {
        let om = "# HELP remedy_x X.\n# TYPE remedy_x counter\nremedy_x_total 1\n# HELP remedy_g G.\n# TYPE remedy_g gauge\nremedy_g 2\n# EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP remedy_x_total X.\n# TYPE remedy_x_total counter\nremedy_x_total 1\n# HELP remedy_g G.\n# TYPE remedy_g gauge\nremedy_g 2\n"
        );
    }

    #[test]
    fn this_process_reads() {
        let p = ProcessStats::read().unwrap();
        assert!(p.open_fds.unwrap() > 0.0 && p.resident_bytes.unwrap() > 0.0 && p.start_time.unwrap() > 1.0e9);
    }
}
