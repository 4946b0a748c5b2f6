//! STUN (RFC 5389): the message layer shared with TURN ([`codec`]), and the
//! embedded STUN server's Binding responder ([`answer`]): one datagram in,
//! at most one datagram out.
//!
//! The responder is why browsers never have to contact a third-party STUN
//! server. It answers Binding requests with the address the request came
//! from (XOR-MAPPED-ADDRESS, plus MAPPED-ADDRESS for RFC 3489-era clients)
//! and a FINGERPRINT. It does no authentication: a request carrying
//! credentials (USERNAME, MESSAGE-INTEGRITY) or using another method (TURN,
//! ...) gets a 400, one carrying an unknown comprehension-required attribute
//! a 420.
//!
//! Invariants:
//! - No sockets, no clock, no allocation on the answer path; the caller
//!   moves the bytes.
//! - Never panics, whatever the input (property-tested below).
//! - Anything that is not a well-formed STUN message is an `Err` and must be
//!   dropped without an answer, so the server cannot be used to reflect
//!   arbitrary traffic. Answers are never larger than a few hundred bytes.
//! - Nothing here logs: the only data handled is a client's address.

pub mod codec;

use std::net::{IpAddr, SocketAddr};

pub use codec::StunError;
use codec::{Class, Encoder, attr, method};

/// At most this many attribute types are listed in a 420 answer. A request
/// can hold hundreds; echoing them all would make the answer bigger than the
/// request, and the first few are enough for a client to see its mistake.
const MAX_UNKNOWN_LISTED: usize = 16;

/// Answer one UDP datagram. `Ok(Some(n))`: a response of `n` bytes was
/// written into `out` (send it back to `from`). `Ok(None)`: nothing to send
/// (e.g. a Binding indication or a response). `Err`: the datagram is not a
/// valid STUN request and must be dropped silently.
///
/// Every answer is at most 20 + 24 + 24 + 8 bytes (success) or
/// 20 + 4 + 20 + 4 + 2 * `MAX_UNKNOWN_LISTED` + 8 bytes (error), far below
/// the 1500 bytes of `out`, so the encoder cannot run past its end.
pub fn answer(
    datagram: &[u8],
    from: SocketAddr,
    out: &mut [u8; 1500],
) -> Result<Option<usize>, StunError> {
    let msg = parse(datagram)?;
    if msg.class != Class::Request {
        // Indications need no answer (a keepalive, say) and a response is
        // not for us: answering either could start a loop between servers.
        return Ok(None);
    }
    let start = |out, class| Encoder::in_buffer(out, msg.method, class, msg.transaction_id);
    let mut e;
    if msg.method != method::BINDING {
        e = start(out, Class::Error);
        e.error_code(400, "Bad Request");
    } else if msg.has_credentials {
        // RFC 5389 §10 checks credentials before unknown attributes; plain
        // STUN here is unauthenticated, so any credential is a mistake.
        e = start(out, Class::Error);
        e.error_code(400, "Bad Request");
    } else if msg.unknown_len > 0 {
        e = start(out, Class::Error);
        e.error_code(420, "Unknown Attribute")
            .unknown_attributes(&msg.unknown[..msg.unknown_len]);
    } else {
        let addr = unmap(from);
        e = start(out, Class::Success);
        e.xor_address(attr::XOR_MAPPED_ADDRESS, addr)
            .address(attr::MAPPED_ADDRESS, addr);
    }
    e.fingerprint();
    Ok(Some(e.finish()))
}

/// What `answer` needs to know about a valid message.
#[derive(Debug)]
struct Request {
    method: u16,
    class: Class,
    transaction_id: [u8; 12],
    /// USERNAME, MESSAGE-INTEGRITY or another credential attribute is present.
    has_credentials: bool,
    /// Comprehension-required attributes this server does not know, deduplicated,
    /// in order of appearance, the first `MAX_UNKNOWN_LISTED`.
    unknown: [u16; MAX_UNKNOWN_LISTED],
    unknown_len: usize,
    /// A FINGERPRINT was present (and matched).
    has_fingerprint: bool,
}

/// Validate the header and every attribute's framing, and check FINGERPRINT
/// ([`codec::walk`], which takes any number of attributes).
fn parse(datagram: &[u8]) -> Result<Request, StunError> {
    let (header, attributes) = codec::walk(datagram)?;
    let mut msg = Request {
        method: header.method,
        class: header.class,
        transaction_id: header.transaction_id,
        has_credentials: false,
        unknown: [0; MAX_UNKNOWN_LISTED],
        unknown_len: 0,
        has_fingerprint: false,
    };
    for a in attributes {
        match a?.kind {
            attr::FINGERPRINT => msg.has_fingerprint = true,
            attr::USERNAME
            | attr::MESSAGE_INTEGRITY
            | attr::MESSAGE_INTEGRITY_SHA256
            | attr::USERHASH
            | attr::REALM
            | attr::NONCE => msg.has_credentials = true,
            attr::MAPPED_ADDRESS
            | attr::XOR_MAPPED_ADDRESS
            | attr::ERROR_CODE
            | attr::UNKNOWN_ATTRIBUTES => {}
            // Comprehension-optional attributes (SOFTWARE, ICE-CONTROLLED...)
            // may be ignored (RFC 5389 §15).
            t if t >= 0x8000 => {}
            t => {
                let listed = &msg.unknown[..msg.unknown_len];
                if msg.unknown_len < MAX_UNKNOWN_LISTED && !listed.contains(&t) {
                    msg.unknown[msg.unknown_len] = t;
                    msg.unknown_len += 1;
                }
            }
        }
    }
    Ok(msg)
}

/// A dual-stack socket reports IPv4 peers as `::ffff:a.b.c.d`; the client
/// knows itself by its IPv4 address, so report that.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::{
        FAMILY_IPV4, FAMILY_IPV6, FINGERPRINT_XOR, HEADER_LEN, MAGIC_COOKIE, class_of, crc32,
        message_type, method_of,
    };
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A decoded answer, checked for well-formedness on the way.
    #[derive(Debug)]
    struct Decoded {
        method: u16,
        class: Class,
        transaction_id: [u8; 12],
        attributes: Vec<(u16, Vec<u8>)>,
    }

    impl Decoded {
        fn attribute(&self, t: u16) -> Option<&[u8]> {
            self.attributes
                .iter()
                .find(|(a, _)| *a == t)
                .map(|(_, v)| v.as_slice())
        }

        fn error_code(&self) -> Option<u16> {
            let v = self.attribute(attr::ERROR_CODE)?;
            Some(u16::from(v[2] & 0x7) * 100 + u16::from(v[3]))
        }

        fn xor_mapped_address(&self) -> Option<SocketAddr> {
            let v = self.attribute(attr::XOR_MAPPED_ADDRESS)?;
            let port = u16::from_be_bytes([v[2], v[3]]) ^ 0x2112;
            let mut key = MAGIC_COOKIE.to_be_bytes().to_vec();
            key.extend_from_slice(&self.transaction_id);
            let ip: Vec<u8> = v[4..].iter().zip(&key).map(|(a, b)| a ^ b).collect();
            Some(SocketAddr::new(ip_of(v[1], &ip), port))
        }

        fn mapped_address(&self) -> Option<SocketAddr> {
            let v = self.attribute(attr::MAPPED_ADDRESS)?;
            Some(SocketAddr::new(
                ip_of(v[1], &v[4..]),
                u16::from_be_bytes([v[2], v[3]]),
            ))
        }
    }

    fn ip_of(family: u8, bytes: &[u8]) -> IpAddr {
        match family {
            FAMILY_IPV4 => IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap()),
            FAMILY_IPV6 => IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap()),
            f => panic!("bad family {f}"),
        }
    }

    /// Decode an answer independently of `parse`, insisting on everything an
    /// answer must be: a header, exact length, zero padding, FINGERPRINT last
    /// and correct.
    fn decode(bytes: &[u8]) -> Decoded {
        assert!(
            bytes.len() >= HEADER_LEN && bytes.len() <= 1500,
            "size {}",
            bytes.len()
        );
        let msg_type = u16::from_be_bytes([bytes[0], bytes[1]]);
        assert_eq!(msg_type & 0xC000, 0);
        assert_eq!(
            usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
            bytes.len() - 20
        );
        assert_eq!(bytes[4..8], MAGIC_COOKIE.to_be_bytes());
        let mut attributes = Vec::new();
        let mut at = HEADER_LEN;
        while at < bytes.len() {
            let t = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
            let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
            let value = bytes[at + 4..at + 4 + len].to_vec();
            assert!(
                bytes[at + 4 + len..at + 4 + len.next_multiple_of(4)]
                    .iter()
                    .all(|&b| b == 0)
            );
            if t == attr::FINGERPRINT {
                assert_eq!(at + 8, bytes.len(), "FINGERPRINT is last");
                let crc = crc32(&bytes[..at]) ^ FINGERPRINT_XOR;
                assert_eq!(value, crc.to_be_bytes());
            }
            attributes.push((t, value));
            at += 4 + len.next_multiple_of(4);
        }
        assert_eq!(attributes.last().map(|a| a.0), Some(attr::FINGERPRINT));
        Decoded {
            method: method_of(msg_type),
            class: class_of(msg_type),
            transaction_id: bytes[8..20].try_into().unwrap(),
            attributes,
        }
    }

    /// A request built attribute by attribute, with an optional FINGERPRINT.
    fn request(
        msg_type: u16,
        txid: [u8; 12],
        attrs: &[(u16, &[u8])],
        fingerprint: bool,
    ) -> Vec<u8> {
        let mut m = msg_type.to_be_bytes().to_vec();
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&txid);
        for (t, v) in attrs {
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&(v.len() as u16).to_be_bytes());
            m.extend_from_slice(v);
            m.resize(m.len().next_multiple_of(4), 0);
        }
        if fingerprint {
            let len = (m.len() + 8 - HEADER_LEN) as u16;
            m[2..4].copy_from_slice(&len.to_be_bytes());
            let crc = crc32(&m) ^ FINGERPRINT_XOR;
            m.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
            m.extend_from_slice(&4u16.to_be_bytes());
            m.extend_from_slice(&crc.to_be_bytes());
        } else {
            let len = (m.len() - HEADER_LEN) as u16;
            m[2..4].copy_from_slice(&len.to_be_bytes());
        }
        m
    }

    const TXID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    fn run(datagram: &[u8], from: SocketAddr) -> Result<Option<Decoded>, StunError> {
        let mut out = [0; 1500];
        Ok(answer(datagram, from, &mut out)?.map(|n| decode(&out[..n])))
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn binding_request_ipv4_gets_its_address_back() {
        let from: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let resp = run(&request(0x0001, TXID, &[], false), from)
            .unwrap()
            .unwrap();
        assert_eq!((resp.method, resp.class), (method::BINDING, Class::Success));
        assert_eq!(resp.transaction_id, TXID);
        assert_eq!(resp.xor_mapped_address(), Some(from));
        assert_eq!(resp.mapped_address(), Some(from));
        // Same bytes as RFC 5769 §2.2's sample IPv4 response.
        assert_eq!(
            resp.attribute(attr::XOR_MAPPED_ADDRESS).unwrap(),
            [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
    }

    #[test]
    fn binding_request_ipv6_gets_its_address_back() {
        let from: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let resp = run(&request(0x0001, TXID, &[], true), from)
            .unwrap()
            .unwrap();
        assert_eq!(resp.class, Class::Success);
        assert_eq!(resp.xor_mapped_address(), Some(from));
        assert_eq!(resp.mapped_address(), Some(from));
        // Same bytes as RFC 5769 §2.3's sample IPv6 response.
        assert_eq!(
            resp.attribute(attr::XOR_MAPPED_ADDRESS).unwrap(),
            [
                0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
                0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9
            ]
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_peer_is_reported_as_ipv4() {
        let from = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped().into(), 4000);
        let resp = run(&request(0x0001, TXID, &[], false), from)
            .unwrap()
            .unwrap();
        let expected: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        assert_eq!(resp.xor_mapped_address(), Some(expected));
        // A real IPv6 address is left alone.
        let from = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 4000);
        let resp = run(&request(0x0001, TXID, &[], false), from)
            .unwrap()
            .unwrap();
        assert_eq!(resp.xor_mapped_address(), Some(from));
    }

    /// RFC 5769 §2.1, byte for byte (SOFTWARE "STUN test client").
    const RFC5769_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
        0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
        0x7a, 0x3b, 0xcf,
    ];

    #[test]
    fn rfc5769_sample_request_parses_and_fingerprint_verifies() {
        let msg = parse(&RFC5769_REQUEST).unwrap();
        assert_eq!((msg.method, msg.class), (method::BINDING, Class::Request));
        assert_eq!(msg.transaction_id, TXID);
        assert!(msg.has_fingerprint);
        assert!(msg.has_credentials);
        // PRIORITY is comprehension-required and not ours.
        assert_eq!(&msg.unknown[..msg.unknown_len], &[0x0024]);

        // It carries USERNAME and MESSAGE-INTEGRITY: we do no auth, so 400
        // (credentials are checked before unknown attributes, RFC 5389 §7.3).
        let resp = run(&RFC5769_REQUEST, "192.0.2.1:32853".parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(resp.class, Class::Error);
        assert_eq!(resp.transaction_id, TXID);
        assert_eq!(resp.error_code(), Some(400));
        assert_eq!(resp.xor_mapped_address(), None);

        // One flipped bit anywhere before FINGERPRINT breaks it.
        let mut bad = RFC5769_REQUEST;
        bad[30] ^= 0x01;
        assert_eq!(parse(&bad).unwrap_err(), StunError::BadFingerprint);
    }

    #[test]
    fn bad_headers_are_dropped() {
        let from: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let good = request(0x0001, TXID, &[(0x8022, b"x")], true);
        let mut out = [0; 1500];

        assert_eq!(
            answer(&good[..19], from, &mut out),
            Err(StunError::TooShort)
        );
        assert_eq!(answer(&[], from, &mut out), Err(StunError::TooShort));

        let mut m = good.clone();
        m[0] |= 0x80;
        assert_eq!(answer(&m, from, &mut out), Err(StunError::NotStun));

        let mut m = good.clone();
        m[4..8].copy_from_slice(&0x2112_A443u32.to_be_bytes());
        assert_eq!(answer(&m, from, &mut out), Err(StunError::BadMagicCookie));

        // An RFC 3489 request: random bytes where the cookie goes.
        let mut m = good.clone();
        m[4..8].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(answer(&m, from, &mut out), Err(StunError::BadMagicCookie));

        let mut m = good.clone();
        m.push(0);
        assert_eq!(answer(&m, from, &mut out), Err(StunError::BadLength));
        let mut m = good.clone();
        m[3] += 4;
        assert_eq!(answer(&m, from, &mut out), Err(StunError::BadLength));
        let mut m = request(0x0001, TXID, &[], false);
        m[3] = 2;
        m.extend_from_slice(&[0, 0]);
        assert_eq!(answer(&m, from, &mut out), Err(StunError::BadLength));
    }

    #[test]
    fn truncated_attributes_are_dropped() {
        let from: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut out = [0; 1500];
        // A value length of 8 with only 4 bytes left.
        let mut m = request(0x0001, TXID, &[(0x8022, b"abcd")], false);
        m[23] = 8;
        assert_eq!(
            answer(&m, from, &mut out),
            Err(StunError::TruncatedAttribute)
        );
        // A value length of 5: its padding runs past the end.
        let mut m = request(0x0001, TXID, &[(0x8022, b"abcd")], false);
        m[23] = 5;
        assert_eq!(
            answer(&m, from, &mut out),
            Err(StunError::TruncatedAttribute)
        );
    }

    #[test]
    fn fingerprint_must_be_last_and_right() {
        let from: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut out = [0; 1500];
        let mut m = request(0x0001, TXID, &[], true);
        let n = m.len();
        m[n - 1] ^= 0xFF;
        assert_eq!(answer(&m, from, &mut out), Err(StunError::BadFingerprint));

        // A correct FINGERPRINT (over the final length) followed by SOFTWARE.
        let mut m = request(0x0001, TXID, &[], false);
        m[3] = 12;
        let crc = crc32(&m) ^ FINGERPRINT_XOR;
        m.extend_from_slice(&[0x80, 0x28, 0, 4]);
        m.extend_from_slice(&crc.to_be_bytes());
        m.extend_from_slice(&[0x80, 0x22, 0, 0]);
        assert_eq!(
            answer(&m, from, &mut out),
            Err(StunError::AttributeAfterFingerprint)
        );

        let m = request(0x0001, TXID, &[(attr::FINGERPRINT, b"abcdefgh")], false);
        assert_eq!(answer(&m, from, &mut out), Err(StunError::BadFingerprint));
    }

    #[test]
    fn unknown_comprehension_required_attributes_get_420() {
        let from: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let m = request(
            0x0001,
            TXID,
            &[
                (0x0024, b"abcd"),
                (0x8022, b"ignored"),
                (0x0003, &[0, 0, 0, 4]),
                (0x0024, b"x"),
            ],
            true,
        );
        let resp = run(&m, from).unwrap().unwrap();
        assert_eq!((resp.method, resp.class), (method::BINDING, Class::Error));
        assert_eq!(resp.transaction_id, TXID);
        assert_eq!(resp.error_code(), Some(420));
        let v = resp.attribute(attr::ERROR_CODE).unwrap();
        assert_eq!(&v[4..], b"Unknown Attribute");
        assert_eq!(
            resp.attribute(attr::UNKNOWN_ATTRIBUTES).unwrap(),
            [0x00, 0x24, 0x00, 0x03]
        );
        assert_eq!(resp.xor_mapped_address(), None);

        // Comprehension-optional ones alone are fine.
        let m = request(
            0x0001,
            TXID,
            &[(0x8022, b"client"), (0x802A, &[0; 8])],
            false,
        );
        assert_eq!(run(&m, from).unwrap().unwrap().class, Class::Success);
    }

    #[test]
    fn many_unknown_attributes_are_listed_up_to_a_cap() {
        let types: Vec<u16> = (0x0100..0x0200).collect();
        let attrs: Vec<(u16, &[u8])> = types.iter().map(|&t| (t, &[][..])).collect();
        let m = request(0x0001, TXID, &attrs, false);
        let resp = run(&m, "192.0.2.1:1".parse().unwrap()).unwrap().unwrap();
        assert_eq!(resp.error_code(), Some(420));
        assert_eq!(
            resp.attribute(attr::UNKNOWN_ATTRIBUTES).unwrap().len(),
            2 * MAX_UNKNOWN_LISTED
        );
    }

    #[test]
    fn credentials_and_other_methods_get_400() {
        let from: SocketAddr = "192.0.2.1:1".parse().unwrap();
        for kind in [attr::USERNAME, attr::MESSAGE_INTEGRITY] {
            let m = request(0x0001, TXID, &[(kind, &[0; 20])], false);
            let resp = run(&m, from).unwrap().unwrap();
            assert_eq!((resp.method, resp.class), (method::BINDING, Class::Error));
            assert_eq!(resp.error_code(), Some(400));
        }
        // TURN Allocate: the error answer keeps the request's method.
        let m = request(0x0003, TXID, &[(0x0019, &[17, 0, 0, 0])], true);
        let resp = run(&m, from).unwrap().unwrap();
        assert_eq!((resp.method, resp.class), (0x003, Class::Error));
        assert_eq!(resp.transaction_id, TXID);
        assert_eq!(resp.error_code(), Some(400));
        assert_eq!(resp.attribute(attr::UNKNOWN_ATTRIBUTES), None);
    }

    #[test]
    fn indications_and_responses_get_no_answer() {
        let from: SocketAddr = "192.0.2.1:1".parse().unwrap();
        for msg_type in [0x0011, 0x0101, 0x0111] {
            assert!(
                run(&request(msg_type, TXID, &[], true), from)
                    .unwrap()
                    .is_none()
            );
        }
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(ip.into(), p)),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(ip.into(), p)),
        ]
    }

    /// An answer must be well-formed, carry the request's transaction id,
    /// and, if it is a success, the sender's address.
    fn check_answer(datagram: &[u8], from: SocketAddr) -> Result<(), TestCaseError> {
        let mut out = [0xAA; 1500];
        if let Ok(Some(n)) = answer(datagram, from, &mut out) {
            let resp = decode(&out[..n]);
            prop_assert_eq!(&resp.transaction_id[..], &datagram[8..20]);
            prop_assert!(resp.class == Class::Success || resp.class == Class::Error);
            if resp.class == Class::Success {
                prop_assert_eq!(resp.xor_mapped_address(), Some(unmap(from)));
            } else {
                prop_assert!(resp.error_code().is_some());
            }
        }
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip(usize, u8),
        Truncate(usize),
        Insert(usize, u8),
        Remove(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<usize>().prop_map(Mutation::Remove),
        ]
    }

    fn attrs() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
        let attr_type = prop_oneof![
            Just(attr::USERNAME),
            Just(attr::MESSAGE_INTEGRITY),
            Just(attr::XOR_MAPPED_ADDRESS),
            Just(0x8022u16),
            Just(0x0024u16),
            any::<u16>(),
        ];
        prop::collection::vec((attr_type, prop::collection::vec(any::<u8>(), 0..40)), 0..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1600), from in any_addr()) {
            check_answer(&bytes, from)?;
        }

        #[test]
        fn arbitrary_headers_never_panic(
            head in any::<[u8; 2]>(),
            txid in any::<[u8; 12]>(),
            body in prop::collection::vec(any::<u8>(), 0..200),
            from in any_addr(),
        ) {
            // Random bodies behind a valid-looking header, to get past the
            // header checks into the attribute walk.
            let mut m = vec![head[0] & 0x3F, head[1], 0, 0];
            m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            m.extend_from_slice(&txid);
            m.extend_from_slice(&body);
            m.resize(m.len().next_multiple_of(4), 0);
            let len = (m.len() - HEADER_LEN) as u16;
            m[2..4].copy_from_slice(&len.to_be_bytes());
            check_answer(&m, from)?;
        }

        #[test]
        fn valid_requests_always_get_an_answer(
            msg_type in prop_oneof![Just(0x0001u16), Just(0x0003u16), (0..0x1000u16).prop_map(|m| message_type(m, Class::Request))],
            txid in any::<[u8; 12]>(),
            attrs in attrs(),
            fingerprint in any::<bool>(),
            from in any_addr(),
        ) {
            let attrs: Vec<(u16, &[u8])> = attrs.iter()
                .filter(|(t, _)| *t != attr::FINGERPRINT)
                .map(|(t, v)| (*t, v.as_slice()))
                .collect();
            let m = request(msg_type, txid, &attrs, fingerprint);
            let mut out = [0; 1500];
            prop_assert!(matches!(answer(&m, from, &mut out), Ok(Some(_))));
            check_answer(&m, from)?;
        }

        #[test]
        fn mutated_requests_never_panic(
            txid in any::<[u8; 12]>(),
            attrs in attrs(),
            fingerprint in any::<bool>(),
            mutations in prop::collection::vec(mutation(), 1..6),
            refresh_length in any::<bool>(),
            from in any_addr(),
        ) {
            let attrs: Vec<(u16, &[u8])> = attrs.iter().map(|(t, v)| (*t, v.as_slice())).collect();
            let mut m = request(0x0001, txid, &attrs, fingerprint);
            for mutation in mutations {
                match mutation {
                    Mutation::Flip(i, x) if !m.is_empty() => { let i = i % m.len(); m[i] ^= x; }
                    Mutation::Truncate(i) => m.truncate(i % (m.len() + 1)),
                    Mutation::Insert(i, b) => m.insert(i % (m.len() + 1), b),
                    Mutation::Remove(i) if !m.is_empty() => { m.remove(i % m.len()); }
                    _ => {}
                }
            }
            // Often fix up the header length so that the attribute walk, not
            // the length check, sees the damage.
            if refresh_length && m.len() >= HEADER_LEN {
                let len = (m.len() - HEADER_LEN) as u16;
                m[2..4].copy_from_slice(&len.to_be_bytes());
            }
            check_answer(&m, from)?;
        }
    }
}
