//! The node's interfaces, and on which of them a VIP is announced.
//!
//! Usable for announcing: up with carrier, broadcast-capable, not loopback, not a virtual device of a kind
//! that never faces the LAN (bridges, dummies such as kube-ipvs0, tunnels, overlays), with an Ethernet MAC
//! and at least one global address (this keeps pod-side veths and the like out, and the list small enough
//! to travel in the gossip identity). When an L2Advertisement names no interface, a VIP is announced on the
//! usable interfaces that have an address in the VIP's subnet, else on the default-route interface of its
//! family. Pure: [`crate::links`] reads it from the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

use crate::mac::Mac;

/// Link kinds that never carry a node's LAN traffic directly.
pub(crate) const VIRTUAL_KINDS: &[&str] = &[
    "bridge",
    "dummy",
    "vxlan",
    "geneve",
    "tun",
    "wireguard",
    "ipip",
    "sit",
    "gre",
    "gretap",
    "ip6gre",
    "ip6tnl",
    "vrf",
    "ifb",
    "nlmon",
    "vti",
    "vti6",
    "xfrm",
    "netkit",
    "vcan",
    "vxcan",
    "openvswitch",
];
/// At most this many interfaces are advertised to the other speakers.
const MAX_ADVERTISED: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mac: Option<Mac>,
    /// Administratively up and with carrier.
    pub up: bool,
    pub broadcast: bool,
    pub loopback: bool,
    pub kind: Option<String>,
    pub addresses: Vec<IpNet>,
}

impl Link {
    pub fn usable(&self) -> bool {
        self.up
            && self.broadcast
            && !self.loopback
            && self.mac.is_some()
            && !self.kind.as_deref().is_some_and(|k| VIRTUAL_KINDS.contains(&k))
            && self.addresses.iter().any(|a| is_global(a.addr()))
    }

    /// The IPv6 link-local address (source of unsolicited Neighbor Advertisements).
    pub fn link_local(&self) -> Option<Ipv6Addr> {
        self.addresses.iter().find_map(|a| match a.addr() {
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Some(v6),
            _ => None,
        })
    }
}

fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_unspecified(),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub links: Vec<Link>,
    /// Interface of the default route, per family (`true`: IPv4).
    pub default_route: BTreeMap<bool, String>,
}

impl Inventory {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// Keeps only the interfaces named in `allowed` (an operator's allowlist); an empty list keeps all.
    pub fn restricted_to(mut self, allowed: &[String]) -> Self {
        if !allowed.is_empty() {
            self.links.retain(|l| allowed.contains(&l.name));
            self.default_route.retain(|_, name| allowed.contains(name));
        }
        self
    }

    /// The interfaces this node can announce on (what the others learn through gossip).
    pub fn usable(&self) -> Vec<String> {
        let mut names: Vec<String> = self.links.iter().filter(|l| l.usable()).map(|l| l.name.clone()).collect();
        names.sort();
        names.truncate(MAX_ADVERTISED);
        names
    }

    /// The node's own addresses on its LAN-facing interfaces, up or not (never a VIP). Loopback and virtual
    /// kinds are left out: kube-proxy in IPVS mode puts every Service IP on the dummy kube-ipvs0, and
    /// those are VIPs, not the node's.
    pub fn own_addresses(&self) -> BTreeSet<IpAddr> {
        self.links
            .iter()
            .filter(|l| !l.loopback && !l.kind.as_deref().is_some_and(|k| VIRTUAL_KINDS.contains(&k)))
            .flat_map(|l| l.addresses.iter().map(|a| a.addr()))
            .filter(|ip| is_global(*ip))
            .collect()
    }

    /// Where `vip` goes when the advertisement names no interface: the usable interfaces with an address in
    /// its subnet, else the default-route interface of its family (if usable).
    pub fn interfaces_for(&self, vip: IpAddr) -> BTreeSet<String> {
        let in_subnet: BTreeSet<String> = self
            .links
            .iter()
            .filter(|l| l.usable() && l.addresses.iter().any(|a| a.contains(&vip)))
            .map(|l| l.name.clone())
            .collect();
        if !in_subnet.is_empty() {
            return in_subnet;
        }
        self.default_route
            .get(&vip.is_ipv4())
            .filter(|name| self.link(name).is_some_and(Link::usable))
            .into_iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn link(name: &str, kind: Option<&str>, addresses: &[&str]) -> Link {
        Link {
            name: name.into(),
            index: 1,
            mac: Some(Mac([2, 0, 0, 0, 0, 1])),
            up: true,
            broadcast: true,
            loopback: false,
            kind: kind.map(Into::into),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn only_lan_facing_interfaces_with_an_address_are_usable() {
        let inventory = Inventory {
            links: vec![
                link("eth0", None, &["192.0.2.11/24", "fe80::1/64"]),
                link("eth1", Some("veth"), &["198.51.100.11/24"]),
                link("kube-ipvs0", Some("dummy"), &["192.0.2.200/32"]),
                link("cni0", Some("bridge"), &["10.244.0.1/24"]),
                link("cali1234", Some("veth"), &["fe80::ecee:eeff:feee:eeee/64"]),
                Link { up: false, ..link("eth2", None, &["203.0.113.11/24"]) },
                Link { broadcast: false, ..link("wg0", None, &["203.0.113.12/24"]) },
            ],
            default_route: BTreeMap::new(),
        };
        assert_eq!(inventory.usable(), ["eth0", "eth1"]);
        assert_eq!(inventory.clone().restricted_to(&["eth1".into(), "eth9".into()]).usable(), ["eth1"]);
        assert_eq!(inventory.link("eth0").unwrap().link_local(), Some("fe80::1".parse().unwrap()));
        // The node's own addresses, down links included; not the VIPs kube-proxy puts on kube-ipvs0, nor the
        // CNI bridge's, nor link-local ones.
        let own: Vec<String> = inventory.own_addresses().iter().map(IpAddr::to_string).collect();
        assert_eq!(own, ["192.0.2.11", "198.51.100.11", "203.0.113.11", "203.0.113.12"]);
    }

    #[test]
    fn a_vip_goes_to_interfaces_in_its_subnet_else_the_default_route() {
        let inventory = Inventory {
            links: vec![
                link("eth0", None, &["192.0.2.11/24", "2001:db8::11/64"]),
                link("eth1", None, &["198.51.100.11/24"]),
            ],
            default_route: BTreeMap::from([(true, "eth1".to_string())]),
        };
        let names = |ip: &str| inventory.interfaces_for(ip.parse().unwrap()).into_iter().collect::<Vec<_>>();
        assert_eq!(names("192.0.2.200"), ["eth0"]);
        assert_eq!(names("198.51.100.200"), ["eth1"]);
        assert_eq!(names("203.0.113.200"), ["eth1"], "no subnet matches: the default route's interface");
        assert_eq!(names("2001:db8::200"), ["eth0"]);
        assert!(names("2001:db8:1::200").is_empty(), "no IPv6 default route");
    }
}
