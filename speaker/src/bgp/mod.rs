//! BGP mode: the VIPs are announced to routers by FRR (zebra, bgpd, bfdd) running beside the speaker, and
//! the routers spread the traffic over the announcing nodes by ECMP. Every eligible node announces: there is
//! no election here.
//!
//! - `frr_config` (pure): FRR's configuration as a tree of lines, read from its running configuration, and
//!   the vty commands between two of them;
//! - `announce` (pure): which routes this node sends to which peer, with which attributes;
//! - `announcements` (pure): the BGPAnnouncements this node owes (per Service: prefixes, peers);
//! - `render` (pure): the routes, sessions and BFD profiles as bgpd's and bfdd's configuration;
//! - `vty` (a daemon's vty socket) and `frr` (converging the running FRR, reading its sessions): I/O;
//! - `daemons` (pure): how FRR's daemons are run (the chart's `ferrolb-frr` container and the lab);
//! - `run`: the backend.

pub mod announce;
pub mod announcements;
pub mod daemons;
pub mod frr;
pub mod frr_config;
pub mod render;
pub mod run;
pub mod vty;
