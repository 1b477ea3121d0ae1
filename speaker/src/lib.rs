//! ferrolb's speaker: on every node, agrees with the other speakers (gossip, no central writer) on one owner
//! node per VIP, and on the owner answers ARP and Neighbor Solicitations for it.
//!
//! Pure logic: `election`, `plan`, `announcer`, `claims`, `frames`, `gossip_auth`, `keepalived::render`. I/O edges:
//! `membership` (UDP), `packet_socket` and `responder` (AF_PACKET), `links` (netlink), `cluster` (watches),
//! `report` (L2Announcements, Events), `keepalived::supervise` (the keepalived process). `run` and
//! `keepalived::run` are the two modes' main loops.

pub mod announcer;
pub mod claims;
pub mod cluster;
pub mod election;
pub mod frames;
pub mod gossip_auth;
pub mod keepalived;
pub mod links;
pub mod locks;
pub mod membership;
pub mod metrics;
pub mod packet_socket;
pub mod plan;
pub mod report;
pub mod responder;
pub mod run;
