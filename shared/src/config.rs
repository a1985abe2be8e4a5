//! Rules every configuration file follows: YAML, unknown fields refused,
//! durations written as `30s` or `2m`, errors that name the file and field.
//!
//! Reading the file is the caller's job; this module only parses, so the
//! rules are testable without a filesystem.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// Exit status for a configuration error (`EX_CONFIG` from sysexits.h is
/// 78; `EX_USAGE`, 64, is what supervisors and `make` treat as "fix your
/// input", and what operators of this project rely on).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or "flags", "environment") the value came from.
    pub file: String,
    /// Dotted path to the field, for example `detectors.node_cpu_high.for`;
    /// empty when the document as a whole is wrong.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error about `field` in `source`.
    pub fn new(source: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { file: source.into(), field: field.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid configuration in {}: {}", self.file, self.message)
        } else {
            write!(f, "invalid configuration in {}: field `{}`: {}", self.file, self.field, self.message)
        }
    }
}

/// Parses a YAML document into `T`, refusing what `T` refuses (use
/// `#[serde(deny_unknown_fields)]`). The error names `source`, the field
/// path and, from the YAML parser, the line and column.
pub fn parse_yaml<T: DeserializeOwned>(source: &str, text: &str) -> Result<T, ConfigError> {
    let mut field = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            field = e.path().to_string();
            <serde_saphyr::Error as serde::de::Error>::custom(e.into_inner().to_string())
        })
    });
    parsed.map_err(|e| {
        let field = if field == "." { String::new() } else { field };
        let message = first_line(&e.to_string());
        ConfigError::new(source, field, message)
    })
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s);
    line.trim_start_matches("error: ").to_owned()
}

/// Writes a duration the way configuration reads it: `30s`, `5m`, `1h 30m`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Parses a human duration such as `500ms`, `30s`, `2m`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration `{text}`: {e} (use forms like 500ms, 30s, 2m)"))
}

/// Serde adapter for durations written as text (`#[serde(with = "remedy_shared::config::duration")]`).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads `30s`, `2m`...
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(de)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    /// Writes the humantime form.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        #[serde(with = "duration", rename = "for")]
        for_duration: Duration,
        threshold: f64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        inner: Inner,
    }

    #[test]
    fn a_bad_duration_names_the_field_and_source() {
        let err = parse_yaml::<Doc>("agent.yaml", "name: x\ninner:\n  for: soon\n  threshold: 1\n").unwrap_err();
        assert_eq!(err.file, "agent.yaml");
        assert_eq!(err.field, "inner.for");
        assert!(err.message.contains("invalid duration `soon`"), "{}", err.message);
    }

    #[test]
    fn an_unknown_field_is_named_with_its_path() {
        let err =
            parse_yaml::<Doc>("c.yaml", "name: x\ninner:\n  for: 1s\n  threshold: 1\n  treshold: 2\n").unwrap_err();
        assert_eq!(err.field, "inner.treshold");
        assert!(err.to_string().contains("field `inner.treshold`"), "{err}");
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let err = parse_yaml::<Doc>("c.yaml", "name: x\ninner:\n  for: 1s\n  threshold: lots\n").unwrap_err();
        assert_eq!(err.field, "inner.threshold");
    }

    #[test]
    fn durations_parse_in_human_form() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
    }
}

/// Serde for an optional duration written as text (`30s`, `5m`, `1h`), as
/// every configuration file in Remedy writes them: `#[serde(default, with = "opt_duration")]`.
pub mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads `None` or a duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(de)? {
            None => Ok(None),
            Some(text) => crate::config::parse_duration(&text).map(Some).map_err(serde::de::Error::custom),
        }
    }

    /// Writes `None` or a duration.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}
