//! What goes over the signalling WebSocket and the `chat` data channel, seen
//! from the client side.
//!
//! Outgoing messages are built here with the shared types of
//! `earshot_core::protocol`. Incoming server frames are the core's own
//! `ServerMsg`, decoded by `ServerMsg::from_json`; data-channel messages are
//! decoded here, and like every decoder of input from elsewhere that must
//! never panic (property-tested).

use earshot_core::hex;
use earshot_core::pow::{Challenge, PowSolution};
use earshot_core::protocol::{
    CallId, IceCandidate, PROTOCOL_VERSION, PeerId, ReportReason, SessionDescription,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The data channel every call has (created by the impolite side).
pub const CHAT_LABEL: &str = "chat";

/// Longest chat text in characters (PROTOCOL.md, "Peer to peer").
pub const MAX_CHAT_CHARS: usize = 2000;

/// Where a signal goes: the partner of a stranger call, or a room member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Call(CallId),
    Peer(PeerId),
}

/// `hello`, with a solved challenge when the server asked for one.
pub fn hello(pow: Option<&PowSolution>) -> String {
    match pow {
        None => json!({"type": "hello", "version": PROTOCOL_VERSION}),
        Some(p) => json!({"type": "hello", "version": PROTOCOL_VERSION, "pow": {
            "salt": p.salt, "number": p.number, "challenge": p.challenge, "signature": p.signature}}),
    }
    .to_string()
}

pub fn search(interests: &[String]) -> String {
    json!({"type": "search", "interests": interests}).to_string()
}

/// A message with nothing but its type (`skip`, `end`, `room_unlock`, ...).
pub fn bare(kind: &str) -> String {
    json!({ "type": kind }).to_string()
}

pub fn report(reason: Option<ReportReason>) -> String {
    match reason {
        Some(r) => json!({"type": "report", "reason": r.as_str()}),
        None => json!({"type": "report"}),
    }
    .to_string()
}

pub fn room_join(room: &str, verifier: Option<&str>) -> String {
    match verifier {
        Some(v) => json!({"type": "room_join", "room": room, "verifier": v}),
        None => json!({"type": "room_join", "room": room}),
    }
    .to_string()
}

pub fn room_lock(verifier: &str) -> String {
    json!({"type": "room_lock", "verifier": verifier}).to_string()
}

/// What one signal carries.
pub enum Payload<'a> {
    Description(&'a SessionDescription),
    Candidate(&'a IceCandidate),
}

/// A `signal` to the stranger partner or a room member (with `auth` in a
/// locked room).
pub fn signal(to: Target, payload: Payload<'_>, auth: Option<&str>) -> String {
    let mut msg = match to {
        Target::Call(call) => json!({"type": "signal", "call": call}),
        Target::Peer(peer) => json!({"type": "signal", "to": peer}),
    };
    let obj = msg.as_object_mut().expect("built as an object above");
    match payload {
        Payload::Description(d) => obj.insert("description".into(), to_value(d)),
        Payload::Candidate(c) => obj.insert("candidate".into(), to_value(c)),
    };
    if let Some(a) = auth {
        obj.insert("auth".into(), Value::from(a));
    }
    msg.to_string()
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("protocol types always serialize")
}

/// Solves a proof-of-work challenge by brute force: the `number` in
/// `0..=maxnumber` whose `SHA-256(salt + number)` is the challenge. `None`
/// when there is none (a broken server).
pub fn solve(c: &Challenge) -> Option<PowSolution> {
    let want = c.challenge.to_ascii_lowercase();
    let number = (0..=c.maxnumber.min(100_000_000)).find(|n| {
        let digest = Sha256::digest(format!("{}{n}", c.salt).as_bytes());
        hex::encode(&digest) == want
    })?;
    Some(PowSolution {
        salt: c.salt.clone(),
        number,
        challenge: c.challenge.clone(),
        signature: c.signature.clone(),
    })
}

/// A message on the `chat` data channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelMsg {
    Chat(String),
    State {
        muted: bool,
    },
    /// Safety words (PROTOCOL.md): the committer's SHA-256 of its nonce.
    SafetyCommit([u8; 32]),
    /// The responder's nonce.
    SafetyNonce([u8; 32]),
    /// The committer's nonce, revealed.
    SafetyReveal([u8; 32]),
}

#[derive(Deserialize)]
struct ChannelF {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    muted: Option<bool>,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

/// Decodes a data-channel message as the browser does; `None` for anything
/// the protocol says to ignore (not JSON, unknown type, empty or over-long
/// text), and for a safety-words message whose value is not 64 lower-case
/// hex digits ([`is_safety`] tells those apart, for the warning).
pub fn decode_channel(data: &[u8]) -> Option<ChannelMsg> {
    if data.len() > MAX_CHAT_CHARS * 6 + 64 {
        return None;
    }
    let f: ChannelF = serde_json::from_slice(data).ok()?;
    match (f.kind.as_str(), f.text, f.muted) {
        ("chat", Some(text), _) if !text.is_empty() && text.chars().count() <= MAX_CHAT_CHARS => {
            Some(ChannelMsg::Chat(text))
        }
        ("state", _, Some(muted)) => Some(ChannelMsg::State { muted }),
        ("safety_commit", _, _) => Some(ChannelMsg::SafetyCommit(hex32(f.hash)?)),
        ("safety_nonce", _, _) => Some(ChannelMsg::SafetyNonce(hex32(f.nonce)?)),
        ("safety_reveal", _, _) => Some(ChannelMsg::SafetyReveal(hex32(f.nonce)?)),
        _ => None,
    }
}

fn hex32(text: Option<String>) -> Option<[u8; 32]> {
    hex::decode(&text?)
}

/// Whether this data-channel message has a safety-words `type` (well formed
/// or not): a malformed one must end the exchange with the warning.
pub fn is_safety(data: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: String,
    }
    data.len() <= 1024
        && serde_json::from_slice::<Kind>(data).is_ok_and(|k| k.kind.starts_with("safety_"))
}

/// The data-channel text of a message.
pub fn encode_channel(msg: &ChannelMsg) -> String {
    match msg {
        ChannelMsg::Chat(text) => encode_chat(text),
        ChannelMsg::State { muted } => json!({"type": "state", "muted": muted}).to_string(),
        ChannelMsg::SafetyCommit(h) => {
            json!({"type": "safety_commit", "hash": hex::encode(h)}).to_string()
        }
        ChannelMsg::SafetyNonce(n) => {
            json!({"type": "safety_nonce", "nonce": hex::encode(n)}).to_string()
        }
        ChannelMsg::SafetyReveal(n) => {
            json!({"type": "safety_reveal", "nonce": hex::encode(n)}).to_string()
        }
    }
}

/// The data-channel text for a chat line.
pub fn encode_chat(text: &str) -> String {
    json!({"type": "chat", "text": text}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn channel_messages_follow_the_browser() {
        assert_eq!(
            decode_channel(encode_chat("hi there").as_bytes()),
            Some(ChannelMsg::Chat("hi there".into()))
        );
        assert_eq!(
            decode_channel(br#"{"type":"state","muted":true}"#),
            Some(ChannelMsg::State { muted: true })
        );
        assert_eq!(decode_channel(br#"{"type":"chat","text":""}"#), None);
        let long = encode_chat(&"é".repeat(MAX_CHAT_CHARS + 1));
        assert_eq!(decode_channel(long.as_bytes()), None);
        assert_eq!(decode_channel(b"\xff\xfe"), None);
    }

    #[test]
    fn safety_messages_round_trip() {
        let n: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        for m in [
            ChannelMsg::SafetyCommit(n),
            ChannelMsg::SafetyNonce(n),
            ChannelMsg::SafetyReveal(n),
        ] {
            let text = encode_channel(&m);
            assert!(is_safety(text.as_bytes()));
            assert_eq!(decode_channel(text.as_bytes()), Some(m));
        }
        let short = br#"{"type":"safety_nonce","nonce":"abcd"}"#;
        assert!(is_safety(short));
        assert_eq!(decode_channel(short), None);
        assert!(!is_safety(encode_chat("safety_commit").as_bytes()));
    }

    #[test]
    fn solves_a_challenge() {
        let salt = "abc?expires=1".to_string();
        let challenge = hex::encode(&Sha256::digest(format!("{salt}1234").as_bytes()));
        let c = Challenge {
            salt,
            challenge,
            maxnumber: 5000,
            signature: "s".into(),
        };
        assert_eq!(solve(&c).map(|s| s.number), Some(1234));
    }

    #[test]
    fn a_signal_round_trips_through_the_core_decoder() {
        let d = SessionDescription {
            kind: earshot_core::protocol::SdpType::Offer,
            sdp: "v=0\r\n".into(),
        };
        let text = signal(Target::Peer(2), Payload::Description(&d), Some("YWJj"));
        assert!(matches!(
            earshot_core::protocol::decode(&text),
            Ok(earshot_core::ClientMsg::RoomSignal(_))
        ));
        let text = signal(Target::Call(9), Payload::Description(&d), None);
        assert!(matches!(
            earshot_core::protocol::decode(&text),
            Ok(earshot_core::ClientMsg::Signal(_))
        ));
    }

    proptest! {
        #[test]
        fn decode_channel_never_panics(text in ".{0,300}") {
            let _ = decode_channel(text.as_bytes());
        }

        #[test]
        fn decode_channel_never_panics_on_near_messages(
            kind in prop::sample::select(vec!["chat", "state", "other"]),
            field in prop::sample::select(vec!["text", "muted", "type"]),
            value in prop::sample::select(vec!["1", "-1", "null", "true", "\"x\"", "\"\"", "[]",
                "{}", "1e99", "[1,2]"]),
        ) {
            let text = format!(r#"{{"type":"{kind}","{field}":{value}}}"#);
            let _ = decode_channel(text.as_bytes());
        }

        #[test]
        fn decode_channel_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_channel(&bytes);
        }
    }
}
