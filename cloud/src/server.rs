//! Assembles the cloud: database, TLS, the sync listener and the API listener, run until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::{info, warn};
use wardwatch_proto::v1::edge_sync_server::EdgeSyncServer;

use crate::api::{self, ApiState, RemoteAddr};
use crate::config::CloudConfig;
use crate::registry::EdgeRegistry;
use crate::storage::{StorageError, Store};
use crate::sync::{SyncService, SyncServiceStats};
use crate::tls::{self, TlsError};

/// Why the cloud could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// TLS material is missing or invalid.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The edge registry is invalid.
    #[error("edge registry: {0}")]
    Registry(#[from] crate::pki::PkiError),
    /// The API clients' keys could not be loaded.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthSetupError),
    /// The model registry's release keys could not be loaded.
    #[error(transparent)]
    ModelRegistry(#[from] crate::model_registry::RegistrySetupError),
    /// The subscription delivery client could not be set up.
    #[error(transparent)]
    Subscriptions(#[from] crate::subscriptions::SubscriptionSetupError),
    /// A listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// A started cloud: listeners bound, database migrated.
#[derive(Debug)]
pub struct CloudServer {
    /// Storage shared by both services.
    store: Store,
    /// Sync service counters.
    sync_stats: Arc<SyncServiceStats>,
    /// Failed TLS handshakes on the sync listener (foreign CA, expired certificates, ...).
    sync_tls_failures: Arc<AtomicU64>,
    /// The bound sync listener.
    sync_listener: TcpListener,
    /// The bound API listener.
    api_listener: TcpListener,
    /// TLS for sync (client certificates required).
    sync_tls: Arc<rustls::ServerConfig>,
    /// TLS for the API.
    api_tls: Arc<rustls::ServerConfig>,
    /// The sync service.
    sync_service: SyncService,
    /// API state.
    api_state: Arc<ApiState>,
    /// The model registry (issue 5), if configured.
    model_registry: Option<Arc<crate::model_registry::ModelRegistry>>,
    /// Edges by certificate identity (also authenticates ModelDistribution calls).
    edge_registry: Arc<EdgeRegistry>,
}

impl CloudServer {
    /// Validates the configuration, loads TLS material, opens and migrates the database, binds both listeners.
    pub async fn start(config: CloudConfig) -> Result<Self, StartError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StartError::Storage(StorageError::Database(sqlx::Error::Io(e))))?;
        let sync_tls =
            tls::sync_server_config(&config.tls.ca_cert, &config.tls.cert, &config.tls.key)?;
        let api_tls = tls::api_server_config(&config.tls.cert, &config.tls.key)?;
        let registry = Arc::new(EdgeRegistry::from_config(&config.edges)?);
        let model_registry = match &config.model_registry {
            Some(m) => Some(Arc::new(crate::model_registry::ModelRegistry::load(m)?)),
            None => None,
        };
        let clients = crate::auth::ClientRegistry::load(&config)?;
        let subscriptions = crate::subscriptions::Subscriptions::new(
            config.subscriptions.clone(),
            &config.tls.ca_cert,
        )?;
        let store = Store::connect(&config.database_url()).await?;
        let grants = crate::auth::SmartService::stored_grants(&store).await?;
        let sync_listener = TcpListener::bind(config.sync.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.sync.listen,
                source,
            })?;
        let api_listener = TcpListener::bind(config.api.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.api.listen,
                source,
            })?;
        let api_addr = api_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.api.listen,
                source,
            })?;
        let base_url = config.api.public_base_url.clone().unwrap_or_else(|| {
            // Loopback: name it "localhost", the name the development certificate is issued for.
            let host = if api_addr.ip().is_loopback() {
                "localhost".to_string()
            } else {
                api_addr.ip().to_string()
            };
            format!("https://{host}:{}{}", api_addr.port(), config.api.base_path)
        });
        let sync_stats = Arc::new(SyncServiceStats::default());
        let sync_service = SyncService::new(
            store.clone(),
            registry.clone(),
            config.sync.max_batch_events,
            config.sync.pipeline_depth,
            sync_stats.clone(),
        );
        let auth = crate::auth::SmartService::new(
            clients,
            grants,
            format!("{base_url}{}", crate::auth::TOKEN_PATH),
            config.api.access_token_ttl_secs,
            config.api.client_id_system.clone(),
        );
        if config.api.dev_static_tokens {
            warn!(
                "[api] dev_static_tokens is on: static development bearer tokens are accepted and never expire"
            );
        }
        let api_state = Arc::new(ApiState {
            store: store.clone(),
            config: config.api.clone(),
            base_url,
            auth,
            subscriptions,
        });
        info!(backend = store.backend(), sync = ?sync_listener.local_addr().ok(), api = %api_addr, "cloud started");
        Ok(Self {
            store,
            sync_stats,
            sync_tls_failures: Arc::new(AtomicU64::new(0)),
            sync_listener,
            api_listener,
            sync_tls,
            api_tls,
            sync_service,
            api_state,
            model_registry,
            edge_registry: registry,
        })
    }

    /// Where edges connect.
    pub fn sync_addr(&self) -> std::io::Result<SocketAddr> {
        self.sync_listener.local_addr()
    }

    /// Where the FHIR API listens.
    pub fn api_addr(&self) -> std::io::Result<SocketAddr> {
        self.api_listener.local_addr()
    }

    /// The FHIR base URL clients use.
    pub fn fhir_base_url(&self) -> &str {
        &self.api_state.base_url
    }

    /// The SMART token endpoint URL (`<FHIR base>/auth/token`), also the `aud` of client assertions.
    pub fn token_endpoint(&self) -> &str {
        self.api_state.auth.token_endpoint()
    }

    /// The storage (for tests and operators).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Sync service counters.
    pub fn sync_stats(&self) -> Arc<SyncServiceStats> {
        self.sync_stats.clone()
    }

    /// Failed TLS handshakes on the sync listener.
    pub fn sync_tls_failures(&self) -> Arc<AtomicU64> {
        self.sync_tls_failures.clone()
    }

    /// The model registry (its counters), if configured.
    pub fn model_registry(&self) -> Option<Arc<crate::model_registry::ModelRegistry>> {
        self.model_registry.clone()
    }

    /// Serves both listeners until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let sync_incoming = tls::incoming(
            self.sync_listener,
            self.sync_tls,
            "sync",
            self.sync_tls_failures.clone(),
        );
        let mut sync_stop = stop_rx.clone();
        let grpc = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
            .add_service(
                EdgeSyncServer::new(self.sync_service)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(16 << 20),
            )
            .add_service(
                wardwatch_proto::v1::model_distribution_server::ModelDistributionServer::new(
                    crate::model_registry::service::ModelDistributionService::new(
                        self.store.clone(),
                        self.edge_registry.clone(),
                        self.model_registry.clone(),
                    ),
                ),
            )
            .serve_with_incoming_shutdown(sync_incoming, async move {
                let _ = sync_stop.wait_for(|s| *s).await;
            });
        let sync_task = tokio::spawn(async move {
            if let Err(e) = grpc.await {
                warn!(error = %e, "sync server ended with an error");
            }
        });

        let subscription_task = tokio::spawn(crate::subscriptions::worker::run(
            self.api_state.clone(),
            stop_rx.clone(),
        ));
        let api_failures = Arc::new(AtomicU64::new(0));
        let mut api_incoming = tls::incoming(self.api_listener, self.api_tls, "api", api_failures);
        // ETag/If-None-Match on reads, then gzip when the client accepts it (outermost, so tags are of the
        // uncompressed resource; they are weak tags, valid for either encoding).
        let router = api::router(self.api_state.clone())
            .merge(crate::model_registry::api::routes(
                crate::model_registry::api::RegistryApi {
                    api: self.api_state.clone(),
                    registry: self.model_registry.clone(),
                },
            ))
            .layer(axum::middleware::from_fn(crate::http_cache::etag_reads))
            .layer(tower_http::compression::CompressionLayer::new().gzip(true));
        let mut api_stop = stop_rx.clone();
        let api_task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let tls = tokio::select! {
                    next = api_incoming.next() => match next { Some(Ok(t)) => t, Some(Err(_)) => continue, None => break },
                    _ = api_stop.wait_for(|s| *s) => break,
                };
                let peer = tls.get_ref().0.peer_addr().ok();
                let router = router.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |mut req: hyper::Request<hyper::body::Incoming>| {
                            if let Some(p) = peer {
                                req.extensions_mut().insert(RemoteAddr(p));
                            }
                            router.clone().oneshot(req.map(axum::body::Body::new))
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
            conns.shutdown().await;
        });

        shutdown.await;
        info!("cloud shutting down");
        let _ = stop_tx.send(true);
        let _ = sync_task.await;
        let _ = api_task.await;
        let _ = subscription_task.await;
        self.store.close().await;
    }
}
