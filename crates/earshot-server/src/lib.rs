//! The `earshot` server: thin IO shells around `earshot-core`.
//!
//! Module map:
//!
//! - [`config`]: flags and environment, validated once into [`Settings`].
//! - `http`: routes, the embedded web client (`web/`), security headers.
//! - `ws`: one task per signalling WebSocket, with its limits.
//! - [`hub`]: drives the sans-IO `Switchboard` and delivers its outputs.
//! - [`backplane`]: with `--redis`, the state several nodes share and the
//!   signalling between them.
//! - [`identity`]: client keys (HMAC of the address) and the `Pii` wrapper.
//! - `listener`: TCP caps per client and a deadline for request heads.
//! - [`stun`]: the embedded STUN server's UDP loop.
//! - [`turn`]: the embedded TURN server's sockets (UDP, TCP, TLS, relays).
//! - [`tls`]: HTTPS certificates (from files, or self-signed in memory),
//!   also presented by TURN over TLS.
//! - `trim`: gives freed memory back to the system after many connections
//!   have closed.
//! - [`geo`], [`proxy`]: approximate country, and client addresses behind
//!   trusted reverse proxies.
//! - [`origin`]: which web pages may open `/ws` (the `Origin` check).
//!
//! [`start`] binds everything and returns a [`Running`] server; `main.rs`
//! only parses flags, sets up logging and waits for a signal. Tests and
//! benchmarks start servers in-process the same way.

// Reviewed exceptions, both in `trim` (`release` and `tune`, calls into
// glibc that take no pointers); everything else stays free of `unsafe`.
#![deny(unsafe_code)]

pub mod backplane;
pub mod config;
pub mod geo;
mod http;
pub mod hub;
pub mod identity;
mod listener;
pub mod origin;
pub mod proxy;
pub mod stun;
pub mod tls;
pub mod trim;
pub mod turn;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
pub use config::Settings;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every request handler and connection task shares.
pub struct App {
    pub settings: Settings,
    pub hub: Arc<hub::Hub>,
    /// The bound STUN address, if the embedded STUN server runs.
    pub stun_addr: Option<SocketAddr>,
    /// The bound embedded TURN address (UDP and TCP), if it runs.
    pub turn_addr: Option<SocketAddr>,
    /// The bound address of TURN over TLS, if it runs.
    pub turn_tls_addr: Option<SocketAddr>,
    /// The embedded TURN server's counters, if it runs.
    pub turn_metrics: Option<Arc<turn::TurnMetrics>>,
    pub stun_metrics: Arc<stun::StunMetrics>,
    keyer: Arc<identity::Keyer>,
    geo: geo::Geo,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// See `http::ice_servers`: the `Host` it was made for, and the list.
    last_ice_servers: http::LastIceServers,
    /// Browser upgrades to `/ws` refused for their `Origin`.
    refused_origins: std::sync::atomic::AtomicU64,
    /// Whether the operator was told of a refusal for a scheme mismatch.
    warned_scheme: std::sync::atomic::AtomicBool,
    /// Whether the DNS rebinding refusal was explained to the operator.
    warned_rebinding: std::sync::atomic::AtomicBool,
}

/// A started server.
pub struct Running {
    /// Where HTTP and `/ws` are served.
    pub http_addr: SocketAddr,
    /// Where STUN is served, if enabled.
    pub stun_addr: Option<SocketAddr>,
    /// Where the embedded TURN server listens, if enabled.
    pub turn_addr: Option<SocketAddr>,
    /// Where it listens for TURN over TLS, if enabled.
    pub turn_tls_addr: Option<SocketAddr>,
    /// The certificate served, when HTTPS is on.
    pub tls: Option<tls::Tls>,
    pub app: Arc<App>,
    server: tokio::task::JoinHandle<()>,
}

/// Binds the HTTP listener and the STUN socket and starts serving.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let http_addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let stun_metrics = Arc::new(stun::StunMetrics::default());
    let stun_addr = bind_stun(&settings, &stun_metrics, &shutdown, &tracker).await?;
    let tls = match &settings.tls {
        config::TlsSetup::None => None,
        config::TlsSetup::Files { cert, key } => Some(tls::Tls::from_pem_files(cert, key)?),
        config::TlsSetup::SelfSigned { names } => {
            Some(tls::Tls::self_signed(&[http_addr.ip()], names)?)
        }
    };
    let mut turn_listener = bind_turn(&settings, http_addr, stun_addr, tls.as_ref()).await?;
    let turn_addr = turn_listener
        .as_ref()
        .map(turn::TurnListener::local_addr)
        .transpose()?;
    let shares_https = settings.turn.embedded.as_ref().and_then(|t| t.tls_listen)
        == Some(config::TurnTlsListen::Https)
        && tls.is_some();
    let (turn_tls_addr, handovers) = match &mut turn_listener {
        Some(l) if shares_https => (Some(http_addr), Some(l.with_handover())),
        Some(l) => (l.tls_addr()?, None),
        None => (None, None),
    };
    if let Some(why) = settings.turn.unavailable {
        tracing::warn!("no embedded TURN server, so no \"hide my IP\": {why}");
    }
    let geo = match &settings.geoip_db {
        Some(path) => geo::Geo::from_maxmind(path)
            .with_context(|| format!("cannot read --geoip-db {}", path.display()))?,
        None => geo::Geo::embedded(),
    };
    tracing::info!(source = %geo.description(), "country lookup ready");
    let keyer =
        Arc::new(identity::Keyer::random().context("no OS randomness for the client-key secret")?);
    let (hub, redis) = make_hub(&settings, &keyer).await?;
    if turn_addr.is_some() || !settings.turn.urls.is_empty() {
        hub.set_turn_credentials(
            settings.turn.secret.clone(),
            settings.core.turn_credential_ttl,
        );
    }
    let turn_metrics = turn_listener.map(|l| spawn_turn(l, &hub, &shutdown, &tracker));
    let guards = listener::Guards {
        // Room for requests that are not signalling sockets, and for sockets
        // that are closing.
        max_total: settings.max_connections + 512,
        // Browsers keep several idle HTTP connections per page besides the
        // signalling socket, and a household shares one address.
        max_per_client: settings.core.per_client.connections * 3 + 16,
        header_timeout: settings.header_timeout,
    };
    let listener = listener::GuardedListener::new(
        listener,
        keyer.clone(),
        settings.proxies.clone(),
        tls.as_ref().map(|t| t.acceptor.clone()),
        guards,
    )
    .with_turn(handovers);
    tracker.spawn(hub.clone().run_timer(shutdown.clone()));
    tracker.spawn(trim::run(hub.clone(), shutdown.clone()));
    tracker.spawn(
        hub.clone()
            .run_pinger(settings.ping_interval, shutdown.clone()),
    );
    let app = Arc::new(App {
        connections: Arc::new(Semaphore::new(settings.max_connections)),
        settings,
        hub,
        stun_addr,
        turn_addr,
        turn_tls_addr,
        turn_metrics,
        stun_metrics: stun_metrics.clone(),
        keyer: keyer.clone(),
        geo,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        last_ice_servers: std::sync::Mutex::new(None),
        refused_origins: std::sync::atomic::AtomicU64::new(0),
        warned_scheme: std::sync::atomic::AtomicBool::new(false),
        warned_rebinding: std::sync::atomic::AtomicBool::new(false),
    });
    match redis {
        // The backplane rotates the shared secret with the other nodes.
        Some((redis, rx)) => redis.spawn(
            app.hub.clone(),
            keyer.clone(),
            app.settings.key_rotation,
            rx,
            shutdown.clone(),
            &tracker,
        ),
        None => {
            tracker.spawn(rotate_keys(app.clone()));
        }
    }
    let router = http::router(app.clone());
    let server = tokio::spawn(async move {
        let serve = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<listener::ClientAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok(Running {
        http_addr,
        stun_addr,
        turn_addr,
        turn_tls_addr,
        tls,
        app,
        server,
    })
}

/// Binds the embedded STUN server's socket, if it runs, and serves it.
async fn bind_stun(
    settings: &Settings,
    metrics: &Arc<stun::StunMetrics>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = settings.stun_listen else {
        return Ok(None);
    };
    let socket = tokio::net::UdpSocket::bind(addr)
        .await
        .with_context(|| format!("cannot bind STUN on udp {addr}"))?;
    let bound = socket.local_addr()?;
    tracker.spawn(stun::serve(socket, metrics.clone(), shutdown.clone()));
    Ok(Some(bound))
}

/// Binds the embedded TURN server's sockets, if it runs (TLS with the
/// HTTPS certificate); it serves once the hub can tell it which
/// credentials are live (`spawn_turn`).
async fn bind_turn(
    settings: &Settings,
    http_addr: SocketAddr,
    stun_addr: Option<SocketAddr>,
    tls: Option<&tls::Tls>,
) -> anyhow::Result<Option<turn::TurnListener>> {
    let Some(t) = &settings.turn.embedded else {
        return Ok(None);
    };
    let mut limits = t.limits.clone();
    // The relay never reaches the server's own services.
    limits
        .services
        .extend([http_addr].into_iter().chain(stun_addr));
    let listener = turn::TurnListener::bind(turn::TurnSettings {
        listen: t.listen,
        public_ip: t.public_ip,
        relay_ports: t.relay_ports.clone(),
        secret: settings.turn.secret.clone(),
        realm: "earshot".into(),
        limits,
    })
    .await
    .context("cannot start the embedded TURN server")?;
    let listener = match (t.tls_listen, tls) {
        (Some(config::TurnTlsListen::Own(addr)), Some(tls)) => listener
            .with_tls(addr, tls.turn_acceptor.clone())
            .await
            .context("cannot start the embedded TURN server")?,
        _ => listener,
    };
    Ok(Some(listener))
}

/// Serves the embedded TURN server, new allocations going only to live
/// sessions of `hub`; its counters for `/metrics`.
fn spawn_turn(
    listener: turn::TurnListener,
    hub: &Arc<hub::Hub>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Arc<turn::TurnMetrics> {
    let listener = listener.with_credential_check(hub.relay_check());
    let metrics = listener.metrics();
    let token = shutdown.clone();
    tracker.spawn(async move {
        if let Err(e) = listener.serve(token).await {
            tracing::error!(error = %e, "the embedded TURN server stopped");
        }
    });
    metrics
}

/// The hub, in memory or (with `--redis`) on the backplane, whose task
/// `start` spawns once the app exists.
type Backplane = (
    Arc<backplane::Redis>,
    tokio::sync::mpsc::UnboundedReceiver<earshot_core::backplane::Request>,
);

async fn make_hub(
    settings: &Settings,
    keyer: &Arc<identity::Keyer>,
) -> anyhow::Result<(Arc<hub::Hub>, Option<Backplane>)> {
    Ok(match &settings.redis {
        Some(url) => {
            let redis = Arc::new(backplane::Redis::connect(&url.0, settings.key_rotation).await?);
            let fresh = keyer.secret();
            redis
                .sync_secret(keyer, settings.key_rotation, fresh)
                .await
                .context("cannot agree the client-key secret through Redis")?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let hub = hub::Hub::with_backplane(
                settings.core.clone(),
                settings.outbound_queue,
                Some((redis.node(), tx)),
            );
            (hub, Some((redis, rx)))
        }
        None => (
            hub::Hub::new(settings.core.clone(), settings.outbound_queue),
            None,
        ),
    })
}

/// Rotates the client-key secret every `key_rotation` until shutdown.
async fn rotate_keys(app: Arc<App>) {
    let period = app.settings.key_rotation;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            () = app.shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = app.keyer.rotate() {
                    tracing::error!(error = %e, "cannot rotate the client-key secret");
                }
            }
        }
    }
}

impl Running {
    /// The URL people open.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/", config::display_addr(self.http_addr))
    }

    /// Stops accepting, asks every socket to close with 1012 and waits for
    /// connection tasks up to the drain timeout.
    pub async fn shutdown(self) {
        self.app.shutdown.cancel();
        self.app.tracker.close();
        let drain = self.app.settings.drain_timeout;
        if tokio::time::timeout(drain, self.app.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        let _ = tokio::time::timeout(drain, self.server).await;
    }
}
