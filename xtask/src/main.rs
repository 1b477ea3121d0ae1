//! `cargo xtask <verb>`: every developer and CI action, in Rust, so the README's commands are the ones CI runs.
//!
//! xtask stays light (no kube, no tokio) because it is compiled in every fresh clone before anything else; the
//! heavy work runs in the workspace's own binaries, built into the shared cache.

mod deps;
mod docs;
/// The FRR daemons BGP mode runs (one list for the speaker, the lab and the FRR image).
#[path = "../../speaker/src/bgp/daemons.rs"]
#[allow(dead_code)]
mod frr_daemons;
mod image;
mod k8s_bins;
mod lab;
mod release;
mod run;
#[path = "../../tests/src/toolchain.rs"]
mod toolchain;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "ferrolb's developer and CI tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the suite needs: Debian packages and the Kubernetes binaries built from the Go module proxy.
    Deps,
    /// Run the whole suite: deps, `cargo fmt --check`, clippy with -D warnings, every unit, integration and e2e test.
    Test {
        /// Arguments passed on to `cargo test` after `--` (a test name filter, `--nocapture`, ...).
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Benchmarks, printing their figures: `bench controller`, `bench failover`, `bench compare` (against
    /// MetalLB, built from its Go module).
    Bench {
        #[arg(value_parser = ["controller", "failover", "compare"])]
        what: String,
        /// For `failover`: native, keepalived or bgp speakers.
        #[arg(long, value_parser = ["native", "keepalived", "bgp"], default_value = "native")]
        mode: String,
        /// For `compare`: failover trials per fault and per system.
        #[arg(long, default_value_t = 10)]
        trials: usize,
        /// For `compare`: Services created for the latency, memory and CPU rows.
        #[arg(long, default_value_t = 1000)]
        services: usize,
    },
    /// Fuzz the speaker's wire parsers (ARP, NDP, gossip) and pool-entry parsing: every target, or one.
    Fuzz {
        #[arg(value_parser = ["arp", "ndp", "gossip", "address-entry"])]
        target: Option<String>,
        /// Time per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Regenerate the CRD YAML in charts/ferrolb/crds from the ferrolb-crds types.
    Crds,
    /// Build ferrolb's images (and the lab's pause and demo images) as OCI archives in target/images, without
    /// Docker or a registry.
    Image {
        /// The images' tag (default: the chart's appVersion).
        #[arg(long)]
        tag: Option<String>,
    },
    /// Bring up the local lab (API server, controller, three speaker nodes, a demo Service), or `lab down`.
    Lab(lab::LabArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Deps => deps::install_all(),
        Command::Image { tag } => {
            deps::install_all()?;
            image::run(tag)
        }
        Command::Test { cargo_test_args } => test(&cargo_test_args),
        Command::Lab(args) => lab::run(args),
        Command::Bench { what, mode, trials, services } => bench(&what, &mode, trials, services),
        Command::Fuzz { target, seconds } => {
            run::step(
                "cargo build --release -p ferrolb-e2e --bin ferrolb-fuzz",
                run::cargo(&["build", "--release", "-p", "ferrolb-e2e", "--bin", "ferrolb-fuzz"]),
            )?;
            let mut fuzz =
                std::process::Command::new(toolchain::cargo_target_dir().join("release").join("ferrolb-fuzz"));
            fuzz.arg("--seconds").arg(seconds.to_string());
            if let Some(target) = target {
                fuzz.arg(target);
            }
            run::step("fuzz", fuzz)
        }
        Command::Crds => {
            let dir = run::workspace_root().join("charts").join("ferrolb").join("crds");
            let dir = dir.to_string_lossy();
            run::step("crdgen", run::cargo(&["run", "--quiet", "-p", "ferrolb-crds", "--bin", "crdgen", "--", &dir]))
        }
    }
}

fn test(cargo_test_args: &[String]) -> Result<()> {
    let started = std::time::Instant::now();
    deps::install_all()?;
    run::step("cargo fmt --check", run::cargo(&["fmt", "--all", "--check"]))?;
    run::step(
        "cargo clippy --all-targets -- -D warnings",
        run::cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]),
    )?;
    // The e2e tests start the workspace's binaries as processes, so they must exist before the tests run.
    run::step("cargo build --workspace --bins", run::cargo(&["build", "--workspace", "--bins"]))?;
    // The kubelet tests install the chart with the images of this tree, as a user would.
    image::run(None)?;
    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    if !cargo_test_args.is_empty() {
        args.push("--");
        args.extend(cargo_test_args.iter().map(String::as_str));
    }
    let totals = run::cargo_test("cargo test --workspace", run::cargo(&args))?;
    eprintln!("xtask test: everything passed in {:.0?}", started.elapsed());
    // cargo's own last line is the last doc-test binary's, often "0 passed": print the whole run's count.
    println!("tests: {} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.ignored);
    if totals.passed == 0 {
        anyhow::bail!("cargo test ran no test");
    }
    Ok(())
}

/// The controller, the speaker and the benchmark binaries, optimised.
fn build_release_binaries() -> Result<()> {
    run::step(
        "cargo build --release (controller, speaker, bench)",
        run::cargo(&[
            "build",
            "--release",
            "-p",
            "ferrolb-controller",
            "-p",
            "ferrolb-speaker",
            "-p",
            "ferrolb-e2e",
            "--bins",
        ]),
    )
}

fn bench(what: &str, mode: &str, trials: usize, services: usize) -> Result<()> {
    deps::install_all()?;
    match what {
        "controller" => {
            run::step(
                "allocator: 100 000 allocations",
                run::cargo(&["bench", "-p", "ferrolb-controller", "--bench", "allocator"]),
            )?;
            run::step(
                "cargo build --release (controller, bench)",
                run::cargo(&["build", "--release", "-p", "ferrolb-controller", "-p", "ferrolb-e2e", "--bins"]),
            )?;
            let release = toolchain::cargo_target_dir().join("release");
            let mut bench = std::process::Command::new(release.join("ferrolb-bench"));
            bench.args(["controller", "--controller"]).arg(release.join("ferrolb-controller"));
            run::step("controller: latency, 10 000 Services, memory", bench)?;
            let mut pools = std::process::Command::new(release.join("ferrolb-bench"));
            pools.args(["pools", "--controller"]).arg(release.join("ferrolb-controller"));
            run::step("controller: 2 000 and 10 000 pools (settle time, CPU, Service latency, restart)", pools)
        }
        "failover" => {
            build_release_binaries()?;
            let release = toolchain::cargo_target_dir().join("release");
            let mut bench = std::process::Command::new(release.join("ferrolb-bench"));
            bench.arg("failover").arg("--bin-dir").arg(&release).arg("--repo").arg(run::workspace_root());
            if mode == "keepalived" {
                bench.arg("--keepalived");
            }
            if mode == "bgp" {
                bench.arg("--bgp");
                return run::step(
                    "failover (bgp): link cut, FRR killed, graceful stop (20 trials each); Service -> route over 200 Services",
                    bench,
                );
            }
            run::step("failover: SIGKILL, link cut, SIGTERM (20 trials each); speaker memory with 10 000 VIPs", bench)
        }
        "compare" => {
            k8s_bins::ensure_metallb()?;
            build_release_binaries()?;
            let release = toolchain::cargo_target_dir().join("release");
            let out = run::workspace_root().join("target").join("bench").join("compare.json");
            let mut bench = std::process::Command::new(release.join("ferrolb-bench"));
            bench
                .arg("compare")
                .arg("--bin-dir")
                .arg(&release)
                .arg("--repo")
                .arg(run::workspace_root())
                .arg("--metallb-dir")
                .arg(toolchain::metallb_dir())
                .args(["--metallb-version", toolchain::METALLB_VERSION])
                .args(["--trials", &trials.to_string(), "--services", &services.to_string()])
                .arg("--out")
                .arg(&out);
            run::step(&format!("compare with MetalLB {}", toolchain::METALLB_VERSION), bench)
        }
        other => anyhow::bail!("unknown benchmark {other}: controller, failover or compare"),
    }
}
