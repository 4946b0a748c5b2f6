//! A room as the store holds it: one hash under the room's own hash tag.
//!
//! Admission is one script in the room's slot ([`JOIN_LUA`], twin of
//! [`RoomRecord::join`]): removals, size, lock and the passphrase attempts
//! on the room (a token bucket in the room's hash, shared by every node, so
//! a lock cannot be guessed faster by spreading over nodes) are decided
//! atomically with taking a peer id, because two joins at once must not
//! both take the last place or both skip the lock. Members of dead nodes
//! (by the joining node's view, [`super::nodes::Liveness`]) are dropped
//! first. The client's room creations are counted in its own slot: a join
//! that finds the room empty answers [`RoomReply::Create`], the node
//! charges the creation there, and joins again; if someone else created
//! the room meanwhile, the charge was spent for nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::nodes::Liveness;
use super::{BackplaneError, MAX_REMOTE_BYTES, Member, NodeId, unhex};
use crate::protocol::{ErrorCode, PeerId};
use crate::{ClientKey, ConnId};

/// The room-join script (see its comment for the arguments).
pub const JOIN_LUA: &str = include_str!("room_join.lua");
/// The room-leave script.
pub const LEAVE_LUA: &str = include_str!("room_leave.lua");

/// A room join, as the script takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joining {
    pub conn: ConnId,
    pub node: NodeId,
    pub token: String,
    pub key: ClientKey,
    /// The lock's verifier, as hex ("" if none).
    pub verifier: String,
    pub max_size: usize,
    /// How long the room lives unless renewed (ms).
    pub ttl: u64,
    /// Passphrase attempts on the room: a burst, then one per ms.
    pub attempts: (u32, u64),
    /// The client's room creation was charged for this join.
    pub charged: bool,
}

impl Joining {
    /// The join script's ARGV.
    pub fn args(&self, now: u64, live: &Liveness) -> Vec<String> {
        vec![
            self.conn.0.to_string(),
            self.node.to_string(),
            self.token.clone(),
            super::hex(&self.key),
            self.verifier.clone(),
            self.max_size.to_string(),
            self.ttl.to_string(),
            self.attempts.0.to_string(),
            self.attempts.1.max(1).to_string(),
            now.to_string(),
            live.dead_arg(),
            live.born().to_string(),
            if self.charged { "1" } else { "0" }.to_owned(),
        ]
    }
}

/// A room's hash: the rule the scripts mirror, field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomRecord {
    pub fields: BTreeMap<String, String>,
}

impl RoomRecord {
    /// The rule of `room_join.lua`, with its reply (members in peer order).
    pub fn join(&mut self, j: &Joining, now: u64, live: &Liveness) -> String {
        let key = super::hex(&j.key);
        if self.fields.contains_key(&format!("x:{key}")) {
            return r#"{"r":"refused","code":"removed"}"#.to_owned();
        }
        let mut others = Vec::new();
        let mut dead = Vec::new();
        for (f, v) in &self.fields {
            let Some(peer) = f.strip_prefix("m:") else {
                continue;
            };
            let parts: Vec<&str> = v.split(':').collect();
            let ok = parts.len() == 4
                && parts[0].parse::<NodeId>().is_ok()
                && !parts[1].is_empty()
                && parts[1].bytes().all(|b| b.is_ascii_hexdigit())
                && parts[2].bytes().all(|b| b.is_ascii_digit())
                && !parts[2].is_empty()
                && !parts[3].is_empty()
                && parts[3].bytes().all(|b| b.is_ascii_hexdigit());
            if ok && !live.is_dead(parts[0].parse().unwrap_or(0), parts[1]) {
                let n: u64 = peer.parse().unwrap_or(0);
                others.push((n, format!("[{peer},\"{}\",\"{}\"]", parts[2], parts[3])));
            } else {
                dead.push(f.clone());
            }
        }
        for f in dead {
            self.fields.remove(&f);
        }
        if others.len() >= j.max_size {
            return r#"{"r":"refused","code":"room_full"}"#.to_owned();
        }
        let lock = self.fields.get("lock").cloned();
        if let Some(lock) = &lock {
            if j.verifier.is_empty() {
                return r#"{"r":"refused","code":"passphrase_required"}"#.to_owned();
            }
            let (burst, every) = (u64::from(j.attempts.0), j.attempts.1.max(1));
            let num = |f: &str, default: u64| {
                self.fields
                    .get(f)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(default)
            };
            let mut tokens = num("ab", burst);
            let mut at = num("at", now);
            // As Lua's floor: time going backwards gains nothing.
            let gained = if now > at { (now - at) / every } else { 0 };
            if gained > 0 {
                tokens = burst.min(tokens + gained);
                at += gained * every;
            }
            if tokens >= burst {
                at = now;
            }
            if tokens < 1 {
                let ms = (at + every).saturating_sub(now).max(1);
                return format!("{{\"r\":\"refused\",\"code\":\"rate_limited\",\"ms\":{ms}}}");
            }
            self.fields.insert("ab".into(), (tokens - 1).to_string());
            self.fields.insert("at".into(), at.to_string());
            if j.verifier != *lock {
                return r#"{"r":"refused","code":"wrong_passphrase"}"#.to_owned();
            }
        }
        if others.is_empty() && !j.charged {
            return r#"{"r":"create"}"#.to_owned();
        }
        let peer = self
            .fields
            .get("next")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        self.fields.insert("next".into(), peer.to_string());
        self.fields.insert(
            format!("m:{peer}"),
            format!("{}:{}:{}:{key}", j.node, j.token, j.conn.0),
        );
        others.sort();
        let list: Vec<String> = others.into_iter().map(|(_, o)| o).collect();
        format!(
            "{{\"r\":\"joined\",\"peer\":{peer},\"locked\":{},\"others\":[{}]}}",
            lock.is_some(),
            list.join(",")
        )
    }

    /// The rule of `room_leave.lua`: whether the room went with this
    /// member.
    pub fn leave(&mut self, peer: PeerId) -> bool {
        self.fields.remove(&format!("m:{peer}"));
        if self.fields.keys().any(|f| f.starts_with("m:")) {
            return false;
        }
        self.fields.clear();
        true
    }

    /// Locks with this verifier (hex), or unlocks.
    pub fn lock(&mut self, verifier: Option<String>) {
        match verifier {
            Some(v) => self.fields.insert("lock".into(), v),
            None => self.fields.remove("lock"),
        };
    }

    /// The members removed this client.
    pub fn remove(&mut self, key: &ClientKey) {
        self.fields
            .insert(format!("x:{}", super::hex(key)), "1".into());
    }
}

/// What the store's room-join script answered.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomReply {
    Joined {
        peer: PeerId,
        others: Vec<Member>,
        locked: bool,
    },
    Refused(ErrorCode, Option<Duration>),
    /// The room has no member: charge the client's room creations, then
    /// join again.
    Create,
}

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "snake_case", deny_unknown_fields)]
enum RoomWire {
    Joined {
        peer: PeerId,
        locked: bool,
        others: Vec<(PeerId, String, String)>,
    },
    Refused {
        code: String,
        #[serde(default)]
        ms: Option<u64>,
    },
    Create,
}

/// Decodes the room-join script's JSON reply.
pub fn decode_room_reply(text: &str) -> Result<RoomReply, BackplaneError> {
    if text.len() > MAX_REMOTE_BYTES {
        return Err(BackplaneError::TooLarge);
    }
    let wire: RoomWire = serde_json::from_str(text).map_err(|_| BackplaneError::Malformed)?;
    Ok(match wire {
        RoomWire::Joined {
            peer,
            locked,
            others,
        } => {
            if others.len() > 64 {
                return Err(BackplaneError::Invalid);
            }
            // Peer ids grow with each join: their order is joining order.
            let mut others: Vec<Member> = others
                .into_iter()
                .map(|(peer, conn, key)| {
                    Ok(Member {
                        peer,
                        conn: ConnId(conn.parse().map_err(|_| BackplaneError::Invalid)?),
                        key: unhex(&key)?,
                    })
                })
                .collect::<Result<_, BackplaneError>>()?;
            others.sort_unstable_by_key(|m| m.peer);
            RoomReply::Joined {
                peer,
                others,
                locked,
            }
        }
        RoomWire::Refused { code, ms } => {
            let code = match code.as_str() {
                "room_full" => ErrorCode::RoomFull,
                "passphrase_required" => ErrorCode::PassphraseRequired,
                "wrong_passphrase" => ErrorCode::WrongPassphrase,
                "removed" => ErrorCode::Removed,
                "rate_limited" => ErrorCode::RateLimited,
                _ => return Err(BackplaneError::Invalid),
            };
            let retry = match (code, ms) {
                (ErrorCode::RateLimited, Some(ms)) => Some(Duration::from_millis(ms.max(1))),
                (ErrorCode::RateLimited, None) => return Err(BackplaneError::Invalid),
                _ => None,
            };
            RoomReply::Refused(code, retry)
        }
        RoomWire::Create => RoomReply::Create,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joining(conn: u64, charged: bool) -> Joining {
        Joining {
            conn: ConnId(conn),
            node: 1,
            token: super::super::nodes::new_token(1000, 1),
            key: ClientKey([conn as u8; 16]),
            verifier: String::new(),
            max_size: 2,
            ttl: 120_000,
            attempts: (2, 1000),
            charged,
        }
    }

    #[test]
    fn a_room_is_created_once_charged_then_fills() {
        let live = Liveness::default();
        let mut r = RoomRecord::default();
        assert_eq!(r.join(&joining(1, false), 1000, &live), r#"{"r":"create"}"#);
        let j = r.join(&joining(1, true), 1000, &live);
        assert!(
            matches!(decode_room_reply(&j), Ok(RoomReply::Joined { peer: 1, .. })),
            "{j}"
        );
        let j = r.join(&joining(2, false), 1000, &live);
        let Ok(RoomReply::Joined {
            peer: 2, others, ..
        }) = decode_room_reply(&j)
        else {
            panic!("{j}");
        };
        assert_eq!(others[0].conn, ConnId(1));
        assert_eq!(
            decode_room_reply(&r.join(&joining(3, false), 1000, &live)),
            Ok(RoomReply::Refused(ErrorCode::RoomFull, None))
        );
        assert!(!r.leave(1));
        assert!(r.leave(2));
        assert!(r.fields.is_empty());
    }

    #[test]
    fn guesses_at_a_lock_are_limited_per_room() {
        let live = Liveness::default();
        let mut r = RoomRecord::default();
        r.join(&joining(1, true), 1000, &live);
        r.lock(Some("aa".into()));
        let mut guess = joining(2, false);
        guess.verifier = "bb".into();
        for _ in 0..2 {
            assert!(r.join(&guess, 1000, &live).contains("wrong_passphrase"));
        }
        assert_eq!(
            decode_room_reply(&r.join(&guess, 1500, &live)),
            Ok(RoomReply::Refused(
                ErrorCode::RateLimited,
                Some(Duration::from_millis(500))
            ))
        );
        guess.verifier = "aa".into();
        assert!(r.join(&guess, 2000, &live).contains("joined"));
    }
}
