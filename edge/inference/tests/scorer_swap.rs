//! The scorer batches across beds off the async runtime, names the model of every result, and keeps answering
//! through hot swaps (good and refused ones).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use wardwatch_inference::{LoadOptions, ModelSlot, ScoreError, Scorer, ScorerOptions};

#[tokio::test]
async fn empty_slot_and_bad_requests() {
    let slot = Arc::new(ModelSlot::new("empty", trusted(), LoadOptions::default()));
    let scorer = Scorer::spawn(Arc::clone(&slot), ScorerOptions::default()).expect("thread");
    assert_eq!(
        scorer.score(rows(1, 8, 1), 8).await,
        Err(ScoreError::NoModel)
    );
    assert_eq!(slot.status().summary(), "empty: no model loaded");

    slot.try_swap_dir_async(&data_dir().join("mlp"))
        .await
        .expect("loads");
    assert_eq!(
        scorer.score(rows(3, 6, 1), 6).await,
        Err(ScoreError::FeatureCount {
            expected: 8,
            found: 6
        })
    );
    assert_eq!(
        scorer.score(vec![0.0; 9], 8).await,
        Err(ScoreError::RaggedRows { len: 9, width: 8 })
    );
    let empty = scorer.score(Vec::new(), 8).await.expect("no rows is fine");
    assert!(empty.probabilities.is_empty());
    assert_eq!(empty.model.version, "1.0.0");
}

/// 2,000 beds each sending their own row in the same minute: the scoring thread batches them, and each bed gets
/// its own row's probability.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_bed_requests_are_batched_and_answered_in_order() {
    let slot = slot_with_v1();
    let model = slot.current().expect("v1");
    let scorer = Scorer::spawn(slot, ScorerOptions::default()).expect("thread");
    let x = rows(2000, 8, 7);
    let expected = model.score_blocking(&x).expect("reference");
    let mut tasks = Vec::new();
    for (bed, row) in x.chunks(8).enumerate() {
        let scorer = scorer.clone();
        let row = row.to_vec();
        tasks.push(tokio::spawn(
            async move { (bed, scorer.score(row, 8).await) },
        ));
    }
    for task in tasks {
        let (bed, result) = task.await.expect("task");
        let scores = result.expect("scored");
        assert_close(
            &scores.probabilities,
            &[expected[bed]],
            &format!("bed {bed}"),
        );
        assert_eq!(scores.model.version, "1.0.0");
    }
}

/// Scoring never fails while models are swapped in and refused underneath it, and every result is exactly what
/// the model it names computes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_never_fails_in_flight_scoring() {
    let slot = slot_with_v1();
    let v1 = slot.current().expect("v1");
    let v2 = Arc::new(load(&v2_files()).expect("v2"));
    let scorer = Scorer::spawn(Arc::clone(&slot), ScorerOptions::default()).expect("thread");
    let x = rows(300, 8, 11);
    let expect_v1 = v1.score_blocking(&x).expect("v1 reference");
    let expect_v2 = v2.score_blocking(&x).expect("v2 reference");
    let widest = expect_v1
        .iter()
        .zip(&expect_v2)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(widest > 1e-3, "v1 and v2 must be told apart: {widest}");

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..4 {
        let scorer = scorer.clone();
        let x = x.clone();
        let (e1, e2) = (expect_v1.clone(), expect_v2.clone());
        let stop = Arc::clone(&stop);
        clients.push(tokio::spawn(async move {
            let mut seen = [0usize; 2];
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) || seen.iter().sum::<usize>() < 20 {
                // Vary the request size so several batch plans and coalesced runs are exercised.
                let n = 1 + (i * 37 + client * 11) % 300;
                i += 1;
                let scores = scorer
                    .score(x[..n * 8].to_vec(), 8)
                    .await
                    .expect("scoring never fails during swaps");
                let expected = match scores.model.version.as_str() {
                    "1.0.0" => {
                        seen[0] += 1;
                        &e1
                    }
                    "2.0.0" => {
                        seen[1] += 1;
                        &e2
                    }
                    other => panic!("unexpected model {other}"),
                };
                assert_close(
                    &scores.probabilities,
                    &expected[..n],
                    "results match the model they name",
                );
            }
            seen
        }));
    }

    let mut tampered = good_files();
    tampered.model = v2_files().model;
    for round in 0..12 {
        let dir = if round % 2 == 0 { "mlp-v2" } else { "mlp" };
        slot.try_swap_dir_async(&data_dir().join(dir))
            .await
            .expect("good swap");
        tokio::time::sleep(Duration::from_millis(15)).await;
        let before = slot.current().expect("serving");
        slot.try_swap_files_async(tampered.clone(), "tampered".into())
            .await
            .expect_err("refused");
        assert!(
            Arc::ptr_eq(&before, &slot.current().expect("serving")),
            "refused swap changed nothing"
        );
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut totals = [0usize; 2];
    for client in clients {
        let seen = client.await.expect("client finished without failure");
        totals[0] += seen[0];
        totals[1] += seen[1];
    }
    eprintln!("results by v1: {}, by v2: {}", totals[0], totals[1]);
    assert!(
        totals[0] > 0 && totals[1] > 0,
        "both models served: {totals:?}"
    );
    let status = slot.status();
    assert_eq!(status.current.map(|m| m.version), Some("1.0.0".to_string()));
    assert_eq!(
        status.last_failure.map(|f| f.kind),
        Some("hash_mismatch".to_string())
    );
}

/// Equal up to float rounding. Which fixed plan (batch 1, 16 or 256) scores a request depends on what else is
/// waiting at that moment, and plans of different batch sizes may round the last bit differently; two different
/// models (v1 and v2) differ by far more than this.
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-6, "{what}: row {i}: {g} vs {w}");
    }
}
