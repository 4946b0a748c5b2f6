//! What clients send: [`ClientMsg`] and its type, report reasons, and the
//! passphrase verifier of a locked room.

use super::*;

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
