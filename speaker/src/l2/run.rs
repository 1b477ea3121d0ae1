//! Native mode's backend: the membership, the announcer and the sockets behind the driver's loop. Every
//! input (an object changed, a member came or went, a link changed) leads to the same step: rebuild the plan,
//! bring the announcer to it, swap the answered set, and queue the reports.
//! The failover path (member down → plan → probe → gratuitous ARP/NA) touches no API. When this node
//! really starts and stops answering for a VIP the plan gives or takes is [`crate::l2::claims`]' decision:
//! a takeover from a holder that is not a live member waits for a silent probe, a stand-in stands down when
//! it hears the owner, and a VIP handed to a live member is answered until that member announces it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use ferrolb_crds::reason;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cluster::{Cluster, node_address};
use crate::driver::{self, Next};
use crate::inventory::Inventory;
use crate::l2::announcer::{Action, Timing};
use crate::l2::claims::Heard;
use crate::l2::core::{Core, View};
use crate::l2::frames::Mac;
use crate::l2::gossip_auth::SharedKey;
use crate::l2::membership::{self, MemberId, Membership, MembershipMetrics};
use crate::l2::responder::{Conflict, Responder};
use crate::metrics::Metrics;
use crate::plan::{Decision, Placement};
use crate::report::{self, Notice, Report};

/// After start-up, or after an interface comes back, how long a speaker takes nothing over unless it sees
/// another member first.
pub const DEFAULT_JOIN_GRACE: Duration = Duration::from_secs(2);
/// How long a foreign claim on a VIP held by right waits before it counts as a conflict: the peer may have seen
/// a plan change (a selector edit, a cordon) a moment before this node's watch delivers it.
const CONFLICT_CONFIRM: Duration = Duration::from_millis(300);
/// A stopping speaker keeps answering for its VIPs at most this long while the others take them over (they
/// announce at once, since a draining holder needs no wire probe); then it stops whatever happened. Equal to
/// the hand-over fallback of a VIP given to a live member with the default join grace.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// One conflict Event per VIP and foreign MAC per this period.
const CONFLICT_EVENT_PERIOD: Duration = Duration::from_secs(60);

/// What native mode needs beyond [`driver::Options`].
#[derive(Debug, Clone)]
pub struct L2Options {
    pub gossip_port: u16,
    /// The address other speakers reach this one at; the Node's InternalIP when unset.
    pub gossip_address: Option<IpAddr>,
    pub gossip_key: SharedKey,
    pub gossip: membership::Settings,
    pub timing: Timing,
    /// After start-up, or after an interface comes back, take no VIP over until another member is seen or
    /// this long has passed: a node that cannot yet see the others would otherwise claim every VIP.
    pub join_grace: Duration,
}

/// Native mode as a [`driver::Backend`].
pub struct L2Backend {
    me: String,
    gossip_port: u16,
    gossip_ipv4: bool,
    metrics: Metrics,
    membership: Membership,
    members: tokio::sync::watch::Receiver<crate::election::Members>,
    rejoins: tokio::sync::watch::Receiver<u64>,
    draining: tokio::sync::watch::Receiver<BTreeSet<String>>,
    conflicts: mpsc::UnboundedReceiver<Conflict>,
    responder: Responder,
    /// Foreign claims on VIPs held by right, and when to look at them again.
    unconfirmed: Vec<(Instant, Conflict)>,
    core: Core,
    log: ConflictLog,
    peers: BTreeSet<SocketAddr>,
    /// This node's own addresses as the last plan saw them, and a version that moves when they change.
    own_addresses: BTreeSet<IpAddr>,
    own_addresses_version: u64,
}

/// What native mode waits on besides the driver's inputs.
pub enum L2Event {
    /// The gossip's members, or its draining members, changed.
    Membership,
    Conflict(Conflict),
    /// A claim heard [`CONFLICT_CONFIRM`] ago on a VIP held by right is looked at again.
    ConflictConfirm,
    /// A claim's probe or grace is due (`complete`: the view was complete when the wait began).
    ClaimsDue {
        complete: bool,
    },
    /// This node was declared down and rejoined.
    Rejoined,
    /// A gratuitous ARP / NA is due.
    AnnouncementDue,
    /// The start-up or link-return hold is over.
    HoldOver,
}

impl L2Backend {
    /// Binds the gossip port, joins the gossip group and opens the packet sockets.
    pub async fn start(setup: &driver::Setup, l2: L2Options) -> anyhow::Result<Self> {
        let metrics = setup.metrics.clone();
        let me = setup.options.node_name.clone();
        let gossip_ip = l2
            .gossip_address
            .or_else(|| node_address(&setup.node, true))
            .or_else(|| node_address(&setup.node, false))
            .with_context(|| format!("Node {me} has no InternalIP or ExternalIP: set --gossip-address"))?;
        let bind: SocketAddr = if gossip_ip.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, l2.gossip_port).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, l2.gossip_port).into()
        };
        let socket = UdpSocket::bind(bind).await.with_context(|| format!("binding the gossip port {bind}"))?;
        let identity = MemberId {
            addr: SocketAddr::new(gossip_ip, l2.gossip_port),
            node: me.clone(),
            interfaces: setup.inventory.usable(),
            bump: jiff::Timestamp::now().as_millisecond().unsigned_abs(),
            draining: false,
        };
        tracing::info!(address = %identity.addr, interfaces = ?identity.interfaces, "joining the speakers' gossip");
        let membership = Membership::start(
            socket,
            identity,
            l2.gossip_key.clone(),
            &l2.gossip,
            MembershipMetrics {
                rejected_datagrams: metrics.rejected_gossip.clone(),
                declared_down: metrics.members_declared_down.clone(),
            },
        )?;
        let peers = setup.cluster.gossip_peers(l2.gossip_port, gossip_ip.is_ipv4());
        membership.set_peers(peers.clone());
        let (conflicts_tx, conflicts) = mpsc::unbounded_channel();
        let mut responder = Responder::new(conflicts_tx, metrics.clone());
        responder.sync(&setup.inventory);
        Ok(Self {
            unconfirmed: Vec::new(),
            core: Core::new(me.clone(), l2.timing, l2.join_grace, std::time::Instant::now()),
            log: ConflictLog::new(me.clone()),
            me,
            gossip_port: l2.gossip_port,
            gossip_ipv4: gossip_ip.is_ipv4(),
            metrics,
            members: membership.members(),
            rejoins: membership.rejoins(),
            draining: membership.draining(),
            membership,
            conflicts,
            responder,
            peers,
            own_addresses: BTreeSet::new(),
            own_addresses_version: 0,
        })
    }
}

impl L2Backend {
    /// Carries out what a step or a claims tick decided: the answered set swapped first (when it changed:
    /// `answered` is what is answered and watched now), then the probes, then the frames.
    async fn carry_out(
        &mut self,
        answered: Option<(&Placement, &Placement)>,
        probes: &[(IpAddr, String)],
        took_over: &[IpAddr],
        gave_up: &[IpAddr],
        actions: Vec<Action>,
    ) {
        if let Some((held, watched)) = answered {
            self.responder.set_owned(held, watched);
            self.metrics.owned_vips.set(i64::try_from(held.len()).unwrap_or(i64::MAX));
        }
        for (vip, interface) in probes {
            self.responder.probe(*vip, interface).await;
        }
        let changes = took_over.len() + gave_up.len();
        if changes > 0 {
            self.metrics.ownership_changes.inc_by(changes as u64);
            for vip in took_over {
                tracing::info!(%vip, "took over");
            }
            for vip in gave_up {
                tracing::info!(%vip, "gave up");
            }
        }
        self.responder.execute(actions).await;
    }

    /// Hears again the pending claims on VIPs this node's plan now hands over; true if one was released.
    fn release_handed_over(&mut self, decisions: &[Decision]) -> bool {
        let now = std::time::Instant::now();
        let mut released = false;
        let mut still = Vec::new();
        for (at, conflict) in std::mem::take(&mut self.unconfirmed) {
            match self.core.heard(conflict.vip, now) {
                Heard::Conflict => still.push((at, conflict)),
                heard => {
                    released |= heard == Heard::Released;
                    self.heard_without_conflict(heard, &conflict, decisions);
                }
            }
        }
        self.unconfirmed = still;
        released
    }

    /// What a claim that is no conflict leads to: a deferred or stood-down takeover is counted and logged, a
    /// hand-over logged.
    fn heard_without_conflict(&mut self, heard: Heard, conflict: &Conflict, decisions: &[Decision]) {
        match heard {
            Heard::Deferred | Heard::StoodDown => {
                self.metrics.takeovers_deferred.inc();
                self.log.log_deferral(decisions, conflict);
            }
            Heard::Released => {
                tracing::info!(vip = %conflict.vip, mac = %conflict.mac, "handed over: the new owner announces it");
            }
            Heard::Ignored | Heard::Conflict => {}
        }
    }

    /// A foreign claim heard [`CONFLICT_CONFIRM`] ago, heard again now that any plan change has reached us:
    /// still against a VIP held by right, it is a conflict (defended and reported); otherwise it was a
    /// hand-over and is treated as one.
    async fn confirm(&mut self, conflict: Conflict, shared: &mut driver::Shared<'_>) {
        let now = std::time::Instant::now();
        match self.core.heard(conflict.vip, now) {
            Heard::Conflict => {
                let defend = self.core.defend(conflict.vip, now);
                self.responder.execute(defend).await;
                self.log.report_conflict(shared, conflict);
            }
            heard => self.heard_without_conflict(heard, &conflict, shared.reporter.decisions()),
        }
    }
}

impl driver::Backend for L2Backend {
    type Event = L2Event;

    async fn next_event(&mut self) -> anyhow::Result<L2Event> {
        let far = Instant::now() + Duration::from_secs(3600);
        let next_due = self.core.announcements_due().map(Instant::from_std).unwrap_or(far);
        let claims_due = self.core.claims_due().map(Instant::from_std).unwrap_or(far);
        let complete = self.core.view_complete(&self.members.borrow());
        let hold_until = self.core.hold_due().map(Instant::from_std);
        let confirm_due = self.unconfirmed.iter().map(|(at, _)| *at).min();
        tokio::select! {
            changed = self.draining.changed() => {
                changed.context("the gossip membership stopped")?;
                Ok(L2Event::Membership)
            }
            changed = self.members.changed() => {
                changed.context("the gossip membership stopped")?;
                Ok(L2Event::Membership)
            }
            Some(conflict) = self.conflicts.recv() => Ok(L2Event::Conflict(conflict)),
            _ = tokio::time::sleep_until(confirm_due.unwrap_or(far)), if confirm_due.is_some() => Ok(L2Event::ConflictConfirm),
            _ = tokio::time::sleep_until(claims_due) => Ok(L2Event::ClaimsDue { complete }),
            changed = self.rejoins.changed() => {
                changed.context("the gossip membership stopped")?;
                Ok(L2Event::Rejoined)
            }
            _ = tokio::time::sleep_until(next_due) => Ok(L2Event::AnnouncementDue),
            _ = tokio::time::sleep_until(hold_until.unwrap_or(far)), if hold_until.is_some() => Ok(L2Event::HoldOver),
        }
    }

    async fn handle(&mut self, event: L2Event, shared: &mut driver::Shared<'_>) -> anyhow::Result<Next> {
        let now = std::time::Instant::now();
        match event {
            L2Event::Membership | L2Event::HoldOver => {}
            L2Event::Conflict(conflict) => match self.core.heard(conflict.vip, now) {
                Heard::Ignored => return Ok(Next::Wait),
                Heard::Conflict => {
                    // Most often a peer that saw a plan change first (a selector edit, a cordon) and took the
                    // VIP over while our own watch is a moment behind: re-plan now, and defend and report only
                    // if the claim still stands once the change had time to reach us.
                    if !self.unconfirmed.iter().any(|(_, c)| c.vip == conflict.vip) {
                        self.unconfirmed.push((Instant::now() + CONFLICT_CONFIRM, conflict));
                    }
                    return Ok(Next::Step);
                }
                heard => self.heard_without_conflict(heard, &conflict, shared.reporter.decisions()),
            },
            L2Event::ConflictConfirm => {
                let due = Instant::now();
                let (ready, later): (Vec<_>, Vec<_>) = self.unconfirmed.drain(..).partition(|(at, _)| *at <= due);
                self.unconfirmed = later;
                for (_, conflict) in ready {
                    self.confirm(conflict, shared).await;
                }
            }
            L2Event::ClaimsDue { complete } => {
                let tick = self.core.tick_claims(complete, now);
                let answered = tick.answered.as_ref().map(|(held, watched)| (held, watched));
                self.carry_out(answered, &tick.probes, &tick.took_over, &tick.gave_up, tick.actions).await;
                let answered_changed = answered.is_some();
                // The wire is done; what the reports make of a takeover can wait for a step taken like an API
                // change's (a storm of new Services takes over in thousands of ticks).
                return Ok(if answered_changed { Next::Soon } else { Next::Wait });
            }
            L2Event::Rejoined => {
                let actions = self.core.rejoined(now);
                tracing::info!(frames = actions.len(), "announcing held VIPs again after rejoining the gossip");
                self.responder.execute(actions).await;
                return Ok(Next::Wait);
            }
            L2Event::AnnouncementDue => {
                let actions = self.core.due_announcements(now);
                self.responder.execute(actions).await;
                return Ok(Next::Wait);
            }
        }
        Ok(Next::Step)
    }

    fn api_changed(&mut self, cluster: &Cluster) {
        let now_peers = cluster.gossip_peers(self.gossip_port, self.gossip_ipv4);
        if now_peers != self.peers {
            self.peers = now_peers;
            self.membership.set_peers(self.peers.clone());
        }
    }

    fn interfaces_changed(&mut self, before: &Inventory, shared: &mut driver::Shared<'_>) {
        let before: BTreeSet<String> = before.usable().into_iter().collect();
        let after: BTreeSet<String> = shared.inventory.usable().into_iter().collect();
        if before != after {
            tracing::info!(usable = ?after, "usable interfaces changed");
            self.membership.set_interfaces(after.iter().cloned().collect());
            if after.difference(&before).next().is_some() {
                // Back from a cut link: what the gossip says now may be from before the cut, so wait the
                // whole grace for the others to see us and us them.
                self.core.link_returned(std::time::Instant::now());
            }
        }
        self.responder.sync(shared.inventory);
    }

    async fn step(&mut self, shared: &mut driver::Shared<'_>) -> anyhow::Result<()> {
        let live = self.members.borrow_and_update().clone();
        self.metrics.members.set(i64::try_from(live.len()).unwrap_or(i64::MAX));
        let own_addresses = shared.inventory.own_addresses();
        if own_addresses != self.own_addresses {
            self.own_addresses_version += 1;
            self.own_addresses = own_addresses.clone();
        }
        // Read before the world: a change landing in between makes the next step plan again, never the reverse
        // (a plan of an older world kept under a newer version).
        let world_version = (shared.cluster.plan_version(), self.own_addresses_version);
        let world = shared.cluster.world().with_own_addresses(&self.me, own_addresses);
        let announcements = shared.cluster.announcements();
        let draining = self.draining.borrow().clone();
        let view = View {
            world: &world,
            live: &live,
            draining: &draining,
            inventory: shared.inventory,
            announcements: &announcements,
            peers: self.peers.len(),
            world_version: Some(world_version),
        };
        let mut outcome = self.core.step(&view, std::time::Instant::now());
        // A claim heard just before this plan handed the VIP over was the new owner's: let go at once
        // instead of answering until its next announcement.
        if self.release_handed_over(shared.reporter.decisions()) {
            outcome = self.core.step(&view, std::time::Instant::now());
        }
        // Stop answering for lost VIPs before anything else happens, and listen for answers before probing.
        let answered = Some((&outcome.held, &outcome.watched));
        self.carry_out(answered, &outcome.probes, &outcome.took_over, &outcome.gave_up, outcome.actions).await;
        let (cluster, reports) = (shared.cluster, shared.reports);
        shared.reporter.report_node_addresses(cluster, reports, outcome.node_address_vips, outcome.janitor);
        let held = std::sync::Arc::new(outcome.held);
        shared.reporter.report(cluster, reports, outcome.decisions, held, outcome.janitor, &announcements);
        shared.reporter.report_unplaced(cluster, reports, shared.inventory, outcome.unplaced);
        Ok(())
    }

    fn begin_drain(&mut self) -> Option<Duration> {
        if self.members.borrow().len() < 2 || self.core.answered().is_empty() {
            return None;
        }
        tracing::info!("stopping: handing the VIPs over before leaving the gossip group");
        self.membership.drain();
        Some(DRAIN_TIMEOUT)
    }

    fn drained(&self) -> bool {
        self.core.answers_nothing()
    }

    async fn stop(mut self, _shared: &mut driver::Shared<'_>) {
        tracing::info!("stopping: releasing every VIP and leaving the gossip group");
        let actions = self.core.release_all(std::time::Instant::now());
        self.responder.set_owned(&BTreeMap::new(), &BTreeMap::new());
        self.responder.execute(actions).await;
        self.membership.leave().await;
    }

    fn mode(&self) -> &'static str {
        "native"
    }

    fn alive(&self) -> Vec<String> {
        self.members.borrow().keys().cloned().collect()
    }
}

/// Conflicts and deferred takeovers, told to the user at most once a minute per VIP (and MAC).
struct ConflictLog {
    me: String,
    /// When a deferred takeover of each VIP was last logged (a partition retries every second or two).
    deferral_logged: HashMap<IpAddr, Instant>,
    conflict_events: HashMap<(IpAddr, Mac), Instant>,
}

impl ConflictLog {
    fn new(me: String) -> Self {
        Self { me, deferral_logged: HashMap::new(), conflict_events: HashMap::new() }
    }

    fn log_deferral(&mut self, decisions: &[Decision], conflict: &Conflict) {
        if self.deferral_logged.get(&conflict.vip).is_some_and(|at| at.elapsed() < CONFLICT_EVENT_PERIOD) {
            return;
        }
        self.deferral_logged.insert(conflict.vip, Instant::now());
        self.deferral_logged.retain(|_, at| at.elapsed() < CONFLICT_EVENT_PERIOD);
        let services: Vec<String> = decisions
            .iter()
            .filter(|d| d.vips.contains(&conflict.vip))
            .map(|d| format!("{}/{}", d.service.namespace, d.service.name))
            .collect();
        tracing::warn!(
            vip = %conflict.vip, mac = %conflict.mac, interface = %conflict.interface, services = ?services,
            "another MAC answers for this VIP (its previous owner, which the gossip cannot reach, or another host): not taking it over; probing again later, backing off from 1 s to 8 s (logged once a minute per VIP)"
        );
    }

    fn report_conflict(&mut self, shared: &driver::Shared<'_>, conflict: Conflict) {
        let (cluster, reports) = (shared.cluster, shared.reports);
        let key = (conflict.vip, conflict.mac);
        if self.conflict_events.get(&key).is_some_and(|at| at.elapsed() < CONFLICT_EVENT_PERIOD) {
            return;
        }
        self.conflict_events.insert(key, Instant::now());
        self.conflict_events.retain(|_, at| at.elapsed() < CONFLICT_EVENT_PERIOD);
        let holders: Vec<&Decision> =
            shared.reporter.decisions().iter().filter(|d| d.vips.contains(&conflict.vip)).collect();
        if holders.is_empty() {
            tracing::warn!(vip = %conflict.vip, mac = %conflict.mac, interface = %conflict.interface, "IP conflict on a VIP no Service holds any more");
        }
        for decision in holders {
            if let Some(regarding) = cluster.service_reference(&decision.service) {
                let _ = reports.send(Report::Notice(Notice {
                    regarding,
                    action: report::ANNOUNCE,
                    warning: true,
                    reason: reason::IP_CONFLICT,
                    note: format!(
                        "another host (MAC {}) claims {} on {} of node {}, which announces it: two hosts answer for this address; find and remove the other one",
                        conflict.mac, conflict.vip, conflict.interface, self.me
                    ),
                }));
            }
        }
    }
}
