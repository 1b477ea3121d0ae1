//! `ferrolb-controller`: gives every LoadBalancer Service of its class a VIP. One replica leads (a Lease);
//! the others wait as standbys and take over when it goes. Only the leader writes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ferrolb_controller::engine::Config;
use ferrolb_controller::metrics::Metrics;
use ferrolb_controller::run::{self, Options};
use ferrolb_telemetry::{LogFormat, MetricsAuth, Started, init_logging, shutdown_signal};
use kube_lease_manager::LeaseManagerBuilder;

#[derive(Debug, Parser)]
#[command(
    name = "ferrolb-controller",
    version,
    about = "Gives LoadBalancer Services a VIP from ferrolb's IPAddressPools"
)]
struct Args {
    /// `spec.loadBalancerClass` of the Services to handle.
    #[arg(long, env = "FERROLB_LOAD_BALANCER_CLASS", default_value = ferrolb_crds::DEFAULT_LOAD_BALANCER_CLASS)]
    load_balancer_class: String,
    /// Leave LoadBalancer Services that set no class to another implementation.
    #[arg(long, env = "FERROLB_IGNORE_UNSET_CLASS")]
    ignore_unset_class: bool,
    /// Only use IPAddressPools matching this label selector (e.g. `tenant=blue`).
    #[arg(long, env = "FERROLB_POOL_SELECTOR")]
    pool_selector: Option<String>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "FERROLB_METRICS_ADDRESS", default_value = "0.0.0.0:7472")]
    metrics_address: SocketAddr,
    /// Who may read /metrics: `kubernetes` (a bearer token the API server authorises for `get /metrics`, as
    /// the chart sets) or `none` (anyone who reaches the port).
    #[arg(long, env = "FERROLB_METRICS_AUTH", value_enum, default_value = "none")]
    metrics_auth: MetricsAuth,
    #[arg(long, env = "FERROLB_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Run without a Lease (a single replica only).
    #[arg(long, env = "FERROLB_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// Namespace of the leader Lease (the install namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferrolb-system")]
    namespace: String,
    #[arg(long, env = "FERROLB_LEASE_NAME", default_value = "ferrolb-controller")]
    lease_name: String,
    /// This replica's name in the Lease; the Pod name by default.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a Lease holds without renewal: a standby takes over after about this long when the leader dies.
    #[arg(long, env = "FERROLB_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    #[arg(long, env = "FERROLB_LEASE_GRACE_SECONDS", default_value_t = 5)]
    lease_grace_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    ferrolb_telemetry::run_logged("controller", runtime, run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let metrics = Metrics::default();
    let Started { client, bound, health } =
        ferrolb_telemetry::connect_and_serve_metrics(args.metrics_address, args.metrics_auth, |registry| {
            metrics.register(registry)
        })
        .await?;
    tracing::info!(address = %bound, "serving /metrics, /healthz, /readyz");

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let options = Options {
        config: Config {
            load_balancer_class: args.load_balancer_class.clone(),
            handle_unset_class: !args.ignore_unset_class,
        },
        pool_selector: args.pool_selector.clone(),
        instance: identity.clone(),
    };

    if args.no_leader_election {
        metrics.is_leader.set(1);
        return run::run(client, options, metrics, health, shutdown_signal()).await;
    }

    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration_seconds)
        .with_grace(args.lease_grace_seconds)
        .build()
        .await
        .with_context(|| format!("setting up the Lease {}/{}", args.namespace, args.lease_name))?;
    let (mut leading, lease_task) = manager.watch().await;
    // A standby is healthy and ready: it only waits.
    health.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(identity = %identity, lease = %format!("{}/{}", args.namespace, args.lease_name), "waiting to lead");
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = &mut shutdown => return release(leading, lease_task).await,
            changed = leading.changed() => changed.context("the lease manager stopped")?,
        }
    }
    tracing::info!(identity = %identity, "leading");
    metrics.is_leader.set(1);
    health.ready.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut lost = leading.clone();
    let lost_leadership = async move {
        while lost.changed().await.is_ok() {
            if !*lost.borrow() {
                return;
            }
        }
    };
    let mut lost_leadership = Box::pin(lost_leadership);
    let stopped_by_signal = {
        let stop = async {
            tokio::select! {
                _ = &mut shutdown => true,
                _ = &mut lost_leadership => false,
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stop_future = async move {
            let graceful = stop.await;
            let _ = tx.send(graceful);
        };
        run::run(client, options, metrics.clone(), health, stop_future).await?;
        rx.await.unwrap_or(true)
    };
    metrics.is_leader.set(0);
    // It holds a receiver of the lease channel; the lease task ends only once every receiver is gone.
    drop(lost_leadership);
    if stopped_by_signal {
        return release(leading, lease_task).await;
    }
    // Another replica leads now. Starting over as a standby with empty state is the safe way to stop writing.
    anyhow::bail!("lost the leader Lease; exiting so that this replica restarts as a standby")
}

/// Gives the Lease up at once on a graceful stop, so a standby takes over without waiting for it to expire.
async fn release(
    leading: tokio::sync::watch::Receiver<bool>,
    lease_task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
) -> anyhow::Result<()> {
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(manager))) => {
            manager.release().await.context("releasing the Lease")?;
            tracing::info!("released the Lease");
        }
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the lease manager failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the lease manager task failed"),
        Err(_) => tracing::warn!("the lease manager did not stop within 5 s; the Lease expires by itself"),
    }
    Ok(())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "ferrolb".into());
    format!("{host}-{}", std::process::id())
}
