//! Native mode's decisions over time, pure: what the node sees (its view of the cluster and the gossip) and
//! the time go in; what it answers for, the frames to send, the probes to make and what to report come out.
//! The backend ([`crate::l2::run`]) feeds it from the watches, the membership and the sockets and carries its
//! outputs out; the scenario tests feed it recorded inputs for several nodes at once.
//!
//! What it decides, besides the plan itself ([`crate::plan`]):
//! - the **start-up hold**: a starting speaker takes nothing over for the join grace, unless it is in touch
//!   with every speaker the API lists first (taking over while some still start would only move VIPs twice);
//! - the **link-return grace**: after a usable interface comes back, the whole grace, contact or not (what
//!   the gossip says then may date from before the cut);
//! - **when a takeover really happens** ([`crate::l2::claims`]): after a silent probe when the previous holder
//!   is not a live member, at once when it is (it hands over), and standing down when the owner is heard;
//! - the **janitor**: the first live member (by name) deletes announcements nobody owns.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolb_crds::l2announcement::ServiceReference;

use crate::election::Members;
use crate::inventory::Inventory;
use crate::l2::announcer::{Action, Announcer, Timing};
use crate::l2::claims::{self, Claims, Heard, Want};
use crate::plan::{self, Decision, Placement, World};

/// A VIP held by right that another MAC claims is announced again at most this often (RFC 5227's
/// DEFEND_INTERVAL): enough to win the LAN back from a stale claim, never a gratuitous ARP storm.
const DEFEND_INTERVAL: Duration = Duration::from_secs(10);

/// What this node knows when it takes a step.
pub struct View<'a> {
    /// The cluster, this node's own addresses included.
    pub world: &'a World,
    /// Live gossip members and their interfaces (this node among them).
    pub live: &'a Members,
    /// Members that announced they are stopping: they still answer and hand over by themselves.
    pub draining: &'a BTreeSet<String>,
    pub inventory: &'a Inventory,
    /// The L2Announcements: name → spec.
    pub announcements: &'a BTreeMap<String, crate::cluster::Announced>,
    /// How many speakers the API lists (the gossip peers).
    pub peers: usize,
    /// Moves whenever `world` changes; with the same version and the same live members the last plan is
    /// reused (a claim's probe coming due replans nothing). `None`: unknown, plan every time.
    pub world_version: Option<WorldVersion>,
}

/// What versions the world: the cluster's watches, and this node's own addresses.
pub type WorldVersion = (u64, u64);

/// The result of a step.
#[derive(Debug, Default)]
pub struct Outcome {
    /// What this node answers for now, on which interfaces.
    pub held: Placement,
    /// VIPs this node listens for without answering (a takeover waiting on a probe, a hand-over).
    pub watched: Placement,
    /// Probes to send (after the answered set is swapped).
    pub probes: Vec<(IpAddr, String)>,
    /// Frames to send last (gratuitous ARP / NA, multicast joins and leaves).
    pub actions: Vec<Action>,
    pub took_over: Vec<IpAddr>,
    pub gave_up: Vec<IpAddr>,
    /// Shared with the next step when it plans nothing new.
    pub decisions: Arc<Vec<Decision>>,
    /// Services this node owns but cannot announce (no interface for some VIP).
    pub unplaced: Vec<(Arc<ServiceReference>, Vec<IpAddr>)>,
    /// Service VIPs that are node addresses (never announced).
    pub node_address_vips: Vec<plan::NodeAddressVip>,
    /// This node deletes announcements nobody owns.
    pub janitor: bool,
}

/// What a claims tick changed.
#[derive(Debug, Default)]
pub struct ClaimsTick {
    /// When the answered set changed: what is answered and watched now (the responder's new sets).
    pub answered: Option<(Placement, Placement)>,
    /// Probes to send (after the answered set, if any, is swapped).
    pub probes: Vec<(IpAddr, String)>,
    /// Frames to send last.
    pub actions: Vec<Action>,
    pub took_over: Vec<IpAddr>,
    pub gave_up: Vec<IpAddr>,
}

impl ClaimsTick {
    /// The answered set changed: the reports (L2Announcements, Events, series) owe a step.
    pub fn answered_changed(&self) -> bool {
        self.answered.is_some()
    }
}

/// The announcer brought to a new answered set: its frames, and what it started and stopped answering.
struct Swap {
    actions: Vec<Action>,
    took_over: Vec<IpAddr>,
    gave_up: Vec<IpAddr>,
}

pub struct Core {
    me: String,
    join_grace: Duration,
    announcer: Announcer,
    claims: Claims,
    /// Nodes known to run a speaker: seen in the gossip, or named by an L2Announcement (Nodes that still
    /// exist). The view is complete when all of them are live members.
    known_speakers: BTreeSet<String>,
    hold_until: Option<Instant>,
    /// At start-up the hold ends as soon as every listed speaker is seen.
    hold_ends_on_contact: bool,
    /// The last step's plan: who it gave each VIP to.
    last_decisions: Arc<Vec<Decision>>,
    /// When each VIP was last defended against another MAC's claim.
    defended: HashMap<IpAddr, Instant>,
    /// The last plan, the world version and the live members it was made from.
    last_plan: Option<(WorldVersion, Members, Arc<Vec<Decision>>)>,
}

impl Core {
    /// A speaker starting at `now`: in its start-up hold.
    pub fn new(me: impl Into<String>, timing: Timing, join_grace: Duration, now: Instant) -> Self {
        let me = me.into();
        Self {
            claims: Claims::new(me.clone(), claims::Timing::with_join_grace(join_grace)),
            me,
            join_grace,
            announcer: Announcer::new(timing),
            known_speakers: BTreeSet::new(),
            hold_until: Some(now + join_grace),
            hold_ends_on_contact: true,
            last_decisions: Arc::default(),
            defended: HashMap::new(),
            last_plan: None,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Decide and bring the claims and the announcer to the decision.
    pub fn step(&mut self, view: &View<'_>, now: Instant) -> Outcome {
        let me = self.me.clone();
        let live = view.live;
        if self.hold_until.is_some_and(|until| until <= now) {
            self.hold_until = None;
        }
        if self.hold_until.is_some() && self.hold_ends_on_contact && live.len() >= view.peers.max(2) {
            self.hold_until = None;
        }
        let decisions = self.plan(view);
        let mut desired = plan::mine(&decisions, &me, view.inventory);
        let unplaced = plan::unplaced(&decisions, &me, &desired);
        if self.hold_until.is_some() {
            // Not yet in touch with the others: give up what the plan says to, take nothing new.
            let held: BTreeSet<IpAddr> = self.announcer.owned().copied().collect();
            desired.retain(|vip, _| held.contains(vip));
        }
        self.learn_speakers(live, view.announcements, view.world);
        let complete = self.view_complete(live);
        let holders = previous_holders(&self.last_decisions, view.announcements, &me);
        let wanted: BTreeMap<IpAddr, Want> = desired
            .iter()
            .map(|(vip, interfaces)| {
                // A draining holder still answers and hands over by itself, like a live one.
                let holder_live = holders.get(vip).is_some_and(|h| live.contains_key(*h) || view.draining.contains(*h));
                (*vip, Want { interfaces: interfaces.clone(), holder_live })
            })
            .collect();
        let handed_over: BTreeSet<IpAddr> = decisions
            .iter()
            .filter(|d| d.owner.as_deref().is_some_and(|o| o != me))
            .flat_map(|d| d.vips.iter().copied())
            .collect();
        let step = self.claims.update(&wanted, &handed_over, complete, now);
        self.claims.keep_usable(&view.inventory.usable().into_iter().collect());
        let probes = step.probes;
        let held = self.claims.answered();
        let watched = self.claims.watched();
        let Swap { mut actions, took_over, gave_up } = self.announce(&held, now);
        actions.extend(self.announcer.reannounce(&step.reannounce, now));
        self.last_decisions = decisions.clone();
        Outcome {
            took_over,
            gave_up,
            held,
            watched,
            probes,
            actions,
            node_address_vips: plan::node_address_vips(view.world),
            janitor: live.keys().next() == Some(&me),
            decisions,
            unplaced,
        }
    }

    /// The plan for `view`: the last one again if nothing it was made from changed.
    fn plan(&mut self, view: &View<'_>) -> Arc<Vec<Decision>> {
        if let (Some((version, members, decisions)), Some(now)) = (&self.last_plan, view.world_version)
            && *version == now
            && members == view.live
        {
            return decisions.clone();
        }
        let decisions = Arc::new(plan::decide(view.world, view.live));
        self.last_plan = view.world_version.map(|version| (version, view.live.clone(), decisions.clone()));
        decisions
    }

    /// A usable interface came back: hold for the whole grace.
    pub fn link_returned(&mut self, now: Instant) {
        self.hold_until = Some(now + self.join_grace);
        self.hold_ends_on_contact = false;
    }

    /// When the hold ends by itself (a step is due then).
    pub fn hold_due(&self) -> Option<Instant> {
        self.hold_until
    }

    /// When a claim's timer (probe, takeover, retry, release fallback) is due.
    pub fn claims_due(&self) -> Option<Instant> {
        self.claims.next_due()
    }

    /// Runs the claims' timers, and brings the announcer to what they answer now without planning: a
    /// takeover after a silent probe window is the failover's last step and waits for nothing. What the
    /// plan and the reports make of it can follow later ([`ClaimsTick::answered_changed`]).
    pub fn tick_claims(&mut self, complete: bool, now: Instant) -> ClaimsTick {
        let step = self.claims.tick(complete, now);
        if !step.answered_changed {
            return ClaimsTick { probes: step.probes, ..ClaimsTick::default() };
        }
        let held = self.claims.answered();
        let Swap { actions, took_over, gave_up } = self.announce(&held, now);
        ClaimsTick { took_over, gave_up, answered: Some((held, self.claims.watched())), probes: step.probes, actions }
    }

    /// Brings the announcer to what the claims answer now.
    fn announce(&mut self, held: &Placement, now: Instant) -> Swap {
        let before: BTreeSet<IpAddr> = self.announcer.owned().copied().collect();
        let actions = self.announcer.update(held, now);
        Swap {
            took_over: held.keys().filter(|vip| !before.contains(vip)).copied().collect(),
            gave_up: before.iter().filter(|vip| !held.contains_key(vip)).copied().collect(),
            actions,
        }
    }

    /// When the next gratuitous ARP / NA is due.
    pub fn announcements_due(&self) -> Option<Instant> {
        self.announcer.next_due()
    }

    pub fn due_announcements(&mut self, now: Instant) -> Vec<Action> {
        self.announcer.due(now)
    }

    /// Declared down while running: someone may have taken our VIPs meanwhile; announce them again.
    pub fn rejoined(&mut self, now: Instant) -> Vec<Action> {
        let held: Vec<IpAddr> = self.announcer.owned().copied().collect();
        self.announcer.reannounce(&held, now)
    }

    /// Another MAC claimed `vip`, or answered our probe.
    pub fn heard(&mut self, vip: IpAddr, now: Instant) -> Heard {
        self.claims.heard(vip, now)
    }

    /// The announcements that defend `vip` against another MAC's claim, at most once per DEFEND_INTERVAL.
    pub fn defend(&mut self, vip: IpAddr, now: Instant) -> Vec<Action> {
        if self.defended.get(&vip).is_some_and(|at| now.saturating_duration_since(*at) < DEFEND_INTERVAL) {
            return Vec::new();
        }
        self.defended.insert(vip, now);
        self.defended.retain(|_, at| now.saturating_duration_since(*at) < DEFEND_INTERVAL);
        self.announcer.reannounce(&[vip], now)
    }

    /// Whether this node answers for any VIP.
    pub fn answers_nothing(&self) -> bool {
        self.announcer.owned().next().is_none()
    }

    pub fn answered(&self) -> Placement {
        self.claims.answered()
    }

    /// Stops answering for everything: the frames that end the announcements.
    pub fn release_all(&mut self, now: Instant) -> Vec<Action> {
        self.announcer.update(&BTreeMap::new(), now)
    }

    fn learn_speakers(
        &mut self,
        live: &Members,
        announcements: &BTreeMap<String, crate::cluster::Announced>,
        world: &World,
    ) {
        // Called at every step with thousands of announcements naming a handful of nodes: copy a name only
        // when it is new.
        for node in live.keys().map(String::as_str).chain(announcements.values().map(|a| &*a.node)) {
            if !self.known_speakers.contains(node) {
                self.known_speakers.insert(node.to_string());
            }
        }
        let nodes: BTreeSet<&str> = world.nodes.iter().map(|n| &*n.name).collect();
        self.known_speakers.retain(|n| nodes.contains(n.as_str()));
    }

    /// Every node known to run a speaker is a live member: a VIP taken over now is held by right, not as a
    /// stand-in for a node we cannot hear.
    pub fn view_complete(&self, live: &Members) -> bool {
        self.known_speakers.iter().all(|n| live.contains_key(n))
    }
}

/// Who held each VIP last, as far as this node knows: the owner of its last plan, unless that was this
/// node, else the node its Service's L2Announcement names (the writer of which held it). This node is never
/// a holder here: a takeover from itself has nobody to wait for.
fn previous_holders<'a>(
    last_plan: &'a [Decision],
    announcements: &'a BTreeMap<String, crate::cluster::Announced>,
    me: &str,
) -> BTreeMap<IpAddr, &'a str> {
    let mut holders: BTreeMap<IpAddr, &str> = announcements
        .values()
        .filter(|a| *a.node != *me)
        .flat_map(|a| a.ips.iter().map(|ip| (*ip, &*a.node)))
        .collect();
    for decision in last_plan {
        if let Some(owner) = decision.owner.as_deref().filter(|o| *o != me) {
            holders.extend(decision.vips.iter().map(|vip| (*vip, owner)));
        }
    }
    holders
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
                name: (*n).into(),
                labels: BTreeMap::new(),
                network_unavailable: false,
                unschedulable: false,
            })
            .collect();
        plan::World { nodes, ..Default::default() }
    }

    #[test]
    fn a_claims_tick_that_only_probes_leaves_the_answered_set_and_a_takeover_answers_at_once_without_a_plan() {
        let start = Instant::now();
        let mut core = Core::new("node-1", Timing::default(), Duration::ZERO, start);
        let mut world = world(&["node-1"]);
        world.services = vec![Arc::new(crate::test_world::service("web", &["192.0.2.200"], &["node-1"]))];
        world.advertisements = vec![ferrolb_crds::L2AdvertisementSpec::default()];
        world.pools = vec![plan::PoolInfo {
            name: "demo".into(),
            labels: BTreeMap::new(),
            addresses: vec!["192.0.2.0/24".into()],
        }];
        let live: Members = BTreeMap::from([("node-1".to_string(), BTreeSet::from(["eth0".to_string()]))]);
        let inventory = Inventory {
            links: vec![crate::test_world::link("eth0", &["192.0.2.11/24"])],
            default_route: BTreeMap::new(),
        };
        let (draining, announcements) = (BTreeSet::new(), BTreeMap::new());
        let view = View {
            world: &world,
            live: &live,
            draining: &draining,
            inventory: &inventory,
            announcements: &announcements,
            peers: 1,
            world_version: Some((1, 0)),
        };
        let vip: IpAddr = "192.0.2.200".parse().unwrap();
        let outcome = core.step(&view, start);
        assert_eq!(outcome.probes, [(vip, "eth0".to_string())], "nobody held it: probed first");
        assert!(outcome.held.is_empty() && outcome.watched.contains_key(&vip));

        let second = core.claims_due().unwrap();
        let tick = core.tick_claims(true, second);
        assert_eq!(tick.probes, [(vip, "eth0".to_string())], "the second probe");
        assert!(!tick.answered_changed() && tick.actions.is_empty() && tick.took_over.is_empty());
        assert!(core.answers_nothing(), "still probing");

        let take_at = core.claims_due().unwrap();
        assert_eq!(take_at, start + claims::Timing::with_join_grace(Duration::ZERO).probe_window());
        let tick = core.tick_claims(true, take_at);
        assert!(tick.answered_changed());
        assert_eq!(tick.took_over, [vip]);
        assert_eq!(tick.actions, [Action::Announce { vip, interface: "eth0".into() }], "the first gratuitous ARP");
        let (held, watched) = tick.answered.unwrap();
        assert!(held.contains_key(&vip) && watched.is_empty());
        assert!(!core.answers_nothing());

        // The step that follows (for the reports) changes nothing on the wire.
        let outcome = core.step(&view, take_at);
        assert!(outcome.took_over.is_empty() && outcome.actions.is_empty() && outcome.probes.is_empty());
        assert!(outcome.held.contains_key(&vip));
    }

    #[test]
    fn the_view_is_complete_when_every_node_known_to_run_a_speaker_is_live() {
        let mut state = Core::new("node-1", Timing::default(), Duration::from_secs(2), Instant::now());
        // node-4 has no speaker (never seen, never announced): it does not count.
        let all = world(&["node-1", "node-2", "node-3", "node-4"]);
        state.learn_speakers(&members(&["node-1", "node-2", "node-3"]), &BTreeMap::new(), &all);
        assert!(state.view_complete(&members(&["node-1", "node-2", "node-3"])));
        assert!(!state.view_complete(&members(&["node-1", "node-3"])), "node-2 was seen: it is missing");
        // A fresh speaker that sees nobody still knows the node an L2Announcement names.
        let mut fresh = Core::new("node-3", Timing::default(), Duration::from_secs(2), Instant::now());
        let spec = ferrolb_crds::L2AnnouncementSpec {
            service: ferrolb_crds::l2announcement::ServiceReference { namespace: "default".into(), name: "web".into() },
            ips: vec!["192.0.2.200".into()],
            node: "node-2".into(),
            interfaces: vec!["eth0".into()],
        };
        fresh.learn_speakers(
            &members(&["node-3"]),
            &BTreeMap::from([(
                "default.web".to_string(),
                crate::cluster::Announced::read("default.web", &spec, &mut Default::default()),
            )]),
            &all,
        );
        assert!(!fresh.view_complete(&members(&["node-3"])));
        // A deleted Node is forgotten.
        fresh.learn_speakers(&members(&["node-3"]), &BTreeMap::new(), &world(&["node-1", "node-3"]));
        assert!(fresh.view_complete(&members(&["node-3"])));
    }
}
