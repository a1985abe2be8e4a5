//! Remedy's own infrastructure as this agent knows it: its node's
//! addresses, read at every connection and announced in the hello, and the
//! cluster's ranges, as the coordinator sends them (every node's addresses,
//! the pod and service ranges, the API server, the coordinator, the
//! allow-list).
//!
//! The detectors never report an address in it: a node's address in
//! another node's auth log (a deploy script that logs in with the wrong
//! key ten times) is never an attacker. Nothing here knows who reads it;
//! features subscribe through `main`.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use remedy_shared::guard::{Infrastructure, IpNet};
use remedy_shared::sync::lock;
use serde::Serialize;
use tokio::sync::watch;

#[derive(Debug, Default)]
struct Known {
    node: Vec<IpAddr>,
    cluster: Vec<IpNet>,
    /// Whether the coordinator has sent its view at least once. Until then
    /// the other nodes are unknown, so the detectors hold what they raise.
    heard: bool,
}

/// Most ranges `/debug/state` lists (the count is always whole).
const LISTED: usize = 256;

/// What `/debug/state` shows under `infrastructure`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InfrastructureStatus {
    /// Whether the coordinator has sent the cluster's ranges yet.
    pub heard_from_coordinator: bool,
    /// How many ranges are known.
    pub total: usize,
    /// The first ranges, with whose each is.
    pub ranges: Vec<KnownRange>,
}

/// One range and its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KnownRange {
    /// The network or address.
    pub range: String,
    /// Whose it is.
    pub owner: String,
}

impl Known {
    fn combine(&self) -> Infrastructure {
        let node = self.node.iter().map(|a| (IpNet::from(*a), "an address of this node".to_owned()));
        let cluster =
            self.cluster.iter().map(|n| (*n, "Remedy's own infrastructure (from the coordinator)".to_owned()));
        Infrastructure::new(node.chain(cluster))
    }
}

/// The shared view. Cheap to clone: clones share it.
#[derive(Debug, Clone)]
pub struct OwnInfrastructure {
    known: Arc<Mutex<Known>>,
    published: Arc<watch::Sender<Arc<Infrastructure>>>,
}

impl Default for OwnInfrastructure {
    fn default() -> Self {
        let (published, _) = watch::channel(Arc::new(Infrastructure::default()));
        OwnInfrastructure { known: Arc::default(), published: Arc::new(published) }
    }
}

impl OwnInfrastructure {
    /// Reads this node's addresses now and keeps them; returns them, for
    /// the hello. A node whose addresses cannot be read keeps the ones it
    /// read before (and says why in the log): an unreadable /proc must
    /// not unprotect the node.
    pub fn refresh_node(&self) -> Vec<IpAddr> {
        match remedy_proto::interfaces::local_addresses() {
            Ok(addresses) => {
                self.change(|k| k.node = addresses.clone());
                addresses
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read this node's addresses; announcing the ones read before");
                lock(&self.known).node.clone()
            }
        }
    }

    /// Replaces the cluster's ranges with what the coordinator sent. An
    /// entry that does not parse is skipped and logged: never read as
    /// "everything", never as "nothing else".
    pub fn set_cluster<'a>(&self, ranges: impl IntoIterator<Item = &'a str>) {
        let mut parsed = Vec::new();
        for text in ranges {
            match text.parse::<IpNet>() {
                Ok(net) => parsed.push(net),
                Err(e) => tracing::warn!(range = %text, error = %e, "the coordinator sent a range that does not parse"),
            }
        }
        self.change(|k| {
            k.cluster = parsed;
            k.heard = true;
        });
    }

    /// Whether the coordinator has sent the cluster's ranges yet.
    pub fn heard_from_coordinator(&self) -> bool {
        lock(&self.known).heard
    }

    /// What `/debug/state` shows.
    pub fn status(&self) -> InfrastructureStatus {
        let now = self.current();
        InfrastructureStatus {
            heard_from_coordinator: self.heard_from_coordinator(),
            total: now.len(),
            ranges: now
                .ranges()
                .take(LISTED)
                .map(|(r, owner)| KnownRange { range: r.to_string(), owner: owner.to_owned() })
                .collect(),
        }
    }

    /// Everything known now.
    pub fn current(&self) -> Arc<Infrastructure> {
        self.published.borrow().clone()
    }

    /// Follows every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Infrastructure>> {
        self.published.subscribe()
    }

    fn change(&self, f: impl FnOnce(&mut Known)) {
        let combined = {
            let mut known = lock(&self.known);
            f(&mut known);
            known.combine()
        };
        remedy_proto::watch::send_if_changed(&self.published, combined);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_and_the_cluster_are_both_known_and_bad_ranges_are_skipped() {
        let own = OwnInfrastructure::default();
        let node = own.refresh_node();
        assert!(node.contains(&IpAddr::from([127, 0, 0, 1])), "{node:?}");
        let mut changes = own.subscribe();
        changes.mark_unchanged();
        assert!(!own.heard_from_coordinator());
        own.set_cluster(["10.79.2.2", "10.244.0.0/16", "everything", "0.0.0.0/99"]);
        assert!(own.heard_from_coordinator());
        assert_eq!(own.status().total, own.current().len());
        assert!(changes.has_changed().unwrap_or(false));
        let now = own.current();
        assert!(now.contains(IpAddr::from([10, 79, 2, 2])));
        assert!(now.contains(IpAddr::from([10, 244, 7, 7])));
        assert!(!now.contains(IpAddr::from([203, 0, 113, 7])), "an unparsable range is not everything");
        assert!(now.contains(IpAddr::from([127, 0, 0, 1])), "the node stays known");
    }
}
