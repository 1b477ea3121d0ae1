//! A pool as the allocator sees it: its addresses parsed into per-family interval sets, and its rules.
//! The API server already refused malformed entries (CEL); what CEL cannot check (reversed IPv6 ranges) and
//! anything that slipped past it (an object written before the CRD was installed) is refused here.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_crds::IPAddressPoolSpec;
use ferrolb_crds::address::{self, AddressEntryError};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::ranges::{Family, RunSet, to_u128};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Entry(#[from] AddressEntryError),
    #[error("the pool has no addresses")]
    Empty,
}

/// Which Services a pool serves, and in which order pools are tried (`spec.serviceAllocation`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restrictions {
    pub priority: Option<i32>,
    pub namespaces: Vec<String>,
    pub namespace_selectors: Vec<LabelSelector>,
    pub service_selectors: Vec<LabelSelector>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolDef {
    pub name: String,
    pub v4: RunSet,
    pub v6: RunSet,
    pub auto_assign: bool,
    pub avoid_buggy_ips: bool,
    pub disabled: bool,
    /// `None`: the pool serves every Service, after the pools whose restrictions a Service matches.
    pub restrictions: Option<Restrictions>,
    /// Labels of the pool itself (for L2Advertisement pool selectors).
    pub labels: BTreeMap<String, String>,
}

impl PoolDef {
    /// Parses a pool's spec. Every entry must be valid: a pool with one bad entry is refused as a whole,
    /// rather than silently serving part of what the user wrote.
    pub fn from_spec(name: &str, spec: &IPAddressPoolSpec) -> Result<Self, PoolError> {
        let mut pool = Self {
            name: name.to_string(),
            v4: RunSet::new(),
            v6: RunSet::new(),
            auto_assign: spec.auto_assign,
            avoid_buggy_ips: spec.avoid_buggy_ips,
            disabled: spec.disabled,
            restrictions: spec.service_allocation.as_ref().map(|a| Restrictions {
                priority: a.priority,
                namespaces: a.namespaces.clone(),
                namespace_selectors: a.namespace_selectors.clone(),
                service_selectors: a.service_selectors.clone(),
            }),
            labels: BTreeMap::new(),
        };
        if spec.addresses.is_empty() {
            return Err(PoolError::Empty);
        }
        for entry in &spec.addresses {
            let (family, start, end) = parse_entry(entry.as_str())?;
            pool.ranges_mut(family).insert_range(start, end);
        }
        Ok(pool)
    }

    /// A pool from entries, for tests and tools.
    pub fn from_entries(name: &str, entries: &[&str]) -> Result<Self, PoolError> {
        Self::from_spec(name, &IPAddressPoolSpec::with_addresses(entries))
    }

    pub fn ranges(&self, family: Family) -> &RunSet {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn ranges_mut(&mut self, family: Family) -> &mut RunSet {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    pub fn has_family(&self, family: Family) -> bool {
        !self.ranges(family).is_empty()
    }

    /// Whether the pool may hand out `ip` (inside its ranges and, with `avoidBuggyIPs`, not a .0/.255).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges(Family::of(ip)).contains(to_u128(ip)) && !self.skips(Family::of(ip), to_u128(ip))
    }

    /// Addresses the pool will never hand out although inside its ranges.
    pub fn skips(&self, family: Family, value: u128) -> bool {
        self.avoid_buggy_ips && family == Family::V4 && matches!(value & 0xff, 0 | 0xff)
    }

    /// How many addresses of `family` the pool can hand out.
    pub fn usable(&self, family: Family) -> u128 {
        let ranges = self.ranges(family);
        if !(self.avoid_buggy_ips && family == Family::V4) {
            return ranges.len();
        }
        ranges.runs().map(|(s, e)| (e - s + 1) - buggy_in(s, e)).sum()
    }

    /// Names of the pools in `others` whose addresses overlap this pool's.
    pub fn overlaps<'a>(&self, others: impl IntoIterator<Item = &'a PoolDef>) -> Vec<String> {
        others
            .into_iter()
            .filter(|other| other.name != self.name)
            .filter(|other| {
                [Family::V4, Family::V6]
                    .into_iter()
                    .any(|family| self.ranges(family).runs().any(|(s, e)| other.ranges(family).count_in(s, e) > 0))
            })
            .map(|other| other.name.clone())
            .collect()
    }
}

/// How many values in `start..=end` end in .0 or .255 (IPv4).
fn buggy_in(start: u128, end: u128) -> u128 {
    // Count values ≡ 0 and ≡ 255 (mod 256) in [start, end].
    let count_congruent = |r: u128| -> u128 {
        let below = |n: u128| -> u128 { if n < r { 0 } else { (n - r) / 256 + 1 } };
        below(end) - if start == 0 { 0 } else { below(start - 1) }
    };
    count_congruent(0) + count_congruent(255)
}

/// One `spec.addresses` entry as an inclusive range.
pub fn parse_entry(entry: &str) -> Result<(Family, u128, u128), PoolError> {
    let (first, last) = address::parse_entry(entry)?;
    Ok((Family::of(first), to_u128(first), to_u128(last)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn entries_become_per_family_ranges() {
        assert_eq!(parse_entry("192.0.2.0/30"), Ok((Family::V4, 0xc000_0200, 0xc000_0203)));
        let (family, start, end) = parse_entry("2001:db8::/64").unwrap();
        assert_eq!((family, end - start), (Family::V6, u128::from(u64::MAX)));
        assert!(matches!(
            parse_entry("2001:db8::9-2001:db8::1"),
            Err(PoolError::Entry(AddressEntryError::Reversed { .. }))
        ));
        assert!(matches!(PoolDef::from_entries("p", &[]), Err(PoolError::Empty)));
    }

    #[test]
    fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
        let mut pool = PoolDef::from_entries("p", &["192.0.2.0/23", "2001:db8::/120"]).unwrap();
        assert_eq!(pool.usable(Family::V4), 512);
        pool.avoid_buggy_ips = true;
        assert_eq!(pool.usable(Family::V4), 508);
        assert!(!pool.contains("192.0.2.0".parse().unwrap()));
        assert!(!pool.contains("192.0.3.255".parse().unwrap()));
        assert!(pool.contains("192.0.2.1".parse().unwrap()));
        // IPv6 has no such addresses.
        assert_eq!(pool.usable(Family::V6), 256);
        assert!(pool.contains("2001:db8::ff".parse().unwrap()));
    }

    #[test]
    fn overlapping_pools_are_named() {
        let a = PoolDef::from_entries("a", &["192.0.2.0/28"]).unwrap();
        let b = PoolDef::from_entries("b", &["192.0.2.10-192.0.2.40"]).unwrap();
        let c = PoolDef::from_entries("c", &["192.0.2.64/28", "2001:db8::/120"]).unwrap();
        assert_eq!(a.overlaps([&a, &b, &c]), ["b"]);
        assert!(c.overlaps([&a, &b]).is_empty());
    }

    proptest! {
        #[test]
        fn buggy_count_matches_a_scan(start in 0u128..2000, len in 0u128..2000) {
            let end = start + len;
            let scanned = (start..=end).filter(|v| matches!(v & 0xff, 0 | 0xff)).count() as u128;
            prop_assert_eq!(buggy_in(start, end), scanned);
        }
    }
}
