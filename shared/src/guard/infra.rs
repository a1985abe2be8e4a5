//! Remedy's own infrastructure: the addresses no ban may cover, whatever a
//! log line, an alert or a person says.
//!
//! The allow-list (`never_block`) is what an operator wrote down once; this
//! is what the coordinator knows now: every address each node's agent
//! announced, the addresses and pod ranges of the cluster's Node objects,
//! the service ranges, the API server's endpoints and the coordinator's own
//! addresses. Each range carries who owns it, so a refusal says whose
//! address a ban would have cut off ("node-2's address 10.0.0.2, announced
//! by its agent"), which is what a person reading the timeline needs.
//!
//! Pure data: the coordinator gathers the sources and rebuilds it when one
//! changes; the address rail ([`super::evaluate`]) only reads it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::net::IpNet;

/// The ranges of one source, as the coordinator last learned them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Infrastructure {
    /// Each range, with a description of its owner. Kept sorted and
    /// without repeats, so two views of the same sources compare equal.
    ranges: Vec<(IpNet, String)>,
}

impl Infrastructure {
    /// Infrastructure made of `ranges`, each with who owns it. The same
    /// range named twice keeps the owner named first.
    pub fn new(ranges: impl IntoIterator<Item = (IpNet, String)>) -> Self {
        let mut by_net: BTreeMap<IpNet, String> = BTreeMap::new();
        for (net, owner) in ranges {
            by_net.entry(net).or_insert(owner);
        }
        Infrastructure { ranges: by_net.into_iter().collect() }
    }

    /// The range that `net` overlaps, with its owner; the first in address
    /// order when several do.
    pub fn covering(&self, net: &IpNet) -> Option<(&IpNet, &str)> {
        self.ranges.iter().find(|(r, _)| r.overlaps(net)).map(|(r, owner)| (r, owner.as_str()))
    }

    /// Whether `addr` is in any range.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.ranges.iter().any(|(r, _)| r.contains(addr))
    }

    /// Every range, in address order, with its owner.
    pub fn ranges(&self) -> impl Iterator<Item = (&IpNet, &str)> {
        self.ranges.iter().map(|(r, owner)| (r, owner.as_str()))
    }

    /// How many ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_range_is_found_with_its_owner_in_any_notation() {
        let infra = Infrastructure::new([
            (net("10.0.0.2"), "node-2's address".to_owned()),
            (net("10.244.0.0/16"), "the pod range".to_owned()),
        ]);
        assert_eq!(infra.covering(&net("10.0.0.2")).map(|(_, o)| o), Some("node-2's address"));
        // The IPv4-mapped form names the same address.
        assert_eq!(infra.covering(&net("::ffff:10.0.0.2")).map(|(_, o)| o), Some("node-2's address"));
        // A wider ban that would take a node with it is covered too.
        assert_eq!(infra.covering(&net("10.0.0.0/8")).map(|(_, o)| o), Some("node-2's address"));
        assert_eq!(infra.covering(&net("10.244.3.4")).map(|(_, o)| o), Some("the pod range"));
        assert!(infra.covering(&net("203.0.113.7")).is_none());
        assert!(infra.contains("10.244.9.9".parse().unwrap_or_else(|e| panic!("{e}"))));
    }

    #[test]
    fn the_same_range_twice_is_kept_once() {
        let a = Infrastructure::new([(net("10.0.0.2"), "b".to_owned()), (net("10.0.0.2"), "a".to_owned())]);
        assert_eq!(a.len(), 1);
        assert!(!a.is_empty());
        assert!(Infrastructure::default().is_empty());
    }
}
