//! The admin listings' pages as they go on the wire: each item measured as
//! encoded and offered to a [`Page`] (remedy_shared::paging), which stops
//! by count or before [`MAX_PAGE_BYTES`]; an item too large for a message
//! of its own is listed in a reduced form that says so.

use remedy_proto::v1 as pb;
use remedy_proto::{MAX_LISTED_ITEM_BYTES, MAX_PAGE_BYTES, list_entry_len};
use remedy_shared::paging::{self, Listing, Page};
use remedy_shared::text::{Unit, prefix};

/// Longest text a reduced item keeps of each cut field, bytes.
const REDUCED_TEXT_BYTES: usize = 1024;
/// The entry a reduced item's map holds in place of its own.
pub const CUT_KEY: &str = "remedy.cut";

/// An item of a listing: its reduced form keeps its identity and small
/// fields, cuts its long texts, empties its lists and leaves in each map
/// only [`CUT_KEY`] with why.
pub trait Listed: prost::Message + Sized {
    /// The item reduced; `note` says why, and goes in its main text.
    fn reduced(self, note: &str) -> Self;
}

/// A page being filled; each item goes with the key the next page starts
/// after.
pub type Keyed<T> = Page<(String, T)>;

/// An empty page for a requested `page_size`.
pub fn page<T>(page_size: u32) -> Keyed<T> {
    Page::new(paging::page_size(page_size), MAX_PAGE_BYTES)
}

/// Offers `item`, whose next page would start after `key`; returns whether
/// to go on reading.
pub fn offer<T: Listed>(page: &mut Keyed<T>, key: String, item: T) -> bool {
    let (item, bytes) = measured(item);
    page.offer((key, item), bytes)
}

/// The items of a full or final page, and the token of the next page
/// (empty when the listing ended before the page filled).
pub fn finish<T>(page: Keyed<T>, listing: Listing) -> (Vec<T>, String) {
    let token = match page.items().last() {
        Some((key, _)) if page.is_full() => listing.token(key),
        _ => String::new(),
    };
    (page.into_items().into_iter().map(|(_, item)| item).collect(), token)
}

/// `item` as listed, with the bytes it takes in the answer.
fn measured<T: Listed>(item: T) -> (T, usize) {
    let bytes = list_entry_len(&item);
    if bytes <= MAX_LISTED_ITEM_BYTES {
        return (item, bytes);
    }
    let note = format!("the item is {bytes} bytes, over the message limit; long fields cut, maps and lists emptied");
    let item = item.reduced(&note);
    let bytes = list_entry_len(&item);
    (item, bytes)
}

/// Cuts `text` to [`REDUCED_TEXT_BYTES`], saying so.
fn cut(text: &mut String) {
    if text.len() > REDUCED_TEXT_BYTES {
        *text = format!("{}… (cut: {} bytes)", prefix(text, REDUCED_TEXT_BYTES, Unit::Bytes), text.len());
    }
}

/// `text` cut, followed by why.
fn mark(text: &mut String, note: &str) {
    cut(text);
    text.push_str(&format!(" ({CUT_KEY}: {note})"));
}

fn cut_map(map: &mut std::collections::HashMap<String, String>, note: &str) {
    map.clear();
    map.insert(CUT_KEY.to_owned(), note.to_owned());
}

impl Listed for pb::Incident {
    fn reduced(mut self, note: &str) -> Self {
        mark(&mut self.summary, note);
        for text in [
            &mut self.kind,
            &mut self.target,
            &mut self.runbook_id,
            &mut self.priority,
            &mut self.acknowledged_by,
            &mut self.escalation_policy,
        ] {
            cut(text);
        }
        self.tags.clear();
        self.timeline.clear();
        self
    }
}

impl Listed for pb::StoredFinding {
    fn reduced(mut self, note: &str) -> Self {
        cut(&mut self.node_name);
        if let Some(f) = self.finding.as_mut() {
            mark(&mut f.summary, note);
            cut(&mut f.target);
            cut(&mut f.kind);
            cut_map(&mut f.labels, note);
            cut_map(&mut f.evidence, note);
        }
        self
    }
}

impl Listed for pb::Agent {
    fn reduced(mut self, note: &str) -> Self {
        cut(&mut self.node_name);
        cut(&mut self.version);
        cut_map(&mut self.labels, note);
        self.capabilities.clear();
        self.node_addresses.clear();
        self
    }
}

impl Listed for pb::Runbook {
    fn reduced(mut self, note: &str) -> Self {
        mark(&mut self.title, note);
        cut(&mut self.source);
        cut_map(&mut self.params, note);
        self.steps.clear();
        self.dry_run_steps.clear();
        self.rehearsal_reasons.clear();
        self.definition.clear();
        self
    }
}

impl Listed for pb::Approval {
    fn reduced(mut self, note: &str) -> Self {
        mark(&mut self.reason, note);
        cut(&mut self.action);
        cut(&mut self.runbook_id);
        cut(&mut self.answered_by);
        cut(&mut self.answer_reason);
        self
    }
}

impl Listed for pb::Ban {
    fn reduced(mut self, note: &str) -> Self {
        mark(&mut self.reason, note);
        cut(&mut self.step_id);
        cut(&mut self.unblocked_by);
        cut(&mut self.edge_reason);
        cut(&mut self.edge_rule_id);
        self.nodes.clear();
        self
    }
}

impl Listed for pb::AuditEntry {
    fn reduced(mut self, note: &str) -> Self {
        cut(&mut self.actor);
        cut(&mut self.operation);
        cut(&mut self.target);
        cut(&mut self.outcome);
        cut_map(&mut self.arguments, note);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident(n: u64, summary_bytes: usize) -> pb::Incident {
        pb::Incident { id: format!("INC-{n:06}"), summary: "s".repeat(summary_bytes), ..Default::default() }
    }

    #[test]
    fn pages_stop_before_the_byte_budget_and_say_where_to_go_on() {
        let mut page = page(5_000);
        let mut offered = 0;
        for n in 0..5_000u64 {
            offered += 1;
            if !offer(&mut page, n.to_string(), incident(n, 100 * 1024)) {
                break;
            }
        }
        let (items, token) = finish(page, Listing::Incidents);
        let bytes: usize = items.iter().map(list_entry_len).sum();
        assert!(bytes <= MAX_PAGE_BYTES, "{bytes}");
        assert!(items.len() < offered && items.len() > 1, "{} of {offered}", items.len());
        assert_eq!(token, Listing::Incidents.token(&(items.len() - 1).to_string()));
    }

    #[test]
    fn a_listing_that_ends_inside_a_page_has_no_next_token() {
        let mut page = page(10);
        for n in 0..3u64 {
            assert!(offer(&mut page, n.to_string(), incident(n, 10)));
        }
        let (items, token) = finish(page, Listing::Incidents);
        assert_eq!((items.len(), token.as_str()), (3, ""));
    }

    #[test]
    fn an_item_over_the_message_limit_is_listed_reduced_and_says_so() {
        let mut page = page(10);
        assert!(offer(&mut page, "1".into(), incident(1, remedy_proto::MAX_MESSAGE_BYTES)));
        assert!(offer(&mut page, "2".into(), incident(2, 10)), "reduced, it leaves room for more");
        let (items, token) = finish(page, Listing::Incidents);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].id, "INC-000001", "its identity is kept");
        assert!(list_entry_len(&items[0]) < 4 * REDUCED_TEXT_BYTES);
        assert!(items[0].summary.contains(CUT_KEY) && items[0].summary.contains("over the message limit"));
        assert_eq!(token, "", "the listing ended within the page");
    }

    #[test]
    fn a_reduced_finding_keeps_its_key_and_says_why_in_its_maps() {
        let big = "v".repeat(remedy_proto::MAX_MESSAGE_BYTES);
        let finding = pb::StoredFinding {
            agent_id: "node-a".into(),
            sequence: 7,
            finding: Some(pb::Finding {
                summary: "disk full".into(),
                labels: [("huge".to_owned(), big)].into(),
                evidence: [("e".to_owned(), "x".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut page = page(10);
        assert!(offer(&mut page, "7:node-a".into(), finding));
        let (items, _) = finish(page, Listing::Findings);
        let f = &items[0];
        assert_eq!((f.agent_id.as_str(), f.sequence), ("node-a", 7));
        let body = f.finding.as_ref().unwrap();
        assert!(body.summary.starts_with("disk full (remedy.cut: "), "{}", body.summary);
        assert_eq!(body.labels.keys().collect::<Vec<_>>(), vec![CUT_KEY]);
        assert_eq!(body.evidence.keys().collect::<Vec<_>>(), vec![CUT_KEY]);
    }

    #[test]
    fn an_item_over_the_page_budget_but_within_the_limit_is_served_whole_alone() {
        let mut page = page(10);
        assert!(offer(&mut page, "1".into(), incident(1, 10)));
        assert!(!offer(&mut page, "2".into(), incident(2, MAX_PAGE_BYTES + 1024)));
        let (items, _) = finish(page, Listing::Incidents);
        assert_eq!(items.len(), 1, "the large one starts the next page");
        let mut next = super::page(10);
        assert!(!offer(&mut next, "2".into(), incident(2, MAX_PAGE_BYTES + 1024)));
        let (items, _) = finish(next, Listing::Incidents);
        assert_eq!(items[0].summary.len(), MAX_PAGE_BYTES + 1024, "served whole");
    }
}
