//! Tamper tests (issue 5): a model with a wrong hash, a bad signature, a signature by an unknown key, a corrupt or
//! truncated file, or an input shape that does not match its manifest is refused with the right error, and a slot
//! holding a good model keeps serving it.

mod common;

use std::sync::Arc;

use common::*;
use wardwatch_inference::{
    LoadError, LoadOptions, ModelBundle, ModelFiles, ModelSlot, TrustedKeys,
};

/// Offers `files` to a slot holding the good v1 model: it must be refused with an error `is_expected` accepts, v1
/// must keep serving with unchanged outputs, and the status must say why.
fn refused_by_slot(files: &ModelFiles, kind: &str, is_expected: impl Fn(&LoadError) -> bool) {
    let slot = slot_with_v1();
    let before = slot.current().expect("v1 serving");
    let x = rows(20, 8, 1);
    let expected = before.score_blocking(&x).expect("v1 scores");

    let err = slot
        .try_swap_files(files, "tamper-test")
        .expect_err("tampered model must be refused");
    assert!(is_expected(&err), "unexpected error: {err:?}");
    assert_eq!(err.kind(), kind);

    let after = slot.current().expect("still serving");
    assert!(
        Arc::ptr_eq(&before, &after),
        "the old model must keep running"
    );
    assert_eq!(after.score_blocking(&x).expect("v1 still scores"), expected);
    let status = slot.status();
    assert_eq!(
        status.current.as_ref().map(|m| m.version.as_str()),
        Some("1.0.0")
    );
    let failure = status.last_failure.as_ref().expect("failure recorded");
    assert_eq!(failure.kind, kind);
    assert_eq!(failure.origin, "tamper-test");
    let summary = status.summary();
    assert!(
        summary.contains("running old model wardwatch-test-mlp 1.0.0"),
        "{summary}"
    );
    assert!(summary.contains(&err.to_string()), "{summary}");
}

#[test]
fn good_bundle_loads() {
    let bundle = load(&good_files()).expect("good bundle");
    let id = bundle.identity();
    assert_eq!(
        (id.name.as_str(), id.version.as_str()),
        ("wardwatch-test-mlp", "1.0.0")
    );
    assert_eq!(id.sha256, manifest_json(&good_files())["sha256"]);
    assert_eq!(bundle.n_features(), 8);
    assert_eq!(bundle.batch_sizes(), vec![1, 16, 256]);
    assert_eq!(bundle.signed_by(), trusted().hex_keys()[0]);
    // From the directory too.
    let from_dir =
        ModelBundle::load_dir(&data_dir().join("mlp"), &trusted(), &LoadOptions::default())
            .expect("dir");
    assert_eq!(from_dir.identity(), bundle.identity());
}

#[test]
fn wrong_hash_is_refused() {
    // Another valid model under v1's signed manifest.
    let mut files = good_files();
    files.model = v2_files().model;
    let is_hash = |e: &LoadError| matches!(e, LoadError::HashMismatch { .. });
    assert!(is_hash(&load(&files).unwrap_err()));
    refused_by_slot(&files, "hash_mismatch", is_hash);

    // One flipped bit in a weight.
    let mut files = good_files();
    let last = files.model.len() - 40;
    files.model[last] ^= 0x01;
    refused_by_slot(&files, "hash_mismatch", is_hash);
}

#[test]
fn bad_signature_is_refused() {
    let is_bad = |e: &LoadError| matches!(e, LoadError::BadSignature { .. });

    // The manifest edited after signing (relabelled as another version).
    let good = good_files();
    let mut manifest = manifest_json(&good);
    manifest["version"] = "9.9.9".into();
    let files = ModelFiles {
        model: good.model.clone(),
        manifest: serde_json::to_vec_pretty(&manifest).expect("json"),
        signature: good.signature.clone(),
    };
    refused_by_slot(&files, "bad_signature", is_bad);

    // A swapped model with the manifest's hash updated to match it, under the old signature.
    let v2 = v2_files();
    let mut manifest = manifest_json(&good);
    manifest["sha256"] = manifest_json(&v2)["sha256"].clone();
    let files = ModelFiles {
        model: v2.model.clone(),
        manifest: serde_json::to_vec_pretty(&manifest).expect("json"),
        signature: good.signature.clone(),
    };
    refused_by_slot(&files, "bad_signature", is_bad);

    // v2's (valid) signature on v1's manifest.
    let files = ModelFiles {
        model: good.model.clone(),
        manifest: good.manifest.clone(),
        signature: v2.signature,
    };
    refused_by_slot(&files, "bad_signature", is_bad);

    // A corrupted signature.
    let mut envelope = serde_json::from_slice::<serde_json::Value>(&good.signature).expect("json");
    let sig = envelope["signature"].as_str().expect("hex").to_string();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { '1' } else { '0' },
        &sig[1..]
    );
    envelope["signature"] = flipped.into();
    let files = ModelFiles {
        model: good.model.clone(),
        manifest: good.manifest.clone(),
        signature: serde_json::to_vec(&envelope).expect("json"),
    };
    refused_by_slot(&files, "bad_signature", is_bad);

    // No signature at all, or garbage: malformed.
    let files = ModelFiles {
        model: good.model.clone(),
        manifest: good.manifest.clone(),
        signature: Vec::new(),
    };
    refused_by_slot(&files, "malformed_signature", |e| {
        matches!(e, LoadError::MalformedSignature(_))
    });
    let files = ModelFiles {
        model: good.model,
        manifest: good.manifest,
        signature: vec![0xff; 64],
    };
    refused_by_slot(&files, "malformed_signature", |e| {
        matches!(e, LoadError::MalformedSignature(_))
    });
}

#[test]
fn unknown_key_is_refused() {
    let good = good_files();
    let files = resigned(good.model, &manifest_json(&good_files()), &other_key());
    let err = load(&files).unwrap_err();
    let other = hex::encode(other_key().verifying_key().as_bytes());
    assert!(
        matches!(&err, LoadError::UnknownKey { public_key } if *public_key == other),
        "{err:?}"
    );
    refused_by_slot(&files, "unknown_key", |e| {
        matches!(e, LoadError::UnknownKey { .. })
    });

    // Trusting both keys (a key rotation) accepts it.
    let both = TrustedKeys::new(vec![
        release_key().verifying_key(),
        other_key().verifying_key(),
    ])
    .expect("keys");
    ModelBundle::from_files(&files, &both, &LoadOptions::default())
        .expect("trusted after rotation");
}

#[test]
fn corrupt_and_truncated_models_are_refused() {
    let good = good_files();
    let manifest = manifest_json(&good);
    let is_corrupt = |e: &LoadError| matches!(e, LoadError::CorruptModel(_));

    // Each file below is signed properly with its real hash: only the ONNX parser can refuse it.
    let truncated = signed_model(
        good.model[..good.model.len() / 2].to_vec(),
        manifest.clone(),
    );
    refused_by_slot(&truncated, "corrupt_model", is_corrupt);
    let garbage = signed_model(
        b"this is not an ONNX model \x00\xff\xfe".to_vec(),
        manifest.clone(),
    );
    refused_by_slot(&garbage, "corrupt_model", is_corrupt);
    let empty = signed_model(Vec::new(), manifest.clone());
    refused_by_slot(&empty, "corrupt_model", is_corrupt);

    // Every truncation point and many single-byte corruptions: never a panic, never a half-loaded model. (A flipped
    // weight byte can still be a valid model: those may load, and that is fine, the signature vouches for them.)
    for cut in 0..good.model.len() {
        let files = signed_model(good.model[..cut].to_vec(), manifest.clone());
        let err = load(&files).expect_err("a truncated model never loads");
        assert!(
            !matches!(
                err,
                LoadError::HashMismatch { .. } | LoadError::BadSignature { .. }
            ),
            "{err:?}"
        );
    }
    for i in (0..good.model.len()).step_by(3) {
        let mut model = good.model.clone();
        model[i] = model[i].wrapping_add(0x5b);
        let _ = load(&signed_model(model, manifest.clone()));
    }
}

/// tract 0.23 panics (divide by zero) compiling a Slice with step 0 instead of returning an error. Signed and
/// with the right hash, such a file must still be refused, and the edge must not go down with it.
#[test]
fn a_model_that_makes_tract_panic_is_refused() {
    let model =
        std::fs::read(data_dir().join("panics").join("model.onnx")).expect("committed model");
    let files = signed_model(model, manifest_json(&good_files()));
    let err = load(&files).unwrap_err();
    assert!(matches!(err, LoadError::Panicked { .. }), "{err:?}");
    refused_by_slot(&files, "panicked", |e| {
        matches!(e, LoadError::Panicked { .. })
    });
}

#[test]
fn feature_count_mismatch_is_refused_at_load() {
    // The narrow model takes 6 features; its manifest (validly signed, right hash) promises the 8 of v1.
    let narrow =
        std::fs::read(data_dir().join("narrow").join("model.onnx")).expect("committed model");
    let files = signed_model(narrow.clone(), manifest_json(&good_files()));
    let err = load(&files).unwrap_err();
    match &err {
        LoadError::ShapeMismatch {
            tensor,
            expected,
            found,
        } => {
            assert!(tensor.contains("features"), "{err}");
            assert!(expected.contains('8'), "{err}");
            assert_eq!(found, "[batch, 6]");
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
    refused_by_slot(&files, "shape_mismatch", |e| {
        matches!(e, LoadError::ShapeMismatch { .. })
    });

    // The 8-feature model under a manifest listing 6 features.
    let mut manifest = manifest_json(&good_files());
    manifest["feature_names"] = serde_json::json!(["a", "b", "c", "d", "e", "f"]);
    manifest["input"]["shape"] = serde_json::json!([null, 6]);
    let files = signed_model(good_files().model, manifest.clone());
    refused_by_slot(&files, "shape_mismatch", |e| {
        matches!(e, LoadError::ShapeMismatch { .. })
    });

    // A manifest whose shape and feature list disagree with each other.
    manifest["input"]["shape"] = serde_json::json!([null, 8]);
    let files = signed_model(good_files().model, manifest);
    refused_by_slot(&files, "shape_mismatch", |e| {
        matches!(e, LoadError::ShapeMismatch { .. })
    });
}

#[test]
fn interface_mismatches_are_refused() {
    let good = good_files();
    let mut manifest = manifest_json(&good);
    manifest["input"]["name"] = "x".into();
    let files = signed_model(good.model.clone(), manifest);
    refused_by_slot(&files, "name_mismatch", |e| {
        matches!(
            e,
            LoadError::NameMismatch {
                tensor: "input",
                ..
            }
        )
    });

    let mut manifest = manifest_json(&good);
    manifest["output"]["name"] = "logit_out".into();
    let files = signed_model(good.model.clone(), manifest);
    refused_by_slot(&files, "name_mismatch", |e| {
        matches!(
            e,
            LoadError::NameMismatch {
                tensor: "output",
                ..
            }
        )
    });

    let mut manifest = manifest_json(&good);
    manifest["opset"] = 9.into();
    let files = signed_model(good.model.clone(), manifest);
    refused_by_slot(&files, "manifest_mismatch", |e| {
        matches!(e, LoadError::ManifestMismatch { .. })
    });

    let mut manifest = manifest_json(&good);
    manifest["input"]["dtype"] = "float64".into();
    let files = signed_model(good.model.clone(), manifest);
    refused_by_slot(&files, "bad_manifest", |e| {
        matches!(e, LoadError::BadManifest(_))
    });

    let files = signed_model(good.model, serde_json::json!({"name": "incomplete"}));
    refused_by_slot(&files, "bad_manifest", |e| {
        matches!(e, LoadError::BadManifest(_))
    });
}

#[test]
fn slot_expectations_and_limits() {
    let options = LoadOptions {
        expect_name: Some("deterioration".into()),
        ..LoadOptions::default()
    };
    let slot = ModelSlot::new("deterioration", trusted(), options);
    let err = slot.try_swap_files(&good_files(), "registry").unwrap_err();
    assert!(matches!(err, LoadError::WrongModel(_)), "{err:?}");
    assert!(slot.current().is_none());
    let summary = slot.status().summary();
    assert!(
        summary.starts_with("deterioration: no model running because registry was refused"),
        "{summary}"
    );

    let mut features: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
    let options = LoadOptions {
        expect_features: Some(features.clone()),
        ..LoadOptions::default()
    };
    let err = ModelBundle::from_files(&good_files(), &trusted(), &options).unwrap_err();
    assert!(matches!(err, LoadError::WrongModel(_)), "{err:?}");
    features = manifest_json(&good_files())["feature_names"]
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect();
    let options = LoadOptions {
        expect_features: Some(features),
        ..LoadOptions::default()
    };
    ModelBundle::from_files(&good_files(), &trusted(), &options).expect("same layout");

    let options = LoadOptions {
        max_model_bytes: 100,
        ..LoadOptions::default()
    };
    let err = ModelBundle::from_files(&good_files(), &trusted(), &options).unwrap_err();
    assert!(matches!(err, LoadError::TooLarge { .. }), "{err:?}");
    let err = ModelBundle::load_dir(
        &data_dir().join("narrow"),
        &trusted(),
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::Io { .. }), "{err:?}");
}

#[test]
fn a_good_update_after_a_refused_one_clears_the_failure() {
    let slot = slot_with_v1();
    let mut files = good_files();
    files.model = v2_files().model;
    slot.try_swap_files(&files, "bad").unwrap_err();
    assert!(slot.status().last_failure.is_some());
    let id = slot
        .try_swap_dir(&data_dir().join("mlp-v2"))
        .expect("v2 is good");
    assert_eq!(id.version, "2.0.0");
    let status = slot.status();
    assert_eq!(status.current.map(|m| m.version), Some("2.0.0".to_string()));
    assert!(status.last_failure.is_none());
}
