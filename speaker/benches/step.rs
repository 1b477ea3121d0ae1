//! One native-mode step of the node that announces a third of N Services (3 nodes), with no I/O: a step
//! that plans (the world changed), one that reuses the plan (a membership event), a claims tick that only
//! probes and one that takes over, and the L2Announcement ops the reports compute after each step. Prints
//! its figures; run with `cargo bench -p ferrolb-speaker --bench step`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark whose inputs do not parse has nothing to measure

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolb_crds::L2AdvertisementSpec;
use ferrolb_crds::l2announcement::ServiceReference;
use ferrolb_speaker::election::Members;
use ferrolb_speaker::inventory::{Inventory, Link};
use ferrolb_speaker::l2::announcer::Timing;
use ferrolb_speaker::l2::core::{Core, View};
use ferrolb_speaker::plan::{NodeInfo, PoolInfo, ServiceInfo, World};

const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

fn vip(i: usize) -> IpAddr {
    // 10 000 addresses from 198.18.0.0/15 (benchmarking space).
    let i = u32::try_from(i).unwrap();
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i + 1))
}

fn world(services: usize) -> World {
    let node = |name: &str| NodeInfo {
        name: name.into(),
        labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), name.to_string())]),
        network_unavailable: false,
        unschedulable: false,
    };
    let service = |i: usize| ServiceInfo {
        service: Arc::new(ServiceReference { namespace: "bench".into(), name: format!("svc-{i:05}") }),
        labels: BTreeMap::from([("app".to_string(), format!("svc-{i:05}"))]),
        vips: vec![vip(i)].into(),
        origin_pool: Some("bench".into()),
        traffic_policy_local: false,
        ready_endpoint_nodes: NODES.iter().collect(),
    };
    World {
        nodes: NODES.iter().map(|n| node(n)).collect(),
        services: (0..services).map(|i| Arc::new(service(i))).collect(),
        advertisements: vec![L2AdvertisementSpec::default()],
        pools: vec![PoolInfo {
            name: "bench".into(),
            labels: BTreeMap::new(),
            addresses: vec!["198.18.0.0/15".into()],
        }],
        node_addresses: BTreeMap::new(),
    }
}

fn inventory() -> Inventory {
    Inventory {
        links: vec![Link {
            name: "eth0".into(),
            index: 2,
            mac: Some(ferrolb_speaker::mac::Mac([2, 0, 0, 0, 0, 1])),
            up: true,
            broadcast: true,
            loopback: false,
            kind: Some("veth".into()),
            addresses: vec!["198.18.255.254/15".parse().unwrap()],
        }],
        default_route: BTreeMap::new(),
    }
}

/// The mean of `runs` calls of `f`, after one to warm up.
fn mean(runs: u32, mut f: impl FnMut()) -> Duration {
    f();
    let started = Instant::now();
    for _ in 0..runs {
        f();
    }
    started.elapsed() / runs
}

fn run(services: usize) {
    let world = world(services);
    let live: Members = NODES.iter().map(|n| (n.to_string(), BTreeSet::from(["eth0".to_string()]))).collect();
    let (draining, announcements, inventory) = (BTreeSet::new(), BTreeMap::new(), inventory());
    let view = |version: u64| View {
        world: &world,
        live: &live,
        draining: &draining,
        inventory: &inventory,
        announcements: &announcements,
        peers: NODES.len(),
        world_version: Some((version, 0)),
    };
    let start = Instant::now();
    let mut core = Core::new("node-1", Timing::default(), Duration::ZERO, start);
    let first = core.step(&view(0), start);
    let owned = first.watched.len();
    // The claims: the second probe, then the takeover of every VIP (all of them came at once).
    let second_probe = core.claims_due().expect("probing");
    let probing = Instant::now();
    let tick = core.tick_claims(true, second_probe);
    let probe_tick = probing.elapsed();
    assert!(!tick.answered_changed());
    let take_at = core.claims_due().expect("probing");
    let taking = Instant::now();
    let tick = core.tick_claims(true, take_at);
    let takeover_tick = taking.elapsed();
    assert_eq!(tick.took_over.len(), owned);

    let runs = if services >= 10_000 { 10 } else { 50 };
    let mut version = 1;
    let planning = mean(runs, || {
        version += 1;
        core.step(&view(version), take_at);
    });
    let reusing = mean(runs, || {
        core.step(&view(version), take_at);
    });
    let outcome = core.step(&view(version), take_at);
    let ops = mean(runs, || {
        ferrolb_speaker::report::announcement_ops(&outcome.decisions, "node-1", &outcome.held, true, &announcements);
    });
    println!(
        "{services} Services ({owned} owned): step that plans {:.2} ms, step that reuses the plan {:.2} ms, \
         announcement ops {:.2} ms; claims tick that probes {:.2} ms, that takes over {owned} VIPs {:.2} ms",
        ms(planning),
        ms(reusing),
        ms(ops),
        ms(probe_tick),
        ms(takeover_tick)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    for services in [1_000, 10_000] {
        run(services);
    }
}
