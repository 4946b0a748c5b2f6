//! [`Pii`]: a value that must never reach a log. Formatting it, with `{:?}`
//! or `{}`, prints `<redacted>`, so a log line or a derived `Debug` cannot
//! show an address, a candidate or a secret by accident. The shell wraps
//! client addresses in it; the core's redacting `Debug` impls (TURN clients
//! and peers, signalling payloads) format their private parts through it.

use std::fmt;

/// A value that must never reach a log: formatting it prints `<redacted>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Pii<T>(pub T);

impl<T> fmt::Debug for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::Pii;

    #[test]
    fn formatting_never_shows_the_value() {
        let addr: std::net::SocketAddr = "203.0.113.9:5000".parse().unwrap();
        for shown in [
            format!("{:?}", Pii(addr)),
            format!("{}", Pii(addr)),
            format!("{:#?}", Pii(addr)),
            format!("{:>40}", Pii(addr)),
        ] {
            assert!(!shown.contains("203.0.113.9"), "{shown}");
            assert!(shown.contains("<redacted>"));
        }
    }
}
