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
//! - [`Encoder`] builds a message into a `Vec`, or into a caller's buffer
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

/// Where an [`Encoder`] writes: a `Vec` it grows, or a caller's buffer
/// ([`Fixed`]).
pub trait Buffer {
    /// Everything written so far.
    fn written(&mut self) -> &mut [u8];
    /// Appends bytes.
    fn put(&mut self, bytes: &[u8]);
}

impl Buffer for Vec<u8> {
    fn written(&mut self) -> &mut [u8] {
        self
    }

    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A caller's buffer and how much of it is written, for answers that must
/// not allocate (see [`Encoder::in_buffer`]).
pub struct Fixed<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Buffer for Fixed<'_> {
    fn written(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }

    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

/// Builds one message. The header's length is kept current as attributes
/// are added, so that MESSAGE-INTEGRITY and FINGERPRINT can be computed.
pub struct Encoder<B: Buffer = Vec<u8>> {
    buf: B,
    transaction_id: [u8; 12],
}

impl Encoder {
    pub fn new(method: u16, class: Class, transaction_id: [u8; 12]) -> Encoder {
        Encoder::start(Vec::with_capacity(128), method, class, transaction_id)
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

impl<'a> Encoder<Fixed<'a>> {
    /// An encoder that writes into `buf` and never allocates.
    ///
    /// # Panics
    /// If the message outgrows `buf`: callers build messages whose size is
    /// bounded by construction, below the buffer's.
    pub fn in_buffer(
        buf: &'a mut [u8],
        method: u16,
        class: Class,
        transaction_id: [u8; 12],
    ) -> Encoder<Fixed<'a>> {
        Encoder::start(Fixed { buf, len: 0 }, method, class, transaction_id)
    }

    /// The message's size: it is the first that many bytes of the buffer.
    pub fn finish(self) -> usize {
        self.buf.len
    }
}

impl<B: Buffer> Encoder<B> {
    fn start(mut buf: B, method: u16, class: Class, transaction_id: [u8; 12]) -> Encoder<B> {
        buf.put(&message_type(method, class).to_be_bytes());
        buf.put(&[0, 0]);
        buf.put(&MAGIC_COOKIE.to_be_bytes());
        buf.put(&transaction_id);
        Encoder {
            buf,
            transaction_id,
        }
    }

    /// Appends an attribute, zero-padded.
    ///
    /// # Panics
    /// If the message would outgrow STUN's 16-bit length; callers keep
    /// values small (TURN caps relayed data at `turn::codec::MAX_PAYLOAD`).
    pub fn add(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        self.attribute(kind, value.len(), |b| b.put(value))
    }

    /// Appends an attribute whose `len`-byte value `write` puts, then its
    /// padding, and updates the header's length.
    fn attribute(&mut self, kind: u16, len: usize, write: impl FnOnce(&mut B)) -> &mut Self {
        let value_len = u16::try_from(len).expect("attribute values fit u16");
        self.buf.put(&kind.to_be_bytes());
        self.buf.put(&value_len.to_be_bytes());
        write(&mut self.buf);
        self.buf.put(&[0; 3][..len.next_multiple_of(4) - len]);
        let written = self.buf.written();
        let length = u16::try_from(written.len() - HEADER_LEN).expect("messages fit u16");
        written[2..4].copy_from_slice(&length.to_be_bytes());
        self
    }

    pub fn u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.add(kind, &value.to_be_bytes())
    }

    /// An XOR-encoded address attribute (XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, ...).
    pub fn xor_address(&mut self, kind: u16, addr: SocketAddr) -> &mut Self {
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let port = (addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes();
        match addr.ip() {
            IpAddr::V4(ip) => {
                let mut v = [0, FAMILY_IPV4, port[0], port[1], 0, 0, 0, 0];
                for (i, b) in ip.octets().into_iter().enumerate() {
                    v[4 + i] = b ^ cookie[i];
                }
                self.add(kind, &v)
            }
            IpAddr::V6(ip) => {
                let key = xor_key(&self.transaction_id);
                let mut v = [0; 20];
                v[1] = FAMILY_IPV6;
                v[2..4].copy_from_slice(&port);
                for (i, b) in ip.octets().into_iter().enumerate() {
                    v[4 + i] = b ^ key[i];
                }
                self.add(kind, &v)
            }
        }
    }

    /// A plain address attribute (MAPPED-ADDRESS, for RFC 3489-era clients).
    pub fn address(&mut self, kind: u16, addr: SocketAddr) -> &mut Self {
        let port = addr.port().to_be_bytes();
        match addr.ip() {
            IpAddr::V4(ip) => {
                let mut v = [0, FAMILY_IPV4, port[0], port[1], 0, 0, 0, 0];
                v[4..].copy_from_slice(&ip.octets());
                self.add(kind, &v)
            }
            IpAddr::V6(ip) => {
                let mut v = [0; 20];
                v[1] = FAMILY_IPV6;
                v[2..4].copy_from_slice(&port);
                v[4..].copy_from_slice(&ip.octets());
                self.add(kind, &v)
            }
        }
    }

    /// ERROR-CODE with a reason phrase (RFC 5389 §15.6); `code` is 300..=699.
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        // Both parts are below 256 for codes up to 699.
        let head = [0, 0, (code / 100) as u8, (code % 100) as u8];
        self.attribute(attr::ERROR_CODE, 4 + reason.len(), |b| {
            b.put(&head);
            b.put(reason.as_bytes());
        })
    }

    /// UNKNOWN-ATTRIBUTES (RFC 5389 §15.9): the attribute types, 16 bits each.
    pub fn unknown_attributes(&mut self, kinds: &[u16]) -> &mut Self {
        self.attribute(attr::UNKNOWN_ATTRIBUTES, 2 * kinds.len(), |b| {
            for kind in kinds {
                b.put(&kind.to_be_bytes());
            }
        })
    }

    /// MESSAGE-INTEGRITY over everything so far, under `key`.
    pub fn integrity(&mut self, key: &[u8]) -> &mut Self {
        let written = self.buf.written();
        let length = u16::try_from(written.len() + 24 - HEADER_LEN).expect("messages fit u16");
        written[2..4].copy_from_slice(&length.to_be_bytes());
        let mut mac = hmac_sha1(key);
        mac.update(written);
        let tag = mac.finalize().into_bytes();
        self.add(attr::MESSAGE_INTEGRITY, &tag)
    }

    /// FINGERPRINT, which must be the last attribute.
    pub fn fingerprint(&mut self) -> &mut Self {
        let written = self.buf.written();
        let length = u16::try_from(written.len() + 8 - HEADER_LEN).expect("messages fit u16");
        written[2..4].copy_from_slice(&length.to_be_bytes());
        let crc = crc32(written) ^ FINGERPRINT_XOR;
        self.add(attr::FINGERPRINT, &crc.to_be_bytes())
    }
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
    fn an_encoder_in_a_buffer_writes_the_same_bytes() {
        let from: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        fn fill<B: Buffer>(e: &mut Encoder<B>, from: SocketAddr) {
            e.error_code(420, "Unknown Attribute")
                .unknown_attributes(&[0x0024, 0x0003])
                .xor_address(attr::XOR_MAPPED_ADDRESS, from)
                .address(attr::MAPPED_ADDRESS, from)
                .integrity(b"key")
                .fingerprint();
        }
        let mut v = Encoder::new(method::BINDING, Class::Error, [5; 12]);
        fill(&mut v, from);
        let v = v.finish();
        let mut buf = [0xAA; 300];
        let mut b = Encoder::in_buffer(&mut buf, method::BINDING, Class::Error, [5; 12]);
        fill(&mut b, from);
        let n = b.finish();
        assert_eq!(&buf[..n], &v[..]);
        let m = Message::decode(&v).unwrap();
        assert_eq!(m.error_code(), Ok(Some(420)));
        assert_eq!(
            m.get(attr::UNKNOWN_ATTRIBUTES),
            Some(&[0, 0x24, 0, 0x03][..])
        );
        assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Ok(Some(from)));
        assert!(m.check_integrity(b"key") && m.fingerprint);
    }

    #[test]
    fn walk_yields_every_attribute_and_stops_at_the_first_bad_one() {
        let mut e = Encoder::new(method::BINDING, Class::Request, [1; 12]);
        for kind in 0x0100..0x0140 {
            e.add(kind, b"v");
        }
        e.fingerprint();
        let bytes = e.finish();
        let (header, attributes) = walk(&bytes).unwrap();
        assert_eq!(
            (header.method, header.class),
            (method::BINDING, Class::Request)
        );
        let kinds: Vec<u16> = attributes.map(|a| a.unwrap().kind).collect();
        assert_eq!(kinds.len(), 0x41);
        assert_eq!(kinds.last(), Some(&attr::FINGERPRINT));
        // More than a Message keeps.
        assert_eq!(
            Message::decode(&bytes).unwrap_err(),
            StunError::TooManyAttributes
        );
        // A flipped padding byte: every attribute still frames, and
        // FINGERPRINT no longer matches.
        let mut bad = bytes.clone();
        bad[HEADER_LEN + 5] ^= 1;
        let (_, attributes) = walk(&bad).unwrap();
        let results: Vec<_> = attributes.map(|a| a.map(|a| a.kind)).collect();
        assert_eq!(results.last(), Some(&Err(StunError::BadFingerprint)));
        assert_eq!(results.len(), 0x41);
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
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::BINDING, Class::Error), 0x0111);
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
