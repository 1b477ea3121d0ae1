//! IPv6 Neighbor Discovery (RFC 4861) for VIPs: Neighbor Solicitations in, Neighbor Advertisements out.
//! Every ND message is sent, and accepted only, with hop limit 255; checksums cover the IPv6 pseudo-header.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;

use super::{ETHERNET_HEADER, FrameError, Mac, take};

pub const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPV6_HEADER: usize = 40;
const NEXT_HEADER_ICMPV6: u8 = 58;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const OPTION_SOURCE_LINK_LAYER: u8 = 1;
const OPTION_TARGET_LINK_LAYER: u8 = 2;
/// RFC 4861 7.1: an NS/NA body is at least 24 bytes (type, code, checksum, flags/reserved, target).
const ND_BODY: usize = 24;
pub const HOP_LIMIT: u8 = 255;
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Solicitation,
    Advertisement { router: bool, solicited: bool, override_: bool },
}

/// A Neighbor Solicitation or Advertisement with its Ethernet and IPv6 addressing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdFrame {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub ip_src: Ipv6Addr,
    pub ip_dst: Ipv6Addr,
    pub kind: Kind,
    pub target: Ipv6Addr,
    /// Source (in an NS) or target (in an NA) link-layer address option.
    pub link_layer: Option<Mac>,
}

impl NdFrame {
    pub fn parse(frame: &[u8]) -> Result<Self, FrameError> {
        let eth_dst = Mac(take::<6>(frame, 0)?);
        let eth_src = Mac(take::<6>(frame, 6)?);
        if u16::from_be_bytes(take::<2>(frame, 12)?) != ETHERTYPE_IPV6 {
            return Err(FrameError::NotIpv6);
        }
        let ip = frame.get(ETHERNET_HEADER..).unwrap_or_default();
        let header = take::<IPV6_HEADER>(ip, 0)?;
        if header[0] >> 4 != 6 {
            return Err(FrameError::NotIpv6);
        }
        if header[6] != NEXT_HEADER_ICMPV6 {
            return Err(FrameError::NotNeighborDiscovery);
        }
        let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let ip_src = Ipv6Addr::from(take::<16>(&header, 8)?);
        let ip_dst = Ipv6Addr::from(take::<16>(&header, 24)?);
        let body = ip
            .get(IPV6_HEADER..IPV6_HEADER + payload_len)
            .ok_or(FrameError::Truncated { needed: ETHERNET_HEADER + IPV6_HEADER + payload_len, got: frame.len() })?;
        let fixed = take::<ND_BODY>(body, 0)?;
        let kind = match fixed[0] {
            NEIGHBOR_SOLICITATION => Kind::Solicitation,
            NEIGHBOR_ADVERTISEMENT => Kind::Advertisement {
                router: fixed[4] & 0x80 != 0,
                solicited: fixed[4] & 0x40 != 0,
                override_: fixed[4] & 0x20 != 0,
            },
            _ => return Err(FrameError::NotNeighborDiscovery),
        };
        if header[7] != HOP_LIMIT {
            return Err(FrameError::HopLimit(header[7]));
        }
        if fixed[1] != 0 {
            return Err(FrameError::BadCode(fixed[1]));
        }
        if checksum(&ip_src, &ip_dst, body) != 0 {
            return Err(FrameError::BadChecksum);
        }
        let target = Ipv6Addr::from(take::<16>(&fixed, 8)?);
        if target.is_multicast() {
            return Err(FrameError::MulticastTarget);
        }
        let wanted = match kind {
            Kind::Solicitation => OPTION_SOURCE_LINK_LAYER,
            Kind::Advertisement { .. } => OPTION_TARGET_LINK_LAYER,
        };
        let link_layer = link_layer_option(body.get(ND_BODY..).unwrap_or_default(), wanted)?;
        Ok(Self { eth_dst, eth_src, ip_src, ip_dst, kind, target, link_layer })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = vec![0u8; ND_BODY];
        match self.kind {
            Kind::Solicitation => body[0] = NEIGHBOR_SOLICITATION,
            Kind::Advertisement { router, solicited, override_ } => {
                body[0] = NEIGHBOR_ADVERTISEMENT;
                body[4] = (u8::from(router) << 7) | (u8::from(solicited) << 6) | (u8::from(override_) << 5);
            }
        }
        body[8..24].copy_from_slice(&self.target.octets());
        if let Some(mac) = self.link_layer {
            let option = match self.kind {
                Kind::Solicitation => OPTION_SOURCE_LINK_LAYER,
                Kind::Advertisement { .. } => OPTION_TARGET_LINK_LAYER,
            };
            body.extend_from_slice(&[option, 1]);
            body.extend_from_slice(&mac.0);
        }
        let sum = checksum(&self.ip_src, &self.ip_dst, &body);
        body[2..4].copy_from_slice(&sum.to_be_bytes());

        let mut out = Vec::with_capacity(ETHERNET_HEADER + IPV6_HEADER + body.len());
        out.extend_from_slice(&self.eth_dst.0);
        out.extend_from_slice(&self.eth_src.0);
        out.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        out.extend_from_slice(&[0x60, 0, 0, 0]);
        // The body is at most 32 bytes: the cast cannot truncate.
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&[NEXT_HEADER_ICMPV6, HOP_LIMIT]);
        out.extend_from_slice(&self.ip_src.octets());
        out.extend_from_slice(&self.ip_dst.octets());
        out.extend_from_slice(&body);
        out
    }
}

/// The link-layer address option of type `wanted` among `options`, checking every option's framing.
fn link_layer_option(mut options: &[u8], wanted: u8) -> Result<Option<Mac>, FrameError> {
    let mut found = None;
    while !options.is_empty() {
        let [kind, units] = take::<2>(options, 0)?;
        let len = usize::from(units) * 8;
        // RFC 4861 4.6: a zero-length option is invalid and the packet must be dropped.
        if len == 0 || len > options.len() {
            return Err(FrameError::BadOption);
        }
        if kind == wanted && found.is_none() {
            found = Some(Mac(take::<6>(options, 2).map_err(|_| FrameError::BadOption)?));
        }
        options = &options[len..];
    }
    Ok(found)
}

/// The ICMPv6 checksum over the pseudo-header and `body` (0 when `body` carries a correct checksum).
fn checksum(src: &Ipv6Addr, dst: &Ipv6Addr, body: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum = sum.wrapping_add(u32::from(word));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    // Upper-layer length fits in 32 bits for any frame; next header last.
    add(&(body.len() as u32).to_be_bytes());
    add(&[0, 0, 0, NEXT_HEADER_ICMPV6]);
    add(body);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The solicited-node multicast group a host must join to hear NS for `address` (ff02::1:ffXX:XXXX).
pub fn solicited_node_group(address: Ipv6Addr) -> Ipv6Addr {
    let o = address.octets();
    Ipv6Addr::from([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15]])
}

/// The Ethernet multicast address of an IPv6 multicast group (33:33 + its low 32 bits).
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    Mac([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// The NA answering `solicitation` if it asks for a VIP we own: to the solicitor (or all-nodes when it
/// solicited from the unspecified address during DAD), Solicited set, Override set, with our MAC.
///
/// Its source address is the VIP itself, as Linux does for its own addresses: the kernel accepts any
/// on-link source, but tools such as ndisc6 only accept an answer that comes from the target.
pub fn answer(solicitation: &NdFrame, owned: &BTreeSet<Ipv6Addr>, our_mac: Mac) -> Option<NdFrame> {
    if solicitation.kind != Kind::Solicitation || !owned.contains(&solicitation.target) {
        return None;
    }
    let dad = solicitation.ip_src.is_unspecified();
    let (ip_dst, eth_dst) = if dad {
        (ALL_NODES, multicast_mac(ALL_NODES))
    } else {
        (solicitation.ip_src, solicitation.link_layer.unwrap_or(solicitation.eth_src))
    };
    Some(NdFrame {
        eth_dst,
        eth_src: our_mac,
        ip_src: solicitation.target,
        ip_dst,
        kind: Kind::Advertisement { router: false, solicited: !dad, override_: true },
        target: solicitation.target,
        link_layer: Some(our_mac),
    })
}

/// The unsolicited NA sent on takeover: to all-nodes, Override set so caches switch to us at once.
pub fn unsolicited(vip: Ipv6Addr, our_mac: Mac, our_link_local: Ipv6Addr) -> NdFrame {
    NdFrame {
        eth_dst: multicast_mac(ALL_NODES),
        eth_src: our_mac,
        ip_src: our_link_local,
        ip_dst: ALL_NODES,
        kind: Kind::Advertisement { router: false, solicited: false, override_: true },
        target: vip,
        link_layer: Some(our_mac),
    }
}

/// A Neighbor Solicitation for `vip` from the unspecified address (as Duplicate Address Detection sends
/// it, RFC 4862 §5.4.2: no source link-layer option, so no cache learns anything from it), to the VIP's
/// solicited-node group: the host holding the VIP answers to all-nodes, which tells us it is taken.
pub fn probe(vip: Ipv6Addr, our_mac: Mac) -> NdFrame {
    let group = solicited_node_group(vip);
    NdFrame {
        eth_dst: multicast_mac(group),
        eth_src: our_mac,
        ip_src: Ipv6Addr::UNSPECIFIED,
        ip_dst: group,
        kind: Kind::Solicitation,
        target: vip,
        link_layer: None,
    }
}

/// An NA for one of our VIPs from a link-layer address that is not ours: another host claims it.
pub fn conflict(frame: &NdFrame, owned: &BTreeSet<Ipv6Addr>, our_macs: &BTreeSet<Mac>) -> Option<(Ipv6Addr, Mac)> {
    let Kind::Advertisement { .. } = frame.kind else { return None };
    let mac = frame.link_layer.unwrap_or(frame.eth_src);
    (owned.contains(&frame.target) && !our_macs.contains(&mac)).then_some((frame.target, mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OURS: Mac = Mac([0x02, 0xf0, 0, 0, 0, 0x0b]);
    const CLIENT: Mac = Mac([0x02, 0xf0, 0, 0, 0, 0x02]);

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn solicitation(target: &str) -> NdFrame {
        let group = solicited_node_group(ip(target));
        NdFrame {
            eth_dst: multicast_mac(group),
            eth_src: CLIENT,
            ip_src: ip("2001:db8::2"),
            ip_dst: group,
            kind: Kind::Solicitation,
            target: ip(target),
            link_layer: Some(CLIENT),
        }
    }

    /// `ndisc6 2001:db8::200 eth0` from 02:f0:00:00:00:02, captured with tcpdump in a lab namespace.
    const NDISC6_SOLICITATION: [u8; 86] = [
        0x33, 0x33, 0xff, 0x00, 0x02, 0x00, 0x02, 0xf0, 0x00, 0x00, 0x00, 0x02, 0x86, 0xdd, 0x60, 0x06, 0xe5, 0xfa,
        0x00, 0x20, 0x3a, 0xff, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf0, 0x00, 0xff, 0xfe, 0x00,
        0x00, 0x02, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0x00, 0x02, 0x00,
        0x87, 0x00, 0x46, 0x81, 0x00, 0x00, 0x00, 0x00, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0x01, 0x02, 0xf0, 0x00, 0x00, 0x00, 0x02,
    ];

    #[test]
    fn a_probe_is_answered_by_the_holder_to_all_nodes_and_its_answer_is_a_claim() {
        let vip = ip("2001:db8::200");
        let other = Mac([0x02, 0, 0, 0, 0, 0x0c]);
        let probe = probe(vip, OURS);
        assert_eq!(NdFrame::parse(&probe.encode()), Ok(probe));
        let owned = BTreeSet::from([vip]);
        let answer = answer(&probe, &owned, other).unwrap();
        assert_eq!((answer.ip_dst, answer.eth_dst), (ALL_NODES, multicast_mac(ALL_NODES)));
        assert_eq!(conflict(&answer, &owned, &BTreeSet::from([OURS])), Some((vip, other)));
        assert_eq!(conflict(&probe, &owned, &BTreeSet::from([other])), None, "a solicitation claims nothing");
    }

    #[test]
    fn a_solicitation_as_ndisc6_sends_it_parses_and_is_answered() {
        let ns = NdFrame::parse(&NDISC6_SOLICITATION).unwrap();
        assert_eq!(
            (ns.ip_src, ns.ip_dst, ns.target),
            (ip("fe80::f0:ff:fe00:2"), ip("ff02::1:ff00:200"), ip("2001:db8::200"))
        );
        assert_eq!(
            (ns.kind, ns.link_layer, ns.eth_dst),
            (Kind::Solicitation, Some(CLIENT), multicast_mac(ip("ff02::1:ff00:200")))
        );
        let na = answer(&ns, &BTreeSet::from([ip("2001:db8::200")]), OURS).unwrap();
        assert_eq!((na.eth_dst, na.ip_dst), (CLIENT, ip("fe80::f0:ff:fe00:2")));
    }

    #[test]
    fn solicited_node_groups_follow_rfc_4291() {
        assert_eq!(solicited_node_group(ip("2001:db8::200")), ip("ff02::1:ff00:200"));
        assert_eq!(multicast_mac(ip("ff02::1:ff00:200")), Mac([0x33, 0x33, 0xff, 0, 0x02, 0x00]));
    }

    #[test]
    fn a_solicitation_round_trips_with_a_valid_checksum() {
        let ns = solicitation("2001:db8::200");
        let bytes = ns.encode();
        assert_eq!(bytes[ETHERNET_HEADER + 7], 255, "hop limit");
        assert_eq!(NdFrame::parse(&bytes), Ok(ns));
        let mut corrupt = bytes.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert_eq!(NdFrame::parse(&corrupt), Err(FrameError::BadChecksum));
    }

    #[test]
    fn forwarded_neighbor_discovery_is_refused() {
        let mut bytes = solicitation("2001:db8::200").encode();
        bytes[ETHERNET_HEADER + 7] = 64;
        assert_eq!(NdFrame::parse(&bytes), Err(FrameError::HopLimit(64)));
    }

    #[test]
    fn owned_vips_are_answered_solicited_with_override() {
        let owned = BTreeSet::from([ip("2001:db8::200")]);
        let na = answer(&solicitation("2001:db8::200"), &owned, OURS).unwrap();
        assert_eq!((na.eth_dst, na.ip_dst, na.ip_src), (CLIENT, ip("2001:db8::2"), ip("2001:db8::200")));
        assert_eq!(na.kind, Kind::Advertisement { router: false, solicited: true, override_: true });
        assert_eq!((na.target, na.link_layer), (ip("2001:db8::200"), Some(OURS)));
        assert_eq!(NdFrame::parse(&na.encode()), Ok(na));
        assert_eq!(answer(&solicitation("2001:db8::201"), &owned, OURS), None);
        // Duplicate address detection from ::: answered to all-nodes, not solicited.
        let mut dad = solicitation("2001:db8::200");
        dad.ip_src = Ipv6Addr::UNSPECIFIED;
        dad.link_layer = None;
        let defended = answer(&dad, &owned, OURS).unwrap();
        assert_eq!(
            (defended.ip_dst, defended.kind),
            (ALL_NODES, Kind::Advertisement { router: false, solicited: false, override_: true })
        );
    }

    #[test]
    fn takeover_advertisement_goes_to_all_nodes_with_override() {
        let na = unsolicited(ip("2001:db8::200"), OURS, ip("fe80::1"));
        assert_eq!((na.eth_dst, na.ip_dst), (Mac([0x33, 0x33, 0, 0, 0, 1]), ALL_NODES));
        assert_eq!(NdFrame::parse(&na.encode()), Ok(na));
        let owned = BTreeSet::from([ip("2001:db8::200")]);
        assert_eq!(conflict(&na, &owned, &BTreeSet::from([OURS])), None);
        assert_eq!(conflict(&na, &owned, &BTreeSet::new()), Some((ip("2001:db8::200"), OURS)));
    }

    #[test]
    fn malformed_options_are_refused() {
        let mac = [0x02, 0xf0, 0, 0, 0, 0x02];
        let good = [&[OPTION_SOURCE_LINK_LAYER, 1][..], &mac].concat();
        assert_eq!(link_layer_option(&good, OPTION_SOURCE_LINK_LAYER), Ok(Some(Mac(mac))));
        assert_eq!(
            link_layer_option(&[OPTION_SOURCE_LINK_LAYER, 0, 0, 0, 0, 0, 0, 0], 1),
            Err(FrameError::BadOption),
            "zero length"
        );
        assert_eq!(
            link_layer_option(&[OPTION_SOURCE_LINK_LAYER, 2, 0, 0, 0, 0, 0, 0], 1),
            Err(FrameError::BadOption),
            "runs past the end"
        );
        assert_eq!(link_layer_option(&[9, 1, 0, 0, 0, 0, 0, 0], 1), Ok(None), "unknown options are skipped");
    }

    proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
            let _ = NdFrame::parse(&bytes);
        }

        #[test]
        fn parsing_never_panics_on_mutated_valid_frames(index in 0usize..86, value in any::<u8>(), cut in 0usize..90) {
            let mut bytes = solicitation("2001:db8::200").encode();
            if let Some(b) = bytes.get_mut(index) { *b = value; }
            bytes.truncate(cut.max(1));
            let _ = NdFrame::parse(&bytes);
        }

        #[test]
        fn encode_then_parse_round_trips(target in any::<u128>(), src in any::<u128>(), solicited in any::<bool>(), with_mac in any::<bool>()) {
            prop_assume!(!Ipv6Addr::from(target).is_multicast());
            let frame = NdFrame {
                eth_dst: CLIENT, eth_src: OURS, ip_src: Ipv6Addr::from(src), ip_dst: ALL_NODES,
                kind: if solicited { Kind::Solicitation } else { Kind::Advertisement { router: false, solicited: true, override_: false } },
                target: Ipv6Addr::from(target), link_layer: with_mac.then_some(OURS),
            };
            prop_assert_eq!(NdFrame::parse(&frame.encode()), Ok(frame));
        }
    }
}
