//! Which speakers are alive: SWIM gossip (foca) over UDP, every datagram authenticated with the shared key.
//!
//! foca is sans-I/O; this module is its driver: it owns the UDP socket, feeds datagrams and timers to foca,
//! sends what foca wants sent, and publishes the live membership (node name → usable interfaces, this node
//! included) on a watch channel. Peers are found from the Node objects' addresses: every speaker announces
//! itself to the nodes it knows but does not see alive, every `rejoin_interval`, so a node that restarts, or
//! whose link comes back after a cut, is in again within that interval without any operator action.
//!
//! A member's identity carries its node name and interfaces; changing interfaces renews the identity (a higher
//! `bump`), which the others see as a rename of the same address. A member declared down while still running
//! (a partition) renews itself the same way when it learns of it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, Identity, OwnedNotification, PostcardCodec, Timer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::l2::gossip_auth::{OVERHEAD, Opener, Sealer, SharedKey};
use crate::metrics::RejectLabel;

/// Largest datagram on the wire: below a 1500-byte MTU with IP and UDP headers.
const MAX_DATAGRAM: usize = 1400;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberId {
    pub addr: SocketAddr,
    pub node: String,
    pub interfaces: Vec<String>,
    /// Start time in milliseconds, then +1 on every renewal: the newest identity of an address wins.
    pub bump: u64,
    /// Stopping: still answering for its VIPs until others announce them, so they take over without first
    /// probing the wire, and it is no candidate any more.
    #[serde(default)]
    pub draining: bool,
}

impl Identity for MemberId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self { bump: self.bump.wrapping_add(1), ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

impl MemberId {
    /// What we announce ourselves to when all we know of a peer is its address: foca only uses it as a
    /// destination; the peer answers with its real identity.
    fn placeholder(addr: SocketAddr) -> Self {
        Self { addr, node: String::new(), interfaces: Vec::new(), bump: 0, draining: false }
    }
}

/// Failure-detection timers. In a 3-node group a SIGKILLed peer is declared down after at most about
/// `3 × probe_period + suspect_to_down_after` (its next probe, the probe's own period, the suspicion); a peer
/// that leaves (SIGTERM) is known at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub probe_period: Duration,
    /// Wait for a direct ack before asking others to probe indirectly. Must be below `probe_period`.
    pub probe_rtt: Duration,
    pub suspect_to_down_after: Duration,
    pub indirect_probes: usize,
    /// How often known-but-not-alive nodes are announced to.
    pub rejoin_interval: Duration,
}

impl Default for Settings {
    /// Chosen by measurement (`cargo xtask bench failover`, 3 nodes): a SIGKILLed owner is declared down
    /// p50 ~400 ms after the crash and its VIP answers from the new owner p50 ~460 ms, p99 ~570 ms.
    /// A live peer answers a probe in well under a millisecond on a LAN, so 40 ms (then an indirect probe,
    /// then 200 ms to refute a suspicion) leaves room for a busy node: `tests/load.rs` holds every core
    /// saturated for a minute and counts no false suspicion; timers a few times shorter do fail it.
    fn default() -> Self {
        Self {
            probe_period: Duration::from_millis(100),
            probe_rtt: Duration::from_millis(40),
            suspect_to_down_after: Duration::from_millis(200),
            indirect_probes: 2,
            rejoin_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("the gossip probe RTT ({rtt:?}) must be shorter than the probe period ({period:?})")]
    RttNotBelowPeriod { rtt: Duration, period: Duration },
    #[error("gossip timers must not be zero")]
    Zero,
}

impl Settings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if [self.probe_period, self.probe_rtt, self.suspect_to_down_after, self.rejoin_interval]
            .contains(&Duration::ZERO)
        {
            return Err(SettingsError::Zero);
        }
        if self.probe_rtt >= self.probe_period {
            return Err(SettingsError::RttNotBelowPeriod { rtt: self.probe_rtt, period: self.probe_period });
        }
        Ok(())
    }

    fn foca_config(&self) -> foca::Config {
        let mut config = foca::Config::simple();
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.suspect_to_down_after = self.suspect_to_down_after;
        config.num_indirect_probes = NonZeroUsize::new(self.indirect_probes.max(1)).unwrap_or(NonZeroUsize::MIN);
        config.max_transmissions = NonZeroU8::new(8).unwrap_or(NonZeroU8::MIN);
        config.max_packet_size = NonZeroUsize::new(MAX_DATAGRAM - OVERHEAD).unwrap_or(NonZeroUsize::MIN);
        // A member declared down while alive (a cut link) hears about it and renews its identity.
        config.notify_down_members = true;
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.probe_period / 2,
            num_members: NonZeroUsize::MIN.saturating_add(2),
        });
        config
    }
}

/// The gossip state machine as the driver runs it (public so the fuzzer can feed it untrusted datagrams).
pub type Core = Foca<MemberId, PostcardCodec, StdRng, foca::NoCustomBroadcast>;

/// A fresh gossip state machine for `me`.
pub fn core(me: MemberId, settings: &Settings) -> Core {
    Foca::new(me, settings.foca_config(), rand::make_rng::<StdRng>(), PostcardCodec)
}

pub use crate::election::Members;

#[derive(Debug, Clone, Default)]
pub struct MembershipMetrics {
    /// Datagrams dropped, by reason: their tag did not verify, or they were stale or replayed.
    pub rejected_datagrams: Family<RejectLabel, Counter>,
    /// Other members declared down.
    pub declared_down: Counter,
}

enum Command {
    Peers(BTreeSet<SocketAddr>),
    Interfaces(Vec<String>),
    Drain,
    Leave(oneshot::Sender<()>),
}

/// The running membership. Dropping it stops the gossip without a goodbye; call [`Membership::leave`] first
/// on a graceful stop.
pub struct Membership {
    commands: mpsc::UnboundedSender<Command>,
    members: watch::Receiver<Members>,
    draining: watch::Receiver<BTreeSet<String>>,
    rejoins: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Starts gossiping on `socket` as `me`.
    pub fn start(
        socket: UdpSocket,
        me: MemberId,
        key: SharedKey,
        settings: &Settings,
        metrics: MembershipMetrics,
    ) -> Result<Self, SettingsError> {
        settings.validate()?;
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (members_tx, members) =
            watch::channel(Members::from([(me.node.clone(), me.interfaces.iter().cloned().collect())]));
        let (rejoins_tx, rejoins) = watch::channel(0);
        let (draining_tx, draining) = watch::channel(BTreeSet::new());
        let driver = Driver {
            draining: draining_tx,
            foca: core(me, settings),
            rejoins: rejoins_tx,
            runtime: AccumulatingRuntime::new(),
            socket: Arc::new(socket),
            // A new session at every start: the others' replay state for the old one does not block us.
            sealer: Sealer::new(key.clone(), rand::random()),
            opener: Opener::new(key),
            peers: BTreeSet::new(),
            members: members_tx,
            metrics,
        };
        let task = tokio::spawn(driver.run(commands_rx, settings.rejoin_interval));
        Ok(Self { commands, members, draining, rejoins, task })
    }

    /// The live membership, updated as it changes.
    pub fn members(&self) -> watch::Receiver<Members> {
        self.members.clone()
    }

    /// Counts the times this node learnt the others had declared it down while it was running (a freeze, a
    /// partition) and rejoined: they may have taken its VIPs meanwhile.
    pub fn rejoins(&self) -> watch::Receiver<u64> {
        self.rejoins.clone()
    }

    /// Gossip addresses of every node that may run a speaker (ours included is fine: it is skipped).
    pub fn set_peers(&self, peers: BTreeSet<SocketAddr>) {
        let _ = self.commands.send(Command::Peers(peers));
    }

    /// Members that announced they are stopping (this node too, once [`Membership::drain`] was called):
    /// not in [`Membership::members`], yet still answering for the VIPs they held.
    pub fn draining(&self) -> watch::Receiver<BTreeSet<String>> {
        self.draining.clone()
    }

    /// Tells the others this node is stopping (see [`MemberId::draining`]); [`Membership::leave`] follows.
    pub fn drain(&self) {
        let _ = self.commands.send(Command::Drain);
    }

    /// This node's usable interfaces changed: tell the others.
    pub fn set_interfaces(&self, interfaces: Vec<String>) {
        let _ = self.commands.send(Command::Interfaces(interfaces));
    }

    /// Tells the others this node is leaving (they drop it at once), then stops.
    pub async fn leave(self) {
        let (done, done_rx) = oneshot::channel();
        if self.commands.send(Command::Leave(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), done_rx).await;
        }
        self.task.abort();
    }
}

struct Driver {
    foca: Core,
    runtime: AccumulatingRuntime<MemberId>,
    socket: Arc<UdpSocket>,
    sealer: Sealer,
    opener: Opener,
    peers: BTreeSet<SocketAddr>,
    members: watch::Sender<Members>,
    draining: watch::Sender<BTreeSet<String>>,
    rejoins: watch::Sender<u64>,
    metrics: MembershipMetrics,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>, rejoin_interval: Duration) {
        let (timers_tx, mut timers) = mpsc::unbounded_channel::<Timer<MemberId>>();
        let mut rejoin = tokio::time::interval(rejoin_interval);
        rejoin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buffer = vec![0u8; 65536];
        let socket = self.socket.clone();
        loop {
            let result = tokio::select! {
                received = socket.recv_from(&mut buffer) => match received {
                    Ok((len, from)) => match self.opener.open(&buffer[..len], std::time::SystemTime::now()) {
                        Ok(message) => self.foca.handle_data(message, &mut self.runtime),
                        Err(e) => {
                            self.metrics.rejected_datagrams.get_or_create(&RejectLabel { reason: e.reason() }).inc();
                            tracing::debug!(%from, error = %e, "dropped a gossip datagram");
                            Ok(())
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "gossip socket receive failed");
                        Ok(())
                    }
                },
                Some(timer) = timers.recv() => self.foca.handle_timer(timer, &mut self.runtime),
                _ = rejoin.tick() => self.announce_to_absent_peers(),
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Peers(peers)) => {
                        let own = self.foca.identity().addr;
                        self.peers = peers.into_iter().filter(|p| *p != own).collect();
                        self.announce_to_absent_peers()
                    }
                    Some(Command::Interfaces(interfaces)) => {
                        let mut renewed = self.foca.identity().clone();
                        renewed.interfaces = interfaces;
                        renewed.bump = renewed.bump.wrapping_add(1);
                        let result = self.foca.change_identity(renewed, &mut self.runtime);
                        self.publish();
                        result
                    }
                    Some(Command::Drain) => {
                        let mut renewed = self.foca.identity().clone();
                        renewed.draining = true;
                        renewed.bump = renewed.bump.wrapping_add(1);
                        let result = self.foca.change_identity(renewed, &mut self.runtime);
                        self.publish();
                        result
                    }
                    Some(Command::Leave(done)) => {
                        let result = self.foca.leave_cluster(&mut self.runtime);
                        self.flush(&timers_tx).await;
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "leaving the gossip group failed");
                        }
                        let _ = done.send(());
                        return;
                    }
                },
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "gossip input ignored");
            }
            self.flush(&timers_tx).await;
        }
    }

    fn announce_to_absent_peers(&mut self) -> Result<(), foca::Error> {
        let alive: BTreeSet<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        for peer in self.peers.iter().filter(|p| !alive.contains(p)) {
            self.foca.announce(MemberId::placeholder(*peer), &mut self.runtime)?;
        }
        Ok(())
    }

    /// Sends, schedules and publishes what the last input produced.
    async fn flush(&mut self, timers: &mpsc::UnboundedSender<Timer<MemberId>>) {
        while let Some((to, data)) = self.runtime.to_send() {
            let sealed = self.sealer.seal(&data, std::time::SystemTime::now());
            if let Err(e) = self.socket.send_to(&sealed, to.addr).await {
                tracing::debug!(to = %to.addr, error = %e, "gossip send failed");
            }
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let timers = timers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = timers.send(timer);
            });
        }
        let mut changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => {
                    tracing::info!(node = %id.node, address = %id.addr, interfaces = ?id.interfaces, "member up");
                    changed = true;
                }
                OwnedNotification::MemberDown(id) => {
                    tracing::info!(node = %id.node, address = %id.addr, "member down");
                    self.metrics.declared_down.inc();
                    changed = true;
                }
                OwnedNotification::Rename(_, _) => changed = true,
                OwnedNotification::Rejoin(id) => {
                    tracing::warn!(bump = id.bump, "this node had been declared down by the others; rejoined");
                    self.rejoins.send_modify(|n| *n = n.wrapping_add(1));
                    changed = true;
                }
                OwnedNotification::Idle => tracing::info!("no other member is alive"),
                OwnedNotification::Defunct => tracing::warn!("this node's gossip identity is down"),
                OwnedNotification::Active => tracing::info!("joined the gossip group"),
            }
        }
        if changed {
            self.publish();
        }
    }

    fn publish(&self) {
        let me = self.foca.identity();
        let everyone = self.foca.iter_members().map(|m| m.id()).chain(std::iter::once(me));
        let (draining, live): (Vec<&MemberId>, Vec<&MemberId>) = everyone.partition(|id| id.draining);
        let draining: BTreeSet<String> = draining.into_iter().map(|id| id.node.clone()).collect();
        let members: Members =
            live.into_iter().map(|id| (id.node.clone(), id.interfaces.iter().cloned().collect())).collect();
        self.draining.send_if_modified(|current| {
            if *current == draining {
                return false;
            }
            *current = draining;
            true
        });
        self.members.send_if_modified(|current| {
            if *current == members {
                return false;
            }
            *current = members;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_settings_are_valid_and_bad_ones_are_refused() {
        assert_eq!(Settings::default().validate(), Ok(()));
        let bad = Settings { probe_rtt: Duration::from_millis(300), ..Settings::default() };
        assert!(matches!(bad.validate(), Err(SettingsError::RttNotBelowPeriod { .. })));
        let zero = Settings { suspect_to_down_after: Duration::ZERO, ..Settings::default() };
        assert_eq!(zero.validate(), Err(SettingsError::Zero));
    }

    #[test]
    fn the_newest_identity_of_an_address_wins() {
        let a = MemberId {
            addr: "192.0.2.11:7946".parse().unwrap(),
            node: "n".into(),
            interfaces: vec![],
            bump: 5,
            draining: false,
        };
        let renewed = a.renew().unwrap();
        assert!(renewed.win_addr_conflict(&a) && !a.win_addr_conflict(&renewed));
        assert_eq!(renewed.addr(), a.addr());
    }

    async fn member_with_metrics(node: &str, key: &str) -> (Membership, SocketAddr, MembershipMetrics) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let me = MemberId { addr, node: node.into(), interfaces: vec!["eth0".into()], bump: 1, draining: false };
        let key = SharedKey::from_file_contents(key.as_bytes()).unwrap();
        let settings = Settings { rejoin_interval: Duration::from_millis(100), ..Settings::default() };
        let metrics = MembershipMetrics::default();
        (Membership::start(socket, me, key, &settings, metrics.clone()).unwrap(), addr, metrics)
    }

    async fn member(node: &str, key: &str) -> (Membership, SocketAddr) {
        let (membership, addr, _) = member_with_metrics(node, key).await;
        (membership, addr)
    }

    async fn wait_for(members: &mut watch::Receiver<Members>, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let reached = tokio::time::timeout(
            Duration::from_secs(10),
            members.wait_for(|m| m.keys().cloned().collect::<BTreeSet<_>>() == want),
        )
        .await
        .is_ok();
        assert!(reached, "membership never became {want:?}: {:?}", *members.borrow());
    }

    #[tokio::test]
    async fn a_draining_member_leaves_the_members_for_the_draining_set_then_leaves() {
        let (a, a_addr) = member("a", "the right key, 16+ bytes").await;
        let (b, b_addr) = member("b", "the right key, 16+ bytes").await;
        for m in [&a, &b] {
            m.set_peers(BTreeSet::from([a_addr, b_addr]));
        }
        let mut seen_by_a = a.members();
        wait_for(&mut seen_by_a, &["a", "b"]).await;
        let mut draining_seen_by_a = a.draining();
        b.drain();
        // Known as handing over at once: not a candidate any more, yet still there.
        wait_for(&mut seen_by_a, &["a"]).await;
        let draining = tokio::time::timeout(Duration::from_secs(5), async {
            draining_seen_by_a.wait_for(|d| d.contains("b")).await.is_ok()
        })
        .await;
        assert!(draining.unwrap_or(false), "a never saw b draining");
        assert_eq!(*b.draining().borrow(), BTreeSet::from(["b".to_string()]), "b knows it is draining");
        b.leave().await;
        let gone = tokio::time::timeout(Duration::from_secs(5), async {
            draining_seen_by_a.wait_for(|d| d.is_empty()).await.is_ok()
        })
        .await;
        assert!(gone.unwrap_or(false), "b is still draining after leaving");
    }

    #[tokio::test]
    async fn members_find_each_other_leave_and_ignore_a_wrong_key() {
        let (a, a_addr, a_metrics) = member_with_metrics("a", "the right key, 16+ bytes").await;
        let (b, b_addr) = member("b", "the right key, 16+ bytes").await;
        let (c, c_addr) = member("c", "a different key, 16+ bytes").await;
        let peers = BTreeSet::from([a_addr, b_addr, c_addr]);
        for m in [&a, &b, &c] {
            m.set_peers(peers.clone());
        }
        let mut seen_by_a = a.members();
        wait_for(&mut seen_by_a, &["a", "b"]).await;
        let mut seen_by_c = c.members();
        // c never gets in with the wrong key, and sees nobody.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(seen_by_c.borrow_and_update().keys().collect::<Vec<_>>(), ["c"]);
        assert_eq!(seen_by_a.borrow().keys().collect::<Vec<_>>(), ["a", "b"]);
        let bad_tag = a_metrics.rejected_datagrams.get_or_create(&RejectLabel { reason: "bad_tag" }).get();
        assert!(bad_tag > 0, "c's datagrams are counted as rejected");

        // Interfaces travel with the identity.
        b.set_interfaces(vec!["eth0".into(), "eth1".into()]);
        tokio::time::timeout(Duration::from_secs(5), seen_by_a.wait_for(|m| m.get("b").is_some_and(|i| i.len() == 2)))
            .await
            .unwrap()
            .unwrap();

        // A graceful leave is seen at once (well before any failure detector could fire).
        let started = std::time::Instant::now();
        b.leave().await;
        wait_for(&mut seen_by_a, &["a"]).await;
        assert!(started.elapsed() < Duration::from_millis(200), "leave took {:?}", started.elapsed());
        drop(c);
    }

    #[tokio::test]
    async fn stale_and_replayed_datagrams_are_dropped_and_counted_by_reason() {
        let (a, a_addr, metrics) = member_with_metrics("a", "the right key, 16+ bytes").await;
        let key = SharedKey::from_file_contents(b"the right key, 16+ bytes").unwrap();
        let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut sealer = Sealer::new(key, 77);
        // Captured long ago, replayed now.
        let old = sealer.seal(b"anything", std::time::SystemTime::now() - Duration::from_secs(60));
        attacker.send_to(&old, a_addr).await.unwrap();
        // Fresh, then the very same bytes again.
        let fresh = sealer.seal(b"anything", std::time::SystemTime::now());
        attacker.send_to(&fresh, a_addr).await.unwrap();
        attacker.send_to(&fresh, a_addr).await.unwrap();
        let count = |reason| metrics.rejected_datagrams.get_or_create(&RejectLabel { reason }).get();
        tokio::time::timeout(Duration::from_secs(5), async {
            while count("stale") < 1 || count("replayed") < 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!((count("stale"), count("replayed"), count("bad_tag")), (1, 1, 0));
        drop(a);
    }

    #[tokio::test]
    async fn a_silent_member_is_declared_down_and_a_restarted_one_comes_back() {
        let (a, a_addr) = member("a", "the right key, 16+ bytes").await;
        let (b, b_addr) = member("b", "the right key, 16+ bytes").await;
        a.set_peers(BTreeSet::from([b_addr]));
        b.set_peers(BTreeSet::from([a_addr]));
        let mut seen_by_a = a.members();
        wait_for(&mut seen_by_a, &["a", "b"]).await;
        // A crash: no goodbye.
        drop(b);
        let started = std::time::Instant::now();
        wait_for(&mut seen_by_a, &["a"]).await;
        let detected = started.elapsed();
        assert!(detected < Duration::from_secs(3), "detection took {detected:?}");
        // Restarted on the same address with a newer identity: back in.
        let socket = UdpSocket::bind(b_addr).await.unwrap();
        let me = MemberId { addr: b_addr, node: "b".into(), interfaces: vec!["eth0".into()], bump: 2, draining: false };
        let key = SharedKey::from_file_contents(b"the right key, 16+ bytes").unwrap();
        let b = Membership::start(socket, me, key, &Settings::default(), MembershipMetrics::default()).unwrap();
        b.set_peers(BTreeSet::from([a_addr]));
        wait_for(&mut seen_by_a, &["a", "b"]).await;
    }
}
