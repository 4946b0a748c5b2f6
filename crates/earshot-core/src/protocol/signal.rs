//! The signals relayed between two parties: a call's or a room member's
//! session description or ICE candidate. `Debug` prints lengths only.

use super::*;

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
    pub(super) fn one_of(
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
