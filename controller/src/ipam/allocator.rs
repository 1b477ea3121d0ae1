//! The allocator: pools and Services in, addresses out. Deterministic (same inputs, same answers), sticky
//! (a Service keeps its addresses until it stops asking for them, whatever happens to the pools), and it
//! never hands one address to two Services unless both may share it.
//!
//! Pool order: pools whose `serviceAllocation` the Service matches, by priority (unset last) then name; then
//! the unrestricted auto-assign pools by name. Within a pool a next-fit cursor per family, so an address
//! just released is not handed to the next Service at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use ferrolb_crds::{address, selector};

use super::index::PoolIndex;
use super::pool::PoolDef;
use super::ranges::{Family, RunSet, from_u128, to_u128};
use super::request::{FamilyPolicy, PortKey, ServiceKey, ServiceRequest};
use super::reserved::Reservations;

/// The addresses a Service holds and the pool they came from (`None`: restored from a status that names no
/// pool, and no pool contains them; the Service keeps them). The pool is recorded on the Service
/// (`ferrolb.io/AddressPool` condition) so it is the same after a restart, whatever the pools say by then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub pool: Option<String>,
    /// IPv4 first.
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("no IPAddressPool exists")]
    NoPools,
    #[error("no pool may serve this Service: {0}")]
    NoEligiblePool(String),
    #[error("pool {0:?} does not exist")]
    PoolNotFound(String),
    #[error("pool {pool:?} is disabled (draining): it gives no new addresses")]
    PoolDisabled { pool: String },
    #[error("pool {pool:?} does not serve this Service: {reason}")]
    PoolNotAllowed { pool: String, reason: String },
    #[error("no {family} address available: {pools} exhausted")]
    Exhausted { family: Family, pools: String },
    #[error("no pool the Service may use has {family} addresses (ipFamilyPolicy {policy})")]
    FamilyUnavailable { family: Family, policy: &'static str },
    #[error("requested IP {ip} is in no pool")]
    RequestedIpNotInPool { ip: IpAddr },
    #[error("requested IP {ip} is never handed out: it is {what}")]
    RequestedIpReserved { ip: IpAddr, what: String },
    #[error("requested IP {ip} is already used by {holder}: {reason}")]
    RequestedIpInUse { ip: IpAddr, holder: ServiceKey, reason: String },
    #[error("requested IPs {ips} come from different pools ({pools}); they must share one pool")]
    RequestedIpsSplitAcrossPools { ips: String, pools: String },
    #[error("RequireDualStack needs one IPv4 and one IPv6 address in the requested IPs, got {0}")]
    RequestedIpsNotDualStack(String),
}

impl AllocError {
    /// The condition and Event reason that says why (see [`ferrolb_crds::reason`]).
    pub fn reason(&self) -> &'static str {
        use ferrolb_crds::reason;
        match self {
            Self::NoPools => reason::NO_POOLS,
            Self::NoEligiblePool(_) => reason::NO_ELIGIBLE_POOL,
            Self::PoolNotFound(_) => reason::POOL_NOT_FOUND,
            Self::PoolDisabled { .. } => reason::POOL_DISABLED,
            Self::PoolNotAllowed { .. } => reason::POOL_NOT_ALLOWED,
            Self::Exhausted { .. } => reason::POOL_EXHAUSTED,
            Self::FamilyUnavailable { .. } => reason::FAMILY_UNAVAILABLE,
            Self::RequestedIpNotInPool { .. } => reason::REQUESTED_IP_NOT_IN_POOL,
            Self::RequestedIpReserved { .. } => reason::REQUESTED_IP_RESERVED,
            Self::RequestedIpInUse { .. } => reason::REQUESTED_IP_IN_USE,
            Self::RequestedIpsSplitAcrossPools { .. } => reason::REQUESTED_IPS_SPLIT,
            Self::RequestedIpsNotDualStack(_) => reason::REQUESTED_IPS_NOT_DUAL_STACK,
        }
    }
}

/// Why a Service's addresses from status could not be restored: another Service holds one of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ip} is already held by {holder}: {reason}")]
pub struct RestoreConflict {
    pub ip: IpAddr,
    pub holder: ServiceKey,
    pub reason: String,
}

/// Address counts of one family of one pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FamilyUsage {
    /// Addresses the pool can hand out.
    pub total: u128,
    /// Of those, held by Services.
    pub assigned: u128,
    pub available: u128,
}

#[derive(Debug, Clone)]
struct Holder {
    key: ServiceKey,
    sharing_key: Option<String>,
    ports: Vec<PortKey>,
    selector: String,
    local: bool,
}

impl Holder {
    fn of(request: &ServiceRequest) -> Self {
        Self {
            key: request.key.clone(),
            sharing_key: request.sharing_key.clone(),
            ports: request.ports.clone(),
            selector: request.selector.clone(),
            local: request.traffic_policy_local,
        }
    }

    /// Why `request` may not share this holder's address, if it may not.
    fn sharing_refusal(&self, request: &ServiceRequest) -> Option<String> {
        let (Some(theirs), Some(ours)) = (&self.sharing_key, &request.sharing_key) else {
            return Some("sharing needs the same allow-shared-ip key on both Services".into());
        };
        if theirs != ours {
            return Some(format!("its allow-shared-ip key is {theirs:?}, not {ours:?}"));
        }
        if let Some(port) = self.ports.iter().find(|p| request.ports.contains(p)) {
            return Some(format!("both use port {}/{}", port.protocol, port.port));
        }
        if (self.local || request.traffic_policy_local)
            && (self.selector != request.selector || self.key.namespace != request.key.namespace)
        {
            return Some(
                "with externalTrafficPolicy Local, Services sharing an IP must select the same endpoints".into(),
            );
        }
        None
    }
}

#[derive(Debug, Clone)]
struct PoolState {
    def: PoolDef,
    /// Next candidate per family (next-fit).
    cursor: [u128; 2],
    /// Addresses of this pool (that it may hand out) held by Services, per family.
    assigned: [u128; 2],
}

#[derive(Debug, Default)]
pub struct Allocator {
    pools: BTreeMap<String, PoolState>,
    /// Built on first use after the pools change, so loading thousands of pools costs one build, not one
    /// per pool.
    index: OnceLock<PoolIndex>,
    /// The cluster's own addresses (Nodes, Service CIDRs): never handed out.
    reserved: Reservations,
    /// The Services holding addresses from each pool.
    by_pool: HashMap<String, BTreeSet<ServiceKey>>,
    /// Every address held, per family, as runs: finding the next free address skips a whole run at once.
    used: [RunSet; 2],
    /// A Service's holder is shared by each of its addresses and its entry in `services`.
    holders: BTreeMap<IpAddr, Vec<Arc<Holder>>>,
    /// Addresses held by Services with each sharing key, to reuse them first.
    shared: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Each Service's addresses, and the sharing terms it holds them under.
    services: HashMap<ServiceKey, (Assignment, Arc<Holder>)>,
}

impl Allocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a pool. Services keep their addresses whatever the new definition says.
    pub fn upsert_pool(&mut self, def: PoolDef) {
        let cursor = self.pools.get(&def.name).map(|p| p.cursor).unwrap_or([0, 0]);
        let mut assigned = [0u128; 2];
        for family in [Family::V4, Family::V6] {
            for (start, end) in def.ranges(family).runs() {
                assigned[family.slot()] +=
                    self.held_in(family, start, end).filter(|(ip, _)| def.contains(**ip)).count() as u128;
            }
        }
        self.pools.insert(def.name.clone(), PoolState { def, cursor, assigned });
        self.index = OnceLock::new();
    }

    /// Removes a pool. Services keep their addresses (they are then in no pool, and say so).
    pub fn remove_pool(&mut self, name: &str) -> Option<PoolDef> {
        let removed = self.pools.remove(name).map(|p| p.def);
        if removed.is_some() {
            self.index = OnceLock::new();
        }
        removed
    }

    fn index(&self) -> &PoolIndex {
        self.index.get_or_init(|| PoolIndex::build(self.pools.values().map(|p| &p.def)))
    }

    /// Where the next-fit search of `pool` starts for `family` (the address after the last one handed out).
    pub fn cursor(&self, pool: &str, family: Family) -> Option<IpAddr> {
        let value = self.pools.get(pool)?.cursor[family.slot()];
        from_u128(family, value)
    }

    /// Restores a pool's cursor (kept in its status), so a restart does not hand out a just-released
    /// address at once.
    pub fn set_cursor(&mut self, pool: &str, ip: IpAddr) {
        if let Some(state) = self.pools.get_mut(pool) {
            state.cursor[Family::of(ip).slot()] = to_u128(ip);
        }
    }

    /// Replaces the cluster's reserved addresses. Services holding one keep it (the engine says why it is
    /// not announced); nothing new is handed out from them.
    pub fn set_reservations(&mut self, reserved: Reservations) {
        self.reserved = reserved;
    }

    pub fn reservations(&self) -> &Reservations {
        &self.reserved
    }

    /// Why `ip` must never be a VIP, if so: special-use, the cluster's own, or withheld by every pool that
    /// lists it (network/broadcast of its CIDR).
    pub fn reserved_reason(&self, ip: IpAddr) -> Option<String> {
        if let Some(what) = address::special_use(ip) {
            return Some(what.to_string());
        }
        if let Some(what) = self.reserved.why(ip) {
            return Some(what.to_string());
        }
        // Called for every held address on every reconcile: the index answers the common case (some pool
        // hands it out) before any scan of the pools' withheld addresses.
        if !self.pools_containing(ip).is_empty() {
            return None;
        }
        self.pools.values().find_map(|p| p.def.withheld_reason(ip))
    }

    /// Names of the other pools whose addresses overlap `pool`'s.
    pub fn overlapping(&self, pool: &str) -> BTreeSet<String> {
        let Some(state) = self.pools.get(pool) else { return BTreeSet::new() };
        let index = self.index();
        let mut names = BTreeSet::new();
        for family in [Family::V4, Family::V6] {
            for (start, end) in state.def.ranges(family).runs() {
                names.extend(index.overlapping(family, start, end).into_iter().map(str::to_string));
            }
        }
        names.remove(pool);
        names
    }

    /// Services whose addresses came from `pool`.
    pub fn services_of_pool(&self, pool: &str) -> impl Iterator<Item = &ServiceKey> {
        self.by_pool.get(pool).into_iter().flatten()
    }

    /// Services holding an address inside `def`'s ranges.
    pub fn holders_within(&self, def: &PoolDef) -> BTreeSet<ServiceKey> {
        let mut keys = BTreeSet::new();
        for family in [Family::V4, Family::V6] {
            for (start, end) in def.ranges(family).runs() {
                keys.extend(self.held_in(family, start, end).flat_map(|(_, h)| h.iter().map(|h| h.key.clone())));
            }
        }
        keys
    }

    /// Services holding an address in `first..=last` (one family).
    pub fn holders_between(&self, first: IpAddr, last: IpAddr) -> BTreeSet<ServiceKey> {
        let family = Family::of(first);
        self.held_in(family, to_u128(first), to_u128(last)).flat_map(|(_, h)| h.iter().map(|h| h.key.clone())).collect()
    }

    /// The held addresses of `family` in `start..=end`, with their holders.
    fn held_in(&self, family: Family, start: u128, end: u128) -> impl Iterator<Item = (&IpAddr, &Vec<Arc<Holder>>)> {
        let bounds = from_u128(family, start).zip(from_u128(family, end)).filter(|(lo, hi)| lo <= hi);
        bounds.into_iter().flat_map(move |(lo, hi)| self.holders.range(lo..=hi))
    }

    /// Services holding one of `ips`.
    pub fn holders_of_any(&self, ips: &[IpAddr]) -> BTreeSet<ServiceKey> {
        ips.iter().flat_map(|ip| self.holders.get(ip).into_iter().flatten()).map(|h| h.key.clone()).collect()
    }

    pub fn pool(&self, name: &str) -> Option<&PoolDef> {
        self.pools.get(name).map(|p| &p.def)
    }

    pub fn pools(&self) -> impl Iterator<Item = &PoolDef> {
        self.pools.values().map(|p| &p.def)
    }

    pub fn assignment(&self, key: &ServiceKey) -> Option<&Assignment> {
        self.services.get(key).map(|(assignment, _)| assignment)
    }

    pub fn assignments(&self) -> impl Iterator<Item = (&ServiceKey, &Assignment)> {
        self.services.iter().map(|(key, (assignment, _))| (key, assignment))
    }

    /// The Services holding `ip`.
    pub fn holders_of(&self, ip: IpAddr) -> Vec<&ServiceKey> {
        self.holders.get(&ip).map(|h| h.iter().map(|h| &h.key).collect()).unwrap_or_default()
    }

    /// Names of the pools that may hand out `ip`.
    pub fn pools_containing(&self, ip: IpAddr) -> Vec<&str> {
        let family = Family::of(ip);
        self.index()
            .containing(family, to_u128(ip))
            .into_iter()
            .filter(|name| self.pools.get(*name).is_some_and(|p| p.def.contains(ip)))
            .collect()
    }

    pub fn usage(&self, pool: &str, family: Family) -> Option<FamilyUsage> {
        let state = self.pools.get(pool)?;
        let mut total = state.def.usable(family);
        for (start, end) in state.def.ranges(family).runs() {
            for (lo, hi) in self.reserved.runs_in(family, start, end) {
                total = total.saturating_sub(state.def.hands_out_in(family, lo, hi));
            }
        }
        let assigned = state.assigned[family.slot()];
        Some(FamilyUsage { total, assigned, available: total.saturating_sub(assigned) })
    }

    /// Gives `request` its addresses: the ones it already holds if they still fit what it asks, else new
    /// ones. On failure the Service keeps what it held.
    pub fn assign(&mut self, request: &ServiceRequest) -> Result<Assignment, AllocError> {
        if let Some((current, terms)) = self.services.get(&request.key).cloned() {
            if self.still_fits(request, &current) {
                return Ok(self.complete_dual_stack(request, current));
            }
            self.release(&request.key);
            return match self.allocate(request) {
                Ok(assignment) => Ok(assignment),
                Err(e) => {
                    // Back exactly as it was, under the terms it held it with, not the new request's.
                    self.record(terms, &current);
                    Err(e)
                }
            };
        }
        self.allocate(request)
    }

    /// Re-takes the addresses a Service had in its status (start-up, leader change), whether or not a pool
    /// still holds them, with the pool they came from (`origin`, as recorded on the Service) whatever the
    /// pools say now, so that a restart never moves an address. Without a record (a status written before
    /// pools were recorded) the pool the Service asks for is taken at its word, else the first pool, in the
    /// Service's order, that contains them. Call in Service creation order: on a clash, the older Service
    /// keeps the address.
    pub fn restore(
        &mut self,
        request: &ServiceRequest,
        ips: &[IpAddr],
        origin: Option<&str>,
    ) -> Result<Assignment, RestoreConflict> {
        self.release(&request.key);
        for ip in ips {
            if let Some((holder, reason)) = self.sharing_refusal(*ip, request) {
                return Err(RestoreConflict { ip: *ip, holder, reason });
            }
        }
        let mut ips = ips.to_vec();
        ips.sort_by_key(|ip| (Family::of(*ip), *ip));
        ips.dedup();
        let pool = origin.map(str::to_string).or_else(|| request.requested_pool.clone()).or_else(|| {
            let first = ips.first()?;
            let mut containing: Vec<&PoolDef> = self
                .pools_containing(*first)
                .into_iter()
                .filter_map(|name| self.pools.get(name).map(|p| &p.def))
                .filter(|def| ips.iter().all(|ip| def.contains(*ip)))
                .collect();
            // Pools the Service may be given addresses from first, in its order; then any, by name.
            containing.sort_by_key(|def| (self.eligibility(def, request, false).is_err(), sort_key(def)));
            containing.first().map(|def| def.name.clone())
        });
        let assignment = Assignment { pool, ips };
        self.record(Arc::new(Holder::of(request)), &assignment);
        Ok(assignment)
    }

    /// Frees what a Service holds (an address shared with others stays in use for them).
    pub fn release(&mut self, key: &ServiceKey) -> Option<Assignment> {
        let (assignment, _) = self.services.remove(key)?;
        if let Some(pool) = &assignment.pool
            && let Some(keys) = self.by_pool.get_mut(pool)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_pool.remove(pool);
            }
        }
        for ip in &assignment.ips {
            let Some(holders) = self.holders.get_mut(ip) else { continue };
            if let Some(pos) = holders.iter().position(|h| &h.key == key) {
                let holder = holders.remove(pos);
                if let Some(sharing_key) = &holder.sharing_key
                    && !holders.iter().any(|h| h.sharing_key.as_ref() == Some(sharing_key))
                    && let Some(set) = self.shared.get_mut(sharing_key)
                {
                    set.remove(ip);
                    if set.is_empty() {
                        self.shared.remove(sharing_key);
                    }
                }
            }
            if holders.is_empty() {
                self.holders.remove(ip);
                let family = Family::of(*ip);
                self.used[family.slot()].remove(to_u128(*ip));
                for name in self.pool_names_containing(*ip) {
                    if let Some(pool) = self.pools.get_mut(&name) {
                        pool.assigned[family.slot()] = pool.assigned[family.slot()].saturating_sub(1);
                    }
                }
            }
        }
        Some(assignment)
    }

    /// The first other holder of `ip` that `request` may not share it with, and why.
    fn sharing_refusal(&self, ip: IpAddr, request: &ServiceRequest) -> Option<(ServiceKey, String)> {
        self.holders
            .get(&ip)?
            .iter()
            .filter(|h| h.key != request.key)
            .find_map(|h| h.sharing_refusal(request).map(|reason| (h.key.clone(), reason)))
    }

    fn still_fits(&self, request: &ServiceRequest, current: &Assignment) -> bool {
        let wanted = request.families.families();
        let held: Vec<Family> = current.ips.iter().map(|ip| Family::of(*ip)).collect();
        if held.is_empty() || held.iter().any(|f| !wanted.contains(f)) {
            return false;
        }
        if !request.requested_ips.is_empty() && request.requested_ips != current.ips {
            return false;
        }
        if let Some(pool) = &request.requested_pool
            && current.pool.as_ref() != Some(pool)
        {
            return false;
        }
        // Sharing terms may have changed (key removed, a port added that a co-holder uses).
        current.ips.iter().all(|ip| self.sharing_refusal(*ip, request).is_none())
            && match request.families {
                FamilyPolicy::RequireDual { .. } => held.len() == 2,
                _ => true,
            }
    }

    /// A PreferDualStack Service that holds one family gets the other when its pool now has it.
    fn complete_dual_stack(&mut self, request: &ServiceRequest, current: Assignment) -> Assignment {
        let FamilyPolicy::PreferDual { .. } = request.families else { return current };
        if current.ips.len() != 1 || !request.requested_ips.is_empty() {
            return current;
        }
        let missing = Family::of(current.ips[0]).other();
        let Some(pool) = current.pool.clone() else { return current };
        let Some(value) = self.pools.get(&pool).and_then(|p| self.next_free(p, missing)) else { return current };
        let Some(ip) = from_u128(missing, value) else { return current };
        let mut ips = current.ips.clone();
        ips.push(ip);
        ips.sort_by_key(|ip| Family::of(*ip));
        let assignment = Assignment { pool: Some(pool.clone()), ips };
        self.release(&request.key);
        self.record(Arc::new(Holder::of(request)), &assignment);
        self.advance_cursor(&pool, ip);
        assignment
    }

    fn allocate(&mut self, request: &ServiceRequest) -> Result<Assignment, AllocError> {
        if self.pools.is_empty() {
            return Err(AllocError::NoPools);
        }
        let assignment =
            if request.requested_ips.is_empty() { self.choose(request)? } else { self.take_requested(request)? };
        self.record(Arc::new(Holder::of(request)), &assignment);
        if let Some(pool) = &assignment.pool {
            for ip in &assignment.ips {
                self.advance_cursor(pool, *ip);
            }
        }
        Ok(assignment)
    }

    fn take_requested(&self, request: &ServiceRequest) -> Result<Assignment, AllocError> {
        let ips = &request.requested_ips;
        if matches!(request.families, FamilyPolicy::RequireDual { .. }) && ips.len() != 2 {
            let listed = ips.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ");
            return Err(AllocError::RequestedIpsNotDualStack(listed));
        }
        for ip in ips {
            if let Some(what) = self.reserved_reason(*ip) {
                return Err(AllocError::RequestedIpReserved { ip: *ip, what });
            }
            if let Some((holder, reason)) = self.sharing_refusal(*ip, request) {
                return Err(AllocError::RequestedIpInUse { ip: *ip, holder, reason });
            }
        }
        // The first pool, in this Service's order, that holds every requested IP and may serve it.
        let mut last_refusal = None;
        let candidates: Vec<&PoolState> = match &request.requested_pool {
            Some(name) => vec![self.pools.get(name).ok_or_else(|| AllocError::PoolNotFound(name.clone()))?],
            None => self.pools.values().collect(),
        };
        let mut containing: Vec<&PoolState> =
            candidates.into_iter().filter(|p| ips.iter().any(|ip| p.def.contains(*ip))).collect();
        containing.sort_by_key(|p| sort_key(&p.def));
        for pool in &containing {
            if !ips.iter().all(|ip| pool.def.contains(*ip)) {
                continue;
            }
            match self.eligibility(&pool.def, request, true) {
                Ok(()) => return Ok(Assignment { pool: Some(pool.def.name.clone()), ips: ips.clone() }),
                Err(refusal) => last_refusal = Some(refusal),
            }
        }
        if let Some(refusal) = last_refusal {
            return Err(refusal);
        }
        if let Some(ip) = ips.iter().find(|ip| !containing.iter().any(|p| p.def.contains(**ip))) {
            return Err(AllocError::RequestedIpNotInPool { ip: *ip });
        }
        Err(AllocError::RequestedIpsSplitAcrossPools {
            ips: ips.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", "),
            pools: containing.iter().map(|p| p.def.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    fn choose(&self, request: &ServiceRequest) -> Result<Assignment, AllocError> {
        let pools = match &request.requested_pool {
            Some(name) => {
                let pool = self.pools.get(name).ok_or_else(|| AllocError::PoolNotFound(name.clone()))?;
                self.eligibility(&pool.def, request, true)?;
                vec![name.clone()]
            }
            None => self.ordered_pools(request),
        };
        if pools.is_empty() {
            return Err(AllocError::NoEligiblePool(self.why_no_pool(request)));
        }
        if let Some(shared) = self.reusable_shared_ips(request, &pools) {
            return Ok(shared);
        }
        let try_families = |families: &[Family]| -> Option<Assignment> {
            pools.iter().find_map(|name| {
                let pool = self.pools.get(name)?;
                let mut ips = Vec::new();
                for family in families {
                    ips.push(from_u128(*family, self.next_free(pool, *family)?)?);
                }
                ips.sort_by_key(|ip| Family::of(*ip));
                Some(Assignment { pool: Some(name.clone()), ips })
            })
        };
        let wanted = request.families.families();
        let found = match request.families {
            FamilyPolicy::Single(_) | FamilyPolicy::RequireDual { .. } => try_families(&wanted),
            FamilyPolicy::PreferDual { primary } => {
                try_families(&wanted).or_else(|| try_families(&[primary])).or_else(|| try_families(&[primary.other()]))
            }
        };
        found.ok_or_else(|| self.why_nothing_free(request, &pools))
    }

    /// For a Service with a sharing key: an address already held under that key that it may share.
    fn reusable_shared_ips(&self, request: &ServiceRequest, pools: &[String]) -> Option<Assignment> {
        let key = request.sharing_key.as_ref()?;
        let candidates = self.shared.get(key)?;
        let wanted = request.families.families();
        for pool in pools {
            let def = &self.pools.get(pool)?.def;
            let mut ips: Vec<IpAddr> = Vec::new();
            for family in &wanted {
                let shareable = candidates.iter().find(|ip| {
                    Family::of(**ip) == *family && def.contains(**ip) && self.sharing_refusal(**ip, request).is_none()
                });
                if let Some(ip) = shareable {
                    ips.push(*ip);
                }
            }
            let complete = match request.families {
                FamilyPolicy::RequireDual { .. } => ips.len() == 2,
                _ => !ips.is_empty(),
            };
            if complete {
                return Some(Assignment { pool: Some(pool.clone()), ips });
            }
        }
        None
    }

    /// Pools this Service may get addresses from automatically, in order.
    fn ordered_pools(&self, request: &ServiceRequest) -> Vec<String> {
        let mut eligible: Vec<&PoolDef> = self
            .pools
            .values()
            .map(|p| &p.def)
            .filter(|def| def.auto_assign && self.eligibility(def, request, false).is_ok())
            .collect();
        eligible.sort_by_key(|def| sort_key(def));
        eligible.into_iter().map(|def| def.name.clone()).collect()
    }

    /// Whether `pool` may serve `request`; `requested` when the Service asked for it (then autoAssign=false
    /// pools are fine).
    fn eligibility(&self, pool: &PoolDef, request: &ServiceRequest, requested: bool) -> Result<(), AllocError> {
        let name = pool.name.clone();
        if pool.disabled {
            return Err(AllocError::PoolDisabled { pool: name });
        }
        if !pool.auto_assign && !requested {
            return Err(AllocError::PoolNotAllowed {
                pool: name,
                reason: "autoAssign is false and the Service did not ask for it".into(),
            });
        }
        let Some(restrictions) = &pool.restrictions else { return Ok(()) };
        let not_allowed = |reason: String| AllocError::PoolNotAllowed { pool: pool.name.clone(), reason };
        if !restrictions.namespaces.is_empty() && !restrictions.namespaces.contains(&request.key.namespace) {
            return Err(not_allowed(format!(
                "namespace {} is not in serviceAllocation.namespaces",
                request.key.namespace
            )));
        }
        match selector::matches_any(&restrictions.namespace_selectors, &request.namespace_labels) {
            Ok(true) => {}
            Ok(false) => {
                return Err(not_allowed("the namespace's labels match no serviceAllocation.namespaceSelectors".into()));
            }
            Err(e) => return Err(not_allowed(format!("its namespaceSelectors are invalid: {e}"))),
        }
        match selector::matches_any(&restrictions.service_selectors, &request.labels) {
            Ok(true) => Ok(()),
            Ok(false) => Err(not_allowed("the Service's labels match no serviceAllocation.serviceSelectors".into())),
            Err(e) => Err(not_allowed(format!("its serviceSelectors are invalid: {e}"))),
        }
    }

    fn why_no_pool(&self, request: &ServiceRequest) -> String {
        let reasons: Vec<String> = self
            .pools
            .values()
            .filter_map(|p| self.eligibility(&p.def, request, false).err())
            .map(|e| match e {
                AllocError::PoolDisabled { pool } => format!("{pool:?} is disabled"),
                AllocError::PoolNotAllowed { pool, reason } => format!("{pool:?}: {reason}"),
                other => other.to_string(),
            })
            .collect();
        reasons.join("; ")
    }

    fn why_nothing_free(&self, request: &ServiceRequest, pools: &[String]) -> AllocError {
        let policy = match request.families {
            FamilyPolicy::Single(_) => "SingleStack",
            FamilyPolicy::PreferDual { .. } => "PreferDualStack",
            FamilyPolicy::RequireDual { .. } => "RequireDualStack",
        };
        let wanted = match request.families {
            FamilyPolicy::PreferDual { primary } => vec![primary],
            other => other.families(),
        };
        for family in &wanted {
            if !pools.iter().any(|name| self.pools.get(name).is_some_and(|p| p.def.has_family(*family))) {
                return AllocError::FamilyUnavailable { family: *family, policy };
            }
        }
        if let FamilyPolicy::RequireDual { .. } = request.families
            && !pools.iter().any(|name| {
                self.pools.get(name).is_some_and(|p| p.def.has_family(Family::V4) && p.def.has_family(Family::V6))
            })
        {
            return AllocError::FamilyUnavailable { family: request.families.primary().other(), policy };
        }
        let family = wanted
            .iter()
            .copied()
            .find(|f| pools.iter().all(|name| self.pools.get(name).is_none_or(|p| self.next_free(p, *f).is_none())))
            .unwrap_or_else(|| request.families.primary());
        AllocError::Exhausted { family, pools: pools.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ") }
    }

    /// The next free address of `family` in `pool`, from its cursor on, wrapping around once.
    fn next_free(&self, pool: &PoolState, family: Family) -> Option<u128> {
        let ranges = pool.def.ranges(family);
        if ranges.is_empty() || pool.assigned[family.slot()] >= pool.def.usable(family) {
            return None;
        }
        let cursor = pool.cursor[family.slot()];
        self.search(pool, family, cursor, u128::MAX).or_else(|| self.search(pool, family, 0, cursor))
    }

    /// The first free address in `from..=to` that the pool may hand out. Each step jumps a whole used run or
    /// a gap between the pool's ranges, so the cost does not grow with the pool's size.
    fn search(&self, pool: &PoolState, family: Family, from: u128, to: u128) -> Option<u128> {
        let ranges = pool.def.ranges(family);
        let used = &self.used[family.slot()];
        let mut candidate = from;
        loop {
            candidate = ranges.first_at_or_after(candidate)?;
            if candidate > to {
                return None;
            }
            if let Some((_, end)) = used.run_containing(candidate) {
                candidate = end.checked_add(1)?;
                continue;
            }
            if let Some((_, end)) = self.reserved.run_containing(family, candidate) {
                candidate = end.checked_add(1)?;
                continue;
            }
            if pool.def.skips(family, candidate) {
                candidate = candidate.checked_add(1)?;
                continue;
            }
            return Some(candidate);
        }
    }

    fn advance_cursor(&mut self, pool: &str, ip: IpAddr) {
        if let Some(state) = self.pools.get_mut(pool) {
            state.cursor[Family::of(ip).slot()] = to_u128(ip).wrapping_add(1);
        }
    }

    fn record(&mut self, holder: Arc<Holder>, assignment: &Assignment) {
        for ip in &assignment.ips {
            if self.holders.get(ip).is_none_or(Vec::is_empty) {
                let family = Family::of(*ip);
                self.used[family.slot()].insert(to_u128(*ip));
                for name in self.pool_names_containing(*ip) {
                    if let Some(pool) = self.pools.get_mut(&name) {
                        pool.assigned[family.slot()] += 1;
                    }
                }
            }
            let holders = self.holders.entry(*ip).or_default();
            holders.retain(|h| h.key != holder.key);
            holders.push(holder.clone());
            if let Some(key) = &holder.sharing_key {
                self.shared.entry(key.clone()).or_default().insert(*ip);
            }
        }
        if let Some(pool) = &assignment.pool {
            self.by_pool.entry(pool.clone()).or_default().insert(holder.key.clone());
        }
        self.services.insert(holder.key.clone(), (assignment.clone(), holder));
    }

    fn pool_names_containing(&self, ip: IpAddr) -> Vec<String> {
        self.pools_containing(ip).into_iter().map(str::to_string).collect()
    }
}

/// Restricted pools (the Service matched their serviceAllocation) first by priority, unset last, then by
/// name; unrestricted pools after them, by name.
fn sort_key(def: &PoolDef) -> (bool, i64, String) {
    let restricted = def.restrictions.is_some();
    let priority = def.restrictions.as_ref().and_then(|r| r.priority).map(i64::from).unwrap_or(i64::MAX);
    (!restricted, priority, def.name.clone())
}

#[cfg(test)]
#[path = "allocator_tests.rs"]
mod tests;
