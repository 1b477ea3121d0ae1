//! `BGPAnnouncement`: what one node announces of one Service over BGP: its prefixes and the BGPPeers told.
//! Each speaker writes and deletes its own node's, in the install namespace, owned by its Node (gone with it).
//! `kubectl get bgpannouncements -n ferrolb-system` answers "which nodes announce my VIP to which routers?".

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::l2announcement::ServiceReference;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "BGPAnnouncement",
    plural = "bgpannouncements",
    shortname = "flbbgpann",
    category = "ferrolb",
    namespaced,
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service.name"}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".spec.service.namespace","priority":1}"#,
    printcolumn = r#"{"name":"Prefixes","type":"string","jsonPath":".spec.prefixes"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Peers","type":"string","jsonPath":".spec.peers"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPAnnouncementSpec {
    pub service: ServiceReference,
    /// The node announcing.
    pub node: String,
    /// The prefixes sent (a VIP as /32 or /128, or the aggregate an advertisement asks for), IPv4 first.
    pub prefixes: Vec<String>,
    /// The BGPPeers they are sent to.
    pub peers: Vec<String>,
}

/// The label every BGPAnnouncement carries: its node (a speaker lists only its own).
pub const NODE_LABEL: &str = "ferrolb.io/node";
/// And its Service's namespace and name (`ferrolb status` lists one Service's), which fit in label values.
pub const SERVICE_NAMESPACE_LABEL: &str = "ferrolb.io/service-namespace";
pub const SERVICE_NAME_LABEL: &str = "ferrolb.io/service-name";

/// The labels of `spec`'s object.
pub fn labels(spec: &BGPAnnouncementSpec) -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        (NODE_LABEL.to_string(), node_label_value(&spec.node)),
        (SERVICE_NAMESPACE_LABEL.to_string(), spec.service.namespace.clone()),
        (SERVICE_NAME_LABEL.to_string(), spec.service.name.clone()),
    ])
}

/// The object name of `node`'s BGPAnnouncement of `service`: `NAMESPACE.NAME.NODE` (namespaces and Service
/// names hold no dot, so it is unique), or with a digest of the node's name where that would be too long.
pub fn object_name(service: &ServiceReference, node: &str) -> String {
    let name = format!("{}.{}.{node}", service.namespace, service.name);
    if name.len() <= 253 { name } else { format!("{}.{}.{}", service.namespace, service.name, digest(node)) }
}

/// The [`NODE_LABEL`] value of `node`: its name, or a digest of it where a label value cannot hold it (over
/// 63 characters).
pub fn node_label_value(node: &str) -> String {
    if node.len() <= 63 { node.to_string() } else { digest(node) }
}

/// FNV-1a, 64 bits, in hex: stable across releases (unlike the standard library's hasher).
fn digest(text: &str) -> String {
    let hash = text
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    format!("n{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_hold_any_node_name_the_api_allows() {
        let service = ServiceReference { namespace: "default".into(), name: "web".into() };
        assert_eq!(object_name(&service, "node-1"), "default.web.node-1");
        assert_eq!(node_label_value("node-1"), "node-1");
        let long = format!("{}.example.com", "a".repeat(240));
        let name = object_name(&ServiceReference { namespace: "n".repeat(63), name: "s".repeat(63) }, &long);
        assert!(name.len() <= 253, "{name}");
        assert_eq!(node_label_value(&long).len(), 17);
        assert_ne!(node_label_value(&long), node_label_value(&format!("b{long}")), "distinct nodes, distinct labels");
    }
}
