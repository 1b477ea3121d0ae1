//! What the announcer does over time, as a pure state machine: given the VIPs this node owns (and on which
//! interfaces) and the clock, which announcements to send and which multicast groups to join or leave.
//! The socket layer only executes the actions; the rules live here and are tested as scenarios.
//!
//! On takeover a VIP is announced at once and then in a short burst (a single gratuitous frame can be lost,
//! and some switches need more than one to move a MAC), then refreshed periodically so caches and switch
//! tables that aged out learn it again. On loss it is dropped at once: from then on `owns` is false, so
//! requests for it go unanswered.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::l2::frames::Mac;
use crate::l2::frames::ndp::{multicast_mac, solicited_node_group};
use crate::plan::{Interfaces, Placement};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Announcements sent on takeover, the first one at once.
    pub burst: u32,
    /// Gap between the takeover announcements.
    pub burst_interval: Duration,
    /// Re-announcement period while owned (switch MAC tables commonly age out after 300 s).
    pub refresh_interval: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self { burst: 3, burst_interval: Duration::from_millis(250), refresh_interval: Duration::from_secs(60) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Gratuitous ARP (IPv4) or unsolicited NA (IPv6) for `vip` out of `interface`.
    Announce {
        vip: IpAddr,
        interface: String,
    },
    /// Start receiving the Ethernet multicast group (IPv6 solicited-node groups).
    Join {
        interface: String,
        group: Mac,
    },
    Leave {
        interface: String,
        group: Mac,
    },
}

#[derive(Debug, Clone)]
struct Held {
    interfaces: Interfaces,
    remaining_burst: u32,
    next: Instant,
}

#[derive(Debug, Default)]
pub struct Announcer {
    timing: Timing,
    held: BTreeMap<IpAddr, Held>,
    /// Reference counts of joined groups, per interface: two VIPs can share a solicited-node group. By
    /// interface first, so that thousands of groups on a handful of interfaces hold each name once.
    groups: BTreeMap<String, BTreeMap<Mac, u32>>,
}

impl Announcer {
    pub fn new(timing: Timing) -> Self {
        Self { timing, ..Self::default() }
    }

    /// Whether requests for `vip` arriving on `interface` are ours to answer.
    pub fn owns(&self, vip: IpAddr, interface: &str) -> bool {
        self.held.get(&vip).is_some_and(|h| h.interfaces.contains(interface))
    }

    pub fn owned(&self) -> impl Iterator<Item = &IpAddr> {
        self.held.keys()
    }

    /// Brings the held set to `desired` (VIP → interfaces). Returns the actions due now: group changes, and
    /// the first announcement of every VIP (or interface) newly held.
    pub fn update(&mut self, desired: &Placement, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let lost: Vec<IpAddr> = self.held.keys().filter(|vip| !desired.contains_key(vip)).copied().collect();
        for vip in lost {
            if let Some(held) = self.held.remove(&vip) {
                for interface in held.interfaces.iter() {
                    self.leave(vip, interface, &mut actions);
                }
            }
        }
        for (vip, interfaces) in desired {
            // Almost every VIP is held as it was: nothing to compare further, nothing to copy.
            if self.held.get(vip).is_some_and(|h| h.interfaces == *interfaces) {
                continue;
            }
            let before = self.held.get(vip).map(|h| h.interfaces.clone()).unwrap_or_default();
            for gone in before.difference(&**interfaces) {
                self.leave(*vip, gone, &mut actions);
            }
            let added: Vec<String> = interfaces.difference(&before).cloned().collect();
            for interface in &added {
                self.join(*vip, interface, &mut actions);
            }
            if added.is_empty() {
                if let Some(held) = self.held.get_mut(vip) {
                    held.interfaces = interfaces.clone();
                }
                continue;
            }
            // New to us, or announced on a new interface: a fresh takeover burst, starting now.
            actions.extend(added.iter().map(|interface| Action::Announce { vip: *vip, interface: interface.clone() }));
            self.held.insert(
                *vip,
                Held {
                    interfaces: interfaces.clone(),
                    remaining_burst: self.timing.burst.saturating_sub(1),
                    next: now + self.timing.burst_interval,
                },
            );
        }
        actions
    }

    /// Announces `vips` (those held) again at once, in a fresh burst: after this node learnt the others
    /// had declared it down (some of them may have claimed its VIPs meanwhile), or to defend a VIP another
    /// MAC claimed.
    pub fn reannounce<'a>(&mut self, vips: impl IntoIterator<Item = &'a IpAddr>, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for vip in vips {
            if let Some(held) = self.held.get_mut(vip) {
                actions.extend(
                    held.interfaces
                        .iter()
                        .map(|interface| Action::Announce { vip: *vip, interface: interface.clone() }),
                );
                held.remaining_burst = self.timing.burst.saturating_sub(1);
                held.next = now + self.timing.burst_interval;
            }
        }
        actions
    }

    /// The announcements due at `now` (rest of a burst, or a periodic refresh).
    pub fn due(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for (vip, held) in &mut self.held {
            if held.next > now {
                continue;
            }
            actions.extend(
                held.interfaces.iter().map(|interface| Action::Announce { vip: *vip, interface: interface.clone() }),
            );
            if held.remaining_burst > 0 {
                held.remaining_burst -= 1;
                held.next = now
                    + if held.remaining_burst > 0 { self.timing.burst_interval } else { self.timing.refresh_interval };
            } else {
                held.next = now + self.timing.refresh_interval;
            }
        }
        actions
    }

    /// When `due` next has something to do.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.values().map(|h| h.next).min()
    }

    fn join(&mut self, vip: IpAddr, interface: &str, actions: &mut Vec<Action>) {
        let IpAddr::V6(v6) = vip else { return };
        let group = multicast_mac(solicited_node_group(v6));
        if !self.groups.contains_key(interface) {
            self.groups.insert(interface.to_string(), BTreeMap::new());
        }
        let Some(groups) = self.groups.get_mut(interface) else { return };
        let count = groups.entry(group).or_default();
        *count += 1;
        if *count == 1 {
            actions.push(Action::Join { interface: interface.to_string(), group });
        }
    }

    fn leave(&mut self, vip: IpAddr, interface: &str, actions: &mut Vec<Action>) {
        let IpAddr::V6(v6) = vip else { return };
        let group = multicast_mac(solicited_node_group(v6));
        let Some(groups) = self.groups.get_mut(interface) else { return };
        let Some(count) = groups.get_mut(&group) else { return };
        *count -= 1;
        if *count == 0 {
            groups.remove(&group);
            if groups.is_empty() {
                self.groups.remove(interface);
            }
            actions.push(Action::Leave { interface: interface.to_string(), group });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn on(pairs: &[(&str, &[&str])]) -> Placement {
        pairs
            .iter()
            .map(|(v, ifs)| (vip(v), std::sync::Arc::new(ifs.iter().map(|i| i.to_string()).collect())))
            .collect()
    }

    fn announce(v: &str, interface: &str) -> Action {
        Action::Announce { vip: vip(v), interface: interface.into() }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn takeover_announces_at_once_then_in_a_burst_then_periodically() {
        let t0 = Instant::now();
        let mut a = Announcer::new(Timing { burst: 3, burst_interval: 250 * MS, refresh_interval: 60_000 * MS });
        assert_eq!(a.update(&on(&[("192.0.2.200", &["eth0"])]), t0), [announce("192.0.2.200", "eth0")]);
        assert!(a.owns(vip("192.0.2.200"), "eth0") && !a.owns(vip("192.0.2.200"), "eth1"));
        assert!(a.due(t0 + 100 * MS).is_empty());
        assert_eq!(a.due(t0 + 250 * MS), [announce("192.0.2.200", "eth0")]);
        assert_eq!(a.due(t0 + 500 * MS), [announce("192.0.2.200", "eth0")]);
        // Burst done: next is the refresh a minute later.
        assert!(a.due(t0 + 750 * MS).is_empty());
        assert_eq!(a.next_due(), Some(t0 + 500 * MS + 60_000 * MS));
        assert_eq!(a.due(t0 + 60_500 * MS), [announce("192.0.2.200", "eth0")]);
        // Keeping the same VIP changes nothing.
        assert!(a.update(&on(&[("192.0.2.200", &["eth0"])]), t0 + 61_000 * MS).is_empty());
    }

    #[test]
    fn loss_stops_answering_at_once_and_leaves_its_group() {
        let t0 = Instant::now();
        let mut a = Announcer::new(Timing::default());
        let actions = a.update(&on(&[("2001:db8::200", &["eth0"])]), t0);
        let group = multicast_mac(solicited_node_group("2001:db8::200".parse().unwrap()));
        assert_eq!(actions, [Action::Join { interface: "eth0".into(), group }, announce("2001:db8::200", "eth0")]);
        let actions = a.update(&BTreeMap::new(), t0 + MS);
        assert_eq!(actions, [Action::Leave { interface: "eth0".into(), group }]);
        assert!(!a.owns(vip("2001:db8::200"), "eth0"));
        assert!(a.due(t0 + 10_000 * MS).is_empty(), "nothing is announced after loss");
    }

    #[test]
    fn a_reannounced_vip_gets_a_fresh_burst_and_others_are_ignored() {
        let t0 = Instant::now();
        let mut a = Announcer::new(Timing { burst: 3, burst_interval: 250 * MS, refresh_interval: 60_000 * MS });
        a.update(&on(&[("192.0.2.200", &["eth0"])]), t0);
        a.due(t0 + 250 * MS);
        a.due(t0 + 500 * MS);
        let later = t0 + 10_000 * MS;
        let again = a.reannounce(&[vip("192.0.2.200"), vip("192.0.2.201")], later);
        assert_eq!(again, [announce("192.0.2.200", "eth0")], "only held VIPs are announced");
        assert_eq!(a.due(later + 250 * MS), [announce("192.0.2.200", "eth0")]);
        assert_eq!(a.due(later + 500 * MS), [announce("192.0.2.200", "eth0")]);
        assert!(a.due(later + 750 * MS).is_empty());
    }

    #[test]
    fn a_shared_solicited_node_group_is_left_only_with_its_last_vip() {
        let t0 = Instant::now();
        let mut a = Announcer::new(Timing::default());
        // 2001:db8::200 and 2001:db8:1::200 share the low 24 bits, so one group.
        let both = on(&[("2001:db8::200", &["eth0"]), ("2001:db8:1::200", &["eth0"])]);
        let joins = a.update(&both, t0).into_iter().filter(|x| matches!(x, Action::Join { .. })).count();
        assert_eq!(joins, 1);
        assert!(a.update(&on(&[("2001:db8:1::200", &["eth0"])]), t0 + MS).is_empty(), "the group is still needed");
        assert_eq!(a.update(&BTreeMap::new(), t0 + 2 * MS).len(), 1);
    }

    #[test]
    fn a_group_is_joined_and_left_on_each_interface_by_itself() {
        let t0 = Instant::now();
        let mut a = Announcer::new(Timing::default());
        let group = multicast_mac(solicited_node_group("2001:db8::200".parse().unwrap()));
        let joins = |actions: Vec<Action>| -> Vec<Action> {
            actions.into_iter().filter(|x| !matches!(x, Action::Announce { .. })).collect()
        };
        let actions = a.update(&on(&[("2001:db8::200", &["eth0", "eth1"]), ("2001:db8:1::200", &["eth1"])]), t0);
        assert_eq!(
            joins(actions),
            [Action::Join { interface: "eth0".into(), group }, Action::Join { interface: "eth1".into(), group }]
        );
        // eth0 loses its only VIP of the group; eth1 still has one.
        let actions = a.update(&on(&[("2001:db8::200", &["eth1"]), ("2001:db8:1::200", &["eth1"])]), t0 + MS);
        assert_eq!(joins(actions), [Action::Leave { interface: "eth0".into(), group }]);
        assert_eq!(joins(a.update(&on(&[("2001:db8:1::200", &["eth1"])]), t0 + 2 * MS)), []);
        assert_eq!(joins(a.update(&BTreeMap::new(), t0 + 3 * MS)), [Action::Leave { interface: "eth1".into(), group }]);
        assert!(a.groups.is_empty(), "nothing is kept for an interface without groups");
    }

    #[test]
    fn a_new_interface_gets_its_own_takeover_and_a_removed_one_stops() {
        let t0 = Instant::now();
        let mut a = Announcer::new(Timing::default());
        a.update(&on(&[("192.0.2.200", &["eth0"])]), t0);
        assert_eq!(a.update(&on(&[("192.0.2.200", &["eth0", "eth1"])]), t0 + MS), [announce("192.0.2.200", "eth1")]);
        assert!(a.update(&on(&[("192.0.2.200", &["eth1"])]), t0 + 2 * MS).is_empty());
        assert!(!a.owns(vip("192.0.2.200"), "eth0") && a.owns(vip("192.0.2.200"), "eth1"));
    }
}
