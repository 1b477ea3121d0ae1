//! ferrolb's speaker. `election` is the pure owner election every speaker computes identically; membership
//! (gossip), the ARP/NDP announcer and keepalived mode build on it.
//!
//! The `ferrolb-speaker` binary does not exist yet (the speaker issue delivers it), and `cargo xtask lab`
//! says so while it is missing.

pub mod announcer;
pub mod election;
pub mod frames;
pub mod packet_socket;
