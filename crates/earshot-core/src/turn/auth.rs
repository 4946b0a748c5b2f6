//! TURN long-term credentials in the TURN REST scheme
//! (draft-uberti-behave-turn-rest, as coturn's `use-auth-secret`), and the
//! server's stateless nonces.
//!
//! - username = `EXPIRY:TAG`, EXPIRY in UNIX seconds; the tag is free text
//!   (nothing here reads it).
//! - password = base64(HMAC-SHA1(shared secret, username)).
//! - key = MD5(username ":" realm ":" password) (RFC 5389 §15.4), the
//!   HMAC-SHA1 key of MESSAGE-INTEGRITY.
//!
//! So the signalling server mints credentials that the TURN server can
//! check with nothing but the shared secret: no user database, no state.
//!
//! Nonces are stateless too: `hex(expiry) || hex(HMAC(nonce key, expiry))`,
//! valid until the expiry they carry. Invariants: nothing here logs, and
//! secrets, passwords and keys are never formatted.

use base64::Engine;
use hmac::{KeyInit, Mac};
use md5::Digest;
use std::time::Duration;

use crate::hex;
use crate::stun::codec::hmac_sha1;

/// REST credentials valid for `ttl` from `now_unix`: `(username, password)`
/// to hand to a client as an ICE server's `username` and `credential`.
/// The `tag` is free text that ends up in the username (a random id, say;
/// never anything that identifies a person).
pub fn rest_credentials(
    secret: &[u8],
    ttl: Duration,
    now_unix: u64,
    tag: &str,
) -> (String, String) {
    let username = format!("{}:{tag}", now_unix.saturating_add(ttl.as_secs()));
    let password = rest_password(secret, &username);
    (username, password)
}

/// The REST password of a username: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = hmac_sha1(secret);
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The expiry (UNIX seconds) a REST username carries: the digits before the
/// first `:`, or the whole username if it has none (as coturn reads it).
pub fn rest_expiry(username: &str) -> Option<u64> {
    let digits = username.split(':').next()?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The long-term credential key, MD5(username:realm:password).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut md5 = md5::Md5::new();
    md5.update(username.as_bytes());
    md5.update(b":");
    md5.update(realm.as_bytes());
    md5.update(b":");
    md5.update(password.as_bytes());
    md5.finalize().into()
}

/// Mints and checks nonces under a key that lives only in memory.
pub(crate) struct Nonces {
    key: [u8; 32],
    ttl_secs: u64,
}

/// Hex digits of the expiry, then of the truncated MAC.
const NONCE_LEN: usize = 16 + 2 * MAC_LEN;
const MAC_LEN: usize = 12;

impl Nonces {
    pub(crate) fn new(key: [u8; 32], ttl: Duration) -> Nonces {
        Nonces {
            key,
            ttl_secs: ttl.as_secs().max(1),
        }
    }

    pub(crate) fn mint(&self, now_unix: u64) -> String {
        let expiry = now_unix.saturating_add(self.ttl_secs);
        let mut nonce = String::with_capacity(NONCE_LEN);
        hex::push(&mut nonce, &expiry.to_be_bytes());
        hex::push(&mut nonce, &self.mac(expiry));
        nonce
    }

    /// Whether a nonce is one of ours and has not expired.
    pub(crate) fn is_valid(&self, nonce: &str, now_unix: u64) -> bool {
        if nonce.len() != NONCE_LEN || !nonce.is_ascii() {
            return false;
        }
        let Ok(expiry) = u64::from_str_radix(&nonce[..16], 16) else {
            return false;
        };
        let mut expected = String::with_capacity(2 * MAC_LEN);
        hex::push(&mut expected, &self.mac(expiry));
        // A timing leak here would at worst reveal a valid nonce, which the
        // server hands to anyone who asks; plain comparison is fine.
        expected == nonce[16..] && now_unix < expiry
    }

    fn mac(&self, expiry: u64) -> [u8; MAC_LEN] {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        mac.update(b"earshot turn nonce");
        mac.update(&expiry.to_be_bytes());
        let full = mac.finalize().into_bytes();
        full[..MAC_LEN].try_into().expect("SHA-256 is 32 bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Computed independently with Python:
    /// `base64.b64encode(hmac.new(b"north", b"1433895918:alice", hashlib.sha1).digest())`
    /// and `hashlib.md5(b"1433895918:alice:earshot:" + password).hexdigest()`.
    #[test]
    fn rest_credentials_match_an_independent_implementation() {
        let (username, password) = rest_credentials(
            b"north",
            Duration::from_secs(86_400),
            1_433_809_518,
            "alice",
        );
        assert_eq!(username, "1433895918:alice");
        assert_eq!(password, "RqMvcGPYTJMGThVLSi4amT4zFtI=");
        assert_eq!(rest_expiry(&username), Some(1_433_895_918));
        let key = long_term_key(&username, "earshot", &password);
        assert_eq!(hex::encode(&key), "af8a87bf7e7744d9ed06fb21a9479185");
    }

    #[test]
    fn rest_expiry_reads_the_leading_digits() {
        assert_eq!(rest_expiry("12:a:b"), Some(12));
        assert_eq!(rest_expiry("12"), Some(12));
        assert_eq!(rest_expiry(":12"), None);
        assert_eq!(rest_expiry("alice"), None);
        assert_eq!(rest_expiry("+12:a"), None);
        assert_eq!(rest_expiry("99999999999999999999999:a"), None);
    }

    #[test]
    fn nonces_expire_and_are_bound_to_the_key() {
        let nonces = Nonces::new([1; 32], Duration::from_secs(600));
        let n = nonces.mint(1000);
        assert_eq!(n.len(), NONCE_LEN);
        assert!(nonces.is_valid(&n, 1000));
        assert!(nonces.is_valid(&n, 1599));
        assert!(!nonces.is_valid(&n, 1600));
        assert!(!Nonces::new([2; 32], Duration::from_secs(600)).is_valid(&n, 1000));
        // Moving the expiry forward breaks the MAC.
        let forged = format!("{:016x}{}", 5000, &n[16..]);
        assert!(!nonces.is_valid(&forged, 1000));
    }

    proptest! {
        #[test]
        fn nonce_checks_never_panic(nonce in ".{0,60}", now in any::<u64>()) {
            let nonces = Nonces::new([1; 32], Duration::from_secs(600));
            let _ = nonces.is_valid(&nonce, now);
            let _ = rest_expiry(&nonce);
        }
    }
}
