use ferrolb_crds::reason;
use std::collections::BTreeMap;

use ferrolb_crds::IPAddressPoolSpec;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn clock() -> Box<dyn Fn() -> Time + Send> {
    Box::new(|| Time(jiff::Timestamp::from_second(1_700_000_000).unwrap()))
}

fn engine() -> Engine {
    Engine::new(Config::default(), clock())
}

fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
    IPAddressPool::new(name, IPAddressPoolSpec::with_addresses(addresses))
}

fn service(name: &str, created: i64) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            uid: Some(format!("uid-{name}")),
            creation_timestamp: Some(Time(jiff::Timestamp::from_second(created).unwrap())),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ip_families: Some(vec!["IPv4".into()]),
            ports: Some(vec![ServicePort { port: 80, ..Default::default() }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with_status(mut service: Service, ips: &[&str]) -> Service {
    service.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(
                ips.iter().map(|ip| LoadBalancerIngress { ip: Some(ip.to_string()), ..Default::default() }).collect(),
            ),
        }),
        ..Default::default()
    });
    service
}

/// What the writer would do: put the engine's status onto the object, as the next watch event shows it.
fn written(mut service: Service, status: &StatusOut) -> Service {
    let current = service.status.get_or_insert_with(Default::default);
    current.load_balancer = Some(LoadBalancerStatus {
        ingress: Some(
            status
                .ingress
                .iter()
                .map(|ip| LoadBalancerIngress { ip: Some(ip.to_string()), ..Default::default() })
                .collect(),
        ),
    });
    let conditions: Vec<Condition> = status.condition.iter().chain(status.pool_condition.iter()).cloned().collect();
    current.conditions = (!conditions.is_empty()).then_some(conditions);
    service
}

fn statuses(outputs: &[Output]) -> Vec<&StatusOut> {
    outputs.iter().filter_map(|o| if let Output::Status(s) = o { Some(s) } else { None }).collect()
}

fn events(outputs: &[Output]) -> Vec<(&'static str, &str)> {
    outputs
        .iter()
        .filter_map(|o| if let Output::Event(e) = o { Some((e.reason, e.note.as_str())) } else { None })
        .collect()
}

fn advertise_all() -> L2Advertisement {
    L2Advertisement::new("all", L2AdvertisementSpec::default())
}

fn synced(pools: &[IPAddressPool]) -> Engine {
    let mut e = engine();
    e.apply_advertisement(&advertise_all());
    for p in pools {
        e.apply_pool(p.clone());
    }
    assert!(e.initial_sync().is_empty());
    e
}

#[test]
fn a_new_service_gets_an_address_a_condition_and_one_event_and_no_write_loop() {
    let mut e = synced(&[pool("demo", &["192.0.2.200-192.0.2.250"])]);
    let out = e.apply_service(service("web", 1));
    let status = statuses(&out)[0].clone();
    assert_eq!(status.ingress, ["192.0.2.200".parse::<IpAddr>().unwrap()]);
    let condition = status.condition.clone().unwrap();
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("True", reason::ALLOCATED));
    assert_eq!(condition.message, "192.0.2.200 from pool \"demo\"");
    assert_eq!(events(&out), [(reason::IP_ALLOCATED, "assigned 192.0.2.200 from pool \"demo\"")]);
    // The watch then shows our write: nothing more to do.
    assert!(e.apply_service(written(service("web", 1), &status)).is_empty());
}

#[test]
fn restart_keeps_every_address_and_the_older_service_wins_a_clash() {
    let mut e = engine();
    e.apply_advertisement(&advertise_all());
    e.apply_pool(pool("demo", &["192.0.2.200-192.0.2.210"]));
    e.apply_service(with_status(service("young", 20), &["192.0.2.205"]));
    e.apply_service(with_status(service("old", 10), &["192.0.2.205"]));
    e.apply_service(with_status(service("other", 15), &["192.0.2.201"]));
    let out = e.initial_sync();
    assert_eq!(
        e.allocator().assignment(&ServiceKey::new("shop", "old")).unwrap().ips,
        ["192.0.2.205".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        e.allocator().assignment(&ServiceKey::new("shop", "other")).unwrap().ips,
        ["192.0.2.201".parse::<IpAddr>().unwrap()]
    );
    let young = e.allocator().assignment(&ServiceKey::new("shop", "young")).unwrap().ips.clone();
    assert_ne!(young, ["192.0.2.205".parse::<IpAddr>().unwrap()]);
    let notes = events(&out);
    assert!(
        notes
            .iter()
            .any(|(reason, note)| *reason == reason::IP_CONFLICT && note.contains("shop/old was created first")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|(reason, note)| *reason == reason::IP_ALLOCATED && note.starts_with("moved from 192.0.2.205")),
        "{notes:?}"
    );
    // Only the young one's status changes (the others just get their condition written).
    let young_status = statuses(&out).into_iter().find(|s| s.key.name == "young").unwrap();
    assert_eq!(young_status.ingress, young);
}

#[test]
fn only_load_balancers_of_our_class_are_handled() {
    let mut e = synced(&[pool("demo", &["192.0.2.0-192.0.2.15"])]);
    let mut other_class = service("other", 1);
    other_class.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
    assert!(e.apply_service(other_class).is_empty());
    let mut cluster_ip = service("plain", 1);
    cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    assert!(e.apply_service(cluster_ip).is_empty());
    let mut ours = service("ours", 1);
    ours.spec.as_mut().unwrap().load_balancer_class = Some("ferrolb.io/lb".into());
    assert_eq!(statuses(&e.apply_service(ours)).len(), 1);

    let mut strict = Engine::new(Config { handle_unset_class: false, ..Config::default() }, clock());
    strict.apply_advertisement(&advertise_all());
    strict.apply_pool(pool("demo", &["192.0.2.0-192.0.2.15"]));
    strict.initial_sync();
    assert!(strict.apply_service(service("unset", 1)).is_empty());
}

#[test]
fn leaving_load_balancer_releases_the_address_and_clears_our_status() {
    let mut e = synced(&[pool("demo", &["192.0.2.0-192.0.2.15"])]);
    let out = e.apply_service(service("web", 1));
    let web = written(service("web", 1), statuses(&out)[0]);
    let mut now_cluster_ip = web.clone();
    now_cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    let out = e.apply_service(now_cluster_ip);
    assert_eq!(events(&out)[0].0, "IPReleased");
    let clear = statuses(&out)[0];
    assert!(clear.ingress.is_empty() && clear.condition.is_none());
    assert_eq!(e.allocator().usage("demo", Family::V4).unwrap().assigned, 0);
}

#[test]
fn a_bad_annotation_is_explained_once_and_keeps_the_address() {
    let mut e = synced(&[pool("demo", &["192.0.2.0-192.0.2.15"])]);
    let out = e.apply_service(service("web", 1));
    let web = written(service("web", 1), statuses(&out)[0]);
    let mut bad = web.clone();
    bad.metadata.annotations = Some(BTreeMap::from([("ferrolb.io/loadBalancerIPs".into(), "192.0.2.999".into())]));
    let out = e.apply_service(bad.clone());
    let status = statuses(&out)[0].clone();
    let condition = status.condition.clone().unwrap();
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("False", reason::INVALID_REQUEST));
    assert!(
        condition.message.contains("ferrolb.io/loadBalancerIPs") && condition.message.ends_with("keeps 192.0.2.0"),
        "{}",
        condition.message
    );
    assert_eq!(status.ingress, ["192.0.2.0".parse::<IpAddr>().unwrap()]);
    assert_eq!(events(&out).len(), 1);
    assert!(e.apply_service(written(bad, &status)).is_empty(), "the same failure is not reported again");
}

#[test]
fn deleting_the_pool_keeps_the_address_and_says_so() {
    let mut e = synced(&[pool("demo", &["192.0.2.0-192.0.2.15"])]);
    let out = e.apply_service(service("web", 1));
    let web = written(service("web", 1), statuses(&out)[0]);
    e.apply_service(web.clone());
    let out = e.delete_pool("demo");
    let status = statuses(&out)[0];
    assert_eq!(status.ingress, ["192.0.2.0".parse::<IpAddr>().unwrap()]);
    assert_eq!(status.condition.as_ref().unwrap().reason, reason::OUTSIDE_POOL);
    assert_eq!(events(&out).iter().map(|(reason, _)| *reason).collect::<Vec<_>>(), [reason::OUTSIDE_POOL]);
    assert!(e.reconcile_all().iter().all(|o| !matches!(o, Output::Event(_))), "reported once");
    // A new Service now has nowhere to get an address from.
    let out = e.apply_service(service("late", 2));
    assert_eq!(statuses(&out)[0].condition.as_ref().unwrap().reason, reason::NO_POOLS);
    assert_eq!(events(&out)[0].0, reason::ALLOCATION_FAILED);
}

#[test]
fn deleting_a_service_frees_its_address() {
    let mut e = synced(&[pool("demo", &["192.0.2.0-192.0.2.3"])]);
    e.apply_service(service("web", 1));
    assert_eq!(e.allocator().usage("demo", Family::V4).unwrap().assigned, 1);
    assert!(e.delete_service(&service("web", 1)).is_empty());
    assert_eq!(e.allocator().usage("demo", Family::V4).unwrap().assigned, 0);
}

#[test]
fn pool_status_counts_usage_and_flags_overlaps() {
    let mut e = synced(&[pool("a", &["192.0.2.0-192.0.2.15", "2001:db8::-2001:db8::ffff:ffff:ffff:ffff"])]);
    let out = e.apply_pool(pool("b", &["192.0.2.8-192.0.2.15"]));
    let overlap_events: Vec<&EventOut> =
        out.iter().filter_map(|o| if let Output::Event(ev) = o { Some(ev) } else { None }).collect();
    let mut named: Vec<&str> = overlap_events.iter().map(|ev| ev.regarding.name.as_deref().unwrap()).collect();
    named.sort();
    assert_eq!(named, ["a", "b"], "each overlapping pool gets a PoolOverlap Warning");
    assert!(overlap_events.iter().all(|ev| ev.reason == reason::POOL_OVERLAP && ev.type_ == EventType::Warning));
    assert!(
        e.apply_pool(pool("b", &["192.0.2.8-192.0.2.15", "192.0.2.32-192.0.2.35"]))
            .iter()
            .all(|o| !matches!(o, Output::Event(_))),
        "reported once"
    );
    e.take_pool_statuses();
    e.apply_service(service("web", 1));
    let statuses: BTreeMap<String, IPAddressPoolStatus> = e.take_pool_statuses().into_iter().collect();
    let a = &statuses["a"];
    assert_eq!(
        a.ipv4.as_ref().unwrap(),
        &UsageStatus { total: "16".into(), assigned: 1, available: "15".into(), next: Some("192.0.2.1".into()) }
    );
    assert_eq!(a.ipv6.as_ref().unwrap().total, "18446744073709551616");
    let conflicting = a.conditions.iter().find(|c| c.type_ == reason::CONFLICTING).unwrap();
    assert_eq!(conflicting.status, "True");
    assert!(conflicting.message.contains("overlaps pool b"));
    assert!(!statuses.contains_key("b"), "b holds none of the changed addresses");
}

#[test]
fn an_invalid_pool_is_reported_and_serves_nothing() {
    let mut e = synced(&[]);
    let out = e.apply_pool(pool("bad", &["2001:db8::9-2001:db8::1"]));
    assert_eq!(
        events(&out),
        [(
            reason::INVALID_POOL,
            "range \"2001:db8::9-2001:db8::1\" is reversed: its first address comes after its last; the pool hands out no address until it is fixed"
        )]
    );
    let status = e.take_pool_statuses().into_iter().find(|(n, _)| n == "bad").unwrap().1;
    assert_eq!(status.conditions[0].reason, reason::INVALID_ADDRESSES);
    assert!(e.apply_pool(pool("bad", &["2001:db8::9-2001:db8::1"])).is_empty(), "reported once");
}

#[test]
fn an_address_no_advertisement_announces_is_allocated_and_the_service_says_so() {
    let mut e = engine();
    e.apply_pool(pool("quiet", &["192.0.2.0-192.0.2.15"]));
    e.initial_sync();
    let out = e.apply_service(service("web", 1));
    let condition = statuses(&out)[0].condition.clone().unwrap();
    assert_eq!(condition.status, "True");
    assert!(
        condition
            .message
            .ends_with("no L2Advertisement or BGPAdvertisement selects pool \"quiet\", so no node announces it"),
        "{}",
        condition.message
    );
    let web = written(service("web", 1), statuses(&out)[0]);
    e.apply_service(web);
    // An advertisement naming the pool clears the notice.
    let named = L2Advertisement::new(
        "named",
        L2AdvertisementSpec { ip_address_pools: vec!["quiet".into()], ..Default::default() },
    );
    let mut by_bgp = engine();
    by_bgp.apply_pool(pool("quiet", &["192.0.2.0-192.0.2.15"]));
    by_bgp.initial_sync();
    let first = by_bgp.apply_service(service("web", 1));
    by_bgp.apply_service(written(service("web", 1), statuses(&first)[0]));
    let out = e.apply_advertisement(&named);
    assert_eq!(statuses(&out)[0].condition.as_ref().unwrap().message, "192.0.2.0 from pool \"quiet\"");
    // So does a BGPAdvertisement (BGP mode announces the pool), and deleting it brings the notice back.
    let bgp = ferrolb_crds::BGPAdvertisement::new(
        "bgp",
        ferrolb_crds::BGPAdvertisementSpec { ip_address_pools: vec!["quiet".into()], ..Default::default() },
    );
    let out = by_bgp.apply_bgp_advertisement(&bgp);
    assert_eq!(statuses(&out)[0].condition.as_ref().unwrap().message, "192.0.2.0 from pool \"quiet\"");
    by_bgp.apply_service(written(service("web", 1), statuses(&out)[0]));
    let out = by_bgp.delete_advertisement(crate::engine::BGP_ADVERTISEMENT, "bgp");
    assert!(statuses(&out)[0].condition.as_ref().unwrap().message.ends_with("so no node announces it"));
    // One selecting other pools by label does not count.
    let mut e2 = engine();
    e2.apply_pool(pool("quiet", &["192.0.2.0-192.0.2.15"]));
    e2.apply_advertisement(&L2Advertisement::new(
        "labelled",
        L2AdvertisementSpec {
            ip_address_pool_selectors: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some([("tier".to_string(), "edge".to_string())].into()),
                ..Default::default()
            }],
            ..Default::default()
        },
    ));
    e2.initial_sync();
    let out = e2.apply_service(service("web", 1));
    assert!(
        statuses(&out)[0]
            .condition
            .as_ref()
            .unwrap()
            .message
            .contains("no L2Advertisement or BGPAdvertisement selects")
    );
}

#[test]
fn a_pool_status_update_does_not_resettle_every_service() {
    let mut e = synced(&[pool("demo", &["192.0.2.0-192.0.2.15"])]);
    // The stored Service never shows our status, so any re-settling would emit a status write for it.
    e.apply_service(service("web", 1));
    let mut with_status = pool("demo", &["192.0.2.0-192.0.2.15"]);
    with_status.status = Some(IPAddressPoolStatus { observed_generation: Some(1), ..Default::default() });
    assert!(e.apply_pool(with_status).is_empty(), "our own pool status write re-settled the Services");
    // A real edit does re-settle them.
    let out = e.apply_pool(pool("demo", &["192.0.2.0-192.0.2.7"]));
    assert_eq!(statuses(&out).len(), 1);
    assert_eq!(e.allocator().pool("demo").unwrap().usable(Family::V4), 8);
}

#[test]
fn status_written_by_another_instance_is_left_alone() {
    let mut e = synced(&[pool("demo", &["192.0.2.0-192.0.2.15"])]);
    // A Service of another class carrying another instance's address and condition.
    let mut theirs = with_status(service("theirs", 1), &["198.51.100.7"]);
    theirs.spec.as_mut().unwrap().load_balancer_class = Some("other.example/lb".into());
    theirs.status.as_mut().unwrap().conditions = Some(vec![Condition {
        type_: CONDITION_TYPE.into(),
        status: "True".into(),
        reason: reason::ALLOCATED.into(),
        message: "198.51.100.7 from pool \"elsewhere\"".into(),
        last_transition_time: Time(jiff::Timestamp::from_second(1).unwrap()),
        observed_generation: None,
    }]);
    assert!(e.apply_service(theirs).is_empty());
}

#[test]
fn a_requested_address_is_reported_as_requested() {
    let mut e = synced(&[pool("demo", &["192.0.2.0-192.0.2.15"])]);
    let mut asks = service("asks", 1);
    asks.metadata.annotations = Some(BTreeMap::from([("ferrolb.io/loadBalancerIPs".into(), "192.0.2.9".into())]));
    let out = e.apply_service(asks);
    let condition = statuses(&out)[0].condition.clone().unwrap();
    assert_eq!(
        (condition.reason.as_str(), condition.message.as_str()),
        (reason::REQUESTED, "192.0.2.9 from pool \"demo\"")
    );
}

fn annotated(mut service: Service, key: &str, value: &str) -> Service {
    service.metadata.annotations.get_or_insert_with(Default::default).insert(key.into(), value.into());
    service
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Feeds `outputs` back as the watches would show them: each status write lands on the stored Service, which
/// the engine then sees again (until nothing more is written).
fn settle(e: &mut Engine, stored: &mut BTreeMap<ServiceKey, Service>, mut outputs: Vec<Output>) -> Vec<Output> {
    let mut all = Vec::new();
    for _ in 0..10 {
        let mut next = Vec::new();
        for output in &outputs {
            if let Output::Status(status) = output
                && let Some(service) = stored.get(&status.key).cloned()
            {
                let updated = written(service, status);
                stored.insert(status.key.clone(), updated.clone());
                next.extend(e.apply_service(updated));
            }
        }
        all.append(&mut outputs);
        if next.is_empty() {
            return all;
        }
        outputs = next;
    }
    panic!("status writes never settle");
}

/// A new engine fed the stored objects, as a restarted controller (or a new leader) sees them.
fn restarted(pools: &[IPAddressPool], stored: &mut BTreeMap<ServiceKey, Service>) -> (Engine, Vec<Output>) {
    let mut e = engine();
    e.apply_advertisement(&advertise_all());
    for p in pools {
        e.apply_pool(p.clone());
    }
    for s in stored.values() {
        e.apply_service(s.clone());
    }
    let out = e.initial_sync();
    let out = settle(&mut e, stored, out);
    (e, out)
}

fn held(stored: &BTreeMap<ServiceKey, Service>, name: &str) -> Vec<IpAddr> {
    ingress_ips(&stored[&ServiceKey::new("shop", name)])
}

#[test]
fn a_restart_after_the_pool_shrank_keeps_the_address_and_its_pool() {
    let mut e = synced(&[pool("p", &["2001:db8::2a0-2001:db8::2af"])]);
    let mut stored = BTreeMap::new();
    let mut web = annotated(service("web", 1), "ferrolb.io/address-pool", "p");
    web.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into()]);
    stored.insert(key_of(&web), web.clone());
    let out = e.apply_service(web);
    settle(&mut e, &mut stored, out);
    assert_eq!(held(&stored, "web"), [ip("2001:db8::2a0")]);
    let origin = ferrolb_crds::service::origin_pool(&stored[&ServiceKey::new("shop", "web")]);
    assert_eq!(origin.as_deref(), Some("p"), "the pool is recorded on the Service");

    let shrunk = pool("p", &["2001:db8::2a5-2001:db8::2af"]);
    let out = e.apply_pool(shrunk.clone());
    settle(&mut e, &mut stored, out);
    assert_eq!(held(&stored, "web"), [ip("2001:db8::2a0")]);

    let (_, out) = restarted(&[shrunk], &mut stored);
    assert_eq!(held(&stored, "web"), [ip("2001:db8::2a0")], "a restart moved it");
    assert!(!events(&out).iter().any(|(reason, _)| *reason == reason::IP_ALLOCATED), "{:?}", events(&out));
    let condition = ferrolb_crds::service::condition(&stored[&ServiceKey::new("shop", "web")], CONDITION_TYPE).unwrap();
    assert_eq!(condition.reason, reason::OUTSIDE_POOL);
    assert!(condition.message.contains("still announced through L2Advertisement all"), "{}", condition.message);
}

#[test]
fn a_restart_with_overlapping_pools_keeps_every_address() {
    // "b" asks for pool "b", whose addresses "a" (first by name) also covers.
    let pools = [pool("a", &["2001:db8::240-2001:db8::24f"]), pool("b", &["2001:db8::248-2001:db8::24f"])];
    let mut e = engine();
    e.apply_advertisement(&advertise_all());
    for p in &pools {
        e.apply_pool(p.clone());
    }
    e.initial_sync();
    let mut stored = BTreeMap::new();
    for (name, created) in [("first", 1), ("second", 2)] {
        let mut s = annotated(service(name, created), "ferrolb.io/address-pool", "b");
        s.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into()]);
        stored.insert(key_of(&s), s.clone());
        let out = e.apply_service(s);
        settle(&mut e, &mut stored, out);
    }
    let before = (held(&stored, "first"), held(&stored, "second"));
    assert_eq!(before.0, [ip("2001:db8::248")]);
    restarted(&pools, &mut stored);
    assert_eq!((held(&stored, "first"), held(&stored, "second")), before);

    // A status written before pools were recorded: the requested pool is taken at its word.
    for service in stored.values_mut() {
        service.status.as_mut().unwrap().conditions.as_mut().unwrap().retain(|c| c.type_ != POOL_CONDITION);
    }
    restarted(&pools, &mut stored);
    assert_eq!((held(&stored, "first"), held(&stored, "second")), before);
}

#[test]
fn the_next_fit_cursor_survives_a_restart() {
    let mut demo = pool("demo", &["192.0.2.200-192.0.2.210"]);
    let mut e = synced(std::slice::from_ref(&demo));
    let mut stored = BTreeMap::new();
    for (name, created) in [("one", 1), ("two", 2)] {
        let s = service(name, created);
        stored.insert(key_of(&s), s.clone());
        let out = e.apply_service(s);
        settle(&mut e, &mut stored, out);
    }
    assert_eq!(held(&stored, "two"), [ip("192.0.2.201")]);
    let two = stored.remove(&ServiceKey::new("shop", "two")).unwrap();
    e.delete_service(&two);
    let (_, status) = e.take_pool_statuses().into_iter().find(|(n, _)| n == "demo").unwrap();
    assert_eq!(status.ipv4.as_ref().unwrap().next.as_deref(), Some("192.0.2.202"));
    demo.status = Some(status);

    let (mut e, _) = restarted(&[demo], &mut stored);
    let three = service("three", 3);
    stored.insert(key_of(&three), three.clone());
    let out = e.apply_service(three);
    settle(&mut e, &mut stored, out);
    assert_eq!(held(&stored, "three"), [ip("192.0.2.202")], "the just-released .201 was handed out again");
}

#[test]
fn addresses_of_the_cluster_itself_are_never_handed_out() {
    let mut e = engine();
    e.apply_advertisement(&advertise_all());
    e.apply_pool(pool("lan", &["192.0.2.1-192.0.2.3", "198.18.0.9"]));
    e.apply_node("node-1", vec![ip("192.0.2.1"), ip("2001:db8::1")]);
    e.apply_service_cidr("kubernetes", vec!["198.18.0.0/16".into()]);
    let out = e.initial_sync();
    let warned: Vec<&str> =
        events(&out).into_iter().filter(|(r, _)| *r == reason::POOL_OVERLAPS_CLUSTER).map(|(_, n)| n).collect();
    assert_eq!(warned.len(), 1, "{:?}", events(&out));
    assert!(warned[0].contains("192.0.2.1 (the address of Node node-1)"), "{}", warned[0]);
    assert!(warned[0].contains("in Service CIDR 198.18.0.0/16"), "{}", warned[0]);
    let status = e.take_pool_statuses().into_iter().find(|(n, _)| n == "lan").unwrap().1;
    let overlap = status.conditions.iter().find(|c| c.type_ == reason::OVERLAPS_CLUSTER).unwrap();
    assert_eq!((overlap.status.as_str(), overlap.reason.as_str()), ("True", reason::LISTS_CLUSTER_ADDRESSES));
    assert_eq!(status.ipv4.as_ref().unwrap().total, "2", "the node's and the Service CIDR's addresses are not counted");

    let out = e.apply_service(service("auto", 1));
    assert_eq!(statuses(&out)[0].ingress, [ip("192.0.2.2")]);
    let asks = annotated(service("asks", 2), "ferrolb.io/loadBalancerIPs", "192.0.2.1");
    let condition = statuses(&e.apply_service(asks))[0].condition.clone().unwrap();
    assert_eq!(condition.reason, reason::REQUESTED_IP_RESERVED);
    assert!(
        condition.message.contains("192.0.2.1 is never handed out: it is the address of Node node-1"),
        "{}",
        condition.message
    );
    let cluster_ip = annotated(service("cluster-ip", 3), "ferrolb.io/loadBalancerIPs", "198.18.0.9");
    let condition = statuses(&e.apply_service(cluster_ip))[0].condition.clone().unwrap();
    assert!(condition.message.contains("in Service CIDR 198.18.0.0/16"), "{}", condition.message);

    // A Node that takes an address a Service already holds: the Service keeps it but is told it cannot work.
    let out = e.apply_node("node-2", vec![ip("192.0.2.2")]);
    let condition = statuses(&out)[0].condition.clone().unwrap();
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("False", reason::RESERVED_ADDRESS));
    assert_eq!(statuses(&out)[0].ingress, [ip("192.0.2.2")]);
    assert!(events(&out).iter().any(|(r, _)| *r == reason::RESERVED_ADDRESS));
}

#[test]
fn special_addresses_are_never_handed_out_even_from_everything() {
    let mut e = synced(&[pool("everything", &["0.0.0.0/0", "::/0"])]);
    let mut dual = service("dual", 1);
    dual.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
    dual.spec.as_mut().unwrap().ip_family_policy = Some("RequireDualStack".into());
    let out = e.apply_service(dual);
    assert_eq!(statuses(&out)[0].ingress, [ip("1.0.0.0"), ip("::2")]);
    for never in ["0.0.0.0", "127.0.0.1", "255.255.255.255", "::", "::1", "ff02::1"] {
        let mut asks = annotated(service(never, 2), "ferrolb.io/loadBalancerIPs", never);
        asks.spec.as_mut().unwrap().ip_families = Some(vec![if never.contains(':') { "IPv6" } else { "IPv4" }.into()]);
        let condition = statuses(&e.apply_service(asks))[0].condition.clone().unwrap();
        assert_eq!(condition.reason, reason::REQUESTED_IP_RESERVED, "{never}: {}", condition.message);
    }
}

#[test]
fn a_pool_with_an_invalid_selector_is_not_ready_and_services_are_told() {
    let mut e = synced(&[]);
    let mut spec = IPAddressPoolSpec::with_addresses(&["192.0.2.1-192.0.2.9"]);
    spec.service_allocation = Some(
        serde_json::from_value(serde_json::json!({
            "serviceSelectors": [{"matchExpressions": [{"key": "tier", "operator": "Equals", "values": ["web"]}]}]
        }))
        .unwrap(),
    );
    let out = e.apply_pool(IPAddressPool::new("picky", spec));
    assert_eq!(events(&out)[0].0, reason::INVALID_POOL);
    let status = e.take_pool_statuses().into_iter().find(|(n, _)| n == "picky").unwrap().1;
    let ready = &status.conditions[0];
    assert_eq!(
        (ready.type_.as_str(), ready.status.as_str(), ready.reason.as_str()),
        (reason::READY, "False", reason::INVALID_SELECTOR)
    );
    assert!(ready.message.contains("serviceAllocation.serviceSelectors[0] is invalid"), "{}", ready.message);
    let condition = statuses(&e.apply_service(service("web", 1)))[0].condition.clone().unwrap();
    assert_eq!(condition.reason, reason::NO_POOLS);
    assert!(condition.message.contains("not used because invalid: pool \"picky\""), "{}", condition.message);
}

#[test]
fn a_kept_address_nothing_can_announce_is_said_to_be_unreachable() {
    let mut e = synced(&[pool("p", &["192.0.2.1-192.0.2.9"])]);
    let mut stored = BTreeMap::new();
    let web = service("web", 1);
    stored.insert(key_of(&web), web.clone());
    let out = e.apply_service(web);
    settle(&mut e, &mut stored, out);
    // Announced through "all" (selects every pool, by name too once the pool is gone).
    let out = e.delete_pool("p");
    settle(&mut e, &mut stored, out);
    let condition =
        ferrolb_crds::service::condition(&stored[&ServiceKey::new("shop", "web")], CONDITION_TYPE).unwrap().clone();
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("True", reason::OUTSIDE_POOL));
    assert!(condition.message.contains("pool \"p\", which it came from, was deleted"), "{}", condition.message);
    // With only an advertisement for another pool, nothing announces it any more.
    let mut out = e.delete_advertisement(crate::engine::L2_ADVERTISEMENT, "all");
    let other =
        L2Advertisement::new("other", L2AdvertisementSpec { ip_address_pools: vec!["q".into()], ..Default::default() });
    out.extend(e.apply_advertisement(&other));
    let out = settle(&mut e, &mut stored, out);
    let condition =
        ferrolb_crds::service::condition(&stored[&ServiceKey::new("shop", "web")], CONDITION_TYPE).unwrap().clone();
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("False", reason::OUTSIDE_POOL_UNANNOUNCED));
    assert!(condition.message.contains("the address is unreachable"), "{}", condition.message);
    assert!(events(&out).iter().any(|(r, n)| *r == reason::OUTSIDE_POOL && n.contains("unreachable")));
    assert_eq!(held(&stored, "web"), [ip("192.0.2.1")]);
}

mod sticky {
    //! Whatever the pools do and however often the controller restarts, a Service's addresses change only
    //! when its own request changes.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Ask {
        Anything,
        Pool(usize),
        Ip(u8),
    }

    #[derive(Debug, Clone)]
    enum Op {
        SetPool(usize, Vec<(u8, u8)>),
        DeletePool(usize),
        AddService(usize, Ask),
        ChangeRequest(usize, Ask),
        DeleteService(usize),
        Restart,
    }

    const POOLS: usize = 3;
    const SERVICES: usize = 6;

    fn ask() -> impl Strategy<Value = Ask> {
        prop_oneof![Just(Ask::Anything), (0..POOLS).prop_map(Ask::Pool), (0u8..32).prop_map(Ask::Ip)]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => ((0..POOLS), proptest::collection::vec((0u8..32, 0u8..8), 1..3)).prop_map(|(p, r)| Op::SetPool(p, r)),
            1 => (0..POOLS).prop_map(Op::DeletePool),
            3 => ((0..SERVICES), ask()).prop_map(|(s, a)| Op::AddService(s, a)),
            1 => ((0..SERVICES), ask()).prop_map(|(s, a)| Op::ChangeRequest(s, a)),
            1 => (0..SERVICES).prop_map(Op::DeleteService),
            2 => Just(Op::Restart),
        ]
    }

    fn asking(name: &str, created: i64, ask: &Ask) -> Service {
        let s = service(name, created);
        match ask {
            Ask::Anything => s,
            Ask::Pool(p) => annotated(s, "ferrolb.io/address-pool", &format!("pool-{p}")),
            Ask::Ip(offset) => annotated(s, "ferrolb.io/loadBalancerIPs", &format!("192.0.2.{}", 100 + offset)),
        }
    }

    fn pool_of(index: usize, runs: &[(u8, u8)]) -> IPAddressPool {
        let entries: Vec<String> =
            runs.iter().map(|(s, l)| format!("192.0.2.{}-192.0.2.{}", 100 + s, 100 + s + l)).collect();
        let entries: Vec<&str> = entries.iter().map(String::as_str).collect();
        pool(&format!("pool-{index}"), &entries)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
        #[test]
        fn no_address_changes_unless_its_own_request_changes(ops in proptest::collection::vec(op(), 1..40)) {
            let mut pools: BTreeMap<usize, IPAddressPool> = BTreeMap::new();
            let mut stored: BTreeMap<ServiceKey, Service> = BTreeMap::new();
            let mut e = synced(&[]);
            let mut clock = 10;
            for op in ops {
                // A Service still waiting for what it asked (its condition False for want of it) may yet get it.
                let waiting = |s: &Service| {
                    ferrolb_crds::service::condition(s, CONDITION_TYPE).is_some_and(|c| {
                        c.status == "False" && !matches!(c.reason.as_str(), reason::OUTSIDE_POOL_UNANNOUNCED | reason::RESERVED_ADDRESS)
                    })
                };
                let before: BTreeMap<ServiceKey, Vec<IpAddr>> =
                    stored.iter().filter(|(_, s)| !waiting(s)).map(|(k, s)| (k.clone(), ingress_ips(s))).collect();
                let mut asked_again: Option<ServiceKey> = None;
                let out = match &op {
                    Op::SetPool(index, runs) => {
                        let p = pool_of(*index, runs);
                        pools.insert(*index, p.clone());
                        e.apply_pool(p)
                    }
                    Op::DeletePool(index) => match pools.remove(index) {
                        Some(_) => e.delete_pool(&format!("pool-{index}")),
                        None => Vec::new(),
                    },
                    Op::AddService(index, ask) => {
                        let name = format!("svc-{index}");
                        if stored.contains_key(&ServiceKey::new("shop", &name)) {
                            Vec::new()
                        } else {
                            clock += 1;
                            let s = asking(&name, clock, ask);
                            stored.insert(key_of(&s), s.clone());
                            e.apply_service(s)
                        }
                    }
                    Op::ChangeRequest(index, ask) => {
                        let key = ServiceKey::new("shop", format!("svc-{index}"));
                        match stored.get(&key).cloned() {
                            Some(current) => {
                                let mut changed = asking(&key.name, 0, ask);
                                changed.metadata.creation_timestamp = current.metadata.creation_timestamp.clone();
                                changed.status = current.status.clone();
                                stored.insert(key.clone(), changed.clone());
                                asked_again = Some(key);
                                e.apply_service(changed)
                            }
                            None => Vec::new(),
                        }
                    }
                    Op::DeleteService(index) => {
                        match stored.remove(&ServiceKey::new("shop", format!("svc-{index}"))) {
                            Some(s) => e.delete_service(&s),
                            None => Vec::new(),
                        }
                    }
                    Op::Restart => {
                        let pool_objects: Vec<IPAddressPool> = pools.values().cloned().collect();
                        let (fresh, _) = restarted(&pool_objects, &mut stored);
                        e = fresh;
                        Vec::new()
                    }
                };
                settle(&mut e, &mut stored, out);
                // Pool status as the writer would store it (next-fit cursors included).
                for (name, status) in e.take_pool_statuses() {
                    if let Some(p) = pools.values_mut().find(|p| p.name_any() == name) {
                        p.status = Some(status);
                        prop_assert!(e.apply_pool(p.clone()).is_empty());
                    }
                }
                let mut seen: BTreeMap<IpAddr, ServiceKey> = BTreeMap::new();
                for (key, service) in &stored {
                    let now = ingress_ips(service);
                    for ip in &now {
                        prop_assert!(seen.insert(*ip, key.clone()).is_none(), "{ip} given twice after {op:?}");
                    }
                    let had = before.get(key).cloned().unwrap_or_default();
                    if !had.is_empty() && asked_again.as_ref() != Some(key) {
                        prop_assert_eq!(&now, &had, "{} moved after {:?}", key, op);
                    }
                }
            }
        }
    }
}

#[test]
fn held_addresses_and_pending_services_are_counted_for_metrics() {
    let mut e = engine();
    e.apply_pool(pool("quiet", &["192.0.2.1"]));
    e.initial_sync();
    e.apply_service(service("first", 1));
    e.apply_service(service("second", 2));
    let first = ServiceKey::new("shop", "first");
    assert_eq!(e.held_addresses().collect::<Vec<_>>(), [(&first, ip("192.0.2.1"), "quiet", false)]);
    assert_eq!(e.pending_services(), 1);
    e.apply_advertisement(&advertise_all());
    assert!(e.held_addresses().all(|held| held.3), "announced once an advertisement selects the pool");
}

#[test]
fn a_freed_address_goes_to_a_waiting_service_at_once() {
    let mut e = synced(&[pool("one", &["192.0.2.1"])]);
    let first = service("first", 1);
    e.apply_service(first.clone());
    let out = e.apply_service(service("second", 2));
    assert_eq!(statuses(&out)[0].condition.as_ref().unwrap().reason, reason::POOL_EXHAUSTED);
    let out = e.delete_service(&first);
    let second = statuses(&out).into_iter().find(|s| s.key.name == "second").expect("the waiting Service is settled");
    assert_eq!(second.ingress, [ip("192.0.2.1")]);
}

#[test]
fn a_new_service_cidr_tells_every_service_holding_an_address_inside_it() {
    let mut e = synced(&[pool("p", &["198.18.0.5-198.18.0.9"])]);
    e.apply_service(service("first", 1));
    e.apply_service(service("second", 2));
    let out = e.apply_service_cidr("kubernetes", vec!["198.18.0.0/16".into()]);
    let reasons: Vec<(&str, &str)> = statuses(&out)
        .iter()
        .map(|s| (s.key.name.as_str(), s.condition.as_ref().map(|c| c.reason.as_str()).unwrap_or_default()))
        .collect();
    assert_eq!(reasons, [("first", reason::RESERVED_ADDRESS), ("second", reason::RESERVED_ADDRESS)]);
}

#[test]
fn the_change_count_moves_with_services_and_not_with_quiet_resyncs() {
    let mut e = synced(&[pool("demo", &["192.0.2.1-192.0.2.9"])]);
    let mut stored = BTreeMap::new();
    let web = service("web", 1);
    stored.insert(key_of(&web), web.clone());
    let before = e.changes();
    let out = e.apply_service(web.clone());
    settle(&mut e, &mut stored, out);
    assert!(e.changes() > before, "an allocation is a change");
    let settled = e.changes();
    assert!(e.reconcile_all().is_empty());
    assert_eq!(e.changes(), settled, "a resync that writes nothing changes nothing");
    e.delete_service(&web);
    assert!(e.changes() > settled, "a deletion is a change");
}
