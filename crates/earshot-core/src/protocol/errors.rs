//! The stable error codes of `error` messages, and why a frame failed to
//! decode.

use super::*;

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
