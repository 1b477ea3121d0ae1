#![allow(clippy::unwrap_used)]
use super::*;
use crate::plan::{NodeAddress, PoolInfo, ServiceInfo};
use crate::test_world::{labels, node, service};
use ferrolb_crds::bgp_advertisement::{Community, LargeCommunity};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

fn world(services: Vec<ServiceInfo>) -> World {
    World {
        nodes: vec![node("node-1"), node("node-2"), node("node-3")],
        services: services.into_iter().map(std::sync::Arc::new).collect(),
        advertisements: Vec::new(),
        pools: vec![
            PoolInfo {
                name: "bgp".into(),
                labels: labels(&[("mode", "bgp")]),
                addresses: vec!["203.0.113.0/24".into(), "2001:db8:b::/64".into()],
            },
            PoolInfo { name: "l2".into(), labels: BTreeMap::new(), addresses: vec!["192.0.2.200-192.0.2.250".into()] },
        ],
        node_addresses: BTreeMap::new(),
    }
}

fn advertise(pools: &[&str]) -> BGPAdvertisementSpec {
    BGPAdvertisementSpec { ip_address_pools: pools.iter().map(|p| p.to_string()).collect(), ..Default::default() }
}

fn sessions(peers: &[&str]) -> BTreeSet<String> {
    peers.iter().map(|p| p.to_string()).collect()
}

fn prefixes(routes: &Routes, peer: &str) -> Vec<String> {
    routes.by_peer.get(peer).map(|p| p.keys().map(|k| k.to_string()).collect()).unwrap_or_default()
}

#[test]
fn every_eligible_node_announces_a_cluster_service_to_every_peer_it_tells() {
    let world = world(vec![
        service("web", &["203.0.113.10", "2001:db8:b::10"], &["node-3"]),
        service("l2-only", &["192.0.2.200"], &["node-1"]),
    ]);
    let advertisements = [advertise(&["bgp"])];
    let sessions = sessions(&["router-a", "router-b"]);
    let bgp = BgpWorld { world: &world, advertisements: &advertisements, sessions: &sessions };
    for me in ["node-1", "node-2", "node-3"] {
        let routes = routes(&bgp, me);
        assert_eq!(prefixes(&routes, "router-a"), ["203.0.113.10/32", "2001:db8:b::10/128"], "{me}");
        assert_eq!(prefixes(&routes, "router-b"), ["203.0.113.10/32", "2001:db8:b::10/128"], "{me}");
        assert_eq!(routes.by_service.len(), 1, "the L2 pool's Service is not announced by BGP");
        let announced = routes.by_service.values().next().unwrap();
        let prefixes: Vec<String> = announced.prefixes.iter().map(|p| p.to_string()).collect();
        assert_eq!(prefixes, ["203.0.113.10/32", "2001:db8:b::10/128"], "its BGPAnnouncement's prefixes");
        assert_eq!(announced.peers.iter().collect::<Vec<_>>(), ["router-a", "router-b"], "and peers");
    }
}

#[test]
fn local_services_follow_their_endpoints_and_nobody_announces_a_service_without_one() {
    let mut local = service("local", &["203.0.113.11"], &["node-2"]);
    local.traffic_policy_local = true;
    let world = world(vec![local, service("idle", &["203.0.113.12"], &[])]);
    let advertisements = [advertise(&[])];
    let sessions = sessions(&["router"]);
    let bgp = BgpWorld { world: &world, advertisements: &advertisements, sessions: &sessions };
    assert_eq!(prefixes(&routes(&bgp, "node-2"), "router"), ["203.0.113.11/32"]);
    assert!(routes(&bgp, "node-1").by_peer.is_empty());
}

#[test]
fn node_selectors_peers_exclusion_cordons_and_node_addresses_are_honoured() {
    let mut world = world(vec![service("web", &["203.0.113.10", "203.0.113.99"], &["node-1"])]);
    world.node_addresses.insert("203.0.113.99".parse().unwrap(), NodeAddress { node: "node-2".into(), listed: true });
    let rack_a =
        LabelSelector { match_labels: Some(labels(&[("kubernetes.io/hostname", "node-1")])), ..Default::default() };
    let advertisements =
        [BGPAdvertisementSpec { node_selectors: vec![rack_a], peers: vec!["router-a".into()], ..advertise(&[]) }];
    let sessions = sessions(&["router-a", "router-b"]);
    let bgp = BgpWorld { world: &world, advertisements: &advertisements, sessions: &sessions };
    let routes_1 = routes(&bgp, "node-1");
    assert_eq!(prefixes(&routes_1, "router-a"), ["203.0.113.10/32"], "a node's address is never announced");
    assert!(prefixes(&routes_1, "router-b").is_empty(), "router-b is not told");
    assert!(routes(&bgp, "node-2").by_peer.is_empty(), "node-2 is not selected");

    let advertisements = [advertise(&[])];
    let mut excluded = world.clone();
    excluded.nodes[0].labels.insert(EXCLUDE_LABEL.into(), String::new());
    excluded.nodes[1].unschedulable = true;
    let bgp = BgpWorld { world: &excluded, advertisements: &advertisements, sessions: &sessions };
    assert!(routes(&bgp, "node-1").by_peer.is_empty(), "excluded");
    assert!(routes(&bgp, "node-2").by_peer.is_empty(), "cordoned, and node-3 is not");
    assert!(!routes(&bgp, "node-3").by_peer.is_empty());
    let mut all_cordoned = world.clone();
    all_cordoned.nodes.iter_mut().for_each(|n| n.unschedulable = true);
    let bgp = BgpWorld { world: &all_cordoned, advertisements: &advertisements, sessions: &sessions };
    assert!(!routes(&bgp, "node-2").by_peer.is_empty(), "every node cordoned: nothing is dropped");
}

#[test]
fn aggregation_and_attributes_of_two_advertisements_add_up() {
    let world = world(vec![service("a", &["203.0.113.10"], &["node-1"]), service("b", &["203.0.113.20"], &["node-1"])]);
    let advertisements = [
        BGPAdvertisementSpec {
            aggregation_length: Some(24),
            local_pref: Some(100),
            communities: vec![Community("64500:2".into()), Community("64500:1".into())],
            ..advertise(&["bgp"])
        },
        BGPAdvertisementSpec {
            aggregation_length: Some(24),
            local_pref: Some(200),
            communities: vec![Community("64500:1".into())],
            large_communities: vec![LargeCommunity("64500:1:2".into())],
            ..advertise(&["bgp"])
        },
    ];
    let sessions = sessions(&["router"]);
    let bgp = BgpWorld { world: &world, advertisements: &advertisements, sessions: &sessions };
    let routes = routes(&bgp, "node-1");
    assert_eq!(prefixes(&routes, "router"), ["203.0.113.0/24"]);
    let attributes = &routes.by_peer["router"][&"203.0.113.0/24".parse::<IpNet>().unwrap()];
    assert_eq!(attributes.local_pref, Some(200));
    assert_eq!(attributes.communities, ["64500:1", "64500:2"]);
    assert_eq!(attributes.large_communities, ["64500:1:2"]);
}

#[test]
fn a_node_without_sessions_announces_nothing() {
    let world = world(vec![service("web", &["203.0.113.10"], &["node-1"])]);
    let advertisements = [advertise(&[])];
    let none = BTreeSet::new();
    assert_eq!(
        routes(&BgpWorld { world: &world, advertisements: &advertisements, sessions: &none }, "node-1"),
        Routes::default()
    );
}
