//! Allocating: the 401 dance, credentials, transports and families,
//! lifetimes, quotas, relay ports, and what `Debug` shows.

use super::*;

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
