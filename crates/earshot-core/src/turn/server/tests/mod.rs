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

mod allocations;
mod exposure;
mod properties;
mod relay;
