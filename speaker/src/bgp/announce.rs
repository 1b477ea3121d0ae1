//! Which routes this node sends to which BGP peers, with no I/O. There is no election: every eligible node
//! announces, and the router spreads the flows over them (ECMP).
//!
//! A VIP of a Service goes to a peer when a BGPAdvertisement selects the Service and the VIP's pool (as in
//! L2 mode: the pool of origin the Service records, else the pool holding the VIP), tells that peer, and
//! this node has a session to the peer (the BGPPeer's nodeSelectors) and is eligible:
//! - matched by the advertisement's nodeSelectors;
//! - not labelled `node.kubernetes.io/exclude-from-external-load-balancers`, not `NetworkUnavailable`;
//! - not cordoned, unless every otherwise eligible node is (a drain withdraws; cordoning all drops nothing);
//! - `externalTrafficPolicy: Local`: running a ready endpoint of the Service.
//!
//! A Service with no ready endpoint anywhere is announced by nobody. A VIP that is a node's address is never
//! announced.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::BGPAdvertisementSpec;
use ferrolb_crds::l2announcement::ServiceReference;
use ipnet::IpNet;

use crate::election::EXCLUDE_LABEL;
use crate::plan::{self, NodeInfo, World};

/// The path attributes a route is sent with.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attributes {
    pub local_pref: Option<u32>,
    /// Sorted, without repeats.
    pub communities: Vec<String>,
    /// Sorted, without repeats.
    pub large_communities: Vec<String>,
}

impl Attributes {
    /// Two advertisements announce the same prefix to the same peer: their communities add up, and the
    /// higher LOCAL_PREF wins (a peer prefers it either way).
    fn merge(&mut self, other: &Attributes) {
        self.local_pref = self.local_pref.max(other.local_pref);
        self.communities.extend(other.communities.iter().cloned());
        self.large_communities.extend(other.large_communities.iter().cloned());
        self.normalize();
    }

    fn of(advertisement: &BGPAdvertisementSpec) -> Self {
        let mut attributes = Attributes {
            local_pref: advertisement.local_pref,
            communities: advertisement.communities.iter().map(|c| c.0.clone()).collect(),
            large_communities: advertisement.large_communities.iter().map(|c| c.0.clone()).collect(),
        };
        attributes.normalize();
        attributes
    }

    /// Sorted, without repeats (equal sets of communities compare equal, and render the same).
    fn normalize(&mut self) {
        self.communities.sort();
        self.communities.dedup();
        self.large_communities.sort();
        self.large_communities.dedup();
    }
}

/// What this node sends: for each peer (by BGPPeer name), each prefix with its attributes; and for each
/// Service, its prefixes and the peers they go to (its BGPAnnouncement).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    pub by_peer: BTreeMap<String, BTreeMap<IpNet, Attributes>>,
    pub by_service: BTreeMap<ServiceReference, ServiceRoutes>,
}

/// What this node announces of one Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRoutes {
    pub prefixes: BTreeSet<IpNet>,
    pub peers: BTreeSet<String>,
}

/// The advertisements, as [`routes`] reads them.
pub struct BgpWorld<'a> {
    pub world: &'a World,
    pub advertisements: &'a [BGPAdvertisementSpec],
    /// The peers this node has a session to, by BGPPeer name.
    pub sessions: &'a BTreeSet<String>,
}

/// The routes `me` sends.
pub fn routes(bgp: &BgpWorld<'_>, me: &str) -> Routes {
    let mut routes = Routes::default();
    let world = bgp.world;
    let Some(node) = world.nodes.iter().find(|n| *n.name == *me) else { return routes };
    if bgp.sessions.is_empty() || !usable(node) {
        return routes;
    }
    let pools = plan::parse_pools(&world.pools);
    // What depends on the advertisement alone, once per call rather than once per Service: those that
    // select this node and tell one of its peers, with those peers and the attributes.
    let advertisements: Vec<(&BGPAdvertisementSpec, Vec<&String>, Attributes)> = bgp
        .advertisements
        .iter()
        .filter(|advertisement| selects_node(advertisement, node))
        .map(|advertisement| {
            let peers: Vec<&String> = bgp.sessions.iter().filter(|p| advertisement.tells(p)).collect();
            (advertisement, peers, Attributes::of(advertisement))
        })
        .filter(|(_, peers, _)| !peers.is_empty())
        .collect();
    for service in &world.services {
        if service.ready_endpoint_nodes.is_empty()
            || (service.traffic_policy_local && !service.ready_endpoint_nodes.contains(me))
        {
            continue;
        }
        for (advertisement, peers, attributes) in &advertisements {
            if !advertisement.selects_service(&service.labels)
                || !announces_from(advertisement, &world.nodes, service, node)
            {
                continue;
            }
            for vip in service.vips.iter().filter(|v| !world.node_addresses.contains_key(v)) {
                let Some((pool, labels)) = plan::pool_of(service, *vip, &pools) else { continue };
                if !advertisement.selects_pool(pool, labels) {
                    continue;
                }
                let prefix = aggregate(*vip, advertisement);
                for peer in peers {
                    routes
                        .by_peer
                        .entry((*peer).clone())
                        .or_default()
                        .entry(prefix)
                        .and_modify(|a| a.merge(attributes))
                        .or_insert_with(|| attributes.clone());
                }
                let announced = routes.by_service.entry((*service.service).clone()).or_default();
                announced.prefixes.insert(prefix);
                announced.peers.extend(peers.iter().map(|p| (*p).clone()));
            }
        }
    }
    routes
}

/// Not excluded, and its network is up.
fn usable(node: &NodeInfo) -> bool {
    !node.labels.contains_key(EXCLUDE_LABEL) && !node.network_unavailable
}

fn selects_node(advertisement: &BGPAdvertisementSpec, node: &NodeInfo) -> bool {
    // A malformed selector selects nothing: announcing from an unintended node is worse.
    ferrolb_crds::selector::matches_any(&advertisement.node_selectors, &node.labels).unwrap_or(false)
}

/// Whether `node` (eligible for the advertisement) announces `service`: a cordoned node only when every
/// node that could announce it is cordoned.
fn announces_from(
    advertisement: &BGPAdvertisementSpec,
    nodes: &[NodeInfo],
    service: &plan::ServiceInfo,
    node: &NodeInfo,
) -> bool {
    if !node.unschedulable {
        return true;
    }
    !nodes.iter().any(|other| {
        !other.unschedulable
            && usable(other)
            && selects_node(advertisement, other)
            && (!service.traffic_policy_local || service.ready_endpoint_nodes.contains(&other.name))
    })
}

/// The prefix a VIP is sent as: itself, or the network of the advertisement's aggregation length around it.
pub fn aggregate(vip: IpAddr, advertisement: &BGPAdvertisementSpec) -> IpNet {
    let length = match vip {
        IpAddr::V4(_) => advertisement.aggregation_length.unwrap_or(32).min(32),
        IpAddr::V6(_) => advertisement.aggregation_length_v6.unwrap_or(128).min(128),
    };
    IpNet::new(vip, length).map(|net| net.trunc()).unwrap_or_else(|_| IpNet::from(vip))
}

#[cfg(test)]
#[path = "announce_tests.rs"]
mod tests;
