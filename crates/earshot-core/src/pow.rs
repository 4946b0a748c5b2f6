//! Proof of work against bots, ALTCHA-style, with no third party.
//!
//! The server picks a secret `number`, sends `SHA-256(salt + number)` with
//! the salt and a range, and signs both; the client finds the number by brute
//! force. Verification is stateless but for the set of challenges already
//! used, which is kept only until they expire. Expiry times are milliseconds
//! on this process's own clock (since the `Pow` was made), signed inside the
//! salt, so clients cannot extend them.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::hex;

/// The hash of this protocol version's challenges (`challenge.algorithm`).
pub const ALGORITHM: &str = "SHA-256";

/// A client's answer to a challenge, as sent in `hello.pow`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PowSolution {
    pub salt: String,
    pub number: u64,
    pub challenge: String,
    pub signature: String,
}

/// What the server sends in a `challenge` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub salt: String,
    pub challenge: String,
    pub maxnumber: u64,
    pub signature: String,
}

/// When proof of work is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowMode {
    Off,
    /// When the server is loaded or a client's network misbehaves.
    Auto,
    /// Always (for testing, or under attack).
    Always,
}

#[derive(Debug, Clone)]
pub struct PowConfig {
    pub mode: PowMode,
    /// Connections at which the server counts as loaded.
    pub load_threshold: usize,
    /// Open connections from one client key above which it must prove work.
    pub client_threshold: usize,
    /// The range for an ordinary challenge (about half of it in hashes).
    pub base_maxnumber: u64,
    /// The largest range ever asked.
    pub max_maxnumber: u64,
    pub expiry: Duration,
}

impl Default for PowConfig {
    fn default() -> Self {
        PowConfig {
            mode: PowMode::Auto,
            load_threshold: 5_000,
            client_threshold: 10,
            base_maxnumber: 50_000,
            max_maxnumber: 2_000_000,
            expiry: Duration::from_secs(120),
        }
    }
}

pub struct Pow {
    key: [u8; 32],
    epoch: Instant,
    used: HashSet<String>,
    /// (expiry in ms, challenge), in issue order: expiry is constant.
    used_order: VecDeque<(u64, String)>,
}

impl std::fmt::Debug for Pow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pow({} used)", self.used.len())
    }
}

fn hash(salt: &str, number: u64) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(number.to_string().as_bytes());
    hex::encode(&h.finalize())
}

impl Pow {
    /// `key` signs challenges; it must be secret (from the shell's CSPRNG).
    pub fn new(now: Instant, key: [u8; 32]) -> Pow {
        Pow {
            key,
            epoch: now,
            used: HashSet::new(),
            used_order: VecDeque::new(),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn sign(&self, challenge: &str, salt: &str) -> String {
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(challenge.as_bytes());
        mac.update(b"\n");
        mac.update(salt.as_bytes());
        hex::encode(&mac.finalize().into_bytes())
    }

    /// A new challenge; `random` gives the salt's nonce and the secret number.
    pub fn issue(
        &self,
        now: Instant,
        expiry: Duration,
        maxnumber: u64,
        random: [u64; 2],
    ) -> Challenge {
        let expires = self
            .ms(now)
            .saturating_add(u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX));
        let salt = format!("{:016x}?expires={expires}", random[0]);
        let number = random[1] % (maxnumber + 1);
        let challenge = hash(&salt, number);
        let signature = self.sign(&challenge, &salt);
        Challenge {
            salt,
            challenge,
            maxnumber,
            signature,
        }
    }

    /// Checks a solution and uses it up. Constant-time where it matters
    /// (the signature); the rest is public.
    pub fn verify(&mut self, now: Instant, s: &PowSolution) -> bool {
        let now_ms = self.ms(now);
        while let Some((at, _)) = self.used_order.front() {
            if *at > now_ms {
                break;
            }
            let (_, c) = self.used_order.pop_front().expect("just peeked");
            self.used.remove(&c);
        }
        if s.salt.len() > 128 || s.challenge.len() != 64 || s.signature.len() != 64 {
            return false;
        }
        let expected = self.sign(&s.challenge, &s.salt);
        let same = expected
            .bytes()
            .zip(s.signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        let expires = s
            .salt
            .rsplit_once("?expires=")
            .and_then(|(_, e)| e.parse::<u64>().ok());
        let Some(expires) = expires.filter(|&e| e > now_ms) else {
            return false;
        };
        if !same || hash(&s.salt, s.number) != s.challenge || self.used.contains(&s.challenge) {
            return false;
        }
        self.used.insert(s.challenge.clone());
        self.used_order.push_back((expires, s.challenge.clone()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solve(c: &Challenge) -> PowSolution {
        let number = (0..=c.maxnumber)
            .find(|&n| hash(&c.salt, n) == c.challenge)
            .expect("the number is in range");
        PowSolution {
            salt: c.salt.clone(),
            number,
            challenge: c.challenge.clone(),
            signature: c.signature.clone(),
        }
    }

    #[test]
    fn a_solved_challenge_verifies_once() {
        let t0 = Instant::now();
        let mut pow = Pow::new(t0, [7; 32]);
        let c = pow.issue(t0, Duration::from_secs(60), 500, [1, 12345]);
        let s = solve(&c);
        assert_eq!(s.number, 12345 % 501);
        assert!(pow.verify(t0, &s));
        assert!(!pow.verify(t0, &s), "single use");
    }

    #[test]
    fn forged_expired_or_wrong_solutions_fail() {
        let t0 = Instant::now();
        let mut pow = Pow::new(t0, [7; 32]);
        let c = pow.issue(t0, Duration::from_secs(60), 100, [2, 99]);
        let good = solve(&c);
        let mut wrong = good.clone();
        wrong.number += 1;
        assert!(!pow.verify(t0, &wrong));
        let mut longer = good.clone();
        longer.salt = longer.salt.replace("?expires=", "?expires=9");
        assert!(!pow.verify(t0, &longer), "expiry is signed");
        let other = Pow::new(t0, [8; 32]);
        let forged = solve(&other.issue(t0, Duration::from_secs(60), 100, [3, 5]));
        assert!(!pow.verify(t0, &forged), "another key's challenge");
        assert!(!pow.verify(t0 + Duration::from_secs(61), &good), "expired");
    }
}
