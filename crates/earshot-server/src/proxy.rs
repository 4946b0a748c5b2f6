//! The client's address behind a reverse proxy.
//!
//! A connection from a TLS-terminating proxy comes from the proxy's address;
//! the client's is in a header the proxy adds. [`TrustedProxies`] holds the
//! operator's proxy ranges and which header their proxy writes, and
//! [`TrustedProxies::client_ip`] reads it. The same proxy also says which
//! host and scheme the client asked for ([`TrustedProxies::forwarded_origin`],
//! for the `Origin` check of `/ws`).
//!
//! Invariants:
//!
//! - Headers are read only on connections from a trusted range; from anyone
//!   else they are ignored and the peer address is the client's.
//! - Only the one header the operator names ([`Header`]) is read (with
//!   `X-Forwarded-For`, its siblings `X-Forwarded-Host` and `-Proto`). Proxies
//!   pass the *other* header from the client through untouched (nginx and
//!   Caddy add `X-Forwarded-For` and forward a client's `Forwarded` as it
//!   came), so trusting both would let anyone claim any address, and with it
//!   dodge bans keyed on it.
//! - The list is walked from the right, skipping trusted proxies: the first
//!   address that is not one is the client. Entries further left were written
//!   by the client and are never believed, or even parsed.
//! - Anything unusable where the walk stops (a malformed entry, `unknown`, an
//!   obfuscated RFC 7239 identifier, a header that is not text) gives the
//!   peer address. Nothing here panics on input, and nothing is logged.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anyhow::{Context, anyhow, bail};
use axum::http::HeaderMap;
use axum::http::header::{FORWARDED, HeaderName};

/// The header a trusted proxy writes the client's address into.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Header {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx
    /// `$proxy_add_x_forwarded_for`, Caddy, HAProxy `option forwardfor`,
    /// most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
}

impl FromStr for Header {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Header> {
        match s.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Header::XForwardedFor),
            "forwarded" => Ok(Header::Forwarded),
            _ => bail!("unknown header {s:?}: expected x-forwarded-for or forwarded"),
        }
    }
}

/// Address ranges whose connections may say who their client is.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    ranges: Vec<Cidr>,
    header: Header,
}

impl TrustedProxies {
    /// Ranges like `127.0.0.1/32`, `10.0.0.0/8`, `::1` or `fd00::/8` (a bare
    /// address is a single host), reading `X-Forwarded-For`; see
    /// [`TrustedProxies::reading`]. An empty list trusts nobody.
    pub fn parse(cidrs: &[String]) -> anyhow::Result<TrustedProxies> {
        let ranges = cidrs
            .iter()
            .map(|s| {
                s.parse::<Cidr>()
                    .with_context(|| format!("trusted proxy range {s:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(TrustedProxies {
            ranges,
            header: Header::default(),
        })
    }

    /// The same ranges, reading `header` instead.
    pub fn reading(self, header: Header) -> TrustedProxies {
        TrustedProxies { header, ..self }
    }

    pub fn header(&self) -> Header {
        self.header
    }

    /// Whether no range is trusted (headers are then always ignored).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `ip` is in a trusted range. IPv4 matches in either form
    /// (`192.0.2.1` or `::ffff:192.0.2.1`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.ranges.iter().any(|r| r.contains(ip))
    }

    /// The client's address for a connection from `peer`: `peer` itself,
    /// unless `peer` is a trusted proxy whose header names someone else.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        self.walk(headers).client.unwrap_or(peer)
    }

    /// The host and scheme a trusted proxy says the client asked it for (so
    /// the origin of the page it serves): `X-Forwarded-Host` and
    /// `X-Forwarded-Proto` when the proxy writes `X-Forwarded-For`, or the
    /// `host` and `proto` of the `Forwarded` element that names the client.
    /// Nothing from a peer that is not a trusted proxy.
    pub fn forwarded_origin(&self, peer: IpAddr, headers: &HeaderMap) -> ForwardedOrigin {
        if !self.contains(peer) {
            return ForwardedOrigin::default();
        }
        match self.header {
            // Proxies set these rather than append to them; if one appends,
            // the last value is the one the nearest proxy wrote or let by.
            Header::XForwardedFor => ForwardedOrigin {
                host: last_value(headers, "x-forwarded-host"),
                proto: last_value(headers, "x-forwarded-proto"),
            },
            // The element a trusted proxy wrote about the client: the one
            // where the walk stops, like `client_ip`'s.
            Header::Forwarded => {
                let element = self.walk(headers).entry;
                let param = |name| {
                    let element = std::str::from_utf8(element?).ok()?;
                    match forwarded_param(element, name) {
                        Param::Value(v) if !v.is_empty() => Some(v.to_string()),
                        _ => None,
                    }
                };
                ForwardedOrigin {
                    host: param("host"),
                    proto: param("proto"),
                }
            }
        }
    }

    /// Walks the configured header from the right to where the client is
    /// named; for a peer that is a trusted proxy only.
    fn walk<'h>(&self, headers: &'h HeaderMap) -> Stop<'h> {
        let name: HeaderName = match self.header {
            Header::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            Header::Forwarded => FORWARDED,
        };
        // The trusted proxy furthest from us seen so far (and its entry):
        // the answer when every hop is trusted (a request from a proxy host
        // itself).
        let mut furthest = None;
        // Several header lines form one list, in order: walk the last first.
        // Bytes, not text: what a client put further left (even bytes that
        // are not text) must not spoil the entries its proxies appended.
        for line in headers.get_all(&name).iter().rev() {
            let quoted = self.header == Header::Forwarded;
            for entry in SplitFromRight::new(line.as_bytes(), b',', quoted) {
                let hop = match self.header {
                    Header::XForwardedFor => xff_hop(entry),
                    Header::Forwarded => forwarded_hop(entry),
                };
                match hop {
                    Hop::Empty => {}
                    Hop::Addr(ip) if self.contains(ip) => furthest = Some((ip, entry)),
                    Hop::Addr(ip) => {
                        return Stop {
                            client: Some(ip),
                            entry: Some(entry),
                        };
                    }
                    // Still written by a trusted proxy, which hid the client.
                    Hop::Unknown => {
                        return Stop {
                            client: None,
                            entry: Some(entry),
                        };
                    }
                    Hop::Malformed => {
                        return Stop {
                            client: None,
                            entry: None,
                        };
                    }
                }
            }
        }
        Stop {
            client: furthest.map(|(ip, _)| ip),
            entry: furthest.map(|(_, entry)| entry),
        }
    }
}

/// Where [`TrustedProxies::walk`] stopped.
struct Stop<'h> {
    /// The client's address, if the entry named one.
    client: Option<IpAddr>,
    /// The entry, written by a trusted proxy, that names (or hides) the
    /// client; `None` when it was malformed or there was none.
    entry: Option<&'h [u8]>,
}

/// What a trusted proxy forwarded about the request it received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardedOrigin {
    /// The `Host` the client sent the proxy (`chat.example.org[:port]`).
    pub host: Option<String>,
    /// The scheme the client used with the proxy (`https`).
    pub proto: Option<String>,
}

/// The last comma-separated value of the last `name` header line, trimmed,
/// if it is text and not empty.
fn last_value(headers: &HeaderMap, name: &'static str) -> Option<String> {
    let line = headers.get_all(name).iter().next_back()?.to_str().ok()?;
    let value = line.rsplit(',').next()?.trim_matches([' ', '\t']);
    (!value.is_empty()).then(|| value.to_string())
}

/// One entry of a forwarding list.
#[derive(Debug, PartialEq)]
enum Hop {
    /// An empty list element (`a, , b`), which lists may contain.
    Empty,
    Addr(IpAddr),
    /// `unknown`, an obfuscated identifier, or an element without `for`.
    Unknown,
    Malformed,
}

fn xff_hop(entry: &[u8]) -> Hop {
    let Ok(entry) = std::str::from_utf8(entry) else {
        return Hop::Malformed;
    };
    let entry = entry.trim_matches([' ', '\t']);
    if entry.is_empty() {
        Hop::Empty
    } else {
        node(entry)
    }
}

/// `for=...;proto=https;by=...`: the `for` node of one RFC 7239 element.
fn forwarded_hop(element: &[u8]) -> Hop {
    let Ok(element) = std::str::from_utf8(element) else {
        return Hop::Malformed;
    };
    if element.trim_matches([' ', '\t']).is_empty() {
        return Hop::Empty;
    }
    match forwarded_param(element, "for") {
        Param::Value(value) => node(value),
        Param::Missing => Hop::Unknown,
        Param::Malformed => Hop::Malformed,
    }
}

/// One parameter of an RFC 7239 element.
#[derive(Debug, PartialEq)]
enum Param<'a> {
    /// Its value, unquoted.
    Value(&'a str),
    Missing,
    /// The element is not a list of `name=value` pairs, names the parameter
    /// twice, or quotes it oddly.
    Malformed,
}

/// The value of parameter `name` (case-insensitive) in `element`.
fn forwarded_param<'a>(element: &'a str, name: &str) -> Param<'a> {
    let mut found = None;
    for pair in SplitFromRight::new(element.as_bytes(), b';', true) {
        // Split at ASCII bytes, so still UTF-8.
        let Ok(pair) = std::str::from_utf8(pair) else {
            return Param::Malformed;
        };
        let pair = pair.trim_matches([' ', '\t']);
        if pair.is_empty() {
            continue;
        }
        let Some((key, value)) = pair.split_once('=') else {
            return Param::Malformed;
        };
        if !key.trim_end_matches([' ', '\t']).eq_ignore_ascii_case(name) {
            continue;
        }
        if found.is_some() {
            return Param::Malformed; // "MUST NOT occur more than once"
        }
        found = Some(value.trim_start_matches([' ', '\t']));
    }
    let Some(value) = found else {
        return Param::Missing;
    };
    match value.strip_prefix('"') {
        Some(rest) => match rest.strip_suffix('"') {
            // No node, host or scheme needs escapes; refusing them keeps
            // this simple.
            Some(inner) if !inner.contains(['"', '\\']) => Param::Value(inner),
            _ => Param::Malformed,
        },
        None if value.contains(['"', '\\']) => Param::Malformed,
        None => Param::Value(value),
    }
}

/// An RFC 7239 node: `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711`, `unknown` or `_obfuscated`, with an optional
/// obfuscated port; a bare IPv6 address is accepted too.
fn node(s: &str) -> Hop {
    if s.eq_ignore_ascii_case("unknown") || s.starts_with('_') {
        return Hop::Unknown;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Hop::Malformed;
        };
        return match (v6.parse::<Ipv6Addr>(), after) {
            (Ok(ip), "") => Hop::Addr(IpAddr::V6(ip)),
            (Ok(ip), port) if port.strip_prefix(':').is_some_and(is_port) => {
                Hop::Addr(IpAddr::V6(ip))
            }
            _ => Hop::Malformed,
        };
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Hop::Addr(ip);
    }
    match s.rsplit_once(':') {
        Some((v4, port)) if is_port(port) => match v4.parse::<Ipv4Addr>() {
            Ok(ip) => Hop::Addr(IpAddr::V4(ip)),
            Err(_) => Hop::Malformed,
        },
        _ => Hop::Malformed,
    }
}

/// `4711` or an obfuscated port like `_p1`.
fn is_port(s: &str) -> bool {
    let digits = s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok();
    let obfuscated = s.len() > 1
        && s.starts_with('_')
        && s[1..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    digits || obfuscated
}

/// Splits a list on `sep` from the right; with `quoted`, a `sep` inside
/// double quotes does not count. Going right to left means that a client's
/// unbalanced quote further left cannot hide the entries its proxies appended.
struct SplitFromRight<'a> {
    rest: Option<&'a [u8]>,
    sep: u8,
    quoted: bool,
}

impl<'a> SplitFromRight<'a> {
    fn new(s: &'a [u8], sep: u8, quoted: bool) -> Self {
        SplitFromRight {
            rest: Some(s),
            sep,
            quoted,
        }
    }
}

impl<'a> Iterator for SplitFromRight<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.rest?;
        let mut in_quotes = false;
        for (i, &b) in s.iter().enumerate().rev() {
            if self.quoted && b == b'"' {
                in_quotes = !in_quotes;
            } else if b == self.sep && !in_quotes {
                self.rest = Some(&s[..i]);
                return Some(&s[i + 1..]);
            }
        }
        self.rest = None;
        Some(s)
    }
}

/// An address range: the network's bits and the prefix length.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cidr {
    V4(u32, u8),
    V6(u128, u8),
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Operator configuration, not a user's address.
        match *self {
            Cidr::V4(net, len) => write!(f, "{}/{len}", Ipv4Addr::from(net)),
            Cidr::V6(net, len) => write!(f, "{}/{len}", Ipv6Addr::from(net)),
        }
    }
}

impl Cidr {
    fn contains(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Cidr::V4(net, len), IpAddr::V4(ip)) => u32::from(ip) & mask32(len) == net,
            (Cidr::V6(net, len), IpAddr::V6(ip)) => u128::from(ip) & mask128(len) == net,
            _ => false,
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Cidr> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| anyhow!("{addr:?} is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(len) => match len.parse::<u8>() {
                Ok(len) if len <= max => len,
                _ => bail!("the prefix length must be a number from 0 to {max}"),
            },
        };
        let cidr = match addr {
            IpAddr::V4(ip) => Cidr::V4(u32::from(ip), len),
            // ::ffff:10.0.0.0/104 is 10.0.0.0/8: peers are matched canonically.
            IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some() && len >= 96 => {
                Cidr::V4(u128::from(ip) as u32, len - 96)
            }
            IpAddr::V6(ip) => Cidr::V6(u128::from(ip), len),
        };
        let (network, host_bits) = match cidr {
            Cidr::V4(net, len) => (Cidr::V4(net & mask32(len), len), net & !mask32(len) != 0),
            Cidr::V6(net, len) => (Cidr::V6(net & mask128(len), len), net & !mask128(len) != 0),
        };
        if host_bits {
            bail!("bits are set past the prefix: did you mean {network:?}?");
        }
        Ok(cidr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn trusted(ranges: &[&str]) -> TrustedProxies {
        let ranges: Vec<String> = ranges.iter().map(|s| s.to_string()).collect();
        TrustedProxies::parse(&ranges).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    fn xff(proxies: &TrustedProxies, peer: &str, value: &str) -> IpAddr {
        proxies.client_ip(ip(peer), &headers(&[("x-forwarded-for", value)]))
    }

    fn fwd(proxies: &TrustedProxies, peer: &str, value: &str) -> IpAddr {
        let proxies = proxies.clone().reading(Header::Forwarded);
        proxies.client_ip(ip(peer), &headers(&[("forwarded", value)]))
    }

    #[test]
    fn cidrs_parse_both_families_and_bare_hosts() {
        let t = trusted(&["10.0.0.0/8", " 127.0.0.1 ", "fd00::/8", "::1", "0.0.0.0/0"]);
        assert_eq!(
            format!("{:?}", t.ranges),
            "[10.0.0.0/8, 127.0.0.1/32, fd00::/8, ::1/128, 0.0.0.0/0]"
        );
        let t = trusted(&["::ffff:10.0.0.0/104"]);
        assert!(t.contains(ip("10.9.9.9")));
        assert!(t.contains(ip("::ffff:10.9.9.9")));
        assert!(!t.contains(ip("11.0.0.0")));
    }

    #[test]
    fn bad_cidrs_are_rejected_with_a_reason() {
        for (input, reason) in [
            ("10.0.0.0/33", "from 0 to 32"),
            ("::/129", "from 0 to 128"),
            ("10.0.0.0/", "from 0 to 32"),
            ("10.0.0.0/-1", "from 0 to 32"),
            ("10.0.0/8", "not an IPv4 or IPv6 address"),
            ("", "not an IPv4 or IPv6 address"),
            ("proxy.example", "not an IPv4 or IPv6 address"),
            ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
            ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
        ] {
            let err = TrustedProxies::parse(&[input.to_string()]).unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains(reason), "{input}: {text}");
            assert!(text.contains("trusted proxy range"), "{input}: {text}");
        }
    }

    #[test]
    fn ranges_match_at_their_edges() {
        let t = trusted(&["172.16.0.0/12", "2001:db8:1::/48"]);
        assert!(t.contains(ip("172.16.0.0")));
        assert!(t.contains(ip("172.31.255.255")));
        assert!(!t.contains(ip("172.32.0.0")));
        assert!(!t.contains(ip("172.15.255.255")));
        assert!(t.contains(ip("2001:db8:1:ffff::1")));
        assert!(!t.contains(ip("2001:db8:2::1")));
        assert!(!trusted(&[]).contains(ip("127.0.0.1")));
        assert!(trusted(&["0.0.0.0/0"]).contains(ip("8.8.8.8")));
        assert!(!trusted(&["0.0.0.0/0"]).contains(ip("2a00::1")));
        assert!(trusted(&["::/0"]).contains(ip("2a00::1")));
    }

    #[test]
    fn header_names_parse() {
        assert_eq!(
            "X-Forwarded-For".parse::<Header>().unwrap(),
            Header::XForwardedFor
        );
        assert_eq!("forwarded".parse::<Header>().unwrap(), Header::Forwarded);
        assert!("x-real-ip".parse::<Header>().is_err());
    }

    #[test]
    fn untrusted_peers_headers_are_ignored() {
        let t = trusted(&["127.0.0.1"]);
        assert_eq!(xff(&t, "81.2.3.4", "8.8.8.8"), ip("81.2.3.4"));
        assert_eq!(fwd(&t, "81.2.3.4", "for=8.8.8.8"), ip("81.2.3.4"));
        assert_eq!(xff(&trusted(&[]), "127.0.0.1", "8.8.8.8"), ip("127.0.0.1"));
    }

    #[test]
    fn a_trusted_peer_names_its_client() {
        let t = trusted(&["127.0.0.1"]);
        assert_eq!(xff(&t, "127.0.0.1", "81.2.3.4"), ip("81.2.3.4"));
        assert_eq!(xff(&t, "::ffff:127.0.0.1", "81.2.3.4"), ip("81.2.3.4"));
        assert_eq!(xff(&t, "127.0.0.1", " 2a00:1450::1 "), ip("2a00:1450::1"));
        assert_eq!(xff(&t, "127.0.0.1", "81.2.3.4:5678"), ip("81.2.3.4"));
        assert_eq!(xff(&t, "127.0.0.1", "[2a00::1]:443"), ip("2a00::1"));
        assert_eq!(fwd(&t, "127.0.0.1", "for=81.2.3.4"), ip("81.2.3.4"));
        assert_eq!(fwd(&t, "127.0.0.1", "For=\"81.2.3.4:80\""), ip("81.2.3.4"));
        assert_eq!(
            fwd(
                &t,
                "127.0.0.1",
                "for=\"[2001:4860::1]:4711\";proto=https;by=_edge"
            ),
            ip("2001:4860::1")
        );
        assert_eq!(
            fwd(&t, "127.0.0.1", "proto=https; for=\"[2a00::1]\""),
            ip("2a00::1")
        );
        assert_eq!(fwd(&t, "127.0.0.1", "for=\"[2a00::1]:_p\""), ip("2a00::1"));
    }

    #[test]
    fn the_walk_skips_trusted_proxies_and_ignores_what_the_client_prepended() {
        let t = trusted(&["127.0.0.1", "10.0.0.0/8"]);
        // client -> 10.1.1.1 -> 10.2.2.2 -> 127.0.0.1 -> us
        assert_eq!(
            xff(&t, "127.0.0.1", "6.6.6.6, 81.2.3.4, 10.1.1.1, 10.2.2.2"),
            ip("81.2.3.4")
        );
        assert_eq!(
            fwd(
                &t,
                "127.0.0.1",
                "for=6.6.6.6, for=81.2.3.4, for=10.1.1.1;proto=http"
            ),
            ip("81.2.3.4")
        );
        // Junk the client sent is never parsed.
        assert_eq!(
            xff(&t, "127.0.0.1", "not an address, 81.2.3.4"),
            ip("81.2.3.4")
        );
        assert_eq!(
            fwd(&t, "127.0.0.1", "for=\"[oops, for=81.2.3.4"),
            ip("81.2.3.4")
        );
        assert_eq!(
            fwd(&t, "127.0.0.1", "for=\"a,b\", for=81.2.3.4"),
            ip("81.2.3.4")
        );
        // Every hop trusted: the furthest one.
        assert_eq!(xff(&t, "127.0.0.1", "10.1.1.1, 10.2.2.2"), ip("10.1.1.1"));
    }

    #[test]
    fn several_header_lines_are_one_list() {
        let t = trusted(&["127.0.0.1", "10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "81.2.3.4, 10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        assert_eq!(t.client_ip(ip("127.0.0.1"), &h), ip("81.2.3.4"));
        let h = headers(&[
            ("x-forwarded-for", "81.2.3.4"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        assert_eq!(t.client_ip(ip("127.0.0.1"), &h), ip("81.2.3.4"));
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let t = trusted(&["127.0.0.1"]);
        let h = headers(&[
            ("x-forwarded-for", "81.2.3.4"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        assert_eq!(t.client_ip(ip("127.0.0.1"), &h), ip("81.2.3.4"));
        let f = t.clone().reading(Header::Forwarded);
        assert_eq!(f.client_ip(ip("127.0.0.1"), &h), ip("6.6.6.6"));
        let only_forwarded = headers(&[("forwarded", "for=6.6.6.6")]);
        assert_eq!(
            t.client_ip(ip("127.0.0.1"), &only_forwarded),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn unknown_obfuscated_and_malformed_entries_give_the_peer() {
        let t = trusted(&["127.0.0.1"]);
        let peer = ip("127.0.0.1");
        for value in [
            "unknown",
            "_hidden",
            "81.2.3.4, unknown",
            "8.8.8.8 8.8.4.4",
            "1.2.3.4:99999",
            "[2a00::1",
            "2a00::1]:80",
            "\"81.2.3.4\"",
        ] {
            assert_eq!(
                xff(&t, "127.0.0.1", value),
                peer,
                "X-Forwarded-For: {value}"
            );
        }
        for value in [
            "for=unknown",
            "for=_gazonk",
            "for=\"_gazonk:_port\"",
            "for=81.2.3.4, for=_hidden",
            "proto=https",
            "for=81.2.3.4;for=8.8.8.8",
            "for",
            "for=\"81.2.3.4",
            "for=\"81.2.3.4\\\"\"",
            "for=\"\\8.8.8.8\"",
            "for=8.8.8.8\"",
            "for=[2a00::1]x",
        ] {
            assert_eq!(fwd(&t, "127.0.0.1", value), peer, "Forwarded: {value}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"81.2.3.4\xff").unwrap(),
        );
        assert_eq!(t.client_ip(peer, &h), peer);
        assert_eq!(t.client_ip(peer, &HeaderMap::new()), peer);
        assert_eq!(xff(&t, "127.0.0.1", " , ,"), peer);
        // What a client wrote further left spoils nothing, even non-text.
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe\"junk, 81.2.3.4").unwrap(),
        );
        assert_eq!(t.client_ip(peer, &h), ip("81.2.3.4"));
        let t = t.reading(Header::Forwarded);
        h.insert(
            "forwarded",
            HeaderValue::from_bytes(b"for=\"\xff, for=81.2.3.4").unwrap(),
        );
        assert_eq!(t.client_ip(peer, &h), ip("81.2.3.4"));
    }

    #[test]
    fn a_trusted_proxy_forwards_host_and_proto() {
        let t = trusted(&["127.0.0.1", "10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "81.2.3.4"),
            ("x-forwarded-host", "evil.example, Chat.example.org:8443 "),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=81.2.3.4;host=other.example;proto=http"),
        ]);
        let got = t.forwarded_origin(ip("127.0.0.1"), &h);
        assert_eq!(got.host.as_deref(), Some("Chat.example.org:8443"));
        assert_eq!(got.proto.as_deref(), Some("https"));
        assert_eq!(
            t.forwarded_origin(ip("81.9.9.9"), &h),
            ForwardedOrigin::default(),
            "not from an untrusted peer"
        );
        assert_eq!(
            trusted(&[]).forwarded_origin(ip("127.0.0.1"), &h),
            ForwardedOrigin::default()
        );
        // Forwarded: the element the outermost trusted proxy wrote, the one
        // that names the client; not what the client prepended, nor what the
        // inner proxy wrote about the outer one.
        let f = t.clone().reading(Header::Forwarded);
        let chain = headers(&[(
            "forwarded",
            "for=6.6.6.6;host=evil.example;proto=https, \
             for=81.2.3.4;host=\"chat.example.org\";Proto=https, \
             for=10.0.0.2;host=internal:8080;proto=http",
        )]);
        let got = f.forwarded_origin(ip("127.0.0.1"), &chain);
        assert_eq!(got.host.as_deref(), Some("chat.example.org"));
        assert_eq!(got.proto.as_deref(), Some("https"));
        let hidden = headers(&[("forwarded", "for=unknown;host=chat.example.org")]);
        let got = f.forwarded_origin(ip("127.0.0.1"), &hidden);
        assert_eq!(
            (got.host.as_deref(), got.proto),
            (Some("chat.example.org"), None)
        );
        for bad in [
            "for=81.2.3.4;host=a;host=b",
            "for=81.2.3.4;host=\"a",
            "for=81.2.3.4;host=a\"",
            "for=81.2.3.4;host",
            "for=\"[oops;host=a",
        ] {
            let got = f.forwarded_origin(ip("127.0.0.1"), &headers(&[("forwarded", bad)]));
            assert_eq!(got.host, None, "{bad}");
        }
        // With X-Forwarded-For configured, Forwarded is not read, and the
        // other way round.
        let only_forwarded = headers(&[("forwarded", "for=81.2.3.4;host=a;proto=https")]);
        assert_eq!(
            t.forwarded_origin(ip("127.0.0.1"), &only_forwarded),
            ForwardedOrigin::default()
        );
        let only_x = headers(&[("x-forwarded-host", "a"), ("x-forwarded-proto", "https")]);
        assert_eq!(
            f.forwarded_origin(ip("127.0.0.1"), &only_x),
            ForwardedOrigin::default()
        );
    }

    #[test]
    fn empty_list_elements_are_skipped() {
        let t = trusted(&["127.0.0.1"]);
        assert_eq!(xff(&t, "127.0.0.1", ", 81.2.3.4,"), ip("81.2.3.4"));
        assert_eq!(fwd(&t, "127.0.0.1", "for=81.2.3.4, ,"), ip("81.2.3.4"));
        assert_eq!(fwd(&t, "127.0.0.1", ";for=81.2.3.4;"), ip("81.2.3.4"));
    }

    /// Every address the header text could be naming, however it is written.
    fn addresses_in(text: &str) -> Vec<IpAddr> {
        text.split([',', ';', '=', '"', '[', ']', ' ', '\t'])
            .filter_map(|token| {
                token.parse::<IpAddr>().ok().or_else(|| {
                    let (host, _) = token.rsplit_once(':')?;
                    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                })
            })
            .collect()
    }

    /// Header lines: mostly lists of plausible entries (so that the walk
    /// gets somewhere), with junk, stray quotes and raw bytes mixed in.
    fn header_lines(forwarded: bool) -> impl Strategy<Value = Vec<Vec<u8>>> {
        let node = prop_oneof![
            Just("81.2.3.4"),
            Just("10.0.0.7"),
            Just("127.0.0.1"),
            Just("[2a00::1]:4711"),
            Just("\"[2a00::1]:4711\""),
            Just("2a00:1450::1"),
            Just("::ffff:10.0.0.7"),
            Just("fd00::9"),
            Just("\"8.8.8.8:80\""),
            Just("8.8.8.8:_p"),
            Just("unknown"),
            Just("_hidden"),
        ];
        let junk = prop_oneof![
            Just("for=".to_string()),
            Just("For=\"".to_string()),
            Just(";proto=https".to_string()),
            Just(";".to_string()),
            Just(",".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just(":".to_string()),
            Just("[".to_string()),
            "[ -~]{0,8}",
        ];
        // Usually in the header's own form (`for=` pairs in Forwarded, bare
        // nodes in X-Forwarded-For), now and then in the other one.
        let plausible = (node, proptest::bool::weighted(0.9), any::<bool>()).prop_map(
            move |(node, usual, proto)| match (usual == forwarded, proto && forwarded) {
                (true, true) => format!("for={node};proto=https"),
                (true, false) => format!("for={node}"),
                (false, _) => node.to_string(),
            },
        );
        let entry = prop_oneof![
            4 => plausible,
            1 => proptest::collection::vec(junk, 1..4).prop_map(|j| j.concat()),
        ];
        let line = prop_oneof![
            6 => proptest::collection::vec(entry, 0..6).prop_map(|e| e.join(", ").into_bytes()),
            1 => proptest::collection::vec(any::<u8>(), 0..40),
        ];
        proptest::collection::vec(line, 0..4)
    }

    proptest! {
        #[test]
        fn any_header_gives_the_peer_or_an_address_from_the_headers(
            (forwarded, lines) in any::<bool>().prop_flat_map(|f| (Just(f), header_lines(f))),
            peer_trusted in proptest::bool::weighted(0.9),
        ) {
            let t = trusted(&["127.0.0.1", "10.0.0.0/8", "fd00::/8"]);
            let t = if forwarded { t.reading(Header::Forwarded) } else { t };
            let peer = if peer_trusted { ip("127.0.0.1") } else { ip("81.9.9.9") };
            let name = if forwarded { "forwarded" } else { "x-forwarded-for" };
            let mut h = HeaderMap::new();
            let mut seen = Vec::new();
            for line in &lines {
                if let Ok(value) = HeaderValue::from_bytes(line) {
                    seen.extend(addresses_in(&String::from_utf8_lossy(line)));
                    h.append(name, value);
                }
            }
            let got = t.client_ip(peer, &h);
            prop_assert!(got == peer || seen.contains(&got), "{got} from {lines:?}");
            let forwarded = t.forwarded_origin(peer, &h);
            if !peer_trusted {
                prop_assert_eq!(got, peer);
                prop_assert_eq!(forwarded, ForwardedOrigin::default());
            }
        }
    }
}
