//! `spec.addresses` entries as inclusive address ranges. The API server's CEL rules refuse malformed entries;
//! this parser is what the controller and the speakers read pools with, so it re-checks everything CEL cannot
//! (reversed IPv6 ranges) and anything written before the CRD was installed. It never panics on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// Addresses that are never a VIP, whatever a pool lists: a host cannot own them on a LAN (or must not, as
/// the limited broadcast), so handing one out makes an EXTERNAL-IP that can never answer, or worse.
/// `(first, last, what they are)`.
pub const SPECIAL_USE: [(IpAddr, IpAddr, &str); 9] = [
    (v4(0, 0, 0, 0), v4(0, 255, 255, 255), "in 0.0.0.0/8 (\"this network\", unspecified)"),
    (v4(127, 0, 0, 0), v4(127, 255, 255, 255), "a loopback address (127.0.0.0/8)"),
    (v4(169, 254, 0, 0), v4(169, 254, 255, 255), "a link-local address (169.254.0.0/16)"),
    (v4(224, 0, 0, 0), v4(239, 255, 255, 255), "a multicast address (224.0.0.0/4)"),
    (v4(255, 255, 255, 255), v4(255, 255, 255, 255), "the limited broadcast address"),
    (v6(0, 0), v6(0, 0), "the unspecified address ::"),
    (v6(0, 1), v6(0, 1), "the loopback address ::1"),
    (v6(0xfe80 << 112, 0), v6(0xfebf << 112, u128::MAX >> 16), "a link-local address (fe80::/10)"),
    (v6(0xff00 << 112, 0), v6(u128::MAX << 112, u128::MAX >> 16), "a multicast address (ff00::/8)"),
];

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// An IPv6 address from its top 16 bits (`high`, already shifted) or'ed with `low`.
const fn v6(high: u128, low: u128) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from_bits(high | low))
}

/// What `ip` is, if it is one of the [`SPECIAL_USE`] addresses.
pub fn special_use(ip: IpAddr) -> Option<&'static str> {
    SPECIAL_USE.iter().find(|(first, last, _)| *first <= ip && ip <= *last).map(|(_, _, what)| *what)
}

/// The addresses of a CIDR entry that a host on that subnet never owns: its network address (IPv4, and the
/// IPv6 Subnet-Router anycast address) and its IPv4 broadcast address. Empty for ranges, single addresses
/// and prefixes too long to have them (/31, /32, /127, /128).
pub fn cidr_edges(entry: &str) -> Vec<(IpAddr, &'static str)> {
    let Some((_, length)) = entry.split_once('/') else { return Vec::new() };
    let Ok((first, last)) = parse_entry(entry) else { return Vec::new() };
    let Ok(length) = length.parse::<u32>() else { return Vec::new() };
    match first {
        IpAddr::V4(_) if length <= 30 => vec![(first, "network address"), (last, "broadcast address")],
        IpAddr::V6(_) if length <= 126 => vec![(first, "Subnet-Router anycast (network) address")],
        _ => Vec::new(),
    }
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

    #[test]
    fn special_use_addresses_are_named() {
        for never in ["0.0.0.0", "127.0.0.1", "169.254.1.1", "224.0.0.1", "239.255.255.255", "255.255.255.255"] {
            assert!(special_use(ip(never)).is_some(), "{never}");
        }
        for never in ["::", "::1", "fe80::1", "febf:ffff::1", "ff02::1", "ffff::1"] {
            assert!(special_use(ip(never)).is_some(), "{never}");
        }
        for fine in ["192.0.2.1", "1.0.0.0", "223.255.255.255", "240.0.0.1", "::2", "fec0::1", "2001:db8::1"] {
            assert_eq!(special_use(ip(fine)), None, "{fine}");
        }
    }

    #[test]
    fn cidr_edges_are_network_and_broadcast() {
        assert_eq!(
            cidr_edges("192.0.2.0/24"),
            [(ip("192.0.2.0"), "network address"), (ip("192.0.2.255"), "broadcast address")]
        );
        assert!(cidr_edges("192.0.2.0/31").is_empty());
        assert!(cidr_edges("192.0.2.0-192.0.2.255").is_empty());
        assert_eq!(cidr_edges("2001:db8::/64"), [(ip("2001:db8::"), "Subnet-Router anycast (network) address")]);
        assert!(cidr_edges("2001:db8::/127").is_empty());
        assert!(cidr_edges("nonsense/8").is_empty());
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
