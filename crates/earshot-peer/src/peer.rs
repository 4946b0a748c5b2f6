//! The peer: one signalling WebSocket, one UDP socket, and the WebRTC
//! connections the server's messages call for, driven by one tokio task.
//!
//! [`Peer`] is the handle: commands go to the task over a channel, events
//! come back over another. The task owns everything else and is the only
//! place that reads the clock for str0m; it ends when the handle is dropped
//! or [`Peer::close`] is called.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use earshot_core::pow;
use earshot_core::protocol::{
    CallId, ErrorCode, PeerId, ReportReason, RoomSignal, ServerMsg, SessionDescription, Signal,
    SignalPayload,
};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::audio::{self, Source};
use crate::conn::{Conn, ConnEvent, ConnStats};
use crate::roomcrypto::RoomKeys;
use crate::wire::{self, Payload, Target};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long `connect` waits for the server's `welcome`.
const HANDSHAKE: Duration = Duration::from_secs(15);
/// One Opus frame.
const FRAME: Duration = Duration::from_millis(20);
/// Datagrams no connection claims yet are kept this long, this many at most.
const UNROUTED_FOR: Duration = Duration::from_secs(2);
const UNROUTED: usize = 32;

/// How a peer sends and what it keeps.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The UDP address to bind; its IP is the one host candidate offered,
    /// so it must be one the other side can reach (not 0.0.0.0).
    pub bind: SocketAddr,
    /// What to send as the microphone.
    pub source: Source,
    /// Keep the decoded audio of the first remote, for [`Peer::recording`].
    pub record: bool,
}

impl Default for PeerConfig {
    fn default() -> PeerConfig {
        PeerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            source: Source::Tone(440.0),
            record: false,
        }
    }
}

/// Why a peer could not start or do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The URL is not an `http(s)://` or `ws(s)://` URL this peer can use.
    #[error("bad server URL {0:?}: {1}")]
    BadUrl(String, &'static str),
    /// No WebSocket connection to the server.
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// The server refused us (an `error` during the handshake).
    #[error("the server said {code}: {message}")]
    Refused { code: String, message: String },
    /// The server closed the connection or stopped answering.
    #[error("the server closed the connection ({0})")]
    Closed(String),
    /// The UDP socket for WebRTC.
    #[error("cannot bind the UDP socket: {0}")]
    Bind(std::io::Error),
    /// [`Peer::wait_for`] saw no such event in time.
    #[error("no {0} within {1:?}")]
    Timeout(String, Duration),
    /// A room command before [`Peer::join_room`].
    #[error("not in a room")]
    NotInRoom,
    /// The peer's task has ended.
    #[error("the peer has stopped")]
    Stopped,
}

/// Something that happened, in order. Serialized as one JSON object with an
/// `event` field for `earshot-peer --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PeerEvent {
    Searching {
        interests: Vec<String>,
    },
    Matched {
        call: CallId,
        polite: bool,
        interests: Vec<String>,
        country: Option<String>,
    },
    RoomJoined {
        peer: PeerId,
        peers: Vec<PeerId>,
        locked: bool,
    },
    PeerJoined {
        peer: PeerId,
    },
    PeerLeft {
        peer: PeerId,
    },
    LockState {
        locked: bool,
    },
    RoomSuggestion {
        name: String,
    },
    /// ICE and DTLS are up with this remote.
    Connected {
        remote: Target,
    },
    /// The first audio packet from this remote, so long after the connection was made.
    AudioStarted {
        remote: Target,
        after_ms: u64,
    },
    ChatOpen {
        remote: Target,
    },
    Chat {
        remote: Target,
        text: String,
    },
    /// The safety words of the connection to this remote (PROTOCOL.md).
    SafetyWords {
        remote: Target,
        words: Vec<String>,
    },
    /// No safety words with this remote: the exchange failed or never
    /// finished (`mismatch`, `timeout`, `protocol`, `same_fingerprint`).
    SafetyWarning {
        remote: Target,
        reason: &'static str,
    },
    /// The connection to this remote ended (left, failed or closed).
    ConnectionClosed {
        remote: Target,
    },
    /// A room member who could not prove it knows the passphrase.
    Refused {
        remote: Target,
        reason: &'static str,
    },
    CallEnded {
        call: CallId,
        reason: String,
    },
    Idle,
    Error {
        code: String,
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// The signalling WebSocket closed; connections already made go on.
    Disconnected,
}

/// What the peer measured: one entry per connection, current and ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerStats {
    pub country: Option<String>,
    pub connections: Vec<ConnStats>,
    /// Every `candidate` this peer offered (addresses: for tests, not printed).
    #[serde(skip)]
    pub offered_candidates: Vec<String>,
}

enum Cmd {
    Send(String),
    Search(Vec<String>),
    JoinRoom(String, Option<RoomKeys>),
    Lock(RoomKeys),
    Chat(String, oneshot::Sender<usize>),
    Leave(String),
    PeerStats(oneshot::Sender<PeerStats>),
    Recording(oneshot::Sender<Option<Vec<i16>>>),
}

/// A running peer. Dropping it stops it.
pub struct Peer {
    cmds: mpsc::UnboundedSender<Cmd>,
    events: mpsc::UnboundedReceiver<PeerEvent>,
    /// Events [`Peer::wait_for`] passed over.
    backlog: std::collections::VecDeque<PeerEvent>,
    country: Option<String>,
    local: SocketAddr,
    room: Option<String>,
}

impl Peer {
    /// Connects to an Earshot server (`http://host:port/` or `ws://host:port/ws`),
    /// says hello (solving proof of work if asked) and binds the UDP socket.
    pub async fn connect(url: &str, config: PeerConfig) -> Result<Peer, PeerError> {
        let ws_url = ws_url(url)?;
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .map_err(|e| PeerError::Unreachable(e.to_string()))?;
        let country = tokio::time::timeout(HANDSHAKE, handshake(&mut ws))
            .await
            .map_err(|_| PeerError::Closed("no welcome within 15 s".into()))??;
        let socket = UdpSocket::bind(config.bind)
            .await
            .map_err(PeerError::Bind)?;
        let local = socket.local_addr().map_err(PeerError::Bind)?;
        let sender = audio::Sender::new(config.source)
            .map_err(|e| PeerError::Bind(std::io::Error::other(e)))?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            ws: Some(ws),
            socket,
            local,
            cmds: cmd_rx,
            events: ev_tx,
            conns: BTreeMap::new(),
            unrouted: Default::default(),
            finished: Vec::new(),
            offered: Vec::new(),
            sender,
            record: config.record,
            recording: None,
            call: None,
            room: None,
            country: country.clone(),
            next_frame: Instant::now() + FRAME,
        };
        tokio::spawn(driver.run());
        Ok(Peer {
            cmds: cmd_tx,
            events: ev_rx,
            backlog: Default::default(),
            country,
            local,
            room: None,
        })
    }

    /// Our own approximate country, as the server told us.
    pub fn country(&self) -> Option<&str> {
        self.country.as_deref()
    }

    /// The UDP address WebRTC uses.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn cmd(&self, c: Cmd) -> Result<(), PeerError> {
        self.cmds.send(c).map_err(|_| PeerError::Stopped)
    }

    /// Joins the stranger queue.
    pub fn search(&self, interests: &[&str]) -> Result<(), PeerError> {
        self.cmd(Cmd::Search(
            interests.iter().map(|s| s.to_string()).collect(),
        ))
    }

    /// Joins a room, with the passphrase if it is (or may be) locked. The
    /// keys are derived first (PBKDF2: a second or so).
    pub async fn join_room(
        &mut self,
        name: &str,
        passphrase: Option<&str>,
    ) -> Result<(), PeerError> {
        let room = name.trim().to_lowercase();
        let keys = match passphrase {
            Some(p) => Some(derive(p, &room).await?),
            None => None,
        };
        self.room = Some(room.clone());
        self.cmd(Cmd::JoinRoom(room, keys))
    }

    /// Locks the room we are in with this passphrase (or re-locks it: members
    /// who already know the passphrase call this too, so that they can check
    /// newcomers).
    pub async fn lock_room(&self, passphrase: &str) -> Result<(), PeerError> {
        let room = self.room.clone().ok_or(PeerError::NotInRoom)?;
        let keys = derive(passphrase, &room).await?;
        self.cmd(Cmd::Lock(keys))
    }

    pub fn unlock_room(&self) -> Result<(), PeerError> {
        self.cmd(Cmd::Send(wire::bare("room_unlock")))
    }

    /// Asks for a room name (answered by [`PeerEvent::RoomSuggestion`]).
    pub fn suggest_room(&self) -> Result<(), PeerError> {
        self.cmd(Cmd::Send(wire::bare("room_suggest")))
    }

    /// Sends a chat line to everyone we are connected to; how many got it.
    pub async fn send_chat(&self, text: &str) -> Result<usize, PeerError> {
        let (tx, rx) = oneshot::channel();
        self.cmd(Cmd::Chat(text.to_string(), tx))?;
        rx.await.map_err(|_| PeerError::Stopped)
    }

    /// Ends the stranger call and searches again.
    pub fn skip(&self) -> Result<(), PeerError> {
        self.cmd(Cmd::Leave(wire::bare("skip")))
    }

    /// Leaves the call, queue or room.
    pub fn end(&self) -> Result<(), PeerError> {
        self.cmd(Cmd::Leave(wire::bare("end")))
    }

    /// Reports the stranger partner (and ends the call).
    pub fn report(&self, reason: Option<ReportReason>) -> Result<(), PeerError> {
        self.cmd(Cmd::Leave(wire::report(reason)))
    }

    /// The next event; `None` once the peer has stopped.
    pub async fn next_event(&mut self) -> Option<PeerEvent> {
        match self.backlog.pop_front() {
            Some(e) => Some(e),
            None => self.events.recv().await,
        }
    }

    /// Waits up to `limit` for the first event that `want` picks (taking it);
    /// the others stay, in order, for later calls. An error naming `what`
    /// when none came.
    pub async fn wait_for<T>(
        &mut self,
        limit: Duration,
        what: &str,
        mut want: impl FnMut(&PeerEvent) -> Option<T>,
    ) -> Result<T, PeerError> {
        if let Some((i, t)) = self
            .backlog
            .iter()
            .enumerate()
            .find_map(|(i, e)| want(e).map(|t| (i, t)))
        {
            self.backlog.remove(i);
            return Ok(t);
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => {
                    if let Some(t) = want(&e) {
                        return Ok(t);
                    }
                    // Bounded: a peer makes a handful of events per second.
                    if self.backlog.len() < 10_000 {
                        self.backlog.push_back(e);
                    }
                }
                Ok(None) => return Err(PeerError::Stopped),
                Err(_) => return Err(PeerError::Timeout(what.to_string(), limit)),
            }
        }
    }

    /// What the peer has measured so far.
    pub async fn stats(&self) -> Result<PeerStats, PeerError> {
        let (tx, rx) = oneshot::channel();
        self.cmd(Cmd::PeerStats(tx))?;
        rx.await.map_err(|_| PeerError::Stopped)
    }

    /// The decoded audio of the first remote (48 kHz mono), if recording.
    pub async fn recording(&self) -> Result<Option<Vec<i16>>, PeerError> {
        let (tx, rx) = oneshot::channel();
        self.cmd(Cmd::Recording(tx))?;
        rx.await.map_err(|_| PeerError::Stopped)
    }
}

async fn derive(passphrase: &str, room: &str) -> Result<RoomKeys, PeerError> {
    let (p, r) = (passphrase.to_string(), room.to_string());
    tokio::task::spawn_blocking(move || RoomKeys::derive(&p, &r))
        .await
        .map_err(|_| PeerError::Stopped)
}

/// `ws://host:port/ws` from an `http://`, `https://`, `ws://` or `wss://` base URL.
pub fn ws_url(url: &str) -> Result<String, PeerError> {
    let bad = |why| PeerError::BadUrl(url.to_string(), why);
    let (scheme, rest) = url.split_once("://").ok_or(bad("no scheme"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => return Err(bad("TLS (https/wss) is not supported by earshot-peer yet")),
        _ => return Err(bad("the scheme must be http or ws")),
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let path = path.trim_end_matches('/');
    let path = if path.is_empty() || !path.ends_with("ws") {
        format!("{path}/ws").trim_start_matches('/').to_string()
    } else {
        path.to_string()
    };
    Ok(format!("{scheme}://{host}/{path}"))
}

/// `hello` → `welcome` (with proof of work on a `challenge`): our country.
async fn handshake(ws: &mut Ws) -> Result<Option<String>, PeerError> {
    send(ws, wire::hello(None)).await?;
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Close(f))) => {
                return Err(PeerError::Closed(
                    f.map(|f| format!("{} {}", f.code, f.reason))
                        .unwrap_or_else(|| "no reason".into()),
                ));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(PeerError::Closed(e.to_string())),
            None => return Err(PeerError::Closed("end of stream".into())),
        };
        match ServerMsg::from_json(&text) {
            Ok(ServerMsg::Welcome { country, .. }) => {
                return Ok(country.map(|c| c.as_str().to_string()));
            }
            Ok(ServerMsg::Challenge {
                salt,
                challenge,
                maxnumber,
                signature,
                ..
            }) => {
                let c = pow::Challenge {
                    salt,
                    challenge,
                    maxnumber,
                    signature,
                };
                let solution = tokio::task::spawn_blocking(move || wire::solve(&c))
                    .await
                    .map_err(|_| PeerError::Stopped)?
                    .ok_or_else(|| PeerError::Closed("unsolvable proof of work".into()))?;
                send(ws, wire::hello(Some(&solution))).await?;
            }
            // A wrong solution is followed by a fresh challenge.
            Ok(ServerMsg::Error {
                code: ErrorCode::PowInvalid,
                ..
            }) => {}
            Ok(ServerMsg::Error { code, message, .. }) => {
                return Err(PeerError::Refused {
                    code: code.as_str().to_string(),
                    message: message.into_owned(),
                });
            }
            _ => {}
        }
    }
}

async fn send(ws: &mut Ws, text: String) -> Result<(), PeerError> {
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| PeerError::Closed(e.to_string()))
}

struct Room {
    name: String,
    locked: bool,
    keys: Option<RoomKeys>,
}

struct Driver {
    ws: Option<Ws>,
    socket: UdpSocket,
    local: SocketAddr,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<PeerEvent>,
    conns: BTreeMap<Target, Entry>,
    unrouted: std::collections::VecDeque<(Instant, SocketAddr, Vec<u8>)>,
    finished: Vec<ConnStats>,
    offered: Vec<String>,
    sender: audio::Sender,
    record: bool,
    recording: Option<Vec<i16>>,
    call: Option<CallId>,
    room: Option<Room>,
    country: Option<String>,
    next_frame: Instant,
}

struct Entry {
    conn: Conn,
    /// Descriptions from this remote must carry a valid `auth` (locked room).
    require_auth: bool,
}

impl Driver {
    async fn run(mut self) {
        let mut buf = vec![0u8; 2000];
        loop {
            self.poll_conns().await;
            let now = Instant::now();
            let mut deadline = now + Duration::from_secs(1);
            for e in self.conns.values() {
                deadline = deadline.min(e.conn.timeout());
            }
            if self.conns.values().any(|e| e.conn.stats.connected) {
                deadline = deadline.min(self.next_frame);
            } else {
                self.next_frame = now + FRAME;
            }
            let ws_open = self.ws.is_some();
            tokio::select! {
                msg = async { self.ws.as_mut().expect("guarded by ws_open").next().await }, if ws_open => {
                    self.on_ws(msg).await;
                }
                cmd = self.cmds.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd).await,
                    None => break,
                },
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, source)) = r {
                        let now = Instant::now();
                        let data = &buf[..n];
                        if !self.route(now, source, data) && self.unrouted.len() < UNROUTED {
                            self.unrouted.push_back((now, source, data.to_vec()));
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            let now = Instant::now();
            self.retry_unrouted(now);
            for e in self.conns.values_mut() {
                e.conn.handle_timeout(now);
            }
            if now >= self.next_frame && self.conns.values().any(|e| e.conn.stats.connected) {
                let packet = self.sender.next_packet();
                for e in self.conns.values_mut() {
                    e.conn.send_audio(now, &packet);
                }
                self.next_frame += FRAME;
                // After a stall, start afresh rather than send a burst.
                if self.next_frame + FRAME * 5 < now {
                    self.next_frame = now + FRAME;
                }
            }
        }
        for e in self.conns.values_mut() {
            e.conn.close();
        }
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
    }

    /// Hands a datagram to the connection it is for; false when none
    /// claims it (yet).
    fn route(&mut self, now: Instant, source: SocketAddr, data: &[u8]) -> bool {
        match self
            .conns
            .values_mut()
            .find(|e| e.conn.accepts(now, source, data))
        {
            Some(e) => {
                e.conn.handle_datagram(now, source, data);
                true
            }
            None => false,
        }
    }

    /// A remote's first DTLS flight can come before its candidate (trickled
    /// through the server) or before ICE has a pair for it; dropped, it
    /// would only be resent a second later. Held briefly, it is handed over
    /// as soon as a connection claims it.
    fn retry_unrouted(&mut self, now: Instant) {
        for _ in 0..self.unrouted.len() {
            let Some((at, source, data)) = self.unrouted.pop_front() else {
                break;
            };
            if !self.route(now, source, &data) && now - at < UNROUTED_FOR {
                self.unrouted.push_back((at, source, data));
            }
        }
    }

    fn emit(&self, e: PeerEvent) {
        let _ = self.events.send(e);
    }

    async fn send(&mut self, text: String) {
        if let Some(ws) = self.ws.as_mut()
            && send(ws, text).await.is_err()
        {
            self.ws = None;
            self.emit(PeerEvent::Disconnected);
        }
    }

    /// Runs every connection's outputs: datagrams out, events handled.
    async fn poll_conns(&mut self) {
        let mut happened = Vec::new();
        for (remote, e) in self.conns.iter_mut() {
            let socket = &self.socket;
            let events = e.conn.poll(|to, data| {
                // Like any UDP sender: a full buffer drops the datagram.
                let _ = socket.try_send_to(data, to);
            });
            happened.extend(events.into_iter().map(|ev| (*remote, ev)));
        }
        for (remote, ev) in happened {
            self.on_conn_event(remote, ev).await;
        }
        let dead: Vec<Target> = self
            .conns
            .iter()
            .filter(|(_, e)| e.conn.is_dead())
            .map(|(r, _)| *r)
            .collect();
        for r in dead {
            self.drop_conn(r);
        }
    }

    async fn on_conn_event(&mut self, remote: Target, ev: ConnEvent) {
        match ev {
            ConnEvent::Description(d) => self.send_description(remote, &d).await,
            ConnEvent::Connected => self.emit(PeerEvent::Connected { remote }),
            ConnEvent::AudioStarted(after) => self.emit(PeerEvent::AudioStarted {
                remote,
                after_ms: after.as_millis().try_into().unwrap_or(u64::MAX),
            }),
            ConnEvent::ChatOpen => self.emit(PeerEvent::ChatOpen { remote }),
            ConnEvent::Chat(text) => self.emit(PeerEvent::Chat { remote, text }),
            ConnEvent::SafetyWords(w) => self.emit(PeerEvent::SafetyWords {
                remote,
                words: w.iter().map(|s| s.to_string()).collect(),
            }),
            ConnEvent::SafetyWarning(w) => self.emit(PeerEvent::SafetyWarning {
                remote,
                reason: w.as_str(),
            }),
            ConnEvent::Closed => {}
        }
    }

    async fn send_description(&mut self, remote: Target, d: &SessionDescription) {
        self.offered.extend(
            d.sdp
                .lines()
                .filter_map(|l| l.strip_prefix("a="))
                .filter(|l| l.starts_with("candidate:"))
                .map(str::to_string),
        );
        let auth = match (remote, &self.room) {
            (Target::Peer(_), Some(Room { keys: Some(k), .. })) => Some(k.sign(&d.sdp)),
            _ => None,
        };
        self.send(wire::signal(
            remote,
            Payload::Description(d),
            auth.as_deref(),
        ))
        .await;
    }

    fn drop_conn(&mut self, remote: Target) {
        if let Some(mut e) = self.conns.remove(&remote) {
            e.conn.close();
            if self.recording.is_none() {
                self.recording = e.conn.take_recording();
            }
            self.finished.push(e.conn.snapshot());
            self.emit(PeerEvent::ConnectionClosed { remote });
        }
    }

    fn drop_all(&mut self) {
        let all: Vec<Target> = self.conns.keys().copied().collect();
        for r in all {
            self.drop_conn(r);
        }
    }

    async fn open(&mut self, remote: Target, polite: bool, require_auth: bool) {
        self.drop_conn(remote);
        // Record only the first remote: a recording is one voice.
        let record = self.record && self.recording.is_none() && self.conns.is_empty();
        match Conn::new(remote, polite, self.local, record, Instant::now()) {
            Ok((conn, events)) => {
                self.conns.insert(remote, Entry { conn, require_auth });
                for ev in events {
                    self.on_conn_event(remote, ev).await;
                }
            }
            Err(e) => self.emit(PeerEvent::Error {
                code: "local".into(),
                message: format!("cannot start a WebRTC connection: {e}"),
                retry_after_ms: None,
            }),
        }
    }

    fn room_requires_auth(&self) -> bool {
        self.room
            .as_ref()
            .is_some_and(|r| r.locked || r.keys.is_some())
    }

    async fn on_ws(&mut self, msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) {
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                // The calls go on without signalling (PROTOCOL.md, "Peer to peer").
                self.ws = None;
                self.emit(PeerEvent::Disconnected);
                return;
            }
            Some(Ok(_)) => return,
        };
        let Ok(msg) = ServerMsg::from_json(&text) else {
            return;
        };
        match msg {
            ServerMsg::Searching { interests } => {
                self.drop_call();
                self.emit(PeerEvent::Searching { interests });
            }
            ServerMsg::Matched {
                call,
                polite,
                interests,
                country,
            } => {
                self.drop_call();
                self.call = Some(call);
                self.emit(PeerEvent::Matched {
                    call,
                    polite,
                    interests,
                    country: country.map(|c| c.as_str().to_string()),
                });
                self.open(Target::Call(call), polite, false).await;
            }
            ServerMsg::Signal(Signal { call, payload }) => {
                if self.call == Some(call) {
                    self.on_signal(Target::Call(call), payload, None).await;
                }
            }
            ServerMsg::RoomSignal(RoomSignal {
                from: Some(peer),
                payload,
                auth,
                ..
            }) => {
                if self.room.is_some() {
                    self.on_signal(Target::Peer(peer), payload, auth).await;
                }
            }
            ServerMsg::CallEnded { call, reason } => {
                self.drop_call();
                self.emit(PeerEvent::CallEnded {
                    call,
                    reason: reason.as_str().to_string(),
                });
            }
            ServerMsg::Idle => {
                self.drop_call();
                self.room = None;
                self.drop_all();
                self.emit(PeerEvent::Idle);
            }
            ServerMsg::RoomJoined { .. }
            | ServerMsg::PeerJoined { .. }
            | ServerMsg::PeerLeft { .. }
            | ServerMsg::RoomLockState { .. } => self.on_room(msg).await,
            ServerMsg::RoomSuggestion { name } => self.emit(PeerEvent::RoomSuggestion { name }),
            ServerMsg::Error {
                code,
                message,
                retry_after_ms,
                ..
            } => {
                if matches!(
                    code,
                    ErrorCode::PassphraseRequired
                        | ErrorCode::WrongPassphrase
                        | ErrorCode::RoomFull
                        | ErrorCode::BadRoomName
                ) {
                    self.room = None;
                }
                self.emit(PeerEvent::Error {
                    code: code.as_str().to_string(),
                    message: message.into_owned(),
                    retry_after_ms,
                });
            }
            // A room signal with no sender is not for a client.
            ServerMsg::RoomSignal(_)
            | ServerMsg::Welcome { .. }
            | ServerMsg::IceServers { .. }
            | ServerMsg::Challenge { .. } => {}
        }
    }

    /// The room's news: joined, members coming and going, the lock.
    async fn on_room(&mut self, msg: ServerMsg) {
        match msg {
            ServerMsg::RoomJoined {
                room,
                peer,
                peers,
                locked,
                ..
            } => {
                if let Some(r) = self.room.as_mut() {
                    r.name = room;
                    r.locked = locked;
                }
                let require = self.room_requires_auth();
                if self.room.is_none() {
                    return;
                }
                // We joined last: impolite towards everyone, we offer.
                for &p in &peers {
                    self.open(Target::Peer(p), false, require).await;
                }
                self.emit(PeerEvent::RoomJoined {
                    peer,
                    peers,
                    locked,
                });
            }
            ServerMsg::PeerJoined { peer } => {
                let require = self.room_requires_auth();
                self.open(Target::Peer(peer), true, require).await;
                self.emit(PeerEvent::PeerJoined { peer });
            }
            ServerMsg::PeerLeft { peer } => {
                self.drop_conn(Target::Peer(peer));
                self.emit(PeerEvent::PeerLeft { peer });
            }
            ServerMsg::RoomLockState { locked } => {
                if let Some(r) = self.room.as_mut() {
                    r.locked = locked;
                }
                self.emit(PeerEvent::LockState { locked });
            }
            _ => {}
        }
    }

    /// A signal from the partner or a room member: a member we have no
    /// connection with yet gets one (they offered first).
    async fn on_signal(&mut self, remote: Target, payload: SignalPayload, auth: Option<String>) {
        if !self.conns.contains_key(&remote) {
            if let Target::Peer(_) = remote {
                let require = self.room_requires_auth();
                self.open(remote, true, require).await;
            } else {
                return;
            }
        }
        match payload {
            SignalPayload::Description(d) => {
                self.on_description(remote, &d, auth.as_deref()).await;
            }
            SignalPayload::Candidate(c) => {
                if let Some(e) = self.conns.get_mut(&remote) {
                    e.conn.handle_candidate(&c);
                }
            }
        }
    }

    fn drop_call(&mut self) {
        if let Some(call) = self.call.take() {
            self.drop_conn(Target::Call(call));
        }
    }

    async fn on_description(&mut self, remote: Target, d: &SessionDescription, auth: Option<&str>) {
        let Some(entry) = self.conns.get_mut(&remote) else {
            return;
        };
        if entry.require_auth {
            let keys = self.room.as_ref().and_then(|r| r.keys.as_ref());
            let refusal = match (keys, auth) {
                (None, _) => Some("no_key"),
                (Some(_), None) => Some("missing_auth"),
                (Some(k), Some(a)) if !k.verify(&d.sdp, a) => Some("bad_auth"),
                _ => None,
            };
            if let Some(reason) = refusal {
                self.drop_conn(remote);
                self.emit(PeerEvent::Refused { remote, reason });
                return;
            }
        }
        match entry.conn.handle_description(d) {
            Ok(Some(ev)) => self.on_conn_event(remote, ev).await,
            Ok(None) => {}
            Err(e) => {
                self.drop_conn(remote);
                self.emit(PeerEvent::Error {
                    code: "local".into(),
                    message: format!("could not apply the remote description: {e}"),
                    retry_after_ms: None,
                });
            }
        }
    }

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Send(text) => self.send(text).await,
            Cmd::Search(interests) => self.send(wire::search(&interests)).await,
            Cmd::JoinRoom(name, keys) => {
                let verifier = keys.as_ref().map(|k| k.verifier.clone());
                let text = wire::room_join(&name, verifier.as_deref());
                self.room = Some(Room {
                    name,
                    locked: false,
                    keys,
                });
                self.send(text).await;
            }
            Cmd::Lock(keys) => {
                let text = wire::room_lock(&keys.verifier);
                if let Some(r) = self.room.as_mut() {
                    r.keys = Some(keys);
                }
                self.send(text).await;
            }
            Cmd::Chat(text, reply) => {
                let mut sent = 0;
                for e in self.conns.values_mut() {
                    sent += usize::from(e.conn.send_chat(&text));
                }
                let _ = reply.send(sent);
            }
            Cmd::Leave(text) => {
                // Hang up at once, as the browser does; the server confirms.
                self.drop_call();
                self.send(text).await;
            }
            Cmd::PeerStats(reply) => {
                let mut connections = self.finished.clone();
                connections.extend(self.conns.values().map(|e| e.conn.snapshot()));
                let _ = reply.send(PeerStats {
                    country: self.country.clone(),
                    connections,
                    offered_candidates: self.offered.clone(),
                });
            }
            Cmd::Recording(reply) => {
                let live = self
                    .conns
                    .values_mut()
                    .find_map(|e| e.conn.take_recording());
                let _ = reply.send(self.recording.take().or(live));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_become_websocket_urls() {
        assert_eq!(
            ws_url("http://127.0.0.1:8080/").unwrap(),
            "ws://127.0.0.1:8080/ws"
        );
        assert_eq!(
            ws_url("http://127.0.0.1:8080").unwrap(),
            "ws://127.0.0.1:8080/ws"
        );
        assert_eq!(ws_url("ws://h:1/ws").unwrap(), "ws://h:1/ws");
        assert_eq!(ws_url("http://h/earshot/").unwrap(), "ws://h/earshot/ws");
        assert!(ws_url("ftp://h/").is_err());
        assert!(ws_url("127.0.0.1:80").is_err());
        assert!(ws_url("https://h/").is_err());
    }
}
