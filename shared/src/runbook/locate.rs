//! Lines for field paths, so that errors found after parsing (validation)
//! name a line too.
//!
//! The text is read a second time into a tree that records where every key
//! and item starts; a field path such as `steps[3].when` is then walked down
//! that tree. Parsing twice costs little for files this size and keeps the
//! runbook types free of position bookkeeping.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

/// A YAML node with the positions of its children.
#[derive(Debug)]
enum Node {
    Map(Vec<(String, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Leaf,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    entries.push((key, map.next_value::<Spanned<Node>>()?));
                }
                Ok(Node::Map(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Node, D::Error> {
                Node::deserialize(de)
            }
        }
        de.deserialize_any(NodeVisitor)
    }
}

/// Where each part of a document is.
#[derive(Debug)]
pub(crate) struct SourceMap {
    root: Node,
}

impl SourceMap {
    /// Reads the positions in `text`; `None` if it does not parse (then
    /// errors simply go without a line).
    pub(crate) fn parse(text: &str) -> Option<SourceMap> {
        serde_saphyr::from_str::<Node>(text).ok().map(|root| SourceMap { root })
    }

    /// The position of the deepest part of `field` (`steps[3].scale.replicas`)
    /// that exists in the document.
    pub(crate) fn locate(&self, field: &str) -> Option<Location> {
        let mut node = &self.root;
        let mut found = None;
        for segment in segments(field) {
            let next = match (node, segment) {
                (Node::Map(entries), Segment::Key(key)) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                (Node::Seq(items), Segment::Index(i)) => items.get(i),
                _ => None,
            };
            let Some(next) = next else { break };
            if next.referenced != Location::UNKNOWN {
                found = Some(next.referenced);
            }
            node = &next.value;
        }
        found
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `steps[3].scale.replicas` → `steps`, 3, `scale`, `replicas`.
fn segments(field: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        while let Some(open) = rest.strip_prefix('[') {
            let Some(close) = open.find(']') else { break };
            if let Ok(i) = open[..close].parse() {
                out.push(Segment::Index(i));
            }
            rest = &open[close + 1..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_keys_and_indexes() {
        assert_eq!(
            segments("steps[3].scale.replicas"),
            [Segment::Key("steps"), Segment::Index(3), Segment::Key("scale"), Segment::Key("replicas")]
        );
        assert_eq!(segments("a[1][2]"), [Segment::Key("a"), Segment::Index(1), Segment::Index(2)]);
    }

    #[test]
    fn fields_are_located_down_to_the_deepest_existing_part() {
        let text = "a: 1\nsteps:\n  - id: x\n    when: b > 1\n  - id: y\n    scale:\n      replicas: 3\n";
        let map = SourceMap::parse(text).unwrap_or_else(|| panic!("parses"));
        assert_eq!(map.locate("steps[0].when").map(|l| l.line()), Some(4));
        assert_eq!(map.locate("steps[1].scale.replicas").map(|l| l.line()), Some(7));
        assert_eq!(map.locate("steps[1].scale.floor").map(|l| l.line()), Some(7), "where `scale` is");
        assert_eq!(map.locate("steps[1]").map(|l| l.line()), Some(5));
        assert_eq!(map.locate("nothing"), None);
    }
}
