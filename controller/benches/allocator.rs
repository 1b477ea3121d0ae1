//! The allocator alone: 100 000 allocations from an IPv6 /64, then from an IPv4 /16 for comparison, and
//! the cost of a release + re-allocation at that size. Prints its figures; run with
//! `cargo bench -p ferrolb-controller --bench allocator`.

#![allow(clippy::expect_used)] // a benchmark that cannot allocate has nothing to measure

use std::time::Instant;

use ferrolb_controller::ipam::{Allocator, Family, FamilyPolicy, PoolDef, ServiceKey, ServiceRequest};

const ALLOCATIONS: usize = 100_000;

fn run(label: &str, entry: &str, family: Family) {
    let mut allocator = Allocator::new();
    allocator.upsert_pool(PoolDef::from_entries("bench", &[entry]).expect("valid pool"));
    let requests: Vec<ServiceRequest> = (0..ALLOCATIONS)
        .map(|i| ServiceRequest::simple("bench", &format!("svc-{i}"), FamilyPolicy::Single(family)))
        .collect();
    let started = Instant::now();
    for request in &requests {
        allocator.assign(request).expect("pool large enough");
    }
    let elapsed = started.elapsed();
    let churn_started = Instant::now();
    for i in (0..ALLOCATIONS).step_by(10) {
        allocator.release(&ServiceKey::new("bench", format!("svc-{i}")));
        allocator.assign(&requests[i]).expect("re-allocation");
    }
    let churn = churn_started.elapsed() / (ALLOCATIONS as u32 / 10);
    println!(
        "{label}: {ALLOCATIONS} allocations in {:.1} ms ({:.2} µs each); release + re-allocate {:.2} µs",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / ALLOCATIONS as f64,
        churn.as_secs_f64() * 1e6
    );
}

fn main() {
    run("IPv6 /64", "2001:db8::/64", Family::V6);
    run("IPv4 /15", "198.18.0.0/15", Family::V4);
}
