//! HTTPS: browsers give the microphone only to secure contexts, so anything
//! but `localhost` needs TLS. Either a certificate and key from PEM files
//! (`--tls-cert`, `--tls-key`), or a self-signed certificate made in memory
//! at start (`--tls-self-signed`, for trying Earshot on a LAN), whose SHA-256
//! fingerprint is printed so people can check the browser's warning page.
//! Nothing is written to disk either way. rustls with the `ring` provider.
//! The embedded TURN server's `turns:` listener presents the same
//! certificate.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// Ready TLS acceptors and the leaf certificate they present.
#[derive(Clone)]
pub struct Tls {
    /// For HTTPS (ALPN `http/1.1`).
    pub acceptor: TlsAcceptor,
    /// For TURN over TLS: no ALPN, so a client that offers RFC 7443's
    /// `stun.turn`, or nothing, is served alike.
    pub turn_acceptor: TlsAcceptor,
    /// DER of the certificate served (the first of the chain).
    pub certificate: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({})", self.fingerprint())
    }
}

impl Tls {
    /// The certificate's SHA-256 fingerprint, as browsers show it.
    pub fn fingerprint(&self) -> String {
        Sha256::digest(&self.certificate)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Loads a PEM certificate chain and private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("cannot read --tls-cert {}", cert.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("bad PEM in --tls-cert {}", cert.display()))?;
        if chain.is_empty() {
            bail!("--tls-cert {} holds no certificate", cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
            format!("cannot read a private key from --tls-key {}", key.display())
        })?;
        Tls::new(chain, key)
    }

    /// A self-signed certificate for `localhost`, the given addresses and names.
    pub fn self_signed(ips: &[IpAddr], names: &[String]) -> anyhow::Result<Tls> {
        let mut sans = vec!["localhost".to_string()];
        sans.extend(
            ips.iter()
                .filter(|ip| !ip.is_unspecified())
                .map(IpAddr::to_string),
        );
        sans.extend(names.iter().cloned());
        let made = rcgen::generate_simple_self_signed(sans).context("cannot make a certificate")?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        Tls::new(vec![made.cert.der().clone()], key)
    }

    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> anyhow::Result<Tls> {
        let certificate = chain[0].to_vec();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let turn = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the certificate and key do not fit together")?;
        let mut https = turn.clone();
        // RFC 7443's TURN label too, for TURN over TLS on the HTTPS port.
        https.alpn_protocols = vec![b"http/1.1".to_vec(), b"stun.turn".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(https)),
            turn_acceptor: TlsAcceptor::from(Arc::new(turn)),
            certificate,
        })
    }
}
