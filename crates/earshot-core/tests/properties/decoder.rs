//! Decoder robustness: the decoder and the switchboard's answer on arbitrary
//! text, JSON trees and malformed messages, for senders in every state.

#[allow(unused_imports)]
use super::*;

pub(crate) const KNOWN_TYPES: &[&str] = &[
    "report",
    "room_report",
    "refresh_ice",
    "hello",
    "search",
    "signal",
    "skip",
    "end",
    "room_suggest",
    "room_join",
    "room_lock",
    "room_unlock",
];

/// The types whose fields can be wrong.
pub(crate) const TYPES_WITH_FIELDS: &[&str] = &[
    "hello",
    "search",
    "signal",
    "room_join",
    "room_lock",
    "report",
    "room_report",
];

pub(crate) const KEYS: &[&str] = &[
    "type",
    "version",
    "interests",
    "call",
    "description",
    "candidate",
    "sdp",
    "sdpMid",
    "sdpMLineIndex",
    "usernameFragment",
    "to",
    "from",
    "auth",
    "room",
    "verifier",
    "reason",
    "peer",
    "pow",
    "salt",
    "number",
    "challenge",
    "signature",
    "junk",
    "",
];

pub(crate) const WORDS: &[&str] = &[
    "hello",
    "search",
    "signal",
    "skip",
    "end",
    "offer",
    "answer",
    "pranswer",
    "rollback",
    "welcome",
    "matched",
    "Skip",
    "hello ",
    "",
    "v=0",
    "chess",
    "<b>",
    "room_suggest",
    "room_join",
    "room_lock",
    "room_unlock",
    "room_joined",
    "quiet-otters",
    "Room-7",
    "ab",
    "abc_-9",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "report",
    "room_report",
    "refresh_ice",
    "harassment",
    "spam",
    "Spam",
    "underage",
];

pub(crate) fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0u64..4).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        select(WORDS).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

/// Arbitrary JSON trees, with keys and strings that mean something here.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(select(KEYS).prop_map(String::from), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

pub(crate) fn description_value() -> impl Strategy<Value = Value> {
    (
        select(&["offer", "answer", "pranswer", "rollback", "bogus"][..]),
        prop::option::of(prop_oneof![Just(json!("v=0")), json_leaf()]),
    )
        .prop_map(|(kind, sdp)| {
            let mut d = json!({ "type": kind });
            if let Some(sdp) = sdp {
                d["sdp"] = sdp;
            }
            d
        })
}

pub(crate) fn candidate_value() -> impl Strategy<Value = Value> {
    let field = || prop::option::of(prop_oneof![Just(json!("0")), Just(json!(0)), json_leaf()]);
    (field(), field(), field(), field()).prop_map(|(c, mid, index, ufrag)| {
        let mut m = Map::new();
        for (k, v) in [
            ("candidate", c),
            ("sdpMid", mid),
            ("sdpMLineIndex", index),
            ("usernameFragment", ufrag),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        }
        Value::Object(m)
    })
}

pub(crate) fn bytes32() -> impl Strategy<Value = [u8; 32]> {
    prop::array::uniform32(any::<u8>())
}

/// A well-formed `auth`: base64url, at most `MAX_AUTH_LEN` characters.
pub(crate) fn auth() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(auth_text()),
        "[A-Za-z0-9_-]{0,128}".prop_map(|mut a| {
            if a.len() % 4 == 1 {
                a.pop();
            }
            a
        }),
    ]
}

/// Strings that are not a verifier: a wrong length, a character from
/// outside base64url, padding; and values that are not strings.
pub(crate) fn bad_verifier() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[A-Za-z0-9_-]{0,42}".prop_map(Value::from),
        "[A-Za-z0-9_-]{44,64}".prop_map(Value::from),
        (
            "[A-Za-z0-9_-]{43}",
            0usize..43,
            select(&['+', '/', '=', ' ', '.', 'é', '\0'][..])
        )
            .prop_map(|(s, i, c)| {
                let mut chars: Vec<char> = s.chars().collect();
                chars[i] = c;
                Value::from(chars.into_iter().collect::<String>())
            }),
        bytes32().prop_map(|b| Value::from(b64url(&b) + "=")),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        bytes32().prop_map(|b| json!([b64url(&b)])),
        Just(json!({})),
    ]
}

/// Values that are not an `auth`: too long, a character from outside
/// base64url, a length no base64 has; and values that are not strings.
pub(crate) fn bad_auth() -> impl Strategy<Value = Value> {
    prop_oneof![
        (1usize..=8).prop_map(|k| Value::from("A".repeat(MAX_AUTH_LEN + 4 * k))),
        (
            "[A-Za-z0-9_-]{0,40}",
            any::<prop::sample::Index>(),
            select(&['+', '/', '=', ' ', 'é'][..])
        )
            .prop_map(|(s, i, c)| {
                let mut chars: Vec<char> = s.chars().collect();
                chars.insert(i.index(chars.len() + 1), c);
                Value::from(chars.into_iter().collect::<String>())
            }),
        (0usize..32).prop_map(|k| Value::from("A".repeat(4 * k + 1))),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(json!([])),
    ]
}

/// Room-ish values: names, verifiers (good and bad), `auth` strings.
pub(crate) fn room_field() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(ROOM_NAMES).prop_map(Value::from),
        bytes32().prop_map(|b| Value::from(b64url(&b))),
        bad_verifier(),
        auth().prop_map(Value::from),
    ]
}

/// `msg` with `reason` if there is one.
pub(crate) fn with_reason(mut msg: Value, reason: &Option<ReportReason>) -> Value {
    if let Some(r) = reason {
        msg["reason"] = r.as_str().into();
    }
    msg
}

/// A decoded `reason` is the one sent, or none was sent.
pub(crate) fn check_reason(v: &Value, reason: Option<ReportReason>) -> Result<(), TestCaseError> {
    match reason {
        None => prop_assert!(
            v.get("reason").is_none_or(Value::is_null),
            "a reason was dropped"
        ),
        Some(r) => prop_assert_eq!(v["reason"].as_str(), Some(r.as_str())),
    }
    Ok(())
}

/// Proof-of-work solutions: any strings, any number.
pub(crate) fn pow_solution() -> impl Strategy<Value = PowSolution> {
    let text = || prop_oneof!["[0-9a-f]{64}", any::<String>()];
    (text(), any::<u64>(), text(), text()).prop_map(|(salt, number, challenge, signature)| {
        PowSolution {
            salt,
            number,
            challenge,
            signature,
        }
    })
}

/// `pow` values that are not a solution: a field missing, null or of the
/// wrong type, a number that is no `u64`, or not an object at all.
pub(crate) fn bad_pow() -> impl Strategy<Value = Value> {
    let bad_number = prop_oneof![
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!("7")),
        Just(json!(u64::MAX as f64 * 2.0)),
        Just(Value::Null),
        Just(json!([7])),
    ];
    let bad_text = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        Just(json!(["abc"])),
        Just(json!({})),
        any::<bool>().prop_map(Value::from),
    ];
    const FIELDS: [&str; 4] = ["salt", "number", "challenge", "signature"];
    prop_oneof![
        (pow_solution(), select(&FIELDS[..])).prop_map(|(p, k)| {
            let mut v = pow_json(&p);
            v.as_object_mut().unwrap().remove(k);
            v
        }),
        (pow_solution(), bad_number).prop_map(|(p, n)| {
            let mut v = pow_json(&p);
            v["number"] = n;
            v
        }),
        (
            pow_solution(),
            select(&["salt", "challenge", "signature"][..]),
            bad_text
        )
            .prop_map(|(p, k, x)| {
                let mut v = pow_json(&p);
                v[k] = x;
                v
            }),
        Just(json!({})),
        Just(json!("solved")),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ]
}

/// Values that are not a report reason.
pub(crate) fn bad_reason() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(&["Spam", "vibes", "", "harassment ", "other\0"][..]).prop_map(Value::from),
        "[a-z]{1,12}"
            .prop_filter("a reason", |r| !ReportReason::ALL
                .iter()
                .any(|x| x.as_str() == r))
            .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(json!(["spam"])),
        Just(json!({"reason": "spam"})),
    ]
}

/// Values of the moderation fields, good and bad: reasons, peer ids, proofs of work.
pub(crate) fn moderation_field() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(&ReportReason::ALL[..]).prop_map(|r| Value::from(r.as_str())),
        bad_reason(),
        pow_solution().prop_map(|p| pow_json(&p)),
        bad_pow(),
    ]
}

/// A `report`, `room_report` or `hello` with exactly one thing wrong: a
/// reason not on the list, a missing or invalid peer, a malformed `pow`.
pub(crate) fn malformed_moderation_message() -> impl Strategy<Value = Value> {
    let bad_peer = prop_oneof![
        Just(json!(-1)),
        Just(json!(u64::from(u32::MAX) + 1)),
        Just(json!("2")),
        Just(json!(1.5)),
        Just(Value::Null),
        Just(json!([2])),
    ];
    prop_oneof![
        bad_reason().prop_map(|r| json!({"type": "report", "reason": r})),
        (0 as PeerId..8, bad_reason())
            .prop_map(|(peer, r)| json!({"type": "room_report", "peer": peer, "reason": r})),
        (bad_peer, reason()).prop_map(|(peer, r)| {
            with_reason(json!({"type": "room_report", "peer": peer}), &r)
        }),
        reason().prop_map(|r| with_reason(json!({"type": "room_report"}), &r)),
        (0u32..3, bad_pow()).prop_map(|(version, pow)| {
            json!({"type": "hello", "version": version, "pow": pow})
        }),
    ]
}

/// An object shaped like a client message: a real or junk `type`, and fields
/// that are plausible, wrong or junk.
pub(crate) fn message_value() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        8 => select(KNOWN_TYPES).prop_map(Value::from),
        2 => select(WORDS).prop_map(Value::from),
        1 => json_value(),
    ];
    let field = prop_oneof![
        3 => json_value(),
        2 => (0u64..4).prop_map(Value::from),
        2 => prop::collection::vec(select(TAGS).prop_map(Value::from), 0..7).prop_map(Value::Array),
        2 => description_value(),
        2 => candidate_value(),
        2 => room_field(),
        2 => moderation_field(),
    ];
    let fields = prop::collection::btree_map(select(KEYS).prop_map(String::from), field, 0..5);
    (kind, fields).prop_map(|(kind, fields)| {
        let mut m: Map<String, Value> = fields.into_iter().collect();
        m.insert("type".into(), kind);
        Value::Object(m)
    })
}

pub(crate) fn junk_fields() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("x[a-z]{0,3}", json_leaf(), 0..3)
        .prop_map(|m| m.into_iter().collect())
}

pub(crate) fn sdp_type() -> impl Strategy<Value = SdpType> {
    select(
        &[
            SdpType::Offer,
            SdpType::Answer,
            SdpType::Pranswer,
            SdpType::Rollback,
        ][..],
    )
}

pub(crate) fn signal_payload() -> impl Strategy<Value = SignalPayload> {
    prop_oneof![
        (sdp_type(), any::<String>())
            .prop_map(|(kind, sdp)| SignalPayload::Description(SessionDescription { kind, sdp })),
        (
            any::<String>(),
            any::<Option<String>>(),
            any::<Option<u16>>(),
            any::<Option<String>>()
        )
            .prop_map(
                |(candidate, sdp_mid, sdp_m_line_index, username_fragment)| {
                    SignalPayload::Candidate(IceCandidate {
                        candidate,
                        sdp_mid,
                        sdp_m_line_index,
                        username_fragment,
                    })
                }
            ),
    ]
}

/// A room signal as a client sends it: `to`, no `from`.
pub(crate) fn client_room_signal() -> impl Strategy<Value = RoomSignal> {
    (
        prop_oneof![0 as PeerId..4, any::<PeerId>()],
        signal_payload(),
        prop::option::of(auth()),
    )
        .prop_map(|(to, payload, auth)| RoomSignal {
            to: Some(to),
            from: None,
            payload,
            auth,
        })
}

/// Room names: the session's, ones made of the right characters, and anything.
pub(crate) fn room_text() -> impl Strategy<Value = String> {
    prop_oneof![
        select(ROOM_NAMES).prop_map(String::from),
        "[a-z0-9-]{1,66}",
        any::<String>(),
    ]
}

/// A well-formed client message as JSON (with unknown extra fields), and
/// what it must decode to.
pub(crate) fn valid_message() -> impl Strategy<Value = (Value, ClientMsg)> {
    let msg = prop_oneof![
        (any::<u32>(), prop::option::of(pow_solution()))
            .prop_map(|(version, pow)| ClientMsg::Hello { version, pow }),
        reason().prop_map(|reason| ClientMsg::Report { reason }),
        (prop_oneof![0 as PeerId..4, any::<PeerId>()], reason())
            .prop_map(|(peer, reason)| ClientMsg::RoomReport { peer, reason }),
        Just(ClientMsg::RefreshIce),
        prop::collection::vec(any::<String>(), 0..7)
            .prop_map(|interests| ClientMsg::Search { interests }),
        (any::<u64>(), signal_payload())
            .prop_map(|(call, payload)| ClientMsg::Signal(Signal { call, payload })),
        Just(ClientMsg::Skip),
        Just(ClientMsg::End),
        Just(ClientMsg::RoomSuggest),
        (room_text(), prop::option::of(bytes32())).prop_map(|(room, v)| ClientMsg::RoomJoin {
            room,
            verifier: v.map(Verifier)
        }),
        client_room_signal().prop_map(ClientMsg::RoomSignal),
        bytes32().prop_map(|v| ClientMsg::RoomLock {
            verifier: Verifier(v)
        }),
        Just(ClientMsg::RoomUnlock),
    ];
    (msg, junk_fields()).prop_map(|(msg, mut m)| {
        let fields = match &msg {
            ClientMsg::Hello { version, pow: None } => json!({"type": "hello", "version": version}),
            ClientMsg::Hello {
                version,
                pow: Some(p),
            } => json!({"type": "hello", "version": version, "pow": pow_json(p)}),
            ClientMsg::Search { interests } if interests.is_empty() => json!({"type": "search"}),
            ClientMsg::Search { interests } => json!({"type": "search", "interests": interests}),
            ClientMsg::Signal(s) => serde_json::to_value(ServerMsg::Signal(s.clone())).unwrap(),
            ClientMsg::Skip => json!({"type": "skip"}),
            ClientMsg::End => json!({"type": "end"}),
            ClientMsg::RoomSuggest => json!({"type": "room_suggest"}),
            ClientMsg::RoomJoin {
                room,
                verifier: None,
            } => json!({"type": "room_join", "room": room}),
            ClientMsg::RoomJoin {
                room,
                verifier: Some(v),
            } => json!({"type": "room_join", "room": room, "verifier": b64url(&v.0)}),
            ClientMsg::RoomSignal(s) => {
                serde_json::to_value(ServerMsg::RoomSignal(s.clone())).unwrap()
            }
            ClientMsg::RoomLock { verifier } => {
                json!({"type": "room_lock", "verifier": b64url(&verifier.0)})
            }
            ClientMsg::RoomUnlock => json!({"type": "room_unlock"}),
            ClientMsg::Report { reason } => with_reason(json!({"type": "report"}), reason),
            ClientMsg::RoomReport { peer, reason } => {
                with_reason(json!({"type": "room_report", "peer": peer}), reason)
            }
            ClientMsg::RefreshIce => json!({"type": "refresh_ice"}),
        };
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        m.extend(fields);
        (Value::Object(m), msg)
    })
}

/// A room message with exactly one thing wrong: a malformed verifier or
/// `auth`, both `call` and `to`, `auth` on a call signal, a missing or
/// non-string room, a `to` that is not a peer id.
pub(crate) fn malformed_room_message() -> impl Strategy<Value = Value> {
    let signal = || {
        client_room_signal().prop_map(|s| serde_json::to_value(ServerMsg::RoomSignal(s)).unwrap())
    };
    let with = |mut v: Value, k: &str, x: Value| {
        v[k] = x;
        v
    };
    prop_oneof![
        (room_text(), bad_verifier())
            .prop_map(|(room, v)| json!({"type": "room_join", "room": room, "verifier": v})),
        prop_oneof![bad_verifier(), Just(Value::Null)]
            .prop_map(|v| json!({"type": "room_lock", "verifier": v})),
        Just(json!({"type": "room_lock"})),
        prop_oneof![
            Just(json!({"type": "room_join"})),
            Just(json!({"type": "room_join", "room": null})),
            any::<i64>().prop_map(|r| json!({"type": "room_join", "room": r})),
            Just(json!({"type": "room_join", "room": ["quiet-otters"]})),
        ],
        (signal(), bad_auth()).prop_map(move |(s, a)| with(s, "auth", a)),
        (signal(), any::<u64>()).prop_map(move |(s, call)| with(s, "call", call.into())),
        (
            signal(),
            prop_oneof![
                Just(json!(-1)),
                Just(json!(u64::from(u32::MAX) + 1)),
                Just(json!("2")),
                Just(json!(1.5)),
            ]
        )
            .prop_map(move |(s, to)| with(s, "to", to)),
        (any::<u64>(), signal_payload(), auth()).prop_map(move |(call, payload, a)| {
            let s = serde_json::to_value(ServerMsg::Signal(Signal { call, payload })).unwrap();
            with(s, "auth", a.into())
        }),
        signal().prop_map(|mut s| {
            let m = s.as_object_mut().unwrap();
            m.remove("description");
            m.remove("candidate");
            s
        }),
    ]
}

/// Frames of every kind: random text, JSON trees, message-shaped objects,
/// valid messages and malformed room messages.
pub(crate) fn any_frame() -> impl Strategy<Value = String> {
    // Boxed: the unboxed value trees are deep enough to overflow a test
    // thread's stack in debug builds.
    prop_oneof![
        1 => garbage().boxed(),
        1 => json_value().prop_map(|v| v.to_string()).boxed(),
        3 => message_value().prop_map(|v| v.to_string()).boxed(),
        2 => valid_message().prop_map(|(v, _)| v.to_string()).boxed(),
        1 => malformed_room_message().prop_map(|v| v.to_string()).boxed(),
        1 => malformed_moderation_message().prop_map(|v| v.to_string()).boxed(),
    ]
}

/// What the protocol promises about `decode(text)` whatever the frame: the
/// error class matches the frame's shape, and a decoded message says what
/// the frame says.
pub(crate) fn check_decode(text: &str) -> Result<Result<ClientMsg, DecodeError>, TestCaseError> {
    let decoded = protocol::decode(text);
    if decoded == Err(DecodeError::BadJson) {
        return Ok(decoded);
    }
    let value: Option<Value> = serde_json::from_str(text).ok();
    let kind = value
        .as_ref()
        .and_then(Value::as_object)
        .and_then(|m| m.get("type"))
        .and_then(Value::as_str);
    let Some(kind) = kind else {
        return Err(TestCaseError::fail(format!(
            "not a JSON object with a string type, yet decoded as {decoded:?} (not bad_json)"
        )));
    };
    let v = value.as_ref().unwrap();
    let given = |k: &str| v.get(k).is_some_and(|x| !x.is_null());
    let verifier_given = |ver: &Verifier| {
        v.get("verifier")
            .and_then(Value::as_str)
            .is_some_and(|text| encodes(text, &ver.0))
    };
    match &decoded {
        Err(DecodeError::UnknownType) => {
            prop_assert!(!KNOWN_TYPES.contains(&kind), "{kind:?} said to be unknown")
        }
        Err(_) => prop_assert!(
            TYPES_WITH_FIELDS.contains(&kind),
            "bad_message for type {kind:?}"
        ),
        Ok(ClientMsg::Hello { version, pow }) => {
            prop_assert_eq!(kind, "hello");
            prop_assert_eq!(v["version"].as_u64(), Some(u64::from(*version)));
            match pow {
                None => prop_assert!(!given("pow"), "a proof of work was dropped"),
                Some(p) => {
                    let given = &v["pow"];
                    prop_assert!(given.is_object(), "a proof of work that is not an object");
                    prop_assert_eq!(given["salt"].as_str(), Some(p.salt.as_str()));
                    prop_assert_eq!(given["number"].as_u64(), Some(p.number));
                    prop_assert_eq!(given["challenge"].as_str(), Some(p.challenge.as_str()));
                    prop_assert_eq!(given["signature"].as_str(), Some(p.signature.as_str()));
                }
            }
        }
        Ok(ClientMsg::Search { interests }) => {
            prop_assert_eq!(kind, "search");
            match v.get("interests") {
                None => prop_assert!(interests.is_empty()),
                Some(i) => prop_assert_eq!(i, &json!(interests)),
            }
        }
        Ok(ClientMsg::Signal(s)) => {
            prop_assert_eq!(kind, "signal");
            prop_assert_eq!(v["call"].as_u64(), Some(s.call));
            prop_assert!(
                given("description") != given("candidate"),
                "a signal needs exactly one of description and candidate"
            );
            prop_assert!(
                !given("to") && !given("auth"),
                "a call signal with `to` or `auth`"
            );
        }
        Ok(ClientMsg::Skip) => prop_assert_eq!(kind, "skip"),
        Ok(ClientMsg::End) => prop_assert_eq!(kind, "end"),
        Ok(ClientMsg::RoomSuggest) => prop_assert_eq!(kind, "room_suggest"),
        Ok(ClientMsg::RoomJoin { room, verifier }) => {
            prop_assert_eq!(kind, "room_join");
            prop_assert_eq!(v["room"].as_str(), Some(room.as_str()));
            match verifier {
                None => prop_assert!(!given("verifier"), "a verifier was dropped"),
                Some(ver) => prop_assert!(verifier_given(ver), "the verifier is not the one sent"),
            }
        }
        Ok(ClientMsg::RoomSignal(s)) => {
            prop_assert_eq!(kind, "signal");
            prop_assert!(!given("call"), "a room signal with a call");
            prop_assert!(s.to.is_some(), "a room signal without `to`");
            prop_assert_eq!(v["to"].as_u64(), s.to.map(u64::from));
            prop_assert_eq!(s.from, None, "`from` taken from the client");
            prop_assert!(
                given("description") != given("candidate"),
                "a signal needs exactly one of description and candidate"
            );
            match &s.auth {
                None => prop_assert!(!given("auth"), "auth was dropped"),
                Some(a) => {
                    prop_assert_eq!(v["auth"].as_str(), Some(a.as_str()), "auth changed");
                    prop_assert!(
                        a.len() <= MAX_AUTH_LEN && is_b64url(a),
                        "a malformed auth accepted: {a:?}"
                    );
                }
            }
        }
        Ok(ClientMsg::RoomLock { verifier }) => {
            prop_assert_eq!(kind, "room_lock");
            prop_assert!(verifier_given(verifier), "the verifier is not the one sent");
        }
        Ok(ClientMsg::RoomUnlock) => prop_assert_eq!(kind, "room_unlock"),
        Ok(ClientMsg::Report { reason }) => {
            prop_assert_eq!(kind, "report");
            check_reason(v, *reason)?;
        }
        Ok(ClientMsg::RoomReport { peer, reason }) => {
            prop_assert_eq!(kind, "room_report");
            prop_assert_eq!(v["peer"].as_u64(), Some(u64::from(*peer)));
            check_reason(v, *reason)?;
        }
        Ok(ClientMsg::RefreshIce) => prop_assert_eq!(kind, "refresh_ice"),
    }
    Ok(decoded)
}

/// Where the connection sending a frame stands.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scenario {
    /// Connected, no hello yet.
    Ungreeted,
    /// Greeted and idle, alone on the board.
    Idle,
    /// Greeted and in call 1 with `PARTNER`, both untagged.
    InCall,
    /// Greeted and in room `SCENARIO_ROOM`, which `PARTNER` joined first.
    InRoom,
}

pub(crate) const SENDER: ConnId = ConnId(1);
pub(crate) const PARTNER: ConnId = ConnId(2);
pub(crate) const SCENARIO_ROOM: &str = "test-room";

/// The peer ids of the sender and the partner in `Scenario::InRoom`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RoomIds {
    pub(crate) sender: PeerId,
    pub(crate) partner: PeerId,
}

pub(crate) fn board_in(scenario: Scenario) -> (Switchboard, RoomIds) {
    let now = Instant::now();
    let mut board = Switchboard::with_entropy(Config::default(), Entropy::new(splitmix(7)));
    let join = json!({"type": "room_join", "room": SCENARIO_ROOM}).to_string();
    board.connect(now, SENDER, ConnInfo::default());
    if !matches!(scenario, Scenario::Ungreeted) {
        board.handle_text(now, SENDER, &hello(1));
    }
    if matches!(scenario, Scenario::InCall | Scenario::InRoom) {
        board.connect(now, PARTNER, ConnInfo::default());
        board.handle_text(now, PARTNER, &hello(1));
    }
    match scenario {
        Scenario::InCall => {
            board.handle_text(now, SENDER, r#"{"type":"search"}"#);
            board.handle_text(now, PARTNER, r#"{"type":"search"}"#);
        }
        Scenario::InRoom => {
            board.handle_text(now, PARTNER, &join);
            board.handle_text(now, SENDER, &join);
        }
        Scenario::Ungreeted | Scenario::Idle => {}
    }
    let mut last_call = None;
    let mut ids = RoomIds::default();
    while let Some(out) = board.poll_output() {
        match out {
            Output::Send(_, ServerMsg::Matched { call, .. }) => last_call = Some(call),
            Output::Send(PARTNER, ServerMsg::RoomJoined { peer, .. }) => ids.partner = peer,
            Output::Send(SENDER, ServerMsg::RoomJoined { peer, peers, .. }) => {
                ids.sender = peer;
                assert_eq!(peers, [ids.partner], "the setup put both in the room");
            }
            _ => {}
        }
    }
    if matches!(scenario, Scenario::InCall) {
        assert_eq!(last_call, Some(1), "the setup made call 1");
    }
    if matches!(scenario, Scenario::InRoom) {
        assert_ne!(ids.sender, ids.partner, "the setup gave two peer ids");
    }
    (board, ids)
}

pub(crate) fn send(to: ConnId, msg: ServerMsg) -> Output {
    Output::Send(to, msg)
}

pub(crate) fn error(code: ErrorCode) -> Output {
    send(SENDER, ServerMsg::error(code))
}

/// What the switchboard must answer.
#[derive(Debug)]
pub(crate) enum Answer {
    Exactly(Vec<Output>),
    /// One error to the sender, with one of these codes.
    OneErrorOf(Vec<ErrorCode>),
    /// A `welcome`, checked by shape.
    Welcome,
    /// A `room_suggestion`, checked by shape.
    Suggestion,
    /// `room_joined` to a room of its own with this (normalised) name.
    JoinedAlone(String),
    /// One `ice_servers` to the sender.
    IceServers,
}

/// What the switchboard must answer to `decoded` in `scenario`.
pub(crate) fn expected_outputs(
    scenario: Scenario,
    ids: RoomIds,
    decoded: Result<ClientMsg, DecodeError>,
) -> Answer {
    let config = Config::default();
    let msg = match decoded {
        Err(e) => return Answer::Exactly(vec![error(e.into())]),
        Ok(msg) => msg,
    };
    let one = |code| Answer::Exactly(vec![error(code)]);
    let searching = |interests| send(PARTNER, ServerMsg::Searching { interests });
    // A busy sender with a bad room name has two things wrong; either is told.
    let busy_join = |busy, room: &str| match room_name_rule(room) {
        Some(_) => one(busy),
        None => Answer::OneErrorOf(vec![busy, ErrorCode::BadRoomName]),
    };
    let lock_state = |locked| {
        Answer::Exactly(vec![
            send(PARTNER, ServerMsg::RoomLockState { locked }),
            send(SENDER, ServerMsg::RoomLockState { locked }),
        ])
    };
    match (scenario, msg) {
        (Scenario::Ungreeted, ClientMsg::Hello { version: 1, .. }) => Answer::Welcome,
        (Scenario::Ungreeted, ClientMsg::Hello { .. }) => one(ErrorCode::UnsupportedVersion),
        (Scenario::Ungreeted, _) => one(ErrorCode::HelloRequired),
        (_, ClientMsg::Hello { .. }) => one(ErrorCode::AlreadyHello),
        (_, ClientMsg::RoomSuggest) => Answer::Suggestion,
        (Scenario::Idle, ClientMsg::Search { interests }) => {
            match protocol::normalize_interests(
                &interests,
                config.max_interests,
                config.max_interest_chars,
            ) {
                Ok(interests) => {
                    Answer::Exactly(vec![send(SENDER, ServerMsg::Searching { interests })])
                }
                Err(code) => one(code),
            }
        }
        (Scenario::Idle, ClientMsg::Signal(_) | ClientMsg::Skip) => one(ErrorCode::NotInCall),
        (Scenario::Idle, ClientMsg::End) => Answer::Exactly(vec![send(SENDER, ServerMsg::Idle)]),
        (Scenario::Idle, ClientMsg::RoomJoin { room, .. }) => match room_name_rule(&room) {
            Some(name) => Answer::JoinedAlone(name),
            None => one(ErrorCode::BadRoomName),
        },
        (
            Scenario::Idle | Scenario::InCall,
            ClientMsg::RoomSignal(_) | ClientMsg::RoomLock { .. } | ClientMsg::RoomUnlock,
        ) => one(ErrorCode::NotInRoom),
        (Scenario::InRoom, ClientMsg::Search { .. }) => one(ErrorCode::AlreadyInRoom),
        (Scenario::InRoom, ClientMsg::Signal(_) | ClientMsg::Skip) => one(ErrorCode::NotInCall),
        (Scenario::InRoom, ClientMsg::End) => Answer::Exactly(vec![
            send(PARTNER, ServerMsg::PeerLeft { peer: ids.sender }),
            send(SENDER, ServerMsg::Idle),
        ]),
        (Scenario::InRoom, ClientMsg::RoomJoin { room, .. }) => {
            busy_join(ErrorCode::AlreadyInRoom, &room)
        }
        (Scenario::InRoom, ClientMsg::RoomSignal(s)) if s.to == Some(ids.partner) => {
            Answer::Exactly(vec![send(
                PARTNER,
                ServerMsg::RoomSignal(RoomSignal {
                    to: None,
                    from: Some(ids.sender),
                    ..s
                }),
            )])
        }
        (Scenario::InRoom, ClientMsg::RoomSignal(_)) => one(ErrorCode::UnknownPeer),
        (Scenario::InRoom, ClientMsg::RoomLock { .. }) => lock_state(true),
        (Scenario::InRoom, ClientMsg::RoomUnlock) => lock_state(false),
        (Scenario::InCall, ClientMsg::RoomJoin { room, .. }) => {
            busy_join(ErrorCode::AlreadyInCall, &room)
        }
        (Scenario::InCall, ClientMsg::Search { .. }) => one(ErrorCode::AlreadyInCall),
        (Scenario::InCall, ClientMsg::Signal(s)) if s.call == 1 => {
            Answer::Exactly(vec![send(PARTNER, ServerMsg::Signal(s))])
        }
        (Scenario::InCall, ClientMsg::Signal(_)) => one(ErrorCode::WrongCall),
        (Scenario::InCall, ClientMsg::Skip) => Answer::Exactly(vec![
            send(
                PARTNER,
                ServerMsg::CallEnded {
                    call: 1,
                    reason: EndReason::PartnerSkipped,
                },
            ),
            searching(vec![]),
            send(SENDER, ServerMsg::Searching { interests: vec![] }),
        ]),
        (Scenario::InCall, ClientMsg::End) => Answer::Exactly(vec![
            send(
                PARTNER,
                ServerMsg::CallEnded {
                    call: 1,
                    reason: EndReason::PartnerEnded,
                },
            ),
            searching(vec![]),
            send(SENDER, ServerMsg::Idle),
        ]),
        // (a) A report ends the call for both at once: an ordinary end for
        // the partner, `idle` for the reporter.
        (Scenario::InCall, ClientMsg::Report { .. }) => Answer::Exactly(vec![
            send(
                PARTNER,
                ServerMsg::CallEnded {
                    call: 1,
                    reason: EndReason::PartnerEnded,
                },
            ),
            searching(vec![]),
            send(SENDER, ServerMsg::Idle),
        ]),
        (_, ClientMsg::Report { .. }) => one(ErrorCode::NotInCall),
        // (c) The only other member reported it: more than half.
        (Scenario::InRoom, ClientMsg::RoomReport { peer, .. }) if peer == ids.partner => {
            Answer::Exactly(vec![
                send(SENDER, ServerMsg::PeerLeft { peer }),
                send(PARTNER, ServerMsg::error(ErrorCode::Removed)),
                send(PARTNER, ServerMsg::Idle),
            ])
        }
        (Scenario::InRoom, ClientMsg::RoomReport { .. }) => one(ErrorCode::UnknownPeer),
        (_, ClientMsg::RoomReport { .. }) => one(ErrorCode::NotInRoom),
        (_, ClientMsg::RefreshIce) => Answer::IceServers,
    }
}

/// Feeds one frame to a fresh board in each scenario and compares the answer.
pub(crate) fn check_switchboard_answers(text: &str) -> Result<(), TestCaseError> {
    let decoded = protocol::decode(text);
    for scenario in [
        Scenario::Ungreeted,
        Scenario::Idle,
        Scenario::InCall,
        Scenario::InRoom,
    ] {
        let (mut board, ids) = board_in(scenario);
        board.handle_text(Instant::now(), SENDER, text);
        let outs: Vec<Output> = std::iter::from_fn(|| board.poll_output())
            .map(|out| match out {
                Output::Send(to, msg) => Output::Send(to, forget_re(msg)),
                other => other,
            })
            .collect();
        let expected = expected_outputs(scenario, ids, decoded.clone());
        match &expected {
            Answer::Welcome => prop_assert!(
                matches!(&outs[..], [Output::Send(SENDER, ServerMsg::Welcome { .. })]),
                "{scenario:?}: hello answered with {outs:?}"
            ),
            Answer::Suggestion => match &outs[..] {
                [Output::Send(SENDER, ServerMsg::RoomSuggestion { name })] => {
                    check_suggestion(name)?
                }
                _ => prop_assert!(false, "{scenario:?}: room_suggest answered with {outs:?}"),
            },
            Answer::JoinedAlone(room) => prop_assert!(
                matches!(
                    &outs[..],
                    [Output::Send(SENDER, ServerMsg::RoomJoined { room: r, peers, locked: false, max_size, .. })]
                        if r == room && peers.is_empty() && *max_size == Config::default().rooms.max_size
                ),
                "{scenario:?}: joining {room:?} answered with {outs:?}"
            ),
            Answer::IceServers => prop_assert!(
                matches!(
                    &outs[..],
                    [Output::Send(SENDER, ServerMsg::IceServers { .. })]
                ),
                "{scenario:?}: refresh_ice answered with {outs:?}"
            ),
            Answer::OneErrorOf(codes) => prop_assert!(
                codes.iter().any(|&c| outs == [error(c)]),
                "{scenario:?}: expected one of {codes:?}, got {outs:?}"
            ),
            Answer::Exactly(expected) => prop_assert_eq!(
                &outs,
                expected,
                "{:?}: frame decoded as {:?}",
                scenario,
                decoded
            ),
        }
        if let Err(e) = board.check_invariants() {
            return Err(TestCaseError::fail(format!("{scenario:?}: {e}")));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(256))]

    #[test]
    fn decode_classifies_arbitrary_text_by_its_shape(text in garbage()) {
        let _ = check_decode(&text)?;
    }

    #[test]
    fn decode_classifies_arbitrary_json_by_its_shape(v in json_value()) {
        let _ = check_decode(&v.to_string())?;
    }

    #[test]
    fn decode_classifies_message_shaped_json_by_its_shape(v in message_value()) {
        let _ = check_decode(&v.to_string())?;
    }

    #[test]
    fn decode_accepts_every_well_formed_message((v, msg) in valid_message()) {
        prop_assert_eq!(check_decode(&v.to_string())?, Ok(msg));
    }

    /// Malformed verifiers and `auth`s, `call` with `to`, `auth` on a call
    /// signal, bad rooms and `to`s: `bad_message`.
    #[test]
    fn decode_rejects_malformed_room_messages(v in malformed_room_message()) {
        prop_assert_eq!(check_decode(&v.to_string())?, Err(DecodeError::BadMessage), "{}", v);
    }

    /// A verifier is accepted in its canonical base64url spelling, and a
    /// room signal's `auth` and payload pass through unchanged.
    #[test]
    fn room_fields_round_trip(
        v in bytes32(),
        s in client_room_signal(),
    ) {
        let text = json!({"type": "room_lock", "verifier": b64url(&v)}).to_string();
        prop_assert_eq!(protocol::decode(&text), Ok(ClientMsg::RoomLock { verifier: Verifier(v) }));
        prop_assert_eq!(Verifier::parse(&b64url(&v)), Some(Verifier(v)));
        let text = serde_json::to_string(&ServerMsg::RoomSignal(s.clone())).unwrap();
        prop_assert_eq!(protocol::decode(&text), Ok(ClientMsg::RoomSignal(s)));
    }

    /// (f) Reasons off the list, bad peer ids, malformed proofs of work: `bad_message`.
    #[test]
    fn decode_rejects_malformed_reports_and_proofs(v in malformed_moderation_message()) {
        prop_assert_eq!(check_decode(&v.to_string())?, Err(DecodeError::BadMessage), "{}", v);
    }

    /// (f) Reports, room reports and proofs of work come through as sent.
    #[test]
    fn moderation_fields_round_trip(
        reason in reason(),
        peer in any::<PeerId>(),
        pow in pow_solution(),
        version in any::<u32>(),
    ) {
        let text = with_reason(json!({"type": "report"}), &reason).to_string();
        prop_assert_eq!(protocol::decode(&text), Ok(ClientMsg::Report { reason }));
        let text = with_reason(json!({"type": "room_report", "peer": peer}), &reason).to_string();
        prop_assert_eq!(protocol::decode(&text), Ok(ClientMsg::RoomReport { peer, reason }));
        let text = json!({"type": "hello", "version": version, "pow": pow_json(&pow)}).to_string();
        prop_assert_eq!(protocol::decode(&text), Ok(ClientMsg::Hello { version, pow: Some(pow) }));
        let text = json!({"type": "hello", "version": version, "pow": null}).to_string();
        prop_assert_eq!(protocol::decode(&text), Ok(ClientMsg::Hello { version, pow: None }));
    }

    #[test]
    fn handle_text_answers_every_frame_as_the_protocol_says(text in any_frame()) {
        check_switchboard_answers(&text)?;
    }
}
