//! `SpeakerStatus`: one per node, written by that node's speaker in the install namespace whenever what it sees
//! changes: its mode, the interfaces it may announce on, and (native mode) the speakers it hears as alive. A
//! speaker that hears fewer peers than run is the first thing to look at when two nodes answer for one VIP
//! (`ferrolb status` compares them). It is owned by the Node, so it goes when the Node does.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "SpeakerStatus",
    plural = "speakerstatuses",
    shortname = "flbspeaker",
    category = "ferrolb",
    namespaced,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Alive","type":"string","jsonPath":".spec.alive"}"#,
    printcolumn = r#"{"name":"Interfaces","type":"string","jsonPath":".spec.interfaces","priority":1}"#,
    printcolumn = r#"{"name":"BGP Sessions","type":"string","jsonPath":".spec.bgpPeers[*].session","priority":1}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SpeakerStatusSpec {
    /// The node this speaker runs on (also the object's name).
    pub node: String,
    /// `native`, `keepalived` or `bgp`.
    pub mode: String,
    /// The speakers this one hears as alive, itself included, by node name (native mode's gossip; empty in
    /// keepalived mode, where VRRP finds the peers).
    #[serde(default)]
    pub alive: Vec<String>,
    /// The interfaces it may announce on.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// The speaker's release.
    #[serde(default)]
    pub version: String,
    /// BGP mode: this node's sessions, one per BGPPeer that selects it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bgp_peers: Vec<BgpPeerStatus>,
}

/// One BGP session of a node, as its FRR reports it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BgpPeerStatus {
    /// The BGPPeer.
    pub name: String,
    pub address: String,
    /// BGP's state: `Established` once routes flow; `Active`, `Connect`, `OpenSent`, `Idle` before;
    /// `Refused` when the speaker could not configure it (see `message`).
    pub session: String,
    /// BFD's state (`up`, `down`, `init`), when the BGPPeer names a BFDProfile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<String>,
    /// Why the session is not established, as far as FRR or the speaker know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Routes this node sends on it.
    #[serde(default)]
    pub routes: u32,
}
