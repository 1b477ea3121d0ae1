//! A pool as the allocator sees it: its addresses parsed into per-family interval sets, and its rules.
//! The API server already refused malformed entries (CEL); what CEL cannot check (reversed IPv6 ranges) and
//! anything that slipped past it (an object written before the CRD was installed) is refused here.

use ferrolb_crds::reason;
use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_crds::IPAddressPoolSpec;
use ferrolb_crds::address::{self, AddressEntryError};
use ferrolb_crds::selector::{self, SelectorError};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::ranges::{Family, RunSet, to_u128};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Entry(#[from] AddressEntryError),
    #[error("the pool has no addresses")]
    Empty,
    #[error("serviceAllocation.{field}[{index}] is invalid: {error}")]
    InvalidSelector { field: &'static str, index: usize, error: SelectorError },
}

impl PoolError {
    /// The pool's `Ready=False` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Entry(_) | Self::Empty => reason::INVALID_ADDRESSES,
            Self::InvalidSelector { .. } => reason::INVALID_SELECTOR,
        }
    }
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
    /// What the pool may hand out: its entries less the addresses that are never VIPs
    /// ([`address::SPECIAL_USE`], the network and broadcast addresses of its CIDRs).
    pub v4: RunSet,
    pub v6: RunSet,
    /// Addresses its entries list that it never hands out, and why (the special-use ones excepted).
    pub withheld: BTreeMap<IpAddr, String>,
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
            withheld: BTreeMap::new(),
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
        for (first, last, _) in address::SPECIAL_USE {
            let family = Family::of(first);
            pool.ranges_mut(family).remove_range(to_u128(first), to_u128(last));
        }
        for entry in &spec.addresses {
            for (ip, what) in address::cidr_edges(entry.as_str()) {
                if pool.ranges_mut(Family::of(ip)).remove(to_u128(ip)) {
                    pool.withheld.insert(ip, format!("the {what} of {}", entry.as_str()));
                }
            }
        }
        if let Some(allocation) = &spec.service_allocation {
            for (field, selectors) in [
                ("namespaceSelectors", &allocation.namespace_selectors),
                ("serviceSelectors", &allocation.service_selectors),
            ] {
                for (index, selector) in selectors.iter().enumerate() {
                    // Matching against no labels evaluates every requirement, so a malformed one shows here.
                    selector::matches(selector, &BTreeMap::new()).map_err(|error| PoolError::InvalidSelector {
                        field,
                        index,
                        error,
                    })?;
                }
            }
        }
        Ok(pool)
    }

    /// Why the pool never hands out `ip` although its entries list it, if so.
    pub fn withheld_reason(&self, ip: IpAddr) -> Option<String> {
        self.withheld.get(&ip).cloned()
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

    /// How many of `start..=end` (inside its ranges) the pool would hand out.
    pub fn hands_out_in(&self, family: Family, start: u128, end: u128) -> u128 {
        let all = (end - start).saturating_add(1);
        if self.avoid_buggy_ips && family == Family::V4 { all - buggy_in(start, end) } else { all }
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
        // The /23's network and broadcast addresses are withheld anyway.
        assert_eq!(pool.usable(Family::V4), 510);
        pool.avoid_buggy_ips = true;
        assert_eq!(pool.usable(Family::V4), 508);
        assert!(!pool.contains("192.0.2.0".parse().unwrap()));
        assert!(!pool.contains("192.0.3.255".parse().unwrap()));
        assert!(pool.contains("192.0.2.1".parse().unwrap()));
        // IPv6 has no such addresses.
        assert_eq!(pool.usable(Family::V6), 255);
        assert!(pool.contains("2001:db8::ff".parse().unwrap()));
    }

    #[test]
    fn addresses_that_are_never_vips_are_left_out() {
        let everything = PoolDef::from_entries("all", &["0.0.0.0/0", "::/0"]).unwrap();
        for never in ["0.0.0.0", "0.1.2.3", "127.0.0.1", "169.254.0.1", "224.0.0.1", "255.255.255.255", "::", "::1"] {
            assert!(!everything.contains(never.parse().unwrap()), "{never}");
        }
        assert!(everything.contains("192.0.2.1".parse().unwrap()));
        assert!(everything.contains("::2".parse().unwrap()));
        assert!(!everything.contains("fe80::1".parse().unwrap()));
        assert!(!everything.contains("ff02::1".parse().unwrap()));
        // 0/8, 127/8, 169.254/16, 224/4 and the broadcast address.
        let withheld = (1u128 << 24) * 2 + (1 << 16) + (1 << 28) + 1;
        assert_eq!(everything.usable(Family::V4), (1u128 << 32) - withheld);

        let lan = PoolDef::from_entries("lan", &["192.0.2.0/24", "198.51.100.0/31", "2001:db8::/120"]).unwrap();
        assert_eq!(lan.usable(Family::V4), 254 + 2);
        assert!(!lan.contains("192.0.2.0".parse().unwrap()));
        assert!(!lan.contains("192.0.2.255".parse().unwrap()));
        assert!(lan.contains("198.51.100.0".parse().unwrap()));
        assert_eq!(
            lan.withheld_reason("192.0.2.255".parse().unwrap()).as_deref(),
            Some("the broadcast address of 192.0.2.0/24")
        );
        assert!(!lan.contains("2001:db8::".parse().unwrap()));
        assert_eq!(lan.usable(Family::V6), 255);
        // A range lists exactly what it says.
        let range = PoolDef::from_entries("range", &["192.0.2.0-192.0.2.255"]).unwrap();
        assert_eq!(range.usable(Family::V4), 256);
    }

    #[test]
    fn a_malformed_selector_refuses_the_pool() {
        let mut spec = IPAddressPoolSpec::with_addresses(&["192.0.2.0/28"]);
        spec.service_allocation = Some(serde_json::from_value(serde_json::json!({
            "serviceSelectors": [{"matchLabels": {"a": "b"}}, {"matchExpressions": [{"key": "tier", "operator": "Equals", "values": ["web"]}]}]
        })).unwrap());
        let error = PoolDef::from_spec("p", &spec).unwrap_err();
        assert_eq!(error.reason(), reason::INVALID_SELECTOR);
        assert!(
            error
                .to_string()
                .starts_with("serviceAllocation.serviceSelectors[1] is invalid: unknown selector operator"),
            "{error}"
        );
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
