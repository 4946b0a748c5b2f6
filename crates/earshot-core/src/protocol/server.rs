//! What the server sends: [`ServerMsg`] and the shapes inside it (country,
//! ICE servers, limits, why a call ended).

use super::*;

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
