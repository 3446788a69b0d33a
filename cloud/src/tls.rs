//! TLS for both cloud listeners. Sync requires a client certificate chaining to the hospital CA (mutual TLS); the
//! API uses server TLS plus bearer tokens. Handshake failures are logged with the peer and the reason and
//! counted; they never reach the services.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use crate::pki;

/// TLS set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificates or keys could not be loaded.
    #[error("TLS material: {0}")]
    Material(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Server config for the sync listener: client certificates are required and verified against `ca`.
pub fn sync_server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in pki::load_certs(ca).map_err(|e| TlsError::Material(e.to_string()))? {
        roots
            .add(c)
            .map_err(|e| TlsError::Material(format!("CA {}: {e}", ca.display())))?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            pki::load_certs(cert).map_err(|e| TlsError::Material(e.to_string()))?,
            pki::load_private_key(key).map_err(|e| TlsError::Material(e.to_string()))?,
        )
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Server config for the API listener (no client certificates; clients authenticate with bearer tokens).
pub fn api_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            pki::load_certs(cert).map_err(|e| TlsError::Material(e.to_string()))?,
            pki::load_private_key(key).map_err(|e| TlsError::Material(e.to_string()))?,
        )
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A stream of completed TLS connections from `listener`. Each handshake runs in its own task with a timeout;
/// failures (foreign CA, expired or missing client certificate, plaintext) are logged and counted in `failures`.
/// The accept task ends when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    what: &'static str,
    failures: Arc<AtomicU64>,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, peer): (TcpStream, SocketAddr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        debug!(listener = what, %peer, "TLS handshake complete");
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        warn!(listener = what, %peer, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        warn!(listener = what, %peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
