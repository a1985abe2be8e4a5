//! When a line was written, read from the line itself: the detectors judge
//! a line in the window in which it was written, not in the one in which
//! the agent happened to read it. An agent catching up on a backlog (after
//! a restart, or a burst) reads a day of lines in seconds; judged on the
//! read time, people who mistyped once an hour would look like an attack,
//! and a slow attack read late would look fast.
//!
//! Where the time comes from, the first found wins:
//!
//! 1. The CRI prefix of a container log (the runtime's clock), which the
//!    tailer passes as [`LineRef::timestamp`].
//! 2. A syslog envelope at the start of the line: RFC 5424's
//!    `<PRI>1 TIMESTAMP`, an RFC 3339 timestamp (rsyslog's
//!    `RSYSLOG_FileFormat`, `2026-11-26T10:00:00.123456+01:00 host sshd[7]: ...`),
//!    or RFC 3164's `Mmm dd HH:MM:SS` (rsyslog's default
//!    `RSYSLOG_TraditionalFileFormat` and syslog-ng: `/var/log/auth.log`).
//! 3. `journalctl -o json`'s `__REALTIME_TIMESTAMP` (microseconds).
//! 4. nginx's `[$time_local]` (`[10/Oct/2000:13:55:36 -0700]`), the field
//!    after the remote user in the `combined` format; Envoy's
//!    `[%START_TIME%]` at the start of its default format.
//! 5. A JSON object's `time` (Go's `log/slog`, logrus), `ts` (zap: RFC 3339
//!    or epoch seconds), `timestamp` or `@timestamp` field.
//!
//! An RFC 3164 timestamp has neither year nor zone: it is read in the
//! configured zone (the node's local zone, as syslog writes it, by
//! default), in the year that puts it nearest to the node's clock (a
//! `Dec 31 23:59:59` read on the 1st of January is last year's).
//!
//! Only positions the writer fills are read, never a field a client writes
//! (nginx's time is taken after the user field, which holds no space), and
//! a time is checked against the node's clock: a line written more than
//! `max_age` before it is read is still judged at its own time, in its own
//! window, and flagged (`too_old` in the detectors' counters: judged at the
//! read time instead, a backlog of several days would again pile into one
//! window); one more than `max_ahead` after it (a wrong clock or zone) is
//! not believed, as it would hold its key's window ahead of every later
//! line, and the line is judged at its read time (`time_out_of_bounds`).
//! Parsing allocates nothing.

use std::time::Duration;

use jiff::tz::{TimeZone, TimeZoneDatabase};
use serde::{Deserialize, Serialize};

use super::{InvalidLogConfig, LineRef};
use crate::config::duration;
use crate::time::Timestamp;

/// How lines' own times are used (`logs.line_time` in the agent's file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LineTimeConfig {
    /// Judge lines on their own time where they carry one; off, every line
    /// is judged at its read time.
    pub enabled: bool,
    /// A line written further back than this from the node's clock is
    /// flagged (`too_old`), still judged at its own time.
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// A line's time further ahead than this of the node's clock is not
    /// believed.
    #[serde(with = "duration")]
    pub max_ahead: Duration,
    /// The zone RFC 3164 timestamps (`Nov 26 10:00:00`) are read in:
    /// `local` (the node's `/etc/localtime`, where syslog runs) or an IANA
    /// name (`UTC`, `Europe/Berlin`).
    pub syslog_zone: String,
}

impl Default for LineTimeConfig {
    fn default() -> Self {
        LineTimeConfig {
            enabled: true,
            max_age: Duration::from_secs(24 * 3600),
            max_ahead: Duration::from_secs(300),
            syslog_zone: "local".to_owned(),
        }
    }
}

/// Turns a line into the time it is judged at.
#[derive(Debug, Clone)]
pub struct LineClock {
    enabled: bool,
    max_age_ms: i64,
    max_ahead_ms: i64,
    zone: TimeZone,
}

impl Default for LineClock {
    /// The default bounds, RFC 3164 times read as UTC.
    fn default() -> Self {
        LineClock::new(&LineTimeConfig { syslog_zone: "UTC".to_owned(), ..LineTimeConfig::default() }, None).unwrap_or(
            LineClock { enabled: true, max_age_ms: 24 * 3_600_000, max_ahead_ms: 300_000, zone: TimeZone::UTC },
        )
    }
}

/// Which time a line is judged at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// Its own, within bounds.
    Written(Timestamp),
    /// It carries none (or line times are off): its read time.
    Read(Timestamp),
    /// Its own was further ahead than `max_ahead`: its read time.
    OutOfBounds(Timestamp),
    /// Its own, written more than `max_age` before it was read: judged
    /// at it, and flagged.
    TooOld(Timestamp),
}

impl Judged {
    /// The time, after counting how it was chosen into a detector's
    /// stats: lines at their own time, own times out of bounds, lines too
    /// old.
    pub fn counted(self, at_line_time: &mut u64, out_of_bounds: &mut u64, too_old: &mut u64) -> Timestamp {
        match self {
            Judged::Written(_) => *at_line_time += 1,
            Judged::Read(_) => {}
            Judged::OutOfBounds(_) => *out_of_bounds += 1,
            Judged::TooOld(_) => *too_old += 1,
        }
        self.at()
    }

    /// The time.
    pub fn at(self) -> Timestamp {
        match self {
            Judged::Written(t) | Judged::Read(t) | Judged::OutOfBounds(t) | Judged::TooOld(t) => t,
        }
    }
}

impl LineClock {
    /// A clock for `config`; `local` is the node's zone (the bytes of its
    /// `/etc/localtime`), used when `syslog_zone` is `local`, UTC when
    /// `None` or unreadable.
    pub fn new(config: &LineTimeConfig, local: Option<&[u8]>) -> Result<Self, InvalidLogConfig> {
        if config.max_age < Duration::from_secs(60) || config.max_age > Duration::from_secs(7 * 24 * 3600) {
            return Err(InvalidLogConfig::new("max_age", "must be between 1m and 7d"));
        }
        if config.max_ahead > Duration::from_secs(24 * 3600) {
            return Err(InvalidLogConfig::new("max_ahead", "must be at most 1d"));
        }
        let name = config.syslog_zone.trim();
        let zone = if name == "local" {
            local.and_then(|bytes| TimeZone::tzif("localtime", bytes).ok()).unwrap_or(TimeZone::UTC)
        } else {
            match TimeZoneDatabase::bundled().get(name) {
                Ok(tz) if !tz.is_unknown() && !name.is_empty() => tz,
                _ => {
                    return Err(InvalidLogConfig::new(
                        "syslog_zone",
                        format!(
                            "`{name}` is neither `local` nor a time zone of the IANA database (UTC, Europe/Berlin)"
                        ),
                    ));
                }
            }
        };
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Ok(LineClock {
            enabled: config.enabled,
            max_age_ms: ms(config.max_age),
            max_ahead_ms: ms(config.max_ahead),
            zone,
        })
    }

    /// The time `line`, read at `now` (the node's clock), is judged at.
    pub fn judge(&self, line: &LineRef<'_>, now: Timestamp) -> Judged {
        if !self.enabled {
            return Judged::Read(now);
        }
        let Some(t) = line.timestamp.or_else(|| written_at(line.message, now, &self.zone)) else {
            return Judged::Read(now);
        };
        let (t, n) = (t.as_millis(), now.as_millis());
        if t < n.saturating_sub(self.max_age_ms) {
            Judged::TooOld(Timestamp::from_millis(t))
        } else if t > n.saturating_add(self.max_ahead_ms) {
            Judged::OutOfBounds(now)
        } else {
            Judged::Written(Timestamp::from_millis(t))
        }
    }
}

/// The time a message says it was written, if it says so where a writer
/// puts it (see the module's documentation); RFC 3164 times are read in
/// `zone` in the year nearest to `now`.
pub fn written_at(message: &str, now: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
    let b = message.as_bytes();
    match *b.first()? {
        b'{' => json(b),
        b'[' => {
            // Envoy: `[2026-11-26T10:00:00.000Z] "POST ...`.
            let end = b.iter().position(|&c| c == b']')?;
            rfc3339(&b[1..end])
        }
        b'<' => {
            // `<PRI>` then RFC 5424 (`1 TIMESTAMP ...`) or BSD.
            let close = b.iter().take(5).position(|&c| c == b'>')?;
            let rest = &b[close + 1..];
            match rest {
                [v, b' ', tail @ ..] if v.is_ascii_digit() => rfc3339(token(tail)),
                [v1, v2, b' ', tail @ ..] if v1.is_ascii_digit() && v2.is_ascii_digit() => rfc3339(token(tail)),
                _ => syslog_start(rest, now, zone),
            }
        }
        c if c.is_ascii_digit() => syslog_start(b, now, zone).or_else(|| nginx(b)),
        c if c.is_ascii_uppercase() => rfc3164(b, now, zone).or_else(|| nginx(b)),
        _ => nginx(b),
    }
}

/// The bytes up to the first space.
fn token(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == b' ').map_or(b, |i| &b[..i])
}

/// An RFC 3339 or an RFC 3164 timestamp at the start of a syslog line.
fn syslog_start(b: &[u8], now: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
    if b.first()?.is_ascii_digit() {
        return rfc3339(token(b));
    }
    rfc3164(b, now, zone)
}

const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

fn month(b: &[u8]) -> Option<i8> {
    let m = MONTHS.iter().position(|m| b.get(..3) == Some(&m[..]))?;
    Some(m as i8 + 1)
}

/// Digits `b[at..at + n]` as a number.
fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let mut v = 0i64;
    for &c in b.get(at..at + n)? {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

/// `Mmm dd HH:MM:SS` (the day padded with a space, or not).
fn rfc3164(b: &[u8], now: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
    let mon = month(b)?;
    let rest = b.get(3..)?;
    let spaces = rest.iter().take_while(|&&c| c == b' ').count();
    if spaces == 0 {
        return None;
    }
    let rest = &rest[spaces..];
    let day_len = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if !(1..=2).contains(&day_len) || rest.get(day_len) != Some(&b' ') {
        return None;
    }
    let day = digits(rest, 0, day_len)?;
    let clock = &rest[day_len + 1..];
    if clock.get(2) != Some(&b':') || clock.get(5) != Some(&b':') {
        return None;
    }
    let (h, m, s) = (digits(clock, 0, 2)?, digits(clock, 3, 2)?, digits(clock, 6, 2)?);
    let now_j = jiff::Timestamp::from_millisecond(now.as_millis()).ok()?;
    let year = zone.to_datetime(now_j).year();
    let (h, m, s, day) = (i8::try_from(h).ok()?, i8::try_from(m).ok()?, i8::try_from(s).ok()?, i8::try_from(day).ok()?);
    // The year that puts the time nearest to now: last year's December
    // read in January, this year's otherwise.
    let mut best: Option<Timestamp> = None;
    for y in [year - 1, year, year + 1] {
        let Ok(dt) = jiff::civil::DateTime::new(y, mon, day, h, m, s, 0) else { continue };
        let Ok(t) = zone.to_ambiguous_timestamp(dt).compatible() else { continue };
        let t = Timestamp::from_millis(t.as_millisecond());
        let off = |t: Timestamp| (t.as_millis() - now.as_millis()).abs();
        if best.is_none_or(|b| off(t) < off(b)) {
            best = Some(t);
        }
    }
    best
}

/// nginx's `combined`: `$remote_addr - $remote_user [$time_local] "..."`,
/// the time the fourth field (neither address nor user holds a space).
fn nginx(b: &[u8]) -> Option<Timestamp> {
    let mut rest = b;
    for _ in 0..3 {
        let i = rest.iter().position(|&c| c == b' ')?;
        rest = &rest[i + 1..];
    }
    // `[10/Oct/2000:13:55:36 -0700]`
    let t = rest.get(..28)?;
    if t[0] != b'[' || t[3] != b'/' || t[7] != b'/' || t[12] != b':' || t[21] != b' ' || t[27] != b']' {
        return None;
    }
    let day = digits(t, 1, 2)?;
    let mon = i64::from(month(&t[4..7])?);
    let year = digits(t, 8, 4)?;
    let (h, m, s) = (digits(t, 13, 2)?, digits(t, 16, 2)?, digits(t, 19, 2)?);
    let sign = match t[22] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let offset = sign * (digits(t, 23, 2)? * 3600 + digits(t, 25, 2)? * 60);
    civil_ms(year, mon, day, h, m, s, 0, offset)
}

/// A JSON object's `time`, `ts`, `timestamp` or `@timestamp`, or
/// journald's `__REALTIME_TIMESTAMP`; the first key found in that order.
fn json(b: &[u8]) -> Option<Timestamp> {
    for key in [&b"\"time\""[..], b"\"ts\"", b"\"timestamp\"", b"\"@timestamp\"", b"\"__REALTIME_TIMESTAMP\""] {
        let Some(at) = find(b, key) else { continue };
        let mut rest = &b[at + key.len()..];
        rest = trim_start(rest);
        let Some(after) = rest.strip_prefix(b":") else { continue };
        rest = trim_start(after);
        let journal = key == &b"\"__REALTIME_TIMESTAMP\""[..];
        if let Some(s) = rest.strip_prefix(b"\"") {
            let end = s.iter().position(|&c| c == b'"')?;
            let value = &s[..end];
            return if journal { epoch(value, 1_000_000) } else { rfc3339(value).or_else(|| epoch(value, 1)) };
        }
        let end = rest.iter().position(|c| !(c.is_ascii_digit() || *c == b'.')).unwrap_or(rest.len());
        return epoch(&rest[..end], if journal { 1_000_000 } else { 1 });
    }
    None
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A count of `1 / per` seconds since the epoch, possibly with a fraction
/// (zap's `1732615200.123456`).
fn epoch(b: &[u8], per: i64) -> Option<Timestamp> {
    if b.is_empty() || b.len() > 24 {
        return None;
    }
    let dot = b.iter().position(|&c| c == b'.').unwrap_or(b.len());
    let whole = digits(b, 0, dot)?;
    let frac = b.get(dot + 1..).unwrap_or_default();
    let mut frac_ms = 0i64;
    let mut scale = 100i64;
    for &c in frac.iter().take(3) {
        if !c.is_ascii_digit() {
            return None;
        }
        frac_ms += i64::from(c - b'0') * scale;
        scale /= 10;
    }
    let ms = whole.checked_mul(1000)?.checked_div(per)?.checked_add(frac_ms / per)?;
    (ms > 0).then(|| Timestamp::from_millis(ms))
}

/// RFC 3339 (`2026-11-26T10:00:00.123456789Z`, `...+01:00`; also the
/// `+0100` offset and the space separator of some writers), without
/// allocating; `None` before the Unix epoch.
pub fn rfc3339(b: &[u8]) -> Option<Timestamp> {
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, mon, day) = (digits(b, 0, 4)?, digits(b, 5, 2)?, digits(b, 8, 2)?);
    let (h, m, s) = (digits(b, 11, 2)?, digits(b, 14, 2)?, digits(b, 17, 2)?);
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 3 {
                ms = ms * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            ms *= 10;
        }
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
            let zone = [*h1, *h2, *m1, *m2];
            let (oh, om) = (digits(&zone, 0, 2)?, digits(&zone, 2, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let sign = if *sign == b'+' { 1 } else { -1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    civil_ms(year, mon, day, h, m, s, ms, offset)
}

/// Unix milliseconds of a civil time at `offset` seconds east of UTC;
/// `None` for an impossible date or one before the epoch.
#[allow(clippy::too_many_arguments)]
fn civil_ms(year: i64, mon: i64, day: i64, h: i64, m: i64, s: i64, ms: i64, offset: i64) -> Option<Timestamp> {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&mon) || day < 1 || day > days_in[(mon - 1) as usize] || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from the epoch (Howard Hinnant's days_from_civil).
    let y = if mon <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mon + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + s.min(59) - offset;
    (secs >= 0).then(|| Timestamp::from_millis(secs * 1000 + ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap_or_else(|| panic!("{s}"))
    }

    fn utc(message: &str, now: &str) -> Option<Timestamp> {
        written_at(message, t(now), &TimeZone::UTC)
    }

    #[test]
    fn rfc3339_is_parsed_as_the_reference_parser_does() {
        for s in [
            "2016-10-06T00:17:09.669794202Z",
            "2016-10-06T00:17:09.669794202-07:00",
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:00:00.1+01:00",
            "2024-02-29T23:59:59.999Z",
            "1970-01-01T00:00:00Z",
            "2000-03-01T00:00:00+05:30",
        ] {
            assert_eq!(rfc3339(s.as_bytes()), Timestamp::parse_rfc3339(s), "{s}");
        }
        // zap's ISO 8601 encoder writes the offset without a colon.
        assert_eq!(rfc3339(b"2026-11-26T11:00:00.000+0100"), Some(t("2026-11-26T10:00:00Z")));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-26T10:00:00",
            "yesterday",
            "2026-11-26T10:00:00.Z",
        ] {
            assert_eq!(rfc3339(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn sshd_lines_as_rsyslog_and_journald_write_them() {
        let msg = "sshd[4121]: Failed password for invalid user admin from 192.0.2.44 port 50122 ssh2";
        let now = "2026-11-26T12:00:00Z";
        // rsyslog's default RSYSLOG_TraditionalFileFormat (/var/log/auth.log).
        assert_eq!(utc(&format!("Nov 26 10:00:00 node-1 {msg}"), now), Some(t("2026-11-26T10:00:00Z")));
        assert_eq!(utc(&format!("Nov  6 09:05:01 node-1 {msg}"), now), Some(t("2026-11-06T09:05:01Z")));
        // RSYSLOG_FileFormat: RFC 3339 with microseconds and the offset.
        assert_eq!(
            utc(&format!("2026-11-26T11:00:00.321974+01:00 node-1 {msg}"), now),
            Some(t("2026-11-26T10:00:00.321Z"))
        );
        // RFC 5424 as forwarded (RSYSLOG_SyslogProtocol23Format).
        assert_eq!(
            utc("<38>1 2026-11-26T10:00:00.954167-04:00 node-1 sshd 57915 - - Failed password", now),
            Some(t("2026-11-26T14:00:00.954Z"))
        );
        assert_eq!(utc(&format!("<38>Nov 26 10:00:00 node-1 {msg}"), now), Some(t("2026-11-26T10:00:00Z")));
        // journalctl -o json: microseconds since the epoch, as a string.
        let journal = r#"{"__REALTIME_TIMESTAMP":"1795687200123456","SYSLOG_IDENTIFIER":"sshd","_PID":"812","MESSAGE":"Failed password for root from 192.0.2.1 port 22 ssh2"}"#;
        assert_eq!(utc(journal, now), Some(Timestamp::from_millis(1_795_687_200_123)));
        // Bare messages (sshd -e in a container) carry no time.
        assert_eq!(utc(msg, now), None);
        assert_eq!(utc("Failed password for root from 192.0.2.1 port 22 ssh2", now), None);
    }

    #[test]
    fn rfc3164_times_take_the_zone_and_the_year_nearest_to_now() {
        let line = "Dec 31 23:59:59 node-1 sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2";
        // Read just after the new year: last year's.
        assert_eq!(utc(line, "2027-01-01T00:00:30Z"), Some(t("2026-12-31T23:59:59Z")));
        // Read within the year: this year's.
        assert_eq!(utc(line, "2026-12-31T23:59:59Z"), Some(t("2026-12-31T23:59:59Z")));
        let jan = "Jan  1 00:00:10 node-1 sshd[1]: x";
        // A clock slightly behind the writer's, on the 31st: next year's.
        assert_eq!(utc(jan, "2026-12-31T23:59:50Z"), Some(t("2027-01-01T00:00:10Z")));
        // In the node's zone (Europe/Berlin is UTC+1 in November).
        let berlin = TimeZoneDatabase::bundled().get("Europe/Berlin").unwrap_or_else(|e| panic!("{e}"));
        let at = written_at("Nov 26 11:00:00 node-1 sshd[1]: x", t("2026-11-26T12:00:00Z"), &berlin);
        assert_eq!(at, Some(t("2026-11-26T10:00:00Z")));
        // February 29th exists only in leap years.
        assert_eq!(utc("Feb 29 10:00:00 h sshd[1]: x", "2028-03-01T00:00:00Z"), Some(t("2028-02-29T10:00:00Z")));
        assert_eq!(utc("Feb 29 10:00:00 h sshd[1]: x", "2026-03-01T00:00:00Z"), None);
    }

    #[test]
    fn access_logs_as_nginx_and_envoy_write_them() {
        let now = "2026-11-26T12:00:00Z";
        // nginx's combined format.
        let nginx = r#"203.0.113.9 - alice [26/Nov/2026:10:00:00 -0700] "POST /login HTTP/1.1" 401 153 "-" "curl/8.0""#;
        assert_eq!(utc(nginx, now), Some(t("2026-11-26T17:00:00Z")));
        let v6 = r#"2001:db8::bad - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.0" 200 2326 "-" "-""#;
        assert_eq!(utc(v6, now), Some(t("2000-10-10T13:55:36Z")));
        // A user field cannot bring a time of its own: it holds no space,
        // so the fourth field is nginx's.
        let forged = r#"203.0.113.9 - [01/Jan/2026:00:00:00 +0000] [26/Nov/2026:10:00:00 +0000] "POST /login HTTP/1.1" 401 1 "-" "-""#;
        assert_eq!(utc(forged, now), None);
        let envoy = r#"[2026-11-26T10:00:00.000Z] "POST /oauth/token HTTP/1.1" 401 - 154 0 12 11 "-" "curl/8.0" "c2f1" "idp" "10.1.2.3:8080""#;
        assert_eq!(utc(envoy, now), Some(t("2026-11-26T10:00:00Z")));
    }

    #[test]
    fn json_lines_as_slog_zap_and_logrus_write_them() {
        let now = "2026-11-26T12:00:00Z";
        // Go's log/slog JSONHandler.
        let slog = r#"{"time":"2026-11-26T11:00:00.123456789+01:00","level":"WARN","msg":"login failed","event":"login_failed","ip":"192.0.2.80"}"#;
        assert_eq!(utc(slog, now), Some(t("2026-11-26T10:00:00.123Z")));
        // zap's production encoder: epoch seconds as a float.
        let zap = r#"{"level":"info","ts":1795687200.1234567,"caller":"auth/login.go:88","msg":"login failed","event":"login_failed"}"#;
        assert_eq!(utc(zap, now), Some(Timestamp::from_millis(1_795_687_200_123)));
        // zap's development encoder (ISO 8601), and a spaced writer.
        let zap_iso = r#"{"level":"warn","ts":"2026-11-26T10:00:00.000Z","msg":"x"}"#;
        assert_eq!(utc(zap_iso, now), Some(t("2026-11-26T10:00:00Z")));
        let logrus = r#"{"event" : "auth_failed", "time" : "2026-11-26T10:00:00Z", "ip": "192.0.2.81"}"#;
        assert_eq!(utc(logrus, now), Some(t("2026-11-26T10:00:00Z")));
        // A key inside a string value is escaped, never taken.
        let inner = r#"{"msg":"user wrote \"time\":\"2000-01-01T00:00:00Z\"","event":"login_failed"}"#;
        assert_eq!(utc(inner, now), None);
    }

    #[test]
    fn times_outside_the_bounds_fall_back_to_the_read_time() {
        let clock = LineClock::default();
        let now = t("2026-11-26T12:00:00Z");
        let line = |m| LineRef::plain(m);
        assert_eq!(clock.judge(&line("Nov 26 10:00:00 h sshd[1]: x"), now), Judged::Written(t("2026-11-26T10:00:00Z")));
        assert_eq!(
            clock.judge(&line("2026-11-25T11:00:00Z h sshd[1]: x"), now),
            Judged::TooOld(t("2026-11-25T11:00:00Z"))
        );
        assert_eq!(clock.judge(&line("2026-11-26T12:06:00Z h sshd[1]: x"), now), Judged::OutOfBounds(now));
        assert_eq!(
            clock.judge(&line("2026-11-26T12:04:00Z h sshd[1]: x"), now),
            Judged::Written(t("2026-11-26T12:04:00Z"))
        );
        assert_eq!(clock.judge(&line("sshd[1]: x"), now), Judged::Read(now));
        // The runtime's time (CRI) comes before the message's.
        let cri = LineRef { timestamp: Some(t("2026-11-26T11:59:00Z")), ..line("Nov 26 10:00:00 h sshd[1]: x") };
        assert_eq!(clock.judge(&cri, now), Judged::Written(t("2026-11-26T11:59:00Z")));
        let off = LineClock::new(&LineTimeConfig { enabled: false, ..LineTimeConfig::default() }, None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(off.judge(&cri, now), Judged::Read(now));
        let bad = LineTimeConfig { syslog_zone: "Mars/Olympus".to_owned(), ..LineTimeConfig::default() };
        assert_eq!(LineClock::new(&bad, None).map(|_| ()).map_err(|e| e.field), Err("syslog_zone".to_owned()));
    }
}
