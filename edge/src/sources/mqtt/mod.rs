//! MQTT source (being written).
