//! Simulated nodes: Node objects that kwok manages (it plays their kubelet,
//! marking them Ready, renewing their leases, and moving their pods to
//! Running).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint, Toleration};
use kube::api::ObjectMeta;

/// The annotation that kwok is started to select its nodes by.
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// Value of [`KWOK_NODE_ANNOTATION`] (and of the optional taint).
pub const KWOK_NODE_VALUE: &str = "fake";
/// The selector kwok is started with.
pub(crate) const KWOK_NODE_SELECTOR: &str = "kwok.x-k8s.io/node=fake";
/// Label on every simulated node, for selecting them.
pub const KWOK_NODE_LABEL: (&str, &str) = ("type", "kwok");

/// A pod CIDR for the `index`th simulated node: 10.128.0.0/24,
/// 10.128.1.0/24, ... kwok hands out pod IPs from the node's pod CIDR, so a
/// node never runs out of addresses however many nodes there are.
pub(crate) fn pod_cidr(index: usize) -> String {
    format!("10.{}.{}.0/24", 128 + (index / 256) % 128, index % 256)
}

/// A Node object for kwok to manage, with the annotation it selects nodes by
/// and the labels a kubelet would set.
///
/// With `tainted`, the node carries kwok's usual `kwok.x-k8s.io/node=fake:
/// NoSchedule` taint, so that only pods with [`kwok_toleration`] land on it.
/// Every node of the test cluster is simulated, so the taint is off by
/// default ([`crate::cluster::TestCluster::create_kwok_nodes`]).
pub fn kwok_node(name: &str, pod_cidr: &str, tainted: bool) -> Node {
    let labels = [
        ("beta.kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/role", "agent"),
        ("node-role.kubernetes.io/agent", ""),
        KWOK_NODE_LABEL,
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let annotations = [("node.alpha.kubernetes.io/ttl", "0"), (KWOK_NODE_ANNOTATION, KWOK_NODE_VALUE)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(pod_cidr.to_string()),
            pod_cidrs: Some(vec![pod_cidr.to_string()]),
            taints: tainted.then(|| {
                vec![Taint {
                    key: KWOK_NODE_ANNOTATION.to_string(),
                    value: Some(KWOK_NODE_VALUE.to_string()),
                    effect: "NoSchedule".to_string(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The toleration for the taint of [`kwok_node`] with `tainted`.
pub fn kwok_toleration() -> Toleration {
    Toleration {
        key: Some(KWOK_NODE_ANNOTATION.to_string()),
        operator: Some("Equal".to_string()),
        value: Some(KWOK_NODE_VALUE.to_string()),
        effect: Some("NoSchedule".to_string()),
        ..Default::default()
    }
}

/// Whether a node reports the Ready condition as True.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A Deployment whose `replicas` pods (label `app=<name>`) land on kwok
/// nodes and stop at once when deleted.
pub fn kwok_deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "nodeSelector": { KWOK_NODE_LABEL.0: KWOK_NODE_LABEL.1 },
                    "tolerations": [kwok_toleration()],
                    // kwok never pulls images; the name only has to be valid.
                    "containers": [{ "name": "app", "image": "example.invalid/app:1" }]
                }
            }
        }
    }))
    .expect("a valid Deployment")
}
