//! Command-line flags and environment, parsed once at the edge into
//! [`Settings`], which is all the rest of the server sees.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

/// Anonymous peer-to-peer voice chat in the browser.
///
/// Every flag can also be set with the environment variable shown.
#[derive(Debug, Parser)]
#[command(name = "earshot", version, about, long_about = None)]
pub struct Args {
    /// Address for HTTP and the signalling WebSocket.
    #[arg(long, env = "EARSHOT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// UDP address of the embedded STUN server [default: port 3478 on the
    /// --listen host]. Port 0 picks a free port.
    #[arg(long, env = "EARSHOT_STUN_LISTEN")]
    pub stun_listen: Option<SocketAddr>,

    /// Run without the embedded STUN server (clients then get no ICE servers
    /// unless --stun-url names one of your own).
    #[arg(long, env = "EARSHOT_NO_STUN")]
    pub no_stun: bool,

    /// STUN URL given to clients, e.g. stun:chat.example.org:3478
    /// [default: the host the client used to reach this server, with the
    /// STUN port].
    #[arg(long, env = "EARSHOT_STUN_URL")]
    pub stun_url: Option<String>,

    /// Most signalling connections at once; more are closed with 1013.
    #[arg(long, env = "EARSHOT_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Seconds someone with interests waits for a shared one before being
    /// matched with anyone.
    #[arg(long, env = "EARSHOT_INTEREST_WAIT", default_value_t = 5.0)]
    pub interest_wait: f64,

    /// Seconds two people who skipped each other are kept apart.
    #[arg(long, env = "EARSHOT_REMATCH_COOLDOWN", default_value_t = 30.0)]
    pub rematch_cooldown: f64,

    /// Most people in one room (a full mesh: each sends their audio to
    /// every other, so keep it small).
    #[arg(long, env = "EARSHOT_ROOM_SIZE", default_value_t = 6)]
    pub room_size: usize,

    /// Address of the embedded TURN server (UDP and TCP, same port), which
    /// lets people behind strict NATs connect and makes "hide my IP" work
    /// [default: port 3479 on the --listen host]. Port 0 picks a free port.
    #[arg(long, env = "EARSHOT_TURN_LISTEN")]
    pub turn_listen: Option<SocketAddr>,

    /// Run without the embedded TURN server ("hide my IP" then needs
    /// --turn-url).
    #[arg(long, env = "EARSHOT_NO_TURN", conflicts_with = "turn_listen")]
    pub no_turn: bool,

    /// TCP address of the embedded TURN server over TLS (turns:), for
    /// networks that let only TLS through; it presents the --tls-cert
    /// certificate. 443 gets through most firewalls: the same address as
    /// --listen shares the HTTPS port [default with --tls-cert: port 5349
    /// on the --turn-listen host; off otherwise]. Port 0 picks a free port.
    #[arg(long, env = "EARSHOT_TURN_TLS_LISTEN", conflicts_with = "no_turn")]
    pub turn_tls_listen: Option<SocketAddr>,

    /// Run the embedded TURN server without TLS, even with --tls-cert.
    #[arg(long, env = "EARSHOT_NO_TURN_TLS", conflicts_with = "turn_tls_listen")]
    pub no_turn_tls: bool,

    /// A peer range (CIDR) the embedded TURN server relays to although it is
    /// private or special, e.g. 10.0.0.0/8 on a LAN; repeatable.
    #[arg(
        long = "turn-allow-peer",
        env = "EARSHOT_TURN_ALLOW_PEER",
        value_delimiter = ','
    )]
    pub turn_allow_peers: Vec<String>,

    /// A peer range (CIDR) the embedded TURN server never relays to, even if
    /// it is allowed otherwise; repeatable.
    #[arg(
        long = "turn-deny-peer",
        env = "EARSHOT_TURN_DENY_PEER",
        value_delimiter = ','
    )]
    pub turn_deny_peers: Vec<String>,

    /// Most relay allocations of the embedded TURN server at once.
    #[arg(long, env = "EARSHOT_TURN_TOTAL_QUOTA", default_value_t = 1000)]
    pub turn_total_quota: usize,

    /// Most relay allocations one TURN credential holds, from any address
    /// [default: 4 x (--room-size - 1), 6 x with TURN over TLS].
    #[arg(long, env = "EARSHOT_TURN_USER_QUOTA")]
    pub turn_user_quota: Option<usize>,

    /// Most relay allocations one client (IPv4 address or IPv6 /64) holds
    /// [default: 3 x the user quota].
    #[arg(long, env = "EARSHOT_TURN_CLIENT_QUOTA")]
    pub turn_client_quota: Option<usize>,

    /// Most TURN-over-TCP connections (TLS ones included) one client holds
    /// [default: 3 x --room-size, twice that with TURN over TLS].
    #[arg(long, env = "EARSHOT_TURN_TCP_PER_CLIENT")]
    pub turn_tcp_per_client: Option<usize>,

    /// Bits per second each relay allocation carries, each way (0: no cap).
    #[arg(long, env = "EARSHOT_TURN_MAX_BPS", default_value_t = 4_000_000)]
    pub turn_max_bps: u64,

    /// Public address of the embedded TURN server's relays [default: the
    /// --turn-listen IP].
    #[arg(long, env = "EARSHOT_TURN_PUBLIC_IP")]
    pub turn_public_ip: Option<IpAddr>,

    /// UDP ports for the embedded TURN server's relays, LOW-HIGH.
    #[arg(long, env = "EARSHOT_TURN_RELAY_PORTS", default_value = "49152-65535")]
    pub turn_relay_ports: String,

    /// An external TURN server (e.g. coturn) using the TURN REST shared
    /// secret, such as turn:turn.example.org:3478?transport=udp. Repeatable.
    #[arg(long = "turn-url", env = "EARSHOT_TURN_URL", value_delimiter = ',')]
    pub turn_urls: Vec<String>,

    /// TURN REST shared secret: required with --turn-url; for the embedded
    /// TURN server a random one is made at start if none is given.
    #[arg(long, env = "EARSHOT_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,

    /// Seconds TURN credentials stay valid; clients refresh them before.
    #[arg(long, env = "EARSHOT_TURN_TTL", default_value_t = 21_600)]
    pub turn_ttl: u64,

    /// Whether "hide my IP" starts on when TURN is available: on or off.
    #[arg(long, env = "EARSHOT_HIDE_IP_DEFAULT", default_value = "on", value_parser = ["on", "off"])]
    pub hide_ip_default: String,

    /// A MaxMind-format country database (GeoLite2-Country, DB-IP) for more
    /// accurate flags [default: the embedded registry allocation table].
    #[arg(long, env = "EARSHOT_GEOIP_DB")]
    pub geoip_db: Option<std::path::PathBuf>,

    /// A reverse proxy's address range (CIDR) whose connections may say who
    /// their client is; repeatable. Others' forwarding headers are ignored.
    #[arg(
        long = "trusted-proxy",
        env = "EARSHOT_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,

    /// Another site whose pages may open /ws (scheme://host[:port], e.g.
    /// https://chat.example.org); repeatable. Browsers' upgrades from the
    /// page's own origin are always accepted, others are refused with 403;
    /// clients that send no Origin are accepted.
    #[arg(
        long = "allowed-origin",
        env = "EARSHOT_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// A name this server's pages are served under over plain HTTP (behind
    /// no TLS); repeatable. Over plain HTTP, /ws takes browsers' upgrades
    /// only from pages under an IP address, localhost or a listed name, so
    /// that DNS rebinding cannot make a stranger's page look like ours.
    #[arg(
        long = "public-host",
        env = "EARSHOT_PUBLIC_HOST",
        value_delimiter = ','
    )]
    pub public_hosts: Vec<String>,

    /// Which header trusted proxies write: x-forwarded-for or forwarded.
    #[arg(
        long,
        env = "EARSHOT_FORWARDED_HEADER",
        default_value = "x-forwarded-for"
    )]
    pub forwarded_header: String,

    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "EARSHOT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key for --tls-cert.
    #[arg(long, env = "EARSHOT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Serve HTTPS with a self-signed certificate made at start (for trying
    /// Earshot on a LAN: browsers warn, and the fingerprint is printed so you
    /// can check it). Valid for localhost and the --listen address.
    #[arg(long, env = "EARSHOT_TLS_SELF_SIGNED", conflicts_with = "tls_cert")]
    pub tls_self_signed: bool,

    /// Extra host names for the self-signed certificate; repeatable.
    #[arg(long = "tls-name", env = "EARSHOT_TLS_NAME", value_delimiter = ',')]
    pub tls_names: Vec<String>,

    /// Most signalling connections from one client (one IPv4 address or
    /// IPv6 /64) at once; more are closed with 1013.
    #[arg(long, env = "EARSHOT_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 20)]
    pub max_connections_per_client: usize,

    /// When `hello` must carry a proof of work: off, auto (when the server is
    /// loaded or a client misbehaves) or always.
    #[arg(long, env = "EARSHOT_POW", default_value = "auto", value_parser = ["off", "auto", "always"])]
    pub pow: String,

    /// Range of an ordinary proof-of-work challenge (about half of it in
    /// SHA-256 hashes for the browser); it grows with load and abuse.
    #[arg(long, env = "EARSHOT_POW_DIFFICULTY", default_value_t = 50_000)]
    pub pow_difficulty: u64,

    /// Hours between rotations of the in-memory secret that turns client
    /// addresses into keys (the previous one is honoured one more period).
    #[arg(long, env = "EARSHOT_KEY_ROTATION", default_value_t = 24.0)]
    pub key_rotation: f64,

    /// Share state with other earshot nodes through this Redis
    /// (redis://host:port/db): the stranger queue, bans and blocks, and
    /// signalling between users on different nodes. Without it, state is
    /// in memory and the node stands alone.
    #[arg(long, env = "EARSHOT_REDIS", value_name = "URL")]
    pub redis: Option<String>,

    /// Log filter (tracing syntax: error, warn, info, debug, trace, or
    /// per-module like earshot_server=debug). Logs never contain addresses,
    /// SDP, candidates or chat text at any level.
    #[arg(long, env = "EARSHOT_LOG", default_value = "info")]
    pub log: String,

    /// Most client keys remembered by each table of abuse control: the
    /// moderation records (about 180 bytes each), blocked pairs (about 55)
    /// and each of the five per-client allowances (about 90). Past it, plain records
    /// and the oldest blocks make way (never a ban or strikes while others
    /// are left), and new keys share one allowance.
    #[arg(long, env = "EARSHOT_MAX_CLIENT_RECORDS", default_value_t = 1_000_000)]
    pub max_client_records: usize,

    /// Tests only: every report weighs fully toward a ban, whoever makes
    /// it and whenever it arrived (networks and rooms still count once).
    #[arg(long, hide = true)]
    pub test_unweighed_reports: bool,

    /// Benchmarks and tests only: lift the per-connection message rate and
    /// the per-client connect and search limits, so that a few load
    /// generator addresses can offer the load of many people.
    #[arg(long, hide = true)]
    pub bench_no_rate_limits: bool,
}

/// Validated settings for one server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// `None`: no embedded STUN server.
    pub stun_listen: Option<SocketAddr>,
    pub stun_url: Option<String>,
    pub max_connections: usize,
    /// How often the server pings an idle WebSocket.
    pub ping_interval: Duration,
    /// A socket silent for this long is closed.
    pub idle_timeout: Duration,
    /// Messages queued for one socket before it counts as a slow reader.
    pub outbound_queue: usize,
    /// How long one WebSocket write may take before the socket is dropped.
    pub write_timeout: Duration,
    /// Frames over this size close the connection with 1009.
    pub max_frame_bytes: usize,
    /// How long shutdown waits for connections to close.
    pub drain_timeout: Duration,
    /// How often the client-key secret rotates.
    pub key_rotation: Duration,
    /// How long a new TCP connection has to send its first request head.
    pub header_timeout: Duration,
    pub core: earshot_core::Config,
    pub turn: TurnSetup,
    /// `None`: the embedded country table.
    pub geoip_db: Option<std::path::PathBuf>,
    pub tls: TlsSetup,
    pub proxies: crate::proxy::TrustedProxies,
    /// Which pages besides our own may open `/ws`.
    pub origins: crate::origin::OriginPolicy,
    /// `None`: state in memory, one node.
    pub redis: Option<RedisUrl>,
}

/// A Redis URL; it may hold a password, so it never formats.
#[derive(Clone)]
pub struct RedisUrl(pub String);

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisUrl(<redacted>)")
    }
}

/// Where HTTPS comes from, if anywhere.
#[derive(Debug, Clone, Default)]
pub enum TlsSetup {
    #[default]
    None,
    Files {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
    SelfSigned {
        names: Vec<String>,
    },
}

/// TURN as offered to clients: an embedded server, external ones, or none.
#[derive(Clone, Default)]
pub struct TurnSetup {
    pub embedded: Option<EmbeddedTurn>,
    /// External TURN URLs, sharing `secret`.
    pub urls: Vec<String>,
    /// Why the embedded TURN server is not running although not turned
    /// off, for the start-up message.
    pub unavailable: Option<&'static str>,
    /// The TURN REST shared secret.
    pub secret: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct EmbeddedTurn {
    /// UDP and TCP.
    pub listen: SocketAddr,
    /// TURN over TLS, with the HTTPS certificate.
    pub tls_listen: Option<TurnTlsListen>,
    pub public_ip: Option<IpAddr>,
    pub relay_ports: RangeInclusive<u16>,
    pub limits: crate::turn::TurnLimits,
}

/// Where TURN over TLS listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnTlsListen {
    /// A listener of its own.
    Own(SocketAddr),
    /// The HTTPS listener, which hands TURN connections over.
    Https,
}

impl std::fmt::Debug for TurnSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnSetup")
            .field("embedded", &self.embedded)
            .field("urls", &self.urls)
            .field("unavailable", &self.unavailable)
            .field("secret", &"<secret>")
            .finish()
    }
}

fn port_range(text: &str) -> anyhow::Result<RangeInclusive<u16>> {
    let (low, high) = text
        .split_once('-')
        .context("--turn-relay-ports must look like 49152-65535")?;
    let (low, high): (u16, u16) = (
        low.trim()
            .parse()
            .context("bad low port in --turn-relay-ports")?,
        high.trim()
            .parse()
            .context("bad high port in --turn-relay-ports")?,
    );
    if low == 0 || low > high {
        bail!("--turn-relay-ports needs 1 <= LOW <= HIGH");
    }
    Ok(low..=high)
}

impl Settings {
    /// Defaults for a server on `listen`, STUN on port 0 of the same host:
    /// what tests and benchmarks start from.
    pub fn for_tests(listen: SocketAddr) -> Settings {
        Settings {
            listen,
            stun_listen: Some(SocketAddr::new(listen.ip(), 0)),
            stun_url: None,
            max_connections: 10_000,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            outbound_queue: 64,
            write_timeout: Duration::from_secs(10),
            max_frame_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(5),
            key_rotation: Duration::from_secs(24 * 3600),
            header_timeout: Duration::from_secs(10),
            core: earshot_core::Config::default(),
            turn: TurnSetup::default(),
            geoip_db: None,
            tls: TlsSetup::None,
            proxies: crate::proxy::TrustedProxies::default(),
            origins: crate::origin::OriginPolicy::default(),
            redis: None,
        }
    }
}

/// The embedded TURN server, on by default on port 3479 of the --listen
/// host; off with --no-turn, and off with a reason where its relay address
/// cannot be known.
fn embedded_turn(args: &Args) -> anyhow::Result<(Option<EmbeddedTurn>, Option<&'static str>)> {
    if args.no_turn {
        return Ok((None, None));
    }
    let listen = match args.turn_listen {
        Some(listen) => {
            if listen.ip().is_unspecified() && args.turn_public_ip.is_none() {
                bail!("--turn-listen on all interfaces needs --turn-public-ip");
            }
            listen
        }
        None if args.listen.ip().is_unspecified() && args.turn_public_ip.is_none() => {
            return Ok((
                None,
                Some(
                    "listening on all interfaces without --turn-public-ip, the relay \
                     address is unknown",
                ),
            ));
        }
        None => SocketAddr::new(args.listen.ip(), 3479),
    };
    let cidrs = |flag: &str, list: &[String]| {
        list.iter()
            .map(|c| {
                c.parse::<earshot_core::turn::Cidr>()
                    .with_context(|| format!("bad --{flag} {c:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let tls_listen = turn_tls_listen(args, listen)?;
    let mut limits = crate::turn::TurnLimits::for_rooms(args.room_size, tls_listen.is_some());
    limits.allow_peers = cidrs("turn-allow-peer", &args.turn_allow_peers)?;
    limits.deny_peers = cidrs("turn-deny-peer", &args.turn_deny_peers)?;
    limits.services = vec![args.listen];
    limits.max_allocations = args.turn_total_quota;
    if let Some(n) = args.turn_user_quota {
        limits.per_credential = n;
        limits.per_client = 3 * n;
    }
    if let Some(n) = args.turn_client_quota {
        limits.per_client = n;
    }
    if let Some(n) = args.turn_tcp_per_client {
        limits.tcp_per_client = n;
    }
    if limits.max_allocations == 0 || limits.per_credential == 0 || limits.per_client == 0 {
        bail!("TURN quotas must be at least 1 (use --no-turn to turn it off)");
    }
    limits.max_bps = args.turn_max_bps;
    Ok((
        Some(EmbeddedTurn {
            listen,
            tls_listen,
            public_ip: args.turn_public_ip,
            relay_ports: port_range(&args.turn_relay_ports)?,
            limits,
        }),
        None,
    ))
}

/// TURN over TLS: where asked (on the HTTPS port when that is `--listen`),
/// or on 5349 (RFC 8656's `turns` port) when there is a real certificate.
/// A self-signed one is not on by default: browsers show no warning page
/// for TURN, so they would just fail on it.
fn turn_tls_listen(args: &Args, listen: SocketAddr) -> anyhow::Result<Option<TurnTlsListen>> {
    if args.no_turn_tls {
        return Ok(None);
    }
    match args.turn_tls_listen {
        Some(tls) => {
            if args.tls_cert.is_none() && !args.tls_self_signed {
                bail!("--turn-tls-listen needs a certificate: --tls-cert (or --tls-self-signed)");
            }
            if tls.ip().is_unspecified() && args.turn_public_ip.is_none() {
                bail!("--turn-tls-listen on all interfaces needs --turn-public-ip");
            }
            // Port 0 means a free port of its own, even if --listen says 0.
            if tls == args.listen && tls.port() != 0 {
                return Ok(Some(TurnTlsListen::Https));
            }
            Ok(Some(TurnTlsListen::Own(tls)))
        }
        None if args.tls_cert.is_some() => {
            Ok(Some(TurnTlsListen::Own(SocketAddr::new(listen.ip(), 5349))))
        }
        None => Ok(None),
    }
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} must be a number of seconds >= 0"))
}

impl TryFrom<&Args> for Settings {
    type Error = anyhow::Error;

    fn try_from(args: &Args) -> anyhow::Result<Settings> {
        if args.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        if !(2..=16).contains(&args.room_size) {
            bail!("--room-size must be between 2 and 16");
        }
        if let Some(url) = &args.stun_url
            && !(url.starts_with("stun:") || url.starts_with("stuns:"))
        {
            bail!("--stun-url must start with stun: or stuns:");
        }
        let stun_listen = if args.no_stun {
            None
        } else {
            Some(
                args.stun_listen
                    .unwrap_or_else(|| SocketAddr::new(args.listen.ip(), 3478)),
            )
        };
        let mut settings = Settings::for_tests(args.listen);
        settings.stun_listen = stun_listen;
        settings.stun_url = args.stun_url.clone();
        settings.max_connections = args.max_connections;
        settings.core.rooms.max_size = args.room_size;
        if args.max_connections_per_client == 0 {
            bail!("--max-connections-per-client must be at least 1");
        }
        settings.core.per_client.connections = args.max_connections_per_client;
        // A client may open its whole allowance at once, then slowly more.
        let burst = u32::try_from(args.max_connections_per_client).unwrap_or(u32::MAX);
        settings.core.per_client.connects.0 = settings.core.per_client.connects.0.max(burst);
        pow_setup(args, &mut settings.core.pow)?;
        settings.key_rotation = seconds("key-rotation", args.key_rotation * 3600.0)?;
        if let Some(url) = &args.redis {
            if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
                bail!("--redis must be a redis:// URL");
            }
            settings.redis = Some(RedisUrl(url.clone()));
        }
        (settings.turn, settings.core.turn_credential_ttl) = turn_setup(args)?;
        settings.core.hide_ip_default = args.hide_ip_default == "on";
        settings.geoip_db = args.geoip_db.clone();
        settings.tls = match (&args.tls_cert, &args.tls_key, args.tls_self_signed) {
            (Some(cert), Some(key), _) => TlsSetup::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (None, None, true) => TlsSetup::SelfSigned {
                names: args.tls_names.clone(),
            },
            _ => TlsSetup::None,
        };
        settings.proxies = crate::proxy::TrustedProxies::parse(&args.trusted_proxies)
            .context("bad --trusted-proxy")?
            .reading(
                args.forwarded_header
                    .parse()
                    .context("bad --forwarded-header")?,
            );
        settings.origins.allowed =
            crate::origin::parse_allowed(&args.allowed_origins).context("bad --allowed-origin")?;
        settings.origins.public_hosts =
            crate::origin::parse_public_hosts(&args.public_hosts).context("bad --public-host")?;
        if settings.key_rotation < Duration::from_secs(60) {
            bail!("--key-rotation must be at least a minute (0.017 hours)");
        }
        settings.core.interest_wait = seconds("interest-wait", args.interest_wait)?;
        settings.core.rematch_cooldown = seconds("rematch-cooldown", args.rematch_cooldown)?;
        client_records(args, &mut settings.core)?;
        if args.bench_no_rate_limits {
            let core = &mut settings.core;
            (core.messages_per_second, core.message_burst) = (1_000_000, 1_000_000);
            core.per_client.connects.0 = 1_000_000;
            core.per_client.searches.0 = 1_000_000;
        }
        Ok(settings)
    }
}

/// TURN as offered to clients: the embedded server, external URLs, the
/// shared secret, and how long credentials last.
fn turn_setup(args: &Args) -> anyhow::Result<(TurnSetup, Duration)> {
    for url in &args.turn_urls {
        if !(url.starts_with("turn:") || url.starts_with("turns:")) {
            bail!("--turn-url must start with turn: or turns:");
        }
    }
    if !args.turn_urls.is_empty() && args.turn_secret.is_none() {
        bail!("--turn-url needs --turn-secret (the TURN REST shared secret)");
    }
    let secret = match &args.turn_secret {
        Some(s) if s.len() < 16 => bail!("--turn-secret must be at least 16 characters"),
        Some(s) => s.as_bytes().to_vec(),
        None => {
            let mut s = vec![0u8; 32];
            getrandom::fill(&mut s).map_err(std::io::Error::other)?;
            s
        }
    };
    let (embedded, unavailable) = embedded_turn(args)?;
    let setup = TurnSetup {
        embedded,
        urls: args.turn_urls.clone(),
        secret,
        unavailable,
    };
    if !(60..=7 * 24 * 3600).contains(&args.turn_ttl) {
        bail!("--turn-ttl must be between 60 and 604800 seconds");
    }
    Ok((setup, Duration::from_secs(args.turn_ttl)))
}

/// When `hello` needs proof of work, and how hard it is.
fn pow_setup(args: &Args, pow: &mut earshot_core::pow::PowConfig) -> anyhow::Result<()> {
    pow.mode = match args.pow.as_str() {
        "off" => earshot_core::pow::PowMode::Off,
        "always" => earshot_core::pow::PowMode::Always,
        _ => earshot_core::pow::PowMode::Auto,
    };
    if args.pow_difficulty == 0 || args.pow_difficulty > 10_000_000 {
        bail!("--pow-difficulty must be between 1 and 10000000");
    }
    pow.base_maxnumber = args.pow_difficulty;
    pow.max_maxnumber = pow.max_maxnumber.max(args.pow_difficulty);
    Ok(())
}

/// The caps on abuse-control tables, and the tests' unweighed reports.
fn client_records(args: &Args, core: &mut earshot_core::Config) -> anyhow::Result<()> {
    if args.max_client_records < 1000 {
        bail!("--max-client-records must be at least 1000");
    }
    let m = &mut core.moderation;
    (m.max_records, m.max_blocks) = (args.max_client_records, args.max_client_records);
    core.allowance_keys = args.max_client_records;
    if args.test_unweighed_reports {
        m.trusted_after = Duration::ZERO;
        m.held_calls_for_full = 0;
        m.arrived_together = Duration::ZERO;
    }
    Ok(())
}

/// The address to show people for a listening socket: a wildcard becomes
/// loopback, which is reachable from the same machine.
pub fn display_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Settings> {
        let args = Args::try_parse_from(std::iter::once("earshot").chain(args.iter().copied()))?;
        Settings::try_from(&args)
    }

    #[test]
    fn defaults_put_stun_on_3478_of_the_listen_host() {
        let s = parse(&["--listen", "127.0.0.2:9000"]).unwrap();
        assert_eq!(s.stun_listen, Some("127.0.0.2:3478".parse().unwrap()));
        assert_eq!(s.core.interest_wait, Duration::from_secs(5));
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        assert!(parse(&["--max-connections", "0"]).is_err());
        assert!(parse(&["--room-size", "1"]).is_err());
        assert_eq!(parse(&["--room-size", "3"]).unwrap().core.rooms.max_size, 3);
        assert!(parse(&["--interest-wait", "-1"]).is_err());
        assert!(parse(&["--stun-url", "http://x"]).is_err());
        assert!(parse(&["--listen", "nowhere"]).is_err());
        assert_eq!(parse(&["--no-stun"]).unwrap().stun_listen, None);
        assert!(parse(&["--pow", "sometimes"]).is_err());
        assert!(parse(&["--pow-difficulty", "0"]).is_err());
        assert!(parse(&["--key-rotation", "0"]).is_err());
        assert!(
            parse(&["--turn-url", "turn:x:3478"]).is_err(),
            "needs a secret"
        );
        assert!(
            parse(&[
                "--turn-url",
                "http://x",
                "--turn-secret",
                "0123456789abcdef"
            ])
            .is_err()
        );
        assert!(
            parse(&["--turn-listen", "0.0.0.0:3479"]).is_err(),
            "needs a public IP"
        );
        assert!(
            parse(&[
                "--turn-listen",
                "127.0.0.1:3479",
                "--turn-relay-ports",
                "9-1"
            ])
            .is_err()
        );
        let t = parse(&[
            "--turn-listen",
            "127.0.0.1:3479",
            "--turn-relay-ports",
            "50000-50100",
        ])
        .unwrap()
        .turn;
        assert_eq!(t.embedded.unwrap().relay_ports, 50000..=50100);
        assert_eq!(t.secret.len(), 32, "a random secret when none is given");
        let s = parse(&["--pow", "always", "--max-connections-per-client", "3"]).unwrap();
        assert_eq!(s.core.pow.mode, earshot_core::pow::PowMode::Always);
        assert_eq!(s.core.per_client.connections, 3);
        let b = parse(&["--bench-no-rate-limits"]).unwrap().core;
        assert!(b.messages_per_second >= 1_000_000 && b.per_client.searches.0 >= 1_000_000);
        assert_eq!(parse(&[]).unwrap().core.messages_per_second, 20);
        assert!(parse(&["--max-client-records", "10"]).is_err());
        let c = parse(&["--max-client-records", "5000"]).unwrap().core;
        assert_eq!((c.moderation.max_records, c.allowance_keys), (5000, 5000));
        let d = parse(&[]).unwrap().core;
        assert_eq!(d.moderation.max_records, 1_000_000);
        assert!(d.moderation.trusted_after > Duration::ZERO);
    }

    #[test]
    fn public_hosts_are_names_lower_cased() {
        let s = parse(&["--public-host", "Chat.Example.org, b.example"]).unwrap();
        assert_eq!(s.origins.public_hosts, ["chat.example.org", "b.example"]);
        for bad in ["http://a.example", "a.example:80", "[::1]", "a b", ""] {
            let err = parse(&["--public-host", bad]).unwrap_err();
            assert!(
                format!("{err:#}").contains("--public-host"),
                "{bad}: {err:#}"
            );
        }
    }

    #[test]
    fn turn_over_tls_is_on_with_a_real_certificate_or_when_asked() {
        let tls = |args: &[&str]| {
            let mut all = vec!["--turn-listen", "127.0.0.1:3479"];
            all.extend_from_slice(args);
            parse(&all).map(|s| s.turn.embedded.unwrap().tls_listen)
        };
        let files = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
        assert_eq!(tls(&[]).unwrap(), None);
        assert_eq!(tls(&["--tls-self-signed"]).unwrap(), None);
        let own = |a: &str| Some(TurnTlsListen::Own(a.parse().unwrap()));
        assert_eq!(tls(&files).unwrap(), own("127.0.0.1:5349"));
        let mut off = files.to_vec();
        off.push("--no-turn-tls");
        assert_eq!(tls(&off).unwrap(), None);
        let mut at = files.to_vec();
        at.extend(["--turn-tls-listen", "127.0.0.1:443"]);
        assert_eq!(tls(&at).unwrap(), own("127.0.0.1:443"));
        assert_eq!(
            tls(&["--tls-self-signed", "--turn-tls-listen", "127.0.0.1:0"]).unwrap(),
            own("127.0.0.1:0")
        );
        let mut shared = files.to_vec();
        shared.extend([
            "--listen",
            "127.0.0.1:8443",
            "--turn-tls-listen",
            "127.0.0.1:8443",
        ]);
        assert_eq!(tls(&shared).unwrap(), Some(TurnTlsListen::Https));
        assert!(
            tls(&["--turn-tls-listen", "127.0.0.1:443"]).is_err(),
            "no certificate"
        );
        assert!(parse(&["--no-turn", "--turn-tls-listen", "127.0.0.1:443"]).is_err());
        let mut wild = files.to_vec();
        wild.extend(["--turn-tls-listen", "0.0.0.0:443"]);
        assert!(tls(&wild).is_err(), "needs a public IP");
        // A third URL: room for its allocations and connections.
        let limits = |args: &[&str]| {
            let mut all = vec!["--turn-listen", "127.0.0.1:3479"];
            all.extend_from_slice(args);
            let l = parse(&all).unwrap().turn.embedded.unwrap().limits;
            (l.per_credential, l.per_client, l.tcp_per_client)
        };
        assert_eq!(limits(&[]), (20, 60, 18));
        assert_eq!(limits(&files), (30, 90, 36));
    }

    #[test]
    fn allowed_origins_are_checked_and_normalised() {
        let s = parse(&[
            "--allowed-origin",
            "https://A.example:443,http://b.example:8080",
            "--allowed-origin",
            "http://[::1]:80",
        ])
        .unwrap();
        assert_eq!(
            format!("{:?}", s.origins.allowed),
            "[https://a.example, http://b.example:8080, http://[::1]]"
        );
        assert!(parse(&[]).unwrap().origins.allowed.is_empty());
        for bad in [
            "null",
            "*",
            "a.example",
            "https://a.example/",
            "https://a:0x1",
        ] {
            let err = parse(&["--allowed-origin", bad]).unwrap_err();
            assert!(
                format!("{err:#}").contains("--allowed-origin"),
                "{bad}: {err:#}"
            );
        }
    }
}
