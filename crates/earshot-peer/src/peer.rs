//! The peer: one signalling WebSocket, one UDP socket, and the WebRTC
//! connections the server's messages call for, driven by one tokio task.
//!
//! [`Peer`] is the handle: commands go to the task over a channel, events
//! come back over another. The task owns everything else and is the only
//! place that reads the clock for str0m; it ends when the handle is dropped
//! or [`Peer::close`] is called. The task itself is `driver.rs`.

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

mod driver;

use driver::Driver;

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
