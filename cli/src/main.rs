//! `ferrolb`: the command-line tool. `ferrolb migrate -f FILE|-` prints ferrolb's equivalent of MetalLB
//! configuration (IPAddressPool, L2Advertisement, legacy AddressPool and ConfigMap) on stdout, and what it left
//! out on stderr.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrolb_cli::migrate;

#[derive(Parser)]
#[command(name = "ferrolb", version, about = "ferrolb's command-line tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert MetalLB's IPAddressPool / L2Advertisement YAML into ferrolb's (stdout); notes on stderr.
    Migrate {
        /// The MetalLB YAML (several documents allowed), or `-` for standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Migrate { file } => {
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
