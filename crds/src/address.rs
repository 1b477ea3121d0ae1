//! `spec.addresses` entries as inclusive address ranges. The API server's CEL rules refuse malformed entries;
//! this parser is what the controller and the speakers read pools with, so it re-checks everything CEL cannot
//! (reversed IPv6 ranges) and anything written before the CRD was installed. It never panics on any input.

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressEntryError {
    #[error("address entry {entry:?} is not an IP address, a CIDR or a range")]
    Malformed { entry: String },
    #[error("CIDR {entry:?} has bits set after its prefix length")]
    HostBitsSet { entry: String },
    #[error("range {entry:?} mixes IPv4 and IPv6")]
    MixedFamilies { entry: String },
    #[error("range {entry:?} is reversed: its first address comes after its last")]
    Reversed { entry: String },
}

/// The first and last address of one entry: a CIDR (`192.0.2.0/28`), a range (`192.0.2.10-192.0.2.20`) or
/// a single address.
pub fn parse_entry(entry: &str) -> Result<(IpAddr, IpAddr), AddressEntryError> {
    let malformed = || AddressEntryError::Malformed { entry: entry.to_string() };
    if let Some((first, last)) = entry.split_once('-') {
        let first: IpAddr = first.parse().map_err(|_| malformed())?;
        let last: IpAddr = last.parse().map_err(|_| malformed())?;
        if first.is_ipv4() != last.is_ipv4() {
            return Err(AddressEntryError::MixedFamilies { entry: entry.to_string() });
        }
        if first > last {
            return Err(AddressEntryError::Reversed { entry: entry.to_string() });
        }
        return Ok((first, last));
    }
    if let Some((address, length)) = entry.split_once('/') {
        let address: IpAddr = address.parse().map_err(|_| malformed())?;
        let bits: u32 = if address.is_ipv4() { 32 } else { 128 };
        let length: u32 =
            length.parse().ok().filter(|l| *l <= bits && !length.starts_with('+')).ok_or_else(malformed)?;
        let value = to_u128(address);
        let host_mask = if length == bits { 0 } else { (u128::MAX >> (128 - bits)) >> length };
        if value & host_mask != 0 {
            return Err(AddressEntryError::HostBitsSet { entry: entry.to_string() });
        }
        return Ok((address, from_u128_like(address, value | host_mask)));
    }
    let ip: IpAddr = entry.parse().map_err(|_| malformed())?;
    Ok((ip, ip))
}

/// The ranges of the entries that parse (one that does not contains nothing), for repeated lookups.
pub fn valid_ranges<'a>(entries: impl IntoIterator<Item = &'a str>) -> Vec<(IpAddr, IpAddr)> {
    entries.into_iter().filter_map(|e| parse_entry(e).ok()).collect()
}

/// Whether `ip` is in one of `ranges`.
pub fn ranges_contain(ranges: &[(IpAddr, IpAddr)], ip: IpAddr) -> bool {
    ranges.iter().any(|(first, last)| *first <= ip && ip <= *last)
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// `value` as an address of `like`'s family (`value` fits: it came from an address of that family).
fn from_u128_like(like: IpAddr, value: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from(u32::try_from(value).unwrap_or(u32::MAX).to_be_bytes()),
        IpAddr::V6(_) => IpAddr::from(value.to_be_bytes()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_of_every_form_parse_to_ranges() {
        assert_eq!(parse_entry("192.0.2.0/30"), Ok((ip("192.0.2.0"), ip("192.0.2.3"))));
        assert_eq!(parse_entry("192.0.2.10-192.0.2.20"), Ok((ip("192.0.2.10"), ip("192.0.2.20"))));
        assert_eq!(parse_entry("192.0.2.7"), Ok((ip("192.0.2.7"), ip("192.0.2.7"))));
        assert_eq!(parse_entry("192.0.2.7/32"), Ok((ip("192.0.2.7"), ip("192.0.2.7"))));
        assert_eq!(parse_entry("0.0.0.0/0"), Ok((ip("0.0.0.0"), ip("255.255.255.255"))));
        assert_eq!(parse_entry("2001:db8::/64"), Ok((ip("2001:db8::"), ip("2001:db8::ffff:ffff:ffff:ffff"))));
        assert_eq!(parse_entry("::/0"), Ok((ip("::"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))));
    }

    #[test]
    fn what_cel_cannot_check_is_refused_here() {
        assert!(matches!(parse_entry("2001:db8::9-2001:db8::1"), Err(AddressEntryError::Reversed { .. })));
        assert!(matches!(parse_entry("192.0.2.1-2001:db8::1"), Err(AddressEntryError::MixedFamilies { .. })));
        assert!(matches!(parse_entry("192.0.2.1/24"), Err(AddressEntryError::HostBitsSet { .. })));
        assert!(matches!(parse_entry("192.0.2.300/24"), Err(AddressEntryError::Malformed { .. })));
        assert!(matches!(parse_entry("192.0.2.0/33"), Err(AddressEntryError::Malformed { .. })));
        assert!(matches!(parse_entry("192.0.2.0/+8"), Err(AddressEntryError::Malformed { .. })));
        assert!(matches!(parse_entry(""), Err(AddressEntryError::Malformed { .. })));
    }

    #[test]
    fn containment_ignores_broken_entries() {
        let ranges = valid_ranges(["nonsense", "192.0.2.200-192.0.2.250", "2001:db8::200/120"]);
        assert!(ranges_contain(&ranges, ip("192.0.2.200")));
        assert!(ranges_contain(&ranges, ip("2001:db8::2ff")));
        assert!(!ranges_contain(&ranges, ip("192.0.2.251")));
        assert!(!ranges_contain(&ranges, ip("2001:db8::300")));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(entry in "\\PC{0,60}") {
            let _ = parse_entry(&entry);
        }

        #[test]
        fn address_like_input_never_panics(a in any::<[u8; 4]>(), len in 0u32..200, v6 in any::<u128>()) {
            let v4 = std::net::Ipv4Addr::from(a);
            let v6 = std::net::Ipv6Addr::from(v6);
            for entry in [format!("{v4}/{len}"), format!("{v6}/{len}"), format!("{v4}-{v6}"), format!("{v6}-{v6}")] {
                if let Ok((first, last)) = parse_entry(&entry) {
                    prop_assert!(first <= last);
                    prop_assert_eq!(first.is_ipv4(), last.is_ipv4());
                }
            }
        }
    }
}
