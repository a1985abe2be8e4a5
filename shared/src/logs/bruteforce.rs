//! Failed logins per source address (SEC-001).
//!
//! One Aho-Corasick scan for literals that every failure line carries
//! (`" 401 `, `Failed `, `Invalid user `, the JSON failure events, each
//! rule's own text) rejects most lines and says which readers may want a
//! candidate; only those read it. Rules users add (`rules`, see
//! [`super::rules`]) come first, then the built-in formats: sshd and PAM
//! messages in any syslog envelope ([`super::sshd`], [`super::syslog`]),
//! the nginx and Envoy access logs (a `RegexSet` picks the format, that
//! format's regex captures), JSON application logs. Every reader takes the
//! address from where the server writes it, and a client's forwarding
//! header only from a trusted proxy ([`super::net::client_addr`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::Duration;

use aho_corasick::AhoCorasick;
use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::linetime::LineClock;
use super::net::{Cidr, any_contains, client_addr, parse_addr};
use super::recency::RecencyMap;
use super::rules::{self, Read, Rule, RuleSpec};
use super::sshd::{self, Shape, Sshd};
use super::syslog;
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
    /// OpenSSH's and PAM's authentication failures (see
    /// [`super::sshd`]), in BSD syslog, RFC 5424, `journalctl -o json` or
    /// bare.
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
    /// Rules for other logs, tried in order before the built-in formats;
    /// the first that reads a line decides it.
    pub rules: Vec<RuleSpec>,
    /// Count `Failed publickey` as failures. Off by default: a client
    /// offers its keys one after the other and sshd logs each refusal,
    /// so a person with several keys fails a few times before every
    /// successful login.
    pub count_publickey: bool,
    /// Addresses never reported.
    pub allow_list: Vec<Cidr>,
    /// The platform's own ranges (nodes, pods, services), never reported.
    pub infrastructure: Vec<Cidr>,
    /// JSON field names.
    pub json: JsonAuthFields,
    /// Most addresses tracked; the least recently updated is dropped beyond
    /// (in constant time), and a `log_tracking_capped` finding says so at
    /// most once per `window`.
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
            rules: Vec::new(),
            count_publickey: false,
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

/// Most rules in `rules`: each has a bit in the prefilter's mask.
const MAX_RULES: usize = 60;
/// Prefilter groups: the built-in formats, then one per rule.
const HTTP: u64 = 1;
const SSHD: u64 = 1 << 1;
const JSON: u64 = 1 << 2;
const FIRST_RULE_BIT: usize = 3;

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
        if self.formats.is_empty()
            && self.rules.is_empty()
            && self.sources.iter().all(|s| s.formats.as_ref().is_none_or(Vec::is_empty))
        {
            return Err(InvalidLogConfig::new(
                "formats",
                "must name at least one of nginx, envoy, sshd, json, or rules",
            ));
        }
        if self.rules.len() > MAX_RULES {
            return Err(InvalidLogConfig::new("rules", format!("at most {MAX_RULES} rules")));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if self.rules[..i].iter().any(|r| r.name == rule.name) {
                return Err(InvalidLogConfig::new(
                    format!("rules[{i}].name"),
                    format!("`{}` names an earlier rule too", rule.name),
                ));
            }
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

/// An agent configuration file, for the one section rules are tested with
/// (its other sections are the agent's to check).
#[derive(Debug, Deserialize)]
struct AgentFile<T> {
    #[serde(default)]
    logs: Option<AgentLogs<T>>,
}

#[derive(Debug, Deserialize)]
struct AgentLogs<T> {
    #[serde(default)]
    brute_force: Option<T>,
}

/// The detector's configuration from a file that is either the agent's
/// whole configuration (its `logs.brute_force`) or that section alone, as
/// `remedyctl rules test` reads it. Errors name the field as the agent
/// would.
pub fn config_from_file(source: &str, text: &str) -> Result<BruteForceConfig, crate::config::ConfigError> {
    use crate::config::parse_yaml;
    let peek: Result<AgentFile<serde::de::IgnoredAny>, _> = parse_yaml(source, text);
    let (config, prefix) = match peek {
        Ok(AgentFile { logs: Some(_) }) => {
            let file: AgentFile<BruteForceConfig> = parse_yaml(source, text)?;
            (file.logs.and_then(|l| l.brute_force).unwrap_or_default(), "logs.brute_force")
        }
        _ => (parse_yaml::<BruteForceConfig>(source, text)?, ""),
    };
    BruteForceDetector::new(config.clone()).map_err(|e| e.in_file(source, prefix))?;
    Ok(config)
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
    /// Lines that read two ways with different addresses (a client wrote
    /// address syntax where it could pass for the daemon's): not counted.
    pub ambiguous: u64,
    /// Lines a rule reads that are not failed attempts (a public key
    /// refused before the next is tried, a `counts: false` rule).
    pub not_failures: u64,
    /// sshd's line of an attempt PAM's line already counted.
    pub same_attempt: u64,
    /// Addresses currently tracked.
    pub tracked: usize,
    /// Addresses dropped to stay within `max_ips`.
    pub evicted: u64,
    /// Failures counted at their line's own time (see
    /// [`super::linetime`]).
    pub at_line_time: u64,
    /// Failures whose line's time was too far ahead of the node's clock,
    /// counted at the read time.
    pub time_out_of_bounds: u64,
    /// Failures written more than `max_age` before they were read
    /// (counted at their own time all the same).
    pub too_old: u64,
    /// Failures older than the window ending at their address's newest
    /// failure (read out of order): not counted.
    pub late: u64,
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
    rules: BTreeSet<String>,
    samples: VecDeque<String>,
    last_source: Option<String>,
    raised: Hysteresis,
    /// The newest time a failure of this address was written at.
    seen: Timestamp,
    /// The node's clock when its last failure was read.
    read_at: Timestamp,
}

impl IpState {
    /// Where this address's window ends when the node's clock says `now`:
    /// its newest failure's time, moved on by the time since it was read.
    /// Live, that is `now`; while a backlog is read, the backlog's time, so
    /// a tick in the middle of it judges no window of it early.
    fn clock(&self, now: Timestamp) -> Timestamp {
        self.seen.plus(now.since(self.read_at))
    }
}

/// Whether the detector is shedding addresses, for `log_tracking_capped`.
#[derive(Debug, Default)]
struct Shedding {
    /// Evictions since the last finding about them.
    evicted: u64,
    /// When the last finding was sent; `None` while not raised.
    last_sent: Option<Timestamp>,
    /// When it was raised.
    since: Option<Timestamp>,
}

/// A failed login read from a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// The rule that read it: a built-in format (`nginx`, `envoy`, `sshd`,
    /// `json`) or a rule's name.
    pub rule: String,
    /// The client, after `X-Forwarded-For` from trusted proxies.
    pub source: IpAddr,
    /// The account, when the line names one.
    pub user: Option<String>,
    /// sshd's connection (source and process) and whether PAM wrote the
    /// line, for counting one attempt once.
    attempt: Option<(u64, bool)>,
}

/// What the detector made of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Counted against `source`.
    Counted {
        /// The rule that read it.
        rule: String,
        /// The address.
        source: IpAddr,
        /// The account.
        user: Option<String>,
    },
    /// Read by a rule, and not counted, with the reason.
    NotCounted {
        /// The rule that read it.
        rule: String,
        /// Why it does not count.
        reason: String,
    },
    /// No rule reads it.
    NotRead,
}

/// Why a line is not counted against an address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reject {
    NotCandidate,
    Ignored,
    InvalidAddress(String, String),
    NoPeer(String),
    Ambiguous(String),
    NotFailure(String, String),
}

/// Counts failed logins per source address and raises `brute_force`.
#[derive(Debug)]
pub struct BruteForceDetector {
    config: BruteForceConfig,
    /// Whether a line holds any literal. Leftmost-first semantics let the
    /// crate use its vectorised (Teddy) search, several times faster on
    /// lines that hold none than the overlapping automaton below.
    prefilter: AhoCorasick,
    /// Every literal a candidate holds, overlapping ones included, for the
    /// readers to try.
    literals: AhoCorasick,
    /// The group bit of each prefilter pattern.
    groups: Vec<u64>,
    access: RegexSet,
    /// The formats of `access`, and their regexes.
    access_rules: Vec<(AuthFormat, Regex)>,
    rules: Vec<Rule>,
    width: i64,
    /// The addresses, least recently updated first.
    ips: RecencyMap<IpAddr, IpState>,
    /// The addresses with a raised finding, judged at every tick.
    raised: HashSet<IpAddr>,
    line_clock: LineClock,
    shedding: Shedding,
    /// sshd connections whose current attempt PAM already reported, with
    /// the address and when.
    attempts: HashMap<u64, (IpAddr, Timestamp)>,
    stats: BruteForceStats,
}

/// Most sshd connections remembered for pairing PAM's line with sshd's.
const MAX_ATTEMPTS: usize = 4096;
/// How long PAM's line waits for sshd's line of the same attempt.
const ATTEMPT_PAIRING_MS: i64 = 60_000;

impl BruteForceDetector {
    /// A detector for `config`, or the first field that is wrong.
    pub fn new(config: BruteForceConfig) -> Result<Self, InvalidLogConfig> {
        config.validate()?;
        let rules = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, spec)| Rule::new(spec.clone(), i))
            .collect::<Result<Vec<_>, _>>()?;
        let formats = config.all_formats();
        let mut literals: Vec<String> = Vec::new();
        let mut groups = Vec::new();
        let mut add = |text: &str, group: u64| {
            literals.push(text.to_owned());
            groups.push(group);
        };
        if formats.iter().any(|f| matches!(f, AuthFormat::Nginx | AuthFormat::Envoy)) {
            add("\" 401 ", HTTP);
            add("\" 403 ", HTTP);
        }
        if formats.contains(&AuthFormat::Sshd) {
            for l in sshd::LITERALS {
                add(l, SSHD);
            }
        }
        if formats.contains(&AuthFormat::Json) {
            for e in &config.json.failure_events {
                add(&format!("\"{e}\""), JSON);
            }
        }
        for (i, rule) in rules.iter().enumerate() {
            for l in &rule.literals {
                add(l, 1 << (FIRST_RULE_BIT + i));
            }
        }
        let prefilter = AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostFirst)
            .build(&literals)
            .map_err(|e| InvalidLogConfig::new("rules", e))?;
        let literals = AhoCorasick::new(&literals).map_err(|e| InvalidLogConfig::new("rules", e))?;
        let access_rules: Vec<(AuthFormat, Regex)> = [(AuthFormat::Nginx, NGINX), (AuthFormat::Envoy, ENVOY)]
            .into_iter()
            .map(|(f, p)| Regex::new(p).map(|re| (f, re)))
            .collect::<Result<_, _>>()
            .map_err(|e| InvalidLogConfig::new("formats", e))?;
        let access = RegexSet::new([NGINX, ENVOY]).map_err(|e| InvalidLogConfig::new("formats", e))?;
        Ok(BruteForceDetector {
            width: bucket_width(config.window),
            config,
            prefilter,
            literals,
            groups,
            access,
            access_rules,
            rules,
            ips: RecencyMap::default(),
            raised: HashSet::new(),
            line_clock: LineClock::default(),
            shedding: Shedding::default(),
            attempts: HashMap::new(),
            stats: BruteForceStats::default(),
        })
    }

    /// Reads lines' times with `clock` from now on (the default reads
    /// RFC 3164 times as UTC).
    pub fn set_line_clock(&mut self, clock: LineClock) {
        self.line_clock = clock;
    }

    /// Counters so far.
    pub fn stats(&self) -> BruteForceStats {
        BruteForceStats { tracked: self.ips.len(), ..self.stats.clone() }
    }

    /// Addresses tracked with their failures in the window ending at `now`,
    /// highest first.
    pub fn failures_by_source(&mut self, now: Timestamp) -> Vec<(IpAddr, u64)> {
        let width = self.width;
        let mut out: Vec<(IpAddr, u64)> = self
            .ips
            .iter_mut()
            .map(|(ip, s)| (*ip, s.counts.total(s.clock(now), width)))
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// The failed login a line records, if it records one, with its
    /// source resolved; allow-lists, and the pairing of PAM's and sshd's
    /// lines of one attempt, are not applied here.
    pub fn parse(&self, line: &LineRef<'_>) -> Option<AuthFailure> {
        self.parse_inner(line).ok()
    }

    fn parse_inner(&self, line: &LineRef<'_>) -> Result<AuthFailure, Reject> {
        let message = line.message;
        // Most lines contain none of the literals: one unanchored search
        // rejects them; only candidates pay for collecting every match.
        if !self.prefilter.is_match(message) {
            return Err(Reject::NotCandidate);
        }
        let mut mask = 0u64;
        for m in self.literals.find_overlapping_iter(message) {
            mask |= self.groups[m.pattern().as_usize()];
        }
        let settings = self.config.sources.iter().find(|s| s.scope.matches(line));
        for (i, rule) in self.rules.iter().enumerate() {
            if mask & (1 << (FIRST_RULE_BIT + i)) == 0 || !rule.scope_matches(line) {
                continue;
            }
            let name = rule.name();
            match rule.read(message) {
                Read::NotMine => continue,
                Read::Ambiguous => return Err(Reject::Ambiguous(name.to_owned())),
                Read::Fields { .. } if !rule.spec.counts => {
                    return Err(Reject::NotFailure(name.to_owned(), "the rule says counts: false".to_owned()));
                }
                Read::Fields { addr, user, forwarded_for } => {
                    let source = self.client(name, addr.as_deref(), forwarded_for.as_deref(), settings)?;
                    let user = user.filter(|u| !u.is_empty()).map(|u| u.into_owned());
                    return Ok(AuthFailure { rule: name.to_owned(), source, user, attempt: None });
                }
            }
        }
        let formats = settings.and_then(|s| s.formats.as_deref()).unwrap_or(&self.config.formats);
        if mask & SSHD != 0 && formats.contains(&AuthFormat::Sshd) {
            match self.parse_sshd(line) {
                Err(Reject::Ignored) => {}
                other => return other,
            }
        }
        if mask & HTTP != 0 {
            match self.parse_access(message, formats, settings) {
                Err(Reject::Ignored) => {}
                other => return other,
            }
        }
        if mask & JSON != 0 && formats.contains(&AuthFormat::Json) {
            return self.parse_json(message, settings);
        }
        Err(Reject::Ignored)
    }

    fn parse_sshd(&self, line: &LineRef<'_>) -> Result<AuthFailure, Reject> {
        let rule = || AuthFormat::Sshd.as_str().to_owned();
        let envelope = syslog::open(line.message);
        if envelope.program.as_deref().is_some_and(|p| !sshd::is_sshd(p)) {
            return Err(Reject::Ignored);
        }
        let (addr, user, shape) = match sshd::read(&envelope.message) {
            None => return Err(Reject::Ignored),
            Some(Sshd::Ambiguous) => return Err(Reject::Ambiguous(rule())),
            Some(Sshd::NotFailure(why)) => return Err(Reject::NotFailure(rule(), why.to_owned())),
            Some(Sshd::Failure { addr, user, shape }) => (addr, user, shape),
        };
        if shape == Shape::FailedPublickey && !self.config.count_publickey {
            return Err(Reject::NotFailure(
                rule(),
                "a public key refused before another is tried (count_publickey: false)".to_owned(),
            ));
        }
        let source = sshd::address(addr).ok_or_else(|| Reject::InvalidAddress(rule(), addr.to_owned()))?;
        let attempt = envelope.pid.filter(|_| shape.is_pam() || shape == Shape::Failed).map(|pid| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (line.namespace, line.pod, line.container, line.file, envelope.program.as_deref(), pid).hash(&mut h);
            (h.finish(), shape.is_pam())
        });
        let user = user.filter(|u| !u.is_empty()).map(str::to_owned);
        Ok(AuthFailure { rule: rule(), source, user, attempt })
    }

    fn parse_access(
        &self,
        message: &str,
        formats: &[AuthFormat],
        settings: Option<&SourceSettings>,
    ) -> Result<AuthFailure, Reject> {
        let index = self
            .access
            .matches(message)
            .iter()
            .find(|i| formats.contains(&self.access_rules[*i].0))
            .ok_or(Reject::Ignored)?;
        let (format, re) = &self.access_rules[index];
        let caps = re.captures(message).ok_or(Reject::Ignored)?;
        let text = |name: &str| caps.name(name).map(|m| m.as_str());
        if let Some(path) = text("path")
            && !self.is_login_path(path)
        {
            return Err(Reject::Ignored);
        }
        let source = self.client(format.as_str(), text("peer"), text("xff"), settings)?;
        let user = text("user").filter(|u| *u != "-" && !u.is_empty()).map(str::to_owned);
        Ok(AuthFailure { rule: format.as_str().to_owned(), source, user, attempt: None })
    }

    /// The client of a line, from its peer and forwarding header.
    fn client(
        &self,
        rule: &str,
        peer: Option<&str>,
        forwarded_for: Option<&str>,
        settings: Option<&SourceSettings>,
    ) -> Result<IpAddr, Reject> {
        let trusted = &self.config.trusted_proxies;
        let invalid = |text: &str| Reject::InvalidAddress(rule.to_owned(), text.to_owned());
        match peer {
            Some(peer) => {
                let ip = parse_addr(peer).ok_or_else(|| invalid(peer))?;
                client_addr(ip, forwarded_for, trusted).ok_or_else(|| invalid(forwarded_for.unwrap_or_default()))
            }
            // The right-most entry was written by the proxy itself only when
            // the source says so; otherwise all of it may be the client's.
            None if settings.is_some_and(|s| s.proxy_appends_peer) => {
                let header = forwarded_for
                    .filter(|x| !x.is_empty() && *x != "-")
                    .ok_or_else(|| Reject::NoPeer(rule.to_owned()))?;
                let (rest, last) = header.rsplit_once(',').map_or((None, header), |(r, l)| (Some(r), l));
                let peer = parse_addr(last).ok_or_else(|| invalid(last))?;
                client_addr(peer, rest, trusted).ok_or_else(|| invalid(header))
            }
            None => Err(Reject::NoPeer(rule.to_owned())),
        }
    }

    fn parse_json(&self, message: &str, settings: Option<&SourceSettings>) -> Result<AuthFailure, Reject> {
        let fields = &self.config.json;
        let rule = AuthFormat::Json.as_str();
        let object = match rules::strict_json(message) {
            None => return Err(Reject::Ignored),
            Some(Err(())) => return Err(Reject::Ambiguous(rule.to_owned())),
            Some(Ok(object)) => object,
        };
        let event = object.get(&fields.event_field).and_then(Value::as_str).ok_or(Reject::Ignored)?;
        if !fields.failure_events.iter().any(|e| e == event) {
            return Err(Reject::Ignored);
        }
        let first = |names: &[String]| names.iter().find_map(|n| object.get(n).and_then(Value::as_str));
        let source = self.client(rule, first(&fields.ip_fields), first(&fields.forwarded_for_fields), settings)?;
        let user = first(&fields.user_fields).filter(|u| !u.is_empty()).map(str::to_owned);
        Ok(AuthFailure { rule: rule.to_owned(), source, user, attempt: None })
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
        self.exemption(ip).is_some()
    }

    fn exemption(&self, ip: IpAddr) -> Option<&'static str> {
        let c = &self.config;
        if any_contains(&c.allow_list, ip) {
            Some("allow-listed")
        } else if any_contains(&c.infrastructure, ip) {
            Some("the platform's own (infrastructure)")
        } else if any_contains(&c.trusted_proxies, ip) {
            Some("a trusted proxy")
        } else {
            None
        }
    }

    /// Whether `failure` is the second line of one sshd attempt: PAM logs
    /// a failed password, then sshd logs `Failed password` for the same
    /// connection. The first line of an attempt counts, the rest do not.
    fn same_attempt(&mut self, failure: &AuthFailure, now: Timestamp) -> bool {
        let Some((key, is_pam)) = failure.attempt else { return false };
        let open = self
            .attempts
            .get(&key)
            .is_some_and(|(ip, at)| *ip == failure.source && now.as_millis() - at.as_millis() <= ATTEMPT_PAIRING_MS);
        if is_pam {
            if !open {
                if self.attempts.len() >= MAX_ATTEMPTS {
                    // Pairing is best effort: forgetting a connection
                    // counts its next attempt twice, nothing worse.
                    let cutoff = now.as_millis() - ATTEMPT_PAIRING_MS;
                    self.attempts.retain(|_, (_, at)| at.as_millis() >= cutoff);
                    if self.attempts.len() >= MAX_ATTEMPTS {
                        self.attempts.clear();
                    }
                }
                self.attempts.insert(key, (failure.source, now));
            }
            open
        } else {
            // sshd's own line ends the attempt.
            self.attempts.remove(&key);
            open
        }
    }

    /// Feeds one line seen at `now`; returns a finding when its source
    /// crosses the threshold or its raised finding is due a refresh.
    pub fn observe(&mut self, line: &LineRef<'_>, now: Timestamp) -> Option<Finding> {
        self.observe_explained(line, now).1
    }

    /// [`observe`](Self::observe), also saying what the line counted for
    /// (what `remedyctl rules test` prints).
    pub fn observe_explained(&mut self, line: &LineRef<'_>, now: Timestamp) -> (Verdict, Option<Finding>) {
        self.stats.lines += 1;
        let failure = match self.parse_inner(line) {
            Ok(f) => f,
            Err(reject) => {
                let not_counted = |rule: String, reason: String| Verdict::NotCounted { rule, reason };
                let verdict = match reject {
                    Reject::NotCandidate => return (Verdict::NotRead, None),
                    Reject::Ignored => {
                        self.stats.ignored += 1;
                        Verdict::NotRead
                    }
                    Reject::InvalidAddress(rule, text) => {
                        self.stats.invalid_address += 1;
                        not_counted(rule, format!("`{}` is not an address", truncate(&text, 64, Unit::Chars)))
                    }
                    Reject::NoPeer(rule) => {
                        self.stats.no_peer += 1;
                        not_counted(
                            rule,
                            "the line has no peer address, and its source does not say its proxy appends the \
                             peer to X-Forwarded-For (proxy_appends_peer)"
                                .to_owned(),
                        )
                    }
                    Reject::Ambiguous(rule) => {
                        self.stats.ambiguous += 1;
                        not_counted(rule, "the line reads two ways, naming different addresses".to_owned())
                    }
                    Reject::NotFailure(rule, why) => {
                        self.stats.not_failures += 1;
                        not_counted(rule, why)
                    }
                };
                self.stats.candidates += 1;
                return (verdict, None);
            }
        };
        self.stats.candidates += 1;
        if let Some(why) = self.exemption(failure.source) {
            self.stats.suppressed += 1;
            let reason = format!("{} is {why}", failure.source);
            return (Verdict::NotCounted { rule: failure.rule, reason }, None);
        }
        if self.same_attempt(&failure, now) {
            self.stats.same_attempt += 1;
            let reason = "the same attempt as PAM's line before it, counted there".to_owned();
            return (Verdict::NotCounted { rule: failure.rule, reason }, None);
        }
        let judged = self.line_clock.judge(line, now);
        let stats = &mut self.stats;
        let at = judged.counted(&mut stats.at_line_time, &mut stats.time_out_of_bounds, &mut stats.too_old);
        self.stats.failures += 1;
        if !self.ips.contains(&failure.source) {
            if self.ips.len() >= self.config.max_ips {
                self.evict_oldest();
            }
            let state = IpState {
                counts: WindowCounter::default(),
                users: BTreeSet::new(),
                users_dropped: 0,
                rules: BTreeSet::new(),
                samples: VecDeque::new(),
                last_source: None,
                raised: Hysteresis::new(now),
                seen: at,
                read_at: now,
            };
            self.ips.insert(failure.source, state);
        }
        let Some(state) = self.ips.touch(&failure.source) else { return (Verdict::NotRead, None) };
        if !state.counts.add(1, at, self.width) {
            self.stats.late += 1;
        }
        state.seen = state.seen.max(at);
        state.read_at = now;
        if !state.rules.contains(&failure.rule) && state.rules.len() < 8 {
            state.rules.insert(failure.rule.clone());
        }
        if let Some(user) = &failure.user {
            // The list travels comma-separated (the runbook scopes session
            // deletion to it): names that could split or smuggle are dropped.
            let usable = user.len() <= 64 && !user.contains(',') && !user.chars().any(char::is_control);
            if usable && (state.users.contains(user) || state.users.len() < self.config.max_users) {
                state.users.insert(user.clone());
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
        let verdict = Verdict::Counted { rule: failure.rule, source: failure.source, user: failure.user };
        let found = judge(&self.config, self.width, &mut self.stats, failure.source, state, now);
        if found.as_ref().is_some_and(|f| f.state == FindingState::Active) {
            self.raised.insert(failure.source);
        }
        (verdict, found)
    }

    /// Re-judges at `now` (windows slide without lines): clears the
    /// raised findings whose counts fell and refreshes the others, forgets
    /// the addresses whose windows emptied, and reports shedding (see
    /// [`Self::shedding`]). Call it every second or so. Costs the raised
    /// addresses plus those forgotten: idle addresses leave oldest first,
    /// and the scan stops at the first that is not idle.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Finding> {
        let mut out = Vec::new();
        let (config, width, stats) = (&self.config, self.width, &mut self.stats);
        let ips = &mut self.ips;
        self.raised.retain(|ip| {
            let Some(state) = ips.get_mut(ip) else { return false };
            if let Some(f) = judge(config, width, stats, *ip, state, now) {
                out.push(f);
            }
            state.raised.active_since.is_some()
        });
        while let Some((ip, state)) = self.ips.oldest() {
            if self.raised.contains(ip) || state.counts.total(state.clock(now), width) > 0 {
                break;
            }
            self.ips.pop_oldest();
        }
        out.extend(self.shedding(now));
        out
    }

    /// `log_tracking_capped`: while addresses are evicted to stay within
    /// `max_ips` (a botnet, or a scan from many addresses: itself a sign of
    /// an attack, and one whose slowest sources go unjudged), one finding
    /// per `window` at most, saying how many were evicted since the last;
    /// cleared after a `window` without evictions.
    fn shedding(&mut self, now: Timestamp) -> Option<Finding> {
        let interval = self.config.window;
        let sh = &mut self.shedding;
        let due = sh.last_sent.is_none_or(|last| now.since(last) >= interval);
        let state = match (sh.evicted, sh.last_sent) {
            (0, None) => return None,
            (0, Some(_)) if due => FindingState::Cleared,
            (_, _) if due => FindingState::Active,
            _ => return None,
        };
        let evicted = std::mem::take(&mut sh.evicted);
        let since = *sh.since.get_or_insert(now);
        if state == FindingState::Cleared {
            (sh.last_sent, sh.since) = (None, None);
        } else {
            sh.last_sent = Some(now);
        }
        let (cap, window) = (self.config.max_ips, format_duration(interval));
        let summary = match state {
            FindingState::Active => format!(
                "brute-force tracking capped at {cap} addresses; {evicted} evicted in the last {window}: failures from \
                 more addresses than that, slow attackers among them go unjudged"
            ),
            FindingState::Cleared => format!("brute-force tracking no longer capped: no address evicted in {window}"),
        };
        Some(Finding {
            kind: FindingKind::LogTrackingCapped,
            severity: Severity::Warning,
            state,
            target: "detector/brute_force".to_owned(),
            labels: BTreeMap::from([("detector".to_owned(), "brute_force".to_owned())]),
            evidence: BTreeMap::from([
                ("max_ips".to_owned(), cap.to_string()),
                ("evicted".to_owned(), evicted.to_string()),
                ("interval".to_owned(), window),
                ("tracked".to_owned(), self.ips.len().to_string()),
                ("evicted_total".to_owned(), self.stats.evicted.to_string()),
            ]),
            summary,
            first_seen: since,
            last_seen: now,
            expires_at: (state == FindingState::Active)
                .then(|| now.plus((interval * 2).min(std::time::Duration::from_secs(12 * 3600)))),
        })
    }

    /// Drops the least recently updated address.
    fn evict_oldest(&mut self) {
        if let Some((ip, _)) = self.ips.pop_oldest() {
            self.raised.remove(&ip);
            self.stats.evicted += 1;
            self.shedding.evicted += 1;
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
    let window_end = state.clock(now);
    let failures = state.counts.total(window_end, width);
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
        ("rules".to_owned(), state.rules.iter().cloned().collect::<Vec<_>>().join(",")),
    ]);
    if let Some(source) = &state.last_source {
        evidence.insert("last_pod".to_owned(), source.clone());
    }
    // Judged on the lines' own times, behind the node's clock (a backlog):
    // where in the log the window ends.
    if now.as_millis() - window_end.as_millis() > width {
        evidence.insert("window_end".to_owned(), window_end.to_string());
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

    fn failure(d: &BruteForceDetector, message: &str) -> Option<(String, IpAddr, Option<String>)> {
        d.parse(&LineRef::plain(message)).map(|f| (f.rule, f.source, f.user))
    }

    #[test]
    fn each_format_is_parsed() {
        let d = detector(BruteForceConfig::default());
        let nginx_line = nginx("203.0.113.9", "alice", "POST /login", 401, None);
        assert_eq!(failure(&d, &nginx_line), Some(("nginx".to_owned(), ip("203.0.113.9"), Some("alice".into()))));
        let nginx_query = nginx("203.0.113.9", "-", "POST /api/v1/auth/token?x=1", 403, Some("-"));
        assert_eq!(failure(&d, &nginx_query), Some(("nginx".to_owned(), ip("203.0.113.9"), None)));
        // ingress-nginx's format: unquoted fields after the user agent.
        let ingress = nginx("203.0.113.9", "-", "POST /login", 401, None)
            + " 512 0.003 [default-api-80] [] 10.244.1.5:8080 153 0.003 401 4f2c9a";
        assert_eq!(failure(&d, &ingress), Some(("nginx".to_owned(), ip("203.0.113.9"), None)));

        // Envoy's default format has no peer: never counted unless the
        // source is configured (see the forwarded-for tests).
        let envoy = "[2026-11-26T10:00:00.000Z] \"POST /oauth/token HTTP/1.1\" 401 - 154 0 12 11 \"198.51.100.4\" \"curl/8.0\" \"c2f1\" \"idp.example.com\" \"10.1.2.3:8080\"";
        assert_eq!(failure(&d, envoy), None);
        let envoy_peer = "[2026-11-26T10:00:00.000Z] \"POST /auth HTTP/2\" 403 - 154 0 12 11 \"-\" \"curl/8.0\" \"c2f1\" \"idp.example.com\" \"10.1.2.3:8080\" 198.51.100.5:51234";
        assert_eq!(failure(&d, envoy_peer), Some(("envoy".to_owned(), ip("198.51.100.5"), None)));

        let sshd =
            "Nov 26 10:00:00 node-1 sshd[4121]: Failed password for invalid user admin from 192.0.2.44 port 50122 ssh2";
        assert_eq!(failure(&d, sshd), Some(("sshd".to_owned(), ip("192.0.2.44"), Some("admin".into()))));
        let sshd_root = "sshd[1]: Failed password for root from 192.0.2.45 port 22 ssh2";
        assert_eq!(failure(&d, sshd_root), Some(("sshd".to_owned(), ip("192.0.2.45"), Some("root".into()))));

        let json = r#"{"ts":"2026-11-26T10:00:00Z","event":"login_failed","ip":"192.0.2.80","user":"bob"}"#;
        assert_eq!(failure(&d, json), Some(("json".to_owned(), ip("192.0.2.80"), Some("bob".into()))));
        let json_spaced = r#"{"event" : "auth_failed", "client_ip": "192.0.2.81", "username": "carol"}"#;
        assert_eq!(failure(&d, json_spaced), Some(("json".to_owned(), ip("192.0.2.81"), Some("carol".into()))));

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
        assert_eq!(f.evidence["rules"], "json,nginx,sshd");
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

    fn verdicts(d: &mut BruteForceDetector, lines: &[&str]) -> Vec<Verdict> {
        lines.iter().map(|l| d.observe_explained(&LineRef::plain(l), at(0)).0).collect()
    }

    fn counted(source: &str, rule: &str, user: Option<&str>) -> Verdict {
        Verdict::Counted { rule: rule.to_owned(), source: ip(source), user: user.map(str::to_owned) }
    }

    #[test]
    fn public_keys_tried_before_an_accepted_login_raise_nothing() {
        let mut d = detector(BruteForceConfig { raise_at: 2, clear_below: 1, ..BruteForceConfig::default() });
        for i in 0..20 {
            let pid = 32_000 + i;
            let lines = [
                format!(
                    "Nov 28 09:16:03 srv sshd[{pid}]: Failed publickey for git from 192.0.2.1 port 57904 ssh2: ECDSA SHA256:0eff"
                ),
                format!(
                    "Nov 28 09:16:03 srv sshd[{pid}]: Failed publickey for git from 192.0.2.1 port 57904 ssh2: RSA SHA256:04bc"
                ),
                format!(
                    "Nov 28 09:16:03 srv sshd[{pid}]: Postponed publickey for git from 192.0.2.1 port 57904 ssh2 [preauth]"
                ),
                format!(
                    "Nov 28 09:16:03 srv sshd[{pid}]: Accepted publickey for git from 192.0.2.1 port 57904 ssh2: ED25519 SHA256:3648"
                ),
            ];
            for l in &lines {
                assert!(d.observe(&LineRef::plain(l), at(i as i64)).is_none(), "{l}");
            }
        }
        assert_eq!((d.stats().failures, d.stats().not_failures, d.stats().tracked), (0, 40, 0));
        // Counted when asked to.
        let mut d = detector(BruteForceConfig { count_publickey: true, ..BruteForceConfig::default() });
        let l = "Failed publickey for git from 192.0.2.1 port 57904 ssh2: RSA SHA256:04bc";
        assert_eq!(verdicts(&mut d, &[l]), vec![counted("192.0.2.1", "sshd", Some("git"))]);
    }

    #[test]
    fn pam_and_sshd_lines_of_one_attempt_count_once() {
        let mut d = detector(BruteForceConfig::default());
        let pam = "Mar  7 18:53:22 bar sshd[1558]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=192.0.2.114  user=root";
        let sshd = "Mar  7 18:53:24 bar sshd[1558]: Failed password for root from 192.0.2.114 port 52100 ssh2";
        let got = verdicts(&mut d, &[pam, sshd, pam, sshd, sshd]);
        assert_eq!(got[0], counted("192.0.2.114", "sshd", Some("root")));
        assert!(matches!(&got[1], Verdict::NotCounted { reason, .. } if reason.contains("same attempt")), "{got:?}");
        assert_eq!(got[2], counted("192.0.2.114", "sshd", Some("root")), "a new attempt");
        assert!(matches!(&got[3], Verdict::NotCounted { .. }));
        assert_eq!(got[4], counted("192.0.2.114", "sshd", Some("root")), "sshd alone, PAM silent");
        // Another connection (process) is another attempt.
        let other = "Mar  7 18:53:24 bar sshd[1559]: Failed password for root from 192.0.2.114 port 52101 ssh2";
        assert_eq!(verdicts(&mut d, &[pam, other])[1], counted("192.0.2.114", "sshd", Some("root")));
        assert_eq!(d.stats().same_attempt, 2);
    }

    #[test]
    fn every_envelope_of_an_sshd_line_is_read_and_other_programs_are_not() {
        let d = detector(BruteForceConfig::default());
        let msg = "Failed password for invalid user admin from 2001:db8::7 port 50122 ssh2";
        for line in [
            format!("Nov 26 10:00:00 node-1 sshd[4121]: {msg}"),
            format!("<38>1 2026-11-26T10:00:00Z node-1 sshd 4121 - - {msg}"),
            format!(r#"{{"SYSLOG_IDENTIFIER":"sshd","_PID":"4121","MESSAGE":"{msg}"}}"#),
            format!("2026-11-26T10:00:00+00:00 node-1 sshd-session[4121]: {msg} [preauth]"),
            msg.to_owned(),
        ] {
            assert_eq!(
                failure(&d, &line),
                Some(("sshd".to_owned(), ip("2001:db8::7"), Some("admin".into()))),
                "{line}"
            );
        }
        let mapped = "sshd[1]: Failed password for root from ::ffff:192.0.2.9 port 22 ssh2";
        assert_eq!(failure(&d, mapped).map(|f| f.1), Some(ip("192.0.2.9")), "IPv4-mapped addresses are IPv4");
        assert_eq!(failure(&d, &format!("Nov 26 10:00:00 node-1 myapp[7]: {msg}")), None, "not sshd's");
        // A host name (UseDNS) is never resolved, nor counted.
        let mut d = detector(BruteForceConfig::default());
        let named = "sshd[1]: error: PAM: Authentication failure for stefanor from example.com";
        assert!(
            matches!(&verdicts(&mut d, &[named])[0], Verdict::NotCounted { reason, .. } if reason.contains("example.com"))
        );
    }

    #[test]
    fn rules_read_their_own_workloads_in_order_and_can_exempt_lines() {
        let specs = "rules:\n\
            \x20 - {name: health-checks, match: {apps: [auth-service]}, logfmt: {when: {user: [healthcheck]}, addr: ip}, counts: false}\n\
            \x20 - {name: auth-logfmt, match: {apps: [auth-service]}, logfmt: {when: {event: [login_failed]}, addr: ip, user: user}}\n\
            \x20 - {name: legacy, match: {files: [/var/log/legacy.log]}, regex: '^\\S+ DENIED (?P<user>.*) from (?P<addr>[0-9a-f.:]+)$'}\n";
        let config: BruteForceConfig = parse_yaml("agent.yaml", specs).unwrap_or_else(|e| panic!("{e}"));
        let mut d = detector(BruteForceConfig { raise_at: 100, ..config });
        let auth =
            |m| LineRef { namespace: Some("prod"), pod: Some("auth-service-7d9f8b6c5d-x2k7p"), ..LineRef::plain(m) };
        let other = |m| LineRef { namespace: Some("prod"), pod: Some("billing-7d9f8b6c5d-x2k7p"), ..LineRef::plain(m) };
        let legacy = |m| LineRef { file: Some("/var/log/legacy.log"), ..LineRef::plain(m) };
        let line = "level=warn event=login_failed user=bob ip=203.0.113.5";
        assert_eq!(d.observe_explained(&auth(line), at(0)).0, counted("203.0.113.5", "auth-logfmt", Some("bob")));
        assert_eq!(d.observe_explained(&other(line), at(0)).0, Verdict::NotRead, "another workload");
        let health = "level=warn event=login_failed user=healthcheck ip=203.0.113.6";
        assert!(
            matches!(d.observe_explained(&auth(health), at(0)).0, Verdict::NotCounted { rule, .. } if rule == "health-checks")
        );
        let old = "2026-11-26T10:00:00 DENIED carol from 192.0.2.1 from 203.0.113.7";
        assert_eq!(
            d.observe_explained(&legacy(old), at(0)).0,
            counted("203.0.113.7", "legacy", Some("carol from 192.0.2.1"))
        );
        assert_eq!(d.stats().failures, 2);
        let bad = "rules:\n  - {name: x, regex: 'from (?P<addr>\\S+)'}\n";
        let config: BruteForceConfig = parse_yaml("agent.yaml", bad).unwrap_or_else(|e| panic!("{e}"));
        let err = BruteForceDetector::new(config).expect_err("unanchored").in_file("agent.yaml", "logs.brute_force");
        assert_eq!(err.field, "logs.brute_force.rules[0].regex");
    }

    /// Address syntax written into every field a client controls (user
    /// names, paths, user agents, referers, headers, JSON and logfmt
    /// values), for every format: the address counted is always the one
    /// the server wrote, or the line is not counted.
    #[test]
    fn address_syntax_in_client_fields_is_never_the_address_counted() {
        let specs = "rules:\n\
            \x20 - {name: app-json, json: {when: {event: [login_failed]}, addr: client.ip, user: user, forwarded_for: xff}}\n\
            \x20 - {name: app-logfmt, logfmt: {when: {event: [login_failed]}, addr: ip, user: user}}\n";
        let config: BruteForceConfig = parse_yaml("agent.yaml", specs).unwrap_or_else(|e| panic!("{e}"));
        let d = detector(config);
        let real = "203.0.113.9";
        let decoys = [
            "192.0.2.66".to_owned(),
            "192.0.2.66:22".to_owned(),
            "\" 192.0.2.66".to_owned(),
            "x\" \"-\" \"-\" \"192.0.2.66\"".to_owned(),
            " from 192.0.2.66 port 22 ssh2".to_owned(),
            "ip=192.0.2.66".to_owned(),
            "\",\"client\":{\"ip\":\"192.0.2.66\"},\"x\":\"".to_owned(),
        ];
        for decoy in &decoys {
            let json_text = serde_json::to_string(decoy).unwrap_or_default();
            let logfmt_text = format!("\"{}\"", decoy.replace('\\', "\\\\").replace('"', "\\\""));
            // nginx escapes quotes as \x22 in every field it writes.
            let n = decoy.replace('"', "\\x22");
            let lines = vec![
                format!(
                    "{real} - {} [26/Nov/2026:10:00:00 +0000] \"POST /login HTTP/1.1\" 401 1 \"-\" \"-\"",
                    n.replace(' ', "_")
                ),
                format!(
                    "{real} - - [26/Nov/2026:10:00:00 +0000] \"POST /login?u={} HTTP/1.1\" 401 1 \"-\" \"-\"",
                    n.replace(' ', "%20")
                ),
                format!("{real} - - [26/Nov/2026:10:00:00 +0000] \"POST /login HTTP/1.1\" 401 1 \"{n}\" \"-\""),
                format!("{real} - - [26/Nov/2026:10:00:00 +0000] \"POST /login HTTP/1.1\" 401 1 \"-\" \"{n}\""),
                format!("{real} - - [26/Nov/2026:10:00:00 +0000] \"POST /login HTTP/1.1\" 401 1 \"-\" \"-\" \"{n}\""),
                envoy(decoy, "curl", Some(&format!("{real}:4000"))),
                envoy("-", decoy, Some(&format!("{real}:4000"))),
                format!(
                    r#"{{"event":"login_failed","client":{{"ip":"{real}"}},"user":{json_text},"xff":{json_text}}}"#
                ),
                format!(r#"{{"event":"login_failed","user":{json_text},"client":{{"ip":"{real}"}}}}"#),
                format!("event=login_failed user={logfmt_text} ip={real} msg={logfmt_text}"),
                format!("event=login_failed ip={real} user={logfmt_text}"),
            ];
            for (i, line) in lines.iter().enumerate() {
                match d.parse(&LineRef::plain(line)) {
                    Some(f) => assert_eq!(f.source, ip(real), "{line}"),
                    // Only Envoy's lines may be left unread: a quote in a
                    // header it logs breaks the format's shape.
                    None => assert!((5..7).contains(&i) && decoy.contains('"'), "not read: {line}"),
                }
            }
        }
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

    fn sshd_at(t: Timestamp, peer: &str) -> String {
        // rsyslog's default file format, in UTC (the detector's default zone).
        let dt = jiff::tz::TimeZone::UTC
            .to_datetime(jiff::Timestamp::from_millisecond(t.as_millis()).unwrap_or_else(|e| panic!("{e}")));
        let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
            [dt.month() as usize - 1];
        format!(
            "{month} {:>2} {:02}:{:02}:{:02} node-1 sshd[77]: Failed password for root from {peer} port 50122 ssh2",
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        )
    }

    #[test]
    fn the_least_recently_updated_address_is_evicted_first() {
        let mut d = detector(BruteForceConfig { max_ips: 3, ..BruteForceConfig::default() });
        let fail = |d: &mut BruteForceDetector, peer: &str, t: i64| {
            let l = format!("sshd[1]: Failed password for root from {peer} port 22 ssh2");
            d.observe(&LineRef::plain(&l), at(t));
        };
        for (t, peer) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].iter().enumerate() {
            fail(&mut d, peer, t as i64);
        }
        fail(&mut d, "192.0.2.1", 3);
        fail(&mut d, "192.0.2.4", 4);
        let kept: BTreeSet<IpAddr> = d.failures_by_source(at(5)).into_iter().map(|(ip, _)| ip).collect();
        assert_eq!(kept, BTreeSet::from([ip("192.0.2.1"), ip("192.0.2.3"), ip("192.0.2.4")]));
        fail(&mut d, "192.0.2.5", 5);
        assert!(!d.ips.contains(&ip("192.0.2.3")), "then the next oldest");
        assert_eq!(d.stats().evicted, 2);
    }

    #[test]
    fn a_million_addresses_never_hold_more_than_the_cap() {
        let cap = 10_000;
        let mut d = detector(BruteForceConfig { max_ips: cap, ..BruteForceConfig::default() });
        let mut most = 0;
        for i in 0..1_000_000u32 {
            let peer = IpAddr::from([10 + (i >> 24) as u8, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            let l = format!("sshd[1]: Failed password for root from {peer} port 22 ssh2");
            // 10,000 failures a second, each from a new address.
            d.observe(&LineRef::plain(&l), Timestamp::from_millis(1_000_000 + i64::from(i) / 10));
            most = most.max(d.ips.len());
            assert!(d.ips.queued() <= 2 * cap + 65, "{} queued", d.ips.queued());
            if i % 10_000 == 0 {
                d.tick(Timestamp::from_millis(1_000_000 + i64::from(i) / 10));
            }
        }
        assert_eq!(most, cap);
        let stats = d.stats();
        assert_eq!((stats.tracked, stats.evicted, stats.failures), (cap, 1_000_000 - cap as u64, 1_000_000));
    }

    #[test]
    fn shedding_is_reported_at_most_once_per_window_then_cleared() {
        let mut d = detector(BruteForceConfig { max_ips: 2, ..BruteForceConfig::default() });
        let mut n = 0u32;
        let mut feed = |d: &mut BruteForceDetector, count: u32, t: i64| {
            for _ in 0..count {
                n += 1;
                let l = format!("sshd[1]: Failed password for root from 198.51.{}.{} port 22 ssh2", n / 250, n % 250);
                d.observe(&LineRef::plain(&l), at(t));
            }
        };
        let capped = |found: &[Finding]| -> Vec<(FindingState, String)> {
            found
                .iter()
                .filter(|f| f.kind == FindingKind::LogTrackingCapped)
                .map(|f| (f.state, f.evidence["evicted"].clone()))
                .collect()
        };
        assert!(capped(&d.tick(at(1))).is_empty(), "nothing evicted, nothing said");
        feed(&mut d, 5, 2);
        let first = d.tick(at(3));
        assert_eq!(capped(&first), vec![(FindingState::Active, "3".to_owned())]);
        let f = &first[0];
        assert_eq!(
            (f.target.as_str(), f.evidence["max_ips"].as_str(), f.evidence["interval"].as_str()),
            ("detector/brute_force", "2", "5m")
        );
        assert!(f.summary.contains("capped at 2 addresses; 3 evicted in the last 5m"), "{}", f.summary);
        assert_eq!((f.validate(), f.check_from_node()), (Ok(()), Ok(())));
        // More evictions within the window: nothing until it has passed.
        for t in 4..300 {
            feed(&mut d, 10, t);
            assert!(capped(&d.tick(at(t))).is_empty(), "at {t}");
        }
        assert_eq!(capped(&d.tick(at(303))), vec![(FindingState::Active, "2960".to_owned())]);
        // A window without evictions clears it, once.
        assert!(capped(&d.tick(at(500))).is_empty());
        assert_eq!(capped(&d.tick(at(603))), vec![(FindingState::Cleared, "0".to_owned())]);
        assert!(capped(&d.tick(at(1000))).is_empty());
    }

    #[test]
    fn windows_slide_on_the_lines_time_and_a_tick_mid_backlog_forgets_nothing() {
        let mut d =
            detector(BruteForceConfig { window: Duration::from_secs(60), raise_at: 3, ..BruteForceConfig::default() });
        let t0 = Timestamp::parse_rfc3339("2026-11-26T10:00:00Z").unwrap_or_else(|| panic!("t0"));
        let read = t0.plus(Duration::from_secs(6 * 3600));
        // Read six hours late: two failures 20 s apart, a tick, a third
        // 20 s later in the log: three in a minute, raised.
        assert!(d.observe(&LineRef::plain(&sshd_at(t0, "203.0.113.7")), read).is_none());
        assert!(d.observe(&LineRef::plain(&sshd_at(t0.plus(Duration::from_secs(20)), "203.0.113.7")), read).is_none());
        assert!(d.tick(read.plus(Duration::from_millis(500))).is_empty());
        assert_eq!(d.stats().tracked, 1, "the backlog's window has not passed");
        let third = sshd_at(t0.plus(Duration::from_secs(40)), "203.0.113.7");
        let f = d.observe(&LineRef::plain(&third), read.plus(Duration::from_secs(1))).expect("raised");
        assert_eq!((f.evidence["failures"].as_str(), f.state), ("3", FindingState::Active));
        assert_eq!(f.evidence["window_end"], "2026-11-26T10:00:40.000Z");
        // The node's times: raised now, live for the coordinator.
        assert!(f.expires_at.is_some_and(|e| e > read) && f.first_seen == read.plus(Duration::from_secs(1)));
        assert_eq!(d.stats().at_line_time, 3);
        // Once read, the window slides on the node's clock and clears.
        let cleared = d.tick(read.plus(Duration::from_secs(90)));
        assert_eq!(cleared.iter().map(|f| f.state).collect::<Vec<_>>(), vec![FindingState::Cleared]);
        assert_eq!(d.stats().tracked, 0);
    }

    /// `lines` (time written, line) fed live (read as written) and read
    /// late (all at `read`, ticking every 100 lines): the addresses raised.
    fn raised_live_and_late(
        config: &BruteForceConfig,
        lines: &[(Timestamp, String)],
        read: Timestamp,
    ) -> [BTreeSet<String>; 2] {
        let mut out = [BTreeSet::new(), BTreeSet::new()];
        for (late, raised) in out.iter_mut().enumerate() {
            let mut d = detector(config.clone());
            for (i, (written, line)) in lines.iter().enumerate() {
                let now = if late == 1 { read.plus(Duration::from_millis(i as u64)) } else { *written };
                if let Some(f) = d.observe(&LineRef::plain(line), now)
                    && f.state == FindingState::Active
                {
                    raised.insert(f.labels["source_ip"].clone());
                }
                if i % 100 == 0 {
                    d.tick(now);
                }
            }
        }
        out
    }

    #[test]
    fn a_backlog_is_judged_as_it_was_written() {
        let t0 = Timestamp::parse_rfc3339("2026-11-26T00:00:00Z").unwrap_or_else(|| panic!("t0"));
        let read = t0.plus(Duration::from_secs(24 * 3600 + 60));
        let config = BruteForceConfig::default();
        // A day of people mistyping: 200 addresses, each failing once an
        // hour, all day.
        let mut lines = Vec::new();
        for hour in 0..24u64 {
            for k in 0..200u64 {
                let t = t0.plus(Duration::from_secs(hour * 3600 + k * 17));
                lines.push((t, sshd_at(t, &format!("192.0.2.{k}"))));
            }
        }
        assert_eq!(raised_live_and_late(&config, &lines, read), [BTreeSet::new(), BTreeSet::new()]);
        // Judged on the read time, the same day is 24 failures from each.
        let blind = {
            let mut d = detector(BruteForceConfig { max_ips: 1000, ..config.clone() });
            let off = super::super::LineTimeConfig { enabled: false, ..Default::default() };
            d.set_line_clock(LineClock::new(&off, None).unwrap_or_else(|e| panic!("{e}")));
            lines.iter().filter_map(|(_, l)| d.observe(&LineRef::plain(l), read)).count()
        };
        assert_eq!(blind, 200, "read-time windows would take every one of them for an attacker");

        // Attacks in the same backlog: one slow (a failure every 40 s: at
        // most 8 in any 5 minutes), one fast (10 in 90 s), one fast but
        // only after the slow one's pace (a failure every 31 s: 10 in 279 s).
        let mut attacks = lines.clone();
        for i in 0..30u64 {
            let slow = t0.plus(Duration::from_secs(3 * 3600 + i * 40));
            attacks.push((slow, sshd_at(slow, "203.0.113.1")));
            let fast = t0.plus(Duration::from_secs(7 * 3600 + i * 9));
            attacks.push((fast, sshd_at(fast, "203.0.113.2")));
            let edge = t0.plus(Duration::from_secs(11 * 3600 + i * 31));
            attacks.push((edge, sshd_at(edge, "203.0.113.3")));
        }
        attacks.sort_by_key(|(t, _)| *t);
        let [live, late] = raised_live_and_late(&config, &attacks, read);
        assert_eq!(live, BTreeSet::from(["203.0.113.2".to_owned(), "203.0.113.3".to_owned()]));
        assert_eq!(late, live, "found late iff found live");
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
