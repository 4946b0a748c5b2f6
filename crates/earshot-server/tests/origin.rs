//! `/ws` takes a browser's upgrade only from the server's own origin or an
//! allowed one (`--allowed-origin`); clients without `Origin` are not
//! browsers and are taken as before. A refusal is a 403 before any upgrade.

use std::net::SocketAddr;
use std::time::Duration;

use earshot_server::origin::parse_allowed;
use earshot_server::proxy::{Header, TrustedProxies};
use earshot_server::{Running, Settings};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error, Message};

const WAIT: Duration = Duration::from_secs(5);

async fn server(tweak: impl FnOnce(&mut Settings)) -> Running {
    let mut settings = Settings::for_tests("127.0.0.1:0".parse().unwrap());
    tweak(&mut settings);
    earshot_server::start(settings).await.unwrap()
}

/// What came of one upgrade: the `welcome`'s `type`, or the refusal's status
/// and body.
#[derive(Debug, PartialEq)]
enum Outcome {
    Welcome,
    Refused(u16, String),
}

/// Upgrades `/ws` with `headers` (`Host` replaces the default one), sends
/// `hello` and reads the answer.
async fn upgrade(addr: SocketAddr, headers: &[(&str, &str)]) -> Outcome {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        if name.eq_ignore_ascii_case("host") {
            // `append` kept the URL's Host too: keep only ours.
            let ours = value.parse().unwrap();
            request.headers_mut().insert("host", ours);
        }
    }
    let mut ws = match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("an answer to the upgrade in time")
    {
        Ok((ws, _)) => ws,
        Err(Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            return Outcome::Refused(response.status().as_u16(), body);
        }
        Err(e) => panic!("upgrade failed: {e}"),
    };
    ws.send(Message::text(r#"{"type":"hello","version":1}"#))
        .await
        .unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("no socket error");
        if let Message::Text(text) = msg {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], "welcome", "{v}");
            return Outcome::Welcome;
        }
    }
}

fn refused() -> Outcome {
    Outcome::Refused(403, "origin not allowed\n".into())
}

/// `/metrics` over plain HTTP/1.0.
async fn metric(addr: SocketAddr, name: &str) -> u64 {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

#[tokio::test]
async fn a_foreign_origin_is_refused_with_403_and_no_welcome() {
    let s = server(|_| {}).await;
    let addr = s.http_addr;
    assert_eq!(
        upgrade(addr, &[("origin", "https://evil.example")]).await,
        refused()
    );
    assert_eq!(
        upgrade(addr, &[("origin", "http://evil.example")]).await,
        refused()
    );
    // Nothing was made for the refused clients: no connection, no key.
    assert_eq!(s.app.hub.stats().connections, 0);
    assert_eq!(metric(addr, "earshot_ws_refused_origin_total").await, 2);
}

#[tokio::test]
async fn the_servers_own_origin_is_welcome() {
    let s = server(|s| s.origins.public_hosts = vec!["chat.example.org".into()]).await;
    let addr = s.http_addr;
    let port = addr.port();
    let own = format!("http://127.0.0.1:{port}");
    assert_eq!(
        upgrade(addr, &[("origin", own.as_str())]).await,
        Outcome::Welcome
    );
    // Case and spelling do not matter.
    let shouted = format!("HTTP://127.0.0.1:{port}");
    assert_eq!(
        upgrade(addr, &[("origin", shouted.as_str())]).await,
        Outcome::Welcome
    );
    // Under a listed name (`--public-host`): the one in Host.
    let host = format!("Chat.Example.org:{port}");
    let origin = format!("http://chat.example.org:{port}");
    assert_eq!(
        upgrade(
            addr,
            &[("host", host.as_str()), ("origin", origin.as_str())]
        )
        .await,
        Outcome::Welcome
    );
    // Default ports are the same with or without their number.
    assert_eq!(
        upgrade(
            addr,
            &[
                ("host", "chat.example.org"),
                ("origin", "http://chat.example.org:80")
            ]
        )
        .await,
        Outcome::Welcome
    );
    assert_eq!(metric(addr, "earshot_ws_refused_origin_total").await, 0);
}

/// DNS rebinding: a stranger's page on `http://evil.example:PORT` whose name
/// then resolves to us sends `Host` and `Origin` that agree. Over plain HTTP
/// only addresses, `localhost` and `--public-host` names count as ours.
#[tokio::test]
async fn over_plain_http_only_addresses_localhost_and_listed_names_are_ours() {
    let s = server(|s| s.origins.public_hosts = vec!["chat.example.org".into()]).await;
    let addr = s.http_addr;
    let port = addr.port();
    let own = |host: &str| {
        let authority = format!("{host}:{port}");
        let origin = format!("http://{}:{port}", host.to_ascii_lowercase());
        (authority, origin)
    };
    for host in [
        "evil.example",
        "chat.example.org.evil.example",
        "127.0.0.1.nip.io",
    ] {
        let (authority, origin) = own(host);
        assert_eq!(
            upgrade(addr, &[("host", &authority), ("origin", &origin)]).await,
            refused(),
            "{host}"
        );
    }
    for host in [
        "localhost",
        "Earshot.localhost",
        "127.0.0.1",
        "[::1]",
        "CHAT.example.org",
    ] {
        let (authority, origin) = own(host);
        assert_eq!(
            upgrade(addr, &[("host", &authority), ("origin", &origin)]).await,
            Outcome::Welcome,
            "{host}"
        );
    }
    assert_eq!(metric(addr, "earshot_ws_refused_origin_total").await, 3);
    // Without the flag, the name is refused too.
    let s = server(|_| {}).await;
    let port = s.http_addr.port();
    let authority = format!("chat.example.org:{port}");
    let origin = format!("http://chat.example.org:{port}");
    assert_eq!(
        upgrade(s.http_addr, &[("host", &authority), ("origin", &origin)]).await,
        refused()
    );
}

#[tokio::test]
async fn the_port_and_scheme_must_match_our_own() {
    let s = server(|_| {}).await;
    let addr = s.http_addr;
    let port = addr.port();
    let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1).max(1));
    let no_port = "http://127.0.0.1".to_string();
    let https = format!("https://127.0.0.1:{port}");
    let other_host = format!("http://127.0.0.2:{port}");
    for origin in [&other_port, &no_port, &https, &other_host] {
        assert_eq!(
            upgrade(addr, &[("origin", origin.as_str())]).await,
            refused(),
            "{origin}"
        );
    }
    assert_eq!(metric(addr, "earshot_ws_refused_origin_total").await, 4);
}

#[tokio::test]
async fn null_and_malformed_origins_are_refused() {
    let s = server(|_| {}).await;
    let addr = s.http_addr;
    let own = format!("http://127.0.0.1:{}", addr.port());
    for origin in ["null", "127.0.0.1", "http://127.0.0.1/", "*"] {
        assert_eq!(
            upgrade(addr, &[("origin", origin)]).await,
            refused(),
            "{origin}"
        );
    }
    // Two Origin headers, even if one is ours.
    assert_eq!(
        upgrade(
            addr,
            &[("origin", own.as_str()), ("origin", "https://evil.example")]
        )
        .await,
        refused()
    );
    assert_eq!(metric(addr, "earshot_ws_refused_origin_total").await, 5);
}

#[tokio::test]
async fn clients_without_an_origin_are_welcome() {
    let s = server(|_| {}).await;
    assert_eq!(upgrade(s.http_addr, &[]).await, Outcome::Welcome);
    // Forwarding headers change nothing for them.
    assert_eq!(
        upgrade(s.http_addr, &[("x-forwarded-host", "evil.example")]).await,
        Outcome::Welcome
    );
}

#[tokio::test]
async fn allowed_origins_are_welcome() {
    let s = server(|s| {
        s.origins.allowed =
            parse_allowed(&["https://app.example".into(), "http://127.0.0.1:9".into()]).unwrap();
    })
    .await;
    let addr = s.http_addr;
    for origin in [
        "https://app.example",
        "https://APP.example:443",
        "http://127.0.0.1:9",
    ] {
        assert_eq!(
            upgrade(addr, &[("origin", origin)]).await,
            Outcome::Welcome,
            "{origin}"
        );
    }
    for origin in [
        "http://app.example",
        "https://app.example:8443",
        "https://evil.example",
    ] {
        assert_eq!(
            upgrade(addr, &[("origin", origin)]).await,
            refused(),
            "{origin}"
        );
    }
    // Our own origin still is.
    let own = format!("http://127.0.0.1:{}", addr.port());
    assert_eq!(
        upgrade(addr, &[("origin", own.as_str())]).await,
        Outcome::Welcome
    );
}

/// The test client connects from 127.0.0.1, here a trusted TLS-terminating
/// proxy for `https://chat.example.org`.
#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_host_and_proto_are_ours() {
    let s = server(|s| s.proxies = TrustedProxies::parse(&["127.0.0.1/32".into()]).unwrap()).await;
    let addr = s.http_addr;
    let proxied = [
        ("x-forwarded-for", "81.2.3.4"),
        ("x-forwarded-host", "chat.example.org"),
        ("x-forwarded-proto", "https"),
    ];
    let with = |origin: &'static str| {
        let mut h = proxied.to_vec();
        h.push(("origin", origin));
        h
    };
    assert_eq!(
        upgrade(addr, &with("https://chat.example.org")).await,
        Outcome::Welcome
    );
    assert_eq!(
        upgrade(addr, &with("https://chat.example.org:443")).await,
        Outcome::Welcome
    );
    for origin in [
        "http://chat.example.org",
        "https://chat.example.org:8443",
        "https://evil.example",
    ] {
        assert_eq!(upgrade(addr, &with(origin)).await, refused(), "{origin}");
    }
    // A proxy that passes Host on and forwards only the scheme (nginx with
    // `proxy_set_header Host $host` and `X-Forwarded-Proto $scheme`).
    assert_eq!(
        upgrade(
            addr,
            &[
                ("host", "chat.example.org"),
                ("x-forwarded-proto", "https"),
                ("origin", "https://chat.example.org"),
            ]
        )
        .await,
        Outcome::Welcome
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_writing_forwarded_its_element_counts() {
    let s = server(|s| {
        s.proxies = TrustedProxies::parse(&["127.0.0.1/32".into()])
            .unwrap()
            .reading(Header::Forwarded);
    })
    .await;
    let addr = s.http_addr;
    let forwarded = "for=6.6.6.6;host=evil.example;proto=https, \
                     for=81.2.3.4;host=chat.example.org;proto=https";
    assert_eq!(
        upgrade(
            addr,
            &[
                ("forwarded", forwarded),
                ("origin", "https://chat.example.org")
            ]
        )
        .await,
        Outcome::Welcome
    );
    // What the client wrote further left is not the proxy's word.
    assert_eq!(
        upgrade(
            addr,
            &[("forwarded", forwarded), ("origin", "https://evil.example")]
        )
        .await,
        refused()
    );
    // Only the configured header family is read.
    assert_eq!(
        upgrade(
            addr,
            &[
                ("x-forwarded-host", "chat.example.org"),
                ("x-forwarded-proto", "https"),
                ("origin", "https://chat.example.org"),
            ]
        )
        .await,
        refused()
    );
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
    // Trusts a range the test client is not in.
    let s = server(|s| s.proxies = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap()).await;
    let addr = s.http_addr;
    let forged = [
        ("x-forwarded-for", "81.2.3.4"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=81.2.3.4;host=evil.example;proto=https"),
    ];
    for (origin, expected) in [
        ("https://evil.example".to_string(), refused()),
        (
            format!("http://127.0.0.1:{}", addr.port()),
            Outcome::Welcome,
        ),
    ] {
        let mut headers = forged.to_vec();
        headers.push(("origin", &origin));
        assert_eq!(upgrade(addr, &headers).await, expected, "{origin}");
    }
}
