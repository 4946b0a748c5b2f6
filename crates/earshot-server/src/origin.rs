//! Which web pages may open `/ws`: the `Origin` check.
//!
//! A browser tells us, in `Origin`, which page opened the socket; a page
//! anywhere can open a WebSocket to us, and the browser sends its visitor's
//! address along. So `/ws` takes a browser's upgrade only from our own origin
//! (the scheme, host and port the page was served from) or from one the
//! operator lists with `--allowed-origin`. Clients that send no `Origin` at
//! all are not browsers (earshot-peer, bots): they could send any `Origin`
//! they like, so checking them would stop nobody.
//!
//! Invariants:
//!
//! - Origins compare by scheme and host (both case-insensitively) and port,
//!   with the scheme's default port written or not (`https://a` is
//!   `https://a:443`). IPv6 hosts compare as addresses.
//! - `Origin: null` (sandboxed frames, `file:` pages, some redirects), a
//!   malformed `Origin`, or more than one, never match.
//! - Our own origin comes from the request: `Host` (or the request target's
//!   authority) with the connection's scheme, or, from a trusted reverse
//!   proxy only, the host and scheme it forwarded (see
//!   [`TrustedProxies::forwarded_origin`]). A page cannot set any of those
//!   headers on a WebSocket, so it cannot make itself look like us.
//! - Over plain HTTP, our own origin counts only under a name that DNS
//!   rebinding cannot give a stranger's page: an IP address, `localhost`,
//!   or a name listed with `--public-host`. Otherwise a page on
//!   `http://evil.example`, whose name the attacker later points at our
//!   address, would send `Host` and `Origin` that agree. Over HTTPS (ours, or
//!   a trusted proxy's) the certificate already names the site.
//! - Nothing here logs, and a [`Refusal`] names only its kind: an origin is
//!   client input, and would tell where someone came from.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use anyhow::{anyhow, bail};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, Uri};

use crate::proxy::TrustedProxies;

/// A web origin, normalised: lower-case scheme and host, IPv6 hosts in
/// their canonical form with brackets, and no port when it is the scheme's
/// default.
#[derive(Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

/// Longest host name we take (DNS names are at most 253 characters).
const MAX_HOST: usize = 255;

impl Origin {
    /// `scheme://host[:port]`, as browsers send it in `Origin` and operators
    /// write it in `--allowed-origin`. No path, query, user or trailing slash.
    pub fn parse(text: &str) -> Result<Origin, &'static str> {
        if text.eq_ignore_ascii_case("null") {
            return Err(
                "`null` is the origin of sandboxed and local pages, which cannot be told apart",
            );
        }
        let (scheme, authority) = text
            .split_once("://")
            .ok_or("an origin looks like https://host[:port]")?;
        if authority.contains(['/', '?', '#']) {
            return Err("an origin has no path (not even a trailing /), query or fragment");
        }
        if authority.contains('@') {
            return Err("an origin has no user name");
        }
        Origin::from_parts(scheme, authority).ok_or("not a valid scheme://host[:port]")
    }

    /// The origin of a page at `authority` (`host[:port]`, from a `Host`
    /// header or a proxy's forwarded host) over `scheme`, if both are valid.
    pub fn from_parts(scheme: &str, authority: &str) -> Option<Origin> {
        let scheme = parse_scheme(scheme)?;
        let (host, port) = split_authority(authority)?;
        let host = parse_host(host)?;
        let port = match port {
            None => None,
            Some(port) => Some(parse_port(port)?),
        };
        let port = port.filter(|&p| Some(p) != default_port(&scheme));
        Some(Origin { scheme, host, port })
    }
}

impl FromStr for Origin {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Origin> {
        Origin::parse(s.trim()).map_err(|why| anyhow!("{s:?}: {why}"))
    }
}

/// Operator configuration, or a refusal counted but never logged: safe to
/// print as an origin only where an operator wrote it.
impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// `http`, `https` and the like: a letter, then letters, digits, `+`, `-`, `.`.
fn parse_scheme(s: &str) -> Option<String> {
    let mut chars = s.chars();
    let first = chars.next()?;
    let ok = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && s.len() <= 32;
    ok.then(|| s.to_ascii_lowercase())
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` into host and port text.
fn split_authority(s: &str) -> Option<(&str, Option<&str>)> {
    if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, rest) = s.split_at(end + 1);
        match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        }
    } else {
        match s.split_once(':') {
            None => Some((s, None)),
            Some((host, port)) => Some((host, Some(port))),
        }
    }
}

/// A bracketed IPv6 address (canonicalised), or a name or IPv4 address made
/// of letters, digits, `-`, `.`, `_` and `~` (browsers send names in
/// punycode), lower-cased.
fn parse_host(s: &str) -> Option<String> {
    if let Some(inner) = s.strip_prefix('[') {
        let ip: Ipv6Addr = inner.strip_suffix(']')?.parse().ok()?;
        return Some(format!("[{ip}]"));
    }
    let ok = !s.is_empty()
        && s.len() <= MAX_HOST
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'));
    ok.then(|| s.to_ascii_lowercase())
}

/// 1 to 5 digits, at most 65535 (no sign, no spaces).
fn parse_port(s: &str) -> Option<u16> {
    let digits = (1..=5).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| s.parse().ok()).flatten()
}

/// Why an upgrade was refused. Says nothing about the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Origin: null`.
    Null,
    /// Unparseable, or several `Origin` headers.
    Malformed,
    /// A well-formed origin that is neither ours nor allowed.
    Foreign,
    /// Our own host, but over another scheme: most likely a TLS-terminating
    /// proxy that does not say so (no `X-Forwarded-Proto`), which the
    /// operator should hear about.
    OtherScheme,
    /// Our own origin over plain HTTP, under a name that is neither an
    /// address, `localhost` nor listed with `--public-host`: what a DNS
    /// rebinding page looks like.
    UnlistedName,
}

impl Refusal {
    /// For a debug log line: the kind only.
    pub fn kind(self) -> &'static str {
        match self {
            Refusal::Null => "null origin",
            Refusal::Malformed => "malformed origin",
            Refusal::Foreign => "foreign origin",
            Refusal::OtherScheme => "our host over another scheme",
            Refusal::UnlistedName => "plain-HTTP host name not listed",
        }
    }
}

/// What `/ws` accepts besides our own origin.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// From `--allowed-origin`.
    pub allowed: Vec<Origin>,
    /// From `--public-host`: names our pages are served under over plain
    /// HTTP, lower-case.
    pub public_hosts: Vec<String>,
}

/// What a request says about where the page came from and where it went.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub uri: &'a Uri,
    /// Whether the connection is TLS (our own HTTPS).
    pub tls: bool,
    /// The TCP peer, for deciding whether forwarded headers count.
    pub peer: IpAddr,
}

impl OriginPolicy {
    /// Checks an upgrade request: `Ok` for no `Origin`, our own origin or an
    /// allowed one.
    pub fn check(&self, request: &Request<'_>, proxies: &TrustedProxies) -> Result<(), Refusal> {
        let mut values = request.headers.get_all(ORIGIN).iter();
        let Some(value) = values.next() else {
            return Ok(());
        };
        if values.next().is_some() {
            return Err(Refusal::Malformed);
        }
        let text = value.to_str().map_err(|_| Refusal::Malformed)?;
        let origin = Origin::parse(text).map_err(|_| {
            if text.eq_ignore_ascii_case("null") {
                Refusal::Null
            } else {
                Refusal::Malformed
            }
        })?;
        let own = own_origin(request, proxies);
        match own {
            _ if self.allowed.contains(&origin) => Ok(()),
            Some(own) if own == origin && !self.rebindable(&own) => Ok(()),
            Some(own) if own == origin => Err(Refusal::UnlistedName),
            Some(own) if own.host == origin.host && own.scheme != origin.scheme => {
                Err(Refusal::OtherScheme)
            }
            _ => Err(Refusal::Foreign),
        }
    }

    /// Whether a stranger's page could have been served under `own`'s name
    /// by pointing that name at us: plain HTTP under a DNS name we were not
    /// told is ours.
    fn rebindable(&self, own: &Origin) -> bool {
        let host = own.host.as_str();
        own.scheme != "https"
            && !host.starts_with('[')
            && host.parse::<std::net::Ipv4Addr>().is_err()
            && host != "localhost"
            && !host.ends_with(".localhost")
            && !self.public_hosts.iter().any(|h| h == host)
    }
}

/// Checks `--public-host` values at start-up: host names, lower-cased.
pub fn parse_public_hosts(values: &[String]) -> anyhow::Result<Vec<String>> {
    values
        .iter()
        .map(|value| {
            let value = value.trim();
            match parse_host(value) {
                Some(host) if !value.contains(':') && !value.starts_with('[') => Ok(host),
                _ => bail!("{value:?}: a host name, without scheme or port"),
            }
        })
        .collect()
}

/// The origin the page was served from, as far as the request tells: behind
/// a trusted proxy, the host and scheme it forwarded (each falling back to
/// our own when it sent none); otherwise `Host` (or, without one, the
/// request target's authority) over the connection's scheme.
pub fn own_origin(request: &Request<'_>, proxies: &TrustedProxies) -> Option<Origin> {
    let forwarded = proxies.forwarded_origin(request.peer, request.headers);
    let scheme = match &forwarded.proto {
        Some(proto) => proto.as_str(),
        None if request.tls => "https",
        None => "http",
    };
    let host = match &forwarded.host {
        Some(host) => host.as_str(),
        None => match request.headers.get(HOST) {
            Some(host) => host.to_str().ok()?,
            None => request.uri.authority()?.as_str(),
        },
    };
    Origin::from_parts(scheme, host.trim())
}

/// Checks `--allowed-origin` values at start-up.
pub fn parse_allowed(values: &[String]) -> anyhow::Result<Vec<Origin>> {
    let mut out = Vec::new();
    for value in values {
        if value.trim() == "*" {
            bail!("\"*\" is not an origin: list each site whose pages may open /ws");
        }
        out.push(value.parse()?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn origin(s: &str) -> Origin {
        Origin::parse(s).unwrap()
    }

    #[test]
    fn origins_normalise_case_default_ports_and_ipv6() {
        assert_eq!(
            origin("HTTPS://Chat.Example.ORG"),
            origin("https://chat.example.org:443")
        );
        assert_eq!(origin("http://127.0.0.1:80"), origin("http://127.0.0.1"));
        assert_eq!(origin("http://[::1]:8080"), origin("http://[0:0::1]:8080"));
        assert_eq!(
            origin("http://[::FFFF:7F00:1]"),
            origin("http://[::ffff:127.0.0.1]")
        );
        assert_eq!(format!("{:?}", origin("HTTPS://A.b:443")), "https://a.b");
        assert_eq!(format!("{:?}", origin("http://a:443")), "http://a:443");
        assert_eq!(format!("{:?}", origin("app://x")), "app://x");
        assert_ne!(origin("http://a"), origin("https://a"));
        assert_ne!(origin("http://a:8080"), origin("http://a:8081"));
        assert_ne!(origin("http://a"), origin("http://a.example"));
        assert_eq!(origin("http://a:080"), origin("http://a"));
    }

    #[test]
    fn bad_origins_are_refused_with_a_reason() {
        for bad in [
            "null",
            "NULL",
            "",
            "chat.example.org",
            "https://",
            "https://chat.example.org/",
            "https://chat.example.org/path",
            "https://chat.example.org?x",
            "https://chat.example.org#x",
            "https://user@chat.example.org",
            "https://chat.example.org:",
            "https://chat.example.org:99999",
            "https://chat.example.org:+80",
            "https://chat.example.org:1:2",
            "https://chat example.org",
            "https://[::1",
            "https://[::1]x",
            "https://[nope]",
            "1http://a",
            "ht tp://a",
            "https://*.example.org",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse_allowed(&["*".into()]).is_err());
        let err = parse_allowed(&["https://a/".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("trailing /"), "{err:#}");
        assert_eq!(
            parse_allowed(&[" https://a.example:8443 ".into()]).unwrap(),
            vec![origin("https://a.example:8443")]
        );
    }

    #[test]
    fn own_origin_is_host_over_the_connections_scheme() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("Chat.example.org"));
        let uri = Uri::from_static("/ws");
        let peer: IpAddr = "81.2.3.4".parse().unwrap();
        let none = TrustedProxies::default();
        let req = |tls| Request {
            headers: &headers,
            uri: &uri,
            tls,
            peer,
        };
        assert_eq!(
            own_origin(&req(true), &none),
            Some(origin("https://chat.example.org"))
        );
        assert_eq!(
            own_origin(&req(false), &none),
            Some(origin("http://chat.example.org"))
        );
        let policy = OriginPolicy::default();
        let mut with = headers.clone();
        with.insert(ORIGIN, HeaderValue::from_static("https://chat.example.org"));
        let check = |tls| {
            policy.check(
                &Request {
                    headers: &with,
                    uri: &uri,
                    tls,
                    peer,
                },
                &none,
            )
        };
        assert_eq!(check(true), Ok(()));
        assert_eq!(check(false), Err(Refusal::OtherScheme));
        let no_host = HeaderMap::new();
        let absolute = Uri::from_static("https://h.example:8443/ws");
        let req = Request {
            headers: &no_host,
            uri: &absolute,
            tls: true,
            peer,
        };
        assert_eq!(
            own_origin(&req, &none),
            Some(origin("https://h.example:8443"))
        );
    }

    proptest! {
        /// `Origin` is client input: parsing never panics, and what parses
        /// prints back as itself in normal form, which parses to the same.
        #[test]
        fn origin_parsing_never_panics_and_normal_forms_round_trip(text in ".{0,80}") {
            if let Ok(o) = Origin::parse(&text) {
                let shown = format!("{o:?}");
                prop_assert_eq!(Origin::parse(&shown), Ok(o.clone()));
                prop_assert!(shown.is_ascii());
                prop_assert!(!shown.chars().any(|c| c.is_ascii_uppercase()));
            }
        }

        /// The same origin written differently (case, default port) is equal,
        /// and a different port is not.
        #[test]
        fn spellings_of_one_origin_are_equal(
            https in any::<bool>(),
            host in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,3}",
            port in proptest::option::of(1u16..),
            upper in proptest::collection::vec(any::<bool>(), 0..40),
        ) {
            let scheme = if https { "https" } else { "http" };
            let default = if https { 443 } else { 80 };
            let shout = |s: &str| -> String {
                s.chars()
                    .zip(upper.iter().chain(std::iter::repeat(&false)))
                    .map(|(c, &u)| if u { c.to_ascii_uppercase() } else { c })
                    .collect()
            };
            let with_port = match port {
                Some(p) => format!("{scheme}://{host}:{p}"),
                None => format!("{scheme}://{host}"),
            };
            let explicit = format!("{scheme}://{host}:{}", port.unwrap_or(default));
            let a = Origin::parse(&with_port).unwrap();
            prop_assert_eq!(Origin::parse(&shout(&with_port)).unwrap(), a.clone());
            prop_assert_eq!(Origin::parse(&explicit).unwrap(), a.clone());
            let authority = match port {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            prop_assert_eq!(Origin::from_parts(scheme, &shout(&authority)), Some(a.clone()));
            let other = port.unwrap_or(default).wrapping_add(1).max(1);
            let b = Origin::parse(&format!("{scheme}://{host}:{other}")).unwrap();
            prop_assert_ne!(a, b);
        }
    }
}
