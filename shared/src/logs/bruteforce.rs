//! Failed logins per source address (SEC-001).
//!
//! One Aho-Corasick scan for the literals every failure line carries
//! (`" 401 `, `Failed `, the JSON failure events) rejects the rest; a
//! `RegexSet` picks the format of a candidate, and only that format's regex
//! runs with captures.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use aho_corasick::AhoCorasick;
use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::net::{Cidr, any_contains, client_addr, parse_addr};
use super::window::{Hysteresis, Judged, WindowCounter, bucket_width};
use super::{InvalidLogConfig, LineRef, Scope};
use crate::config::{duration, format_duration};
use crate::finding::{Finding, FindingKind, FindingState, Severity};
use crate::text::{Unit, truncate};
use crate::time::Timestamp;

/// The log formats failed logins are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthFormat {
    /// nginx `combined` access log, optionally with `"$http_x_forwarded_for"`
    /// appended: 401 and 403 on a login path.
    Nginx,
    /// Envoy's default access log, optionally with the peer appended
    /// (`%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`): 401 and 403 on a login path.
    /// Without the peer a line is counted only from a source configured
    /// with `proxy_appends_peer` (see [`SourceSettings`]).
    Envoy,
    /// OpenSSH `Failed password for [invalid user] USER from IP port N`.
    Sshd,
    /// One JSON object per line with a failure event (see [`JsonAuthFields`]).
    Json,
}

impl AuthFormat {
    const ALL: [AuthFormat; 4] = [AuthFormat::Nginx, AuthFormat::Envoy, AuthFormat::Sshd, AuthFormat::Json];

    fn as_str(self) -> &'static str {
        match self {
            AuthFormat::Nginx => "nginx",
            AuthFormat::Envoy => "envoy",
            AuthFormat::Sshd => "sshd",
            AuthFormat::Json => "json",
        }
    }
}

/// Field names of JSON application logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonAuthFields {
    /// The field naming the event.
    pub event_field: String,
    /// Values of `event_field` that are failed logins.
    pub failure_events: Vec<String>,
    /// Fields holding the peer's address, the first present wins.
    pub ip_fields: Vec<String>,
    /// Fields holding the account name, the first present wins.
    pub user_fields: Vec<String>,
    /// Fields holding the `X-Forwarded-For` header the peer sent.
    pub forwarded_for_fields: Vec<String>,
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

impl Default for JsonAuthFields {
    fn default() -> Self {
        JsonAuthFields {
            event_field: "event".to_owned(),
            failure_events: strings(&["login_failed", "auth_failed", "authentication_failed"]),
            ip_fields: strings(&["ip", "client_ip", "remote_addr"]),
            user_fields: strings(&["user", "username"]),
            forwarded_for_fields: strings(&["x_forwarded_for", "forwarded_for"]),
        }
    }
}

/// Settings for the lines of some sources: which formats they are read
/// in, and what their forwarding header means.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceSettings {
    /// The sources these settings apply to.
    #[serde(rename = "match")]
    pub scope: Scope,
    /// Formats read from these sources, instead of the detector's
    /// `formats`.
    pub formats: Option<Vec<AuthFormat>>,
    /// The proxy writing these lines appends the peer it saw to
    /// `X-Forwarded-For` before logging it (Envoy with
    /// `use_remote_address: true`), so that on a line without a peer field
    /// the header's right-most entry is the peer. Without this a line that
    /// carries no peer is never counted: its header may be the client's
    /// alone, and the client writes any address there.
    pub proxy_appends_peer: bool,
}

/// Configuration of the [`BruteForceDetector`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BruteForceConfig {
    /// The sliding window failures are counted over.
    #[serde(with = "duration")]
    pub window: Duration,
    /// A finding is raised when one address has at least this many failures
    /// in the window.
    pub raise_at: u64,
    /// A raised finding is cleared when the count falls below this.
    pub clear_below: u64,
    /// How often a raised finding is sent again with fresh counts.
    #[serde(with = "duration")]
    pub refresh_every: Duration,
    /// Formats read.
    pub formats: Vec<AuthFormat>,
    /// HTTP paths that are logins: a path counts when it equals one or
    /// continues it after a `/` (the query is ignored).
    pub login_paths: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Per-source settings; the first whose `match` selects a line applies.
    pub sources: Vec<SourceSettings>,
    /// Addresses never reported.
    pub allow_list: Vec<Cidr>,
    /// The platform's own ranges (nodes, pods, services), never reported.
    pub infrastructure: Vec<Cidr>,
    /// JSON field names.
    pub json: JsonAuthFields,
    /// Most addresses tracked; the least recently updated is dropped beyond.
    pub max_ips: usize,
    /// Most account names kept per address.
    pub max_users: usize,
    /// Sample lines kept per address (the newest).
    pub max_samples: usize,
    /// Longest sample line, bytes.
    pub max_sample_len: usize,
    /// Severity of the findings.
    pub severity: Severity,
}

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().filter_map(|s| s.parse().ok()).collect()
}

impl Default for BruteForceConfig {
    fn default() -> Self {
        BruteForceConfig {
            window: Duration::from_secs(300),
            raise_at: 10,
            clear_below: 3,
            refresh_every: Duration::from_secs(30),
            formats: AuthFormat::ALL.to_vec(),
            login_paths: strings(&["/login", "/auth", "/oauth/token", "/api/v1/auth"]),
            trusted_proxies: Vec::new(),
            sources: Vec::new(),
            allow_list: Vec::new(),
            infrastructure: cidrs(&["127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10"]),
            json: JsonAuthFields::default(),
            max_ips: 10_000,
            max_users: 10,
            max_samples: 3,
            max_sample_len: 240,
            severity: Severity::Critical,
        }
    }
}

// Status 401 or 403 only: successful logins (2xx, 3xx) never match. Both
// access-log patterns describe the whole line, start to end: nginx writes a
// `"` inside a field as `\x22`, so the quoted fields can be counted, and
// extra unquoted fields may follow. Envoy writes headers as they came, so a
// client can put quotes into its user agent and shift the fields after it;
// a line with more quotes than the format has does not match at all, and
// the peer is read from the end of the line, after the last quote, where
// only Envoy writes.
const NGINX: &str = r#"^(?P<peer>[0-9A-Fa-f.:]+) \S+ (?P<user>\S+) \[[^\]]*\] "[A-Z]+ (?P<path>[^ "]+)[^"]*" (?P<status>40[13]) \S+ "[^"]*" "[^"]*"(?: "(?P<xff>[^"]*)")?(?: [^"]*)?$"#;
const ENVOY: &str = r#"^\[[^\]]+\] "[A-Z]+ (?P<path>[^ "]+)[^"]*" (?P<status>40[13]) \S+ \S+ \S+ \S+ \S+ "(?P<xff>[^"]*)" "[^"]*" "[^"]*" "[^"]*" "[^"]*"(?: (?P<peer>\S+))?$"#;
const SSHD: &str = r"Failed (?:password|publickey|keyboard-interactive/pam) for (?:invalid user )?(?P<user>\S*) from (?P<peer>[0-9A-Fa-f.:]+) port [0-9]+";

fn prefilter_literals(format: AuthFormat, json: &JsonAuthFields) -> Vec<String> {
    match format {
        AuthFormat::Nginx | AuthFormat::Envoy => strings(&["\" 401 ", "\" 403 "]),
        AuthFormat::Sshd => strings(&["Failed "]),
        AuthFormat::Json => json.failure_events.iter().map(|e| format!("\"{e}\"")).collect(),
    }
}

fn json_regex(json: &JsonAuthFields) -> String {
    let events = json.failure_events.iter().map(|e| regex::escape(e)).collect::<Vec<_>>().join("|");
    format!(r#""{}"\s*:\s*"(?:{events})""#, regex::escape(&json.event_field))
}

impl BruteForceConfig {
    /// Checks the configuration; the error names the first bad field.
    pub fn validate(&self) -> Result<(), InvalidLogConfig> {
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
        if self.formats.is_empty() && self.sources.iter().all(|s| s.formats.as_ref().is_none_or(Vec::is_empty)) {
            return Err(InvalidLogConfig::new("formats", "must name at least one of nginx, envoy, sshd, json"));
        }
        for (i, source) in self.sources.iter().enumerate() {
            source.scope.validate(&format!("sources[{i}].match"))?;
            if source.scope.is_everything() {
                return Err(InvalidLogConfig::new(
                    format!("sources[{i}].match"),
                    "selects every line: name namespaces, apps, containers or files",
                ));
            }
        }
        for (i, p) in self.login_paths.iter().enumerate() {
            if !p.starts_with('/') || p.contains(['?', ' ']) {
                return Err(InvalidLogConfig::new(
                    format!("login_paths[{i}]"),
                    format!("`{p}` must be a path starting with / without a query"),
                ));
            }
        }
        let uses_http = self.all_formats().iter().any(|f| matches!(f, AuthFormat::Nginx | AuthFormat::Envoy));
        if uses_http && self.login_paths.is_empty() {
            return Err(InvalidLogConfig::new("login_paths", "must name at least one path for nginx or envoy"));
        }
        let json = &self.json;
        if self.all_formats().contains(&AuthFormat::Json) {
            if json.event_field.is_empty() {
                return Err(InvalidLogConfig::new("json.event_field", "must not be empty"));
            }
            if json.failure_events.is_empty() || json.failure_events.iter().any(String::is_empty) {
                return Err(InvalidLogConfig::new("json.failure_events", "must name at least one non-empty event"));
            }
            if json.ip_fields.is_empty() {
                return Err(InvalidLogConfig::new("json.ip_fields", "must name at least one field"));
            }
        }
        if self.max_ips == 0 {
            return Err(InvalidLogConfig::new("max_ips", "must be at least 1"));
        }
        if self.max_users > 100 {
            return Err(InvalidLogConfig::new("max_users", "at most 100"));
        }
        if self.max_samples > 10 {
            return Err(InvalidLogConfig::new("max_samples", "at most 10"));
        }
        if !(16..=4096).contains(&self.max_sample_len) {
            return Err(InvalidLogConfig::new("max_sample_len", "must be between 16 and 4096"));
        }
        Ok(())
    }

    /// Every format read from some source, sorted.
    fn all_formats(&self) -> Vec<AuthFormat> {
        let mut all = self.formats.clone();
        for s in &self.sources {
            all.extend(s.formats.iter().flatten());
        }
        all.sort();
        all.dedup();
        all
    }
}

/// What the detector has seen, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BruteForceStats {
    /// Lines looked at.
    pub lines: u64,
    /// Lines the literal prefilter let through.
    pub candidates: u64,
    /// Failed logins counted against an address.
    pub failures: u64,
    /// Failed logins from allow-listed, infrastructure or trusted-proxy
    /// addresses: never counted.
    pub suppressed: u64,
    /// Lines of a known format that are not failed logins (another path, a
    /// JSON object without the fields).
    pub ignored: u64,
    /// Failed logins whose source is not a valid address.
    pub invalid_address: u64,
    /// Failed logins on a line without a peer address from a source not
    /// configured to believe its forwarding header: never counted.
    pub no_peer: u64,
    /// Addresses currently tracked.
    pub tracked: usize,
    /// Addresses dropped to stay within `max_ips`.
    pub evicted: u64,
    /// Findings raised (not counting refreshes).
    pub raised: u64,
    /// Findings cleared.
    pub cleared: u64,
}

#[derive(Debug)]
struct IpState {
    counts: WindowCounter,
    users: BTreeSet<String>,
    users_dropped: u64,
    formats: BTreeSet<AuthFormat>,
    samples: VecDeque<String>,
    last_source: Option<String>,
    raised: Hysteresis,
    last_update: Timestamp,
}

/// A failed login read from a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// The format it was read from.
    pub format: AuthFormat,
    /// The client, after `X-Forwarded-For` from trusted proxies.
    pub source: IpAddr,
    /// The account, when the line names one.
    pub user: Option<String>,
}

/// Why a line is not counted against an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    NotCandidate,
    Ignored,
    InvalidAddress,
    NoPeer,
}

/// Counts failed logins per source address and raises `brute_force`.
#[derive(Debug)]
pub struct BruteForceDetector {
    config: BruteForceConfig,
    prefilter: AhoCorasick,
    set: RegexSet,
    /// The format of each pattern of `set`, and its regex.
    rules: Vec<(AuthFormat, Regex)>,
    width: i64,
    ips: HashMap<IpAddr, IpState>,
    stats: BruteForceStats,
}

impl BruteForceDetector {
    /// A detector for `config`, or the first field that is wrong.
    pub fn new(config: BruteForceConfig) -> Result<Self, InvalidLogConfig> {
        config.validate()?;
        let formats = config.all_formats();
        let mut literals = Vec::new();
        let mut rules = Vec::new();
        for f in formats {
            literals.extend(prefilter_literals(f, &config.json));
            let pattern = match f {
                AuthFormat::Nginx => NGINX.to_owned(),
                AuthFormat::Envoy => ENVOY.to_owned(),
                AuthFormat::Sshd => SSHD.to_owned(),
                AuthFormat::Json => json_regex(&config.json),
            };
            let re = Regex::new(&pattern).map_err(|e| InvalidLogConfig::new("json", e))?;
            rules.push((f, re));
        }
        let prefilter = AhoCorasick::new(&literals).map_err(|e| InvalidLogConfig::new("json.failure_events", e))?;
        let set =
            RegexSet::new(rules.iter().map(|(_, re)| re.as_str())).map_err(|e| InvalidLogConfig::new("json", e))?;
        Ok(BruteForceDetector {
            width: bucket_width(config.window),
            config,
            prefilter,
            set,
            rules,
            ips: HashMap::new(),
            stats: BruteForceStats::default(),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> BruteForceStats {
        BruteForceStats { tracked: self.ips.len(), ..self.stats.clone() }
    }

    /// Addresses tracked with their failures in the window ending at `now`,
    /// highest first.
    pub fn failures_by_source(&mut self, now: Timestamp) -> Vec<(IpAddr, u64)> {
        let width = self.width;
        let mut out: Vec<(IpAddr, u64)> =
            self.ips.iter_mut().map(|(ip, s)| (*ip, s.counts.total(now, width))).filter(|(_, n)| *n > 0).collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// The failed login a line records, if it records one, with its
    /// source resolved; allow-lists are not applied here.
    pub fn parse(&self, line: &LineRef<'_>) -> Option<AuthFailure> {
        self.parse_inner(line).ok()
    }

    fn parse_inner(&self, line: &LineRef<'_>) -> Result<AuthFailure, Reject> {
        let message = line.message;
        if !self.prefilter.is_match(message) {
            return Err(Reject::NotCandidate);
        }
        let settings = self.config.sources.iter().find(|s| s.scope.matches(line));
        let formats = settings.and_then(|s| s.formats.as_deref()).unwrap_or(&self.config.formats);
        let index =
            self.set.matches(message).iter().find(|i| formats.contains(&self.rules[*i].0)).ok_or(Reject::Ignored)?;
        let (format, re) = &self.rules[index];
        let format = *format;
        if format == AuthFormat::Json {
            return self.parse_json(message, settings);
        }
        let caps = re.captures(message).ok_or(Reject::Ignored)?;
        let text = |name: &str| caps.name(name).map(|m| m.as_str());
        if let Some(path) = text("path")
            && !self.is_login_path(path)
        {
            return Err(Reject::Ignored);
        }
        let source = self.client(text("peer"), text("xff"), settings)?;
        let user = text("user").filter(|u| *u != "-" && !u.is_empty()).map(str::to_owned);
        Ok(AuthFailure { format, source, user })
    }

    /// The client of a line, from its peer and forwarding header.
    fn client(
        &self,
        peer: Option<&str>,
        forwarded_for: Option<&str>,
        settings: Option<&SourceSettings>,
    ) -> Result<IpAddr, Reject> {
        let trusted = &self.config.trusted_proxies;
        match peer {
            Some(peer) => {
                let peer = parse_addr(peer).ok_or(Reject::InvalidAddress)?;
                client_addr(peer, forwarded_for, trusted).ok_or(Reject::InvalidAddress)
            }
            // The right-most entry was written by the proxy itself only when
            // the source says so; otherwise all of it may be the client's.
            None if settings.is_some_and(|s| s.proxy_appends_peer) => {
                let header = forwarded_for.filter(|x| !x.is_empty() && *x != "-").ok_or(Reject::NoPeer)?;
                let (rest, last) = header.rsplit_once(',').map_or((None, header), |(r, l)| (Some(r), l));
                let peer = parse_addr(last).ok_or(Reject::InvalidAddress)?;
                client_addr(peer, rest, trusted).ok_or(Reject::InvalidAddress)
            }
            None => Err(Reject::NoPeer),
        }
    }

    fn parse_json(&self, message: &str, settings: Option<&SourceSettings>) -> Result<AuthFailure, Reject> {
        let fields = &self.config.json;
        let object: serde_json::Map<String, Value> =
            serde_json::from_str(message.trim()).map_err(|_| Reject::Ignored)?;
        let event = object.get(&fields.event_field).and_then(Value::as_str).ok_or(Reject::Ignored)?;
        if !fields.failure_events.iter().any(|e| e == event) {
            return Err(Reject::Ignored);
        }
        let first = |names: &[String]| names.iter().find_map(|n| object.get(n).and_then(Value::as_str));
        let source = self.client(first(&fields.ip_fields), first(&fields.forwarded_for_fields), settings)?;
        let user = first(&fields.user_fields).filter(|u| !u.is_empty()).map(str::to_owned);
        Ok(AuthFailure { format: AuthFormat::Json, source, user })
    }

    fn is_login_path(&self, path: &str) -> bool {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        self.config.login_paths.iter().any(|p| {
            path.strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || p.ends_with('/'))
        })
    }

    /// Whether `ip` is one that is never reported.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        let c = &self.config;
        any_contains(&c.allow_list, ip) || any_contains(&c.infrastructure, ip) || any_contains(&c.trusted_proxies, ip)
    }

    /// Feeds one line seen at `now`; returns a finding when its source
    /// crosses the threshold or its raised finding is due a refresh.
    pub fn observe(&mut self, line: &LineRef<'_>, now: Timestamp) -> Option<Finding> {
        self.stats.lines += 1;
        let failure = match self.parse_inner(line) {
            Ok(f) => f,
            Err(Reject::NotCandidate) => return None,
            Err(Reject::Ignored) => {
                self.stats.candidates += 1;
                self.stats.ignored += 1;
                return None;
            }
            Err(Reject::InvalidAddress) => {
                self.stats.candidates += 1;
                self.stats.invalid_address += 1;
                return None;
            }
            Err(Reject::NoPeer) => {
                self.stats.candidates += 1;
                self.stats.no_peer += 1;
                return None;
            }
        };
        self.stats.candidates += 1;
        if self.is_exempt(failure.source) {
            self.stats.suppressed += 1;
            return None;
        }
        self.stats.failures += 1;
        if !self.ips.contains_key(&failure.source) && self.ips.len() >= self.config.max_ips {
            self.evict_oldest();
        }
        let state = self.ips.entry(failure.source).or_insert_with(|| IpState {
            counts: WindowCounter::default(),
            users: BTreeSet::new(),
            users_dropped: 0,
            formats: BTreeSet::new(),
            samples: VecDeque::new(),
            last_source: None,
            raised: Hysteresis::new(now),
            last_update: now,
        });
        state.counts.add(1, now, self.width);
        state.last_update = now;
        state.formats.insert(failure.format);
        if let Some(user) = failure.user {
            // The list travels comma-separated (the runbook scopes session
            // deletion to it): names that could split or smuggle are dropped.
            let usable = user.len() <= 64 && !user.contains(',') && !user.chars().any(char::is_control);
            if usable && (state.users.contains(&user) || state.users.len() < self.config.max_users) {
                state.users.insert(user);
            } else {
                state.users_dropped += 1;
            }
        }
        if let (Some(ns), Some(pod)) = (line.namespace, line.pod) {
            state.last_source = Some(format!("{ns}/{pod}"));
        }
        if self.config.max_samples > 0 {
            if state.samples.len() == self.config.max_samples {
                state.samples.pop_front();
            }
            state.samples.push_back(truncate(line.message, self.config.max_sample_len, Unit::Bytes).into_owned());
        }
        judge(&self.config, self.width, &mut self.stats, failure.source, state, now)
    }

    /// Re-judges every address at `now` (windows slide without lines):
    /// clears findings whose counts fell, refreshes the others, forgets idle
    /// addresses. Call it every second or so.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Finding> {
        let mut out = Vec::new();
        let (config, width, stats) = (&self.config, self.width, &mut self.stats);
        self.ips.retain(|ip, state| {
            if let Some(f) = judge(config, width, stats, *ip, state, now) {
                out.push(f);
            }
            state.raised.active_since.is_some() || state.counts.total(now, width) > 0
        });
        out
    }

    fn evict_oldest(&mut self) {
        let oldest = self.ips.iter().min_by_key(|(_, s)| s.last_update).map(|(ip, _)| *ip);
        if let Some(ip) = oldest {
            self.ips.remove(&ip);
            self.stats.evicted += 1;
        }
    }
}

fn judge(
    config: &BruteForceConfig,
    width: i64,
    stats: &mut BruteForceStats,
    ip: IpAddr,
    state: &mut IpState,
    now: Timestamp,
) -> Option<Finding> {
    let failures = state.counts.total(now, width);
    let (judged, since) =
        state.raised.judge(failures, config.raise_at, config.clear_below, config.refresh_every, now)?;
    let finding_state = match judged {
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
    let window = format_duration(config.window);
    let users = state.users.iter().cloned().collect::<Vec<_>>().join(",");
    let mut evidence = BTreeMap::from([
        ("source_ip".to_owned(), ip.to_string()),
        ("failures".to_owned(), failures.to_string()),
        ("window".to_owned(), window.clone()),
        ("raise_at".to_owned(), config.raise_at.to_string()),
        ("clear_below".to_owned(), config.clear_below.to_string()),
        ("users".to_owned(), users.clone()),
        ("users_dropped".to_owned(), state.users_dropped.to_string()),
        ("formats".to_owned(), state.formats.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(",")),
    ]);
    if let Some(source) = &state.last_source {
        evidence.insert("last_pod".to_owned(), source.clone());
    }
    for (i, s) in state.samples.iter().enumerate() {
        evidence.insert(format!("sample_{}", i + 1), s.clone());
    }
    let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
    let summary = match finding_state {
        FindingState::Active => {
            let users = if users.is_empty() { "no named account".to_owned() } else { users };
            format!("{failures} failed logins in {window} from {ip} ({users})")
        }
        FindingState::Cleared => format!("failed logins from {ip} back to {failures} in {window}"),
    };
    Some(Finding {
        kind: FindingKind::BruteForce,
        severity: config.severity,
        state: finding_state,
        target: format!("ip/{ip}"),
        labels: BTreeMap::from([("source_ip".to_owned(), ip.to_string()), ("ip_family".to_owned(), family.to_owned())]),
        evidence,
        summary,
        first_seen: since,
        last_seen: now,
        // Three missed refreshes and the coordinator stops believing it.
        expires_at: (finding_state == FindingState::Active).then(|| now.plus(config.refresh_every * 3)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_yaml;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_millis(secs * 1000)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn detector(config: BruteForceConfig) -> BruteForceDetector {
        BruteForceDetector::new(config).unwrap_or_else(|e| panic!("{e}"))
    }

    fn nginx(peer: &str, user: &str, request: &str, status: u16, xff: Option<&str>) -> String {
        let mut line = format!(
            "{peer} - {user} [26/Nov/2026:10:00:00 +0000] \"{request} HTTP/1.1\" {status} 153 \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\""
        );
        if let Some(xff) = xff {
            line.push_str(&format!(" \"{xff}\""));
        }
        line
    }

    fn failure(d: &BruteForceDetector, message: &str) -> Option<(AuthFormat, IpAddr, Option<String>)> {
        d.parse(&LineRef::plain(message)).map(|f| (f.format, f.source, f.user))
    }

    #[test]
    fn each_format_is_parsed() {
        let d = detector(BruteForceConfig::default());
        let nginx_line = nginx("203.0.113.9", "alice", "POST /login", 401, None);
        assert_eq!(failure(&d, &nginx_line), Some((AuthFormat::Nginx, ip("203.0.113.9"), Some("alice".into()))));
        let nginx_query = nginx("203.0.113.9", "-", "POST /api/v1/auth/token?x=1", 403, Some("-"));
        assert_eq!(failure(&d, &nginx_query), Some((AuthFormat::Nginx, ip("203.0.113.9"), None)));
        // ingress-nginx's format: unquoted fields after the user agent.
        let ingress = nginx("203.0.113.9", "-", "POST /login", 401, None)
            + " 512 0.003 [default-api-80] [] 10.244.1.5:8080 153 0.003 401 4f2c9a";
        assert_eq!(failure(&d, &ingress), Some((AuthFormat::Nginx, ip("203.0.113.9"), None)));

        // Envoy's default format has no peer: never counted unless the
        // source is configured (see the forwarded-for tests).
        let envoy = "[2026-11-26T10:00:00.000Z] \"POST /oauth/token HTTP/1.1\" 401 - 154 0 12 11 \"198.51.100.4\" \"curl/8.0\" \"c2f1\" \"idp.example.com\" \"10.1.2.3:8080\"";
        assert_eq!(failure(&d, envoy), None);
        let envoy_peer = "[2026-11-26T10:00:00.000Z] \"POST /auth HTTP/2\" 403 - 154 0 12 11 \"-\" \"curl/8.0\" \"c2f1\" \"idp.example.com\" \"10.1.2.3:8080\" 198.51.100.5:51234";
        assert_eq!(failure(&d, envoy_peer), Some((AuthFormat::Envoy, ip("198.51.100.5"), None)));

        let sshd =
            "Nov 26 10:00:00 node-1 sshd[4121]: Failed password for invalid user admin from 192.0.2.44 port 50122 ssh2";
        assert_eq!(failure(&d, sshd), Some((AuthFormat::Sshd, ip("192.0.2.44"), Some("admin".into()))));
        let sshd_root = "sshd[1]: Failed password for root from 192.0.2.45 port 22 ssh2";
        assert_eq!(failure(&d, sshd_root), Some((AuthFormat::Sshd, ip("192.0.2.45"), Some("root".into()))));

        let json = r#"{"ts":"2026-11-26T10:00:00Z","event":"login_failed","ip":"192.0.2.80","user":"bob"}"#;
        assert_eq!(failure(&d, json), Some((AuthFormat::Json, ip("192.0.2.80"), Some("bob".into()))));
        let json_spaced = r#"{"event" : "auth_failed", "client_ip": "192.0.2.81", "username": "carol"}"#;
        assert_eq!(failure(&d, json_spaced), Some((AuthFormat::Json, ip("192.0.2.81"), Some("carol".into()))));

        // Not failed logins: success, another path, another status, another event.
        assert_eq!(failure(&d, &nginx("203.0.113.9", "alice", "POST /login", 200, None)), None);
        assert_eq!(failure(&d, &nginx("203.0.113.9", "alice", "POST /login", 302, None)), None);
        assert_eq!(failure(&d, &nginx("203.0.113.9", "-", "GET /admin", 401, None)), None);
        assert_eq!(failure(&d, &nginx("203.0.113.9", "-", "GET /loginx", 401, None)), None);
        assert_eq!(failure(&d, &nginx("203.0.113.9", "-", "POST /login", 404, None)), None);
        assert_eq!(failure(&d, r#"{"event":"login_succeeded","ip":"192.0.2.80"}"#), None);
        assert_eq!(failure(&d, "sshd[1]: Accepted password for root from 192.0.2.45 port 22 ssh2"), None);
        // A failure whose address is not one.
        assert_eq!(failure(&d, "sshd[1]: Failed password for root from 999.2.3.4 port 22 ssh2"), None);
    }

    #[test]
    fn ipv6_sources_are_parsed_and_counted() {
        let mut d = detector(BruteForceConfig { raise_at: 3, ..BruteForceConfig::default() });
        let lines = [
            nginx("2001:db8::bad", "-", "POST /login", 401, None),
            "sshd[7]: Failed password for invalid user oracle from 2001:db8::bad port 3390 ssh2".to_owned(),
            r#"{"event":"login_failed","ip":"[2001:db8::bad]:443","user":"dave"}"#.to_owned(),
        ];
        let found: Vec<Finding> = lines.iter().filter_map(|l| d.observe(&LineRef::plain(l), at(1))).collect();
        assert_eq!(found.len(), 1);
        let f = &found[0];
        assert_eq!((f.kind, f.target.as_str()), (FindingKind::BruteForce, "ip/2001:db8::bad"));
        assert_eq!(f.labels["source_ip"], "2001:db8::bad");
        assert_eq!(f.labels["ip_family"], "ipv6");
        assert_eq!(f.evidence["failures"], "3");
        assert_eq!(f.evidence["users"], "dave,oracle");
        assert_eq!(f.evidence["formats"], "nginx,sshd,json");
        assert_eq!(f.validate(), Ok(()));
    }

    #[test]
    fn a_forged_forwarded_for_from_an_untrusted_peer_is_ignored() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}"))];
        let d = detector(BruteForceConfig { trusted_proxies: trusted, ..BruteForceConfig::default() });
        // The attacker writes someone else's address, and a trusted-looking
        // chain, into the header: the peer is the source all the same.
        let forged = nginx("198.51.100.66", "-", "POST /login", 401, Some("192.0.2.1, 10.0.0.3"));
        assert_eq!(failure(&d, &forged).map(|f| f.1), Some(ip("198.51.100.66")));
        let forged_json = r#"{"event":"login_failed","ip":"198.51.100.66","x_forwarded_for":"192.0.2.1"}"#;
        assert_eq!(failure(&d, forged_json).map(|f| f.1), Some(ip("198.51.100.66")));
        // No peer at all: the header alone is never believed.
        let header_only = r#"{"event":"login_failed","x_forwarded_for":"192.0.2.1"}"#;
        assert_eq!(failure(&d, header_only), None);
    }

    fn envoy(xff: &str, user_agent: &str, peer: Option<&str>) -> String {
        let mut line = format!(
            "[2026-11-26T10:00:00.000Z] \"POST /login HTTP/1.1\" 401 - 154 0 12 11 \"{xff}\" \"{user_agent}\" \"c2f1\" \"idp.example.com\" \"10.1.2.3:8080\""
        );
        if let Some(peer) = peer {
            line.push(' ');
            line.push_str(peer);
        }
        line
    }

    #[test]
    fn a_line_without_a_peer_never_trusts_its_header_unless_its_source_says_so() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}"))];
        let edge = Scope { namespaces: vec!["edge".into()], ..Scope::default() };
        let mut d = detector(BruteForceConfig {
            trusted_proxies: trusted,
            sources: vec![SourceSettings { scope: edge, formats: None, proxy_appends_peer: true }],
            raise_at: 1,
            clear_below: 0,
            ..BruteForceConfig::default()
        });
        let in_edge = |message| LineRef { namespace: Some("edge"), pod: Some("envoy-0"), ..LineRef::plain(message) };
        let elsewhere = |message| LineRef { namespace: Some("shop"), pod: Some("envoy-0"), ..LineRef::plain(message) };
        // Envoy's default format: the only address is the header, which the
        // client wrote when Envoy appends nothing. Never counted, whoever
        // it names.
        let forged = envoy("192.0.2.1", "curl/8.0", None);
        assert_eq!(d.parse(&elsewhere(&forged)), None);
        assert!(d.observe(&elsewhere(&forged), at(0)).is_none());
        assert_eq!((d.stats().no_peer, d.stats().failures), (1, 0));
        // A source whose Envoy appends the peer: the right-most entry is
        // the peer, the entries left of it are the client's own.
        let appended = envoy("192.0.2.1, 203.0.113.5", "curl/8.0", None);
        assert_eq!(d.parse(&in_edge(&appended)).map(|f| f.source), Some(ip("203.0.113.5")));
        // Behind a trusted proxy, the walk goes on to the first untrusted hop.
        let behind = envoy("192.0.2.1, 203.0.113.6, 10.0.0.9", "curl/8.0", None);
        assert_eq!(d.parse(&in_edge(&behind)).map(|f| f.source), Some(ip("203.0.113.6")));
        // With the peer appended to the line, every source reads it.
        let with_peer = envoy("192.0.2.1", "curl/8.0", Some("198.51.100.5:51234"));
        assert_eq!(d.parse(&elsewhere(&with_peer)).map(|f| f.source), Some(ip("198.51.100.5")));
        // A user agent with quotes in it cannot pass for the peer field:
        // the line no longer has the format's shape and is not read.
        let injected = envoy("-", "x\" \"r\" \"a\" \"u\" 192.0.2.9:1 \"y", Some("198.51.100.5:51234"));
        assert_eq!(d.parse(&elsewhere(&injected)), None);
        let injected = envoy("-", "x\" \"r\" \"a\" \"u\" 192.0.2.9:1", None);
        assert_eq!(d.parse(&in_edge(&injected)), None);
    }

    #[test]
    fn per_source_formats_replace_the_global_ones() {
        let only_sshd = Scope { files: vec!["/var/log/auth.log".into()], ..Scope::default() };
        let d = detector(BruteForceConfig {
            formats: vec![AuthFormat::Nginx],
            sources: vec![SourceSettings {
                scope: only_sshd,
                formats: Some(vec![AuthFormat::Sshd]),
                proxy_appends_peer: false,
            }],
            ..BruteForceConfig::default()
        });
        let sshd = "sshd[1]: Failed password for root from 192.0.2.45 port 22 ssh2";
        let access = nginx("203.0.113.9", "-", "POST /login", 401, None);
        let auth_log = |message| LineRef { file: Some("/var/log/auth.log"), ..LineRef::plain(message) };
        assert_eq!(d.parse(&auth_log(sshd)).map(|f| f.source), Some(ip("192.0.2.45")));
        assert_eq!(d.parse(&auth_log(&access)), None, "nginx is not read from the auth log");
        assert_eq!(d.parse(&LineRef::plain(sshd)), None, "sshd is read from the auth log only");
        assert_eq!(d.parse(&LineRef::plain(&access)).map(|f| f.source), Some(ip("203.0.113.9")));
    }

    #[test]
    fn a_trusted_proxys_forwarded_for_is_honoured() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}"))];
        let mut d = detector(BruteForceConfig {
            trusted_proxies: trusted,
            raise_at: 2,
            clear_below: 1,
            ..BruteForceConfig::default()
        });
        // The right-most untrusted address: the left part was written by
        // the client and is not believed.
        let line = nginx("10.0.0.7", "-", "POST /login", 401, Some("192.0.2.1, 203.0.113.77, 10.0.0.3"));
        assert_eq!(failure(&d, &line).map(|f| f.1), Some(ip("203.0.113.77")));
        let json = r#"{"event":"login_failed","ip":"10.0.0.7","x_forwarded_for":"203.0.113.77"}"#;
        assert!(d.observe(&LineRef::plain(&line), at(0)).is_none());
        let f = d.observe(&LineRef::plain(json), at(0)).expect("raised");
        assert_eq!(f.labels["source_ip"], "203.0.113.77");
        // The proxy itself, with no header, is never the attacker.
        let bare = nginx("10.0.0.7", "-", "POST /login", 401, None);
        assert!(d.observe(&LineRef::plain(&bare), at(0)).is_none());
        assert_eq!(d.stats().suppressed, 1);
    }

    #[test]
    fn allow_listed_and_infrastructure_attackers_raise_nothing() {
        let allow = vec!["203.0.113.0/24".parse().unwrap_or_else(|e| panic!("{e}"))];
        let mut d = detector(BruteForceConfig { allow_list: allow, raise_at: 3, ..BruteForceConfig::default() });
        for i in 0..50 {
            let l = nginx("203.0.113.10", "-", "POST /login", 401, None);
            assert!(d.observe(&LineRef::plain(&l), at(i)).is_none());
            let l = format!("sshd[1]: Failed password for root from 127.0.0.1 port {i} ssh2");
            assert!(d.observe(&LineRef::plain(&l), at(i)).is_none());
            let l = format!("sshd[1]: Failed password for root from fe80::1 port {i} ssh2");
            assert!(d.observe(&LineRef::plain(&l), at(i)).is_none());
        }
        assert!(d.tick(at(60)).is_empty());
        let stats = d.stats();
        assert_eq!((stats.suppressed, stats.failures, stats.tracked, stats.raised), (150, 0, 0, 0));
    }

    /// A day of a login service, compressed: browsing, successful logins,
    /// people mistyping a password now and then, a 401 storm on a
    /// non-login API, and two attackers (one IPv6) in the middle of it.
    #[test]
    fn an_attack_in_nginx_traffic_is_found_with_its_counts_and_no_false_positive() {
        let mut d = detector(BruteForceConfig::default());
        let mut findings = Vec::new();
        let mut attacks = 0;
        for i in 0..3000i64 {
            let now = Timestamp::from_millis(i * 50);
            let client = format!("198.51.100.{}", i % 200);
            let mut lines = vec![nginx(&client, "-", &format!("GET /static/app-{}.js", i % 7), 200, None)];
            if i % 5 == 0 {
                lines.push(nginx(&client, "-", "POST /login", 302, None));
                lines.push(nginx(&client, "-", "GET /api/v1/auth/session", 200, None));
            }
            if i % 400 == 7 {
                // A person mistyping twice, then getting in.
                let person = format!("198.51.100.{}", (i / 400) * 13);
                lines.push(nginx(&person, "-", "POST /login", 401, None));
                lines.push(nginx(&person, "-", "POST /login", 401, None));
                lines.push(nginx(&person, "-", "POST /login", 302, None));
            }
            if i % 3 == 0 {
                lines.push(nginx("192.0.2.200", "-", "GET /api/v1/reports", 401, None));
            }
            if (1000..1040).contains(&i) {
                lines.push(nginx("203.0.113.66", "admin", "POST /login", 401, None));
                attacks += 1;
            }
            if (1500..1750).contains(&i) && i % 10 == 0 {
                lines.push(nginx("2001:db8:bad::1", "-", "POST /oauth/token", 403, None));
            }
            for l in &lines {
                let line = LineRef { namespace: Some("edge"), pod: Some("ingress-nginx-0"), ..LineRef::plain(l) };
                findings.extend(d.observe(&line, now));
            }
        }
        assert_eq!(attacks, 40);
        let raised: BTreeSet<&str> = findings
            .iter()
            .filter(|f| f.state == FindingState::Active)
            .map(|f| f.labels["source_ip"].as_str())
            .collect();
        assert_eq!(raised, BTreeSet::from(["203.0.113.66", "2001:db8:bad::1"]));
        let first = findings.iter().find(|f| f.labels["source_ip"] == "203.0.113.66").expect("attacker");
        assert_eq!(first.evidence["failures"], "10");
        assert_eq!(first.evidence["users"], "admin");
        assert_eq!(first.evidence["last_pod"], "edge/ingress-nginx-0");
        assert!(first.evidence["sample_1"].contains("POST /login"));

        // Everything is still within the five-minute window: exact counts.
        let counts: BTreeMap<IpAddr, u64> = d.failures_by_source(Timestamp::from_millis(150_000)).into_iter().collect();
        assert_eq!(counts[&ip("203.0.113.66")], 40);
        assert_eq!(counts[&ip("2001:db8:bad::1")], 25);
        let others: Vec<_> = counts.iter().filter(|(_, n)| **n > 2).map(|(ip, _)| *ip).collect();
        assert_eq!(others.len(), 2, "only the attackers above two failures: {counts:?}");
        assert!(!counts.contains_key(&ip("192.0.2.200")), "401s off the login paths never count");
        assert_eq!(d.stats().failures, 40 + 25 + 2 * 8);
    }

    #[test]
    fn a_finding_refreshes_then_clears_when_the_attack_stops() {
        let mut d = detector(BruteForceConfig { window: Duration::from_secs(60), ..BruteForceConfig::default() });
        let l = "sshd[1]: Failed password for root from 192.0.2.9 port 22 ssh2";
        let found: Vec<Finding> = (0..12).filter_map(|i| d.observe(&LineRef::plain(l), at(i))).collect();
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].first_seen, found[0].evidence["window"].as_str()), (at(9), "1m"));
        let refreshed = d.tick(at(40));
        assert_eq!((refreshed.len(), refreshed[0].evidence["failures"].as_str()), (1, "12"));
        let cleared = d.tick(at(75));
        assert_eq!(cleared.len(), 1);
        assert_eq!((cleared[0].state, cleared[0].target.as_str()), (FindingState::Cleared, "ip/192.0.2.9"));
        assert!(d.tick(at(80)).is_empty());
        assert_eq!(d.stats().tracked, 0);
    }

    #[test]
    fn tracked_addresses_and_users_are_bounded() {
        let mut d = detector(BruteForceConfig { max_ips: 2, max_users: 2, raise_at: 4, ..BruteForceConfig::default() });
        for (i, peer) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].iter().enumerate() {
            let l = format!("sshd[1]: Failed password for root from {peer} port 22 ssh2");
            d.observe(&LineRef::plain(&l), at(i as i64));
        }
        assert_eq!((d.stats().tracked, d.stats().evicted), (2, 1));
        let mut last = None;
        for user in ["a", "b", "c", "d,e"] {
            let l = format!("sshd[1]: Failed password for {user} from 192.0.2.3 port 22 ssh2");
            last = d.observe(&LineRef::plain(&l), at(5)).or(last);
        }
        // Raised at the fourth failure (root, a, b, c): two names kept.
        let f = last.expect("raised");
        assert_eq!((f.evidence["users"].as_str(), f.evidence["users_dropped"].as_str()), ("a,root", "2"));
    }

    #[test]
    fn an_invalid_configuration_names_the_field() {
        let err = parse_yaml::<BruteForceConfig>("agent.yaml", "trusted_proxies: [10.0.0.0/8, 10.0.0.0/33]\n")
            .expect_err("bad CIDR");
        assert_eq!(err.field, "trusted_proxies[1]");
        assert!(err.message.contains("10.0.0.0/33"), "{}", err.message);
        let err = parse_yaml::<BruteForceConfig>("agent.yaml", "formats: [nginx, apache]\n").expect_err("format");
        assert_eq!(err.field, "formats[1]");
        let config: BruteForceConfig =
            parse_yaml("agent.yaml", "login_paths: [/login, signin]\n").unwrap_or_else(|e| panic!("{e}"));
        let err = BruteForceDetector::new(config).expect_err("relative path");
        assert_eq!(err.field, "login_paths[1]");
        let config = BruteForceConfig { clear_below: 11, ..BruteForceConfig::default() };
        assert_eq!(config.validate().map_err(|e| e.field), Err("clear_below".to_owned()));
        let mut config = BruteForceConfig::default();
        config.json.failure_events.clear();
        let err = config.validate().expect_err("no events").in_file("agent.yaml", "logs.brute_force");
        assert_eq!(err.field, "logs.brute_force.json.failure_events");
        let config: BruteForceConfig = parse_yaml("agent.yaml", "allow_list: [192.0.2.0/24, \"2001:db8::/32\"]\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.allow_list.len(), 2);
        assert_eq!(config.infrastructure, BruteForceConfig::default().infrastructure);
        assert_eq!(BruteForceConfig::default().infrastructure.len(), 4);
    }
}
