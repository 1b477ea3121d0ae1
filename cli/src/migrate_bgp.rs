//! MetalLB's BGP configuration → ferrolb's, for [`crate::migrate`]: `BGPPeer`, `BFDProfile` and
//! `BGPAdvertisement` convert field for field (MetalLB's names are ferrolb's); `Community` objects are
//! aliases, resolved into the advertisements that use them (`large:` values become large communities).
//!
//! Not carried over, and said so: a password written in the BGPPeer itself (ferrolb reads passwords from a
//! Secret only), `routerID`, `vrf`, `disableMP`, `dynamicASN`, `interface`, BFD echo mode, an unknown
//! community alias.

use std::collections::BTreeMap;

use ferrolb_crds::bgp_advertisement::{Community, LargeCommunity};
use ferrolb_crds::bgp_peer::SecretName;
use ferrolb_crds::{BFDProfile, BFDProfileSpec, BGPAdvertisement, BGPAdvertisementSpec, BGPPeer, BGPPeerSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;
use serde_json::Value;

/// MetalLB's BGP objects converted so far, with the namespace each came from (names are made cluster-wide
/// at the end, with the pools').
#[derive(Default)]
pub struct ConvertedBgp {
    pub peers: Vec<(String, BGPPeer)>,
    pub profiles: Vec<(String, BFDProfile)>,
    /// With the communities as written (values or aliases), resolved at the end.
    pub advertisements: Vec<(String, BGPAdvertisement, Vec<String>)>,
    /// (namespace, alias) → value.
    pub aliases: BTreeMap<(String, String), String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetallbPeerSpec {
    #[serde(default, rename = "myASN")]
    my_asn: u32,
    #[serde(default, rename = "peerASN")]
    peer_asn: u32,
    #[serde(default)]
    peer_address: String,
    #[serde(default)]
    peer_port: Option<u16>,
    #[serde(default)]
    source_address: Option<String>,
    #[serde(default)]
    node_selectors: Vec<LabelSelector>,
    #[serde(default)]
    hold_time: Option<String>,
    #[serde(default)]
    keepalive_time: Option<String>,
    #[serde(default)]
    connect_time: Option<String>,
    #[serde(default, rename = "ebgpMultiHop")]
    ebgp_multi_hop: bool,
    #[serde(default)]
    password_secret: Option<MetallbSecretReference>,
    #[serde(default)]
    bfd_profile: Option<String>,
    #[serde(default)]
    enable_graceful_restart: bool,
}

#[derive(Debug, Default, Deserialize)]
struct MetallbSecretReference {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetallbBfdSpec {
    #[serde(default)]
    receive_interval: Option<u32>,
    #[serde(default)]
    transmit_interval: Option<u32>,
    #[serde(default)]
    detect_multiplier: Option<u8>,
    #[serde(default)]
    passive_mode: Option<bool>,
    #[serde(default)]
    minimum_ttl: Option<u8>,
    #[serde(default)]
    echo_mode: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetallbBgpAdvertisementSpec {
    #[serde(default)]
    ip_address_pools: Vec<String>,
    #[serde(default)]
    ip_address_pool_selectors: Vec<LabelSelector>,
    #[serde(default)]
    node_selectors: Vec<LabelSelector>,
    #[serde(default)]
    peers: Vec<String>,
    #[serde(default)]
    aggregation_length: Option<u8>,
    #[serde(default, rename = "aggregationLengthV6")]
    aggregation_length_v6: Option<u8>,
    #[serde(default)]
    local_pref: Option<u32>,
    #[serde(default)]
    communities: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct MetallbCommunitySpec {
    #[serde(default)]
    communities: Vec<MetallbCommunityAlias>,
}

#[derive(Debug, Default, Deserialize)]
struct MetallbCommunityAlias {
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: String,
}

const PEER_FIELDS: &[&str] = &[
    // Reported on its own, with what to do instead.
    "password",
    "myASN",
    "peerASN",
    "peerAddress",
    "peerPort",
    "sourceAddress",
    "nodeSelectors",
    "holdTime",
    "keepaliveTime",
    "connectTime",
    "ebgpMultiHop",
    "passwordSecret",
    "bfdProfile",
    "enableGracefulRestart",
];
const BFD_FIELDS: &[&str] = &[
    "receiveInterval",
    "transmitInterval",
    "detectMultiplier",
    "passiveMode",
    "minimumTtl",
    "echoMode",
    "echoInterval",
];
const ADVERTISEMENT_FIELDS: &[&str] = &[
    "ipAddressPools",
    "ipAddressPoolSelectors",
    "nodeSelectors",
    "peers",
    "aggregationLength",
    "aggregationLengthV6",
    "localPref",
    "communities",
];

/// The MetalLB object to convert: its kind, `namespace/name` as messages show it, namespace, metadata and spec.
pub struct Source<'a> {
    pub kind: &'a str,
    pub shown: &'a str,
    pub namespace: &'a str,
    pub metadata: kube::api::ObjectMeta,
    pub spec: &'a Value,
}

/// Converts one of MetalLB's BGP objects (`kind` is one of the four; any other is left alone).
pub fn convert(
    source: &Source<'_>,
    converted: &mut ConvertedBgp,
    unconverted: &mut Vec<String>,
) -> Result<(), crate::migrate::MigrateError> {
    let Source { kind, shown, namespace, spec, .. } = *source;
    let unknown = |known: &[&str], unconverted: &mut Vec<String>| {
        crate::migrate::unknown_fields(spec, "spec", known, kind, shown, unconverted)
    };
    let metadata = source.metadata.clone();
    match kind {
        "BGPPeer" => {
            unknown(PEER_FIELDS, unconverted);
            if spec.get("password").is_some() {
                unconverted.push(format!(
                    "BGPPeer {shown}: spec.password is not carried over (ferrolb reads passwords from Secrets only): put it in a kubernetes.io/basic-auth Secret (key password) in ferrolb's namespace and name it in spec.passwordSecret"
                ));
            }
            let peer: MetallbPeerSpec = crate::migrate::parse(spec.clone(), kind, shown)?;
            if let Some(secret) = &peer.password_secret {
                unconverted.push(format!(
                    "BGPPeer {shown}: its password Secret {}/{} must be in ferrolb's install namespace, of type kubernetes.io/basic-auth with the key password, for ferrolb to read it",
                    secret.namespace.as_deref().unwrap_or(namespace),
                    secret.name
                ));
            }
            let spec = BGPPeerSpec {
                my_asn: peer.my_asn,
                peer_asn: peer.peer_asn,
                peer_address: peer.peer_address,
                peer_port: peer.peer_port,
                source_address: peer.source_address,
                node_selectors: peer.node_selectors,
                hold_time: peer.hold_time,
                keepalive_time: peer.keepalive_time,
                connect_time: peer.connect_time,
                ebgp_multi_hop: peer.ebgp_multi_hop,
                password_secret: peer.password_secret.map(|s| SecretName { name: s.name }),
                bfd_profile: peer.bfd_profile,
                enable_graceful_restart: peer.enable_graceful_restart,
            };
            converted.peers.push((namespace.to_string(), BGPPeer { metadata, spec }));
        }
        "BFDProfile" => {
            unknown(BFD_FIELDS, unconverted);
            let profile: MetallbBfdSpec = crate::migrate::parse(spec.clone(), kind, shown)?;
            if profile.echo_mode == Some(true) || spec.get("echoInterval").is_some() {
                unconverted
                    .push(format!("BFDProfile {shown}: echo mode is not carried over (ferrolb runs BFD without echo)"));
            }
            let spec = BFDProfileSpec {
                receive_interval: profile.receive_interval,
                transmit_interval: profile.transmit_interval,
                detect_multiplier: profile.detect_multiplier,
                passive_mode: profile.passive_mode.unwrap_or(false),
                minimum_ttl: profile.minimum_ttl,
            };
            converted.profiles.push((namespace.to_string(), BFDProfile { metadata, spec }));
        }
        "BGPAdvertisement" => {
            unknown(ADVERTISEMENT_FIELDS, unconverted);
            let adv: MetallbBgpAdvertisementSpec = crate::migrate::parse(spec.clone(), kind, shown)?;
            let spec = BGPAdvertisementSpec {
                ip_address_pools: adv.ip_address_pools,
                ip_address_pool_selectors: adv.ip_address_pool_selectors,
                service_selectors: Vec::new(),
                node_selectors: adv.node_selectors,
                peers: adv.peers,
                aggregation_length: adv.aggregation_length,
                aggregation_length_v6: adv.aggregation_length_v6,
                local_pref: adv.local_pref,
                communities: Vec::new(),
                large_communities: Vec::new(),
            };
            converted.advertisements.push((
                namespace.to_string(),
                BGPAdvertisement { metadata, spec },
                adv.communities,
            ));
        }
        "Community" => {
            let aliases: MetallbCommunitySpec = crate::migrate::parse(spec.clone(), kind, shown)?;
            for alias in aliases.communities {
                converted.aliases.insert((namespace.to_string(), alias.name), alias.value);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Fills an advertisement's communities from what MetalLB wrote: a value (`64500:100`, `large:1:2:3`) or a
/// Community alias of its namespace. An unknown alias is reported.
pub fn resolve_communities(
    namespace: &str,
    shown: &str,
    written: &[String],
    aliases: &BTreeMap<(String, String), String>,
    spec: &mut BGPAdvertisementSpec,
    unconverted: &mut Vec<String>,
) {
    for community in written {
        let value = if community.contains(':') {
            community.clone()
        } else if let Some(value) = aliases.get(&(namespace.to_string(), community.clone())) {
            value.clone()
        } else {
            unconverted.push(format!(
                "BGPAdvertisement {shown}: community {community:?} is neither a value nor a Community alias of namespace {namespace:?}"
            ));
            continue;
        };
        match value.strip_prefix("large:") {
            Some(large) => spec.large_communities.push(LargeCommunity(large.to_string())),
            None => spec.communities.push(Community(value)),
        }
    }
}
