//! keepalived mode's backend: the same watches and election as native mode, but the result is a
//! keepalived configuration, and what this node holds is what keepalived reports it is master of. Liveness is
//! VRRP's business here: every Node the election's other rules allow is a candidate, so a node dying changes
//! no configuration (its peers' VRRP takes over) and no gossip is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use super::render::{self, Group, InstanceState, NodeAddresses, Settings};
use super::supervise::{Applied, SuperviseError, Supervisor};
use crate::cluster::{Cluster, node_address};
use crate::driver::{self, Next};
use crate::election::Members;
use crate::inventory::Inventory;
use crate::metrics::{Metrics, ReloadFailureLabel};
use crate::plan::{self, Decision, World};
/// keepalived pauses its adverts while it reloads (about a second with hundreds of VIPs on a small node):
/// reloads are spaced at least this far apart, so a burst of Service changes costs one reload, not many.
const MIN_RELOAD_SPACING: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct KeepalivedOptions {
    pub binary: PathBuf,
    /// Config, pid files and the notify FIFO.
    pub dir: PathBuf,
    pub settings: Settings,
}

/// keepalived mode as a [`driver::Backend`].
pub struct KeepalivedBackend {
    me: String,
    metrics: Metrics,
    settings: Settings,
    supervisor: Supervisor,
    states: tokio::sync::mpsc::UnboundedReceiver<(String, InstanceState)>,
    instance_states: BTreeMap<String, InstanceState>,
    groups: Vec<Group>,
    decisions: Vec<Decision>,
    world: World,
    /// A new configuration is due (the API changed): rendered at this instant, spaced by MIN_RELOAD_SPACING.
    render_due: Option<Instant>,
    last_render: Option<Instant>,
    /// The interfaces changed: the configuration is applied again (same groups, maybe other interfaces).
    reapply: bool,
    /// The last error applying the configuration, logged once until it changes or clears.
    apply_error: Option<String>,
}

/// What keepalived mode waits on besides the driver's inputs.
pub enum KeepalivedEvent {
    /// An instance's VRRP state, from keepalived's notify FIFO.
    State(String, InstanceState),
    /// keepalived exited.
    Exited,
    /// The restart back-off is over.
    RestartDue,
    /// The reload spacing is over: render the configuration now.
    RenderDue,
}

impl KeepalivedBackend {
    pub fn start(setup: &driver::Setup, keepalived: KeepalivedOptions) -> anyhow::Result<Self> {
        let metrics = setup.metrics.clone();
        let (supervisor, states) = Supervisor::new(keepalived.binary.clone(), keepalived.dir.clone())?;
        let settings = Settings { notify_fifo: Supervisor::notify_fifo(&keepalived.dir), ..keepalived.settings };
        tracing::info!(binary = %keepalived.binary.display(), dir = %keepalived.dir.display(), "keepalived mode");
        Ok(Self {
            me: setup.options.node_name.clone(),
            metrics,
            settings,
            supervisor,
            states,
            instance_states: BTreeMap::new(),
            groups: Vec::new(),
            decisions: Vec::new(),
            world: World::default(),
            render_due: Some(Instant::now()),
            last_render: None,
            reapply: false,
            apply_error: None,
        })
    }

    /// Renders the configuration of the current groups and applies it (a reload only when it changed).
    async fn apply(&mut self, shared: &mut driver::Shared<'_>) {
        let applied =
            apply(&self.me, &self.world, &self.groups, shared.inventory, &self.settings, &mut self.supervisor, shared)
                .await;
        match applied {
            Ok(()) => {
                if self.apply_error.take().is_some() {
                    tracing::info!("keepalived configuration applied again");
                }
            }
            Err(e) => {
                let reason = e.reason();
                self.metrics.keepalived_reload_failures.get_or_create(&ReloadFailureLabel { reason }).inc();
                let message = e.to_string();
                if self.apply_error.as_deref() != Some(message.as_str()) {
                    tracing::error!(error = %message, "keepalived configuration not applied; retrying at every step");
                }
                self.apply_error = Some(message);
                // Tried again at the next step (the resync at the latest): a passing cause (a full disk, a
                // keepalived being restarted) must not leave the previous configuration in force for good.
                self.reapply = true;
            }
        }
    }
}

impl driver::Backend for KeepalivedBackend {
    type Event = KeepalivedEvent;

    async fn next_event(&mut self) -> anyhow::Result<KeepalivedEvent> {
        let far = Instant::now() + Duration::from_secs(3600);
        let restart_due = self.supervisor.restart_due();
        let render_due = self.render_due.filter(|at| *at > Instant::now());
        tokio::select! {
            Some((instance, state)) = self.states.recv() => Ok(KeepalivedEvent::State(instance, state)),
            _ = self.supervisor.exited(), if restart_due.is_none() => Ok(KeepalivedEvent::Exited),
            _ = tokio::time::sleep_until(restart_due.unwrap_or(far)), if restart_due.is_some() => Ok(KeepalivedEvent::RestartDue),
            _ = tokio::time::sleep_until(render_due.unwrap_or(far)), if render_due.is_some() => Ok(KeepalivedEvent::RenderDue),
        }
    }

    async fn handle(&mut self, event: KeepalivedEvent, _shared: &mut driver::Shared<'_>) -> anyhow::Result<Next> {
        match event {
            KeepalivedEvent::State(instance, state) => {
                tracing::info!(%instance, state = ?state, "VRRP state");
                self.instance_states.insert(instance, state);
            }
            // Its VRRP process is gone with it: this node holds nothing until keepalived says otherwise.
            KeepalivedEvent::Exited => self.instance_states.clear(),
            KeepalivedEvent::RestartDue => {
                if let Err(e) = self.supervisor.restart() {
                    tracing::error!(error = %e, "restarting keepalived failed");
                }
                return Ok(Next::Wait);
            }
            KeepalivedEvent::RenderDue => {}
        }
        Ok(Next::Step)
    }

    fn api_changed(&mut self, _cluster: &Cluster) {
        // keepalived pauses its adverts while it reloads: a burst of changes costs one reload, not many.
        let earliest = self.last_render.map(|last| last + MIN_RELOAD_SPACING).unwrap_or_else(Instant::now);
        self.render_due.get_or_insert(earliest.max(Instant::now()));
    }

    fn interfaces_changed(&mut self, _before: &Inventory, _shared: &mut driver::Shared<'_>) {
        self.reapply = true;
    }

    async fn step(&mut self, shared: &mut driver::Shared<'_>) -> anyhow::Result<()> {
        if self.render_due.is_some_and(|at| at <= Instant::now()) {
            self.render_due = None;
            self.last_render = Some(Instant::now());
            self.world = shared.cluster.world();
            self.decisions = plan::decide(&self.world, &every_node_a_member(&self.world));
            match render::groups(&self.decisions, &self.settings) {
                Ok(fresh) => self.groups = fresh,
                Err(e) => {
                    tracing::error!(error = %e, "cannot group the VIPs into VRRP instances; keeping the previous configuration")
                }
            }
            self.reapply = false;
            self.apply(shared).await;
        } else if std::mem::take(&mut self.reapply) {
            self.apply(shared).await;
        }
        // What this node holds: the VIPs of the instances keepalived is master of.
        let inventory = shared.inventory;
        let mut sets = crate::plan::InterfaceSets::default();
        let held: crate::plan::Placement = self
            .groups
            .iter()
            .filter(|g| self.instance_states.get(&g.key.instance_name()) == Some(&InstanceState::Master))
            .filter_map(|g| interface_for(g, inventory).map(|i| (g, sets.share(BTreeSet::from([i])))))
            .flat_map(|(g, interface)| g.vips.iter().map(move |v| (*v, interface.clone())))
            .collect();
        self.metrics.owned_vips.set(i64::try_from(held.len()).unwrap_or(i64::MAX));
        let me = &self.me;
        let reported: Vec<Decision> = self
            .decisions
            .iter()
            .map(|d| {
                let mut d = d.clone();
                let here = d.vips.iter().any(|v| held.contains_key(v));
                // Not master here: some other candidate holds it (or will); never ours to write or delete.
                d.owner = if here {
                    Some(me.as_str().into())
                } else {
                    d.ranking.iter().find(|n| ***n != **me).cloned().or(d.owner)
                };
                d
            })
            .collect();
        let janitor = self.world.nodes.iter().map(|n| &*n.name).min() == Some(me.as_str());
        let (cluster, reports) = (shared.cluster, shared.reports);
        shared.reporter.report(
            cluster,
            reports,
            std::sync::Arc::new(reported),
            std::sync::Arc::new(held),
            janitor,
            &cluster.announcements(),
        );
        Ok(())
    }

    /// VRRP hands over by itself when keepalived stops (priority 0 adverts).
    fn begin_drain(&mut self) -> Option<Duration> {
        None
    }

    fn drained(&self) -> bool {
        true
    }

    async fn stop(mut self, _shared: &mut driver::Shared<'_>) {
        tracing::info!("stopping: keepalived releases the VIPs and tells its peers");
        self.supervisor.stop().await;
    }

    fn mode(&self) -> &'static str {
        "keepalived"
    }
}

/// Every Node, with every interface any advertisement names (whether a node really has it is keepalived's
/// concern: an instance on a missing interface faults there and its peers hold the VIPs).
fn every_node_a_member(world: &World) -> Members {
    let mut interfaces: BTreeSet<String> =
        world.advertisements.iter().flat_map(|a| a.interfaces.iter().cloned()).collect();
    interfaces.insert("*".into());
    world.nodes.iter().map(|n| (n.name.to_string(), interfaces.clone())).collect()
}

/// This node's interface for a group: the first named one it has, else the one with an address in the VIPs'
/// subnet (or the default route's).
fn interface_for(group: &Group, inventory: &Inventory) -> Option<String> {
    if !group.key.interfaces.is_empty() {
        // The advertisement's names may be patterns: the first usable interface one of them means.
        return inventory.usable().into_iter().find(|i| crate::inventory::any_matches(&group.key.interfaces, i));
    }
    let first = group.vips.iter().next()?;
    inventory.interfaces_for(*first).into_iter().next()
}

async fn apply(
    me: &str,
    world: &World,
    groups: &[Group],
    inventory: &Inventory,
    settings: &Settings,
    supervisor: &mut Supervisor,
    shared: &mut driver::Shared<'_>,
) -> Result<(), SuperviseError> {
    let cluster = shared.cluster;
    let addresses: BTreeMap<String, NodeAddresses> = world
        .nodes
        .iter()
        .filter_map(|n| cluster.node(&n.name))
        .map(|node| {
            let name = kube::ResourceExt::name_any(node.as_ref());
            (name, NodeAddresses { ipv4: node_address(&node, true), ipv6: node_address(&node, false) })
        })
        .collect();
    let (config, skipped) = render::render(me, groups, &addresses, |g| interface_for(g, inventory), settings);
    let mut unplaced = Vec::new();
    for skip in &skipped {
        if let Some(group) = groups.iter().find(|g| g.key.instance_name() == skip.instance) {
            tracing::warn!(instance = %skip.instance, reason = %skip.reason, "VRRP instance left out on this node");
            for service in &group.services {
                unplaced.push((std::sync::Arc::new(service.clone()), group.vips.iter().copied().collect()));
            }
        }
    }
    let reports = shared.reports;
    shared.reporter.report_unplaced(cluster, reports, shared.inventory, unplaced);
    match supervisor.apply(&config).await? {
        Applied::Unchanged => {}
        Applied::Started => tracing::info!(instances = groups.len(), "keepalived configured"),
        Applied::Reloaded => tracing::info!(instances = groups.len(), "keepalived reloaded (SIGHUP)"),
    }
    Ok(())
}
