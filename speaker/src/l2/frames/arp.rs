//! ARP for IPv4 over Ethernet (RFC 826), gratuitous ARP (RFC 5227 §3 announcements) and conflict detection.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::{ETHERNET_HEADER, FrameError, MIN_FRAME, Mac, take};

pub const ETHERTYPE_ARP: u16 = 0x0806;
const ARP_LEN: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Request,
    Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpFrame {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub operation: Operation,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

impl ArpFrame {
    pub fn parse(frame: &[u8]) -> Result<Self, FrameError> {
        let eth_dst = Mac(take::<6>(frame, 0)?);
        let eth_src = Mac(take::<6>(frame, 6)?);
        if u16::from_be_bytes(take::<2>(frame, 12)?) != ETHERTYPE_ARP {
            return Err(FrameError::NotArp);
        }
        let arp = frame.get(ETHERNET_HEADER..).unwrap_or_default();
        let header = take::<8>(arp, 0)?;
        // htype 1 (Ethernet), ptype 0x0800 (IPv4), hlen 6, plen 4.
        if header[..6] != [0, 1, 0x08, 0x00, 6, 4] {
            return Err(FrameError::UnsupportedArp);
        }
        let operation = match u16::from_be_bytes([header[6], header[7]]) {
            1 => Operation::Request,
            2 => Operation::Reply,
            _ => return Err(FrameError::UnsupportedArp),
        };
        Ok(Self {
            eth_dst,
            eth_src,
            operation,
            sender_mac: Mac(take::<6>(arp, 8)?),
            sender_ip: Ipv4Addr::from(take::<4>(arp, 14)?),
            target_mac: Mac(take::<6>(arp, 18)?),
            target_ip: Ipv4Addr::from(take::<4>(arp, 24)?),
        })
    }

    /// The frame as sent: padded to the Ethernet minimum.
    pub fn encode(&self) -> [u8; MIN_FRAME] {
        let mut out = [0u8; MIN_FRAME];
        out[0..6].copy_from_slice(&self.eth_dst.0);
        out[6..12].copy_from_slice(&self.eth_src.0);
        out[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        out[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 0]);
        out[20..22].copy_from_slice(
            &(match self.operation {
                Operation::Request => 1u16,
                Operation::Reply => 2,
            })
            .to_be_bytes(),
        );
        out[22..28].copy_from_slice(&self.sender_mac.0);
        out[28..32].copy_from_slice(&self.sender_ip.octets());
        out[32..38].copy_from_slice(&self.target_mac.0);
        out[38..42].copy_from_slice(&self.target_ip.octets());
        debug_assert_eq!(ETHERNET_HEADER + ARP_LEN, 42);
        out
    }
}

/// The reply to `request` if it asks for a VIP we own and was sent to us (broadcast or our MAC): unicast
/// back to the asker, from the interface it arrived on.
pub fn answer(request: &ArpFrame, owned: &BTreeSet<Ipv4Addr>, our_mac: Mac) -> Option<ArpFrame> {
    if request.operation != Operation::Request || !owned.contains(&request.target_ip) {
        return None;
    }
    if request.eth_dst != Mac::BROADCAST && request.eth_dst != our_mac {
        return None;
    }
    // Sender and target the same address: a gratuitous ARP (an announcement, RFC 5227 §2.3), not a question.
    // Answering another node's announcement of a VIP it takes over from us would only tell it, falsely, that
    // a second host claims it.
    if request.sender_ip == request.target_ip {
        return None;
    }
    // A probe (sender 0.0.0.0, RFC 5227) is answered too: it tells the prober the address is taken.
    Some(ArpFrame {
        eth_dst: request.sender_mac,
        eth_src: our_mac,
        operation: Operation::Reply,
        sender_mac: our_mac,
        sender_ip: request.target_ip,
        target_mac: request.sender_mac,
        target_ip: request.sender_ip,
    })
}

/// Gratuitous ARP for `vip`, in both forms receivers honour: a request and a reply, broadcast, with sender
/// and target IP both the VIP.
pub fn gratuitous(vip: Ipv4Addr, our_mac: Mac) -> [ArpFrame; 2] {
    let request = ArpFrame {
        eth_dst: Mac::BROADCAST,
        eth_src: our_mac,
        operation: Operation::Request,
        sender_mac: our_mac,
        sender_ip: vip,
        target_mac: Mac([0; 6]),
        target_ip: vip,
    };
    let reply = ArpFrame { operation: Operation::Reply, target_mac: Mac::BROADCAST, ..request };
    [request, reply]
}

/// An ARP probe for `vip` (RFC 5227 §2.1.1: sender IP 0.0.0.0, so no cache learns anything from it): the
/// host holding the VIP answers it, which tells us it is taken.
pub fn probe(vip: Ipv4Addr, our_mac: Mac) -> ArpFrame {
    ArpFrame {
        eth_dst: Mac::BROADCAST,
        eth_src: our_mac,
        operation: Operation::Request,
        sender_mac: our_mac,
        sender_ip: Ipv4Addr::UNSPECIFIED,
        target_mac: Mac([0; 6]),
        target_ip: vip,
    }
}

/// RFC 5227: an ARP packet whose sender IP is one of our VIPs and whose sender MAC is not ours means another
/// host claims the address. Returns the VIP and the other host's MAC.
pub fn conflict(frame: &ArpFrame, owned: &BTreeSet<Ipv4Addr>, our_macs: &BTreeSet<Mac>) -> Option<(Ipv4Addr, Mac)> {
    (owned.contains(&frame.sender_ip) && !our_macs.contains(&frame.sender_mac))
        .then_some((frame.sender_ip, frame.sender_mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OURS: Mac = Mac([0x02, 0xf0, 0, 0, 0, 0x0b]);
    const CLIENT: Mac = Mac([0x02, 0xf0, 0, 0, 0, 0x02]);

    fn vip() -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, 200)
    }

    fn request_for(target: Ipv4Addr) -> ArpFrame {
        ArpFrame {
            eth_dst: Mac::BROADCAST,
            eth_src: CLIENT,
            operation: Operation::Request,
            sender_mac: CLIENT,
            sender_ip: Ipv4Addr::new(192, 0, 2, 2),
            target_mac: Mac([0; 6]),
            target_ip: target,
        }
    }

    /// `arping -i eth0 192.0.2.200` from 192.0.2.2 (02:f0:00:00:00:02), captured with tcpdump in a lab
    /// namespace, padding included.
    const ARPING_REQUEST: [u8; 58] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0xf0, 0x00, 0x00, 0x00, 0x02, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00,
        0x06, 0x04, 0x00, 0x01, 0x02, 0xf0, 0x00, 0x00, 0x00, 0x02, 0xc0, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0xc0, 0x00, 0x02, 0xc8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn a_request_as_arping_sends_it_parses() {
        assert_eq!(ArpFrame::parse(&ARPING_REQUEST), Ok(request_for(vip())));
        // The same 42 bytes of Ethernet + ARP as arping; only the zero padding's length differs.
        let encoded = request_for(vip()).encode();
        assert_eq!(encoded[..42], ARPING_REQUEST[..42]);
        assert!(encoded[42..].iter().chain(&ARPING_REQUEST[42..]).all(|b| *b == 0));
    }

    #[test]
    fn owned_vips_are_answered_unicast_and_others_are_not() {
        let owned = BTreeSet::from([vip()]);
        let reply = answer(&request_for(vip()), &owned, OURS).unwrap();
        assert_eq!(
            (reply.eth_dst, reply.operation, reply.sender_mac, reply.sender_ip),
            (CLIENT, Operation::Reply, OURS, vip())
        );
        assert_eq!(reply.target_ip, Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(answer(&request_for(Ipv4Addr::new(192, 0, 2, 201)), &owned, OURS), None);
        let mut elsewhere = request_for(vip());
        elsewhere.eth_dst = Mac([0x02, 0, 0, 0, 0, 0x99]);
        assert_eq!(answer(&elsewhere, &owned, OURS), None, "unicast to another host: not ours to answer");
        let mut a_reply = request_for(vip());
        a_reply.operation = Operation::Reply;
        assert_eq!(answer(&a_reply, &owned, OURS), None);
        let [announcement, _] = gratuitous(vip(), CLIENT);
        assert_eq!(answer(&announcement, &owned, OURS), None, "an announcement is not a question");
    }

    #[test]
    fn gratuitous_arp_comes_in_request_and_reply_form() {
        let [request, reply] = gratuitous(vip(), OURS);
        for frame in [request, reply] {
            assert_eq!(
                (frame.eth_dst, frame.sender_ip, frame.target_ip, frame.sender_mac),
                (Mac::BROADCAST, vip(), vip(), OURS)
            );
            assert_eq!(ArpFrame::parse(&frame.encode()), Ok(frame));
        }
        assert_eq!((request.operation, reply.operation), (Operation::Request, Operation::Reply));
    }

    #[test]
    fn another_mac_claiming_our_vip_is_a_conflict() {
        let owned = BTreeSet::from([vip()]);
        let ours = BTreeSet::from([OURS]);
        let [claim, _] = gratuitous(vip(), Mac([0x02, 0, 0, 0, 0, 0x66]));
        assert_eq!(conflict(&claim, &owned, &ours), Some((vip(), Mac([0x02, 0, 0, 0, 0, 0x66]))));
        let [own, _] = gratuitous(vip(), OURS);
        assert_eq!(conflict(&own, &owned, &ours), None);
        assert_eq!(conflict(&request_for(vip()), &owned, &ours), None, "asking for it is not claiming it");
    }

    #[test]
    fn a_probe_is_answered_by_the_holder_and_its_answer_is_a_claim() {
        let owned = BTreeSet::from([vip()]);
        let other = Mac([0x02, 0, 0, 0, 0, 0x0c]);
        let probe = probe(vip(), OURS);
        assert_eq!(ArpFrame::parse(&probe.encode()), Ok(probe));
        assert_eq!(conflict(&probe, &owned, &BTreeSet::from([other])), None, "a probe claims nothing");
        let answer = answer(&probe, &owned, other).unwrap();
        assert_eq!(answer.eth_dst, OURS);
        assert_eq!(conflict(&answer, &owned, &BTreeSet::from([OURS])), Some((vip(), other)));
    }

    #[test]
    fn truncated_and_foreign_frames_are_errors() {
        let frame = request_for(vip()).encode();
        assert!(matches!(ArpFrame::parse(&frame[..41]), Err(FrameError::Truncated { .. })));
        let mut ipv4 = frame;
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(ArpFrame::parse(&ipv4), Err(FrameError::NotArp));
        let mut token_ring = frame;
        token_ring[15] = 6;
        assert_eq!(ArpFrame::parse(&token_ring), Err(FrameError::UnsupportedArp));
    }

    fn mac() -> impl Strategy<Value = Mac> {
        any::<[u8; 6]>().prop_map(Mac)
    }

    proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = ArpFrame::parse(&bytes);
        }

        #[test]
        fn encode_then_parse_round_trips(dst in mac(), src in mac(), reply in any::<bool>(), smac in mac(), sip in any::<u32>(), tmac in mac(), tip in any::<u32>()) {
            let frame = ArpFrame {
                eth_dst: dst, eth_src: src,
                operation: if reply { Operation::Reply } else { Operation::Request },
                sender_mac: smac, sender_ip: Ipv4Addr::from(sip), target_mac: tmac, target_ip: Ipv4Addr::from(tip),
            };
            prop_assert_eq!(ArpFrame::parse(&frame.encode()), Ok(frame));
        }
    }
}
