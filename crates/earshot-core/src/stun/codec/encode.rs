//! Building STUN messages: [`Encoder`] into a `Vec`, or into a caller's
//! buffer ([`Fixed`]) without allocating.

use super::*;

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
