//! The TURN state machine on a virtual clock, with a client built on the
//! public codec. Addresses are from the documentation ranges; relay IP
//! 203.0.113.1 is not loopback, so loopback peers are forbidden here, and
//! peers in 198.51.100.0/24 are let through with `--turn-allow-peer`'s rule.

use super::*;
use crate::stun::codec::Message;
use crate::turn::codec::{Frame, stream_frame};
use crate::turn::{long_term_key, rest_credentials, rest_password};
use proptest::prelude::*;

const SECRET: &[u8] = b"shared secret";
const REALM: &str = "earshot";
const UNIX: u64 = 1_700_000_000;

fn config() -> Config {
    let mut config = Config::new(
        REALM.into(),
        SECRET.to_vec(),
        [7; 32],
        "203.0.113.1".parse().unwrap(),
    );
    config.policy = config.policy.allow(["198.51.100.0/24".parse().unwrap()]);
    config
}

fn udp(addr: &str) -> ClientAddr {
    ClientAddr {
        transport: Transport::Udp,
        addr: addr.parse().unwrap(),
    }
}

fn tcp(addr: &str) -> ClientAddr {
    ClientAddr {
        transport: Transport::Tcp,
        addr: addr.parse().unwrap(),
    }
}

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A test client's long-term credentials and the nonce it last got.
#[derive(Clone)]
struct Creds {
    username: String,
    key: [u8; 16],
    nonce: String,
}

fn creds_for(username: String, password: &str, nonce: &str) -> Creds {
    Creds {
        key: long_term_key(&username, REALM, password),
        username,
        nonce: nonce.into(),
    }
}

fn txid(n: u8) -> [u8; 12] {
    [n; 12]
}

/// A request with the given attributes, signed with `creds` if any.
fn request(
    method: u16,
    id: [u8; 12],
    creds: Option<&Creds>,
    build: impl FnOnce(&mut Encoder),
) -> Vec<u8> {
    let mut e = Encoder::new(method, Class::Request, id);
    build(&mut e);
    if let Some(c) = creds {
        e.add(attr::USERNAME, c.username.as_bytes())
            .add(attr::REALM, REALM.as_bytes())
            .add(attr::NONCE, c.nonce.as_bytes())
            .integrity(&c.key);
    }
    e.fingerprint();
    e.finish()
}

fn udp_transport(e: &mut Encoder) {
    e.add(attr::REQUESTED_TRANSPORT, &[PROTO_UDP, 0, 0, 0]);
}

fn drain(s: &mut TurnServer) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

/// The single output, which must be a message to `client`; returned as
/// bytes for decoding.
fn answer(s: &mut TurnServer, client: ClientAddr) -> Vec<u8> {
    let outs = drain(s);
    assert_eq!(outs.len(), 1, "{outs:?}");
    match outs.into_iter().next().unwrap() {
        Output::ToClient { client: c, data } => {
            assert_eq!(c, client);
            data
        }
        other => panic!("expected ToClient, got {other:?}"),
    }
}

fn error_code(bytes: &[u8]) -> Option<u16> {
    let m = Message::decode(bytes).unwrap();
    assert!(m.fingerprint);
    m.error_code().unwrap()
}

/// Runs the 401 dance and returns credentials with a valid nonce.
fn login(s: &mut TurnServer, now: Instant, client: ClientAddr) -> Creds {
    login_as(s, now, client, "t")
}

/// [`login`] with credentials of the session `tag`.
fn login_as(s: &mut TurnServer, now: Instant, client: ClientAddr, tag: &str) -> Creds {
    s.handle_client(
        now,
        UNIX,
        client,
        &request(method::ALLOCATE, txid(1), None, udp_transport),
    );
    let bytes = answer(s, client);
    let m = Message::decode(&bytes).unwrap();
    assert_eq!((m.method, m.class), (method::ALLOCATE, Class::Error));
    assert_eq!(m.error_code(), Ok(Some(401)));
    assert!(!m.has_integrity());
    assert_eq!(m.text(attr::REALM), Ok(Some(REALM)));
    let nonce = m.text(attr::NONCE).unwrap().unwrap();
    let (username, password) = rest_credentials(SECRET, Duration::from_secs(3600), UNIX, tag);
    creds_for(username, &password, nonce)
}

/// Allocates for `client`; returns its id, relayed address and credentials.
fn allocate(
    s: &mut TurnServer,
    now: Instant,
    client: ClientAddr,
) -> (AllocationId, SocketAddr, Creds) {
    allocate_as(s, now, client, "t")
}

/// [`allocate`] with credentials of the session `tag`.
fn allocate_as(
    s: &mut TurnServer,
    now: Instant,
    client: ClientAddr,
    tag: &str,
) -> (AllocationId, SocketAddr, Creds) {
    let creds = login_as(s, now, client, tag);
    s.handle_client(
        now,
        UNIX,
        client,
        &request(method::ALLOCATE, txid(2), Some(&creds), udp_transport),
    );
    let outs = drain(s);
    let [Output::BindRelay { allocation, .. }] = outs[..] else {
        panic!("expected BindRelay, got {outs:?}");
    };
    s.relay_bound(allocation, Ok(50_000 + allocation.0 as u16));
    let bytes = answer(s, client);
    let m = Message::decode(&bytes).unwrap();
    assert_eq!((m.method, m.class), (method::ALLOCATE, Class::Success));
    assert_eq!(m.transaction_id, txid(2));
    assert!(m.check_integrity(&creds.key));
    assert_eq!(
        m.xor_address(attr::XOR_MAPPED_ADDRESS),
        Ok(Some(unmap(client.addr)))
    );
    let relayed = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap();
    assert_eq!(relayed.ip(), s.config.relay_ip);
    (allocation, relayed, creds)
}

fn permit(
    s: &mut TurnServer,
    now: Instant,
    client: ClientAddr,
    creds: &Creds,
    peers: &[SocketAddr],
) -> Option<u16> {
    let m = request(method::CREATE_PERMISSION, txid(3), Some(creds), |e| {
        for p in peers {
            e.xor_address(attr::XOR_PEER_ADDRESS, *p);
        }
    });
    s.handle_client(now, UNIX, client, &m);
    let bytes = answer(s, client);
    assert!(Message::decode(&bytes).unwrap().check_integrity(&creds.key));
    error_code(&bytes)
}

fn bind_channel(
    s: &mut TurnServer,
    now: Instant,
    client: ClientAddr,
    creds: &Creds,
    channel: u16,
    p: SocketAddr,
) -> Option<u16> {
    let m = request(method::CHANNEL_BIND, txid(4), Some(creds), |e| {
        e.add(
            attr::CHANNEL_NUMBER,
            &[(channel >> 8) as u8, channel as u8, 0, 0],
        )
        .xor_address(attr::XOR_PEER_ADDRESS, p);
    });
    s.handle_client(now, UNIX, client, &m);
    error_code(&answer(s, client))
}

fn send_indication(p: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new(method::SEND, Class::Indication, txid(9));
    e.xor_address(attr::XOR_PEER_ADDRESS, p)
        .add(attr::DATA, data);
    e.finish()
}

fn refresh(
    s: &mut TurnServer,
    now: Instant,
    client: ClientAddr,
    creds: &Creds,
    lifetime: Option<u32>,
) -> Vec<u8> {
    let m = request(method::REFRESH, txid(5), Some(creds), |e| {
        if let Some(l) = lifetime {
            e.u32(attr::LIFETIME, l);
        }
    });
    s.handle_client(now, UNIX, client, &m);
    answer(s, client)
}

#[test]
fn allocate_after_a_401_gets_a_relay_and_its_lifetime() {
    let mut s = TurnServer::new(config());
    let now = Instant::now();
    let client = udp("192.0.2.1:5000");
    let (id, relayed, creds) = allocate(&mut s, now, client);
    assert_eq!(relayed.port(), 50_000 + id.0 as u16);
    assert_eq!(s.stats().allocations, 1);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(600)));

    // A retransmission gets the same answer; a new Allocate gets 437.
    s.handle_client(
        now,
        UNIX,
        client,
        &request(method::ALLOCATE, txid(2), Some(&creds), udp_transport),
    );
    let m = answer(&mut s, client);
    assert_eq!(Message::decode(&m).unwrap().class, Class::Success);
    s.handle_client(
        now,
        UNIX,
        client,
        &request(method::ALLOCATE, txid(6), Some(&creds), udp_transport),
    );
    assert_eq!(error_code(&answer(&mut s, client)), Some(437));
}

#[test]
fn bad_credentials_get_401_and_old_nonces_438() {
    let mut s = TurnServer::new(config());
    let now = Instant::now();
    let client = udp("192.0.2.1:5000");
    let good = login(&mut s, now, client);
    let try_allocate = |s: &mut TurnServer, creds: &Creds, unix: u64| {
        s.handle_client(
            now,
            unix,
            client,
            &request(method::ALLOCATE, txid(2), Some(creds), udp_transport),
        );
        let bytes = answer(s, client);
        let m = Message::decode(&bytes).unwrap();
        assert!(!m.has_integrity(), "failed authentication is not signed");
        m.error_code().unwrap()
    };

    let wrong = creds_for(good.username.clone(), "wrong password", &good.nonce);
    assert_eq!(try_allocate(&mut s, &wrong, UNIX), Some(401));

    // An expired REST username, correctly signed.
    let (old_user, old_pass) = rest_credentials(SECRET, Duration::from_secs(60), UNIX - 120, "t");
    let expired = creds_for(old_user, &old_pass, &good.nonce);
    assert_eq!(try_allocate(&mut s, &expired, UNIX), Some(401));

    // Not a REST username at all.
    let plain = creds_for("alice".into(), &rest_password(SECRET, "alice"), &good.nonce);
    assert_eq!(try_allocate(&mut s, &plain, UNIX), Some(401));

    // A nonce past its time, and one that is not ours.
    assert_eq!(try_allocate(&mut s, &good, UNIX + 601), Some(438));
    let forged = Creds {
        nonce: "00000000ffffffff000000000000000000000000".into(),
        ..good.clone()
    };
    assert_eq!(try_allocate(&mut s, &forged, UNIX), Some(438));

    // Integrity without a nonce is malformed.
    let mut e = Encoder::new(method::ALLOCATE, Class::Request, txid(2));
    udp_transport(&mut e);
    e.add(attr::USERNAME, good.username.as_bytes())
        .integrity(&good.key);
    s.handle_client(now, UNIX, client, &e.finish());
    assert_eq!(error_code(&answer(&mut s, client)), Some(400));

    assert_eq!(s.stats().allocations, 0);
    assert!(drain(&mut s).is_empty());
}

#[test]
fn allocate_checks_transport_family_and_unknown_attributes() {
    let mut s = TurnServer::new(config());
    let now = Instant::now();
    let client = udp("192.0.2.1:5000");
    let creds = login(&mut s, now, client);
    let mut code = |build: &dyn Fn(&mut Encoder)| {
        s.handle_client(
            now,
            UNIX,
            client,
            &request(method::ALLOCATE, txid(2), Some(&creds), build),
        );
        let bytes = answer(&mut s, client);
        assert!(Message::decode(&bytes).unwrap().check_integrity(&creds.key));
        bytes
    };
    assert_eq!(error_code(&code(&|_| {})), Some(400));
    assert_eq!(
        error_code(&code(&|e| {
            e.add(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
        })),
        Some(442)
    );
    assert_eq!(
        error_code(&code(&|e| {
            udp_transport(e);
            e.add(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        })),
        Some(440)
    );
    let bytes = code(&|e| {
        udp_transport(e);
        e.add(attr::DONT_FRAGMENT, &[])
            .add(attr::RESERVATION_TOKEN, &[0; 8]);
    });
    assert_eq!(error_code(&bytes), Some(420));
    assert_eq!(
        Message::decode(&bytes)
            .unwrap()
            .get(attr::UNKNOWN_ATTRIBUTES),
        Some(&[0x00, 0x1A, 0x00, 0x22][..])
    );
    // EVEN-PORT asking for a reservation cannot be satisfied.
    let bytes = code(&|e| {
        udp_transport(e);
        e.add(attr::EVEN_PORT, &[0x80]);
    });
    assert_eq!(error_code(&bytes), Some(508));

    // EVEN-PORT alone is passed on to the shell.
    let m = request(method::ALLOCATE, txid(2), Some(&creds), |e| {
        udp_transport(e);
        e.add(attr::EVEN_PORT, &[0]);
    });
    s.handle_client(now, UNIX, client, &m);
    let outs = drain(&mut s);
    assert!(
        matches!(
            outs[..],
            [Output::BindRelay {
                even_port: true,
                ..
            }]
        ),
        "{outs:?}"
    );
}

#[test]
fn lifetimes_are_clamped_refreshed_and_expire() {
    let mut s = TurnServer::new(config());
    let t0 = Instant::now();
    let client = udp("192.0.2.1:5000");
    let (id, _, creds) = allocate(&mut s, t0, client);

    let lifetime = |bytes: &[u8]| Message::decode(bytes).unwrap().u32(attr::LIFETIME).unwrap();
    assert_eq!(
        lifetime(&refresh(&mut s, t0, client, &creds, Some(10))),
        Some(600)
    );
    assert_eq!(
        lifetime(&refresh(&mut s, t0, client, &creds, Some(100_000))),
        Some(3600)
    );
    assert_eq!(
        lifetime(&refresh(&mut s, t0, client, &creds, None)),
        Some(600)
    );
    assert_eq!(
        lifetime(&refresh(&mut s, t0, client, &creds, Some(1200))),
        Some(1200)
    );

    // The first timer fires at 600 s, finds the allocation refreshed and
    // re-arms for 1200 s.
    let at = s.poll_timeout().unwrap();
    assert!(at <= t0 + Duration::from_secs(600));
    s.handle_timeout(t0 + Duration::from_secs(600));
    assert_eq!(s.stats().allocations, 1);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(1200)));
    s.handle_timeout(t0 + Duration::from_secs(1200));
    assert_eq!(s.stats().allocations, 0);
    let outs = drain(&mut s);
    assert!(
        matches!(outs[..], [Output::ReleaseRelay { allocation }] if allocation == id),
        "{outs:?}"
    );
    assert_eq!(s.poll_timeout(), None);

    // Gone: Refresh gets 437.
    assert_eq!(
        error_code(&refresh(&mut s, t0, client, &creds, None)),
        Some(437)
    );
}

#[test]
fn refresh_with_lifetime_zero_deletes() {
    let mut s = TurnServer::new(config());
    let now = Instant::now();
    let client = udp("192.0.2.1:5000");
    let (id, _, creds) = allocate(&mut s, now, client);
    let m = request(method::REFRESH, txid(5), Some(&creds), |e| {
        e.u32(attr::LIFETIME, 0);
    });
    s.handle_client(now, UNIX, client, &m);
    let outs = drain(&mut s);
    assert!(matches!(&outs[0], Output::ReleaseRelay { allocation } if *allocation == id));
    let Output::ToClient { data, .. } = &outs[1] else {
        panic!("{outs:?}")
    };
    let m = Message::decode(data).unwrap();
    assert_eq!(m.class, Class::Success);
    assert_eq!(m.u32(attr::LIFETIME), Ok(Some(0)));
    assert_eq!(s.stats().allocations, 0);
    // The client may allocate again.
    allocate(&mut s, now, client);
}

#[test]
fn traffic_needs_a_permission_in_both_directions() {
    let mut s = TurnServer::new(config());
    let now = Instant::now();
    let client = udp("192.0.2.1:5000");
    let (id, _, creds) = allocate(&mut s, now, client);
    let p = peer("198.51.100.7:4000");

    // No permission yet: nothing passes either way.
    s.handle_client(now, UNIX, client, &send_indication(p, b"hello"));
    s.handle_peer(now, id, p, b"hi there");
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.stats().dropped, 2);

    assert_eq!(permit(&mut s, now, client, &creds, &[p]), None);
    s.handle_client(now, UNIX, client, &send_indication(p, b"hello"));
    let outs = drain(&mut s);
    assert!(
        matches!(&outs[..], [Output::ToPeer { allocation, peer, data }] if *allocation == id && *peer == p && data == b"hello"),
        "{outs:?}"
    );

    // Any port of a permitted IP may answer.
    let other_port = peer("198.51.100.7:4001");
    s.handle_peer(now, id, other_port, b"hi there");
    let bytes = answer(&mut s, client);
    let m = Message::decode(&bytes).unwrap();
    assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Ok(Some(other_port)));
    assert_eq!(m.get(attr::DATA), Some(&b"hi there"[..]));

    // Another IP still may not.
    s.handle_peer(now, id, peer("198.51.100.8:4000"), b"x");
    assert!(drain(&mut s).is_empty());

    // The permission lasts 300 s unless refreshed.
    let later = now + Duration::from_secs(300);
    s.handle_peer(later, id, p, b"late");
    s.handle_client(later, UNIX, client, &send_indication(p, b"late"));
    assert!(drain(&mut s).is_empty());
    assert_eq!(permit(&mut s, later, client, &creds, &[p]), None);
    s.handle_peer(later, id, p, b"again");
    assert_eq!(drain(&mut s).len(), 1);
}

#[test]
fn forbidden_and_foreign_peers_are_refused() {
    let mut s = TurnServer::new(config());
    let now = Instant::now();
    let client = udp("192.0.2.1:5000");
    let (_, _, creds) = allocate(&mut s, now, client);
    for forbidden in [
        "127.0.0.1:53",
        "0.0.0.0:1",
        "224.0.0.1:5",
        "255.255.255.255:9",
        "[::ffff:127.0.0.1]:53",
    ] {
        assert_eq!(
            permit(&mut s, now, client, &creds, &[peer(forbidden)]),
            Some(403),
            "{forbidden}"
        );
    }
    assert_eq!(
        permit(&mut s, now, client, &creds, &[peer("[2001:db8::1]:5")]),
        Some(443)
    );
    assert_eq!(permit(&mut s, now, client, &creds, &[]), Some(400));
    assert_eq!(
        bind_channel(&mut s, now, client, &creds, 0x4000, peer("127.0.0.1:53")),
        Some(403)
    );

    // On a loopback relay (tests, a local-only server) loopback is fine.
    let mut config = config();
    config.relay_ip = "127.0.0.1".parse().unwrap();
    config.policy = crate::turn::PeerPolicy::new(config.relay_ip);
    let mut s = TurnServer::new(config);
    let (_, _, creds) = allocate_loopback(&mut s, now, client);
    assert_eq!(
        permit(&mut s, now, client, &creds, &[peer("127.0.0.1:53")]),
        None
    );
}

fn allocate_loopback(
    s: &mut TurnServer,
    now: Instant,
    client: ClientAddr,
) -> (AllocationId, SocketAddr, Creds) {
    let creds = login(s, now, client);
    s.handle_client(
        now,
        UNIX,
        client,
        &request(method::ALLOCATE, txid(2), Some(&creds), udp_transport),
    );
    let [Output::BindRelay { allocation, .. }] = drain(s)[..] else {
        panic!()
    };
    s.relay_bound(allocation, Ok(50_000));
    answer(s, client);
    (allocation, peer("127.0.0.1:50000"), creds)
}

#[test]
fn channels_carry_data_both_ways_and_pad_over_tcp() {
    for client in [udp("192.0.2.1:5000"), tcp("192.0.2.1:5001")] {
        let mut s = TurnServer::new(config());
        let now = Instant::now();
        let (id, _, creds) = allocate(&mut s, now, client);
        let p = peer("198.51.100.7:4000");
        assert_eq!(bind_channel(&mut s, now, client, &creds, 0x4001, p), None);

        s.handle_client(
            now,
            UNIX,
            client,
            &encode_channel_data(0x4001, b"hello", false),
        );
        let outs = drain(&mut s);
        assert!(
            matches!(&outs[..], [Output::ToPeer { peer, data, .. }] if *peer == p && data == b"hello"),
            "{outs:?}"
        );

        s.handle_peer(now, id, p, b"abcde");
        let bytes = answer(&mut s, client);
        assert_eq!(decode_channel_data(&bytes), Ok((0x4001, &b"abcde"[..])));
        let expected_len = if client.transport == Transport::Tcp {
            12
        } else {
            9
        };
        assert_eq!(bytes.len(), expected_len);
        assert_eq!(stream_frame(&bytes), Frame::Len(12));

        // Another port of the same IP has a permission but no channel.
        s.handle_peer(now, id, peer("198.51.100.7:4002"), b"x");
        let m = answer(&mut s, client);
        assert_eq!(Message::decode(&m).unwrap().method, method::DATA);

        // Unbound channels and conflicting bindings.
        s.handle_client(now, UNIX, client, &encode_channel_data(0x4002, b"x", false));
        assert!(drain(&mut s).is_empty());
        assert_eq!(
            bind_channel(&mut s, now, client, &creds, 0x4001, peer("198.51.100.9:1")),
            Some(400)
        );
        assert_eq!(
            bind_channel(&mut s, now, client, &creds, 0x4002, p),
            Some(400)
        );
        assert_eq!(
            bind_channel(&mut s, now, client, &creds, 0x3FFF, p),
            Some(400)
        );
        assert_eq!(
            bind_channel(&mut s, now, client, &creds, 0x4001, p),
            None,
            "rebinding refreshes"
        );

        // A channel lasts 600 s; its permission only 300 s unless refreshed.
        let later = now + Duration::from_secs(300);
        s.handle_client(
            later,
            UNIX,
            client,
            &encode_channel_data(0x4001, b"x", false),
        );
        assert!(drain(&mut s).is_empty());
    }
}

#[test]
fn tcp_close_deletes_the_allocation() {
    let mut s = TurnServer::new(config());
    let now = Instant::now();
    let client = tcp("192.0.2.1:5000");
    let (id, _, _) = allocate(&mut s, now, client);
    s.client_closed(client);
    let outs = drain(&mut s);
    assert!(matches!(outs[..], [Output::ReleaseRelay { allocation }] if allocation == id));
    assert_eq!(s.stats().allocations, 0);
}

#[test]
fn quotas_per_ip_and_in_total() {
    let mut config = config();
    config.max_allocations_per_client = 2;
    config.max_allocations = 3;
    let mut s = TurnServer::new(config);
    let now = Instant::now();
    allocate(&mut s, now, udp("192.0.2.1:1"));
    allocate(&mut s, now, udp("[::ffff:192.0.2.1]:2"));
    let third = udp("192.0.2.1:3");
    let creds = login(&mut s, now, third);
    s.handle_client(
        now,
        UNIX,
        third,
        &request(method::ALLOCATE, txid(2), Some(&creds), udp_transport),
    );
    assert_eq!(error_code(&answer(&mut s, third)), Some(486));

    allocate(&mut s, now, udp("192.0.2.2:1"));
    let fourth = udp("192.0.2.3:1");
    let creds = login(&mut s, now, fourth);
    s.handle_client(
        now,
        UNIX,
        fourth,
        &request(method::ALLOCATE, txid(2), Some(&creds), udp_transport),
    );
    assert_eq!(error_code(&answer(&mut s, fourth)), Some(508));
}

#[test]
fn relay_port_failures_and_late_bindings() {
    let mut s = TurnServer::new(config());
    let now = Instant::now();
    let client = tcp("192.0.2.1:5000");
    let creds = login(&mut s, now, client);
    let alloc = request(method::ALLOCATE, txid(2), Some(&creds), udp_transport);
    s.handle_client(now, UNIX, client, &alloc);
    let [Output::BindRelay { allocation, .. }] = drain(&mut s)[..] else {
        panic!()
    };
    // A retransmission while binding gets no second answer.
    s.handle_client(now, UNIX, client, &alloc);
    assert!(drain(&mut s).is_empty());
    s.relay_bound(allocation, Err(RelayUnavailable));
    assert_eq!(error_code(&answer(&mut s, client)), Some(508));
    assert_eq!(s.stats().allocations, 0);

    // The client went away while its relay was being bound.
    s.handle_client(
        now,
        UNIX,
        client,
        &request(method::ALLOCATE, txid(3), Some(&creds), udp_transport),
    );
    let [Output::BindRelay { allocation, .. }] = drain(&mut s)[..] else {
        panic!()
    };
    s.client_closed(client);
    assert!(drain(&mut s).is_empty());
    s.relay_bound(allocation, Ok(50_000));
    assert!(
        matches!(drain(&mut s)[..], [Output::ReleaseRelay { allocation: a }] if a == allocation)
    );
}

#[test]
fn another_username_on_the_same_allocation_gets_441() {
    let mut s = TurnServer::new(config());
    let now = Instant::now();
    let client = udp("192.0.2.1:5000");
    let (_, _, creds) = allocate(&mut s, now, client);
    let (user, pass) = rest_credentials(SECRET, Duration::from_secs(60), UNIX, "someone else");
    let other = creds_for(user, &pass, &creds.nonce);
    assert_eq!(
        error_code(&refresh(&mut s, now, client, &other, None)),
        Some(441)
    );
}

#[test]
fn binding_requests_are_answered_without_credentials() {
    let mut s = TurnServer::new(config());
    let client = udp("[::ffff:192.0.2.1]:5000");
    s.handle_client(
        Instant::now(),
        UNIX,
        client,
        &request(method::BINDING, txid(1), None, |_| {}),
    );
    let bytes = answer(&mut s, client);
    let m = Message::decode(&bytes).unwrap();
    assert_eq!((m.method, m.class), (method::BINDING, Class::Success));
    assert_eq!(
        m.xor_address(attr::XOR_MAPPED_ADDRESS),
        Ok(Some(peer("192.0.2.1:5000")))
    );
    // Unknown methods get 400; responses and indications nothing.
    s.handle_client(
        Instant::now(),
        UNIX,
        client,
        &request(0x00A, txid(1), None, |_| {}),
    );
    assert_eq!(error_code(&answer(&mut s, client)), Some(400));
    let mut e = Encoder::new(method::BINDING, Class::Indication, txid(1));
    e.fingerprint();
    s.handle_client(Instant::now(), UNIX, client, &e.finish());
    assert!(drain(&mut s).is_empty());
}

#[test]
fn debug_output_names_no_address_or_secret() {
    let mut s = TurnServer::new(config());
    let now = Instant::now();
    let client = udp("192.0.2.1:5000");
    let (id, _, creds) = allocate(&mut s, now, client);
    permit(&mut s, now, client, &creds, &[peer("198.51.100.7:4000")]);
    s.handle_client(
        now,
        UNIX,
        client,
        &send_indication(peer("198.51.100.7:4000"), b"x"),
    );
    s.handle_peer(now, id, peer("198.51.100.7:4000"), b"y");
    let outs = drain(&mut s);
    let text = format!(
        "{outs:?} {client:?} {:?} {s:?} {:?}",
        config(),
        Message::decode(&request(
            method::ALLOCATE,
            txid(2),
            Some(&creds),
            udp_transport
        ))
        .unwrap()
    );
    for secret in [
        "192.0.2",
        "198.51.100",
        "203.0.113",
        "shared secret",
        &creds.username,
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(text.contains("<redacted>"));
}

/// Every answer is well-formed: valid STUN with FINGERPRINT last, the
/// request's transaction id for responses, an ERROR-CODE on errors; or
/// ChannelData with a valid channel.
fn check_outputs(s: &mut TurnServer, request: Option<&[u8]>) -> Result<(), TestCaseError> {
    while let Some(out) = s.poll_output() {
        if let Output::ToClient { data, .. } = out {
            if data[0] >> 6 == 0b01 {
                prop_assert!(decode_channel_data(&data).is_ok());
                continue;
            }
            let m = Message::decode(&data);
            prop_assert!(m.is_ok(), "undecodable answer {:?}", m);
            let m = m.unwrap();
            prop_assert!(m.fingerprint);
            match m.class {
                Class::Success | Class::Error => {
                    if let Some(req) = request {
                        prop_assert_eq!(&m.transaction_id[..], &req[8..20]);
                    }
                    if m.class == Class::Error {
                        prop_assert!(matches!(m.error_code(), Ok(Some(400..=599))));
                    }
                }
                Class::Indication => prop_assert_eq!(m.method, method::DATA),
                Class::Request => prop_assert!(false, "the server sent a request"),
            }
        }
    }
    Ok(())
}

/// A server with one allocation (channel 0x4000 and a permission for
/// 198.51.100.7), plus its client and credentials.
fn busy_server(now: Instant) -> (TurnServer, ClientAddr, Creds, AllocationId) {
    let mut s = TurnServer::new(config());
    let client = udp("192.0.2.1:5000");
    let (id, _, creds) = allocate(&mut s, now, client);
    assert_eq!(
        bind_channel(
            &mut s,
            now,
            client,
            &creds,
            0x4000,
            peer("198.51.100.7:4000")
        ),
        None
    );
    (s, client, creds, id)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
    ]
}

fn any_request(
    creds: &Creds,
    method_pick: u8,
    lifetime: u32,
    channel: u16,
    p: SocketAddr,
) -> Vec<u8> {
    let method = [
        method::ALLOCATE,
        method::REFRESH,
        method::CREATE_PERMISSION,
        method::CHANNEL_BIND,
        method::BINDING,
    ][usize::from(method_pick % 5)];
    request(method, txid(method_pick), Some(creds), |e| {
        udp_transport(e);
        e.u32(attr::LIFETIME, lifetime)
            .add(
                attr::CHANNEL_NUMBER,
                &[(channel >> 8) as u8, channel as u8, 0, 0],
            )
            .xor_address(attr::XOR_PEER_ADDRESS, p);
    })
}

fn any_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip.into(), port)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip.into(), port)),
        Just(peer("198.51.100.7:4000")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn arbitrary_client_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), tcp_client in any::<bool>()) {
        let now = Instant::now();
        let (mut s, client, _, _) = busy_server(now);
        let client = ClientAddr { transport: if tcp_client { Transport::Tcp } else { Transport::Udp }, ..client };
        s.handle_client(now, UNIX, client, &bytes);
        check_outputs(&mut s, (bytes.len() >= 20).then_some(&bytes[..]))?;
    }

    #[test]
    fn arbitrary_peer_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), from in any_addr(), id in 0u64..3) {
        let now = Instant::now();
        let (mut s, _, _, _) = busy_server(now);
        s.handle_peer(now, AllocationId(id), from, &bytes);
        check_outputs(&mut s, None)?;
    }

    #[test]
    fn mutated_signed_requests_never_panic(
        method_pick in any::<u8>(),
        lifetime in any::<u32>(),
        channel in any::<u16>(),
        p in any_addr(),
        mutations in prop::collection::vec(mutation(), 0..4),
        fix_length in any::<bool>(),
    ) {
        let now = Instant::now();
        let (mut s, client, creds, _) = busy_server(now);
        let mut m = any_request(&creds, method_pick, lifetime, channel, p);
        for mutation in mutations {
            match mutation {
                Mutation::Flip(i, x) => { let i = i % m.len(); m[i] ^= x; }
                Mutation::Truncate(i) => m.truncate(i % (m.len() + 1)),
                Mutation::Insert(i, b) => m.insert(i % (m.len() + 1), b),
            }
            if m.is_empty() { break; }
        }
        if fix_length && m.len() >= 20 {
            let len = (m.len() - 20) as u16;
            m[2..4].copy_from_slice(&len.to_be_bytes());
        }
        s.handle_client(now, UNIX, client, &m);
        check_outputs(&mut s, (m.len() >= 20).then_some(&m[..]))?;
    }

    /// Random sequences of requests, traffic, closes and clock steps keep
    /// the books straight.
    #[test]
    fn random_sequences_keep_the_invariants(ops in prop::collection::vec((0u8..8, any::<u8>(), any::<u32>(), any::<u16>(), 0u64..400), 1..40)) {
        let mut config = config();
        config.max_allocations = 3;
        config.max_allocations_per_client = 2;
        let mut s = TurnServer::new(config);
        let mut now = Instant::now();
        let clients = [udp("192.0.2.1:1"), udp("192.0.2.1:2"), tcp("192.0.2.1:3"), udp("192.0.2.2:1")];
        let (user, pass) = rest_credentials(SECRET, Duration::from_secs(86_400), UNIX, "t");
        let mut creds = creds_for(user, &pass, "");
        let mut pending = Vec::new();
        for (op, pick, lifetime, channel, step) in ops {
            let client = clients[usize::from(pick) % clients.len()];
            let p = SocketAddr::new(IpAddr::from([198, 51, 100, pick % 3]), 4000 + u16::from(pick % 2));
            match op {
                0..=3 => {
                    s.handle_client(now, UNIX, client, &any_request(&creds, pick, lifetime % 5000, 0x4000 + channel % 4, p));
                }
                4 => s.handle_client(now, UNIX, client, &encode_channel_data(0x4000 + channel % 4, b"data", false)),
                5 => s.handle_peer(now, AllocationId(u64::from(pick % 4)), p, b"data"),
                6 => s.client_closed(client),
                _ => {
                    now += Duration::from_secs(step);
                    s.handle_timeout(now);
                }
            }
            while let Some(out) = s.poll_output() {
                match out {
                    Output::BindRelay { allocation, .. } => pending.push(allocation),
                    Output::ToClient { data, .. } => {
                        if let Ok(m) = Message::decode(&data)
                            && let Ok(Some(nonce)) = m.text(attr::NONCE) {
                                creds.nonce = nonce.to_owned();
                            }
                    }
                    _ => {}
                }
            }
            if let Some(allocation) = pending.pop() {
                s.relay_bound(allocation, if channel % 7 == 0 { Err(RelayUnavailable) } else { Ok(channel) });
            }
            check_outputs(&mut s, None)?;
            // The books agree with each other and the limits hold.
            prop_assert!(s.allocations.len() <= 3);
            prop_assert_eq!(s.by_client.len(), s.allocations.len());
            prop_assert_eq!(s.per_client.values().sum::<usize>(), s.allocations.len());
            prop_assert!(s.per_client.values().all(|&n| (1..=2).contains(&n)));
            prop_assert_eq!(s.per_credential.values().sum::<usize>(), s.allocations.len());
            for (port, id) in &s.by_port {
                prop_assert_eq!(s.allocations.get(id).and_then(|a| a.relay_port), Some(*port));
            }
            for (id, a) in &s.allocations {
                prop_assert_eq!(s.by_client.get(&a.client), Some(id));
                prop_assert!(a.expires > now, "an expired allocation survived its timer");
                prop_assert!(s.timers.iter().any(|Reverse((at, i))| i == id && *at == a.armed));
                prop_assert!(a.channels.len() <= 32 && a.permissions.len() <= 32);
                for (c, (p, _)) in &a.channels {
                    prop_assert_eq!(a.channel_of_peer.get(p), Some(c));
                }
            }
        }
    }
}

/// Allocate with `creds` for a client that already did the 401 dance: the
/// error code, or `None` when the server asks for a relay socket.
fn try_allocate(
    s: &mut TurnServer,
    now: Instant,
    client: ClientAddr,
    creds: &Creds,
) -> Option<u16> {
    s.handle_client(
        now,
        UNIX,
        client,
        &request(method::ALLOCATE, txid(2), Some(creds), udp_transport),
    );
    let outs = drain(s);
    match &outs[..] {
        [Output::BindRelay { allocation, .. }] => {
            s.relay_bound(*allocation, Ok(40_000 + allocation.0 as u16));
            let _ = drain(s);
            None
        }
        [Output::ToClient { data, .. }] => error_code(data),
        other => panic!("{other:?}"),
    }
}

#[test]
fn private_and_special_peers_get_403_and_are_counted() {
    let mut config = config();
    config.relay_ip = "192.0.2.10".parse().unwrap();
    config.policy = crate::turn::PeerPolicy::new(config.relay_ip).own_services([
        "0.0.0.0:8080".parse().unwrap(),
        "0.0.0.0:3479".parse().unwrap(),
    ]);
    let mut s = TurnServer::new(config);
    let now = Instant::now();
    let client = udp("8.8.4.4:5000");
    let (id, relayed, creds) = allocate(&mut s, now, client);
    for internal in [
        "10.0.0.5:53",
        "169.254.169.254:80",
        "192.168.7.7:161",
        "172.17.0.1:8125",
        "100.64.0.1:53",
        "127.0.0.1:11211",
    ] {
        assert_eq!(
            permit(&mut s, now, client, &creds, &[peer(internal)]),
            Some(403),
            "{internal}"
        );
        assert_eq!(
            bind_channel(&mut s, now, client, &creds, 0x4000, peer(internal)),
            Some(403),
            "{internal}"
        );
    }
    assert_eq!(s.stats().refused_peers, 12);
    // The relay's own address is allowed, but only its live relay ports:
    // not the services that share its address.
    assert_eq!(permit(&mut s, now, client, &creds, &[relayed]), None);
    for service in ["192.0.2.10:11211", "192.0.2.10:3479", "192.0.2.10:8080"] {
        s.handle_client(now, UNIX, client, &send_indication(peer(service), b"x"));
        assert!(drain(&mut s).is_empty(), "{service}");
    }
    assert_eq!(s.stats().refused_peers, 15);
    // A global peer is fine.
    assert_eq!(
        permit(&mut s, now, client, &creds, &[peer("8.8.8.8:3478")]),
        None
    );
    s.handle_client(
        now,
        UNIX,
        client,
        &send_indication(peer("8.8.8.8:3478"), b"x"),
    );
    assert!(matches!(&drain(&mut s)[..], [Output::ToPeer { allocation, .. }] if *allocation == id));
}

#[test]
fn relay_to_relay_traffic_is_handed_over_in_memory() {
    // The relay address is a documentation one, on no interface: only the
    // in-memory path can carry this.
    let mut config = config();
    config.relay_ip = "192.0.2.10".parse().unwrap();
    config.policy = crate::turn::PeerPolicy::new(config.relay_ip);
    let mut s = TurnServer::new(config);
    let now = Instant::now();
    let (a, b) = (udp("8.8.4.4:5000"), udp("9.9.9.9:6000"));
    let (_, relay_a, creds_a) = allocate_as(&mut s, now, a, "a");
    let (_, relay_b, creds_b) = allocate_as(&mut s, now, b, "b");
    assert_ne!(relay_a, relay_b);
    assert_eq!(permit(&mut s, now, a, &creds_a, &[relay_b]), None);
    assert_eq!(permit(&mut s, now, b, &creds_b, &[relay_a]), None);
    assert_eq!(
        bind_channel(&mut s, now, b, &creds_b, 0x4001, relay_a),
        None
    );
    s.handle_client(now, UNIX, a, &send_indication(relay_b, b"ping"));
    let outs = drain(&mut s);
    let [Output::ToClient { client, data }] = &outs[..] else {
        panic!("{outs:?}")
    };
    assert_eq!(*client, b);
    // B bound a channel to A's relay address: ChannelData from it.
    let (channel, payload) = decode_channel_data(data).unwrap();
    assert_eq!((channel, payload), (0x4001, &b"ping"[..]));
    s.handle_client(now, UNIX, b, &encode_channel_data(0x4001, b"pong", false));
    let bytes = answer(&mut s, a);
    let m = Message::decode(&bytes).unwrap();
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Ok(Some(relay_b)));
    assert_eq!(m.get(attr::DATA), Some(&b"pong"[..]));
    assert_eq!(s.stats().relay_to_relay, 2);
    // A port of the relay address that is no live relay goes nowhere.
    let dead = SocketAddr::new(relay_b.ip(), relay_b.port() + 100);
    s.handle_client(now, UNIX, a, &send_indication(dead, b"x"));
    assert!(drain(&mut s).is_empty());
}

#[test]
fn one_credential_cannot_take_the_relay_from_many_addresses() {
    let mut config = config();
    config.max_allocations_per_credential = 4;
    config.max_allocations_per_client = 3;
    config.max_allocations = 10;
    let mut s = TurnServer::new(config);
    let now = Instant::now();
    // One credential from many addresses: four allocations in all.
    let creds = login_as(&mut s, now, udp("8.8.8.1:1"), "attacker");
    let codes: Vec<Option<u16>> = (1..=8)
        .map(|n| try_allocate(&mut s, now, udp(&format!("8.8.8.{n}:1")), &creds))
        .collect();
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 4, "{codes:?}");
    assert!(codes[4..].iter().all(|&c| c == Some(486)));
    assert_eq!(s.stats().quota_credential, 4);
    // A fresh user still gets one.
    let (_, _, _) = allocate_as(&mut s, now, udp("9.9.9.9:1"), "fresh");
    // One IPv6 /64 is one client, whatever credentials it holds.
    let codes: Vec<Option<u16>> = (1..=5)
        .map(|n| {
            let client = udp(&format!("[2606:4700:1:2::{n}]:1"));
            let creds = login_as(&mut s, now, client, &format!("v6-{n}"));
            try_allocate(&mut s, now, client, &creds)
        })
        .collect();
    assert_eq!(codes, [None, None, None, Some(486), Some(486)]);
    assert_eq!(s.stats().quota_client, 2);
    // Another /64 is another client, until the total runs out.
    let other = udp("[2606:4700:1:3::1]:1");
    let creds = login_as(&mut s, now, other, "v6-other");
    assert_eq!(try_allocate(&mut s, now, other, &creds), None);
    let last = udp("[2606:4700:1:4::1]:1");
    let creds = login_as(&mut s, now, last, "v6-last");
    assert_eq!(try_allocate(&mut s, now, last, &creds), None);
    let over = udp("[2606:4700:1:5::1]:1");
    let creds = login_as(&mut s, now, over, "v6-over");
    assert_eq!(try_allocate(&mut s, now, over, &creds), Some(508));
    assert_eq!(s.stats().quota_total, 1);
}

#[test]
fn credentials_of_ended_sessions_get_no_new_allocation() {
    let mut config = config();
    config.credential_check = Some(std::sync::Arc::new(|username: &str| {
        !username.ends_with(":ended")
    }));
    let mut s = TurnServer::new(config);
    let now = Instant::now();
    allocate_as(&mut s, now, udp("8.8.8.8:1"), "live");
    let client = udp("8.8.8.8:2");
    let creds = login_as(&mut s, now, client, "ended");
    assert_eq!(try_allocate(&mut s, now, client, &creds), Some(403));
    assert_eq!(s.stats().revoked_credentials, 1);
}

#[test]
fn unauthenticated_answers_never_amplify_a_flood() {
    let mut s = TurnServer::new(config());
    let t0 = Instant::now();
    let victim = udp("8.8.8.8:53");
    // The smallest Allocate: a header and REQUESTED-TRANSPORT.
    let probe = {
        let mut e = Encoder::new(method::ALLOCATE, Class::Request, txid(1));
        udp_transport(&mut e);
        e.finish()
    };
    let (mut received, mut sent) = (0, 0);
    for i in 0..20_000u64 {
        let now = t0 + Duration::from_micros(i * 100);
        s.handle_client(now, UNIX, victim, &probe);
        received += probe.len();
        for out in drain(&mut s) {
            if let Output::ToClient { data, .. } = out {
                sent += data.len();
            }
        }
    }
    assert!(sent <= received, "sent {sent} bytes for {received}");
    assert!(s.stats().rate_limited_answers > 19_000);
    // Someone else is answered at once; so is the same address over TCP,
    // which cannot be forged.
    let other = udp("9.9.9.9:5000");
    s.handle_client(t0, UNIX, other, &probe);
    assert_eq!(error_code(&answer(&mut s, other)), Some(401));
    let over_tcp = tcp("8.8.8.8:5000");
    s.handle_client(t0, UNIX, over_tcp, &probe);
    assert_eq!(error_code(&answer(&mut s, over_tcp)), Some(401));
}

#[test]
fn each_allocation_relays_at_most_its_bandwidth() {
    let mut config = config();
    config.max_bps = 8 * 100_000;
    let mut s = TurnServer::new(config);
    let t0 = Instant::now();
    let client = udp("8.8.8.8:1");
    let (id, _, creds) = allocate(&mut s, t0, client);
    let p = peer("198.51.100.7:4000");
    permit(&mut s, t0, client, &creds, &[p]);
    let payload = [0u8; 2000];
    let (mut out, mut inbound) = (0, 0);
    // Two seconds at 400 kB/s each way, against a cap of 100 kB/s.
    for i in 0..400u64 {
        let now = t0 + Duration::from_millis(i * 5);
        s.handle_client(now, UNIX, client, &send_indication(p, &payload));
        s.handle_peer(now, id, p, &payload);
        for o in drain(&mut s) {
            match o {
                Output::ToPeer { data, .. } => out += data.len(),
                Output::ToClient { .. } => inbound += payload.len(),
                _ => {}
            }
        }
    }
    // One second's worth at once, then two seconds at the cap.
    for relayed in [out, inbound] {
        assert!((290_000..=300_000).contains(&relayed), "{relayed}");
    }
    assert!(s.stats().over_bandwidth >= 2 * 250, "{:?}", s.stats());
}
