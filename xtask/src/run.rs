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

/// Counts summed over every `test result:` line of a cargo test run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TestTotals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl TestTotals {
    /// Adds one cargo `test result: ok. 7 passed; 0 failed; 1 ignored; ...` line; other lines are ignored.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(count)) = (words.next(), words.next()) else { continue };
            let Ok(count) = count.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

/// Runs a `cargo test` command as a step, passing its output through and summing its results.
pub fn cargo_test(name: &str, mut command: Command) -> Result<TestTotals> {
    use std::io::{BufRead, BufReader};
    eprintln!("==> {name}");
    let started = Instant::now();
    let mut child =
        command.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("could not start `{name}`"))?;
    let mut totals = TestTotals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            totals.add_line(&line);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{name}` failed ({status}): {} passed, {} failed", totals.passed, totals.failed);
    }
    eprintln!("    {name}: ok in {:.1?}", started.elapsed());
    Ok(totals)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_totals_sum_every_result_line_and_skip_the_rest() {
        let mut totals = TestTotals::default();
        for line in [
            "running 7 tests",
            "test result: ok. 7 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 10.98s",
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            totals.add_line(line);
        }
        assert_eq!(totals, TestTotals { passed: 9, failed: 3, ignored: 1 });
    }
}
