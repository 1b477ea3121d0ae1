//! Child processes that never outlive the test run: every child is started with `PR_SET_PDEATHSIG` = SIGKILL
//! from one long-lived spawner thread (the signal fires when the *thread* that forked dies, so forking from a
//! short-lived test thread would kill a shared API server as soon as the first test ends), and is killed on drop.

#![allow(unsafe_code)] // `pre_exec` is unsafe by signature; the closure only calls async-signal-safe prctl/getppid.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::error::{Error, IoContext, Result};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("ferrolb-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| panic!("cannot start the process spawner thread: {e}"));
        Mutex::new(tx)
    })
}

/// Spawns `command` so that it is SIGKILLed when this process dies, however it dies.
pub fn spawn_tied_to_this_process(mut command: Command) -> std::io::Result<Child> {
    let parent = nix::unistd::getpid();
    // SAFETY: prctl and getppid are async-signal-safe; nothing here allocates or takes locks.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The parent may have died between fork and prctl; then nobody would ever kill us.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("parent exited before the child started"));
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| std::io::Error::other("process spawner lock poisoned"))?
        .send((command, reply_tx))
        .map_err(|_| std::io::Error::other("process spawner thread is gone"))?;
    reply_rx.recv().map_err(|_| std::io::Error::other("process spawner thread is gone"))?
}

/// A child process with its output in a log file; SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ManagedProcess {
    /// Starts `program args` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self> {
        let out =
            File::options().create(true).append(true).open(log).context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone().context(|| format!("opening {}", log.display()))?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = spawn_tied_to_this_process(command)
            .map_err(|e| Error::Command { command: name.to_string(), detail: e.to_string() })?;
        Ok(Self { name: name.to_string(), child, log: log.to_path_buf() })
    }

    /// Starts a command inside network namespace `netns` (with `ip netns exec`, which also mounts the
    /// namespace's own /sys so the process sees its interfaces there).
    pub fn spawn_in_netns(name: &str, netns: &str, command: Command, log: &Path) -> Result<Self> {
        let mut wrapped = Command::new("ip");
        wrapped.args(["netns", "exec", netns]).arg(command.get_program()).args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        Self::spawn(name, wrapped, log)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Sends `signal` (SIGTERM for a graceful stop, SIGKILL for a crash).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = i32::try_from(self.child.id())
            .map_err(|_| Error::Command { command: "kill".into(), detail: "pid out of range".into() })?;
        nix::sys::signal::kill(Pid::from_raw(pid), signal)
            .map_err(|e| Error::Command { command: format!("kill -{signal} {}", self.name), detail: e.to_string() })
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: std::time::Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The last `lines` lines of the process's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a text file ("" if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A binary of this workspace, built next to the running test (run `cargo build --workspace --bins` first;
/// `cargo xtask test` does).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    // Tests run from target/<profile>/deps/; the workspace's binaries are in target/<profile>/.
    let exe =
        std::env::current_exe().map_err(|e| Error::Io { context: "locating the test binary".into(), source: e })?;
    let candidates = exe.ancestors().skip(1).take(2).map(|dir| dir.join(name));
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(Error::MissingBinary { binary: name.into(), path: exe.parent().map(|d| d.join(name)).unwrap_or_default() })
}
