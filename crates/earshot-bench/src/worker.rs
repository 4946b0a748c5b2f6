//! `earshot-bench idle-worker`: one client process of the idle benchmark.
//!
//! Opens `count` WebSockets from `source` (an address in 127.0.0.0/8, so
//! several workers do not share one ephemeral port range), sends `hello` on
//! each, waits for its `welcome`, then keeps every socket idle: polling the
//! stream is what answers the server's pings.
//!
//! Talks to the parent in lines on stdout:
//!
//! - `ready N`: all N sockets got their welcome;
//! - `lost`: a socket closed before the parent asked to stop;
//! - `error MESSAGE`: setup failed (the worker then exits with status 1).
//!
//! Stdin reaching its end (the parent closed it, or died) means stop: each
//! socket sends a close frame and the worker exits within a few seconds.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const HELLO: &str = r#"{"type":"hello","version":1}"#;
/// Tries per connection before the worker gives up.
const ATTEMPTS: u32 = 3;
/// How long stopping may take: close frames out, the server's replies in.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Config {
    pub server: SocketAddr,
    pub url: String,
    pub count: usize,
    pub source: Ipv4Addr,
    pub concurrency: usize,
    pub connect_timeout: Duration,
}

/// The server address in a `ws://127.x.y.z:PORT/...` URL; anything that is
/// not IPv4 loopback is refused.
pub fn parse_url(url: &str) -> anyhow::Result<SocketAddrV4> {
    let rest = url
        .strip_prefix("ws://")
        .context("the URL must start with ws://")?;
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    let addr: SocketAddrV4 = authority
        .parse()
        .with_context(|| format!("the URL must name an IPv4 address and port: {url}"))?;
    if !addr.ip().is_loopback() {
        bail!(
            "the benchmark only connects to 127.0.0.0/8, not {}",
            addr.ip()
        );
    }
    Ok(addr)
}

pub fn run(config: Config) -> anyhow::Result<()> {
    if !config.source.is_loopback() {
        bail!("--source must be in 127.0.0.0/8");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(Arc::new(config)));
    if let Err(e) = &result {
        say(&format!("error {e:#}"));
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// One line to the parent. A parent that has gone away is not an error here:
/// stdin's end will stop us.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn serve(config: Arc<Config>) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    std::thread::spawn(move || {
        let mut scratch = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut scratch), Ok(n) if n > 0) {}
        let _ = stop_tx.send(true);
    });

    let permits = Arc::new(Semaphore::new(config.concurrency));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for _ in 0..config.count {
        tasks.spawn(connection(
            config.clone(),
            permits.clone(),
            done_tx.clone(),
            stop_rx.clone(),
        ));
    }
    drop(done_tx);

    let mut ready = 0;
    let mut stop = stop_rx.clone();
    while ready < config.count {
        tokio::select! {
            done = done_rx.recv() => match done {
                Some(Ok(())) => ready += 1,
                Some(Err(e)) => bail!("{ready} of {} connected, then: {e}", config.count),
                None => bail!("{ready} of {} connected, then the rest ended", config.count),
            },
            _ = stop.wait_for(|s| *s) => bail!("asked to stop after {ready} of {} connected", config.count),
        }
    }
    say(&format!("ready {ready}"));

    let _ = stop.wait_for(|s| *s).await;
    let _ = timeout(CLOSE_TIMEOUT + Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Opens one socket (retrying a little), reports it on `done`, then keeps it
/// idle until it closes or `stop` turns true.
async fn connection(
    config: Arc<Config>,
    permits: Arc<Semaphore>,
    done: mpsc::UnboundedSender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) {
    let opened = {
        let _permit = permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let mut attempt = 1;
        loop {
            let error = match timeout(config.connect_timeout, open(&config)).await {
                Ok(Ok(ws)) => break Ok(ws),
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => format!("no welcome within {:?}", config.connect_timeout),
            };
            if attempt >= ATTEMPTS {
                break Err(format!("{error} ({attempt} attempts)"));
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            attempt += 1;
        }
    };
    let mut ws = match opened {
        Ok(ws) => ws,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    let _ = done.send(Ok(()));
    drop(done);

    let stopping = loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break false,
                Some(Ok(_)) => {}
            },
            _ = stop.wait_for(|s| *s) => break true,
        }
    };
    if stopping {
        let _ = timeout(CLOSE_TIMEOUT, async {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    } else if !*stop.borrow() {
        say("lost");
    }
}

/// TCP from our source address, the WebSocket upgrade, `hello`, `welcome`.
async fn open(config: &Config) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let socket = TcpSocket::new_v4().context("socket")?;
    socket
        .bind(SocketAddr::new(config.source.into(), 0))
        .with_context(|| format!("bind {}", config.source))?;
    let stream = socket.connect(config.server).await.context("connect")?;
    // Small client buffers: the worker holds thousands of sockets too.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(config.url.as_str(), stream, Some(ws_config))
            .await
            .context("WebSocket upgrade")?;
    ws.send(Message::text(HELLO)).await.context("send hello")?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let reply: serde_json::Value =
                    serde_json::from_str(text.as_str()).context("reply is not JSON")?;
                match reply.get("type").and_then(|t| t.as_str()) {
                    Some("welcome") => return Ok(ws),
                    other => bail!("expected welcome, got {other:?}"),
                }
            }
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("waiting for welcome"),
            None => bail!("closed before welcome"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn only_loopback_urls_are_accepted() {
        assert_eq!(
            parse_url("ws://127.0.0.1:8080/ws").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert!(parse_url("ws://127.3.2.1:1").is_ok());
        assert!(parse_url("ws://10.0.0.1:8080/ws").is_err());
        assert!(parse_url("ws://example.org:80/ws").is_err());
        assert!(parse_url("wss://127.0.0.1:8080/ws").is_err());
        assert!(parse_url("ws://[::1]:8080/ws").is_err());
    }
}
