use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use proptest::prelude::*;

use super::*;
use crate::ipam::pool::Restrictions;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pool(name: &str, entries: &[&str]) -> PoolDef {
    PoolDef::from_entries(name, entries).unwrap()
}

fn v4(namespace: &str, name: &str) -> ServiceRequest {
    ServiceRequest::simple(namespace, name, FamilyPolicy::Single(Family::V4))
}

fn allocator(pools: Vec<PoolDef>) -> Allocator {
    let mut allocator = Allocator::new();
    for pool in pools {
        allocator.upsert_pool(pool);
    }
    allocator
}

#[test]
fn first_service_gets_the_first_address_of_the_first_pool_by_name() {
    let mut a = allocator(vec![pool("b", &["198.51.100.0-198.51.100.3"]), pool("a", &["192.0.2.10-192.0.2.12"])]);
    let got = a.assign(&v4("ns", "s1")).unwrap();
    assert_eq!(got, Assignment { pool: Some("a".into()), ips: vec![ip("192.0.2.10")] });
    assert_eq!(a.assign(&v4("ns", "s2")).unwrap().ips, [ip("192.0.2.11")]);
    // Asking again changes nothing.
    assert_eq!(a.assign(&v4("ns", "s1")).unwrap().ips, [ip("192.0.2.10")]);
}

#[test]
fn restricted_pools_come_first_by_priority_then_name() {
    let restricted = |name: &str, entries: &[&str], priority: Option<i32>| {
        let mut p = pool(name, entries);
        p.restrictions = Some(Restrictions { priority, namespaces: vec!["shop".into()], ..Default::default() });
        p
    };
    let mut a = allocator(vec![
        pool("aaa-open", &["192.0.2.1"]),
        restricted("zz-first", &["192.0.2.2"], Some(1)),
        restricted("yy-second", &["192.0.2.3"], Some(5)),
        restricted("xx-unprioritised", &["192.0.2.4"], None),
    ]);
    let order: Vec<IpAddr> = (0..4).map(|i| a.assign(&v4("shop", &format!("s{i}"))).unwrap().ips[0]).collect();
    assert_eq!(order, [ip("192.0.2.2"), ip("192.0.2.3"), ip("192.0.2.4"), ip("192.0.2.1")]);
    // Another namespace matches no restriction: only the open pool serves it, and it is full.
    let error = a.assign(&v4("other", "s")).unwrap_err();
    assert_eq!(error.reason(), ferrolb_crds::reason::POOL_EXHAUSTED, "{error}");
}

#[test]
fn namespace_and_service_selectors_restrict_pools() {
    let mut blue = pool("blue", &["192.0.2.0-192.0.2.3"]);
    blue.restrictions = Some(Restrictions {
        namespace_selectors: vec![LabelSelector {
            match_labels: Some([("team".into(), "blue".into())].into()),
            ..Default::default()
        }],
        service_selectors: vec![LabelSelector {
            match_labels: Some([("tier".into(), "edge".into())].into()),
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut a = allocator(vec![blue]);
    let mut request = v4("ns", "s");
    let error = a.assign(&request).unwrap_err();
    assert!(matches!(&error, AllocError::NoEligiblePool(why) if why.contains("namespaceSelectors")), "{error}");
    request.namespace_labels = BTreeMap::from([("team".into(), "blue".into())]);
    let error = a.assign(&request).unwrap_err();
    assert!(error.to_string().contains("serviceSelectors"), "{error}");
    request.labels = BTreeMap::from([("tier".into(), "edge".into())]);
    assert_eq!(a.assign(&request).unwrap().pool.as_deref(), Some("blue"));
}

#[test]
fn auto_assign_false_pools_serve_only_services_that_ask() {
    let mut manual = pool("manual", &["192.0.2.0-192.0.2.3"]);
    manual.auto_assign = false;
    let mut a = allocator(vec![manual]);
    assert_eq!(a.assign(&v4("ns", "plain")).unwrap_err().reason(), ferrolb_crds::reason::NO_ELIGIBLE_POOL);
    let mut asks_pool = v4("ns", "by-pool");
    asks_pool.requested_pool = Some("manual".into());
    assert_eq!(a.assign(&asks_pool).unwrap().ips, [ip("192.0.2.0")]);
    let mut asks_ip = v4("ns", "by-ip");
    asks_ip.requested_ips = vec![ip("192.0.2.3")];
    assert_eq!(a.assign(&asks_ip).unwrap().ips, [ip("192.0.2.3")]);
}

#[test]
fn avoid_buggy_ips_never_hands_out_dot_zero_or_dot_255() {
    let mut p = pool("p", &["192.0.2.254-192.0.3.1"]);
    p.avoid_buggy_ips = true;
    let mut a = allocator(vec![p]);
    let got: Vec<IpAddr> = (0..2).map(|i| a.assign(&v4("ns", &format!("s{i}"))).unwrap().ips[0]).collect();
    assert_eq!(got, [ip("192.0.2.254"), ip("192.0.3.1")]);
    assert_eq!(a.assign(&v4("ns", "s3")).unwrap_err().reason(), ferrolb_crds::reason::POOL_EXHAUSTED);
}

#[test]
fn disabled_pools_keep_existing_addresses_and_give_no_new_ones() {
    let mut a = allocator(vec![pool("p", &["192.0.2.0-192.0.2.3"])]);
    let kept = a.assign(&v4("ns", "old")).unwrap();
    let mut draining = pool("p", &["192.0.2.0-192.0.2.3"]);
    draining.disabled = true;
    a.upsert_pool(draining);
    assert_eq!(a.assign(&v4("ns", "old")).unwrap(), kept);
    let error = a.assign(&v4("ns", "new")).unwrap_err();
    assert!(error.to_string().contains("\"p\" is disabled"), "{error}");
}

#[test]
fn requested_ips_outside_pools_or_taken_are_refused_precisely() {
    let mut a = allocator(vec![pool("p", &["192.0.2.0-192.0.2.3"])]);
    let mut outside = v4("ns", "outside");
    outside.requested_ips = vec![ip("198.51.100.1")];
    assert_eq!(a.assign(&outside).unwrap_err(), AllocError::RequestedIpNotInPool { ip: ip("198.51.100.1") });
    let mut first = v4("ns", "first");
    first.requested_ips = vec![ip("192.0.2.2")];
    a.assign(&first).unwrap();
    let mut second = v4("ns", "second");
    second.requested_ips = vec![ip("192.0.2.2")];
    let error = a.assign(&second).unwrap_err();
    assert!(matches!(&error, AllocError::RequestedIpInUse { holder, .. } if holder.name == "first"), "{error}");
    // An automatic allocation skips the requested address.
    let auto: Vec<IpAddr> = (0..3).map(|i| a.assign(&v4("ns", &format!("auto{i}"))).unwrap().ips[0]).collect();
    assert!(!auto.contains(&ip("192.0.2.2")));
}

#[test]
fn changing_the_requested_ip_moves_the_service_and_a_failed_move_keeps_the_old_one() {
    let mut a = allocator(vec![pool("p", &["192.0.2.0-192.0.2.3"])]);
    let mut s = v4("ns", "s");
    s.requested_ips = vec![ip("192.0.2.1")];
    a.assign(&s).unwrap();
    s.requested_ips = vec![ip("192.0.2.3")];
    assert_eq!(a.assign(&s).unwrap().ips, [ip("192.0.2.3")]);
    assert!(a.holders_of(ip("192.0.2.1")).is_empty());
    s.requested_ips = vec![ip("203.0.113.1")];
    assert!(a.assign(&s).is_err());
    assert_eq!(a.assignment(&s.key).unwrap().ips, [ip("192.0.2.3")]);
}

#[test]
fn sharing_needs_the_same_key_distinct_ports_and_for_local_the_same_endpoints() {
    let mut a = allocator(vec![pool("p", &["192.0.2.0-192.0.2.3"])]);
    let mut web = v4("ns", "web");
    web.sharing_key = Some("k".into());
    let shared_ip = a.assign(&web).unwrap().ips[0];
    let mut dns = v4("ns", "dns");
    dns.sharing_key = Some("k".into());
    dns.ports = vec![PortKey { protocol: "UDP".into(), port: 53 }];
    assert_eq!(a.assign(&dns).unwrap().ips, [shared_ip], "same key, other ports: shares");
    let mut clash = v4("ns", "clash");
    clash.sharing_key = Some("k".into());
    assert_ne!(a.assign(&clash).unwrap().ips, [shared_ip], "port 80 is taken on the shared IP: gets its own");
    let mut other_key = v4("ns", "other");
    other_key.sharing_key = Some("j".into());
    other_key.requested_ips = vec![shared_ip];
    let error = a.assign(&other_key).unwrap_err();
    assert!(error.to_string().contains("allow-shared-ip key"), "{error}");
    let mut local = v4("ns", "local");
    local.sharing_key = Some("k".into());
    local.ports = vec![PortKey { protocol: "TCP".into(), port: 8443 }];
    local.traffic_policy_local = true;
    local.requested_ips = vec![shared_ip];
    let error = a.assign(&local).unwrap_err();
    assert!(error.to_string().contains("same endpoints"), "{error}");
    // Releasing one holder keeps the address in use for the other.
    a.release(&web.key);
    assert_eq!(a.holders_of(shared_ip), [&dns.key]);
    assert_eq!(a.usage("p", Family::V4).unwrap().assigned, 2);
}

#[test]
fn families_follow_the_ip_family_policy() {
    let mut a = allocator(vec![
        pool("v4only", &["192.0.2.0-192.0.2.3"]),
        pool("z-dual", &["192.0.2.8-192.0.2.11", "2001:db8::-2001:db8::3"]),
    ]);
    let v6 = ServiceRequest::simple("ns", "v6", FamilyPolicy::Single(Family::V6));
    assert_eq!(a.assign(&v6).unwrap(), Assignment { pool: Some("z-dual".into()), ips: vec![ip("2001:db8::")] });
    let prefer = ServiceRequest::simple("ns", "prefer", FamilyPolicy::PreferDual { primary: Family::V6 });
    assert_eq!(a.assign(&prefer).unwrap().ips, [ip("192.0.2.8"), ip("2001:db8::1")], "both families, IPv4 first");
    let require = ServiceRequest::simple("ns", "require", FamilyPolicy::RequireDual { primary: Family::V4 });
    assert_eq!(a.assign(&require).unwrap().pool.as_deref(), Some("z-dual"));

    let mut v4_only = allocator(vec![pool("v4only", &["192.0.2.0-192.0.2.3"])]);
    let error = v4_only
        .assign(&ServiceRequest::simple("ns", "r", FamilyPolicy::RequireDual { primary: Family::V4 }))
        .unwrap_err();
    assert_eq!(error, AllocError::FamilyUnavailable { family: Family::V6, policy: "RequireDualStack" });
    let degraded =
        v4_only.assign(&ServiceRequest::simple("ns", "p", FamilyPolicy::PreferDual { primary: Family::V6 })).unwrap();
    assert_eq!(degraded.ips, [ip("192.0.2.0")], "PreferDualStack settles for the family there is");
    // When the pool gains IPv6, the PreferDualStack Service gets its second address on the next pass.
    v4_only.upsert_pool(pool("v4only", &["192.0.2.0-192.0.2.3", "2001:db8::-2001:db8::3"]));
    let completed =
        v4_only.assign(&ServiceRequest::simple("ns", "p", FamilyPolicy::PreferDual { primary: Family::V6 })).unwrap();
    assert_eq!(completed.ips, [ip("192.0.2.0"), ip("2001:db8::")]);
}

#[test]
fn a_released_address_is_not_handed_to_the_next_service_at_once() {
    let mut a = allocator(vec![pool("p", &["192.0.2.0-192.0.2.7"])]);
    let first = a.assign(&v4("ns", "a")).unwrap().ips[0];
    a.release(&ServiceKey::new("ns", "a"));
    let next = a.assign(&v4("ns", "b")).unwrap().ips[0];
    assert_ne!(first, next);
    // After wrapping around, the released address is used again.
    let rest: Vec<IpAddr> = (0..7).map(|i| a.assign(&v4("ns", &format!("c{i}"))).unwrap().ips[0]).collect();
    assert!(rest.contains(&first));
}

#[test]
fn restore_is_sticky_even_outside_every_pool_and_the_older_service_wins_a_clash() {
    let mut a = allocator(vec![pool("p", &["192.0.2.0-192.0.2.3"])]);
    let old = v4("ns", "old");
    assert_eq!(a.restore(&old, &[ip("192.0.2.2")], None).unwrap().pool.as_deref(), Some("p"));
    let stray = v4("ns", "stray");
    assert_eq!(a.restore(&stray, &[ip("203.0.113.9")], None).unwrap().pool, None, "kept although in no pool");
    let young = v4("ns", "young");
    let conflict = a.restore(&young, &[ip("192.0.2.2")], None).unwrap_err();
    assert_eq!(conflict.holder, old.key);
    // The young one then gets a fresh address; restored ones are skipped.
    assert_eq!(a.assign(&young).unwrap().ips, [ip("192.0.2.0")]);
    assert_eq!(a.assign(&old).unwrap().ips, [ip("192.0.2.2")]);
    assert_eq!(a.assign(&stray).unwrap().ips, [ip("203.0.113.9")], "still its address: no silent re-IP");
}

#[test]
fn deleting_or_shrinking_a_pool_never_moves_a_service() {
    let mut a = allocator(vec![pool("p", &["192.0.2.0-192.0.2.7"])]);
    let held: Vec<IpAddr> = (0..6).map(|i| a.assign(&v4("ns", &format!("s{i}"))).unwrap().ips[0]).collect();
    a.upsert_pool(pool("p", &["192.0.2.0-192.0.2.3"]));
    assert_eq!(a.usage("p", Family::V4).unwrap(), FamilyUsage { total: 4, assigned: 4, available: 0 });
    assert_eq!(a.assign(&v4("ns", "s5")).unwrap().ips, [held[5]]);
    assert!(a.pools_containing(held[5]).is_empty());
    a.remove_pool("p");
    assert_eq!(a.assign(&v4("ns", "s0")).unwrap().ips, [held[0]]);
    assert_eq!(a.assign(&v4("ns", "new")).unwrap_err(), AllocError::NoPools);
}

#[test]
fn unknown_or_refusing_requested_pool_is_named() {
    let mut a = allocator(vec![pool("p", &["192.0.2.0-192.0.2.3"])]);
    let mut s = v4("ns", "s");
    s.requested_pool = Some("nope".into());
    assert_eq!(a.assign(&s).unwrap_err(), AllocError::PoolNotFound("nope".into()));
}

#[test]
fn an_ipv6_slash_64_allocates_like_a_small_pool() {
    let mut a = allocator(vec![pool("big", &["2001:db8::-2001:db8::ffff:ffff:ffff:ffff"])]);
    for i in 0..2000 {
        let got = a.assign(&ServiceRequest::simple("ns", &format!("s{i}"), FamilyPolicy::Single(Family::V6))).unwrap();
        assert_eq!(got.ips[0], IpAddr::V6(std::net::Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + i)));
    }
    let usage = a.usage("big", Family::V6).unwrap();
    assert_eq!((usage.total, usage.assigned), (1u128 << 64, 2000));
}

// ---- properties ----

#[derive(Debug, Clone)]
enum Op {
    Assign { service: u8, family: u8, sharing: Option<u8>, port: u8, pool: Option<u8>, request: Option<u8> },
    Release { service: u8 },
    ShrinkOrGrow { pool: u8, size: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..12, 0u8..3, proptest::option::of(0u8..2), 0u8..3, proptest::option::weighted(0.2, 0u8..3), proptest::option::weighted(0.2, 0u8..16))
            .prop_map(|(service, family, sharing, port, pool, request)| Op::Assign { service, family, sharing, port, pool, request }),
        2 => (0u8..12).prop_map(|service| Op::Release { service }),
        1 => (0u8..3, 1u8..8).prop_map(|(pool, size)| Op::ShrinkOrGrow { pool, size }),
    ]
}

fn pool_def(index: u8, size: u8) -> PoolDef {
    // Pools 0 and 1 overlap on purpose; 2 is dual-stack.
    let base = u32::from(index) * 4;
    let first = std::net::Ipv4Addr::from(0xc000_0200 + base);
    let last = std::net::Ipv4Addr::from(0xc000_0200 + base + u32::from(size) - 1);
    let mut entries = vec![format!("{first}-{last}")];
    if index == 2 {
        entries.push(format!("2001:db8::-2001:db8::{size:x}"));
    }
    let entries: Vec<&str> = entries.iter().map(String::as_str).collect();
    PoolDef::from_entries(&format!("pool{index}"), &entries).unwrap()
}

fn request_for(
    service: u8,
    family: u8,
    sharing: Option<u8>,
    port: u8,
    pool: Option<u8>,
    request: Option<u8>,
) -> ServiceRequest {
    let families = match family {
        0 => FamilyPolicy::Single(Family::V4),
        1 => FamilyPolicy::PreferDual { primary: Family::V4 },
        _ => FamilyPolicy::Single(Family::V6),
    };
    let mut r = ServiceRequest::simple("ns", &format!("svc{service}"), families);
    r.sharing_key = sharing.map(|k| format!("key{k}"));
    r.ports = vec![PortKey { protocol: "TCP".into(), port: i32::from(port) }];
    r.requested_pool = pool.map(|p| format!("pool{p}"));
    if let Some(n) = request.filter(|_| family == 0) {
        r.requested_ips = vec![IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0200 + u32::from(n)))];
    }
    r
}

/// No address is held by two Services unless every pair of them may share it, and the pools' counters
/// agree with a recount.
fn check_invariants(a: &Allocator) -> Result<(), TestCaseError> {
    let mut by_ip: BTreeMap<IpAddr, Vec<&ServiceKey>> = BTreeMap::new();
    for (key, assignment) in a.assignments() {
        for ip in &assignment.ips {
            by_ip.entry(*ip).or_default().push(key);
        }
    }
    for (ip, keys) in &by_ip {
        let holders = a.holders.get(ip).expect("held address has holders");
        prop_assert_eq!(holders.len(), keys.len());
        for (i, h1) in holders.iter().enumerate() {
            for h2 in &holders[i + 1..] {
                prop_assert!(
                    h1.sharing_key.is_some() && h1.sharing_key == h2.sharing_key,
                    "{ip} held by {} and {} without a common key",
                    h1.key,
                    h2.key
                );
                prop_assert!(h1.ports.iter().all(|p| !h2.ports.contains(p)), "{ip}: port clash");
            }
        }
    }
    prop_assert_eq!(a.holders.len(), by_ip.len());
    for state in a.pools.values() {
        for family in [Family::V4, Family::V6] {
            let recount =
                by_ip.keys().filter(|ip| Family::of(**ip) == family && state.def.contains(**ip)).count() as u128;
            prop_assert_eq!(state.assigned[family.slot()], recount, "pool {} {} counter", state.def.name, family);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn no_address_is_given_twice_and_fresh_addresses_are_inside_their_pool(ops in proptest::collection::vec(op(), 1..60)) {
        let mut a = Allocator::new();
        for i in 0..3 {
            a.upsert_pool(pool_def(i, 6));
        }
        for op in ops {
            match op {
                Op::Assign { service, family, sharing, port, pool, request } => {
                    let r = request_for(service, family, sharing, port, pool, request);
                    let before = a.assignment(&r.key).cloned();
                    match a.assign(&r) {
                        Ok(got) => {
                            prop_assert!(!got.ips.is_empty());
                            // Addresses kept from before may lie outside a shrunk pool (sticky); every address
                            // handed out now lies inside the pool the assignment names.
                            let kept = before.map(|b| b.ips).unwrap_or_default();
                            for ip in got.ips.iter().filter(|ip| !kept.contains(ip)) {
                                let pool = got.pool.as_ref().expect("a new address names its pool");
                                prop_assert!(a.pool(pool).expect("its pool exists").contains(*ip), "{ip} outside {pool}");
                            }
                            for ip in &r.requested_ips {
                                prop_assert!(got.ips.contains(ip));
                            }
                        }
                        Err(_) => prop_assert_eq!(a.assignment(&r.key), before.as_ref(), "a failure must keep what the Service held"),
                    }
                }
                Op::Release { service } => {
                    a.release(&ServiceKey::new("ns", format!("svc{service}")));
                }
                Op::ShrinkOrGrow { pool, size } => a.upsert_pool(pool_def(pool, size)),
            }
            check_invariants(&a)?;
        }
    }

    #[test]
    fn releasing_everything_frees_everything_and_allocation_starts_over(ops in proptest::collection::vec(op(), 1..40)) {
        let mut a = Allocator::new();
        for i in 0..3 {
            a.upsert_pool(pool_def(i, 6));
        }
        for op in &ops {
            if let Op::Assign { service, family, sharing, port, pool, request } = op {
                let _ = a.assign(&request_for(*service, *family, *sharing, *port, *pool, *request));
            }
        }
        for service in 0..12 {
            a.release(&ServiceKey::new("ns", format!("svc{service}")));
        }
        prop_assert!(a.holders.is_empty() && a.shared.is_empty() && a.services.is_empty());
        prop_assert!(a.used.iter().all(RunSet::is_empty));
        for i in 0..3 {
            prop_assert_eq!(a.usage(&format!("pool{i}"), Family::V4).unwrap().assigned, 0);
        }
        // Every address can be handed out again: 6 + 6 + 6 addresses with pools 0 and 1 overlapping on 2.
        let mut count = 0;
        while a.assign(&request_for(count, 0, None, 0, None, None)).is_ok() {
            count += 1;
            prop_assert!(count <= 16);
        }
        prop_assert_eq!(count, 14);
    }
}

#[test]
fn overlapping_pools_are_named() {
    let a = allocator(vec![
        pool("a", &["192.0.2.0-192.0.2.15"]),
        pool("b", &["192.0.2.10-192.0.2.40"]),
        pool("c", &["192.0.2.64-192.0.2.79", "2001:db8::-2001:db8::ff"]),
    ]);
    assert_eq!(a.overlapping("a").into_iter().collect::<Vec<_>>(), ["b"]);
    assert!(a.overlapping("c").is_empty());
}
