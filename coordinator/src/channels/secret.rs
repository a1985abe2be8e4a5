//! Secrets read from files, and keeping them out of text.

use std::fmt;
use std::path::Path;

/// What stands in for a secret wherever one would be shown.
pub const REDACTED: &str = "[redacted]";

/// A secret value. Its `Debug` prints `[redacted]`, so a secret inside a
/// derived `Debug` (a log line, a panic message) stays hidden.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value known to be secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Reads a secret file. Surrounding whitespace is dropped: `echo` and most
/// editors end files with a newline, and a Kubernetes Secret written from
/// one keeps it. The error names the file, never its content.
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("`{}` is empty", path.display()));
    }
    Ok(Secret::new(value))
}

/// `text` with every occurrence of each secret replaced by `[redacted]`.
/// Answers from outside services go into delivery details; a service that
/// echoes the request (a URL, a key) must not put a secret on the timeline.
pub fn scrub(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        let value = secret.expose();
        // Very short values would blank out ordinary words; a real
        // credential is never this short and config refuses empty ones.
        if value.len() >= 4 && out.contains(value) {
            out = out.replace(value, REDACTED);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("hunter2-hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            key: Secret,
        }
        assert!(!format!("{:?}", Holder { key: s }).contains("hunter2"));
    }

    #[test]
    fn scrub_replaces_every_occurrence() {
        let s = Secret::new("abcd1234");
        assert_eq!(scrub("bad key abcd1234 (abcd1234)", &[&s]), "bad key [redacted] ([redacted])");
    }

    #[test]
    fn a_secret_file_is_trimmed_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "  key-value\n").unwrap();
        assert_eq!(read_secret_file(&p).unwrap().expose(), "key-value");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_secret_file(&p).unwrap_err().contains("is empty"));
        let err = read_secret_file(&dir.path().join("missing")).unwrap_err();
        assert!(err.starts_with("cannot read `"), "{err}");
    }
}
