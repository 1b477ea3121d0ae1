//! ferrolb's controller. It will own VIP allocation (a pure allocator in `ipam`) and the thin reconcilers that
//! read Services and pools and write Service status; only the elected leader writes.
//!
//! Not built yet: the `ferrolb-controller` binary arrives with the controller issue, and `cargo xtask lab`
//! says so while it is missing.
