//! What the speaker reads from the API: Nodes, Services, EndpointSlices, L2Advertisements, IPAddressPools
//! and the L2Announcements of the install namespace, each kept in a reflector store. Any change wakes the
//! main loop, which rebuilds the plan's [`World`] from the stores. Read-only: the speaker writes nothing
//! but L2Announcements and Events.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ferrolb_crds::l2announcement::ServiceReference;
use ferrolb_crds::{BFDProfile, BFDProfileSpec, BGPAdvertisement, BGPAdvertisementSpec, BGPPeer, BGPPeerSpec};
use ferrolb_crds::{IPAddressPool, L2Advertisement, L2Announcement};
use ferrolb_watch::{Feed, WatchIndex};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use tokio::sync::Notify;

use crate::plan::{InterfaceSets, Interfaces, NodeAddress, NodeInfo, NodeName, NodeNames, NodeSet, PoolInfo};
use crate::plan::{ServiceInfo, World};
use crate::services::ServiceIndex;

/// Which Services this installation handles (must match the controller's settings).
#[derive(Debug, Clone)]
pub struct ClassFilter {
    pub load_balancer_class: String,
    pub handle_unset_class: bool,
}

impl ClassFilter {
    pub fn handles(&self, service: &Service) -> bool {
        let Some(spec) = &service.spec else { return false };
        spec.type_.as_deref() == Some("LoadBalancer")
            && match &spec.load_balancer_class {
                Some(class) => *class == self.load_balancer_class,
                None => self.handle_unset_class,
            }
    }
}

pub struct Cluster {
    nodes: Store<Node>,
    /// Services and EndpointSlices (and announcements, one per Service) come by the thousand: only what the
    /// plan reads is kept of them. Both watches feed one index, which joins them.
    services: Arc<RwLock<ServiceIndex>>,
    services_ready: Listed,
    slices_ready: Listed,
    advertisements: Store<L2Advertisement>,
    pools: Store<IPAddressPool>,
    announcements: Arc<RwLock<AnnouncementIndex>>,
    announcements_ready: Listed,
    changed: Arc<Notify>,
    /// Moves with every change of what the plan's world is made of (not the L2Announcements).
    plan_version: Arc<AtomicU64>,
    /// BGP mode's objects (watched only in that mode).
    bgp: Option<BgpStores>,
}

struct BgpStores {
    peers: Store<BGPPeer>,
    profiles: Store<BFDProfile>,
    advertisements: Store<BGPAdvertisement>,
    /// The install namespace's `kubernetes.io/basic-auth` Secrets: the BGPPeers' passwords.
    secrets: Store<Secret>,
}

/// BGP mode's objects, as its renderer reads them.
#[derive(Debug, Clone, Default)]
pub struct BgpObjects {
    /// By name.
    pub peers: Vec<(String, BGPPeerSpec)>,
    pub profiles: BTreeMap<String, BFDProfileSpec>,
    pub advertisements: Vec<BGPAdvertisementSpec>,
    /// Secret name → its `password`, when it has one that is UTF-8.
    pub passwords: BTreeMap<String, String>,
}

/// The Secret type a BGPPeer's password is kept in (and the only Secrets the speaker lists).
pub const PASSWORD_SECRET_TYPE: &str = "kubernetes.io/basic-auth";

/// The L2Announcements of the install namespace: name → what the speakers read of it.
pub type Announcements = Arc<BTreeMap<String, Announced>>;

/// An L2Announcement as the speakers read it. There is one per announced Service and every speaker holds
/// them all, so its node and interfaces are shared with the others' and its addresses are kept parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// `spec.service` is the Service the object's name says ([`crate::report::announcement_name`]). The
    /// object is that Service's either way; one naming another is rewritten by the Service's owner.
    pub names_its_service: bool,
    /// `spec.ips` that are addresses.
    pub ips: Box<[IpAddr]>,
    /// Some text of `spec.ips` is no address (never written by a speaker: such an object is rewritten).
    pub malformed: bool,
    pub node: NodeName,
    pub interfaces: Interfaces,
}

impl Announced {
    /// What is read of `spec`, the L2Announcement `name`, its node and interfaces shared through `shared`.
    pub fn read(name: &str, spec: &ferrolb_crds::L2AnnouncementSpec, shared: &mut AnnouncedParts) -> Self {
        let ips: Box<[IpAddr]> = spec.ips.iter().filter_map(|ip| ip.parse().ok()).collect();
        Announced {
            names_its_service: crate::report::names(name, &spec.service),
            malformed: ips.len() != spec.ips.len(),
            ips,
            node: shared.names.name(&spec.node),
            interfaces: shared.interfaces.share(spec.interfaces.iter().cloned().collect::<BTreeSet<String>>()),
        }
    }
}

/// The node names and interface sets the L2Announcements have in common.
#[derive(Default)]
pub struct AnnouncedParts {
    names: NodeNames,
    interfaces: InterfaceSets,
}

/// Turns true once a watch has listed.
struct Listed(tokio::sync::watch::Receiver<bool>);

impl Listed {
    async fn wait(&self) -> Result<(), CompactStopped> {
        let mut ready = self.0.clone();
        ready.wait_for(|r| *r).await.map(|_| ()).map_err(|_| CompactStopped)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a watch stopped before listing")]
pub struct CompactStopped;

pub(crate) fn key_of<K: kube::Resource>(object: &K) -> String {
    match object.meta().namespace.as_deref() {
        Some(namespace) => format!("{namespace}/{}", object.meta().name.as_deref().unwrap_or_default()),
        None => object.meta().name.clone().unwrap_or_default(),
    }
}

/// The L2Announcements of the install namespace by name, shared with the plan steps that read them (a step
/// takes them all by cloning a pointer). A change edits the map in place, unless a step still holds it: that
/// step keeps the map it was given.
#[derive(Default)]
struct AnnouncementIndex {
    items: Announcements,
    shared: AnnouncedParts,
}

impl WatchIndex<L2Announcement> for AnnouncementIndex {
    type Key = String;
    /// Whether the map changed.
    type Output = bool;

    fn key(announcement: &L2Announcement) -> String {
        announcement.name_any()
    }

    fn apply(&mut self, announcement: L2Announcement) -> bool {
        let name = announcement.name_any();
        let read = Announced::read(&name, &announcement.spec, &mut self.shared);
        if self.items.get(&name) == Some(&read) {
            return false;
        }
        Arc::make_mut(&mut self.items).insert(name, read);
        true
    }

    fn delete(&mut self, announcement: L2Announcement) -> bool {
        let name = announcement.name_any();
        self.items.contains_key(&name) && Arc::make_mut(&mut self.items).remove(&name).is_some()
    }

    fn retain(&mut self, listed: &std::collections::HashSet<String>) -> bool {
        if self.items.keys().all(|name| listed.contains(name)) {
            return false;
        }
        Arc::make_mut(&mut self.items).retain(|name, _| listed.contains(name));
        true
    }
}

/// Feeds `store` from a watch of `api`, and wakes the plan when the store says something it reads changed
/// (moving `version`, when the plan's world is made of it).
fn watch_into<K, S>(
    api: Api<K>,
    config: watcher::Config,
    changed: &Arc<Notify>,
    version: Option<&Arc<AtomicU64>>,
    store: &Arc<RwLock<S>>,
) -> Listed
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
    S: WatchIndex<K, Key = String, Output = bool> + Send + Sync + 'static,
{
    let (ready_tx, ready) = tokio::sync::watch::channel(false);
    let (store, changed, version) = (store.clone(), changed.clone(), version.cloned());
    let kind = K::kind(&()).to_string();
    tokio::spawn(async move {
        let stream = watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        let mut feed = Feed::default();
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(kind = %kind, error = %e, "watch error; retrying with backoff");
                    continue;
                }
            };
            let list_ended = matches!(event, watcher::Event::InitDone);
            let value_changed = {
                let mut store = crate::locks::write(&store, "watched objects");
                feed.feed(&mut *store, event)
            };
            if list_ended {
                let _ = ready_tx.send(feed.listed());
            }
            // A step for a change that changes nothing of what the plan reads would only cost CPU (it reads
            // every Service): at thousands of Services most events are such.
            if value_changed || list_ended {
                if let Some(version) = &version {
                    version.fetch_add(1, Ordering::Relaxed);
                }
                changed.notify_one();
            }
        }
    });
    Listed(ready)
}

impl Cluster {
    /// Starts every watch. `pool_selector` limits the pools (as the controller's `--pool-selector` does).
    pub fn start(
        client: &kube::Client,
        namespace: &str,
        classes: ClassFilter,
        pool_selector: Option<&str>,
        bgp: bool,
    ) -> Self {
        let changed = Arc::new(Notify::new());
        let version = Arc::new(AtomicU64::new(0));
        let pool_config = match pool_selector {
            Some(selector) => watcher::Config::default().labels(selector),
            None => watcher::Config::default(),
        };
        let services = Arc::new(RwLock::new(ServiceIndex::new(classes)));
        let services_ready = watch_into::<Service, _>(
            Api::all(client.clone()),
            watcher::Config::default(),
            &changed,
            Some(&version),
            &services,
        );
        let slices_ready = watch_into::<EndpointSlice, _>(
            Api::all(client.clone()),
            watcher::Config::default(),
            &changed,
            Some(&version),
            &services,
        );
        let announcements = Arc::new(RwLock::new(AnnouncementIndex::default()));
        let announcements_ready = watch_into(
            Api::namespaced(client.clone(), namespace),
            watcher::Config::default(),
            &changed,
            None,
            &announcements,
        );
        Self {
            nodes: watch(Api::all(client.clone()), watcher::Config::default(), &changed, &version),
            services,
            services_ready,
            slices_ready,
            announcements_ready,
            plan_version: version.clone(),
            advertisements: watch(Api::all(client.clone()), watcher::Config::default(), &changed, &version),
            pools: watch(Api::all(client.clone()), pool_config, &changed, &version),
            announcements,
            bgp: bgp.then(|| BgpStores {
                peers: watch(Api::all(client.clone()), watcher::Config::default(), &changed, &version),
                profiles: watch(Api::all(client.clone()), watcher::Config::default(), &changed, &version),
                advertisements: watch(Api::all(client.clone()), watcher::Config::default(), &changed, &version),
                secrets: watch(
                    Api::namespaced(client.clone(), namespace),
                    watcher::Config::default().fields(&format!("type={PASSWORD_SECRET_TYPE}")),
                    &changed,
                    &version,
                ),
            }),
            changed,
        }
    }

    /// BGP mode's objects (`None` unless the cluster was started for it).
    pub fn bgp(&self) -> Option<BgpObjects> {
        let stores = self.bgp.as_ref()?;
        let mut peers: Vec<(String, BGPPeerSpec)> =
            stores.peers.state().iter().map(|p| (p.name_any(), p.spec.clone())).collect();
        peers.sort_by(|a, b| a.0.cmp(&b.0));
        Some(BgpObjects {
            peers,
            profiles: stores.profiles.state().iter().map(|p| (p.name_any(), p.spec.clone())).collect(),
            advertisements: stores.advertisements.state().iter().map(|a| a.spec.clone()).collect(),
            passwords: stores
                .secrets
                .state()
                .iter()
                .filter_map(|secret| {
                    let password = secret.data.as_ref()?.get("password")?;
                    Some((secret.name_any(), String::from_utf8(password.0.clone()).ok()?))
                })
                .collect(),
        })
    }

    /// Resolves once every watch has listed.
    pub async fn ready(&self) -> Result<(), CompactStopped> {
        self.nodes.wait_until_ready().await.map_err(|_| CompactStopped)?;
        self.services_ready.wait().await?;
        self.slices_ready.wait().await?;
        self.advertisements.wait_until_ready().await.map_err(|_| CompactStopped)?;
        self.pools.wait_until_ready().await.map_err(|_| CompactStopped)?;
        if let Some(bgp) = &self.bgp {
            bgp.peers.wait_until_ready().await.map_err(|_| CompactStopped)?;
            bgp.profiles.wait_until_ready().await.map_err(|_| CompactStopped)?;
            bgp.advertisements.wait_until_ready().await.map_err(|_| CompactStopped)?;
            bgp.secrets.wait_until_ready().await.map_err(|_| CompactStopped)?;
        }
        self.announcements_ready.wait().await
    }

    /// Moves with every change of the objects [`Cluster::world`] is made of.
    pub fn plan_version(&self) -> u64 {
        self.plan_version.load(Ordering::Relaxed)
    }

    /// Resolves at the next change of any watched object.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    pub fn world(&self) -> World {
        let services = crate::locks::read(&self.services, "Services").infos();
        let nodes = self.nodes.state();
        let node_addresses = nodes
            .iter()
            .flat_map(|n| {
                let name = n.name_any();
                listed_addresses(n).map(move |ip| (ip, NodeAddress { node: name.clone(), listed: true }))
            })
            .collect();
        World {
            nodes: nodes.iter().map(|n| node_info(n)).collect(),
            node_addresses,
            services,
            advertisements: self.advertisements.state().iter().map(|a| a.spec.clone()).collect(),
            pools: self
                .pools
                .state()
                .iter()
                .map(|p| PoolInfo {
                    name: p.name_any(),
                    labels: p.labels().clone(),
                    addresses: p.spec.addresses.iter().map(|a| a.as_str().to_string()).collect(),
                })
                .collect(),
        }
    }

    pub fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.state().into_iter().find(|n| n.name_any() == name)
    }

    /// Gossip addresses of every Node: its first InternalIP of `family` (`true`: IPv4), else ExternalIP.
    pub fn gossip_peers(&self, port: u16, ipv4: bool) -> BTreeSet<SocketAddr> {
        self.nodes.state().iter().filter_map(|n| node_address(n, ipv4)).map(|ip| SocketAddr::new(ip, port)).collect()
    }

    /// What an Event about `service` refers to.
    pub fn service_reference(&self, service: &ServiceReference) -> Option<ObjectReference> {
        let uid =
            crate::locks::read(&self.services, "Services").uid(&format!("{}/{}", service.namespace, service.name))?;
        Some(ferrolb_crds::service::reference(&service.namespace, &service.name, uid))
    }

    /// The L2Announcements in the install namespace: name → spec.
    pub fn announcements(&self) -> Announcements {
        crate::locks::read(&self.announcements, "L2Announcements").items.clone()
    }
}

fn watch<K>(api: Api<K>, config: watcher::Config, changed: &Arc<Notify>, version: &Arc<AtomicU64>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
{
    let (reader, writer) = reflector::store();
    let (changed, version) = (changed.clone(), version.clone());
    let kind = K::kind(&()).to_string();
    let stream = watcher(api, config)
        .default_backoff()
        // Kept for the process's life: drop what the speaker never reads.
        .modify(|object| {
            object.meta_mut().managed_fields = None;
            object.meta_mut().annotations = None;
        })
        .reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    version.fetch_add(1, Ordering::Relaxed);
                    changed.notify_one();
                }
                Err(e) => tracing::warn!(kind = %kind, error = %e, "watch error; retrying with backoff"),
            }
        }
    });
    reader
}

/// Nodes with a ready endpoint in `slice` (`ready` unset means ready, as the API documents).
pub fn ready_nodes(slice: &EndpointSlice) -> impl Iterator<Item = String> + '_ {
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .filter_map(|e| e.node_name.clone())
}

/// The plan's view of a Service of ours; `None` while it has no address in status.
pub fn service_info(service: &Service, ready_endpoint_nodes: NodeSet) -> Option<ServiceInfo> {
    let vips = ferrolb_crds::service::ingress_ips(service);
    if vips.is_empty() {
        return None;
    }
    Some(ServiceInfo {
        service: Arc::new(ServiceReference {
            namespace: service.namespace().unwrap_or_default(),
            name: service.name_any(),
        }),
        labels: service.labels().clone(),
        vips: vips.into(),
        origin_pool: ferrolb_crds::service::origin_pool(service),
        traffic_policy_local: service.spec.as_ref().and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local"),
        ready_endpoint_nodes,
    })
}

pub fn node_info(node: &Node) -> NodeInfo {
    let network_unavailable = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True");
    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    NodeInfo { name: node.name_any().into(), labels: node.labels().clone(), network_unavailable, unschedulable }
}

/// Every IP address a Node lists in `status.addresses` (hostnames and the like are skipped).
pub fn listed_addresses(node: &Node) -> impl Iterator<Item = IpAddr> + '_ {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
}

pub fn node_address(node: &Node, ipv4: bool) -> Option<IpAddr> {
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref())?;
    let of_kind = |kind: &str| {
        addresses
            .iter()
            .filter(|a| a.type_ == kind)
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
            .find(|ip| ip.is_ipv4() == ipv4)
    };
    of_kind("InternalIP").or_else(|| of_kind("ExternalIP"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn service(yaml: serde_json::Value) -> Service {
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn services_are_ours_by_class_and_carry_their_status_addresses_ipv4_first() {
        let classes = ClassFilter { load_balancer_class: "ferrolb.io/lb".into(), handle_unset_class: true };
        let s = service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"},
            "status": {"loadBalancer": {"ingress": [{"ip": "2001:db8::200"}, {"ip": "192.0.2.200"}, {"hostname": "x"}]}}
        }));
        assert!(classes.handles(&s));
        let info = service_info(&s, ["node-1"].into_iter().collect()).unwrap();
        assert_eq!(*info.vips, ["192.0.2.200".parse::<IpAddr>().unwrap(), "2001:db8::200".parse().unwrap()]);
        assert!(info.traffic_policy_local);
        assert_eq!(info.service.namespace, "shop");

        let other = service(
            serde_json::json!({"metadata": {"name": "x"}, "spec": {"type": "LoadBalancer", "loadBalancerClass": "other"}}),
        );
        assert!(!classes.handles(&other));
        let unset = service(serde_json::json!({"metadata": {"name": "x"}, "spec": {"type": "LoadBalancer"}}));
        assert!(!ClassFilter { handle_unset_class: false, ..classes.clone() }.handles(&unset));
        let cluster_ip = service(serde_json::json!({"metadata": {"name": "x"}, "spec": {"type": "ClusterIP"}}));
        assert!(!classes.handles(&cluster_ip));
        assert!(service_info(&unset, NodeSet::default()).is_none(), "no address yet");
    }

    fn announcement(name: &str, node: &str) -> L2Announcement {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ferrolb.io/v1alpha1", "kind": "L2Announcement",
            "metadata": {"name": name, "namespace": "ferrolb-system"},
            "spec": {"service": {"namespace": "shop", "name": name}, "ips": ["192.0.2.10"], "node": node, "interfaces": ["eth0"]}
        }))
        .unwrap()
    }

    #[test]
    fn announcements_are_edited_in_place_unless_a_step_holds_them_and_a_change_is_reported_once() {
        let mut index = AnnouncementIndex::default();
        assert!(index.apply(announcement("shop.web", "node-1")));
        assert!(!index.apply(announcement("shop.web", "node-1")), "the same again");
        let held_by_a_step = index.items.clone();
        assert!(index.apply(announcement("shop.web", "node-2")));
        assert_eq!(&*held_by_a_step["shop.web"].node, "node-1", "a step keeps the map it was given");
        assert_eq!(&*index.items["shop.web"].node, "node-2");
        drop(held_by_a_step);
        let before = Arc::as_ptr(&index.items);
        assert!(index.apply(announcement("shop.api", "node-1")));
        assert_eq!(Arc::as_ptr(&index.items), before, "nobody holds it: edited in place");
        assert!(!index.delete(announcement("shop.gone", "node-1")), "deleting what is not there");
        assert!(!index.retain(&std::collections::HashSet::from(["shop.web".into(), "shop.api".into()])));
        assert!(index.retain(&std::collections::HashSet::from(["shop.api".into()])));
        assert!(index.delete(announcement("shop.api", "node-1")));
        assert!(index.items.is_empty());
    }

    #[test]
    fn nodes_endpoints_and_addresses() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-1", "labels": {"zone": "a"}},
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [{"type": "NetworkUnavailable", "status": "True"}],
                "addresses": [{"type": "Hostname", "address": "node-1"}, {"type": "InternalIP", "address": "2001:db8::11"}, {"type": "InternalIP", "address": "192.0.2.11"}]
            }
        }))
        .unwrap();
        assert!(node_info(&node).network_unavailable);
        assert!(node_info(&node).unschedulable);
        assert_eq!(node_address(&node, true), Some("192.0.2.11".parse().unwrap()));
        assert_eq!(node_address(&node, false), Some("2001:db8::11".parse().unwrap()));
        let listed: Vec<IpAddr> = listed_addresses(&node).collect();
        assert_eq!(listed, ["2001:db8::11".parse::<IpAddr>().unwrap(), "192.0.2.11".parse().unwrap()]);

        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "nodeName": "node-1"},
                {"addresses": ["10.0.0.2"], "nodeName": "node-2", "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"], "nodeName": "node-3", "conditions": {"ready": true}},
                {"addresses": ["10.0.0.4"]}
            ]
        }))
        .unwrap();
        assert_eq!(ready_nodes(&slice).collect::<Vec<_>>(), ["node-1", "node-3"]);
    }
}
