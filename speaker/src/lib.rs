//! ferrolb's speaker: on every node, computes with the other speakers (no central writer) which node announces
//! each VIP, and makes this node announce the ones it owns.
//!
//! Layout (pure modules do no I/O and are unit- and property-tested):
//! - `driver`: the one loop every mode runs in (watches, API coalescing, interface rescans, resync, report
//!   writer, stop and drain) and the [`driver::Backend`] trait a mode implements;
//! - `cluster` (watches → [`plan::World`]), `links` (netlink → [`inventory::Inventory`]), `report` (the API
//!   writer), `metrics`, `locks`: I/O shared by the modes;
//! - pure: `election` (candidates, rendezvous owner), `plan` (decisions per Service), `inventory` (interfaces,
//!   where a VIP goes), `mac`;
//! - `l2/`: native mode: `membership` (SWIM gossip over UDP) and `gossip_auth` (its HMAC), `claims` (when to
//!   really take over or let go), `announcer` (gratuitous ARP / NA schedule), `frames` (ARP/NDP codec),
//!   `packet_socket` and `responder` (AF_PACKET), `run` (its backend);
//! - `combined`: two backends as one (native L2 and BGP from the same speaker);
//! - `keepalived/`: keepalived mode: `render` (pure VRRP configuration), `supervise` (the process), `run` (its
//!   backend).
//!
//! Adding a mode: a folder beside `l2/` and `keepalived/` (importing neither) with a type implementing
//! [`driver::Backend`]: its own event sources (`next_event` only waits, `handle` acts), its candidates for
//! [`plan::decide`] (live gossip members, every Node, ...), its `step` (decide, apply, report what this node
//! really holds through the [`driver::Reporter`]) and its drain and stop; a `run` that builds it from a
//! [`driver::Setup`] and hands it to [`driver::run`]; and a variant of `main.rs`'s `Mode`.

pub mod bgp;
pub mod cluster;
pub mod combined;
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
pub mod services;
#[cfg(test)]
mod test_world;
