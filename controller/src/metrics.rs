//! The controller's Prometheus metrics (served with the health endpoints by `ferrolb-telemetry`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
    pub family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// One address a Service holds: `advertised` says whether an L2Advertisement selects its pool for the
/// Service, i.e. whether some speaker should be announcing it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceAddressLabels {
    pub namespace: String,
    pub service: String,
    pub ip: String,
    pub pool: String,
    pub advertised: String,
}

/// Every metric the controller exports. Cloning shares the same series.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Addresses a pool can hand out (saturating at 2^63 for large IPv6 pools).
    pub pool_size: Family<PoolLabels, Gauge>,
    pub pool_in_use: Family<PoolLabels, Gauge>,
    pub allocations: Counter,
    pub allocation_failures: Family<ReasonLabel, Counter>,
    pub status_writes: Counter,
    pub write_errors: Family<KindLabel, Counter>,
    pub is_leader: Gauge,
    /// Services ferrolb handles that hold no address.
    pub services_pending: Gauge,
    /// 1 per address a Service holds.
    pub service_addresses: Family<ServiceAddressLabels, Gauge>,
}

/// What a write to the API server was, in `ferrolb_write_errors{kind}`.
pub const WRITE_SERVICE_STATUS: &str = "service_status";
pub const WRITE_POOL_STATUS: &str = "pool_status";
pub const WRITE_EVENT: &str = "event";
pub const WRITE_KINDS: [&str; 3] = [WRITE_SERVICE_STATUS, WRITE_POOL_STATUS, WRITE_EVENT];

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        // Series of every known label value exist from the start, at 0: an alert on `increase()` sees the
        // first failure (a series born at 1 has no increase), and a dashboard finds the series it names.
        for reason in ferrolb_crds::reason::REFUSALS {
            let _ = self.allocation_failures.get_or_create(&ReasonLabel { reason: (*reason).to_string() });
        }
        for kind in WRITE_KINDS {
            let _ = self.write_errors.get_or_create(&KindLabel { kind: kind.to_string() });
        }
        registry.register("ferrolb_pool_addresses", "Addresses a pool can hand out", self.pool_size.clone());
        registry.register(
            "ferrolb_pool_addresses_in_use",
            "Addresses of a pool held by Services",
            self.pool_in_use.clone(),
        );
        registry.register("ferrolb_allocations", "Addresses given to Services", self.allocations.clone());
        registry.register(
            "ferrolb_allocation_failures",
            "Refused allocations, by reason",
            self.allocation_failures.clone(),
        );
        registry.register("ferrolb_status_writes", "Service status writes", self.status_writes.clone());
        registry.register(
            "ferrolb_write_errors",
            "Failed writes to the API server, by kind",
            self.write_errors.clone(),
        );
        registry.register("ferrolb_controller_leader", "1 while this replica is the leader", self.is_leader.clone());
        registry.register(
            "ferrolb_services_pending",
            "LoadBalancer Services of ferrolb's class without an address",
            self.services_pending.clone(),
        );
        registry.register(
            "ferrolb_service_address",
            "1 per address a Service holds, with its pool and whether an L2Advertisement or BGPAdvertisement announces it",
            self.service_addresses.clone(),
        );
    }
}

/// Readiness: set once the controller is either a standby or the leader with its initial sync done.
pub use ferrolb_telemetry::Health;
