//! `ferrolb-frr`: the FRR container of the speaker's pod in BGP mode. Runs FRR's zebra, bgpd and bfdd with
//! their vty sockets in the directory shared with the speaker, and starts again any that exits (the speaker
//! then finds it empty and configures it again). It lives apart from the speaker so that a speaker that
//! restarts withdraws nothing.
//!
//! On SIGTERM (the pod is being deleted: both containers hear it at once) FRR keeps running until the
//! speaker says it is done ([`daemons::SPEAKER_DONE`]): the speaker withdraws this node's routes first and
//! gives the routers time to act on it, so no client request fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ferrolb_speaker::bgp::daemons;
use ferrolb_telemetry::{LogFormat, init_logging, shutdown_signal};
use tokio::process::{Child, Command};
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(name = "ferrolb-frr", version, about = "Runs FRR's zebra, bgpd and bfdd beside ferrolb's speaker")]
struct Args {
    /// The directory shared with the speaker: vty sockets, pid and configuration files.
    #[arg(long, env = "FERROLB_FRR_DIR", default_value = "/run/ferrolb/frr")]
    frr_dir: PathBuf,
    /// Where FRR's daemons are installed.
    #[arg(long, env = "FERROLB_FRR_DAEMONS_DIR", default_value = "/usr/lib/frr")]
    daemons_dir: PathBuf,
    /// The user and group the daemons run as (`root` in ferrolb's image, whose capabilities the pod limits;
    /// `frr` where FRR's package made that user).
    #[arg(long, env = "FERROLB_FRR_USER", default_value = "root")]
    user: String,
    #[arg(long, env = "FERROLB_FRR_GROUP", default_value = "root")]
    group: String,
    /// On SIGTERM, how long to wait for the speaker to withdraw before stopping FRR anyway.
    #[arg(long, env = "FERROLB_FRR_STOP_TIMEOUT_SECONDS", default_value_t = 12)]
    stop_timeout_seconds: u64,
    #[arg(long, env = "FERROLB_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = &args.frr_dir;
    prepare(dir)?;
    let (stop, stopping) = watch::channel(false);
    let mut supervisors = Vec::new();
    for daemon in daemons::DAEMONS {
        let binary = args.daemons_dir.join(daemon);
        anyhow::ensure!(binary.is_file(), "{} is not there (is FRR installed?)", binary.display());
        let arguments = daemons::arguments(daemon, dir, Some((&args.user, &args.group)));
        supervisors.push(tokio::spawn(supervise(daemon, binary, arguments, stopping.clone())));
        if daemon == "zebra" {
            // bgpd and bfdd connect to zebra's socket: start them once it is there.
            wait_for(&dir.join("zserv.api"), Duration::from_secs(5)).await;
        }
    }
    tracing::info!(dir = %dir.display(), "FRR running (zebra, bgpd, bfdd)");
    shutdown_signal().await;
    let timeout = Duration::from_secs(args.stop_timeout_seconds);
    tracing::info!("waiting up to {timeout:?} for the speaker to withdraw this node's routes");
    if wait_for(&dir.join(daemons::SPEAKER_DONE), timeout).await {
        tracing::info!("the speaker is done: stopping FRR");
    } else {
        tracing::warn!("the speaker did not say it was done within {timeout:?}: stopping FRR anyway");
    }
    let _ = stop.send(true);
    for supervisor in supervisors {
        let _ = supervisor.await;
    }
    Ok(())
}

/// The directory with an empty configuration file per daemon (what they run comes from the speaker) and
/// no word from a previous speaker.
fn prepare(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for daemon in daemons::DAEMONS {
        let file = dir.join(format!("{daemon}.conf"));
        std::fs::write(&file, "").with_context(|| format!("writing {}", file.display()))?;
    }
    match std::fs::remove_file(dir.join(daemons::SPEAKER_DONE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).context("removing a previous speaker's word"),
        _ => Ok(()),
    }
}

/// Waits until `path` exists, at most `timeout`; whether it does.
async fn wait_for(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Runs `daemon` until told to stop, starting it again whenever it exits.
async fn supervise(
    daemon: &'static str,
    binary: PathBuf,
    arguments: Vec<std::ffi::OsString>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        match Command::new(&binary).args(&arguments).kill_on_drop(true).spawn() {
            Ok(mut child) => {
                tokio::select! {
                    status = child.wait() => {
                        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                        tracing::warn!(daemon, %status, "exited; starting it again");
                    }
                    _ = stop.changed() => {
                        terminate(daemon, child).await;
                        return;
                    }
                }
            }
            Err(e) => tracing::error!(daemon, binary = %binary.display(), error = %e, "cannot start"),
        }
        failures = if started.elapsed() >= daemons::RAN_FINE { 0 } else { failures.saturating_add(1) };
        tokio::select! {
            _ = tokio::time::sleep(daemons::restart_delay(failures)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// SIGTERM (bgpd closes its sessions with a Cease), then SIGKILL if it has not exited within 3 s.
async fn terminate(daemon: &str, mut child: Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(3), child.wait()).await {
        Ok(_) => tracing::info!(daemon, "stopped"),
        Err(_) => {
            tracing::warn!(daemon, "did not stop within 3 s; killing it");
            let _ = child.kill().await;
        }
    }
}
