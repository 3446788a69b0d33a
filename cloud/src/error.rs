//! The one error table of the cloud: every failure a client can see maps to both a gRPC code (sync) and an HTTP
//! status plus FHIR issue code (API), so the same condition reads the same on every surface.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wardwatch_fhir::{IssueCode, IssueSeverity};

use crate::storage::StorageError;

/// A failure visible to a client.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// No or bad credentials (missing bearer token, unknown token, no client certificate identity).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Authenticated, but not allowed (scope, unregistered edge, foreign ward).
    #[error("forbidden: {0}")]
    PermissionDenied(String),
    /// The request is malformed.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// A parameter or feature we do not support.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// No such resource.
    #[error("not found: {0}")]
    NotFound(String),
    /// Too large or too many.
    #[error("too large: {0}")]
    ResourceExhausted(String),
    /// The database is unavailable; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl CloudError {
    /// The gRPC status code for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Self::PermissionDenied(_) => tonic::Code::PermissionDenied,
            Self::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Self::NotSupported(_) => tonic::Code::Unimplemented,
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            Self::Unavailable(_) => tonic::Code::Unavailable,
        }
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Self::InvalidArgument(_) | Self::NotSupported(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::ResourceExhausted(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The FHIR OperationOutcome issue code for this error.
    pub fn fhir_issue(&self) -> IssueCode {
        match self {
            Self::Unauthenticated(_) => IssueCode::Login,
            Self::PermissionDenied(_) => IssueCode::Forbidden,
            Self::InvalidArgument(_) => IssueCode::Invalid,
            Self::NotSupported(_) => IssueCode::NotSupported,
            Self::NotFound(_) => IssueCode::NotFound,
            Self::ResourceExhausted(_) => IssueCode::TooCostly,
            Self::Unavailable(_) => IssueCode::Exception,
        }
    }
}

impl From<StorageError> for CloudError {
    fn from(e: StorageError) -> Self {
        tracing::error!(error = %e, "storage failure");
        Self::Unavailable("storage is unavailable; retry later".into())
    }
}

impl From<CloudError> for tonic::Status {
    fn from(e: CloudError) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}

impl IntoResponse for CloudError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        let body = wardwatch_fhir::operation_outcome(
            IssueSeverity::Error,
            self.fhir_issue(),
            &self.to_string(),
        );
        let mut resp = (status, body.to_string()).into_response();
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/fhir+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"wardwatch\""),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_consistently() {
        let e = CloudError::PermissionDenied("x".into());
        assert_eq!(
            (e.grpc_code(), e.http_status()),
            (tonic::Code::PermissionDenied, StatusCode::FORBIDDEN)
        );
        let e = CloudError::Unauthenticated("x".into());
        assert_eq!(
            (e.grpc_code(), e.http_status()),
            (tonic::Code::Unauthenticated, StatusCode::UNAUTHORIZED)
        );
        let e = CloudError::InvalidArgument("x".into());
        assert_eq!(
            (e.grpc_code(), e.http_status()),
            (tonic::Code::InvalidArgument, StatusCode::BAD_REQUEST)
        );
        let s: tonic::Status = CloudError::NotFound("Device/x".into()).into();
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert!(s.message().contains("Device/x"));
    }
}
