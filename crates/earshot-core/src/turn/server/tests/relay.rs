//! Relaying: permissions both ways, refused peers, channels over UDP and
//! TCP.

use super::*;

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
