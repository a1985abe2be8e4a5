//! Remedy's table as nftables JSON: what to send, and what a listing of
//! the table says is in force. Pure: running `nft` is `mod.rs`'s job.
//!
//! The table is `inet <name>`: one set per family (`banned_v4`,
//! `banned_v6`, flags `interval` and `timeout`, so prefixes and addresses
//! share a set and every element expires by itself) and two base chains,
//! `input` and `forward`, each with one drop rule per set. Nothing here
//! names another table, so kube-proxy's and the CNI's are never touched.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use nftables::batch::Batch;
use nftables::expr::{Elem, Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::cidr::Cidr;

/// The IPv4 set.
pub const SET_V4: &str = "banned_v4";
/// The IPv6 set.
pub const SET_V6: &str = "banned_v6";
/// Before the usual filter priority (0), so a ban drops a packet before
/// other filter chains spend time on it; a drop is final whatever the
/// priority.
pub const PRIORITY: i32 = -10;
/// The base chains and their hooks: input for the node, forward for
/// traffic routed to pods.
const CHAINS: [(&str, NfHook); 2] = [("input", NfHook::Input), ("forward", NfHook::Forward)];
/// Longest timeout nft takes in its JSON (seconds, 32 bits).
pub const MAX_TIMEOUT_SECS: u64 = u32::MAX as u64;

fn set_name(c: &Cidr) -> &'static str {
    if c.is_v4() { SET_V4 } else { SET_V6 }
}

fn table(name: &str) -> Table<'static> {
    Table { family: NfFamily::INet, name: Cow::Owned(name.to_owned()), handle: None }
}

fn set(table: &str, name: &'static str, ty: SetType) -> Set<'static> {
    Set {
        family: NfFamily::INet,
        table: Cow::Owned(table.to_owned()),
        name: Cow::Borrowed(name),
        set_type: SetTypeValue::Single(ty),
        flags: Some(HashSet::from([SetFlag::Interval, SetFlag::Timeout])),
        ..Set::default()
    }
}

fn chain(table: &str, name: &'static str, hook: NfHook) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: Cow::Owned(table.to_owned()),
        name: Cow::Borrowed(name),
        _type: Some(NfChainType::Filter),
        hook: Some(hook),
        prio: Some(PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }
}

/// `ip saddr @banned_v4 drop` (or `ip6 … @banned_v6`), as nft lists it back.
fn drop_statements(protocol: &'static str, set: &'static str) -> Vec<Statement<'static>> {
    vec![
        Statement::Match(Match {
            left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
                protocol: Cow::Borrowed(protocol),
                field: Cow::Borrowed("saddr"),
            }))),
            right: Expression::String(Cow::Owned(format!("@{set}"))),
            op: Operator::EQ,
        }),
        Statement::Drop(None),
    ]
}

fn rules(table: &str, chain: &'static str) -> Vec<Rule<'static>> {
    [("ip", SET_V4), ("ip6", SET_V6)]
        .into_iter()
        .map(|(protocol, set)| Rule {
            family: NfFamily::INet,
            table: Cow::Owned(table.to_owned()),
            chain: Cow::Borrowed(chain),
            expr: Cow::Owned(drop_statements(protocol, set)),
            ..Rule::default()
        })
        .collect()
}

/// Creates whatever of the table, its sets and chains is missing (an `add`
/// of something that exists changes nothing, and keeps the sets'
/// elements), and replaces the chains' rules with exactly ours.
pub fn structure(batch: &mut Batch<'static>, name: &str) {
    batch.add(NfListObject::Table(table(name)));
    batch.add(NfListObject::Set(Box::new(set(name, SET_V4, SetType::Ipv4Addr))));
    batch.add(NfListObject::Set(Box::new(set(name, SET_V6, SetType::Ipv6Addr))));
    for (c, hook) in CHAINS {
        batch.add(NfListObject::Chain(chain(name, c, hook)));
        batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain(name, c, hook))));
        for rule in rules(name, c) {
            batch.add(NfListObject::Rule(rule));
        }
    }
}

fn value(c: &Cidr) -> Expression<'static> {
    let addr = Expression::String(Cow::Owned(c.addr().to_string()));
    if c.is_host() {
        addr
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix { addr: Box::new(addr), len: u32::from(c.prefix_len()) }))
    }
}

fn element(table: &str, set: &'static str, elem: Vec<Expression<'static>>) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: NfFamily::INet,
        table: Cow::Owned(table.to_owned()),
        name: Cow::Borrowed(set),
        elem: Cow::Owned(elem),
    })
}

/// Adds bans, each with its timeout in seconds (at least 1).
pub fn add_bans(batch: &mut Batch<'static>, table: &str, bans: &[(Cidr, u64)]) {
    for set in [SET_V4, SET_V6] {
        let elem: Vec<Expression<'static>> = bans
            .iter()
            .filter(|(c, _)| set_name(c) == set)
            .map(|(c, secs)| {
                Expression::Named(NamedExpression::Elem(Elem {
                    val: Box::new(value(c)),
                    timeout: Some((*secs).clamp(1, MAX_TIMEOUT_SECS) as u32),
                    expires: None,
                    comment: None,
                    counter: None,
                }))
            })
            .collect();
        if !elem.is_empty() {
            batch.add(element(table, set, elem));
        }
    }
}

/// Deletes bans (each must be in its set, or nft refuses the whole batch).
pub fn delete_bans(batch: &mut Batch<'static>, table: &str, bans: &[Cidr]) {
    for set in [SET_V4, SET_V6] {
        let elem: Vec<Expression<'static>> = bans.iter().filter(|c| set_name(c) == set).map(value).collect();
        if !elem.is_empty() {
            batch.delete(element(table, set, elem));
        }
    }
}

/// What a listing of the table shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The table exists.
    pub table: bool,
    /// Sets missing or of another kind than ours.
    pub bad_sets: Vec<&'static str>,
    /// Chains missing or hooked elsewhere.
    pub bad_chains: Vec<&'static str>,
    /// Chains whose rules are not exactly ours.
    pub bad_rules: Vec<&'static str>,
    /// Elements in force, with seconds until they expire when nft says.
    pub bans: BTreeMap<Cidr, Option<u64>>,
}

impl Observed {
    /// Whether the table, sets, chains and rules are all as built.
    pub fn structure_intact(&self) -> bool {
        self.table && self.bad_sets.is_empty() && self.bad_chains.is_empty() && self.bad_rules.is_empty()
    }
}

/// What is in force, from `nft -j list table inet <name>`; `None` for a
/// table that does not exist.
pub fn observe(listing: Option<&Nftables<'_>>, name: &str) -> Observed {
    let Some(listing) = listing else {
        return Observed {
            bad_sets: vec![SET_V4, SET_V6],
            bad_chains: CHAINS.iter().map(|(c, _)| *c).collect(),
            bad_rules: CHAINS.iter().map(|(c, _)| *c).collect(),
            ..Observed::default()
        };
    };
    let ours = |family: &NfFamily, table: &str| *family == NfFamily::INet && table == name;
    let mut observed = Observed::default();
    let mut sets_seen = Vec::new();
    let mut chains_seen = Vec::new();
    let mut rules_seen: BTreeMap<&str, Vec<&[Statement<'_>]>> = BTreeMap::new();
    for object in listing.objects.iter() {
        let NfObject::ListObject(object) = object else { continue };
        match object {
            NfListObject::Table(t) if ours(&t.family, &t.name) => observed.table = true,
            NfListObject::Set(s) if ours(&s.family, &s.table) => {
                let Some(expected) =
                    [(SET_V4, SetType::Ipv4Addr), (SET_V6, SetType::Ipv6Addr)].into_iter().find(|(n, _)| *n == s.name)
                else {
                    continue;
                };
                let flags_ok =
                    s.flags.as_ref().is_some_and(|f| f.contains(&SetFlag::Interval) && f.contains(&SetFlag::Timeout));
                if s.set_type == SetTypeValue::Single(expected.1) && flags_ok {
                    sets_seen.push(expected.0);
                    for e in s.elem.iter().flat_map(|e| e.iter()) {
                        if let Some((c, expires)) = ban_of(e) {
                            observed.bans.insert(c, expires);
                        }
                    }
                }
            }
            NfListObject::Chain(c) if ours(&c.family, &c.table) => {
                if let Some((n, _)) = CHAINS.iter().find(|(n, hook)| {
                    *n == c.name
                        && c.hook.as_ref() == Some(hook)
                        && c._type == Some(NfChainType::Filter)
                        && c.prio == Some(PRIORITY)
                        && c.policy == Some(NfChainPolicy::Accept)
                }) {
                    chains_seen.push(*n);
                }
            }
            NfListObject::Rule(r) if ours(&r.family, &r.table) => {
                rules_seen.entry(r.chain.as_ref()).or_default().push(r.expr.as_ref());
            }
            _ => {}
        }
    }
    observed.bad_sets = [SET_V4, SET_V6].into_iter().filter(|s| !sets_seen.contains(s)).collect();
    observed.bad_chains = CHAINS.iter().map(|(c, _)| *c).filter(|c| !chains_seen.contains(c)).collect();
    for (c, _) in CHAINS {
        let expected: Vec<Vec<Statement<'static>>> = rules(name, c).into_iter().map(|r| r.expr.into_owned()).collect();
        let seen = rules_seen.get(c).map(Vec::as_slice).unwrap_or_default();
        let same = seen.len() == expected.len() && seen.iter().zip(&expected).all(|(s, e)| *s == e.as_slice());
        if !same {
            observed.bad_rules.push(c);
        }
    }
    observed
}

/// A listed element: its prefix and, when nft says, seconds until it expires.
fn ban_of(e: &Expression<'_>) -> Option<(Cidr, Option<u64>)> {
    match e {
        Expression::Named(NamedExpression::Elem(elem)) => {
            cidr_of(&elem.val).map(|c| (c, elem.expires.or(elem.timeout).map(u64::from)))
        }
        other => cidr_of(other).map(|c| (c, None)),
    }
}

fn cidr_of(e: &Expression<'_>) -> Option<Cidr> {
    match e {
        Expression::String(s) => s.parse().ok(),
        Expression::Named(NamedExpression::Prefix(p)) => match p.addr.as_ref() {
            Expression::String(a) => Cidr::new(a.parse().ok()?, u8::try_from(p.len).ok()?).ok(),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft -j list table inet remedy` from nftables 1.0.6, after
    /// `structure` and two bans.
    const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "remedy", "handle": 1}},
      {"set": {"family": "inet", "name": "banned_v4", "table": "remedy", "type": "ipv4_addr", "handle": 3, "flags": ["interval", "timeout"],
        "elem": [{"elem": {"val": {"prefix": {"addr": "10.1.2.0", "len": 24}}, "timeout": 3600, "expires": 3599}},
                 {"elem": {"val": "10.9.9.9", "timeout": 30, "expires": 29}}]}},
      {"set": {"family": "inet", "name": "banned_v6", "table": "remedy", "type": "ipv6_addr", "handle": 4, "flags": ["interval", "timeout"]}},
      {"chain": {"family": "inet", "table": "remedy", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}},
      {"chain": {"family": "inet", "table": "remedy", "name": "forward", "handle": 2, "type": "filter", "hook": "forward", "prio": -10, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "remedy", "chain": "input", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@banned_v4"}}, {"drop": null}]}},
      {"rule": {"family": "inet", "table": "remedy", "chain": "input", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@banned_v6"}}, {"drop": null}]}},
      {"rule": {"family": "inet", "table": "remedy", "chain": "forward", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@banned_v4"}}, {"drop": null}]}},
      {"rule": {"family": "inet", "table": "remedy", "chain": "forward", "handle": 8, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@banned_v6"}}, {"drop": null}]}}
    ]}"#;

    fn c(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn a_listing_of_an_intact_table_shows_its_bans_and_their_expiry() {
        let listing: Nftables = serde_json::from_str(LISTING).unwrap();
        let o = observe(Some(&listing), "remedy");
        assert!(o.structure_intact(), "{o:?}");
        assert_eq!(o.bans, BTreeMap::from([(c("10.1.2.0/24"), Some(3599)), (c("10.9.9.9"), Some(29))]));
        let other = observe(Some(&listing), "other");
        assert!(!other.table && !other.structure_intact(), "another table's objects are not ours");
    }

    #[test]
    fn a_missing_table_rule_or_changed_chain_is_noticed() {
        let gone = observe(None, "remedy");
        assert!(!gone.table && gone.bans.is_empty());
        assert_eq!(gone.bad_sets, vec![SET_V4, SET_V6]);

        let mut value: serde_json::Value = serde_json::from_str(LISTING).unwrap();
        let objects = value["nftables"].as_array_mut().unwrap();
        objects.retain(|o| o["rule"]["handle"] != 8);
        objects.iter_mut().filter(|o| o["chain"]["name"] == "input").for_each(|o| o["chain"]["prio"] = 0.into());
        let listing: Nftables = serde_json::from_value(value).unwrap();
        let o = observe(Some(&listing), "remedy");
        assert_eq!((o.bad_chains.as_slice(), o.bad_rules.as_slice()), (&["input"][..], &["forward"][..]));
        assert!(o.bad_sets.is_empty() && !o.structure_intact());
    }

    #[test]
    fn the_batch_builds_only_our_table_with_timed_elements() {
        let mut batch = Batch::new();
        structure(&mut batch, "remedy");
        add_bans(&mut batch, "remedy", &[(c("10.9.9.9"), 30), (c("2001:db8::/64"), 0), (c("10.1.2.0/24"), 3600)]);
        delete_bans(&mut batch, "remedy", &[c("10.8.8.8")]);
        let json = serde_json::to_value(batch.to_nftables()).unwrap();
        let commands = json["nftables"].as_array().unwrap();
        assert!(
            commands
                .iter()
                .all(|cmd| cmd.to_string().contains(r#""table":"remedy""#)
                    || cmd.to_string().contains(r#""name":"remedy""#)),
            "{json:#}"
        );
        assert_eq!(commands[0], serde_json::json!({"add": {"table": {"family": "inet", "name": "remedy"}}}));
        let sets: Vec<&serde_json::Value> = commands.iter().filter_map(|c| c["add"].get("set")).collect();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0]["flags"].as_array().map(Vec::len), Some(2));
        assert!(commands.iter().any(|c| c["flush"]["chain"]["name"] == "input"));
        let chains: Vec<&serde_json::Value> = commands.iter().filter_map(|c| c["add"].get("chain")).collect();
        assert_eq!(chains[1]["hook"], "forward");
        assert_eq!(chains[1]["prio"], PRIORITY);
        let v4 = commands.iter().find(|c| c["add"]["element"]["name"] == SET_V4).unwrap();
        let elems = v4["add"]["element"]["elem"].as_array().unwrap();
        assert_eq!(elems[0]["elem"]["val"], "10.9.9.9");
        assert_eq!(elems[0]["elem"]["timeout"], 30);
        assert_eq!(elems[1]["elem"]["val"], serde_json::json!({"prefix": {"addr": "10.1.2.0", "len": 24}}));
        let v6 = commands.iter().find(|c| c["add"]["element"]["name"] == SET_V6).unwrap();
        assert_eq!(v6["add"]["element"]["elem"][0]["elem"]["timeout"], 1, "a timeout is at least a second");
        let delete = commands.iter().find(|c| c.get("delete").is_some()).unwrap();
        assert_eq!(delete["delete"]["element"]["elem"], serde_json::json!(["10.8.8.8"]));

        // What is built is what a listing of it is recognised as.
        let mut listing: Vec<serde_json::Value> = commands.iter().filter_map(|c| c.get("add").cloned()).collect();
        listing.retain(|o| o.get("element").is_none());
        let listing: Nftables = serde_json::from_value(serde_json::json!({ "nftables": listing })).unwrap();
        assert!(observe(Some(&listing), "remedy").structure_intact());
    }
}
