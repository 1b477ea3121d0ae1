//! `ferrolb-bench compare`: ferrolb and MetalLB side by side, measured the same way in the same run. Each
//! round starts a fresh lab (same API server build, three namespace nodes, the same demo pool and Service)
//! for ferrolb, then one for MetalLB, so drift on the machine falls on both: ferrolb, MetalLB, ferrolb,
//! MetalLB. In every lab the demo VIP's owner suffers each fault in turn (as `bench failover` does: the
//! time until the client's requests land on another node), counting the API server's mutating requests
//! while it fails over; the last round then creates the Services and measures their addresses, answers,
//! memory and CPU.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrolb_crds::{IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec};
use ferrolb_e2e::lab_supervisor::{DEMO_NAMESPACE, DEMO_SERVICE, LabConfig, RunningLab};
use ferrolb_e2e::metallb::MetallbBuild;
use ferrolb_e2e::netns;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;

use crate::failover::{Fault, curl, inject, probe_until_moved, restore, stable_owner, wait_joined, wait_until};
use crate::{cpu_seconds, ms, percentile, rss_kib};

/// Off the demo pool, inside the nodes' IPv6 subnet (so the client reaches it on the LAN): room for 65 536.
const SERVICE_POOL: &str = "2001:db8::1:0/112";
const SERVICE_POOL_NAME: &str = "bench-services";
const SERVICE_NAMESPACE: &str = "bench-services";
const ROUNDS: usize = 2;
/// Slower than ferrolb by far: MetalLB's memberlist declares a dead peer after ~5 s, and after a cut link
/// the two sides may take a minute to merge again.
const MOVE_TIMEOUT: Duration = Duration::from_secs(60);
/// For the restored owner to answer again before the next trial.
const TAKE_BACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per wanted trial, for trials spoilt by traffic leaving the owner before the fault.
const MAX_ATTEMPTS_PER_TRIAL: usize = 3;
/// After the traffic moved, writes still counted as the failover's (announcement status, Events).
const WRITES_AFTER_MOVE: Duration = Duration::from_secs(2);

pub struct Options {
    pub bin_dir: PathBuf,
    pub repo: PathBuf,
    pub metallb: MetallbBuild,
    pub metallb_version: String,
    pub trials: usize,
    pub services: usize,
    pub out: PathBuf,
    /// Measure only this one (for working on one row); the table and report need both.
    pub only: Option<System>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    Ferrolb,
    Metallb,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Ferrolb => "ferrolb",
            System::Metallb => "MetalLB",
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct FailoverMs {
    sigkill: Vec<f64>,
    linkcut: Vec<f64>,
    sigterm: Vec<f64>,
}

impl FailoverMs {
    fn of(&self, fault: Fault) -> &[f64] {
        match fault {
            Fault::Sigkill => &self.sigkill,
            Fault::LinkCut => &self.linkcut,
            Fault::Sigterm => &self.sigterm,
        }
    }

    fn of_mut(&mut self, fault: Fault) -> &mut Vec<f64> {
        match fault {
            Fault::Sigkill => &mut self.sigkill,
            Fault::LinkCut => &mut self.linkcut,
            Fault::Sigterm => &mut self.sigterm,
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct Rss {
    controller: u64,
    speakers: Vec<u64>,
}

#[derive(Debug, Default, Serialize)]
struct CpuSeconds {
    controller: f64,
    speakers: Vec<f64>,
}

#[derive(Debug, Default, Serialize)]
struct Outcome {
    failover_ms: FailoverMs,
    /// Trials in which the traffic had not moved within [`MOVE_TIMEOUT`] (not in `failover_ms`).
    failover_timeouts: usize,
    /// Trials run again because another node answered before the fault (not in `failover_ms`).
    unstable_before_fault: usize,
    service_ip_ms: Vec<f64>,
    service_answer_ms: Vec<f64>,
    /// Services that never answered within the wait (not in `service_answer_ms`).
    services_unanswered: usize,
    rss_kib: Rss,
    /// CPU while the Services were created, until the last one answered.
    cpu_seconds: CpuSeconds,
    failover_api_writes: Vec<u64>,
    /// Their sum over the trials, by `VERB resource[/subresource]`.
    failover_api_writes_by_kind: BTreeMap<String, u64>,
    /// Trials after which the restored owner had not taken its VIP back within [`TAKE_BACK_TIMEOUT`] until
    /// the client's neighbour cache was flushed.
    take_backs_needing_neighbour_flush: usize,
    /// Of those, the trials after which it had not even then (the next trial faults whoever answers).
    take_backs_failed: usize,
}

#[derive(Serialize)]
struct Report<'a> {
    metallb_version: &'a str,
    services: usize,
    trials: usize,
    ferrolb: &'a Outcome,
    metallb: &'a Outcome,
}

pub fn run(options: Options) -> Result<()> {
    ferrolb_e2e::metallb::check_build(&options.metallb)?;
    let per_round = options.trials.div_ceil(ROUNDS);
    let mut outcomes: HashMap<&'static str, Outcome> = HashMap::new();
    for round in 1..=ROUNDS {
        for system in [System::Ferrolb, System::Metallb].into_iter().filter(|s| options.only.is_none_or(|o| o == *s)) {
            println!("round {round}/{ROUNDS}: {}", system.name());
            let outcome = outcomes.entry(system.name()).or_default();
            let state = tempfile::tempdir()?;
            let mut lab = start(system, &options, state.path())?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let client = runtime.block_on(lab.plane().admin_client())?;
            let vip = runtime.block_on(demo_vip(&client))?;
            let client_ns = lab.lab().client().netns.clone();
            wait_until(Duration::from_secs(120), || curl(&client_ns, &vip).is_some())
                .with_context(|| format!("{}: the demo VIP {vip} never answered", system.name()))?;
            for fault in Fault::ALL {
                let wanted = outcome.failover_ms.of(fault).len() + per_round;
                // A trial whose traffic left the owner before the fault measures nothing: it is run again.
                for _ in 0..MAX_ATTEMPTS_PER_TRIAL * per_round {
                    if outcome.failover_ms.of(fault).len() >= wanted {
                        break;
                    }
                    failover_trial(&mut lab, &runtime, &client, fault, &vip, outcome)
                        .with_context(|| format!("{}: {}", system.name(), fault.describe()))?;
                }
                println!("  {}: {:?} ms", fault.describe(), outcome.failover_ms.of(fault));
            }
            println!("  mutating requests during the failovers so far: {:?}", outcome.failover_api_writes_by_kind);
            if round == ROUNDS && options.services > 0 {
                services_phase(&lab, &runtime, &client, system, options.services, outcome)
                    .with_context(|| format!("{}: {} Services", system.name(), options.services))?;
            }
        }
    }
    if options.only.is_some() {
        println!("one system measured: no table, no report");
        return Ok(());
    }
    let (ferrolb, metallb) = (&outcomes["ferrolb"], &outcomes["MetalLB"]);
    print_table(ferrolb, metallb, &options, per_round * ROUNDS);
    let report = Report {
        metallb_version: &options.metallb_version,
        services: options.services,
        trials: per_round * ROUNDS,
        ferrolb,
        metallb,
    };
    if let Some(dir) = options.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.out, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", options.out.display());
    Ok(())
}

fn start(system: System, options: &Options, state: &std::path::Path) -> Result<RunningLab> {
    let config = LabConfig::processes(state.to_path_buf(), options.bin_dir.clone(), options.repo.clone());
    let lab = match system {
        System::Ferrolb => RunningLab::start(config),
        System::Metallb => RunningLab::start_metallb(config, &options.metallb),
    };
    lab.with_context(|| format!("starting the lab for {}", system.name()))
}

/// The demo Service's IPv4 address, once it has one.
async fn demo_vip(client: &kube::Client) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let ips = ferrolb_e2e::objects::load_balancer_ips(client, DEMO_NAMESPACE, DEMO_SERVICE).await?;
        if let Some(ip) = ips.into_iter().find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()) {
            return Ok(ip);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the demo Service got no IPv4 address within 60 s")
}

fn failover_trial(
    lab: &mut RunningLab,
    runtime: &tokio::runtime::Runtime,
    client: &kube::Client,
    fault: Fault,
    vip: &str,
    outcome: &mut Outcome,
) -> Result<()> {
    let client_ns = lab.lab().client().netns.clone();
    let owner = stable_owner(&client_ns, vip)?;
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (ns, owner, stop, vip) = (client_ns.clone(), owner.clone(), stop.clone(), vip.to_string());
        std::thread::spawn(move || netns::in_netns(&ns, move || Ok(probe_until_moved(&vip, &owner, &stop))))
    };
    std::thread::sleep(Duration::from_millis(300));
    let writes_before = runtime.block_on(mutating_requests(client))?;
    let fault_at = Instant::now();
    inject(lab, fault, &owner)?;
    let moved = wait_joined(prober, &stop, MOVE_TIMEOUT)?;
    match moved {
        // Another node answered while the fault was still being set up: two nodes took turns (a split
        // left over from the trial before), so this trial says nothing of the failover.
        Some((at, _)) if at < fault_at => outcome.unstable_before_fault += 1,
        Some((at, _)) => {
            outcome.failover_ms.of_mut(fault).push(ms(at.duration_since(fault_at)));
            std::thread::sleep(WRITES_AFTER_MOVE.saturating_sub(at.elapsed()));
            let writes = grown(&writes_before, runtime.block_on(mutating_requests(client))?);
            outcome.failover_api_writes.push(writes.values().sum());
            for (what, n) in writes {
                *outcome.failover_api_writes_by_kind.entry(what).or_default() += n;
            }
        }
        None => outcome.failover_timeouts += 1,
    }
    restore(lab, fault, &owner)?;
    let back = || curl(&client_ns, vip).as_deref() == Some(owner.as_str());
    if wait_until(TAKE_BACK_TIMEOUT, back).is_err() {
        // MetalLB's owner, back from a cut link, answers ARP again but sends no gratuitous ARP, and the client
        // keeps the stand-in's MAC as long as its connections to it work: the next trial needs the owner back,
        // so the client forgets its neighbours (counted, not part of any figure).
        outcome.take_backs_needing_neighbour_flush += 1;
        netns::ip(&["-n", &client_ns, "neigh", "flush", "dev", "eth0"])?;
        netns::ip(&["-n", &client_ns, "-6", "neigh", "flush", "dev", "eth0"])?;
        // Still split (both sides answer until their memberlist merges, which can take minutes): the next
        // trial starts from whichever node the client reaches steadily then.
        if wait_until(3 * TAKE_BACK_TIMEOUT, back).is_err() {
            outcome.take_backs_failed += 1;
            println!(
                "  {owner} had not taken its VIP back {} s after the fault was undone",
                4 * TAKE_BACK_TIMEOUT.as_secs()
            );
        }
    }
    Ok(())
}

/// The API server's count of mutating requests served so far (its own `apiserver_request_total`).
/// By `VERB resource[/subresource]`.
async fn mutating_requests(client: &kube::Client) -> Result<BTreeMap<String, u64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let mut counts = BTreeMap::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once("} ") else { continue };
        let label = |name: &str| {
            labels.split(',').find_map(|pair| pair.strip_prefix(name)?.strip_prefix("=\"")?.strip_suffix('"'))
        };
        let Some(verb) = label("verb").filter(|v| ["POST", "PUT", "PATCH", "DELETE", "APPLY"].contains(v)) else {
            continue;
        };
        let resource = match label("subresource").filter(|s| !s.is_empty()) {
            Some(sub) => format!("{}/{sub}", label("resource").unwrap_or_default()),
            None => label("resource").unwrap_or_default().to_string(),
        };
        *counts.entry(format!("{verb} {resource}")).or_default() += value.parse::<f64>().unwrap_or(0.0) as u64;
    }
    Ok(counts)
}

/// What `after` counts beyond `before`, leaving out what did not grow.
fn grown(before: &BTreeMap<String, u64>, after: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .into_iter()
        .map(|(key, n)| {
            let since = n.saturating_sub(before.get(&key).copied().unwrap_or(0));
            (key, since)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Creates `count` IPv6 Services (10 at a time, each with a ready endpoint), measuring from each create to its
/// address in the status and to its VIP accepting the client's connections; then memory and CPU.
fn services_phase(
    lab: &RunningLab,
    runtime: &tokio::runtime::Runtime,
    client: &kube::Client,
    system: System,
    count: usize,
    outcome: &mut Outcome,
) -> Result<()> {
    for node in lab.lab().nodes() {
        netns::ip(&["-n", &node.netns, "-6", "route", "add", "local", SERVICE_POOL, "dev", "lo", "table", "local"])?;
    }
    runtime.block_on(async {
        match system {
            System::Ferrolb => apply_ferrolb_pool(client).await?,
            System::Metallb => {
                ferrolb_e2e::metallb::apply_pool(client, SERVICE_POOL_NAME, &[SERVICE_POOL], false).await?
            }
        }
        ferrolb_e2e::objects::create_namespace(client, SERVICE_NAMESPACE).await?;
        anyhow::Ok(())
    })?;
    let pids: Vec<u32> = std::iter::once(lab.controller_pid())
        .chain(lab.lab().nodes().iter().map(|n| lab.speaker_pid(&n.name)))
        .collect::<Option<Vec<u32>>>()
        .context("a component is not running")?;
    let idle_before = idle_cpu_percent(&pids)?;
    let cpu_before = cpu_of(&pids)?;
    let started = Instant::now();

    // Answers are probed from the client's namespace, on a runtime of its own there.
    let (to_probe, mut probes) = tokio::sync::mpsc::unbounded_channel::<(IpAddr, Instant)>();
    let prober = {
        let ns = lab.lab().client().netns.clone();
        std::thread::spawn(move || {
            netns::in_netns(&ns, move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                Ok(runtime.block_on(async move {
                    let mut probing = tokio::task::JoinSet::new();
                    while let Some((ip, created)) = probes.recv().await {
                        probing.spawn(first_answer(ip, created));
                    }
                    probing.join_all().await
                }))
            })
        })
    };
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let addressed = runtime.block_on(async {
        let watch = {
            let (created, services) = (created.clone(), Api::<Service>::namespaced(client.clone(), SERVICE_NAMESPACE));
            tokio::spawn(async move {
                let mut addressed = Vec::new();
                let stream = watcher(services, watcher::Config::default()).default_backoff().applied_objects();
                futures::pin_mut!(stream);
                let mut seen = std::collections::HashSet::new();
                while let Ok(Some(service)) = stream.try_next().await {
                    let name = service.metadata.name.clone().unwrap_or_default();
                    let ip = service
                        .status
                        .and_then(|s| s.load_balancer)
                        .and_then(|lb| lb.ingress)
                        .and_then(|i| i.into_iter().find_map(|i| i.ip))
                        .and_then(|ip| ip.parse::<IpAddr>().ok());
                    let since = created.lock().ok().and_then(|c| c.get(&name).copied());
                    if let (Some(ip), Some(since)) = (ip, since)
                        && seen.insert(name)
                    {
                        addressed.push(ms(since.elapsed()));
                        let _ = to_probe.send((ip, since));
                        if seen.len() == count {
                            break;
                        }
                    }
                }
                addressed
            })
        };
        let nodes: Vec<String> = lab.lab().nodes().iter().map(|n| n.name.clone()).collect();
        let results: Vec<Result<()>> = futures::stream::iter(0..count)
            .map(|i| {
                let (client, created, nodes) = (client.clone(), created.clone(), &nodes);
                async move {
                    let name = format!("svc-{i}");
                    let mut service = ferrolb_e2e::objects::ipv6_load_balancer(&name, Some(SERVICE_POOL_NAME));
                    service
                        .metadata
                        .annotations
                        .get_or_insert_default()
                        .insert("metallb.io/address-pool".into(), SERVICE_POOL_NAME.into());
                    if let Ok(mut created) = created.lock() {
                        created.insert(name.clone(), Instant::now());
                    }
                    // MetalLB announces only a Service with a ready endpoint, even with the Cluster policy.
                    let node = &nodes[i % nodes.len()];
                    ferrolb_e2e::objects::create_ipv6_service_with_backend(
                        &client,
                        SERVICE_NAMESPACE,
                        &service,
                        node,
                        i + 1,
                    )
                    .await
                    .with_context(|| format!("creating {name}"))
                }
            })
            .buffer_unordered(10)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>>>()?;
        match tokio::time::timeout(Duration::from_secs(600), watch).await {
            Ok(addressed) => Ok(addressed?),
            Err(_) => bail!("not every Service got an address within 600 s"),
        }
    })?;
    outcome.service_ip_ms = addressed;
    let answers = match prober.join() {
        Ok(answers) => answers?,
        Err(_) => bail!("the answer prober panicked"),
    };
    outcome.services_unanswered = answers.iter().filter(|a| a.is_none()).count();
    outcome.service_answer_ms = answers.into_iter().flatten().map(ms).collect();
    let took = started.elapsed();
    let used: Vec<f64> = cpu_of(&pids)?.iter().zip(&cpu_before).map(|(a, b)| a - b).collect();
    std::thread::sleep(Duration::from_secs(3));
    let rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect::<Result<_>>()?;
    let idle_after = idle_cpu_percent(&pids)?;
    outcome.cpu_seconds = CpuSeconds { controller: used[0], speakers: used[1..].to_vec() };
    outcome.rss_kib = Rss { controller: rss[0], speakers: rss[1..].to_vec() };
    println!(
        "  {count} Services in {:.1} s: {} answered ({} never), RSS {rss:?} KiB, CPU {:?} s; idle CPU % (controller, \
         speakers) before {idle_before:.1?}, after {idle_after:.1?}",
        took.as_secs_f64(),
        outcome.service_answer_ms.len(),
        outcome.services_unanswered,
        outcome.cpu_seconds
    );
    Ok(())
}

/// The share of one core each of `pids` uses over 10 s of nobody changing anything.
/// CPU seconds used so far by each of `pids`.
fn cpu_of(pids: &[u32]) -> Result<Vec<f64>> {
    pids.iter().map(|p| cpu_seconds(*p)).collect()
}

fn idle_cpu_percent(pids: &[u32]) -> Result<Vec<f64>> {
    const SPAN: Duration = Duration::from_secs(10);
    let before = cpu_of(pids)?;
    std::thread::sleep(SPAN);
    let after = cpu_of(pids)?;
    Ok(after.iter().zip(&before).map(|(a, b)| 100.0 * (a - b) / SPAN.as_secs_f64()).collect())
}

async fn apply_ferrolb_pool(client: &kube::Client) -> Result<()> {
    let params = PatchParams::apply("ferrolb-bench").force();
    let pool = IPAddressPool::new(
        SERVICE_POOL_NAME,
        IPAddressPoolSpec { auto_assign: false, ..IPAddressPoolSpec::with_addresses(&[SERVICE_POOL]) },
    );
    Api::<IPAddressPool>::all(client.clone()).patch(SERVICE_POOL_NAME, &params, &Patch::Apply(&pool)).await?;
    let advertisement = L2Advertisement::new(
        SERVICE_POOL_NAME,
        L2AdvertisementSpec { ip_address_pools: vec![SERVICE_POOL_NAME.into()], ..Default::default() },
    );
    Api::<L2Advertisement>::all(client.clone())
        .patch(SERVICE_POOL_NAME, &params, &Patch::Apply(&advertisement))
        .await?;
    Ok(())
}

/// From `created` until a TCP connection to the VIP's port 80 is accepted (by whichever node answers for it),
/// trying every 10 ms with 100 ms per attempt; `None` after two minutes.
async fn first_answer(ip: IpAddr, created: Instant) -> Option<Duration> {
    let address = SocketAddr::new(ip, 80);
    while created.elapsed() < Duration::from_secs(120) {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(100), tokio::net::TcpStream::connect(address)).await
        {
            return Some(created.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn quantile(values: &[f64], p: usize) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, p)
}

/// `trials`: the failover trials each system had per fault.
fn print_table(ferrolb: &Outcome, metallb: &Outcome, options: &Options, trials: usize) {
    let mut rows: Vec<(String, f64, f64, &str)> = Vec::new();
    for fault in Fault::ALL {
        let (f, m) = (ferrolb.failover_ms.of(fault), metallb.failover_ms.of(fault));
        for (label, p) in [("p50", 50), ("p90", 90), ("max", 100)] {
            rows.push((format!("failover, {}: {label}", fault.describe()), quantile(f, p), quantile(m, p), "ms"));
        }
    }
    let writes = |o: &Outcome| o.failover_api_writes.iter().map(|w| *w as f64).collect::<Vec<f64>>();
    let (f, m) = (writes(ferrolb), writes(metallb));
    for (label, p) in [("p50", 50), ("max", 100)] {
        rows.push((format!("mutating API requests per failover: {label}"), quantile(&f, p), quantile(&m, p), ""));
    }
    // The load a failover puts on the API server: bursts (a reconcile loop) hide from the median.
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    rows.push(("mutating API requests per failover: mean".into(), mean(&f), mean(&m), ""));
    for (label, f, m) in [
        ("Service created -> EXTERNAL-IP", &ferrolb.service_ip_ms, &metallb.service_ip_ms),
        ("Service created -> VIP answers", &ferrolb.service_answer_ms, &metallb.service_answer_ms),
    ] {
        for (q, p) in [("p50", 50), ("p99", 99)] {
            rows.push((format!("{label}: {q}"), quantile(f, p), quantile(m, p), "ms"));
        }
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let max_speaker = |o: &Outcome| mib(o.rss_kib.speakers.iter().copied().max().unwrap_or(0));
    rows.push((
        format!("RSS after {} Services: controller", options.services),
        mib(ferrolb.rss_kib.controller),
        mib(metallb.rss_kib.controller),
        "MiB",
    ));
    rows.push((
        format!("RSS after {} Services: largest speaker", options.services),
        max_speaker(ferrolb),
        max_speaker(metallb),
        "MiB",
    ));
    rows.push((
        "CPU while creating them: controller".into(),
        ferrolb.cpu_seconds.controller,
        metallb.cpu_seconds.controller,
        "s",
    ));
    rows.push((
        "CPU while creating them: speakers (sum)".into(),
        ferrolb.cpu_seconds.speakers.iter().sum(),
        metallb.cpu_seconds.speakers.iter().sum(),
        "s",
    ));
    println!();
    println!(
        "ferrolb vs MetalLB {} ({} failover trials per fault each, {} Services; lower is better; ratio = MetalLB / ferrolb)",
        options.metallb_version, trials, options.services
    );
    println!("| {:<52} | {:>12} | {:>12} | {:>9} |", "measure", "ferrolb", "MetalLB", "ratio");
    println!("|{:-<54}|{:-<14}|{:-<14}|{:-<11}|", "", "", "", "");
    for (label, f, m, unit) in rows {
        let ratio = if f > 0.0 {
            format!("{:.1}x", m / f)
        } else if m > 0.0 {
            "inf".into()
        } else {
            "=".into()
        };
        println!("| {label:<52} | {:>12} | {:>12} | {ratio:>9} |", format!("{f:.1} {unit}"), format!("{m:.1} {unit}"));
    }
    for (name, o) in [("ferrolb", ferrolb), ("MetalLB", metallb)] {
        if o.take_backs_needing_neighbour_flush > 0 {
            println!(
                "{name}: after {} trials the restored owner had not taken its VIP back within {} s (the client still \
                 used the stand-in's MAC); the client's neighbour cache was flushed before the next trial",
                o.take_backs_needing_neighbour_flush,
                TAKE_BACK_TIMEOUT.as_secs()
            );
            if o.take_backs_failed > 0 {
                println!(
                    "{name}: after {} of them the owner had not taken it back 3 minutes later either",
                    o.take_backs_failed
                );
            }
        }
        if o.unstable_before_fault > 0 {
            println!(
                "{name}: {} trials were run again because another node answered the VIP before the fault",
                o.unstable_before_fault
            );
        }
        if o.failover_timeouts > 0 || o.services_unanswered > 0 {
            println!(
                "{name}: {} failovers did not move within {} s, {} Services never answered (left out of the rows above)",
                o.failover_timeouts,
                MOVE_TIMEOUT.as_secs(),
                o.services_unanswered
            );
        }
    }
}
