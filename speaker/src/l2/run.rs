//! Native mode's backend: the membership, the announcer and the sockets behind the driver's loop. Every
//! input (an object changed, a member came or went, a link changed) leads to the same step: rebuild the plan,
//! bring the announcer to it, swap the answered set, and queue the reports.
//! The failover path (member down → plan → probe → gratuitous ARP/NA) touches no API. When this node
//! really starts and stops answering for a VIP the plan gives or takes is [`crate::l2::claims`]' decision:
//! a takeover from a holder that is not a live member waits for a silent probe, a stand-in stands down when
//! it hears the owner, and a VIP handed to a live member is answered until that member announces it.

use ferrolb_crds::reason;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cluster::{Cluster, node_address};
use crate::driver::{self, Next};
use crate::inventory::Inventory;
use crate::l2::announcer::{Announcer, Timing};
use crate::l2::claims::{self, Claims, Heard, Want};
use crate::l2::frames::Mac;
use crate::l2::gossip_auth::SharedKey;
use crate::l2::membership::{self, MemberId, Membership, MembershipMetrics};
use crate::l2::responder::{Conflict, Responder};
use crate::metrics::Metrics;
use crate::plan::{self, Decision};
use crate::report::{self, Notice, Report};

/// After start-up, or after an interface comes back, how long a speaker takes nothing over unless it sees
/// another member first.
pub const DEFAULT_JOIN_GRACE: Duration = Duration::from_secs(2);
/// A stopping speaker keeps answering for its VIPs at most this long while the others take them over (they
/// announce at once, since a draining holder needs no wire probe); then it stops whatever happened. Equal to
/// the hand-over fallback of a VIP given to a live member with the default join grace.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// One conflict Event per VIP and foreign MAC per this period.
const CONFLICT_EVENT_PERIOD: Duration = Duration::from_secs(60);
/// A VIP held by right that another MAC claims is announced again at most this often (RFC 5227's
/// DEFEND_INTERVAL): enough to win the LAN back from a stale claim, never a gratuitous ARP storm.
const DEFEND_INTERVAL: Duration = Duration::from_secs(10);

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
    join_grace: Duration,
    gossip_port: u16,
    gossip_ipv4: bool,
    metrics: Metrics,
    membership: Membership,
    members: tokio::sync::watch::Receiver<crate::election::Members>,
    rejoins: tokio::sync::watch::Receiver<u64>,
    draining: tokio::sync::watch::Receiver<BTreeSet<String>>,
    conflicts: mpsc::UnboundedReceiver<Conflict>,
    responder: Responder,
    state: State,
    peers: BTreeSet<SocketAddr>,
    probes: Vec<(IpAddr, String)>,
}

/// What native mode waits on besides the driver's inputs.
pub enum L2Event {
    /// The gossip's members, or its draining members, changed.
    Membership,
    Conflict(Conflict),
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
    pub async fn start(setup: &driver::Setup, l2: L2Options, metrics: Metrics) -> anyhow::Result<Self> {
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
            MembershipMetrics { rejected_datagrams: metrics.rejected_gossip.clone() },
        )?;
        let peers = setup.cluster.gossip_peers(l2.gossip_port, gossip_ip.is_ipv4());
        membership.set_peers(peers.clone());
        let (conflicts_tx, conflicts) = mpsc::unbounded_channel();
        let mut responder = Responder::new(conflicts_tx, metrics.clone());
        responder.sync(&setup.inventory);
        Ok(Self {
            state: State::new(me.clone(), l2.timing, l2.join_grace),
            me,
            join_grace: l2.join_grace,
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
            probes: Vec::new(),
        })
    }
}

impl driver::Backend for L2Backend {
    type Event = L2Event;

    async fn next_event(&mut self) -> anyhow::Result<L2Event> {
        let far = Instant::now() + Duration::from_secs(3600);
        let next_due = self.state.announcer.next_due().map(Instant::from_std).unwrap_or(far);
        let claims_due = self.state.claims.next_due().map(Instant::from_std).unwrap_or(far);
        let complete = self.state.view_complete(&self.members.borrow());
        let hold_until = self.state.hold_until;
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
        match event {
            L2Event::Membership => {}
            L2Event::Conflict(conflict) => match self.state.claims.heard(conflict.vip, std::time::Instant::now()) {
                Heard::Ignored => return Ok(Next::Wait),
                Heard::Conflict => {
                    let defend = self.state.defend(conflict.vip);
                    self.responder.execute(defend).await;
                    self.state.report_conflict(shared, conflict);
                    return Ok(Next::Wait);
                }
                Heard::Deferred | Heard::StoodDown => {
                    self.metrics.takeovers_deferred.inc();
                    self.state.log_deferral(shared.reporter.decisions(), &conflict);
                }
                Heard::Released => {
                    tracing::info!(vip = %conflict.vip, mac = %conflict.mac, "handed over: the new owner announces it");
                }
            },
            L2Event::ClaimsDue { complete } => {
                self.probes = self.state.claims.tick(complete, std::time::Instant::now()).probes;
            }
            L2Event::Rejoined => {
                // Declared down while running: someone may have taken our VIPs meanwhile; take them back.
                let held: Vec<IpAddr> = self.state.announcer.owned().copied().collect();
                tracing::info!(vips = held.len(), "announcing held VIPs again after rejoining the gossip");
                let actions = self.state.announcer.reannounce(&held, std::time::Instant::now());
                self.responder.execute(actions).await;
                return Ok(Next::Wait);
            }
            L2Event::AnnouncementDue => {
                let actions = self.state.announcer.due(std::time::Instant::now());
                self.responder.execute(actions).await;
                return Ok(Next::Wait);
            }
            L2Event::HoldOver => self.state.hold_until = None,
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
                self.state.hold_until = Some(Instant::now() + self.join_grace);
                self.state.hold_ends_on_contact = false;
            }
        }
        self.responder.sync(shared.inventory);
    }

    async fn step(&mut self, shared: &mut driver::Shared<'_>) -> anyhow::Result<()> {
        let (me, state, metrics) = (self.me.clone(), &mut self.state, &self.metrics);
        let live = self.members.borrow_and_update().clone();
        metrics.members.set(i64::try_from(live.len()).unwrap_or(i64::MAX));
        // At start-up the hold ends early once every node the API lists is seen: taking over while some are
        // still starting would only move VIPs twice.
        if state.hold_until.is_some() && state.hold_ends_on_contact && live.len() >= self.peers.len().max(2) {
            state.hold_until = None;
        }
        let inventory = shared.inventory;
        let world = shared.cluster.world().with_own_addresses(&me, inventory.own_addresses());
        let decisions = plan::decide(&world, &live);
        let mut desired = plan::mine(&decisions, &me, inventory);
        let unplaced = plan::unplaced(&decisions, &me, &desired);
        if state.hold_until.is_some() {
            // Not yet in touch with the others: give up what the plan says to, take nothing new.
            let held: BTreeSet<IpAddr> = state.announcer.owned().copied().collect();
            desired.retain(|vip, _| held.contains(vip));
        }
        let now = std::time::Instant::now();
        let announcements = shared.cluster.announcements();
        state.learn_speakers(&live, &announcements, &world);
        let complete = state.view_complete(&live);
        let holders = previous_holders(shared.reporter.decisions(), &announcements, &me);
        let draining = self.draining.borrow().clone();
        let wanted: BTreeMap<IpAddr, Want> = desired
            .iter()
            .map(|(vip, interfaces)| {
                // A draining holder still answers and hands over by itself, like a live one.
                let holder_live = holders.get(vip).is_some_and(|h| live.contains_key(h) || draining.contains(h));
                (*vip, Want { interfaces: interfaces.clone(), holder_live })
            })
            .collect();
        let handed_over: BTreeSet<IpAddr> = decisions
            .iter()
            .filter(|d| d.owner.as_deref().is_some_and(|o| o != me))
            .flat_map(|d| d.vips.iter().copied())
            .collect();
        let step = state.claims.update(&wanted, &handed_over, complete, now);
        state.claims.keep_usable(&inventory.usable().into_iter().collect());
        self.probes.extend(step.probes);
        let answered = state.claims.answered();
        let watched: BTreeMap<IpAddr, BTreeSet<String>> = state
            .claims
            .watched()
            .into_iter()
            .filter_map(|v| wanted.get(&v).map(|w| (v, w.interfaces.clone())))
            .collect();
        let before: BTreeSet<IpAddr> = state.announcer.owned().copied().collect();
        let mut actions = state.announcer.update(&answered, now);
        actions.extend(state.announcer.reannounce(&step.reannounce, now));
        let held = answered;
        // Stop answering for lost VIPs before anything else happens, and listen for answers before probing.
        self.responder.set_owned(&held, &watched);
        for (vip, interface) in self.probes.drain(..) {
            self.responder.probe(vip, &interface).await;
        }
        let after: BTreeSet<IpAddr> = held.keys().copied().collect();
        let changes = before.symmetric_difference(&after).count();
        if changes > 0 {
            metrics.ownership_changes.inc_by(changes as u64);
            for vip in after.difference(&before) {
                tracing::info!(%vip, "took over");
            }
            for vip in before.difference(&after) {
                tracing::info!(%vip, "gave up");
            }
        }
        metrics.owned_vips.set(i64::try_from(after.len()).unwrap_or(i64::MAX));
        self.responder.execute(actions).await;
        let janitor = live.keys().next() == Some(&me);
        let (cluster, reports) = (shared.cluster, shared.reports);
        shared.reporter.report_node_addresses(cluster, reports, plan::node_address_vips(&world), janitor);
        shared.reporter.report(cluster, reports, decisions, &held, janitor);
        shared.reporter.report_unplaced(cluster, reports, unplaced);
        Ok(())
    }

    fn begin_drain(&mut self) -> Option<Duration> {
        if self.members.borrow().len() < 2 || self.state.claims.answered().is_empty() {
            return None;
        }
        tracing::info!("stopping: handing the VIPs over before leaving the gossip group");
        self.membership.drain();
        Some(DRAIN_TIMEOUT)
    }

    fn drained(&self) -> bool {
        self.state.announcer.owned().next().is_none()
    }

    async fn stop(mut self, _shared: &mut driver::Shared<'_>) {
        tracing::info!("stopping: releasing every VIP and leaving the gossip group");
        let actions = self.state.announcer.update(&BTreeMap::new(), std::time::Instant::now());
        self.responder.set_owned(&BTreeMap::new(), &BTreeMap::new());
        self.responder.execute(actions).await;
        self.membership.leave().await;
    }
}

/// Runs native mode until `stop` resolves.
pub async fn run(
    client: kube::Client,
    options: driver::Options,
    l2: L2Options,
    metrics: Metrics,
    health: ferrolb_telemetry::Health,
    events: report::EventSource,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let setup = driver::Setup::start(&client, options, events).await?;
    let backend = L2Backend::start(&setup, l2, metrics).await?;
    driver::run(setup, backend, health, stop).await
}

/// Who held each VIP last, as far as this node knows: the owner of its last plan, unless that was this
/// node, else the node its Service's L2Announcement names (the writer of which held it). This node is never
/// a holder here: a takeover from itself has nobody to wait for.
fn previous_holders(
    decisions: &[Decision],
    announcements: &BTreeMap<String, ferrolb_crds::L2AnnouncementSpec>,
    me: &str,
) -> BTreeMap<IpAddr, String> {
    let mut holders: BTreeMap<IpAddr, String> = announcements
        .values()
        .filter(|a| a.node != me)
        .flat_map(|a| a.ips.iter().filter_map(|ip| ip.parse().ok()).map(|ip| (ip, a.node.clone())))
        .collect();
    for decision in decisions {
        if let Some(owner) = decision.owner.as_deref().filter(|o| *o != me) {
            holders.extend(decision.vips.iter().map(|vip| (*vip, owner.to_string())));
        }
    }
    holders
}

pub(crate) struct State {
    me: String,
    announcer: Announcer,
    claims: Claims,
    /// When each VIP was last defended against another MAC's claim.
    defended: HashMap<IpAddr, Instant>,
    /// When a deferred takeover of each VIP was last logged (a partition retries every second or two).
    deferral_logged: HashMap<IpAddr, Instant>,
    /// Nodes known to run a speaker: seen in the gossip, or named by an L2Announcement (Nodes that still
    /// exist). The view is complete when all of them are live members.
    known_speakers: BTreeSet<String>,
    hold_until: Option<Instant>,
    /// At start-up the hold ends as soon as another member is seen.
    hold_ends_on_contact: bool,
    conflict_events: HashMap<(IpAddr, Mac), Instant>,
}

impl State {
    pub(crate) fn new(me: String, timing: Timing, join_grace: Duration) -> Self {
        Self {
            claims: Claims::new(me.clone(), claims::Timing::with_join_grace(join_grace)),
            me,
            announcer: Announcer::new(timing),
            defended: HashMap::new(),
            deferral_logged: HashMap::new(),
            known_speakers: BTreeSet::new(),
            hold_until: Some(Instant::now() + join_grace),
            hold_ends_on_contact: true,
            conflict_events: HashMap::new(),
        }
    }

    /// The announcements that defend `vip` against another MAC's claim, at most once per DEFEND_INTERVAL.
    fn defend(&mut self, vip: IpAddr) -> Vec<crate::l2::announcer::Action> {
        if self.defended.get(&vip).is_some_and(|at| at.elapsed() < DEFEND_INTERVAL) {
            return Vec::new();
        }
        self.defended.insert(vip, Instant::now());
        self.defended.retain(|_, at| at.elapsed() < DEFEND_INTERVAL);
        self.announcer.reannounce(&[vip], std::time::Instant::now())
    }

    fn learn_speakers(
        &mut self,
        live: &crate::election::Members,
        announcements: &BTreeMap<String, ferrolb_crds::L2AnnouncementSpec>,
        world: &plan::World,
    ) {
        self.known_speakers.extend(live.keys().cloned());
        self.known_speakers.extend(announcements.values().map(|a| a.node.clone()));
        let nodes: BTreeSet<&str> = world.nodes.iter().map(|n| n.name.as_str()).collect();
        self.known_speakers.retain(|n| nodes.contains(n.as_str()));
    }

    /// Every node known to run a speaker is a live member: a VIP taken over now is held by right, not as a
    /// stand-in for a node we cannot hear.
    fn view_complete(&self, live: &crate::election::Members) -> bool {
        self.known_speakers.iter().all(|n| live.contains_key(n))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn members(nodes: &[&str]) -> crate::election::Members {
        nodes.iter().map(|n| (n.to_string(), BTreeSet::new())).collect()
    }

    fn world(nodes: &[&str]) -> plan::World {
        let nodes = nodes
            .iter()
            .map(|n| plan::NodeInfo {
                name: n.to_string(),
                labels: BTreeMap::new(),
                network_unavailable: false,
                unschedulable: false,
            })
            .collect();
        plan::World { nodes, ..Default::default() }
    }

    #[test]
    fn the_view_is_complete_when_every_node_known_to_run_a_speaker_is_live() {
        let mut state = State::new("node-1".into(), Timing::default(), Duration::from_secs(2));
        // node-4 has no speaker (never seen, never announced): it does not count.
        let all = world(&["node-1", "node-2", "node-3", "node-4"]);
        state.learn_speakers(&members(&["node-1", "node-2", "node-3"]), &BTreeMap::new(), &all);
        assert!(state.view_complete(&members(&["node-1", "node-2", "node-3"])));
        assert!(!state.view_complete(&members(&["node-1", "node-3"])), "node-2 was seen: it is missing");
        // A fresh speaker that sees nobody still knows the node an L2Announcement names.
        let mut fresh = State::new("node-3".into(), Timing::default(), Duration::from_secs(2));
        let spec = ferrolb_crds::L2AnnouncementSpec {
            service: ferrolb_crds::l2announcement::ServiceReference { namespace: "default".into(), name: "web".into() },
            ips: vec!["192.0.2.200".into()],
            node: "node-2".into(),
            interfaces: vec!["eth0".into()],
        };
        fresh.learn_speakers(&members(&["node-3"]), &BTreeMap::from([("default.web".to_string(), spec)]), &all);
        assert!(!fresh.view_complete(&members(&["node-3"])));
        // A deleted Node is forgotten.
        fresh.learn_speakers(&members(&["node-3"]), &BTreeMap::new(), &world(&["node-1", "node-3"]));
        assert!(fresh.view_complete(&members(&["node-3"])));
    }
}
