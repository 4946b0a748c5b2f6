//! HTTPS: a self-signed certificate made at start, or PEM files; WebSocket
//! signalling over TLS; a silent TLS connection is cut at the head deadline;
//! the embedded TURN server over TLS with the same certificate.

mod support;

use std::sync::Arc;
use std::time::Duration;

use earshot_server::config::{TlsSetup, TurnTlsListen};
use earshot_server::{Running, Settings};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message;

async fn server(tls: TlsSetup) -> Running {
    let mut settings = Settings::for_tests("127.0.0.1:0".parse().unwrap());
    settings.tls = tls;
    settings.header_timeout = Duration::from_millis(500);
    earshot_server::start(settings).await.unwrap()
}

/// A TLS client that trusts exactly the certificate the server presents.
async fn connect(s: &Running, name: &str) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    let cert = CertificateDer::from(s.tls.as_ref().unwrap().certificate.clone());
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(s.http_addr).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

async fn healthz(s: &Running, name: &str) -> String {
    let mut tls = connect(s, name).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out).await;
    out
}

#[tokio::test]
async fn self_signed_https_serves_pages_and_signalling() {
    let s = server(TlsSetup::SelfSigned {
        names: vec!["earshot.lan".into()],
    })
    .await;
    assert!(s.url().starts_with("https://127.0.0.1:"));
    let fingerprint = s.tls.as_ref().unwrap().fingerprint();
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "{fingerprint}");
    for name in ["localhost", "127.0.0.1", "earshot.lan"] {
        let reply = healthz(&s, name).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{name}: {reply}");
        assert!(reply.ends_with("ok\n"));
    }
    assert!(
        connect(&s, "elsewhere.example").await.is_err(),
        "a name not in the certificate"
    );

    let tls = connect(&s, "localhost").await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .unwrap();
    ws.send(Message::text(r#"{"type":"hello","version":1}"#))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert!(
        reply.to_text().unwrap().contains(r#""type":"welcome""#),
        "{reply:?}"
    );
}

#[tokio::test]
async fn pem_files_are_read_once_at_start() {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("earshot-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let s = server(TlsSetup::Files {
        cert: cert.clone(),
        key: key.clone(),
    })
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        s.tls.as_ref().unwrap().certificate,
        made.cert.der().to_vec()
    );
    assert!(healthz(&s, "localhost").await.starts_with("HTTP/1.1 200"));

    let mut settings = Settings::for_tests("127.0.0.1:0".parse().unwrap());
    settings.tls = TlsSetup::Files {
        cert: dir.join("gone.pem"),
        key,
    };
    let err = earshot_server::start(settings)
        .await
        .err()
        .expect("a missing file is refused");
    assert!(format!("{err:#}").contains("--tls-cert"), "{err:#}");
}

#[tokio::test]
async fn a_silent_tls_connection_is_cut_at_the_deadline() {
    let s = server(TlsSetup::SelfSigned { names: vec![] }).await;
    let mut tcp = TcpStream::connect(s.http_addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}

/// Over HTTPS our own origin is `https://`: a page served over TLS opens
/// `/ws` from it, and the same host and port over `http://` is not us.
#[tokio::test]
async fn over_https_our_own_origin_is_https() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let s = server(TlsSetup::SelfSigned { names: vec![] }).await;
    let port = s.http_addr.port();
    let upgrade = |origin: String| {
        let s = &s;
        async move {
            let tls = connect(s, "localhost").await.unwrap();
            let mut request = format!("wss://localhost:{port}/ws")
                .into_client_request()
                .unwrap();
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
            match tokio_tungstenite::client_async(request, tls).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(upgrade(format!("https://localhost:{port}")).await, 101);
    assert_eq!(upgrade(format!("https://LOCALHOST:{port}")).await, 101);
    assert_eq!(upgrade(format!("http://localhost:{port}")).await, 403);
    assert_eq!(upgrade("https://localhost".into()).await, 403);
}

/// With a certificate, the embedded TURN server also listens for TLS and
/// presents that certificate: the welcome offers `turns:` last in the TURN
/// entry, on the host the client used, with the same credentials, and a
/// client that checks the certificate for that name allocates with them.
#[tokio::test]
async fn turn_over_tls_is_offered_last_and_allocates_with_the_same_credentials() {
    let listen = TurnTlsListen::Own("127.0.0.1:0".parse().unwrap());
    turns_is_offered_and_allocates(listen)
        .await
        .shutdown()
        .await;
}

/// The same on the HTTPS port: a TLS connection that opens with a STUN
/// message goes to TURN, one that opens with HTTP is served as before.
#[tokio::test]
async fn turn_over_tls_shares_the_https_port() {
    let s = turns_is_offered_and_allocates(TurnTlsListen::Https).await;
    assert_eq!(s.turn_tls_addr, Some(s.http_addr));
    assert!(healthz(&s, "localhost").await.starts_with("HTTP/1.1 200"));
    s.shutdown().await;
}

/// A server with TURN over TLS at `listen`: the welcome offers it, and its
/// credentials allocate through it. The server, still running.
async fn turns_is_offered_and_allocates(listen: TurnTlsListen) -> Running {
    use earshot_core::stun::codec::{Message as Stun, attr};
    use earshot_server::config::{EmbeddedTurn, TurnSetup};
    use support::turn_client;

    let mut settings = Settings::for_tests("127.0.0.1:0".parse().unwrap());
    settings.tls = TlsSetup::SelfSigned { names: vec![] };
    settings.turn = TurnSetup {
        embedded: Some(EmbeddedTurn {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_listen: Some(listen),
            public_ip: None,
            relay_ports: 50_000..=50_100,
            limits: Default::default(),
        }),
        urls: Vec::new(),
        secret: b"a-test-secret-of-some-length".to_vec(),
        unavailable: None,
    };
    let s = earshot_server::start(settings).await.unwrap();
    let (turn, tls) = (s.turn_addr.unwrap(), s.turn_tls_addr.unwrap());
    assert_ne!(turn.port(), tls.port());
    assert_eq!(tls == s.http_addr, listen == TurnTlsListen::Https);

    let stream = connect(&s, "localhost").await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
        .await
        .unwrap();
    ws.send(Message::text(r#"{"type":"hello","version":1}"#))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    let welcome: serde_json::Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    let servers = welcome["ice_servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{servers:?}");
    assert_eq!(
        servers[1]["urls"],
        serde_json::json!([
            format!("turn:localhost:{}?transport=udp", turn.port()),
            format!("turn:localhost:{}?transport=tcp", turn.port()),
            format!("turns:localhost:{}?transport=tcp", tls.port()),
        ])
    );
    let username = servers[1]["username"].as_str().unwrap().to_string();
    let password = servers[1]["credential"].as_str().unwrap().to_string();

    let certificate = s.tls.as_ref().unwrap().certificate.clone();
    let conn = turn_client::Conn::open_tls(tls, "localhost", &certificate).await;
    let mut client = turn_client::Client::on(conn, username, password);
    let answer = client.allocate().await;
    assert_eq!(turn_client::code(&answer), None);
    let relayed = Stun::decode(&answer)
        .unwrap()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert!((50_000..=50_100).contains(&relayed.port()));
    // Not a certificate for another name.
    let other = TcpStream::connect(tls).await.unwrap();
    assert!(
        turn_client::tls_connect(other, "elsewhere.example", &certificate)
            .await
            .is_err()
    );
    // The signalling socket still works beside it.
    ws.send(Message::text(r#"{"type":"refresh_ice"}"#))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert!(
        reply.to_text().unwrap().contains("ice_servers"),
        "{reply:?}"
    );
    s
}

/// On the HTTPS port, TURN connections count against TURN's per-client cap
/// once handed over: past it, a TURN client is closed, and pages are still
/// served to the same address.
#[tokio::test]
async fn turn_on_the_https_port_keeps_the_per_client_cap() {
    use earshot_core::stun::codec::{Class, Encoder, method};
    use earshot_server::config::{EmbeddedTurn, TurnSetup};
    use support::turn_client;

    let mut settings = Settings::for_tests("127.0.0.1:0".parse().unwrap());
    settings.tls = TlsSetup::SelfSigned { names: vec![] };
    let limits = earshot_server::turn::TurnLimits {
        tcp_per_client: 2,
        ..Default::default()
    };
    settings.turn = TurnSetup {
        embedded: Some(EmbeddedTurn {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_listen: Some(TurnTlsListen::Https),
            public_ip: None,
            relay_ports: 50_000..=50_100,
            limits,
        }),
        urls: Vec::new(),
        secret: b"a-test-secret-of-some-length".to_vec(),
        unavailable: None,
    };
    let s = earshot_server::start(settings).await.unwrap();
    let certificate = s.tls.as_ref().unwrap().certificate.clone();
    let binding = || {
        let mut e = Encoder::new(method::BINDING, Class::Request, [7; 12]);
        e.fingerprint();
        e.finish()
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = turn_client::Conn::open_tls(s.http_addr, "localhost", &certificate).await;
        conn.send(&binding()).await;
        assert!(
            conn.recv(Duration::from_secs(5)).await.is_some(),
            "no answer"
        );
        held.push(conn);
    }
    let stream = TcpStream::connect(s.http_addr).await.unwrap();
    let mut third = turn_client::tls_connect(stream, "localhost", &certificate)
        .await
        .unwrap();
    third.write_all(&binding()).await.unwrap();
    third.flush().await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a TURN connection over the cap was served: {read:?}"
    );
    assert!(healthz(&s, "localhost").await.starts_with("HTTP/1.1 200"));
    let refused = s
        .app
        .turn_metrics
        .as_ref()
        .unwrap()
        .tcp_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(refused >= 1, "{refused}");
    drop(held);
    s.shutdown().await;
}
