//! Pipeline sources: each device protocol is a folder with config → build → task(node, shutdown). Every
//! source decodes its messages into [`crate::normalize::RawVital`]s (and infusion reports), normalizes them,
//! and hands them to [`crate::EdgeNode::accept`]; it acknowledges its device only after `accept` returned,
//! i.e. once the data is durable in the outbox.

pub mod hl7;
pub mod mqtt;
