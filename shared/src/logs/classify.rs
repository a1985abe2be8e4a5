//! Error lines by category and workload (P1-002).
//!
//! A line is first judged an error by one combined regex (its literal
//! prefilter rejects most lines in one vectorised scan); only error lines
//! go through the categories' `RegexSet`, and only they touch any state.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};

use super::linetime::LineClock;
use super::recency::RecencyMap;
use super::window::{Hysteresis, Judged, WindowCounter, bucket_width};
use super::{InvalidLogConfig, LineRef, deployment_of};
use crate::config::{duration, format_duration};
use crate::finding::{Finding, FindingKind, FindingState, Severity};
use crate::text::{Unit, truncate};
use crate::time::Timestamp;

/// Compiled programs bigger than this are refused: patterns come from
/// configuration and run on every line.
const REGEX_SIZE_LIMIT: usize = 4 << 20;

/// Evidence keys the finding uses itself; no category may take them.
const RESERVED: &[&str] =
    &["errors", "window", "raise_at", "clear_below", "deployment_derived_from", "last_pod", "pods_seen"];

/// A category of error lines: the first category (in order) with a pattern
/// that matches names the line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRule {
    /// The category's name, also its evidence key (`[a-z0-9_]+`).
    pub name: String,
    /// Regexes (Rust syntax; `(?i)` for case-insensitive).
    pub patterns: Vec<String>,
}

/// What error counts are kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyBy {
    /// Per Deployment, read from the pod's name when it has a Deployment's
    /// shape (`<deployment>-<hash>-<suffix>`), else per pod.
    #[default]
    Workload,
    /// Per pod.
    Pod,
}

/// Configuration of the [`ErrorClassifier`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Regexes; a line that matches one is an error line. Case-sensitive
    /// literals keep the prefilter fast: prefer `ERROR|error` alternatives
    /// to `(?i)`.
    pub error_patterns: Vec<String>,
    /// Categories, tried in order.
    pub categories: Vec<CategoryRule>,
    /// The category of error lines no category matches.
    pub fallback_category: String,
    /// The sliding window errors are counted over.
    #[serde(with = "duration")]
    pub window: Duration,
    /// A finding is raised when a key has at least this many error lines in
    /// the window.
    pub raise_at: u64,
    /// A raised finding is cleared when the count falls below this.
    pub clear_below: u64,
    /// How often a raised finding is sent again with fresh counts.
    #[serde(with = "duration")]
    pub refresh_every: Duration,
    /// What counts are kept per.
    pub key_by: KeyBy,
    /// Most keys tracked; the least recently updated is dropped beyond (in
    /// constant time).
    pub max_keys: usize,
    /// Sample lines kept per key (the newest).
    pub max_samples: usize,
    /// Longest sample line, bytes.
    pub max_sample_len: usize,
    /// Severity of the findings.
    pub severity: Severity,
}

fn rule(name: &str, patterns: &[&str]) -> CategoryRule {
    CategoryRule { name: name.to_owned(), patterns: patterns.iter().map(|p| (*p).to_owned()).collect() }
}

impl Default for ClassifierConfig {
    /// The seed's P1-002 categories (`database`, `timeout`, `authentication`,
    /// `other`), matched case-insensitively like its `error.lower()`, on
    /// lines that are errors: the seed's `grep ERROR`, plus the usual
    /// structured levels, exceptions and 5xx statuses.
    fn default() -> Self {
        ClassifierConfig {
            error_patterns: [
                "ERROR",
                "FATAL",
                "level=error",
                "\"level\":\"error\"",
                "Exception",
                "status[=: ]5[0-9][0-9]",
                "\" 5[0-9][0-9] ",
            ]
            .map(str::to_owned)
            .to_vec(),
            categories: vec![
                rule("database", &["(?i)database|postgres|mysql|sqlstate|connection pool"]),
                rule("timeout", &["(?i)timeout|timed out|deadline exceeded"]),
                rule("authentication", &["(?i)authentication|unauthori[sz]ed|invalid token"]),
            ],
            fallback_category: "other".to_owned(),
            window: Duration::from_secs(60),
            raise_at: 5,
            clear_below: 2,
            refresh_every: Duration::from_secs(15),
            key_by: KeyBy::Workload,
            max_keys: 1024,
            max_samples: 3,
            max_sample_len: 240,
            severity: Severity::Warning,
        }
    }
}

fn compile(pattern: &str, field: String) -> Result<Regex, InvalidLogConfig> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| InvalidLogConfig::new(field, format!("invalid regex: {}", regex_reason(&e.to_string()))))
}

pub(crate) fn regex_reason(s: &str) -> String {
    s.lines().last().unwrap_or(s).trim().to_owned()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl ClassifierConfig {
    /// Checks the configuration; the error names the first bad field.
    pub fn validate(&self) -> Result<(), InvalidLogConfig> {
        self.compile().map(|_| ())
    }

    fn compile(&self) -> Result<(Regex, RegexSet, Vec<usize>), InvalidLogConfig> {
        if self.error_patterns.is_empty() {
            return Err(InvalidLogConfig::new("error_patterns", "must name at least one pattern"));
        }
        for (i, p) in self.error_patterns.iter().enumerate() {
            compile(p, format!("error_patterns[{i}]"))?;
        }
        let joined = self.error_patterns.iter().map(|p| format!("(?:{p})")).collect::<Vec<_>>().join("|");
        let errors = compile(&joined, "error_patterns".to_owned())?;
        if self.categories.len() > 32 {
            return Err(InvalidLogConfig::new("categories", "at most 32 categories"));
        }
        let mut names: Vec<&str> = Vec::new();
        let mut patterns = Vec::new();
        let mut owner = Vec::new();
        for (i, c) in self.categories.iter().enumerate() {
            if !valid_name(&c.name) {
                return Err(InvalidLogConfig::new(
                    format!("categories[{i}].name"),
                    format!("`{}` must be 1 to 32 of a-z, 0-9, _", c.name),
                ));
            }
            if RESERVED.contains(&c.name.as_str())
                || names.contains(&c.name.as_str())
                || c.name == self.fallback_category
            {
                return Err(InvalidLogConfig::new(
                    format!("categories[{i}].name"),
                    format!("`{}` is used twice or reserved", c.name),
                ));
            }
            if c.patterns.is_empty() {
                return Err(InvalidLogConfig::new(
                    format!("categories[{i}].patterns"),
                    "must name at least one pattern",
                ));
            }
            for (j, p) in c.patterns.iter().enumerate() {
                compile(p, format!("categories[{i}].patterns[{j}]"))?;
                patterns.push(p.as_str());
                owner.push(i);
            }
            names.push(&c.name);
        }
        if !valid_name(&self.fallback_category) || RESERVED.contains(&self.fallback_category.as_str()) {
            return Err(InvalidLogConfig::new(
                "fallback_category",
                format!("`{}` must be 1 to 32 of a-z, 0-9, _ and not reserved", self.fallback_category),
            ));
        }
        let set = RegexSetBuilder::new(&patterns).size_limit(REGEX_SIZE_LIMIT).build().map_err(|e| {
            InvalidLogConfig::new("categories", format!("invalid regex: {}", regex_reason(&e.to_string())))
        })?;
        if self.window < Duration::from_secs(1) {
            return Err(InvalidLogConfig::new("window", "must be at least 1s"));
        }
        if self.raise_at == 0 {
            return Err(InvalidLogConfig::new("raise_at", "must be at least 1"));
        }
        if self.clear_below > self.raise_at {
            return Err(InvalidLogConfig::new("clear_below", format!("must not exceed raise_at ({})", self.raise_at)));
        }
        if self.refresh_every.is_zero() {
            return Err(InvalidLogConfig::new("refresh_every", "must be more than 0s"));
        }
        if self.max_keys == 0 {
            return Err(InvalidLogConfig::new("max_keys", "must be at least 1"));
        }
        if self.max_samples > 10 {
            return Err(InvalidLogConfig::new("max_samples", "at most 10"));
        }
        if !(16..=4096).contains(&self.max_sample_len) {
            return Err(InvalidLogConfig::new("max_sample_len", "must be between 16 and 4096"));
        }
        Ok((errors, set, owner))
    }
}

/// What the classifier has seen, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClassifierStats {
    /// Lines looked at.
    pub lines: u64,
    /// Of those, error lines.
    pub errors: u64,
    /// Error lines per category, in [`ErrorClassifier::categories`] order.
    pub by_category: Vec<u64>,
    /// Keys currently tracked.
    pub keys: usize,
    /// Keys dropped to stay within `max_keys`.
    pub evicted: u64,
    /// Error lines counted at their own time (see [`super::linetime`]).
    pub at_line_time: u64,
    /// Error lines whose time was too far ahead of the node's clock,
    /// counted at the read time.
    pub time_out_of_bounds: u64,
    /// Error lines written more than `max_age` before they were read
    /// (counted at their own time all the same).
    pub too_old: u64,
    /// Error lines older than the window ending at their key's newest
    /// (read out of order): not counted.
    pub late: u64,
    /// Findings raised (not counting refreshes).
    pub raised: u64,
    /// Findings cleared.
    pub cleared: u64,
}

/// One workload's error counts in the window, per category in
/// [`ErrorClassifier::categories`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadErrors {
    /// Its namespace (empty for unattributed lines).
    pub namespace: String,
    /// "deployment", "pod" or "log".
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// Counts per category.
    pub by_category: Vec<u64>,
}

#[derive(Debug)]
struct KeyState {
    namespace: String,
    /// "deployment", "pod" or "log".
    kind: &'static str,
    name: String,
    /// Whether `name` is a Deployment read from a pod's name.
    derived: bool,
    last_pod: String,
    counts: Vec<WindowCounter>,
    samples: VecDeque<String>,
    raised: Hysteresis,
    /// The newest time an error line of this key was written at.
    seen: Timestamp,
    /// The node's clock when its last error line was read.
    read_at: Timestamp,
}

impl KeyState {
    /// Where this key's window ends when the node's clock says `now` (see
    /// the brute-force detector's `IpState::clock`).
    fn clock(&self, now: Timestamp) -> Timestamp {
        self.seen.plus(now.since(self.read_at))
    }
}

/// Classifies error lines and raises `high_error_rate` per workload.
#[derive(Debug)]
pub struct ErrorClassifier {
    config: ClassifierConfig,
    errors: Regex,
    categories: RegexSet,
    /// Category index of each pattern of `categories`.
    owner: Vec<usize>,
    names: Vec<String>,
    width: i64,
    /// The keys, least recently updated first.
    keys: RecencyMap<String, KeyState>,
    /// The keys with a raised finding, judged at every tick.
    raised: HashSet<String>,
    line_clock: LineClock,
    scratch: String,
    stats: ClassifierStats,
}

impl ErrorClassifier {
    /// A classifier for `config`, or the first field that is wrong.
    pub fn new(config: ClassifierConfig) -> Result<Self, InvalidLogConfig> {
        let (errors, categories, owner) = config.compile()?;
        let mut names: Vec<String> = config.categories.iter().map(|c| c.name.clone()).collect();
        names.push(config.fallback_category.clone());
        let stats = ClassifierStats { by_category: vec![0; names.len()], ..ClassifierStats::default() };
        Ok(ErrorClassifier {
            width: bucket_width(config.window),
            config,
            errors,
            categories,
            owner,
            names,
            keys: RecencyMap::default(),
            raised: HashSet::new(),
            line_clock: LineClock::default(),
            scratch: String::new(),
            stats,
        })
    }

    /// Reads lines' times with `clock` from now on (the default reads
    /// RFC 3164 times as UTC).
    pub fn set_line_clock(&mut self, clock: LineClock) {
        self.line_clock = clock;
    }

    /// Category names, the fallback last.
    pub fn categories(&self) -> &[String] {
        &self.names
    }

    /// Counters so far.
    pub fn stats(&self) -> ClassifierStats {
        ClassifierStats { keys: self.keys.len(), ..self.stats.clone() }
    }

    /// The category index (into [`categories`](Self::categories)) of an
    /// error line; `None` for a line that is not an error.
    pub fn classify(&self, message: &str) -> Option<usize> {
        if !self.errors.is_match(message) {
            return None;
        }
        let first = self.categories.matches(message).iter().map(|p| self.owner[p]).min();
        Some(first.unwrap_or(self.names.len() - 1))
    }

    /// Feeds one line seen at `now`; returns a finding when the line's key
    /// crosses a threshold or its raised finding is due a refresh.
    pub fn observe(&mut self, line: &LineRef<'_>, now: Timestamp) -> Option<Finding> {
        self.stats.lines += 1;
        let category = self.classify(line.message)?;
        self.stats.errors += 1;
        self.stats.by_category[category] += 1;

        let (namespace, kind, name, derived) = match (line.namespace, line.pod) {
            (Some(ns), Some(pod)) => match (self.config.key_by, deployment_of(pod)) {
                (KeyBy::Workload, Some(deployment)) => (ns, "deployment", deployment, true),
                _ => (ns, "pod", pod, false),
            },
            _ => ("", "log", "unattributed", false),
        };
        self.scratch.clear();
        for part in [namespace, "\0", kind, "\0", name] {
            self.scratch.push_str(part);
        }
        let judged = self.line_clock.judge(line, now);
        let stats = &mut self.stats;
        let at = judged.counted(&mut stats.at_line_time, &mut stats.time_out_of_bounds, &mut stats.too_old);
        if !self.keys.contains(self.scratch.as_str()) {
            if self.keys.len() >= self.config.max_keys {
                self.evict_oldest();
            }
            let state = KeyState {
                namespace: namespace.to_owned(),
                kind,
                name: name.to_owned(),
                derived,
                last_pod: String::new(),
                counts: vec![WindowCounter::default(); self.names.len()],
                samples: VecDeque::new(),
                raised: Hysteresis::new(now),
                seen: at,
                read_at: now,
            };
            self.keys.insert(self.scratch.clone(), state);
        }
        let key = self.keys.touch(self.scratch.as_str())?;
        if !key.counts[category].add(1, at, self.width) {
            self.stats.late += 1;
        }
        key.seen = key.seen.max(at);
        key.read_at = now;
        if let Some(pod) = line.pod
            && key.last_pod != pod
        {
            key.last_pod = pod.to_owned();
        }
        if self.config.max_samples > 0 {
            if key.samples.len() == self.config.max_samples {
                key.samples.pop_front();
            }
            key.samples.push_back(truncate(line.message, self.config.max_sample_len, Unit::Bytes).into_owned());
        }
        let found = judge(&self.config, &self.names, self.width, &mut self.stats, key, now);
        if found.as_ref().is_some_and(|f| f.state == FindingState::Active) && !self.raised.contains(&self.scratch) {
            self.raised.insert(self.scratch.clone());
        }
        found
    }

    /// Error counts per category in the window ending at `now`, for every
    /// workload with errors in it whose name is `name` (all when `None`).
    pub fn counts(&mut self, name: Option<&str>, now: Timestamp) -> Vec<WorkloadErrors> {
        let width = self.width;
        let mut out: Vec<WorkloadErrors> = self
            .keys
            .iter_mut()
            .map(|(_, k)| k)
            .filter(|k| name.is_none_or(|n| n == k.name))
            .map(|k| {
                let end = k.clock(now);
                WorkloadErrors {
                    namespace: k.namespace.clone(),
                    kind: k.kind,
                    name: k.name.clone(),
                    by_category: k.counts.iter_mut().map(|c| c.total(end, width)).collect(),
                }
            })
            .filter(|w| w.by_category.iter().any(|n| *n > 0))
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// The window counts are kept over.
    pub fn window(&self) -> std::time::Duration {
        self.config.window
    }

    /// Re-judges at `now` (windows slide without lines): clears the raised
    /// findings whose counts fell and refreshes the others, and forgets the
    /// keys whose windows emptied, oldest first, stopping at the first
    /// that is not idle. Call it every second or so.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Finding> {
        let mut out = Vec::new();
        let (config, names, width, stats) = (&self.config, &self.names, self.width, &mut self.stats);
        let keys = &mut self.keys;
        self.raised.retain(|id| {
            let Some(key) = keys.get_mut(id.as_str()) else { return false };
            if let Some(f) = judge(config, names, width, stats, key, now) {
                out.push(f);
            }
            key.raised.active_since.is_some()
        });
        while let Some((id, key)) = self.keys.oldest() {
            let end = key.clock(now);
            if self.raised.contains(id) || key.counts.iter_mut().any(|c| c.total(end, width) > 0) {
                break;
            }
            self.keys.pop_oldest();
        }
        out
    }

    /// Drops the least recently updated key.
    fn evict_oldest(&mut self) {
        if let Some((id, _)) = self.keys.pop_oldest() {
            self.raised.remove(&id);
            self.stats.evicted += 1;
        }
    }
}

fn judge(
    config: &ClassifierConfig,
    names: &[String],
    width: i64,
    stats: &mut ClassifierStats,
    key: &mut KeyState,
    now: Timestamp,
) -> Option<Finding> {
    let end = key.clock(now);
    let counts: Vec<u64> = key.counts.iter_mut().map(|c| c.total(end, width)).collect();
    let total: u64 = counts.iter().sum();
    let (judged, since) = key.raised.judge(total, config.raise_at, config.clear_below, config.refresh_every, now)?;
    let state = match judged {
        Judged::Raised => {
            stats.raised += 1;
            FindingState::Active
        }
        Judged::Refreshed => FindingState::Active,
        Judged::Cleared => {
            stats.cleared += 1;
            FindingState::Cleared
        }
    };
    Some(finding(config, names, key, &counts, total, state, since, now))
}

#[allow(clippy::too_many_arguments)]
fn finding(
    config: &ClassifierConfig,
    names: &[String],
    key: &KeyState,
    counts: &[u64],
    total: u64,
    state: FindingState,
    since: Timestamp,
    now: Timestamp,
) -> Finding {
    let target = match key.kind {
        "log" => "log/unattributed".to_owned(),
        kind => format!("{kind}/{}/{}", key.namespace, key.name),
    };
    let mut labels = BTreeMap::new();
    if !key.namespace.is_empty() {
        labels.insert("namespace".to_owned(), key.namespace.clone());
    }
    if key.kind != "log" {
        // Stands in for the pod's `app` label, which the log path does not
        // carry: the Deployment's name, or the pod's.
        labels.insert("app".to_owned(), key.name.clone());
        labels.insert(key.kind.to_owned(), key.name.clone());
    }
    let window = format_duration(config.window);
    let mut evidence: BTreeMap<String, String> =
        names.iter().zip(counts).map(|(n, c)| (n.clone(), c.to_string())).collect();
    evidence.insert("errors".to_owned(), total.to_string());
    evidence.insert("window".to_owned(), window.clone());
    evidence.insert("raise_at".to_owned(), config.raise_at.to_string());
    evidence.insert("clear_below".to_owned(), config.clear_below.to_string());
    if key.derived {
        evidence.insert("deployment_derived_from".to_owned(), "pod_name".to_owned());
    }
    if !key.last_pod.is_empty() {
        evidence.insert("last_pod".to_owned(), key.last_pod.clone());
    }
    for (i, s) in key.samples.iter().enumerate() {
        evidence.insert(format!("sample_{}", i + 1), s.clone());
    }
    let breakdown = names
        .iter()
        .zip(counts)
        .filter(|(_, c)| **c > 0)
        .map(|(n, c)| format!("{n} {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let summary = match state {
        FindingState::Active => format!("{total} error lines in {window} on {target} ({breakdown})"),
        FindingState::Cleared => format!("error lines back to {total} in {window} on {target}"),
    };
    Finding {
        kind: FindingKind::HighErrorRate,
        severity: config.severity,
        state,
        target,
        labels,
        evidence,
        summary,
        first_seen: since,
        last_seen: now,
        // Three missed refreshes and the coordinator stops believing it.
        expires_at: (state == FindingState::Active).then(|| now.plus(config.refresh_every * 3)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_yaml;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_millis(secs * 1000)
    }

    fn line<'a>(pod: &'a str, message: &'a str) -> LineRef<'a> {
        LineRef {
            namespace: Some("prod"),
            pod: Some(pod),
            container: Some("app"),
            file: None,
            timestamp: None,
            message,
        }
    }

    fn classifier() -> ErrorClassifier {
        ErrorClassifier::new(ClassifierConfig::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn default_categories_follow_the_seed() {
        let c = classifier();
        let category = |m: &str| c.classify(m).map(|i| c.categories()[i].as_str());
        assert_eq!(category("2026-01-01 ERROR Database connection refused"), Some("database"));
        assert_eq!(category("ERROR upstream request timed out after 30s"), Some("timeout"));
        assert_eq!(category("level=error msg=\"context deadline exceeded\""), Some("timeout"));
        assert_eq!(category("{\"level\":\"error\",\"msg\":\"Authentication failed\"}"), Some("authentication"));
        assert_eq!(category("java.lang.NullPointerException at Foo.bar"), Some("other"));
        assert_eq!(category("10.0.0.1 - - [x] \"GET / HTTP/1.1\" 503 12 \"-\" \"curl\""), Some("other"));
        // The first category wins, as in the seed's if/elif chain.
        assert_eq!(category("ERROR database timeout"), Some("database"));
        // Not errors: the category words alone do not make one.
        assert_eq!(category("INFO database migrated, timeout 30s"), None);
        assert_eq!(category("10.0.0.1 - - [x] \"GET / HTTP/1.1\" 200 12 \"-\" \"curl\""), None);
        assert_eq!(c.categories(), ["database", "timeout", "authentication", "other"]);
    }

    #[test]
    fn counts_per_workload_are_read_from_the_window_and_filtered_by_name() {
        let mut c = classifier();
        let api = "saas-idp-api-7d9f8b6c5d-x2k7p";
        c.observe(&line(api, "ERROR database connection lost"), at(0));
        c.observe(&line(api, "ERROR request timed out"), at(10));
        c.observe(&line("worker-0", "ERROR database"), at(10));
        let all = c.counts(None, at(20));
        assert_eq!(all.len(), 2, "{all:?}");
        let only = c.counts(Some("saas-idp-api"), at(20));
        assert_eq!(only.len(), 1);
        assert_eq!((only[0].kind, only[0].namespace.as_str()), ("deployment", "prod"));
        assert_eq!(only[0].by_category, [1, 1, 0, 0], "database, timeout, authentication, other");
        // A minute later the first error has left the window.
        assert_eq!(c.counts(Some("saas-idp-api"), at(65))[0].by_category, [0, 1, 0, 0]);
        assert!(c.counts(Some("saas-idp-api"), at(200)).is_empty(), "nothing left in the window");
    }

    #[test]
    fn errors_are_counted_per_deployment_with_thresholds_hysteresis_and_clearing() {
        let mut c = classifier();
        let (a, b) = ("saas-idp-api-7d9f8b6c5d-x2k7p", "saas-idp-api-7d9f8b6c5d-q9w8z");
        assert_eq!(c.observe(&line(a, "ERROR database connection lost"), at(0)), None);
        assert_eq!(c.observe(&line(b, "ERROR database connection lost"), at(0)), None);
        assert_eq!(c.observe(&line(a, "INFO request served"), at(1)), None);
        assert_eq!(c.observe(&line(b, "ERROR db pool: timeout"), at(1)), None);
        // Another workload's errors count apart.
        for i in 0..4 {
            assert_eq!(c.observe(&line("worker-0", "ERROR database"), at(i)), None);
        }
        assert_eq!(c.observe(&line(a, "ERROR SQLSTATE 08006"), at(30)), None);
        let raised = c.observe(&line(b, "ERROR request timed out"), at(30)).expect("raised at the fifth error");
        assert_eq!(
            (raised.kind, raised.state, raised.target.as_str()),
            (FindingKind::HighErrorRate, FindingState::Active, "deployment/prod/saas-idp-api")
        );
        assert_eq!(raised.labels["app"], "saas-idp-api");
        assert_eq!(raised.labels["deployment"], "saas-idp-api");
        assert_eq!(raised.labels["namespace"], "prod");
        let ev = &raised.evidence;
        assert_eq!(
            [&ev["database"], &ev["timeout"], &ev["authentication"], &ev["other"], &ev["errors"]],
            ["3", "2", "0", "0", "5"]
        );
        assert_eq!(ev["deployment_derived_from"], "pod_name");
        assert_eq!(ev["sample_3"], "ERROR request timed out");
        assert!(!ev.contains_key("sample_4"));
        assert_eq!(raised.first_seen, at(30));
        assert_eq!(raised.expires_at, Some(at(75)));
        assert_eq!(raised.validate(), Ok(()));

        // Raised once; sent again only when a refresh is due.
        assert_eq!(c.observe(&line(a, "ERROR database"), at(31)), None);
        let refreshed = c.tick(at(46));
        assert_eq!(refreshed.len(), 1);
        assert_eq!((refreshed[0].state, refreshed[0].first_seen), (FindingState::Active, at(30)));
        assert_eq!(refreshed[0].evidence["errors"], "6");

        // Below the raise threshold but not below clear_below: still raised.
        let held = c.tick(at(65));
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].state, held[0].evidence["errors"].as_str()), (FindingState::Active, "3"));

        // Below clear_below: cleared, once; then the key is forgotten.
        let cleared = c.tick(at(95));
        assert_eq!(cleared.len(), 1);
        assert_eq!((cleared[0].state, cleared[0].expires_at), (FindingState::Cleared, None));
        assert_eq!(cleared[0].target, "deployment/prod/saas-idp-api");
        assert!(c.tick(at(96)).is_empty());
        let stats = c.stats();
        assert_eq!((stats.raised, stats.cleared, stats.keys), (1, 1, 0));
        assert_eq!((stats.lines, stats.errors), (11, 10));
        assert_eq!(stats.by_category, [8, 2, 0, 0]);
    }

    #[test]
    fn pods_are_keys_of_their_own_when_asked_or_not_of_a_deployment() {
        let config =
            ClassifierConfig { key_by: KeyBy::Pod, raise_at: 1, clear_below: 1, ..ClassifierConfig::default() };
        let mut c = ErrorClassifier::new(config).unwrap_or_else(|e| panic!("{e}"));
        let f = c.observe(&line("saas-idp-api-7d9f8b6c5d-x2k7p", "ERROR x"), at(0)).expect("raised");
        assert_eq!(f.target, "pod/prod/saas-idp-api-7d9f8b6c5d-x2k7p");
        assert_eq!(f.labels["pod"], "saas-idp-api-7d9f8b6c5d-x2k7p");
        let f = c.observe(&LineRef::plain("ERROR from a plain file"), at(0)).expect("raised");
        assert_eq!(f.target, "log/unattributed");
        assert!(!f.labels.contains_key("app"));
    }

    #[test]
    fn the_least_recently_updated_key_is_evicted_and_a_backlog_is_judged_on_its_cri_times() {
        let config = ClassifierConfig { max_keys: 2, ..ClassifierConfig::default() };
        let mut c = ErrorClassifier::new(config).unwrap_or_else(|e| panic!("{e}"));
        for (i, pod) in ["a-0", "b-0", "a-0", "c-0"].iter().enumerate() {
            c.observe(&line(pod, "ERROR x"), at(i as i64));
        }
        let names: Vec<String> = c.counts(None, at(4)).into_iter().map(|w| w.name).collect();
        assert_eq!(names, vec!["a-0".to_owned(), "c-0".to_owned()], "b-0, updated least recently, went");

        // A day of one error an hour, read at once: never five in a minute.
        let mut c = classifier();
        let t0 = Timestamp::parse_rfc3339("2026-11-26T00:00:00Z").unwrap_or_else(|| panic!("t0"));
        let read = t0.plus(Duration::from_secs(24 * 3600 + 30));
        for hour in 0..24u64 {
            let written = t0.plus(Duration::from_secs(hour * 3600));
            let l = LineRef { timestamp: Some(written), ..line("api-0", "ERROR database down") };
            assert!(c.observe(&l, read).is_none(), "hour {hour}");
        }
        // Hour 0 was written more than a day before it was read: flagged.
        assert_eq!((c.stats().at_line_time, c.stats().too_old), (23, 1));
        // Five in a minute, read late, are found.
        let found: Vec<Finding> = (0..5u64)
            .filter_map(|i| {
                let written = t0.plus(Duration::from_secs(3600 * 23 + 30 + i * 5));
                c.observe(&LineRef { timestamp: Some(written), ..line("api-0", "ERROR database down") }, read)
            })
            .collect();
        assert_eq!(found.iter().map(|f| f.state).collect::<Vec<_>>(), vec![FindingState::Active]);
    }

    #[test]
    fn keys_and_samples_are_bounded() {
        let config = ClassifierConfig { max_keys: 2, max_sample_len: 16, ..ClassifierConfig::default() };
        let mut c = ErrorClassifier::new(config).unwrap_or_else(|e| panic!("{e}"));
        let long = format!("ERROR {}", "x".repeat(10_000));
        for (i, pod) in ["a-0", "b-0", "c-0"].iter().enumerate() {
            c.observe(&line(pod, &long), at(i as i64));
        }
        assert_eq!((c.stats().keys, c.stats().evicted), (2, 1));
        let raised: Vec<Finding> = (0..4).filter_map(|i| c.observe(&line("c-0", &long), at(10 + i))).collect();
        let f = raised.first().expect("c-0 raised");
        assert_eq!(f.target, "pod/prod/c-0");
        assert_eq!(f.evidence["sample_1"], format!("ERROR {}…", "x".repeat(10)));
    }

    #[test]
    fn an_invalid_configuration_names_the_field() {
        let mut config = ClassifierConfig::default();
        config.categories[1].patterns.push("(unclosed".into());
        let err = ErrorClassifier::new(config).expect_err("bad regex");
        assert_eq!(err.field, "categories[1].patterns[1]");
        assert!(err.message.contains("unclosed"), "{}", err.message);

        let config = ClassifierConfig { clear_below: 9, raise_at: 5, ..ClassifierConfig::default() };
        assert_eq!(config.validate().map_err(|e| e.field), Err("clear_below".to_owned()));

        let mut config = ClassifierConfig::default();
        config.categories[2].name = "errors".into();
        let err = config.validate().expect_err("reserved name");
        let err = err.in_file("agent.yaml", "logs.classify");
        assert_eq!(err.field, "logs.classify.categories[2].name");

        let err = parse_yaml::<ClassifierConfig>("agent.yaml", "window: soon\n").expect_err("bad duration");
        assert_eq!(err.field, "window");
        let err = parse_yaml::<ClassifierConfig>("agent.yaml", "raise_at: 5\ncategoris: []\n").expect_err("typo");
        assert_eq!(err.field, "categoris");

        let parsed: ClassifierConfig =
            parse_yaml("agent.yaml", "raise_at: 20\nclear_below: 5\nwindow: 2m\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((parsed.raise_at, parsed.window), (20, Duration::from_secs(120)));
        assert_eq!(parsed.categories, ClassifierConfig::default().categories);
    }
}
