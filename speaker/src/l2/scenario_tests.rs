//! Recorded scenarios for native mode's decisions, run on pure [`Core`]s, one per node, with no socket and
//! no clock (the way holo-vrrp tests VRRP): a file of timed inputs in, the expected outputs out. A 10 ms
//! tick steps every running node; the gossip, the LAN and the API are modelled just enough:
//! - a node is a live member for another when both run, neither is frozen and their links are up, and stays
//!   one for [`DEAD_AFTER`] after that stops being true (SWIM's suspicion); a draining node is no member but
//!   is listed as draining;
//! - a probe is answered by every other node that answers the VIP on the LAN; a gratuitous ARP is heard by
//!   every other node that answers or watches the VIP;
//! - the API names, per Service, the last node that reported holding it; while the API is down nothing
//!   changes there.
//!
//! Directives (times in ms): `nodes A B ..`, `vip IP`, `at T start|stop|drain|cut|restore|freeze|resume N`,
//! `at T api down|up`, `at T expect owner N` (exactly N answers), `at T expect nobody`,
//! `from T1 to T2 expect answered` (someone answers at every tick), `from T1 to T2 expect single` (never two),
//! `from T1 to T2 expect nobody`.
//!
//! With node-1..3 the rendezvous order for 192.0.2.200 is node-2, node-3, node-1 (checked below).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_crds::L2AdvertisementSpec;
use ferrolb_crds::l2announcement::{L2AnnouncementSpec, ServiceReference};

use super::announcer::{Action, Timing};
use super::core::{Core, View};
use crate::election::Members;
use crate::inventory::{Inventory, Link};
use crate::plan::{NodeInfo, PoolInfo, ServiceInfo, World};

const TICK: Duration = Duration::from_millis(10);
/// How long an unreachable member stays live for the others (probe period + suspicion).
const DEAD_AFTER: Duration = Duration::from_millis(550);
const JOIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq)]
enum Directive {
    Start(String),
    Stop(String),
    Drain(String),
    Cut(String),
    Restore(String),
    Freeze(String),
    Resume(String),
    Api(bool),
    ExpectOwner(Option<String>),
}

#[derive(Debug, Clone)]
enum Window {
    Answered,
    Single,
    Nobody,
}

struct Scenario {
    nodes: Vec<String>,
    vip: IpAddr,
    at: Vec<(u64, Directive)>,
    windows: Vec<(u64, u64, Window)>,
    end: u64,
}

fn parse(text: &str) -> Scenario {
    let mut scenario = Scenario {
        nodes: Vec::new(),
        vip: "192.0.2.200".parse().unwrap(),
        at: Vec::new(),
        windows: Vec::new(),
        end: 0,
    };
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        macro_rules! bad {
            () => {
                panic!("line {}: cannot read {line:?}", number + 1)
            };
        }
        match words.as_slice() {
            ["nodes", names @ ..] => scenario.nodes = names.iter().map(|n| n.to_string()).collect(),
            ["vip", ip] => scenario.vip = ip.parse().unwrap_or_else(|_| bad!()),
            ["at", t, rest @ ..] => {
                let t: u64 = t.parse().unwrap_or_else(|_| bad!());
                let directive = match rest {
                    ["start", n] => Directive::Start(n.to_string()),
                    ["stop", n] => Directive::Stop(n.to_string()),
                    ["drain", n] => Directive::Drain(n.to_string()),
                    ["cut", n] => Directive::Cut(n.to_string()),
                    ["restore", n] => Directive::Restore(n.to_string()),
                    ["freeze", n] => Directive::Freeze(n.to_string()),
                    ["resume", n] => Directive::Resume(n.to_string()),
                    ["api", "down"] => Directive::Api(false),
                    ["api", "up"] => Directive::Api(true),
                    ["expect", "owner", n] => Directive::ExpectOwner(Some(n.to_string())),
                    ["expect", "nobody"] => Directive::ExpectOwner(None),
                    _ => bad!(),
                };
                scenario.end = scenario.end.max(t);
                scenario.at.push((t, directive));
            }
            ["from", a, "to", b, "expect", what] => {
                let (a, b): (u64, u64) = (a.parse().unwrap_or_else(|_| bad!()), b.parse().unwrap_or_else(|_| bad!()));
                let window = match *what {
                    "answered" => Window::Answered,
                    "single" => Window::Single,
                    "nobody" => Window::Nobody,
                    _ => bad!(),
                };
                scenario.end = scenario.end.max(b);
                scenario.windows.push((a, b, window));
            }
            _ => bad!(),
        }
    }
    scenario
}

struct Node {
    name: String,
    core: Option<Core>,
    running: bool,
    frozen: bool,
    link_up: bool,
    draining: bool,
    held: BTreeSet<IpAddr>,
    watched: BTreeSet<IpAddr>,
    /// When each other node stopped being reachable from this one.
    unreachable_since: BTreeMap<String, Instant>,
}

struct Sim {
    t0: Instant,
    vip: IpAddr,
    nodes: Vec<Node>,
    api_up: bool,
    world: World,
    announcements: BTreeMap<String, crate::cluster::Announced>,
    /// Gratuitous ARPs sent outside a step, heard in the next tick.
    pending_announcements: Vec<(String, IpAddr)>,
}

impl Sim {
    fn new(names: &[String], vip: IpAddr) -> Self {
        let t0 = Instant::now();
        let world = World {
            nodes: names
                .iter()
                .map(|n| NodeInfo {
                    name: n.as_str().into(),
                    labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), n.clone())]),
                    network_unavailable: false,
                    unschedulable: false,
                })
                .collect(),
            services: vec![std::sync::Arc::new(ServiceInfo {
                service: std::sync::Arc::new(ServiceReference { namespace: "default".into(), name: "web".into() }),
                labels: BTreeMap::new(),
                vips: vec![vip].into(),
                origin_pool: None,
                traffic_policy_local: false,
                ready_endpoint_nodes: names.iter().cloned().collect(),
            })],
            advertisements: vec![L2AdvertisementSpec { ip_address_pools: vec!["demo".into()], ..Default::default() }],
            pools: vec![PoolInfo {
                name: "demo".into(),
                labels: BTreeMap::new(),
                addresses: vec![format!("{vip}/32")],
            }],
            node_addresses: BTreeMap::new(),
        };
        let nodes = names
            .iter()
            .map(|n| Node {
                name: n.clone(),
                core: None,
                running: false,
                frozen: false,
                link_up: true,
                draining: false,
                held: BTreeSet::new(),
                watched: BTreeSet::new(),
                unreachable_since: BTreeMap::new(),
            })
            .collect();
        Self { t0, vip, nodes, api_up: true, world, announcements: BTreeMap::new(), pending_announcements: Vec::new() }
    }

    fn node(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name} in the scenario"))
    }

    fn apply(&mut self, directive: &Directive, now: Instant) {
        match directive {
            Directive::Start(n) => {
                let node = self.node(n);
                node.core = Some(Core::new(n.clone(), Timing::default(), JOIN_GRACE, now));
                node.running = true;
                node.draining = false;
            }
            Directive::Stop(n) => {
                let node = self.node(n);
                node.running = false;
                node.core = None;
                node.held.clear();
                node.watched.clear();
            }
            Directive::Drain(n) => self.node(n).draining = true,
            Directive::Cut(n) => self.node(n).link_up = false,
            Directive::Restore(n) => {
                let node = self.node(n);
                node.link_up = true;
                if let Some(core) = node.core.as_mut() {
                    core.link_returned(now);
                }
            }
            Directive::Freeze(n) => self.node(n).frozen = true,
            Directive::Resume(n) => {
                // Back from a freeze long enough to be declared down: the membership rejoins, and the
                // node announces what it believes it holds (the others may have taken it meanwhile).
                let node = self.node(n);
                node.frozen = false;
                if let Some(core) = node.core.as_mut() {
                    let frames = core.rejoined(now);
                    self.pending_announcements.extend(frames.into_iter().filter_map(|a| match a {
                        Action::Announce { vip, .. } => Some((n.clone(), vip)),
                        _ => None,
                    }));
                }
            }
            Directive::Api(up) => self.api_up = *up,
            Directive::ExpectOwner(_) => {}
        }
    }

    /// Who answers the VIP on the LAN now.
    fn answering(&self) -> BTreeSet<String> {
        self.nodes
            .iter()
            .filter(|n| n.running && !n.frozen && n.link_up && n.held.contains(&self.vip))
            .map(|n| n.name.clone())
            .collect()
    }

    fn reachable(&self, from: &Node, to: &Node) -> bool {
        to.running && !to.frozen && from.link_up && to.link_up
    }

    fn tick(&mut self, now: Instant) {
        // Membership views, with SWIM's delay before an unreachable member is declared dead.
        let mut views: BTreeMap<String, (Members, BTreeSet<String>)> = BTreeMap::new();
        for i in 0..self.nodes.len() {
            let mut live = Members::new();
            let mut draining = BTreeSet::new();
            let me = &self.nodes[i];
            let mut since = me.unreachable_since.clone();
            for other in &self.nodes {
                if other.name == me.name {
                    if me.running && !me.draining {
                        live.insert(me.name.clone(), BTreeSet::from(["eth0".to_string()]));
                    }
                    continue;
                }
                let alive = if self.reachable(me, other) {
                    since.remove(&other.name);
                    true
                } else if other.running {
                    let at = *since.entry(other.name.clone()).or_insert(now);
                    now.saturating_duration_since(at) < DEAD_AFTER
                } else {
                    false
                };
                if alive && other.draining {
                    draining.insert(other.name.clone());
                } else if alive {
                    live.insert(other.name.clone(), BTreeSet::from(["eth0".to_string()]));
                }
            }
            self.nodes[i].unreachable_since = since;
            views.insert(self.nodes[i].name.clone(), (live, draining));
        }
        let peers = self.nodes.len();
        let mut heard: Vec<(String, IpAddr)> = Vec::new();
        let mut announced: Vec<(String, IpAddr)> = std::mem::take(&mut self.pending_announcements);
        let mut probes: Vec<(String, IpAddr)> = Vec::new();
        let mut reported: Vec<String> = Vec::new();
        for i in 0..self.nodes.len() {
            let (live, draining) = views.get(&self.nodes[i].name).cloned().unwrap_or_default();
            let inventory = inventory(self.nodes[i].link_up);
            let node = &mut self.nodes[i];
            if !node.running || node.frozen {
                continue;
            }
            let Some(core) = node.core.as_mut() else { continue };
            let mut actions = Vec::new();
            if core.claims_due().is_some_and(|at| at <= now) {
                let complete = core.view_complete(&live);
                let tick = core.tick_claims(complete, now);
                actions.extend(tick.actions);
                probes.extend(tick.probes.into_iter().map(|(vip, _)| (node.name.clone(), vip)));
            }
            if core.announcements_due().is_some_and(|at| at <= now) {
                actions.extend(core.due_announcements(now));
            }
            let view = View {
                world: &self.world,
                live: &live,
                draining: &draining,
                inventory: &inventory,
                announcements: &self.announcements,
                peers,
                // The scenarios' world never changes: every plan after the first is reused until the
                // members change, as in a speaker whose watches are quiet.
                world_version: Some((0, 0)),
            };
            let outcome = core.step(&view, now);
            node.held = outcome.held.keys().copied().collect();
            node.watched = outcome.watched.keys().copied().collect();
            actions.extend(outcome.actions);
            for action in actions {
                if let Action::Announce { vip, .. } = action {
                    announced.push((node.name.clone(), vip));
                }
            }
            probes.extend(outcome.probes.into_iter().map(|(vip, _)| (node.name.clone(), vip)));
            if outcome.decisions.iter().any(|d| d.owner.as_deref() == Some(&node.name)) && node.held.contains(&self.vip)
            {
                reported.push(node.name.clone());
            }
            // A drained node stops once it answers nothing.
            if node.draining && node.held.is_empty() {
                node.running = false;
                node.core = None;
            }
        }
        // The LAN: probes are answered by whoever answers the VIP; announcements heard by whoever cares.
        for (prober, vip) in probes {
            let from = self.nodes.iter().find(|n| n.name == prober).unwrap();
            for other in &self.nodes {
                if other.name != prober && self.reachable(from, other) && other.held.contains(&vip) {
                    heard.push((prober.clone(), vip));
                }
            }
        }
        for (sender, vip) in announced {
            let from = self.nodes.iter().find(|n| n.name == sender).unwrap();
            for other in &self.nodes {
                if other.name != sender
                    && self.reachable(from, other)
                    && (other.held.contains(&vip) || other.watched.contains(&vip))
                {
                    heard.push((other.name.clone(), vip));
                }
            }
        }
        for (listener, vip) in heard {
            if let Some(core) = self.node(&listener).core.as_mut() {
                core.heard(vip, now);
            }
        }
        if self.api_up
            && let Some(writer) = reported.last()
        {
            let spec = L2AnnouncementSpec {
                service: ServiceReference { namespace: "default".into(), name: "web".into() },
                ips: vec![self.vip.to_string()],
                node: writer.clone(),
                interfaces: vec!["eth0".into()],
            };
            let read = crate::cluster::Announced::read("default.web", &spec, &mut Default::default());
            self.announcements.insert("default.web".into(), read);
        }
    }
}

fn inventory(link_up: bool) -> Inventory {
    Inventory {
        links: vec![Link { up: link_up, ..crate::test_world::link("eth0", &["192.0.2.11/24"]) }],
        default_route: BTreeMap::new(),
    }
}

/// Runs a scenario; every failed expectation is collected and reported at once.
fn run(text: &str) {
    let scenario = parse(text);
    let mut sim = Sim::new(&scenario.nodes, scenario.vip);
    let mut failures = Vec::new();
    let mut t = 0;
    while t <= scenario.end {
        let now = sim.t0 + Duration::from_millis(t);
        // `at T expect` describes the LAN as T begins, before T's own events.
        let before = sim.answering();
        for (_, directive) in scenario.at.iter().filter(|(at, _)| *at == t) {
            if let Directive::ExpectOwner(expected) = directive {
                let expected: BTreeSet<String> = expected.iter().cloned().collect();
                if before != expected {
                    failures.push(format!("at {t} ms: expected {expected:?} answering, got {before:?}"));
                }
            }
        }
        for (_, directive) in scenario.at.iter().filter(|(at, _)| *at == t) {
            sim.apply(directive, now);
        }
        sim.tick(now);
        let answering = sim.answering();
        for (from, to, window) in &scenario.windows {
            if (*from..=*to).contains(&t) {
                match window {
                    Window::Answered if answering.is_empty() => failures.push(format!("at {t} ms: nobody answers")),
                    Window::Single if answering.len() > 1 => failures.push(format!("at {t} ms: {answering:?} answer")),
                    Window::Nobody if !answering.is_empty() => {
                        failures.push(format!("at {t} ms: {answering:?} answer"))
                    }
                    _ => {}
                }
            }
        }
        t += TICK.as_millis() as u64;
    }
    // A gap or a duplicate usually spans many ticks: the first few say enough.
    failures.dedup();
    assert!(
        failures.is_empty(),
        "{} expectation(s) failed:\n{}",
        failures.len(),
        failures.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn a_plan_is_made_again_only_when_its_world_version_or_the_members_change() {
    let names: Vec<String> = ["node-1", "node-2", "node-3"].map(String::from).to_vec();
    let sim = Sim::new(&names, "192.0.2.200".parse().unwrap());
    let now = Instant::now();
    let mut core = Core::new("node-1", Timing::default(), JOIN_GRACE, now);
    let live: Members = names.iter().map(|n| (n.clone(), BTreeSet::from(["eth0".to_string()]))).collect();
    let (draining, inventory, announcements) = (BTreeSet::new(), inventory(true), BTreeMap::new());
    let mut step = |world: &World, live: &Members, world_version| {
        let view = View {
            world,
            live,
            draining: &draining,
            inventory: &inventory,
            announcements: &announcements,
            peers: 3,
            world_version,
        };
        core.step(&view, now).decisions
    };
    let first = step(&sim.world, &live, Some((1, 0)));
    assert_eq!(first.len(), 1);
    // The version is the key: a world that changed under the same version is not looked at.
    let mut emptied = sim.world.clone();
    emptied.services.clear();
    assert!(std::sync::Arc::ptr_eq(&first, &step(&emptied, &live, Some((1, 0)))));
    assert!(step(&emptied, &live, Some((2, 0))).is_empty(), "a new version is planned");
    assert_eq!(step(&sim.world, &live, Some((2, 1))).len(), 1, "own addresses changed: planned");
    let mut fewer = live.clone();
    fewer.remove("node-2");
    let replanned = step(&sim.world, &fewer, Some((2, 1)));
    assert_ne!(replanned.first().and_then(|d| d.owner.clone()), Some("node-2".into()), "members changed: planned");
    let unversioned = step(&sim.world, &fewer, None);
    assert!(!std::sync::Arc::ptr_eq(&replanned, &unversioned), "no version: planned every time");
}

#[test]
fn scenario_rendezvous_ranking_the_scenarios_assume() {
    let vip: IpAddr = "192.0.2.200".parse().unwrap();
    let mut ranked: Vec<&str> = vec!["node-1", "node-2", "node-3"];
    ranked.sort_by_key(|n| std::cmp::Reverse(crate::election::score(n, vip)));
    assert_eq!(ranked, ["node-2", "node-3", "node-1"]);
}

#[test]
fn scenario_three_nodes_start_one_after_another() {
    run(include_str!("scenarios/three-nodes-start.scenario"));
}

#[test]
fn scenario_the_owners_link_is_cut_and_restored() {
    run(include_str!("scenarios/owner-link-cut.scenario"));
}

#[test]
fn scenario_a_graceful_leave_hands_over_without_a_gap() {
    run(include_str!("scenarios/graceful-leave.scenario"));
}

#[test]
fn scenario_a_60_s_api_outage_changes_nothing_and_failover_still_works() {
    run(include_str!("scenarios/api-outage.scenario"));
}

#[test]
fn scenario_a_frozen_owner_is_replaced_and_takes_its_vip_back_when_resumed() {
    run(include_str!("scenarios/frozen-owner.scenario"));
}
