//! The envelope around a daemon's message: a BSD syslog header (RFC 3164,
//! with a classic or an ISO 8601 timestamp), an RFC 5424 header, a line of
//! `journalctl -o json`, or nothing (a daemon logging to stderr, as sshd
//! does with `-e` in a container).
//!
//! Only the logging system writes an envelope, so reading it first tells
//! where the daemon's own message starts: the rules that read the message
//! anchor there, and nothing a client wrote can come before it.

use std::borrow::Cow;

use serde_json::Value;

/// A message and who logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The program (syslog tag, RFC 5424 APP-NAME, journald
    /// `SYSLOG_IDENTIFIER`); `None` for a bare message.
    pub program: Option<Cow<'a, str>>,
    /// Its process id, when the envelope gives one.
    pub pid: Option<u32>,
    /// The message as the program wrote it.
    pub message: Cow<'a, str>,
}

impl<'a> Envelope<'a> {
    fn bare(message: &'a str) -> Self {
        Envelope { program: None, pid: None, message: Cow::Borrowed(message) }
    }
}

/// Reads the envelope of `line`; a line with none is a bare message.
pub fn open(line: &str) -> Envelope<'_> {
    let trimmed = line.trim_end_matches(['\r', '\n']);
    if trimmed.starts_with('{') {
        return journal(trimmed).unwrap_or_else(|| Envelope::bare(trimmed));
    }
    if let Some(e) = rfc5424(trimmed) {
        return e;
    }
    bsd(trimmed).unwrap_or_else(|| Envelope::bare(trimmed))
}

/// A line of `journalctl -o json`: `MESSAGE` is a string, or an array of
/// bytes when it is not UTF-8.
fn journal(line: &str) -> Option<Envelope<'static>> {
    let object: serde_json::Map<String, Value> = serde_json::from_str(line).ok()?;
    let message = match object.get("MESSAGE")? {
        Value::String(s) => s.clone(),
        Value::Array(bytes) => {
            let bytes: Vec<u8> =
                bytes.iter().map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok())).collect::<Option<_>>()?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => return None,
    };
    let text = |key: &str| object.get(key).and_then(Value::as_str);
    let program = text("SYSLOG_IDENTIFIER").or_else(|| text("_COMM")).map(|p| Cow::Owned(p.to_owned()));
    let pid = text("SYSLOG_PID").or_else(|| text("_PID")).and_then(|p| p.parse().ok());
    Some(Envelope { program, pid, message: Cow::Owned(message) })
}

/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]`.
fn rfc5424(line: &str) -> Option<Envelope<'_>> {
    let rest = line.strip_prefix('<')?;
    let (pri, rest) = rest.split_once('>')?;
    if pri.is_empty() || pri.len() > 3 || !pri.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (version, rest) = rest.split_once(' ')?;
    if version.is_empty() || version.len() > 2 || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (_timestamp, rest) = rest.split_once(' ')?;
    let (_host, rest) = rest.split_once(' ')?;
    let (app, rest) = rest.split_once(' ')?;
    let (procid, rest) = rest.split_once(' ')?;
    let (_msgid, rest) = rest.split_once(' ')?;
    let message = skip_structured_data(rest)?;
    let message = message.strip_prefix(' ').unwrap_or(message);
    let message = message.strip_prefix('\u{feff}').unwrap_or(message);
    Some(Envelope {
        program: (app != "-").then_some(Cow::Borrowed(app)),
        pid: procid.parse().ok(),
        message: Cow::Borrowed(message),
    })
}

/// Skips RFC 5424 STRUCTURED-DATA: `-`, or `[id k="v" ...]` elements whose
/// quoted values escape `"`, `\` and `]` with a backslash (an unescaped `]`
/// inside quotes, as some writers emit, is taken as part of the value).
fn skip_structured_data(text: &str) -> Option<&str> {
    if let Some(rest) = text.strip_prefix('-') {
        return Some(rest);
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    if bytes.first() != Some(&b'[') {
        return None;
    }
    while bytes.get(i) == Some(&b'[') {
        i += 1;
        let mut quoted = false;
        loop {
            match *bytes.get(i)? {
                b'\\' if quoted => i += 2,
                b'"' => {
                    quoted = !quoted;
                    i += 1;
                }
                b']' if !quoted => {
                    i += 1;
                    break;
                }
                _ => i += 1,
            }
        }
    }
    text.get(i..)
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// A classic BSD timestamp `Mmm dd HH:MM:SS` (the day padded with a space
/// or not), or an RFC 3339 one (`2015-04-16T18:02:50.321974+00:00`), at
/// the start of `text`; the rest after it.
fn timestamp(text: &str) -> Option<&str> {
    if let Some(month) = text.get(..3)
        && MONTHS.contains(&month)
    {
        let rest = text[3..].trim_start_matches(' ');
        let (day, rest) = rest.split_once(' ')?;
        let (time, rest) = rest.split_once(' ').map_or((rest, ""), |(t, r)| (t, r));
        let clock = time.len() == 8
            && time.bytes().enumerate().all(|(i, b)| if i % 3 == 2 { b == b':' } else { b.is_ascii_digit() });
        let day_ok = !day.is_empty() && day.len() <= 2 && day.bytes().all(|b| b.is_ascii_digit());
        return (clock && day_ok).then_some(rest);
    }
    let (first, rest) = text.split_once(' ')?;
    let b = first.as_bytes();
    let iso = b.len() >= 19
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':';
    iso.then_some(rest)
}

/// A syslog tag: `prog[pid]:`, `prog:` (when `pid_needed` is false),
/// `[prog]:` or `[prog]`. Program names are letters, digits, `.`, `_`, `-`
/// and `/`.
fn tag(token: &str, pid_needed: bool) -> Option<(&str, Option<u32>)> {
    let name_ok = |n: &str| {
        !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
    };
    if let Some(inner) = token.strip_prefix('[') {
        let inner = inner.strip_suffix(':').unwrap_or(inner).strip_suffix(']')?;
        return (!pid_needed && name_ok(inner)).then_some((inner, None));
    }
    let body = token.strip_suffix(':')?;
    match body.split_once('[') {
        Some((name, pid)) => {
            let pid = pid.strip_suffix(']')?.parse().ok()?;
            name_ok(name).then_some((name, Some(pid)))
        }
        None => (!pid_needed && name_ok(body)).then_some((body, None)),
    }
}

/// `[<PRI>]TIMESTAMP [HOST] TAG MSG`, or `prog[pid]: MSG` without a
/// timestamp; Solaris' `[ID 800047 auth.info]` before the message is
/// dropped.
fn bsd(line: &str) -> Option<Envelope<'_>> {
    let line = match line.strip_prefix('<').and_then(|r| r.split_once('>')) {
        Some((pri, rest)) if !pri.is_empty() && pri.len() <= 3 && pri.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => line,
    };
    let (program, pid, message) = match timestamp(line) {
        Some(rest) => {
            let (first, after) = rest.split_once(' ').unwrap_or((rest, ""));
            match tag(first, false) {
                // No host: the tag comes first (`Nov 23 21:50:19 sshd[8148]: ...`).
                Some((program, pid)) => (program, pid, after),
                None => {
                    let (second, after) = after.split_once(' ').unwrap_or((after, ""));
                    let (program, pid) = tag(second, false)?;
                    (program, pid, after)
                }
            }
        }
        None => {
            let (first, after) = line.split_once(' ')?;
            let (program, pid) = tag(first, true)?;
            (program, pid, after)
        }
    };
    let message = match message.strip_prefix("[ID ").and_then(|r| r.split_once("] ")) {
        Some((id, rest)) if id.split(' ').count() == 2 => rest,
        _ => message,
    };
    Some(Envelope { program: Some(Cow::Borrowed(program)), pid, message: Cow::Borrowed(message) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(line: &str) -> (Option<String>, Option<u32>, String) {
        let e = open(line);
        (e.program.map(Cow::into_owned), e.pid, e.message.into_owned())
    }

    fn some(program: &str, pid: Option<u32>, message: &str) -> (Option<String>, Option<u32>, String) {
        (Some(program.to_owned()), pid, message.to_owned())
    }

    #[test]
    fn every_envelope_gives_the_program_and_its_message() {
        let msg = "Failed password for root from 192.0.2.1 port 22 ssh2";
        assert_eq!(read(&format!("Nov 26 10:00:00 node-1 sshd[4121]: {msg}")), some("sshd", Some(4121), msg));
        assert_eq!(read(&format!("Jan  5 01:31:41 www sshd[1643]: {msg}")), some("sshd", Some(1643), msg));
        assert_eq!(read(&format!("Feb 7 16:01:07 linux-m899 sshd[5106]: {msg}")), some("sshd", Some(5106), msg));
        assert_eq!(read(&format!("Nov 23 21:50:19 sshd[8148]: {msg}")), some("sshd", Some(8148), msg));
        assert_eq!(read(&format!("Mar  3 00:17:22 [sshd]: {msg}")), some("sshd", None, msg));
        assert_eq!(read(&format!("Jun 25 23:53:34 [sshd] {msg}")), some("sshd", None, msg));
        assert_eq!(
            read(&format!("<38>Nov 26 10:00:00 node-1 sshd-session[7]: {msg}")),
            some("sshd-session", Some(7), msg)
        );
        assert_eq!(
            read(&format!("2015-04-16T18:02:50.321974+00:00 host sshd[2716]: {msg}")),
            some("sshd", Some(2716), msg)
        );
        assert_eq!(
            read(&format!("Mar 29 05:59:23 dusky sshd[20878]: [ID 800047 auth.info] {msg}")),
            some("sshd", Some(20878), msg)
        );
        assert_eq!(read(&format!("sshd[1]: {msg}")), some("sshd", Some(1), msg));
        // RFC 5424, with and without structured data (brackets in a value).
        assert_eq!(
            read(&format!("<38>1 2019-07-08T17:40:16.954167-04:00 hostname.example.com sshd 57915 - - {msg}")),
            some("sshd", Some(57915), msg)
        );
        assert_eq!(
            read(&format!(
                "<38>1 2019-07-08T17:40:17.954167-04:00 h sshd 55555 - [timeQuality tzKnown=\"1\"][x@1 t=\"[b\\\"]\"] {msg}"
            )),
            some("sshd", Some(55555), msg)
        );
        // journalctl -o json, the message as text and as bytes.
        let json =
            format!(r#"{{"__REALTIME_TIMESTAMP":"1","SYSLOG_IDENTIFIER":"sshd","_PID":"812","MESSAGE":"{msg}"}}"#);
        assert_eq!(read(&json), some("sshd", Some(812), msg));
        let bytes = r#"{"_COMM":"sshd","_PID":"9","MESSAGE":[104,105,255]}"#;
        assert_eq!(read(bytes), some("sshd", Some(9), "hi\u{fffd}"));
        // Bare messages: sshd -e in a container, or anything else.
        assert_eq!(read(msg), (None, None, msg.to_owned()));
        assert_eq!(read("error: PAM: Authentication failure for x from 192.0.2.1").0, None, "not a tag");
        assert_eq!(read("{\"event\":\"login_failed\"}").0, None);
        assert_eq!(read("").2, "");
    }
}
