//! NEWS2 (being written).
