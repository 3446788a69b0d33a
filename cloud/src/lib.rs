//! Wardwatch cloud.
//!
//! Receives edges over mutual-TLS gRPC ([`sync`]), stores every event exactly once ([`storage`]), and serves
//! FHIR R4 to EHRs over TLS ([`api`]) to clients authenticated with SMART Backend Services, with an audit trail
//! queryable as AuditEvent ([`auth`]). [`CloudServer::start`] binds both
//! listeners from a validated [`config::CloudConfig`]; [`CloudServer::run`] serves until a shutdown future
//! resolves. The `wardwatch-cloud` binary only parses arguments and calls these.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod http_cache;
pub mod lastn;
pub mod model_registry;
pub mod pki;
pub mod registry;
pub mod resources;
pub mod server;
pub mod storage;
pub mod subscriptions;
pub mod sync;
pub mod tls;

pub use config::CloudConfig;
pub use server::CloudServer;
