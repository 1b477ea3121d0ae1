//! Running child commands with a visible step name and a clear error when they fail.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::toolchain;

/// Runs `command` as a named step, printing its duration; fails with the step's name if it fails.
pub fn step(name: &str, mut command: Command) -> Result<()> {
    eprintln!("==> {name}");
    let started = Instant::now();
    let status = command.status().with_context(|| format!("could not start `{name}`"))?;
    if !status.success() {
        bail!("`{name}` failed ({status})");
    }
    eprintln!("    {name}: ok in {:.1?}", started.elapsed());
    Ok(())
}

/// A `cargo` command using the workspace's shared target directory outside the clone, so that a fresh clone
/// (as CI makes) does not rebuild every dependency.
pub fn cargo(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.args(args).current_dir(workspace_root()).env("CARGO_TARGET_DIR", toolchain::cargo_target_dir());
    command
}

/// Where the workspace's own binaries land when built with [`cargo`].
pub fn workspace_bin_dir() -> PathBuf {
    toolchain::cargo_target_dir().join("debug")
}

pub fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// Whether `program` is found on PATH (or is an existing path).
pub fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}
