//! The controller's brain, with no I/O: it is fed Services, pools and Namespaces as the watches see them and
//! answers with what to write — Service status, Events, pool status. The run loop feeds it and a writer task
//! applies its outputs, so everything it decides is unit-tested here without an API server.
//!
//! It never re-IPs a Service by itself: addresses move only when the Service asks for something its
//! addresses no longer satisfy, and a failure keeps what the Service had.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ferrolb_crds::pool::{FamilyUsage as UsageStatus, IPAddressPoolStatus};
use ferrolb_crds::{IPAddressPool, L2Advertisement, L2AdvertisementSpec};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{Resource, ResourceExt};

use crate::ipam::{AllocError, Allocator, Family, FamilyPolicy, PoolDef, PoolError, ServiceKey, ServiceRequest};

/// The Service status condition ferrolb owns.
pub const CONDITION_TYPE: &str = "ferrolb.io/IPAllocated";

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

/// The status ferrolb wants on a Service: its ingress and ferrolb's condition. `condition: None` with no
/// ingress means "remove what ferrolb wrote".
#[derive(Debug, Clone, PartialEq)]
pub struct StatusOut {
    pub key: ServiceKey,
    pub ingress: Vec<IpAddr>,
    pub condition: Option<Condition>,
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
    failure: Option<String>,
    /// Addresses it keeps that no pool contains any more.
    outside: Vec<String>,
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
    services: BTreeMap<ServiceKey, Service>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pools: BTreeMap<String, PoolRecord>,
    advertisements: BTreeMap<String, L2AdvertisementSpec>,
    reported: HashMap<ServiceKey, Reported>,
    reported_pool_errors: HashMap<String, String>,
    reported_overlaps: HashMap<String, Vec<String>>,
    dirty_pools: BTreeSet<String>,
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
            reported: HashMap::new(),
            reported_pool_errors: HashMap::new(),
            reported_overlaps: HashMap::new(),
            dirty_pools: BTreeSet::new(),
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
    pub fn handles(&self, service: &Service) -> bool {
        let Some(spec) = &service.spec else { return false };
        if spec.type_.as_deref() != Some("LoadBalancer") {
            return false;
        }
        match spec.load_balancer_class.as_deref() {
            Some(class) => class == self.config.load_balancer_class,
            None => self.config.handle_unset_class,
        }
    }

    /// Called once every watch has listed what exists: takes back every address already in a Service's status
    /// (oldest Service first, so the older keeps a clashing address), then settles every Service.
    pub fn initial_sync(&mut self) -> Vec<Output> {
        let mut outputs = Vec::new();
        let keys = self.keys_oldest_first();
        for key in &keys {
            let Some(service) = self.services.get(key) else { continue };
            let held = ingress_ips(service);
            if held.is_empty() || !self.handles(service) {
                continue;
            }
            let request = self.request_or_placeholder(service, &held);
            match self.allocator.restore(&request, &held) {
                Ok(_) => {
                    self.reported.insert(key.clone(), Reported { ips: held, ..Default::default() });
                }
                Err(conflict) => {
                    // What its status said, so the allocation Event reads "moved from ...".
                    self.reported.insert(key.clone(), Reported { ips: held, ..Default::default() });
                    outputs.push(Output::Event(EventOut {
                        regarding: service.object_ref(&()),
                        type_: EventType::Warning,
                        reason: "IPConflict",
                        note: format!(
                            "{}; {} was created first and keeps it, this Service gets another address",
                            conflict, conflict.holder
                        ),
                    }));
                }
            }
        }
        self.synced = true;
        self.dirty_pools.extend(self.pools.keys().cloned());
        for key in keys {
            outputs.extend(self.reconcile_service(&key));
        }
        outputs
    }

    pub fn apply_service(&mut self, service: Service) -> Vec<Output> {
        let key = key_of(&service);
        self.services.insert(key.clone(), service);
        if !self.synced {
            return Vec::new();
        }
        self.reconcile_service(&key)
    }

    pub fn delete_service(&mut self, service: &Service) -> Vec<Output> {
        let key = key_of(service);
        self.services.remove(&key);
        if !self.synced {
            return Vec::new();
        }
        self.reconcile_service(&key)
    }

    pub fn apply_pool(&mut self, pool: IPAddressPool) -> Vec<Output> {
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
        let error = match parsed {
            Ok(def) => {
                self.allocator.upsert_pool(def);
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
                        reason: "InvalidPool",
                        note: format!("{e}; the pool hands out no address until it is fixed"),
                    }));
                }
                Some(e)
            }
        };
        self.pools.insert(name.clone(), PoolRecord { object: pool, error });
        // Overlaps change for the others too.
        self.dirty_pools.extend(self.pools.keys().cloned());
        outputs.extend(self.overlap_events());
        if self.synced {
            outputs.extend(self.reconcile_all());
        }
        outputs
    }

    pub fn delete_pool(&mut self, name: &str) -> Vec<Output> {
        self.pools.remove(name);
        self.allocator.remove_pool(name);
        self.reported_pool_errors.remove(name);
        self.reported_overlaps.remove(name);
        self.dirty_pools.extend(self.pools.keys().cloned());
        // Only new overlaps are reported; a deletion can only end some, and the condition says so.
        let _ = self.overlap_events();
        if !self.synced {
            return Vec::new();
        }
        self.reconcile_all()
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
        let name = advertisement.name_any();
        if self.advertisements.get(&name) == Some(&advertisement.spec) {
            return Vec::new();
        }
        self.advertisements.insert(name, advertisement.spec.clone());
        if self.synced { self.reconcile_all() } else { Vec::new() }
    }

    pub fn delete_advertisement(&mut self, name: &str) -> Vec<Output> {
        if self.advertisements.remove(name).is_none() || !self.synced {
            return Vec::new();
        }
        self.reconcile_all()
    }

    /// After a re-list: advertisements deleted while the watch was down.
    pub fn forget_advertisements_not_in(&mut self, seen: &std::collections::HashSet<String>) -> Vec<Output> {
        let gone: Vec<String> = self.advertisements.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        gone.iter().flat_map(|name| self.delete_advertisement(name)).collect()
    }

    /// A Warning on every pool that now overlaps a pool it did not overlap before.
    fn overlap_events(&mut self) -> Vec<Output> {
        let mut outputs = Vec::new();
        let current: Vec<(String, Vec<String>)> =
            self.allocator.pools().map(|def| (def.name.clone(), def.overlaps(self.allocator.pools()))).collect();
        for (name, overlaps) in current {
            let before = self.reported_overlaps.insert(name.clone(), overlaps.clone()).unwrap_or_default();
            let new: Vec<&String> = overlaps.iter().filter(|o| !before.contains(o)).collect();
            if let (false, Some(record)) = (new.is_empty(), self.pools.get(&name)) {
                outputs.push(Output::Event(EventOut {
                    regarding: record.object.object_ref(&()),
                    type_: EventType::Warning,
                    reason: "PoolOverlap",
                    note: format!(
                        "overlaps pool {}: an address in both is still given to one Service only, but the pools' counts and priorities no longer add up",
                        new.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                }));
            }
        }
        outputs
    }

    /// Whether some L2Advertisement announces the addresses of `pool`.
    fn advertised(&self, pool: &str) -> bool {
        let labels = self.pools.get(pool).map(|p| p.object.labels().clone()).unwrap_or_default();
        self.advertisements.values().any(|adv| adv.selects_pool(pool, &labels))
    }

    /// After a re-list: Services that were deleted while the watch was down.
    pub fn forget_services_not_in(&mut self, seen: &std::collections::HashSet<ServiceKey>) -> Vec<Output> {
        let gone: Vec<Service> =
            self.services.iter().filter(|(k, _)| !seen.contains(*k)).map(|(_, s)| s.clone()).collect();
        gone.iter().flat_map(|s| self.delete_service(s)).collect()
    }

    /// After a re-list: pools that were deleted while the watch was down.
    pub fn forget_pools_not_in(&mut self, seen: &std::collections::HashSet<String>) -> Vec<Output> {
        let gone: Vec<String> = self.pools.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        gone.iter().flat_map(|name| self.delete_pool(name)).collect()
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
            self.services.iter().map(|(k, s)| (s.metadata.creation_timestamp.clone().map(|t| t.0), k)).collect();
        ordered.sort();
        ordered.into_iter().map(|(_, key)| key.clone()).collect()
    }

    /// Status for every pool whose counts or conditions may have changed since the last call.
    pub fn take_pool_statuses(&mut self) -> Vec<(String, IPAddressPoolStatus)> {
        let dirty = std::mem::take(&mut self.dirty_pools);
        dirty.into_iter().filter_map(|name| self.pool_status(&name).map(|s| (name, s))).collect()
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

    fn reconcile_service(&mut self, key: &ServiceKey) -> Vec<Output> {
        let Some(service) = self.services.get(key).cloned() else {
            // Deleted: free its addresses. Nothing to write on an object that is gone.
            if let Some(released) = self.allocator.release(key) {
                self.mark_dirty(&released.ips);
            }
            self.reported.remove(key);
            return Vec::new();
        };
        if !self.handles(&service) {
            return self.release_unhandled(key, &service);
        }
        let namespace_labels = self.namespaces.get(&key.namespace).cloned().unwrap_or_default();
        let before = self.allocator.assignment(key).map(|a| a.ips.clone()).unwrap_or_default();
        let request = ServiceRequest::from_service(&service, namespace_labels);
        let requested_ips = request.as_ref().is_ok_and(|r| !r.requested_ips.is_empty());
        let outcome = request
            .map_err(|e| ("InvalidRequest".to_string(), e.to_string()))
            .and_then(|request| self.allocator.assign(&request).map_err(|e| (reason_of(&e), e.to_string())));
        let after = self.allocator.assignment(key).map(|a| a.ips.clone()).unwrap_or_default();
        if before != after {
            self.mark_dirty(&before);
            self.mark_dirty(&after);
        }

        let mut outputs = Vec::new();
        let reported = self.reported.entry(key.clone()).or_default().clone();
        let (status, reason, message) = match &outcome {
            Ok(assignment) => {
                let outside: Vec<String> = assignment
                    .ips
                    .iter()
                    .filter(|ip| self.allocator.pools_containing(**ip).is_empty())
                    .map(|ip| ip.to_string())
                    .collect();
                if !outside.is_empty() {
                    (
                        "True",
                        "OutsidePool".to_string(),
                        format!(
                            "keeps {}, which no IPAddressPool contains any more (its pool was deleted or shrunk); it moves only if the Service asks for another address",
                            outside.join(", ")
                        ),
                    )
                } else {
                    let reason = if requested_ips { "Requested" } else { "Allocated" };
                    let pool = assignment.pool.clone().unwrap_or_default();
                    let mut message = format!("{} from pool {pool:?}", join(&assignment.ips));
                    if !self.advertised(&pool) {
                        message
                            .push_str(&format!("; no L2Advertisement selects pool {pool:?}, so no node announces it"));
                    }
                    ("True", reason.to_string(), message)
                }
            }
            Err((reason, error)) => {
                let kept = if after.is_empty() { String::new() } else { format!("; keeps {}", join(&after)) };
                ("False", reason.clone(), format!("{error}{kept}"))
            }
        };
        let outside: Vec<String> = match &outcome {
            Ok(assignment) => assignment
                .ips
                .iter()
                .filter(|ip| self.allocator.pools_containing(**ip).is_empty())
                .map(|ip| ip.to_string())
                .collect(),
            Err(_) => Vec::new(),
        };
        if !outside.is_empty() && outside != reported.outside {
            outputs.push(event(&service, EventType::Warning, "OutsidePool", message.clone()));
        }
        match &outcome {
            Ok(assignment) if reported.ips != assignment.ips => {
                let note = if reported.ips.is_empty() {
                    format!("assigned {}", message)
                } else {
                    format!("moved from {} to {}", join(&reported.ips), message)
                };
                outputs.push(event(&service, EventType::Normal, "IPAllocated", note));
            }
            Err(_) if reported.failure.as_deref() != Some(message.as_str()) => {
                outputs.push(event(&service, EventType::Warning, "AllocationFailed", message.clone()));
            }
            _ => {}
        }
        self.reported.insert(
            key.clone(),
            Reported { ips: after.clone(), failure: outcome.as_ref().err().map(|_| message.clone()), outside },
        );
        let condition = self.condition(&service, status, &reason, &message);
        if let Some(status) = self.status_change(&service, after, Some(condition)) {
            outputs.push(Output::Status(status));
        }
        outputs
    }

    /// The Service is no longer ours (type or class changed): free its addresses, remove what we wrote.
    fn release_unhandled(&mut self, key: &ServiceKey, service: &Service) -> Vec<Output> {
        let mut outputs = Vec::new();
        self.reported.remove(key);
        let released = self.allocator.release(key);
        let held = released.is_some();
        if let Some(released) = released {
            self.mark_dirty(&released.ips);
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
        if held && let Some(status) = self.status_change(service, Vec::new(), None) {
            outputs.push(Output::Status(status));
        }
        outputs
    }

    /// The status write needed to bring `service` to `ingress` + `condition`, if any.
    fn status_change(
        &self,
        service: &Service,
        ingress: Vec<IpAddr>,
        condition: Option<Condition>,
    ) -> Option<StatusOut> {
        let current_condition = our_condition(service);
        let same_condition = match (&condition, current_condition) {
            (Some(want), Some(have)) => {
                want.status == have.status && want.reason == have.reason && want.message == have.message
            }
            (None, None) => true,
            _ => false,
        };
        if same_condition && ingress_ips(service) == ingress {
            return None;
        }
        Some(StatusOut { key: key_of(service), ingress, condition })
    }

    fn condition(&self, service: &Service, status: &str, reason: &str, message: &str) -> Condition {
        // The transition time moves only when the status does.
        let last_transition_time = our_condition(service)
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| (self.clock)());
        Condition {
            type_: CONDITION_TYPE.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time,
            observed_generation: service.metadata.generation,
        }
    }

    fn request_or_placeholder(&self, service: &Service, held: &[IpAddr]) -> ServiceRequest {
        let labels =
            self.namespaces.get(service.namespace().as_deref().unwrap_or_default()).cloned().unwrap_or_default();
        ServiceRequest::from_service(service, labels).unwrap_or_else(|_| {
            // An unreadable request still holds its addresses, so nobody else is given them meanwhile.
            let primary = held.first().map(|ip| Family::of(*ip)).unwrap_or(Family::V4);
            let key = key_of(service);
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
                let message = error.to_string();
                conditions.push(pool_condition(
                    "Ready",
                    "False",
                    "InvalidAddresses",
                    &message,
                    keep_time("Ready", "False"),
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
                    };
                    match family {
                        Family::V4 => status.ipv4 = Some(counts),
                        Family::V6 => status.ipv6 = Some(counts),
                    }
                }
                let (reason, message) = if def.disabled {
                    ("Draining", "disabled: Services keep their addresses, no new address is given".to_string())
                } else {
                    ("Ready", format!("{} IPv4 and {} IPv6 addresses", def.usable(Family::V4), def.usable(Family::V6)))
                };
                conditions.push(pool_condition(
                    "Ready",
                    "True",
                    reason,
                    &message,
                    keep_time("Ready", "True"),
                    generation,
                ));
                let overlaps = def.overlaps(self.allocator.pools());
                if overlaps.is_empty() {
                    conditions.push(pool_condition(
                        "Conflicting",
                        "False",
                        "NoOverlap",
                        "overlaps no other pool",
                        keep_time("Conflicting", "False"),
                        generation,
                    ));
                } else {
                    let message = format!(
                        "overlaps pool {}: an address in both is still given to one Service only",
                        overlaps.join(", ")
                    );
                    conditions.push(pool_condition(
                        "Conflicting",
                        "True",
                        "Overlaps",
                        &message,
                        keep_time("Conflicting", "True"),
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

fn event(service: &Service, type_: EventType, reason: &'static str, note: String) -> Output {
    Output::Event(EventOut { regarding: service.object_ref(&()), type_, reason, note })
}

pub fn key_of(service: &Service) -> ServiceKey {
    ServiceKey::new(service.namespace().unwrap_or_else(|| "default".into()), service.name_any())
}

pub use ferrolb_crds::service::ingress_ips;

fn our_condition(service: &Service) -> Option<&Condition> {
    service.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == CONDITION_TYPE)
}

/// `pool_exhausted` → `PoolExhausted`: Event and condition reasons are CamelCase.
fn reason_of(error: &AllocError) -> String {
    error
        .kind()
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
