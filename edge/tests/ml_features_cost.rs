//! What a deterioration round costs the engine before any inference: building one feature row per bed for
//! 2,000 beds (the engine does this under its lock, on the engine task, once per `score_interval_secs`).
//! A measurement, not a check; run it in release:
//!
//! ```sh
//! cargo test --release --target-dir target/bench -p wardwatch-edge --test ml_features_cost -- --ignored --nocapture
//! ```

use std::time::Instant;

use wardwatch_edge::ml::{BedBuffer, MINUTE_MS, Quality, Sample, Signal};

#[test]
#[ignore = "a measurement; run in release with --ignored --nocapture"]
fn feature_rows_for_2000_beds() {
    let now: i64 = 1_800_000_000_000;
    let mut beds: Vec<Box<BedBuffer>> = (0..2_000).map(|_| BedBuffer::boxed(false)).collect();
    for (i, b) in beds.iter_mut().enumerate() {
        for k in 0..240 {
            let at = now - (240 - k) * MINUTE_MS + 30_000;
            for s in Signal::ALL {
                let _ = b.push(&Sample {
                    signal: s,
                    value: 50.0 + ((i as i64 + k) % 40) as f64,
                    at_unix_ms: at,
                    quality: Quality(0),
                });
            }
        }
    }
    let mut best = f64::MAX;
    let mut sink = 0f32;
    for _ in 0..5 {
        let t = Instant::now();
        for b in &beds {
            sink += b.features_at(now).values[0];
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    eprintln!(
        "features for 2,000 beds: {:.1} ms (best of 5; {:.1} µs per bed); BedBuffer {} bytes [{sink}]",
        best * 1e3,
        best * 1e6 / 2_000.0,
        BedBuffer::BYTES
    );
    assert!(sink.is_finite());
}
