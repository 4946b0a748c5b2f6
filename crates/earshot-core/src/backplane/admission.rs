//! What the store knows of one client, in the client's own slot: its ban,
//! its shared allowances, and whom it is kept apart from.
//!
//! A search is admitted here ([`ADMIT_LUA`], twin of [`Client::admit`])
//! before the pairing script runs in a queue lane: it charges the search to
//! the client's allowance, refuses a banned client, and hands the pairing
//! script the connections and clients this one avoids. So the two steps
//! are not one atomic decision: a ban made between them lets that one
//! search through (it is refused at the next), and a waiter's own ban is
//! not looked at again while it waits. Both are as good as before in
//! practice (a reported client is in a call, not waiting, when the strike
//! lands) and they keep the pairing script inside one slot.
//!
//! Keep-apart pairs (a skip: the two connections, for the rematch
//! cooldown; a report: also the two clients, for as long as keys live) are
//! written to both clients' avoid sets ([`AVOID_LUA`], twin of
//! [`Client::avoid`]), so whichever of the two joins next knows. A set
//! keeps at most [`MAX_AVOIDED`] entries, the soonest to end going first.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::allowance::{self, Bucket};
use super::{BackplaneError, MAX_REMOTE_BYTES};
use crate::{ClientKey, ConnId};

/// The admission script (see its comment for the arguments).
pub const ADMIT_LUA: &str = include_str!("admit.lua");
/// The keep-apart script.
pub const AVOID_LUA: &str = include_str!("avoid.lua");

/// Most entries in one client's avoid set.
pub const MAX_AVOIDED: usize = 256;

/// How an avoid set names a connection.
pub fn avoid_conn(c: ConnId) -> String {
    format!("c{}", c.0)
}

/// How an avoid set names a client.
pub fn avoid_client(k: &ClientKey) -> String {
    format!("k{}", super::hex(k))
}

/// One client's keys, as the store holds them: the rule the scripts
/// mirror.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    /// Banned until (ms).
    pub ban: Option<u64>,
    pub search: Option<Bucket>,
    /// Whom it avoids, until when (ms).
    pub avoid: BTreeMap<String, u64>,
}

impl Client {
    /// Admits a search at `now`; `limit` charges it to the search
    /// allowance (burst, one more per ms). The reply of `admit.lua`.
    pub fn admit(&mut self, now: u64, limit: Option<(u32, u64)>) -> String {
        if let Some((burst, every)) = limit {
            match allowance::take(self.search, burst, every, now) {
                Ok((b, _)) => self.search = Some(b),
                Err(wait) => return format!("{{\"r\":\"limited\",\"ms\":{wait}}}"),
            }
        }
        if let Some(until) = self.ban
            && until > now
        {
            return format!("{{\"r\":\"banned\",\"ms\":{}}}", until - now);
        }
        let mut avoid: Vec<(&u64, &String)> = self
            .avoid
            .iter()
            .filter(|&(_, until)| *until > now)
            .map(|(who, until)| (until, who))
            .collect();
        avoid.sort();
        let list: Vec<&str> = avoid.into_iter().map(|(_, w)| w.as_str()).collect();
        format!("{{\"r\":\"ok\",\"avoid\":\"{}\"}}", list.join(","))
    }

    /// Avoids `who` until `until` (a later time wins); keeps at most
    /// `cap`. How many it keeps (`avoid.lua`).
    pub fn avoid(&mut self, now: u64, who: &str, until: u64, cap: usize) -> usize {
        let e = self.avoid.entry(who.to_owned()).or_insert(until);
        *e = (*e).max(until);
        self.avoid.retain(|_, u| *u > now);
        if self.avoid.len() > cap {
            let mut by_end: Vec<(u64, String)> =
                self.avoid.iter().map(|(w, u)| (*u, w.clone())).collect();
            by_end.sort();
            for (_, w) in by_end.into_iter().take(self.avoid.len() - cap) {
                self.avoid.remove(&w);
            }
        }
        self.avoid.len()
    }
}

/// What the admission script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Go on to a lane, avoiding these (the pairing script's list).
    Ok {
        avoid: String,
    },
    Banned {
        ttl: Duration,
    },
    Limited {
        retry: Duration,
    },
}

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "snake_case", deny_unknown_fields)]
enum Wire {
    Ok { avoid: String },
    Banned { ms: u64 },
    Limited { ms: u64 },
}

/// Decodes the admission script's JSON reply.
pub fn decode_admission(text: &str) -> Result<Admission, BackplaneError> {
    if text.len() > MAX_REMOTE_BYTES {
        return Err(BackplaneError::TooLarge);
    }
    let wire: Wire = serde_json::from_str(text).map_err(|_| BackplaneError::Malformed)?;
    Ok(match wire {
        Wire::Ok { avoid } => {
            let valid = avoid.split(',').filter(|s| !s.is_empty()).all(|w| {
                let (kind, rest) = w.split_at(1);
                match kind {
                    "c" => !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()),
                    "k" => rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()),
                    _ => false,
                }
            });
            if !valid || avoid.split(',').count() > MAX_AVOIDED + 1 {
                return Err(BackplaneError::Invalid);
            }
            Admission::Ok { avoid }
        }
        Wire::Banned { ms } => Admission::Banned {
            ttl: Duration::from_millis(ms.max(1)),
        },
        Wire::Limited { ms } => Admission::Limited {
            retry: Duration::from_millis(ms.max(1)),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_is_charged_then_checked_for_a_ban() {
        let mut c = Client::default();
        assert_eq!(c.admit(1000, Some((1, 60_000))), r#"{"r":"ok","avoid":""}"#);
        assert_eq!(
            c.admit(1000, Some((1, 60_000))),
            r#"{"r":"limited","ms":60000}"#
        );
        c.ban = Some(5000);
        assert_eq!(c.admit(1000, None), r#"{"r":"banned","ms":4000}"#);
        assert_eq!(c.admit(5000, None), r#"{"r":"ok","avoid":""}"#);
    }

    #[test]
    fn an_avoid_set_keeps_the_latest_and_is_capped() {
        let mut c = Client::default();
        c.avoid(0, "c1", 100, 2);
        c.avoid(0, "c1", 50, 2);
        c.avoid(0, "c2", 200, 2);
        assert_eq!(c.avoid(0, "c3", 300, 2), 2);
        let reply = c.admit(10, None);
        assert_eq!(reply, r#"{"r":"ok","avoid":"c2,c3"}"#);
        assert_eq!(
            decode_admission(&reply),
            Ok(Admission::Ok {
                avoid: "c2,c3".into()
            })
        );
        assert!(decode_admission(r#"{"r":"ok","avoid":"x1"}"#).is_err());
    }
}
