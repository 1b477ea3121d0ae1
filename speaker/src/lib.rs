//! ferrolb's speaker: on every node, computes with the other speakers (no central writer) which node announces
//! each VIP, and makes this node announce the ones it owns.
//!
//! Layout (pure modules do no I/O and are unit- and property-tested):
//! - `driver`: what every mode shares: options, the cluster watches, API coalescing and resync timing, the
//!   [`driver::Reporter`] writing L2Announcements and Events;
//! - `cluster` (watches → [`plan::World`]), `links` (netlink → [`inventory::Inventory`]), `report` (the API
//!   writer), `metrics`, `locks`: I/O shared by the modes;
//! - pure: `election` (candidates, rendezvous owner), `plan` (decisions per Service), `inventory` (interfaces,
//!   where a VIP goes), `mac`;
//! - `l2/`: native mode: `membership` (SWIM gossip over UDP) and `gossip_auth` (its HMAC), `claims` (when to
//!   really take over or let go), `announcer` (gratuitous ARP / NA schedule), `frames` (ARP/NDP codec),
//!   `packet_socket` and `responder` (AF_PACKET), `run` (its loop);
//! - `keepalived/`: keepalived mode: `render` (pure VRRP configuration), `supervise` (the process), `run`.
//!
//! A mode is a folder beside `l2/` and `keepalived/` that imports neither: it takes the [`driver::Options`],
//! uses [`driver::watch_cluster`], [`plan::decide`] with its own candidates (live gossip members, every Node,
//! ...), and reports what this node holds through a [`driver::Reporter`]; then a variant in `main.rs`'s `Mode`
//! selects it.

pub mod cluster;
pub mod driver;
pub mod election;
pub mod inventory;
pub mod keepalived;
pub mod l2;
pub mod links;
pub mod locks;
pub mod mac;
pub mod metrics;
pub mod plan;
pub mod report;
