//! `ferrolb-fuzz [TARGET] --seconds N`: runs the wire-parser fuzzer (see `ferrolb_e2e::fuzz`) and prints
//! what it did; exits non-zero with the offending input on the first crash.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use ferrolb_e2e::fuzz::{self, Budget, Target};

#[derive(Parser)]
#[command(name = "ferrolb-fuzz")]
struct Cli {
    /// arp, ndp, gossip or address-entry; every target when omitted.
    target: Option<String>,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Mutation seed (the time by default, so every run explores something new).
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let targets = match &cli.target {
        Some(name) => vec![Target::from_name(name).with_context(|| format!("unknown target {name}"))?],
        None => Target::ALL.to_vec(),
    };
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    for target in targets {
        match fuzz::run(target, Budget::Time(Duration::from_secs(cli.seconds)), seed) {
            Ok(stats) => println!(
                "{}: {} inputs in {:.1} s ({:.0}/s), {} accepted, no crash (seed {seed})",
                target.name(),
                stats.inputs,
                stats.elapsed.as_secs_f64(),
                stats.inputs as f64 / stats.elapsed.as_secs_f64().max(1e-9),
                stats.accepted
            ),
            Err(crash) => bail!("{crash} (seed {seed})"),
        }
    }
    Ok(())
}
