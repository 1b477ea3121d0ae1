//! Gossip frames are authenticated with a key shared by every speaker (a Secret mounted as a file), and
//! carry their freshness under the same tag. Each datagram is
//!
//! ```text
//! version (1) | sent at, ms since the Unix epoch (8) | session (8) | sequence (8) | SWIM message | tag (32)
//! ```
//!
//! with tag = HMAC-SHA256(key, everything before it). A datagram whose tag does not verify is dropped before
//! the gossip layer sees a byte of it, so nobody without the key can join, suspect or declare a node dead.
//! A datagram captured on the wire and replayed later is dropped too: one sent more than
//! [`FRESHNESS_WINDOW`] ago (or that far ahead) by its own clock, or one whose (session, sequence) was
//! already accepted. The session is a random number drawn at every start, the sequence counts up from 1 in
//! it; a receiver keeps per session the highest sequence seen and a bitmap of the [`REORDER_WINDOW`] below
//! it, for at most [`MAX_SESSIONS`] sessions. (Confidentiality is not a goal: membership is not secret.)

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const TAG_LEN: usize = 32;
/// The freshness header: version, time sent, session, sequence.
pub const HEADER_LEN: usize = 1 + 8 + 8 + 8;
/// What sealing adds to a message.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Bumped whenever the header changes, so a mismatch is refused as such rather than misread.
const VERSION: u8 = 1;
/// Shorter keys are refused: a guessable key would make the authentication decorative.
pub const MIN_KEY_LEN: usize = 16;
/// How far a datagram's sending time may be from the receiver's clock. Speakers on different nodes
/// compare wall clocks, which NTP keeps within milliseconds on a healthy cluster (Kubernetes needs it for
/// certificates and Leases anyway); 10 s also tolerates a node whose clock drifts for a while, and gossip
/// is delivered in well under a millisecond on a LAN. A longer window would let a captured datagram be
/// replayed for longer after the receiver lost its sequence state (a restart); exact replays inside the
/// window are caught by the sequence check whatever its length.
pub const FRESHNESS_WINDOW: Duration = Duration::from_secs(10);
/// UDP on a LAN rarely reorders, and then by a few datagrams: 64 below the highest sequence seen are
/// still accepted once each (one machine word of state per session).
pub const REORDER_WINDOW: u64 = 64;
/// Sessions remembered at once: one per speaker start seen within the window (a cluster's speakers and
/// their restarts). When full, the session heard from least recently is forgotten first.
pub const MAX_SESSIONS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the gossip key is {0} bytes long; at least {MIN_KEY_LEN} are required")]
    TooShort(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("datagram shorter than its freshness header and authentication tag")]
    Truncated,
    #[error("authentication tag does not verify")]
    BadTag,
    #[error("unknown gossip datagram version {0}")]
    Version(u8),
    #[error("datagram sent {0:?} ago, outside the freshness window (replayed, or clocks far apart)")]
    Stale(Duration),
    #[error("datagram sent {0:?} in the future, outside the freshness window (clocks far apart)")]
    Future(Duration),
    #[error("datagram already received (replayed)")]
    Replayed,
}

impl AuthError {
    /// The metric label of the rejection.
    /// Every value [`AuthError::reason`] returns.
    pub const REASONS: [&'static str; 5] = ["truncated", "bad_tag", "version", "stale", "replayed"];

    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Truncated => "truncated",
            AuthError::BadTag => "bad_tag",
            AuthError::Version(_) => "version",
            AuthError::Stale(_) | AuthError::Future(_) => "stale",
            AuthError::Replayed => "replayed",
        }
    }
}

#[derive(Clone)]
pub struct SharedKey(Vec<u8>);

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedKey(<redacted>)")
    }
}

impl SharedKey {
    /// The key as read from its file; surrounding whitespace (a trailing newline) is not part of it.
    pub fn from_file_contents(contents: &[u8]) -> Result<Self, KeyError> {
        let trimmed = contents.trim_ascii();
        if trimmed.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort(trimmed.len()));
        }
        Ok(Self(trimmed.to_vec()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this cannot fail.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC accepts any key"))
    }

    /// `header || message` followed by its tag.
    fn seal_raw(&self, header: &[u8; HEADER_LEN], message: &[u8]) -> Vec<u8> {
        let mut sealed = Vec::with_capacity(message.len() + OVERHEAD);
        sealed.extend_from_slice(header);
        sealed.extend_from_slice(message);
        let mut mac = self.mac();
        mac.update(&sealed);
        sealed.extend_from_slice(&mac.finalize().into_bytes());
        sealed
    }

    /// The header and message inside `datagram`, if its tag verifies (compared in constant time). Says
    /// nothing about freshness: see [`Opener::open`].
    pub fn verify<'a>(&self, datagram: &'a [u8]) -> Result<(Header, &'a [u8]), AuthError> {
        let split = datagram.len().checked_sub(TAG_LEN).filter(|s| *s >= HEADER_LEN).ok_or(AuthError::Truncated)?;
        let (signed, tag) = datagram.split_at(split);
        let mut mac = self.mac();
        mac.update(signed);
        mac.verify_slice(tag).map_err(|_| AuthError::BadTag)?;
        let (header, message) = signed.split_at(HEADER_LEN);
        let field = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        if header[0] != VERSION {
            return Err(AuthError::Version(header[0]));
        }
        Ok((Header { sent_at_ms: field(1), session: field(9), sequence: field(17) }, message))
    }
}

/// The freshness fields of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub sent_at_ms: u64,
    pub session: u64,
    pub sequence: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = VERSION;
        out[1..9].copy_from_slice(&self.sent_at_ms.to_be_bytes());
        out[9..17].copy_from_slice(&self.session.to_be_bytes());
        out[17..25].copy_from_slice(&self.sequence.to_be_bytes());
        out
    }
}

fn millis_since_epoch(at: SystemTime) -> u64 {
    // A clock before 1970 is a broken clock: such datagrams look stale to everyone, which is what it is.
    at.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// The sending side: stamps every message with the time, this process's session and the next sequence.
#[derive(Debug, Clone)]
pub struct Sealer {
    key: SharedKey,
    session: u64,
    sequence: u64,
}

impl Sealer {
    /// `session` must differ at every start (a random number): sequences restart from 1 with it.
    pub fn new(key: SharedKey, session: u64) -> Self {
        Self { key, session, sequence: 0 }
    }

    pub fn seal(&mut self, message: &[u8], now: SystemTime) -> Vec<u8> {
        self.sequence = self.sequence.wrapping_add(1);
        let header = Header { sent_at_ms: millis_since_epoch(now), session: self.session, sequence: self.sequence };
        self.key.seal_raw(&header.encode(), message)
    }
}

/// What a receiver remembers of one sender's session.
#[derive(Debug, Clone, Copy)]
struct Seen {
    highest: u64,
    /// Bit i set: sequence `highest - 1 - i` was accepted.
    below: u64,
    last_heard_ms: u64,
}

impl Seen {
    /// Records `sequence` if it was not seen yet; false for a replay (or one too far behind to tell).
    fn accept(&mut self, sequence: u64) -> bool {
        if sequence > self.highest {
            let shift = sequence - self.highest;
            self.below = if shift > REORDER_WINDOW { 0 } else { (self.below << 1 | 1) << (shift - 1) };
            self.highest = sequence;
            return true;
        }
        let behind = self.highest - sequence;
        if behind == 0 || behind > REORDER_WINDOW {
            return false;
        }
        let bit = 1u64 << (behind - 1);
        if self.below & bit != 0 {
            return false;
        }
        self.below |= bit;
        true
    }
}

/// The receiving side: authenticates, then drops what is not fresh or was seen before.
#[derive(Debug, Clone)]
pub struct Opener {
    key: SharedKey,
    sessions: HashMap<u64, Seen>,
    max_sessions: usize,
}

impl Opener {
    pub fn new(key: SharedKey) -> Self {
        Self::with_capacity(key, MAX_SESSIONS)
    }

    pub fn with_capacity(key: SharedKey, max_sessions: usize) -> Self {
        Self { key, sessions: HashMap::new(), max_sessions: max_sessions.max(1) }
    }

    /// The message inside `datagram` if it is authentic, fresh at `now`, and not seen before.
    pub fn open<'a>(&mut self, datagram: &'a [u8], now: SystemTime) -> Result<&'a [u8], AuthError> {
        let (header, message) = self.key.verify(datagram)?;
        let now_ms = millis_since_epoch(now);
        let window = u64::try_from(FRESHNESS_WINDOW.as_millis()).unwrap_or(u64::MAX);
        if header.sent_at_ms.saturating_add(window) < now_ms {
            return Err(AuthError::Stale(Duration::from_millis(now_ms - header.sent_at_ms)));
        }
        if header.sent_at_ms > now_ms.saturating_add(window) {
            return Err(AuthError::Future(Duration::from_millis(header.sent_at_ms - now_ms)));
        }
        if !self.sessions.contains_key(&header.session) {
            self.make_room(now_ms, window);
        }
        let seen = self.sessions.entry(header.session).or_insert(Seen { highest: 0, below: 0, last_heard_ms: now_ms });
        if !seen.accept(header.sequence) {
            return Err(AuthError::Replayed);
        }
        seen.last_heard_ms = now_ms;
        Ok(message)
    }

    /// Sessions remembered now.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Forgets sessions silent for longer than twice the window (anything they sent is stale by now, so
    /// forgetting them lets nothing in), then, if still full, the one heard from least recently.
    fn make_room(&mut self, now_ms: u64, window: u64) {
        if self.sessions.len() < self.max_sessions {
            return;
        }
        self.sessions.retain(|_, s| s.last_heard_ms.saturating_add(window.saturating_mul(2)) >= now_ms);
        while self.sessions.len() >= self.max_sessions {
            let Some(oldest) = self.sessions.iter().min_by_key(|(_, s)| s.last_heard_ms).map(|(k, _)| *k) else {
                return;
            };
            self.sessions.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn key(k: &str) -> SharedKey {
        SharedKey::from_file_contents(k.as_bytes()).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn every_reason_is_listed_for_the_metrics() {
        let second = Duration::from_secs(1);
        for error in [
            AuthError::Truncated,
            AuthError::BadTag,
            AuthError::Version(9),
            AuthError::Stale(second),
            AuthError::Future(second),
            AuthError::Replayed,
        ] {
            assert!(AuthError::REASONS.contains(&error.reason()), "{error}");
        }
    }

    #[test]
    fn a_sealed_message_opens_with_the_same_key_only() {
        let sealed = Sealer::new(key("0123456789abcdef\n"), 7).seal(b"ping", at(0));
        assert_eq!(Opener::new(key("0123456789abcdef")).open(&sealed, at(0)), Ok(&b"ping"[..]));
        assert_eq!(Opener::new(key("0123456789abcdeX")).open(&sealed, at(0)), Err(AuthError::BadTag));
        assert_eq!(Opener::new(key("0123456789abcdef")).open(&sealed[..10], at(0)), Err(AuthError::Truncated));
        assert_eq!(sealed.len(), 4 + OVERHEAD);
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(SharedKey::from_file_contents(b"  short  \n").unwrap_err(), KeyError::TooShort(5));
    }

    #[test]
    fn a_datagram_replayed_after_the_window_is_stale() {
        let k = key("a shared key for tests");
        let sealed = Sealer::new(k.clone(), 1).seal(b"alive", at(100));
        // A receiver that never saw it (restarted, or another node) still refuses it once the window passed.
        assert_eq!(Opener::new(k.clone()).open(&sealed, at(100) + FRESHNESS_WINDOW), Ok(&b"alive"[..]));
        let late = at(100) + FRESHNESS_WINDOW + Duration::from_millis(1);
        assert!(matches!(Opener::new(k.clone()).open(&sealed, late), Err(AuthError::Stale(_))));
        // A sender whose clock runs far ahead is refused the same way.
        let early = at(100) - FRESHNESS_WINDOW - Duration::from_millis(1);
        assert!(matches!(Opener::new(k).open(&sealed, early), Err(AuthError::Future(_))));
        assert_eq!(AuthError::Stale(Duration::ZERO).reason(), "stale");
    }

    #[test]
    fn an_exact_replay_inside_the_window_is_refused_and_reordering_is_not() {
        let k = key("a shared key for tests");
        let mut sealer = Sealer::new(k.clone(), 42);
        let datagrams: Vec<Vec<u8>> = (0..5).map(|i| sealer.seal(&[i], at(0))).collect();
        let mut opener = Opener::new(k);
        assert!(opener.open(&datagrams[0], at(0)).is_ok());
        assert_eq!(opener.open(&datagrams[0], at(1)), Err(AuthError::Replayed));
        // 3 arrives before 1 and 2: all three are accepted once.
        assert!(opener.open(&datagrams[3], at(1)).is_ok());
        assert!(opener.open(&datagrams[1], at(1)).is_ok());
        assert!(opener.open(&datagrams[2], at(1)).is_ok());
        for d in &datagrams[..4] {
            assert_eq!(opener.open(d, at(2)), Err(AuthError::Replayed));
        }
        assert!(opener.open(&datagrams[4], at(2)).is_ok());
        assert_eq!(AuthError::Replayed.reason(), "replayed");
    }

    #[test]
    fn a_restarted_sender_starts_a_new_session_and_is_heard() {
        let k = key("a shared key for tests");
        let mut opener = Opener::new(k.clone());
        let mut before = Sealer::new(k.clone(), 1);
        for _ in 0..10 {
            opener.open(&before.seal(b"x", at(0)), at(0)).unwrap();
        }
        // Sequences restart at 1 with a new session.
        let mut after = Sealer::new(k, 2);
        assert!(opener.open(&after.seal(b"x", at(1)), at(1)).is_ok());
    }

    #[test]
    fn memory_is_bounded_and_old_sessions_go_first() {
        let k = key("a shared key for tests");
        let mut opener = Opener::with_capacity(k.clone(), 3);
        let mut sealers: Vec<Sealer> = (0..5).map(|s| Sealer::new(k.clone(), s)).collect();
        for (i, sealer) in sealers.iter_mut().enumerate() {
            let now = at(i as u64);
            opener.open(&sealer.seal(b"x", now), now).unwrap();
            assert!(opener.sessions() <= 3);
        }
        // Session 4 (heard last) is still remembered: its replay is refused.
        let mut again = Sealer::new(k, 4);
        assert_eq!(opener.open(&again.seal(b"x", at(4)), at(4)), Err(AuthError::Replayed));
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let k = key("a shared key for tests");
        let mut header = Header { sent_at_ms: millis_since_epoch(at(0)), session: 1, sequence: 1 }.encode();
        header[0] = 9;
        let sealed = k.seal_raw(&header, b"x");
        assert_eq!(Opener::new(k).open(&sealed, at(0)), Err(AuthError::Version(9)));
    }

    proptest! {
        #[test]
        fn any_change_to_a_sealed_message_is_caught(message in proptest::collection::vec(any::<u8>(), 0..200), flip in any::<usize>(), bit in 0u8..8) {
            let k = key("a shared key for tests");
            let mut sealed = Sealer::new(k.clone(), 3).seal(&message, at(0));
            let at_byte = flip % sealed.len();
            sealed[at_byte] ^= 1 << bit;
            prop_assert!(Opener::new(k).open(&sealed, at(0)).is_err());
        }

        #[test]
        fn opening_garbage_never_panics(datagram in proptest::collection::vec(any::<u8>(), 0..100), secs in any::<u32>()) {
            let _ = Opener::new(key("a shared key for tests")).open(&datagram, at(u64::from(secs)));
        }

        /// Whatever order datagrams of one session arrive in, and however often each is repeated, each is
        /// accepted at most once, and every one that is not too far behind the newest is accepted once.
        #[test]
        fn each_datagram_is_accepted_at_most_once(order in proptest::collection::vec(0usize..40, 1..200)) {
            let k = key("a shared key for tests");
            let mut sealer = Sealer::new(k.clone(), 9);
            let datagrams: Vec<Vec<u8>> = (0..40u8).map(|i| sealer.seal(&[i], at(0))).collect();
            let mut opener = Opener::new(k);
            let mut accepted = std::collections::BTreeSet::new();
            let mut highest = 0usize;
            for i in order {
                let first_time = !accepted.contains(&i);
                let within = i + REORDER_WINDOW as usize >= highest;
                match opener.open(&datagrams[i], at(1)) {
                    Ok(message) => {
                        prop_assert!(first_time, "datagram {} accepted twice", i);
                        prop_assert_eq!(message, &[i as u8][..]);
                        accepted.insert(i);
                        highest = highest.max(i);
                    }
                    Err(e) => {
                        prop_assert_eq!(e, AuthError::Replayed);
                        prop_assert!(!first_time || !within, "datagram {} refused the first time", i);
                    }
                }
            }
        }
    }
}
