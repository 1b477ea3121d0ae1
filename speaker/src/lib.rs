//! ferrolb's speaker. It will own membership (gossip), the pure owner election, and the ARP/NDP announcer
//! (or keepalived's configuration in keepalived mode).
//!
//! Not built yet: the `ferrolb-speaker` binary arrives with the speaker issue, and `cargo xtask lab` says so
//! while it is missing.
