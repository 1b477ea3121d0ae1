//! The leader's loop: watches Services, pools and Namespaces, feeds the engine, and hands its outputs to the
//! writer. Nothing is allocated before every watch has listed what exists (so addresses already in status
//! are taken back first). A re-list after a watch gap also reports the objects deleted during the gap.

use std::collections::HashSet;
use std::time::Duration;

use ferrolb_crds::{BGPAdvertisement, IPAddressPool, L2Advertisement, reason};
use ferrolb_telemetry::events::EventSource;
use ferrolb_watch::{Feed, WatchIndex};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use tokio::sync::mpsc;

use crate::engine::{Config, Engine, Output, key_of};
use crate::ipam::ServiceKey;
use crate::metrics::{Health, Metrics, PoolLabels, ReasonLabel, ServiceAddressLabels};
use crate::writer::{self, Write};

/// Every Service is settled again this often: a safety net for a failed write or a missed event.
const RESYNC_PERIOD: Duration = Duration::from_secs(60);
/// Pool status is written at most this often (counts change with every allocation).
const POOL_STATUS_PERIOD: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct Options {
    pub config: Config,
    /// Only pools matching this label selector are used (lets several instances share a cluster).
    pub pool_selector: Option<String>,
    /// This replica, as its Events name it (`reportingInstance`).
    pub instance: String,
}

enum Watched {
    Service(Event<Service>),
    Pool(Event<IPAddressPool>),
    Namespace(Event<Namespace>),
    Advertisement(Event<L2Advertisement>),
    BgpAdvertisement(Event<BGPAdvertisement>),
    /// Only a Node's name and addresses are kept (Node objects are large and come by the thousand).
    Node(Event<NodeAddresses>),
    ServiceCidr(Event<ServiceCIDR>),
}

/// Runs as the leader until `stop` resolves or a watch fails for good.
pub async fn run(
    client: kube::Client,
    options: Options,
    metrics: Metrics,
    health: Health,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (writes, writes_rx) = mpsc::unbounded_channel();
    let manager = writer::field_manager(&options.config.load_balancer_class);
    let events = EventSource {
        client: client.clone(),
        controller: writer::REPORTING_CONTROLLER,
        instance: options.instance.clone(),
    };
    let writer = tokio::spawn(writer::run(client.clone(), events, manager, metrics.clone(), writes_rx));
    let mut engine = Engine::new(options.config.clone(), Box::new(|| Time(jiff::Timestamp::now())));

    let pool_config = match &options.pool_selector {
        Some(selector) => watcher::Config::default().labels(selector),
        None => watcher::Config::default(),
    };
    let services = watcher(Api::<Service>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map_ok(Watched::Service);
    let pools = watcher(Api::<IPAddressPool>::all(client.clone()), pool_config).default_backoff().map_ok(Watched::Pool);
    let namespaces = watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map_ok(Watched::Namespace);
    let advertisements = watcher(Api::<L2Advertisement>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map_ok(Watched::Advertisement);
    let nodes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map_ok(|event| Watched::Node(compact_node_event(event)));
    let mut streams = vec![services.boxed(), pools.boxed(), namespaces.boxed(), advertisements.boxed(), nodes.boxed()];
    let mut feeds = Feeds::default();
    let bgp_served = bgp_advertisements_served(&client).await;
    if bgp_served {
        let bgp = watcher(Api::<BGPAdvertisement>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .map_ok(Watched::BgpAdvertisement);
        streams.push(bgp.boxed());
    }
    let cidrs_served = service_cidrs_served(&client).await;
    if cidrs_served {
        let cidrs = watcher(Api::<ServiceCIDR>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .map_ok(Watched::ServiceCidr);
        streams.push(cidrs.boxed());
    }
    let mut events = futures::stream::select_all(streams);

    let mut resync = tokio::time::interval(RESYNC_PERIOD);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pool_flush = tokio::time::interval(POOL_STATUS_PERIOD);
    let mut exported_addresses: HashSet<ServiceAddressLabels> = HashSet::new();
    // The engine's change count when the per-address series were last exported (None: never).
    let mut exported_at: Option<u64> = None;
    tokio::pin!(stop);
    loop {
        let outputs = tokio::select! {
            _ = &mut stop => break,
            event = events.next() => match event {
                None => anyhow::bail!("the watches ended"),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watch error; retrying with backoff");
                    continue;
                }
                Some(Ok(Watched::Service(event))) => feeds.services.feed(&mut engine, event),
                Some(Ok(Watched::Pool(event))) => feeds.pools.feed(&mut engine, event),
                Some(Ok(Watched::Namespace(event))) => feeds.namespaces.feed(&mut engine, event),
                Some(Ok(Watched::Advertisement(event))) => feeds.advertisements.feed(&mut engine, event),
                Some(Ok(Watched::BgpAdvertisement(event))) => feeds.bgp_advertisements.feed(&mut engine, event),
                Some(Ok(Watched::Node(event))) => feeds.nodes.feed(&mut engine, event),
                Some(Ok(Watched::ServiceCidr(event))) => feeds.cidrs.feed(&mut engine, event),
            },
            _ = resync.tick(), if engine.is_synced() => engine.reconcile_all(),
            _ = pool_flush.tick(), if engine.is_synced() => {
                for (name, status) in engine.take_pool_statuses() {
                    let _ = writes.send(Write::PoolStatus(name, status));
                }
                export_pool_gauges(&engine, &metrics);
                // Rebuilt from every Service, so only when a Service changed: not every half second.
                if exported_at != Some(engine.changes()) {
                    export_service_addresses(&engine, &metrics, &mut exported_addresses);
                    exported_at = Some(engine.changes());
                }
                Vec::new()
            }
        };
        let mut outputs = outputs;
        if !engine.is_synced() && feeds.listed(cidrs_served, bgp_served) {
            tracing::info!("every watch has listed; restoring addresses from Service status, then allocating");
            outputs.extend(engine.initial_sync());
            health.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        for output in outputs {
            count(&metrics, &output);
            if writes.send(Write::Output(output)).is_err() {
                anyhow::bail!("the status writer stopped");
            }
        }
    }
    drop(writes);
    let _ = writer.await;
    Ok(())
}

/// Whether the API server serves ServiceCIDRs (Kubernetes 1.33+) and we may read them. Without them the
/// `kubernetes` Service's ClusterIPs are still never handed out, but the rest of the Service CIDR is not
/// known.
/// Whether BGPAdvertisements can be listed: CRDs older than BGP mode (helm upgrade leaves `crds/` alone)
/// or RBAC without it must not keep the controller from syncing.
async fn bgp_advertisements_served(client: &kube::Client) -> bool {
    let api = Api::<BGPAdvertisement>::all(client.clone());
    match api.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list BGPAdvertisements (are this release's CRDs applied?); Services are told only of L2Advertisements");
            false
        }
    }
}

async fn service_cidrs_served(client: &kube::Client) -> bool {
    let api = Api::<ServiceCIDR>::all(client.clone());
    match api.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list ServiceCIDRs (networking.k8s.io/v1); only the kubernetes Service's ClusterIPs are kept out of the pools");
            false
        }
    }
}

/// The relist bookkeeping of every watch.
#[derive(Default)]
struct Feeds {
    services: Feed<ServiceKey>,
    pools: Feed<String>,
    namespaces: Feed<String>,
    advertisements: Feed<String>,
    bgp_advertisements: Feed<String>,
    nodes: Feed<String>,
    cidrs: Feed<String>,
}

impl Feeds {
    /// Every watch has listed (the ServiceCIDRs' and BGPAdvertisements' only where the API serves them).
    fn listed(&self, cidrs_served: bool, bgp_served: bool) -> bool {
        self.services.listed()
            && self.pools.listed()
            && self.namespaces.listed()
            && self.advertisements.listed()
            && (self.bgp_advertisements.listed() || !bgp_served)
            && self.nodes.listed()
            && (self.cidrs.listed() || !cidrs_served)
    }
}

impl WatchIndex<Service> for Engine {
    type Key = ServiceKey;
    type Output = Vec<Output>;

    fn key(service: &Service) -> ServiceKey {
        key_of(service)
    }

    fn apply(&mut self, service: Service) -> Vec<Output> {
        self.apply_service(service)
    }

    fn delete(&mut self, service: Service) -> Vec<Output> {
        self.delete_service(&service)
    }

    fn retain(&mut self, listed: &HashSet<ServiceKey>) -> Vec<Output> {
        self.forget_services_not_in(listed)
    }
}

impl WatchIndex<IPAddressPool> for Engine {
    type Key = String;
    type Output = Vec<Output>;

    fn key(pool: &IPAddressPool) -> String {
        pool.name_any()
    }

    fn apply(&mut self, pool: IPAddressPool) -> Vec<Output> {
        self.apply_pool(pool)
    }

    fn delete(&mut self, pool: IPAddressPool) -> Vec<Output> {
        self.delete_pool(&pool.name_any())
    }

    fn retain(&mut self, listed: &HashSet<String>) -> Vec<Output> {
        self.forget_pools_not_in(listed)
    }
}

impl WatchIndex<Namespace> for Engine {
    type Key = String;
    type Output = Vec<Output>;

    fn key(namespace: &Namespace) -> String {
        namespace.name_any()
    }

    fn apply(&mut self, namespace: Namespace) -> Vec<Output> {
        self.apply_namespace(&namespace)
    }

    fn delete(&mut self, namespace: Namespace) -> Vec<Output> {
        self.delete_namespace(&namespace.name_any());
        Vec::new()
    }

    /// A namespace deleted while the watch was down only matters through its Services, which the Service
    /// watch's own relist forgets.
    fn retain(&mut self, _listed: &HashSet<String>) -> Vec<Output> {
        Vec::new()
    }
}

impl WatchIndex<L2Advertisement> for Engine {
    type Key = String;
    type Output = Vec<Output>;

    fn key(advertisement: &L2Advertisement) -> String {
        advertisement.name_any()
    }

    fn apply(&mut self, advertisement: L2Advertisement) -> Vec<Output> {
        self.apply_advertisement(&advertisement)
    }

    fn delete(&mut self, advertisement: L2Advertisement) -> Vec<Output> {
        self.delete_advertisement(crate::engine::L2_ADVERTISEMENT, &advertisement.name_any())
    }

    fn retain(&mut self, listed: &HashSet<String>) -> Vec<Output> {
        self.forget_advertisements_not_in(crate::engine::L2_ADVERTISEMENT, listed)
    }
}

impl WatchIndex<BGPAdvertisement> for Engine {
    type Key = String;
    type Output = Vec<Output>;

    fn key(advertisement: &BGPAdvertisement) -> String {
        advertisement.name_any()
    }

    fn apply(&mut self, advertisement: BGPAdvertisement) -> Vec<Output> {
        self.apply_bgp_advertisement(&advertisement)
    }

    fn delete(&mut self, advertisement: BGPAdvertisement) -> Vec<Output> {
        self.delete_advertisement(crate::engine::BGP_ADVERTISEMENT, &advertisement.name_any())
    }

    fn retain(&mut self, listed: &HashSet<String>) -> Vec<Output> {
        self.forget_advertisements_not_in(crate::engine::BGP_ADVERTISEMENT, listed)
    }
}

impl WatchIndex<NodeAddresses> for Engine {
    type Key = String;
    type Output = Vec<Output>;

    fn key(node: &NodeAddresses) -> String {
        node.name.clone()
    }

    fn apply(&mut self, node: NodeAddresses) -> Vec<Output> {
        self.apply_node(&node.name, node.addresses)
    }

    fn delete(&mut self, node: NodeAddresses) -> Vec<Output> {
        self.delete_node(&node.name)
    }

    fn retain(&mut self, listed: &HashSet<String>) -> Vec<Output> {
        self.forget_nodes_not_in(listed)
    }
}

impl WatchIndex<ServiceCIDR> for Engine {
    type Key = String;
    type Output = Vec<Output>;

    fn key(cidr: &ServiceCIDR) -> String {
        cidr.name_any()
    }

    fn apply(&mut self, cidr: ServiceCIDR) -> Vec<Output> {
        let cidrs = cidr.spec.as_ref().and_then(|s| s.cidrs.clone()).unwrap_or_default();
        self.apply_service_cidr(&cidr.name_any(), cidrs)
    }

    fn delete(&mut self, cidr: ServiceCIDR) -> Vec<Output> {
        self.delete_service_cidr(&cidr.name_any())
    }

    fn retain(&mut self, listed: &HashSet<String>) -> Vec<Output> {
        self.forget_service_cidrs_not_in(listed)
    }
}

struct NodeAddresses {
    name: String,
    /// The Node's `status.addresses` that are IPs (hostnames are skipped).
    addresses: Vec<std::net::IpAddr>,
}

fn compact_node_event(event: Event<Node>) -> Event<NodeAddresses> {
    let compact = |node: Node| NodeAddresses {
        name: node.name_any(),
        addresses: node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|a| a.address.parse().ok())
            .collect(),
    };
    match event {
        Event::Init => Event::Init,
        Event::InitApply(node) => Event::InitApply(compact(node)),
        Event::Apply(node) => Event::Apply(compact(node)),
        Event::Delete(node) => Event::Delete(compact(node)),
        Event::InitDone => Event::InitDone,
    }
}

/// Allocations are counted when a Service's addresses change (its `IPAllocated` Event); failures when a
/// Service's condition turns to a new refusal, by reason.
fn count(metrics: &Metrics, output: &Output) {
    match output {
        Output::Event(event) if event.reason == reason::IP_ALLOCATED => {
            metrics.allocations.inc();
        }
        Output::Status(status) => {
            if let Some(condition) = status.condition.as_ref().filter(|c| c.status == "False") {
                metrics.allocation_failures.get_or_create(&ReasonLabel { reason: condition.reason.clone() }).inc();
            }
        }
        _ => {}
    }
}

/// The per-address series, brought to what the engine holds (series of released addresses go). The labels
/// of a series still held move from the old set to the new one: with thousands of Services, a third copy of
/// every label set would be megabytes.
fn export_service_addresses(engine: &Engine, metrics: &Metrics, exported: &mut HashSet<ServiceAddressLabels>) {
    metrics.services_pending.set(i64::try_from(engine.pending_services()).unwrap_or(i64::MAX));
    let mut now = HashSet::with_capacity(exported.len());
    for (key, ip, pool, advertised) in engine.held_addresses() {
        let labels = ServiceAddressLabels {
            namespace: key.namespace.clone(),
            service: key.name.clone(),
            ip: ip.to_string(),
            pool: pool.to_string(),
            advertised: advertised.to_string(),
        };
        let labels = match exported.take(&labels) {
            Some(kept) => kept,
            None => {
                metrics.service_addresses.get_or_create(&labels).set(1);
                labels
            }
        };
        now.insert(labels);
    }
    for gone in exported.drain() {
        metrics.service_addresses.remove(&gone);
    }
    *exported = now;
}

fn export_pool_gauges(engine: &Engine, metrics: &Metrics) {
    for (pool, family, total, in_use) in engine.pool_gauges() {
        let labels = PoolLabels { pool, family: family.to_string() };
        metrics.pool_size.get_or_create(&labels).set(i64::try_from(total).unwrap_or(i64::MAX));
        metrics.pool_in_use.get_or_create(&labels).set(i64::try_from(in_use).unwrap_or(i64::MAX));
    }
}
