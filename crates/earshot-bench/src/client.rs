//! Opening one benchmark client socket, for either server: TCP from a
//! chosen 127.0.0.x source, the WebSocket upgrade, and the server's
//! greeting (Earshot: `hello` answered by `welcome`; PeerJS: the `id` and
//! `token` in the URL answered by `OPEN`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Ws = WebSocketStream<TcpStream>;

const HELLO: &str = r#"{"type":"hello","version":1}"#;
/// Tries per connection before giving up.
const ATTEMPTS: u32 = 3;

/// Which server's protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Earshot,
    Peerjs,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Earshot => "earshot",
            Protocol::Peerjs => "peerjs",
        }
    }

    /// The URL one client connects to: PeerJS takes the client's id in the
    /// query string.
    pub fn url(self, base: &str, id: &str) -> String {
        match self {
            Protocol::Earshot => base.to_string(),
            Protocol::Peerjs => format!("{base}?key=peerjs&id={id}&token=t{id}"),
        }
    }
}

/// The server address in a `ws://127.x.y.z:PORT/...` URL; anything that is
/// not IPv4 loopback is refused.
pub fn parse_url(url: &str) -> anyhow::Result<SocketAddrV4> {
    let rest = url
        .strip_prefix("ws://")
        .context("the URL must start with ws://")?;
    let authority = rest.split_once(['/', '?']).map_or(rest, |(a, _)| a);
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

/// The `type` of a server message, read without parsing the whole JSON
/// (both servers write `type` as a plain string).
pub fn msg_type(text: &str) -> Option<&str> {
    let rest = &text[text.find(r#""type":""#)? + 8..];
    Some(&rest[..rest.find('"')?])
}

/// Wall-clock nanoseconds: the one clock every worker process shares.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Opens a greeted socket, retrying a little; each try is bounded by `limit`.
pub async fn open(
    protocol: Protocol,
    url: &str,
    source: Ipv4Addr,
    limit: Duration,
) -> anyhow::Result<Ws> {
    let mut attempt = 1;
    loop {
        let error = match timeout(limit, open_once(protocol, url, source)).await {
            Ok(Ok(ws)) => return Ok(ws),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("not greeted within {limit:?}"),
        };
        if attempt >= ATTEMPTS {
            bail!("{error} ({attempt} attempts)");
        }
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
        attempt += 1;
    }
}

async fn open_once(protocol: Protocol, url: &str, source: Ipv4Addr) -> anyhow::Result<Ws> {
    let server = parse_url(url)?;
    let socket = TcpSocket::new_v4().context("socket")?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .with_context(|| format!("bind {source}"))?;
    let stream = socket
        .connect(SocketAddr::V4(server))
        .await
        .context("connect")?;
    stream.set_nodelay(true).context("nodelay")?;
    // Small client buffers: a worker holds thousands of sockets too.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config))
        .await
        .context("WebSocket upgrade")?;
    let greeting = match protocol {
        Protocol::Earshot => {
            ws.send(Message::text(HELLO)).await.context("send hello")?;
            "welcome"
        }
        Protocol::Peerjs => "OPEN",
    };
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match msg_type(text.as_str()) {
                Some(t) if t == greeting => return Ok(ws),
                other => bail!("expected {greeting}, got {other:?}"),
            },
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("waiting for the greeting"),
            None => bail!("closed before the greeting"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_accepted() {
        assert_eq!(
            parse_url("ws://127.0.0.1:8080/ws").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert!(parse_url("ws://127.3.2.1:1").is_ok());
        assert!(parse_url("ws://127.0.0.1:9/peerjs?key=peerjs&id=a").is_ok());
        assert!(parse_url("ws://10.0.0.1:8080/ws").is_err());
        assert!(parse_url("ws://example.org:80/ws").is_err());
        assert!(parse_url("wss://127.0.0.1:8080/ws").is_err());
        assert!(parse_url("ws://[::1]:8080/ws").is_err());
    }

    #[test]
    fn message_type_is_read_from_either_server() {
        assert_eq!(msg_type(r#"{"type":"matched","call":7}"#), Some("matched"));
        assert_eq!(msg_type(r#"{"type":"OPEN"}"#), Some("OPEN"));
        assert_eq!(msg_type(r#"{"call":1}"#), None);
        assert_eq!(msg_type(r#"{"type":"#), None);
    }

    #[test]
    fn peerjs_clients_name_themselves_in_the_url() {
        assert_eq!(
            Protocol::Peerjs.url("ws://127.0.0.1:9/peerjs", "a1"),
            "ws://127.0.0.1:9/peerjs?key=peerjs&id=a1&token=ta1"
        );
        assert_eq!(Protocol::Earshot.url("ws://h/ws", "a1"), "ws://h/ws");
    }
}
