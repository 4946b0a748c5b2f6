//! Where the shared store keeps what: the key layout, and its version.
//!
//! Keys are hashed by what they belong to (the part in braces is the hash
//! tag, see [`super::slot`]), so a Redis Cluster spreads them over its
//! primaries while each script still touches one slot only:
//!
//! | key | slot of | what |
//! |-----|---------|------|
//! | `earshot:{nodes}` | the registry | the layout stamp, when the registry was made, and each node's tokens with their expiry ([`super::nodes`]) |
//! | `earshot:2:{q<i>}` | queue lane `i` | the lane's waiters' entries by arrival ([`super::queue`]) |
//! | `earshot:2:{c<key>}:ban` | the client | a ban: until when |
//! | `earshot:2:{c<key>}:rl:<kind>` | the client | a shared allowance: `connect`, `search`, `report`, `room` ([`super::allowance`]) |
//! | `earshot:2:{c<key>}:strikes` | the client | strikes against it ([`crate::moderation::Strikes`]) |
//! | `earshot:2:{c<key>}:avoid` | the client | connections and clients it is kept apart from ([`super::admission`]) |
//! | `earshot:2:{r<hash>}` | the room | members, lock, removals ([`super::room`]) |
//! | `earshot:2:call:<call>` | the call | its two sides |
//! | `earshot:2:{n<node>}:ch` | the node | its (sharded) channel: never stored |
//! | `earshot:2:secret:<period>` | itself | the client-key secret of a rotation period |
//!
//! The layout has a version, [`VERSION`], in every key but the registry's,
//! and the registry names it ([`Layout::stamp`]): a node refuses a store
//! whose registry names another, or that holds keys of layout 1 (all under
//! `{earshot}:`), so that nodes of two versions never share one store
//! without knowing it (each would see only half of the service).

use crate::ClientKey;
use crate::backplane::NodeId;

/// This layout's version.
pub const VERSION: u32 = 2;

/// The node registry: one key, the same name in every layout.
pub const REGISTRY: &str = "earshot:{nodes}";

/// Keys that only a node of layout 1 writes (each `{earshot}:secret:<n>`
/// too): they mean such a node ran on this store lately.
pub const LAYOUT_1_KEYS: [&str; 2] = ["{earshot}:queue", "{earshot}:seq"];

/// A layout-1 node's shared secret of rotation period `period`.
pub fn layout_1_secret(period: u64) -> String {
    format!("{{earshot}}:secret:{period}")
}

/// Lanes of the stranger queue on a cluster (one on a single server).
pub const CLUSTER_LANES: u16 = 16;

/// The key layout of one store: the version, and the lanes its stranger
/// queue is split into (agreed by the first node, kept in the registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub lanes: u16,
}

const P: &str = "earshot:2:";

impl Layout {
    /// What the registry records: `<version>/<lanes>`.
    pub fn stamp(&self) -> String {
        format!("{VERSION}/{}", self.lanes)
    }

    /// Reads a stamp of this version; `None` for another version (or junk).
    pub fn from_stamp(stamp: &str) -> Option<Layout> {
        let (version, lanes) = stamp.split_once('/')?;
        if version != VERSION.to_string() {
            return None;
        }
        let lanes: u16 = lanes.parse().ok()?;
        (1..=1024).contains(&lanes).then_some(Layout { lanes })
    }

    /// Lane `i`: its waiters' entries by arrival (a sorted set).
    pub fn lane(&self, i: u16) -> String {
        format!("{P}{{q{i}}}")
    }

    /// A client's key of this kind (`ban`, `rl:search`, `strikes`, ...).
    pub fn client(&self, key: &ClientKey, kind: &str) -> String {
        format!("{P}{{c{}}}:{kind}", super::hex(key))
    }

    /// A room, by its [`super::room_key`].
    pub fn room(&self, room: &str) -> String {
        format!("{P}{{r{room}}}")
    }

    pub fn call(&self, call: crate::protocol::CallId) -> String {
        format!("{P}call:{call}")
    }

    /// A node's channel.
    pub fn channel(&self, node: NodeId) -> String {
        format!("{P}{{n{node}}}:ch")
    }

    pub fn secret(&self, period: u64) -> String {
        format!("{P}secret:{period}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::slot::slot;

    #[test]
    fn stamps_round_trip_and_name_their_version() {
        let l = Layout { lanes: 16 };
        assert_eq!(Layout::from_stamp(&l.stamp()), Some(l));
        assert_eq!(Layout::from_stamp("1/16"), None);
        assert_eq!(Layout::from_stamp("2/0"), None);
        assert_eq!(Layout::from_stamp("junk"), None);
    }

    #[test]
    fn what_belongs_together_shares_a_slot() {
        let l = Layout { lanes: 4 };
        let k = ClientKey([7; 16]);
        let client: Vec<u16> = ["ban", "rl:search", "strikes", "avoid"]
            .iter()
            .map(|kind| slot(l.client(&k, kind).as_bytes()))
            .collect();
        assert!(client.windows(2).all(|w| w[0] == w[1]));
        // Lanes and clients spread.
        let lanes: std::collections::HashSet<u16> =
            (0..16).map(|i| slot(l.lane(i).as_bytes())).collect();
        assert_eq!(lanes.len(), 16);
    }
}
