//! What every speaker decides from the cluster's objects and the live membership, with no I/O: for each
//! announced Service, its owner node, and for this node, which VIP goes out of which interface.
//!
//! A Service's VIPs are announced when an L2Advertisement selects both the Service (service selectors) and
//! the VIP's pool. The VIP's pool is its pool of origin when the Service records one (the controller's
//! `ferrolb.io/AddressPool` condition), whether or not that pool still contains the VIP or still exists:
//! the controller keeps a Service's address when its pool shrinks or goes, and a kept address must stay
//! reachable until the Service lets it go. Without a recorded origin it is the pool containing the VIP. A
//! VIP with no pool, or whose pool no advertisement selects, is never announced (never answer for an IP
//! that is not allocated from a pool we announce). The owner is chosen by [`crate::election`] among the
//! nodes those advertisements allow.
//!
//! A VIP that is one of the Nodes' addresses (any Node's `status.addresses`, or an address on one of this
//! node's usable interfaces) is never announced, whatever the Service says: a gratuitous ARP for it would
//! redirect the LAN's traffic for that node to the owner, and the node would become unreachable.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ferrolb_crds::L2AdvertisementSpec;
use ferrolb_crds::l2announcement::ServiceReference;

use crate::election::Members;
use crate::election::{self, AdvertisementView, NodeView, ServiceView};
use crate::inventory::Inventory;

/// A node's name. Thousands of Services, decisions and series name a handful of nodes: each holds the
/// same few names.
pub type NodeName = Arc<str>;

/// Hands out one shared [`NodeName`] per name.
#[derive(Default)]
pub struct NodeNames(std::collections::HashSet<NodeName>);

impl NodeNames {
    pub fn name(&mut self, name: &str) -> NodeName {
        if let Some(known) = self.0.get(name) {
            return known.clone();
        }
        let name = NodeName::from(name);
        self.0.insert(name.clone());
        name
    }
}

/// Node names, sorted, without repeats, shared: thousands of Services have their ready endpoints on the
/// same few sets of nodes (a one-name `BTreeSet<String>` costs about 300 bytes; a shared set, a pointer).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeSet(Arc<[NodeName]>);

impl NodeSet {
    pub fn contains(&self, node: &str) -> bool {
        self.0.binary_search_by(|n| (**n).cmp(node)).is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &NodeName> {
        self.0.iter()
    }

    /// The set of `names` (in any order, repeats allowed), shared with an equal one `sets` handed out.
    pub fn shared(mut names: Vec<NodeName>, sets: &mut Sharing<[NodeName]>) -> Self {
        names.sort();
        names.dedup();
        NodeSet(sets.share(names))
    }
}

impl<S: AsRef<str>> FromIterator<S> for NodeSet {
    fn from_iter<I: IntoIterator<Item = S>>(names: I) -> Self {
        let names: Vec<NodeName> = names.into_iter().map(|n| NodeName::from(n.as_ref())).collect();
        NodeSet::shared(names, &mut Sharing::default())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Shared with every decision and series about the Service.
    pub service: Arc<ServiceReference>,
    pub labels: BTreeMap<String, String>,
    /// From `status.loadBalancer.ingress`, IPv4 first; shared with the decision announcing them all.
    pub vips: Arc<[IpAddr]>,
    /// The pool the VIPs were allocated from, as the Service's status records it.
    pub origin_pool: Option<String>,
    pub traffic_policy_local: bool,
    pub ready_endpoint_nodes: NodeSet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub addresses: Vec<String>,
}

/// A Node as the plan needs it (its interfaces come from the membership, not from the API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: NodeName,
    pub labels: BTreeMap<String, String>,
    pub network_unavailable: bool,
    /// `spec.unschedulable`: cordoned.
    pub unschedulable: bool,
}

#[derive(Debug, Clone, Default)]
pub struct World {
    pub nodes: Vec<NodeInfo>,
    /// Shared with the watches' index ([`crate::services`]): a plan reads them, never changes them.
    pub services: Vec<std::sync::Arc<ServiceInfo>>,
    pub advertisements: Vec<L2AdvertisementSpec>,
    pub pools: Vec<PoolInfo>,
    /// Addresses that belong to nodes and are never announced: address → where it was seen.
    pub node_addresses: BTreeMap<IpAddr, NodeAddress>,
}

/// Where a node's address was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub node: String,
    /// In the Node's `status.addresses` (every speaker sees it), not only on an interface of this node.
    pub listed: bool,
}

impl World {
    /// Adds this node's own interface addresses to the refused ones (those the API does not list already).
    pub fn with_own_addresses(mut self, me: &str, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        for address in addresses {
            self.node_addresses.entry(address).or_insert(NodeAddress { node: me.to_string(), listed: false });
        }
        self
    }
}

/// A Service VIP refused because it is a node's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddressVip {
    pub service: ServiceReference,
    pub vip: IpAddr,
    pub node: String,
    pub listed: bool,
}

/// What the plan decided for one Service. A speaker holds one per Service (two while a step replaces them),
/// so everything in it that Services have in common is shared: the Service's name and VIPs with its
/// [`ServiceInfo`], node names and rankings with the other decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub service: Arc<ServiceReference>,
    /// The VIPs announced (those of the Service's VIPs whose pool is advertised).
    pub vips: Arc<[IpAddr]>,
    /// `None`: no node may announce it (no live candidate, or no ready endpoint anywhere).
    pub owner: Option<NodeName>,
    /// The owner's interfaces named by the advertisements.
    pub named_interfaces: Interfaces,
    /// Some advertisement names no interface: the owner also picks its own (see [`Inventory::interfaces_for`]).
    pub any_interface: bool,
    /// Every candidate, best first (the owner first): keepalived mode turns it into VRRP priorities.
    pub ranking: Arc<[NodeName]>,
}

/// A pool with its entries parsed (once per plan, not once per VIP; an entry that does not parse contains
/// nothing).
pub(crate) struct ParsedPool<'a> {
    info: &'a PoolInfo,
    ranges: Vec<(IpAddr, IpAddr)>,
}

impl ParsedPool<'_> {
    fn contains(&self, ip: IpAddr) -> bool {
        ferrolb_crds::address::ranges_contain(&self.ranges, ip)
    }
}

/// The pools, parsed, by name.
pub(crate) fn parse_pools(pools: &[PoolInfo]) -> Vec<ParsedPool<'_>> {
    let mut parsed: Vec<ParsedPool> = pools
        .iter()
        .map(|info| ParsedPool {
            info,
            ranges: ferrolb_crds::address::valid_ranges(info.addresses.iter().map(String::as_str)),
        })
        .collect();
    parsed.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    parsed
}

static NO_LABELS: std::sync::LazyLock<BTreeMap<String, String>> = std::sync::LazyLock::new(BTreeMap::new);

/// The pool a VIP of `service` counts as from, by name and labels: its pool of origin when the Service records
/// one (a deleted pool of origin by its name alone: its labels went with it), else the pool containing it.
pub(crate) fn pool_of<'a>(
    service: &'a ServiceInfo,
    vip: IpAddr,
    pools: &'a [ParsedPool<'a>],
) -> Option<(&'a str, &'a BTreeMap<String, String>)> {
    match &service.origin_pool {
        Some(origin) => match pools.iter().find(|p| p.info.name == *origin) {
            Some(p) => Some((origin.as_str(), &p.info.labels)),
            None => Some((origin.as_str(), &NO_LABELS)),
        },
        // Pools never overlap within one installation (the controller refuses that); by name if they do.
        None => pools.iter().find(|p| p.contains(vip)).map(|p| (p.info.name.as_str(), &p.info.labels)),
    }
}

/// The decision for every Service some advertisement announces, in Service order.
pub fn decide(world: &World, members: &Members) -> Vec<Decision> {
    let live: BTreeSet<String> = members.keys().cloned().collect();
    let nodes: Vec<NodeView> = world
        .nodes
        .iter()
        .map(|n| NodeView {
            name: n.name.clone(),
            labels: n.labels.clone(),
            network_unavailable: n.network_unavailable,
            unschedulable: n.unschedulable,
            interfaces: members.get(&*n.name).cloned().unwrap_or_default(),
        })
        .collect();
    let pools = parse_pools(&world.pools);
    // The election's view of each advertisement, made once per plan rather than once per Service.
    let views: Vec<AdvertisementView> = world
        .advertisements
        .iter()
        .map(|adv| AdvertisementView {
            node_selectors: adv.node_selectors.clone(),
            interfaces: adv.interfaces.iter().cloned().collect(),
        })
        .collect();
    let advertisements = Advertisements { specs: &world.advertisements, views: &views };
    let mut shared = SharedParts::default();
    let mut decisions: Vec<Decision> = world
        .services
        .iter()
        .filter_map(|service| {
            decide_one(service, &nodes, &live, &advertisements, &pools, &world.node_addresses, &mut shared)
        })
        .collect();
    decisions.sort_by(|a, b| (&a.service.namespace, &a.service.name).cmp(&(&b.service.namespace, &b.service.name)));
    // Kept until the next plan: the doubling of `collect` left up to half of it unused (0.5 MiB at 10 000).
    decisions.shrink_to_fit();
    decisions
}

/// What a plan's decisions have in common, each handed out once.
#[derive(Default)]
struct SharedParts {
    interfaces: InterfaceSets,
    rankings: Sharing<[NodeName]>,
}

/// The L2Advertisements, and the election's view of each (same order).
struct Advertisements<'w> {
    specs: &'w [L2AdvertisementSpec],
    views: &'w [AdvertisementView],
}

fn decide_one(
    service: &ServiceInfo,
    nodes: &[NodeView],
    live: &BTreeSet<String>,
    advertisements: &Advertisements<'_>,
    pools: &[ParsedPool],
    node_addresses: &BTreeMap<IpAddr, NodeAddress>,
    shared: &mut SharedParts,
) -> Option<Decision> {
    // Advertisements by their index in `advertisements`.
    let applying: Vec<usize> =
        (0..advertisements.specs.len()).filter(|&i| advertisements.specs[i].selects_service(&service.labels)).collect();
    let mut relevant: Vec<usize> = Vec::new();
    let mut vips = Vec::new();
    for vip in service.vips.iter().filter(|v| !node_addresses.contains_key(v)) {
        let Some((name, labels)) = pool_of(service, *vip, pools) else { continue };
        let selecting: Vec<usize> =
            applying.iter().copied().filter(|&i| advertisements.specs[i].selects_pool(name, labels)).collect();
        if selecting.is_empty() {
            continue;
        }
        vips.push(*vip);
        for i in selecting {
            if !relevant.contains(&i) {
                relevant.push(i);
            }
        }
    }
    if vips.is_empty() {
        return None;
    }
    let views: Vec<&AdvertisementView> = relevant.iter().map(|&i| &advertisements.views[i]).collect();
    let view = ServiceView {
        vips: vips.clone(),
        traffic_policy_local: service.traffic_policy_local,
        ready_endpoint_nodes: service.ready_endpoint_nodes.clone(),
    };
    let candidates = election::candidates(nodes, live, &views, &view);
    let owner = election::owner(&candidates, &vips);
    let ranking: Vec<NodeName> = election::ranking(&candidates, &vips).iter().map(|c| c.node.clone()).collect();
    let (mut named_interfaces, mut any_interface) = (BTreeSet::new(), false);
    if let Some(owner) = owner
        && let Some(node) = nodes.iter().find(|n| n.name == *owner.node)
    {
        for adv in &views {
            if !ferrolb_crds::selector::matches_any(&adv.node_selectors, &node.labels).unwrap_or(false) {
                continue;
            }
            if adv.interfaces.is_empty() {
                any_interface = true;
            } else {
                named_interfaces.extend(
                    node.interfaces.iter().filter(|i| crate::inventory::any_matches(&adv.interfaces, i)).cloned(),
                );
            }
        }
    }
    Some(Decision {
        service: service.service.clone(),
        vips: if *vips == *service.vips { service.vips.clone() } else { vips.into() },
        owner: owner.map(|o| o.node.clone()),
        named_interfaces: shared.interfaces.share(named_interfaces),
        any_interface,
        ranking: shared.rankings.share(ranking),
    })
}

/// Every Service VIP that is a node's address, in Service order: never announced, and the user must be told.
pub fn node_address_vips(world: &World) -> Vec<NodeAddressVip> {
    let mut refused: Vec<NodeAddressVip> = world
        .services
        .iter()
        .flat_map(|service| {
            service.vips.iter().filter_map(|vip| {
                let owner = world.node_addresses.get(vip)?;
                Some(NodeAddressVip {
                    service: (*service.service).clone(),
                    vip: *vip,
                    node: owner.node.clone(),
                    listed: owner.listed,
                })
            })
        })
        .collect();
    refused.sort_by(|a, b| {
        (&a.service.namespace, &a.service.name, a.vip).cmp(&(&b.service.namespace, &b.service.name, b.vip))
    });
    refused
}

/// The interfaces a VIP goes out of. Thousands of VIPs share a handful of sets, so each set is allocated
/// once and shared by every VIP, map and step that holds it (a one-element `BTreeSet<String>` costs about
/// 300 bytes; a VIP is in four or five such maps on the node that announces it).
pub type Interfaces = Arc<BTreeSet<String>>;

/// VIP → the interfaces it is announced (or listened for) on.
pub type Placement = BTreeMap<IpAddr, Interfaces>;

/// Hands out one shared value per distinct value, among the last few distinct ones: thousands of VIPs and
/// Services share a handful of interface sets, node sets and rankings.
pub struct Sharing<T: ?Sized> {
    /// The values handed out most recently, the latest first; short, so a search is too.
    recent: Vec<Arc<T>>,
}

impl<T: ?Sized> Default for Sharing<T> {
    fn default() -> Self {
        Self { recent: Vec::new() }
    }
}

impl<T: ?Sized + PartialEq> Sharing<T> {
    /// The most distinct values searched (a cluster with more distinct sets than this shares fewer of them).
    const SEARCHED: usize = 16;

    pub fn share<V: std::borrow::Borrow<T> + Into<Arc<T>>>(&mut self, value: V) -> Arc<T> {
        if let Some(at) = self.recent.iter().position(|known| **known == *value.borrow()) {
            let known = self.recent.remove(at);
            self.recent.insert(0, known.clone());
            return known;
        }
        let shared: Arc<T> = value.into();
        self.recent.insert(0, shared.clone());
        self.recent.truncate(Self::SEARCHED);
        shared
    }
}

/// Hands out one shared [`Interfaces`] per distinct set.
pub type InterfaceSets = Sharing<BTreeSet<String>>;

/// The interfaces `vips` are placed on (an interface once per VIP placed on it).
pub fn interfaces_of<'a>(vips: &'a [IpAddr], placed: &'a Placement) -> impl Iterator<Item = &'a String> + 'a {
    vips.iter().filter_map(|vip| placed.get(vip)).flat_map(|interfaces| interfaces.iter())
}

/// What `me` announces: VIP → interfaces. A VIP held by two Services (shared IP) is announced once.
pub fn mine(decisions: &[Decision], me: &str, inventory: &Inventory) -> Placement {
    let usable: BTreeSet<String> = inventory.usable().into_iter().collect();
    let mut sets = InterfaceSets::default();
    let mut held = Placement::new();
    for decision in decisions.iter().filter(|d| d.owner.as_deref() == Some(me)) {
        let named: BTreeSet<String> = decision.named_interfaces.intersection(&usable).cloned().collect();
        for vip in decision.vips.iter() {
            let mut interfaces = named.clone();
            if decision.any_interface {
                interfaces.extend(inventory.interfaces_for(*vip));
            }
            if interfaces.is_empty() {
                continue;
            }
            if let Some(other) = held.get(vip) {
                interfaces.extend(other.iter().cloned());
            }
            held.insert(*vip, sets.share(interfaces));
        }
    }
    held
}

/// Services `me` owns with VIPs it has no interface for (`placed` is what [`mine`] returned): none of the
/// usable interfaces has an address in the VIP's subnet and there is no default route of its family, or the
/// advertisement's interfaces are not usable here. The user must be told: nothing answers for them.
pub fn unplaced(decisions: &[Decision], me: &str, placed: &Placement) -> Vec<(Arc<ServiceReference>, Vec<IpAddr>)> {
    decisions
        .iter()
        .filter(|d| d.owner.as_deref() == Some(me))
        .filter_map(|d| {
            let missing: Vec<IpAddr> = d.vips.iter().filter(|v| !placed.contains_key(v)).copied().collect();
            (!missing.is_empty()).then(|| (d.service.clone(), missing))
        })
        .collect()
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
