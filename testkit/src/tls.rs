//! A TLS server on loopback in front of a plain TCP service, with a certificate from a test CA
//! made for it, so that a test can point a client at an `https://` URL and check that it
//! verifies the server and names it in the handshake (SNI).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// The server; it stops when dropped.
pub struct TlsFront {
    port: u16,
    ca_pem: String,
    server_names: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A certificate authority made for one test.
pub(crate) struct TestCa {
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl TestCa {
    pub(crate) fn new() -> anyhow::Result<TestCa> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "keycap test CA");
        let cert = params.self_signed(&key)?;
        Ok(TestCa { key, cert })
    }

    /// The CA's certificate, PEM: what a client must trust.
    pub(crate) fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `host`, and its key.
    pub(crate) fn issue(&self, host: &str) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![host.to_string()])?
            .signed_by(&key, &self.cert, &self.key)?;
        Ok((cert, key))
    }
}

impl TlsFront {
    /// Serves TLS with a certificate for `host` on the first address `host` resolves to (where
    /// a client that looks it up connects), and relays the plain bytes to `target`.
    pub async fn start(host: &str, target: SocketAddr) -> anyhow::Result<TlsFront> {
        let ca = TestCa::new()?;
        let (cert, key) = ca.issue(host)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .context("the test certificate")?;
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let address = tokio::net::lookup_host((host, 0))
            .await?
            .next()
            .with_context(|| format!("{host} resolves to no address"))?;
        let listener = TcpListener::bind(address).await?;
        let port = listener.local_addr()?.port();
        let server_names = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept_loop(
            listener,
            acceptor,
            target,
            Arc::clone(&server_names),
        ));
        Ok(TlsFront {
            port,
            ca_pem: ca.pem(),
            server_names,
            task,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The test CA's certificate, PEM: what a client must trust to reach this server.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server name each completed handshake asked for (`None`: no SNI), in order.
    pub fn server_names(&self) -> Vec<Option<String>> {
        self.server_names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    target: SocketAddr,
    server_names: Arc<Mutex<Vec<Option<String>>>>,
) {
    while let Ok((client, _)) = listener.accept().await {
        let (acceptor, server_names) = (acceptor.clone(), Arc::clone(&server_names));
        tokio::spawn(async move {
            // A client that does not trust the certificate ends the handshake here.
            let Ok(mut client) = acceptor.accept(client).await else {
                return;
            };
            let name = client.get_ref().1.server_name().map(str::to_string);
            server_names
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(name);
            if let Ok(mut server) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}
