#![allow(clippy::unwrap_used)]

use super::*;
use crate::test_world::{labels, link, node, service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pool(name: &str, addresses: &[&str]) -> PoolInfo {
    PoolInfo {
        name: name.into(),
        labels: labels(&[("pool", name)]),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
    }
}

fn advertise(pools: &[&str]) -> L2AdvertisementSpec {
    L2AdvertisementSpec { ip_address_pools: pools.iter().map(|p| p.to_string()).collect(), ..Default::default() }
}

fn members(nodes: &[&str], interfaces: &[&str]) -> Members {
    nodes.iter().map(|n| (n.to_string(), interfaces.iter().map(|i| i.to_string()).collect())).collect()
}

fn world(services: Vec<ServiceInfo>, advertisements: Vec<L2AdvertisementSpec>) -> World {
    World {
        nodes: vec![node("node-1"), node("node-2"), node("node-3")],
        services: services.into_iter().map(std::sync::Arc::new).collect(),
        advertisements,
        pools: vec![
            pool("demo", &["192.0.2.200-192.0.2.250", "2001:db8::200/120"]),
            pool("quiet", &["198.51.100.0/24"]),
        ],
        node_addresses: BTreeMap::new(),
    }
}

const ALL: [&str; 3] = ["node-1", "node-2", "node-3"];

fn owner_of(world: &World, members: &Members) -> Option<String> {
    decide(world, members).first().and_then(|d| d.owner.as_deref().map(String::from))
}

fn lab_inventory() -> Inventory {
    Inventory {
        links: vec![link("eth0", &["192.0.2.11/24", "2001:db8::11/64"]), link("eth1", &["203.0.113.11/24"])],
        default_route: BTreeMap::new(),
    }
}

#[test]
fn both_families_go_to_the_election_owner_on_the_interface_of_their_subnet() {
    let w = world(vec![service("web", &["192.0.2.200", "2001:db8::200"], &["node-1"])], vec![advertise(&["demo"])]);
    let all = members(&ALL, &["eth0", "eth1"]);
    let decisions = decide(&w, &all);
    assert_eq!(decisions.len(), 1);
    let owner = decisions[0].owner.as_deref().unwrap().to_string();
    let names: Vec<NodeName> = ALL.iter().map(|n| (*n).into()).collect();
    let views: Vec<_> = names
        .iter()
        .map(|n| election::Candidate { node: n, interfaces: ["eth0".to_string()].into(), cordoned: false })
        .collect();
    assert_eq!(owner.as_str(), &**election::owner(&views, &[ip("192.0.2.200")]).unwrap().node);
    let held = mine(&decisions, &owner, &lab_inventory());
    let eth0: Interfaces = Arc::new(["eth0".to_string()].into());
    assert_eq!(held, BTreeMap::from([(ip("192.0.2.200"), eth0.clone()), (ip("2001:db8::200"), eth0)]));
    assert!(Arc::ptr_eq(&held[&ip("192.0.2.200")], &held[&ip("2001:db8::200")]), "one set, shared by both VIPs");
    for other in ALL.iter().filter(|n| **n != owner) {
        assert!(mine(&decisions, other, &lab_inventory()).is_empty());
    }
}

#[test]
fn a_vip_with_no_interface_on_its_owner_is_reported_unplaced() {
    let mut w = world(vec![service("web", &["192.0.2.200", "2001:db8::200"], &["node-1"])], vec![advertise(&["demo"])]);
    // A pool outside every subnet of the node, and no default route.
    w.pools[0].addresses.push("2001:db8:b::/112".into());
    std::sync::Arc::make_mut(&mut w.services[0]).vips = vec![ip("192.0.2.200"), ip("2001:db8:b::1")].into();
    let decisions = decide(&w, &members(&ALL, &["eth0"]));
    let owner = decisions[0].owner.as_deref().unwrap().to_string();
    let placed = mine(&decisions, &owner, &lab_inventory());
    assert_eq!(placed.keys().copied().collect::<Vec<_>>(), [ip("192.0.2.200")]);
    assert_eq!(unplaced(&decisions, &owner, &placed), [(decisions[0].service.clone(), vec![ip("2001:db8:b::1")])]);
    assert!(unplaced(&decisions, "node-x", &placed).is_empty());
}

#[test]
fn addresses_outside_an_advertised_pool_are_never_announced() {
    let outside = service("outside", &["203.0.113.9"], &["node-1"]);
    let quiet = service("quiet", &["198.51.100.7"], &["node-1"]);
    let mixed = service("mixed", &["198.51.100.8", "2001:db8::201"], &["node-1"]);
    let w = world(vec![outside, quiet, mixed], vec![advertise(&["demo"])]);
    let decisions = decide(&w, &members(&ALL, &["eth0"]));
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].service.name, "mixed");
    assert_eq!(decisions[0].vips[..], [ip("2001:db8::201")]);
}

#[test]
fn a_kept_address_is_announced_through_its_pool_of_origin_shrunk_or_deleted() {
    let mut kept = service("kept", &["192.0.2.240"], &["node-1"]);
    kept.origin_pool = Some("demo".into());
    let mut w = world(vec![kept.clone()], vec![advertise(&["demo"])]);
    // The pool shrank: the VIP is outside every pool, still announced through its pool of origin.
    w.pools[0].addresses = vec!["192.0.2.200-192.0.2.210".into()];
    let decisions = decide(&w, &members(&ALL, &["eth0"]));
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].vips[..], [ip("192.0.2.240")]);
    assert!(decisions[0].owner.is_some());
    // Deleted: matched by name only.
    w.pools.retain(|p| p.name != "demo");
    assert_eq!(decide(&w, &members(&ALL, &["eth0"]))[0].vips[..], [ip("192.0.2.240")]);
    // A deleted pool has no labels: a selector by label no longer picks it, one by name does.
    let by_label = L2AdvertisementSpec {
        ip_address_pool_selectors: vec![LabelSelector {
            match_labels: Some(labels(&[("pool", "demo")])),
            ..Default::default()
        }],
        ..Default::default()
    };
    w.advertisements = vec![by_label.clone()];
    assert!(decide(&w, &members(&ALL, &["eth0"])).is_empty());
    // While the pool exists, shrunk, its labels still count.
    let mut shrunk = world(vec![kept.clone()], vec![by_label]);
    shrunk.pools[0].addresses = vec!["192.0.2.200-192.0.2.210".into()];
    assert_eq!(decide(&shrunk, &members(&ALL, &["eth0"])).len(), 1);
    // Without a recorded origin, as before: a VIP in no pool is not announced.
    kept.origin_pool = None;
    let mut w = world(vec![kept.clone()], vec![advertise(&["demo"])]);
    w.pools[0].addresses = vec!["192.0.2.200-192.0.2.210".into()];
    assert!(decide(&w, &members(&ALL, &["eth0"])).is_empty());
}

#[test]
fn the_pool_of_origin_wins_over_the_pool_containing_the_vip() {
    // The address now lies in "quiet", which no advertisement selects, but came from "demo".
    let mut moved = service("moved", &["198.51.100.7"], &["node-1"]);
    moved.origin_pool = Some("demo".into());
    let w = world(vec![moved.clone()], vec![advertise(&["demo"])]);
    assert_eq!(decide(&w, &members(&ALL, &["eth0"]))[0].vips[..], [ip("198.51.100.7")]);
    // And the other way round: in "demo", from "quiet" (not advertised): not announced.
    let mut other = service("other", &["192.0.2.201"], &["node-1"]);
    other.origin_pool = Some("quiet".into());
    assert!(decide(&world(vec![other], vec![advertise(&["demo"])]), &members(&ALL, &["eth0"])).is_empty());
}

#[test]
fn a_nodes_address_is_never_announced_and_is_reported() {
    // node-2's InternalIP, put inside the pool and asked for by a Service, next to a real VIP.
    let svc = service("web", &["192.0.2.12", "2001:db8::200"], &["node-1"]);
    let mut w = world(vec![svc], vec![advertise(&[])]);
    w.pools[0].addresses.push("192.0.2.0/28".into());
    w.node_addresses.insert(ip("192.0.2.12"), NodeAddress { node: "node-2".into(), listed: true });
    let decisions = decide(&w, &members(&ALL, &["eth0"]));
    assert_eq!(decisions[0].vips[..], [ip("2001:db8::200")]);
    for node in ALL {
        assert!(!mine(&decisions, node, &lab_inventory()).contains_key(&ip("192.0.2.12")));
    }
    let refused = node_address_vips(&w);
    assert_eq!(refused.len(), 1);
    assert_eq!((refused[0].vip, refused[0].node.as_str(), refused[0].listed), (ip("192.0.2.12"), "node-2", true));

    // Only the node's own interface has it (no Node lists it): refused on that node too.
    let only = service("only", &["192.0.2.13"], &["node-1"]);
    let mut w = world(vec![only], vec![advertise(&[])]);
    w.pools[0].addresses.push("192.0.2.0/28".into());
    assert_eq!(decide(&w, &members(&ALL, &["eth0"])).len(), 1, "announced while nobody says it is a node's");
    let w = w.with_own_addresses("node-3", [ip("192.0.2.13"), ip("192.0.2.12")]);
    assert!(decide(&w, &members(&ALL, &["eth0"])).is_empty());
    let refused = node_address_vips(&w);
    assert_eq!((refused[0].node.as_str(), refused[0].listed), ("node-3", false));
}

#[test]
fn service_selectors_pool_selectors_and_all_pools() {
    let svc = service("web", &["192.0.2.200"], &["node-1"]);
    let by_label = L2AdvertisementSpec {
        ip_address_pool_selectors: vec![LabelSelector {
            match_labels: Some(labels(&[("pool", "demo")])),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(decide(&world(vec![svc.clone()], vec![by_label]), &members(&ALL, &["eth0"])).len(), 1);
    assert_eq!(decide(&world(vec![svc.clone()], vec![advertise(&[])]), &members(&ALL, &["eth0"])).len(), 1);
    let other_services = L2AdvertisementSpec {
        service_selectors: vec![LabelSelector { match_labels: Some(labels(&[("app", "db")])), ..Default::default() }],
        ..advertise(&["demo"])
    };
    assert!(decide(&world(vec![svc], vec![other_services]), &members(&ALL, &["eth0"])).is_empty());
}

#[test]
fn only_live_eligible_nodes_own() {
    let svc = service("web", &["192.0.2.200"], &["node-1"]);
    let mut w = world(vec![svc.clone()], vec![advertise(&["demo"])]);
    let owner = owner_of(&w, &members(&ALL, &["eth0"])).unwrap();
    // Dead: the owner is no member.
    let rest: Vec<&str> = ALL.iter().copied().filter(|n| *n != owner).collect();
    let next = owner_of(&w, &members(&rest, &["eth0"])).unwrap();
    assert_ne!(next, owner);
    // Excluded by label, or network unavailable: the same successor.
    for n in &mut w.nodes {
        if *n.name == *owner {
            n.labels.insert(election::EXCLUDE_LABEL.into(), String::new());
        }
    }
    assert_eq!(owner_of(&w, &members(&ALL, &["eth0"])).unwrap(), next);
    let mut w = world(vec![svc], vec![advertise(&["demo"])]);
    w.nodes.iter_mut().filter(|n| *n.name == *owner).for_each(|n| n.network_unavailable = true);
    assert_eq!(owner_of(&w, &members(&ALL, &["eth0"])).unwrap(), next);
}

#[test]
fn node_selectors_and_named_interfaces_restrict_the_owner() {
    let svc = service("web", &["192.0.2.200"], &["node-1"]);
    let only_node_3 = L2AdvertisementSpec {
        node_selectors: vec![LabelSelector {
            match_labels: Some(labels(&[("kubernetes.io/hostname", "node-3")])),
            ..Default::default()
        }],
        ..advertise(&["demo"])
    };
    assert_eq!(
        owner_of(&world(vec![svc.clone()], vec![only_node_3]), &members(&ALL, &["eth0"])).as_deref(),
        Some("node-3")
    );

    let on_eth1 = L2AdvertisementSpec { interfaces: vec!["eth1".into()], ..advertise(&["demo"]) };
    let mut m = members(&ALL, &["eth0"]);
    m.insert("node-2".into(), ["eth0".to_string(), "eth1".to_string()].into());
    let decisions = decide(&world(vec![svc], vec![on_eth1]), &m);
    assert_eq!(decisions[0].owner.as_deref(), Some("node-2"), "the only node with eth1");
    let held = mine(&decisions, "node-2", &lab_inventory());
    assert_eq!(held, BTreeMap::from([(ip("192.0.2.200"), Arc::new(["eth1".to_string()].into()))]));
}

#[test]
fn local_traffic_policy_follows_ready_endpoints_and_no_endpoint_means_no_owner() {
    let mut svc = service("web", &["192.0.2.200"], &["node-2"]);
    svc.traffic_policy_local = true;
    let w = world(vec![svc.clone()], vec![advertise(&["demo"])]);
    assert_eq!(owner_of(&w, &members(&ALL, &["eth0"])).as_deref(), Some("node-2"));
    svc.ready_endpoint_nodes = NodeSet::default();
    svc.traffic_policy_local = false;
    let w = world(vec![svc], vec![advertise(&["demo"])]);
    assert_eq!(decide(&w, &members(&ALL, &["eth0"]))[0].owner, None);
}

proptest! {
    /// Whatever the membership, each Service has at most one owner, it is live and eligible, it holds both
    /// families, and a node that was not the owner leaving never moves the VIP.
    #[test]
    fn one_live_owner_and_stable_when_others_leave(
        n in 0u8..200,
        alive in proptest::collection::btree_set(0usize..3, 1..=3),
        local in any::<bool>(),
        endpoints in proptest::collection::btree_set(0usize..3, 1..=3),
    ) {
        let vip4 = format!("192.0.2.{}", 200 + n % 50);
        let vip6 = format!("2001:db8::{:x}", 0x200 + u16::from(n));
        let mut svc = service("web", &[&vip4, &vip6], &[]);
        svc.traffic_policy_local = local;
        svc.ready_endpoint_nodes = endpoints.iter().map(|i| ALL[*i].to_string()).collect();
        let w = world(vec![svc.clone()], vec![advertise(&["demo"])]);
        let live: Vec<&str> = alive.iter().map(|i| ALL[*i]).collect();
        let m = members(&live, &["eth0"]);
        let decisions = decide(&w, &m);
        let owner = decisions[0].owner.as_deref().map(String::from);
        let holders: Vec<&str> = ALL.iter().copied().filter(|node| !mine(&decisions, node, &lab_inventory()).is_empty()).collect();
        match &owner {
            Some(o) => {
                prop_assert!(live.contains(&o.as_str()));
                prop_assert!(!local || svc.ready_endpoint_nodes.contains(o));
                prop_assert_eq!(holders, vec![o.as_str()]);
                prop_assert_eq!(mine(&decisions, o, &lab_inventory()).len(), 2);
                for leaving in live.iter().filter(|l| **l != o.as_str()) {
                    let fewer: Vec<&str> = live.iter().copied().filter(|l| l != leaving).collect();
                    prop_assert_eq!(owner_of(&w, &members(&fewer, &["eth0"])), owner.clone());
                }
            }
            None => prop_assert!(holders.is_empty()),
        }
    }
}

#[test]
fn equal_sets_and_rankings_are_shared_and_a_long_unused_one_is_forgotten() {
    let mut sets: Sharing<[NodeName]> = Sharing::default();
    let one = NodeSet::shared(vec!["node-2".into(), "node-1".into(), "node-2".into()], &mut sets);
    let again = NodeSet::shared(vec!["node-1".into(), "node-2".into()], &mut sets);
    assert!(Arc::ptr_eq(&one.0, &again.0), "one set, sorted and without repeats, for both");
    assert!(one.contains("node-1") && one.contains("node-2") && !one.contains("node-3"));
    for i in 0..32 {
        NodeSet::shared(vec![format!("other-{i}").into()], &mut sets);
    }
    let later = NodeSet::shared(vec!["node-1".into(), "node-2".into()], &mut sets);
    assert_eq!(later, one);
    assert!(!Arc::ptr_eq(&later.0, &one.0), "only the last few distinct sets are searched");

    let w = world(
        (0..50).map(|i| service(&format!("web-{i}"), &[&format!("192.0.2.{}", 200 + i)], &["node-1"])).collect(),
        vec![advertise(&["demo"])],
    );
    let decisions = decide(&w, &members(&ALL, &["eth0"]));
    assert_eq!(decisions.len(), 50);
    for decision in &decisions {
        let twin = decisions.iter().find(|d| d.ranking == decision.ranking).unwrap();
        assert!(Arc::ptr_eq(&decision.ranking, &twin.ranking), "equal rankings are one");
        let info = w.services.iter().find(|s| s.service == decision.service).unwrap();
        assert!(Arc::ptr_eq(&decision.vips, &info.vips), "all of its VIPs announced: the Service's own list");
        assert!(Arc::ptr_eq(&decision.service, &info.service));
    }
}

#[test]
fn a_plan_of_many_services_keeps_no_spare_room() {
    let services = (0..1000).map(|i| service(&format!("web-{i}"), &["192.0.2.200"], &["node-1"])).collect();
    let w = world(services, vec![advertise(&["demo"])]);
    let decisions = decide(&w, &members(&ALL, &["eth0"]));
    assert_eq!(decisions.len(), 1000);
    assert_eq!(decisions.capacity(), 1000, "kept until the next plan: no room left by collect's doubling");
}
