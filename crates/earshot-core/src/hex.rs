//! Lower-case hexadecimal, the one spelling used wherever bytes become text:
//! store keys and secrets (`backplane`), proof-of-work hashes and signatures
//! (`pow`), TURN nonces (`turn::auth`), and the test peer's solver.
//!
//! Decoding accepts lower case only, so that one byte string has exactly one
//! spelling (store keys are compared as text). It never panics, whatever
//! the input.

/// Two lower-case hex digits per byte.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    push(&mut out, bytes);
    out
}

/// Appends two lower-case hex digits per byte to `out`.
pub fn push(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xF)]));
    }
}

/// Exactly `2 * N` lower-case hex digits as `N` bytes; `None` for anything
/// else (another length, upper case, a sign, any other character).
pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let value = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = (value(pair[0])? << 4) | value(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(decode::<4>("000fa5ff"), Some([0x00, 0x0f, 0xa5, 0xff]));
        assert_eq!(decode::<0>(""), Some([]));
        for bad in ["000FA5FF", "000fa5f", "000fa5ff0", "+00fa5ff", "zz0fa5ff"] {
            assert_eq!(decode::<4>(bad), None, "{bad}");
        }
        // Eight bytes of text, but not eight ASCII digits.
        assert_eq!(decode::<4>("éééé"), None);
        assert_eq!(decode::<32>(&"é".repeat(32)), None);
    }

    proptest! {
        #[test]
        fn round_trips(bytes in any::<[u8; 16]>()) {
            let text = encode(&bytes);
            prop_assert_eq!(text.len(), 32);
            prop_assert_eq!(decode::<16>(&text), Some(bytes));
        }

        #[test]
        fn decode_never_panics(text in ".{0,40}") {
            if let Some(bytes) = decode::<8>(&text) {
                prop_assert_eq!(encode(&bytes), text);
            }
        }
    }
}
