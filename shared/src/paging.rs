//! Pages of the admin listings: how many items a page holds, when it stops
//! (by count or by bytes), and the tokens that say where the next one
//! starts.
//!
//! Every listing pages, and each page stays under a byte budget whatever
//! its items hold, so no answer can pass the transport's message limit.
//! Callers measure each item as it would be encoded and offer it to a
//! [`Page`]; the page says when to stop reading.

use std::fmt;

/// Items in a page when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 500;
/// The most items a page holds; a larger request is cut to it.
pub const MAX_PAGE_SIZE: usize = 5_000;

/// Items in a page for a requested `page_size`: 0 means the default, more
/// than the maximum is cut to it.
pub fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// One page being filled, at most `max_items` items and `max_bytes` bytes.
#[derive(Debug)]
pub struct Page<T> {
    items: Vec<T>,
    bytes: usize,
    max_items: usize,
    max_bytes: usize,
    full: bool,
}

impl<T> Page<T> {
    /// An empty page.
    pub fn new(max_items: usize, max_bytes: usize) -> Page<T> {
        Page { items: Vec::new(), bytes: 0, max_items: max_items.max(1), max_bytes, full: false }
    }

    /// Offers the next item, `bytes` long encoded; returns whether the
    /// caller should go on offering. An item that would take the page past
    /// its byte budget is refused (the next page starts with it), except
    /// the first: a page always holds at least one item, so a listing never
    /// stalls on a large one.
    pub fn offer(&mut self, item: T, bytes: usize) -> bool {
        if self.full {
            return false;
        }
        if !self.items.is_empty() && self.bytes.saturating_add(bytes) > self.max_bytes {
            self.full = true;
            return false;
        }
        self.items.push(item);
        self.bytes = self.bytes.saturating_add(bytes);
        if self.items.len() >= self.max_items || self.bytes >= self.max_bytes {
            self.full = true;
        }
        !self.full
    }

    /// Whether the page stopped at a bound: more items may follow, so the
    /// answer carries a token (the next page may come back empty).
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// The items taken, in the order offered.
    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// The items taken.
    pub fn into_items(self) -> Vec<T> {
        self.items
    }
}

/// Which listing a token belongs to: a token is only good for the listing
/// that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// ListAgents.
    Agents,
    /// ListFindings.
    Findings,
    /// ListIncidents.
    Incidents,
    /// ListRunbooks.
    Runbooks,
    /// ListApprovals.
    Approvals,
    /// ListBans.
    Bans,
    /// ListAudit.
    Audit,
}

impl Listing {
    fn prefix(self) -> &'static str {
        match self {
            Listing::Agents => "agents",
            Listing::Findings => "findings",
            Listing::Incidents => "incidents",
            Listing::Runbooks => "runbooks",
            Listing::Approvals => "approvals",
            Listing::Bans => "bans",
            Listing::Audit => "audit",
        }
    }

    /// The token whose next page starts after the item keyed `key`.
    pub fn token(self, key: &str) -> String {
        format!("{}/{key}", self.prefix())
    }

    /// The key a token of this listing carries; `None` for an empty token
    /// (from the start).
    pub fn key(self, token: &str) -> Result<Option<String>, BadToken> {
        if token.is_empty() {
            return Ok(None);
        }
        match token.split_once('/') {
            Some((prefix, key)) if prefix == self.prefix() => Ok(Some(key.to_owned())),
            _ => Err(BadToken(token.to_owned())),
        }
    }

    /// The key of a token, parsed by `parse`; a key it refuses is a token
    /// this server did not issue.
    pub fn parse<K>(self, token: &str, parse: impl FnOnce(&str) -> Option<K>) -> Result<Option<K>, BadToken> {
        match self.key(token)? {
            None => Ok(None),
            Some(key) => parse(&key).map(Some).ok_or_else(|| BadToken(token.to_owned())),
        }
    }
}

/// A page token this server did not issue (or issued for another listing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadToken(pub String);

impl fmt::Display for BadToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Shown whole only when short: a token is the caller's input.
        let shown = crate::text::prefix(&self.0, 80, crate::text::Unit::Chars);
        let cut = if shown.len() < self.0.len() { "…" } else { "" };
        write!(f, "page_token `{shown}{cut}` was not issued for this listing by this server")
    }
}

impl std::error::Error for BadToken {}

/// A key made of fields (a sort key), joined so that it splits back into
/// the same fields: the last field may hold anything, the others are
/// numbers or texts without `|`.
pub fn join_key(fields: &[&str]) -> String {
    fields.join("|")
}

/// The `n` fields of a key made by [`join_key`]; `None` when it has fewer.
pub fn split_key(key: &str, n: usize) -> Option<Vec<&str>> {
    let fields: Vec<&str> = key.splitn(n, '|').collect();
    (fields.len() == n).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_and_are_capped() {
        assert_eq!(page_size(0), 500);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(1_000_000), 5_000);
    }

    #[test]
    fn a_page_stops_at_its_count_or_before_its_byte_budget() {
        let mut page = Page::new(3, 100);
        assert!(page.offer(1, 10) && page.offer(2, 10));
        assert!(!page.offer(3, 10), "the third item fills the page");
        assert!(page.is_full() && !page.offer(4, 1));
        assert_eq!(page.items(), &[1, 2, 3]);

        let mut page = Page::new(10, 100);
        assert!(page.offer(1, 60));
        assert!(!page.offer(2, 60), "over the budget: the next page starts with it");
        assert!(page.is_full());
        assert_eq!(page.into_items(), vec![1]);
    }

    #[test]
    fn an_item_over_the_budget_is_served_alone() {
        let mut page = Page::new(10, 100);
        assert!(!page.offer("big", 500));
        assert!(page.is_full());
        assert_eq!(page.items(), &["big"]);
    }

    #[test]
    fn a_page_that_ends_with_the_items_is_not_full() {
        let mut page = Page::new(10, 100);
        assert!(page.offer(1, 10));
        assert!(!page.is_full());
    }

    #[test]
    fn tokens_round_trip_and_only_serve_their_listing() {
        let token = Listing::Incidents.token("42");
        assert_eq!(Listing::Incidents.parse(&token, |k| k.parse::<u64>().ok()), Ok(Some(42)));
        assert_eq!(Listing::Incidents.parse("", |k| k.parse::<u64>().ok()), Ok(None));
        assert!(Listing::Audit.key(&token).is_err(), "another listing's token");
        assert!(Listing::Incidents.parse("incidents/x", |k| k.parse::<u64>().ok()).is_err());
        assert!(Listing::Incidents.key("42").is_err());
        let long = "x".repeat(1_000);
        let message = Listing::Agents.key(&long).unwrap_err().to_string();
        assert!(message.starts_with("page_token `") && message.len() < 200, "{message}");
    }

    #[test]
    fn keys_split_back_into_their_fields() {
        let key = join_key(&["1", "170", "a|b"]);
        assert_eq!(split_key(&key, 3), Some(vec!["1", "170", "a|b"]));
        assert_eq!(split_key("1|2", 3), None);
    }
}
