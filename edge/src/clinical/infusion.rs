//! Infusion safety (being written).
