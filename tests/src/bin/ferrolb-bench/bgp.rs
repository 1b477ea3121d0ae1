//! `ferrolb-bench failover --mode bgp`: the BGP lab (3 nodes, each with FRR, BIRD as the router, the client
//! behind it), faults on one node and what the client sees: the interruption (from the fault to the end of
//! the client's last failed request; 0 when none failed) and the failed requests; then how long a new
//! Service takes to become a route in the router's kernel (BIRD installs what BGP told it).
//!
//! The prober opens a new connection for every request (50 ms connect timeout), so the router hashes each
//! to a next hop afresh: about a third of them meet the faulty node until its next hop is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferrolb_e2e::lab_supervisor::{LabConfig, RunningLab};
use ferrolb_e2e::netns;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nix::sys::signal::Signal;

use crate::failover::wait_until;
use crate::{ms, percentile};

const VIP: &str = "203.0.113.200";
/// The node the faults hit (the demo VIP is announced by all three).
const NODE: &str = "node-1";
const NODE_IP: &str = "192.0.2.11";

#[derive(Debug, Clone, Copy)]
enum Fault {
    LinkCut,
    FrrKilled,
    GracefulStop,
}

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Fault::LinkCut => "cut of node-1's link (carrier, from the switch)",
            Fault::FrrKilled => "bgpd killed on node-1 (SIGKILL)",
            Fault::GracefulStop => "graceful stop of node-1 (cordon, then SIGTERM of its speaker)",
        }
    }
}

pub fn run(bin_dir: PathBuf, repo: PathBuf, trials: usize, services: usize) -> Result<()> {
    let state = tempfile::tempdir()?;
    let config = LabConfig { bgp: true, ..LabConfig::processes(state.path().to_path_buf(), bin_dir, repo) };
    let mut lab = RunningLab::start(config).context("starting the BGP lab")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = runtime.block_on(lab.plane().admin_client())?;
    wait_until(Duration::from_secs(60), || next_hops(&lab).len() == 3).context("no ECMP route through all nodes")?;
    // BFD up everywhere before the first fault (the first minute after start-up has its own flaps).
    std::thread::sleep(Duration::from_secs(10));

    for fault in [Fault::LinkCut, Fault::FrrKilled, Fault::GracefulStop] {
        println!("failover (bgp mode, BFD 100 ms x 3): {} ({trials} trials)", fault.describe());
        let (mut interruptions, mut failures, mut requests) = (Vec::new(), Vec::new(), 0);
        for _ in 0..trials {
            wait_until(Duration::from_secs(60), || next_hops(&lab).len() == 3)
                .with_context(|| format!("the route did not get its three next hops back\n{}", logs(&lab)))?;
            let stop = Arc::new(AtomicBool::new(false));
            let prober = {
                let (ns, stop) = (lab.lab().client().netns.clone(), stop.clone());
                std::thread::spawn(move || netns::in_netns(&ns, move || Ok(probe(VIP, &stop))))
            };
            std::thread::sleep(Duration::from_millis(500));
            let fault_at = Instant::now();
            inject(&mut lab, &runtime, &client, fault)?;
            // The router drops the next hop (or the node drains); then the prober runs on for a while.
            wait_until(Duration::from_secs(20), || !next_hops(&lab).contains(&NODE_IP.to_string()))
                .with_context(|| format!("node-1's next hop stayed\n{}", logs(&lab)))?;
            std::thread::sleep(Duration::from_secs(1));
            stop.store(true, Ordering::Relaxed);
            let outcome = prober.join().map_err(|_| anyhow::anyhow!("the prober panicked"))??;
            let last_failure = outcome.failed.iter().filter(|at| **at >= fault_at).max();
            interruptions.push(last_failure.map_or(Duration::ZERO, |at| at.duration_since(fault_at)));
            failures.push(outcome.failed.iter().filter(|at| **at >= fault_at).count());
            requests += outcome.made;
            restore(&mut lab, &runtime, &client, fault)?;
        }
        interruptions.sort();
        failures.sort();
        println!(
            "  interruption p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; failed requests per trial p50 {}, max {} ({requests} requests in all)",
            ms(percentile(&interruptions, 50)),
            ms(percentile(&interruptions, 99)),
            ms(interruptions.last().copied().unwrap_or_default()),
            percentile(&failures, 50),
            failures.last().copied().unwrap_or_default(),
        );
    }
    if services > 0 {
        route_latency(&lab, &runtime, &client, services)?;
    }
    Ok(())
}

struct Probed {
    /// When each failed request ended.
    failed: Vec<Instant>,
    made: usize,
}

fn probe(vip: &str, stop: &AtomicBool) -> Probed {
    let address: SocketAddr = (vip.parse::<std::net::IpAddr>().unwrap_or([0, 0, 0, 0].into()), 80).into();
    let mut probed = Probed { failed: Vec::new(), made: 0 };
    while !stop.load(Ordering::Relaxed) {
        probed.made += 1;
        if crate::failover::request(address).is_none() {
            probed.failed.push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    probed
}

fn inject(lab: &mut RunningLab, runtime: &tokio::runtime::Runtime, client: &kube::Client, fault: Fault) -> Result<()> {
    match fault {
        Fault::LinkCut => {
            netns::ip(&["-n", lab.lab().switch_netns(), "link", "set", "n1", "down"])?;
        }
        Fault::FrrKilled => lab.signal_component(&format!("bgpd on {NODE}"), Signal::SIGKILL)?,
        Fault::GracefulStop => {
            cordon(runtime, client, true)?;
            lab.signal_speaker(NODE, Signal::SIGTERM)?;
        }
    }
    Ok(())
}

fn restore(lab: &mut RunningLab, runtime: &tokio::runtime::Runtime, client: &kube::Client, fault: Fault) -> Result<()> {
    match fault {
        Fault::LinkCut => {
            netns::ip(&["-n", lab.lab().switch_netns(), "link", "set", "n1", "up"])?;
        }
        Fault::FrrKilled => {
            lab.wait_component_exit(&format!("bgpd on {NODE}"), Duration::from_secs(10))
                .context("bgpd did not exit")?;
            lab.start_stopped();
        }
        Fault::GracefulStop => {
            lab.wait_speaker_exit(NODE, Duration::from_secs(15)).context("the speaker did not exit")?;
            cordon(runtime, client, false)?;
            lab.start_stopped();
        }
    }
    Ok(())
}

fn cordon(runtime: &tokio::runtime::Runtime, client: &kube::Client, cordoned: bool) -> Result<()> {
    Ok(runtime.block_on(ferrolb_e2e::objects::cordon(client, NODE, cordoned))?)
}

fn next_hops(lab: &RunningLab) -> Vec<String> {
    lab.router().and_then(|r| r.next_hops(VIP).ok()).unwrap_or_default()
}

fn logs(lab: &RunningLab) -> String {
    let router = lab.router().map(|r| r.route(VIP).unwrap_or_default()).unwrap_or_default();
    format!("router: {router}\n--- speaker on {NODE}:\n{}", lab.speaker_log(NODE, 20))
}

/// `services` IPv6-only Services from a pool of their own, each with a ready endpoint on every node: the
/// time from each Service's creation to its route in the router's kernel table.
fn route_latency(
    lab: &RunningLab,
    runtime: &tokio::runtime::Runtime,
    client: &kube::Client,
    services: usize,
) -> Result<()> {
    use ferrolb_crds::{IPAddressPool, IPAddressPoolSpec};
    let namespace = "bench";
    runtime.block_on(async {
        ferrolb_e2e::objects::create_namespace(client, namespace).await?;
        let pools: Api<IPAddressPool> = Api::all(client.clone());
        let pool =
            IPAddressPool::new("bench", IPAddressPoolSpec::with_addresses(&["2001:db8:b::1000-2001:db8:b::1fff"]));
        pools.create(&PostParams::default(), &pool).await?;
        let advertisements: Api<ferrolb_crds::BGPAdvertisement> = Api::all(client.clone());
        let patch = serde_json::json!({ "spec": { "ipAddressPools": ["bgp-pool", "bench"] } });
        advertisements.patch("bgp", &PatchParams::default(), &Patch::Merge(&patch)).await?;
        anyhow::Ok(())
    })?;
    let router = lab.router().context("no router")?.netns.clone();
    let mut created: BTreeMap<String, Instant> = BTreeMap::new();
    let mut vip_of: BTreeMap<String, String> = BTreeMap::new();
    let mut routed: BTreeMap<String, Instant> = BTreeMap::new();
    let services_api: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    for i in 0..services {
        let name = format!("route-{i}");
        let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name },
            "spec": { "type": "LoadBalancer", "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"],
                      "ports": [{ "port": 80 }] },
        }))?;
        let backends: Vec<ferrolb_e2e::objects::Backend> = ["node-1", "node-2", "node-3"]
            .iter()
            .enumerate()
            .map(|(n, node)| ferrolb_e2e::objects::Backend {
                node: node.to_string(),
                address: format!("2001:db8:1::{:x}", 0x100 + i * 3 + n),
                ready: true,
            })
            .collect();
        runtime.block_on(async {
            ferrolb_e2e::objects::apply_endpoint_slice(client, namespace, &name, "IPv6", 80, &backends).await?;
            services_api.create(&PostParams::default(), &service).await?;
            anyhow::Ok(())
        })?;
        created.insert(name, Instant::now());
        // Spread over about 10 s, as a deployment wave would be, and watch the routes meanwhile.
        std::thread::sleep(Duration::from_millis(40));
        observe_routes(&router, runtime, &services_api, created.len(), &mut vip_of, &mut routed)?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while routed.len() < services && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        observe_routes(&router, runtime, &services_api, created.len(), &mut vip_of, &mut routed)?;
    }
    let mut latencies: Vec<Duration> =
        routed.iter().filter_map(|(name, at)| Some(at.saturating_duration_since(*created.get(name)?))).collect();
    latencies.sort();
    println!(
        "Service created -> route in the router's kernel ({} of {services} Services, created over {:.1} s): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (routes polled every 20-40 ms)",
        latencies.len(),
        started.elapsed().as_secs_f64(),
        ms(percentile(&latencies, 50)),
        ms(percentile(&latencies, 99)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    Ok(())
}

/// Learns new Services' VIPs and notes when each first shows up as a route in the router.
fn observe_routes(
    router: &str,
    runtime: &tokio::runtime::Runtime,
    services: &Api<k8s_openapi::api::core::v1::Service>,
    created: usize,
    vip_of: &mut BTreeMap<String, String>,
    routed: &mut BTreeMap<String, Instant>,
) -> Result<()> {
    let output = netns::ip(&["-n", router, "-6", "route", "show", "proto", "bird"])?;
    let now = Instant::now();
    let routes: BTreeSet<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    // Created Services whose address is not known yet: read them again.
    if vip_of.len() < created {
        for service in runtime.block_on(services.list(&Default::default()))?.items {
            let name = service.metadata.name.clone().unwrap_or_default();
            if let Some(ip) = ferrolb_crds::service::ingress_ips(&service).first() {
                vip_of.entry(name).or_insert_with(|| ip.to_string());
            }
        }
    }
    for (name, vip) in vip_of.iter() {
        if !routed.contains_key(name) && routes.contains(vip) {
            routed.insert(name.clone(), now);
        }
    }
    Ok(())
}
