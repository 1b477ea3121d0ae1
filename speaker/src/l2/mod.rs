//! Native mode: the speakers agree by authenticated gossip on one owner per VIP, which answers ARP and
//! Neighbor Solicitations for it itself and announces takeovers with gratuitous ARP / unsolicited NA.

pub mod announcer;
pub mod claims;
pub mod core;
pub mod frames;
pub mod gossip_auth;
pub mod membership;
pub mod packet_socket;
pub mod responder;
pub mod run;
#[cfg(test)]
mod scenario_tests;
