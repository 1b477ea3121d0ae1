//! Benchmarks against a real API server, printing their figures (never asserting on time).
//!
//! `ferrolb-bench failover`: see [`failover`].
//!
//! `ferrolb-bench compare`: ferrolb against MetalLB in the same lab, see [`compare`].
//!
//! `ferrolb-bench controller --controller PATH`: Service created → status written, p50/p99 over 1 000
//! Services created 10 at a time; the time for 10 000 Services created 50 at a time to all get an address;
//! the controller's peak RSS.
//!
//! `ferrolb-bench pools --controller PATH`: see [`pools`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ferrolb_crds::{IPAddressPool, IPAddressPoolSpec};
use ferrolb_e2e::objects::{create_namespace, install_ferrolb_crds};
use ferrolb_e2e::{ControlPlane, ManagedProcess};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Allocation latency and throughput of ferrolb-controller.
    Controller {
        #[arg(long)]
        controller: PathBuf,
        #[arg(long, default_value_t = 1000)]
        latency_services: usize,
        #[arg(long, default_value_t = 10_000)]
        bulk_services: usize,
    },
    /// The controller with thousands of pools: time to settle them, CPU, Service latency, restart.
    Pools {
        #[arg(long)]
        controller: PathBuf,
        /// Pool counts, one fresh API server each.
        #[arg(long, value_delimiter = ',', default_value = "2000,10000")]
        counts: Vec<usize>,
    },
    /// Failover time seen from the client, and the speakers' memory with many VIPs.
    Failover {
        /// Where ferrolb-controller and ferrolb-speaker are.
        #[arg(long)]
        bin_dir: PathBuf,
        /// The repository (CRDs, demo manifests).
        #[arg(long)]
        repo: PathBuf,
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// VIPs for the memory figure (0: skip it; native mode only).
        #[arg(long, default_value_t = 10_000)]
        vips: usize,
        /// Speakers in keepalived mode.
        #[arg(long)]
        keepalived: bool,
        /// BGP mode (FRR per node, BIRD as the router): link cut, FRR killed, graceful stop, and Service ->
        /// route latency over `--services` Services.
        #[arg(long, conflicts_with = "keepalived")]
        bgp: bool,
        #[arg(long, default_value_t = 200)]
        services: usize,
    },
    /// ferrolb and MetalLB in turn in the same kind of lab: failover, Service latency, memory, CPU.
    Compare {
        /// Where ferrolb-controller and ferrolb-speaker are.
        #[arg(long)]
        bin_dir: PathBuf,
        /// The repository (CRDs, demo manifests).
        #[arg(long)]
        repo: PathBuf,
        /// A MetalLB build: bin/controller, bin/speaker, crds/.
        #[arg(long)]
        metallb_dir: PathBuf,
        /// The MetalLB release built there, for the report.
        #[arg(long)]
        metallb_version: String,
        /// Failover trials per fault and per system, split over the rounds.
        #[arg(long, default_value_t = 10)]
        trials: usize,
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Where the JSON report goes.
        #[arg(long)]
        out: PathBuf,
        /// Only this system (no table, no report): for working on one of them.
        #[arg(long, value_enum)]
        only: Option<compare::System>,
    },
}

mod bgp;
mod compare;
mod failover;
mod pools;

fn main() -> Result<()> {
    match Cli::parse().bench {
        Bench::Controller { controller, latency_services, bulk_services } => {
            let dir = tempfile::tempdir()?;
            let plane = ControlPlane::start(&dir.path().join("control-plane"))?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(controller_bench(&plane, dir.path(), &controller, latency_services, bulk_services))
        }
        Bench::Pools { controller, counts } => pools::run(&controller, &counts),
        Bench::Failover { bin_dir, repo, trials, bgp: true, services, .. } => bgp::run(bin_dir, repo, trials, services),
        Bench::Failover { bin_dir, repo, trials, vips, keepalived, .. } => {
            failover::run(bin_dir, repo, trials, vips, keepalived)
        }
        Bench::Compare { bin_dir, repo, metallb_dir, metallb_version, trials, services, out, only } => {
            compare::run(compare::Options {
                bin_dir,
                repo,
                metallb: ferrolb_e2e::metallb::MetallbBuild { dir: metallb_dir },
                metallb_version,
                trials,
                services,
                out,
                only,
            })
        }
    }
}

async fn controller_bench(
    plane: &ControlPlane,
    dir: &std::path::Path,
    binary: &std::path::Path,
    latency_services: usize,
    bulk_services: usize,
) -> Result<()> {
    let client = plane.admin_client().await?;
    install_ferrolb_crds(&client).await?;
    create_namespace(&client, "ferrolb-system").await?;
    create_namespace(&client, "latency").await?;
    create_namespace(&client, "bulk").await?;
    let pool = IPAddressPool::new("bench", IPAddressPoolSpec::with_addresses(&["2001:db8:be::/112"]));
    Api::<IPAddressPool>::all(client.clone())
        .patch("bench", &PatchParams::apply("bench"), &Patch::Apply(&pool))
        .await?;

    let mut command = Command::new(binary);
    command
        .args(["--metrics-address", "127.0.0.1:0"])
        .env("KUBECONFIG", plane.kubeconfig_path())
        .env("RUST_LOG", "warn");
    let controller = ManagedProcess::spawn("controller", command, &dir.join("controller.log"))?;

    // Records when each Service is first seen with an address.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let (seen, services) = (seen.clone(), Api::<Service>::all(client.clone()));
        tokio::spawn(async move {
            let stream = watcher(services, watcher::Config::default()).default_backoff().applied_objects();
            futures::pin_mut!(stream);
            while let Ok(Some(service)) = stream.try_next().await {
                let has_ip = service
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|l| l.ingress.as_ref())
                    .is_some_and(|i| !i.is_empty());
                if has_ip {
                    let key = format!(
                        "{}/{}",
                        service.metadata.namespace.unwrap_or_default(),
                        service.metadata.name.unwrap_or_default()
                    );
                    seen.lock().map(|mut s| s.entry(key).or_insert_with(Instant::now).to_owned()).ok();
                }
            }
        })
    };

    println!("controller: Service created -> status written ({latency_services} Services, 10 at a time)");
    let created = create_services(&client, "latency", latency_services, 10).await?;
    wait_all(&seen, "latency", latency_services).await?;
    let mut latencies: Vec<Duration> = {
        let seen = seen.lock().map_err(|_| anyhow::anyhow!("lock"))?;
        created
            .iter()
            .filter_map(|(name, at)| seen.get(&format!("latency/{name}")).map(|s| s.saturating_duration_since(*at)))
            .collect()
    };
    latencies.sort();
    println!(
        "  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(&latencies, 50)),
        ms(percentile(&latencies, 99)),
        ms(latencies.last().copied().unwrap_or_default())
    );

    println!("controller: {bulk_services} Services created 50 at a time, until every one has an address");
    let started = Instant::now();
    create_services(&client, "bulk", bulk_services, 50).await?;
    let created_in = started.elapsed();
    wait_all(&seen, "bulk", bulk_services).await?;
    println!(
        "  all created in {:.1} s, all with an address after {:.1} s",
        created_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", controller.pid()))?;
    let peak = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("VmHWM: unknown");
    let now = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: unknown");
    println!(
        "  controller memory with {} Services: peak {} / now {}",
        latency_services + bulk_services,
        peak.trim_start_matches("VmHWM:").trim(),
        now.trim_start_matches("VmRSS:").trim()
    );
    watch.abort();
    Ok(())
}

async fn create_services(
    client: &kube::Client,
    namespace: &str,
    count: usize,
    concurrency: usize,
) -> Result<Vec<(String, Instant)>> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let results: Vec<Result<(String, Instant)>> = futures::stream::iter(0..count)
        .map(|i| {
            let services = services.clone();
            async move {
                let name = format!("svc-{i}");
                let service = ferrolb_e2e::objects::ipv6_load_balancer(&name, None);
                services.create(&PostParams::default(), &service).await.with_context(|| format!("creating {name}"))?;
                Ok((name, Instant::now()))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn wait_all(seen: &Arc<Mutex<HashMap<String, Instant>>>, namespace: &str, count: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let prefix = format!("{namespace}/");
    while Instant::now() < deadline {
        let done = seen.lock().map(|s| s.keys().filter(|k| k.starts_with(&prefix)).count()).unwrap_or(0);
        if done >= count {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("not every Service in {namespace} got an address within 600 s")
}

/// User + system CPU time of process `pid` so far.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    ferrolb_telemetry::process::cpu_seconds(&stat).context("unreadable /proc stat")
}

/// The resident memory of process `pid` now.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = ferrolb_telemetry::process::status_number(&status, "VmRSS:").context("no VmRSS")?;
    Ok(u64::try_from(kib)?)
}

/// The `p`th percentile of `sorted` (ascending; the default when empty).
fn percentile<T: Copy + Default>(sorted: &[T], p: usize) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[((sorted.len() * p).div_ceil(100)).saturating_sub(1).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
