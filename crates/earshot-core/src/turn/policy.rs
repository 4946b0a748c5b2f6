//! Which peers a relay may send to: deny by default everything that is not
//! a globally routable unicast address, so that TURN credentials are never
//! a way into the operator's network (the flaw of coturn's CVE-2020-26262).
//!
//! The rules, first match wins:
//! 1. The server's own relay address is allowed (two "hide my IP" users
//!    reach each other relay to relay); a datagram to it must name a live
//!    allocation's relay port, and is then handed over in memory.
//! 2. `deny` ranges (`--turn-deny-peer`) are refused.
//! 3. `allow` ranges (`--turn-allow-peer`) are allowed.
//! 4. When the relay address is itself loopback or private, peers in the
//!    same built-in range are allowed: a LAN or local deployment works with
//!    no flags.
//! 5. The special-purpose ranges of RFC 6890 and its updates (see
//!    [`special_range`]), and the server's other addresses, are refused.
//!    IPv4 embedded in IPv6 (mapped, NAT64, 6to4, Teredo) is judged by the
//!    embedded address; IPv6 outside 2000::/3 is refused.
//! 6. Everything else is allowed.
//!
//! Whatever the rules say of an address, the server's own service ports
//! (HTTP, STUN, TURN) on it are refused when the address may be the
//! server's own (its addresses, loopback, or the relay's private range).
//!
//! Nothing here formats an address: [`Refusal`] names only the rule.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range, `ADDR/PREFIX` (a bare address is a /32 or /128).
/// IPv4-mapped IPv6 ranges are held as IPv4.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl fmt::Debug for Cidr {
    // Operator configuration, not client data, but printed only in shape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = if self.net.is_ipv4() { "v4" } else { "v6" };
        write!(f, "Cidr({family}/{})", self.prefix)
    }
}

/// Why a [`Cidr`] did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before `/` is not an IP address.
    #[error("not an IP address")]
    Address,
    /// The prefix is not a number within the family's width.
    #[error("the prefix length is not a number within 0-32 (IPv4) or 0-128 (IPv6)")]
    Prefix,
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| CidrError::Address)?;
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= width)
                .ok_or(CidrError::Prefix)?,
        };
        Ok(Cidr::new(ip, prefix))
    }
}

impl Cidr {
    /// The range of `prefix` leading bits of `ip`; a prefix wider than the
    /// family is clamped.
    pub fn new(ip: IpAddr, prefix: u8) -> Cidr {
        match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && prefix >= 96 => Cidr {
                net: IpAddr::V6(v6).to_canonical(),
                prefix: prefix - 96,
            },
            IpAddr::V4(_) => Cidr {
                net: ip,
                prefix: prefix.min(32),
            },
            IpAddr::V6(_) => Cidr {
                net: ip,
                prefix: prefix.min(128),
            },
        }
    }

    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
        Cidr {
            net: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> Cidr {
        let [a, b, c, d, e, f, g, h] = segments;
        Cidr {
            net: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    /// Whether `ip` (IPv4-mapped counting as IPv4) is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4 special-purpose ranges that no relay sends to (RFC 6890, 6598,
/// 7526, 8190 and the IANA registry). The globally reachable anycast blocks
/// in 192.0.0.0/24 are refused with the rest of it: no WebRTC peer is there.
const SPECIAL_V4: &[(Cidr, &str)] = &[
    (Cidr::v4(0, 0, 0, 0, 8), "this network"),
    (Cidr::v4(10, 0, 0, 0, 8), "private"),
    (Cidr::v4(100, 64, 0, 0, 10), "shared (CGNAT)"),
    (Cidr::v4(127, 0, 0, 0, 8), "loopback"),
    (Cidr::v4(169, 254, 0, 0, 16), "link-local"),
    (Cidr::v4(172, 16, 0, 0, 12), "private"),
    (Cidr::v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (Cidr::v4(192, 0, 2, 0, 24), "documentation"),
    (Cidr::v4(192, 88, 99, 0, 24), "6to4 relay anycast"),
    (Cidr::v4(192, 168, 0, 0, 16), "private"),
    (Cidr::v4(198, 18, 0, 0, 15), "benchmarking"),
    (Cidr::v4(198, 51, 100, 0, 24), "documentation"),
    (Cidr::v4(203, 0, 113, 0, 24), "documentation"),
    (Cidr::v4(224, 0, 0, 0, 4), "multicast"),
    (Cidr::v4(240, 0, 0, 0, 4), "reserved and broadcast"),
];

/// IPv6 special-purpose ranges inside 2000::/3 (everything outside it is
/// refused already); the embedded-IPv4 forms are handled before these.
const SPECIAL_V6: &[(Cidr, &str)] = &[
    (
        Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        "IETF protocol assignments",
    ),
    (
        Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "documentation",
    ),
    (Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "documentation"),
];

/// Ranges a relay on a loopback or private address shares with its peers
/// (rule 4).
const LOCAL_RANGES: &[Cidr] = &[
    Cidr::v4(127, 0, 0, 0, 8),
    Cidr::v4(10, 0, 0, 0, 8),
    Cidr::v4(172, 16, 0, 0, 12),
    Cidr::v4(192, 168, 0, 0, 16),
    Cidr::v4(100, 64, 0, 0, 10),
    Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
    Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
];

const NAT64: Cidr = Cidr::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const NAT64_LOCAL: Cidr = Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48);
const SIX_TO_FOUR: Cidr = Cidr::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);
const TEREDO: Cidr = Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32);
const GLOBAL_UNICAST: Cidr = Cidr::v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);

/// The special-purpose range `ip` is in, by name, if any; IPv4 embedded in
/// IPv6 is judged by the embedded address.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    let v6 = match ip.to_canonical() {
        IpAddr::V4(v4) => {
            return SPECIAL_V4
                .iter()
                .find(|(range, _)| range.contains(IpAddr::V4(v4)))
                .map(|(_, name)| *name);
        }
        IpAddr::V6(v6) => v6,
    };
    let ip = IpAddr::V6(v6);
    let bits = u128::from(v6);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if NAT64.contains(ip) {
        return special_range(IpAddr::V4(low32));
    }
    if NAT64_LOCAL.contains(ip) {
        return Some("local-use NAT64");
    }
    if SIX_TO_FOUR.contains(ip) {
        let embedded = Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32);
        return special_range(IpAddr::V4(embedded));
    }
    if TEREDO.contains(ip) {
        // The server's IPv4 in bits 32..64, the client's obfuscated in the
        // last 32: both must be global.
        let server = Ipv4Addr::from(((bits >> 64) & 0xffff_ffff) as u32);
        let client = Ipv4Addr::from(!((bits & 0xffff_ffff) as u32));
        return special_range(IpAddr::V4(server)).or(special_range(IpAddr::V4(client)));
    }
    if !GLOBAL_UNICAST.contains(ip) {
        return Some(match v6.segments()[0] {
            0 if v6.is_loopback() => "loopback",
            0 if v6.is_unspecified() => "unspecified",
            0x100 => "discard-only",
            s if s & 0xfe00 == 0xfc00 => "unique local",
            s if s & 0xffc0 == 0xfe80 => "link-local",
            s if s & 0xff00 == 0xff00 => "multicast",
            _ => "not global unicast",
        });
    }
    SPECIAL_V6
        .iter()
        .find(|(range, _)| range.contains(ip))
        .map(|(_, name)| *name)
}

/// Why a peer was refused; counted in metrics, never with the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// In a `--turn-deny-peer` range.
    Denied,
    /// In a special-purpose range (private, loopback, ...).
    Special,
    /// One of the server's own addresses or service ports.
    OwnService,
    /// Another family than the relay's (443, not 403).
    Family,
}

/// What the policy says of a peer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The relay's own address: only live relay ports, in memory.
    OwnRelay,
    Allowed,
    Refused(Refusal),
}

/// The peer rules of one relay; see the module docs.
#[derive(Clone, Default)]
pub struct PeerPolicy {
    /// The relay address, canonical.
    relay_ip: Option<IpAddr>,
    /// The built-in range the relay address is in, when loopback or private.
    relay_range: Option<Cidr>,
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    /// The server's other addresses (listen, STUN, TURN, public IP).
    own_ips: Vec<IpAddr>,
    /// The server's service ports (HTTP, STUN, TURN).
    service_ports: Vec<u16>,
}

impl fmt::Debug for PeerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerPolicy")
            .field("allow", &self.allow)
            .field("deny", &self.deny)
            .field("own_ips", &self.own_ips.len())
            .field("service_ports", &self.service_ports)
            .finish_non_exhaustive()
    }
}

impl PeerPolicy {
    /// The built-in policy of a relay on `relay_ip`.
    pub fn new(relay_ip: IpAddr) -> PeerPolicy {
        let relay_ip = relay_ip.to_canonical();
        PeerPolicy {
            relay_ip: Some(relay_ip),
            relay_range: LOCAL_RANGES.iter().copied().find(|r| r.contains(relay_ip)),
            ..PeerPolicy::default()
        }
    }

    /// Adds `--turn-allow-peer` ranges (rule 3).
    pub fn allow(mut self, ranges: impl IntoIterator<Item = Cidr>) -> PeerPolicy {
        self.allow.extend(ranges);
        self
    }

    /// Adds `--turn-deny-peer` ranges (rule 2).
    pub fn deny(mut self, ranges: impl IntoIterator<Item = Cidr>) -> PeerPolicy {
        self.deny.extend(ranges);
        self
    }

    /// Names the server's other addresses and service ports (rule 5);
    /// unspecified addresses are skipped, their ports kept.
    pub fn own_services(
        mut self,
        services: impl IntoIterator<Item = std::net::SocketAddr>,
    ) -> PeerPolicy {
        for s in services {
            let ip = s.ip().to_canonical();
            if !ip.is_unspecified() && !self.own_ips.contains(&ip) {
                self.own_ips.push(ip);
            }
            if s.port() != 0 && !self.service_ports.contains(&s.port()) {
                self.service_ports.push(s.port());
            }
        }
        self
    }

    /// Adds one of the server's addresses (its public IP, say).
    pub fn own_ip(mut self, ip: IpAddr) -> PeerPolicy {
        let ip = ip.to_canonical();
        if !ip.is_unspecified() && !self.own_ips.contains(&ip) {
            self.own_ips.push(ip);
        }
        self
    }

    /// Whether a permission for `ip` may be installed.
    pub fn check_ip(&self, ip: IpAddr) -> Verdict {
        let ip = ip.to_canonical();
        if let Some(relay) = self.relay_ip {
            if ip.is_ipv4() != relay.is_ipv4() {
                return Verdict::Refused(Refusal::Family);
            }
            if ip == relay {
                return Verdict::OwnRelay;
            }
        }
        if self.deny.iter().any(|r| r.contains(ip)) {
            return Verdict::Refused(Refusal::Denied);
        }
        if self.allow.iter().any(|r| r.contains(ip)) {
            return Verdict::Allowed;
        }
        if self.relay_range.is_some_and(|r| r.contains(ip)) {
            return Verdict::Allowed;
        }
        if self.own_ips.contains(&ip) {
            return Verdict::Refused(Refusal::OwnService);
        }
        if special_range(ip).is_some() {
            return Verdict::Refused(Refusal::Special);
        }
        Verdict::Allowed
    }

    /// What may be sent to `addr`, whose IP already holds a permission:
    /// on the relay's own address only a live relay port (`live_relay`),
    /// or, for a local relay, any port but the server's services.
    pub fn check_addr(&self, addr: std::net::SocketAddr, live_relay: bool) -> Verdict {
        let (ip, port) = (addr.ip(), addr.port());
        match self.check_ip(ip) {
            Verdict::OwnRelay if live_relay => Verdict::OwnRelay,
            Verdict::OwnRelay
                if self.relay_range.is_some() && !self.service_ports.contains(&port) =>
            {
                Verdict::Allowed
            }
            Verdict::OwnRelay => Verdict::Refused(Refusal::OwnService),
            Verdict::Allowed if self.is_own_service(ip, port) => {
                Verdict::Refused(Refusal::OwnService)
            }
            verdict => verdict,
        }
    }

    /// Whether `port` on an address the IP rules let through is one of the
    /// server's own services.
    pub fn is_own_service(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        let maybe_ours = self.relay_ip == Some(ip)
            || self.own_ips.contains(&ip)
            || ip.is_loopback()
            || self.relay_range.is_some_and(|r| r.contains(ip));
        maybe_ours && self.service_ports.contains(&port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn public() -> PeerPolicy {
        PeerPolicy::new(ip("192.0.2.10")).own_services([
            "0.0.0.0:8080".parse().unwrap(),
            "0.0.0.0:3479".parse().unwrap(),
        ])
    }

    #[test]
    fn special_purpose_ranges_are_refused() {
        let p = public();
        for refused in [
            "0.1.2.3",
            "10.0.0.5",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.169.254",
            "172.17.0.1",
            "172.31.255.255",
            "192.0.0.9",
            "192.0.2.77",
            "192.88.99.1",
            "192.168.7.7",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert_eq!(
                p.check_ip(ip(refused)),
                Verdict::Refused(Refusal::Special),
                "{refused}"
            );
        }
        for allowed in [
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "8.8.8.8",
        ] {
            assert_eq!(p.check_ip(ip(allowed)), Verdict::Allowed, "{allowed}");
        }
    }

    #[test]
    fn ipv6_ranges_and_embedded_ipv4_are_judged() {
        let p = PeerPolicy::new(ip("2001:db8::10"));
        for refused in [
            "::",
            "::1",
            "::a00:5",
            "::ffff:10.0.0.5",
            "64:ff9b::a00:5",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::808:808",
            "100::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:f5ff:fffa",
            "2001:db8::1",
            "2002:a00:5::1",
            "2002:7f00:1::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "4000::1",
        ] {
            assert!(
                matches!(p.check_ip(ip(refused)), Verdict::Refused(_)),
                "{refused}"
            );
        }
        for allowed in [
            "2606:4700::1111",
            "2a00:1450::1",
            "64:ff9b::808:808",
            "2002:808:808::1",
            // Teredo, server 65.54.227.120, client 192.0.2.45 is not global:
            // see above; this one is client 8.8.8.8 (obfuscated f7f7:f7f7).
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
        ] {
            assert_eq!(p.check_ip(ip(allowed)), Verdict::Allowed, "{allowed}");
        }
        // The family of the relay only.
        assert_eq!(p.check_ip(ip("8.8.8.8")), Verdict::Refused(Refusal::Family));
    }

    #[test]
    fn rules_apply_in_order() {
        let relay = ip("192.0.2.10");
        let p = PeerPolicy::new(relay)
            .deny([
                "8.8.8.0/24".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
            ])
            .allow(["10.0.0.0/8".parse().unwrap(), "8.8.8.8".parse().unwrap()])
            .own_services(["203.0.113.5:8080".parse().unwrap()])
            .own_ip(ip("1.2.3.4"));
        // 1: the relay's own address, though in a documentation range.
        assert_eq!(p.check_ip(relay), Verdict::OwnRelay);
        assert_eq!(p.check_ip(ip("::ffff:192.0.2.10")), Verdict::OwnRelay);
        // 2 before 3.
        assert_eq!(p.check_ip(ip("8.8.8.8")), Verdict::Refused(Refusal::Denied));
        assert_eq!(
            p.check_ip(ip("10.1.2.3")),
            Verdict::Refused(Refusal::Denied)
        );
        // 3.
        assert_eq!(p.check_ip(ip("10.0.0.5")), Verdict::Allowed);
        // 5: own addresses.
        assert_eq!(
            p.check_ip(ip("1.2.3.4")),
            Verdict::Refused(Refusal::OwnService)
        );
        assert_eq!(
            p.check_ip(ip("203.0.113.5")),
            Verdict::Refused(Refusal::OwnService)
        );
        // 6.
        assert_eq!(p.check_ip(ip("9.9.9.9")), Verdict::Allowed);
    }

    #[test]
    fn a_local_relay_reaches_its_own_range_only() {
        let p = PeerPolicy::new(ip("127.0.0.1"));
        assert_eq!(p.check_ip(ip("127.0.0.1")), Verdict::OwnRelay);
        assert_eq!(p.check_ip(ip("127.0.0.2")), Verdict::Allowed);
        assert_eq!(
            p.check_ip(ip("10.0.0.5")),
            Verdict::Refused(Refusal::Special)
        );
        let lan = PeerPolicy::new(ip("192.168.1.2"));
        assert_eq!(lan.check_ip(ip("192.168.1.30")), Verdict::Allowed);
        assert_eq!(
            lan.check_ip(ip("10.0.0.5")),
            Verdict::Refused(Refusal::Special)
        );
        assert_eq!(
            lan.check_ip(ip("127.0.0.1")),
            Verdict::Refused(Refusal::Special)
        );
        let v6 = PeerPolicy::new(ip("::1"));
        assert_eq!(v6.check_ip(ip("::1")), Verdict::OwnRelay);
        assert!(matches!(v6.check_ip(ip("fd00::5")), Verdict::Refused(_)));
    }

    #[test]
    fn service_ports_on_addresses_that_may_be_ours_are_refused() {
        let p = PeerPolicy::new(ip("127.0.0.1")).own_services([
            "127.0.0.1:8080".parse().unwrap(),
            "0.0.0.0:3478".parse().unwrap(),
        ]);
        assert!(p.is_own_service(ip("127.0.0.1"), 8080));
        assert!(p.is_own_service(ip("127.0.0.2"), 3478));
        assert!(!p.is_own_service(ip("127.0.0.1"), 50_000));
        assert!(!p.is_own_service(ip("8.8.8.8"), 8080));
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.0.1")) && !c.contains(ip("11.0.0.0")));
        assert!(c.contains(ip("::ffff:10.1.1.1")));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains(ip("10.2.3.4")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")) && !all.contains(ip("::1")));
        let one: Cidr = "fd00::5".parse().unwrap();
        assert!(one.contains(ip("fd00::5")) && !one.contains(ip("fd00::6")));
        assert_eq!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::Prefix));
        assert_eq!("nope/8".parse::<Cidr>(), Err(CidrError::Address));
        assert_eq!("::/129".parse::<Cidr>(), Err(CidrError::Prefix));
        assert_eq!(format!("{c:?}"), "Cidr(v4/8)");
    }

    proptest! {
        /// `--turn-allow-peer` and `--turn-deny-peer` are operator input,
        /// but a decoder all the same.
        #[test]
        fn cidr_parsing_never_panics(s in ".{0,60}") {
            let _ = s.parse::<Cidr>();
        }

        #[test]
        fn a_range_contains_its_own_network(bits in any::<u128>(), prefix in 0u8..=128) {
            let v6 = IpAddr::V6(Ipv6Addr::from(bits));
            let c = Cidr::new(v6, prefix);
            prop_assert!(c.contains(v6));
            let v4 = IpAddr::V4(Ipv4Addr::from(bits as u32));
            prop_assert!(Cidr::new(v4, prefix.min(32)).contains(v4));
        }

        /// Every IPv4 address is judged the same bare, mapped and through
        /// the well-known NAT64 prefix.
        #[test]
        fn embedded_ipv4_is_judged_like_ipv4(v4 in any::<u32>()) {
            let a = Ipv4Addr::from(v4);
            let nat64 = Ipv6Addr::from((0x64_ff9b_u128 << 96) | u128::from(v4));
            prop_assert_eq!(special_range(IpAddr::V4(a)).is_some(), special_range(IpAddr::V6(a.to_ipv6_mapped())).is_some());
            prop_assert_eq!(special_range(IpAddr::V4(a)).is_some(), special_range(IpAddr::V6(nat64)).is_some());
        }
    }
}
