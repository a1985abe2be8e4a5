//! The `processes:` section of the agent's configuration.

use std::path::PathBuf;
use std::time::Duration;

use regex::RegexSet;
use remedy_shared::Severity;
use remedy_shared::config::ConfigError;
use remedy_shared::detector::ThresholdRule;
use serde::Deserialize;

use crate::detectors::DetectorConfig;
use remedy_shared::config::opt_duration;

/// As written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessesFile {
    enabled: Option<bool>,
    #[serde(default, with = "opt_duration")]
    interval: Option<Duration>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    ignore: Vec<String>,
    max_tracked: Option<usize>,
    cmdline_bytes: Option<usize>,
    #[serde(default)]
    memory: HotFile,
    #[serde(default)]
    cpu: HotFile,
    #[serde(default)]
    zombies: HotFile,
    #[serde(default)]
    oom_kills: OomFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HotFile {
    enabled: Option<bool>,
    threshold: Option<Amount>,
    clear_below: Option<Amount>,
    #[serde(default, rename = "for", with = "opt_duration")]
    for_duration: Option<Duration>,
    severity: Option<Severity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OomFile {
    enabled: Option<bool>,
    source: Option<PathBuf>,
    start: Option<String>,
    #[serde(default, with = "opt_duration")]
    clear_after: Option<Duration>,
    severity: Option<Severity>,
}

/// A number, or text such as `50%` or `2GiB`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Amount {
    Number(f64),
    Text(String),
}

/// What a memory threshold is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryUnit {
    /// Resident bytes.
    Bytes,
    /// Percent of the node's memory.
    Percent,
}

/// One per-process threshold, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HotRule {
    /// When it raises and clears, in `unit`.
    pub detector: DetectorConfig,
    /// Memory only: bytes or percent of the node. CPU is always percent of
    /// one core.
    pub unit: MemoryUnit,
}

/// Where kernel OOM kills are read from.
#[derive(Debug, Clone, PartialEq)]
pub struct OomConfig {
    /// `/dev/kmsg` by default; a plain file of kernel lines works too.
    pub source: PathBuf,
    /// Read from the end (default: only kills after the agent started) or
    /// the beginning.
    pub from_beginning: bool,
    /// How long after the last kill on a target the finding clears.
    pub clear_after: Duration,
    /// Severity of its findings.
    pub severity: Severity,
}

/// Process signals, validated.
#[derive(Debug, Clone)]
pub struct ProcessesConfig {
    /// On by default; it needs the node's PID namespace to see the node's
    /// processes (hostPID in a DaemonSet).
    pub enabled: bool,
    /// How often the process table is read.
    pub interval: Duration,
    /// Only processes whose name matches one of these (empty: every one).
    pub names: Vec<String>,
    /// Processes whose name matches one of these are never judged hot.
    pub ignore: Vec<String>,
    /// Most (process, resource) pairs judged at once; the hottest win.
    pub max_tracked: usize,
    /// Longest command line quoted in a finding, bytes.
    pub cmdline_bytes: usize,
    /// Resident memory per process.
    pub memory: Option<HotRule>,
    /// CPU per process, percent of one core.
    pub cpu: Option<HotRule>,
    /// Zombie processes on the node.
    pub zombies: Option<DetectorConfig>,
    /// Kernel OOM kills.
    pub oom_kills: Option<OomConfig>,
}

/// Validates the section; `sample_interval` is the default interval.
pub fn resolve(source: &str, file: ProcessesFile, sample_interval: Duration) -> Result<ProcessesConfig, ConfigError> {
    let err = |field: &str, message: &str| ConfigError::new(source, format!("processes.{field}"), message);
    let interval = file.interval.unwrap_or(sample_interval);
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&interval) {
        return Err(err("interval", "must be between 100ms and 1h"));
    }
    for (field, list) in [("names", &file.names), ("ignore", &file.ignore)] {
        for (i, pattern) in list.iter().enumerate() {
            if let Err(e) = regex::Regex::new(pattern) {
                return Err(err(&format!("{field}[{i}]"), &format!("not a regular expression: {e}")));
            }
        }
    }
    let max_tracked = file.max_tracked.unwrap_or(256);
    if !(1..=10_000).contains(&max_tracked) {
        return Err(err("max_tracked", "must be between 1 and 10000"));
    }
    let cmdline_bytes = file.cmdline_bytes.unwrap_or(256);
    if !(16..=4096).contains(&cmdline_bytes) {
        return Err(err("cmdline_bytes", "must be between 16 and 4096"));
    }
    // Like the node detectors: a held condition is reported again at least
    // every minute.
    let refresh = interval.max(Duration::from_secs(60));
    let memory = hot(source, "memory", file.memory, (Amount::Text("50%".into()), 120), refresh, true)?;
    let cpu = hot(source, "cpu", file.cpu, (Amount::Number(90.0), 300), refresh, false)?;
    let zombies =
        hot(source, "zombies", file.zombies, (Amount::Number(20.0), 300), refresh, false)?.map(|r| r.detector);
    if let Some(z) = zombies
        && z.rule.threshold < 1.0
    {
        return Err(err("zombies.threshold", "must be at least 1"));
    }
    let o = file.oom_kills;
    let oom_kills = if o.enabled == Some(false) {
        None
    } else {
        let source_path = o.source.unwrap_or_else(|| PathBuf::from("/dev/kmsg"));
        if source_path.as_os_str().is_empty() {
            return Err(err("oom_kills.source", "must name /dev/kmsg or a file of kernel lines"));
        }
        let from_beginning = match o.start.as_deref().map(str::trim) {
            None | Some("end") => false,
            Some("beginning") => true,
            Some(other) => return Err(err("oom_kills.start", &format!("`{other}` is not one of end, beginning"))),
        };
        let clear_after = o.clear_after.unwrap_or(Duration::from_secs(600));
        if clear_after < Duration::from_secs(1) {
            return Err(err("oom_kills.clear_after", "must be at least 1s"));
        }
        Some(OomConfig {
            source: source_path,
            from_beginning,
            clear_after,
            severity: o.severity.unwrap_or(Severity::Warning),
        })
    };
    Ok(ProcessesConfig {
        enabled: file.enabled.unwrap_or(true),
        interval,
        names: file.names,
        ignore: file.ignore,
        max_tracked,
        cmdline_bytes,
        memory,
        cpu,
        zombies,
        oom_kills,
    })
}

impl ProcessesConfig {
    /// The name selector and the ignore list, compiled (validated in
    /// [`resolve`]).
    pub fn selectors(&self) -> (Option<RegexSet>, Option<RegexSet>) {
        let set = |list: &[String]| (!list.is_empty()).then(|| RegexSet::new(list).ok()).flatten();
        (set(&self.names), set(&self.ignore))
    }
}

fn hot(
    source: &str,
    name: &str,
    file: HotFile,
    (threshold, for_secs): (Amount, u64),
    refresh_every: Duration,
    memory: bool,
) -> Result<Option<HotRule>, ConfigError> {
    let field = |f: &str| format!("processes.{name}.{f}");
    let err = |f: &str, message: String| ConfigError::new(source, field(f), message);
    if file.enabled == Some(false) {
        return Ok(None);
    }
    let (threshold, unit) =
        amount(file.threshold.as_ref().unwrap_or(&threshold), memory).map_err(|m| err("threshold", m))?;
    if !(threshold.is_finite() && threshold > 0.0) {
        return Err(err("threshold", "must be a number above zero".into()));
    }
    if unit == MemoryUnit::Percent && threshold > 100.0 {
        return Err(err("threshold", "a percentage of the node's memory is at most 100%".into()));
    }
    let clear_below = match &file.clear_below {
        // A tenth below by default, so a value hovering at the threshold does
        // not raise and clear every sample.
        None => threshold * 0.9,
        Some(a) => {
            let (value, clear_unit) = amount(a, memory).map_err(|m| err("clear_below", m))?;
            if clear_unit != unit {
                return Err(err("clear_below", "must be in the same unit as the threshold (bytes or %)".into()));
            }
            value
        }
    };
    if !(clear_below.is_finite() && clear_below >= 0.0 && clear_below <= threshold) {
        return Err(err("clear_below", format!("must be between 0 and the threshold ({threshold})")));
    }
    let for_duration = file.for_duration.unwrap_or(Duration::from_secs(for_secs));
    if for_duration > Duration::from_secs(24 * 3600) {
        return Err(err("for", "must be at most 24h".into()));
    }
    Ok(Some(HotRule {
        detector: DetectorConfig {
            rule: ThresholdRule { threshold, clear_below, for_duration, refresh_every },
            severity: file.severity.unwrap_or(Severity::Warning),
        },
        unit,
    }))
}

/// A plain number, `N%`, or (memory only) a size such as `512MiB` or `2G`.
fn amount(a: &Amount, memory: bool) -> Result<(f64, MemoryUnit), String> {
    let text = match a {
        Amount::Number(n) => return Ok((*n, MemoryUnit::Bytes)),
        Amount::Text(t) => t.trim(),
    };
    let bad = || {
        if memory {
            format!("`{text}` is not bytes, a size like 512MiB or 2G, or a percentage like 50%")
        } else {
            format!("`{text}` is not a number")
        }
    };
    if let Some(n) = text.strip_suffix('%') {
        if !memory {
            // CPU is percent of one core whether or not it says so.
            return n.trim().parse::<f64>().map(|v| (v, MemoryUnit::Bytes)).map_err(|_| bad());
        }
        return n.trim().parse::<f64>().map(|v| (v, MemoryUnit::Percent)).map_err(|_| bad());
    }
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let scale = match suffix.trim() {
        "" | "B" => 1.0,
        "K" | "k" | "KB" | "kB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "Ki" | "KiB" => 1024.0,
        "Mi" | "MiB" => 1024.0 * 1024.0,
        "Gi" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "Ti" | "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    if !memory && scale != 1.0 {
        return Err(bad());
    }
    Ok((number * scale, MemoryUnit::Bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Top {
        processes: ProcessesFile,
    }

    /// `yaml` as the `processes:` section of a file, so errors name the
    /// field as they do at start.
    fn load(yaml: &str) -> Result<ProcessesConfig, ConfigError> {
        let nested: String = yaml.lines().map(|l| format!("  {l}\n")).collect();
        let top: Top = remedy_shared::config::parse_yaml("agent.yaml", &format!("processes:\n{nested}"))?;
        resolve("agent.yaml", top.processes, Duration::from_secs(10))
    }

    #[test]
    fn defaults_judge_memory_cpu_zombies_and_read_the_kernel_log_from_its_end() {
        let c = load("{}").unwrap();
        assert!(c.enabled);
        assert_eq!((c.interval, c.max_tracked, c.cmdline_bytes), (Duration::from_secs(10), 256, 256));
        let m = c.memory.unwrap();
        assert_eq!(m.unit, MemoryUnit::Percent);
        assert_eq!((m.detector.rule.threshold, m.detector.rule.clear_below), (50.0, 45.0));
        assert_eq!(m.detector.rule.refresh_every, Duration::from_secs(60));
        let cpu = c.cpu.unwrap();
        assert_eq!((cpu.detector.rule.threshold, cpu.detector.rule.for_duration), (90.0, Duration::from_secs(300)));
        assert_eq!(c.zombies.unwrap().rule.threshold, 20.0);
        let oom = c.oom_kills.clone().unwrap();
        assert_eq!(oom.source, PathBuf::from("/dev/kmsg"));
        assert!(!oom.from_beginning);
        assert_eq!(oom.clear_after, Duration::from_secs(600));
        assert!(c.selectors().0.is_none() && c.selectors().1.is_none());
    }

    #[test]
    fn thresholds_read_bytes_sizes_and_percentages() {
        let c = load(
            "interval: 500ms\nnames: ['^java$', postgres]\nignore: ['^kworker']\nmax_tracked: 3\n\
             memory: {threshold: 2GiB, clear_below: 1.5GiB, for: 30s, severity: critical}\n\
             cpu: {threshold: '150%', for: 0s}\nzombies: {threshold: 3, clear_below: 1}\n\
             oom_kills: {source: /tmp/kern.log, start: beginning, clear_after: 1m}\n",
        )
        .unwrap();
        let m = c.memory.unwrap();
        assert_eq!(m.unit, MemoryUnit::Bytes);
        assert_eq!(m.detector.rule.threshold, 2.0 * 1024.0 * 1024.0 * 1024.0);
        assert_eq!(m.detector.rule.clear_below, 1.5 * 1024.0 * 1024.0 * 1024.0);
        assert_eq!(m.detector.severity, Severity::Critical);
        let cpu = c.cpu.unwrap();
        assert_eq!((cpu.detector.rule.threshold, cpu.detector.rule.clear_below), (150.0, 135.0));
        assert_eq!(cpu.detector.rule.for_duration, Duration::ZERO);
        assert_eq!(c.zombies.unwrap().rule.clear_below, 1.0);
        assert!(c.oom_kills.as_ref().unwrap().from_beginning);
        let (names, ignore) = c.selectors();
        assert!(names.unwrap().is_match("java") && ignore.unwrap().is_match("kworker/0:1"));
        assert_eq!(
            load("memory: {threshold: 1073741824}\n").unwrap().memory.unwrap().detector.rule.threshold,
            1073741824.0
        );
        let off = load(
            "memory: {enabled: false}\ncpu: {enabled: false}\nzombies: {enabled: false}\noom_kills: {enabled: false}\n",
        )
        .unwrap();
        assert!(off.memory.is_none() && off.cpu.is_none() && off.zombies.is_none() && off.oom_kills.is_none());
    }

    #[test]
    fn bad_values_name_their_field() {
        let field = |yaml: &str| load(yaml).unwrap_err().field;
        assert_eq!(field("interval: 1ms\n"), "processes.interval");
        assert_eq!(field("names: [java, '(']\n"), "processes.names[1]");
        assert_eq!(field("ignore: ['[']\n"), "processes.ignore[0]");
        assert_eq!(field("max_tracked: 0\n"), "processes.max_tracked");
        assert_eq!(field("cmdline_bytes: 100000\n"), "processes.cmdline_bytes");
        assert_eq!(field("memory: {threshold: lots}\n"), "processes.memory.threshold");
        assert_eq!(field("memory: {threshold: '150%'}\n"), "processes.memory.threshold");
        assert_eq!(field("memory: {threshold: 0}\n"), "processes.memory.threshold");
        assert_eq!(field("memory: {threshold: '50%', clear_below: 1GiB}\n"), "processes.memory.clear_below");
        assert_eq!(field("memory: {threshold: 1GiB, clear_below: 2GiB}\n"), "processes.memory.clear_below");
        assert_eq!(field("cpu: {threshold: 2GiB}\n"), "processes.cpu.threshold");
        assert_eq!(field("cpu: {for: soon}\n"), "processes.cpu.for");
        assert_eq!(field("zombies: {threshold: 0.5}\n"), "processes.zombies.threshold");
        assert_eq!(field("oom_kills: {start: middle}\n"), "processes.oom_kills.start");
        assert_eq!(field("oom_kills: {source: ''}\n"), "processes.oom_kills.source");
        assert_eq!(field("oom_kills: {clear_after: 10ms}\n"), "processes.oom_kills.clear_after");
        assert_eq!(field("threads: true\n"), "processes.threads");
    }
}
