//! tract's outputs equal onnxruntime's within 1e-5 on the committed golden inputs (golden.json, produced by
//! make_test_models.py with onnxruntime; this test needs no Python), whatever batch plan the rows go through.

mod common;

use std::sync::Arc;

use common::*;
use serde::Deserialize;
use wardwatch_inference::{
    LoadOptions, ModelBundle, ModelRunner, ModelSlot, Scorer, ScorerOptions,
};

#[derive(Deserialize)]
struct Golden {
    model: String,
    feature_names: Vec<String>,
    inputs: Vec<Vec<f64>>,
    outputs: Vec<f64>,
}

const TOLERANCE: f32 = 1e-5;

fn golden() -> Golden {
    let text =
        std::fs::read_to_string(data_dir().join("golden.json")).expect("committed golden file");
    serde_json::from_str(&text).expect("golden.json parses")
}

fn flat_inputs(g: &Golden) -> Vec<f32> {
    g.inputs.iter().flatten().map(|&v| v as f32).collect()
}

fn assert_close(found: &[f32], expected: &[f64]) {
    assert_eq!(found.len(), expected.len());
    let mut worst = 0f32;
    for (i, (&f, &e)) in found.iter().zip(expected).enumerate() {
        let diff = (f - e as f32).abs();
        assert!(
            diff <= TOLERANCE,
            "row {i}: tract {f}, onnxruntime {e}, diff {diff}"
        );
        worst = worst.max(diff);
    }
    eprintln!(
        "max |tract - onnxruntime| over {} rows: {worst:e}",
        found.len()
    );
}

#[test]
fn tract_matches_onnxruntime_on_every_plan() {
    let g = golden();
    assert_eq!(g.model, "mlp/model.onnx");
    let bundle = Arc::new(load(&good_files()).expect("good bundle"));
    assert_eq!(bundle.feature_names(), g.feature_names.as_slice());
    let x = flat_inputs(&g);
    let f = bundle.n_features();

    // All 300 rows at once: one batch-256 run and the remaining 44 rows padded into a second batch-256 run.
    let mut runner = ModelRunner::new(Arc::clone(&bundle));
    assert_close(&runner.score(&x).expect("scores"), &g.outputs);

    // Row by row through the batch-1 plan.
    let one_by_one: Vec<f32> = x
        .chunks(f)
        .flat_map(|row| runner.score(row).expect("scores one row"))
        .collect();
    assert_close(&one_by_one, &g.outputs);

    // Chunks of 13 rows padded into the batch-16 plan.
    let by_13: Vec<f32> = x
        .chunks(13 * f)
        .flat_map(|rows| runner.score(rows).expect("scores"))
        .collect();
    assert_close(&by_13, &g.outputs);

    // A bundle compiled for batch 1 only.
    let options = LoadOptions {
        batch_sizes: vec![1],
        ..LoadOptions::default()
    };
    let single =
        Arc::new(ModelBundle::from_files(&good_files(), &trusted(), &options).expect("loads"));
    assert_eq!(single.batch_sizes(), vec![1]);
    assert_close(&single.score_blocking(&x).expect("scores"), &g.outputs);
}

#[tokio::test]
async fn scorer_matches_onnxruntime() {
    let g = golden();
    let slot = Arc::new(ModelSlot::new("test", trusted(), LoadOptions::default()));
    slot.try_swap_dir_async(&data_dir().join("mlp"))
        .await
        .expect("loads");
    let scorer = Scorer::spawn(slot, ScorerOptions::default()).expect("thread");
    let rows: Vec<[f32; 8]> = g
        .inputs
        .iter()
        .map(|r| {
            let mut row = [0f32; 8];
            for (dst, &src) in row.iter_mut().zip(r) {
                *dst = src as f32;
            }
            row
        })
        .collect();
    let scores = scorer.score_rows(rows).await.expect("scores");
    assert_eq!(scores.model.version, "1.0.0");
    assert_close(&scores.probabilities, &g.outputs);
    for p in scores.predictions() {
        assert_eq!(p.model.name, "wardwatch-test-mlp");
    }
}
