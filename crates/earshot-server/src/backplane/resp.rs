//! RESP2, the Redis wire protocol, as far as the backplane speaks it:
//! commands out (arrays of bulk strings), replies in (decoded from the front
//! of a buffer, so that a pipelined stream of replies is read one by one).
//!
//! The decoder is bounded (sizes, nesting) and never panics on any input:
//! a reply is input like any other (property-tested below).

/// Largest bulk string accepted in a reply (a script's answer, a message).
const MAX_BULK: usize = 16 * 1024 * 1024;
/// Most elements in one reply array (a registry, a scan).
const MAX_ARRAY: usize = 1 << 20;
/// Deepest nesting of arrays (`CLUSTER SLOTS` needs three).
const MAX_DEPTH: usize = 8;

/// A decoded reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Int(i64),
    Data(Vec<u8>),
    /// `+OK` and friends.
    Status(String),
    /// `-ERR ...`: an error reply, as text.
    Error(String),
    Array(Vec<Value>),
}

impl Value {
    /// The reply as text, if it is a string.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Data(d) => std::str::from_utf8(d).ok(),
            Value::Status(s) => Some(s),
            _ => None,
        }
    }

    /// The reply as an integer, if it is one (or a string of one).
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            v => v.text().and_then(|t| t.parse().ok()),
        }
    }
}

/// A command: its arguments, already encoded as bulk strings.
#[derive(Debug, Clone, Default)]
pub struct Cmd {
    args: Vec<u8>,
    count: usize,
    /// The first key argument, whose slot picks the cluster node.
    key: Option<Vec<u8>>,
}

/// Something that can be a command argument.
pub trait Arg {
    fn write(&self, out: &mut Vec<u8>);
}

impl Arg for [u8] {
    fn write(&self, out: &mut Vec<u8>) {
        bulk(out, self);
    }
}

impl Arg for str {
    fn write(&self, out: &mut Vec<u8>) {
        bulk(out, self.as_bytes());
    }
}

impl Arg for String {
    fn write(&self, out: &mut Vec<u8>) {
        bulk(out, self.as_bytes());
    }
}

macro_rules! int_arg {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn write(&self, out: &mut Vec<u8>) {
                bulk(out, self.to_string().as_bytes());
            }
        }
    )*};
}
int_arg!(u8, u16, u32, u64, usize, i64);

impl<T: Arg + ?Sized> Arg for &T {
    fn write(&self, out: &mut Vec<u8>) {
        (**self).write(out);
    }
}

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

impl Cmd {
    pub fn new(name: &str) -> Cmd {
        let mut c = Cmd::default();
        c.arg(name);
        c
    }

    pub fn arg(&mut self, a: impl Arg) -> &mut Cmd {
        a.write(&mut self.args);
        self.count += 1;
        self
    }

    /// A key argument: the first one decides where the command goes.
    pub fn key(&mut self, k: &str) -> &mut Cmd {
        if self.key.is_none() {
            self.key = Some(k.as_bytes().to_vec());
        }
        self.arg(k)
    }

    /// The key that routes it, if any.
    pub fn routing_key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The bytes on the wire.
    pub fn pack(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.args.len() + 16);
        out.push(b'*');
        out.extend_from_slice(self.count.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.args);
        out
    }
}

/// Why a reply stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed reply from Redis")]
pub struct Malformed;

/// Decodes one reply from the front of `buf`: the value and the bytes it
/// took, `None` if `buf` holds only part of one.
pub fn decode(buf: &[u8]) -> Result<Option<(Value, usize)>, Malformed> {
    let mut at = 0;
    match value(buf, &mut at, 0)? {
        Some(v) => Ok(Some((v, at))),
        None => Ok(None),
    }
}

/// One `\r\n`-terminated line from `at`, without its terminator.
fn line<'a>(buf: &'a [u8], at: &mut usize) -> Result<Option<&'a [u8]>, Malformed> {
    let rest = &buf[*at..];
    let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
        // A line is short; one this long without an end is not RESP.
        return if rest.len() > 64 * 1024 {
            Err(Malformed)
        } else {
            Ok(None)
        };
    };
    *at += end + 2;
    Ok(Some(&rest[..end]))
}

fn number(bytes: &[u8]) -> Result<i64, Malformed> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Malformed)
}

fn value(buf: &[u8], at: &mut usize, depth: usize) -> Result<Option<Value>, Malformed> {
    if depth > MAX_DEPTH {
        return Err(Malformed);
    }
    let Some(&kind) = buf.get(*at) else {
        return Ok(None);
    };
    *at += 1;
    let Some(head) = line(buf, at)? else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(head).into_owned();
    Ok(Some(match kind {
        b'+' => Value::Status(text()),
        b'-' => Value::Error(text()),
        b':' => Value::Int(number(head)?),
        b'$' => {
            let n = number(head)?;
            if n < 0 {
                return Ok(Some(Value::Nil));
            }
            let n = usize::try_from(n).map_err(|_| Malformed)?;
            if n > MAX_BULK {
                return Err(Malformed);
            }
            if buf.len() < *at + n + 2 {
                return Ok(None);
            }
            if &buf[*at + n..*at + n + 2] != b"\r\n" {
                return Err(Malformed);
            }
            let data = buf[*at..*at + n].to_vec();
            *at += n + 2;
            Value::Data(data)
        }
        b'*' => {
            let n = number(head)?;
            if n < 0 {
                return Ok(Some(Value::Nil));
            }
            let n = usize::try_from(n).map_err(|_| Malformed)?;
            if n > MAX_ARRAY {
                return Err(Malformed);
            }
            let mut items = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                match value(buf, at, depth + 1)? {
                    Some(v) => items.push(v),
                    None => return Ok(None),
                }
            }
            Value::Array(items)
        }
        _ => return Err(Malformed),
    }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut c = Cmd::new("SET");
        c.key("k").arg(12u64).arg("PX");
        assert_eq!(
            c.pack(),
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$2\r\nPX\r\n"
        );
        assert_eq!(c.routing_key(), Some(&b"k"[..]));
    }

    #[test]
    fn replies_decode_one_at_a_time() {
        let stream = b"+OK\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n-ERR no\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((v, used)) = decode(&stream[at..]).unwrap() {
            got.push(v);
            at += used;
        }
        assert_eq!(at, stream.len());
        assert_eq!(
            got,
            vec![
                Value::Status("OK".into()),
                Value::Int(42),
                Value::Data(b"abc".to_vec()),
                Value::Nil,
                Value::Array(vec![
                    Value::Data(b"a".to_vec()),
                    Value::Array(vec![Value::Int(1)])
                ]),
                Value::Error("ERR no".into()),
            ]
        );
    }

    #[test]
    fn a_partial_reply_waits_for_more() {
        let full = b"*2\r\n$5\r\nhello\r\n:7\r\n";
        for cut in 0..full.len() {
            assert_eq!(decode(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(decode(full).unwrap().is_some());
    }

    proptest! {
        /// Whatever arrives, decoding answers without panicking, and never
        /// claims more bytes than it was given.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((_, used))) = decode(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn resp_like_bytes_decode_or_fail_cleanly(
            parts in prop::collection::vec(prop::sample::select(vec![
                "*", "$", "+", "-", ":", "\r\n", "1", "2", "-1", "0", "abc", "99999999999999999999",
            ]), 0..30),
        ) {
            let bytes: String = parts.concat();
            if let Ok(Some((_, used))) = decode(bytes.as_bytes()) {
                prop_assert!(used <= bytes.len());
            }
        }
    }
}
