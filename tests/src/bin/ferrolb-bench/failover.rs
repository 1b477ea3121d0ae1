//! `ferrolb-bench failover`: in the lab (3 nodes, default speaker settings), faults on the VIP's owner and
//! the time until the client's requests are answered through the new owner, measured from the client; then
//! the speakers' memory with many announced VIPs.
//!
//! The prober in the client namespace sends one HTTP request after another (50 ms connect timeout) and
//! notes when the first answer from another node arrives. After SIGKILL or SIGTERM of the owner's speaker
//! the old node still serves the VIP (its kernel routes it, as kube-proxy would) until the client learns the
//! new MAC, so the figure is "until traffic moved", not "until traffic resumed".

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrolb_crds::{IPAddressPool, IPAddressPoolSpec, L2Advertisement, L2AdvertisementSpec};
use ferrolb_e2e::lab_supervisor::{LabConfig, RunningLab};
use ferrolb_e2e::netns;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, PostParams};
use nix::sys::signal::Signal;

use crate::{ms, percentile};

const VIP: &str = "192.0.2.200";

#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    Sigkill,
    LinkCut,
    Sigterm,
}

impl Fault {
    pub(crate) const ALL: [Fault; 3] = [Fault::Sigkill, Fault::LinkCut, Fault::Sigterm];

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Fault::Sigkill => "SIGKILL of the owner's speaker",
            Fault::LinkCut => "cut of the owner's link (eth0 down)",
            Fault::Sigterm => "SIGTERM of the owner's speaker",
        }
    }
}

pub fn run(bin_dir: PathBuf, repo: PathBuf, trials: usize, vips: usize, keepalived: bool) -> Result<()> {
    let state = tempfile::tempdir()?;
    let config = LabConfig { keepalived, ..LabConfig::processes(state.path().to_path_buf(), bin_dir, repo) };
    let mut lab = RunningLab::start(config).context("starting the lab")?;
    let client_ns = lab.lab().client().netns.clone();
    wait_until(Duration::from_secs(60), || curl(&client_ns, VIP).is_some()).context("the demo VIP never answered")?;

    let faults = if trials == 0 { Vec::new() } else { Fault::ALL.to_vec() };
    let mode = if keepalived { "keepalived mode, advert interval 1 s" } else { "native mode" };
    for fault in faults {
        println!("failover ({mode}): {} ({trials} trials)", fault.describe());
        let mut samples = Vec::new();
        let (mut detected, mut announced) = (Vec::new(), Vec::new());
        for trial in 0..trials {
            let owner = stable_owner(&client_ns, VIP)?;
            let stop = Arc::new(AtomicBool::new(false));
            let prober = {
                let (ns, owner, stop) = (client_ns.clone(), owner.clone(), stop.clone());
                std::thread::spawn(move || netns::in_netns(&ns, move || Ok(probe_until_moved(VIP, &owner, &stop))))
            };
            std::thread::sleep(Duration::from_millis(300));
            let (fault_at, fault_wall) = (Instant::now(), jiff::Timestamp::now());
            inject(&mut lab, fault, &owner)?;
            let moved = wait_joined(prober, &stop, Duration::from_secs(15))?;
            match moved {
                Some((at, to)) => {
                    let took = at.saturating_duration_since(fault_at);
                    samples.push(took);
                    // Where the time went, from the new owner's log: the gossip declared the old owner down,
                    // then it announced the VIPs (after its probes and first gratuitous ARP / NA).
                    let log = lab.speaker_log(&to, 400);
                    let down = first_after(&log, fault_wall, &["member down", &format!("node={owner}")]);
                    let took_over = first_after(&log, fault_wall, &[&format!("announced from node {to}")]);
                    detected.extend(down);
                    announced.extend(took_over);
                    if trial == 0 {
                        println!("  trial 1: {owner} -> {to} in {:.0} ms", ms(took));
                    }
                }
                None => println!("  trial {}: traffic did not move within 15 s", trial + 1),
            }
            restore(&mut lab, fault, &owner)?;
            // The restored node wins its VIP back (rendezvous): wait for that before the next trial.
            wait_until(Duration::from_secs(30), || curl(&client_ns, VIP).as_deref() == Some(owner.as_str()))
                .with_context(|| {
                    let logs: Vec<String> = ["node-1", "node-2", "node-3"]
                        .iter()
                        .map(|n| format!("--- speaker on {n}:\n{}", lab.speaker_log(n, 40)))
                        .collect();
                    format!("{owner} did not take its VIP back\n{}", logs.join("\n"))
                })?;
        }
        samples.sort();
        println!(
            "  moved in {}/{trials}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            samples.len(),
            ms(percentile(&samples, 50)),
            ms(percentile(&samples, 99)),
            ms(samples.last().copied().unwrap_or_default())
        );
        for (what, mut since_fault) in
            [("the old owner declared down", detected), ("the new owner announced (NodeAssigned)", announced)]
        {
            if since_fault.is_empty() {
                continue;
            }
            since_fault.sort();
            println!(
                "    {what}: p50 {:.0} ms, p99 {:.0} ms after the fault ({} trials)",
                ms(percentile(&since_fault, 50)),
                ms(percentile(&since_fault, 99)),
                since_fault.len()
            );
        }
    }

    if vips > 0 && !keepalived {
        memory_with_vips(&lab, vips)?;
    }
    Ok(())
}

/// How long after `since` the first log line holding every one of `needles` was written (the log's lines
/// start with their RFC 3339 time).
fn first_after(log: &str, since: jiff::Timestamp, needles: &[&str]) -> Option<Duration> {
    log.lines().filter(|line| needles.iter().all(|n| line.contains(n))).find_map(|line| {
        let at: jiff::Timestamp = line.split_whitespace().next()?.parse().ok()?;
        let after = at.duration_since(since);
        (!after.is_negative()).then(|| Duration::try_from(after).ok()).flatten()
    })
}

pub(crate) fn inject(lab: &mut RunningLab, fault: Fault, owner: &str) -> Result<()> {
    match fault {
        Fault::Sigkill => lab.signal_speaker(owner, Signal::SIGKILL)?,
        Fault::Sigterm => lab.signal_speaker(owner, Signal::SIGTERM)?,
        Fault::LinkCut => {
            let ns = lab.lab().node(owner).context("no such node")?.netns.clone();
            netns::exec(&ns, "ip", &["link", "set", "eth0", "down"])?;
        }
    }
    Ok(())
}

pub(crate) fn restore(lab: &mut RunningLab, fault: Fault, owner: &str) -> Result<()> {
    match fault {
        Fault::Sigkill | Fault::Sigterm => {
            lab.wait_speaker_exit(owner, Duration::from_secs(10)).context("the speaker did not exit")?;
            lab.start_stopped();
        }
        Fault::LinkCut => {
            let ns = lab.lab().node(owner).context("no such node")?.netns.clone();
            netns::exec(&ns, "ip", &["link", "set", "eth0", "up"])?;
        }
    }
    Ok(())
}

pub(crate) fn wait_joined(
    prober: std::thread::JoinHandle<ferrolb_e2e::Result<Option<(Instant, String)>>>,
    stop: &AtomicBool,
    timeout: Duration,
) -> Result<Option<(Instant, String)>> {
    let deadline = Instant::now() + timeout;
    while !prober.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    match prober.join() {
        Ok(result) => Ok(result?),
        Err(_) => bail!("the prober panicked"),
    }
}

/// Requests one after another until a node other than `owner` answers: when, and which.
pub(crate) fn probe_until_moved(vip: &str, owner: &str, stop: &AtomicBool) -> Option<(Instant, String)> {
    let address: SocketAddr = (vip.parse::<std::net::IpAddr>().ok()?, 80).into();
    while !stop.load(Ordering::Relaxed) {
        if let Some(node) = request(address)
            && node != owner
        {
            return Some((Instant::now(), node));
        }
    }
    None
}

pub(crate) fn request(address: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(50)).ok()?;
    stream.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    stream.write_all(b"GET / HTTP/1.1\r\nhost: vip\r\nconnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.rsplit("\r\n\r\n").next().map(|body| body.trim().to_string()).filter(|b| !b.is_empty())
}

pub(crate) fn curl(client_ns: &str, vip: &str) -> Option<String> {
    let output = netns::exec(client_ns, "curl", &["-s", "--max-time", "1", &format!("http://{vip}/")]).ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The node that answered three times in a row, 200 ms apart.
pub(crate) fn stable_owner(client_ns: &str, vip: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let answers: Vec<Option<String>> = (0..3)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(200));
                curl(client_ns, vip)
            })
            .collect();
        if let Some(Some(first)) = answers.first()
            && answers.iter().all(|a| a.as_ref() == Some(first))
        {
            return Ok(first.clone());
        }
    }
    bail!("no stable owner within 30 s")
}

pub(crate) fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {} s", timeout.as_secs())
}

/// `vips` single-stack IPv6 Services from a pool that only node-1 announces, each with a ready endpoint:
/// node-1's speaker ends up announcing all of them. Prints every speaker's RSS.
fn memory_with_vips(lab: &RunningLab, vips: usize) -> Result<()> {
    println!("speaker memory: {vips} IPv6 VIPs, all announced by node-1 (a pool inside the nodes' IPv6 subnet)");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = lab.plane().admin_client().await?;
        let pool = IPAddressPool::new(
            "bench-v6",
            IPAddressPoolSpec { auto_assign: false, ..IPAddressPoolSpec::with_addresses(&["2001:db8::1:0/112"]) },
        );
        Api::<IPAddressPool>::all(client.clone()).create(&PostParams::default(), &pool).await?;
        let advertisement = L2Advertisement::new(
            "bench-v6",
            L2AdvertisementSpec {
                ip_address_pools: vec!["bench-v6".into()],
                node_selectors: vec![LabelSelector {
                    match_labels: Some([("kubernetes.io/hostname".to_string(), "node-1".to_string())].into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        Api::<L2Advertisement>::all(client.clone()).create(&PostParams::default(), &advertisement).await?;
        ferrolb_e2e::objects::create_namespace(&client, "bench-vips").await?;
        let started = Instant::now();
        let created: Vec<Result<()>> = futures::stream::iter(0..vips)
            .map(|i| {
                let client = client.clone();
                async move {
                    let name = format!("vip-{i}");
                    let service = ferrolb_e2e::objects::ipv6_load_balancer(&name, Some("bench-v6"));
                    ferrolb_e2e::objects::create_ipv6_service_with_backend(
                        &client,
                        "bench-vips",
                        &service,
                        "node-1",
                        i + 1,
                    )
                    .await
                    .with_context(|| format!("creating {name}"))
                }
            })
            .buffer_unordered(50)
            .collect()
            .await;
        created.into_iter().collect::<Result<Vec<()>>>()?;
        println!("  {vips} Services and EndpointSlices created in {:.1} s", started.elapsed().as_secs_f64());
        anyhow::Ok(())
    })?;
    let metrics_of = |node: &str| -> String {
        let ns = lab.lab().node(node).map(|n| n.netns.clone()).unwrap_or_default();
        netns::exec(&ns, "curl", &["-s", "--max-time", "2", "http://127.0.0.1:7473/metrics"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let owned = |node: &str| -> u64 {
        metrics_of(node)
            .lines()
            .find(|l| l.starts_with("ferrolb_speaker_owned_vips "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let started = Instant::now();
    wait_until(Duration::from_secs(600), || owned("node-1") as usize >= vips)
        .context("node-1 never announced them all")?;
    println!(
        "  node-1 announces {} VIPs {:.1} s after the last Service was created",
        owned("node-1"),
        started.elapsed().as_secs_f64()
    );
    // What a node holds once the storm is over: the speaker hands freed heap back every 10 s (the peak
    // shows the storm itself).
    std::thread::sleep(Duration::from_secs(12));
    for node in ["node-1", "node-2", "node-3"] {
        let pid = lab.speaker_pid(node).context("speaker not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status.lines().find(|l| l.starts_with(name)).map(|l| l[name.len()..].trim().to_string()).unwrap_or_default()
        };
        println!(
            "  speaker on {node}: owns {} VIPs, RSS {} (peak {}; heap and stacks {}, mapped files {})",
            owned(node),
            field("VmRSS:"),
            field("VmHWM:"),
            field("RssAnon:"),
            field("RssFile:")
        );
    }
    Ok(())
}
