//! `IPAddressPool`: a cluster-scoped set of addresses Services may get their VIPs from.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// At most this many entries in `spec.addresses`; also bounds the cost of the CEL rules per pool.
pub const MAX_ADDRESS_ENTRIES: u32 = 256;
/// The longest entry: a range of two fully written-out IPv6 addresses is 79 characters.
pub const MAX_ADDRESS_ENTRY_LENGTH: u32 = 100;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "IPAddressPool",
    plural = "ipaddresspools",
    shortname = "flbpool",
    category = "ferrolb",
    status = "IPAddressPoolStatus",
    printcolumn = r#"{"name":"Auto Assign","type":"boolean","jsonPath":".spec.autoAssign"}"#,
    printcolumn = r#"{"name":"IPv4 Used","type":"integer","jsonPath":".status.ipv4.assigned"}"#,
    printcolumn = r#"{"name":"IPv4 Free","type":"string","jsonPath":".status.ipv4.available"}"#,
    printcolumn = r#"{"name":"IPv6 Used","type":"integer","jsonPath":".status.ipv6.assigned"}"#,
    printcolumn = r#"{"name":"IPv6 Free","type":"string","jsonPath":".status.ipv6.available"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolSpec {
    /// The pool's addresses: CIDRs (`192.0.2.0/28`, `2001:db8::/120`), ranges (`192.0.2.10-192.0.2.20`) or
    /// single IPs, of either family.
    #[schemars(length(min = 1, max = 256))]
    pub addresses: Vec<AddressEntry>,
    /// Whether Services that name no pool may get addresses from this one. When false, only Services that ask
    /// for this pool (annotation `ferrolb.io/address-pool`) or for one of its IPs get them.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
    /// Skip the addresses ending in .0 and .255, which some old network equipment treats as broadcast.
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,
    /// Drain the pool: Services that have an address from it keep it, no new address is given from it.
    #[serde(default)]
    pub disabled: bool,
    /// Which Services this pool serves first, and to which it is restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,
}

fn default_true() -> bool {
    true
}

impl IPAddressPoolSpec {
    /// A pool of `addresses` with every other field at its default (auto-assign, all addresses, enabled).
    pub fn with_addresses(addresses: &[&str]) -> Self {
        Self {
            addresses: addresses.iter().map(|a| AddressEntry::from(*a)).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            disabled: false,
            service_allocation: None,
        }
    }
}

/// Restricts a pool to some Services and orders pools for them.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    /// Lower numbers are tried first among the pools a Service matches; pools without a priority come after
    /// those with one, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Only Services in these namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Only Services in namespaces matching one of these selectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,
    /// Only Services matching one of these selectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

/// One entry of `spec.addresses`. Its schema carries the CEL rules the API server checks on every entry, so a
/// bad entry is refused at `kubectl apply` with a message that names it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(transparent)]
pub struct AddressEntry(pub String);

impl AddressEntry {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for AddressEntry {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

/// `true` when `self` is a range whose two ends are IPs (guards the range rules below).
const IS_IP_RANGE: &str = "(self.split('-').size() == 2 && isIP(self.split('-')[0]) && isIP(self.split('-')[1]))";

/// A CEL expression for the 32-bit value of the dotted IPv4 address that CEL expression `address` yields.
/// (CRD rules have no `cel.bind`, so the address is split once per octet.)
fn ipv4_value(address: &str) -> String {
    let octet = |i: usize| format!("int({address}.split('.')[{i}])");
    format!("({} * 16777216 + {} * 65536 + {} * 256 + {})", octet(0), octet(1), octet(2), octet(3))
}

/// The CEL rules for one address entry, with messages that quote the entry.
pub fn address_entry_rules() -> serde_json::Value {
    serde_json::json!([
        {
            "rule": format!("isIP(self) || isCIDR(self) || {IS_IP_RANGE}"),
            "messageExpression": "'\"' + self + '\" is not an IP address, a CIDR (192.0.2.0/24) or a range (192.0.2.10-192.0.2.20)'",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": "!isCIDR(self) || cidr(self) == cidr(self).masked()",
            "messageExpression": "'\"' + self + '\" has bits set after its prefix length: write the network address'",
            "reason": "FieldValueInvalid",
        },
        {
            "rule": format!("!{IS_IP_RANGE} || ip(self.split('-')[0]).family() == ip(self.split('-')[1]).family()"),
            "messageExpression": "'range \"' + self + '\" mixes IPv4 and IPv6'",
            "reason": "FieldValueInvalid",
        },
        {
            // IPv6 has no ordering in CEL; the controller reports reversed IPv6 ranges on the pool instead.
            "rule": format!(
                "!{IS_IP_RANGE} || ip(self.split('-')[0]).family() != 4 || {} <= {}",
                ipv4_value("self.split('-')[0]"),
                ipv4_value("self.split('-')[1]")
            ),
            "messageExpression": "'range \"' + self + '\" is reversed: its first address comes after its last'",
            "reason": "FieldValueInvalid",
        },
    ])
}

impl JsonSchema for AddressEntry {
    fn schema_name() -> Cow<'static, str> {
        "AddressEntry".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ADDRESS_ENTRY_LENGTH,
            "x-kubernetes-validations": address_entry_rules(),
        })
    }
}

/// What the controller last computed for the pool.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<FamilyUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyUsage>,
    /// `Ready`: the pool is usable; `Conflicting`: it overlaps another pool (named in the message);
    /// `OverlapsCluster`: it lists Node addresses or Service CIDRs, which are never handed out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Address counts for one family. `total` and `available` are decimal strings because an IPv6 pool can hold
/// up to 2^128 addresses, more than any JSON integer; `assigned` is the number of Services' addresses, which
/// always fits.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FamilyUsage {
    pub total: String,
    pub assigned: u64,
    pub available: String,
    /// Where the controller's next-fit search for a new address starts (the address after the last one it
    /// handed out). Kept here so a restarted controller does not hand a just-released address out again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}
