//! The approximate country of an address: the flag a partner sees.
//!
//! Two sources, chosen at startup:
//!
//! - [`Geo::embedded`]: the five Regional Internet Registries' allocation
//!   data, compiled into the binary (the `iptocc` crate). It gives the country
//!   a block is *registered* to, which agrees with commercial geolocation for
//!   about 95% of IPv4 addresses; good enough for a flag, and it needs nothing.
//! - [`Geo::from_maxmind`]: a GeoLite2 / GeoIP2 Country or City database (or
//!   another MaxMind DB with the same `country.iso_code` layout, such as
//!   DB-IP's) that the operator supplies. It is read into memory once; no file
//!   handle stays open and nothing is ever written.
//!
//! Invariants: a lookup computes the two-letter code and nothing else, keeps
//! nothing about the address, and logs nothing. Addresses that name no place
//! on the public internet (private, loopback, link-local, documentation,
//! shared/CGNAT, multicast, reserved) have no country. Only officially
//! assigned ISO 3166-1 alpha-2 codes (and XK, Kosovo) come out, so registry
//! pseudo-codes such as `EU` or `AP` mean "no flag".

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::Context;
use earshot_core::Country;
use maxminddb::PathElement;

/// Where countries come from. Cheap to share behind an `Arc`; lookups take
/// `&self` and never block.
pub struct Geo {
    source: Source,
}

enum Source {
    Embedded,
    MaxMind(maxminddb::Reader<Vec<u8>>),
}

impl fmt::Debug for Geo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Geo({})", self.description())
    }
}

impl Geo {
    /// The registries' allocation data embedded in the binary.
    pub fn embedded() -> Geo {
        Geo {
            source: Source::Embedded,
        }
    }

    /// A MaxMind DB file (GeoLite2-Country, GeoIP2-Country, or a City
    /// edition), read whole into memory.
    pub fn from_maxmind(path: &Path) -> anyhow::Result<Geo> {
        // Read rather than map: no handle stays open, and replacing the file
        // under a running server cannot change or crash it.
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the GeoIP database {}", path.display()))?;
        let reader = maxminddb::Reader::from_source(bytes).with_context(|| {
            format!(
                "{} is not a usable MaxMind DB (GeoLite2/GeoIP2 Country) file",
                path.display()
            )
        })?;
        Ok(Geo {
            source: Source::MaxMind(reader),
        })
    }

    /// What the countries come from, for a startup log line (no addresses).
    pub fn description(&self) -> String {
        match &self.source {
            Source::Embedded => "embedded registry allocation data".to_owned(),
            Source::MaxMind(reader) => {
                let m = reader.metadata();
                format!(
                    "MaxMind DB {:?}, IPv{}, built at Unix time {}",
                    m.database_type, m.ip_version, m.build_epoch
                )
            }
        }
    }

    /// The address's country, if it is a public address the data knows.
    pub fn country(&self, ip: IpAddr) -> Option<Country> {
        let ip = public(ip)?;
        let code = match &self.source {
            Source::Embedded => iptocc::country_code(ip),
            Source::MaxMind(reader) => maxmind_code(reader, ip),
        }?;
        iso_country(code)
    }
}

/// `country.iso_code`, else `registered_country.iso_code` (MaxMind leaves
/// `country` out for some anycast and satellite networks). A database that
/// cannot answer for this address (an IPv6 address in an IPv4-only database,
/// a corrupt record) simply has no country for it.
fn maxmind_code(reader: &maxminddb::Reader<Vec<u8>>, ip: IpAddr) -> Option<&str> {
    let found = reader.lookup(ip).ok()?;
    [
        [PathElement::Key("country"), PathElement::Key("iso_code")],
        [
            PathElement::Key("registered_country"),
            PathElement::Key("iso_code"),
        ],
    ]
    .iter()
    .find_map(|path| found.decode_path::<&str>(path).ok().flatten())
}

/// Officially assigned ISO 3166-1 alpha-2 codes, plus XK (Kosovo: a
/// user-assigned code, but the one in common use, flags included).
const ISO_3166_ALPHA_2: &str = "\
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ \
    BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
    CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ \
    DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR \
    GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY \
    HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP \
    KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY \
    MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ \
    NA NC NE NF NG NI NL NO NP NR NU NZ OM \
    PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW \
    SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ \
    TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ \
    VA VC VE VG VI VN VU WF WS XK YE YT ZA ZM ZW";

fn iso_country(code: &str) -> Option<Country> {
    let country = Country::new(code)?;
    ISO_3166_ALPHA_2
        .split_ascii_whitespace()
        .any(|c| c == country.as_str())
        .then_some(country)
}

/// The address to look up, if `ip` is a public one: IPv4 carried inside IPv6
/// (mapped, 6to4, Teredo, NAT64) is unwrapped first.
fn public(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) => public_v4(v4).map(IpAddr::V4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return public_v4(v4).map(IpAddr::V4);
            }
            public_v6(v6).map(IpAddr::V6)
        }
    }
}

/// Blocks that are not on the public internet (RFC 6890 and successors).
const NOT_PUBLIC_V4: &[(u32, u8)] = &[
    (0x0000_0000, 8),  // 0.0.0.0/8 "this network"
    (0x0a00_0000, 8),  // 10.0.0.0/8 private
    (0x6440_0000, 10), // 100.64.0.0/10 shared address space (CGNAT)
    (0x7f00_0000, 8),  // 127.0.0.0/8 loopback
    (0xa9fe_0000, 16), // 169.254.0.0/16 link-local
    (0xac10_0000, 12), // 172.16.0.0/12 private
    (0xc000_0000, 24), // 192.0.0.0/24 IETF protocol assignments
    (0xc000_0200, 24), // 192.0.2.0/24 documentation (TEST-NET-1)
    (0xc058_6300, 24), // 192.88.99.0/24 former 6to4 relay anycast
    (0xc0a8_0000, 16), // 192.168.0.0/16 private
    (0xc612_0000, 15), // 198.18.0.0/15 benchmarking
    (0xc633_6400, 24), // 198.51.100.0/24 documentation (TEST-NET-2)
    (0xcb00_7100, 24), // 203.0.113.0/24 documentation (TEST-NET-3)
    (0xe000_0000, 4),  // 224.0.0.0/4 multicast
    (0xf000_0000, 4),  // 240.0.0.0/4 reserved, and broadcast
];

fn public_v4(ip: Ipv4Addr) -> Option<Ipv4Addr> {
    let bits = u32::from(ip);
    let inside = |&(net, len): &(u32, u8)| bits & (u32::MAX << (32 - len)) == net;
    (!NOT_PUBLIC_V4.iter().any(inside)).then_some(ip)
}

/// Inside 2000::/3 (all global unicast so far), less these.
const NOT_PUBLIC_V6: &[(u128, u8)] = &[
    (0x2001_0000 << 96, 23), // 2001::/23 IETF protocol assignments
    (0x2001_0db8 << 96, 32), // 2001:db8::/32 documentation
    (0x2002_0000 << 96, 16), // 2002::/16 6to4 (unwrapped before this)
    (0x3fff_0000 << 96, 20), // 3fff::/20 documentation
];

fn public_v6(ip: Ipv6Addr) -> Option<Ipv6Addr> {
    let bits = u128::from(ip);
    let inside = |&(net, len): &(u128, u8)| bits & (u128::MAX << (128 - len)) == net;
    let global_unicast = bits >> 125 == 0b001;
    (global_unicast && !NOT_PUBLIC_V6.iter().any(inside)).then_some(ip)
}

/// The IPv4 address an IPv6 address stands for, where it stands for one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = bits as u32;
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4) // ::ffff:a.b.c.d, as dual-stack sockets report IPv4 peers
    } else if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        Some(Ipv4Addr::from(low32)) // 64:ff9b::/96, NAT64 well-known prefix
    } else if bits >> 112 == 0x2002 {
        Some(Ipv4Addr::from((bits >> 80) as u32)) // 6to4: 2002:AABB:CCDD::/48
    } else if bits >> 96 == 0x2001_0000 {
        Some(Ipv4Addr::from(!low32)) // Teredo: the client's address, inverted
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(geo: &Geo, ip: &str) -> Option<String> {
        geo.country(ip.parse().unwrap())
            .map(|c| c.as_str().to_owned())
    }

    #[test]
    fn the_iso_list_is_sorted_and_complete() {
        let codes: Vec<&str> = ISO_3166_ALPHA_2.split_ascii_whitespace().collect();
        assert_eq!(codes.len(), 249 + 1, "249 assigned codes and XK");
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
        );
    }

    #[test]
    fn only_iso_codes_become_countries() {
        assert_eq!(
            iso_country("de").map(|c| c.as_str().to_owned()),
            Some("DE".into())
        );
        assert_eq!(
            iso_country("XK").map(|c| c.as_str().to_owned()),
            Some("XK".into())
        );
        for pseudo in ["EU", "AP", "ZZ", "A1", "", "DEU", "UK"] {
            assert!(iso_country(pseudo).is_none(), "{pseudo}");
        }
    }

    #[test]
    fn addresses_off_the_public_internet_have_no_country() {
        let geo = Geo::embedded();
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.9",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "::ffff:192.0.2.1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "100::1",
            "2001:db8::1",
            "3fff::1",
            "2001:2::1",
            "2002:c0a8:0101::1",  // 6to4 of 192.168.1.1
            "64:ff9b::10.0.0.1",  // NAT64 of a private address
            "64:ff9b:1::8.8.8.8", // local-use NAT64 prefix
        ] {
            assert_eq!(code(&geo, ip), None, "{ip}");
        }
    }

    #[test]
    fn ipv4_inside_ipv6_is_looked_up_as_ipv4() {
        let geo = Geo::embedded();
        assert_eq!(code(&geo, "::ffff:8.8.8.8").as_deref(), Some("US"));
        assert_eq!(code(&geo, "64:ff9b::8.8.8.8").as_deref(), Some("US"));
        assert_eq!(code(&geo, "2002:0808:0808::1").as_deref(), Some("US"));
        // Teredo stores the client's address bit-inverted: !8.8.8.8.
        assert_eq!(
            code(&geo, "2001:0:4136:e378:8000:63bf:f7f7:f7f7").as_deref(),
            Some("US")
        );
    }

    #[test]
    fn public_edges_of_private_blocks_are_public() {
        assert!(public_v4("172.15.255.255".parse().unwrap()).is_some());
        assert!(public_v4("172.32.0.0".parse().unwrap()).is_some());
        assert!(public_v4("100.128.0.0".parse().unwrap()).is_some());
        assert!(public_v4("223.255.255.255".parse().unwrap()).is_some());
        assert!(public_v6("2001:200::1".parse().unwrap()).is_some());
        assert!(public_v6("2a00::1".parse().unwrap()).is_some());
        assert!(public_v6("3ffe::1".parse().unwrap()).is_some());
        assert!(public_v6("4000::1".parse().unwrap()).is_none());
    }

    #[test]
    fn one_geo_serves_every_connection_task() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Geo>();
    }

    #[test]
    fn description_names_the_source_without_addresses() {
        assert_eq!(
            format!("{:?}", Geo::embedded()),
            "Geo(embedded registry allocation data)"
        );
    }
}
