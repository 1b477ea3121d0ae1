//! `ferrolb`: the command-line tool, also a kubectl plugin when installed as `kubectl-ferrolb` on the PATH
//! (`kubectl ferrolb status ...`). `ferrolb status [NAMESPACE/NAME]` explains a Service (or the cluster) from
//! the API, reading KUBECONFIG as kubectl does. `ferrolb migrate -f FILE|-` prints ferrolb's equivalent of
//! MetalLB configuration (IPAddressPool, L2Advertisement, legacy AddressPool and ConfigMap) on stdout, and what
//! it changed on stderr; configuration it cannot carry over is an error (exit 1) unless `--allow-partial`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrolb_cli::migrate;

mod status_io;

#[derive(Parser)]
#[command(name = "ferrolb", version, about = "ferrolb's command-line tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print ferrolb's CRDs (the chart's crds/, which `helm upgrade` never updates). Upgrade them first with
    /// `ferrolb crds | kubectl apply --server-side --force-conflicts -f -`.
    Crds,
    /// What ferrolb did with a Service (`NAMESPACE/NAME`, or `NAME` in the current namespace): its IPs, pool,
    /// condition, who announces it where, and for a pending or unannounced one why and what to change. Without
    /// a Service: the pools with their usage, the speakers and whom each hears, the conflicts.
    Status {
        service: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Output,
        /// Where ferrolb is installed (its SpeakerStatuses, L2Announcements and speaker pods).
        #[arg(long, env = "FERROLB_NAMESPACE", default_value = "ferrolb-system")]
        install_namespace: String,
        /// The kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The kubeconfig context (default: its current context).
        #[arg(long)]
        context: Option<String>,
        /// The class ferrolb was installed with (the chart's loadBalancerClass).
        #[arg(long, default_value = ferrolb_crds::DEFAULT_LOAD_BALANCER_CLASS)]
        load_balancer_class: String,
        /// ferrolb was installed with ignoreUnsetClass.
        #[arg(long)]
        ignore_unset_class: bool,
    },
    /// Convert MetalLB's IPAddressPool / L2Advertisement YAML into ferrolb's (stdout); notes on stderr.
    Migrate {
        /// The MetalLB configuration (YAML or JSON, several documents or a `kind: List` as `kubectl get -o
        /// yaml` prints it), or `-` for standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Print what could be converted even when some MetalLB configuration has no ferrolb equivalent
        /// (otherwise that is an error and nothing is printed).
        #[arg(long)]
        allow_partial: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Status {
            service,
            output,
            install_namespace,
            kubeconfig,
            context,
            load_balancer_class,
            ignore_unset_class,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let access = status_io::Access { kubeconfig, context, install_namespace };
            let classes = (load_balancer_class, ignore_unset_class);
            let text =
                runtime.block_on(status_io::report(&access, service.as_deref(), classes, output == Output::Json))?;
            print!("{text}");
            Ok(())
        }
        Command::Crds => {
            for (_, yaml) in ferrolb_crds::rendered_crds()? {
                print!("---\n{yaml}");
            }
            Ok(())
        }
        Command::Migrate { file, allow_partial } => {
            let input = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).context("reading standard input")?;
                text
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let migration = migrate::migrate(&input)?;
            for warning in &migration.warnings {
                eprintln!("warning: {warning}");
            }
            if !migration.unconverted.is_empty() {
                let label = if allow_partial { "not converted" } else { "error" };
                for unconverted in &migration.unconverted {
                    eprintln!("{label}: {unconverted}");
                }
                if !allow_partial {
                    anyhow::bail!(
                        "{} part(s) of the MetalLB configuration cannot be carried over (above); nothing was printed. Pass --allow-partial to print the rest anyway",
                        migration.unconverted.len()
                    );
                }
            }
            let namespaces = migrate::source_namespaces(&input);
            eprintln!(
                "converted {} pool(s) and {} L2Advertisement(s){}; ferrolb's are cluster-scoped. Services keep their metallb.io annotations: ferrolb honours them.",
                migration.pools.len(),
                migration.advertisements.len(),
                if namespaces.is_empty() {
                    String::new()
                } else {
                    format!(" from namespace(s) {}", namespaces.join(", "))
                }
            );
            print!("{}", migration.to_yaml()?);
            Ok(())
        }
    }
}
