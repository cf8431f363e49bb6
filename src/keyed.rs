//! A per-process random key, for digests that must not let anyone test guesses offline
//! (the config hash on the admin API) and for comparing tokens in constant time.

use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use sha2::Sha256;

fn key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(rand::random)
}

fn mac() -> Hmac<Sha256> {
    // Every key length is valid for HMAC.
    Hmac::<Sha256>::new_from_slice(key()).expect("HMAC takes any key length")
}

/// HMAC-SHA256 of `parts` (concatenated) under this process's key: equal inputs give equal
/// digests within one process, and the digest says nothing about the input to anyone else.
pub fn digest<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut m = mac();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Whether two tokens are equal, in time that depends on neither's content or length.
pub fn tokens_equal(given: &[u8], expected: &[u8]) -> bool {
    matches_digest(given, &digest([expected]))
}

/// Whether `given` is the token whose [`digest`] is `expected`, in constant time (a stored
/// password need not be kept in the clear).
pub fn matches_digest(given: &[u8], expected: &[u8; 32]) -> bool {
    let mut m = mac();
    m.update(given);
    m.verify_slice(expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_equal() {
        assert!(tokens_equal(b"abc", b"abc"));
        assert!(!tokens_equal(b"abc", b"abd"));
        assert!(!tokens_equal(b"abc", b"abcd"));
        assert!(!tokens_equal(b"", b"a"));
        assert_eq!(digest([&b"a"[..], b"b"]), digest([&b"ab"[..]]));
    }
}
