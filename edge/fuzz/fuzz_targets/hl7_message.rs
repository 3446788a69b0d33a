//! Any bytes through the MLLP decoder, the HL7 v2 parser and the PCD-01 mapping: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wardwatch_edge::sources::hl7::{mllp::MllpDecoder, parser, pcd01};

fuzz_target!(|data: &[u8]| {
    // Framing: the bytes as a stream, split in two pushes.
    let mut dec = MllpDecoder::new(64 * 1024);
    let (a, b) = data.split_at(data.len() / 2);
    dec.push(a);
    dec.push(b);
    while dec.next_event().is_some() {}
    // Parsing and mapping: the bytes as one message.
    let text = parser::decode_text(data);
    if let Ok(msg) = parser::Message::parse(&text, 1 << 20) {
        let _ = pcd01::decode(&msg);
    }
});
