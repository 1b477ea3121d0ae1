//! Addresses as integers, and sets of them as sorted, merged, inclusive intervals. IPv4 and IPv6 are kept in
//! separate sets (one per [`Family`]), each address as a `u128`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    pub fn other(self) -> Self {
        match self {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        }
    }

    /// Where this family's entry is in per-family arrays (`[v4, v6]`).
    pub fn slot(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// As Kubernetes spells it in `spec.ipFamilies`.
    pub fn kubernetes_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kubernetes_name())
    }
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address `value` of `family`; `None` if it does not fit the family.
pub fn from_u128(family: Family, value: u128) -> Option<IpAddr> {
    match family {
        Family::V4 => u32::try_from(value).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        Family::V6 => Some(IpAddr::V6(Ipv6Addr::from(value))),
    }
}

/// A set of integers stored as merged, non-adjacent inclusive runs `start -> end`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSet {
    runs: BTreeMap<u128, u128>,
    len: u128,
}

impl RunSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many integers the set holds (saturating at `u128::MAX`, which only the full IPv6 space reaches).
    pub fn len(&self) -> u128 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn runs(&self) -> impl Iterator<Item = (u128, u128)> + '_ {
        self.runs.iter().map(|(s, e)| (*s, *e))
    }

    /// The run containing `value`, if any.
    pub fn run_containing(&self, value: u128) -> Option<(u128, u128)> {
        self.runs.range(..=value).next_back().filter(|(_, end)| **end >= value).map(|(s, e)| (*s, *e))
    }

    pub fn contains(&self, value: u128) -> bool {
        self.run_containing(value).is_some()
    }

    /// Adds `start..=end`, merging with overlapping and adjacent runs.
    pub fn insert_range(&mut self, start: u128, end: u128) {
        debug_assert!(start <= end);
        let (mut start, mut end) = (start, end);
        // Absorb a run that ends at or just before `start`.
        if let Some((s, e)) = self.runs.range(..=start).next_back().map(|(s, e)| (*s, *e))
            && e.saturating_add(1) >= start
        {
            start = s;
            end = end.max(e);
            self.remove_run(s);
        }
        // Absorb every run that starts inside or just after `start..=end`.
        while let Some((s, e)) = self.runs.range(start..).next().map(|(s, e)| (*s, *e)) {
            if s > end.saturating_add(1) {
                break;
            }
            end = end.max(e);
            self.remove_run(s);
        }
        self.runs.insert(start, end);
        self.len = self.len.saturating_add(end - start).saturating_add(1);
    }

    pub fn insert(&mut self, value: u128) {
        self.insert_range(value, value);
    }

    /// Removes `value`; returns whether it was present.
    pub fn remove(&mut self, value: u128) -> bool {
        let Some((s, e)) = self.run_containing(value) else { return false };
        self.remove_run(s);
        if s < value {
            self.runs.insert(s, value - 1);
            self.len = self.len.saturating_add(value - 1 - s).saturating_add(1);
        }
        if value < e {
            self.runs.insert(value + 1, e);
            self.len = self.len.saturating_add(e - value - 1).saturating_add(1);
        }
        true
    }

    /// Removes every member of `start..=end`.
    pub fn remove_range(&mut self, start: u128, end: u128) {
        debug_assert!(start <= end);
        // The run that starts before `start` and reaches into the window keeps its head (and its tail, if it
        // also reaches past `end`); every run starting inside the window keeps only what lies past `end`.
        if let Some((s, e)) = self.runs.range(..start).next_back().map(|(s, e)| (*s, *e))
            && e >= start
        {
            self.remove_run(s);
            self.insert_range(s, start - 1);
            if e > end {
                self.insert_range(end + 1, e);
                return;
            }
        }
        while let Some((s, e)) = self.runs.range(start..=end).next().map(|(s, e)| (*s, *e)) {
            self.remove_run(s);
            if e > end {
                self.insert_range(end + 1, e);
                break;
            }
        }
    }

    fn remove_run(&mut self, start: u128) {
        if let Some(end) = self.runs.remove(&start) {
            self.len = self.len.saturating_sub(end - start).saturating_sub(1);
        }
    }

    /// The smallest member `>= value`.
    pub fn first_at_or_after(&self, value: u128) -> Option<u128> {
        if let Some((_, e)) = self.run_containing(value) {
            debug_assert!(e >= value);
            return Some(value);
        }
        self.runs.range(value..).next().map(|(s, _)| *s)
    }

    /// How many members lie in `start..=end`. O(runs inside the window).
    pub fn count_in(&self, start: u128, end: u128) -> u128 {
        let mut count = 0u128;
        let first = self.run_containing(start).map(|(s, _)| s).unwrap_or(start);
        for (s, e) in self.runs.range(first..=end) {
            let (lo, hi) = ((*s).max(start), (*e).min(end));
            if lo <= hi {
                count = count.saturating_add(hi - lo).saturating_add(1);
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn runs_merge_when_adjacent_and_split_on_removal() {
        let mut set = RunSet::new();
        set.insert_range(10, 20);
        set.insert_range(21, 30);
        set.insert(5);
        assert_eq!(set.runs().collect::<Vec<_>>(), [(5, 5), (10, 30)]);
        assert_eq!(set.len(), 22);
        assert!(set.remove(15));
        assert_eq!(set.runs().collect::<Vec<_>>(), [(5, 5), (10, 14), (16, 30)]);
        assert!(!set.remove(15));
        assert_eq!(set.len(), 21);
        assert_eq!(set.first_at_or_after(15), Some(16));
        assert_eq!(set.first_at_or_after(31), None);
        assert_eq!(set.count_in(0, 12), 4);
    }

    #[test]
    fn full_ipv6_space_does_not_overflow() {
        let mut set = RunSet::new();
        set.insert_range(0, u128::MAX);
        assert_eq!(set.len(), u128::MAX);
        assert!(set.remove(u128::MAX));
        assert!(set.contains(u128::MAX - 1));
        assert_eq!(set.first_at_or_after(u128::MAX), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u8),
        Remove(u8),
        RemoveRange(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), 0u8..8).prop_map(|(s, l)| Op::Insert(s, s.saturating_add(l))),
            any::<u8>().prop_map(Op::Remove),
            (any::<u8>(), 0u8..40).prop_map(|(s, l)| Op::RemoveRange(s, s.saturating_add(l))),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_plain_set(ops in proptest::collection::vec(op(), 0..200), probe in any::<u8>()) {
            let mut set = RunSet::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(s, e) => {
                        set.insert_range(u128::from(s), u128::from(e));
                        model.extend(s..=e);
                    }
                    Op::Remove(v) => {
                        prop_assert_eq!(set.remove(u128::from(v)), model.remove(&v));
                    }
                    Op::RemoveRange(s, e) => {
                        set.remove_range(u128::from(s), u128::from(e));
                        model.retain(|v| !(s..=e).contains(v));
                    }
                }
            }
            prop_assert_eq!(set.len(), model.len() as u128);
            let flattened: BTreeSet<u8> = set.runs().flat_map(|(s, e)| (s as u8)..=(e as u8)).collect();
            prop_assert_eq!(&flattened, &model);
            // Runs are merged: no two touch.
            let runs: Vec<_> = set.runs().collect();
            for pair in runs.windows(2) {
                prop_assert!(pair[0].1 + 1 < pair[1].0);
            }
            prop_assert_eq!(set.first_at_or_after(u128::from(probe)), model.range(probe..).next().map(|v| u128::from(*v)));
            let window = (u128::from(probe / 2), u128::from(probe));
            prop_assert_eq!(set.count_in(window.0, window.1), model.range(probe / 2..=probe).count() as u128);
        }
    }
}
