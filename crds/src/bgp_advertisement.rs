//! `BGPAdvertisement`: which pools' addresses are announced to which `BGPPeer`s, from which nodes, with which
//! attributes. MetalLB's field names (its `communities` list holds both kinds; here large communities have a
//! list of their own).

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A standard community, `ASN:VALUE` (each 0–65535), or one of the well-known names.
pub const COMMUNITY_RULE: &str = "self in ['no-export', 'no-advertise', 'local-AS', 'no-peer', 'blackhole', 'graceful-shutdown'] || (self.matches('^[0-9]{1,5}:[0-9]{1,5}$') && int(self.split(':')[0]) <= 65535 && int(self.split(':')[1]) <= 65535)";
/// A large community, `GLOBAL:LOCAL1:LOCAL2` (each 0–4294967295).
pub const LARGE_COMMUNITY_RULE: &str =
    "self.matches('^[0-9]{1,10}:[0-9]{1,10}:[0-9]{1,10}$') && self.split(':').all(p, int(p) <= 4294967295)";

#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "BGPAdvertisement",
    plural = "bgpadvertisements",
    shortname = "flbbgpadv",
    category = "ferrolb",
    printcolumn = r#"{"name":"Pools","type":"string","jsonPath":".spec.ipAddressPools"}"#,
    printcolumn = r#"{"name":"Peers","type":"string","jsonPath":".spec.peers"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPAdvertisementSpec {
    /// Pools announced, by name. With neither this nor `ipAddressPoolSelectors`, every pool is announced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pools: Vec<String>,
    /// Pools announced, by label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    /// Only Services matching one of these selectors are announced by this advertisement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
    /// Only nodes matching one of these selectors announce.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// The `BGPPeer`s told, by name (none: every peer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// Announce each IPv4 VIP as the prefix of this length that holds it (32: the address alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 32))]
    pub aggregation_length: Option<u8>,
    /// The same for IPv6 (128: the address alone).
    #[serde(default, rename = "aggregationLengthV6", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 128))]
    pub aggregation_length_v6: Option<u8>,
    /// BGP LOCAL_PREF of the routes (sent to iBGP peers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,
    /// Standard communities attached to the routes: `ASN:VALUE` or a well-known name (`no-export`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub communities: Vec<Community>,
    /// Large communities attached to the routes: `GLOBAL:LOCAL1:LOCAL2`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub large_communities: Vec<LargeCommunity>,
}

/// One standard community; its schema carries the rule that checks it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(transparent)]
pub struct Community(pub String);

/// One large community; its schema carries the rule that checks it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(transparent)]
pub struct LargeCommunity(pub String);

/// A string schema of at most `max_length` characters checked by `rule`.
fn checked_string(max_length: u32, rule: &str, message: &str) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": max_length,
        "x-kubernetes-validations": [{ "rule": rule, "message": message, "reason": "FieldValueInvalid" }],
    })
}

impl JsonSchema for Community {
    fn schema_name() -> Cow<'static, str> {
        "Community".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        checked_string(
            20,
            COMMUNITY_RULE,
            "a community is ASN:VALUE (each 0-65535) or one of no-export, no-advertise, local-AS, no-peer, blackhole, graceful-shutdown",
        )
    }
}

impl JsonSchema for LargeCommunity {
    fn schema_name() -> Cow<'static, str> {
        "LargeCommunity".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        checked_string(32, LARGE_COMMUNITY_RULE, "a large community is GLOBAL:LOCAL1:LOCAL2, each 0-4294967295")
    }
}

impl BGPAdvertisementSpec {
    /// Whether this advertisement announces the addresses of the pool `name` (labelled `labels`). Naming no
    /// pool and no pool selector means every pool. A malformed selector selects nothing.
    pub fn selects_pool(&self, name: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
        crate::selector::selects_pool(&self.ip_address_pools, &self.ip_address_pool_selectors, name, labels)
    }

    /// Whether this advertisement applies to a Service labelled `labels` (no selector: every Service).
    pub fn selects_service(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        crate::selector::selects_service(&self.service_selectors, labels)
    }

    /// Whether the peer `name` is told (no peers listed: every peer).
    pub fn tells(&self, peer: &str) -> bool {
        self.peers.is_empty() || self.peers.iter().any(|p| p == peer)
    }
}
