//! The client's side of [`ServerMsg`]: decoding the server's frames, for
//! `earshot-peer` and any other client written in Rust.
//!
//! Every type decodes exactly what it encodes (a round trip over every
//! message, property-tested below). Unknown fields are ignored, as
//! PROTOCOL.md asks of clients, so a frame from a server that has added a
//! field still decodes; an unknown type is an error, which a client ignores.
//! Like every decoder of input from elsewhere, it never panics.
//!
//! `signal` is the type of two variants: a stranger call's ([`Signal`], with
//! `call`) and a room member's ([`RoomSignal`], with `from`). A derived
//! decoder would take the first for both, so a frame is read into a JSON
//! value first and the presence of `call` decides; the derived decoder
//! (`remote = "Self"` on [`ServerMsg`]) reads every other type.

use std::borrow::Cow;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::{PeerId, RoomSignal, ServerMsg, Signal, SignalFields, SignalPayload};

impl Serialize for ServerMsg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The derived encoder: inherent (`remote = "Self"`), not this trait
        // method, so no recursion.
        ServerMsg::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for ServerMsg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ServerMsg, D::Error> {
        let frame = Value::deserialize(d)?;
        // serde would also read an enum from an array; frames are objects.
        if !frame.is_object() {
            return Err(D::Error::custom("a server message is a JSON object"));
        }
        let decoded = if frame.get("type").and_then(Value::as_str) == Some("signal") {
            if frame.get("call").is_some() {
                Signal::deserialize(frame).map(ServerMsg::Signal)
            } else {
                RoomSignal::deserialize(frame).map(ServerMsg::RoomSignal)
            }
        } else {
            // The derived decoder: inherent (`remote = "Self"`), not this
            // trait method, so no recursion.
            ServerMsg::deserialize(frame)
        };
        decoded.map_err(D::Error::custom)
    }
}

impl ServerMsg {
    /// Decodes a text frame from the server: the client's side of
    /// [`ServerMsg::to_json`].
    pub fn from_json(text: &str) -> serde_json::Result<ServerMsg> {
        serde_json::from_str(text)
    }
}

/// A `signal` as the server sends it: a client's fields, and `from` in a
/// room.
#[derive(Deserialize)]
struct RelayedFields {
    #[serde(default)]
    from: Option<PeerId>,
    #[serde(flatten)]
    signal: SignalFields,
}

impl RelayedFields {
    fn payload<E: serde::de::Error>(&mut self) -> Result<SignalPayload, E> {
        let (description, candidate) =
            (self.signal.description.take(), self.signal.candidate.take());
        SignalPayload::one_of(description, candidate)
            .ok_or_else(|| E::custom("a signal carries one description or one candidate"))
    }
}

/// A stranger call's signal: `call` and its payload, nothing else.
impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
        let mut f = RelayedFields::deserialize(d)?;
        let payload = f.payload()?;
        match (f.signal.call, f.signal.to, f.from, &f.signal.auth) {
            (Some(call), None, None, None) => Ok(Signal { call, payload }),
            _ => Err(D::Error::custom(
                "a call's signal has a call and no room fields",
            )),
        }
    }
}

/// A room member's signal: no `call`; `to`, `from` and `auth` as sent.
impl<'de> Deserialize<'de> for RoomSignal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RoomSignal, D::Error> {
        let mut f = RelayedFields::deserialize(d)?;
        let payload = f.payload()?;
        if f.signal.call.is_some() {
            return Err(D::Error::custom("a room signal has no call"));
        }
        Ok(RoomSignal {
            to: f.signal.to,
            from: f.from,
            payload,
            auth: f.signal.auth,
        })
    }
}

/// `challenge.algorithm`: this protocol version has one.
pub(super) fn pow_algorithm<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    let name = Cow::<str>::deserialize(d)?;
    if name == crate::pow::ALGORITHM {
        Ok(crate::pow::ALGORITHM)
    } else {
        Err(D::Error::custom("unknown proof-of-work algorithm"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        ClientMsgType, Country, EndReason, ErrorCode, IceCandidate, IceServer, Limits, SdpType,
        SessionDescription,
    };
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        ".{0,12}"
    }

    fn country() -> impl Strategy<Value = Country> {
        "[A-Za-z]{2}".prop_map(|c| Country::new(&c).expect("two letters"))
    }

    fn ice_server() -> impl Strategy<Value = IceServer> {
        (
            prop::collection::vec(text(), 0..3),
            prop::option::of(text()),
            prop::option::of(text()),
        )
            .prop_map(|(urls, username, credential)| IceServer {
                urls,
                username,
                credential,
            })
    }

    fn limits() -> impl Strategy<Value = Limits> {
        (
            any::<usize>(),
            any::<usize>(),
            any::<usize>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<usize>(),
            any::<u64>(),
        )
            .prop_map(|(a, b, c, d, e, f, g, h, i)| Limits {
                max_message_bytes: a,
                max_interests: b,
                max_interest_chars: c,
                interest_wait_ms: d,
                rematch_cooldown_ms: e,
                messages_per_second: f,
                message_burst: g,
                max_room_size: h,
                ice_credential_ttl_ms: i,
            })
    }

    fn payload() -> impl Strategy<Value = SignalPayload> {
        let kind = prop::sample::select(vec![
            SdpType::Offer,
            SdpType::Answer,
            SdpType::Pranswer,
            SdpType::Rollback,
        ]);
        let description = (kind, text())
            .prop_map(|(kind, sdp)| SignalPayload::Description(SessionDescription { kind, sdp }));
        let candidate = (
            text(),
            prop::option::of(text()),
            prop::option::of(any::<u16>()),
            prop::option::of(text()),
        )
            .prop_map(
                |(candidate, sdp_mid, sdp_m_line_index, username_fragment)| {
                    SignalPayload::Candidate(IceCandidate {
                        candidate,
                        sdp_mid,
                        sdp_m_line_index,
                        username_fragment,
                    })
                },
            );
        prop_oneof![description, candidate]
    }

    fn interests() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(text(), 0..3)
    }

    /// Every variant, with any values its types allow (`algorithm` has one).
    fn server_msg() -> impl Strategy<Value = ServerMsg> {
        let calls = prop_oneof![
            (
                any::<u32>(),
                prop::collection::vec(ice_server(), 0..3),
                limits(),
                prop::option::of(country()),
                any::<bool>()
            )
                .prop_map(
                    |(version, ice_servers, limits, country, hide_ip_default)| {
                        ServerMsg::Welcome {
                            version,
                            ice_servers,
                            limits,
                            country,
                            hide_ip_default,
                        }
                    }
                ),
            prop::collection::vec(ice_server(), 0..3)
                .prop_map(|ice_servers| ServerMsg::IceServers { ice_servers }),
            interests().prop_map(|interests| ServerMsg::Searching { interests }),
            (
                any::<u64>(),
                any::<bool>(),
                interests(),
                prop::option::of(country())
            )
                .prop_map(|(call, polite, interests, country)| ServerMsg::Matched {
                    call,
                    polite,
                    interests,
                    country,
                }),
            (any::<u64>(), payload())
                .prop_map(|(call, payload)| ServerMsg::Signal(Signal { call, payload })),
            (
                any::<u64>(),
                prop::sample::select(vec![
                    EndReason::PartnerSkipped,
                    EndReason::PartnerEnded,
                    EndReason::PartnerLeft,
                ])
            )
                .prop_map(|(call, reason)| ServerMsg::CallEnded { call, reason }),
            Just(ServerMsg::Idle),
            (text(), text(), any::<u64>(), text()).prop_map(
                |(salt, challenge, maxnumber, signature)| ServerMsg::Challenge {
                    algorithm: crate::pow::ALGORITHM,
                    salt,
                    challenge,
                    maxnumber,
                    signature,
                }
            ),
        ];
        let rooms = prop_oneof![
            text().prop_map(|name| ServerMsg::RoomSuggestion { name }),
            (
                text(),
                any::<u32>(),
                prop::collection::vec(any::<u32>(), 0..4),
                any::<bool>(),
                any::<usize>()
            )
                .prop_map(|(room, peer, peers, locked, max_size)| {
                    ServerMsg::RoomJoined {
                        room,
                        peer,
                        peers,
                        locked,
                        max_size,
                    }
                }),
            any::<u32>().prop_map(|peer| ServerMsg::PeerJoined { peer }),
            any::<u32>().prop_map(|peer| ServerMsg::PeerLeft { peer }),
            (
                prop::option::of(any::<u32>()),
                prop::option::of(any::<u32>()),
                payload(),
                prop::option::of(text())
            )
                .prop_map(|(to, from, payload, auth)| {
                    ServerMsg::RoomSignal(RoomSignal {
                        to,
                        from,
                        payload,
                        auth,
                    })
                }),
            any::<bool>().prop_map(|locked| ServerMsg::RoomLockState { locked }),
            (
                prop::sample::select(ErrorCode::ALL.to_vec()),
                prop::option::of(prop::sample::select(ClientMsgType::ALL.to_vec())),
                prop_oneof![Just(None), text().prop_map(|t| Some(Cow::Owned(t)))],
                prop::option::of(any::<u64>())
            )
                .prop_map(|(code, re, message, retry_after_ms)| ServerMsg::Error {
                    code,
                    re,
                    message: message.unwrap_or(Cow::Borrowed(code.message())),
                    retry_after_ms,
                }),
        ];
        prop_oneof![calls, rooms]
    }

    #[test]
    fn decodes_the_protocol_examples() {
        let m = ServerMsg::from_json(
            r#"{"type": "matched", "call": 7, "polite": false, "interests": ["chess"], "country": "DE"}"#,
        );
        assert_eq!(
            m.unwrap(),
            ServerMsg::Matched {
                call: 7,
                polite: false,
                interests: vec!["chess".into()],
                country: Country::new("DE"),
            }
        );
        let s = ServerMsg::from_json(
            r#"{"type": "signal", "from": 3, "description": {"type": "offer", "sdp": "v=0"}, "auth": "x"}"#,
        );
        assert!(matches!(
            s,
            Ok(ServerMsg::RoomSignal(RoomSignal {
                from: Some(3),
                auth: Some(_),
                ..
            }))
        ));
        for bad in [
            r#"{"type": "signal", "call": 1}"#,
            r#"{"type": "signal", "from": 1}"#,
            r#"{"type": "signal", "call": 1, "from": 2, "candidate": {"candidate": "c"}}"#,
            r#"{"type": "signal", "call": 1, "candidate": {"candidate": "c"}, "description": {"type": "offer"}}"#,
            r#"["welcome", 1]"#,
            r#"{"type": "future"}"#,
            r#"{"type": "challenge", "algorithm": "MD5", "salt": "s", "challenge": "c", "maxnumber": 1, "signature": "g"}"#,
        ] {
            assert!(ServerMsg::from_json(bad).is_err(), "{bad}");
        }
        let e = ServerMsg::from_json(
            r#"{"type": "error", "code": "rate_limited", "re": "search", "message": "m", "retry_after_ms": 450}"#,
        );
        assert_eq!(
            e.unwrap(),
            ServerMsg::Error {
                code: ErrorCode::RateLimited,
                re: Some(ClientMsgType::Search),
                message: "m".into(),
                retry_after_ms: Some(450),
            }
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        // `re` (the request an error answers) and whatever comes later.
        let e = ServerMsg::from_json(
            r#"{"type": "error", "code": "room_full", "message": "full", "re": "room_join", "x": [1]}"#,
        );
        assert!(matches!(
            e,
            Ok(ServerMsg::Error {
                code: ErrorCode::RoomFull,
                ..
            })
        ));
        let s = ServerMsg::from_json(
            r#"{"type": "signal", "call": 4, "candidate": {"candidate": "c", "x": 1}, "y": 2}"#,
        );
        assert!(matches!(s, Ok(ServerMsg::Signal(Signal { call: 4, .. }))));
    }

    proptest! {
        #[test]
        fn every_message_decodes_to_itself(msg in server_msg()) {
            let json = msg.to_json();
            prop_assert_eq!(ServerMsg::from_json(&json).ok(), Some(msg), "{}", json);
        }

        #[test]
        fn decode_never_panics(text in ".{0,300}") {
            let _ = ServerMsg::from_json(&text);
        }

        #[test]
        fn decode_never_panics_on_near_messages(
            kind in prop::sample::select(vec!["welcome", "ice_servers", "challenge", "searching",
                "matched", "signal", "call_ended", "idle", "room_suggestion", "room_joined",
                "peer_joined", "peer_left", "room_lock_state", "error"]),
            field in prop::sample::select(vec!["call", "from", "to", "peer", "peers", "polite",
                "locked", "description", "candidate", "code", "maxnumber", "country", "limits",
                "reason", "algorithm", "message"]),
            value in prop::sample::select(vec!["1", "-1", "null", "true", "\"x\"", "[]", "{}",
                "{\"type\":\"offer\",\"sdp\":\"v\"}", "{\"candidate\":\"c\"}", "1e99", "[1,2]",
                "\"DE\"", "\"SHA-256\"", "\"partner_left\"", "\"banned\""]),
        ) {
            let _ = ServerMsg::from_json(&format!(r#"{{"type":"{kind}","{field}":{value}}}"#));
        }
    }
}
