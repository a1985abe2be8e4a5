//! How large anything that comes from outside may be once it is kept.
//!
//! Everything Remedy stores from a caller (an alert's labels, a finding's
//! summary, a run's parameters, a node's name) is bounded here, so the store,
//! the listings and the audit log grow by a known amount per input, whoever
//! sends it. Two rules, one per kind of text:
//!
//! - **Names** (keys, identifiers, node names) are refused over their cap,
//!   with the field named: a 300-byte label name is malformed, and cutting it
//!   could make two different names one.
//! - **Prose** (values, summaries, annotations) is cut at its cap and says so,
//!   ending in [`truncation_marker`]: an alert with an over-long description
//!   still opens its incident, and a reader sees that text is missing.

use std::collections::BTreeMap;

/// Longest key of a label, annotation, evidence entry or parameter, bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Longest value of a label, annotation, evidence entry or parameter, bytes;
/// a longer one is cut.
pub const MAX_VALUE_BYTES: usize = 4 * 1024;
/// Longest one-line summary, bytes; a longer one is cut.
pub const MAX_SUMMARY_BYTES: usize = 4 * 1024;
/// Most entries in one map (labels, annotations, evidence, parameters).
pub const MAX_ENTRIES: usize = 64;
/// Longest node name or agent id, bytes (a Kubernetes object name's limit).
pub const MAX_NAME_BYTES: usize = 253;
/// Longest free text a person attaches to a command (who, why, a comment),
/// bytes; a longer one is refused: a person can shorten it.
pub const MAX_NOTE_BYTES: usize = 1024;

/// A name or a map over its cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// A name or key longer than allowed.
    #[error("{field} is {len} bytes, over the limit of {max}")]
    TooLong {
        /// Where, dotted: `labels` key `"abc…"` is named by its map.
        field: String,
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A map with more entries than allowed.
    #[error("{field} has {count} entries, over the limit of {max}")]
    TooMany {
        /// The map.
        field: String,
        /// How many it had.
        count: usize,
        /// The cap.
        max: usize,
    },
}

/// The text that ends a cut value: it says how long the original was, so a
/// reader knows how much is missing.
pub fn truncation_marker(original_len: usize) -> String {
    format!(" … [truncated from {original_len} bytes]")
}

/// Cuts `text` to at most `max` bytes, marker included, on a character
/// boundary; returns whether it was cut. Text within the cap is untouched.
pub fn clip(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let marker = truncation_marker(text.len());
    let mut keep = max.saturating_sub(marker.len());
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    text.truncate(keep);
    text.push_str(&marker);
    true
}

/// Refuses a name longer than `max`.
pub fn check_name(field: &str, value: &str, max: usize) -> Result<(), LimitError> {
    if value.len() > max {
        return Err(LimitError::TooLong { field: field.to_owned(), len: value.len(), max });
    }
    Ok(())
}

/// Bounds a map of names to prose: more than [`MAX_ENTRIES`] entries or a
/// key over [`MAX_KEY_BYTES`] is refused; values over [`MAX_VALUE_BYTES`]
/// are cut. Returns the keys whose values were cut, in order.
pub fn bound_map(field: &str, map: &mut BTreeMap<String, String>) -> Result<Vec<String>, LimitError> {
    if map.len() > MAX_ENTRIES {
        return Err(LimitError::TooMany { field: field.to_owned(), count: map.len(), max: MAX_ENTRIES });
    }
    if let Some(key) = map.keys().find(|k| k.len() > MAX_KEY_BYTES) {
        return Err(LimitError::TooLong { field: format!("{field} key"), len: key.len(), max: MAX_KEY_BYTES });
    }
    let mut cut = Vec::new();
    for (key, value) in map.iter_mut() {
        if clip(value, MAX_VALUE_BYTES) {
            cut.push(key.clone());
        }
    }
    Ok(cut)
}

/// The strict form of [`bound_map`], for callers who can shorten what they
/// send: a value over [`MAX_VALUE_BYTES`] is refused too, naming its key.
pub fn check_map(field: &str, map: &BTreeMap<String, String>) -> Result<(), LimitError> {
    if map.len() > MAX_ENTRIES {
        return Err(LimitError::TooMany { field: field.to_owned(), count: map.len(), max: MAX_ENTRIES });
    }
    for (key, value) in map {
        if key.len() > MAX_KEY_BYTES {
            return Err(LimitError::TooLong { field: format!("{field} key"), len: key.len(), max: MAX_KEY_BYTES });
        }
        check_name(&format!("{field}.{key}"), value, MAX_VALUE_BYTES)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_within_the_cap_is_untouched_and_longer_text_is_cut_saying_so() {
        let mut short = "x".repeat(100);
        assert!(!clip(&mut short, 100));
        assert_eq!(short.len(), 100);

        let mut long = "y".repeat(10_000);
        assert!(clip(&mut long, 4096));
        assert!(long.len() <= 4096, "{}", long.len());
        assert!(long.ends_with("[truncated from 10000 bytes]"), "{long}");
        assert!(long.starts_with("yyyy"));
    }

    #[test]
    fn cutting_never_splits_a_character() {
        // Three-byte characters straddle any cut point but one in three.
        for max in 60..70 {
            let mut text = "€".repeat(1000);
            assert!(clip(&mut text, max));
            assert!(text.len() <= max);
            assert!(text.starts_with('€'));
        }
    }

    #[test]
    fn maps_refuse_long_keys_and_too_many_entries_naming_the_field_and_cut_long_values() {
        let mut fine: BTreeMap<String, String> =
            [("a".to_owned(), "v".repeat(5000)), ("b".to_owned(), "short".to_owned())].into();
        assert_eq!(bound_map("labels", &mut fine), Ok(vec!["a".to_owned()]));
        assert!(fine["a"].len() <= MAX_VALUE_BYTES);
        assert_eq!(fine["b"], "short");

        let mut long_key: BTreeMap<String, String> = [("k".repeat(300), "v".to_owned())].into();
        let e = bound_map("annotations", &mut long_key).unwrap_err();
        assert_eq!(e.to_string(), "annotations key is 300 bytes, over the limit of 256");

        let mut many: BTreeMap<String, String> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        let e = bound_map("labels", &mut many).unwrap_err();
        assert_eq!(e.to_string(), "labels has 65 entries, over the limit of 64");
    }

    #[test]
    fn the_strict_check_refuses_a_long_value_naming_its_key() {
        let fine: BTreeMap<String, String> = [("a".to_owned(), "v".repeat(MAX_VALUE_BYTES))].into();
        assert_eq!(check_map("evidence", &fine), Ok(()));
        let long: BTreeMap<String, String> = [("a".to_owned(), "v".repeat(MAX_VALUE_BYTES + 1))].into();
        let e = check_map("evidence", &long).unwrap_err();
        assert_eq!(e.to_string(), "evidence.a is 4097 bytes, over the limit of 4096");
    }

    #[test]
    fn names_over_their_cap_are_refused_naming_the_field() {
        assert_eq!(check_name("hello.node_name", &"n".repeat(253), MAX_NAME_BYTES), Ok(()));
        let e = check_name("hello.node_name", &"n".repeat(254), MAX_NAME_BYTES).unwrap_err();
        assert_eq!(e.to_string(), "hello.node_name is 254 bytes, over the limit of 253");
    }
}
