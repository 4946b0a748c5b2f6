//! The codec's unit tests.

use super::*;
use proptest::prelude::*;

/// RFC 5769 §2.2: a sample IPv4 response with MESSAGE-INTEGRITY under
/// the short-term password "VOkJxbRl1RmTxUk/WvJxBt".
const RFC5769_RESPONSE: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
    0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9,
    0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
];

#[test]
fn rfc5769_response_decodes_and_verifies() {
    let m = Message::decode(&RFC5769_RESPONSE).unwrap();
    assert_eq!((m.method, m.class), (method::BINDING, Class::Success));
    assert!(m.fingerprint);
    assert_eq!(
        m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap(),
        Some("192.0.2.1:32853".parse().unwrap())
    );
    assert!(m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
    assert!(!m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBT"));

    // Re-encoded with our encoder: the same bytes, but for SOFTWARE's
    // padding (RFC 5769 pads with a space, we pad with zero).
    let mut e = Encoder::new(method::BINDING, Class::Success, m.transaction_id);
    e.add(attr::SOFTWARE, b"test vector")
        .xor_address(attr::XOR_MAPPED_ADDRESS, "192.0.2.1:32853".parse().unwrap())
        .integrity(b"VOkJxbRl1RmTxUk/WvJxBt")
        .fingerprint();
    let ours = e.finish();
    let mut theirs = RFC5769_RESPONSE;
    theirs[35] = 0;
    assert_eq!(ours[..52], theirs[..52]);
    assert!(
        Message::decode(&ours)
            .unwrap()
            .check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt")
    );
}

#[test]
fn ipv6_xor_address_round_trips() {
    let addr: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
        .parse()
        .unwrap();
    let mut e = Encoder::new(method::SEND, Class::Indication, [9; 12]);
    e.xor_address(attr::XOR_PEER_ADDRESS, addr);
    let bytes = e.finish();
    let m = Message::decode(&bytes).unwrap();
    assert_eq!(m.class, Class::Indication);
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Ok(Some(addr)));
}

#[test]
fn attributes_after_integrity_are_skipped() {
    let mut e = Encoder::new(method::REFRESH, Class::Request, [1; 12]);
    e.u32(attr::LIFETIME, 5).integrity(b"key");
    e.u32(attr::LIFETIME, 7).fingerprint();
    let bytes = e.finish();
    let m = Message::decode(&bytes).unwrap();
    assert_eq!(m.u32(attr::LIFETIME), Ok(Some(5)));
    assert_eq!(m.get_all(attr::LIFETIME).count(), 1);
    assert!(m.check_integrity(b"key"));
}

#[test]
fn an_encoder_in_a_buffer_writes_the_same_bytes() {
    let from: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
    fn fill<B: Buffer>(e: &mut Encoder<B>, from: SocketAddr) {
        e.error_code(420, "Unknown Attribute")
            .unknown_attributes(&[0x0024, 0x0003])
            .xor_address(attr::XOR_MAPPED_ADDRESS, from)
            .address(attr::MAPPED_ADDRESS, from)
            .integrity(b"key")
            .fingerprint();
    }
    let mut v = Encoder::new(method::BINDING, Class::Error, [5; 12]);
    fill(&mut v, from);
    let v = v.finish();
    let mut buf = [0xAA; 300];
    let mut b = Encoder::in_buffer(&mut buf, method::BINDING, Class::Error, [5; 12]);
    fill(&mut b, from);
    let n = b.finish();
    assert_eq!(&buf[..n], &v[..]);
    let m = Message::decode(&v).unwrap();
    assert_eq!(m.error_code(), Ok(Some(420)));
    assert_eq!(
        m.get(attr::UNKNOWN_ATTRIBUTES),
        Some(&[0, 0x24, 0, 0x03][..])
    );
    assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Ok(Some(from)));
    assert!(m.check_integrity(b"key") && m.fingerprint);
}

#[test]
fn walk_yields_every_attribute_and_stops_at_the_first_bad_one() {
    let mut e = Encoder::new(method::BINDING, Class::Request, [1; 12]);
    for kind in 0x0100..0x0140 {
        e.add(kind, b"v");
    }
    e.fingerprint();
    let bytes = e.finish();
    let (header, attributes) = walk(&bytes).unwrap();
    assert_eq!(
        (header.method, header.class),
        (method::BINDING, Class::Request)
    );
    let kinds: Vec<u16> = attributes.map(|a| a.unwrap().kind).collect();
    assert_eq!(kinds.len(), 0x41);
    assert_eq!(kinds.last(), Some(&attr::FINGERPRINT));
    // More than a Message keeps.
    assert_eq!(
        Message::decode(&bytes).unwrap_err(),
        StunError::TooManyAttributes
    );
    // A flipped padding byte: every attribute still frames, and
    // FINGERPRINT no longer matches.
    let mut bad = bytes.clone();
    bad[HEADER_LEN + 5] ^= 1;
    let (_, attributes) = walk(&bad).unwrap();
    let results: Vec<_> = attributes.map(|a| a.map(|a| a.kind)).collect();
    assert_eq!(results.last(), Some(&Err(StunError::BadFingerprint)));
    assert_eq!(results.len(), 0x41);
}

#[test]
fn message_type_round_trips() {
    for method in 0..0x1000u16 {
        for class in [
            Class::Request,
            Class::Indication,
            Class::Success,
            Class::Error,
        ] {
            let t = message_type(method, class);
            assert_eq!(t & 0xC000, 0);
            assert_eq!((method_of(t), class_of(t)), (method, class));
        }
    }
    assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
    assert_eq!(message_type(method::BINDING, Class::Error), 0x0111);
    assert_eq!(message_type(method::DATA, Class::Indication), 0x0017);
    assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(m) = Message::decode(&bytes) {
            // Every accessor on whatever decoded is safe too.
            for kind in m.kinds().collect::<Vec<_>>() {
                let _ = (m.text(kind), m.u32(kind), m.xor_address(kind));
            }
            let _ = (m.error_code(), m.check_integrity(b"k"));
        }
    }

    #[test]
    fn valid_headers_with_random_bodies_never_panic(
        head in any::<[u8; 2]>(),
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut m = vec![head[0] & 0x3F, head[1], 0, 0];
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m.resize(m.len().next_multiple_of(4), 0);
        let len = (m.len() - HEADER_LEN) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        if let Ok(msg) = Message::decode(&m) {
            prop_assert!(msg.kinds().count() <= MAX_ATTRIBUTES);
            for kind in msg.kinds().collect::<Vec<_>>() {
                let _ = (msg.text(kind), msg.u32(kind), msg.xor_address(kind));
                prop_assert!(msg.get_all(kind).all(|v| v.len() <= body.len()));
            }
        }
    }

    #[test]
    fn encoded_messages_decode(
        attrs in prop::collection::vec((0u16..0x8000, prop::collection::vec(any::<u8>(), 0..40)), 0..20),
        key in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let attrs: Vec<_> = attrs.into_iter().filter(|(k, _)| *k != attr::MESSAGE_INTEGRITY).collect();
        let mut e = Encoder::new(method::ALLOCATE, Class::Request, [3; 12]);
        for (kind, value) in &attrs {
            e.add(*kind, value);
        }
        e.integrity(&key).fingerprint();
        let bytes = e.finish();
        let m = Message::decode(&bytes).unwrap();
        prop_assert!(m.fingerprint);
        prop_assert!(m.check_integrity(&key));
        prop_assert_eq!(m.kinds().count(), attrs.len() + 1);
        for (kind, value) in &attrs {
            prop_assert!(m.get_all(*kind).any(|v| v == value.as_slice()));
        }
    }
}
