//! The vocabulary of what ferrolb tells users on their objects: every Event reason, condition type and
//! condition reason the controller and the speaker write, named once. Producers, the CLI and the tests use these
//! constants, so a renamed reason is a compile error, not a test that silently stops matching.
//!
//! Reasons are CamelCase (the Kubernetes convention); they are part of the API users alert on: renaming one is
//! a breaking change.

// --- Service: condition `ferrolb.io/IPAllocated` and its Events ---
/// The address was picked from a pool.
pub const ALLOCATED: &str = "Allocated";
/// The addresses the Service asked for (annotation or `spec.loadBalancerIP`) were given.
pub const REQUESTED: &str = "Requested";
/// Event: the Service got (or changed) its addresses.
pub const IP_ALLOCATED: &str = "IPAllocated";
/// Event: no address could be given; the condition says why (one of the refusals below).
pub const ALLOCATION_FAILED: &str = "AllocationFailed";
/// The Service's request is malformed (bad annotation, conflicting fields).
pub const INVALID_REQUEST: &str = "InvalidRequest";
/// A kept address is in no pool any more, and still announced through its pool of origin.
pub const OUTSIDE_POOL: &str = "OutsidePool";
/// A kept address is in no pool any more, and nothing announces it.
pub const OUTSIDE_POOL_UNANNOUNCED: &str = "OutsidePoolUnannounced";
/// A kept address is a cluster address (a Node's, a ClusterIP range's).
pub const RESERVED_ADDRESS: &str = "ReservedAddress";
/// Event: two Services claim one address; the older keeps it.
pub const IP_CONFLICT: &str = "IPConflict";
// Refusals (from the allocator).
pub const NO_POOLS: &str = "NoPools";
pub const NO_ELIGIBLE_POOL: &str = "NoEligiblePool";
pub const POOL_NOT_FOUND: &str = "PoolNotFound";
pub const POOL_DISABLED: &str = "PoolDisabled";
pub const POOL_NOT_ALLOWED: &str = "PoolNotAllowed";
pub const POOL_EXHAUSTED: &str = "PoolExhausted";
pub const FAMILY_UNAVAILABLE: &str = "FamilyUnavailable";
pub const REQUESTED_IP_NOT_IN_POOL: &str = "RequestedIpNotInPool";
pub const REQUESTED_IP_RESERVED: &str = "RequestedIpReserved";
pub const REQUESTED_IP_IN_USE: &str = "RequestedIpInUse";
pub const REQUESTED_IPS_SPLIT: &str = "RequestedIpsSplit";
pub const REQUESTED_IPS_NOT_DUAL_STACK: &str = "RequestedIpsNotDualStack";
/// Every reason a Service is refused an address for (the `reason` values of `ferrolb_allocation_failures`).
pub const REFUSALS: &[&str] = &[
    INVALID_REQUEST,
    NO_POOLS,
    NO_ELIGIBLE_POOL,
    POOL_NOT_FOUND,
    POOL_DISABLED,
    POOL_NOT_ALLOWED,
    POOL_EXHAUSTED,
    FAMILY_UNAVAILABLE,
    REQUESTED_IP_NOT_IN_POOL,
    REQUESTED_IP_RESERVED,
    REQUESTED_IP_IN_USE,
    REQUESTED_IPS_SPLIT,
    REQUESTED_IPS_NOT_DUAL_STACK,
];

// --- IPAddressPool: conditions `Ready`, `Conflicting` and `OverlapsCluster`, and Events ---
/// Pool condition type (and its reason when True): the pool hands out addresses.
pub const READY: &str = "Ready";
/// The pool is `disabled`: Services keep their addresses, no new one is given.
pub const DRAINING: &str = "Draining";
/// Pool condition type: True when the pool lists addresses another pool lists too.
pub const CONFLICTING: &str = "Conflicting";
pub const OVERLAPS: &str = "Overlaps";
pub const NO_OVERLAP: &str = "NoOverlap";
/// Pool condition type: True when the pool lists an address the cluster itself uses.
pub const OVERLAPS_CLUSTER: &str = "OverlapsCluster";
pub const LISTS_CLUSTER_ADDRESSES: &str = "ListsClusterAddresses";
pub const NO_CLUSTER_ADDRESSES: &str = "NoClusterAddresses";
/// The pool's addresses do not parse.
pub const INVALID_ADDRESSES: &str = "InvalidAddresses";
/// The pool's Service or namespace selector does not parse.
pub const INVALID_SELECTOR: &str = "InvalidSelector";
/// Event: the pool is not usable (its Ready condition says why).
pub const INVALID_POOL: &str = "InvalidPool";
/// Event: two pools list the same addresses.
pub const POOL_OVERLAP: &str = "PoolOverlap";
/// Event: the pool lists cluster addresses, which are never given out.
pub const POOL_OVERLAPS_CLUSTER: &str = "PoolOverlapsCluster";

// --- Speaker Events on Services ---
/// A node took the Service's VIPs over and announces them.
pub const NODE_ASSIGNED: &str = "NodeAssigned";
/// The owner cannot announce a VIP (no interface in its subnet).
pub const NOT_ANNOUNCED: &str = "NotAnnounced";
/// A VIP is a node's own address: never announced.
pub const NODE_ADDRESS: &str = "NodeAddress";
