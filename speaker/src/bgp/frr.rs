//! The running FRR beside the speaker, reached through its daemons' vty sockets in one directory: its
//! configuration converged to what is rendered, and its sessions read back.
//!
//! What FRR runs is read from FRR itself (`show running-config`) when the speaker starts and after anything
//! went wrong, so a restarted speaker converges whatever the previous one left, and a restarted FRR (empty)
//! is filled again; in between, what was last applied is trusted and only the difference is sent.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::frr_config::{self, Config};
use super::render::{Rendered, bfdd_owns, bgpd_owns};
use super::vty::{Vty, VtyError};

/// One daemon: its socket, its connection and what it runs (as far as we know).
struct Daemon {
    socket: PathBuf,
    owns: fn(&str) -> bool,
    vty: Option<Vty>,
    running: Option<Config>,
}

impl Daemon {
    fn new(dir: &Path, name: &str, owns: fn(&str) -> bool) -> Self {
        Daemon { socket: dir.join(format!("{name}.vty")), owns, vty: None, running: None }
    }

    async fn vty(&mut self) -> Result<&mut Vty, VtyError> {
        if self.vty.is_none() {
            self.vty = Some(Vty::connect(&self.socket).await?);
            self.running = None;
        }
        // Just set when it was missing.
        self.vty.as_mut().ok_or(VtyError::Closed { path: self.socket.clone() })
    }

    /// Runs `command`. Any failure drops the connection: the next use connects again and, having done so,
    /// reads the running configuration back (FRR may have restarted).
    async fn run(&mut self, command: &str) -> Result<String, VtyError> {
        let result = async { self.vty().await?.run(command).await }.await;
        if result.is_err() {
            self.vty = None;
        }
        result
    }

    /// Runs `commands` in configure mode; a failure drops the connection, as [`Daemon::run`].
    async fn configure(&mut self, commands: &[String]) -> Result<(), VtyError> {
        let result = async { self.vty().await?.configure(commands).await }.await;
        if result.is_err() {
            self.vty = None;
        }
        result
    }

    /// Sends what turns the running configuration into `wanted`; the number of commands sent. After a
    /// failure what runs is unknown, and is read back before the next attempt.
    async fn converge(&mut self, wanted: &Config) -> Result<usize, VtyError> {
        let running = match self.running.take() {
            Some(running) => running,
            None => frr_config::parse(&self.run("show running-config").await?, self.owns),
        };
        let commands = frr_config::commands(&running, wanted);
        if !commands.is_empty() {
            self.configure(&commands).await?;
        }
        self.running = Some(wanted.clone());
        Ok(commands.len())
    }
}

pub struct Frr {
    bgpd: Daemon,
    bfdd: Daemon,
}

/// A BGP session as bgpd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// `Established`, `Active`, `Connect`, `Idle`, ...
    pub state: String,
    /// The last error bgpd recorded for it (a refused password, a notification), if any.
    pub last_error: Option<String>,
}

impl Frr {
    /// The FRR whose vty sockets are in `dir` (connected at first use).
    pub fn new(dir: &Path) -> Self {
        Frr { bgpd: Daemon::new(dir, "bgpd", bgpd_owns), bfdd: Daemon::new(dir, "bfdd", bfdd_owns) }
    }

    /// Makes FRR run `rendered`: BFD profiles first (the sessions name them), then BGP. The number of
    /// commands sent.
    pub async fn converge(&mut self, rendered: &Rendered) -> Result<usize, VtyError> {
        let profiles = self.bfdd.converge(&rendered.bfdd).await?;
        Ok(profiles + self.bgpd.converge(&rendered.bgpd).await?)
    }

    /// Registers the BFD sessions of `neighbors` (address, profile) again, under bgpd's `router` block
    /// header: bgpd hands a registration to bfdd through zebra, and one made while bfdd was not connected
    /// yet is lost, leaving the session without BFD (and a dead node's routes to the hold time).
    pub async fn register_bfd_again(&mut self, router: &str, neighbors: &[(IpAddr, String)]) -> Result<(), VtyError> {
        let mut commands = vec![router.to_string()];
        for (address, profile) in neighbors {
            commands.push(format!("no neighbor {address} bfd"));
            commands.push(format!("neighbor {address} bfd"));
            commands.push(format!("neighbor {address} bfd profile {profile}"));
        }
        commands.push("exit".into());
        self.bgpd.configure(&commands).await
    }

    /// Forgets what FRR is believed to run: the next converge reads it back.
    pub fn forget(&mut self) {
        self.bgpd.running = None;
        self.bfdd.running = None;
    }

    /// bgpd's sessions by peer address (`show bgp neighbors json`).
    pub async fn sessions(&mut self) -> Result<BTreeMap<IpAddr, SessionState>, VtyError> {
        Ok(parse_sessions(&self.bgpd.run("show bgp neighbors json").await?))
    }

    /// bfdd's sessions by peer address: whether each is up (`show bfd peers json`).
    pub async fn bfd_sessions(&mut self) -> Result<BTreeMap<IpAddr, String>, VtyError> {
        Ok(parse_bfd(&self.bfdd.run("show bfd peers json").await?))
    }
}

/// `show bgp neighbors json`: `{ "<address>": { "bgpState": "Established", "lastErrorCodeSubcode": ..,
/// "lastNotificationReason": .., ... } }`. Whatever does not parse is left out.
pub fn parse_sessions(json: &str) -> BTreeMap<IpAddr, SessionState> {
    let Ok(serde_json::Value::Object(neighbors)) = serde_json::from_str::<serde_json::Value>(json) else {
        return BTreeMap::new();
    };
    neighbors
        .iter()
        .filter_map(|(address, neighbor)| {
            let address: IpAddr = address.parse().ok()?;
            let state = neighbor.get("bgpState")?.as_str()?.to_string();
            let last_error = ["lastNotificationReason", "lastResetDueTo"]
                .iter()
                .find_map(|k| neighbor.get(*k).and_then(|v| v.as_str()))
                .filter(|_| state != "Established")
                .map(str::to_string);
            Some((address, SessionState { state, last_error }))
        })
        .collect()
}

/// `show bfd peers json`: `[ { "peer": "<address>", "status": "up", ... } ]`.
pub fn parse_bfd(json: &str) -> BTreeMap<IpAddr, String> {
    let Ok(serde_json::Value::Array(peers)) = serde_json::from_str::<serde_json::Value>(json) else {
        return BTreeMap::new();
    };
    peers
        .iter()
        .filter_map(|peer| {
            let address: IpAddr = peer.get("peer")?.as_str()?.parse().ok()?;
            Some((address, peer.get("status")?.as_str()?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_bfd_states_are_read_from_frrs_json() {
        let sessions = parse_sessions(
            r#"{"192.0.2.1":{"remoteAs":64500,"bgpState":"Established"},
                "2001:db8::1":{"bgpState":"Active","lastResetDueTo":"Waiting for peer OPEN"},
                "not-an-address":{"bgpState":"Idle"}}"#,
        );
        assert_eq!(sessions.len(), 2);
        let v4: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(sessions[&v4], SessionState { state: "Established".into(), last_error: None });
        let v6: IpAddr = "2001:db8::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(sessions[&v6].last_error.as_deref(), Some("Waiting for peer OPEN"));
        let bfd = parse_bfd(r#"[{"peer":"192.0.2.1","status":"up"},{"peer":"x","status":"down"}]"#);
        assert_eq!(bfd.get(&v4).map(String::as_str), Some("up"));
        assert_eq!(bfd.len(), 1);
        assert!(parse_sessions("not json").is_empty());
        assert!(parse_bfd("{}").is_empty());
    }
}
