//! The decoder of client frames: strict about shape, so that only typed
//! fields are ever relayed, and it never panics.

use super::*;

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
pub(super) struct SignalFields {
    #[serde(default)]
    pub(super) call: Option<CallId>,
    #[serde(default)]
    pub(super) to: Option<PeerId>,
    #[serde(default)]
    pub(super) description: Option<SessionDescription>,
    #[serde(default)]
    pub(super) candidate: Option<IceCandidate>,
    #[serde(default)]
    pub(super) auth: Option<String>,
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
