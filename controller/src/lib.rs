//! ferrolb's controller. `ipam` is the pure allocator (no I/O: pools and Services in, addresses out); the
//! reconcilers that read Services and pools and write status are thin adapters around it, and only the
//! elected leader writes.

pub mod engine;
pub mod ipam;
pub mod metrics;
pub mod record;
pub mod run;
pub mod writer;
