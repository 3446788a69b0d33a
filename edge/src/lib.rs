//! Wardwatch edge node.
//!
//! A node runs in one ward: it accepts device data (today from the ward simulator; device protocols follow),
//! makes every accepted event durable in the [`outbox::Outbox`], and the [`sync`] task streams the outbox to the
//! cloud over mutual-TLS gRPC, deleting events only once the cloud acknowledged them.
//!
//! Entry point: [`EdgeNode::start`] with a validated [`config::EdgeConfig`]; [`EdgeNode::run`] drives it until a
//! shutdown future resolves. The `wardwatch-edge` binary only parses arguments and calls these.

pub mod clinical;
pub mod config;
pub mod ml;
pub mod node;
pub mod normalize;
pub mod outbox;
pub mod simulator;
pub mod sources;
pub mod station;
pub mod sync;

pub use config::EdgeConfig;
pub use node::{AcceptError, EdgeNode, StartError};
