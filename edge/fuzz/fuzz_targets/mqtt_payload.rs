//! Any topic and payload through the MQTT decoder (JSON, schema, units, validation): never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wardwatch_edge::sources::mqtt::{MqttSourceConfig, decode};

fuzz_target!(|data: &[u8]| {
    let cfg = MqttSourceConfig::default();
    // First line (up to 200 bytes) is the topic, the rest the payload; plus fixed valid topics.
    let cut = data.iter().position(|b| *b == b'\n').unwrap_or(0).min(200);
    let topic = String::from_utf8_lossy(&data[..cut]);
    let payload = data.get(cut + 1..).unwrap_or(&[]);
    let _ = decode(&topic, payload, &cfg);
    let _ = decode("wardwatch/v1/7A/1/mon-1/vitals", data, &cfg);
    let _ = decode("wardwatch/v1/7A/1/drip-1/infusion", data, &cfg);
});
