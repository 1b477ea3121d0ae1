use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn node(name: &str) -> NodeView {
    NodeView {
        name: name.into(),
        labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), name.to_string())]),
        network_unavailable: false,
        unschedulable: false,
        interfaces: BTreeSet::from(["eth0".to_string()]),
    }
}

fn service(vips: &[&str], ready_on: &[&str]) -> ServiceView {
    ServiceView {
        vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
        traffic_policy_local: false,
        ready_endpoint_nodes: ready_on.iter().map(|n| n.to_string()).collect(),
    }
}

fn live(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn names<'a>(candidates: &[Candidate<'a>]) -> Vec<&'a str> {
    candidates.iter().map(|c| -> &'a str { c.node }).collect()
}

const ANY: &[AdvertisementView] = &[];

fn any_node() -> Vec<AdvertisementView> {
    vec![AdvertisementView::default()]
}

/// xxh3_64("node-1\0192.0.2.200"), computed once; XXH3 is a fixed specification, so this never changes.
const PINNED_NODE_1_SCORE: u64 = 0x1b36_f838_f391_2cad;

proptest::proptest! {
    /// The score is fed to XXH3 in pieces: the digest must be that of the joined bytes, for every address
    /// (the longest IPv6 texts too) and node names up to the longest a Node may have.
    #[test]
    fn the_score_is_xxh3_of_the_joined_name_and_address(
        node in "[a-z0-9.-]{1,253}",
        v4 in proptest::prelude::any::<[u8; 4]>(),
        v6 in proptest::prelude::any::<[u16; 8]>(),
    ) {
        for vip in [IpAddr::from(v4), IpAddr::from(std::net::Ipv6Addr::from(v6))] {
            let joined = [node.as_bytes(), b"\x00", vip.to_string().as_bytes()].concat();
            proptest::prop_assert_eq!(score(&node, vip), xxhash_rust::xxh3::xxh3_64(&joined));
        }
    }
}

#[test]
fn the_longest_ipv6_text_is_scored_whole() {
    let vip: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".parse().unwrap();
    let longest: IpAddr = "1111:2222:3333:4444:5555:6666:7777:8888".parse().unwrap();
    for vip in [vip, longest] {
        let joined = [b"n".as_slice(), b"\x00", vip.to_string().as_bytes()].concat();
        assert_eq!(score("n", vip), xxhash_rust::xxh3::xxh3_64(&joined), "{vip}");
    }
}

#[test]
fn the_score_is_the_documented_function() {
    // Pinned values: if these change, every VIP in every cluster moves on upgrade.
    let vip: IpAddr = "192.0.2.200".parse().unwrap();
    assert_eq!(score("node-1", vip), xxhash_rust::xxh3::xxh3_64(b"node-1\x00192.0.2.200"));
    assert_eq!(score("node-1", vip), PINNED_NODE_1_SCORE);
}

#[test]
fn eligibility_follows_every_rule() {
    let mut excluded = node("excluded");
    excluded.labels.insert(EXCLUDE_LABEL.into(), String::new());
    let mut unreachable = node("unreachable");
    unreachable.network_unavailable = true;
    let mut other_nic = node("other-nic");
    other_nic.interfaces = BTreeSet::from(["eth1".to_string()]);
    let nodes = vec![node("a"), node("dead"), excluded, unreachable, other_nic];
    let alive = live(&["a", "excluded", "unreachable", "other-nic"]);
    let svc = service(&["192.0.2.1"], &["a"]);

    assert!(candidates(&nodes, &alive, ANY, &svc).is_empty(), "no advertisement selects the Service: nobody announces");
    assert_eq!(names(&candidates(&nodes, &alive, &any_node(), &svc)), ["a", "other-nic"]);
    let eth0_only = vec![AdvertisementView { interfaces: BTreeSet::from(["eth0".to_string()]), ..Default::default() }];
    assert_eq!(names(&candidates(&nodes, &alive, &eth0_only, &svc)), ["a"]);
    let only_other = vec![AdvertisementView {
        node_selectors: vec![LabelSelector {
            match_labels: Some([("kubernetes.io/hostname".to_string(), "other-nic".to_string())].into()),
            ..Default::default()
        }],
        ..Default::default()
    }];
    let chosen = candidates(&nodes, &alive, &only_other, &svc);
    assert_eq!(names(&chosen), ["other-nic"]);
    assert_eq!(chosen[0].interfaces, BTreeSet::from(["eth1".to_string()]));
}

#[test]
fn cordoned_nodes_give_way_unless_every_node_is_cordoned() {
    let mut nodes = vec![node("node-1"), node("node-2"), node("node-3")];
    let all = live(&["node-1", "node-2", "node-3"]);
    let web = service(&["192.0.2.200"], &["node-1"]);
    let owner_before = owner(&candidates(&nodes, &all, &any_node(), &web), &web.vips).unwrap().node.to_string();
    nodes.iter_mut().filter(|n| *n.name == *owner_before).for_each(|n| n.unschedulable = true);
    let drained = candidates(&nodes, &all, &any_node(), &web);
    assert!(!names(&drained).contains(&owner_before.as_str()), "a cordoned node is no candidate while others are");
    assert_eq!(drained.len(), 2);
    assert!(drained.iter().all(|c| !c.cordoned));
    nodes.iter_mut().for_each(|n| n.unschedulable = true);
    let everyone_cordoned = candidates(&nodes, &all, &any_node(), &web);
    assert_eq!(names(&everyone_cordoned), ["node-1", "node-2", "node-3"], "a cluster-wide cordon drops no VIP");
    assert_eq!(owner(&everyone_cordoned, &web.vips).unwrap().node.to_string(), owner_before, "and moves none");
}

#[test]
fn local_traffic_policy_needs_a_ready_endpoint_on_the_node_and_none_anywhere_means_nobody() {
    let nodes = vec![node("a"), node("b"), node("c")];
    let alive = live(&["a", "b", "c"]);
    let mut local = service(&["192.0.2.1"], &["b"]);
    local.traffic_policy_local = true;
    assert_eq!(names(&candidates(&nodes, &alive, &any_node(), &local)), ["b"]);
    let cluster = service(&["192.0.2.1"], &["b"]);
    assert_eq!(candidates(&nodes, &alive, &any_node(), &cluster).len(), 3);
    let nowhere = service(&["192.0.2.1"], &[]);
    assert!(candidates(&nodes, &alive, &any_node(), &nowhere).is_empty());
}

#[test]
fn both_families_go_to_the_node_the_ipv4_vip_elects() {
    let nodes: Vec<NodeView> = (0..8).map(|i| node(&format!("n{i}"))).collect();
    let alive: BTreeSet<String> = nodes.iter().map(|n| n.name.to_string()).collect();
    let dual = service(&["2001:db8::5", "192.0.2.5"], &["n0"]);
    let cands = candidates(&nodes, &alive, &any_node(), &dual);
    let v4_only = service(&["192.0.2.5"], &["n0"]);
    assert_eq!(owner(&cands, &dual.vips).unwrap().node, owner(&cands, &v4_only.vips).unwrap().node);
}

fn cluster(n: usize) -> Vec<NodeView> {
    (0..n).map(|i| node(&format!("node-{i}"))).collect()
}

proptest! {
    #[test]
    fn exactly_one_owner_whatever_the_input_order(n in 1usize..12, vip in any::<u32>(), rotate in 0usize..12) {
        let mut nodes = cluster(n);
        let alive: BTreeSet<String> = nodes.iter().map(|x| x.name.to_string()).collect();
        let svc = ServiceView { vips: vec![IpAddr::from(std::net::Ipv4Addr::from(vip))], traffic_policy_local: false, ready_endpoint_nodes: alive.iter().collect() };
        let first = owner(&candidates(&nodes, &alive, &any_node(), &svc), &svc.vips).map(|c| c.node.to_string());
        nodes.rotate_left(rotate % n);
        let cands = candidates(&nodes, &alive, &any_node(), &svc);
        let second = owner(&cands, &svc.vips).map(|c| c.node.to_string());
        prop_assert!(first.is_some());
        prop_assert_eq!(&first, &second);
        let first = first.unwrap();
        prop_assert_eq!(&**ranking(&cands, &svc.vips)[0].node, first.as_str());
    }

    #[test]
    fn a_node_leaving_moves_only_the_vips_it_owned(n in 2usize..10, leaving in 0usize..10, vips in proptest::collection::vec(any::<u32>(), 1..40)) {
        let nodes = cluster(n);
        let all: BTreeSet<String> = nodes.iter().map(|x| x.name.to_string()).collect();
        let gone = format!("node-{}", leaving % n);
        let fewer: BTreeSet<String> = all.iter().filter(|x| **x != gone).cloned().collect();
        for vip in vips {
            let svc = ServiceView { vips: vec![IpAddr::from(std::net::Ipv4Addr::from(vip))], traffic_policy_local: false, ready_endpoint_nodes: all.iter().collect() };
            let before = owner(&candidates(&nodes, &all, &any_node(), &svc), &svc.vips).unwrap().node.to_string();
            let after = owner(&candidates(&nodes, &fewer, &any_node(), &svc), &svc.vips).unwrap().node.to_string();
            if before != gone {
                prop_assert_eq!(&before, &after, "a VIP moved off a node that stayed");
            } else {
                prop_assert_ne!(&after, &gone);
            }
        }
    }
}

#[test]
fn vips_spread_evenly_across_nodes() {
    let nodes = cluster(3);
    let alive: BTreeSet<String> = nodes.iter().map(|x| x.name.to_string()).collect();
    let mut owned: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..3000u32 {
        let svc = ServiceView {
            vips: vec![IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + i))],
            traffic_policy_local: false,
            ready_endpoint_nodes: alive.iter().collect(),
        };
        *owned
            .entry(owner(&candidates(&nodes, &alive, &any_node(), &svc), &svc.vips).unwrap().node.to_string())
            .or_default() += 1;
    }
    // 1000 expected each; a fair hash stays well within ±15 %.
    assert!(owned.values().all(|count| (850..=1150).contains(count)), "{owned:?}");
}
