//! `wss://`: TLS for the hub with rustls, as an axum listener.
//!
//! [`TlsListener`] accepts TCP connections on one task and runs each TLS
//! handshake on a task of its own, with a deadline
//! ([`TLS_HANDSHAKE_TIMEOUT_MS`]) and a cap on handshakes in flight
//! ([`TLS_HANDSHAKES_IN_FLIGHT_MAX`]), so a client that opens a socket and
//! stalls holds neither the accept loop nor other clients. Finished streams
//! are handed to axum in the order they complete.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::limits::{TLS_HANDSHAKE_TIMEOUT_MS, TLS_HANDSHAKES_IN_FLIGHT_MAX};

/// Streams whose handshake finished, waiting for axum to take them.
const READY_QUEUE_MAX: usize = 64;

/// A certificate chain and its private key, PEM-encoded.
#[derive(Clone)]
pub struct TlsConfig {
    /// The hub's certificate, then any intermediates.
    pub cert_chain_pem: Vec<u8>,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        write!(
            f,
            "TlsConfig({} bytes of certificates)",
            self.cert_chain_pem.len()
        )
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The PEM holds no usable certificate or key.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsConfig {
    /// Reads a certificate chain and a key from PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Ok(Self {
            cert_chain_pem: read(cert)?,
            key_pem: read(key)?,
        })
    }

    /// The rustls server configuration (TLS 1.2 and 1.3, ring provider).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&self.cert_chain_pem)
                .collect::<Result<_, _>>()
                .map_err(|error| TlsError::Pem(format!("certificate chain: {error}")))?;
        if chain.is_empty() {
            return Err(TlsError::Pem(
                "no certificate in the certificate file".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|error| TlsError::Pem(format!("private key: {error}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        Ok(Arc::new(config))
    }
}

/// A listener that yields TLS streams, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `config` on an already bound `listener`.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(READY_QUEUE_MAX);
        let acceptor = TlsAcceptor::from(config);
        let acceptor_task = tokio::spawn(accept_loop(listener, acceptor, sender));
        Ok(Self {
            ready,
            local,
            acceptor_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (the listener broke): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(TLS_HANDSHAKES_IN_FLIGHT_MAX));
    loop {
        let (tcp, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait, then go on.
                tracing::warn!(%error, "accepting a TCP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small frames must leave at once: Nagle plus delayed ACKs adds ~40 ms.
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(target: "omnisync::audit", %address, code = "limit-exceeded",
                reason = "too many TLS handshakes in flight", "connection refused");
            continue;
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(
                Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS),
                acceptor.accept(tcp),
            )
            .await;
            drop(permit);
            match handshake {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, address)).await;
                }
                Ok(Err(error)) => {
                    tracing::info!(%address, %error, "TLS handshake failed");
                }
                Err(_) => {
                    tracing::info!(%address, "TLS handshake timed out");
                }
            }
        });
    }
}
