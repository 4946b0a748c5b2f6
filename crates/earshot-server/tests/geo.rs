//! GeoIP and trusted proxies, offline: a MaxMind DB generated here byte by
//! byte, the embedded registry data, and client addresses taken from proxy
//! headers only when a trusted proxy sent them.

use std::net::IpAddr;
use std::path::PathBuf;

use axum::http::{HeaderMap, HeaderValue};
use earshot_server::geo::Geo;
use earshot_server::proxy::{Header, TrustedProxies};

/// A minimal MaxMind DB writer, after the MaxMind DB File Format
/// Specification 2.0: a binary search tree of 24-bit records, 16 zero bytes,
/// a data section of typed values, then "\xAB\xCD\xEFMaxMind.com" and the
/// metadata map.
mod mmdb {
    #[derive(Clone, Copy)]
    enum Record {
        Empty,
        Node(u32),
        Data(u32),
    }

    pub struct Writer {
        ip_version: u16,
        nodes: Vec<[Record; 2]>,
        data: Vec<u8>,
    }

    impl Writer {
        pub fn new(ip_version: u16) -> Writer {
            Writer {
                ip_version,
                nodes: vec![[Record::Empty; 2]],
                data: Vec::new(),
            }
        }

        /// Maps a network ("81.0.0.0/8", "2a00::/16") to an encoded value.
        /// IPv4 networks in an IPv6 tree go under ::/96, where readers look.
        pub fn insert(&mut self, network: &str, value: Vec<u8>) {
            let (addr, len) = network.split_once('/').unwrap();
            let len: u32 = len.parse().unwrap();
            let (bits, len) = match addr.parse::<std::net::IpAddr>().unwrap() {
                std::net::IpAddr::V4(v4) if self.ip_version == 4 => {
                    ((u128::from(u32::from(v4))) << 96, len)
                }
                std::net::IpAddr::V4(v4) => (u128::from(u32::from(v4)), len + 96),
                std::net::IpAddr::V6(v6) => {
                    assert_eq!(self.ip_version, 6, "IPv6 network in an IPv4 tree");
                    (u128::from(v6), len)
                }
            };
            assert!(len >= 1);
            let offset = self.data.len() as u32;
            self.data.extend(value);
            let mut node = 0usize;
            for depth in 0..len {
                let bit = ((bits >> (127 - depth)) & 1) as usize;
                if depth == len - 1 {
                    self.nodes[node][bit] = Record::Data(offset);
                    break;
                }
                node = match self.nodes[node][bit] {
                    Record::Node(next) => next as usize,
                    Record::Empty => {
                        self.nodes.push([Record::Empty; 2]);
                        let next = self.nodes.len() - 1;
                        self.nodes[node][bit] = Record::Node(next as u32);
                        next
                    }
                    Record::Data(_) => panic!("{network} overlaps an earlier network"),
                };
            }
        }

        pub fn finish(self) -> Vec<u8> {
            let node_count = self.nodes.len() as u32;
            let mut out = Vec::new();
            for node in &self.nodes {
                for record in node {
                    let value = match *record {
                        Record::Empty => node_count,
                        Record::Node(n) => n,
                        Record::Data(offset) => node_count + 16 + offset,
                    };
                    assert!(value < 1 << 24, "fits a 24-bit record");
                    out.extend_from_slice(&value.to_be_bytes()[1..]);
                }
            }
            out.extend_from_slice(&[0; 16]);
            out.extend_from_slice(&self.data);
            out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
            out.extend(map(&[
                ("binary_format_major_version", uint(5, 2)),
                ("binary_format_minor_version", uint(5, 0)),
                ("build_epoch", uint(9, 1_700_000_000)),
                ("database_type", string("Earshot-Test-Country")),
                ("description", map(&[("en", string("Earshot test data"))])),
                ("ip_version", uint(5, u64::from(self.ip_version))),
                ("languages", array(&[string("en")])),
                ("node_count", uint(6, u64::from(node_count))),
                ("record_size", uint(5, 24)),
            ]));
            out
        }
    }

    /// A control byte (and extended type byte and size bytes).
    fn control(kind: u8, size: usize) -> Vec<u8> {
        let (short, extra): (u8, Vec<u8>) = match size {
            0..29 => (size as u8, vec![]),
            29..285 => (29, vec![(size - 29) as u8]),
            285..65_821 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
            _ => (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec()),
        };
        let mut out = if kind <= 7 {
            vec![kind << 5 | short]
        } else {
            vec![short, kind - 7]
        };
        out.extend(extra);
        out
    }

    pub fn string(s: &str) -> Vec<u8> {
        let mut out = control(2, s.len());
        out.extend_from_slice(s.as_bytes());
        out
    }

    /// An unsigned integer of type 5 (uint16), 6 (uint32) or 9 (uint64), in
    /// as few big-endian bytes as it needs.
    pub fn uint(kind: u8, value: u64) -> Vec<u8> {
        let bytes = value.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        let mut out = control(kind, 8 - skip);
        out.extend_from_slice(&bytes[skip..]);
        out
    }

    pub fn map(pairs: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = control(7, pairs.len());
        for (key, value) in pairs {
            out.extend(string(key));
            out.extend_from_slice(value);
        }
        out
    }

    pub fn array(items: &[Vec<u8>]) -> Vec<u8> {
        let mut out = control(11, items.len());
        for item in items {
            out.extend_from_slice(item);
        }
        out
    }

    /// {"country": {"iso_code": code}}, the part of a GeoLite2-Country
    /// record that matters.
    pub fn country(code: &str) -> Vec<u8> {
        map(&[("country", map(&[("iso_code", string(code))]))])
    }
}

/// A database file in the temp directory, removed when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str, bytes: &[u8]) -> TempDb {
        let path =
            std::env::temp_dir().join(format!("earshot-geo-{}-{name}.mmdb", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        TempDb(path)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn code(geo: &Geo, addr: &str) -> Option<String> {
    geo.country(ip(addr)).map(|c| c.as_str().to_owned())
}

fn test_database() -> Vec<u8> {
    use mmdb::*;
    let mut w = Writer::new(6);
    w.insert("81.0.0.0/8", country("FR"));
    w.insert("2a00::/16", country("nl"));
    // No `country`, only where the block is registered.
    w.insert(
        "5.0.0.0/8",
        map(&[("registered_country", map(&[("iso_code", string("SE"))]))]),
    );
    // A registry pseudo-code, a missing code and a code of the wrong type.
    w.insert("31.0.0.0/8", country("EU"));
    w.insert(
        "46.0.0.0/8",
        map(&[("country", map(&[("names", map(&[("en", string("?"))]))]))]),
    );
    w.insert(
        "62.0.0.0/8",
        map(&[("country", map(&[("iso_code", uint(6, 4242))]))]),
    );
    // Must never be answered: not a public address.
    w.insert("10.0.0.0/8", country("DE"));
    w.finish()
}

fn load(name: &str, bytes: &[u8]) -> Geo {
    let file = TempDb::new(name, bytes);
    Geo::from_maxmind(&file.0).unwrap()
    // The file is deleted here; the database lives on in memory.
}

#[test]
fn a_generated_maxmind_database_answers_lookups() {
    let geo = load("v6", &test_database());
    assert_eq!(code(&geo, "81.2.3.4").as_deref(), Some("FR"));
    assert_eq!(code(&geo, "81.255.255.255").as_deref(), Some("FR"));
    assert_eq!(code(&geo, "::ffff:81.2.3.4").as_deref(), Some("FR"));
    assert_eq!(
        code(&geo, "2002:5102:0304::1").as_deref(),
        Some("FR"),
        "6to4"
    );
    assert_eq!(code(&geo, "2a00:1450:4001::1").as_deref(), Some("NL"));
    assert_eq!(code(&geo, "5.6.7.8").as_deref(), Some("SE"));
    for none in [
        "80.255.255.255",
        "82.0.0.0",
        "8.8.8.8",
        "2a01::1",
        "31.1.1.1",
        "46.1.1.1",
        "62.1.1.1",
        "10.1.2.3",
        "::ffff:10.1.2.3",
    ] {
        assert_eq!(code(&geo, none), None, "{none}");
    }
    assert!(geo.description().contains("Earshot-Test-Country"));
}

#[test]
fn an_ipv4_only_database_has_no_country_for_ipv6() {
    let mut w = mmdb::Writer::new(4);
    w.insert("81.0.0.0/8", mmdb::country("FR"));
    let geo = load("v4", &w.finish());
    assert_eq!(code(&geo, "81.2.3.4").as_deref(), Some("FR"));
    assert_eq!(code(&geo, "::ffff:81.2.3.4").as_deref(), Some("FR"));
    assert_eq!(code(&geo, "2a00:1450::1"), None);
}

#[test]
fn unreadable_databases_are_refused_with_the_path() {
    let missing = std::env::temp_dir().join("earshot-geo-no-such-file.mmdb");
    let err = format!("{:#}", Geo::from_maxmind(&missing).unwrap_err());
    assert!(err.contains("cannot read the GeoIP database"), "{err}");
    assert!(err.contains("earshot-geo-no-such-file.mmdb"), "{err}");

    let junk = TempDb::new("junk", b"this is not a database");
    let err = format!("{:#}", Geo::from_maxmind(&junk.0).unwrap_err());
    assert!(err.contains("not a usable MaxMind DB"), "{err}");

    let mut truncated = test_database();
    truncated.truncate(truncated.len() / 2);
    let cut = TempDb::new("cut", &truncated);
    assert!(Geo::from_maxmind(&cut.0).is_err());
}

#[test]
fn the_embedded_data_knows_well_known_networks() {
    let geo = Geo::embedded();
    for (addr, country) in [
        ("8.8.8.8", "US"),              // Google Public DNS
        ("2001:4860:4860::8888", "US"), // the same, IPv6
        ("193.0.6.139", "NL"),          // RIPE NCC, Amsterdam
        ("2001:67c:2e8::1", "NL"),      // RIPE NCC, IPv6
        ("133.1.1.1", "JP"),            // 133.0.0.0/8, JPNIC
        ("2001:200::1", "JP"),          // WIDE project
    ] {
        assert_eq!(code(&geo, addr).as_deref(), Some(country), "{addr}");
    }
    for none in [
        "127.0.0.1",
        "192.168.1.1",
        "198.51.100.1",
        "2001:db8::1",
        "fe80::1",
    ] {
        assert_eq!(code(&geo, none), None, "{none}");
    }
}

fn proxies(header: Header) -> TrustedProxies {
    TrustedProxies::parse(&["127.0.0.1/32".to_string(), "::1".to_string()])
        .unwrap()
        .reading(header)
}

fn one_header(name: &'static str, value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(name, HeaderValue::from_str(value).unwrap());
    h
}

#[test]
fn a_trusted_proxy_passes_the_client_address_through_to_geo() {
    let geo = load("proxy", &test_database());
    let xff = proxies(Header::XForwardedFor);
    let fwd = proxies(Header::Forwarded);
    let country = |ip: IpAddr| geo.country(ip).map(|c| c.as_str().to_owned());

    let client = xff.client_ip(ip("127.0.0.1"), &one_header("x-forwarded-for", "81.2.3.4"));
    assert_eq!(client, ip("81.2.3.4"));
    assert_eq!(country(client).as_deref(), Some("FR"));

    let h = one_header("forwarded", "for=\"[2a00:1450::1]:4711\";proto=https");
    let client = fwd.client_ip(ip("::1"), &h);
    assert_eq!(client, ip("2a00:1450::1"));
    assert_eq!(country(client).as_deref(), Some("NL"));

    // A client prepending its own entry changes nothing.
    let h = one_header("x-forwarded-for", "2a00::9, 81.2.3.4");
    assert_eq!(xff.client_ip(ip("127.0.0.1"), &h), ip("81.2.3.4"));
}

#[test]
fn headers_from_an_untrusted_peer_are_ignored() {
    let geo = load("untrusted", &test_database());
    let peer = ip("2a00:1450::1");
    for (t, h) in [
        (
            proxies(Header::XForwardedFor),
            one_header("x-forwarded-for", "81.2.3.4"),
        ),
        (
            proxies(Header::Forwarded),
            one_header("forwarded", "for=81.2.3.4"),
        ),
    ] {
        let client = t.client_ip(peer, &h);
        assert_eq!(client, peer);
        assert_eq!(geo.country(client).unwrap().as_str(), "NL");
    }
}
