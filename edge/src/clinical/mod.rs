//! The edge's clinical engine: early-warning scores, infusion safety and alarm management. Pure logic over
//! normalized samples; no I/O, no async, so every rule is unit-testable at its boundaries.

pub mod alarms;
pub mod engine;
pub mod infusion;
pub mod models;
pub mod news2;
pub mod task;
pub mod thresholds;
