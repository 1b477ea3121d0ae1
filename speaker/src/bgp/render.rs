//! What this node's FRR should run, with no I/O: bgpd's configuration (the BGP instance, one neighbour per
//! session, the routes and their attributes) and bfdd's (the BFD profiles the sessions use), in the
//! canonical form FRR 8.4 prints them, so that [`super::frr_config::commands`] between the running and the
//! rendered configuration is empty once they agree.
//!
//! Every route is a `network` line (announced whether or not it is in the kernel: `no bgp network
//! import-check`); what each peer is sent, and with which attributes, is the route-map `flb-PEER-out`: one
//! entry per family and set of attributes, each matching a prefix-list of the prefixes sent with them.
//! Prefix-list entries carry no sequence number, so a VIP added or removed never renumbers the others.
//! Routes go to peers of their own family (an IPv4 peer carries IPv4 routes).
//!
//! Text from the API ends up in commands: every value is checked or rebuilt from parsed values, so an
//! object cannot inject a command (a password with a newline, say).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ferrolb_crds::bgp_peer::duration_seconds;
use ferrolb_crds::{BFDProfileSpec, BGPPeerSpec};
use ipnet::IpNet;

use super::announce::{Attributes, Routes};
use super::frr_config::{Config, Line};

/// FRR's BFD defaults (a profile line at its default is not printed).
const BFD_DEFAULT_INTERVAL: u32 = 300;
const BFD_DEFAULT_MULTIPLIER: u8 = 3;
const BFD_DEFAULT_MINIMUM_TTL: u8 = 254;

/// A session from this node: the BGPPeer, by name, and its password once read from its Secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub name: String,
    pub spec: BGPPeerSpec,
    pub password: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Inputs<'a> {
    /// This node's IPv4 address: FRR would otherwise pick one itself, maybe a VIP (the same on every node).
    pub router_id: Ipv4Addr,
    /// Sorted by name.
    pub sessions: &'a [Session],
    pub profiles: &'a BTreeMap<String, BFDProfileSpec>,
    pub routes: &'a Routes,
}

/// A session left out, and why (the user is told on the BGPPeer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub peer: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rendered {
    pub bgpd: Config,
    pub bfdd: Config,
    /// The sessions configured, by BGPPeer name.
    pub sessions: BTreeSet<String>,
    pub refused: Vec<Refusal>,
}

/// Whether a top-level line of bgpd's running configuration is ferrolb's to manage (the rest is left alone).
pub fn bgpd_owns(line: &str) -> bool {
    line.starts_with("router bgp ")
        || line.starts_with("ip prefix-list flb-")
        || line.starts_with("ipv6 prefix-list flb-")
        || line.starts_with("route-map flb-")
}

/// Whether a top-level line of bfdd's running configuration is ferrolb's to manage.
pub fn bfdd_owns(line: &str) -> bool {
    line == "bfd"
}

pub fn render(inputs: &Inputs<'_>) -> Rendered {
    let mut rendered = Rendered::default();
    let mut accepted: Vec<(&Session, IpAddr)> = Vec::new();
    let asn = inputs.sessions.iter().find(|s| valid_name(&s.name)).map(|s| s.spec.my_asn);
    for session in inputs.sessions {
        match check(session, asn, &accepted) {
            Ok(address) => accepted.push((session, address)),
            Err(reason) => rendered.refused.push(Refusal { peer: session.name.clone(), reason }),
        }
    }
    let Some(asn) = asn.filter(|_| !accepted.is_empty()) else { return rendered };

    let mut router = vec![
        Line::command(format!("bgp router-id {}", inputs.router_id)),
        Line::command("no bgp ebgp-requires-policy"),
        Line::command("no bgp default ipv4-unicast"),
        Line::command("no bgp network import-check"),
    ];
    let mut families: [(Vec<Line>, Vec<Line>); 2] = Default::default(); // (networks, neighbour lines) v4, v6
    let mut lists: Vec<Line> = Vec::new();
    let mut maps: Vec<Line> = Vec::new();
    let mut profiles: BTreeSet<&str> = BTreeSet::new();
    let mut networks: [BTreeSet<IpNet>; 2] = Default::default();
    let none = BTreeMap::new();
    for (session, address) in &accepted {
        router.extend(neighbor_lines(session, *address));
        if let Some(profile) = session.spec.bfd_profile.as_deref() {
            profiles.insert(profile);
        }
        let family = usize::from(address.is_ipv6());
        let map = format!("flb-{}-out", session.name);
        let (_, neighbor_lines) = &mut families[family];
        neighbor_lines.push(Line::command(format!("neighbor {address} activate")));
        neighbor_lines.push(Line::command(format!("neighbor {address} route-map {map} out")));
        let routes = inputs.routes.by_peer.get(&session.name).unwrap_or(&none);
        // The peer's routes by attributes, each set numbered in order (an entry of the route-map each).
        let mut by_attributes: BTreeMap<&Attributes, Vec<IpNet>> = BTreeMap::new();
        for (prefix, attributes) in routes.iter().filter(|(p, _)| p.addr().is_ipv6() == address.is_ipv6()) {
            if let Some(attributes) = checked(attributes) {
                by_attributes.entry(attributes).or_default().push(*prefix);
                networks[family].insert(*prefix);
            }
        }
        for (index, (attributes, prefixes)) in by_attributes.into_iter().enumerate() {
            let (ip, suffix, offset) = if address.is_ipv6() { ("ipv6", "v6", 5) } else { ("ip", "v4", 0) };
            let list = format!("flb-{}-{index}-{suffix}", session.name);
            lists.extend(prefixes.iter().map(|p| Line::command(format!("{ip} prefix-list {list} permit {p}"))));
            let mut entry = vec![Line::command(format!("match {ip} address prefix-list {list}"))];
            if !attributes.communities.is_empty() {
                entry.push(Line::command(format!("set community {}", attributes.communities.join(" "))));
            }
            if !attributes.large_communities.is_empty() {
                entry.push(Line::command(format!("set large-community {}", attributes.large_communities.join(" "))));
            }
            if let Some(preference) = attributes.local_pref {
                entry.push(Line::command(format!("set local-preference {preference}")));
            }
            let sequence = (index + 1) * 10 + offset;
            maps.push(Line::block(format!("route-map {map} permit {sequence}"), entry));
        }
    }
    for (family, name) in [(0, "ipv4"), (1, "ipv6")] {
        let (ref mut lines, ref mut neighbor_lines) = families[family];
        lines.extend(networks[family].iter().map(|p| Line::command(format!("network {p}"))));
        lines.append(neighbor_lines);
        if !lines.is_empty() {
            router.push(Line::block(format!("address-family {name} unicast"), std::mem::take(lines)));
        }
    }
    // The lists and maps first: a neighbour whose route-map is not there yet is sent nothing meanwhile.
    rendered.bgpd.lines.extend(lists);
    rendered.bgpd.lines.extend(maps);
    rendered.bgpd.lines.push(Line::block(format!("router bgp {asn}"), router));
    let profile_blocks: Vec<Line> = profiles
        .into_iter()
        .filter(|name| valid_name(name))
        .filter_map(|name| inputs.profiles.get(name).map(|spec| profile(name, spec)))
        .collect();
    if !profile_blocks.is_empty() {
        rendered.bfdd.lines.push(Line::block("bfd", profile_blocks));
    }
    rendered.sessions = accepted.iter().map(|(s, _)| s.name.clone()).collect();
    rendered
}

/// The session's peer address, or why it is left out.
fn check(session: &Session, asn: Option<u32>, accepted: &[(&Session, IpAddr)]) -> Result<IpAddr, String> {
    let spec = &session.spec;
    if !valid_name(&session.name) {
        return Err(format!("the name {:?} cannot be used in FRR's configuration", session.name));
    }
    let address: IpAddr =
        spec.peer_address.parse().map_err(|_| format!("peerAddress {:?} is not an IP address", spec.peer_address))?;
    if Some(spec.my_asn) != asn {
        return Err(format!(
            "myASN {} differs from {} of the other peers of this node (FRR runs one BGP instance per node)",
            spec.my_asn,
            asn.unwrap_or_default()
        ));
    }
    if let Some((other, _)) = accepted.iter().find(|(_, a)| *a == address) {
        return Err(format!("BGPPeer {} already peers with {address} from this node", other.name));
    }
    if let Some(source) = &spec.source_address {
        let source: IpAddr = source.parse().map_err(|_| format!("sourceAddress {source:?} is not an IP address"))?;
        if source.is_ipv6() != address.is_ipv6() {
            return Err("sourceAddress and peerAddress are of different families".into());
        }
    }
    if let Some(password) = &session.password
        && (password.is_empty() || password.len() > 80 || !password.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err("the password must be 1 to 80 printable ASCII characters without spaces (TCP MD5)".into());
    }
    for (field, value) in
        [("holdTime", &spec.hold_time), ("keepaliveTime", &spec.keepalive_time), ("connectTime", &spec.connect_time)]
    {
        if let Some(text) = value {
            duration_seconds(text).ok_or_else(|| format!("{field} {text:?} is not a duration such as 90s"))?;
        }
    }
    Ok(address)
}

/// A name that can be part of FRR's route-map, prefix-list and profile names (a Kubernetes object name).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// The attributes, if every value is one FRR accepts (CEL checked them already; this is the second lock).
fn checked(attributes: &Attributes) -> Option<&Attributes> {
    let community_word =
        |c: &String| !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'-');
    (attributes.communities.iter().all(community_word) && attributes.large_communities.iter().all(community_word))
        .then_some(attributes)
}

/// A neighbour's lines under `router bgp`, in the order FRR prints them.
fn neighbor_lines(session: &Session, address: IpAddr) -> Vec<Line> {
    let spec = &session.spec;
    let n = |rest: String| Line::command(format!("neighbor {address} {rest}"));
    let mut lines = vec![n(format!("remote-as {}", spec.peer_asn))];
    if let Some(profile) = spec.bfd_profile.as_deref().filter(|p| valid_name(p)) {
        lines.push(n("bfd".into()));
        lines.push(n(format!("bfd profile {profile}")));
    }
    if let Some(password) = &session.password {
        lines.push(n(format!("password {password}")));
    }
    if let Some(port) = spec.peer_port.filter(|p| *p != 179) {
        lines.push(n(format!("port {port}")));
    }
    if spec.ebgp_multi_hop {
        lines.push(n("ebgp-multihop 255".into()));
    }
    if let Some(source) = spec.source_address.as_deref().and_then(|s| s.parse::<IpAddr>().ok()) {
        lines.push(n(format!("update-source {source}")));
    }
    let hold = spec.hold_time.as_deref().and_then(duration_seconds);
    let keepalive = spec.keepalive_time.as_deref().and_then(duration_seconds);
    let timers = match (keepalive, hold) {
        (Some(k), Some(h)) => Some((k, h)),
        (None, Some(h)) => Some((h / 3, h)),
        (Some(k), None) => Some((k, k * 3)),
        (None, None) => None,
    };
    if let Some((keepalive, hold)) = timers {
        lines.push(n(format!("timers {} {}", keepalive.min(65535), hold.min(65535))));
    }
    if let Some(connect) = spec.connect_time.as_deref().and_then(duration_seconds) {
        lines.push(n(format!("timers connect {}", connect.clamp(1, 65535))));
    }
    if spec.enable_graceful_restart {
        lines.push(n("graceful-restart".into()));
    }
    lines
}

/// A BFD profile's block, in the order FRR prints it (lines at FRR's defaults left out, as it does).
fn profile(name: &str, spec: &BFDProfileSpec) -> Line {
    let mut lines = Vec::new();
    if let Some(multiplier) = spec.detect_multiplier.filter(|m| *m != BFD_DEFAULT_MULTIPLIER) {
        lines.push(Line::command(format!("detect-multiplier {multiplier}")));
    }
    if let Some(interval) = spec.transmit_interval.filter(|i| *i != BFD_DEFAULT_INTERVAL) {
        lines.push(Line::command(format!("transmit-interval {interval}")));
    }
    if let Some(interval) = spec.receive_interval.filter(|i| *i != BFD_DEFAULT_INTERVAL) {
        lines.push(Line::command(format!("receive-interval {interval}")));
    }
    if spec.passive_mode {
        lines.push(Line::command("passive-mode"));
    }
    if let Some(ttl) = spec.minimum_ttl.filter(|t| *t != BFD_DEFAULT_MINIMUM_TTL) {
        lines.push(Line::command(format!("minimum-ttl {ttl}")));
    }
    Line::block(format!("profile {name}"), lines)
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
