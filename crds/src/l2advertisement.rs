//! `L2Advertisement`: which pools' addresses are announced on the node LAN, from which nodes and interfaces.
//! A pool no advertisement selects still hands out addresses, but nobody answers for them: the Service says so.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "L2Advertisement",
    plural = "l2advertisements",
    shortname = "flbl2adv",
    category = "ferrolb",
    printcolumn = r#"{"name":"Pools","type":"string","jsonPath":".spec.ipAddressPools"}"#,
    printcolumn = r#"{"name":"Interfaces","type":"string","jsonPath":".spec.interfaces"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct L2AdvertisementSpec {
    /// Pools announced, by name. With neither this nor `ipAddressPoolSelectors`, every pool is announced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pools: Vec<String>,
    /// Pools announced, by label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    /// Only Services matching one of these selectors are announced by this advertisement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
    /// Only nodes matching one of these selectors may announce.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// Interfaces to announce on, by name or glob pattern (`en*`, `eth[0-9]`, `br-*`). Empty: every usable
    /// interface (NICs, bonds, VLANs and LAN bridges; not pod bridges, dummies or tunnels) with an address in
    /// the VIP's subnet, else the default-route interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
}

impl L2AdvertisementSpec {
    /// Whether this advertisement announces the addresses of the pool `name` (labelled `labels`). Naming no
    /// pool and no pool selector means every pool. A malformed selector selects nothing.
    pub fn selects_pool(&self, name: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
        crate::selector::selects_pool(&self.ip_address_pools, &self.ip_address_pool_selectors, name, labels)
    }

    /// Whether this advertisement applies to a Service labelled `labels` (no selector: every Service).
    pub fn selects_service(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        crate::selector::selects_service(&self.service_selectors, labels)
    }
}
