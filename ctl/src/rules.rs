//! `remedyctl rules test FILE < sample.log`: what the agent's brute-force
//! detector would make of each line, with the rules and settings of FILE,
//! offline. FILE is the agent's configuration (its `logs.brute_force`) or
//! that section alone.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use remedy_shared::Timestamp;
use remedy_shared::config::EXIT_BAD_CONFIG;
use remedy_shared::logs::bruteforce::{BruteForceDetector, Verdict, config_from_file};
use remedy_shared::logs::{LineRef, cri};
use serde::Serialize;

use crate::output::Format;

/// `rules ...`.
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Reads log lines on standard input and prints, for each, whether the
    /// agent would count it as a failed login, against which address, and
    /// by which rule (or why not); then the addresses that would be
    /// reported. Needs no coordinator.
    Test(TestArgs),
}

/// Where the lines come from, for rules and settings scoped to sources.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The agent's configuration, or its `logs.brute_force` section alone.
    pub file: PathBuf,
    /// The lines are container logs in CRI format (`TIME STREAM F MESSAGE`).
    #[arg(long)]
    pub cri: bool,
    /// The pod's namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// The pod's name (its app is read from it, as the agent does).
    #[arg(long)]
    pub pod: Option<String>,
    /// The container's name.
    #[arg(long)]
    pub container: Option<String>,
    /// The plain file the lines come from, as configured under `logs.files`.
    #[arg(long = "log-file")]
    pub log_file: Option<String>,
}

/// One line's verdict.
#[derive(Debug, Serialize)]
struct LineVerdict {
    line: usize,
    counted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// `rules test`: exit 64 when FILE is not a usable configuration, 1 when
/// the input cannot be read.
pub fn test(args: &TestArgs, format: Format) -> ExitCode {
    let config = match read_config(&args.file) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("remedyctl: {message}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    let raise_at = config.raise_at;
    let mut detector = match BruteForceDetector::new(config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("remedyctl: {}", e.in_file(&args.file.display().to_string(), ""));
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    match run(args, format, &mut detector, raise_at) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remedyctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_config(path: &Path) -> Result<remedy_shared::logs::BruteForceConfig, String> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    config_from_file(&name, &text).map_err(|e| e.to_string())
}

fn run(args: &TestArgs, format: Format, detector: &mut BruteForceDetector, raise_at: u64) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut per_source: BTreeMap<IpAddr, u64> = BTreeMap::new();
    let (mut lines, mut counted) = (0usize, 0u64);
    for (i, raw) in stdin.lock().split(b'\n').enumerate() {
        let raw = raw?;
        let raw = raw.strip_suffix(b"\r").unwrap_or(&raw);
        let bytes = if args.cri { cri::parse_line(raw).map_or(&raw[..0], |c| c.message) } else { raw };
        let text = String::from_utf8_lossy(bytes);
        let line = LineRef {
            namespace: args.namespace.as_deref(),
            pod: args.pod.as_deref(),
            container: args.container.as_deref(),
            file: args.log_file.as_deref(),
            timestamp: None,
            message: &text,
        };
        lines += 1;
        // One millisecond per line: everything falls in one window.
        let (verdict, _) = detector.observe_explained(&line, Timestamp::from_millis(i as i64));
        let v = match verdict {
            Verdict::Counted { rule, source, user } => {
                counted += 1;
                *per_source.entry(source).or_default() += 1;
                LineVerdict { line: i + 1, counted: true, source: Some(source), user, rule: Some(rule), reason: None }
            }
            Verdict::NotCounted { rule, reason } => LineVerdict {
                line: i + 1,
                counted: false,
                source: None,
                user: None,
                rule: Some(rule),
                reason: Some(reason),
            },
            Verdict::NotRead => {
                LineVerdict { line: i + 1, counted: false, source: None, user: None, rule: None, reason: None }
            }
        };
        match format {
            Format::Json => writeln!(out, "{}", serde_json::to_string(&v)?)?,
            _ => writeln!(out, "{}", describe(&v))?,
        }
    }
    if !matches!(format, Format::Json) {
        writeln!(out, "\n{lines} lines, {counted} counted failures from {} addresses", per_source.len())?;
        for (ip, n) in &per_source {
            let raised =
                if *n >= raise_at { format!("reported (raise_at {raise_at})") } else { "below raise_at".into() };
            writeln!(out, "  {ip}: {n} ({raised})")?;
        }
    }
    Ok(())
}

fn describe(v: &LineVerdict) -> String {
    match (v.counted, &v.source, &v.rule, &v.reason) {
        (true, Some(ip), Some(rule), _) => {
            let user = v.user.as_deref().map(|u| format!(" user {u:?}")).unwrap_or_default();
            format!("{}: counts {ip}{user} (rule {rule})", v.line)
        }
        (false, _, Some(rule), Some(reason)) => format!("{}: not counted: {reason} (rule {rule})", v.line),
        _ => format!("{}: -", v.line),
    }
}
