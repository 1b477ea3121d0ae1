//! `ferrolb-speaker`: runs on every node (DaemonSet, hostNetwork, CAP_NET_RAW). The speakers agree over
//! gossip on one owner node per VIP; the owner answers ARP and Neighbor Solicitations for it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use ferrolb_speaker::bgp::run::{BgpBackend, BgpOptions};
use ferrolb_speaker::cluster::ClassFilter;
use ferrolb_speaker::combined::Combined;
use ferrolb_speaker::driver::{self, Options};
use ferrolb_speaker::keepalived::render;
use ferrolb_speaker::keepalived::run::{KeepalivedBackend, KeepalivedOptions};
use ferrolb_speaker::l2::run::{L2Backend, L2Options};
use ferrolb_speaker::l2::{self, announcer::Timing, gossip_auth::SharedKey, membership};
use ferrolb_speaker::metrics::Metrics;
use ferrolb_speaker::report::EventSource;
use ferrolb_telemetry::{LogFormat, init_logging, shutdown_signal};
use ferrolb_telemetry::{MetricsAuth, Started};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The speaker answers ARP and NDP itself (gossip election, sub-second failover).
    Native,
    /// The speaker renders keepalived's VRRP configuration and supervises keepalived (needs CAP_NET_ADMIN).
    Keepalived,
    /// The speaker drives the FRR beside it: every eligible node announces the VIPs to the BGPPeers.
    Bgp,
    /// Both native and bgp: each serves the pools its own advertisements select (L2Advertisements,
    /// BGPAdvertisements), the same pool by both if both select it.
    #[value(name = "native+bgp")]
    NativeBgp,
}

#[derive(Debug, Parser)]
#[command(
    name = "ferrolb-speaker",
    version,
    about = "Announces ferrolb's VIPs: by ARP/NDP from one elected node each, by VRRP, or by BGP from every eligible node"
)]
struct Args {
    #[arg(long, env = "FERROLB_MODE", value_enum, default_value = "native")]
    mode: Mode,
    /// keepalived mode: the keepalived executable.
    #[arg(long, env = "FERROLB_KEEPALIVED_BINARY", default_value = "keepalived")]
    keepalived_binary: PathBuf,
    /// keepalived mode: where its configuration, pid files and notify FIFO go.
    #[arg(long, env = "FERROLB_KEEPALIVED_DIR", default_value = "/run/ferrolb/keepalived")]
    keepalived_dir: PathBuf,
    /// keepalived mode: the VRIDs ferrolb may use on the LAN, `FIRST-LAST` (keep clear of other VRRP users).
    #[arg(long, env = "FERROLB_VRID_RANGE", default_value = "1-255", value_parser = parse_vrid_range)]
    vrid_range: (u8, u8),
    /// keepalived mode: VRRP advertisement interval (failover takes about three of them).
    #[arg(long, env = "FERROLB_ADVERT_INTERVAL_MS", default_value_t = ms(render::Settings::default().advert_interval))]
    advert_interval_ms: u64,
    /// keepalived mode: multicast VRRP instead of unicast to the candidates' node addresses.
    #[arg(long, env = "FERROLB_VRRP_MULTICAST")]
    vrrp_multicast: bool,
    /// bgp mode: the directory of FRR's vty sockets (`bgpd.vty`, `bfdd.vty`), shared with the FRR container.
    #[arg(long, env = "FERROLB_FRR_DIR", default_value = "/run/ferrolb/frr")]
    frr_dir: PathBuf,
    /// bgp mode: the speaker's Pod (the chart sets it): when it is being deleted, FRR beside it stops too, so
    /// the routes are withdrawn first.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// This node's name (the Pod's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Namespace where L2Announcements are written (the install namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferrolb-system")]
    namespace: String,
    /// `spec.loadBalancerClass` of the Services to announce (the controller's setting).
    #[arg(long, env = "FERROLB_LOAD_BALANCER_CLASS", default_value = ferrolb_crds::DEFAULT_LOAD_BALANCER_CLASS)]
    load_balancer_class: String,
    /// Leave LoadBalancer Services that set no class to another implementation.
    #[arg(long, env = "FERROLB_IGNORE_UNSET_CLASS")]
    ignore_unset_class: bool,
    /// Only use IPAddressPools matching this label selector (the controller's setting).
    #[arg(long, env = "FERROLB_POOL_SELECTOR")]
    pool_selector: Option<String>,
    /// File holding the gossip key shared by every speaker (mounted from a Secret), at least 16 bytes.
    #[arg(long, env = "FERROLB_GOSSIP_KEY_FILE", default_value = "/etc/ferrolb/gossip/key")]
    gossip_key_file: PathBuf,
    #[arg(long, env = "FERROLB_GOSSIP_PORT", default_value_t = 7946)]
    gossip_port: u16,
    /// Address the other speakers reach this one at; the Node's InternalIP by default.
    #[arg(long, env = "FERROLB_GOSSIP_ADDRESS")]
    gossip_address: Option<IpAddr>,
    /// How often a random peer is probed.
    #[arg(long, env = "FERROLB_PROBE_PERIOD_MS", default_value_t = ms(membership::Settings::default().probe_period))]
    probe_period_ms: u64,
    /// How long a direct probe waits before indirect probes start (below the probe period).
    #[arg(long, env = "FERROLB_PROBE_RTT_MS", default_value_t = ms(membership::Settings::default().probe_rtt))]
    probe_rtt_ms: u64,
    /// How long a suspected peer has to refute before it is declared dead.
    #[arg(long, env = "FERROLB_SUSPECT_TIMEOUT_MS", default_value_t = ms(membership::Settings::default().suspect_to_down_after))]
    suspect_timeout_ms: u64,
    /// How often nodes known from the API but not alive in the gossip are contacted.
    #[arg(long, env = "FERROLB_REJOIN_INTERVAL_MS", default_value_t = ms(membership::Settings::default().rejoin_interval))]
    rejoin_interval_ms: u64,
    /// Gratuitous ARPs / unsolicited NAs sent on takeover.
    #[arg(long, env = "FERROLB_ANNOUNCE_BURST", default_value_t = Timing::default().burst)]
    announce_burst: u32,
    #[arg(long, env = "FERROLB_ANNOUNCE_BURST_INTERVAL_MS", default_value_t = ms(Timing::default().burst_interval))]
    announce_burst_interval_ms: u64,
    /// Re-announcement period while a VIP is held (switch tables and caches age out).
    #[arg(long, env = "FERROLB_ANNOUNCE_REFRESH_SECONDS", default_value_t = Timing::default().refresh_interval.as_secs())]
    announce_refresh_seconds: u64,
    /// After start-up or an interface coming back, take nothing over for this long unless another speaker
    /// is seen first.
    #[arg(long, env = "FERROLB_JOIN_GRACE_MS", default_value_t = ms(l2::run::DEFAULT_JOIN_GRACE))]
    join_grace_ms: u64,
    /// The only interfaces the speaker may announce on, comma-separated (default: every usable one).
    #[arg(long, env = "FERROLB_INTERFACES", value_delimiter = ',')]
    interfaces: Vec<String>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "FERROLB_METRICS_ADDRESS", default_value = "0.0.0.0:7473")]
    metrics_address: SocketAddr,
    /// Who may read /metrics: `kubernetes` (a bearer token the API server authorises for `get /metrics`, as
    /// the chart sets) or `none` (anyone who reaches the port).
    #[arg(long, env = "FERROLB_METRICS_AUTH", value_enum, default_value = "none")]
    metrics_auth: MetricsAuth,
    #[arg(long, env = "FERROLB_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn main() -> anyhow::Result<()> {
    one_malloc_arena();
    let args = Args::parse();
    return_freed_heap_periodically();
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads(std::thread::available_parallelism().ok()))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    ferrolb_telemetry::run_logged("speaker", runtime, start(args))
}

/// The most worker threads the speaker's runtime starts. Its work is a few sockets and a plan step now and
/// then; tokio's default of one worker per core gave a 64-core node 64 threads, each with its stack and run
/// queue, on every node of the cluster.
const MAX_WORKER_THREADS: usize = 2;

fn worker_threads(cores: Option<std::num::NonZeroUsize>) -> usize {
    cores.map_or(MAX_WORKER_THREADS, |cores| cores.get().min(MAX_WORKER_THREADS))
}

/// Every thread allocates from one glibc arena. With one arena per thread (glibc's default, up to eight per
/// core) the memory a storm of watch events or a plan step freed stayed in the arena of the thread that
/// happened to run it: at 10 000 Services the node announcing them all kept 42 MiB of heap against 35 MiB
/// with one arena (the others 23 against 20). The speaker's threads allocate little at a time, so they
/// hardly contend for it. `MALLOC_ARENA_MAX` in the environment, if set, is left to decide.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of the allocator, and this runs before any other thread
        // exists. It fails only for an unknown parameter, and then nothing changes.
        #[allow(unsafe_code)]
        let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
}

/// How often the heap's free pages are handed back to the kernel.
const HEAP_TRIM_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// Hands the free pages inside the heap back to the kernel every [`HEAP_TRIM_PERIOD`]. glibc returns only
/// the free space at the top of its heap by itself; a storm of watch events or a plan step over thousands
/// of Services frees megabytes below memory still in use, which then stays resident: at 10 000 Services the
/// node announcing them all had 16.5 MiB of heap in use and 26.6 MiB resident (heap and stacks). A trim
/// walks the free chunks under the allocator's lock, once per period.
fn return_freed_heap_periodically() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new().name("heap-trim".into()).spawn(|| {
            loop {
                std::thread::sleep(HEAP_TRIM_PERIOD);
                // SAFETY: malloc_trim takes the allocator's own locks and only releases pages of free chunks.
                #[allow(unsafe_code)]
                let _ = unsafe { libc::malloc_trim(0) };
            }
        });
        if let Err(e) = spawned {
            eprintln!("not returning freed heap to the kernel: cannot start its thread: {e}");
        }
    }
}

fn parse_vrid_range(text: &str) -> Result<(u8, u8), String> {
    let (first, last) = text.split_once('-').ok_or("expected FIRST-LAST, e.g. 1-255")?;
    let first: u8 = first.trim().parse().map_err(|_| format!("{first:?} is not a VRID (1-255)"))?;
    let last: u8 = last.trim().parse().map_err(|_| format!("{last:?} is not a VRID (1-255)"))?;
    if first == 0 || first > last {
        return Err(format!("{text:?} is not a range of VRIDs within 1-255"));
    }
    Ok((first, last))
}

async fn start(args: Args) -> anyhow::Result<()> {
    let metrics = Metrics::default();
    let Started { client, bound, health } =
        ferrolb_telemetry::connect_and_serve_metrics(args.metrics_address, args.metrics_auth, |registry| {
            metrics.register(registry)
        })
        .await?;
    tracing::info!(address = %bound, node = %args.node_name, "serving /metrics, /healthz, /readyz");

    let events = EventSource {
        client: client.clone(),
        controller: ferrolb_speaker::report::REPORTING_CONTROLLER,
        instance: args.node_name.clone(),
    };
    let options = Options {
        node_name: args.node_name.clone(),
        namespace: args.namespace.clone(),
        classes: ClassFilter {
            load_balancer_class: args.load_balancer_class.clone(),
            handle_unset_class: !args.ignore_unset_class,
        },
        pool_selector: args.pool_selector.clone(),
        allowed_interfaces: args.interfaces.iter().map(|i| i.trim().to_string()).filter(|i| !i.is_empty()).collect(),
        bgp: matches!(args.mode, Mode::Bgp | Mode::NativeBgp),
    };
    match args.mode {
        Mode::Native => {
            // Checked before any watch starts: a bad key or timer fails at once.
            let l2 = l2_options(&args)?;
            let setup = driver::Setup::start(&client, options, events, metrics).await?;
            let backend = L2Backend::start(&setup, l2).await?;
            driver::run(setup, backend, health, shutdown_signal()).await
        }
        Mode::Keepalived => {
            let keepalived = KeepalivedOptions {
                binary: args.keepalived_binary,
                dir: args.keepalived_dir,
                settings: render::Settings {
                    vrid_first: args.vrid_range.0,
                    vrid_last: args.vrid_range.1,
                    advert_interval: Duration::from_millis(args.advert_interval_ms.max(10)),
                    unicast: !args.vrrp_multicast,
                    ..render::Settings::default()
                },
            };
            let setup = driver::Setup::start(&client, options, events, metrics).await?;
            let backend = KeepalivedBackend::start(&setup, keepalived)?;
            driver::run(setup, backend, health, shutdown_signal()).await
        }
        Mode::Bgp => {
            let setup = driver::Setup::start(&client, options, events, metrics).await?;
            let backend = BgpBackend::start(
                &setup,
                BgpOptions { frr_dir: args.frr_dir, client: client.clone(), pod: args.pod_name },
            );
            driver::run(setup, backend, health, shutdown_signal()).await
        }
        Mode::NativeBgp => {
            let l2 = l2_options(&args)?;
            let setup = driver::Setup::start(&client, options, events, metrics).await?;
            let native = L2Backend::start(&setup, l2).await?;
            let bgp = BgpBackend::start(
                &setup,
                BgpOptions { frr_dir: args.frr_dir, client: client.clone(), pod: args.pod_name },
            );
            driver::run(setup, Combined::new(native, bgp, "native+bgp"), health, shutdown_signal()).await
        }
    }
}

/// Native mode's own settings: the gossip key (read only in this mode), port, timers and announcements.
fn l2_options(args: &Args) -> anyhow::Result<L2Options> {
    let key_bytes = std::fs::read(&args.gossip_key_file)
        .with_context(|| format!("reading the gossip key from {}", args.gossip_key_file.display()))?;
    let gossip_key = SharedKey::from_file_contents(&key_bytes)
        .with_context(|| format!("the gossip key in {}", args.gossip_key_file.display()))?;
    let gossip = membership::Settings {
        probe_period: Duration::from_millis(args.probe_period_ms),
        probe_rtt: Duration::from_millis(args.probe_rtt_ms),
        suspect_to_down_after: Duration::from_millis(args.suspect_timeout_ms),
        rejoin_interval: Duration::from_millis(args.rejoin_interval_ms),
        ..membership::Settings::default()
    };
    gossip.validate().context("gossip timers")?;
    Ok(L2Options {
        gossip_port: args.gossip_port,
        gossip_address: args.gossip_address,
        gossip_key,
        gossip,
        timing: Timing {
            burst: args.announce_burst.max(1),
            burst_interval: Duration::from_millis(args.announce_burst_interval_ms),
            refresh_interval: Duration::from_secs(args.announce_refresh_seconds.max(1)),
        },
        join_grace: Duration::from_millis(args.join_grace_ms),
    })
}

/// A duration as whole milliseconds, for flag defaults taken from the `Default` impls.
fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_has_one_worker_per_core_up_to_two() {
        let cores = |n: usize| std::num::NonZeroUsize::new(n);
        assert_eq!(worker_threads(cores(1)), 1);
        assert_eq!(worker_threads(cores(2)), 2);
        assert_eq!(worker_threads(cores(64)), 2);
        assert_eq!(worker_threads(None), 2, "cores unknown");
    }
}
