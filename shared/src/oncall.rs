//! On-call schedules: who holds the pager at a given instant.
//!
//! One file, one schedule, in the catalog's shape:
//!
//! ```yaml
//! apiVersion: remedy.dev/v1
//! kind: OnCallSchedule
//! metadata: {id: primary, title: Primary on-call}
//! time_zone: Europe/Berlin            # IANA name; the tz database is built in
//! rotation:
//!   participants: [alice, bob, carol]  # at least one, each once
//!   every: 1w                          # shift length: `<n>d` or `<n>w`
//!   handoff: {day: monday, time: "09:00"}
//!   starts: 2026-01-05                 # local date of the first hand-off, to participants[0]
//! overrides:                           # optional; the latest listed wins where they overlap
//!   - {person: dave, from: "2026-11-27T18:00", until: "2026-11-28T09:00"}
//! ```
//!
//! Hand-offs happen at `handoff.time` local wall-clock time in `time_zone`,
//! on `starts` and every `every` after it, so a 09:00 hand-off stays at
//! 09:00 across daylight-saving changes (08:00Z in winter and 07:00Z in
//! summer in Berlin). A local time that a change skips (02:30 on the night
//! clocks go forward) means the instant just after the gap; one that
//! happens twice means the first. `handoff.day` may be given only when a
//! shift is a whole number of weeks, and then `starts` must fall on it;
//! without it, hand-offs fall on the weekday of `starts`.
//!
//! An override puts `person` on call from `from` (included) until `until`
//! (excluded), whoever the rotation names, and applies before `starts`
//! too. Its times are local times in `time_zone` (`2026-11-27T18:00`, with
//! seconds if wanted) or RFC 3339 instants with an offset
//! (`2026-11-27T17:00:00Z`). The override person need not be a participant.
//!
//! [`load_schedule`] reads one file's text (the caller reads the file);
//! errors name the file and field, and the line when it is known.

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::{TimeZone, TimeZoneDatabase};
use serde::Deserialize;

use crate::catalog::{self, ApiVersion, CatalogKind, Metadata};
use crate::config::{ConfigError, parse_yaml};
use crate::runbook::locate::SourceMap;
use crate::time::Timestamp;

/// The longest shift: ten years. Longer is surely a mistake, and the bound
/// keeps date arithmetic far from overflow.
const MAX_SHIFT_DAYS: i64 = 3660;

/// An on-call schedule, checked.
#[derive(Debug, Clone)]
pub struct Schedule {
    id: String,
    title: String,
    time_zone: TimeZone,
    time_zone_name: String,
    participants: Vec<String>,
    every_days: i64,
    handoff: Time,
    starts: Date,
    overrides: Vec<Override>,
}

/// A person covering an interval, whoever the rotation names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Who is on call.
    pub person: String,
    /// From this instant, included.
    pub from: Timestamp,
    /// Until this instant, excluded.
    pub until: Timestamp,
}

impl Schedule {
    /// The schedule's id (`metadata.id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// One line for humans (`metadata.title`).
    pub fn title(&self) -> &str {
        &self.title
    }

    /// The IANA name of the time zone hand-offs are reckoned in, as the
    /// database spells it (`Europe/Berlin` for `europe/berlin`).
    pub fn time_zone(&self) -> &str {
        &self.time_zone_name
    }

    /// The rotation's people, in order.
    pub fn participants(&self) -> &[String] {
        &self.participants
    }

    /// The overrides, in the order listed (later ones win).
    pub fn overrides(&self) -> &[Override] {
        &self.overrides
    }

    /// Who is on call at `at`: the latest-listed override covering it, else
    /// the rotation's person; `None` before the rotation's first hand-off
    /// (when no override covers it) or outside the dates the calendar
    /// handles (years -9999 to 9999).
    pub fn on_call(&self, at: Timestamp) -> Option<String> {
        if let Some(o) = self.overrides.iter().rev().find(|o| o.from <= at && at < o.until) {
            return Some(o.person.clone());
        }
        let shift = self.shift_index(to_jiff(at)?)?;
        if shift < 0 {
            return None;
        }
        let n = i64::try_from(self.participants.len()).ok()?;
        let i = usize::try_from(shift.rem_euclid(n)).ok()?;
        self.participants.get(i).cloned()
    }

    /// The first instant strictly after `after` at which the pager may
    /// change hands: the rotation's next hand-off, or an override starting
    /// or ending, whichever comes first. It may hand the pager to the person
    /// already holding it (a rotation of one). `None` only past the dates
    /// the calendar handles.
    pub fn next_handoff(&self, after: Timestamp) -> Option<Timestamp> {
        let rotation = to_jiff(after)
            .and_then(|at| self.shift_index(at))
            .and_then(|shift| self.handoff_at(shift.max(-1) + 1))
            .map(from_jiff);
        let overrides = self.overrides.iter().flat_map(|o| [o.from, o.until]).filter(|t| *t > after);
        rotation.into_iter().chain(overrides).min()
    }

    /// The instant of hand-off `k` (0: the first, on `starts`).
    fn handoff_at(&self, k: i64) -> Option<jiff::Timestamp> {
        let days = k.checked_mul(self.every_days)?;
        let date = self.starts.checked_add(jiff::Span::new().try_days(days).ok()?).ok()?;
        self.time_zone.to_ambiguous_timestamp(DateTime::from_parts(date, self.handoff)).compatible().ok()
    }

    /// The shift `at` falls in: `k` with hand-off `k` at or before `at` and
    /// hand-off `k + 1` after it; negative before the first hand-off.
    fn shift_index(&self, at: jiff::Timestamp) -> Option<i64> {
        let local = self.time_zone.to_datetime(at);
        let days = self.starts.duration_until(local.date()).as_secs().div_euclid(86_400);
        // Exact but for the hours around the hand-off on its day (before the
        // hand-off time, or a daylight-saving change): one step fixes it.
        let mut k = days.div_euclid(self.every_days);
        for _ in 0..3 {
            match self.handoff_at(k) {
                Some(h) if h > at => k -= 1,
                // Below the calendar's range: long before the first shift.
                None if k <= 0 => return Some(-1),
                None => return None,
                Some(_) => match self.handoff_at(k + 1) {
                    Some(next) if next <= at => k += 1,
                    // No later hand-off fits the calendar: `at` stays in `k`.
                    _ => return Some(k),
                },
            }
        }
        Some(k)
    }
}

fn to_jiff(t: Timestamp) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_millisecond(t.as_millis()).ok()
}

fn from_jiff(t: jiff::Timestamp) -> Timestamp {
    Timestamp::from_millis(t.as_millisecond())
}

// ---------------------------------------------------------------- the file

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "apiVersion")]
    _api_version: ApiVersion,
    kind: CatalogKind,
    metadata: Metadata,
    time_zone: String,
    rotation: RotationFile,
    #[serde(default)]
    overrides: Vec<OverrideFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotationFile {
    participants: Vec<String>,
    every: String,
    handoff: HandoffFile,
    starts: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandoffFile {
    #[serde(default)]
    day: Option<String>,
    time: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideFile {
    person: String,
    from: String,
    until: String,
}

/// Parses and checks one schedule file's text. Errors name `source`, the
/// field (`time_zone`, `rotation.handoff.time`, `overrides[0].until`...)
/// and, once the YAML itself parsed, the line.
pub fn load_schedule(source: &str, text: &str) -> Result<Schedule, ConfigError> {
    let file: File = parse_yaml(source, text)?;
    let fail = |field: &str, message: String| {
        let line = SourceMap::parse(text).and_then(|m| m.locate(field)).map(|l| l.line());
        let message = match line {
            Some(line) => format!("{message} (line {line})"),
            None => message,
        };
        ConfigError::new(source, field, message)
    };

    if let Some((field, message)) =
        catalog::header_problems(CatalogKind::OnCallSchedule, file.kind, &file.metadata).into_iter().next()
    {
        return Err(fail(field, message));
    }
    let time_zone = lookup_time_zone(&file.time_zone).map_err(|e| fail("time_zone", e))?;

    let rotation = &file.rotation;
    if rotation.participants.is_empty() {
        return Err(fail("rotation.participants", "a rotation needs at least one person".to_owned()));
    }
    for (i, person) in rotation.participants.iter().enumerate() {
        let field = format!("rotation.participants[{i}]");
        if person.trim().is_empty() {
            return Err(fail(&field, "a person's name cannot be empty".to_owned()));
        }
        if let Some(first) = rotation.participants[..i].iter().position(|p| p == person) {
            return Err(fail(&field, format!("`{person}` is listed twice (also rotation.participants[{first}])")));
        }
    }
    let every_days = parse_every(&rotation.every).map_err(|e| fail("rotation.every", e))?;
    let handoff = parse_time_of_day(&rotation.handoff.time).map_err(|e| fail("rotation.handoff.time", e))?;
    let starts = parse_date(&rotation.starts).map_err(|e| fail("rotation.starts", e))?;
    if let Some(day) = &rotation.handoff.day {
        let day = parse_weekday(day).map_err(|e| fail("rotation.handoff.day", e))?;
        if every_days % 7 != 0 {
            return Err(fail(
                "rotation.handoff.day",
                format!(
                    "shifts of `{}` are not whole weeks, so they do not hand off on a fixed day; remove `day`",
                    rotation.every
                ),
            ));
        }
        if starts.weekday() != day {
            return Err(fail(
                "rotation.starts",
                format!(
                    "{starts} is a {}, but hand-offs are on {}s",
                    weekday_name(starts.weekday()),
                    weekday_name(day)
                ),
            ));
        }
    }
    // The first hand-off must be an instant the calendar can hold.
    time_zone
        .to_ambiguous_timestamp(DateTime::from_parts(starts, handoff))
        .compatible()
        .map_err(|e| fail("rotation.starts", format!("{starts} at {handoff} is out of range: {e}")))?;

    let mut overrides = Vec::with_capacity(file.overrides.len());
    for (i, o) in file.overrides.iter().enumerate() {
        let field = |name: &str| format!("overrides[{i}].{name}");
        if o.person.trim().is_empty() {
            return Err(fail(&field("person"), "a person's name cannot be empty".to_owned()));
        }
        let from = parse_instant(&o.from, &time_zone, &file.time_zone).map_err(|e| fail(&field("from"), e))?;
        let until = parse_instant(&o.until, &time_zone, &file.time_zone).map_err(|e| fail(&field("until"), e))?;
        if until <= from {
            return Err(fail(
                &field("until"),
                format!("`{}` is not after `from` ({}): an override must cover some time", o.until, o.from),
            ));
        }
        overrides.push(Override { person: o.person.clone(), from, until });
    }

    let time_zone_name = time_zone.iana_name().unwrap_or(&file.time_zone).to_owned();
    Ok(Schedule {
        id: file.metadata.id,
        title: file.metadata.title,
        time_zone,
        time_zone_name,
        participants: file.rotation.participants,
        every_days,
        handoff,
        starts,
        overrides,
    })
}

/// A zone from the built-in tz database (never the host's files).
fn lookup_time_zone(name: &str) -> Result<TimeZone, String> {
    let unknown = || {
        format!(
            "`{name}` is not a time zone of the IANA database (write names like Europe/Berlin, America/New_York, UTC)"
        )
    };
    match TimeZoneDatabase::bundled().get(name.trim()) {
        Ok(tz) if !tz.is_unknown() && !name.trim().is_empty() => Ok(tz),
        _ => Err(unknown()),
    }
}

/// `1d`, `3d`, `1w`, `2w` → days.
fn parse_every(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a shift length: write days or weeks, like 1d, 3d, 1w or 2w");
    let t = text.trim();
    let (number, unit) = t.split_at(t.len().saturating_sub(1));
    let n: i64 = if number.chars().all(|c| c.is_ascii_digit()) { number.parse().map_err(|_| bad())? } else { 0 };
    let days = match unit {
        "d" => n,
        "w" => n.saturating_mul(7),
        _ => return Err(bad()),
    };
    if days < 1 {
        return Err(bad());
    }
    if days > MAX_SHIFT_DAYS {
        return Err(format!("`{text}` is longer than the longest shift, {MAX_SHIFT_DAYS} days"));
    }
    Ok(days)
}

/// `HH:MM`, 00:00 to 23:59.
fn parse_time_of_day(text: &str) -> Result<Time, String> {
    let bad = || format!("`{text}` is not a time of day: write HH:MM, from 00:00 to 23:59");
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    let two_digits = |s: &str| s.len() == 2 && s.chars().all(|c| c.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return Err(bad());
    }
    let hour: i8 = h.parse().map_err(|_| bad())?;
    let minute: i8 = m.parse().map_err(|_| bad())?;
    Time::new(hour, minute, 0, 0).map_err(|_| bad())
}

/// `YYYY-MM-DD`.
fn parse_date(text: &str) -> Result<Date, String> {
    let t = text.trim();
    let shaped =
        t.len() == 10 && t.char_indices().all(|(i, c)| if i == 4 || i == 7 { c == '-' } else { c.is_ascii_digit() });
    let bad = || format!("`{text}` is not a date: write YYYY-MM-DD, like 2026-01-05");
    if !shaped {
        return Err(bad());
    }
    t.parse::<Date>().map_err(|_| bad())
}

fn parse_weekday(text: &str) -> Result<Weekday, String> {
    let day = match text.trim().to_ascii_lowercase().as_str() {
        "monday" => Weekday::Monday,
        "tuesday" => Weekday::Tuesday,
        "wednesday" => Weekday::Wednesday,
        "thursday" => Weekday::Thursday,
        "friday" => Weekday::Friday,
        "saturday" => Weekday::Saturday,
        "sunday" => Weekday::Sunday,
        _ => return Err(format!("`{text}` is not a day of the week: write monday, tuesday ... sunday")),
    };
    Ok(day)
}

fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Monday => "monday",
        Weekday::Tuesday => "tuesday",
        Weekday::Wednesday => "wednesday",
        Weekday::Thursday => "thursday",
        Weekday::Friday => "friday",
        Weekday::Saturday => "saturday",
        Weekday::Sunday => "sunday",
    }
}

/// An RFC 3339 instant with its offset, or a local date and time in `tz`.
fn parse_instant(text: &str, tz: &TimeZone, tz_name: &str) -> Result<Timestamp, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "`{text}` is not a time: write a local time in {tz_name}, like 2026-11-27T18:00, \
             or an RFC 3339 instant with its offset, like 2026-11-27T17:00:00Z"
        )
    };
    // A full date and a time: a bare date is too easily a mistake.
    if t.len() < 16 || t.as_bytes().get(10).is_none_or(|b| !matches!(b, b'T' | b't' | b' ')) {
        return Err(bad());
    }
    if let Ok(instant) = t.parse::<jiff::Timestamp>() {
        return Ok(from_jiff(instant));
    }
    let local: DateTime = t.parse().map_err(|_| bad())?;
    tz.to_ambiguous_timestamp(local).compatible().map(from_jiff).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap_or_else(|| panic!("`{text}` is RFC 3339"))
    }

    fn just_before(text: &str) -> Timestamp {
        Timestamp::from_millis(at(text).as_millis() - 1)
    }

    fn schedule(text: &str) -> Schedule {
        load_schedule("schedule.yaml", text).unwrap_or_else(|e| panic!("{e}"))
    }

    const WEEKLY: &str = r#"apiVersion: remedy.dev/v1
kind: OnCallSchedule
metadata: {id: primary, title: Primary on-call}
time_zone: Europe/Berlin
rotation:
  participants: [alice, bob, carol]
  every: 1w
  handoff: {day: monday, time: "09:00"}
  starts: 2026-01-05
"#;

    fn weekly_with(overrides: &str) -> Schedule {
        schedule(&format!("{WEEKLY}overrides:\n{overrides}"))
    }

    fn who(s: &Schedule, text: &str) -> Option<String> {
        s.on_call(at(text))
    }

    fn who_just_before(s: &Schedule, text: &str) -> Option<String> {
        s.on_call(just_before(text))
    }

    #[test]
    fn a_weekly_rotation_hands_off_at_the_local_hour_and_wraps_around() {
        let s = schedule(WEEKLY);
        assert_eq!(s.id(), "primary");
        assert_eq!(s.title(), "Primary on-call");
        assert_eq!(s.time_zone(), "Europe/Berlin");
        let lower = schedule(&WEEKLY.replace("Europe/Berlin", "europe/berlin"));
        assert_eq!(lower.time_zone(), "Europe/Berlin");
        // 09:00 in Berlin in January is 08:00Z.
        assert_eq!(who_just_before(&s, "2026-01-05T08:00:00Z"), None, "before the first hand-off");
        assert_eq!(who(&s, "2026-01-05T08:00:00Z").as_deref(), Some("alice"));
        assert_eq!(who(&s, "2026-01-09T23:00:00Z").as_deref(), Some("alice"));
        assert_eq!(who_just_before(&s, "2026-01-12T08:00:00Z").as_deref(), Some("alice"));
        assert_eq!(who(&s, "2026-01-12T08:00:00Z").as_deref(), Some("bob"));
        // Monday morning before nine is still last week's person.
        assert_eq!(who(&s, "2026-01-19T06:30:00Z").as_deref(), Some("bob"));
        assert_eq!(who(&s, "2026-01-19T08:00:00Z").as_deref(), Some("carol"));
        assert_eq!(who_just_before(&s, "2026-01-26T08:00:00Z").as_deref(), Some("carol"));
        assert_eq!(who(&s, "2026-01-26T08:00:00Z").as_deref(), Some("alice"), "wraps around");
        assert_eq!(who(&s, "2026-02-02T08:00:00Z").as_deref(), Some("bob"));

        assert_eq!(s.next_handoff(at("2026-01-01T00:00:00Z")), Some(at("2026-01-05T08:00:00Z")));
        assert_eq!(s.next_handoff(just_before("2026-01-05T08:00:00Z")), Some(at("2026-01-05T08:00:00Z")));
        assert_eq!(s.next_handoff(at("2026-01-05T08:00:00Z")), Some(at("2026-01-12T08:00:00Z")), "strictly after");
        assert_eq!(s.next_handoff(at("2026-01-14T12:00:00Z")), Some(at("2026-01-19T08:00:00Z")));
    }

    #[test]
    fn the_hand_off_stays_at_nine_local_across_the_daylight_saving_change() {
        let s = schedule(WEEKLY);
        // Clocks in Berlin go forward on Sunday 2026-03-29: the hand-off on
        // the Monday before is at 08:00Z (CET), the one after at 07:00Z (CEST).
        assert_eq!(who_just_before(&s, "2026-03-23T08:00:00Z").as_deref(), Some("bob"));
        assert_eq!(who(&s, "2026-03-23T08:00:00Z").as_deref(), Some("carol"));
        assert_eq!(s.next_handoff(at("2026-03-23T08:00:00Z")), Some(at("2026-03-30T07:00:00Z")));
        assert_eq!(who_just_before(&s, "2026-03-30T07:00:00Z").as_deref(), Some("carol"));
        assert_eq!(who(&s, "2026-03-30T07:00:00Z").as_deref(), Some("alice"));
        assert_eq!(who(&s, "2026-03-30T07:30:00Z").as_deref(), Some("alice"), "08:00Z would be 10:00 local");
        // And back on Sunday 2026-10-25: 07:00Z on the 19th, 08:00Z on the 26th.
        assert_eq!(s.next_handoff(at("2026-10-20T00:00:00Z")), Some(at("2026-10-26T08:00:00Z")));
        assert_eq!(who(&s, "2026-10-19T07:00:00Z"), who(&s, "2026-10-26T07:59:00Z"));
        assert_ne!(who(&s, "2026-10-26T07:59:00Z"), who(&s, "2026-10-26T08:00:00Z"));
    }

    #[test]
    fn the_seed_schedules_load_and_never_name_the_same_person_at_once() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runbooks");
        let load = |name: &str| {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(crate::catalog::peek_kind(&text), Some(crate::catalog::CatalogKind::OnCallSchedule));
            schedule(&text)
        };
        let (primary, secondary) = (load("oncall-primary.yaml"), load("oncall-secondary.yaml"));
        assert_eq!((primary.id(), secondary.id()), ("primary", "secondary"));
        for week in 0..6 {
            let t = at("2026-11-30T08:00:00Z").plus(std::time::Duration::from_secs(week * 7 * 24 * 3600));
            assert_ne!(primary.on_call(t), secondary.on_call(t), "week {week}");
            assert!(primary.on_call(t).is_some());
        }
    }

    #[test]
    fn unquoted_times_and_dates_read_as_written() {
        let s = schedule(&WEEKLY.replace("time: \"09:00\"", "time: 09:00"));
        assert_eq!(who(&s, "2026-01-05T08:00:00Z").as_deref(), Some("alice"));
        let s = weekly_with("  - {person: dave, from: 2026-11-27T18:00, until: 2026-11-28T09:00}\n");
        assert_eq!(who(&s, "2026-11-27T17:00:00Z").as_deref(), Some("dave"));
    }

    #[test]
    fn a_daily_rotation_hands_off_every_day_at_its_local_time() {
        let s = schedule(
            "apiVersion: remedy.dev/v1\nkind: OnCallSchedule\nmetadata: {id: daily, title: Daily}\n\
             time_zone: America/New_York\nrotation:\n  participants: [ann, ben]\n  every: 1d\n\
             \x20 handoff: {time: \"08:30\"}\n  starts: 2026-03-07\n",
        );
        // New York goes to daylight time on Sunday 2026-03-08.
        assert_eq!(who_just_before(&s, "2026-03-07T13:30:00Z"), None);
        assert_eq!(who(&s, "2026-03-07T13:30:00Z").as_deref(), Some("ann"));
        assert_eq!(who_just_before(&s, "2026-03-08T12:30:00Z").as_deref(), Some("ann"));
        assert_eq!(who(&s, "2026-03-08T12:30:00Z").as_deref(), Some("ben"));
        assert_eq!(who(&s, "2026-03-09T12:30:00Z").as_deref(), Some("ann"));
        assert_eq!(who(&s, "2026-03-10T03:00:00Z").as_deref(), Some("ann"), "the evening before is the same shift");
        assert_eq!(s.next_handoff(at("2026-03-09T12:30:00Z")), Some(at("2026-03-10T12:30:00Z")));
        // A year on, the rotation still alternates.
        assert_eq!(who(&s, "2027-03-07T13:30:00Z").as_deref(), Some("ben"), "365 shifts later: an odd number");
        assert_eq!(who(&s, "2027-03-08T13:30:00Z").as_deref(), Some("ann"));
    }

    #[test]
    fn a_shift_of_several_days_starts_from_its_first_date() {
        let text =
            WEEKLY.replace("every: 1w", "every: 3d").replace("{day: monday, time: \"09:00\"}", "{time: \"00:00\"}");
        let s = schedule(&text);
        assert_eq!(who(&s, "2026-01-04T23:00:00Z").as_deref(), Some("alice"), "midnight in Berlin");
        assert_eq!(who(&s, "2026-01-07T22:59:00Z").as_deref(), Some("alice"));
        assert_eq!(who(&s, "2026-01-07T23:00:00Z").as_deref(), Some("bob"));
        assert_eq!(who(&s, "2026-01-13T23:00:00Z").as_deref(), Some("alice"), "after three shifts of three days");
    }

    #[test]
    fn an_override_takes_the_pager_and_gives_it_back() {
        let s = weekly_with("  - {person: dave, from: \"2026-11-27T18:00\", until: \"2026-11-28T09:00\"}\n");
        // The week of Monday 2026-11-23 is bob's; 18:00 in Berlin in November is 17:00Z.
        assert_eq!(who_just_before(&s, "2026-11-27T17:00:00Z").as_deref(), Some("bob"));
        assert_eq!(who(&s, "2026-11-27T17:00:00Z").as_deref(), Some("dave"));
        assert_eq!(who_just_before(&s, "2026-11-28T08:00:00Z").as_deref(), Some("dave"));
        assert_eq!(who(&s, "2026-11-28T08:00:00Z").as_deref(), Some("bob"));
        assert_eq!(s.next_handoff(at("2026-11-27T12:00:00Z")), Some(at("2026-11-27T17:00:00Z")));
        assert_eq!(s.next_handoff(at("2026-11-27T17:00:00Z")), Some(at("2026-11-28T08:00:00Z")));
        assert_eq!(s.next_handoff(at("2026-11-28T08:00:00Z")), Some(at("2026-11-30T08:00:00Z")));
        assert_eq!(
            s.overrides(),
            [Override { person: "dave".into(), from: at("2026-11-27T17:00:00Z"), until: at("2026-11-28T08:00:00Z") }]
        );
    }

    #[test]
    fn where_overrides_overlap_the_latest_listed_wins() {
        let s = weekly_with(
            "  - {person: dave, from: \"2026-11-27T18:00\", until: \"2026-11-28T09:00\"}\n\
             \x20 - {person: erin, from: \"2026-11-27T20:00:00+00:00\", until: \"2026-11-27T21:00:00Z\"}\n\
             \x20 - {person: frank, from: \"2026-11-28T08:30\", until: \"2026-11-28T10:00\"}\n",
        );
        assert_eq!(who(&s, "2026-11-27T19:59:00Z").as_deref(), Some("dave"));
        assert_eq!(who(&s, "2026-11-27T20:30:00Z").as_deref(), Some("erin"));
        assert_eq!(who(&s, "2026-11-27T21:00:00Z").as_deref(), Some("dave"), "erin's hour is over");
        assert_eq!(who(&s, "2026-11-28T07:30:00Z").as_deref(), Some("frank"), "listed after dave");
        assert_eq!(who(&s, "2026-11-28T08:59:00Z").as_deref(), Some("frank"), "dave's end changes nothing");
        assert_eq!(who(&s, "2026-11-28T09:00:00Z").as_deref(), Some("bob"));
        assert_eq!(s.next_handoff(at("2026-11-27T17:30:00Z")), Some(at("2026-11-27T20:00:00Z")));
    }

    #[test]
    fn an_override_before_the_rotation_starts_still_counts() {
        let s = weekly_with("  - {person: dave, from: \"2026-01-01T00:00\", until: \"2026-01-02T00:00\"}\n");
        assert_eq!(who(&s, "2025-12-31T23:30:00Z").as_deref(), Some("dave"));
        assert_eq!(who(&s, "2026-01-01T23:30:00Z"), None);
        assert_eq!(who(&s, "2020-06-01T00:00:00Z"), None);
    }

    #[test]
    fn instants_the_calendar_cannot_hold_give_none_not_a_panic() {
        let s = schedule(WEEKLY);
        assert_eq!(s.on_call(Timestamp::from_millis(i64::MAX)), None);
        assert_eq!(s.on_call(Timestamp::from_millis(i64::MIN)), None);
        assert_eq!(s.next_handoff(Timestamp::from_millis(i64::MAX)), None);
        assert_eq!(s.next_handoff(Timestamp::from_millis(i64::MIN)), None);
        assert_eq!(s.on_call(Timestamp::EPOCH), None);
        assert_eq!(s.next_handoff(Timestamp::EPOCH), Some(at("2026-01-05T08:00:00Z")));
        // Near the calendar's end the rotation still answers.
        assert!(s.on_call(at("9999-12-30T00:00:00Z")).is_some());
        let one = schedule(&WEEKLY.replace("every: 1w", "every: 520w"));
        assert!(one.on_call(at("9999-12-30T00:00:00Z")).is_some());
    }

    fn error(text: &str) -> ConfigError {
        match load_schedule("schedule.yaml", text) {
            Ok(s) => panic!("accepted: {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_inputs_are_refused_naming_the_field() {
        let cases = [
            (WEEKLY.replace("Europe/Berlin", "Europe/Berlinn"), "time_zone", "Europe/Berlinn"),
            (WEEKLY.replace("Europe/Berlin", "\"\""), "time_zone", "not a time zone"),
            (WEEKLY.replace("[alice, bob, carol]", "[]"), "rotation.participants", "at least one"),
            (WEEKLY.replace("[alice, bob, carol]", "[alice, bob, alice]"), "rotation.participants[2]", "twice"),
            (WEEKLY.replace("[alice, bob, carol]", "[alice, \" \"]"), "rotation.participants[1]", "empty"),
            (WEEKLY.replace("\"09:00\"", "\"25:00\""), "rotation.handoff.time", "`25:00`"),
            (WEEKLY.replace("\"09:00\"", "\"9am\""), "rotation.handoff.time", "HH:MM"),
            (WEEKLY.replace("monday", "mondy"), "rotation.handoff.day", "mondy"),
            (WEEKLY.replace("monday", "tuesday"), "rotation.starts", "is a monday"),
            (WEEKLY.replace("every: 1w", "every: 3d"), "rotation.handoff.day", "not whole weeks"),
            (WEEKLY.replace("every: 1w", "every: 0d"), "rotation.every", "`0d`"),
            (WEEKLY.replace("every: 1w", "every: 1 week"), "rotation.every", "days or weeks"),
            (WEEKLY.replace("every: 1w", "every: 99999w"), "rotation.every", "longest shift"),
            (WEEKLY.replace("2026-01-05", "2026-01-32"), "rotation.starts", "not a date"),
            (WEEKLY.replace("2026-01-05", "\"5 Jan\""), "rotation.starts", "YYYY-MM-DD"),
            (WEEKLY.replace("id: primary", "id: \"on call\""), "metadata.id", "not an id"),
            (WEEKLY.replace("time_zone:", "timezone:"), "timezone", "unknown field"),
            (WEEKLY.replace("kind: OnCallSchedule", "kind: Runbook"), "kind", "Runbook"),
        ];
        for (text, field, message) in cases {
            let err = error(&text);
            assert_eq!(err.field, field, "{err}");
            assert_eq!(err.file, "schedule.yaml");
            assert!(err.message.contains(message), "{message:?} not in: {err}");
        }
    }

    #[test]
    fn a_bad_override_is_refused_naming_it_and_its_line() {
        let cases = [
            (
                "  - {person: dave, from: \"2026-11-28T09:00\", until: \"2026-11-27T18:00\"}\n",
                "overrides[0].until",
                "not after `from`",
            ),
            (
                "  - {person: dave, from: \"2026-11-28T09:00\", until: \"2026-11-28T09:00\"}\n",
                "overrides[0].until",
                "not after",
            ),
            (
                "  - {person: dave, from: \"tomorrow\", until: \"2026-11-28T09:00\"}\n",
                "overrides[0].from",
                "local time in Europe/Berlin",
            ),
            (
                "  - {person: dave, from: \"2026-11-28\", until: \"2026-11-29T09:00\"}\n",
                "overrides[0].from",
                "not a time",
            ),
            (
                "  - {person: dave, from: \"2026-11-28T25:00\", until: \"2026-11-29T09:00\"}\n",
                "overrides[0].from",
                "not a time",
            ),
            (
                "  - {person: \"\", from: \"2026-11-28T08:00\", until: \"2026-11-29T09:00\"}\n",
                "overrides[0].person",
                "empty",
            ),
        ];
        for (overrides, field, message) in cases {
            let err = error(&format!("{WEEKLY}overrides:\n{overrides}"));
            assert_eq!(err.field, field, "{err}");
            assert!(err.message.contains(message), "{message:?} not in: {err}");
            assert!(err.message.contains("(line 11)"), "the line is named: {err}");
        }
    }

    #[test]
    fn times_of_day_and_shift_lengths_parse_strictly() {
        assert_eq!(parse_time_of_day("00:00"), Ok(Time::midnight()));
        assert_eq!(parse_time_of_day("23:59"), Time::new(23, 59, 0, 0).map_err(|e| e.to_string()));
        for bad in ["24:00", "12:60", "9:00", "09:00:00", "", ":", "-1:00", "+9:00"] {
            assert!(parse_time_of_day(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_every("1d"), Ok(1));
        assert_eq!(parse_every("2w"), Ok(14));
        for bad in ["", "d", "w", "1", "1h", "-1d", "+1d", "1.5w", "1 w", "99999999999999999999d"] {
            assert!(parse_every(bad).is_err(), "{bad}");
        }
    }
}
