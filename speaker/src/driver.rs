//! What every announcement mode shares: the options every mode needs, the watches of the cluster, the
//! timing of the API coalescing and the resync, and the [`Reporter`] that turns a mode's decisions and what
//! this node really holds into L2Announcements and Events on the Services.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use ferrolb_crds::l2announcement::ServiceReference;
use ferrolb_crds::reason;

use crate::cluster::{ClassFilter, Cluster};
use crate::plan::{self, Decision};
use crate::report::{self, Notice, Report};

/// API changes come in bursts (a Deployment rollout touches many EndpointSlices): plan once per burst.
pub const API_SETTLE: Duration = Duration::from_millis(30);
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
}

/// Starts every watch, waits until each has listed, and finds this node's Node.
pub async fn watch_cluster(
    client: &kube::Client,
    options: &Options,
) -> anyhow::Result<(Cluster, std::sync::Arc<k8s_openapi::api::core::v1::Node>)> {
    let cluster = Cluster::start(client, &options.namespace, options.classes.clone(), options.pool_selector.as_deref());
    tracing::info!("listing Nodes, Services, EndpointSlices, L2Advertisements, IPAddressPools, L2Announcements");
    cluster.ready().await.context("a watch stopped before listing")?;
    let me = &options.node_name;
    let node = cluster
        .node(me)
        .with_context(|| format!("there is no Node named {me:?} (set NODE_NAME to this node's name)"))?;
    Ok((cluster, node))
}

/// Reports a mode's decisions: the L2Announcements this node writes (or, as the janitor, deletes), and one
/// Event per change (`NodeAssigned`, `NotAnnounced`, `NodeAddress`), never repeated while nothing changes.
pub struct Reporter {
    me: String,
    decisions: Vec<Decision>,
    /// Services this node announced after the last plan (for `NodeAssigned`).
    announced_services: BTreeSet<ServiceReference>,
    /// Services this node owns but cannot announce (some VIP has no interface), already reported.
    unplaced_services: BTreeSet<ServiceReference>,
    /// Service VIPs refused as a node's address, already reported.
    node_address_vips: BTreeSet<(ServiceReference, IpAddr)>,
}

impl Reporter {
    pub fn new(me: String) -> Self {
        Self {
            me,
            decisions: Vec::new(),
            announced_services: BTreeSet::new(),
            unplaced_services: BTreeSet::new(),
            node_address_vips: BTreeSet::new(),
        }
    }

    /// The decisions last reported.
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    pub fn report(
        &mut self,
        cluster: &Cluster,
        reports: &report::Reports,
        decisions: Vec<Decision>,
        held: &BTreeMap<IpAddr, BTreeSet<String>>,
        janitor: bool,
    ) {
        let ops = report::announcement_ops(&decisions, &self.me, held, janitor, &cluster.announcements());
        if !ops.is_empty() {
            let _ = reports.send(Report::Ops(ops));
        }
        let mut announced = BTreeSet::new();
        for decision in decisions.iter().filter(|d| d.owner.as_deref() == Some(self.me.as_str())) {
            let interfaces: BTreeSet<&String> = decision.vips.iter().filter_map(|v| held.get(v)).flatten().collect();
            if interfaces.is_empty() {
                continue;
            }
            announced.insert(decision.service.clone());
            if self.announced_services.contains(&decision.service) {
                continue;
            }
            if let Some(regarding) = cluster.service_reference(&decision.service) {
                let vips: Vec<String> = decision.vips.iter().map(IpAddr::to_string).collect();
                let interfaces: Vec<&str> = interfaces.iter().map(|s| s.as_str()).collect();
                let _ = reports.send(Report::Notice(Notice {
                    regarding,
                    warning: false,
                    reason: reason::NODE_ASSIGNED,
                    note: format!("{} announced from node {} on {}", vips.join(", "), self.me, interfaces.join(", ")),
                }));
            }
        }
        self.announced_services = announced;
        self.decisions = decisions;
    }

    pub fn report_unplaced(
        &mut self,
        cluster: &Cluster,
        reports: &report::Reports,
        unplaced: Vec<(ServiceReference, Vec<IpAddr>)>,
    ) {
        let now: BTreeSet<ServiceReference> = unplaced.iter().map(|(s, _)| s.clone()).collect();
        for (service, vips) in unplaced {
            if self.unplaced_services.contains(&service) {
                continue;
            }
            let vips: Vec<String> = vips.iter().map(IpAddr::to_string).collect();
            let note = format!(
                "node {} owns {} but none of its usable interfaces has an address in that subnet and it has no default route of that family: nothing answers for it; name the interface in the L2Advertisement (spec.interfaces)",
                self.me,
                vips.join(", ")
            );
            tracing::warn!(service = %format!("{}/{}", service.namespace, service.name), "{note}");
            if let Some(regarding) = cluster.service_reference(&service) {
                let _ = reports.send(Report::Notice(Notice {
                    regarding,
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
            let ours = if refusal.listed { janitor } else { refusal.node == self.me };
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
