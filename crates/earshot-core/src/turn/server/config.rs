//! The TURN server's settings ([`Config`]) and its counters ([`Stats`]).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use super::CredentialCheck;
use crate::Pii;
use crate::bytebudget::AnswerBudgetConfig;
use crate::turn::policy::PeerPolicy;

/// Settings of a [`TurnServer`]; [`Config::new`] fills in the defaults.
#[derive(Clone)]
pub struct Config {
    /// REALM of the long-term credentials.
    pub realm: String,
    /// The TURN REST shared secret (the signalling server holds it too).
    pub secret: Vec<u8>,
    /// Signs nonces; random, in memory only.
    pub nonce_key: [u8; 32],
    /// How long a nonce stays valid before a 438 asks for a fresh one.
    pub nonce_ttl: Duration,
    /// The relay address's IP as clients are told it (XOR-RELAYED-ADDRESS);
    /// its family is the only one relayed.
    pub relay_ip: IpAddr,
    /// Which peers may be relayed to; built from `relay_ip` by
    /// [`Config::new`], with the operator's ranges and the server's own
    /// services added by the shell.
    pub policy: PeerPolicy,
    pub max_allocations: usize,
    /// Per client: an IPv4 address or an IPv6 /64.
    pub max_allocations_per_client: usize,
    /// Per credential, across every source address. Credentials count by
    /// their REST tag (the part after `EXPIRY:`), which names the session
    /// they were minted for: refreshed credentials share one quota.
    pub max_allocations_per_credential: usize,
    /// Bits a second one allocation relays each way (0: no cap).
    pub max_bps: u64,
    /// Budgets for answers to unauthenticated UDP requests.
    pub answers: AnswerBudgetConfig,
    /// With the signalling server in the same process: whether a username's
    /// session is still live. `None` accepts every valid credential (an
    /// external signalling server, tests).
    pub credential_check: Option<CredentialCheck>,
    /// Permissions (peer IPs) per allocation.
    pub max_permissions: usize,
    /// Channels per allocation.
    pub max_channels: usize,
    /// Lifetime granted when the client asks for less or nothing.
    pub default_lifetime: Duration,
    /// Longest lifetime granted.
    pub max_lifetime: Duration,
}

impl Config {
    pub fn new(realm: String, secret: Vec<u8>, nonce_key: [u8; 32], relay_ip: IpAddr) -> Config {
        Config {
            realm,
            secret,
            nonce_key,
            nonce_ttl: Duration::from_secs(600),
            policy: PeerPolicy::new(relay_ip),
            relay_ip,
            max_allocations: 1000,
            // Browsers allocate over UDP and TCP per peer connection: a
            // member of a full room of 6 holds 10, twice that across an ICE
            // restart. The shell sizes these from the room size.
            max_allocations_per_credential: 20,
            // A household shares one address.
            max_allocations_per_client: 60,
            // Voice, plus the camera rooms may turn on.
            max_bps: 4_000_000,
            answers: AnswerBudgetConfig::default(),
            credential_check: None,
            max_permissions: 32,
            max_channels: 32,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("realm", &self.realm)
            .field("secret", &Pii(&self.secret))
            .field("relay_ip", &Pii(self.relay_ip))
            .field("policy", &self.policy)
            .field("max_allocations", &self.max_allocations)
            .field(
                "max_allocations_per_client",
                &self.max_allocations_per_client,
            )
            .field(
                "max_allocations_per_credential",
                &self.max_allocations_per_credential,
            )
            .field("max_bps", &self.max_bps)
            .finish_non_exhaustive()
    }
}

/// Counters for metrics and the shutdown log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Allocations now.
    pub allocations: usize,
    /// Datagrams relayed from clients to peers.
    pub to_peers: u64,
    /// Datagrams relayed from peers to clients.
    pub to_clients: u64,
    /// Client or peer input dropped: undecodable, no allocation, no
    /// permission.
    pub dropped: u64,
    /// Peers refused by the policy (CreatePermission, ChannelBind, Send).
    pub refused_peers: u64,
    /// Allocations refused for a credential's, a client's or the total
    /// quota.
    pub quota_credential: u64,
    pub quota_client: u64,
    pub quota_total: u64,
    /// Allocations refused because the credential's session had ended.
    pub revoked_credentials: u64,
    /// Answers to unauthenticated requests not sent, for want of budget.
    pub rate_limited_answers: u64,
    /// Datagrams dropped over an allocation's bandwidth cap.
    pub over_bandwidth: u64,
    /// Datagrams handed from one of our relays to another in memory.
    pub relay_to_relay: u64,
}
