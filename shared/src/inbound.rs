//! Requests from outside services acting for a person (a PagerDuty
//! webhook, a Slack button): the pure rules they share. Whether a request
//! is fresh enough to trust, whether it was seen already, how a signature
//! header and a form body are read, and how a name from outside becomes a
//! bounded, printable part of an identity.
//!
//! The coordinator checks the signatures (`remedy_coordinator::chatops`);
//! nothing here reads a clock or a socket.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::Timestamp;
use crate::guard::ApprovalKey;

/// Whether `at` (when the sender says the request was made) is within
/// `past` before `now` and `future` after it. A request outside the window
/// is refused: a signature over an old request proves only that it was
/// once genuine.
pub fn fresh(at: Timestamp, now: Timestamp, past: Duration, future: Duration) -> bool {
    let age = i128::from(now.as_millis()) - i128::from(at.as_millis());
    let (past, future) = (i128::try_from(past.as_millis()).unwrap_or(i128::MAX), future.as_millis());
    age <= past && -age <= i128::try_from(future).unwrap_or(i128::MAX)
}

/// What was accepted recently, so that a request replayed within its
/// window does nothing. Memory is bounded twice: an entry is forgotten
/// once it is older than the window (the freshness check refuses it by
/// then), and at most `capacity` entries are kept, the oldest forgotten
/// first.
#[derive(Debug)]
pub struct Replays {
    window: Duration,
    capacity: usize,
    seen: HashMap<String, Timestamp>,
    order: VecDeque<(Timestamp, String)>,
}

impl Replays {
    /// A memory of `window`, at most `capacity` entries.
    pub fn new(window: Duration, capacity: usize) -> Replays {
        Replays { window, capacity: capacity.max(1), seen: HashMap::new(), order: VecDeque::new() }
    }

    /// Whether `key` was remembered and is still within the window.
    pub fn seen(&mut self, key: &str, now: Timestamp) -> bool {
        self.forget_old(now);
        self.seen.contains_key(key)
    }

    /// Remembers `key` as seen at `now`; false when it was already.
    pub fn remember(&mut self, key: &str, now: Timestamp) -> bool {
        self.forget_old(now);
        if self.seen.contains_key(key) {
            return false;
        }
        while self.order.len() >= self.capacity {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(key.to_owned(), now);
        self.order.push_back((now, key.to_owned()));
        true
    }

    /// Forgets `key`: what it named was not done after all (the store
    /// could not take it), and the sender's retry must be let through.
    pub fn forget(&mut self, key: &str) {
        if self.seen.remove(key).is_some() {
            self.order.retain(|(_, k)| k != key);
        }
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn forget_old(&mut self, now: Timestamp) {
        while let Some((at, key)) = self.order.front() {
            if now.since(*at) <= self.window {
                break;
            }
            self.seen.remove(key);
            self.order.pop_front();
        }
    }
}

/// Lower-case or upper-case hex to bytes; `None` for anything else.
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    text.as_bytes().chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

/// Lower-case hex of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signatures of one scheme in a header listing several
/// (`v1=abc,v1=def`, PagerDuty's form during a secret's rotation):
/// each value after `<scheme>=` that is hex, decoded. Other schemes and
/// malformed values are passed over.
pub fn signatures(header: &str, scheme: &str) -> Vec<Vec<u8>> {
    header
        .split(',')
        .filter_map(|part| part.trim().strip_prefix(scheme)?.strip_prefix('='))
        .filter_map(|hex| hex_decode(hex.trim()))
        .collect()
}

/// The value of `name` in an `application/x-www-form-urlencoded` body,
/// decoded (`+` is a space, `%XX` a byte); `None` when absent or not UTF-8.
pub fn form_value(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key)? == name).then(|| percent_decode(value)).flatten()
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(hex_decode(hex)?[0]);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Reads an approval request's key as it is shown (`INC-000042/step#1`,
/// [`ApprovalKey`]'s `Display`), as a button carries it.
pub fn approval_key(text: &str) -> Option<ApprovalKey> {
    let (incident, rest) = text.split_once('/')?;
    let (step, attempt) = rest.rsplit_once('#')?;
    if step.is_empty() {
        return None;
    }
    Some(ApprovalKey { incident_id: incident.parse().ok()?, step_id: step.to_owned(), attempt: attempt.parse().ok()? })
}

/// Most bytes of a name from outside kept in an identity.
pub const MAX_OUTSIDE_NAME: usize = 64;

/// `<service>:<name>`, the identity a person acting through an outside
/// service is recorded as (`pagerduty:Alice_Smith`). The name is what the
/// service says; it is made printable and bounded: whitespace becomes `_`,
/// anything but letters, digits and `.-_@` becomes `-`, and it is cut at
/// [`MAX_OUTSIDE_NAME`] bytes. An empty name is `unknown`.
pub fn outside_identity(service: &str, name: &str) -> String {
    let mut clean = String::new();
    for c in name.trim().chars() {
        let c = match c {
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@') => c,
            c if c.is_whitespace() => '_',
            _ => '-',
        };
        if clean.len() + c.len_utf8() > MAX_OUTSIDE_NAME {
            break;
        }
        clean.push(c);
    }
    if clean.is_empty() {
        clean.push_str("unknown");
    }
    format!("{service}:{clean}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_millis(secs * 1000)
    }

    #[test]
    fn freshness_is_a_window_around_now() {
        let (past, future) = (Duration::from_secs(3600), Duration::from_secs(300));
        let now = at(10_000);
        assert!(fresh(at(10_000 - 3600), now, past, future));
        assert!(!fresh(at(10_000 - 3601), now, past, future));
        assert!(fresh(at(10_300), now, past, future));
        assert!(!fresh(at(10_301), now, past, future));
    }

    #[test]
    fn a_key_is_seen_once_within_its_window_and_memory_stays_bounded() {
        let mut r = Replays::new(Duration::from_secs(300), 3);
        assert!(r.remember("a", at(0)));
        assert!(!r.remember("a", at(10)), "a replay");
        assert!(r.seen("a", at(300)));
        assert!(!r.seen("a", at(301)), "forgotten past the window");
        for (i, key) in ["b", "c", "d", "e"].iter().enumerate() {
            assert!(r.remember(key, at(400 + i as i64)));
        }
        assert_eq!(r.len(), 3);
        assert!(!r.seen("b", at(404)), "the oldest goes first when full");
        assert!(r.seen("e", at(404)));
        r.forget("e");
        assert!(r.remember("e", at(405)), "forgotten, so let through again");
    }

    #[test]
    fn signature_headers_list_each_scheme_value() {
        assert_eq!(signatures("v1=00ff, v1=zz,v0=01,v1=AB", "v1"), vec![vec![0, 255], vec![0xab]]);
        assert!(signatures("", "v1").is_empty());
        assert_eq!(hex_encode(&[0, 0xab]), "00ab");
        assert_eq!(hex_decode("abc"), None);
    }

    #[test]
    fn form_values_are_decoded() {
        let body = "a=1&payload=%7B%22x%22%3A+%22y%26z%22%7D&b";
        assert_eq!(form_value(body, "payload").as_deref(), Some(r#"{"x": "y&z"}"#));
        assert_eq!(form_value(body, "b").as_deref(), Some(""));
        assert_eq!(form_value(body, "c"), None);
        assert_eq!(form_value("payload=%zz", "payload"), None);
    }

    #[test]
    fn approval_keys_read_back_as_they_are_shown() {
        let key = ApprovalKey { incident_id: "INC-000042".parse().unwrap(), step_id: "re#start/x".into(), attempt: 3 };
        assert_eq!(approval_key(&key.to_string()), Some(key));
        assert_eq!(approval_key("INC-000042/#1"), None);
        assert_eq!(approval_key("nope"), None);
    }

    #[test]
    fn outside_names_are_printable_and_bounded() {
        assert_eq!(outside_identity("pagerduty", "Alice Smith"), "pagerduty:Alice_Smith");
        assert_eq!(outside_identity("pagerduty", " \n"), "pagerduty:unknown");
        assert_eq!(outside_identity("pagerduty", "a<b>\u{1b}é"), "pagerduty:a-b---");
        assert_eq!(outside_identity("slack", &"x".repeat(100)).len(), "slack:".len() + MAX_OUTSIDE_NAME);
    }
}
