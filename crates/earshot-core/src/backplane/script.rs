//! A Lua script the store runs, known to Redis by its SHA-1.

use sha1::{Digest, Sha1};

/// A script's source and the digest `EVALSHA` names it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub name: &'static str,
    pub source: String,
    pub sha: String,
}

impl Script {
    pub fn new(name: &'static str, source: impl Into<String>) -> Script {
        let source = source.into();
        let sha = crate::hex::encode(&Sha1::digest(source.as_bytes()));
        Script { name, source, sha }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_named_by_their_sha1() {
        // `redis-cli SCRIPT LOAD "return 1"`
        assert_eq!(
            Script::new("one", "return 1").sha,
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }
}
