//! Ethernet frames the announcer reads and writes: ARP (RFC 826) and IPv6 Neighbor Discovery (RFC 4861).
//! Pure: bytes in, structs out and back. Frames come from the LAN, so parsing is total: any input yields a
//! value or an error, never a panic, and nothing is trusted beyond what was checked.

pub mod arp;
pub mod ndp;

use std::fmt;

pub use crate::mac::Mac;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    Truncated {
        needed: usize,
        got: usize,
    },
    NotArp,
    NotIpv6,
    UnsupportedArp,
    NotNeighborDiscovery,
    /// RFC 4861 7.1.1: ND messages must arrive with hop limit 255 (so they cannot come from off-link).
    HopLimit(u8),
    BadChecksum,
    BadCode(u8),
    MulticastTarget,
    BadOption,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed, got } => write!(f, "frame truncated: needed {needed} bytes, got {got}"),
            Self::NotArp => f.write_str("not an ARP frame"),
            Self::NotIpv6 => f.write_str("not an IPv6 frame"),
            Self::UnsupportedArp => f.write_str("ARP for something other than IPv4 over Ethernet"),
            Self::NotNeighborDiscovery => f.write_str("not a Neighbor Solicitation or Advertisement"),
            Self::HopLimit(h) => write!(f, "neighbor discovery with hop limit {h}, not 255"),
            Self::BadChecksum => f.write_str("ICMPv6 checksum mismatch"),
            Self::BadCode(c) => write!(f, "ICMPv6 code {c}, expected 0"),
            Self::MulticastTarget => f.write_str("neighbor discovery target is multicast"),
            Self::BadOption => f.write_str("malformed neighbor discovery option"),
        }
    }
}

impl std::error::Error for FrameError {}

/// `bytes[at..at + N]`, or the error saying how much was missing.
pub(crate) fn take<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], FrameError> {
    bytes
        .get(at..at + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(FrameError::Truncated { needed: at + N, got: bytes.len() })
}

/// A frame the kernel received longer ago than this is not acted on. A running speaker reads a frame
/// within milliseconds (a saturated node: tens); one queued this long was received while the speaker was
/// not running (SIGSTOP, a paused VM, a node starved for a second), and what it says predates what the
/// others decided meanwhile: a claim from then is a stand-in's takeover, long handed back, and a question
/// from then has been asked again (ARP and NDP retry every second).
pub const STALE_FRAME_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a frame the kernel stamped `received` is too old to act on at `now` (a clock that went back
/// makes frames look new, never stale).
pub fn is_stale(received: std::time::SystemTime, now: std::time::SystemTime) -> bool {
    now.duration_since(received).is_ok_and(|age| age > STALE_FRAME_AGE)
}

pub(crate) const ETHERNET_HEADER: usize = 14;
/// Frames shorter than this are padded on the wire (60 bytes plus the FCS the NIC adds).
pub(crate) const MIN_FRAME: usize = 60;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn frames_queued_while_the_speaker_was_not_running_are_stale() {
        let now = SystemTime::now();
        assert!(!is_stale(now - Duration::from_millis(20), now), "read promptly");
        assert!(!is_stale(now - STALE_FRAME_AGE, now));
        assert!(is_stale(now - Duration::from_secs(10), now), "queued during a 10 s SIGSTOP");
        assert!(!is_stale(now + Duration::from_secs(5), now), "the clock went back: act on it");
    }
}
