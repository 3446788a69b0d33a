//! TLS for the nurse station: the server config from `[station.tls]` (rustls, ALPN h2 and http/1.1) and a
//! listener that runs each handshake in its own task (with a timeout) so one slow client cannot hold up the
//! others. Failed handshakes are logged with the peer address and counted; they never reach the router.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

use super::StationStats;
use super::config::StationTlsConfig;

/// How long a client has to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further connections wait in the kernel's accept queue.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// Why the station's TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StationTlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("nurse station TLS: {what} {path}: {detail}")]
    File {
        /// Which file.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the certificate/key pair.
    #[error("nurse station TLS: certificate and key do not make a server config: {0}")]
    Config(#[from] rustls::Error),
}

fn file_err(what: &'static str, path: &Path, detail: impl ToString) -> StationTlsError {
    StationTlsError::File {
        what,
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// Loads `[station.tls]` into a rustls server config.
pub fn server_config(cfg: &StationTlsConfig) -> Result<Arc<rustls::ServerConfig>, StationTlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| file_err("certificate", &cfg.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err("certificate", &cfg.cert, e))?;
    if chain.is_empty() {
        return Err(file_err(
            "certificate",
            &cfg.cert,
            "no CERTIFICATE in the file",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| file_err("key", &cfg.key, e))?;
    let mut sc = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(sc))
}

/// The peer address of a station connection (the router's `ConnectInfo`), for both plain and TLS listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>>
    for PeerAddr
{
    fn connect_info(s: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        Self(*s.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerAddr
{
    fn connect_info(s: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        *s.remote_addr()
    }
}

/// A listener yielding connections whose TLS handshake completed.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, PeerAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    /// Accepts on `listener` and hands out connections after their handshake with `config`.
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        stats: Arc<StationStats>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(error = %e, "nurse station accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx, stats) = (acceptor.clone(), tx.clone(), stats.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, PeerAddr(peer))).await;
                        }
                        Ok(Err(e)) => {
                            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                            warn!(peer = %peer, error = %e, "nurse station TLS handshake refused");
                        }
                        Err(_) => {
                            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                            warn!(peer = %peer, "nurse station TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(Self { rx, local, task })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = PeerAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task ended (only when the runtime shuts down): wait for the graceful shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(PeerAddr(self.local))
    }
}
