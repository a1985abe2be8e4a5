//! The `snapshot` directive: what the agent sees on its node, from the
//! latest resource sample and the log detectors. Reading changes nothing,
//! so a dry run reads too. Sections this agent does not collect say so
//! under `unavailable.<section>`; no figure is ever made up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use remedy_shared::Timestamp;
use remedy_shared::runbook::SnapshotSection;
use remedy_shared::signals::ResourceSnapshot;

use crate::clock::now;
use crate::handler::{Handlers, Outcome, Reply, Request};
use crate::logs::detect::LogDetectors;
use crate::published::Published;
use crate::signals::NodeStatus;

/// The directive that answers with what the agent sees on its node.
pub const SNAPSHOT: &str = "snapshot";
/// Sections of a snapshot, in the order their names are listed to people.
const SECTIONS: &[SnapshotSection] = &[
    SnapshotSection::Resources,
    SnapshotSection::ErrorCounts,
    SnapshotSection::AuthFailures,
    SnapshotSection::Processes,
    SnapshotSection::Pods,
];
/// What a section this agent cannot produce says instead of a figure.
const NOT_COLLECTED: &str = "not collected by this agent version";
const LOGS_OFF: &str = "log tailing is off on this agent (logs.enabled: false)";

/// Serves `snapshot` from the node's latest sample and, when log tailing
/// is on, its detectors.
pub fn register(handlers: &mut Handlers, node: Published<NodeStatus>, logs: Option<LogDetectors>) {
    handlers.announce(SNAPSHOT, move |request: Request| {
        let node = node.clone();
        let logs = logs.clone();
        async move {
            // On a blocking thread: sections that read the disk must not
            // stall the runtime.
            let job = tokio::task::spawn_blocking(move || {
                let latest = node.lock().snapshot.clone();
                snapshot(&request.params, latest.as_ref(), logs.as_ref(), now())
            });
            job.await.unwrap_or_else(|e| Reply::new(Outcome::Failed, format!("the directive failed: {e}")))
        }
    });
}

/// What a snapshot directive asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SnapshotParams {
    sections: BTreeSet<SnapshotSection>,
    /// For counts over time (error counts, authentication failures), which
    /// this agent does not collect yet; checked so a typo is caught now.
    window: Option<Duration>,
    /// For per-pod sections; accepted as given.
    selector: Option<String>,
}

fn section_name(section: SnapshotSection) -> String {
    match serde_json::to_value(section) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{section:?}"),
    }
}

fn section_names() -> String {
    SECTIONS.iter().map(|s| section_name(*s)).collect::<Vec<_>>().join(", ")
}

/// Reads a snapshot's parameters; the error names the parameter at fault.
fn snapshot_params(params: &HashMap<String, String>) -> Result<SnapshotParams, String> {
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    if let Some(unknown) = keys.into_iter().find(|k| !matches!(k.as_str(), "include" | "window" | "selector")) {
        return Err(format!("unknown parameter `{unknown}` (snapshot takes include, window, selector)"));
    }
    let include = params
        .get("include")
        .ok_or_else(|| format!("include: missing; name sections, comma-separated, from {}", section_names()))?;
    let mut sections = BTreeSet::new();
    for name in include.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let section = serde_json::from_value(serde_json::Value::String(name.to_owned()))
            .map_err(|_| format!("include: unknown section `{name}` (expected {})", section_names()))?;
        sections.insert(section);
    }
    if sections.is_empty() {
        return Err(format!("include: names no section; name some of {}", section_names()));
    }
    let window = params
        .get("window")
        .map(|w| remedy_shared::config::parse_duration(w).map_err(|e| format!("window: {e}")))
        .transpose()?;
    Ok(SnapshotParams { sections, window, selector: params.get("selector").cloned() })
}

/// Answers a snapshot from the latest resource sample. Reading changes
/// nothing, so a dry run reads too. Sections this agent does not collect
/// say so under `unavailable.<section>`; no figure is ever made up.
fn snapshot(
    params: &HashMap<String, String>,
    latest: Option<&ResourceSnapshot>,
    logs: Option<&LogDetectors>,
    now: Timestamp,
) -> Reply {
    let wanted = match snapshot_params(params) {
        Ok(p) => p,
        Err(e) => return Reply::new(Outcome::Refused, e),
    };
    let mut evidence = BTreeMap::new();
    let mut missing = Vec::new();
    for section in &wanted.sections {
        let gap = match (section, latest) {
            (SnapshotSection::Resources, Some(s)) => {
                resources(s, now, &mut evidence);
                None
            }
            (SnapshotSection::Processes, Some(s)) if !s.top_processes.is_empty() => {
                processes(s, &mut evidence);
                None
            }
            (SnapshotSection::Processes, Some(_)) => Some("this agent samples no processes (top_processes is 0)"),
            (SnapshotSection::Resources | SnapshotSection::Processes, None) => Some("no resource sample taken yet"),
            (SnapshotSection::ErrorCounts, _) => match logs {
                None => Some(LOGS_OFF),
                Some(logs) => match logs.error_counts(wanted.selector.as_deref(), &mut evidence) {
                    Ok(()) => None,
                    Err(e) => return Reply::new(Outcome::Refused, e),
                },
            },
            (SnapshotSection::AuthFailures, _) => match logs {
                None => Some(LOGS_OFF),
                Some(logs) => {
                    logs.auth_failures(&mut evidence);
                    None
                }
            },
            (SnapshotSection::Pods, _) => Some(NOT_COLLECTED),
        };
        if let Some(why) = gap {
            let name = section_name(*section);
            evidence.insert(format!("unavailable.{name}"), why.to_owned());
            missing.push(name);
        }
    }
    let asked: Vec<String> = wanted.sections.iter().map(|s| section_name(*s)).collect();
    let mut message = format!("snapshot of {}", asked.join(", "));
    if !missing.is_empty() {
        message.push_str(&format!("; not available: {}", missing.join(", ")));
    }
    Reply { outcome: Outcome::Succeeded, message, evidence }
}

fn finite(value: f64, decimals: usize) -> Option<String> {
    value.is_finite().then(|| format!("{value:.decimals$}"))
}

/// CPU, memory, load and disks: flat keys, so a combined snapshot reads as
/// `steps.<id>.memory_percent`. Unknown figures (NaN) are left out.
fn resources(s: &ResourceSnapshot, now: Timestamp, evidence: &mut BTreeMap<String, String>) {
    let mut put = |key: String, value: Option<String>| {
        if let Some(v) = value {
            evidence.insert(key, v);
        }
    };
    put("sampled_at".into(), Some(s.taken_at.to_string()));
    put("sample_age_ms".into(), Some(now.since(s.taken_at).as_millis().to_string()));
    put("cpu_percent".into(), finite(s.cpu_percent, 1));
    put("memory_used_bytes".into(), Some(s.memory_used_bytes.to_string()));
    put("memory_total_bytes".into(), Some(s.memory_total_bytes.to_string()));
    put("memory_percent".into(), finite(s.memory_percent(), 1));
    for (i, window) in ["load1", "load5", "load15"].into_iter().enumerate() {
        put(window.into(), s.load.get(i).and_then(|l| finite(*l, 2)));
    }
    let mut worst: Option<f64> = None;
    for d in &s.disks {
        let used = d.used_percent();
        if used.is_finite() {
            worst = Some(worst.map_or(used, |w| w.max(used)));
        }
        put(format!("disk.{}.used_percent", d.mount_point), finite(used, 1));
        put(format!("disk.{}.available_bytes", d.mount_point), Some(d.available_bytes.to_string()));
        put(format!("disk.{}.total_bytes", d.mount_point), Some(d.total_bytes.to_string()));
    }
    put("disk_percent".into(), worst.and_then(|w| finite(w, 1)));
}

/// The hottest processes, by CPU: `processes.<rank>.*`, rank from 1.
fn processes(s: &ResourceSnapshot, evidence: &mut BTreeMap<String, String>) {
    let mut hot = s.top_processes.clone();
    hot.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent).then(b.memory_bytes.cmp(&a.memory_bytes)));
    for (rank, p) in hot.iter().enumerate().map(|(i, p)| (i + 1, p)) {
        evidence.insert(format!("processes.{rank}.process"), format!("{}[{}]", p.name, p.pid));
        if let Some(cpu) = finite(p.cpu_percent, 1) {
            evidence.insert(format!("processes.{rank}.cpu_percent"), cpu);
        }
        evidence.insert(format!("processes.{rank}.memory_bytes"), p.memory_bytes.to_string());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use remedy_shared::signals::{DiskUsage, ProcessUsage};

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// A sampled node: two disks, two processes, one unknown load.
    pub(crate) fn sample() -> ResourceSnapshot {
        ResourceSnapshot {
            taken_at: Timestamp::from_millis(1_000),
            cpu_percent: 37.25,
            memory_used_bytes: 3 * 1024,
            memory_total_bytes: 4 * 1024,
            load: [1.5, f64::NAN, 0.25],
            disks: vec![
                DiskUsage { mount_point: "/".into(), total_bytes: 100, available_bytes: 40 },
                DiskUsage { mount_point: "/var".into(), total_bytes: 200, available_bytes: 10 },
            ],
            top_processes: vec![
                ProcessUsage { pid: 7, name: "postgres".into(), cpu_percent: 5.0, memory_bytes: 900 },
                ProcessUsage { pid: 42, name: "java".into(), cpu_percent: 80.0, memory_bytes: 100 },
            ],
        }
    }

    #[test]
    fn resources_come_from_the_latest_sample_with_unknown_figures_left_out() {
        let reply =
            snapshot(&params(&[("include", "resources")]), Some(&sample()), None, Timestamp::from_millis(1_500));
        assert_eq!(reply.outcome, Outcome::Succeeded, "{reply:?}");
        let e = &reply.evidence;
        assert_eq!(e["cpu_percent"], "37.2");
        assert_eq!(e["memory_percent"], "75.0");
        assert_eq!(e["memory_total_bytes"], "4096");
        assert_eq!(e["load1"], "1.50");
        assert!(!e.contains_key("load5"), "an unknown load is left out, not NaN");
        assert_eq!(e["disk./var.used_percent"], "95.0");
        assert_eq!(e["disk_percent"], "95.0", "the fullest disk");
        assert_eq!(e["sample_age_ms"], "500");
        assert_eq!(reply.message, "snapshot of resources");
    }

    #[test]
    fn sections_not_collected_say_so_instead_of_a_figure() {
        // Without log tailing there are no error counts to give.
        let reply = snapshot(
            &params(&[("include", "error_counts, resources,pods"), ("window", "10m"), ("selector", "app=api")]),
            Some(&sample()),
            None,
            Timestamp::from_millis(1_000),
        );
        assert_eq!(reply.outcome, Outcome::Succeeded);
        assert_eq!(reply.evidence["unavailable.error_counts"], LOGS_OFF);
        assert_eq!(reply.evidence["unavailable.pods"], NOT_COLLECTED);
        assert!(reply.evidence.contains_key("cpu_percent"));
        assert!(!reply.evidence.keys().any(|k| k.starts_with("database")), "no made-up counts");
        assert_eq!(reply.message, "snapshot of resources, error_counts, pods; not available: error_counts, pods");

        let before_first_sample = snapshot(&params(&[("include", "resources")]), None, None, Timestamp::from_millis(1));
        assert_eq!(before_first_sample.evidence["unavailable.resources"], "no resource sample taken yet");
    }

    #[test]
    fn processes_are_ranked_by_cpu() {
        let reply =
            snapshot(&params(&[("include", "processes")]), Some(&sample()), None, Timestamp::from_millis(1_000));
        assert_eq!(reply.evidence["processes.1.process"], "java[42]");
        assert_eq!(reply.evidence["processes.1.cpu_percent"], "80.0");
        assert_eq!(reply.evidence["processes.2.memory_bytes"], "900");
        let none = ResourceSnapshot { top_processes: Vec::new(), ..sample() };
        let reply = snapshot(&params(&[("include", "processes")]), Some(&none), None, Timestamp::from_millis(1_000));
        assert!(reply.evidence["unavailable.processes"].contains("top_processes is 0"));
    }

    #[test]
    fn bad_parameters_are_refused_naming_the_parameter() {
        let cases = [
            (params(&[]), "include: missing"),
            (params(&[("include", " , ")]), "include: names no section"),
            (params(&[("include", "resources,disks")]), "include: unknown section `disks`"),
            (params(&[("include", "resources"), ("window", "ten minutes")]), "window: invalid duration"),
            (params(&[("include", "resources"), ("force", "yes")]), "unknown parameter `force`"),
        ];
        for (p, expected) in cases {
            let reply = snapshot(&p, Some(&sample()), None, Timestamp::from_millis(1));
            assert_eq!(reply.outcome, Outcome::Refused, "{p:?}");
            assert!(reply.message.starts_with(expected), "{p:?}: {}", reply.message);
        }
    }
}
