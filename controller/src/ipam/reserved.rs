//! Addresses of the cluster that are never handed out, whatever the pools say: the Nodes' own addresses (a
//! gratuitous ARP for one would steal the node's traffic) and the Service CIDRs (ClusterIPs live there).
//! Rebuilt whole when Nodes or ServiceCIDRs change; small (one entry per node address or CIDR).

use std::net::IpAddr;

use super::ranges::{Family, RunSet, to_u128};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub first: IpAddr,
    pub last: IpAddr,
    /// What it is, for messages: "the address of Node node-1", "in Service CIDR 198.18.0.0/16".
    pub what: String,
}

#[derive(Debug, Clone, Default)]
pub struct Reservations {
    sets: [RunSet; 2],
    list: Vec<Reservation>,
}

impl Reservations {
    pub fn new(mut list: Vec<Reservation>) -> Self {
        list.retain(|r| Family::of(r.first) == Family::of(r.last) && r.first <= r.last);
        list.sort_by(|a, b| (a.first, a.last, &a.what).cmp(&(b.first, b.last, &b.what)));
        list.dedup();
        let mut sets: [RunSet; 2] = Default::default();
        for r in &list {
            sets[Family::of(r.first).slot()].insert_range(to_u128(r.first), to_u128(r.last));
        }
        Self { sets, list }
    }

    pub fn list(&self) -> &[Reservation] {
        &self.list
    }

    /// The reserved run holding `value`, to jump over it while searching.
    pub fn run_containing(&self, family: Family, value: u128) -> Option<(u128, u128)> {
        self.sets[family.slot()].run_containing(value)
    }

    /// What `ip` is, if reserved.
    pub fn why(&self, ip: IpAddr) -> Option<&str> {
        if !self.sets[Family::of(ip).slot()].contains(to_u128(ip)) {
            return None;
        }
        self.list.iter().find(|r| r.first <= ip && ip <= r.last).map(|r| r.what.as_str())
    }

    /// The reservations meeting `start..=end` of `family`.
    pub fn meeting(&self, family: Family, start: u128, end: u128) -> impl Iterator<Item = &Reservation> {
        let any = self.sets[family.slot()].count_in(start, end) > 0;
        self.list.iter().filter(move |r| {
            any && Family::of(r.first) == family && to_u128(r.first) <= end && to_u128(r.last) >= start
        })
    }

    /// How many reserved addresses lie in `start..=end` of `family`.
    pub fn count_in(&self, family: Family, start: u128, end: u128) -> u128 {
        self.sets[family.slot()].count_in(start, end)
    }

    /// The reserved runs of `family` inside `start..=end`, clipped to it.
    pub fn runs_in(&self, family: Family, start: u128, end: u128) -> Vec<(u128, u128)> {
        let set = &self.sets[family.slot()];
        set.runs().filter(|(s, e)| *s <= end && *e >= start).map(|(s, e)| (s.max(start), e.min(end))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_and_service_cidrs_are_named() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let reservations = Reservations::new(vec![
            Reservation { first: ip("192.0.2.1"), last: ip("192.0.2.1"), what: "the address of Node node-1".into() },
            Reservation {
                first: ip("198.18.0.0"),
                last: ip("198.18.255.255"),
                what: "in Service CIDR 198.18.0.0/16".into(),
            },
        ]);
        assert_eq!(reservations.why(ip("192.0.2.1")), Some("the address of Node node-1"));
        assert_eq!(reservations.why(ip("198.18.3.4")), Some("in Service CIDR 198.18.0.0/16"));
        assert_eq!(reservations.why(ip("192.0.2.2")), None);
        let v = |s: &str| to_u128(ip(s));
        assert_eq!(reservations.count_in(Family::V4, v("192.0.2.0"), v("192.0.2.255")), 1);
        assert_eq!(reservations.meeting(Family::V4, v("198.18.200.0"), v("198.19.0.0")).count(), 1);
        assert_eq!(
            reservations.runs_in(Family::V4, v("198.18.255.0"), v("198.19.0.0")),
            [(v("198.18.255.0"), v("198.18.255.255"))]
        );
    }
}
