//! The node's interfaces, and on which of them a VIP is announced.
//!
//! Usable for announcing: up with carrier, broadcast-capable, not loopback, not a virtual device of a kind
//! that never faces the LAN (dummies such as kube-ipvs0, tunnels, overlays) nor a container runtime's or
//! CNI's bridge (`cni0`, `docker0`, ...), with an Ethernet MAC and at least one global address (this keeps
//! pod-side veths and the like out, and the list small enough to travel in the gossip identity). Bridges,
//! bonds and VLANs are usable: on KVM/Proxmox hosts (`br0`) or with OVN-Kubernetes (`br-ex`) the node's
//! address is on one. Interface names in an advertisement or the speaker's allowlist may be glob patterns
//! (`en*`, `eth[0-9]`; see [`name_matches`]). When an L2Advertisement names no interface, a VIP is announced on the
//! usable interfaces that have an address in the VIP's subnet, else on the default-route interface of its
//! family. Pure: [`crate::links`] reads it from the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

use crate::mac::Mac;

/// Link kinds that never carry a node's LAN traffic directly.
pub(crate) const VIRTUAL_KINDS: &[&str] = &[
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
/// Bridges that container runtimes and CNI plugins make for pods: never the node's LAN.
const CONTAINER_BRIDGES: &[&str] =
    &["cni0", "docker0", "cbr0", "kube-bridge", "podman0", "lxcbr0", "cilium_host", "cilium_net", "antrea-gw0"];
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
            && self.faces_the_lan()
            && self.addresses.iter().any(|a| is_global(a.addr()))
    }

    /// Not a kind that never carries LAN traffic, nor a pod bridge.
    fn faces_the_lan(&self) -> bool {
        let virtual_kind = self.kind.as_deref().is_some_and(|k| VIRTUAL_KINDS.contains(&k));
        let pod_bridge = self.kind.as_deref() == Some("bridge") && CONTAINER_BRIDGES.contains(&self.name.as_str());
        !virtual_kind && !pod_bridge
    }

    /// Why this link cannot announce `vip` (`None`: it can), for the user.
    pub fn refusal(&self, vip: IpAddr, named: &[String]) -> Option<String> {
        let reason = if self.loopback {
            "loopback".to_string()
        } else if !self.faces_the_lan() {
            format!("a {} device, which never faces the LAN", self.kind.as_deref().unwrap_or("virtual"))
        } else if !self.up {
            "down or without carrier".to_string()
        } else if !self.broadcast || self.mac.is_none() {
            "not an Ethernet broadcast interface".to_string()
        } else if !self.addresses.iter().any(|a| is_global(a.addr())) {
            "no global address".to_string()
        } else if !named.is_empty() && !named.iter().any(|p| name_matches(p, &self.name)) {
            format!("not among the advertisement's interfaces ({})", named.join(", "))
        } else if named.is_empty() && !self.addresses.iter().any(|a| a.contains(&vip)) {
            format!("no address in {vip}'s subnet and not the default route's interface")
        } else {
            return None;
        };
        Some(reason)
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
            self.links.retain(|l| allowed.iter().any(|p| name_matches(p, &l.name)));
            self.default_route.retain(|_, name| allowed.iter().any(|p| name_matches(p, name)));
        }
        self
    }

    /// For a `NotAnnounced` Event: every interface considered for `vip` and why it was refused.
    pub fn refusals(&self, vip: IpAddr, named: &[String]) -> Vec<String> {
        let default_route = self.default_route.get(&vip.is_ipv4());
        self.links
            .iter()
            .filter(|l| !(named.is_empty() && default_route == Some(&l.name) && l.usable()))
            .filter_map(|l| l.refusal(vip, named).map(|why| format!("{}: {why}", l.name)))
            .collect()
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
            .filter(|l| !l.loopback && l.faces_the_lan())
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

/// Whether interface `name` is meant by `pattern`: the same name, or a glob (`*`, `?`, `[0-9]`) matching it.
/// A pattern that is not a valid glob only means itself.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    pattern == name || glob::Pattern::new(pattern).is_ok_and(|p| p.matches(name))
}

/// Whether any of `patterns` means `name`.
pub fn any_matches(patterns: impl IntoIterator<Item = impl AsRef<str>>, name: &str) -> bool {
    patterns.into_iter().any(|p| name_matches(p.as_ref(), name))
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
                link("br0", Some("bridge"), &["198.51.100.21/24"]),
                link("bond0.100", Some("vlan"), &["198.51.100.31/24"]),
                link("cali1234", Some("veth"), &["fe80::ecee:eeff:feee:eeee/64"]),
                Link { up: false, ..link("eth2", None, &["203.0.113.11/24"]) },
                Link { broadcast: false, ..link("wg0", None, &["203.0.113.12/24"]) },
            ],
            default_route: BTreeMap::new(),
        };
        assert_eq!(inventory.usable(), ["bond0.100", "br0", "eth0", "eth1"], "a LAN bridge and a VLAN, not cni0");
        assert_eq!(inventory.clone().restricted_to(&["eth1".into(), "eth9".into()]).usable(), ["eth1"]);
        assert_eq!(inventory.clone().restricted_to(&["eth[0-9]".into()]).usable(), ["eth0", "eth1"]);
        assert_eq!(inventory.clone().restricted_to(&["b*".into()]).usable(), ["bond0.100", "br0"]);
        assert_eq!(inventory.link("eth0").unwrap().link_local(), Some("fe80::1".parse().unwrap()));
        // The node's own addresses, down links included; not the VIPs kube-proxy puts on kube-ipvs0, nor the
        // CNI bridge's, nor link-local ones.
        let own: Vec<String> = inventory.own_addresses().iter().map(IpAddr::to_string).collect();
        assert_eq!(
            own,
            ["192.0.2.11", "198.51.100.11", "198.51.100.21", "198.51.100.31", "203.0.113.11", "203.0.113.12"]
        );
    }

    #[test]
    fn patterns_match_names_and_a_bad_pattern_only_itself() {
        assert!(name_matches("eth0", "eth0"));
        assert!(name_matches("en*", "enp3s0"));
        assert!(!name_matches("en*", "eth0"));
        assert!(name_matches("eth[0-9]", "eth7"));
        assert!(!name_matches("eth[0-9]", "eth10"));
        assert!(name_matches("eth?", "eth1"));
        assert!(name_matches("eth[", "eth["), "an invalid glob means the literal name");
        assert!(!name_matches("eth[", "eth0"));
        assert!(any_matches(["lo", "br-*"], "br-ex"));
    }

    #[test]
    fn every_refused_interface_says_why() {
        let inventory = Inventory {
            links: vec![
                link("eth0", None, &["192.0.2.11/24"]),
                Link { up: false, ..link("eth1", None, &["198.51.100.11/24"]) },
                link("kube-ipvs0", Some("dummy"), &["192.0.2.200/32"]),
                link("cni0", Some("bridge"), &["10.244.0.1/24"]),
                link("veth1", Some("veth"), &["fe80::1/64"]),
            ],
            default_route: BTreeMap::new(),
        };
        let why = inventory.refusals("203.0.113.200".parse().unwrap(), &[]);
        assert_eq!(
            why,
            [
                "eth0: no address in 203.0.113.200's subnet and not the default route's interface",
                "eth1: down or without carrier",
                "kube-ipvs0: a dummy device, which never faces the LAN",
                "cni0: a bridge device, which never faces the LAN",
                "veth1: no global address",
            ]
        );
        let named = inventory.refusals("192.0.2.200".parse().unwrap(), &["bond*".to_string()]);
        assert_eq!(named[0], "eth0: not among the advertisement's interfaces (bond*)");
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
