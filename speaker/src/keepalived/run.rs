//! The speaker's loop in keepalived mode: the same watches and election as native mode, but the result is a
//! keepalived configuration, and what this node holds is what keepalived reports it is master of. Liveness is
//! VRRP's business here: every Node the election's other rules allow is a candidate, so a node dying changes
//! no configuration (its peers' VRRP takes over) and no gossip is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use super::render::{self, Group, InstanceState, NodeAddresses, Settings};
use super::supervise::{Applied, Supervisor};
use crate::cluster::{Cluster, node_address};
use crate::driver::{self, API_SETTLE, Options, Reporter};
use crate::election::Members;
use crate::links::{self, Inventory};
use crate::metrics::Metrics;
use crate::plan::{self, Decision, World};
use crate::report;
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

pub async fn run(
    client: kube::Client,
    options: Options,
    keepalived: KeepalivedOptions,
    metrics: Metrics,
    health: ferrolb_telemetry::Health,
    events: report::EventSource,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let me = options.node_name.clone();
    let (cluster, _node) = driver::watch_cluster(&client, &options).await?;
    let mut inventory = links::scan()
        .await
        .context("reading the node's interfaces (netlink)")?
        .restricted_to(&options.allowed_interfaces);
    let mut link_changes = links::watch_changes().context("watching the node's interfaces (netlink)")?;
    let (mut supervisor, mut states) = Supervisor::new(keepalived.binary.clone(), keepalived.dir.clone())?;
    let settings = Settings { notify_fifo: Supervisor::notify_fifo(&keepalived.dir), ..keepalived.settings };
    let (reports, reports_rx) = report::channel();
    let writer = tokio::spawn(report::run(client.clone(), options.namespace.clone(), events, reports_rx));
    let mut state = Reporter::new(me.clone());
    let mut instance_states: BTreeMap<String, InstanceState> = BTreeMap::new();
    let (mut groups, mut decisions, mut world): (Vec<Group>, Vec<Decision>, World) = Default::default();
    let mut dirty = Some(Instant::now());
    let mut last_render: Option<Instant> = None;
    let mut resync = tokio::time::interval(driver::RESYNC_PERIOD);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.set_ready(true);
    tracing::info!(binary = %keepalived.binary.display(), dir = %keepalived.dir.display(), "keepalived mode");
    tokio::pin!(stop);
    loop {
        let far = Instant::now() + Duration::from_secs(3600);
        let restart_due = supervisor.restart_due();
        tokio::select! {
            _ = &mut stop => break,
            _ = cluster.changed() => {
                dirty.get_or_insert(Instant::now() + API_SETTLE);
                continue;
            }
            _ = tokio::time::sleep_until(dirty.unwrap_or(far)), if dirty.is_some() => {
                if let Some(last) = last_render
                    && last.elapsed() < MIN_RELOAD_SPACING
                {
                    dirty = Some(last + MIN_RELOAD_SPACING);
                    continue;
                }
                dirty = None;
                last_render = Some(Instant::now());
                world = cluster.world();
                decisions = plan::decide(&world, &every_node_a_member(&world));
                match render::groups(&decisions, &settings) {
                    Ok(fresh) => groups = fresh,
                    Err(e) => tracing::error!(error = %e, "cannot group the VIPs into VRRP instances; keeping the previous configuration"),
                }
                apply(&me, &world, &groups, &inventory, &settings, &mut supervisor, &cluster, &mut state, &reports).await;
            }
            Some(()) = link_changes.recv() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                while link_changes.try_recv().is_ok() {}
                match links::scan().await {
                    Ok(scanned) => inventory = scanned.restricted_to(&options.allowed_interfaces),
                    Err(e) => tracing::warn!(error = %e, "rescanning interfaces failed"),
                }
                apply(&me, &world, &groups, &inventory, &settings, &mut supervisor, &cluster, &mut state, &reports).await;
            }
            _ = resync.tick() => {}
            Some((instance, instance_state)) = states.recv() => {
                tracing::info!(%instance, state = ?instance_state, "VRRP state");
                instance_states.insert(instance, instance_state);
            }
            _ = supervisor.exited(), if restart_due.is_none() => {
                // Its VRRP process is gone with it: this node holds nothing until keepalived says otherwise.
                instance_states.clear();
            }
            _ = tokio::time::sleep_until(restart_due.unwrap_or(far)), if restart_due.is_some() => {
                if let Err(e) = supervisor.restart() {
                    tracing::error!(error = %e, "restarting keepalived failed");
                }
                continue;
            }
        }
        // What this node holds: the VIPs of the instances keepalived is master of.
        let held: BTreeMap<IpAddr, BTreeSet<String>> = groups
            .iter()
            .filter(|g| instance_states.get(&g.key.instance_name()) == Some(&InstanceState::Master))
            .filter_map(|g| interface_for(g, &inventory).map(|i| (g, i)))
            .flat_map(|(g, interface)| g.vips.iter().map(move |v| (*v, BTreeSet::from([interface.clone()]))))
            .collect();
        metrics.owned_vips.set(i64::try_from(held.len()).unwrap_or(i64::MAX));
        let reported: Vec<Decision> = decisions
            .iter()
            .map(|d| {
                let mut d = d.clone();
                let here = d.vips.iter().any(|v| held.contains_key(v));
                // Not master here: some other candidate holds it (or will); never ours to write or delete.
                d.owner =
                    if here { Some(me.clone()) } else { d.ranking.iter().find(|n| **n != me).cloned().or(d.owner) };
                d
            })
            .collect();
        let janitor = world.nodes.iter().map(|n| n.name.as_str()).min() == Some(me.as_str());
        state.report(&cluster, &reports, reported, &held, janitor);
    }
    tracing::info!("stopping: keepalived releases the VIPs and tells its peers");
    supervisor.stop().await;
    drop(reports);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    Ok(())
}

/// Every Node, with every interface any advertisement names (whether a node really has it is keepalived's
/// concern: an instance on a missing interface faults there and its peers hold the VIPs).
fn every_node_a_member(world: &World) -> Members {
    let mut interfaces: BTreeSet<String> =
        world.advertisements.iter().flat_map(|a| a.interfaces.iter().cloned()).collect();
    interfaces.insert("*".into());
    world.nodes.iter().map(|n| (n.name.clone(), interfaces.clone())).collect()
}

/// This node's interface for a group: the first named one it has, else the one with an address in the VIPs'
/// subnet (or the default route's).
fn interface_for(group: &Group, inventory: &Inventory) -> Option<String> {
    if !group.key.interfaces.is_empty() {
        let usable = inventory.usable();
        return group.key.interfaces.iter().find(|i| usable.contains(i)).cloned();
    }
    let first = group.vips.iter().next()?;
    inventory.interfaces_for(*first).into_iter().next()
}

#[allow(clippy::too_many_arguments)]
async fn apply(
    me: &str,
    world: &World,
    groups: &[Group],
    inventory: &Inventory,
    settings: &Settings,
    supervisor: &mut Supervisor,
    cluster: &Cluster,
    state: &mut Reporter,
    reports: &report::Reports,
) {
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
                unplaced.push((service.clone(), group.vips.iter().copied().collect()));
            }
        }
    }
    state.report_unplaced(cluster, reports, unplaced);
    match supervisor.apply(&config).await {
        Ok(Applied::Unchanged) => {}
        Ok(Applied::Started) => tracing::info!(instances = groups.len(), "keepalived configured"),
        Ok(Applied::Reloaded) => tracing::info!(instances = groups.len(), "keepalived reloaded (SIGHUP)"),
        Err(e) => tracing::error!(error = %e, "keepalived configuration not applied"),
    }
}
