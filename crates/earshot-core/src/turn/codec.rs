//! TURN's own framing (RFC 5766): ChannelData, and how STUN messages and
//! ChannelData follow each other on a TCP stream. STUN messages themselves,
//! TURN's included, are [`crate::stun::codec`]'s.
//!
//! Invariants: decoding never panics, whatever the input (property-tested),
//! and never allocates.

use crate::stun::codec::{HEADER_LEN, StunError};

/// The largest relayed payload: a Data indication carrying it (24 bytes of
/// IPv6 XOR-PEER-ADDRESS, a 4-byte DATA header, up to 3 of padding) still
/// fits STUN's 16-bit length. Bigger peer datagrams are dropped.
pub const MAX_PAYLOAD: usize = 65_500;

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
pub fn decode_channel_data(bytes: &[u8]) -> Result<(u16, &[u8]), StunError> {
    let Some((header, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(StunError::TooShort);
    };
    let channel = u16::from_be_bytes([header[0], header[1]]);
    if !is_channel(channel) {
        return Err(StunError::BadChannel);
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    rest.get(..len)
        .map(|data| (channel, data))
        .ok_or(StunError::BadLength)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::codec::{Class, Encoder, method};
    use proptest::prelude::*;

    #[test]
    fn channel_data_and_stream_frames() {
        let m = encode_channel_data(0x4001, b"hello", true);
        assert_eq!(m.len(), 12);
        assert_eq!(stream_frame(&m), Frame::Len(12));
        assert_eq!(stream_frame(&m[..3]), Frame::Incomplete);
        assert_eq!(decode_channel_data(&m), Ok((0x4001, &b"hello"[..])));
        assert_eq!(
            decode_channel_data(&encode_channel_data(0x3FFF, b"", false)),
            Err(StunError::BadChannel)
        );
        assert_eq!(decode_channel_data(&m[..8]), Err(StunError::BadLength));
        let stun = Encoder::new(method::BINDING, Class::Request, [0; 12]).finish();
        assert_eq!(stream_frame(&stun), Frame::Len(20));
        assert_eq!(stream_frame(&[0x80, 0, 0, 0]), Frame::Invalid);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
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
    }
}
