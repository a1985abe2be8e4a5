//! Text cut to a limit: a log sample, a piece of evidence, a field with a
//! maximum length. Every cut falls on a character boundary, so what is kept
//! is still valid UTF-8 and no character is split in two.
//!
//! Limits count bytes or characters, as whoever sets them does (a Kubernetes
//! schema's `maxLength` counts characters, a buffer counts bytes). Where the
//! text is cut, [`CUT_MARK`] follows, so a reader knows more was there;
//! [`truncate`] puts it after the limit, [`truncate_to_fit`] within it, and
//! [`prefix`] leaves it out, for identifiers and fields where it would be
//! read as part of the value.

use std::borrow::Cow;

/// What a limit on text counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// UTF-8 bytes.
    Bytes,
    /// Unicode scalar values.
    Chars,
}

impl Unit {
    /// Whether `text` is at most `max` of this unit long.
    fn fits(self, text: &str, max: usize) -> bool {
        match self {
            Unit::Bytes => text.len() <= max,
            Unit::Chars => text.chars().nth(max).is_none(),
        }
    }

    /// How long `text` is in this unit.
    fn measure(self, text: &str) -> usize {
        match self {
            Unit::Bytes => text.len(),
            Unit::Chars => text.chars().count(),
        }
    }
}

/// What ends a text that was cut.
pub const CUT_MARK: &str = "…";

/// The longest start of `text` at most `max` long, ending on a character
/// boundary; all of it when it fits.
pub fn prefix(text: &str, max: usize, unit: Unit) -> &str {
    match unit {
        Unit::Bytes => {
            if text.len() <= max {
                return text;
            }
            let mut end = max;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            &text[..end]
        }
        Unit::Chars => match text.char_indices().nth(max) {
            Some((end, _)) => &text[..end],
            None => text,
        },
    }
}

/// `text` when it is at most `max` long; otherwise its first `max` and
/// [`CUT_MARK`] after them. For samples and evidence, where the reader wants
/// as much of the text as the limit allows.
pub fn truncate(text: &str, max: usize, unit: Unit) -> Cow<'_, str> {
    let kept = prefix(text, max, unit);
    if kept.len() == text.len() { Cow::Borrowed(text) } else { Cow::Owned(format!("{kept}{CUT_MARK}")) }
}

/// `text` when it is at most `max` long; otherwise a start of it and
/// [`CUT_MARK`], the two together at most `max` long (only the mark when
/// `max` is shorter than the mark). For fields whose limit is hard.
pub fn truncate_to_fit(text: &str, max: usize, unit: Unit) -> Cow<'_, str> {
    if unit.fits(text, max) {
        return Cow::Borrowed(text);
    }
    let kept = prefix(text, max.saturating_sub(unit.measure(CUT_MARK)), unit);
    Cow::Owned(format!("{kept}{CUT_MARK}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_on_a_character_boundary() {
        assert_eq!(prefix("héllo", 2, Unit::Bytes), "h", "é is two bytes");
        assert_eq!(prefix("héllo", 3, Unit::Bytes), "hé");
        assert_eq!(prefix("héllo", 2, Unit::Chars), "hé");
        assert_eq!(prefix("hi", 5, Unit::Chars), "hi");
        assert_eq!(prefix("hi", 5, Unit::Bytes), "hi");
        assert_eq!(prefix("hi", 0, Unit::Chars), "");
    }

    #[test]
    fn truncated_text_is_marked_after_the_limit() {
        assert_eq!(truncate("héllo", 2, Unit::Bytes), "h…");
        assert_eq!(truncate("hello", 5, Unit::Bytes), "hello");
        assert_eq!(truncate("héllo", 2, Unit::Chars), "hé…");
        assert_eq!(truncate("hello", 5, Unit::Chars), "hello");
        let long = "é".repeat(210);
        assert_eq!(truncate(&long, 200, Unit::Chars), format!("{}…", "é".repeat(200)));
    }

    #[test]
    fn text_truncated_to_fit_stays_within_the_limit_mark_included() {
        assert_eq!(truncate_to_fit("short", 16, Unit::Bytes), "short");
        let long = "é".repeat(20);
        let cut = truncate_to_fit(&long, 16, Unit::Bytes);
        assert!(cut.len() <= 16 && cut.ends_with(CUT_MARK), "{cut}");
        assert_eq!(cut, format!("{}…", "é".repeat(6)));
        assert_eq!(truncate_to_fit("abcdef", 4, Unit::Chars), "abc…");
        assert_eq!(truncate_to_fit("abcd", 4, Unit::Chars), "abcd");
        assert_eq!(truncate_to_fit("abcdef", 1, Unit::Bytes), "…", "nothing but the mark fits");
    }

    #[test]
    fn text_that_fits_is_borrowed() {
        assert!(matches!(truncate("hello", 5, Unit::Bytes), Cow::Borrowed(_)));
        assert!(matches!(truncate_to_fit("hello", 5, Unit::Chars), Cow::Borrowed(_)));
    }
}
