//! The alarm manager against naive thresholds and ground truth on a smaller simulated ward (the full 40-bed,
//! 24-hour report is `bench/eval_alarms`, see docs/alarm-evaluation.md): at least 50% fewer physiological
//! alarms, no labelled high-priority event missed, drips sped up alarmed within 90 s.

use wardwatch::eval::{EvalConfig, run};
use wardwatch_edge::simulator::{RandomScenarioMix, ScenarioKind};

#[test]
fn fewer_alarms_no_missed_high_priority_events_fast_over_rate_alarms() {
    // A dense mix so that a small ward (fast enough for a debug-build test) sees every kind of scenario:
    // rates are per 40 beds per 24 h, so 20 gives one per 6 beds per 8 h.
    let mix = RandomScenarioMix {
        sepsis: 20.0,
        respiratory_failure: 20.0,
        hypovolaemia: 20.0,
        drip_sped_up: 40.0,
        line_occluded: 20.0,
        motion_artifact: 60.0,
        probe_off: 40.0,
        transient_cough_or_turn: 120.0,
        ..RandomScenarioMix::default()
    };
    let report = run(&EvalConfig {
        beds: 6,
        hours: 8,
        seed: 5,
        mix: Some(mix),
    });
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
