//! STUN messages and attributes (RFC 5389, with the attributes TURN adds in
//! RFC 5766 and RFC 6156): the one wire layer under the Binding responder
//! ([`crate::stun::answer`]), the TURN server ([`crate::turn`]) and test
//! clients.
//!
//! - [`walk`] checks a message's header, every attribute's framing and
//!   FINGERPRINT, and yields the attributes in order. It keeps nothing, so
//!   it takes any number of attributes; the Binding responder uses it.
//! - [`Message`] is a walked message that remembers where its first
//!   [`MAX_ATTRIBUTES`] attributes are, for lookups by type (TURN).
//! - [`Encoder`] (`encode.rs`) builds a message into a `Vec`, or into a caller's buffer
//!   without allocating ([`Encoder::in_buffer`]).
//!
//! Invariants:
//! - Decoding never panics, whatever the input (property-tested), and never
//!   allocates: a [`Message`] borrows the bytes it came from.
//! - A walked message has a valid header, an exact length, well-framed
//!   attributes and, if it has one, a matching FINGERPRINT as its last
//!   attribute. [`Message`] skips attributes after MESSAGE-INTEGRITY (other
//!   than FINGERPRINT), as RFC 5389 §15.4 requires.
//! - `Debug` shows kinds and counts, never an attribute's value: values hold
//!   addresses, usernames and relayed data.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{KeyInit, Mac};

mod encode;
#[cfg(test)]
mod tests;

pub use encode::{Buffer, Encoder, Fixed};

/// The fixed header size and the magic cookie that follows the length.
pub const HEADER_LEN: usize = 20;
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// XORed into the CRC-32 of a message to make FINGERPRINT (RFC 5389 §15.5).
pub(crate) const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// A [`Message`] keeps at most this many attributes; one with more is
/// dropped. A genuine TURN request has about ten (CreatePermission may
/// repeat XOR-PEER-ADDRESS a few times).
pub const MAX_ATTRIBUTES: usize = 32;

/// Address families in (XOR-)MAPPED-ADDRESS and the other address
/// attributes (RFC 5389 §15.1).
pub(crate) const FAMILY_IPV4: u8 = 0x01;
pub(crate) const FAMILY_IPV6: u8 = 0x02;

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

/// Attribute types (RFC 5389 §18.2, RFC 8489 §18.3, RFC 5766 §14,
/// RFC 6156 §4.1.1).
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
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const USERHASH: u16 = 0x001E;
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

/// Why bytes are not a STUN message (or, for TURN, ChannelData); such input
/// is dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Shorter than a header (20 bytes for STUN, 4 for ChannelData).
    #[error("shorter than a STUN or ChannelData header")]
    TooShort,
    /// The two most significant bits of the message type are not zero.
    #[error("not a STUN message (top bits set)")]
    NotStun,
    /// The magic cookie is not 0x2112A442 (not STUN, or an RFC 3489 client).
    #[error("not a STUN message (wrong magic cookie)")]
    BadMagicCookie,
    /// The length field is not a multiple of 4 or disagrees with the bytes.
    #[error("length does not match the bytes")]
    BadLength,
    /// An attribute's header or padded value runs past the message.
    #[error("truncated STUN attribute")]
    TruncatedAttribute,
    /// More than [`MAX_ATTRIBUTES`] attributes, for a [`Message`].
    #[error("too many STUN attributes")]
    TooManyAttributes,
    /// An attribute follows FINGERPRINT, which must be the last one.
    #[error("STUN attribute after FINGERPRINT")]
    AttributeAfterFingerprint,
    /// FINGERPRINT has the wrong size or does not match the message.
    #[error("bad STUN FINGERPRINT")]
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

/// What a message's fixed header says, once [`walk`] has checked it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunHeader {
    pub method: u16,
    pub class: Class,
    pub transaction_id: [u8; 12],
}

/// One attribute where it stands in a message.
#[derive(Clone, Copy)]
pub struct Attribute<'a> {
    pub kind: u16,
    /// The value, without padding.
    pub value: &'a [u8],
    /// Where the attribute's own 4-byte header starts in the message.
    pub offset: usize,
}

impl fmt::Debug for Attribute<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Attribute({:#06x}, {} bytes)",
            self.kind,
            self.value.len()
        )
    }
}

/// Checks a message's header (size, top bits, magic cookie, length) and
/// returns it with the message's attributes, which are checked as they are
/// read: the iterator yields an `Err` at the first bad one, then ends. A
/// FINGERPRINT is yielded (after it is verified) like any other attribute.
pub fn walk(bytes: &[u8]) -> Result<(StunHeader, Attributes<'_>), StunError> {
    let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(StunError::TooShort);
    };
    let msg_type = u16::from_be_bytes([header[0], header[1]]);
    if msg_type & 0xC000 != 0 {
        return Err(StunError::NotStun);
    }
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != MAGIC_COOKIE {
        return Err(StunError::BadMagicCookie);
    }
    if length % 4 != 0 || length != rest.len() {
        return Err(StunError::BadLength);
    }
    let header = StunHeader {
        method: method_of(msg_type),
        class: class_of(msg_type),
        transaction_id: header[8..].try_into().expect("the header is 20 bytes"),
    };
    let attributes = Attributes {
        bytes,
        at: HEADER_LEN,
        after_fingerprint: false,
    };
    Ok((header, attributes))
}

/// The attributes of a message, in order (see [`walk`]).
pub struct Attributes<'a> {
    bytes: &'a [u8],
    at: usize,
    after_fingerprint: bool,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<Attribute<'a>, StunError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let next = self.read();
        if next.is_err() {
            self.at = self.bytes.len();
        }
        Some(next)
    }
}

impl<'a> Attributes<'a> {
    fn read(&mut self) -> Result<Attribute<'a>, StunError> {
        if self.after_fingerprint {
            return Err(StunError::AttributeAfterFingerprint);
        }
        let offset = self.at;
        let Some((head, after)) = self.bytes[offset..].split_first_chunk::<4>() else {
            return Err(StunError::TruncatedAttribute);
        };
        let kind = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        // Values are padded to a multiple of 4; the padding bytes can hold
        // anything (RFC 5769's sample request pads with spaces).
        let padded = len.next_multiple_of(4);
        if padded > after.len() {
            return Err(StunError::TruncatedAttribute);
        }
        let value = &after[..len];
        if kind == attr::FINGERPRINT {
            let expected = <[u8; 4]>::try_from(value)
                .map(u32::from_be_bytes)
                .map_err(|_| StunError::BadFingerprint)?;
            // The CRC covers everything before the attribute, with the
            // header length already counting FINGERPRINT (it is last).
            if crc32(&self.bytes[..offset]) ^ FINGERPRINT_XOR != expected {
                return Err(StunError::BadFingerprint);
            }
            self.after_fingerprint = true;
        }
        self.at = offset + 4 + padded;
        Ok(Attribute {
            kind,
            value,
            offset,
        })
    }
}

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
    /// FINGERPRINT (see [`walk`]).
    pub fn decode(bytes: &'a [u8]) -> Result<Message<'a>, StunError> {
        let (header, attributes) = walk(bytes)?;
        let mut msg = Message {
            bytes,
            method: header.method,
            class: header.class,
            transaction_id: header.transaction_id,
            spans: [Span::default(); MAX_ATTRIBUTES],
            count: 0,
            integrity_at: None,
            fingerprint: false,
        };
        for a in attributes {
            let a = a?;
            if a.kind == attr::FINGERPRINT {
                msg.fingerprint = true;
            } else if msg.integrity_at.is_none() {
                if msg.count == MAX_ATTRIBUTES {
                    return Err(StunError::TooManyAttributes);
                }
                if a.kind == attr::MESSAGE_INTEGRITY {
                    msg.integrity_at = Some(a.offset);
                }
                msg.spans[msg.count] = Span {
                    kind: a.kind,
                    start: a.offset + 4,
                    len: a.value.len(),
                };
                msg.count += 1;
            }
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
        [_, FAMILY_IPV4, p0, p1, a @ ..] if a.len() == 4 => {
            let port = u16::from_be_bytes([p0 ^ cookie[0], p1 ^ cookie[1]]);
            let ip: [u8; 4] = std::array::from_fn(|i| a[i] ^ cookie[i]);
            Ok(SocketAddr::new(Ipv4Addr::from(ip).into(), port))
        }
        [_, FAMILY_IPV6, p0, p1, a @ ..] if a.len() == 16 => {
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

/// The message type interleaves method and class bits:
/// `0b00MM_MMMC_MMMC_MMMM` (RFC 5389 §6).
pub(crate) fn method_of(msg_type: u16) -> u16 {
    (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
}

pub(crate) fn class_of(msg_type: u16) -> Class {
    match ((msg_type >> 7) & 0b10) | ((msg_type >> 4) & 0b01) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    }
}

pub(crate) fn message_type(method: u16, class: Class) -> u16 {
    let class = class.bits();
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((class & 0b01) << 4)
        | ((class & 0b10) << 7)
}

/// CRC-32 (ISO-HDLC, as in zlib and Ethernet): reflected polynomial
/// 0xEDB88320, initial value and final XOR all ones.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes
        .iter()
        .fold(!0u32, |c, &b| TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8))
}
