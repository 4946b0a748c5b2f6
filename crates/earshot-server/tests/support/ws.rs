//! A WebSocket client of the signalling protocol for the tests that drive
//! real `earshot` processes: connecting from a chosen loopback address,
//! sending and receiving JSON (close frames as `{"type": "close"}`), and
//! bounded waits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, client_async};

use super::server::Server;

pub type Ws = WebSocketStream<TcpStream>;

/// How long any one expected message may take: generous, since this only
/// bounds a failing test (node death is noticed within about 4 s).
pub const WAIT: Duration = Duration::from_secs(15);

pub fn addr(server: &Server) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.port()))
}

pub async fn ws_from(source: &str, server: &Server) -> Ws {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(addr(server)).await.unwrap();
    let url = format!("ws://{}/ws", addr(server));
    let (ws, _) = tokio::time::timeout(WAIT, client_async(url, tcp))
        .await
        .expect("connected in time")
        .unwrap();
    ws
}

pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next message: JSON text, or a close frame as
/// `{"type": "close", "code": N, "reason": "..."}`.
pub async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(frame) => {
                let (code, reason) = frame.map_or((0, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                return json!({"type": "close", "code": code, "reason": reason});
            }
            _ => continue,
        }
    }
}

pub async fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    let v = recv(ws).await;
    assert_eq!(v["type"], kind, "{v}");
    v
}

/// A greeted client from `source` on `server`.
pub async fn client(source: &str, server: &Server) -> Ws {
    let mut ws = ws_from(source, server).await;
    send(&mut ws, json!({"type": "hello", "version": 1})).await;
    recv_type(&mut ws, "welcome").await;
    ws
}

/// A greeted client, once `server` serves again: until then it closes new
/// connections with 1012 (bounded by `WAIT`).
pub async fn client_when_ready(source: &str, server: &Server) -> Ws {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut ws = ws_from(source, server).await;
        send(&mut ws, json!({"type": "hello", "version": 1})).await;
        if recv(&mut ws).await["type"] == "welcome" {
            return ws;
        }
        assert!(Instant::now() < deadline, "the node never served again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn search(ws: &mut Ws) {
    send(ws, json!({"type": "search"})).await;
    recv_type(ws, "searching").await;
}

/// Waits (bounded) until `done` holds, polling.
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
