//! Safety words, exactly as `web/safetywords.js` and `web/wordsexchange.js`
//! make them (PROTOCOL.md, "Safety words"): a commit-then-reveal exchange of
//! two nonces over the `chat` data channel, then
//!
//! ```text
//! commit = SHA-256(nonce_c)                       (32 raw bytes each nonce)
//! okm    = HKDF-SHA-256(salt = "earshot/v2/safety-words",
//!                       ikm  = nonce_c || nonce_r,
//!                       info = fp_c + "\n" + fp_r, 32 bytes)
//! words  = list[okm bits 0-10], list[bits 11-21], list[bits 22-32]
//! ```
//!
//! where `_c` is the committer (the side whose fingerprint string sorts
//! first by byte) and `_r` the responder. [`Exchange`] is the sans-IO state
//! machine of one connection: time is an argument, messages go in and out
//! as [`ChannelMsg`]s. The word list is the page's own, read from
//! `web/safetywords.js` at compile time, so the two cannot drift apart.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::wire::ChannelMsg;

/// From the channel opening to words, at most (then the warning).
pub const TIMEOUT: Duration = Duration::from_secs(10);
pub const NONCE_BYTES: usize = 32;
const KDF_SALT: &[u8] = b"earshot/v2/safety-words";
const BITS_PER_WORD: usize = 11;
const SOURCE: &str = include_str!("../../../web/safetywords.js");

type HmacSha256 = Hmac<Sha256>;
pub type Nonce = [u8; NONCE_BYTES];

/// The 2048 words, in the page's order (index 0 is `abacus`).
pub fn word_list() -> &'static [&'static str] {
    static LIST: OnceLock<Vec<&'static str>> = OnceLock::new();
    LIST.get_or_init(|| {
        let start = SOURCE
            .find("const LIST = `")
            .expect("web/safetywords.js has LIST")
            + "const LIST = `".len();
        let end = start + SOURCE[start..].find('`').expect("LIST ends");
        let list: Vec<&str> = SOURCE[start..end].split_whitespace().collect();
        assert_eq!(list.len(), 2048, "web/safetywords.js lists 2048 words");
        list
    })
}

/// A description's fingerprint string: every `a=fingerprint:` value, prefix
/// dropped, trimmed, lower-cased, deduplicated, sorted, joined with `,`.
/// `None` without one.
pub fn description_fingerprint(sdp: &str) -> Option<String> {
    let mut values = crate::roomcrypto::fingerprints(sdp);
    values.retain(|v| !v.is_empty());
    values.dedup();
    (!values.is_empty()).then(|| values.join(","))
}

/// SHA-256 of the nonce: what the committer sends first.
pub fn commitment(nonce: &Nonce) -> [u8; 32] {
    Sha256::digest(nonce).into()
}

/// The three words from the committer's and responder's fingerprint strings
/// and nonces, in that order.
pub fn words(fp_c: &str, fp_r: &str, nonce_c: &Nonce, nonce_r: &Nonce) -> [&'static str; 3] {
    let mut ikm = [0u8; 2 * NONCE_BYTES];
    ikm[..NONCE_BYTES].copy_from_slice(nonce_c);
    ikm[NONCE_BYTES..].copy_from_slice(nonce_r);
    let info = format!("{fp_c}\n{fp_r}");
    let okm = hkdf_sha256(KDF_SALT, &ikm, info.as_bytes());
    words_from_digest(&okm)
}

/// Bits 0-10, 11-21 and 22-32 of `digest`, big-endian, as words.
pub fn words_from_digest(digest: &[u8]) -> [&'static str; 3] {
    let list = word_list();
    let bits = u64::from_be_bytes(digest[..8].try_into().expect("a digest has 8 bytes"));
    std::array::from_fn(|i| list[((bits >> (64 - BITS_PER_WORD * (i + 1))) & 0x7ff) as usize])
}

/// RFC 5869 with one block of output (32 bytes: all the words need).
fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut extract = HmacSha256::new_from_slice(salt).expect("HMAC takes any key");
    extract.update(ikm);
    let prk = extract.finalize().into_bytes();
    let mut expand = HmacSha256::new_from_slice(&prk).expect("HMAC takes any key");
    expand.update(info);
    expand.update(&[1]);
    expand.finalize().into_bytes().into()
}

/// Whether fingerprint string `a` sorts before `b` (by byte), so commits.
pub fn commits_first(a: &str, b: &str) -> bool {
    a.as_bytes() < b.as_bytes()
}

/// Why a connection shows a warning instead of words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Warning {
    /// The reveal does not match its commitment.
    Mismatch,
    /// No words within [`TIMEOUT`] of the channel opening.
    Timeout,
    /// A message out of turn or malformed.
    Protocol,
    /// Both sides claim the same fingerprint: no roles can be given.
    SameFingerprint,
}

impl Warning {
    pub fn as_str(self) -> &'static str {
        match self {
            Warning::Mismatch => "mismatch",
            Warning::Timeout => "timeout",
            Warning::Protocol => "protocol",
            Warning::SameFingerprint => "same_fingerprint",
        }
    }
}

/// How the exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Words([&'static str; 3]),
    Warning(Warning),
}

/// One connection's exchange. Call [`Exchange::start`] when the channel
/// opens, [`Exchange::handle`] with each exchange message, and
/// [`Exchange::handle_timeout`] at [`Exchange::deadline`]; send what they
/// return, in order.
#[derive(Debug)]
pub struct Exchange {
    local_fp: String,
    remote_fp: String,
    committer: bool,
    nonce: Nonce,
    /// The committer's commitment, once received (responder).
    hash: Option<[u8; 32]>,
    /// Committer: the nonce came. Responder: ours went out.
    nonce_step: bool,
    deadline: Option<Instant>,
    outcome: Option<Outcome>,
}

impl Exchange {
    /// `nonce` must be fresh and random (it is this side's secret).
    pub fn new(local_fp: &str, remote_fp: &str, nonce: Nonce) -> Exchange {
        Exchange {
            local_fp: local_fp.to_string(),
            remote_fp: remote_fp.to_string(),
            committer: commits_first(local_fp, remote_fp),
            nonce,
            hash: None,
            nonce_step: false,
            deadline: None,
            outcome: None,
        }
    }

    pub fn is_committer(&self) -> bool {
        self.committer
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// When [`Exchange::handle_timeout`] gives up, if still waiting.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.filter(|_| self.outcome.is_none())
    }

    /// The channel is open: the clock starts; the committer commits.
    pub fn start(&mut self, now: Instant) -> Vec<ChannelMsg> {
        if self.deadline.is_some() || self.outcome.is_some() {
            return Vec::new();
        }
        self.deadline = Some(now + TIMEOUT);
        if self.local_fp == self.remote_fp {
            self.outcome = Some(Outcome::Warning(Warning::SameFingerprint));
            return Vec::new();
        }
        if self.committer {
            vec![ChannelMsg::SafetyCommit(commitment(&self.nonce))]
        } else {
            Vec::new()
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline().is_some_and(|d| now >= d) {
            self.outcome = Some(Outcome::Warning(Warning::Timeout));
        }
    }

    /// One exchange message from the other side.
    pub fn handle(&mut self, msg: &ChannelMsg) -> Vec<ChannelMsg> {
        if self.outcome.is_some() {
            return Vec::new();
        }
        let (out, outcome) = self.step(msg);
        self.outcome = outcome;
        out
    }

    fn step(&mut self, msg: &ChannelMsg) -> (Vec<ChannelMsg>, Option<Outcome>) {
        let fail = |w| (Vec::new(), Some(Outcome::Warning(w)));
        match (self.committer, msg) {
            // Only one nonce, and only after our commitment went out.
            (true, ChannelMsg::SafetyNonce(theirs))
                if !self.nonce_step && self.deadline.is_some() =>
            {
                self.nonce_step = true;
                let w = words(&self.local_fp, &self.remote_fp, &self.nonce, theirs);
                (
                    vec![ChannelMsg::SafetyReveal(self.nonce)],
                    Some(Outcome::Words(w)),
                )
            }
            (false, ChannelMsg::SafetyCommit(hash)) if self.hash.is_none() => {
                self.hash = Some(*hash);
                self.nonce_step = true;
                (vec![ChannelMsg::SafetyNonce(self.nonce)], None)
            }
            (false, ChannelMsg::SafetyReveal(theirs)) if self.nonce_step => {
                if Some(commitment(theirs)) != self.hash {
                    return fail(Warning::Mismatch);
                }
                let w = words(&self.remote_fp, &self.local_fp, theirs, &self.nonce);
                (Vec::new(), Some(Outcome::Words(w)))
            }
            _ => fail(Warning::Protocol),
        }
    }
}

/// A fresh random nonce from the operating system.
pub fn new_nonce() -> Nonce {
    let mut n = [0u8; NONCE_BYTES];
    getrandom::fill(&mut n).expect("the operating system gives random bytes");
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counting(from: u8) -> Nonce {
        std::array::from_fn(|i| from + i as u8)
    }

    /// The same vector is asserted in the browser (PROTOCOL.md, "Safety
    /// words"; the browser test evaluates web/safetywords.js).
    #[test]
    fn the_shared_test_vector() {
        let (c, r) = (counting(0), counting(32));
        assert_eq!(
            earshot_core::hex::encode(&commitment(&c)),
            "630dcd2966c4336691125448bbb25b4ff412a49c732db2c8abc1b8581bd710dd"
        );
        assert_eq!(
            words("sha-256 01:23:45", "sha-256 ab:cd:ef", &c, &r),
            ["fizz", "shelter", "fix"]
        );
        assert_eq!(word_list()[0], "abacus");
        assert_eq!(word_list()[2047], "zoom");
    }

    #[test]
    fn hkdf_follows_rfc_5869() {
        // RFC 5869 A.1, the first 32 of its 42 bytes.
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        assert_eq!(
            earshot_core::hex::encode(&hkdf_sha256(&salt, &ikm, &info)),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
    }

    #[test]
    fn fingerprint_strings_follow_the_page() {
        let sdp =
            "v=0\r\na=fingerprint:SHA-256 AB:CD\r\nm=audio\r\na=fingerprint:sha-256 ab:cd\r\n";
        assert_eq!(
            description_fingerprint(sdp).as_deref(),
            Some("sha-256 ab:cd")
        );
        assert_eq!(description_fingerprint("v=0\r\n"), None);
    }

    /// Two exchanges talking to each other, with `tamper` applied to every
    /// message from `a` to `b`.
    fn run(
        fa: &str,
        fb: &str,
        tamper: impl Fn(ChannelMsg) -> Option<ChannelMsg>,
    ) -> (Option<Outcome>, Option<Outcome>) {
        let now = Instant::now();
        let mut a = Exchange::new(fa, fb, new_nonce());
        let mut b = Exchange::new(fb, fa, new_nonce());
        let mut to_b: Vec<ChannelMsg> = a.start(now).into_iter().filter_map(&tamper).collect();
        let mut to_a = b.start(now);
        for _ in 0..4 {
            let next_a: Vec<ChannelMsg> = to_a.drain(..).flat_map(|m| a.handle(&m)).collect();
            to_a = to_b.drain(..).flat_map(|m| b.handle(&m)).collect();
            to_b = next_a.into_iter().filter_map(&tamper).collect();
        }
        let later = now + TIMEOUT;
        a.handle_timeout(later);
        b.handle_timeout(later);
        (a.outcome().cloned(), b.outcome().cloned())
    }

    #[test]
    fn both_sides_get_the_same_words_whoever_commits() {
        for (fa, fb) in [
            ("sha-256 00:11", "sha-256 ff:ee"),
            ("sha-256 ff:ee", "sha-256 00:11"),
        ] {
            let (a, b) = run(fa, fb, Some);
            assert!(matches!(a, Some(Outcome::Words(_))), "{a:?}");
            assert_eq!(a, b);
        }
    }

    #[test]
    fn a_tampered_reveal_is_detected() {
        // a commits (its fingerprint sorts first): change what it reveals.
        let (a, b) = run("sha-256 00:11", "sha-256 ff:ee", |m| match m {
            ChannelMsg::SafetyReveal(mut n) => {
                n[0] ^= 1;
                Some(ChannelMsg::SafetyReveal(n))
            }
            m => Some(m),
        });
        assert!(matches!(a, Some(Outcome::Words(_))));
        assert_eq!(b, Some(Outcome::Warning(Warning::Mismatch)));
    }

    #[test]
    fn a_suppressed_exchange_times_out_on_both_sides() {
        let (a, b) = run("sha-256 00:11", "sha-256 ff:ee", |_| None);
        assert_eq!(a, Some(Outcome::Warning(Warning::Timeout)));
        assert_eq!(b, Some(Outcome::Warning(Warning::Timeout)));
        // The responder suppressed instead: the committer never gets a nonce.
        let (a, b) = run("sha-256 ff:ee", "sha-256 00:11", |_| None);
        assert_eq!(a, Some(Outcome::Warning(Warning::Timeout)));
        assert_eq!(b, Some(Outcome::Warning(Warning::Timeout)));
    }

    #[test]
    fn messages_out_of_turn_give_the_warning() {
        let now = Instant::now();
        let mut r = Exchange::new("sha-256 ff", "sha-256 00", new_nonce());
        r.start(now);
        // A reveal before any commitment.
        r.handle(&ChannelMsg::SafetyReveal(counting(0)));
        assert_eq!(r.outcome(), Some(&Outcome::Warning(Warning::Protocol)));
        let mut c = Exchange::new("sha-256 00", "sha-256 ff", new_nonce());
        c.start(now);
        c.handle(&ChannelMsg::SafetyCommit([0; 32]));
        assert_eq!(c.outcome(), Some(&Outcome::Warning(Warning::Protocol)));
        let mut same = Exchange::new("sha-256 00", "sha-256 00", new_nonce());
        same.start(now);
        assert_eq!(
            same.outcome(),
            Some(&Outcome::Warning(Warning::SameFingerprint))
        );
    }

    proptest! {
        /// Changing any one input (either fingerprint, any bit of either
        /// nonce) changes the words, except with the 2^-33 chance of a
        /// collision, which these few cases cannot hit in practice.
        #[test]
        fn the_words_depend_on_every_input(
            fp_c in "sha-256 [0-9a-f:]{4,40}",
            fp_r in "sha-256 [0-9a-f:]{4,40}",
            nc in any::<[u8; 32]>(),
            nr in any::<[u8; 32]>(),
            which in 0usize..4,
            bit in 0usize..256,
        ) {
            let base = words(&fp_c, &fp_r, &nc, &nr);
            let flip = |mut n: Nonce| { n[bit / 8] ^= 1 << (bit % 8); n };
            let changed = match which {
                0 => words(&format!("{fp_c}0"), &fp_r, &nc, &nr),
                1 => words(&fp_c, &format!("{fp_r}0"), &nc, &nr),
                2 => words(&fp_c, &fp_r, &flip(nc), &nr),
                _ => words(&fp_c, &fp_r, &nc, &flip(nr)),
            };
            prop_assert_ne!(base, changed);
            // The order is fixed: swapping the roles gives other words.
            if fp_c != fp_r || nc != nr {
                prop_assert_ne!(base, words(&fp_r, &fp_c, &nr, &nc));
            }
        }
    }
}
