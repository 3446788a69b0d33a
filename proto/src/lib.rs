//! Wardwatch's wire contract between edge and cloud.
//!
//! - [`v1`]: the protobuf messages and the `EdgeSync` gRPC service, generated at build time from
//!   `proto/wardwatch/v1/*.proto` by protox + tonic-prost-build (no `protoc` needed).
//! - [`ids`]: hand-written identifier newtypes that validate what crosses a trust boundary.
//! - [`metrics`]: the one table mapping IEEE 11073 MDC metric codes to LOINC, units and plausible ranges.
//! - [`validate`]: the checks both sides apply to an event before trusting it.

pub mod ids;
pub mod metrics;
pub mod validate;

/// Generated protobuf and gRPC code for `wardwatch.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("wardwatch.v1");
}

/// Milliseconds since the Unix epoch, now. Clamps a clock before 1970 to 0 rather than panicking.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
