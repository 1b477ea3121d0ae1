//! Thin wrappers over `ip` and over `setns(2)`: run a command, or open a socket, inside a network namespace.

use std::fs::File;
use std::process::{Command, Output};

use nix::sched::CloneFlags;

use crate::error::{Error, IoContext, Result};

/// Runs a command to completion; fails with its stderr if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program).args(args).output().context(|| format!("running {program}"))?;
    if !output.status.success() {
        return Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// `ip <args>`.
pub fn ip(args: &[&str]) -> Result<Output> {
    run("ip", args)
}

/// Runs `program args` inside `netns` and returns its output whatever its exit status.
pub fn exec(netns: &str, program: &str, args: &[&str]) -> Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args)
        .output()
        .context(|| format!("running {program} in {netns}"))
}

/// Sets sysctls inside `netns` (`key=value` pairs).
pub fn sysctl(netns: &str, settings: &[&str]) -> Result<()> {
    let mut args = vec!["netns", "exec", netns, "sysctl", "-q", "-w"];
    args.extend_from_slice(settings);
    ip(&args).map(|_| ())
}

/// Every network namespace on the machine, by name.
pub fn list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Process ids running inside `netns`.
pub fn pids(netns: &str) -> Vec<i32> {
    exec_ip_pids(netns).unwrap_or_default()
}

fn exec_ip_pids(netns: &str) -> Result<Vec<i32>> {
    let output = ip(&["netns", "pids", netns])?;
    Ok(String::from_utf8_lossy(&output.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
}

/// Kills every process inside `netns`, then deletes it. Interfaces inside go with it.
pub fn delete(netns: &str) {
    for pid in pids(netns) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = ip(&["netns", "del", netns]);
}

/// Runs `f` on a fresh thread that has entered `netns`. Sockets created inside `f` stay in that namespace
/// for their whole life, wherever they are used afterwards; this thread is the only one that switches.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{netns}");
    let handle = File::open(&path).context(|| format!("opening {path}"))?;
    let context = format!("inside network namespace {netns}");
    std::thread::spawn(move || -> std::io::Result<T> {
        nix::sched::setns(&handle, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| Error::Command { command: context.clone(), detail: "thread panicked".into() })?
    .context(|| context)
}
