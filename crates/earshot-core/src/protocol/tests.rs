//! The decoder's and encoder's unit tests.

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
    let m =
        decode(r#"{"type":"signal","call":3,"description":{"type":"offer","sdp":"v=0"}}"#).unwrap();
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
