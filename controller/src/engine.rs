//! The controller's brain, with no I/O: it is fed Services, pools and Namespaces as the watches see them and
//! answers with what to write — Service status, Events, pool status. The run loop feeds it and a writer task
//! applies its outputs, so everything it decides is unit-tested here without an API server.
//!
//! It never re-IPs a Service by itself: addresses move only when the Service asks for something its
//! addresses no longer satisfy, and a failure keeps what the Service had.

use ferrolb_crds::reason;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ferrolb_crds::pool::{FamilyUsage as UsageStatus, IPAddressPoolStatus};
use ferrolb_crds::service::{POOL_CONDITION, POOL_CONDITION_REASON};
use ferrolb_crds::{BGPAdvertisement, BGPAdvertisementSpec, IPAddressPool, L2Advertisement, L2AdvertisementSpec};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::sync::Arc;

use kube::{Resource, ResourceExt};

use crate::ipam::{
    Allocator, Family, FamilyPolicy, PoolDef, PoolError, Reservation, Reservations, ServiceKey, ServiceRequest,
};
use crate::record::ServiceRecord;

/// The Service status condition ferrolb owns.
pub const CONDITION_TYPE: &str = ferrolb_crds::service::ALLOCATED_CONDITION;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub load_balancer_class: String,
    /// Also handle LoadBalancer Services that set no class.
    pub handle_unset_class: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { load_balancer_class: ferrolb_crds::DEFAULT_LOAD_BALANCER_CLASS.into(), handle_unset_class: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// An Event to publish about an object.
#[derive(Debug, Clone, PartialEq)]
pub struct EventOut {
    pub regarding: ObjectReference,
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

/// The status ferrolb wants on a Service: its ingress, ferrolb's condition and the record of the pool its
/// addresses came from. `condition: None` with no ingress means "remove what ferrolb wrote".
#[derive(Debug, Clone, PartialEq)]
pub struct StatusOut {
    pub key: ServiceKey,
    pub ingress: Vec<IpAddr>,
    pub condition: Option<Condition>,
    pub pool_condition: Option<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Status(StatusOut),
    Event(EventOut),
}

/// What was last announced about a Service, so Events say what changed instead of repeating themselves.
#[derive(Debug, Clone, Default, PartialEq)]
struct Reported {
    ips: Vec<IpAddr>,
    /// The message of the last Warning published about it, so a standing problem is said once.
    warned: Option<String>,
}

struct PoolRecord {
    object: IPAddressPool,
    error: Option<PoolError>,
}

/// Per pool and family: (total, in use), for metrics.
pub type PoolGauge = (String, Family, u128, u128);

pub struct Engine {
    config: Config,
    allocator: Allocator,
    /// Behind `Arc`: settling a Service reads its record while the engine changes.
    services: BTreeMap<ServiceKey, Arc<ServiceRecord>>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pools: BTreeMap<String, PoolRecord>,
    /// By `KIND name` (`L2Advertisement demo`, `BGPAdvertisement bgp`): messages name them so.
    advertisements: BTreeMap<String, Advertisement>,
    /// Each Node's addresses and each ServiceCIDR's CIDRs: the cluster's own, never handed out.
    node_addresses: BTreeMap<String, Vec<IpAddr>>,
    service_cidrs: BTreeMap<String, Vec<String>>,
    reported: HashMap<ServiceKey, Reported>,
    /// Services without the addresses they ask for: a pool change may help them.
    unsettled: BTreeSet<ServiceKey>,
    reported_pool_errors: HashMap<String, String>,
    /// Per pool, the pools it overlaps (kept symmetric, updated per pool event).
    overlaps: HashMap<String, BTreeSet<String>>,
    /// Per pool, the reserved addresses it was last warned about.
    reported_reserved: HashMap<String, BTreeSet<String>>,
    dirty_pools: BTreeSet<String>,
    /// Some Service gave addresses up since the waiting Services were last offered them.
    freed: bool,
    /// Counts the reconciles that changed what a Service holds or shows: metrics derived from every Service
    /// are recomputed only when it moved.
    changes: u64,
    synced: bool,
    clock: Box<dyn Fn() -> Time + Send>,
}

impl Engine {
    pub fn new(config: Config, clock: Box<dyn Fn() -> Time + Send>) -> Self {
        Self {
            config,
            allocator: Allocator::new(),
            services: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            pools: BTreeMap::new(),
            advertisements: BTreeMap::new(),
            node_addresses: BTreeMap::new(),
            service_cidrs: BTreeMap::new(),
            reported: HashMap::new(),
            unsettled: BTreeSet::new(),
            reported_pool_errors: HashMap::new(),
            overlaps: HashMap::new(),
            reported_reserved: HashMap::new(),
            dirty_pools: BTreeSet::new(),
            freed: false,
            changes: 0,
            synced: false,
            clock,
        }
    }

    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Whether ferrolb is responsible for this Service.
    pub fn handles(&self, service: &ServiceRecord) -> bool {
        if !service.load_balancer {
            return false;
        }
        match service.class.as_deref() {
            Some(class) => class == self.config.load_balancer_class,
            None => self.config.handle_unset_class,
        }
    }

    /// Called once every watch has listed what exists: takes back every address already in a Service's status
    /// (oldest Service first, so the older keeps a clashing address), then settles every Service.
    pub fn initial_sync(&mut self) -> Vec<Output> {
        let mut outputs = Vec::new();
        self.allocator.set_reservations(self.reservations());
        let keys = self.keys_oldest_first();
        for key in &keys {
            let Some(service) = self.services.get(key) else { continue };
            let held = service.ingress.clone();
            if held.is_empty() || !self.handles(service) {
                continue;
            }
            let request = self.request_or_placeholder(service, &held);
            let origin = service.origin_pool();
            match self.allocator.restore(&request, &held, origin.as_deref()) {
                Ok(_) => {
                    self.reported.insert(key.clone(), Reported { ips: held, ..Default::default() });
                }
                Err(conflict) => {
                    // What its status said, so the allocation Event reads "moved from ...".
                    self.reported.insert(key.clone(), Reported { ips: held, ..Default::default() });
                    outputs.push(Output::Event(EventOut {
                        regarding: service.object_ref(),
                        type_: EventType::Warning,
                        reason: reason::IP_CONFLICT,
                        note: format!(
                            "{}; {} was created first and keeps it, this Service gets another address",
                            conflict, conflict.holder
                        ),
                    }));
                }
            }
        }
        self.synced = true;
        // Overlaps once for every pool, now that all are known (not once per pool as they were listed).
        let names: Vec<String> = self.pools.keys().cloned().collect();
        for name in &names {
            outputs.extend(self.update_overlaps(name));
        }
        self.dirty_pools.extend(names);
        for key in keys {
            outputs.extend(self.reconcile_service(&key));
        }
        outputs.extend(self.reserved_events());
        outputs
    }

    pub fn apply_service(&mut self, service: Service) -> Vec<Output> {
        let record = ServiceRecord::of(&service);
        let key = record.key.clone();
        let cluster_ips_before = self.services.get(&key).map(|s| s.cluster_ips.clone());
        let now = record.cluster_ips.clone();
        self.services.insert(key.clone(), Arc::new(record));
        if !self.synced {
            return Vec::new();
        }
        let mut outputs = self.reconcile_service(&key);
        outputs.extend(self.offer_freed_addresses());
        if key.namespace == "default" && key.name == "kubernetes" && cluster_ips_before.as_ref() != Some(&now) {
            outputs.extend(self.reservations_changed(now));
        }
        outputs
    }

    pub fn delete_service(&mut self, service: &Service) -> Vec<Output> {
        self.delete_service_key(&key_of(service))
    }

    fn delete_service_key(&mut self, key: &ServiceKey) -> Vec<Output> {
        self.services.remove(key);
        if !self.synced {
            return Vec::new();
        }
        let mut outputs = self.reconcile_service(key);
        outputs.extend(self.offer_freed_addresses());
        outputs
    }

    /// After a Service gave addresses up: the Services still waiting for one may have it now, at once rather
    /// than at the next resync.
    fn offer_freed_addresses(&mut self) -> Vec<Output> {
        if !std::mem::take(&mut self.freed) || self.unsettled.is_empty() {
            return Vec::new();
        }
        self.reconcile_keys(self.unsettled.clone())
    }

    pub fn apply_pool(&mut self, mut pool: IPAddressPool) -> Vec<Output> {
        // Kept for its whole life, by the thousand: drop what ferrolb never reads.
        pool.metadata.managed_fields = None;
        let name = pool.name_any();
        // Our own status writes come back as watch events: only a change of spec or labels matters.
        if let Some(known) = self.pools.get_mut(&name)
            && known.object.spec == pool.spec
            && known.object.labels() == pool.labels()
        {
            known.object = pool;
            return Vec::new();
        }
        let parsed = PoolDef::from_spec(&name, &pool.spec).map(|mut def| {
            def.labels = pool.labels().clone();
            def
        });
        let mut outputs = Vec::new();
        let before = self.allocator.pool(&name).cloned();
        let first_sight = !self.pools.contains_key(&name);
        let error = match parsed {
            Ok(def) => {
                self.allocator.upsert_pool(def);
                if first_sight && let Some(status) = &pool.status {
                    // A new leader carries on where the last one left the next-fit cursor.
                    for usage in [&status.ipv4, &status.ipv6].into_iter().flatten() {
                        if let Some(next) = usage.next.as_deref().and_then(|n| n.parse().ok()) {
                            self.allocator.set_cursor(&name, next);
                        }
                    }
                }
                self.reported_pool_errors.remove(&name);
                None
            }
            Err(e) => {
                // The pool gives nothing until fixed; Services keep what they hold.
                self.allocator.remove_pool(&name);
                if self.reported_pool_errors.get(&name) != Some(&e.to_string()) {
                    self.reported_pool_errors.insert(name.clone(), e.to_string());
                    outputs.push(Output::Event(EventOut {
                        regarding: pool.object_ref(&()),
                        type_: EventType::Warning,
                        reason: reason::INVALID_POOL,
                        note: format!("{e}; the pool hands out no address until it is fixed"),
                    }));
                }
                Some(e)
            }
        };
        self.pools.insert(name.clone(), PoolRecord { object: pool, error });
        if !self.synced {
            // Overlaps and Services are settled once every pool is known (initial_sync).
            return outputs;
        }
        self.dirty_pools.insert(name.clone());
        outputs.extend(self.update_overlaps(&name));
        let after = self.allocator.pool(&name).cloned();
        outputs.extend(self.reconcile_for_pool(&name, [before.as_ref(), after.as_ref()]));
        outputs.extend(self.reserved_events());
        outputs
    }

    pub fn delete_pool(&mut self, name: &str) -> Vec<Output> {
        self.pools.remove(name);
        let before = self.allocator.remove_pool(name);
        self.reported_pool_errors.remove(name);
        self.reported_reserved.remove(name);
        // Only new overlaps are reported; a deletion can only end some, and the others' conditions say so.
        let _ = self.update_overlaps(name);
        self.overlaps.remove(name);
        if !self.synced {
            return Vec::new();
        }
        self.reconcile_for_pool(name, [before.as_ref(), None])
    }

    /// Re-settles only the Services a change of `pool` can concern: those holding an address inside its old
    /// or new ranges, those whose addresses came from it, and those still waiting for an address.
    fn reconcile_for_pool(&mut self, pool: &str, defs: [Option<&PoolDef>; 2]) -> Vec<Output> {
        let mut keys: BTreeSet<ServiceKey> = self.unsettled.clone();
        keys.extend(self.allocator.services_of_pool(pool).cloned());
        for def in defs.into_iter().flatten() {
            keys.extend(self.allocator.holders_within(def));
        }
        self.reconcile_keys(keys)
    }

    /// Settles `keys` in the order address clashes are settled (oldest first).
    fn reconcile_keys(&mut self, keys: BTreeSet<ServiceKey>) -> Vec<Output> {
        let mut ordered: Vec<(Option<jiff::Timestamp>, ServiceKey)> =
            keys.into_iter().map(|k| (self.services.get(&k).and_then(|s| s.created), k)).collect();
        ordered.sort();
        ordered.into_iter().flat_map(|(_, key)| self.reconcile_service(&key)).collect()
    }

    /// A Node's addresses, as `status.addresses` lists them: none is ever handed out.
    pub fn apply_node(&mut self, name: &str, addresses: Vec<IpAddr>) -> Vec<Output> {
        let mut addresses = addresses;
        addresses.sort();
        addresses.dedup();
        let before = self.node_addresses.insert(name.to_string(), addresses.clone()).unwrap_or_default();
        if before == addresses {
            return Vec::new();
        }
        self.reservations_changed(before.into_iter().chain(addresses).collect())
    }

    pub fn delete_node(&mut self, name: &str) -> Vec<Output> {
        let before = self.node_addresses.remove(name).unwrap_or_default();
        self.reservations_changed(before)
    }

    /// A ServiceCIDR's CIDRs (the cluster's ClusterIP ranges): none is ever handed out.
    pub fn apply_service_cidr(&mut self, name: &str, cidrs: Vec<String>) -> Vec<Output> {
        let before = self.service_cidrs.insert(name.to_string(), cidrs.clone()).unwrap_or_default();
        if before == cidrs {
            return Vec::new();
        }
        self.reservations_changed(Vec::new())
    }

    pub fn delete_service_cidr(&mut self, name: &str) -> Vec<Output> {
        if self.service_cidrs.remove(name).is_none() {
            return Vec::new();
        }
        self.reservations_changed(Vec::new())
    }

    /// After Nodes or ServiceCIDRs changed: new reservations, and the Services and pools they concern
    /// (`touched`: node addresses that came or went; CIDR changes re-check every pool).
    fn reservations_changed(&mut self, touched: Vec<IpAddr>) -> Vec<Output> {
        if !self.synced {
            return Vec::new();
        }
        self.allocator.set_reservations(self.reservations());
        let mut keys = self.unsettled.clone();
        keys.extend(self.allocator.holders_of_any(&touched));
        // Holders of every reserved address (a new Service CIDR can cover many), and of those that are no
        // longer reserved (`touched`).
        for reservation in self.allocator.reservations().list() {
            keys.extend(self.allocator.holders_between(reservation.first, reservation.last));
        }
        if touched.is_empty() {
            self.dirty_pools.extend(self.pools.keys().cloned());
        } else {
            for ip in &touched {
                let pools: Vec<String> = self.allocator.pools_containing(*ip).into_iter().map(str::to_string).collect();
                self.dirty_pools.extend(pools);
            }
        }
        let mut outputs = self.reconcile_keys(keys);
        outputs.extend(self.reserved_events());
        outputs
    }

    /// Every Node address and Service CIDR, as the allocator's reservations.
    fn reservations(&self) -> Reservations {
        let mut list = Vec::new();
        for (node, addresses) in &self.node_addresses {
            list.extend(addresses.iter().map(|ip| Reservation {
                first: *ip,
                last: *ip,
                what: format!("the address of Node {node}"),
            }));
        }
        // The API server's own Service: its ClusterIPs are in the Service CIDR, known even where ServiceCIDRs
        // are not served.
        if let Some(kubernetes) = self.services.get(&ServiceKey::new("default", "kubernetes")) {
            for &ip in &kubernetes.cluster_ips {
                list.push(Reservation {
                    first: ip,
                    last: ip,
                    what: "the ClusterIP of Service default/kubernetes".into(),
                });
            }
        }
        for (name, cidrs) in &self.service_cidrs {
            for cidr in cidrs {
                if let Ok((first, last)) = ferrolb_crds::address::parse_entry(cidr) {
                    list.push(Reservation {
                        first,
                        last,
                        what: format!("in Service CIDR {cidr} (ServiceCIDR {name})"),
                    });
                }
            }
        }
        Reservations::new(list)
    }

    /// The reserved addresses (Node addresses, Service CIDRs) `def` lists, as its `OverlapsCluster` condition
    /// and Warning name them.
    fn reserved_in(&self, def: &PoolDef) -> BTreeSet<String> {
        let reservations = self.allocator.reservations();
        let mut found = BTreeSet::new();
        for family in [Family::V4, Family::V6] {
            for (start, end) in def.ranges(family).runs() {
                for r in reservations.meeting(family, start, end) {
                    let shown = if r.first == r.last { r.first.to_string() } else { format!("{}-{}", r.first, r.last) };
                    found.insert(format!("{shown} ({})", r.what));
                }
            }
        }
        found
    }

    /// A Warning on every pool that now lists a reserved address it did not list before.
    fn reserved_events(&mut self) -> Vec<Output> {
        let mut outputs = Vec::new();
        let dirty: Vec<String> = self.dirty_pools.iter().cloned().collect();
        for name in dirty {
            let Some(def) = self.allocator.pool(&name) else { continue };
            let found = self.reserved_in(def);
            let before = self.reported_reserved.insert(name.clone(), found.clone()).unwrap_or_default();
            let new: Vec<&String> = found.difference(&before).collect();
            // A restarted controller finds them already on the pool's condition: said before.
            let already = self.pools.get(&name).and_then(|r| r.object.status.as_ref()).is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == reason::OVERLAPS_CLUSTER
                        && c.status == "True"
                        && new.iter().all(|n| c.message.contains(n.as_str()))
                })
            });
            if let (false, false, Some(record)) = (new.is_empty(), already, self.pools.get(&name)) {
                outputs.push(Output::Event(EventOut {
                    regarding: record.object.object_ref(&()),
                    type_: EventType::Warning,
                    reason: reason::POOL_OVERLAPS_CLUSTER,
                    note: format!(
                        "lists addresses of the cluster itself, which are never handed out: {}",
                        new.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                }));
            }
        }
        outputs
    }

    pub fn apply_namespace(&mut self, namespace: &Namespace) -> Vec<Output> {
        let name = namespace.name_any();
        let labels = namespace.labels().clone();
        if self.namespaces.get(&name) == Some(&labels) {
            return Vec::new();
        }
        self.namespaces.insert(name.clone(), labels);
        if !self.synced {
            return Vec::new();
        }
        let keys: Vec<ServiceKey> = self.services.keys().filter(|k| k.namespace == name).cloned().collect();
        keys.iter().flat_map(|k| self.reconcile_service(k)).collect()
    }

    pub fn apply_advertisement(&mut self, advertisement: &L2Advertisement) -> Vec<Output> {
        self.apply_any_advertisement(
            advertisement_key(L2_ADVERTISEMENT, &advertisement.name_any()),
            Advertisement::L2(advertisement.spec.clone()),
        )
    }

    pub fn apply_bgp_advertisement(&mut self, advertisement: &BGPAdvertisement) -> Vec<Output> {
        self.apply_any_advertisement(
            advertisement_key(BGP_ADVERTISEMENT, &advertisement.name_any()),
            Advertisement::Bgp(advertisement.spec.clone()),
        )
    }

    fn apply_any_advertisement(&mut self, key: String, advertisement: Advertisement) -> Vec<Output> {
        if self.advertisements.get(&key) == Some(&advertisement) {
            return Vec::new();
        }
        self.advertisements.insert(key, advertisement);
        if self.synced { self.reconcile_all() } else { Vec::new() }
    }

    /// `kind` is [`L2_ADVERTISEMENT`] or [`BGP_ADVERTISEMENT`].
    pub fn delete_advertisement(&mut self, kind: &str, name: &str) -> Vec<Output> {
        if self.advertisements.remove(&advertisement_key(kind, name)).is_none() || !self.synced {
            return Vec::new();
        }
        self.reconcile_all()
    }

    /// After a re-list: advertisements of `kind` deleted while the watch was down.
    pub fn forget_advertisements_not_in(
        &mut self,
        kind: &str,
        seen: &std::collections::HashSet<String>,
    ) -> Vec<Output> {
        let prefix = format!("{kind} ");
        let gone: Vec<String> = self
            .advertisements
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|name| !seen.contains(*name))
            .map(str::to_string)
            .collect();
        gone.iter().flat_map(|name| self.delete_advertisement(kind, name)).collect()
    }

    /// Brings `pool`'s overlaps (and its partners') up to date after it changed, marking every pool whose
    /// `Conflicting` condition changes; a Warning on each pool that now overlaps one it did not before.
    /// Costs one index lookup per run of the pool, not a comparison of every pair.
    fn update_overlaps(&mut self, pool: &str) -> Vec<Output> {
        let now = self.allocator.overlapping(pool);
        let before = self.overlaps.insert(pool.to_string(), now.clone()).unwrap_or_default();
        let mut outputs = Vec::new();
        for gone in before.difference(&now) {
            if let Some(theirs) = self.overlaps.get_mut(gone) {
                theirs.remove(pool);
            }
            self.dirty_pools.insert(gone.clone());
        }
        let new: Vec<String> = now.difference(&before).cloned().collect();
        for partner in &new {
            self.overlaps.entry(partner.clone()).or_default().insert(pool.to_string());
            self.dirty_pools.insert(partner.clone());
            outputs.extend(self.overlap_event(partner, std::slice::from_ref(&pool.to_string())));
        }
        if !new.is_empty() {
            self.dirty_pools.insert(pool.to_string());
            outputs.extend(self.overlap_event(pool, &new));
        }
        outputs
    }

    fn overlap_event(&self, pool: &str, others: &[String]) -> Option<Output> {
        let record = self.pools.get(pool)?;
        // A restarted controller finds the overlap already on the pool's condition: said before.
        let already = record.object.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == reason::CONFLICTING
                    && c.status == "True"
                    && others.iter().all(|o| c.message.contains(o.as_str()))
            })
        });
        if already {
            return None;
        }
        Some(Output::Event(EventOut {
            regarding: record.object.object_ref(&()),
            type_: EventType::Warning,
            reason: reason::POOL_OVERLAP,
            note: format!(
                "overlaps pool {}: an address in both is still given to one Service only, but the pools' counts and priorities no longer add up",
                others.join(", ")
            ),
        }))
    }

    /// The advertisements (`KIND name`) that announce `pool`'s addresses for `service` (a deleted pool is
    /// matched by its name only), as the speakers decide it.
    fn announcers(&self, pool: &str, service_labels: &BTreeMap<String, String>) -> Vec<&str> {
        let no_labels = BTreeMap::new();
        let labels = self.pools.get(pool).map_or(&no_labels, |p| p.object.labels());
        self.advertisements
            .iter()
            .filter(|(_, adv)| adv.selects_pool(pool, labels) && adv.selects_service(service_labels))
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// After a re-list: Services that were deleted while the watch was down.
    pub fn forget_services_not_in(&mut self, seen: &std::collections::HashSet<ServiceKey>) -> Vec<Output> {
        let gone: Vec<ServiceKey> = self.services.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        gone.iter().flat_map(|key| self.delete_service_key(key)).collect()
    }

    /// After a re-list: pools that were deleted while the watch was down.
    pub fn forget_pools_not_in(&mut self, seen: &std::collections::HashSet<String>) -> Vec<Output> {
        let gone: Vec<String> = self.pools.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        gone.iter().flat_map(|name| self.delete_pool(name)).collect()
    }

    /// After a re-list: Nodes deleted while the watch was down.
    pub fn forget_nodes_not_in(&mut self, seen: &std::collections::HashSet<String>) -> Vec<Output> {
        let gone: Vec<String> = self.node_addresses.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        gone.iter().flat_map(|name| self.delete_node(name)).collect()
    }

    /// After a re-list: ServiceCIDRs deleted while the watch was down.
    pub fn forget_service_cidrs_not_in(&mut self, seen: &std::collections::HashSet<String>) -> Vec<Output> {
        let gone: Vec<String> = self.service_cidrs.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        gone.iter().flat_map(|name| self.delete_service_cidr(name)).collect()
    }

    pub fn delete_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// Settles every Service again (after a pool change, and periodically as a safety net).
    pub fn reconcile_all(&mut self) -> Vec<Output> {
        self.keys_oldest_first().iter().flat_map(|key| self.reconcile_service(key)).collect()
    }

    /// Every Service, oldest first, then by namespace/name: the order in which address clashes are settled.
    fn keys_oldest_first(&self) -> Vec<ServiceKey> {
        let mut ordered: Vec<(Option<jiff::Timestamp>, &ServiceKey)> =
            self.services.iter().map(|(k, s)| (s.created, k)).collect();
        ordered.sort();
        ordered.into_iter().map(|(_, key)| key.clone()).collect()
    }

    /// Status for every pool whose counts or conditions may have changed since the last call.
    pub fn take_pool_statuses(&mut self) -> Vec<(String, IPAddressPoolStatus)> {
        let dirty = std::mem::take(&mut self.dirty_pools);
        // What the pool already shows is not written again: a restart with thousands of pools would
        // otherwise queue thousands of identical writes ahead of new Services' addresses.
        dirty
            .into_iter()
            .filter_map(|name| self.pool_status(&name).map(|s| (name, s)))
            .filter(|(name, status)| self.pools.get(name).and_then(|r| r.object.status.as_ref()) != Some(status))
            .collect()
    }

    /// (pool, family, total, in use) for every pool and family it has.
    pub fn pool_gauges(&self) -> Vec<PoolGauge> {
        let mut gauges = Vec::new();
        for def in self.allocator.pools() {
            for family in [Family::V4, Family::V6] {
                if let Some(usage) = self.allocator.usage(&def.name, family).filter(|_| def.has_family(family)) {
                    gauges.push((def.name.clone(), family, usage.total, usage.assigned));
                }
            }
        }
        gauges
    }

    /// Moves whenever a Service's addresses, condition or existence changed (see [`Engine::held_addresses`]).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Services ferrolb handles that hold no address.
    pub fn pending_services(&self) -> usize {
        self.unsettled.iter().filter(|key| self.allocator.assignment(key).is_none()).count()
    }

    /// Every address a Service holds: (Service, address, its pool, whether an L2Advertisement or BGPAdvertisement announces it).
    pub fn held_addresses(&self) -> impl Iterator<Item = (&ServiceKey, IpAddr, &str, bool)> + '_ {
        self.allocator.assignments().flat_map(move |(key, assignment)| {
            let pool = assignment.pool.as_deref().unwrap_or_default();
            let labels = self.services.get(key).map(|s| &s.labels);
            let advertised =
                assignment.pool.is_some() && !self.announcers(pool, labels.unwrap_or(&BTreeMap::new())).is_empty();
            assignment.ips.iter().map(move |ip| (key, *ip, pool, advertised))
        })
    }

    fn reconcile_service(&mut self, key: &ServiceKey) -> Vec<Output> {
        let Some(service) = self.services.get(key).cloned() else {
            // Deleted: free its addresses. Nothing to write on an object that is gone.
            if let Some(released) = self.allocator.release(key) {
                self.mark_dirty(&released.ips);
                self.freed = true;
            }
            self.reported.remove(key);
            self.unsettled.remove(key);
            self.changes += 1;
            return Vec::new();
        };
        if !self.handles(&service) {
            return self.release_unhandled(key, &service);
        }
        let namespace_labels = self.namespaces.get(&key.namespace).cloned().unwrap_or_default();
        let before = self.allocator.assignment(key).map(|a| a.ips.clone()).unwrap_or_default();
        let request = service.request(namespace_labels);
        let requested_ips = request.as_ref().is_ok_and(|r| !r.requested_ips.is_empty());
        let outcome = request
            .map_err(|e| (reason::INVALID_REQUEST.to_string(), e.to_string()))
            .and_then(|request| self.allocator.assign(&request).map_err(|e| (e.reason().to_string(), e.to_string())));
        let after = self.allocator.assignment(key).map(|a| a.ips.clone()).unwrap_or_default();
        let moved = before != after;
        if moved {
            self.mark_dirty(&before);
            self.mark_dirty(&after);
            self.freed |= before.iter().any(|ip| !after.contains(ip));
        }

        let mut outputs = Vec::new();
        let reported = self.reported.entry(key.clone()).or_default().clone();
        let held_pool = self.allocator.assignment(key).and_then(|a| a.pool.clone());
        let (status, reason, message, warning) = match &outcome {
            Ok(assignment) => self.settled(&service, assignment, requested_ips),
            Err((reason, error)) => {
                let kept = if after.is_empty() { String::new() } else { format!("; keeps {}", join(&after)) };
                let message = format!("{error}{}{kept}", self.invalid_pools_note(reason));
                ("False", reason.clone(), message, Some(reason::ALLOCATION_FAILED))
            }
        };
        if outcome.is_err() {
            self.unsettled.insert(key.clone());
        } else {
            self.unsettled.remove(key);
        }
        if let Ok(assignment) = &outcome
            && reported.ips != assignment.ips
        {
            let note = if reported.ips.is_empty() {
                format!("assigned {message}")
            } else {
                format!("moved from {} to {message}", join(&reported.ips))
            };
            outputs.push(event(&service, EventType::Normal, reason::IP_ALLOCATED, note));
        }
        if let Some(warning) = warning
            && reported.warned.as_deref() != Some(message.as_str())
        {
            outputs.push(event(&service, EventType::Warning, warning, message.clone()));
        }
        self.reported.insert(key.clone(), Reported { ips: after.clone(), warned: warning.map(|_| message.clone()) });
        let condition = self.condition(&service, CONDITION_TYPE, status, &reason, &message);
        let pool_condition =
            held_pool.map(|pool| self.condition(&service, POOL_CONDITION, "True", POOL_CONDITION_REASON, &pool));
        if let Some(status) = self.status_change(&service, after, Some(condition), pool_condition) {
            outputs.push(Output::Status(status));
        }
        if moved || !outputs.is_empty() {
            self.changes += 1;
        }
        outputs
    }

    /// The condition (status, reason, message) of a Service that holds `assignment`, and the Warning to
    /// publish when the message is new: an address that can never answer is not "True".
    fn settled(
        &self,
        service: &ServiceRecord,
        assignment: &crate::ipam::Assignment,
        requested_ips: bool,
    ) -> (&'static str, String, String, Option<&'static str>) {
        let ips = join(&assignment.ips);
        let reserved: Vec<String> = assignment
            .ips
            .iter()
            .filter_map(|ip| self.allocator.reserved_reason(*ip).map(|what| format!("{ip} is {what}")))
            .collect();
        if !reserved.is_empty() {
            let message = format!(
                "keeps {ips}, but {}: no speaker ever announces such an address; ask for another address ({}) or recreate the Service",
                reserved.join("; "),
                ferrolb_crds::annotations::LOAD_BALANCER_IPS
            );
            return ("False", reason::RESERVED_ADDRESS.into(), message, Some(reason::RESERVED_ADDRESS));
        }
        let labels = &service.labels;
        let Some(pool) = &assignment.pool else {
            let message = format!(
                "keeps {ips}, which no IPAddressPool contains and no pool is recorded for, so no L2Advertisement or BGPAdvertisement announces it: the address is unreachable; it moves only if the Service asks for another address"
            );
            return ("False", reason::OUTSIDE_POOL_UNANNOUNCED.into(), message, Some(reason::OUTSIDE_POOL));
        };
        let announcers = self.announcers(pool, labels);
        // Outside the pool it came from (shrunk or deleted), whether or not another pool lists it: it stays
        // this pool's address, announced as such.
        let own = self.allocator.pool(pool);
        let outside: Vec<IpAddr> =
            assignment.ips.iter().copied().filter(|ip| !own.is_some_and(|def| def.contains(*ip))).collect();
        if !outside.is_empty() {
            let origin = if own.is_some() {
                format!("pool {pool:?}, which it came from, no longer contains it")
            } else {
                format!("pool {pool:?}, which it came from, was deleted")
            };
            if announcers.is_empty() {
                let message = format!(
                    "keeps {} ({origin}), and no L2Advertisement or BGPAdvertisement announces pool {pool:?} for this Service: the address is unreachable; it moves only if the Service asks for another address",
                    join(&outside)
                );
                return ("False", reason::OUTSIDE_POOL_UNANNOUNCED.into(), message, Some(reason::OUTSIDE_POOL));
            }
            let message = format!(
                "keeps {} ({origin}); still announced through {}; it moves only if the Service asks for another address",
                join(&outside),
                announcers.join(", ")
            );
            return ("True", reason::OUTSIDE_POOL.into(), message, Some(reason::OUTSIDE_POOL));
        }
        let reason = if requested_ips { reason::REQUESTED } else { reason::ALLOCATED };
        let mut message = format!("{ips} from pool {pool:?}");
        if announcers.is_empty() {
            let no_labels = BTreeMap::new();
            let pool_labels = self.pools.get(pool).map_or(&no_labels, |p| p.object.labels());
            if self.advertisements.values().any(|adv| adv.selects_pool(pool, pool_labels)) {
                message.push_str(&format!(
                    "; the advertisements selecting pool {pool:?} do not select this Service (serviceSelectors), so no node announces it"
                ));
            } else {
                message.push_str(&format!(
                    "; no L2Advertisement or BGPAdvertisement selects pool {pool:?}, so no node announces it"
                ));
            }
        }
        ("True", reason.into(), message, None)
    }

    /// For a Service that got nothing: the pools that might have served it but are not used because they
    /// are invalid (a malformed selector, a bad entry), so the user looks there.
    fn invalid_pools_note(&self, reason: &str) -> String {
        if !matches!(
            reason,
            reason::NO_POOLS
                | reason::NO_ELIGIBLE_POOL
                | reason::POOL_EXHAUSTED
                | reason::FAMILY_UNAVAILABLE
                | reason::POOL_NOT_FOUND
        ) {
            return String::new();
        }
        let invalid: Vec<String> = self
            .pools
            .iter()
            .filter_map(|(name, record)| record.error.as_ref().map(|e| format!("{name:?} ({e})")))
            .take(5)
            .collect();
        if invalid.is_empty() {
            return String::new();
        }
        format!("; not used because invalid: pool {}", invalid.join(", pool "))
    }

    /// The Service is no longer ours (type or class changed): free its addresses, remove what we wrote.
    fn release_unhandled(&mut self, key: &ServiceKey, service: &ServiceRecord) -> Vec<Output> {
        let mut outputs = Vec::new();
        self.reported.remove(key);
        self.unsettled.remove(key);
        self.changes += 1;
        let released = self.allocator.release(key);
        let held = released.is_some();
        if let Some(released) = released {
            self.mark_dirty(&released.ips);
            self.freed = true;
            outputs.push(event(
                service,
                EventType::Normal,
                "IPReleased",
                format!(
                    "released {}: the Service is no longer a LoadBalancer of class {}",
                    join(&released.ips),
                    self.config.load_balancer_class
                ),
            ));
        }
        // Only what this instance held is cleared: another ferrolb instance (another class) may own the
        // status now, and its condition has the same type.
        if held && let Some(status) = self.status_change(service, Vec::new(), None, None) {
            outputs.push(Output::Status(status));
        }
        outputs
    }

    /// The status write needed to bring `service` to `ingress` + `condition`, if any.
    fn status_change(
        &self,
        service: &ServiceRecord,
        ingress: Vec<IpAddr>,
        condition: Option<Condition>,
        pool_condition: Option<Condition>,
    ) -> Option<StatusOut> {
        let same = |want: &Option<Condition>, type_: &str| match (want, service.condition(type_)) {
            (Some(want), Some(have)) => {
                want.status == have.status && want.reason == have.reason && want.message == have.message
            }
            (None, None) => true,
            _ => false,
        };
        if same(&condition, CONDITION_TYPE) && same(&pool_condition, POOL_CONDITION) && service.ingress == ingress {
            return None;
        }
        Some(StatusOut { key: service.key.clone(), ingress, condition, pool_condition })
    }

    fn condition(&self, service: &ServiceRecord, type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        // The transition time moves only when the status does.
        let last_transition_time = service
            .condition(type_)
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| (self.clock)());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time,
            observed_generation: service.generation,
        }
    }

    fn request_or_placeholder(&self, service: &ServiceRecord, held: &[IpAddr]) -> ServiceRequest {
        let labels = self.namespaces.get(&service.key.namespace).cloned().unwrap_or_default();
        service.request(labels).unwrap_or_else(|_| {
            // An unreadable request still holds its addresses, so nobody else is given them meanwhile.
            let primary = held.first().map(|ip| Family::of(*ip)).unwrap_or(Family::V4);
            let key = &service.key;
            ServiceRequest::simple(&key.namespace, &key.name, FamilyPolicy::PreferDual { primary })
        })
    }

    fn mark_dirty(&mut self, ips: &[IpAddr]) {
        for ip in ips {
            let pools: Vec<String> = self.allocator.pools_containing(*ip).into_iter().map(str::to_string).collect();
            self.dirty_pools.extend(pools);
        }
    }

    fn pool_status(&self, name: &str) -> Option<IPAddressPoolStatus> {
        let record = self.pools.get(name)?;
        let previous = record.object.status.clone().unwrap_or_default();
        let keep_time = |type_: &str, status: &str| {
            previous
                .conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| (self.clock)())
        };
        let generation = record.object.metadata.generation;
        let mut conditions = Vec::new();
        let mut status = IPAddressPoolStatus { observed_generation: generation, ..Default::default() };
        match (&record.error, self.allocator.pool(name)) {
            (Some(error), _) => {
                let message = format!("{error}; the pool hands out no address until it is fixed");
                conditions.push(pool_condition(
                    reason::READY,
                    "False",
                    error.reason(),
                    &message,
                    keep_time(reason::READY, "False"),
                    generation,
                ));
            }
            (_, Some(def)) => {
                for family in [Family::V4, Family::V6] {
                    if !def.has_family(family) {
                        continue;
                    }
                    let usage = self.allocator.usage(name, family)?;
                    let counts = UsageStatus {
                        total: usage.total.to_string(),
                        assigned: u64::try_from(usage.assigned).unwrap_or(u64::MAX),
                        available: usage.available.to_string(),
                        next: self.allocator.cursor(name, family).map(|ip| ip.to_string()),
                    };
                    match family {
                        Family::V4 => status.ipv4 = Some(counts),
                        Family::V6 => status.ipv6 = Some(counts),
                    }
                }
                let (reason, message) = if def.disabled {
                    (reason::DRAINING, "disabled: Services keep their addresses, no new address is given".to_string())
                } else {
                    (
                        reason::READY,
                        format!("{} IPv4 and {} IPv6 addresses", def.usable(Family::V4), def.usable(Family::V6)),
                    )
                };
                conditions.push(pool_condition(
                    reason::READY,
                    "True",
                    reason,
                    &message,
                    keep_time(reason::READY, "True"),
                    generation,
                ));
                let overlaps: Vec<String> = self.overlaps.get(name).into_iter().flatten().cloned().collect();
                let reserved = self.reserved_in(def);
                if reserved.is_empty() {
                    conditions.push(pool_condition(
                        reason::OVERLAPS_CLUSTER,
                        "False",
                        reason::NO_CLUSTER_ADDRESSES,
                        "lists no Node address and no Service CIDR",
                        keep_time(reason::OVERLAPS_CLUSTER, "False"),
                        generation,
                    ));
                } else {
                    let listed: Vec<&str> = reserved.iter().map(String::as_str).collect();
                    let message = format!(
                        "lists addresses of the cluster itself, which are never handed out: {}",
                        listed.join(", ")
                    );
                    conditions.push(pool_condition(
                        reason::OVERLAPS_CLUSTER,
                        "True",
                        reason::LISTS_CLUSTER_ADDRESSES,
                        &message,
                        keep_time(reason::OVERLAPS_CLUSTER, "True"),
                        generation,
                    ));
                }
                if overlaps.is_empty() {
                    conditions.push(pool_condition(
                        reason::CONFLICTING,
                        "False",
                        reason::NO_OVERLAP,
                        "overlaps no other pool",
                        keep_time(reason::CONFLICTING, "False"),
                        generation,
                    ));
                } else {
                    let message = format!(
                        "overlaps pool {}: an address in both is still given to one Service only",
                        overlaps.join(", ")
                    );
                    conditions.push(pool_condition(
                        reason::CONFLICTING,
                        "True",
                        reason::OVERLAPS,
                        &message,
                        keep_time(reason::CONFLICTING, "True"),
                        generation,
                    ));
                }
            }
            _ => return None,
        }
        status.conditions = conditions;
        Some(status)
    }
}

fn pool_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    time: Time,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: time,
        observed_generation: generation,
    }
}

fn event(service: &ServiceRecord, type_: EventType, reason: &'static str, note: String) -> Output {
    Output::Event(EventOut { regarding: service.object_ref(), type_, reason, note })
}

pub fn key_of(service: &Service) -> ServiceKey {
    ServiceKey::new(service.namespace().unwrap_or_else(|| "default".into()), service.name_any())
}

pub use ferrolb_crds::service::ingress_ips;

fn join(ips: &[IpAddr]) -> String {
    ips.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
}

pub const L2_ADVERTISEMENT: &str = "L2Advertisement";
pub const BGP_ADVERTISEMENT: &str = "BGPAdvertisement";

fn advertisement_key(kind: &str, name: &str) -> String {
    format!("{kind} {name}")
}

/// What the controller reads of an advertisement of either mode: which pools and Services it announces.
#[derive(Debug, Clone, PartialEq)]
enum Advertisement {
    L2(L2AdvertisementSpec),
    Bgp(BGPAdvertisementSpec),
}

impl Advertisement {
    fn selects_pool(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Advertisement::L2(spec) => spec.selects_pool(name, labels),
            Advertisement::Bgp(spec) => spec.selects_pool(name, labels),
        }
    }

    fn selects_service(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Advertisement::L2(spec) => spec.selects_service(labels),
            Advertisement::Bgp(spec) => spec.selects_service(labels),
        }
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
