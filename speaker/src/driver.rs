//! The speaker's one loop, whatever the mode: the watches of the cluster and the coalescing of their changes,
//! the interface rescans, the periodic resync, the report writer ([`Reporter`]: L2Announcements and Events on
//! the Services), and the stop (with a drain when the mode needs one). A mode is a [`Backend`]: it waits on
//! its own sources (gossip, sockets, timers, a keepalived process), handles what they say, and takes a step
//! (decide, apply, report) whenever the driver or one of its own events asks for one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferrolb_crds::SpeakerStatusSpec;
use ferrolb_crds::l2announcement::ServiceReference;
use ferrolb_crds::reason;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use tokio::time::Instant;

use crate::cluster::{ClassFilter, Cluster};
use crate::inventory::Inventory;
use crate::links;
use crate::metrics::Metrics;
use crate::plan::{self, Decision};
use crate::report::{self, Notice, Report};

/// API changes come in bursts (a Deployment rollout touches many EndpointSlices): plan once per burst.
pub const API_SETTLE: Duration = Duration::from_millis(30);
/// While API changes keep coming (thousands of Services created), planning for them takes at most one part
/// in this many of a core: a plan reads every Service, so at 30 a second its cost grew with their number
/// until it was most of the speaker's CPU. At one part in ten, three speakers still spent more CPU than
/// MetalLB's while 1 000 Services were created (7.7 s against 5.8 s, `cargo xtask bench compare`). Gossip,
/// links and frames never wait for this; a Service created in a quiet moment waits only [`API_SETTLE`].
pub const API_PLAN_SHARE: u32 = 20;
/// However long the last plan took, an API change waits no longer than this for its own (a new Service in
/// a storm of them answers within it, and well within a second).
pub const API_SPACING_MAX: Duration = Duration::from_millis(400);

/// When to plan for API changes that began at `first_change`, given when the last plan ended and how long
/// it took: after the burst settled, and after a rest that keeps planning within [`API_PLAN_SHARE`].
pub fn api_step_due(first_change: Instant, last_step: Option<(Instant, Duration)>) -> Instant {
    let settled = first_change + API_SETTLE;
    match last_step {
        Some((ended, took)) => settled.max(ended + (took * (API_PLAN_SHARE - 1)).min(API_SPACING_MAX)),
        None => settled,
    }
}
/// The plan and reports are redone this often even when nothing changed (a safety net for lost writes).
pub const RESYNC_PERIOD: Duration = Duration::from_secs(5);

/// What every mode needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub node_name: String,
    /// Where L2Announcements are written (the install namespace).
    pub namespace: String,
    pub classes: ClassFilter,
    pub pool_selector: Option<String>,
    /// The only interfaces the speaker may use (empty: any usable one).
    pub allowed_interfaces: Vec<String>,
    /// Watch BGP mode's objects too.
    pub bgp: bool,
}

/// Starts every watch, waits until each has listed, and finds this node's Node.
pub async fn watch_cluster(
    client: &kube::Client,
    options: &Options,
) -> anyhow::Result<(Cluster, std::sync::Arc<k8s_openapi::api::core::v1::Node>)> {
    let cluster = Cluster::start(
        client,
        &options.namespace,
        options.classes.clone(),
        options.pool_selector.as_deref(),
        options.bgp,
    );
    tracing::info!("listing Nodes, Services, EndpointSlices, L2Advertisements, IPAddressPools, L2Announcements");
    cluster.ready().await.context("a watch stopped before listing")?;
    let me = &options.node_name;
    let node = cluster
        .node(me)
        .with_context(|| format!("there is no Node named {me:?} (set NODE_NAME to this node's name)"))?;
    Ok((cluster, node))
}

/// What a backend sees of the driver's state when it handles an event or takes a step.
pub struct Shared<'a> {
    pub me: &'a str,
    pub cluster: &'a Cluster,
    /// This node's interfaces, as of the last rescan (restricted to the allowed ones).
    pub inventory: &'a Inventory,
    pub reports: &'a report::Reports,
    pub reporter: &'a mut Reporter,
}

/// After an event: take a step now, or wait for the next input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Step,
    /// A step is owed but nothing waits on it: it is taken like an API change's (after the settle, within
    /// the planning share), or at once during a drain (which ends only after a step).
    Soon,
    Wait,
}

/// An announcement mode.
#[allow(async_fn_in_trait)] // the driver awaits it on the speaker's own runtime; no Send bound is needed
pub trait Backend {
    /// Something from one of the backend's own sources.
    type Event;

    /// Waits for the backend's next event. It must only wait (the driver drops it when another input comes
    /// first): the work goes in [`Backend::handle`].
    async fn next_event(&mut self) -> anyhow::Result<Self::Event>;
    /// Acts on an event; whether a step is needed.
    async fn handle(&mut self, event: Self::Event, shared: &mut Shared<'_>) -> anyhow::Result<Next>;
    /// The cluster's objects changed (a burst has settled); a step follows.
    fn api_changed(&mut self, _cluster: &Cluster) {}
    /// The interfaces were read again (`before` → `shared.inventory`); a step follows.
    fn interfaces_changed(&mut self, _before: &Inventory, _shared: &mut Shared<'_>) {}
    /// Decide, bring this node to the decision, report.
    async fn step(&mut self, shared: &mut Shared<'_>) -> anyhow::Result<()>;
    /// SIGTERM came: how long the backend may still need to hand its VIPs over (`None`: stop now).
    fn begin_drain(&mut self) -> Option<Duration>;
    /// During a drain, after a step: everything is handed over.
    fn drained(&self) -> bool;
    /// Releases what this node holds.
    async fn stop(self, shared: &mut Shared<'_>);
    /// The mode's name, as the chart's `speaker.mode` says it.
    fn mode(&self) -> &'static str;
    /// The speakers this one hears as alive, itself included (empty when the mode has no membership of its own).
    fn alive(&self) -> Vec<String> {
        Vec::new()
    }
    /// This node's BGP sessions (empty when the mode has none).
    fn bgp_peers(&self) -> Vec<ferrolb_crds::BgpPeerStatus> {
        Vec::new()
    }
}

/// Everything the driver starts before a backend can: the listed watches, this node's Node, its interfaces
/// and their change signal, and the report writer.
pub struct Setup {
    pub options: Options,
    pub cluster: Cluster,
    pub node: std::sync::Arc<k8s_openapi::api::core::v1::Node>,
    pub inventory: Inventory,
    /// The speaker's series, shared by the driver's reports and the backend.
    pub metrics: Metrics,
    link_changes: tokio::sync::mpsc::UnboundedReceiver<()>,
    reports: report::Reports,
    writer: tokio::task::JoinHandle<()>,
}

impl Setup {
    pub async fn start(
        client: &kube::Client,
        options: Options,
        events: report::EventSource,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let (cluster, node) = watch_cluster(client, &options).await?;
        let inventory = links::scan()
            .await
            .context("reading the node's interfaces (netlink)")?
            .restricted_to(&options.allowed_interfaces);
        let link_changes = links::watch_changes().context("watching the node's interfaces (netlink)")?;
        let (reports, reports_rx) = report::channel();
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: options.node_name.clone(),
            uid: node.metadata.uid.clone().unwrap_or_default(),
            ..Default::default()
        };
        let writer = tokio::spawn(report::run(client.clone(), options.namespace.clone(), owner, events, reports_rx));
        Ok(Self { options, cluster, node, inventory, metrics, link_changes, reports, writer })
    }
}

/// Runs `backend` until `stop` resolves (and its drain, if it asks for one, ends).
pub async fn run<B: Backend>(
    setup: Setup,
    mut backend: B,
    health: ferrolb_telemetry::Health,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let Setup { options, cluster, node: _, mut inventory, metrics: setup_metrics, mut link_changes, reports, writer } =
        setup;
    let me = options.node_name.clone();
    let mut reporter = Reporter::new(me.clone(), setup_metrics);
    let mut api_dirty: Option<Instant> = Some(Instant::now());
    // When the last plan ended, and how long it took.
    let mut last_step: Option<(Instant, Duration)> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut resync = tokio::time::interval(RESYNC_PERIOD);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.set_ready(true);
    tokio::pin!(stop);
    loop {
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            _ = &mut stop, if drain_deadline.is_none() => {
                match backend.begin_drain() {
                    Some(timeout) => {
                        drain_deadline = Some(Instant::now() + timeout);
                        continue;
                    }
                    None => break,
                }
            }
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or(far)), if drain_deadline.is_some() => {
                tracing::warn!("stopping: the hand-over did not finish in time");
                break;
            }
            _ = cluster.changed() => {
                api_dirty.get_or_insert_with(|| api_step_due(Instant::now(), last_step));
                continue;
            }
            _ = tokio::time::sleep_until(api_dirty.unwrap_or(far)), if api_dirty.is_some() => {
                api_dirty = None;
                backend.api_changed(&cluster);
            }
            _ = resync.tick() => {}
            Some(()) = link_changes.recv() => {
                // A link change comes with address and route changes: read once they have settled.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while link_changes.try_recv().is_ok() {}
                match links::scan().await {
                    Ok(scanned) => {
                        let before = std::mem::replace(&mut inventory, scanned.restricted_to(&options.allowed_interfaces));
                        let mut shared = Shared { me: &me, cluster: &cluster, inventory: &inventory, reports: &reports, reporter: &mut reporter };
                        backend.interfaces_changed(&before, &mut shared);
                    }
                    Err(e) => tracing::warn!(error = %e, "rescanning interfaces failed"),
                }
            }
            event = backend.next_event() => {
                let event = event?;
                let mut shared = Shared { me: &me, cluster: &cluster, inventory: &inventory, reports: &reports, reporter: &mut reporter };
                match backend.handle(event, &mut shared).await? {
                    Next::Wait => continue,
                    Next::Soon if drain_deadline.is_none() => {
                        api_dirty.get_or_insert_with(|| api_step_due(Instant::now(), last_step));
                        continue;
                    }
                    Next::Soon | Next::Step => {}
                }
            }
        }
        let mut shared =
            Shared { me: &me, cluster: &cluster, inventory: &inventory, reports: &reports, reporter: &mut reporter };
        let started = Instant::now();
        backend.step(&mut shared).await?;
        last_step = Some((Instant::now(), started.elapsed()));
        let _ = reports.send(Report::Speaker(SpeakerStatusSpec {
            node: me.clone(),
            mode: backend.mode().into(),
            alive: backend.alive(),
            interfaces: inventory.usable(),
            version: env!("CARGO_PKG_VERSION").into(),
            bgp_peers: backend.bgp_peers(),
        }));
        if drain_deadline.is_some() && backend.drained() {
            break;
        }
    }
    let mut shared =
        Shared { me: &me, cluster: &cluster, inventory: &inventory, reports: &reports, reporter: &mut reporter };
    backend.stop(&mut shared).await;
    drop(reports);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    Ok(())
}

/// Reports a mode's decisions: the L2Announcements this node writes (or, as the janitor, deletes), and one
/// Event per change (`NodeAssigned`, `NotAnnounced`, `NodeAddress`), never repeated while nothing changes.
pub struct Reporter {
    /// This node, shared by its series.
    me: crate::plan::NodeName,
    metrics: Metrics,
    decisions: Arc<Vec<Decision>>,
    /// Services this node announced after the last plan (for `NodeAssigned`).
    announced_services: BTreeSet<Arc<ServiceReference>>,
    /// Services this node owns but cannot announce (some VIP has no interface), already reported.
    unplaced_services: BTreeSet<Arc<ServiceReference>>,
    /// Service VIPs refused as a node's address, already reported.
    node_address_vips: BTreeSet<(ServiceReference, IpAddr)>,
}

impl Reporter {
    pub fn new(me: String, metrics: Metrics) -> Self {
        Self {
            me: me.into(),
            metrics,
            decisions: Arc::default(),
            announced_services: BTreeSet::new(),
            unplaced_services: BTreeSet::new(),
            node_address_vips: BTreeSet::new(),
        }
    }

    /// The decisions last reported.
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    /// `held`: what this node answers for after the step; `announcements`: the L2Announcements the decisions
    /// were made from ([`Cluster::announcements`]).
    pub fn report(
        &mut self,
        cluster: &Cluster,
        reports: &report::Reports,
        decisions: Arc<Vec<Decision>>,
        held: Arc<crate::plan::Placement>,
        janitor: bool,
        announcements: &BTreeMap<String, crate::cluster::Announced>,
    ) {
        let ops = report::announcement_ops(&decisions, &self.me, &held, janitor, announcements);
        if !ops.is_empty() {
            let _ = reports.send(Report::Ops(ops));
        }
        let mut announced = BTreeSet::new();
        for decision in decisions.iter().filter(|d| d.owner.as_deref() == Some(&*self.me)) {
            if crate::plan::interfaces_of(&decision.vips, &held).next().is_none() {
                continue;
            }
            // Moved from the last step's set: a step lists every Service this node announces again.
            if let Some(service) = self.announced_services.take(&decision.service) {
                announced.insert(service);
                continue;
            }
            announced.insert(decision.service.clone());
            let interfaces: BTreeSet<&String> = crate::plan::interfaces_of(&decision.vips, &held).collect();
            if let Some(regarding) = cluster.service_reference(&decision.service) {
                let vips: Vec<String> = decision.vips.iter().map(IpAddr::to_string).collect();
                let interfaces: Vec<&str> = interfaces.iter().map(|s| s.as_str()).collect();
                let _ = reports.send(Report::Notice(Notice {
                    regarding,
                    action: report::ANNOUNCE,
                    warning: false,
                    reason: reason::NODE_ASSIGNED,
                    note: format!("{} announced from node {} on {}", vips.join(", "), self.me, interfaces.join(", ")),
                }));
            }
        }
        self.announced_services = announced;
        self.metrics.plan.set(decisions.clone(), held, self.me.clone(), janitor);
        self.decisions = decisions;
    }

    pub fn report_unplaced(
        &mut self,
        cluster: &Cluster,
        reports: &report::Reports,
        inventory: &Inventory,
        unplaced: Vec<(Arc<ServiceReference>, Vec<IpAddr>)>,
    ) {
        let now: BTreeSet<Arc<ServiceReference>> = unplaced.iter().map(|(s, _)| s.clone()).collect();
        for (service, vips) in unplaced {
            if self.unplaced_services.contains(&service) {
                continue;
            }
            // What each interface lacked, for the first VIP (the others are of the same Service and pool).
            let considered = vips.first().map(|vip| inventory.refusals(*vip, &[])).unwrap_or_default();
            let vips: Vec<String> = vips.iter().map(IpAddr::to_string).collect();
            let note = format!(
                "node {} owns {} but none of its usable interfaces has an address in that subnet and it has no default route of that family: nothing answers for it; name the interface in the L2Advertisement (spec.interfaces). Interfaces considered: {}",
                self.me,
                vips.join(", "),
                if considered.is_empty() { "none".to_string() } else { considered.join("; ") }
            );
            tracing::warn!(service = %format!("{}/{}", service.namespace, service.name), "{note}");
            if let Some(regarding) = cluster.service_reference(&service) {
                let _ = reports.send(Report::Notice(Notice {
                    regarding,
                    action: report::ANNOUNCE,
                    warning: true,
                    reason: reason::NOT_ANNOUNCED,
                    note,
                }));
            }
        }
        self.unplaced_services = now;
    }

    /// Tells the user once about every Service VIP that is a node's address (never announced). An address a
    /// Node lists is reported by the janitor alone (every speaker sees it); one only on this node's
    /// interfaces by this node.
    pub fn report_node_addresses(
        &mut self,
        cluster: &Cluster,
        reports: &report::Reports,
        refused: Vec<plan::NodeAddressVip>,
        janitor: bool,
    ) {
        let now: BTreeSet<(ServiceReference, IpAddr)> = refused.iter().map(|r| (r.service.clone(), r.vip)).collect();
        for refusal in refused {
            let key = (refusal.service.clone(), refusal.vip);
            if self.node_address_vips.contains(&key) {
                continue;
            }
            let ours = if refusal.listed { janitor } else { *refusal.node == *self.me };
            if !ours {
                continue;
            }
            let note = format!(
                "{} is an address of node {}: no speaker announces it (a gratuitous ARP would take the node's own traffic); give the Service an address that no node has",
                refusal.vip, refusal.node
            );
            let service = format!("{}/{}", refusal.service.namespace, refusal.service.name);
            tracing::warn!(%service, "{note}");
            if let Some(regarding) = cluster.service_reference(&refusal.service) {
                let _ = reports.send(Report::Notice(Notice {
                    regarding,
                    action: report::ANNOUNCE,
                    warning: true,
                    reason: reason::NODE_ADDRESS,
                    note,
                }));
            }
            self.node_address_vips.insert(key);
        }
        self.node_address_vips.retain(|k| now.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_change_waits_for_its_burst_to_settle_and_for_planning_to_stay_within_its_share() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(api_step_due(now, None), now + API_SETTLE, "the first plan");
        assert_eq!(api_step_due(now, Some((now, ms(1)))), now + API_SETTLE, "a cheap plan: the settle decides");
        assert_eq!(api_step_due(now, Some((now, ms(10)))), now + ms(190), "a 10 ms plan is followed by 190 ms of rest");
        let long_ago = now.checked_sub(ms(800)).unwrap_or(now);
        assert!(api_step_due(now, Some((long_ago, ms(10)))) <= now + API_SETTLE, "rested long enough already");
        assert_eq!(api_step_due(now, Some((now, ms(2000)))), now + API_SPACING_MAX, "never longer than the cap");
    }
}
