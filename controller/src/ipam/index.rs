//! Which pools contain an address, or overlap a range, without looking at every pool: the pools' runs sorted
//! by start, with the furthest end reached so far, so a lookup walks back only over runs that can still reach
//! the address. O(log P + answers) for pools that barely overlap (the normal case), O(P) at worst.

use std::collections::BTreeSet;

use super::pool::PoolDef;
use super::ranges::Family;

#[derive(Debug, Default, Clone)]
pub struct PoolIndex {
    names: Vec<String>,
    families: [FamilyIndex; 2],
}

#[derive(Debug, Default, Clone)]
struct FamilyIndex {
    /// (start, end, pool) by start.
    runs: Vec<(u128, u128, usize)>,
    /// `reach[i]`: the largest end among `runs[..=i]`.
    reach: Vec<u128>,
}

impl FamilyIndex {
    /// Pools with a run meeting `start..=end`.
    fn meeting(&self, start: u128, end: u128) -> impl Iterator<Item = usize> + '_ {
        let upto = self.runs.partition_point(|(s, _, _)| *s <= end);
        (0..upto)
            .rev()
            .take_while(move |i| self.reach[*i] >= start)
            .filter(move |i| self.runs[*i].1 >= start)
            .map(move |i| self.runs[i].2)
    }
}

impl PoolIndex {
    pub fn build<'a>(pools: impl IntoIterator<Item = &'a PoolDef>) -> Self {
        let mut index = Self::default();
        for def in pools {
            let id = index.names.len();
            index.names.push(def.name.clone());
            for family in [Family::V4, Family::V6] {
                let runs = &mut index.families[family.slot()].runs;
                runs.extend(def.ranges(family).runs().map(|(s, e)| (s, e, id)));
            }
        }
        for family in &mut index.families {
            family.runs.sort_unstable();
            let mut furthest = 0u128;
            family.reach = family
                .runs
                .iter()
                .map(|(_, e, _)| {
                    furthest = furthest.max(*e);
                    furthest
                })
                .collect();
        }
        index
    }

    /// Names of the pools whose ranges hold `value` (before per-pool skips such as avoidBuggyIPs).
    pub fn containing(&self, family: Family, value: u128) -> BTreeSet<&str> {
        self.overlapping(family, value, value)
    }

    /// Names of the pools whose ranges meet `start..=end`.
    pub fn overlapping(&self, family: Family, start: u128, end: u128) -> BTreeSet<&str> {
        self.families[family.slot()].meeting(start, end).map(|id| self.names[id].as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool(name: &str, runs: &[(u8, u8)]) -> PoolDef {
        let mut def = PoolDef::from_entries(name, &["2001:db8::1"]).unwrap();
        def.v6 = Default::default();
        for (s, e) in runs {
            def.v6.insert_range(u128::from(*s), u128::from(*s.max(e)));
        }
        def
    }

    #[test]
    fn a_wide_pool_is_found_behind_many_small_ones() {
        let mut pools = vec![pool("wide", &[(0, 250)])];
        pools.extend((0..50u8).map(|i| pool(&format!("p{i}"), &[(i * 4, i * 4 + 1)])));
        let index = PoolIndex::build(&pools);
        assert_eq!(index.containing(Family::V6, 201).into_iter().collect::<Vec<_>>(), ["wide"]);
        assert_eq!(index.containing(Family::V6, 8).into_iter().collect::<Vec<_>>(), ["p2", "wide"]);
        assert!(index.containing(Family::V6, 251).is_empty());
        assert!(index.containing(Family::V4, 8).is_empty());
        assert_eq!(index.overlapping(Family::V6, 9, 12).len(), 3, "p2, p3 and wide");
    }

    proptest! {
        #[test]
        fn answers_what_a_scan_answers(
            pools in proptest::collection::vec(proptest::collection::vec((any::<u8>(), any::<u8>()), 1..4), 0..20),
            start in any::<u8>(),
            len in 0u8..30,
        ) {
            let defs: Vec<PoolDef> = pools.iter().enumerate().map(|(i, runs)| pool(&format!("p{i}"), runs)).collect();
            let index = PoolIndex::build(&defs);
            let (start, end) = (u128::from(start), u128::from(start) + u128::from(len));
            let scanned: BTreeSet<&str> = defs
                .iter()
                .filter(|d| d.v6.count_in(start, end) > 0)
                .map(|d| d.name.as_str())
                .collect();
            prop_assert_eq!(index.overlapping(Family::V6, start, end), scanned);
        }
    }
}
