//! keepalived as a child process: configuration written atomically and checked with `keepalived -t` before it
//! replaces the running one, applied with SIGHUP (a reload keeps every instance's state, so no VIP drops),
//! restarted with backoff when it dies, its log lines forwarded, and instance states read from its notify
//! FIFO. It dies with the speaker (parent-death signal), and its VRRP process then leaves cleanly.

#![allow(unsafe_code)] // pre_exec: setting the parent-death signal in the child; the call is async-signal-safe.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::render::{InstanceState, parse_notify};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("keepalived refused the rendered configuration (kept the previous one): {0}")]
    InvalidConfig(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

impl SuperviseError {
    /// Every value [`SuperviseError::reason`] returns.
    pub const REASONS: [&'static str; 2] = ["invalid_config", "io"];

    /// The `reason` label of `ferrolb_speaker_keepalived_reload_failures`.
    pub fn reason(&self) -> &'static str {
        match self {
            SuperviseError::InvalidConfig(_) => "invalid_config",
            SuperviseError::Io { .. } => "io",
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SuperviseError {
    let what = what.into();
    move |source| SuperviseError::Io { what, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    Started,
    Reloaded,
}

pub struct Supervisor {
    binary: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    applied: Option<String>,
    failures: u32,
    restart_at: Option<Instant>,
}

impl Supervisor {
    /// Prepares `dir` (config, pid files, the notify FIFO) and starts reading instance states from the FIFO.
    pub fn new(
        binary: PathBuf,
        dir: PathBuf,
    ) -> Result<(Self, mpsc::UnboundedReceiver<(String, InstanceState)>), SuperviseError> {
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let fifo = dir.join("notify.fifo");
        if !fifo.exists() {
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| SuperviseError::Io { what: format!("creating {}", fifo.display()), source: e.into() })?;
        }
        // Opened for writing too, so the open never blocks and keepalived restarts never look like an EOF.
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .map_err(io(format!("opening {}", fifo.display())))?;
        let (states, states_rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("keepalived-notify".into())
            .spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { return };
                    if let Some(state) = parse_notify(&line)
                        && states.send(state).is_err()
                    {
                        return;
                    }
                }
            })
            .map_err(io("starting the notify reader"))?;
        Ok((Self { binary, dir, child: None, applied: None, failures: 0, restart_at: None }, states_rx))
    }

    pub fn notify_fifo(dir: &Path) -> PathBuf {
        dir.join("notify.fifo")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("keepalived.conf")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Checks `config` with keepalived itself, installs it atomically, and reloads (or starts) keepalived.
    pub async fn apply(&mut self, config: &str) -> Result<Applied, SuperviseError> {
        if self.applied.as_deref() == Some(config) && self.child.is_some() {
            return Ok(Applied::Unchanged);
        }
        let candidate = self.dir.join("keepalived.conf.new");
        tokio::fs::write(&candidate, config).await.map_err(io(format!("writing {}", candidate.display())))?;
        let check = Command::new(&self.binary)
            .arg("-t")
            .arg("-f")
            .arg(&candidate)
            .output()
            .await
            .map_err(io(format!("running {} -t", self.binary.display())))?;
        if !check.status.success() {
            let detail =
                format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
            return Err(SuperviseError::InvalidConfig(detail.trim().chars().take(2000).collect()));
        }
        tokio::fs::rename(&candidate, self.config_path()).await.map_err(io("installing keepalived.conf"))?;
        self.applied = Some(config.to_string());
        match self.pid() {
            Some(pid) => {
                let pid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
                kill(pid, Signal::SIGHUP)
                    .map_err(|e| SuperviseError::Io { what: "reloading keepalived".into(), source: e.into() })?;
                Ok(Applied::Reloaded)
            }
            None => {
                self.start()?;
                Ok(Applied::Started)
            }
        }
    }

    /// A keepalived left by a previous speaker (still releasing its VIPs after the speaker died) holds the
    /// pid file, and a new one would refuse to start ("daemon is already running"): stop it first.
    fn stop_leftover(&self) {
        let pid_file = self.dir.join("keepalived.pid");
        let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok()) else {
            return;
        };
        // Only a keepalived: the pid may have been reused by anything since.
        let is_keepalived =
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "keepalived");
        let pid = Pid::from_raw(pid);
        if !is_keepalived {
            return;
        }
        tracing::warn!(pid = pid.as_raw(), "a keepalived from a previous run is still there: stopping it");
        let _ = kill(pid, Signal::SIGTERM);
        for _ in 0..50 {
            if kill(pid, None).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(pid, Signal::SIGKILL);
    }

    fn start(&mut self) -> Result<(), SuperviseError> {
        // A start (for a new configuration) during the restart backoff is the restart: a pending one must not
        // stop this keepalived again for nothing.
        self.restart_at = None;
        self.stop_leftover();
        let mut command = Command::new(&self.binary);
        command
            .args(["-n", "-l", "-D", "-f"])
            .arg(self.config_path())
            .arg("-p")
            .arg(self.dir.join("keepalived.pid"))
            .arg("-r")
            .arg(self.dir.join("vrrp.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from));
        }
        let mut child = command.spawn().map_err(io(format!("starting {}", self.binary.display())))?;
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "keepalived", "{line}");
                }
            });
        }
        tracing::info!(pid = child.id(), config = %self.config_path().display(), "keepalived started");
        self.child = Some(child);
        Ok(())
    }

    /// Resolves when keepalived exits (never while none runs), and schedules its restart with backoff.
    pub async fn exited(&mut self) {
        let Some(child) = self.child.as_mut() else { return std::future::pending().await };
        let status = child.wait().await;
        self.child = None;
        self.failures += 1;
        let backoff = Duration::from_secs(1 << self.failures.min(5)).min(MAX_BACKOFF);
        tracing::warn!(status = ?status, restart_in = ?backoff, "keepalived exited");
        self.restart_at = Some(Instant::now() + backoff);
    }

    /// When a restart is due.
    pub fn restart_due(&self) -> Option<Instant> {
        self.restart_at
    }

    pub fn restart(&mut self) -> Result<(), SuperviseError> {
        self.restart_at = None;
        if self.applied.is_some() && self.child.is_none() { self.start() } else { Ok(()) }
    }

    /// Stops keepalived: it releases its VIPs and tells its peers (priority 0) on the way out.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)), Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
            tracing::warn!("keepalived did not stop within 5 s; killing it");
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_for_the_metrics() {
        let io = SuperviseError::Io { what: "x".into(), source: std::io::Error::other("y") };
        for error in [SuperviseError::InvalidConfig("refused".into()), io] {
            assert!(SuperviseError::REASONS.contains(&error.reason()), "{error}");
        }
    }
}
