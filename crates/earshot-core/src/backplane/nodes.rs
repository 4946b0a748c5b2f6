//! Which nodes are alive: the registry, and a node's view of it.
//!
//! The registry ([`super::layout::REGISTRY`]) is one hash: the layout
//! stamp, when it was made (`born`), and for each token of each node its
//! expiry. A node proves it is alive by renewing its token's expiry every
//! beat ([`Registry::beat`], twin of `heartbeat.lua`, [`HEARTBEAT_LUA`]);
//! the same script refuses a number held by another live token, and a
//! registry of another layout while any of its tokens lives (once none
//! does, the newcomer's layout takes the store over). Back from an outage a node takes a new
//! token and the script marks the old one dead, so whatever the node left
//! in the store under it (dequeues and leaves that failed meanwhile) is
//! dead at once, on every node.
//!
//! Every entry in the store (a waiter, a room member) carries its node and
//! token. Scripts never read the registry (it lives in another slot);
//! instead each node passes its latest view ([`Liveness`], at most one beat
//! old): the tokens it holds dead, and when the registry was born. A token
//! is dead if that view says so, or if it was minted before the registry
//! was born (the registry was lost, say with the primary that held it, and
//! its live nodes all took new tokens since). A token the view does not
//! know is alive: it is newer than the view. So an entry of a node that
//! died within the last few seconds may still be met, as when the
//! registry lived in a key with a TTL; its calls then end when the other
//! nodes see the death ([`super::Event::NodeDown`]).
//!
//! Time is the nodes' clocks (milliseconds since the epoch); a token's
//! first twelve hex digits are when it was minted.

use std::collections::{BTreeMap, BTreeSet};

use super::NodeId;

/// The heartbeat script (see its comment for the arguments).
pub const HEARTBEAT_LUA: &str = include_str!("heartbeat.lua");
/// `is_dead_fn(dead, born)`, in Lua: put before the scripts that need it.
pub const LIVENESS_LUA: &str = include_str!("liveness.lua");

/// A token minted this long before the registry was born is dead.
pub const MINT_MARGIN_MS: u64 = 2000;
/// A token this long past its expiry is dead (clocks differ a little).
pub const EXPIRY_GRACE_MS: u64 = 500;
/// A replaced token's expiry is set this far in the past: dead at once.
pub const RETIRED_MS: u64 = 1000;
/// Most dead tokens a view passes to a script (the latest deaths).
pub const MAX_DEAD: usize = 256;

/// A new token, minted at `now` (ms).
pub fn new_token(now: u64, random: u64) -> String {
    format!(
        "{:012x}{:08x}",
        now & 0xffff_ffff_ffff,
        random & 0xffff_ffff
    )
}

/// When `token` was minted (ms), if it says.
pub fn minted(token: &str) -> Option<u64> {
    u64::from_str_radix(token.get(..12)?, 16).ok()
}

/// The registry's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub stamp: Option<String>,
    pub born: u64,
    /// `<node>:<token>` -> expiry (ms).
    pub tokens: BTreeMap<String, u64>,
}

/// One beat's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub node: NodeId,
    pub token: String,
    /// The token this one replaces ("" if none).
    pub old: String,
    pub expiry: u64,
    pub now: u64,
    pub stamp: String,
    /// Tokens expired before this are forgotten.
    pub forget: u64,
}

/// What a beat answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeatReply {
    /// The registry is of another layout: its stamp.
    Layout(String),
    /// Another live token holds the node number.
    Taken,
    /// Renewed (`renewed`: the token was there; otherwise it is new, or the
    /// registry lost it), with the registry's birth and every token.
    Ok {
        renewed: bool,
        born: u64,
        tokens: Vec<(String, u64)>,
    },
}

impl Registry {
    /// The rule `heartbeat.lua` runs.
    pub fn beat(&mut self, b: &Beat) -> BeatReply {
        if let Some(s) = &self.stamp
            && *s != b.stamp
        {
            if self.tokens.values().any(|&exp| exp > b.now) {
                return BeatReply::Layout(s.clone());
            }
            *self = Registry::default();
        }
        if self.stamp.is_none() {
            self.stamp = Some(b.stamp.clone());
            self.born = b.now;
        }
        let me = b.node.to_string();
        let mut renewed = false;
        for (field, &exp) in &self.tokens {
            let Some((n, t)) = field.split_once(':') else {
                continue;
            };
            if n == me {
                if t == b.token {
                    renewed = true;
                } else if t != b.old && exp > b.now {
                    return BeatReply::Taken;
                }
            }
        }
        self.tokens.retain(|_, exp| *exp >= b.forget);
        self.tokens.insert(format!("{me}:{}", b.token), b.expiry);
        if !b.old.is_empty() && b.old != b.token {
            self.tokens
                .insert(format!("{me}:{}", b.old), b.now.saturating_sub(RETIRED_MS));
        }
        BeatReply::Ok {
            renewed,
            born: self.born,
            tokens: self.tokens.iter().map(|(k, &v)| (k.clone(), v)).collect(),
        }
    }
}

/// Decodes the heartbeat script's reply.
pub fn decode_beat(text: &str) -> Result<BeatReply, super::BackplaneError> {
    use super::BackplaneError::{Invalid, Malformed, TooLarge};
    if text.len() > super::MAX_REMOTE_BYTES * 4 {
        return Err(TooLarge);
    }
    let mut parts = text.splitn(4, '|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("taken"), None, None, None) => Ok(BeatReply::Taken),
        (Some("layout"), Some(stamp), None, None) => Ok(BeatReply::Layout(stamp.to_owned())),
        (Some("ok"), Some(status), Some(born), Some(list)) => {
            let renewed = match status {
                "1" => true,
                "2" => false,
                _ => return Err(Invalid),
            };
            let born = born.parse().map_err(|_| Invalid)?;
            let mut tokens = Vec::new();
            for item in list.split(';').filter(|s| !s.is_empty()) {
                let (field, exp) = item.split_once('=').ok_or(Malformed)?;
                let (n, t) = field.split_once(':').ok_or(Invalid)?;
                let valid = n.parse::<NodeId>().is_ok()
                    && !t.is_empty()
                    && t.len() <= 64
                    && t.bytes().all(|b| b.is_ascii_hexdigit());
                if !valid {
                    return Err(Invalid);
                }
                tokens.push((field.to_owned(), exp.parse().map_err(|_| Invalid)?));
            }
            Ok(BeatReply::Ok {
                renewed,
                born,
                tokens,
            })
        }
        _ => Err(Malformed),
    }
}

/// A node's view of the registry: which tokens are dead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Liveness {
    dead: BTreeSet<String>,
    /// The live token of each node (the one expiring last).
    live: BTreeMap<NodeId, String>,
    born: u64,
}

impl Liveness {
    /// The view a beat's reply gives at `now`.
    pub fn from_tokens(tokens: &[(String, u64)], born: u64, now: u64) -> Liveness {
        let mut dead: Vec<(u64, &str)> = Vec::new();
        let mut live: BTreeMap<NodeId, (u64, String)> = BTreeMap::new();
        for (field, exp) in tokens {
            if exp.saturating_add(EXPIRY_GRACE_MS) < now {
                dead.push((*exp, field));
            } else if let Some((n, t)) = field.split_once(':')
                && let Ok(n) = n.parse::<NodeId>()
                && live.get(&n).is_none_or(|(e, _)| e < exp)
            {
                live.insert(n, (*exp, t.to_owned()));
            }
        }
        // The latest deaths matter most: older ones' entries are gone.
        dead.sort_unstable_by(|a, b| b.cmp(a));
        dead.truncate(MAX_DEAD);
        Liveness {
            dead: dead.into_iter().map(|(_, f)| f.to_owned()).collect(),
            live: live.into_iter().map(|(n, (_, t))| (n, t)).collect(),
            born,
        }
    }

    /// Whether an entry written by `node` under `token` is dead.
    pub fn is_dead(&self, node: NodeId, token: &str) -> bool {
        self.dead.contains(&format!("{node}:{token}"))
            || minted(token).unwrap_or(0) + MINT_MARGIN_MS < self.born
    }

    /// The live token of `node`, if the view has one.
    pub fn token_of(&self, node: NodeId) -> Option<&str> {
        self.live.get(&node).map(String::as_str)
    }

    /// The dead tokens, as scripts take them (`ARGV`).
    pub fn dead_arg(&self) -> String {
        self.dead.iter().cloned().collect::<Vec<_>>().join(",")
    }

    pub fn born(&self) -> u64 {
        self.born
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(node: NodeId, token: &str, old: &str, now: u64) -> Beat {
        Beat {
            node,
            token: token.into(),
            old: old.into(),
            expiry: now + 3000,
            now,
            stamp: "2/1".into(),
            forget: now.saturating_sub(600_000),
        }
    }

    #[test]
    fn a_number_is_one_live_tokens_and_an_old_token_dies_at_once() {
        let mut r = Registry::default();
        let (a, b) = (new_token(1000, 1), new_token(1000, 2));
        assert!(matches!(
            r.beat(&beat(7, &a, "", 1000)),
            BeatReply::Ok { renewed: false, .. }
        ));
        assert!(matches!(
            r.beat(&beat(7, &a, "", 2000)),
            BeatReply::Ok { renewed: true, .. }
        ));
        assert_eq!(r.beat(&beat(7, &b, "", 2500)), BeatReply::Taken);
        // The same process, back from an outage with a new token.
        let BeatReply::Ok { born, tokens, .. } = r.beat(&beat(7, &b, &a, 2600)) else {
            panic!("renewed");
        };
        let view = Liveness::from_tokens(&tokens, born, 2600);
        assert!(view.is_dead(7, &a));
        assert!(!view.is_dead(7, &b));
        assert_eq!(view.token_of(7), Some(b.as_str()));
        let mut other = beat(9, &a, "", 2700);
        other.stamp = "3/1".into();
        assert_eq!(r.beat(&other), BeatReply::Layout("2/1".into()));
        // Once every token of layout 2 has expired, layout 3 takes over.
        let mut later = beat(9, &a, "", 60_000);
        later.stamp = "3/1".into();
        assert!(matches!(
            r.beat(&later),
            BeatReply::Ok { renewed: false, .. }
        ));
        assert_eq!(r.stamp.as_deref(), Some("3/1"));
    }

    #[test]
    fn tokens_older_than_the_registry_are_dead() {
        let view = Liveness::from_tokens(&[], 100_000, 100_000);
        assert!(view.is_dead(1, &new_token(50_000, 9)));
        assert!(!view.is_dead(1, &new_token(99_000, 9)));
        assert!(
            !view.is_dead(1, &new_token(200_000, 9)),
            "newer than the view"
        );
        assert!(view.is_dead(1, "zz"), "no mint time: as old as can be");
    }

    #[test]
    fn beat_replies_round_trip() {
        let mut r = Registry::default();
        let reply = r.beat(&beat(3, &new_token(5, 5), "", 10));
        let BeatReply::Ok { born, tokens, .. } = &reply else {
            panic!("ok");
        };
        let list: Vec<String> = tokens.iter().map(|(f, e)| format!("{f}={e}")).collect();
        let text = format!("ok|2|{born}|{}", list.join(";"));
        assert_eq!(decode_beat(&text), Ok(reply));
        assert_eq!(decode_beat("taken"), Ok(BeatReply::Taken));
        assert!(decode_beat("ok|3|0|").is_err());
        assert!(decode_beat("ok|1|0|x=1").is_err());
    }
}
