//! Which node answers for a Service's VIPs. Every speaker computes this from the same inputs and gets the
//! same answer, so no central writer and no API write is needed on the failover path.
//!
//! **Candidates** for a Service are the nodes that are all of:
//! - live members of the speakers' gossip group;
//! - not labelled `node.kubernetes.io/exclude-from-external-load-balancers`;
//! - not `NetworkUnavailable`;
//! - not cordoned (`spec.unschedulable`), unless every otherwise eligible node is: a drain moves the VIPs
//!   away (with a hand-over) before the node's speaker stops, yet cordoning the whole cluster drops nothing;
//! - matched by the `nodeSelectors` of an L2Advertisement that selects the Service, and have one of that
//!   advertisement's `interfaces` (any usable interface when it lists none);
//! - with `externalTrafficPolicy: Local`, running a ready endpoint of the Service.
//!
//! A Service with no ready endpoint anywhere has no candidates: nobody announces it.
//!
//! **Owner**: the candidate with the highest rendezvous score `xxh3_64(node name ‖ 0x00 ‖ first VIP as text)`
//! (XXH3, 64-bit, seed 0; the first VIP is the IPv4 one when there is one). All of a Service's VIPs, of
//! both families, go to that one node. This function is part of the wire contract between speakers of
//! different versions: changing it moves VIPs.
//!
//! Rendezvous hashing moves the fewest VIPs when membership changes: a node leaving only moves the VIPs it
//! owned, a node joining only takes VIPs for itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::selector;

use crate::inventory::any_matches;
use crate::plan::{NodeName, NodeSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The nodes that may be candidates, with the interfaces each can announce on: the live gossip members in
/// native mode (this node always among them), every Node in keepalived mode.
pub type Members = BTreeMap<String, BTreeSet<String>>;

/// Nodes carrying this label never announce load-balancer addresses (a Kubernetes convention).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// What the election needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: NodeName,
    pub labels: BTreeMap<String, String>,
    /// The Node's `NetworkUnavailable` condition is True.
    pub network_unavailable: bool,
    /// The Node is cordoned (`spec.unschedulable`), as a drain begins.
    pub unschedulable: bool,
    /// Interfaces the node's speaker can announce on (from its gossip metadata).
    pub interfaces: BTreeSet<String>,
}

/// The part of an L2Advertisement that decides where a Service it selects may be announced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdvertisementView {
    pub node_selectors: Vec<LabelSelector>,
    /// Empty: any interface the speaker finds usable.
    pub interfaces: BTreeSet<String>,
}

/// What the election needs to know about a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    /// IPv4 first.
    pub vips: Vec<IpAddr>,
    pub traffic_policy_local: bool,
    /// Nodes running a ready endpoint of the Service.
    pub ready_endpoint_nodes: NodeSet,
}

/// A node allowed to announce a Service, and the interfaces it would announce on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub node: &'a NodeName,
    pub interfaces: BTreeSet<String>,
    /// Only there because every eligible node is cordoned.
    pub cordoned: bool,
}

/// The nodes that may announce `service`, given the advertisements that select it.
pub fn candidates<'a, A: std::borrow::Borrow<AdvertisementView>>(
    nodes: &'a [NodeView],
    live: &BTreeSet<String>,
    advertisements: &[A],
    service: &ServiceView,
) -> Vec<Candidate<'a>> {
    if service.ready_endpoint_nodes.is_empty() {
        return Vec::new();
    }
    let eligible: Vec<Candidate<'a>> = nodes
        .iter()
        .filter(|node| live.contains(&*node.name))
        .filter(|node| !node.labels.contains_key(EXCLUDE_LABEL) && !node.network_unavailable)
        .filter(|node| !service.traffic_policy_local || service.ready_endpoint_nodes.contains(&node.name))
        .filter_map(|node| {
            let mut interfaces = BTreeSet::new();
            for advertisement in advertisements.iter().map(A::borrow) {
                // A malformed selector selects nothing: announcing from an unintended node is worse.
                if !selector::matches_any(&advertisement.node_selectors, &node.labels).unwrap_or(false) {
                    continue;
                }
                if advertisement.interfaces.is_empty() {
                    interfaces.extend(node.interfaces.iter().cloned());
                } else {
                    interfaces
                        .extend(node.interfaces.iter().filter(|i| any_matches(&advertisement.interfaces, i)).cloned());
                }
            }
            (!interfaces.is_empty()).then_some(Candidate { node: &node.name, interfaces, cordoned: node.unschedulable })
        })
        .collect();
    if eligible.iter().any(|c| !c.cordoned) { eligible.into_iter().filter(|c| !c.cordoned).collect() } else { eligible }
}

/// The rendezvous score of `node` for a Service whose first VIP is `vip`.
pub fn score(node: &str, vip: IpAddr) -> u64 {
    score_with(node, &VipText::of(vip))
}

/// `xxh3_64(node ‖ 0x00 ‖ vip)`, fed in pieces: the same digest as of the joined bytes, without joining them.
fn score_with(node: &str, vip: &VipText) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(node.as_bytes());
    hasher.update(&[0]);
    hasher.update(vip.as_bytes());
    hasher.digest()
}

/// A VIP as text, formatted once per Service (not once per candidate and comparison) and on the stack: the
/// election runs for every Service at every plan.
struct VipText {
    bytes: [u8; VipText::CAPACITY],
    len: usize,
}

impl VipText {
    /// Rust writes an IPv6 address in at most 39 bytes; the longest form RFC 4291 allows has 45.
    const CAPACITY: usize = 48;

    fn of(vip: IpAddr) -> Self {
        use std::fmt::Write;
        let mut text = Self { bytes: [0; Self::CAPACITY], len: 0 };
        // Cannot fail: every address fits (see CAPACITY), and `write_str` refuses rather than truncates.
        let _ = write!(text, "{vip}");
        text
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Write for VipText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Each candidate with its score, for a Service whose first VIP is `first`.
fn scored<'c, 'a>(candidates: &'c [Candidate<'a>], first: IpAddr) -> impl Iterator<Item = (u64, &'c Candidate<'a>)> {
    let text = VipText::of(first);
    candidates.iter().map(move |c| (score_with(c.node, &text), c))
}

/// The owner among `candidates` of a Service whose VIPs are `vips`: highest score, ties (never seen in
/// practice) broken by the smaller name so the answer never depends on input order.
pub fn owner<'c, 'a>(candidates: &'c [Candidate<'a>], vips: &[IpAddr]) -> Option<&'c Candidate<'a>> {
    let first = first_vip(vips)?;
    scored(candidates, first).max_by(|(sa, a), (sb, b)| sa.cmp(sb).then_with(|| b.node.cmp(a.node))).map(|(_, c)| c)
}

/// Every candidate, best first: the owner, then who takes over if it goes (keepalived mode turns this order
/// into VRRP priorities).
pub fn ranking<'c, 'a>(candidates: &'c [Candidate<'a>], vips: &[IpAddr]) -> Vec<&'c Candidate<'a>> {
    let Some(first) = first_vip(vips) else { return Vec::new() };
    let mut ranked: Vec<(u64, &Candidate<'a>)> = scored(candidates, first).collect();
    ranked.sort_by(|(sa, a), (sb, b)| sb.cmp(sa).then_with(|| a.node.cmp(b.node)));
    ranked.into_iter().map(|(_, c)| c).collect()
}

/// The VIP the election hashes: the IPv4 one when there is one, so both families land on one node.
fn first_vip(vips: &[IpAddr]) -> Option<IpAddr> {
    vips.iter().copied().find(IpAddr::is_ipv4).or_else(|| vips.first().copied())
}

#[cfg(test)]
#[path = "election_tests.rs"]
mod tests;
