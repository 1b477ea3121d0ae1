//! keepalived's configuration from the plan, with no I/O. Every speaker renders the same groups with the same
//! VRIDs from the same inputs; each writes only the instances it is a candidate for.
//!
//! - **Groups**: the VIPs of every announced Service, grouped by (candidate ranking, family, interfaces the
//!   advertisement names). One VRRP instance per group, so hundreds of VIPs need only as many instances as
//!   there are distinct rankings (a handful per node set), far below VRRP's 255 VRIDs.
//! - **VRIDs**: each group prefers `first + xxh3(group) mod size` in the configured range and takes the next
//!   free one on collision, groups handled in (preferred VRID, group) order: identical on every node. IPv4 and
//!   IPv6 have separate VRID spaces (VRRPv3 keeps them apart).
//! - **Priorities**: from the rendezvous rank, so a group's master is native mode's owner and its backups
//!   come in native mode's order: 255 for the first (master at once), then from 250 evenly down to at least 1.
//! - **Peers**: unicast to the other candidates' node addresses of the group's family, or multicast.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ferrolb_crds::l2announcement::ServiceReference;

use crate::plan::Decision;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub vrid_first: u8,
    pub vrid_last: u8,
    pub advert_interval: Duration,
    /// Unicast to the candidates' addresses (default); multicast otherwise.
    pub unicast: bool,
    /// Where keepalived reports instance state changes.
    pub notify_fifo: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            vrid_first: 1,
            vrid_last: 255,
            advert_interval: Duration::from_secs(1),
            unicast: true,
            notify_fifo: PathBuf::from("/run/ferrolb/keepalived/notify.fifo"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    /// Candidates, best first.
    pub ranking: Vec<String>,
    pub ipv4: bool,
    /// Interfaces the advertisements name (empty: each node picks its own).
    pub interfaces: Vec<String>,
}

impl GroupKey {
    fn hash(&self) -> u64 {
        let mut text = String::new();
        for node in &self.ranking {
            text.push_str(node);
            text.push('\0');
        }
        text.push(if self.ipv4 { '4' } else { '6' });
        for interface in &self.interfaces {
            text.push('\0');
            text.push_str(interface);
        }
        xxhash_rust::xxh3::xxh3_64(text.as_bytes())
    }

    /// The VRRP instance name: stable for the group whatever its VRID.
    pub fn instance_name(&self) -> String {
        format!("ferrolb_{}_{:016x}", if self.ipv4 { "v4" } else { "v6" }, self.hash())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub key: GroupKey,
    pub vrid: u8,
    pub vips: BTreeSet<IpAddr>,
    pub services: BTreeSet<ServiceReference>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{groups} VRRP groups of {family} VIPs need more VRIDs than the range {first}-{last} holds")]
    TooManyGroups { groups: usize, family: &'static str, first: u8, last: u8 },
    #[error("the VRID range {first}-{last} is empty")]
    EmptyRange { first: u8, last: u8 },
}

/// Every group of the cluster, with its VRID.
pub fn groups(decisions: &[Decision], settings: &Settings) -> Result<Vec<Group>, RenderError> {
    let mut drafts: BTreeMap<GroupKey, (BTreeSet<IpAddr>, BTreeSet<ServiceReference>)> = BTreeMap::new();
    for decision in decisions.iter().filter(|d| !d.ranking.is_empty()) {
        for vip in decision.vips.iter() {
            let key = GroupKey {
                ranking: decision.ranking.iter().map(|n| n.to_string()).collect(),
                ipv4: vip.is_ipv4(),
                interfaces: decision.named_interfaces.iter().cloned().collect(),
            };
            let (vips, services) = drafts.entry(key).or_default();
            vips.insert(*vip);
            services.insert((*decision.service).clone());
        }
    }
    if settings.vrid_first == 0 || settings.vrid_first > settings.vrid_last {
        return Err(RenderError::EmptyRange { first: settings.vrid_first, last: settings.vrid_last });
    }
    let size = usize::from(settings.vrid_last - settings.vrid_first) + 1;
    let mut groups = Vec::new();
    for ipv4 in [true, false] {
        let mut family: Vec<(usize, GroupKey)> =
            drafts.keys().filter(|k| k.ipv4 == ipv4).map(|k| ((k.hash() % size as u64) as usize, k.clone())).collect();
        if family.len() > size {
            return Err(RenderError::TooManyGroups {
                groups: family.len(),
                family: if ipv4 { "IPv4" } else { "IPv6" },
                first: settings.vrid_first,
                last: settings.vrid_last,
            });
        }
        family.sort();
        let mut taken = vec![false; size];
        for (preferred, key) in family {
            let slot = (0..size).map(|i| (preferred + i) % size).find(|s| !taken[*s]).unwrap_or(preferred);
            taken[slot] = true;
            let (vips, services) = drafts.remove(&key).unwrap_or_default();
            // `slot < size <= 255`, so the VRID fits a u8.
            let vrid = settings.vrid_first.saturating_add(u8::try_from(slot).unwrap_or(u8::MAX));
            groups.push(Group { key, vrid, vips, services });
        }
    }
    groups.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(groups)
}

/// VRRP priority of the node at `rank` (0: the owner) among `candidates`. The owner has 255: keepalived
/// makes an instance whose state is MASTER master at once only at that priority; at any other it first
/// waits three advert intervals, and a VIP whose group changed (a Service came or went, a node joined) sat
/// in a fresh instance that every node held as backup, unanswered for those 3 s.
pub fn priority(rank: usize, candidates: usize) -> u8 {
    if rank == 0 {
        return u8::MAX;
    }
    let step = (249 / candidates.max(1)).max(1);
    u8::try_from(250usize.saturating_sub(rank.saturating_mul(step)).max(1)).unwrap_or(1)
}

/// Node addresses for unicast peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    pub ipv4: Option<IpAddr>,
    pub ipv6: Option<IpAddr>,
}

impl NodeAddresses {
    fn of(&self, ipv4: bool) -> Option<IpAddr> {
        if ipv4 { self.ipv4 } else { self.ipv6 }
    }
}

/// A group `me` cannot serve, and why (reported, not rendered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub instance: String,
    pub reason: String,
}

/// keepalived.conf for `me`. `interface_for` picks this node's interface for a group (the named one if the
/// advertisement names one, else the one with an address in the VIPs' subnet).
pub fn render(
    me: &str,
    groups: &[Group],
    addresses: &BTreeMap<String, NodeAddresses>,
    interface_for: impl Fn(&Group) -> Option<String>,
    settings: &Settings,
) -> (String, Vec<Skipped>) {
    let mut config = String::new();
    let mut skipped = Vec::new();
    let _ = writeln!(config, "# Rendered by ferrolb-speaker on {me}. Do not edit: it is rewritten on every change.");
    let _ = writeln!(config, "global_defs {{");
    let _ = writeln!(config, "    router_id {me}");
    let _ = writeln!(config, "    vrrp_version 3");
    let _ = writeln!(config, "    notify_fifo {}", settings.notify_fifo.display());
    let _ = writeln!(config, "    vrrp_garp_master_refresh 60");
    let _ = writeln!(config, "}}");
    let advert = settings.advert_interval.as_secs_f64().max(0.01);
    for group in groups {
        let Some(rank) = group.key.ranking.iter().position(|n| n == me) else { continue };
        let instance = group.key.instance_name();
        let Some(interface) = interface_for(group) else {
            skipped.push(Skipped {
                instance,
                reason:
                    "no interface of this node has an address in the VIPs' subnet, and the advertisement names none"
                        .into(),
            });
            continue;
        };
        let mut unicast = String::new();
        if settings.unicast {
            let Some(source) = addresses.get(me).and_then(|a| a.of(group.key.ipv4)) else {
                skipped.push(Skipped {
                    instance,
                    reason: format!(
                        "this node has no {} address for unicast VRRP",
                        if group.key.ipv4 { "IPv4" } else { "IPv6" }
                    ),
                });
                continue;
            };
            let peers: Vec<IpAddr> = group
                .key
                .ranking
                .iter()
                .filter(|n| *n != me)
                .filter_map(|n| addresses.get(n).and_then(|a| a.of(group.key.ipv4)))
                .collect();
            let _ = writeln!(unicast, "    unicast_src_ip {source}");
            let _ = writeln!(unicast, "    unicast_peer {{");
            for peer in peers {
                let _ = writeln!(unicast, "        {peer}");
            }
            let _ = writeln!(unicast, "    }}");
        }
        let services: Vec<String> = group.services.iter().map(|s| format!("{}/{}", s.namespace, s.name)).collect();
        let _ = writeln!(config);
        let _ = writeln!(config, "# {}", services.join(", "));
        let _ = writeln!(config, "vrrp_instance {instance} {{");
        // The owner starts (and, across a reload, stays) master; the others wait as backups.
        let _ = writeln!(config, "    state {}", if rank == 0 { "MASTER" } else { "BACKUP" });
        let _ = writeln!(config, "    interface {interface}");
        let _ = writeln!(config, "    virtual_router_id {}", group.vrid);
        let _ = writeln!(config, "    priority {}", priority(rank, group.key.ranking.len()));
        let _ = writeln!(config, "    advert_int {advert:.2}");
        config.push_str(&unicast);
        let _ = writeln!(config, "    virtual_ipaddress {{");
        for vip in &group.vips {
            let _ = writeln!(config, "        {vip}/{} dev {interface}", if vip.is_ipv4() { 32 } else { 128 });
        }
        let _ = writeln!(config, "    }}");
        let _ = writeln!(config, "}}");
    }
    (config, skipped)
}

/// VRRP state of an instance, as keepalived writes it to the notify FIFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Master,
    Backup,
    Fault,
    Stop,
}

/// One notify FIFO line: `INSTANCE "name" MASTER 250` (other lines, e.g. for groups, are not ours).
pub fn parse_notify(line: &str) -> Option<(String, InstanceState)> {
    let rest = line.trim().strip_prefix("INSTANCE ")?;
    let rest = rest.strip_prefix('"')?;
    let (name, rest) = rest.split_once('"')?;
    let state = match rest.split_whitespace().next()? {
        "MASTER" => InstanceState::Master,
        "BACKUP" => InstanceState::Backup,
        "FAULT" => InstanceState::Fault,
        "STOP" | "DELETED" => InstanceState::Stop,
        _ => return None,
    };
    Some((name.to_string(), state))
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
