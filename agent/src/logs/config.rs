//! The `logs:` section: as written in the file, and validated.
//! `crate::config` hands this module its part of the file.

use std::path::PathBuf;
use std::time::Duration;

use remedy_shared::config::{ConfigError, opt_duration};
use remedy_shared::logs::{
    BruteForceConfig, BruteForceDetector, ClassifierConfig, ErrorClassifier, LineClock, LineTimeConfig,
};
use serde::Deserialize;

use super::StartAt;

/// Tailing container logs and plain files.
#[derive(Debug, Clone, PartialEq)]
pub struct LogsConfig {
    /// On by default: a pod log directory that does not exist (a laptop, a
    /// node whose kubelet has not started) is reported in /debug/state and
    /// looked for again at every scan, not an error.
    pub enabled: bool,
    /// The kubelet's pod log directory.
    pub root: PathBuf,
    /// Plain files, one message per line, named exactly (no patterns).
    pub files: Vec<PathBuf>,
    /// Longest logical line kept, bytes; longer ones are cut and counted.
    pub max_line_bytes: usize,
    /// How often the directories are listed for new and rotated files.
    pub discover_interval: Duration,
    /// How long to wait after finding nothing new to read.
    pub poll_interval: Duration,
    /// How often delivered offsets are written to the state directory; after
    /// a crash, at most this much is read twice.
    pub checkpoint_interval: Duration,
    /// Where files found at the first start on a node (no checkpoint yet)
    /// are read from: `end` by default, so that an agent rolled out onto
    /// busy nodes does not judge days-old lines as new.
    pub first_start: StartAt,
    /// Error lines by category per workload (P1-002's `high_error_rate`).
    pub errors: ClassifierConfig,
    /// Failed logins per source address (SEC-001's `brute_force`).
    pub brute_force: BruteForceConfig,
    /// How lines' own times are used by both detectors.
    pub line_time: LineTimeConfig,
}

/// `logs:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsFile {
    enabled: Option<bool>,
    root: Option<PathBuf>,
    #[serde(default)]
    files: Vec<PathBuf>,
    max_line_bytes: Option<u64>,
    #[serde(default, with = "opt_duration")]
    discover_interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    poll_interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    checkpoint_interval: Option<Duration>,
    first_start: Option<String>,
    #[serde(default)]
    errors: ClassifierConfig,
    #[serde(default)]
    brute_force: BruteForceConfig,
    #[serde(default)]
    line_time: LineTimeConfig,
}

/// Smallest and largest `logs.max_line_bytes`.
const MAX_LINE_BYTES: std::ops::RangeInclusive<u64> = 1024..=16 * 1024 * 1024;

/// Validates the `logs:` section.
pub fn resolve(source: &str, file: LogsFile) -> Result<LogsConfig, ConfigError> {
    let err = |field: &str, message: &str| ConfigError::new(source, format!("logs.{field}"), message);
    let root = file.root.unwrap_or_else(|| PathBuf::from("/var/log/pods"));
    if root.as_os_str().is_empty() {
        return Err(err("root", "must name a directory"));
    }
    let mut files: Vec<PathBuf> = Vec::with_capacity(file.files.len());
    for (i, path) in file.files.into_iter().enumerate() {
        let text = path.to_string_lossy();
        if text.trim().is_empty() {
            return Err(err(&format!("files[{i}]"), "must name a file"));
        }
        if text.contains(['*', '?', '[']) {
            return Err(err(&format!("files[{i}]"), "names one file: patterns are not expanded"));
        }
        if path.is_dir() {
            return Err(err(&format!("files[{i}]"), "is a directory; name the files in it"));
        }
        if !files.contains(&path) {
            files.push(path);
        }
    }
    let max_line_bytes = file.max_line_bytes.unwrap_or(64 * 1024);
    if !MAX_LINE_BYTES.contains(&max_line_bytes) {
        return Err(err(
            "max_line_bytes",
            &format!("must be between {} and {}", MAX_LINE_BYTES.start(), MAX_LINE_BYTES.end()),
        ));
    }
    let discover_interval = file.discover_interval.unwrap_or(Duration::from_secs(1));
    if !(Duration::from_millis(50)..=Duration::from_secs(3600)).contains(&discover_interval) {
        return Err(err("discover_interval", "must be between 50ms and 1h"));
    }
    let poll_interval = file.poll_interval.unwrap_or(Duration::from_millis(250));
    if !(Duration::from_millis(10)..=Duration::from_secs(10)).contains(&poll_interval) {
        return Err(err("poll_interval", "must be between 10ms and 10s"));
    }
    let checkpoint_interval = file.checkpoint_interval.unwrap_or(Duration::from_secs(5));
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&checkpoint_interval) {
        return Err(err("checkpoint_interval", "must be between 100ms and 1h"));
    }
    let first_start = match file.first_start.as_deref().map(str::trim) {
        None | Some("end") => StartAt::End,
        Some("beginning") => StartAt::Beginning,
        Some(other) => return Err(err("first_start", &format!("`{other}` is not one of end, beginning"))),
    };
    // Compiled once here so a bad pattern stops the start naming its field.
    ErrorClassifier::new(file.errors.clone()).map_err(|e| e.in_file(source, "logs.errors"))?;
    BruteForceDetector::new(file.brute_force.clone()).map_err(|e| e.in_file(source, "logs.brute_force"))?;
    LineClock::new(&file.line_time, None).map_err(|e| e.in_file(source, "logs.line_time"))?;
    Ok(LogsConfig {
        enabled: file.enabled.unwrap_or(true),
        root,
        files,
        max_line_bytes: max_line_bytes as usize,
        discover_interval,
        poll_interval,
        checkpoint_interval,
        first_start,
        errors: file.errors,
        brute_force: file.brute_force,
        line_time: file.line_time,
    })
}
