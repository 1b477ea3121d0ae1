//! `BFDProfile`: the timers of the BFD sessions a `BGPPeer` runs, which take a dead node's next hop out of
//! the router in `detectMultiplier × receiveInterval` instead of a BGP hold time. MetalLB's field names.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "BFDProfile",
    plural = "bfdprofiles",
    shortname = "flbbfd",
    category = "ferrolb",
    printcolumn = r#"{"name":"Receive","type":"integer","jsonPath":".spec.receiveInterval"}"#,
    printcolumn = r#"{"name":"Transmit","type":"integer","jsonPath":".spec.transmitInterval"}"#,
    printcolumn = r#"{"name":"Multiplier","type":"integer","jsonPath":".spec.detectMultiplier"}"#,
    printcolumn = r#"{"name":"Passive","type":"boolean","jsonPath":".spec.passiveMode"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BFDProfileSpec {
    /// The slowest rate, in milliseconds, at which this side wants the peer's control packets (FRR: 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000))]
    pub receive_interval: Option<u32>,
    /// The rate, in milliseconds, at which this side sends control packets (FRR: 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000))]
    pub transmit_interval: Option<u32>,
    /// Missed packets before the session is declared down (FRR: 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 255))]
    pub detect_multiplier: Option<u8>,
    /// Wait for the peer to start the session.
    #[serde(default)]
    pub passive_mode: bool,
    /// The smallest TTL accepted from a multi-hop peer (FRR: 254).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 254))]
    pub minimum_ttl: Option<u8>,
}
