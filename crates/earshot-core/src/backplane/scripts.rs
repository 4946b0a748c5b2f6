//! Every script the store runs, each put together with the Lua functions
//! it calls (`take`, `is_dead_fn`), named by its SHA-1 for `EVALSHA`.

use super::admission::{ADMIT_LUA, AVOID_LUA};
use super::allowance::TAKE_LUA;
use super::nodes::{HEARTBEAT_LUA, LIVENESS_LUA};
use super::script::Script;
use super::{queue, room};
use crate::moderation::STRIKE_LUA;

/// The scripts, by what they do.
#[derive(Debug, Clone)]
pub struct Scripts {
    pub heartbeat: Script,
    /// Takes one token: `KEYS[1]` the bucket; `ARGV` burst, every (ms), now (ms).
    pub take: Script,
    pub admit: Script,
    pub avoid: Script,
    pub pair: Script,
    pub queue_touch: Script,
    pub queue_sweep: Script,
    pub room_join: Script,
    pub room_leave: Script,
    pub strike: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts::new()
    }
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            heartbeat: Script::new("heartbeat", HEARTBEAT_LUA),
            take: Script::new(
                "take",
                format!("{TAKE_LUA}return take(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]))\n"),
            ),
            admit: Script::new("admit", format!("{TAKE_LUA}{ADMIT_LUA}")),
            avoid: Script::new("avoid", AVOID_LUA),
            pair: Script::new("pair", format!("{LIVENESS_LUA}{}", queue::PAIR_LUA)),
            queue_touch: Script::new("queue_touch", queue::TOUCH_LUA),
            queue_sweep: Script::new("queue_sweep", format!("{LIVENESS_LUA}{}", queue::SWEEP_LUA)),
            room_join: Script::new("room_join", format!("{LIVENESS_LUA}{}", room::JOIN_LUA)),
            room_leave: Script::new("room_leave", room::LEAVE_LUA),
            strike: Script::new("strike", STRIKE_LUA),
        }
    }

    /// All of them.
    pub fn all(&self) -> [&Script; 10] {
        [
            &self.heartbeat,
            &self.take,
            &self.admit,
            &self.avoid,
            &self.pair,
            &self.queue_touch,
            &self.queue_sweep,
            &self.room_join,
            &self.room_leave,
            &self.strike,
        ]
    }
}
