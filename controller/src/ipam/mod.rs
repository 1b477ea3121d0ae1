//! IP address management: which VIP each LoadBalancer Service gets. Pure: it is fed pools and Service
//! requests and answers with addresses or a precise refusal; it never talks to the API server.
//!
//! Cost: every operation is O(log n) in the number of allocations, plus the number of entries of the pools it
//! looks at, and never depends on pool size: an IPv6 /64 costs what a /28 costs.

pub mod allocator;
pub mod index;
pub mod pool;
pub mod ranges;
pub mod request;
pub mod reserved;

pub use allocator::{AllocError, Allocator, Assignment, FamilyUsage, RestoreConflict};
pub use pool::{PoolDef, PoolError};
pub use ranges::Family;
pub use request::{FamilyPolicy, RequestError, ServiceKey, ServiceRequest};
pub use reserved::{Reservation, Reservations};
