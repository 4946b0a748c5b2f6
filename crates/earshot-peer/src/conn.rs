//! One WebRTC connection (a stranger call, or one member of a room's mesh) on
//! str0m: negotiation in the browser client's shape, audio out and in, the
//! `chat` data channel, and what it measured.
//!
//! Roles are the server's: the impolite side adds its audio and the `chat`
//! channel and offers at once; the polite side answers. The peer never
//! renegotiates by itself, so the only glare is an offer arriving at an
//! impolite side that has one pending, which it ignores (perfect negotiation).
//! ICE: one host candidate, the peer's own UDP socket, sent inside the SDP;
//! the remote's trickled candidates are added as they come. Once `chat`
//! opens, the safety-words exchange (`safetywords`) runs over it.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use earshot_core::protocol::{IceCandidate, SdpType, SessionDescription};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::crypto::CryptoProvider;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::audio::{FRAME_SAMPLES, Receiver};
use crate::safetywords::{self, Exchange, Outcome, Warning};
use crate::wire::{self, ChannelMsg, Target};

/// What a connection tells its owner.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// A description to send to the remote.
    Description(SessionDescription),
    Connected,
    AudioStarted(Duration),
    ChatOpen,
    Chat(String),
    SafetyWords([&'static str; 3]),
    SafetyWarning(Warning),
    /// ICE gave up (or the DTLS/SCTP side closed): the connection is dead.
    Closed,
}

/// Counters and measurements of one connection.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConnStats {
    pub remote: Option<Target>,
    pub connected: bool,
    /// From the connection's creation to ICE+DTLS connected, in ms.
    pub connect_ms: Option<u64>,
    /// From the connection's creation to the first audio packet, in ms.
    pub first_audio_ms: Option<u64>,
    pub packets_received: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    /// Highest and latest RMS level of the decoded audio (0..1 of full scale).
    pub peak_level: f64,
    pub level: f64,
    /// Dominant frequency of the last half second of received audio.
    pub frequency_hz: Option<f64>,
    pub rtt_ms: Option<f64>,
    pub decode_errors: u64,
    pub chats_received: u64,
    pub chats_sent: u64,
    /// The safety words, space-separated, once the exchange gave them.
    pub safety_words: Option<String>,
    /// Why there are none, once the exchange failed.
    pub safety_warning: Option<Warning>,
}

fn crypto() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(str0m::crypto::from_feature_flags()))
        .clone()
}

pub(crate) struct Conn {
    rtc: Rtc,
    polite: bool,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    audio_mid: Option<Mid>,
    chat: Option<ChannelId>,
    chat_open: bool,
    created: Instant,
    rtp_time: u64,
    receiver: Receiver,
    pub stats: ConnStats,
    /// Every SDP this side produced, for the tests' candidate check.
    pub local_sdps: Vec<String>,
    timeout: Instant,
    dead: bool,
    /// The remote's candidate addresses, so that its first DTLS flight,
    /// which can arrive before str0m has a working pair for it, is not
    /// dropped (it would only be resent a second later).
    remote_addrs: Vec<SocketAddr>,
    /// The remote's latest description, for its fingerprint.
    remote_sdp: Option<String>,
    words: Option<Exchange>,
    words_told: bool,
}

impl Conn {
    /// A new connection using the UDP socket bound at `local`. An impolite
    /// one returns its offer right away among `events`.
    pub fn new(
        remote: Target,
        polite: bool,
        local: SocketAddr,
        record: bool,
        now: Instant,
    ) -> anyhow::Result<(Conn, Vec<ConnEvent>)> {
        let mut rtc = RtcConfig::new()
            .set_crypto_provider(crypto())
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        let candidate = Candidate::host(local, "udp")?;
        rtc.add_local_candidate(candidate);
        let mut conn = Conn {
            rtc,
            polite,
            local,
            pending: None,
            audio_mid: None,
            chat: None,
            chat_open: false,
            created: now,
            rtp_time: 0,
            receiver: Receiver::new(record)?,
            stats: ConnStats {
                remote: Some(remote),
                ..ConnStats::default()
            },
            local_sdps: Vec::new(),
            timeout: now,
            dead: false,
            remote_addrs: Vec::new(),
            remote_sdp: None,
            words: None,
            words_told: false,
        };
        let mut events = Vec::new();
        if !polite {
            let mut api = conn.rtc.sdp_api();
            let mid = api.add_media(
                MediaKind::Audio,
                Direction::SendRecv,
                Some("earshot".into()),
                Some("mic".into()),
                None,
            );
            let cid = api.add_channel(wire::CHAT_LABEL.into());
            let (offer, pending) = api.apply().expect("media and a channel were added");
            conn.audio_mid = Some(mid);
            conn.chat = Some(cid);
            conn.pending = Some(pending);
            events.push(conn.description(SdpType::Offer, offer.to_sdp_string()));
        }
        Ok((conn, events))
    }

    fn description(&mut self, kind: SdpType, sdp: String) -> ConnEvent {
        self.local_sdps.push(sdp.clone());
        ConnEvent::Description(SessionDescription { kind, sdp })
    }

    pub fn is_dead(&self) -> bool {
        self.dead || !self.rtc.is_alive()
    }

    /// The remote's description (already checked against `auth` if needed).
    pub fn handle_description(
        &mut self,
        d: &SessionDescription,
    ) -> anyhow::Result<Option<ConnEvent>> {
        if d.kind == SdpType::Offer || d.kind == SdpType::Answer {
            self.remote_sdp = Some(d.sdp.clone());
        }
        for line in d.sdp.lines() {
            if let Some(c) = line.trim_end().strip_prefix("a=") {
                self.remember(c);
            }
        }
        match d.kind {
            SdpType::Offer => {
                if !self.polite && self.pending.is_some() {
                    return Ok(None); // glare: the impolite side ignores it
                }
                // The polite side rolls back an offer of its own (it never makes one).
                self.pending = None;
                let offer = SdpOffer::from_sdp_string(&d.sdp)?;
                let answer = self.rtc.sdp_api().accept_offer(offer)?;
                Ok(Some(
                    self.description(SdpType::Answer, answer.to_sdp_string()),
                ))
            }
            SdpType::Answer => {
                if let Some(pending) = self.pending.take() {
                    let answer = SdpAnswer::from_sdp_string(&d.sdp)?;
                    self.rtc.sdp_api().accept_answer(pending, answer)?;
                }
                Ok(None)
            }
            SdpType::Pranswer | SdpType::Rollback => Ok(None),
        }
    }

    /// A trickled remote candidate; ones str0m cannot use (mDNS names) are skipped.
    pub fn handle_candidate(&mut self, c: &IceCandidate) {
        if let Ok(candidate) = Candidate::from_sdp_string(&c.candidate) {
            self.remember_addr(candidate.addr());
            self.rtc.add_remote_candidate(candidate);
        }
    }

    fn remember(&mut self, attribute: &str) {
        if attribute.starts_with("candidate:")
            && let Ok(c) = Candidate::from_sdp_string(attribute)
        {
            self.remember_addr(c.addr());
        }
    }

    fn remember_addr(&mut self, addr: SocketAddr) {
        // Bounded: a remote offers a handful of candidates.
        if !self.remote_addrs.contains(&addr) && self.remote_addrs.len() < 64 {
            self.remote_addrs.push(addr);
        }
    }

    /// Whether this UDP datagram is for this connection.
    pub fn accepts(&self, now: Instant, source: SocketAddr, data: &[u8]) -> bool {
        match input(now, source, self.local, data) {
            Some(i) => self.rtc.accepts(&i) || self.remote_addrs.contains(&source),
            None => false,
        }
    }

    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        if let Some(i) = input(now, source, self.local, data)
            && self.rtc.handle_input(i).is_err()
        {
            self.dead = true;
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(x) = self.words.as_mut() {
            x.handle_timeout(now);
        }
        if now >= self.timeout && self.rtc.handle_input(Input::Timeout(now)).is_err() {
            self.dead = true;
        }
    }

    /// When [`Conn::handle_timeout`] wants to be called next.
    pub fn timeout(&self) -> Instant {
        match self.words.as_ref().and_then(Exchange::deadline) {
            Some(d) => d.min(self.timeout),
            None => self.timeout,
        }
    }

    /// Drains str0m: datagrams to send go to `transmit`, events are returned.
    pub fn poll(&mut self, mut transmit: impl FnMut(SocketAddr, &[u8])) -> Vec<ConnEvent> {
        let mut events = Vec::new();
        self.tell_words(&mut events);
        loop {
            let out = match self.rtc.poll_output() {
                Ok(o) => o,
                Err(_) => {
                    self.dead = true;
                    events.push(ConnEvent::Closed);
                    return events;
                }
            };
            match out {
                Output::Timeout(t) => {
                    self.timeout = t;
                    return events;
                }
                Output::Transmit(t) => transmit(t.destination, &t.contents),
                Output::Event(e) => self.on_event(e, &mut events),
            }
        }
    }

    fn on_event(&mut self, e: Event, events: &mut Vec<ConnEvent>) {
        let now = Instant::now();
        match e {
            Event::Connected => {
                self.stats.connected = true;
                self.stats.connect_ms = Some(ms(now - self.created));
                events.push(ConnEvent::Connected);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.dead = true;
                events.push(ConnEvent::Closed);
            }
            Event::MediaAdded(m) if m.kind == MediaKind::Audio && self.audio_mid.is_none() => {
                self.audio_mid = Some(m.mid);
            }
            Event::MediaData(d) => {
                self.stats.packets_received += 1;
                self.stats.bytes_received += d.data.len() as u64;
                if self.stats.first_audio_ms.is_none() {
                    let after = now - self.created;
                    self.stats.first_audio_ms = Some(ms(after));
                    events.push(ConnEvent::AudioStarted(after));
                }
                self.receiver.push_packet(&d.data);
            }
            Event::ChannelOpen(cid, label)
                if label == wire::CHAT_LABEL && (self.chat.is_none() || self.chat == Some(cid)) =>
            {
                self.chat = Some(cid);
                self.chat_open = true;
                events.push(ConnEvent::ChatOpen);
                self.start_words(now, events);
            }
            Event::ChannelData(d) if Some(d.id) == self.chat && !d.binary => {
                if wire::is_safety(&d.data) {
                    self.on_words_msg(wire::decode_channel(&d.data), events);
                } else if let Some(ChannelMsg::Chat(text)) = wire::decode_channel(&d.data) {
                    self.stats.chats_received += 1;
                    events.push(ConnEvent::Chat(text));
                }
            }
            Event::ChannelClose(cid) if Some(cid) == self.chat => self.chat_open = false,
            // Round trips come from RTCP reports on what we send.
            Event::PeerStats(s) if s.rtt.is_some() => {
                self.stats.rtt_ms = s.rtt.map(|r| r.as_secs_f64() * 1000.0);
            }
            Event::MediaEgressStats(s) if s.rtt.is_some() => {
                self.stats.rtt_ms = s.rtt.map(|r| r.as_secs_f64() * 1000.0);
            }
            _ => {}
        }
    }

    /// The exchange, made from the descriptions in use when the channel
    /// opens (or its first message comes); `None` without both fingerprints.
    fn exchange(&mut self) -> Option<&mut Exchange> {
        if self.words.is_none() {
            let local = self
                .local_sdps
                .last()
                .and_then(|s| safetywords::description_fingerprint(s))?;
            let remote = self
                .remote_sdp
                .as_deref()
                .and_then(safetywords::description_fingerprint)?;
            self.words = Some(Exchange::new(&local, &remote, safetywords::new_nonce()));
        }
        self.words.as_mut()
    }

    fn start_words(&mut self, now: Instant, events: &mut Vec<ConnEvent>) {
        let out = match self.exchange() {
            Some(x) => x.start(now),
            None => {
                self.tell(ConnEvent::SafetyWarning(Warning::Protocol), events);
                return;
            }
        };
        self.send_words(out);
        self.tell_words(events);
    }

    fn on_words_msg(&mut self, msg: Option<ChannelMsg>, events: &mut Vec<ConnEvent>) {
        let out = match (self.exchange(), msg) {
            (Some(x), Some(m)) => x.handle(&m),
            _ => {
                self.tell(ConnEvent::SafetyWarning(Warning::Protocol), events);
                return;
            }
        };
        self.send_words(out);
        self.tell_words(events);
    }

    fn send_words(&mut self, out: Vec<ChannelMsg>) {
        for m in out {
            if let Some(mut ch) = self.chat.and_then(|id| self.rtc.channel(id)) {
                let _ = ch.write(false, wire::encode_channel(&m).as_bytes());
            }
        }
    }

    /// Reports the exchange's outcome, once.
    fn tell_words(&mut self, events: &mut Vec<ConnEvent>) {
        let ev = match self.words.as_ref().and_then(Exchange::outcome) {
            Some(Outcome::Words(w)) => ConnEvent::SafetyWords(*w),
            Some(Outcome::Warning(w)) => ConnEvent::SafetyWarning(*w),
            None => return,
        };
        self.tell(ev, events);
    }

    fn tell(&mut self, ev: ConnEvent, events: &mut Vec<ConnEvent>) {
        if self.words_told {
            return;
        }
        self.words_told = true;
        match &ev {
            ConnEvent::SafetyWords(w) => self.stats.safety_words = Some(w.join(" ")),
            ConnEvent::SafetyWarning(w) => self.stats.safety_warning = Some(*w),
            _ => {}
        }
        events.push(ev);
    }

    /// Sends one Opus frame, once connected (earlier frames would be dropped).
    pub fn send_audio(&mut self, now: Instant, packet: &[u8]) {
        if !self.stats.connected || packet.is_empty() {
            return;
        }
        let Some(mid) = self.audio_mid else { return };
        let Some(writer) = self.rtc.writer(mid) else {
            return;
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
        else {
            return;
        };
        let time = MediaTime::new(self.rtp_time, str0m::media::Frequency::FORTY_EIGHT_KHZ);
        self.rtp_time += FRAME_SAMPLES as u64;
        if writer.write(pt, now, time, packet.to_vec()).is_ok() {
            self.stats.packets_sent += 1;
        }
    }

    /// Sends a chat line; false when the channel is not open (yet).
    pub fn send_chat(&mut self, text: &str) -> bool {
        if !self.chat_open {
            return false;
        }
        let Some(mut ch) = self.chat.and_then(|id| self.rtc.channel(id)) else {
            return false;
        };
        let sent = matches!(
            ch.write(false, wire::encode_chat(text).as_bytes()),
            Ok(true)
        );
        if sent {
            self.stats.chats_sent += 1;
        }
        sent
    }

    /// The stats with the audio measurements brought up to date.
    pub fn snapshot(&self) -> ConnStats {
        let mut s = self.stats.clone();
        s.peak_level = self.receiver.peak_level;
        s.level = self.receiver.level;
        s.frequency_hz = self.receiver.dominant_frequency();
        s.decode_errors = self.receiver.decode_errors;
        s
    }

    pub fn take_recording(&mut self) -> Option<Vec<i16>> {
        self.receiver.recording.take()
    }

    pub fn close(&mut self) {
        self.rtc.disconnect();
        self.dead = true;
    }
}

fn input(
    now: Instant,
    source: SocketAddr,
    destination: SocketAddr,
    data: &[u8],
) -> Option<Input<'_>> {
    Some(Input::Receive(
        now,
        Receive {
            proto: Protocol::Udp,
            source,
            destination,
            contents: data.try_into().ok()?,
        },
    ))
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}
