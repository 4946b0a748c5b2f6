//! Property tests: arbitrary and mutated input never panics, and random
//! sequences keep the server's invariants.

use super::*;

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
