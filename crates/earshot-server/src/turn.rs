//! The embedded TURN server's sockets: one UDP socket and one TCP listener
//! on the same port for clients, optionally a TLS listener (`turns:`, for
//! networks that let only TLS through), and one UDP relay socket per
//! allocation.
//!
//! All decisions live in `earshot_core::turn`; one driver task owns the
//! sans-IO [`TurnServer`] and the clock, and every other task only moves
//! bytes to and from it over a bounded channel. Invariants:
//! - Nothing waits on a client: sends to clients and peers are `try_`
//!   sends, and a datagram that does not fit a socket buffer or a TCP
//!   connection's bounded queue is dropped, as UDP would drop it. A TCP
//!   client that stops reading is cut off after a write timeout.
//! - Everything is bounded: TCP connections in all and per client (an IPv4
//!   address or an IPv6 /64), frame sizes, queues, allocations (and so
//!   relay sockets). A TCP connection that holds no allocation is closed
//!   after `TCP_NO_ALLOCATION`. TLS connections are TCP connections with a
//!   handshake first: they count against the same caps, and a handshake
//!   that does not finish within `TLS_HANDSHAKE` is cut off.
//! - Nothing logged here names a client or a peer: counts and error kinds
//!   only.
//! - Relay sockets are bound on the listen IP, within `relay_ports`.
//!
//! `streams` holds the TCP and TLS side: the caps, the accept loops, the
//! hand-over from the HTTPS listener (TURN over TLS on the HTTPS port) and
//! the framing of one connection.

mod streams;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use earshot_core::turn::{
    AllocationId, Cidr, CredentialCheck, PeerPolicy, RelayUnavailable, Transport, TurnClient,
    TurnConfig, TurnOutput, TurnServer, TurnStats,
};
use streams::{TcpCaps, accept_tcp, take_handovers};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where and how the embedded TURN server runs.
#[derive(Clone)]
pub struct TurnSettings {
    /// UDP and TCP, on the same port.
    pub listen: SocketAddr,
    /// The relay address given to clients; default: the listen IP (which
    /// must then not be unspecified).
    pub public_ip: Option<IpAddr>,
    /// Relay sockets bind within these ports, on the listen IP.
    pub relay_ports: RangeInclusive<u16>,
    /// The TURN REST shared secret; the signalling server mints credentials
    /// with it (`earshot_core::turn::rest_credentials`).
    pub secret: Vec<u8>,
    pub realm: String,
    pub limits: TurnLimits,
}

impl TurnSettings {
    /// The IANA dynamic port range, coturn's default too.
    pub const DEFAULT_RELAY_PORTS: RangeInclusive<u16> = 49152..=65535;
}

/// Who may be relayed to and how much anyone may take; see the README's
/// "Security" table for the flags.
#[derive(Debug, Clone)]
pub struct TurnLimits {
    /// `--turn-allow-peer`: ranges relayed to although special.
    pub allow_peers: Vec<Cidr>,
    /// `--turn-deny-peer`: ranges never relayed to.
    pub deny_peers: Vec<Cidr>,
    /// The server's other sockets (HTTP, STUN): never relayed to.
    pub services: Vec<SocketAddr>,
    /// Allocations in all, per credential and per client.
    pub max_allocations: usize,
    pub per_credential: usize,
    pub per_client: usize,
    /// Bits a second each allocation relays each way.
    pub max_bps: u64,
    /// TCP connections per client.
    pub tcp_per_client: usize,
}

impl TurnLimits {
    /// Quotas sized for rooms of `room_size`: a member holds one
    /// allocation per peer connection and TURN URL (UDP and TCP), and may
    /// hold twice that across an ICE restart or while a call is prepared.
    pub fn for_room_size(room_size: usize) -> TurnLimits {
        TurnLimits::for_rooms(room_size, false)
    }

    /// [`TurnLimits::for_room_size`], `with_tls` counting a third URL
    /// (`turns:`, a stream connection of its own): browsers allocate on
    /// every URL they are given.
    pub fn for_rooms(room_size: usize, with_tls: bool) -> TurnLimits {
        let urls = if with_tls { 3 } else { 2 };
        let streams = if with_tls { 2 } else { 1 };
        let per_credential = 2 * urls * room_size.saturating_sub(1).max(1);
        TurnLimits {
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            services: Vec::new(),
            max_allocations: 1000,
            per_credential,
            // A household of three, in full rooms.
            per_client: 3 * per_credential,
            max_bps: 4_000_000,
            // One TCP (and one TLS) connection per peer connection, for
            // the household.
            tcp_per_client: 3 * streams * room_size.max(2),
        }
    }
}

impl Default for TurnLimits {
    fn default() -> Self {
        TurnLimits::for_room_size(earshot_core::Config::default().rooms.max_size)
    }
}

/// Aggregate counters for `/metrics`: no label names anyone.
#[derive(Debug, Default)]
pub struct TurnMetrics {
    pub allocations: AtomicU64,
    pub refused_peers: AtomicU64,
    pub quota_credential: AtomicU64,
    pub quota_client: AtomicU64,
    pub quota_total: AtomicU64,
    pub revoked_credentials: AtomicU64,
    pub rate_limited_answers: AtomicU64,
    pub over_bandwidth: AtomicU64,
    pub relay_to_relay: AtomicU64,
    /// TCP (and TLS) connections refused at the per-client cap.
    pub tcp_refused: AtomicU64,
    /// TCP (and TLS) connections closed for holding no allocation.
    pub tcp_idle_closed: AtomicU64,
    /// TLS connections whose handshake failed or took too long.
    pub tls_handshake_failed: AtomicU64,
}

impl TurnMetrics {
    fn publish(&self, stats: TurnStats) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.allocations, stats.allocations as u64);
        set(&self.refused_peers, stats.refused_peers);
        set(&self.quota_credential, stats.quota_credential);
        set(&self.quota_client, stats.quota_client);
        set(&self.quota_total, stats.quota_total);
        set(&self.revoked_credentials, stats.revoked_credentials);
        set(&self.rate_limited_answers, stats.rate_limited_answers);
        set(&self.over_bandwidth, stats.over_bandwidth);
        set(&self.relay_to_relay, stats.relay_to_relay);
    }
}

impl std::fmt::Debug for TurnSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnSettings")
            .field("listen", &self.listen)
            .field("public_ip", &self.public_ip)
            .field("relay_ports", &self.relay_ports)
            .field("secret", &"<redacted>")
            .field("realm", &self.realm)
            .field("limits", &self.limits)
            .finish()
    }
}

/// A TCP connection that holds no allocation for this long is closed: a
/// client allocates within a round trip of its first frame.
const TCP_NO_ALLOCATION: Duration = Duration::from_secs(15);
/// How often TCP connections are checked for that, and counters published.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Peer datagrams are read into buffers this big, one per relay socket;
/// a bigger one is dropped. WebRTC packets stay under ~1500 bytes.
const RELAY_BUFFER: usize = 4096;
/// Events waiting for the driver.
const EVENT_QUEUE: usize = 1024;
/// Bind attempts on ports in use by others before giving up.
const MAX_BIND_FAILURES: usize = 64;

/// Bytes and news for the driver task.
enum Event {
    /// A frame from a TCP or TLS client.
    Client {
        from: TurnClient,
        data: Vec<u8>,
    },
    /// A datagram on a relay socket.
    Peer {
        allocation: AllocationId,
        from: SocketAddr,
        data: Vec<u8>,
    },
    /// A TCP or TLS connection opened; `conn` tells it from a later
    /// connection that happens to reuse its address.
    TcpOpened {
        conn: u64,
        client: TurnClient,
        queue: mpsc::Sender<Vec<u8>>,
    },
    TcpClosed {
        conn: u64,
        client: TurnClient,
    },
}

/// A TLS connection the HTTPS listener took, whose first bytes (`prefix`)
/// were TURN: when TURN over TLS shares the HTTPS port.
pub struct TlsHandover {
    pub stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    pub addr: SocketAddr,
    pub prefix: Vec<u8>,
}

/// Connections handed over at once before more are dropped.
const HANDOVER_QUEUE: usize = 64;

/// The bound sockets of a TURN server that is not serving yet.
pub struct TurnListener {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    /// `turns:`: its listener and the certificate it presents.
    tls: Option<(TcpListener, TlsAcceptor)>,
    /// `turns:` on the HTTPS port: what the HTTPS listener hands over.
    handover: Option<mpsc::Receiver<TlsHandover>>,
    settings: TurnSettings,
    relay_ip: IpAddr,
    credential_check: Option<CredentialCheck>,
    metrics: Arc<TurnMetrics>,
}

impl TurnListener {
    /// Binds UDP and TCP on `settings.listen` (the same port for both, also
    /// when it is 0) and checks the settings.
    pub async fn bind(settings: TurnSettings) -> anyhow::Result<TurnListener> {
        let relay_ip = settings.public_ip.unwrap_or(settings.listen.ip());
        anyhow::ensure!(
            !relay_ip.is_unspecified(),
            "TURN listens on an unspecified address: set the public IP to advertise"
        );
        anyhow::ensure!(
            !settings.relay_ports.is_empty(),
            "the TURN relay port range is empty"
        );
        anyhow::ensure!(
            !settings.secret.is_empty(),
            "the TURN shared secret is empty"
        );
        // With port 0 the TCP port must follow the UDP one, which another
        // program may hold: try a few.
        let mut attempts = 0;
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind(settings.listen)
                .await
                .with_context(|| format!("cannot bind TURN on udp {}", settings.listen))?;
            let addr = udp.local_addr()?;
            match TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, tcp),
                Err(e) if settings.listen.port() == 0 && attempts < 10 => {
                    attempts += 1;
                    tracing::debug!(kind = %e.kind(), "turn: tcp port taken, retrying");
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot listen for TURN on tcp {addr}"));
                }
            }
        };
        Ok(TurnListener {
            udp: Arc::new(udp),
            tcp,
            tls: None,
            handover: None,
            settings,
            relay_ip,
            credential_check: None,
            metrics: Arc::default(),
        })
    }

    /// Also serves TURN over TLS on `listen` (port 0 picks a free one),
    /// presenting `acceptor`'s certificate.
    pub async fn with_tls(
        mut self,
        listen: SocketAddr,
        acceptor: TlsAcceptor,
    ) -> anyhow::Result<TurnListener> {
        let tcp = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen for TURN over TLS on tcp {listen}"))?;
        self.tls = Some((tcp, acceptor));
        Ok(self)
    }

    /// Also serves TURN over TLS on connections the HTTPS listener hands
    /// over through the returned sender (see [`TlsHandover`]): TURN over
    /// TLS on the HTTPS port.
    pub fn with_handover(&mut self) -> mpsc::Sender<TlsHandover> {
        let (tx, rx) = mpsc::channel(HANDOVER_QUEUE);
        self.handover = Some(rx);
        tx
    }

    /// New allocations only for usernames `check` accepts (the signalling
    /// sessions of this process that are live and not banned).
    pub fn with_credential_check(mut self, check: CredentialCheck) -> TurnListener {
        self.credential_check = Some(check);
        self
    }

    /// Counters, updated about once a second while serving.
    pub fn metrics(&self) -> Arc<TurnMetrics> {
        self.metrics.clone()
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// The bound TLS address, if TURN over TLS is on.
    pub fn tls_addr(&self) -> io::Result<Option<SocketAddr>> {
        self.tls.as_ref().map(|(l, _)| l.local_addr()).transpose()
    }

    /// Serves until `shutdown` is cancelled, then waits for its tasks.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut nonce_key = [0u8; 32];
        getrandom::fill(&mut nonce_key).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
        let mut config = TurnConfig::new(
            self.settings.realm.clone(),
            self.settings.secret.clone(),
            nonce_key,
            self.relay_ip,
        );
        let limits = &self.settings.limits;
        let listen = self.udp.local_addr()?;
        let tls_listen = self.tls_addr()?;
        config.policy = PeerPolicy::new(self.relay_ip)
            .allow(limits.allow_peers.iter().copied())
            .deny(limits.deny_peers.iter().copied())
            .own_services(
                limits
                    .services
                    .iter()
                    .copied()
                    .chain([listen])
                    .chain(tls_listen),
            )
            .own_ip(self.relay_ip);
        // One relay socket per allocation: no more than there are ports.
        config.max_allocations = limits.max_allocations.min(self.settings.relay_ports.len());
        config.max_allocations_per_credential = limits.per_credential;
        config.max_allocations_per_client = limits.per_client;
        config.max_bps = limits.max_bps;
        config.credential_check = self.credential_check;
        let tracker = TaskTracker::new();
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        // TCP and TLS share the caps: both are streams from the same clients.
        let caps = Arc::new(TcpCaps::new(limits.tcp_per_client, self.metrics.clone()));
        if let Some(handover) = self.handover {
            tracker.spawn(take_handovers(
                handover,
                caps.clone(),
                events_tx.clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        let listeners = std::iter::once((self.tcp, None))
            .chain(self.tls.map(|(tcp, acceptor)| (tcp, Some(acceptor))));
        for (listener, tls) in listeners {
            tracker.spawn(accept_tcp(
                listener,
                tls,
                caps.clone(),
                events_tx.clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        let driver = Driver {
            turn: TurnServer::new(config),
            udp: self.udp,
            listen_ip: self.settings.listen.ip(),
            relay_ports: self.settings.relay_ports.clone(),
            tcp: HashMap::new(),
            relays: HashMap::new(),
            ports_in_use: HashSet::new(),
            events_tx,
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            counts: Counts::default(),
            metrics: self.metrics.clone(),
        };
        driver.run(events).await;
        tracker.close();
        tracker.wait().await;
        Ok(())
    }
}

/// Binds and serves until `shutdown`; see [`TurnListener`] to learn the
/// bound port first.
pub async fn serve(settings: TurnSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    TurnListener::bind(settings).await?.serve(shutdown).await
}

/// Tallies for the shutdown log line; counts, never addresses.
#[derive(Debug, Default)]
struct Counts {
    send_drops: u64,
    recv_errors: u64,
    relay_bind_failures: u64,
}

struct Relay {
    socket: Arc<UdpSocket>,
    port: u16,
    stop: CancellationToken,
}

struct Driver {
    turn: TurnServer,
    udp: Arc<UdpSocket>,
    listen_ip: IpAddr,
    relay_ports: RangeInclusive<u16>,
    /// TCP and TLS clients by transport and address.
    tcp: HashMap<TurnClient, TcpClient>,
    relays: HashMap<AllocationId, Relay>,
    ports_in_use: HashSet<u16>,
    events_tx: mpsc::Sender<Event>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    counts: Counts,
    metrics: Arc<TurnMetrics>,
}

struct TcpClient {
    /// Tells this connection from a later one that reuses its address.
    conn: u64,
    /// Dropping it ends the connection.
    queue: mpsc::Sender<Vec<u8>>,
    /// Since when it has held no allocation, if it holds none.
    bare_since: Option<Instant>,
}

impl Driver {
    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        // Bigger than any UDP payload, so nothing arrives truncated.
        let mut buf = vec![0u8; 65_536];
        let udp = self.udp.clone();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.turn.poll_timeout().map(tokio::time::Instant::from_std);
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = timer => self.turn.handle_timeout(Instant::now()),
                _ = sweep.tick() => self.sweep(Instant::now()),
                received = udp.recv_from(&mut buf) => match received {
                    Ok((n, from)) => {
                        let from = TurnClient { transport: Transport::Udp, addr: from };
                        self.turn.handle_client(Instant::now(), unix_now(), from, &buf[..n]);
                    }
                    Err(e) => {
                        // ICMP errors for earlier sends surface here on Linux.
                        self.counts.recv_errors += 1;
                        tracing::debug!(kind = %e.kind(), "turn: udp receive failed");
                    }
                },
                Some(event) = events.recv() => self.handle(event),
            }
            self.carry_out();
        }
        for relay in self.relays.values() {
            relay.stop.cancel();
        }
        self.metrics.publish(self.turn.stats());
        tracing::debug!(stats = ?self.turn.stats(), counts = ?self.counts, "turn: stopped");
    }

    fn handle(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Client { from, data } => {
                self.turn.handle_client(now, unix_now(), from, &data);
            }
            Event::Peer {
                allocation,
                from,
                data,
            } => self.turn.handle_peer(now, allocation, from, &data),
            Event::TcpOpened {
                conn,
                client,
                queue,
            } => {
                let state = TcpClient {
                    conn,
                    queue,
                    bare_since: Some(now),
                };
                self.tcp.insert(client, state);
            }
            Event::TcpClosed { conn, client } => {
                if self.tcp.get(&client).is_some_and(|c| c.conn == conn) {
                    self.tcp.remove(&client);
                    self.turn.client_closed(client);
                }
            }
        }
    }

    /// Does what the core asked, until it asks nothing more.
    fn carry_out(&mut self) {
        while let Some(out) = self.turn.poll_output() {
            match out {
                TurnOutput::ToClient { client, data } => {
                    let sent = match client.transport {
                        Transport::Udp => self.udp.try_send_to(&data, client.addr).is_ok(),
                        Transport::Tcp | Transport::Tls => self
                            .tcp
                            .get(&client)
                            .is_some_and(|c| c.queue.try_send(data).is_ok()),
                    };
                    if !sent {
                        self.counts.send_drops += 1;
                    }
                }
                TurnOutput::ToPeer {
                    allocation,
                    peer,
                    data,
                } => {
                    let peer = for_socket(self.listen_ip, peer);
                    let sent = self
                        .relays
                        .get(&allocation)
                        .is_some_and(|r| r.socket.try_send_to(&data, peer).is_ok());
                    if !sent {
                        self.counts.send_drops += 1;
                    }
                }
                TurnOutput::BindRelay {
                    allocation,
                    even_port,
                } => {
                    let port = self
                        .bind_relay(allocation, even_port)
                        .ok_or(RelayUnavailable);
                    self.turn.relay_bound(allocation, port);
                }
                TurnOutput::ReleaseRelay { allocation } => {
                    if let Some(relay) = self.relays.remove(&allocation) {
                        relay.stop.cancel();
                        self.ports_in_use.remove(&relay.port);
                    }
                }
            }
        }
    }

    /// Closes TCP connections that have held no allocation for
    /// `TCP_NO_ALLOCATION`, and publishes the counters.
    fn sweep(&mut self, now: Instant) {
        let turn = &mut self.turn;
        let mut closed = Vec::new();
        for (&client, c) in &mut self.tcp {
            if turn.has_allocation(client) {
                c.bare_since = None;
            } else if let Some(since) = c.bare_since {
                if now.saturating_duration_since(since) >= TCP_NO_ALLOCATION {
                    closed.push(client);
                }
            } else {
                c.bare_since = Some(now);
            }
        }
        for client in closed {
            // Dropping the queue ends the connection's writer, and so it.
            self.tcp.remove(&client);
            self.metrics.tcp_idle_closed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("turn: tcp connection closed: no allocation");
        }
        self.metrics.publish(self.turn.stats());
    }

    /// Binds a relay socket on a free port of the range, starting at a
    /// random one, and starts its reader.
    fn bind_relay(&mut self, allocation: AllocationId, even_port: bool) -> Option<u16> {
        let (first, last) = (*self.relay_ports.start(), *self.relay_ports.end());
        let span = u32::from(last - first) + 1;
        let mut start = [0u8; 4];
        getrandom::fill(&mut start).ok()?;
        let start = u32::from_le_bytes(start) % span;
        let mut failures = 0;
        for i in 0..span {
            // In the range by construction: first + (x mod span) <= last.
            let port =
                first + u16::try_from((start + i) % span).expect("offset within a u16 range");
            if self.ports_in_use.contains(&port) || (even_port && port % 2 == 1) {
                continue;
            }
            match bind_udp(SocketAddr::new(self.listen_ip, port)) {
                Ok(socket) => {
                    let socket = Arc::new(socket);
                    let stop = self.shutdown.child_token();
                    self.tracker.spawn(read_relay(
                        socket.clone(),
                        allocation,
                        self.events_tx.clone(),
                        stop.clone(),
                    ));
                    self.ports_in_use.insert(port);
                    self.relays.insert(allocation, Relay { socket, port, stop });
                    return Some(port);
                }
                Err(e) => {
                    self.counts.relay_bind_failures += 1;
                    failures += 1;
                    if failures >= MAX_BIND_FAILURES || e.kind() != io::ErrorKind::AddrInUse {
                        tracing::warn!(kind = %e.kind(), "turn: cannot bind a relay socket");
                        return None;
                    }
                }
            }
        }
        tracing::warn!("turn: every relay port is in use");
        None
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// A relay socket bound on an IPv6 address (`::`, dual-stack) reaches IPv4
/// peers at their mapped address.
fn for_socket(relay_ip: IpAddr, peer: SocketAddr) -> SocketAddr {
    match (relay_ip, peer) {
        (IpAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        _ => peer,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads peer datagrams on one relay socket until its allocation ends.
async fn read_relay(
    socket: Arc<UdpSocket>,
    allocation: AllocationId,
    events: mpsc::Sender<Event>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            received = socket.recv_from(&mut buf) => received,
        };
        let Ok((n, from)) = received else {
            // ICMP errors for earlier sends; the socket itself is fine.
            continue;
        };
        if n == buf.len() {
            // Possibly truncated: relaying it would corrupt it.
            continue;
        }
        let event = Event::Peer {
            allocation,
            from,
            data: buf[..n].to_vec(),
        };
        tokio::select! {
            () = stop.cancelled() => return,
            sent = events.send(event) => if sent.is_err() { return },
        }
    }
}
