//! ferrolb's API (group `ferrolb.io`): the names every component and the users' manifests agree on.
//!
//! The CustomResource types (IPAddressPool, L2Advertisement, L2Announcement) and their generated CRD YAML
//! arrive with the controller; this crate must never do I/O.

/// The API group of every ferrolb resource.
pub const GROUP: &str = "ferrolb.io";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `spec.loadBalancerClass` of the Services ferrolb handles (and, unless the install says otherwise, those
/// that set no class at all).
pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "ferrolb.io/lb";
