//! What the coordinator knows of Remedy's own infrastructure, so that no
//! ban ever covers it: a node's address in another node's auth log, an
//! alert naming the API server, a person's typo.
//!
//! Sources, each kept apart and combined into one
//! [`remedy_shared::guard::Infrastructure`] whenever one changes:
//! - every address each agent announced in its hello (kept after the agent
//!   disconnects, and read back from the store at start, so a coordinator
//!   that restarts protects its nodes before they reconnect);
//! - with a cluster: the Node objects' addresses and pod ranges, the
//!   ServiceCIDR objects, and the API server's endpoints (the `kubernetes`
//!   Service's EndpointSlices and the host of the kubeconfig's server),
//!   listed every [`CLUSTER_EVERY`];
//! - this coordinator's own interface addresses;
//! - the rails' `never_block` list, so the agents' detectors never report
//!   an allow-listed address either.
//!
//! The engine's address rail reads [`InfrastructureMap::current`] at every
//! decision; each agent stream is sent the ranges after its welcome and
//! again whenever they change ([`InfrastructureMap::subscribe`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, ListParams};
use remedy_shared::guard::{Infrastructure, IpNet};
use remedy_shared::sync::lock;
use tokio::sync::watch;

/// How often the cluster's own objects are listed again.
pub const CLUSTER_EVERY: Duration = Duration::from_secs(30);
/// Most addresses one hello may announce.
pub const MAX_NODE_ADDRESSES: usize = 1024;

#[derive(Debug, Default)]
struct Sources {
    /// Node name -> the addresses its agent announced last.
    announced: BTreeMap<String, BTreeSet<IpAddr>>,
    /// What the cluster's objects said at the last listing that worked.
    cluster: Vec<(IpNet, String)>,
    /// This coordinator's addresses and the allow-list: fixed at start.
    fixed: Vec<(IpNet, String)>,
}

impl Sources {
    fn combine(&self) -> Infrastructure {
        let announced = self.announced.iter().flat_map(|(node, addrs)| {
            addrs.iter().map(move |a| (IpNet::from(*a), format!("an address of node {node} (announced by its agent)")))
        });
        Infrastructure::new(announced.chain(self.cluster.iter().cloned()).chain(self.fixed.iter().cloned()))
    }
}

/// The live view. Cheap to clone: clones share it.
#[derive(Debug, Clone)]
pub struct InfrastructureMap {
    sources: Arc<Mutex<Sources>>,
    published: Arc<watch::Sender<Arc<Infrastructure>>>,
}

impl Default for InfrastructureMap {
    fn default() -> Self {
        InfrastructureMap::new(Vec::new())
    }
}

impl InfrastructureMap {
    /// A view that starts from `fixed` ranges (the coordinator's own
    /// addresses, the allow-list), each with its owner.
    pub fn new(fixed: Vec<(IpNet, String)>) -> Self {
        let sources = Sources { fixed, ..Sources::default() };
        let (published, _) = watch::channel(Arc::new(sources.combine()));
        InfrastructureMap { sources: Arc::new(Mutex::new(sources)), published: Arc::new(published) }
    }

    /// The ranges as they stand now.
    pub fn current(&self) -> Arc<Infrastructure> {
        self.published.borrow().clone()
    }

    /// Follows every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Infrastructure>> {
        self.published.subscribe()
    }

    /// Records what `node`'s agent announced, replacing what it said before.
    pub fn announce(&self, node: &str, addresses: impl IntoIterator<Item = IpAddr>) {
        self.change(|s| {
            s.announced.insert(node.to_owned(), addresses.into_iter().collect());
        });
    }

    /// Replaces what the cluster's objects say.
    pub fn set_cluster(&self, ranges: Vec<(IpNet, String)>) {
        self.change(|s| s.cluster = ranges);
    }

    fn change(&self, f: impl FnOnce(&mut Sources)) {
        let combined = {
            let mut sources = lock(&self.sources);
            f(&mut sources);
            sources.combine()
        };
        // Receivers wake only on a real change: a node saying hello again
        // with the same addresses sends nothing to the other agents.
        remedy_proto::watch::send_if_changed(&self.published, combined);
    }

    /// Lists the cluster's own objects now and every [`CLUSTER_EVERY`]
    /// until `stopped`. A listing that fails keeps what the last one found
    /// (forgetting the nodes because the API server blinked would unprotect
    /// them) and says so in the log; a kind the API server does not serve
    /// (ServiceCIDR before Kubernetes 1.33) is skipped.
    pub async fn keep_watching_cluster(
        self,
        client: kube::Client,
        api_server: Option<IpAddr>,
        stopped: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stopped);
        let mut every = tokio::time::interval(CLUSTER_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stopped => return,
                _ = every.tick() => match cluster_ranges(&client, api_server).await {
                    Ok(ranges) => self.set_cluster(ranges),
                    Err(e) => tracing::warn!(error = %e, "cannot list the cluster's nodes and ranges; keeping what was known"),
                },
            }
        }
    }
}

/// The fixed ranges: this coordinator's interface addresses and the
/// allow-list.
pub fn fixed_ranges(own: &[IpAddr], never_block: &[IpNet]) -> Vec<(IpNet, String)> {
    own.iter()
        .map(|a| (IpNet::from(*a), "an address of the coordinator".to_owned()))
        .chain(never_block.iter().map(|n| (*n, "the allow-list (guard_rails.protected.never_block)".to_owned())))
        .collect()
}

/// The host of a kubeconfig server URL when it is an address (a name is
/// resolved by the cluster's EndpointSlices instead).
pub fn api_server_address(url: &str) -> Option<IpAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.parse().ok()
}

/// Reads the cluster's Node objects, ServiceCIDRs and the API server's
/// EndpointSlices.
async fn cluster_ranges(
    client: &kube::Client,
    api_server: Option<IpAddr>,
) -> Result<Vec<(IpNet, String)>, kube::Error> {
    let mut ranges = Vec::new();
    if let Some(a) = api_server {
        ranges.push((IpNet::from(a), "the API server (the coordinator's kubeconfig)".to_owned()));
    }
    let nodes: Api<Node> = Api::all(client.clone());
    for node in nodes.list(&ListParams::default()).await? {
        let name = node.metadata.name.clone().unwrap_or_default();
        ranges.extend(node_ranges(&name, &node));
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let api = ListParams::default().labels("kubernetes.io/service-name=kubernetes");
    for slice in slices.list(&api).await? {
        for endpoint in &slice.endpoints {
            for a in endpoint.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                ranges.push((IpNet::from(a), "the API server's endpoint (Service default/kubernetes)".to_owned()));
            }
        }
    }
    let cidrs: Api<ServiceCIDR> = Api::all(client.clone());
    match cidrs.list(&ListParams::default()).await {
        Ok(list) => {
            for c in list {
                let name = c.metadata.name.clone().unwrap_or_default();
                for net in c.spec.iter().flat_map(|s| s.cidrs.iter().flatten()).filter_map(|n| n.parse().ok()) {
                    ranges.push((net, format!("the service range (ServiceCIDR {name})")));
                }
            }
        }
        // Older API servers do not serve ServiceCIDRs: the service range
        // then belongs in `never_block`, as README says.
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e),
    }
    Ok(ranges)
}

/// A Node object's addresses and pod ranges.
fn node_ranges(name: &str, node: &Node) -> Vec<(IpNet, String)> {
    let addresses = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
        .map(|a| (IpNet::from(a), format!("an address of node {name} (its Node object)")));
    let pods = node
        .spec
        .iter()
        .flat_map(|s| s.pod_cidrs.iter().flatten().chain(s.pod_cidr.iter()))
        .filter_map(|c| c.parse::<IpNet>().ok())
        .map(|n| (n, format!("the pod range of node {name} (its Node object)")));
    addresses.chain(pods).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn announcements_replace_the_nodes_previous_ones_and_wake_only_on_a_change() {
        let map = InfrastructureMap::new(fixed_ranges(&[], &[net("127.0.0.0/8")]));
        let mut changes = map.subscribe();
        changes.mark_unchanged();
        map.announce("node-1", ["10.79.1.2".parse().unwrap_or_else(|e| panic!("{e}"))]);
        assert!(changes.has_changed().unwrap_or(false));
        changes.mark_unchanged();
        let now = map.current();
        assert_eq!(
            now.covering(&net("10.79.1.2")).map(|(_, o)| o.to_owned()),
            Some("an address of node node-1 (announced by its agent)".to_owned())
        );
        assert!(now.covering(&net("127.0.0.1")).is_some());

        map.announce("node-1", ["10.79.1.2".parse().unwrap_or_else(|e| panic!("{e}"))]);
        assert!(!changes.has_changed().unwrap_or(true), "the same addresses again change nothing");

        map.announce("node-1", ["10.79.9.2".parse().unwrap_or_else(|e| panic!("{e}"))]);
        assert!(map.current().covering(&net("10.79.1.2")).is_none(), "the node moved");
        assert!(map.current().covering(&net("10.79.9.2")).is_some());
    }

    #[test]
    fn a_node_object_gives_its_addresses_and_pod_ranges() {
        let node = Node {
            spec: Some(NodeSpec {
                pod_cidr: Some("10.244.1.0/24".into()),
                pod_cidrs: Some(vec!["10.244.1.0/24".into(), "fd00:10:244:1::/64".into()]),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress { type_: "InternalIP".into(), address: "172.18.0.2".into() },
                    NodeAddress { type_: "Hostname".into(), address: "worker-1".into() },
                ]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        };
        let infra = Infrastructure::new(node_ranges("worker-1", &node));
        assert_eq!(infra.len(), 3, "{infra:?}");
        assert!(infra.covering(&net("10.244.1.77")).is_some_and(|(_, o)| o.contains("pod range of node worker-1")));
        assert!(infra.covering(&net("172.18.0.2")).is_some());
    }

    #[test]
    fn the_api_server_address_is_read_from_a_kubeconfig_url_only_when_it_is_one() {
        assert_eq!(api_server_address("https://10.0.0.1:6443"), Some(IpAddr::from([10, 0, 0, 1])));
        assert_eq!(api_server_address("https://[fd00::1]:6443/"), "fd00::1".parse().ok());
        assert_eq!(api_server_address("https://127.0.0.1"), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(api_server_address("https://api.example.com:6443"), None);
    }
}
