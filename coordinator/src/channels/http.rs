//! What the HTTP channels share: sending one request and judging the answer.

use std::time::Duration;

use remedy_shared::text::{self, Unit};
use reqwest::header::RETRY_AFTER;

use super::Outcome;

/// Most of an answer's body kept: enough for an error message, bounded so a
/// misbehaving server cannot make us buffer megabytes.
const MAX_BODY: usize = 16 * 1024;

/// Most of an answer's body quoted in a delivery's detail.
const MAX_SNIPPET: usize = 200;

/// An HTTP answer, read.
#[derive(Debug)]
pub(super) struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: String,
}

impl Answer {
    /// Whether the service took the request.
    pub fn success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Sends `request` and reads the answer. A transport failure becomes the
/// outcome to report: worth a retry when the service may not have seen the
/// request (no connection, a reset, no answer in time).
pub(super) async fn exchange(request: reqwest::RequestBuilder) -> Result<Answer, Outcome> {
    let mut response = request.send().await.map_err(|e| transport_failure(e.without_url()))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut bytes = Vec::new();
    while bytes.len() < MAX_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => break,
            // The status line arrived; a body cut short changes nothing
            // about what the status says.
            Err(_) => break,
        }
    }
    bytes.truncate(MAX_BODY);
    Ok(Answer { status, retry_after, body: String::from_utf8_lossy(&bytes).into_owned() })
}

fn transport_failure(e: reqwest::Error) -> Outcome {
    if e.is_builder() {
        return Outcome::Fail { detail: format!("cannot build the request: {}", root_cause(&e)) };
    }
    let detail = if e.is_timeout() {
        "no answer in time".to_owned()
    } else if e.is_connect() {
        format!("cannot connect: {}", root_cause(&e))
    } else {
        format!("request failed: {}", root_cause(&e))
    };
    Outcome::Retry { detail, after: None }
}

/// The innermost error: "Connection refused (os error 111)" says more than
/// "error sending request". The caller has already dropped the URL, which
/// for a Slack webhook is the secret.
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Judges an answer that was not a success. `credential` names the
/// configuration field whose secret a 401 or 403 refuses.
///
/// Retried: 408, 429 (after `Retry-After` when given) and 5xx, which say
/// "not now". Not retried: any other answer, which will not change by
/// asking again: a 400 is a request this code got wrong, a 401/403 a secret
/// the service does not accept, a 3xx a URL that moved (redirects are not
/// followed: a notification goes where it was configured to go).
pub(super) fn failure(answer: &Answer, credential: &str) -> Outcome {
    let status = answer.status;
    let quoted = snippet(&answer.body);
    let with_body = |text: String| if quoted.is_empty() { text } else { format!("{text}: {quoted}") };
    match status {
        429 => Outcome::Retry { detail: with_body(format!("HTTP {status} (rate limited)")), after: answer.retry_after },
        408 | 500..=599 => Outcome::Retry { detail: with_body(format!("HTTP {status}")), after: None },
        401 | 403 => Outcome::Fail {
            detail: with_body(format!(
                "HTTP {status}: the service refused the credential (check `{credential}`); not retried"
            )),
        },
        300..=399 => Outcome::Fail { detail: format!("HTTP {status}: redirects are not followed; not retried") },
        _ => {
            Outcome::Fail { detail: with_body(format!("HTTP {status}: the service refused the request; not retried")) }
        }
    }
}

/// The start of a body, on one line.
pub(super) fn snippet(body: &str) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    text::truncate(&flat, MAX_SNIPPET, Unit::Chars).into_owned()
}

/// Parses a configured URL: absolute, http or https.
pub(super) fn parse_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text.trim()).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{text}` is not an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` names no host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer { status, retry_after: None, body: body.into() }
    }

    #[test]
    fn retries_only_what_may_change() {
        assert!(matches!(failure(&answer(500, ""), "k"), Outcome::Retry { .. }));
        assert!(matches!(failure(&answer(503, ""), "k"), Outcome::Retry { .. }));
        assert!(matches!(failure(&answer(408, ""), "k"), Outcome::Retry { .. }));
        assert!(matches!(failure(&answer(400, ""), "k"), Outcome::Fail { .. }));
        assert!(matches!(failure(&answer(404, ""), "k"), Outcome::Fail { .. }));
        assert!(matches!(failure(&answer(301, ""), "k"), Outcome::Fail { .. }));
        let Outcome::Fail { detail } = failure(&answer(403, "invalid_token"), "webhook_url_file") else { panic!() };
        assert!(detail.contains("refused the credential (check `webhook_url_file`)"), "{detail}");
        assert!(detail.ends_with("invalid_token"), "{detail}");
    }

    #[test]
    fn rate_limits_carry_retry_after() {
        let a = Answer { status: 429, retry_after: Some(Duration::from_secs(7)), body: String::new() };
        let Outcome::Retry { after, .. } = failure(&a, "k") else { panic!() };
        assert_eq!(after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn snippets_are_one_bounded_line() {
        assert_eq!(snippet("a\n  b\tc"), "a b c");
        let long = "x".repeat(500);
        assert_eq!(snippet(&long).chars().count(), MAX_SNIPPET + 1);
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(parse_url("https://events.pagerduty.com/v2/enqueue").is_ok());
        assert!(parse_url("ftp://x/y").unwrap_err().contains("not an http"));
        assert!(parse_url("not a url").unwrap_err().contains("not a URL"));
        assert!(parse_url("http://").is_err());
    }
}
