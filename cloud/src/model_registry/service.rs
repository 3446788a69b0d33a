//! `wardwatch.v1.ModelDistribution` on the mutual-TLS sync listener: edges list and fetch the model versions
//! assigned to their wards. The edge is identified by its verified client certificate (`EdgeRegistry`), exactly
//! as for EdgeSync, on every call; it sees only assignments of wards it is registered for, and fetching a version
//! not assigned to one of them answers NOT_FOUND (the same as a version that does not exist).

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use wardwatch_proto::v1::model_chunk::Part;
use wardwatch_proto::v1::model_distribution_server::ModelDistribution;
use wardwatch_proto::v1::{
    AssignedModel, FetchModelRequest, ListAssignedRequest, ListAssignedResponse, ModelChunk,
    ModelHeader,
};

use super::{ModelRegistry, ModelRegistryStats};
use crate::error::CloudError;
use crate::registry::{EdgeRegistry, RegisteredEdge};
use crate::storage::Store;

/// Model bytes per DATA chunk.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The service.
#[derive(Debug, Clone)]
pub struct ModelDistributionService {
    store: Store,
    edges: Arc<EdgeRegistry>,
    registry: Option<Arc<ModelRegistry>>,
}

impl ModelDistributionService {
    /// A service over `store`, authenticating edges with `edges`. Without a registry every edge is told that
    /// nothing is assigned.
    pub fn new(
        store: Store,
        edges: Arc<EdgeRegistry>,
        registry: Option<Arc<ModelRegistry>>,
    ) -> ModelDistributionService {
        ModelDistributionService {
            store,
            edges,
            registry,
        }
    }

    fn refused(&self, e: CloudError, what: &str, peer: Option<std::net::SocketAddr>) -> Status {
        if let Some(r) = &self.registry {
            ModelRegistryStats::bump(&r.stats.edge_calls_refused);
        }
        warn!(?peer, error = %e, what, "model distribution call refused");
        Status::from(e)
    }

    fn authenticate<T>(&self, req: &Request<T>, what: &str) -> Result<Arc<RegisteredEdge>, Status> {
        let certs = req.peer_certs();
        self.edges
            .authenticate(certs.as_deref().map(Vec::as_slice))
            .map_err(|e| self.refused(e, what, req.remote_addr()))
    }

    fn edge_wards(edge: &RegisteredEdge) -> Vec<String> {
        let mut w: Vec<String> = edge.wards.iter().map(|w| w.as_str().to_string()).collect();
        w.sort();
        w
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<ModelChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ModelDistribution for ModelDistributionService {
    async fn list_assigned(
        &self,
        req: Request<ListAssignedRequest>,
    ) -> Result<Response<ListAssignedResponse>, Status> {
        let edge = self.authenticate(&req, "ListAssigned")?;
        let peer = req.remote_addr();
        let own = Self::edge_wards(&edge);
        let asked = req.into_inner().wards;
        if let Some(foreign) = asked.iter().find(|w| !own.contains(w)) {
            return Err(self.refused(
                CloudError::PermissionDenied(format!(
                    "edge {} is not registered for ward {foreign:?}",
                    edge.edge_id
                )),
                "ListAssigned",
                peer,
            ));
        }
        if self.registry.is_none() {
            return Ok(Response::new(ListAssignedResponse { models: Vec::new() }));
        }
        let wards = if asked.is_empty() { own } else { asked };
        let rows = self
            .store
            .model_assignments(Some(&wards))
            .await
            .map_err(|e| Status::from(CloudError::Unavailable(format!("storage: {e}"))))?;
        Ok(Response::new(ListAssignedResponse {
            models: rows
                .into_iter()
                .map(|r| AssignedModel {
                    ward: r.ward,
                    name: r.name,
                    version: r.version,
                    sha256: r.sha256,
                    size_bytes: u64::try_from(r.size_bytes).unwrap_or(0),
                })
                .collect(),
        }))
    }

    type FetchModelStream = ChunkStream;

    async fn fetch_model(
        &self,
        req: Request<FetchModelRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let edge = self.authenticate(&req, "FetchModel")?;
        let peer = req.remote_addr();
        let FetchModelRequest { name, version } = req.into_inner();
        let not_assigned = || {
            CloudError::NotFound(format!(
                "model {name} {version} is not assigned to any ward of edge {}",
                edge.edge_id
            ))
        };
        let Some(registry) = &self.registry else {
            return Err(self.refused(not_assigned(), "FetchModel", peer));
        };
        let wards = Self::edge_wards(&edge);
        let storage = |e: crate::storage::StorageError| {
            Status::from(CloudError::Unavailable(format!("storage: {e}")))
        };
        let assigned = self
            .store
            .model_assignments(Some(&wards))
            .await
            .map_err(storage)?
            .into_iter()
            .any(|a| a.name == name && a.version == version);
        if !assigned {
            return Err(self.refused(not_assigned(), "FetchModel", peer));
        }
        let blob = self
            .store
            .model_blob(&name, &version)
            .await
            .map_err(storage)?
            .ok_or_else(|| self.refused(not_assigned(), "FetchModel", peer))?;
        ModelRegistryStats::bump(&registry.stats.fetches);
        info!(edge = %edge.edge_id, name = %blob.name, version = %blob.version, bytes = blob.model.len(),
            "model sent to edge");
        let mut chunks = Vec::with_capacity(1 + blob.model.len() / CHUNK_BYTES + 1);
        chunks.push(Ok(ModelChunk {
            part: Some(Part::Header(ModelHeader {
                name: blob.name,
                version: blob.version,
                sha256: blob.sha256,
                size_bytes: blob.model.len() as u64,
                manifest: blob.manifest,
                signature: blob.signature,
            })),
        }));
        for c in blob.model.chunks(CHUNK_BYTES) {
            chunks.push(Ok(ModelChunk {
                part: Some(Part::Data(c.to_vec())),
            }));
        }
        Ok(Response::new(Box::pin(futures_util::stream::iter(chunks))))
    }
}
