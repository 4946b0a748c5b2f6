//! The signalling protocol's messages, as `PROTOCOL.md` describes them, and
//! the decoder of client frames. [`ServerMsg`] is one shape for both ends:
//! the server encodes it, clients (`earshot-peer`) decode it (see
//! `server_decode`).
//!
//! Decoding is strict about what it relays: a `signal` is parsed into typed
//! fields and re-encoded, so nothing but a session description or an ICE
//! candidate ever passes from one client to another. `Debug` of anything that
//! carries SDP or a candidate prints its length only, so a stray `?msg` in a
//! log line cannot leak it.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

mod server_decode;

/// The protocol version this server speaks (`hello.version`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Identifies one call (one matched pair) for the lifetime of the process.
pub type CallId = u64;

/// Identifies a member within one room.
pub type PeerId = u32;

/// Longest `auth` value relayed with a room signal (base64url of an HMAC).
pub const MAX_AUTH_LEN: usize = 128;

/// A message from a client, after decoding and validation of its shape.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    Hello {
        version: u32,
        pow: Option<crate::pow::PowSolution>,
    },
    Search {
        interests: Vec<String>,
    },
    Signal(Signal),
    Skip,
    End,
    RoomSuggest,
    RoomJoin {
        room: String,
        verifier: Option<Verifier>,
    },
    RoomSignal(RoomSignal),
    RoomLock {
        verifier: Verifier,
    },
    RoomUnlock,
    Report {
        reason: Option<ReportReason>,
    },
    /// Fresh TURN credentials, before the current ones expire.
    RefreshIce,
    RoomReport {
        peer: PeerId,
        reason: Option<ReportReason>,
    },
}

impl ClientMsg {
    /// This message's `type` on the wire.
    pub fn msg_type(&self) -> ClientMsgType {
        match self {
            ClientMsg::Hello { .. } => ClientMsgType::Hello,
            ClientMsg::Search { .. } => ClientMsgType::Search,
            ClientMsg::Signal(_) | ClientMsg::RoomSignal(_) => ClientMsgType::Signal,
            ClientMsg::Skip => ClientMsgType::Skip,
            ClientMsg::End => ClientMsgType::End,
            ClientMsg::RoomSuggest => ClientMsgType::RoomSuggest,
            ClientMsg::RoomJoin { .. } => ClientMsgType::RoomJoin,
            ClientMsg::RoomLock { .. } => ClientMsgType::RoomLock,
            ClientMsg::RoomUnlock => ClientMsgType::RoomUnlock,
            ClientMsg::Report { .. } => ClientMsgType::Report,
            ClientMsg::RefreshIce => ClientMsgType::RefreshIce,
            ClientMsg::RoomReport { .. } => ClientMsgType::RoomReport,
        }
    }
}

/// The `type` of a client message: what the decoder dispatches on, and what
/// an `error` names in `re` when it answers that message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientMsgType {
    Hello,
    Search,
    /// Both kinds: `call` (a stranger call) and `to` (a room member).
    Signal,
    Skip,
    End,
    Report,
    RoomSuggest,
    RoomJoin,
    RoomLock,
    RoomUnlock,
    RoomReport,
    RefreshIce,
}

impl ClientMsgType {
    pub const ALL: [ClientMsgType; 12] = [
        ClientMsgType::Hello,
        ClientMsgType::Search,
        ClientMsgType::Signal,
        ClientMsgType::Skip,
        ClientMsgType::End,
        ClientMsgType::Report,
        ClientMsgType::RoomSuggest,
        ClientMsgType::RoomJoin,
        ClientMsgType::RoomLock,
        ClientMsgType::RoomUnlock,
        ClientMsgType::RoomReport,
        ClientMsgType::RefreshIce,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientMsgType::Hello => "hello",
            ClientMsgType::Search => "search",
            ClientMsgType::Signal => "signal",
            ClientMsgType::Skip => "skip",
            ClientMsgType::End => "end",
            ClientMsgType::Report => "report",
            ClientMsgType::RoomSuggest => "room_suggest",
            ClientMsgType::RoomJoin => "room_join",
            ClientMsgType::RoomLock => "room_lock",
            ClientMsgType::RoomUnlock => "room_unlock",
            ClientMsgType::RoomReport => "room_report",
            ClientMsgType::RefreshIce => "refresh_ice",
        }
    }

    /// The type named `name` on the wire; `None` for a type this version
    /// does not know.
    pub fn from_name(name: &str) -> Option<ClientMsgType> {
        ClientMsgType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// Why someone reports, from a fixed list (counted, never stored per user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportReason {
    Harassment,
    Hate,
    Sexual,
    Spam,
    Underage,
    Other,
}

impl ReportReason {
    pub const ALL: [ReportReason; 6] = [
        ReportReason::Harassment,
        ReportReason::Hate,
        ReportReason::Sexual,
        ReportReason::Spam,
        ReportReason::Underage,
        ReportReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReportReason::Harassment => "harassment",
            ReportReason::Hate => "hate",
            ReportReason::Sexual => "sexual",
            ReportReason::Spam => "spam",
            ReportReason::Underage => "underage",
            ReportReason::Other => "other",
        }
    }
}

/// A room passphrase verifier: 32 bytes, base64url without padding on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier(pub [u8; 32]);

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verifier({:?})", crate::Pii(&self.0))
    }
}

impl Verifier {
    /// Parses 43 base64url characters (no padding).
    pub fn parse(text: &str) -> Option<Verifier> {
        let bytes = base64url_decode(text)?;
        Some(Verifier(bytes.try_into().ok()?))
    }

    /// Equality that takes the same time wherever the first difference is.
    pub fn ct_eq(&self, other: &Verifier) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

fn base64url_value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    } as u32)
}

/// Decodes unpadded base64url; `None` on any other character or a bad length.
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= base64url_value(c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// A signal between two members of a room: `to` from the sender, `from` to
/// the receiver. `auth` proves knowledge of a locked room's passphrase (see
/// PROTOCOL.md); the server only relays it.
#[derive(Clone, PartialEq, Serialize)]
pub struct RoomSignal {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<PeerId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<PeerId>,
    #[serde(flatten)]
    pub payload: SignalPayload,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

impl fmt::Debug for RoomSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomSignal")
            .field("to", &self.to)
            .field("from", &self.from)
            .field("payload", &self.payload)
            .field("auth", &self.auth.as_ref().map(crate::Pii))
            .finish()
    }
}

/// WebRTC negotiation for one call: exactly one of a description or a candidate.
#[derive(Clone, PartialEq, Serialize)]
pub struct Signal {
    pub call: CallId,
    #[serde(flatten)]
    pub payload: SignalPayload,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub enum SignalPayload {
    #[serde(rename = "description")]
    Description(SessionDescription),
    #[serde(rename = "candidate")]
    Candidate(IceCandidate),
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionDescription {
    #[serde(rename = "type")]
    pub kind: SdpType,
    #[serde(default)]
    pub sdp: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpType {
    Offer,
    Answer,
    Pranswer,
    Rollback,
}

/// `RTCIceCandidate.toJSON()`, with only the fields a peer needs.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_m_line_index: Option<u16>,
    #[serde(rename = "usernameFragment", default)]
    pub username_fragment: Option<String>,
}

impl SignalPayload {
    /// A signal carries exactly one of a description or a candidate.
    fn one_of(
        description: Option<SessionDescription>,
        candidate: Option<IceCandidate>,
    ) -> Option<SignalPayload> {
        match (description, candidate) {
            (Some(d), None) => Some(SignalPayload::Description(d)),
            (None, Some(c)) => Some(SignalPayload::Candidate(c)),
            _ => None,
        }
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signal")
            .field("call", &self.call)
            .field("payload", &self.payload)
            .finish()
    }
}

impl fmt::Debug for SignalPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignalPayload::Description(d) => d.fmt(f),
            SignalPayload::Candidate(c) => c.fmt(f),
        }
    }
}

impl fmt::Debug for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}(<{} bytes of sdp>)", self.kind, self.sdp.len())
    }
}

impl fmt::Debug for IceCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Candidate({:?})", crate::Pii(self))
    }
}

/// An ISO 3166-1 alpha-2 country code, upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Country([u8; 2]);

impl Country {
    /// Accepts two ASCII letters in either case.
    pub fn new(code: &str) -> Option<Country> {
        match code.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.0).expect("country codes are ASCII")
    }
}

impl Serialize for Country {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Country {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Country, D::Error> {
        let code = Cow::<str>::deserialize(d)?;
        Country::new(&code).ok_or_else(|| serde::de::Error::custom("not a two-letter country code"))
    }
}

/// One entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Limits advertised in `welcome`, so a client can stay within them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_interests: usize,
    pub max_interest_chars: usize,
    pub interest_wait_ms: u64,
    pub rematch_cooldown_ms: u64,
    pub messages_per_second: u32,
    pub message_burst: u32,
    pub max_room_size: usize,
    /// How long TURN credentials last; ask `refresh_ice` before then. 0: no TURN.
    pub ice_credential_ttl_ms: u64,
}

/// Why a call ended, as told to the partner who did not end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    PartnerSkipped,
    PartnerEnded,
    PartnerLeft,
}

impl EndReason {
    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::PartnerSkipped => "partner_skipped",
            EndReason::PartnerEnded => "partner_ended",
            EndReason::PartnerLeft => "partner_left",
        }
    }
}

/// A message to a client: the server encodes it ([`ServerMsg::to_json`]),
/// clients decode it ([`ServerMsg::from_json`]).
///
/// Two variants share the type `signal`, which a derived decoder cannot
/// tell apart, so the derives are `remote = "Self"` (they make inherent
/// `ServerMsg::serialize` and `ServerMsg::deserialize`) and the `Serialize`
/// and `Deserialize` impls in `server_decode` wrap them: use those (serde's
/// traits, `to_json`, `from_json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", remote = "Self")]
pub enum ServerMsg {
    Welcome {
        version: u32,
        ice_servers: Vec<IceServer>,
        limits: Limits,
        country: Option<Country>,
        /// Whether "hide my IP" (relay-only ICE) starts on: only when TURN is offered.
        hide_ip_default: bool,
    },
    IceServers {
        ice_servers: Vec<IceServer>,
    },
    Searching {
        interests: Vec<String>,
    },
    Matched {
        call: CallId,
        polite: bool,
        interests: Vec<String>,
        country: Option<Country>,
    },
    Signal(Signal),
    CallEnded {
        call: CallId,
        reason: EndReason,
    },
    Idle,
    RoomSuggestion {
        name: String,
    },
    RoomJoined {
        room: String,
        peer: PeerId,
        peers: Vec<PeerId>,
        locked: bool,
        max_size: usize,
    },
    PeerJoined {
        peer: PeerId,
    },
    PeerLeft {
        peer: PeerId,
    },
    #[serde(rename = "signal", skip_deserializing)]
    RoomSignal(RoomSignal),
    RoomLockState {
        locked: bool,
    },
    Challenge {
        /// Always [`crate::pow::ALGORITHM`].
        #[serde(deserialize_with = "server_decode::pow_algorithm")]
        algorithm: &'static str,
        salt: String,
        challenge: String,
        maxnumber: u64,
        signature: String,
    },
    Error {
        code: ErrorCode,
        /// The type of the client message this error answers; `None` when it
        /// answers none (or a frame whose type could not be read).
        #[serde(skip_serializing_if = "Option::is_none")]
        re: Option<ClientMsgType>,
        /// For people, and free to change: clients act on the code.
        message: Cow<'static, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerMsg {
    /// An `error` that answers no message in particular.
    pub fn error(code: ErrorCode) -> ServerMsg {
        ServerMsg::Error {
            code,
            re: None,
            message: code.message().into(),
            retry_after_ms: None,
        }
    }

    /// The JSON text frame for this message.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

/// The stable error codes of `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a JSON object with a string `type`.
    BadJson,
    /// A known type with missing or invalid fields, or a binary frame.
    BadMessage,
    /// `type` is not a client message of this version.
    UnknownType,
    /// Longer than the advertised `max_message_bytes`.
    TooLarge,
    /// A message before a successful `hello`.
    HelloRequired,
    /// A second `hello`.
    AlreadyHello,
    /// `hello.version` is not spoken here.
    UnsupportedVersion,
    /// Interests invalid: count, length or characters.
    BadInterests,
    /// `search` while already in the queue.
    AlreadySearching,
    /// `search` while in a call.
    AlreadyInCall,
    /// `signal` or `skip` while not in a call.
    NotInCall,
    /// `signal` for a call that is not the current one.
    WrongCall,
    /// Too many messages or passphrase attempts; `retry_after_ms` says when to try again.
    RateLimited,
    /// A room name that breaks the naming rules.
    BadRoomName,
    /// `room_join` or `search` while in a room.
    AlreadyInRoom,
    /// A room message while not in a room.
    NotInRoom,
    /// `signal.to` is not another member of the room.
    UnknownPeer,
    /// The room has its maximum number of members.
    RoomFull,
    /// The room is locked: join again with a verifier.
    PassphraseRequired,
    /// The verifier does not match the room's.
    WrongPassphrase,
    /// Banned from matching after reports; `retry_after_ms` says for how long.
    Banned,
    /// Removed from the room by its members' reports; cannot rejoin it.
    Removed,
    /// A proof of work that is wrong, expired or reused; a new challenge follows.
    PowInvalid,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::BadJson,
        ErrorCode::BadMessage,
        ErrorCode::UnknownType,
        ErrorCode::TooLarge,
        ErrorCode::HelloRequired,
        ErrorCode::AlreadyHello,
        ErrorCode::UnsupportedVersion,
        ErrorCode::BadInterests,
        ErrorCode::AlreadySearching,
        ErrorCode::AlreadyInCall,
        ErrorCode::NotInCall,
        ErrorCode::WrongCall,
        ErrorCode::RateLimited,
        ErrorCode::BadRoomName,
        ErrorCode::AlreadyInRoom,
        ErrorCode::NotInRoom,
        ErrorCode::UnknownPeer,
        ErrorCode::RoomFull,
        ErrorCode::PassphraseRequired,
        ErrorCode::WrongPassphrase,
        ErrorCode::Banned,
        ErrorCode::Removed,
        ErrorCode::PowInvalid,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::AlreadyHello => "already_hello",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::BadInterests => "bad_interests",
            ErrorCode::AlreadySearching => "already_searching",
            ErrorCode::AlreadyInCall => "already_in_call",
            ErrorCode::NotInCall => "not_in_call",
            ErrorCode::WrongCall => "wrong_call",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadRoomName => "bad_room_name",
            ErrorCode::AlreadyInRoom => "already_in_room",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::UnknownPeer => "unknown_peer",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::PassphraseRequired => "passphrase_required",
            ErrorCode::WrongPassphrase => "wrong_passphrase",
            ErrorCode::Banned => "banned",
            ErrorCode::Removed => "removed",
            ErrorCode::PowInvalid => "pow_invalid",
        }
    }

    /// A sentence for people; clients should act on the code.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "the message is not a JSON object with a string type",
            ErrorCode::BadMessage => "the message has missing or invalid fields",
            ErrorCode::UnknownType => "unknown message type",
            ErrorCode::TooLarge => "the message is too large",
            ErrorCode::HelloRequired => "send hello first",
            ErrorCode::AlreadyHello => "hello was already sent on this connection",
            ErrorCode::UnsupportedVersion => "this server speaks protocol version 1",
            ErrorCode::BadInterests => {
                "interests must be at most 5 words of letters, digits, spaces or -"
            }
            ErrorCode::AlreadySearching => "already looking for someone",
            ErrorCode::AlreadyInCall => "already in a call",
            ErrorCode::NotInCall => "not in a call",
            ErrorCode::WrongCall => "that call is over",
            ErrorCode::RateLimited => "too many attempts, slow down",
            ErrorCode::BadRoomName => {
                "room names are 3 to 64 letters a-z, digits or -, not starting or ending with -"
            }
            ErrorCode::AlreadyInRoom => "already in a room",
            ErrorCode::NotInRoom => "not in a room",
            ErrorCode::UnknownPeer => "no such person in this room",
            ErrorCode::RoomFull => "this room is full",
            ErrorCode::PassphraseRequired => "this room is locked: a passphrase is needed",
            ErrorCode::WrongPassphrase => "wrong passphrase",
            ErrorCode::Banned => {
                "you were reported by several people and cannot be matched for a while"
            }
            ErrorCode::Removed => "the people in this room removed you from it",
            ErrorCode::PowInvalid => "that proof of work is wrong, expired or already used",
        }
    }
}

/// Why a client frame could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a JSON object with a string `type`.
    #[error("not a JSON object with a string type")]
    BadJson,
    /// A type this version does not know.
    #[error("unknown message type")]
    UnknownType,
    /// A known type whose fields are missing or invalid.
    #[error("invalid fields for this message type")]
    BadMessage,
}

impl From<DecodeError> for ErrorCode {
    fn from(e: DecodeError) -> ErrorCode {
        match e {
            DecodeError::BadJson => ErrorCode::BadJson,
            DecodeError::UnknownType => ErrorCode::UnknownType,
            DecodeError::BadMessage => ErrorCode::BadMessage,
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct HelloFields {
    version: u32,
    #[serde(default)]
    pow: Option<crate::pow::PowSolution>,
}

#[derive(Deserialize)]
struct SearchFields {
    #[serde(default)]
    interests: Vec<String>,
}

/// The fields of a client's `signal` (`server_decode` reads the server's:
/// these and `from`).
#[derive(Deserialize)]
struct SignalFields {
    #[serde(default)]
    call: Option<CallId>,
    #[serde(default)]
    to: Option<PeerId>,
    #[serde(default)]
    description: Option<SessionDescription>,
    #[serde(default)]
    candidate: Option<IceCandidate>,
    #[serde(default)]
    auth: Option<String>,
}

#[derive(Deserialize)]
struct RoomJoinFields {
    room: String,
    #[serde(default)]
    verifier: Option<String>,
}

#[derive(Deserialize)]
struct ReportFields {
    #[serde(default)]
    reason: Option<ReportReason>,
}

#[derive(Deserialize)]
struct RoomReportFields {
    peer: PeerId,
    #[serde(default)]
    reason: Option<ReportReason>,
}

#[derive(Deserialize)]
struct RoomLockFields {
    verifier: String,
}

fn verifier(text: &str) -> Result<Verifier, DecodeError> {
    Verifier::parse(text).ok_or(DecodeError::BadMessage)
}

/// The `type` of a client frame, read without decoding its other fields:
/// `Err` as `decode` would for a frame that is not a JSON object with a string
/// `type` (`BadJson`) or whose type this version does not know (`UnknownType`).
pub fn read_type(text: &str) -> Result<ClientMsgType, DecodeError> {
    // serde also reads structs from JSON arrays; the protocol has objects only.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(DecodeError::BadJson);
    }
    let envelope: Envelope = serde_json::from_str(text).map_err(|_| DecodeError::BadJson)?;
    ClientMsgType::from_name(&envelope.kind).ok_or(DecodeError::UnknownType)
}

/// Decodes one text frame from a client.
///
/// The type is read first so that an unknown type and a bad field of a known
/// type get different error codes.
pub fn decode(text: &str) -> Result<ClientMsg, DecodeError> {
    fn fields<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, DecodeError> {
        serde_json::from_str(text).map_err(|_| DecodeError::BadMessage)
    }
    match read_type(text)? {
        ClientMsgType::Hello => {
            let f: HelloFields = fields(text)?;
            Ok(ClientMsg::Hello {
                version: f.version,
                pow: f.pow,
            })
        }
        ClientMsgType::Search => {
            let f: SearchFields = fields(text)?;
            Ok(ClientMsg::Search {
                interests: f.interests,
            })
        }
        ClientMsgType::Signal => {
            let f: SignalFields = fields(text)?;
            let payload =
                SignalPayload::one_of(f.description, f.candidate).ok_or(DecodeError::BadMessage)?;
            match (f.call, f.to) {
                (Some(call), None) if f.auth.is_none() => {
                    Ok(ClientMsg::Signal(Signal { call, payload }))
                }
                (None, Some(to)) => {
                    let auth_ok = f
                        .auth
                        .as_deref()
                        .is_none_or(|a| a.len() <= MAX_AUTH_LEN && base64url_decode(a).is_some());
                    if !auth_ok {
                        return Err(DecodeError::BadMessage);
                    }
                    Ok(ClientMsg::RoomSignal(RoomSignal {
                        to: Some(to),
                        from: None,
                        payload,
                        auth: f.auth,
                    }))
                }
                _ => Err(DecodeError::BadMessage),
            }
        }
        ClientMsgType::Skip => Ok(ClientMsg::Skip),
        ClientMsgType::End => Ok(ClientMsg::End),
        ClientMsgType::RoomSuggest => Ok(ClientMsg::RoomSuggest),
        ClientMsgType::RoomJoin => {
            let f: RoomJoinFields = fields(text)?;
            Ok(ClientMsg::RoomJoin {
                room: f.room,
                verifier: f.verifier.as_deref().map(verifier).transpose()?,
            })
        }
        ClientMsgType::RoomLock => {
            let f: RoomLockFields = fields(text)?;
            Ok(ClientMsg::RoomLock {
                verifier: verifier(&f.verifier)?,
            })
        }
        ClientMsgType::RoomUnlock => Ok(ClientMsg::RoomUnlock),
        ClientMsgType::RefreshIce => Ok(ClientMsg::RefreshIce),
        ClientMsgType::Report => {
            let f: ReportFields = fields(text)?;
            Ok(ClientMsg::Report { reason: f.reason })
        }
        ClientMsgType::RoomReport => {
            let f: RoomReportFields = fields(text)?;
            Ok(ClientMsg::RoomReport {
                peer: f.peer,
                reason: f.reason,
            })
        }
    }
}

/// Trims, lower-cases, checks and de-duplicates interests, keeping their order.
pub fn normalize_interests(
    raw: &[String],
    max_count: usize,
    max_chars: usize,
) -> Result<Vec<String>, ErrorCode> {
    if raw.len() > max_count {
        return Err(ErrorCode::BadInterests);
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for r in raw {
        let tag = r.trim().to_lowercase();
        let chars = tag.chars().count();
        let valid = (1..=max_chars).contains(&chars)
            && tag
                .chars()
                .all(|c| c.is_alphanumeric() || c == ' ' || c == '-');
        if !valid {
            return Err(ErrorCode::BadInterests);
        }
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_client_message() {
        assert_eq!(
            decode(r#"{"type":"hello","version":1}"#),
            Ok(ClientMsg::Hello {
                version: 1,
                pow: None
            })
        );
        assert_eq!(
            decode(r#"{"type":"search"}"#),
            Ok(ClientMsg::Search { interests: vec![] })
        );
        assert_eq!(decode(r#"{"type":"skip","extra":1}"#), Ok(ClientMsg::Skip));
        assert_eq!(decode(r#"{"type":"end"}"#), Ok(ClientMsg::End));
        let m = decode(r#"{"type":"signal","call":3,"description":{"type":"offer","sdp":"v=0"}}"#)
            .unwrap();
        assert!(matches!(
            m,
            ClientMsg::Signal(Signal {
                call: 3,
                payload: SignalPayload::Description(SessionDescription {
                    kind: SdpType::Offer,
                    ..
                })
            })
        ));
    }

    #[test]
    fn classifies_bad_frames() {
        assert_eq!(decode("not json"), Err(DecodeError::BadJson));
        assert_eq!(decode("[1,2]"), Err(DecodeError::BadJson));
        assert_eq!(decode(r#"["hello", 1]"#), Err(DecodeError::BadJson));
        assert_eq!(decode(r#" {"type":"end"}"#), Ok(ClientMsg::End));
        assert_eq!(decode(r#"{"type":5}"#), Err(DecodeError::BadJson));
        assert_eq!(decode(r#"{"type":"nope"}"#), Err(DecodeError::UnknownType));
        assert_eq!(decode(r#"{"type":"hello"}"#), Err(DecodeError::BadMessage));
        assert_eq!(
            decode(r#"{"type":"signal","call":1}"#),
            Err(DecodeError::BadMessage)
        );
        assert_eq!(
            decode(
                r#"{"type":"signal","call":1,"description":{"type":"offer","sdp":""},"candidate":{"candidate":""}}"#
            ),
            Err(DecodeError::BadMessage)
        );
        assert_eq!(
            decode(r#"{"type":"signal","call":1,"description":{"type":"bogus","sdp":""}}"#),
            Err(DecodeError::BadMessage)
        );
    }

    #[test]
    fn decodes_room_messages() {
        let v = "A".repeat(43);
        assert_eq!(
            decode(&format!(
                r#"{{"type":"room_join","room":"x-y","verifier":"{v}"}}"#
            )),
            Ok(ClientMsg::RoomJoin {
                room: "x-y".into(),
                verifier: Some(Verifier([0; 32]))
            })
        );
        assert_eq!(
            decode(r#"{"type":"room_join","room":"x-y","verifier":"short"}"#),
            Err(DecodeError::BadMessage)
        );
        assert_eq!(
            decode(r#"{"type":"room_lock"}"#),
            Err(DecodeError::BadMessage)
        );
        assert_eq!(
            decode(r#"{"type":"room_unlock"}"#),
            Ok(ClientMsg::RoomUnlock)
        );
        let m = decode(
            r#"{"type":"signal","to":2,"candidate":{"candidate":"c"},"auth":"abc_-9","from":7}"#,
        )
        .unwrap();
        let ClientMsg::RoomSignal(s) = m else {
            panic!("{m:?}")
        };
        assert_eq!(
            (s.to, s.from, s.auth.as_deref()),
            (Some(2), None, Some("abc_-9"))
        );
        for bad in [
            r#"{"type":"signal","to":2,"call":1,"candidate":{"candidate":"c"}}"#,
            r#"{"type":"signal","to":2,"candidate":{"candidate":"c"},"auth":"no spaces"}"#,
            r#"{"type":"signal","call":1,"candidate":{"candidate":"c"},"auth":"abc"}"#,
        ] {
            assert_eq!(decode(bad), Err(DecodeError::BadMessage), "{bad}");
        }
    }

    #[test]
    fn decodes_reports() {
        assert_eq!(
            decode(r#"{"type":"report","reason":"spam"}"#),
            Ok(ClientMsg::Report {
                reason: Some(ReportReason::Spam)
            })
        );
        assert_eq!(
            decode(r#"{"type":"report"}"#),
            Ok(ClientMsg::Report { reason: None })
        );
        assert_eq!(
            decode(r#"{"type":"report","reason":"vibes"}"#),
            Err(DecodeError::BadMessage)
        );
        assert_eq!(
            decode(r#"{"type":"room_report","peer":3,"reason":"hate"}"#),
            Ok(ClientMsg::RoomReport {
                peer: 3,
                reason: Some(ReportReason::Hate)
            })
        );
        assert_eq!(
            decode(r#"{"type":"room_report"}"#),
            Err(DecodeError::BadMessage)
        );
        for r in ReportReason::ALL {
            let json = format!(r#"{{"type":"report","reason":"{}"}}"#, r.as_str());
            assert_eq!(decode(&json), Ok(ClientMsg::Report { reason: Some(r) }));
        }
    }

    #[test]
    fn base64url_round_trips_known_values() {
        assert_eq!(base64url_decode("").unwrap(), b"");
        assert_eq!(base64url_decode("Zg").unwrap(), b"f");
        assert_eq!(base64url_decode("Zm8").unwrap(), b"fo");
        assert_eq!(base64url_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64url_decode("_-8").unwrap(), [0xff, 0xef]);
        assert!(base64url_decode("Zm9v=").is_none());
        assert!(base64url_decode("Z").is_none());
        assert!(Verifier([1; 32]).ct_eq(&Verifier([1; 32])));
        assert!(!Verifier([1; 32]).ct_eq(&Verifier([2; 32])));
    }

    #[test]
    fn escaped_type_names_still_decode() {
        assert_eq!(decode(r#"{"type":"sk\u0069p"}"#), Ok(ClientMsg::Skip));
    }

    #[test]
    fn signal_relay_drops_unknown_fields() {
        let m = decode(
            r#"{"type":"signal","call":9,"candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0,"evil":"x"},"evil":"y"}"#,
        )
        .unwrap();
        let ClientMsg::Signal(s) = m else {
            panic!("not a signal")
        };
        let out = ServerMsg::Signal(s).to_json();
        assert!(!out.contains("evil"), "{out}");
        assert!(out.contains(r#""type":"signal""#));
        assert!(out.contains(r#""call":9"#));
        assert!(out.contains(r#""sdpMLineIndex":0"#));
    }

    #[test]
    fn debug_never_shows_sdp_or_candidates() {
        let d = Signal {
            call: 1,
            payload: SignalPayload::Description(SessionDescription {
                kind: SdpType::Offer,
                sdp: "c=IN IP4 192.0.2.7".into(),
            }),
        };
        let c = Signal {
            call: 1,
            payload: SignalPayload::Candidate(IceCandidate {
                candidate: "candidate:1 1 udp 1 192.0.2.7 5000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
                username_fragment: None,
            }),
        };
        for s in [d, c] {
            let text = format!("{s:?} {:?}", ClientMsg::Signal(s.clone()));
            assert!(!text.contains("192.0.2.7"), "{text}");
        }
    }

    #[test]
    fn error_codes_serialize_as_documented() {
        for code in ErrorCode::ALL {
            let json = ServerMsg::error(code).to_json();
            assert!(
                json.contains(&format!(r#""code":"{}""#, code.as_str())),
                "{json}"
            );
        }
    }

    #[test]
    fn interests_are_normalized() {
        let raw = vec![" Chess ".to_string(), "chess".into(), "Indie-Rock".into()];
        assert_eq!(
            normalize_interests(&raw, 5, 24),
            Ok(vec!["chess".to_string(), "indie-rock".into()])
        );
        assert!(normalize_interests(&["".into()], 5, 24).is_err());
        assert!(normalize_interests(&["a<b".into()], 5, 24).is_err());
        assert!(normalize_interests(&["x".repeat(25)], 5, 24).is_err());
        assert!(normalize_interests(&vec!["a".into(); 6], 5, 24).is_err());
    }

    #[test]
    fn countries_are_two_letters() {
        assert_eq!(Country::new("de").unwrap().as_str(), "DE");
        assert!(Country::new("DEU").is_none());
        assert!(Country::new("1A").is_none());
        assert!(Country::new("é").is_none());
    }
}
