//! A client of an FRR daemon's vty socket (`DIR/bgpd.vty`, `DIR/bfdd.vty`): the way vtysh itself talks to
//! the daemons, with no reload and no restart.
//!
//! The protocol: a command is sent as its text and a NUL; the daemon answers with the command's output and
//! `\0\0\0` and a status byte (0: done; anything else: refused, and the output says why).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A reply longer than this is not FRR's (a running configuration with 10 000 VIPs is about 1 MB).
const MAX_REPLY: usize = 64 << 20;
/// How long one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum VtyError {
    #[error("connecting to {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("talking to {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} did not answer {command:?} within {COMMAND_TIMEOUT:?}")]
    Timeout { path: PathBuf, command: String },
    #[error("{path} closed the connection")]
    Closed { path: PathBuf },
    #[error("{path} sent a reply of more than {MAX_REPLY} bytes")]
    TooLong { path: PathBuf },
    #[error("{path} refused {command:?} (status {status}): {output}")]
    Refused { path: PathBuf, command: String, status: u8, output: String },
}

/// One reply, split off the front of `buffer`: its output and status, and how many bytes it took.
pub fn split_reply(buffer: &[u8]) -> Option<(String, u8, usize)> {
    let end = buffer.windows(3).position(|w| w == [0, 0, 0])?;
    let status = *buffer.get(end + 3)?;
    let output = String::from_utf8_lossy(&buffer[..end]).into_owned();
    Some((output, status, end + 4))
}

pub struct Vty {
    path: PathBuf,
    stream: UnixStream,
    buffer: Vec<u8>,
}

impl Vty {
    /// Connects and enters the privileged mode (`enable`).
    pub async fn connect(path: &Path) -> Result<Self, VtyError> {
        let stream =
            UnixStream::connect(path).await.map_err(|source| VtyError::Connect { path: path.to_path_buf(), source })?;
        let mut vty = Vty { path: path.to_path_buf(), stream, buffer: Vec::new() };
        vty.run("enable").await?;
        Ok(vty)
    }

    /// Runs one command; its output.
    pub async fn run(&mut self, command: &str) -> Result<String, VtyError> {
        let path = self.path.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, self.exchange(command)).await {
            Ok(Ok((output, 0))) => Ok(output),
            Ok(Ok((output, status))) => {
                Err(VtyError::Refused { path, command: command.to_string(), status, output: output.trim().to_string() })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(VtyError::Timeout { path, command: command.to_string() }),
        }
    }

    async fn exchange(&mut self, command: &str) -> Result<(String, u8), VtyError> {
        let io = |source| VtyError::Io { path: self.path.clone(), source };
        let mut message = Vec::with_capacity(command.len() + 1);
        message.extend_from_slice(command.as_bytes());
        message.push(0);
        self.stream.write_all(&message).await.map_err(io)?;
        loop {
            if let Some((output, status, used)) = split_reply(&self.buffer) {
                self.buffer.drain(..used);
                return Ok((output, status));
            }
            if self.buffer.len() > MAX_REPLY {
                return Err(VtyError::TooLong { path: self.path.clone() });
            }
            let mut chunk = [0u8; 65536];
            let read = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|source| VtyError::Io { path: self.path.clone(), source })?;
            if read == 0 {
                return Err(VtyError::Closed { path: self.path.clone() });
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }

    /// Runs `commands` in configure mode. One refused does not stop the others (a line FRR will not take
    /// must not hold back every other change, a new VIP say); the first refusal is returned, and the
    /// caller reads the running configuration again before its next attempt.
    pub async fn configure(&mut self, commands: &[String]) -> Result<(), VtyError> {
        self.run("configure terminal").await?;
        let mut first_refusal = None;
        for command in commands {
            match self.run(command).await {
                Ok(_) => {}
                Err(refused @ VtyError::Refused { .. }) => {
                    first_refusal.get_or_insert(refused);
                }
                // The connection is gone: nothing more can be sent.
                Err(e) => return Err(e),
            }
        }
        // Back to the top (a later configure starts from there).
        self.run("end").await?;
        first_refusal.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replies_are_split_at_three_nuls_and_a_status() {
        assert_eq!(split_reply(b"partial"), None);
        assert_eq!(split_reply(b"out\0\0\0"), None, "the status byte has not come yet");
        assert_eq!(split_reply(b"out\0\0\0\x00next"), Some(("out".into(), 0, 7)));
        assert_eq!(split_reply(b"% Unknown command\0\0\0\x02"), Some(("% Unknown command".into(), 2, 21)));
        assert_eq!(split_reply(b"\0\0\0\x00"), Some((String::new(), 0, 4)));
    }

    proptest::proptest! {
        #[test]
        fn splitting_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Some((_, _, used)) = split_reply(&bytes) {
                proptest::prop_assert!(used <= bytes.len());
            }
        }
    }
}
