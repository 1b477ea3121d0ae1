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
    current.conditions = status.condition.clone().map(|c| vec![c]);
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
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("True", "Allocated"));
    assert_eq!(condition.message, "192.0.2.200 from pool \"demo\"");
    assert_eq!(events(&out), [("IPAllocated", "assigned 192.0.2.200 from pool \"demo\"")]);
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
        notes.iter().any(|(reason, note)| *reason == "IPConflict" && note.contains("shop/old was created first")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|(reason, note)| *reason == "IPAllocated" && note.starts_with("moved from 192.0.2.205")),
        "{notes:?}"
    );
    // Only the young one's status changes (the others just get their condition written).
    let young_status = statuses(&out).into_iter().find(|s| s.key.name == "young").unwrap();
    assert_eq!(young_status.ingress, young);
}

#[test]
fn only_load_balancers_of_our_class_are_handled() {
    let mut e = synced(&[pool("demo", &["192.0.2.0/28"])]);
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
    strict.apply_pool(pool("demo", &["192.0.2.0/28"]));
    strict.initial_sync();
    assert!(strict.apply_service(service("unset", 1)).is_empty());
}

#[test]
fn leaving_load_balancer_releases_the_address_and_clears_our_status() {
    let mut e = synced(&[pool("demo", &["192.0.2.0/28"])]);
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
    let mut e = synced(&[pool("demo", &["192.0.2.0/28"])]);
    let out = e.apply_service(service("web", 1));
    let web = written(service("web", 1), statuses(&out)[0]);
    let mut bad = web.clone();
    bad.metadata.annotations = Some(BTreeMap::from([("ferrolb.io/loadBalancerIPs".into(), "192.0.2.999".into())]));
    let out = e.apply_service(bad.clone());
    let status = statuses(&out)[0].clone();
    let condition = status.condition.clone().unwrap();
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("False", "InvalidRequest"));
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
    let mut e = synced(&[pool("demo", &["192.0.2.0/28"])]);
    let out = e.apply_service(service("web", 1));
    let web = written(service("web", 1), statuses(&out)[0]);
    e.apply_service(web.clone());
    let out = e.delete_pool("demo");
    let status = statuses(&out)[0];
    assert_eq!(status.ingress, ["192.0.2.0".parse::<IpAddr>().unwrap()]);
    assert_eq!(status.condition.as_ref().unwrap().reason, "OutsidePool");
    assert_eq!(events(&out).iter().map(|(reason, _)| *reason).collect::<Vec<_>>(), ["OutsidePool"]);
    assert!(e.reconcile_all().iter().all(|o| !matches!(o, Output::Event(_))), "reported once");
    // A new Service now has nowhere to get an address from.
    let out = e.apply_service(service("late", 2));
    assert_eq!(statuses(&out)[0].condition.as_ref().unwrap().reason, "NoPools");
    assert_eq!(events(&out)[0].0, "AllocationFailed");
}

#[test]
fn deleting_a_service_frees_its_address() {
    let mut e = synced(&[pool("demo", &["192.0.2.0/30"])]);
    e.apply_service(service("web", 1));
    assert_eq!(e.allocator().usage("demo", Family::V4).unwrap().assigned, 1);
    assert!(e.delete_service(&service("web", 1)).is_empty());
    assert_eq!(e.allocator().usage("demo", Family::V4).unwrap().assigned, 0);
}

#[test]
fn pool_status_counts_usage_and_flags_overlaps() {
    let mut e = synced(&[pool("a", &["192.0.2.0/28", "2001:db8::/64"])]);
    let out = e.apply_pool(pool("b", &["192.0.2.8/29"]));
    let overlap_events: Vec<&EventOut> =
        out.iter().filter_map(|o| if let Output::Event(ev) = o { Some(ev) } else { None }).collect();
    let mut named: Vec<&str> = overlap_events.iter().map(|ev| ev.regarding.name.as_deref().unwrap()).collect();
    named.sort();
    assert_eq!(named, ["a", "b"], "each overlapping pool gets a PoolOverlap Warning");
    assert!(overlap_events.iter().all(|ev| ev.reason == "PoolOverlap" && ev.type_ == EventType::Warning));
    assert!(
        e.apply_pool(pool("b", &["192.0.2.8/29", "192.0.2.32/30"])).iter().all(|o| !matches!(o, Output::Event(_))),
        "reported once"
    );
    e.take_pool_statuses();
    e.apply_service(service("web", 1));
    let statuses: BTreeMap<String, IPAddressPoolStatus> = e.take_pool_statuses().into_iter().collect();
    let a = &statuses["a"];
    assert_eq!(a.ipv4.as_ref().unwrap(), &UsageStatus { total: "16".into(), assigned: 1, available: "15".into() });
    assert_eq!(a.ipv6.as_ref().unwrap().total, "18446744073709551616");
    let conflicting = a.conditions.iter().find(|c| c.type_ == "Conflicting").unwrap();
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
            "InvalidPool",
            "range \"2001:db8::9-2001:db8::1\" is reversed: its first address comes after its last; the pool hands out no address until it is fixed"
        )]
    );
    let status = e.take_pool_statuses().into_iter().find(|(n, _)| n == "bad").unwrap().1;
    assert_eq!(status.conditions[0].reason, "InvalidAddresses");
    assert!(e.apply_pool(pool("bad", &["2001:db8::9-2001:db8::1"])).is_empty(), "reported once");
}

#[test]
fn an_address_no_advertisement_announces_is_allocated_and_the_service_says_so() {
    let mut e = engine();
    e.apply_pool(pool("quiet", &["192.0.2.0/28"]));
    e.initial_sync();
    let out = e.apply_service(service("web", 1));
    let condition = statuses(&out)[0].condition.clone().unwrap();
    assert_eq!(condition.status, "True");
    assert!(
        condition.message.ends_with("no L2Advertisement selects pool \"quiet\", so no node announces it"),
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
    let out = e.apply_advertisement(&named);
    assert_eq!(statuses(&out)[0].condition.as_ref().unwrap().message, "192.0.2.0 from pool \"quiet\"");
    // One selecting other pools by label does not count.
    let mut e2 = engine();
    e2.apply_pool(pool("quiet", &["192.0.2.0/28"]));
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
    assert!(statuses(&out)[0].condition.as_ref().unwrap().message.contains("no L2Advertisement selects"));
}

#[test]
fn a_pool_status_update_does_not_resettle_every_service() {
    let mut e = synced(&[pool("demo", &["192.0.2.0/28"])]);
    // The stored Service never shows our status, so any re-settling would emit a status write for it.
    e.apply_service(service("web", 1));
    let mut with_status = pool("demo", &["192.0.2.0/28"]);
    with_status.status = Some(IPAddressPoolStatus { observed_generation: Some(1), ..Default::default() });
    assert!(e.apply_pool(with_status).is_empty(), "our own pool status write re-settled the Services");
    // A real edit does re-settle them.
    let out = e.apply_pool(pool("demo", &["192.0.2.0/29"]));
    assert_eq!(statuses(&out).len(), 1);
    assert_eq!(e.allocator().pool("demo").unwrap().usable(Family::V4), 8);
}

#[test]
fn status_written_by_another_instance_is_left_alone() {
    let mut e = synced(&[pool("demo", &["192.0.2.0/28"])]);
    // A Service of another class carrying another instance's address and condition.
    let mut theirs = with_status(service("theirs", 1), &["198.51.100.7"]);
    theirs.spec.as_mut().unwrap().load_balancer_class = Some("other.example/lb".into());
    theirs.status.as_mut().unwrap().conditions = Some(vec![Condition {
        type_: CONDITION_TYPE.into(),
        status: "True".into(),
        reason: "Allocated".into(),
        message: "198.51.100.7 from pool \"elsewhere\"".into(),
        last_transition_time: Time(jiff::Timestamp::from_second(1).unwrap()),
        observed_generation: None,
    }]);
    assert!(e.apply_service(theirs).is_empty());
}

#[test]
fn a_requested_address_is_reported_as_requested() {
    let mut e = synced(&[pool("demo", &["192.0.2.0/28"])]);
    let mut asks = service("asks", 1);
    asks.metadata.annotations = Some(BTreeMap::from([("ferrolb.io/loadBalancerIPs".into(), "192.0.2.9".into())]));
    let out = e.apply_service(asks);
    let condition = statuses(&out)[0].condition.clone().unwrap();
    assert_eq!((condition.reason.as_str(), condition.message.as_str()), ("Requested", "192.0.2.9 from pool \"demo\""));
}
