//! `BGPPeer`: a router the speakers open BGP sessions to (through FRR), from the nodes its selectors pick.
//! Field names follow MetalLB's, so its objects convert one to one (`ferrolb migrate`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A Go-style duration as FRR's timers take it: whole numbers of hours, minutes, seconds or milliseconds.
pub const DURATION_PATTERN: &str = "^([0-9]+(h|m|s|ms))+$";

#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "BGPPeer",
    plural = "bgppeers",
    shortname = "flbpeer",
    category = "ferrolb",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.peerAddress"}"#,
    printcolumn = r#"{"name":"ASN","type":"integer","jsonPath":".spec.myASN"}"#,
    printcolumn = r#"{"name":"Peer ASN","type":"integer","jsonPath":".spec.peerASN"}"#,
    printcolumn = r#"{"name":"BFD Profile","type":"string","jsonPath":".spec.bfdProfile"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.holdTime) || !has(self.keepaliveTime) || duration(self.holdTime) == duration('0s') || duration(self.keepaliveTime) < duration(self.holdTime)").message("keepaliveTime must be shorter than holdTime"))]
#[x_kube(validation = Rule::new("!has(self.sourceAddress) || !isIP(self.sourceAddress) || !isIP(self.peerAddress) || ip(self.sourceAddress).family() == ip(self.peerAddress).family()").message("sourceAddress and peerAddress must be of the same family"))]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// This side's AS number.
    #[serde(rename = "myASN")]
    #[schemars(range(min = 1))]
    pub my_asn: u32,
    /// The router's AS number (equal to `myASN`: an iBGP session).
    #[serde(rename = "peerASN")]
    #[schemars(range(min = 1))]
    pub peer_asn: u32,
    /// The router's address, IPv4 or IPv6.
    #[x_kube(validation = Rule::new("isIP(self)").message("peerAddress must be an IP address"))]
    #[schemars(length(max = 45))]
    pub peer_address: String,
    /// The router's TCP port (179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub peer_port: Option<u16>,
    /// The address the sessions start from (default: the node's address FRR picks by route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isIP(self)").message("sourceAddress must be an IP address"))]
    #[schemars(length(max = 45))]
    pub source_address: Option<String>,
    /// Only nodes matching one of these selectors open a session (none: every node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// BGP hold time (FRR's default 180s when unset); `0s` or at least `3s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) == duration('0s') || duration(self) >= duration('3s')").message("holdTime must be 0s or at least 3s"))]
    #[schemars(regex(pattern = "^([0-9]+(h|m|s|ms))+$"), length(max = 32))]
    pub hold_time: Option<String>,
    /// BGP keepalive interval (FRR's default 60s when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(h|m|s|ms))+$"), length(max = 32))]
    pub keepalive_time: Option<String>,
    /// How long FRR waits between attempts to connect (its default 120s when unset); 1s to 65535s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('65535s')").message("connectTime must be between 1s and 65535s"))]
    #[schemars(regex(pattern = "^([0-9]+(h|m|s|ms))+$"), length(max = 32))]
    pub connect_time: Option<String>,
    /// The router is more than one hop away (eBGP multihop).
    #[serde(default, rename = "ebgpMultiHop")]
    pub ebgp_multi_hop: bool,
    /// The TCP MD5 password, from a Secret of type `kubernetes.io/basic-auth` (key `password`) in the install
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretName>,
    /// A `BFDProfile` by name: BFD runs on the session and takes a dead node's routes out in its detection time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub bfd_profile: Option<String>,
    /// Advertise BGP graceful restart: routes survive a restart of the node's FRR for the restart time.
    #[serde(default)]
    pub enable_graceful_restart: bool,
}

/// A Secret in the install namespace, by name.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretName {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A duration written as [`DURATION_PATTERN`] allows, in milliseconds; `None` for anything else.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total = total.checked_add(value.checked_mul(unit)?)?;
    }
    Some(total)
}

/// A duration in whole seconds, rounded down (FRR's timers count seconds).
pub fn duration_seconds(text: &str) -> Option<u64> {
    parse_duration_ms(text).map(|ms| ms / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_writes_them() {
        assert_eq!(parse_duration_ms("90s"), Some(90_000));
        assert_eq!(parse_duration_ms("1m30s"), Some(90_000));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("1m500ms"), Some(60_500));
        for bad in ["", "s", "1", "1.5s", "-1s", "1d", "99999999999999999999s", "1s "] {
            assert_eq!(parse_duration_ms(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,40}") {
            let _ = parse_duration_ms(&text);
        }

        #[test]
        fn what_the_pattern_admits_parses(parts in proptest::collection::vec((0u32..100_000, 0usize..4), 1..4)) {
            let units = ["h", "m", "s", "ms"];
            let text: String = parts.iter().map(|(n, u)| format!("{n}{}", units[*u])).collect();
            proptest::prop_assert!(parse_duration_ms(&text).is_some(), "{}", text);
        }
    }
}
