//! `ferrolb-bench pools`: the controller with thousands of IPAddressPools. For each pool count, on a fresh
//! API server: the time for the controller to have settled every pool created (each pool's status Ready),
//! its CPU seconds meanwhile, Service created → address with the pools present (p50/p99), and after a
//! crash, restart → first allocation (a Service created while the controller was down gets its address).

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrolb_crds::{IPAddressPool, IPAddressPoolSpec};
use ferrolb_e2e::objects::{create_namespace, install_ferrolb_crds, ipv6_load_balancer};
use ferrolb_e2e::{ControlPlane, ManagedProcess};

use crate::cpu_seconds;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

/// Pools and Services are created this many at a time: the API server on 2 cores is the bound.
const CONCURRENCY: usize = 50;
const LATENCY_SERVICES: usize = 200;

pub fn run(binary: &Path, counts: &[usize]) -> Result<()> {
    for &count in counts {
        let dir = tempfile::tempdir()?;
        let plane = ControlPlane::start(&dir.path().join("control-plane"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(round(&plane, dir.path(), binary, count))?;
    }
    Ok(())
}

fn controller(plane: &ControlPlane, dir: &Path, binary: &Path, name: &str) -> Result<ManagedProcess> {
    let mut command = Command::new(binary);
    command
        .args(["--metrics-address", "127.0.0.1:0", "--no-leader-election"])
        .env("KUBECONFIG", plane.kubeconfig_path())
        .env("RUST_LOG", "warn");
    Ok(ManagedProcess::spawn(name, command, &dir.join(format!("{name}.log")))?)
}

async fn round(plane: &ControlPlane, dir: &Path, binary: &Path, count: usize) -> Result<()> {
    let client = plane.admin_client().await?;
    install_ferrolb_crds(&client).await?;
    create_namespace(&client, "ferrolb-system").await?;
    create_namespace(&client, "bench").await?;
    let pools: Api<IPAddressPool> = Api::all(client.clone());
    let services: Api<Service> = Api::namespaced(client.clone(), "bench");
    println!("controller with {count} IPAddressPools:");

    let running = controller(plane, dir, binary, "controller")?;
    let cpu_before = cpu_seconds(running.pid())?;
    let started = Instant::now();
    let created: Vec<Result<()>> = futures::stream::iter(0..count)
        .map(|i| {
            let pools = pools.clone();
            async move {
                // Disjoint /120s, one per pool, as operators who give each team its own range would.
                let entry = format!("2001:db8:{:x}:{:x}::/120", i / 0x1_0000 + 1, i % 0x1_0000);
                let pool = IPAddressPool::new(&format!("pool-{i:05}"), IPAddressPoolSpec::with_addresses(&[&entry]));
                pools.create(&PostParams::default(), &pool).await.with_context(|| format!("creating pool {i}"))?;
                Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    created.into_iter().collect::<Result<Vec<()>>>()?;
    let created_in = started.elapsed();
    wait_until(Duration::from_secs(900), || async {
        let listed = pools.list(&Default::default()).await.ok()?;
        let ready = listed
            .items
            .iter()
            .filter(|p| p.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready")))
            .count();
        (ready >= count).then_some(())
    })
    .await
    .context("not every pool got a status")?;
    println!(
        "  created in {:.1} s, every pool's status written after {:.1} s; controller CPU meanwhile {:.1} s",
        created_in.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        cpu_seconds(running.pid())? - cpu_before
    );

    let latencies = service_latencies(&client, &services, LATENCY_SERVICES).await?;
    println!(
        "  Service created -> address with them present ({LATENCY_SERVICES} Services, 10 at a time): p50 {:.1} ms, p99 {:.1} ms",
        super::ms(super::percentile(&latencies, 50)),
        super::ms(super::percentile(&latencies, 99)),
    );
    let rss = std::fs::read_to_string(format!("/proc/{}/status", running.pid()))?;
    let rss = rss.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: unknown").trim_start_matches("VmRSS:");
    println!("  controller RSS {}", rss.trim());

    drop(running); // SIGKILL: a crash
    services.create(&PostParams::default(), &ipv6_load_balancer("after-restart", None)).await?;
    let restarted_at = Instant::now();
    let _restarted = controller(plane, dir, binary, "controller-restarted")?;
    wait_until(Duration::from_secs(900), || async {
        let service = services.get("after-restart").await.ok()?;
        (!ferrolb_crds::service::ingress_ips(&service).is_empty()).then_some(())
    })
    .await
    .context("the restarted controller allocated nothing")?;
    println!(
        "  restart -> first allocation: {:.2} s (process start to the waiting Service's address)",
        restarted_at.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Creates `count` Services 10 at a time and returns, for each, the time from its creation to its address
/// as a watch sees it.
async fn service_latencies(client: &kube::Client, services: &Api<Service>, count: usize) -> Result<Vec<Duration>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch = {
        let services = Api::<Service>::namespaced(client.clone(), "bench");
        tokio::spawn(async move {
            let stream = watcher(services, watcher::Config::default()).default_backoff().applied_objects();
            futures::pin_mut!(stream);
            while let Ok(Some(service)) = stream.try_next().await {
                if !ferrolb_crds::service::ingress_ips(&service).is_empty() {
                    let _ = tx.send((service.metadata.name.unwrap_or_default(), Instant::now()));
                }
            }
        })
    };
    let created: Vec<Result<(String, Instant)>> = futures::stream::iter(0..count)
        .map(|i| {
            let services = services.clone();
            async move {
                let name = format!("latency-{i}");
                let at = Instant::now();
                services.create(&PostParams::default(), &ipv6_load_balancer(&name, None)).await?;
                Ok((name, at))
            }
        })
        .buffer_unordered(10)
        .collect()
        .await;
    let created: Vec<(String, Instant)> = created.into_iter().collect::<Result<_>>()?;
    let mut seen = std::collections::HashMap::new();
    let wanted: HashSet<&str> = created.iter().map(|(n, _)| n.as_str()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while seen.len() < wanted.len() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((name, at))) => {
                if wanted.contains(name.as_str()) {
                    seen.entry(name).or_insert(at);
                }
            }
            _ => bail!("only {} of {} Services got an address", seen.len(), wanted.len()),
        }
    }
    watch.abort();
    let mut latencies: Vec<Duration> =
        created.iter().filter_map(|(n, at)| seen.get(n).map(|s: &Instant| s.saturating_duration_since(*at))).collect();
    latencies.sort();
    Ok(latencies)
}

async fn wait_until<F, Fut>(limit: Duration, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if probe().await.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("timed out after {limit:?}")
}
