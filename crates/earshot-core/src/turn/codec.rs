//! The STUN/TURN wire format (RFC 5389, RFC 5766): messages with their
//! attributes, MESSAGE-INTEGRITY and FINGERPRINT, ChannelData, and the
//! framing of both over a byte stream (TCP).
//!
//! Both sides use it: the TURN server in this crate, and test clients, so it
//! decodes and encodes every class of message. It is the general form of the
//! Binding-only codec in [`crate::stun`].
//!
//! Invariants:
//! - Decoding never panics, whatever the input (property-tested), and never
//!   allocates: a [`Message`] borrows the datagram and remembers where its
//!   first [`MAX_ATTRIBUTES`] attributes are.
//! - A decoded message has a valid header, an exact length, well-framed
//!   attributes and, if it has one, a matching FINGERPRINT as its last
//!   attribute. Attributes after MESSAGE-INTEGRITY (other than FINGERPRINT)
//!   are skipped, as RFC 5389 §15.4 requires.
//! - `Debug` shows kinds and counts, never an attribute's value: values hold
//!   addresses, usernames and relayed data.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::stun::crc32;

use hmac::{KeyInit, Mac};

/// The fixed header size and the magic cookie that follows the length.
pub const HEADER_LEN: usize = 20;
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// XORed into the CRC-32 of a message to make FINGERPRINT (RFC 5389 §15.5).
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// A message keeps at most this many attributes; one with more is dropped.
/// A genuine TURN request has about ten (CreatePermission may repeat
/// XOR-PEER-ADDRESS a few times).
pub const MAX_ATTRIBUTES: usize = 32;
/// The largest relayed payload: a Data indication carrying it (24 bytes of
/// IPv6 XOR-PEER-ADDRESS, a 4-byte DATA header, up to 3 of padding) still
/// fits STUN's 16-bit length. Bigger peer datagrams are dropped.
pub const MAX_PAYLOAD: usize = 65_500;

/// Methods (RFC 5389 §18.1, RFC 5766 §13).
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types (RFC 5389 §18.2, RFC 5766 §14, RFC 6156 §4.1.1).
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
}

/// The four message classes (RFC 5389 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }
}

/// Why bytes are not a STUN message or ChannelData; such input is dropped
/// without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than a header (20 bytes for STUN, 4 for ChannelData).
    #[error("shorter than a header")]
    TooShort,
    /// Neither STUN (top bits 00) nor ChannelData (top bits 01).
    #[error("not STUN or ChannelData")]
    NotStun,
    /// The magic cookie is not 0x2112A442.
    #[error("wrong magic cookie")]
    BadMagicCookie,
    /// The length field is not a multiple of 4 or disagrees with the bytes.
    #[error("length does not match")]
    BadLength,
    /// An attribute's header or padded value runs past the message.
    #[error("truncated attribute")]
    TruncatedAttribute,
    /// More than [`MAX_ATTRIBUTES`] attributes.
    #[error("too many attributes")]
    TooManyAttributes,
    /// An attribute follows FINGERPRINT.
    #[error("attribute after FINGERPRINT")]
    AttributeAfterFingerprint,
    /// FINGERPRINT has the wrong size or does not match.
    #[error("bad FINGERPRINT")]
    BadFingerprint,
    /// A ChannelData channel number outside 0x4000..=0x7FFF.
    #[error("bad channel number")]
    BadChannel,
}

/// An attribute value that is present but malformed (wrong size, unknown
/// address family, not UTF-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed attribute")]
pub struct BadAttribute;

#[derive(Clone, Copy, Default)]
struct Span {
    kind: u16,
    start: usize,
    len: usize,
}

/// A decoded STUN message, borrowing the bytes it came from.
pub struct Message<'a> {
    bytes: &'a [u8],
    pub method: u16,
    pub class: Class,
    pub transaction_id: [u8; 12],
    spans: [Span; MAX_ATTRIBUTES],
    count: usize,
    /// Offset of the MESSAGE-INTEGRITY attribute's header, if present.
    integrity_at: Option<usize>,
    /// A FINGERPRINT was present (and matched).
    pub fingerprint: bool,
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<String> = self.kinds().map(|k| format!("{k:#06x}")).collect();
        f.debug_struct("Message")
            .field("method", &self.method)
            .field("class", &self.class)
            .field("attributes", &kinds)
            .finish_non_exhaustive()
    }
}

impl<'a> Message<'a> {
    /// Validates the header and every attribute's framing, and checks
    /// FINGERPRINT.
    pub fn decode(bytes: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let Some((header, mut rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::TooShort);
        };
        let msg_type = u16::from_be_bytes([header[0], header[1]]);
        if msg_type & 0xC000 != 0 {
            return Err(DecodeError::NotStun);
        }
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != MAGIC_COOKIE {
            return Err(DecodeError::BadMagicCookie);
        }
        if length % 4 != 0 || length != rest.len() {
            return Err(DecodeError::BadLength);
        }
        let mut msg = Message {
            bytes,
            method: method_of(msg_type),
            class: class_of(msg_type),
            transaction_id: header[8..].try_into().expect("the header is 20 bytes"),
            spans: [Span::default(); MAX_ATTRIBUTES],
            count: 0,
            integrity_at: None,
            fingerprint: false,
        };
        while !rest.is_empty() {
            if msg.fingerprint {
                return Err(DecodeError::AttributeAfterFingerprint);
            }
            let offset = bytes.len() - rest.len();
            let Some((attr_header, after)) = rest.split_first_chunk::<4>() else {
                return Err(DecodeError::TruncatedAttribute);
            };
            let kind = u16::from_be_bytes([attr_header[0], attr_header[1]]);
            let len = usize::from(u16::from_be_bytes([attr_header[2], attr_header[3]]));
            // Padding bytes may hold anything (RFC 5389 §15).
            let padded = len.next_multiple_of(4);
            if padded > after.len() {
                return Err(DecodeError::TruncatedAttribute);
            }
            if kind == attr::FINGERPRINT {
                let expected = <[u8; 4]>::try_from(&after[..len])
                    .map(u32::from_be_bytes)
                    .map_err(|_| DecodeError::BadFingerprint)?;
                // The CRC covers everything before the attribute, with the
                // header length already counting FINGERPRINT (it is last).
                if crc32(&bytes[..offset]) ^ FINGERPRINT_XOR != expected {
                    return Err(DecodeError::BadFingerprint);
                }
                msg.fingerprint = true;
            } else if msg.integrity_at.is_none() {
                if msg.count == MAX_ATTRIBUTES {
                    return Err(DecodeError::TooManyAttributes);
                }
                if kind == attr::MESSAGE_INTEGRITY {
                    msg.integrity_at = Some(offset);
                }
                msg.spans[msg.count] = Span {
                    kind,
                    start: offset + 4,
                    len,
                };
                msg.count += 1;
            }
            rest = &after[padded..];
        }
        Ok(msg)
    }

    /// The types of the attributes kept, in order (FINGERPRINT excluded).
    pub fn kinds(&self) -> impl Iterator<Item = u16> + '_ {
        self.spans[..self.count].iter().map(|s| s.kind)
    }

    /// The first value of an attribute type.
    pub fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.get_all(kind).next()
    }

    /// Every value of an attribute type, in order.
    pub fn get_all(&self, kind: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        let bytes = self.bytes;
        self.spans[..self.count]
            .iter()
            .filter(move |s| s.kind == kind)
            .map(move |s| &bytes[s.start..s.start + s.len])
    }

    /// A UTF-8 text attribute (USERNAME, REALM, NONCE, SOFTWARE).
    pub fn text(&self, kind: u16) -> Result<Option<&'a str>, BadAttribute> {
        self.get(kind)
            .map(|v| std::str::from_utf8(v).map_err(|_| BadAttribute))
            .transpose()
    }

    /// A 32-bit attribute (LIFETIME).
    pub fn u32(&self, kind: u16) -> Result<Option<u32>, BadAttribute> {
        self.get(kind)
            .map(|v| {
                <[u8; 4]>::try_from(v)
                    .map(u32::from_be_bytes)
                    .map_err(|_| BadAttribute)
            })
            .transpose()
    }

    /// An XOR-encoded address attribute (XOR-PEER-ADDRESS, ...).
    pub fn xor_address(&self, kind: u16) -> Result<Option<SocketAddr>, BadAttribute> {
        self.get(kind)
            .map(|v| decode_xor_address(v, &self.transaction_id))
            .transpose()
    }

    /// Every value of an XOR-encoded address attribute.
    pub fn xor_addresses(
        &self,
        kind: u16,
    ) -> impl Iterator<Item = Result<SocketAddr, BadAttribute>> + '_ {
        self.get_all(kind)
            .map(|v| decode_xor_address(v, &self.transaction_id))
    }

    /// The code of an ERROR-CODE attribute (300..=699).
    pub fn error_code(&self) -> Result<Option<u16>, BadAttribute> {
        self.get(attr::ERROR_CODE)
            .map(|v| match v {
                [_, _, class @ 3..=6, number @ 0..=99, ..] => {
                    Ok(u16::from(*class) * 100 + u16::from(*number))
                }
                _ => Err(BadAttribute),
            })
            .transpose()
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }

    /// Whether MESSAGE-INTEGRITY is present and is the HMAC-SHA1 under `key`
    /// of the message up to it, with the length field counting up to and
    /// including MESSAGE-INTEGRITY (RFC 5389 §15.4).
    pub fn check_integrity(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let Some(value) = self.get(attr::MESSAGE_INTEGRITY) else {
            return false;
        };
        if value.len() != 20 {
            return false;
        }
        let length = u16::try_from(at + 24 - HEADER_LEN).expect("the message length fits u16");
        let mut mac = hmac_sha1(key);
        mac.update(&self.bytes[..2]);
        mac.update(&length.to_be_bytes());
        mac.update(&self.bytes[4..at]);
        mac.verify_slice(value).is_ok()
    }
}

type HmacSha1 = hmac::Hmac<sha1::Sha1>;

pub(crate) fn hmac_sha1(key: &[u8]) -> HmacSha1 {
    HmacSha1::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn decode_xor_address(v: &[u8], transaction_id: &[u8; 12]) -> Result<SocketAddr, BadAttribute> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match v {
        [_, 0x01, p0, p1, a @ ..] if a.len() == 4 => {
            let port = u16::from_be_bytes([p0 ^ cookie[0], p1 ^ cookie[1]]);
            let ip: [u8; 4] = std::array::from_fn(|i| a[i] ^ cookie[i]);
            Ok(SocketAddr::new(Ipv4Addr::from(ip).into(), port))
        }
        [_, 0x02, p0, p1, a @ ..] if a.len() == 16 => {
            let port = u16::from_be_bytes([p0 ^ cookie[0], p1 ^ cookie[1]]);
            let key = xor_key(transaction_id);
            let ip: [u8; 16] = std::array::from_fn(|i| a[i] ^ key[i]);
            Ok(SocketAddr::new(Ipv6Addr::from(ip).into(), port))
        }
        _ => Err(BadAttribute),
    }
}

/// The magic cookie followed by the transaction id: the XOR key of an IPv6
/// address.
fn xor_key(transaction_id: &[u8; 12]) -> [u8; 16] {
    let mut key = [0; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    key[4..].copy_from_slice(transaction_id);
    key
}

/// Builds one message. The header's length is kept current as attributes
/// are added, so that MESSAGE-INTEGRITY and FINGERPRINT can be computed.
pub struct Encoder {
    buf: Vec<u8>,
    transaction_id: [u8; 12],
}

impl Encoder {
    pub fn new(method: u16, class: Class, transaction_id: [u8; 12]) -> Encoder {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction_id);
        Encoder {
            buf,
            transaction_id,
        }
    }

    /// Appends an attribute, zero-padded.
    ///
    /// # Panics
    /// If the message would outgrow STUN's 16-bit length; callers keep
    /// values small (relayed data is capped at [`MAX_PAYLOAD`]).
    pub fn add(&mut self, kind: u16, value: &[u8]) -> &mut Encoder {
        let len = u16::try_from(value.len()).expect("attribute values fit u16");
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
        let length = u16::try_from(self.buf.len() - HEADER_LEN).expect("messages fit u16");
        self.buf[2..4].copy_from_slice(&length.to_be_bytes());
        self
    }

    pub fn u32(&mut self, kind: u16, value: u32) -> &mut Encoder {
        self.add(kind, &value.to_be_bytes())
    }

    pub fn xor_address(&mut self, kind: u16, addr: SocketAddr) -> &mut Encoder {
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let port = (addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes();
        match addr.ip() {
            IpAddr::V4(ip) => {
                let mut v = [0, 0x01, port[0], port[1], 0, 0, 0, 0];
                for (i, b) in ip.octets().into_iter().enumerate() {
                    v[4 + i] = b ^ cookie[i];
                }
                self.add(kind, &v)
            }
            IpAddr::V6(ip) => {
                let key = xor_key(&self.transaction_id);
                let mut v = [0; 20];
                v[1] = 0x02;
                v[2..4].copy_from_slice(&port);
                for (i, b) in ip.octets().into_iter().enumerate() {
                    v[4 + i] = b ^ key[i];
                }
                self.add(kind, &v)
            }
        }
    }

    /// ERROR-CODE with a reason phrase (RFC 5389 §15.6); `code` is 300..=699.
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Encoder {
        let mut v = Vec::with_capacity(4 + reason.len());
        // Both parts are below 256 for codes up to 699.
        v.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
        v.extend_from_slice(reason.as_bytes());
        self.add(attr::ERROR_CODE, &v)
    }

    /// MESSAGE-INTEGRITY over everything so far, under `key`.
    pub fn integrity(&mut self, key: &[u8]) -> &mut Encoder {
        let length = u16::try_from(self.buf.len() + 24 - HEADER_LEN).expect("messages fit u16");
        self.buf[2..4].copy_from_slice(&length.to_be_bytes());
        let mut mac = hmac_sha1(key);
        mac.update(&self.buf);
        let tag = mac.finalize().into_bytes();
        self.add(attr::MESSAGE_INTEGRITY, &tag)
    }

    /// FINGERPRINT, which must be the last attribute.
    pub fn fingerprint(&mut self) -> &mut Encoder {
        let length = u16::try_from(self.buf.len() + 8 - HEADER_LEN).expect("messages fit u16");
        self.buf[2..4].copy_from_slice(&length.to_be_bytes());
        let crc = crc32(&self.buf) ^ FINGERPRINT_XOR;
        self.add(attr::FINGERPRINT, &crc.to_be_bytes())
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Whether a ChannelData channel number is valid (RFC 5766 §11).
pub fn is_channel(number: u16) -> bool {
    (0x4000..=0x7FFF).contains(&number)
}

/// A ChannelData message: channel number, length, data, padded to a
/// multiple of 4 if `pad` (required over TCP, optional over UDP).
///
/// # Panics
/// If `data` is longer than 65535 bytes.
pub fn encode_channel_data(channel: u16, data: &[u8], pad: bool) -> Vec<u8> {
    let len = u16::try_from(data.len()).expect("ChannelData fits u16");
    let mut m = Vec::with_capacity(4 + data.len() + 3);
    m.extend_from_slice(&channel.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(data);
    if pad {
        m.resize(m.len().next_multiple_of(4), 0);
    }
    m
}

/// Channel number and data of a ChannelData message. Bytes after the data
/// (padding) are ignored.
pub fn decode_channel_data(bytes: &[u8]) -> Result<(u16, &[u8]), DecodeError> {
    let Some((header, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(DecodeError::TooShort);
    };
    let channel = u16::from_be_bytes([header[0], header[1]]);
    if !is_channel(channel) {
        return Err(DecodeError::BadChannel);
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    rest.get(..len)
        .map(|data| (channel, data))
        .ok_or(DecodeError::BadLength)
}

/// What the start of a byte stream holds (RFC 5766 §2.1: over TCP, STUN
/// messages and ChannelData follow each other with no other framing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet to know the frame's length.
    Incomplete,
    /// The first frame is this many bytes long (it may not all be there yet).
    Len(usize),
    /// Neither STUN nor ChannelData: the stream cannot be resynchronised.
    Invalid,
}

/// The length of the first frame in a TCP byte stream: a STUN message
/// (20-byte header plus its length) or ChannelData (4-byte header plus its
/// length padded to a multiple of 4, RFC 5766 §11.5).
pub fn stream_frame(buf: &[u8]) -> Frame {
    let Some(head) = buf.first_chunk::<4>() else {
        return Frame::Incomplete;
    };
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    match head[0] >> 6 {
        0b00 => Frame::Len(HEADER_LEN + len),
        0b01 => Frame::Len(4 + len.next_multiple_of(4)),
        _ => Frame::Invalid,
    }
}

/// The message type interleaves method and class bits:
/// `0b00MM_MMMC_MMMC_MMMM` (RFC 5389 §6).
fn method_of(msg_type: u16) -> u16 {
    (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
}

fn class_of(msg_type: u16) -> Class {
    match ((msg_type >> 7) & 0b10) | ((msg_type >> 4) & 0b01) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    }
}

fn message_type(method: u16, class: Class) -> u16 {
    let class = class.bits();
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((class & 0b01) << 4)
        | ((class & 0b10) << 7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 5769 §2.2: a sample IPv4 response with MESSAGE-INTEGRITY under
    /// the short-term password "VOkJxbRl1RmTxUk/WvJxBt".
    const RFC5769_RESPONSE: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    #[test]
    fn rfc5769_response_decodes_and_verifies() {
        let m = Message::decode(&RFC5769_RESPONSE).unwrap();
        assert_eq!((m.method, m.class), (method::BINDING, Class::Success));
        assert!(m.fingerprint);
        assert_eq!(
            m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap(),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        assert!(m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBT"));

        // Re-encoded with our encoder: the same bytes, but for SOFTWARE's
        // padding (RFC 5769 pads with a space, we pad with zero).
        let mut e = Encoder::new(method::BINDING, Class::Success, m.transaction_id);
        e.add(attr::SOFTWARE, b"test vector")
            .xor_address(attr::XOR_MAPPED_ADDRESS, "192.0.2.1:32853".parse().unwrap())
            .integrity(b"VOkJxbRl1RmTxUk/WvJxBt")
            .fingerprint();
        let ours = e.finish();
        let mut theirs = RFC5769_RESPONSE;
        theirs[35] = 0;
        assert_eq!(ours[..52], theirs[..52]);
        assert!(
            Message::decode(&ours)
                .unwrap()
                .check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt")
        );
    }

    #[test]
    fn ipv6_xor_address_round_trips() {
        let addr: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let mut e = Encoder::new(method::SEND, Class::Indication, [9; 12]);
        e.xor_address(attr::XOR_PEER_ADDRESS, addr);
        let bytes = e.finish();
        let m = Message::decode(&bytes).unwrap();
        assert_eq!(m.class, Class::Indication);
        assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Ok(Some(addr)));
    }

    #[test]
    fn attributes_after_integrity_are_skipped() {
        let mut e = Encoder::new(method::REFRESH, Class::Request, [1; 12]);
        e.u32(attr::LIFETIME, 5).integrity(b"key");
        e.u32(attr::LIFETIME, 7).fingerprint();
        let bytes = e.finish();
        let m = Message::decode(&bytes).unwrap();
        assert_eq!(m.u32(attr::LIFETIME), Ok(Some(5)));
        assert_eq!(m.get_all(attr::LIFETIME).count(), 1);
        assert!(m.check_integrity(b"key"));
    }

    #[test]
    fn channel_data_and_stream_frames() {
        let m = encode_channel_data(0x4001, b"hello", true);
        assert_eq!(m.len(), 12);
        assert_eq!(stream_frame(&m), Frame::Len(12));
        assert_eq!(stream_frame(&m[..3]), Frame::Incomplete);
        assert_eq!(decode_channel_data(&m), Ok((0x4001, &b"hello"[..])));
        assert_eq!(
            decode_channel_data(&encode_channel_data(0x3FFF, b"", false)),
            Err(DecodeError::BadChannel)
        );
        assert_eq!(decode_channel_data(&m[..8]), Err(DecodeError::BadLength));
        let stun = Encoder::new(method::BINDING, Class::Request, [0; 12]).finish();
        assert_eq!(stream_frame(&stun), Frame::Len(20));
        assert_eq!(stream_frame(&[0x80, 0, 0, 0]), Frame::Invalid);
    }

    #[test]
    fn message_type_round_trips() {
        for method in 0..0x1000u16 {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let t = message_type(method, class);
                assert_eq!(t & 0xC000, 0);
                assert_eq!((method_of(t), class_of(t)), (method, class));
            }
        }
        assert_eq!(message_type(method::DATA, Class::Indication), 0x0017);
        assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(m) = Message::decode(&bytes) {
                // Every accessor on whatever decoded is safe too.
                for kind in m.kinds().collect::<Vec<_>>() {
                    let _ = (m.text(kind), m.u32(kind), m.xor_address(kind));
                }
                let _ = (m.error_code(), m.check_integrity(b"k"));
            }
            if let Ok((channel, data)) = decode_channel_data(&bytes) {
                prop_assert!(is_channel(channel));
                prop_assert!(data.len() + 4 <= bytes.len());
            }
            match stream_frame(&bytes) {
                Frame::Incomplete => prop_assert!(bytes.len() < 4),
                Frame::Len(n) => prop_assert!((4..=HEADER_LEN + 0xFFFF).contains(&n)),
                Frame::Invalid => prop_assert!(bytes[0] >= 0x80),
            }
        }

        #[test]
        fn valid_headers_with_random_bodies_never_panic(
            head in any::<[u8; 2]>(),
            body in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut m = vec![head[0] & 0x3F, head[1], 0, 0];
            m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            m.extend_from_slice(&[7; 12]);
            m.extend_from_slice(&body);
            m.resize(m.len().next_multiple_of(4), 0);
            let len = (m.len() - HEADER_LEN) as u16;
            m[2..4].copy_from_slice(&len.to_be_bytes());
            if let Ok(msg) = Message::decode(&m) {
                prop_assert!(msg.kinds().count() <= MAX_ATTRIBUTES);
                for kind in msg.kinds().collect::<Vec<_>>() {
                    let _ = (msg.text(kind), msg.u32(kind), msg.xor_address(kind));
                    prop_assert!(msg.get_all(kind).all(|v| v.len() <= body.len()));
                }
            }
        }

        #[test]
        fn encoded_messages_decode(
            attrs in prop::collection::vec((0u16..0x8000, prop::collection::vec(any::<u8>(), 0..40)), 0..20),
            key in prop::collection::vec(any::<u8>(), 0..20),
        ) {
            let attrs: Vec<_> = attrs.into_iter().filter(|(k, _)| *k != attr::MESSAGE_INTEGRITY).collect();
            let mut e = Encoder::new(method::ALLOCATE, Class::Request, [3; 12]);
            for (kind, value) in &attrs {
                e.add(*kind, value);
            }
            e.integrity(&key).fingerprint();
            let bytes = e.finish();
            let m = Message::decode(&bytes).unwrap();
            prop_assert!(m.fingerprint);
            prop_assert!(m.check_integrity(&key));
            prop_assert_eq!(m.kinds().count(), attrs.len() + 1);
            for (kind, value) in &attrs {
                prop_assert!(m.get_all(*kind).any(|v| v == value.as_slice()));
            }
        }
    }
}
