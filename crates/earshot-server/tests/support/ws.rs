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

/// Asks to join `room` (with a locked room's `verifier`): the answer.
pub async fn room_join(ws: &mut Ws, room: &str, verifier: Option<&str>) -> Value {
    let mut msg = json!({"type": "room_join", "room": room});
    if let Some(v) = verifier {
        msg["verifier"] = json!(v);
    }
    send(ws, msg).await;
    recv(ws).await
}

/// `a` and `b` are matched (either may be the joiner): the call id, and
/// whether `a` makes the offer.
pub async fn matched(a: &mut Ws, b: &mut Ws) -> (u64, bool) {
    let ma = recv_type(a, "matched").await;
    let mb = recv_type(b, "matched").await;
    assert_eq!(ma["call"], mb["call"]);
    assert_ne!(ma["polite"], mb["polite"]);
    (ma["call"].as_u64().unwrap(), ma["polite"] == false)
}

/// A reporter from `source` on `server` meets `target` (searching) and
/// reports it; the target hears an ordinary end. The target's next message.
pub async fn meet_and_report(target: &mut Ws, source: &str, server: &Server) -> Value {
    let mut reporter = client(source, server).await;
    search(&mut reporter).await;
    recv_type(&mut reporter, "matched").await;
    recv_type(target, "matched").await;
    send(&mut reporter, json!({"type": "report", "reason": "spam"})).await;
    recv_type(&mut reporter, "idle").await;
    let ended = recv_type(target, "call_ended").await;
    assert_eq!(ended["reason"], "partner_ended", "{ended}");
    recv(target).await
}

/// The client at 127.0.0.9 searches on `home`; reporters from three
/// networks (/24s) on `reporters` meet and report it, until `banned` (a
/// look in the store) holds. The target's connection.
pub async fn ban_by_three_networks(
    home: &Server,
    reporters: &Server,
    banned: impl FnMut() -> bool,
) -> Ws {
    let mut target = client("127.0.0.9", home).await;
    search(&mut target).await;
    for n in 2..=4 {
        let next = meet_and_report(&mut target, &format!("127.0.{n}.2"), reporters).await;
        if n < 4 {
            assert_eq!(next["type"], "searching", "{next}");
        }
    }
    eventually("the ban is in the store", banned);
    target
}

/// A new client from `source` on `server` searches and is refused as
/// banned: the client and the error.
pub async fn search_when_banned(source: &str, server: &Server) -> (Ws, Value) {
    let mut ws = client(source, server).await;
    send(&mut ws, json!({"type": "search"})).await;
    let mut banned = recv(&mut ws).await;
    if banned["type"] == "searching" {
        banned = recv(&mut ws).await;
    }
    assert_eq!(banned["code"], "banned", "{banned}");
    (ws, banned)
}
