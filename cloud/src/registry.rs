//! Which edges may connect and which wards each may write. An edge is identified only by the URI SAN of its
//! verified client certificate (`urn:wardwatch:edge:<id>`), never by what it says about itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use wardwatch_proto::ids::{EdgeId, WardId};

use crate::config::EdgeRegistration;
use crate::error::CloudError;
use crate::pki;

/// One registered edge.
#[derive(Debug, Clone)]
pub struct RegisteredEdge {
    /// Its id.
    pub edge_id: EdgeId,
    /// The URI SAN its certificate must carry.
    pub identity_uri: String,
    /// Wards it may write.
    pub wards: HashSet<WardId>,
}

/// All registered edges, by certificate identity.
#[derive(Debug, Default)]
pub struct EdgeRegistry {
    /// Identity URI → edge.
    by_identity: HashMap<String, Arc<RegisteredEdge>>,
}

impl EdgeRegistry {
    /// Builds the registry from configuration.
    pub fn from_config(edges: &[EdgeRegistration]) -> Result<Self, pki::PkiError> {
        let mut by_identity = HashMap::new();
        for e in edges {
            let identity_uri = pki::edge_identity_uri(e.edge_id.as_str())?;
            by_identity.insert(
                identity_uri.clone(),
                Arc::new(RegisteredEdge {
                    edge_id: e.edge_id.clone(),
                    identity_uri,
                    wards: e.wards.iter().cloned().collect(),
                }),
            );
        }
        Ok(Self { by_identity })
    }

    /// Maps the peer's verified certificate chain to a registered edge.
    pub fn authenticate(
        &self,
        peer_certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<Arc<RegisteredEdge>, CloudError> {
        let leaf = peer_certs.and_then(|c| c.first()).ok_or_else(|| {
            CloudError::Unauthenticated("no client certificate was presented".into())
        })?;
        let sans = pki::uri_sans(leaf.as_ref()).map_err(|e| {
            CloudError::Unauthenticated(format!("client certificate unreadable: {e}"))
        })?;
        for san in &sans {
            if let Some(edge) = self.by_identity.get(san) {
                return Ok(edge.clone());
            }
        }
        Err(CloudError::PermissionDenied(format!(
            "certificate identity {} is not a registered edge",
            if sans.is_empty() {
                "(no URI SAN)".to_string()
            } else {
                sans.join(", ")
            }
        )))
    }
}
