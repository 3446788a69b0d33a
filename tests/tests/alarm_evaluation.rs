//! The alarm manager against naive thresholds and ground truth on a smaller simulated ward (the full 40-bed,
//! 24-hour report is `bench/eval_alarms`, see docs/alarm-evaluation.md): at least 50% fewer physiological
//! alarms, no labelled high-priority event missed, drips sped up alarmed within 90 s.

use wardwatch::eval::{EvalConfig, run};
use wardwatch_edge::simulator::{RandomScenarioMix, ScenarioKind};
use wardwatch_proto::v1::AlarmPriority;

/// A dense mix so that a small ward (fast enough for a debug-build test) sees every kind of scenario: rates are
/// per 40 beds per 24 h, so 20 gives one per 6 beds per 8 h.
fn dense_mix() -> RandomScenarioMix {
    RandomScenarioMix {
        sepsis: 20.0,
        respiratory_failure: 20.0,
        hypovolaemia: 20.0,
        drip_sped_up: 40.0,
        line_occluded: 20.0,
        motion_artifact: 60.0,
        probe_off: 40.0,
        transient_cough_or_turn: 120.0,
        ..RandomScenarioMix::default()
    }
}

fn small_ward(models: Option<wardwatch_edge::config::ModelsConfig>) -> EvalConfig {
    EvalConfig {
        beds: 6,
        hours: 8,
        seed: 5,
        mix: Some(dense_mix()),
        models,
    }
}

#[test]
fn fewer_alarms_no_missed_high_priority_events_fast_over_rate_alarms() {
    let report = run(&small_ward(None));
    for kind in [
        ScenarioKind::SepsisDeterioration,
        ScenarioKind::DripSpedUp,
        ScenarioKind::LineOccluded,
        ScenarioKind::MotionArtifact,
    ] {
        assert!(
            report.labels.iter().any(|l| l.label.kind == kind),
            "no {kind:?} scenario was simulated"
        );
    }
    // Every deterioration and infusion fault that should alarm did.
    for l in report
        .labels
        .iter()
        .filter(|l| l.label.should_alarm && l.label.kind != ScenarioKind::BagRunsEmpty)
    {
        assert!(
            l.time_to_alarm_ms.is_some(),
            "no alarm for {}",
            l.label.description
        );
    }
    eprintln!("{}", report.markdown());
    assert!(report.naive_alarms > 0);
    assert!(
        report.reduction() >= 0.5,
        "only {:.0}% fewer alarms than naive thresholds",
        report.reduction() * 100.0
    );
    assert!(
        report.missed_high().is_empty(),
        "missed high-priority events: {:?}",
        report.missed_high()
    );
    for l in report
        .labels
        .iter()
        .filter(|l| l.label.kind == ScenarioKind::DripSpedUp)
    {
        let t = l.time_to_alarm_ms.unwrap_or(i64::MAX);
        assert!(
            t <= 90_000,
            "over-rate alarm after {t} ms: {}",
            l.label.description
        );
    }
}

/// Alarms on one kind of labelled scenario (each label counted once).
fn alarmed(report: &wardwatch::eval::EvalReport, kind: ScenarioKind) -> usize {
    report
        .labels
        .iter()
        .filter(|l| l.label.kind == kind && l.time_to_alarm_ms.is_some())
        .count()
}

/// The committed edge models in the loop of a live simulated ward: the artifact model holds back threshold
/// alarms built on motion artefacts, and no labelled deterioration loses its alarm or its high priority.
#[test]
fn artifact_model_in_the_loop_holds_back_artefact_alarms_and_hides_no_true_event()
-> anyhow::Result<()> {
    // Many more motion artefacts than the dense mix, so that enough of them cross a threshold for a delay.
    let artefacts = |models| EvalConfig {
        mix: Some(RandomScenarioMix {
            motion_artifact: 600.0,
            probe_off: 120.0,
            ..dense_mix()
        }),
        ..small_ward(models)
    };
    let without = run(&artefacts(None));
    eprintln!("{}", without.markdown());
    let dir = tempfile::tempdir()?;
    let models = wardwatch::dev_models(
        &dir.path().join("pki"),
        &wardwatch::repo_models_dir(),
        &dir.path().join("models"),
    )?;
    let with = run(&artefacts(Some(models)));
    eprintln!("{}", with.markdown());
    assert_eq!(with.models_running.len(), 2, "{:?}", with.models_running);
    assert!(
        with.artifact_questions > 0,
        "the engine asked the artifact model nothing"
    );
    assert!(
        with.deterioration_rounds > 0,
        "no deterioration round was scored"
    );
    assert!(
        with.artifact_holds > 0,
        "the artifact model held nothing back"
    );
    let (before, after) = (
        alarmed(&without, ScenarioKind::MotionArtifact),
        alarmed(&with, ScenarioKind::MotionArtifact),
    );
    assert!(
        before > 0 && after < before,
        "motion artefacts alarmed: {before} without the model, {after} with it"
    );
    assert!(
        with.missed_high().is_empty(),
        "missed high-priority events with models: {:?}",
        with.missed_high()
    );
    for kind in [
        ScenarioKind::SepsisDeterioration,
        ScenarioKind::RespiratoryFailureOnOxygen,
        ScenarioKind::Hypovolaemia,
        ScenarioKind::DripSpedUp,
        ScenarioKind::LineOccluded,
    ] {
        assert_eq!(
            alarmed(&with, kind),
            alarmed(&without, kind),
            "{kind:?}: a true event lost its alarm with the models in the loop"
        );
    }
    Ok(())
}

/// A patient's second deterioration gets high-priority alarms of its own, because the simulated nurse acknowledged
/// the first episode's latched alarms (found by the 40-bed evaluation: a recurrent respiratory failure counted as
/// missed). Without `NURSE_RESPONSE_MS` this test fails. The other half of that finding, an acknowledged alarm that
/// settles at a lower priority between the episodes, did not occur in this small ward (seeds 1–3 pass without
/// it); the alarm manager's own test covers it.
#[test]
fn a_recurrent_deterioration_is_alarmed_at_high_priority_again() {
    let report = run(&EvalConfig {
        beds: 4,
        hours: 30,
        seed: 3,
        mix: Some(RandomScenarioMix {
            sepsis: 0.0,
            respiratory_failure: 40.0,
            hypovolaemia: 0.0,
            drip_sped_up: 0.0,
            line_occluded: 0.0,
            motion_artifact: 0.0,
            probe_off: 0.0,
            transient_cough_or_turn: 0.0,
            stable_scale2_patients: 0.0,
            recurrence_share: 1.0,
            ..RandomScenarioMix::default()
        }),
        models: None,
    });
    let deteriorations: Vec<_> = report
        .labels
        .iter()
        .filter(|l| l.label.kind.is_deterioration())
        .collect();
    let recurrent: Vec<_> = deteriorations
        .iter()
        .filter(|l| {
            deteriorations.iter().any(|o| {
                o.label.bed == l.label.bed && o.label.began_at_unix_ms < l.label.began_at_unix_ms
            })
        })
        .collect();
    assert!(!recurrent.is_empty(), "no recurrence fitted in 30 h");
    for l in &recurrent {
        assert_eq!(
            l.max_priority,
            Some(AlarmPriority::High),
            "recurrence without a high-priority alarm of its own: {}",
            l.label.description
        );
    }
    assert!(
        report.missed_high().is_empty(),
        "missed high-priority events: {:?}",
        report.missed_high()
    );
}
