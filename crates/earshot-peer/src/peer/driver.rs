//! The task behind a [`Peer`]: it owns the WebSocket, the UDP socket and
//! the WebRTC connections, answers the server's messages and the handle's
//! commands, and routes every datagram to its connection.

use super::*;

pub(super) struct Room {
    pub(super) name: String,
    pub(super) locked: bool,
    pub(super) keys: Option<RoomKeys>,
}

pub(super) struct Driver {
    pub(super) ws: Option<Ws>,
    pub(super) socket: UdpSocket,
    pub(super) local: SocketAddr,
    pub(super) cmds: mpsc::UnboundedReceiver<Cmd>,
    pub(super) events: mpsc::UnboundedSender<PeerEvent>,
    pub(super) conns: BTreeMap<Target, Entry>,
    pub(super) unrouted: std::collections::VecDeque<(Instant, SocketAddr, Vec<u8>)>,
    pub(super) finished: Vec<ConnStats>,
    pub(super) offered: Vec<String>,
    pub(super) sender: audio::Sender,
    pub(super) record: bool,
    pub(super) recording: Option<Vec<i16>>,
    pub(super) call: Option<CallId>,
    pub(super) room: Option<Room>,
    pub(super) country: Option<String>,
    pub(super) next_frame: Instant,
}

pub(super) struct Entry {
    pub(super) conn: Conn,
    /// Descriptions from this remote must carry a valid `auth` (locked room).
    pub(super) require_auth: bool,
}

impl Driver {
    pub(super) async fn run(mut self) {
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
