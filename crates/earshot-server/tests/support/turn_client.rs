//! A small TURN client built on `earshot_core::stun::codec`, over UDP, TCP
//! or TLS, from any address of this namespace: for the TURN tests and the
//! hostile-client suite.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use earshot_core::stun::codec::{Class, Encoder, Message, attr, method};
use earshot_core::turn::codec::{Frame, stream_frame};
use earshot_core::turn::long_term_key;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// How long to wait for an answer that should come.
pub const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// The client's transport to the server: datagrams, or frames on a stream.
pub enum Conn {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream, Vec<u8>),
    Tls(Box<TlsStream<TcpStream>>, Vec<u8>),
}

/// A TLS client that trusts exactly `certificate` (DER), for `name`.
pub async fn tls_connect(
    tcp: TcpStream,
    name: &str,
    certificate: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(certificate.to_vec()))
        .map_err(std::io::Error::other)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(name.to_string()).map_err(std::io::Error::other)?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

impl Conn {
    pub async fn open(tcp: bool, server: SocketAddr) -> Conn {
        let local = match server.ip() {
            IpAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        };
        Conn::open_from(tcp, server, local).await
    }

    /// A transport from `local` (an address of this namespace).
    pub async fn open_from(tcp: bool, server: SocketAddr, local: IpAddr) -> Conn {
        if tcp {
            let socket = match local {
                IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }
            .unwrap();
            socket.bind(SocketAddr::new(local, 0)).unwrap();
            Conn::Tcp(socket.connect(server).await.unwrap(), Vec::new())
        } else {
            let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await.unwrap();
            Conn::Udp(socket, server)
        }
    }

    /// TURN over TLS to `server`, checking its certificate for `name`.
    pub async fn open_tls(server: SocketAddr, name: &str, certificate: &[u8]) -> Conn {
        let tcp = TcpStream::connect(server).await.unwrap();
        let tls = tls_connect(tcp, name, certificate).await.unwrap();
        Conn::Tls(Box::new(tls), Vec::new())
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        match self {
            Conn::Udp(socket, server) => {
                socket.send_to(bytes, *server).await.unwrap();
            }
            Conn::Tcp(stream, _) => stream.write_all(bytes).await.unwrap(),
            Conn::Tls(stream, _) => {
                stream.write_all(bytes).await.unwrap();
                stream.flush().await.unwrap();
            }
        }
    }

    /// The next datagram or frame, if one comes within `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(wait, async {
            match self {
                Conn::Udp(socket, server) => {
                    let mut buf = vec![0; 65_536];
                    let (n, from) = socket.recv_from(&mut buf).await.unwrap();
                    assert_eq!(from, *server);
                    buf.truncate(n);
                    buf
                }
                Conn::Tcp(stream, buf) => next_frame(stream, buf).await,
                Conn::Tls(stream, buf) => next_frame(stream, buf).await,
            }
        })
        .await
        .ok()
    }
}

/// The next frame of a stream, read into `buf` as far as needed.
async fn next_frame(stream: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> Vec<u8> {
    loop {
        if let Frame::Len(n) = stream_frame(buf)
            && buf.len() >= n
        {
            return buf.drain(..n).collect();
        }
        assert_ne!(
            stream_frame(buf),
            Frame::Invalid,
            "the server broke the framing"
        );
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A TURN client: long-term credentials, one transaction at a time, and
/// whatever arrives in between kept for later.
pub struct Client {
    pub conn: Conn,
    /// Learnt from the first 401.
    realm: String,
    username: String,
    password: String,
    nonce: Option<String>,
    next_txid: u8,
    unsolicited: VecDeque<Vec<u8>>,
}

impl Client {
    pub async fn new(tcp: bool, server: SocketAddr, username: String, password: String) -> Client {
        Client::on(Conn::open(tcp, server).await, username, password)
    }

    /// A client over `conn`.
    pub fn on(conn: Conn, username: String, password: String) -> Client {
        Client {
            conn,
            realm: String::new(),
            username,
            password,
            nonce: None,
            next_txid: 0,
            unsolicited: VecDeque::new(),
        }
    }

    fn key(&self) -> [u8; 16] {
        long_term_key(&self.username, &self.realm, &self.password)
    }

    /// Sends a request (signed once a nonce is known) and returns the
    /// answer with its transaction id, checking its integrity if signed.
    pub async fn request(&mut self, method: u16, build: impl FnOnce(&mut Encoder)) -> Vec<u8> {
        self.next_txid += 1;
        let txid = [self.next_txid; 12];
        let mut e = Encoder::new(method, Class::Request, txid);
        build(&mut e);
        if let Some(nonce) = &self.nonce {
            e.add(attr::USERNAME, self.username.as_bytes())
                .add(attr::REALM, self.realm.as_bytes())
                .add(attr::NONCE, nonce.as_bytes())
                .integrity(&self.key());
        }
        e.fingerprint();
        self.conn.send(&e.finish()).await;
        loop {
            let bytes = self
                .conn
                .recv(ANSWER_WAIT)
                .await
                .expect("no answer to a request");
            match Message::decode(&bytes) {
                Ok(m) if m.transaction_id == txid => {
                    assert!(m.fingerprint, "answers carry FINGERPRINT");
                    assert_eq!(m.method, method);
                    if m.has_integrity() {
                        assert!(
                            m.check_integrity(&self.key()),
                            "bad MESSAGE-INTEGRITY in an answer"
                        );
                    }
                    return bytes;
                }
                _ => self.unsolicited.push_back(bytes),
            }
        }
    }

    /// Allocate as a real client does: unsigned first, then signed with the
    /// realm and nonce of the 401. Returns the answer to the signed one.
    pub async fn allocate(&mut self) -> Vec<u8> {
        let transport = |e: &mut Encoder| {
            e.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        };
        let challenge = self.request(method::ALLOCATE, transport).await;
        let m = Message::decode(&challenge).unwrap();
        assert_eq!(m.class, Class::Error);
        assert_eq!(m.error_code(), Ok(Some(401)));
        self.realm = m
            .text(attr::REALM)
            .unwrap()
            .expect("a 401 carries a REALM")
            .to_owned();
        self.nonce = Some(
            m.text(attr::NONCE)
                .unwrap()
                .expect("a 401 carries a NONCE")
                .to_owned(),
        );
        self.request(method::ALLOCATE, transport).await
    }

    /// The next message that is not an answer.
    pub async fn next(&mut self, wait: Duration) -> Option<Vec<u8>> {
        match self.unsolicited.pop_front() {
            Some(bytes) => Some(bytes),
            None => self.conn.recv(wait).await,
        }
    }
}

/// The error code of an answer, `None` for a success.
pub fn code(answer: &[u8]) -> Option<u16> {
    Message::decode(answer).unwrap().error_code().unwrap()
}
