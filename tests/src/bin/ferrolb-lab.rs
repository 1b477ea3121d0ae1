//! `ferrolb-lab up` runs the local lab in the foreground until SIGTERM/SIGINT (`cargo xtask lab` starts it in
//! the background); `ferrolb-lab down` stops a running lab and removes whatever it left behind.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferrolb_e2e::kubelet_lab::Images;
use ferrolb_e2e::lab_supervisor::{self, LabConfig, RunningLab};

#[derive(Parser)]
#[command(name = "ferrolb-lab")]
struct Cli {
    /// Where lab.json, logs, the kubeconfig and the control plane's data go.
    #[arg(long, default_value = "target/lab")]
    state_dir: PathBuf,
    /// Speakers in keepalived mode.
    #[arg(long)]
    keepalived: bool,
    /// BGP mode: a router (BIRD) the client is behind, an FRR per node, the speakers in bgp mode.
    #[arg(long, conflicts_with = "keepalived")]
    bgp: bool,
    /// With --bgp: the speakers run native L2 beside BGP (`--mode native+bgp`), the L2 demo pool applied too.
    #[arg(long, requires = "bgp")]
    with_native: bool,
    /// The controller's /metrics address on the host (port 0: any free port).
    #[arg(long, default_value = lab_supervisor::CONTROLLER_METRICS_ADDRESS)]
    controller_metrics_address: String,
    /// Run ferrolb's binaries as processes beside fake Nodes instead of real kubelets running its chart.
    #[arg(long)]
    processes: bool,
    /// Kubelet mode: where the image archives are (`cargo xtask image` puts them in <cache>/target/images).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Kubelet mode: the images' tag (default: the chart's appVersion).
    #[arg(long)]
    image_tag: Option<String>,
    /// Prefix of the lab's network namespace names.
    #[arg(long, default_value = "ferrolb-lab")]
    prefix: String,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Bring the lab up and supervise it until SIGTERM or SIGINT.
    Up {
        /// Directory holding ferrolb-controller and ferrolb-speaker.
        #[arg(long)]
        bin_dir: PathBuf,
        /// The repository (for the generated CRDs and the demo manifests).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Stop the lab and remove every namespace and process it made.
    Down,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        // `cargo xtask lab` sends this to a log file: colour codes only for a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut cli = Cli::parse();
    // lab.json and the kubeconfig name these paths; they must work from any directory.
    cli.state_dir = std::path::absolute(&cli.state_dir)?;
    match cli.command {
        Verb::Up { bin_dir, repo, nodes } => {
            let (bin_dir, repo) = (std::path::absolute(bin_dir)?, std::path::absolute(repo)?);
            let kubelet = if cli.processes {
                None
            } else {
                let mut images = Images::built_by_xtask(&repo)?;
                if let Some(dir) = cli.images {
                    images.dir = std::path::absolute(dir)?;
                }
                if let Some(tag) = cli.image_tag {
                    images.tag = tag;
                }
                Some(images)
            };
            let config = LabConfig {
                state_dir: cli.state_dir,
                bin_dir,
                repo,
                prefix: cli.prefix,
                nodes,
                controller_metrics_address: cli.controller_metrics_address,
                keepalived: cli.keepalived,
                bgp: cli.bgp,
                bgp_with_native: cli.with_native,
                speaker_args: Vec::new(),
                kubelet,
            };
            std::fs::create_dir_all(&config.state_dir)?;
            std::fs::write(config.pid_file(), std::process::id().to_string()).context("writing the pid file")?;
            let mut lab = RunningLab::start(config).context("bringing the lab up")?;
            tracing::info!("lab is up");
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(lab.supervise(stop_signal()))?;
            tracing::info!("stopping the lab");
            drop(lab);
            Ok(())
        }
        Verb::Down => {
            let config = LabConfig {
                state_dir: cli.state_dir,
                bin_dir: PathBuf::new(),
                repo: PathBuf::new(),
                prefix: cli.prefix,
                nodes: 0,
                controller_metrics_address: cli.controller_metrics_address,
                keepalived: cli.keepalived,
                bgp: cli.bgp,
                bgp_with_native: cli.with_native,
                speaker_args: Vec::new(),
                kubelet: None,
            };
            for leftover in lab_supervisor::down(&config) {
                tracing::warn!("removed leftover: {leftover}");
            }
            Ok(())
        }
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
