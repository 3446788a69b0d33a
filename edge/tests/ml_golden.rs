//! Parity of the edge's feature extraction (`wardwatch_edge::ml`) with the Python training pipeline
//! (`models/features.py`): the golden files `models/golden/*.json`, written by `python models/train.py`, hold raw
//! sample windows and the features Python computed from them. Rust must produce the same features within 1e-5
//! (relative above 1), or the models would be fed something other than what they were trained on.
//!
//! The golden files are committed; this test needs no Python. It also checks that the golden files, the
//! manifests and the committed `model.onnx` files agree on the model's sha256 and feature names, so a retrained
//! model cannot be committed without its golden vectors (or the reverse).

use std::path::PathBuf;

use serde_json::Value;
use sha2::{Digest, Sha256};
use wardwatch_edge::ml::{
    ARTIFACT_FEATURES, BedBuffer, ContinuousSignal, DETERIORATION_FEATURES, FeatureSpec, Quality,
    Sample, Signal,
};

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
}

fn load(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn golden(kind: &str) -> Value {
    load(models_dir().join("golden").join(format!("{kind}.json")))
}

/// The buffer after pushing a vector's samples in file order (refusals are part of the behaviour under test).
fn buffer(v: &Value, scale_2: bool) -> BedBuffer {
    let mut b = BedBuffer::new(scale_2);
    for s in v["samples"].as_array().expect("samples") {
        let s = s.as_array().expect("sample row");
        let code = s[0].as_u64().expect("code") as u32;
        let sample = Sample {
            signal: Signal::from_code(code).unwrap_or_else(|| panic!("unknown code {code}")),
            at_unix_ms: s[1].as_i64().expect("time"),
            value: s[2].as_f64().expect("value"),
            quality: Quality(s[3].as_u64().expect("flags") as u8),
        };
        let _ = b.push(&sample);
    }
    b
}

fn check(kind: &str, name: &str, got: &[f32], want: &Value, specs: &[FeatureSpec]) -> Vec<String> {
    let want = want.as_array().expect("features");
    assert_eq!(got.len(), want.len(), "{kind} {name}: feature count");
    let mut bad = Vec::new();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let w = w.as_f64().expect("feature value");
        let g = f64::from(*g);
        if (g - w).abs() > 1e-5 * w.abs().max(1.0) {
            bad.push(format!(
                "{kind} {name}: {} = {g} (Rust) vs {w} (Python)",
                specs[i].name
            ));
        }
    }
    bad
}

fn names_match(doc: &Value, specs: &[FeatureSpec]) {
    let names: Vec<&str> = doc["feature_names"]
        .as_array()
        .expect("feature_names")
        .iter()
        .map(|n| n.as_str().expect("name"))
        .collect();
    let ours: Vec<&str> = specs.iter().map(|s| s.name).collect();
    assert_eq!(
        names, ours,
        "golden feature names differ from the Rust table"
    );
}

#[test]
fn deterioration_features_match_python() {
    let doc = golden("deterioration");
    names_match(&doc, &DETERIORATION_FEATURES);
    let vectors = doc["vectors"].as_array().expect("vectors");
    assert!(vectors.len() >= 5, "too few golden vectors");
    let mut bad = Vec::new();
    for v in vectors {
        let name = v["name"].as_str().unwrap_or("?");
        let b = buffer(v, v["spo2_scale_2"].as_bool().expect("scale"));
        let f = b.features_at(v["now_unix_ms"].as_i64().expect("now"));
        bad.extend(check(
            "deterioration",
            name,
            &f.values,
            &v["features"],
            &DETERIORATION_FEATURES,
        ));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn artifact_features_match_python() {
    let doc = golden("artifact");
    names_match(&doc, &ARTIFACT_FEATURES);
    let vectors = doc["vectors"].as_array().expect("vectors");
    assert!(vectors.len() >= 5, "too few golden vectors");
    let mut bad = Vec::new();
    for v in vectors {
        let name = v["name"].as_str().unwrap_or("?");
        let query = match v["query"].as_str().expect("query") {
            "hr" => ContinuousSignal::HeartRate,
            "pr" => ContinuousSignal::PulseRate,
            "spo2" => ContinuousSignal::SpO2,
            "rr" => ContinuousSignal::RespRate,
            other => panic!("unknown query {other}"),
        };
        let b = buffer(v, false);
        let f = b.artifact_features_at(v["now_unix_ms"].as_i64().expect("now"), query);
        bad.extend(check(
            "artifact",
            name,
            &f.values,
            &v["features"],
            &ARTIFACT_FEATURES,
        ));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn golden_files_manifests_and_models_agree() {
    for (kind, specs) in [
        ("deterioration", &DETERIORATION_FEATURES[..]),
        ("artifact", &ARTIFACT_FEATURES[..]),
    ] {
        let dir = models_dir().join(kind);
        let bytes = std::fs::read(dir.join("model.onnx")).expect("model.onnx");
        let sha = hex::encode(Sha256::digest(&bytes));
        let manifest = load(dir.join("manifest.json"));
        assert_eq!(
            manifest["sha256"].as_str(),
            Some(sha.as_str()),
            "{kind} manifest sha256"
        );
        assert_eq!(
            golden(kind)["model_sha256"].as_str(),
            Some(sha.as_str()),
            "{kind} golden sha256"
        );
        assert_eq!(manifest["input"]["name"], "features");
        assert_eq!(
            manifest["input"]["shape"][1].as_u64(),
            Some(specs.len() as u64)
        );
        assert_eq!(manifest["output"]["name"], "probability");
        let names: Vec<&str> = manifest["features"]
            .as_array()
            .expect("features")
            .iter()
            .map(|f| f["name"].as_str().expect("name"))
            .collect();
        let ours: Vec<&str> = specs.iter().map(|s| s.name).collect();
        assert_eq!(names, ours, "{kind} manifest feature names");
        for (f, s) in manifest["features"]
            .as_array()
            .expect("features")
            .iter()
            .zip(specs)
        {
            assert_eq!(
                f["unit"].as_str(),
                Some(s.unit),
                "{kind} unit of {}",
                s.name
            );
        }
        for v in golden(kind)["vectors"].as_array().expect("vectors") {
            let p = v["probability"].as_f64().expect("probability");
            assert!((0.0..=1.0).contains(&p));
        }
    }
}
