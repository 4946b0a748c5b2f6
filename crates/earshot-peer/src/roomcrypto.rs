//! The passphrase maths of a locked room, exactly as `web/roomcrypto.js` does
//! it (PROTOCOL.md, "Locked rooms"):
//!
//! ```text
//! verifier = PBKDF2-HMAC-SHA-256(NFC(passphrase), "earshot/v1/room-verifier/" + room, 300000)
//! auth_key = PBKDF2-HMAC-SHA-256(NFC(passphrase), "earshot/v1/room-auth/" + room, 300000)
//! auth     = base64url(HMAC-SHA-256(auth_key, "earshot/v1/fingerprint\n" + room + "\n" + fingerprints))
//! ```
//!
//! The passphrase and both keys stay in memory here; `Debug` prints none of
//! them.

use hmac::{Hmac, KeyInit, Mac};
use sha2::block_api::compress256;
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

pub const PBKDF2_ITERATIONS: u32 = 300_000;
const VERIFIER_SALT: &str = "earshot/v1/room-verifier/";
const AUTH_SALT: &str = "earshot/v1/room-auth/";
const FINGERPRINT_CONTEXT: &str = "earshot/v1/fingerprint\n";

type HmacSha256 = Hmac<Sha256>;

/// The two values a passphrase gives in one room.
#[derive(Clone)]
pub struct RoomKeys {
    room: String,
    /// base64url, 43 characters, for `room_join` and `room_lock`.
    pub verifier: String,
    auth_key: [u8; 32],
}

impl std::fmt::Debug for RoomKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoomKeys(<redacted>)")
    }
}

impl RoomKeys {
    /// Derives both keys (two PBKDF2 runs of 300,000 iterations: slow by
    /// design; call it off the async runtime). `room` is the normalised name.
    pub fn derive(passphrase: &str, room: &str) -> RoomKeys {
        let pass: String = passphrase.nfc().collect();
        let verifier = pbkdf2(pass.as_bytes(), format!("{VERIFIER_SALT}{room}").as_bytes());
        let auth_key = pbkdf2(pass.as_bytes(), format!("{AUTH_SALT}{room}").as_bytes());
        RoomKeys {
            room: room.to_string(),
            verifier: base64url(&verifier),
            auth_key,
        }
    }

    /// The `auth` for a description with this SDP.
    pub fn sign(&self, sdp: &str) -> String {
        base64url(&self.mac(sdp).finalize().into_bytes())
    }

    /// Whether `auth` is right for this SDP (constant-time comparison).
    pub fn verify(&self, sdp: &str, auth: &str) -> bool {
        match earshot_core::protocol::base64url_decode(auth) {
            Some(tag) if tag.len() == 32 => self.mac(sdp).verify_slice(&tag).is_ok(),
            _ => false,
        }
    }

    fn mac(&self, sdp: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.auth_key).expect("HMAC takes any key");
        mac.update(FINGERPRINT_CONTEXT.as_bytes());
        mac.update(self.room.as_bytes());
        mac.update(b"\n");
        mac.update(fingerprints(sdp).join("\n").as_bytes());
        mac
    }
}

/// The SDP's `a=fingerprint:` values, trimmed, lower-cased and sorted by
/// byte (duplicates kept), as the browser computes them.
pub fn fingerprints(sdp: &str) -> Vec<String> {
    let mut out: Vec<String> = sdp
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter_map(|l| l.strip_prefix("a=fingerprint:"))
        .map(|v| v.trim().to_lowercase())
        .collect();
    // Browsers sort UTF-16 code units; these values are ASCII, where bytes agree.
    out.sort();
    out
}

/// PBKDF2-HMAC-SHA-256 with one 32-byte block (all Earshot needs).
///
/// After the first round every HMAC input is one 32-byte value, so each of
/// the 299,999 others is two SHA-256 compressions from the precomputed
/// inner and outer states: fast enough even in an unoptimised test build.
fn pbkdf2(password: &[u8], salt: &[u8]) -> [u8; 32] {
    const IV: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut mac = HmacSha256::new_from_slice(password).expect("HMAC takes any key");
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = u;

    let hashed;
    let key = if password.len() > 64 {
        hashed = Sha256::digest(password);
        &hashed[..]
    } else {
        password
    };
    let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let (mut inner, mut outer) = (IV, IV);
    compress256(&mut inner, &[ipad]);
    compress256(&mut outer, &[opad]);
    // The second block of both hashes: 32 bytes, then padding for 96 bytes in all.
    let mut block = [0u8; 64];
    block[32] = 0x80;
    block[62..].copy_from_slice(&(96u16 * 8).to_be_bytes());
    for _ in 1..PBKDF2_ITERATIONS {
        block[..32].copy_from_slice(&u);
        let mut state = inner;
        compress256(&mut state, &[block]);
        write_state(&state, &mut block[..32]);
        let mut state = outer;
        compress256(&mut state, &[block]);
        write_state(&state, &mut u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

fn write_state(state: &[u32; 8], to: &mut [u8]) {
    for (chunk, word) in to.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
}

/// base64url without padding.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_pbkdf2() {
        // hashlib.pbkdf2_hmac('sha256', 'correct horse'.encode(),
        //   b'earshot/v1/room-verifier/quiet-otters-juggle-softly', 300000)
        let keys = RoomKeys::derive("correct horse", "quiet-otters-juggle-softly");
        assert_eq!(keys.verifier, VERIFIER_VECTOR);
        assert_eq!(keys.verifier.len(), 43);
        assert!(earshot_core::protocol::Verifier::parse(&keys.verifier).is_some());
    }

    const VERIFIER_VECTOR: &str = "hvbvqAKKX5TfWXlplCbtUzPAHn3pr60y01GlHuNaJ7Q";

    #[test]
    fn a_long_passphrase_is_hashed_first_as_hmac_does() {
        // hashlib.pbkdf2_hmac('sha256', b'x' * 100, b'earshot/v1/room-verifier/r', 300000)
        assert_eq!(
            RoomKeys::derive(&"x".repeat(100), "r").verifier,
            LONG_VECTOR
        );
    }

    const LONG_VECTOR: &str = "TQ1PLj2ksSWzPRRtCedrqgwy1FqvKRMRegObW7vwMwQ";

    #[test]
    fn nfc_makes_composed_and_decomposed_the_same() {
        let a = RoomKeys::derive("caf\u{e9}", "room-a");
        let b = RoomKeys::derive("cafe\u{301}", "room-a");
        assert_eq!(a.verifier, b.verifier);
    }

    #[test]
    fn auth_covers_the_fingerprints_only() {
        let keys = RoomKeys::derive("pw", "room-b");
        let sdp =
            "v=0\r\na=fingerprint:sha-256 AB:CD\r\nm=audio\r\na=fingerprint:sha-256 01:02\r\n";
        let auth = keys.sign(sdp);
        assert!(keys.verify(sdp, &auth));
        assert!(keys.verify(&format!("{sdp}a=extra\r\n"), &auth));
        assert!(!keys.verify(&sdp.replace("01:02", "01:03"), &auth));
        assert!(!keys.verify(sdp, "AAAA"));
        assert!(!RoomKeys::derive("pw", "room-c").verify(sdp, &auth));
        assert_eq!(
            fingerprints(sdp),
            vec!["sha-256 01:02".to_string(), "sha-256 ab:cd".to_string()]
        );
    }

    #[test]
    fn base64url_round_trips() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(
                earshot_core::protocol::base64url_decode(&base64url(&bytes)),
                Some(bytes)
            );
        }
    }
}
