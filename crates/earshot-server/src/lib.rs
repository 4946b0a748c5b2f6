//! The `earshot` server: thin IO shells around `earshot-core`.
//!
//! Module map:
//!
//! - [`config`]: flags and environment, validated once into [`Settings`].
//! - `http`: routes, the embedded web client (`web/`), security headers.
//! - `ws`: one task per signalling WebSocket, with its limits.
//! - [`hub`]: drives the sans-IO `Switchboard` and delivers its outputs.
//! - [`stun`]: the embedded STUN server's UDP loop.
//!
//! [`start`] binds everything and returns a [`Running`] server; `main.rs`
//! only parses flags, sets up logging and waits for a signal. Tests and
//! benchmarks start servers in-process the same way.

pub mod config;
mod http;
pub mod hub;
pub mod stun;
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
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// A started server.
pub struct Running {
    /// Where HTTP and `/ws` are served.
    pub http_addr: SocketAddr,
    /// Where STUN is served, if enabled.
    pub stun_addr: Option<SocketAddr>,
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
    let stun_addr = match settings.stun_listen {
        Some(addr) => {
            let socket = tokio::net::UdpSocket::bind(addr)
                .await
                .with_context(|| format!("cannot bind STUN on udp {addr}"))?;
            let bound = socket.local_addr()?;
            tracker.spawn(stun::serve(socket, shutdown.clone()));
            Some(bound)
        }
        None => None,
    };
    let hub = hub::Hub::new(settings.core.clone(), settings.outbound_queue);
    tracker.spawn(hub.clone().run_timer(shutdown.clone()));
    let app = Arc::new(App {
        connections: Arc::new(Semaphore::new(settings.max_connections)),
        settings,
        hub,
        stun_addr,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    });
    let router = http::router(app.clone());
    let server = tokio::spawn(async move {
        let serve =
            axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok(Running {
        http_addr,
        stun_addr,
        app,
        server,
    })
}

impl Running {
    /// The URL people open.
    pub fn url(&self) -> String {
        format!("http://{}/", config::display_addr(self.http_addr))
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
