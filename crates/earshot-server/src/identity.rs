//! Who a client is, without knowing who they are: addresses become
//! [`ClientKey`]s, `HMAC-SHA-256(secret, address)` truncated to 16 bytes, with
//! a secret that lives only in memory. An IPv6 client is keyed by its /64,
//! since one household or phone usually holds a whole /64.
//!
//! Each client also has a network key, the same HMAC of its IPv6 /48 or
//! IPv4 /24: addresses within one of those cost an attacker next to
//! nothing, so reports from one network count as one reporter toward a
//! ban (see `earshot_core::moderation`).
//!
//! Addresses themselves are only ever held in [`Pii`], whose `Debug` and
//! `Display` print `<redacted>`, so a log line cannot show one by accident.

use std::fmt;
use std::net::IpAddr;

use earshot_core::ClientKey;
use hmac::{KeyInit, Mac};

pub use earshot_core::Pii;

/// Turns client addresses into keys, under a secret that rotates: the
/// previous secret's key is offered too, so that what was recorded under it
/// (bans, blocks) carries over for one more period and then is gone.
pub struct Keyer {
    secrets: std::sync::RwLock<([u8; 32], Option<[u8; 32]>)>,
}

impl fmt::Debug for Keyer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keyer(<secret>)")
    }
}

impl Keyer {
    /// A keyer with a fresh random secret.
    pub fn random() -> std::io::Result<Keyer> {
        Ok(Keyer {
            secrets: std::sync::RwLock::new((fresh_secret()?, None)),
        })
    }

    /// Starts a new period: a fresh secret, the current one kept as previous.
    pub fn rotate(&self) -> std::io::Result<()> {
        let fresh = fresh_secret()?;
        let mut s = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        *s = (fresh, Some(s.0));
        Ok(())
    }

    /// The current secret, to share with other nodes (see `backplane`).
    pub fn secret(&self) -> [u8; 32] {
        self.secrets.read().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Adopts secrets agreed with other nodes, so that one client has one
    /// key on every node.
    pub fn set_secrets(&self, current: [u8; 32], previous: Option<[u8; 32]>) {
        *self.secrets.write().unwrap_or_else(|e| e.into_inner()) = (current, previous);
    }

    /// The client's key now, and under the previous secret if there is one.
    pub fn keys(&self, addr: Pii<IpAddr>) -> (ClientKey, Option<ClientKey>) {
        let s = *self.secrets.read().unwrap_or_else(|e| e.into_inner());
        (key_with(&s.0, addr), s.1.map(|p| key_with(&p, addr)))
    }

    pub fn key(&self, addr: Pii<IpAddr>) -> ClientKey {
        self.keys(addr).0
    }

    /// The client's network key (its /48 or /24) now, and under the
    /// previous secret if there is one.
    pub fn networks(&self, addr: Pii<IpAddr>) -> (ClientKey, Option<ClientKey>) {
        let s = *self.secrets.read().unwrap_or_else(|e| e.into_inner());
        let network = |secret: &[u8; 32]| mac(secret, network_of(addr));
        (network(&s.0), s.1.as_ref().map(network))
    }
}

/// What a network key is made of: a tag and the /48 or /24 prefix.
fn network_of(addr: Pii<IpAddr>) -> Vec<u8> {
    match addr.0.to_canonical() {
        IpAddr::V4(v4) => [b"n4".as_slice(), &v4.octets()[..3]].concat(),
        IpAddr::V6(v6) => [b"n6".as_slice(), &v6.octets()[..6]].concat(),
    }
}

fn mac(secret: &[u8; 32], input: Vec<u8>) -> ClientKey {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(&input);
    let full = mac.finalize().into_bytes();
    let mut key = [0u8; 16];
    key.copy_from_slice(&full[..16]);
    ClientKey(key)
}

fn fresh_secret() -> std::io::Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(std::io::Error::other)?;
    Ok(secret)
}

fn key_with(secret: &[u8; 32], addr: Pii<IpAddr>) -> ClientKey {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    match addr.0.to_canonical() {
        IpAddr::V4(v4) => {
            mac.update(b"4");
            mac.update(&v4.octets());
        }
        IpAddr::V6(v6) => {
            mac.update(b"6");
            mac.update(&v6.octets()[..8]);
        }
    }
    let full = mac.finalize().into_bytes();
    let mut key = [0u8; 16];
    key.copy_from_slice(&full[..16]);
    ClientKey(key)
}

/// 64 random bits from the OS, for room names.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Pii<IpAddr> {
        Pii(s.parse().unwrap())
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_slash_64() {
        let k = Keyer::random().unwrap();
        assert_eq!(
            k.key(ip("2001:db8:1:2::1")),
            k.key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(k.key(ip("2001:db8:1:2::1")), k.key(ip("2001:db8:1:3::1")));
        assert_ne!(k.key(ip("192.0.2.1")), k.key(ip("192.0.2.2")));
        assert_eq!(k.key(ip("::ffff:192.0.2.1")), k.key(ip("192.0.2.1")));
    }

    #[test]
    fn networks_are_the_slash_48_or_the_slash_24() {
        let k = Keyer::random().unwrap();
        let net = |a: &str| k.networks(ip(a)).0;
        assert_eq!(net("2001:db8:1:2::1"), net("2001:db8:1:ffff::9"));
        assert_ne!(net("2001:db8:1:2::1"), net("2001:db8:2:2::1"));
        assert_eq!(net("192.0.2.1"), net("192.0.2.200"));
        assert_ne!(net("192.0.2.1"), net("192.0.3.1"));
        assert_eq!(net("::ffff:192.0.2.1"), net("192.0.2.9"));
        // Not the client key of any address.
        assert_ne!(net("192.0.2.0"), k.key(ip("192.0.2.0")));
        assert_eq!(k.networks(ip("192.0.2.1")).1, None);
        k.rotate().unwrap();
        assert!(k.networks(ip("192.0.2.1")).1.is_some());
    }

    #[test]
    fn rotation_keeps_the_previous_key_for_one_period() {
        let k = Keyer::random().unwrap();
        let first = k.key(ip("192.0.2.1"));
        assert_eq!(k.keys(ip("192.0.2.1")).1, None);
        k.rotate().unwrap();
        let (now, before) = k.keys(ip("192.0.2.1"));
        assert_ne!(now, first);
        assert_eq!(before, Some(first));
        k.rotate().unwrap();
        assert_ne!(
            k.keys(ip("192.0.2.1")).1,
            Some(first),
            "gone after two periods"
        );
    }

    #[test]
    fn keys_depend_on_the_secret() {
        let (a, b) = (Keyer::random().unwrap(), Keyer::random().unwrap());
        assert_ne!(a.key(ip("192.0.2.1")), b.key(ip("192.0.2.1")));
    }

    #[test]
    fn addresses_never_format() {
        let p = ip("192.0.2.1");
        assert_eq!(format!("{p} {p:?}"), "<redacted> <redacted>");
    }
}
