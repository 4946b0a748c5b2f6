//! Exposure: special peers, relay-to-relay hand-over, one credential from
//! many addresses, ended sessions, amplification and bandwidth.

use super::*;

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
