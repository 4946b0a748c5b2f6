//! The switchboard's tunables ([`Config`], [`ClientLimits`]) and the
//! per-client allowances they make.

use super::*;

/// Tunables, validated by the shell before they get here.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_message_bytes: usize,
    pub max_interests: usize,
    pub max_interest_chars: usize,
    /// How long someone with interests waits for a shared one.
    pub interest_wait: Duration,
    /// How long two people who skipped each other are kept apart.
    pub rematch_cooldown: Duration,
    pub messages_per_second: u32,
    pub message_burst: u32,
    /// Errors a connection may cause within `error_window` before it is closed.
    pub error_budget: u32,
    pub error_window: Duration,
    /// How long a new connection has to send `hello`.
    pub hello_timeout: Duration,
    /// How many live waiters one queue scan examines.
    pub scan_limit: usize,
    pub rooms: RoomConfig,
    pub moderation: ModConfig,
    pub per_client: ClientLimits,
    pub pow: PowConfig,
    /// How long minted TURN credentials last (see `set_turn_credentials`).
    pub turn_credential_ttl: Duration,
    /// Whether clients start with "hide my IP" on when TURN is offered.
    pub hide_ip_default: bool,
    /// Most client keys each per-client allowance table remembers (about
    /// 100 bytes each); past it, new keys share one allowance. The same cap
    /// holds for the keys remembered for recent abuse.
    pub allowance_keys: usize,
}

/// Limits per client key, that is for all of one client's connections
/// together: a burst, then one per interval.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Connections open at once.
    pub connections: usize,
    pub connects: (u32, Duration),
    /// Joining the stranger queue: `search` and `skip`.
    pub searches: (u32, Duration),
    pub reports: (u32, Duration),
    /// Joining a room that does not exist yet.
    pub room_creations: (u32, Duration),
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            connections: 20,
            connects: (30, Duration::from_secs(2)),
            searches: (30, Duration::from_secs(2)),
            reports: (10, Duration::from_secs(120)),
            room_creations: (10, Duration::from_secs(30)),
        }
    }
}

#[derive(Debug)]
pub(super) struct ClientBuckets {
    pub(super) connects: KeyedBuckets<ClientKey>,
    pub(super) searches: KeyedBuckets<ClientKey>,
    pub(super) reports: KeyedBuckets<ClientKey>,
    pub(super) room_creations: KeyedBuckets<ClientKey>,
    /// Open connections per key.
    pub(super) open: HashMap<ClientKey, usize>,
}

impl ClientBuckets {
    pub(super) fn new(l: &ClientLimits, max_keys: usize) -> ClientBuckets {
        let b =
            |(burst, every): (u32, Duration)| KeyedBuckets::with_max_keys(every, burst, max_keys);
        ClientBuckets {
            connects: b(l.connects),
            searches: b(l.searches),
            reports: b(l.reports),
            room_creations: b(l.room_creations),
            open: HashMap::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_bytes: 16 * 1024,
            max_interests: 5,
            max_interest_chars: 24,
            interest_wait: Duration::from_secs(5),
            rematch_cooldown: Duration::from_secs(30),
            messages_per_second: 20,
            message_burst: 60,
            error_budget: 20,
            error_window: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            scan_limit: 64,
            rooms: RoomConfig::default(),
            moderation: ModConfig::default(),
            per_client: ClientLimits::default(),
            pow: PowConfig::default(),
            turn_credential_ttl: Duration::from_secs(6 * 3600),
            hide_ip_default: true,
            allowance_keys: crate::ratelimit::DEFAULT_MAX_KEYS,
        }
    }
}

impl Config {
    pub(super) fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_interests: self.max_interests,
            max_interest_chars: self.max_interest_chars,
            interest_wait_ms: millis(self.interest_wait),
            rematch_cooldown_ms: millis(self.rematch_cooldown),
            messages_per_second: self.messages_per_second,
            message_burst: self.message_burst,
            max_room_size: self.rooms.max_size,
            ice_credential_ttl_ms: millis(self.turn_credential_ttl),
        }
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
