//! Gossip frames are authenticated with a key shared by every speaker (a Secret mounted as a file): each
//! datagram is the SWIM message followed by HMAC-SHA256(key, message). A datagram whose tag does not verify
//! is dropped before the gossip layer sees a byte of it, so nobody without the key can join, suspect or
//! declare a node dead. (Confidentiality is not a goal: membership is not secret.)

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const TAG_LEN: usize = 32;
/// Shorter keys are refused: a guessable key would make the authentication decorative.
pub const MIN_KEY_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the gossip key is {0} bytes long; at least {MIN_KEY_LEN} are required")]
    TooShort(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("datagram shorter than its authentication tag")]
    Truncated,
    #[error("authentication tag does not verify")]
    BadTag,
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

    /// `message` followed by its tag.
    pub fn seal(&self, message: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(message);
        let tag = mac.finalize().into_bytes();
        let mut sealed = Vec::with_capacity(message.len() + TAG_LEN);
        sealed.extend_from_slice(message);
        sealed.extend_from_slice(&tag);
        sealed
    }

    /// The message inside `datagram`, if its tag verifies (compared in constant time).
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Result<&'a [u8], AuthError> {
        let split = datagram.len().checked_sub(TAG_LEN).ok_or(AuthError::Truncated)?;
        let (message, tag) = datagram.split_at(split);
        let mut mac = self.mac();
        mac.update(message);
        mac.verify_slice(tag).map_err(|_| AuthError::BadTag)?;
        Ok(message)
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

    #[test]
    fn a_sealed_message_opens_with_the_same_key_only() {
        let sealed = key("0123456789abcdef\n").seal(b"ping");
        assert_eq!(key("0123456789abcdef").open(&sealed), Ok(&b"ping"[..]));
        assert_eq!(key("0123456789abcdeX").open(&sealed), Err(AuthError::BadTag));
        assert_eq!(key("0123456789abcdef").open(&sealed[..10]), Err(AuthError::Truncated));
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(SharedKey::from_file_contents(b"  short  \n").unwrap_err(), KeyError::TooShort(5));
    }

    proptest! {
        #[test]
        fn any_change_to_a_sealed_message_is_caught(message in proptest::collection::vec(any::<u8>(), 0..200), flip in any::<usize>(), bit in 0u8..8) {
            let k = key("a shared key for tests");
            let mut sealed = k.seal(&message);
            let at = flip % sealed.len();
            sealed[at] ^= 1 << bit;
            prop_assert!(k.open(&sealed).is_err());
        }

        #[test]
        fn opening_garbage_never_panics(datagram in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = key("a shared key for tests").open(&datagram);
        }
    }
}
