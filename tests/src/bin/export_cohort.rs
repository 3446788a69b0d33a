//! Exports a labelled, simulated cohort for the training pipeline in `models/` (issue 5): runs the ward
//! simulator offline (no network, no edge node) and writes what the Python pipeline reads.
//!
//! **Simulated data only**: every patient, sample and label comes from `wardwatch_edge::simulator`.
//!
//! ```sh
//! cargo run --release --target-dir target/bench -p wardwatch --bin export_cohort -- \
//!     --beds 40 --hours 48 --seed 101 --mix train --out /tmp/cohort-101
//! ```
//!
//! # Files (all CSV with a header row, times in ms since the Unix epoch)
//!
//! - `meta.json`: the arguments, the scenario mix's rates, the simulator's periods, row counts.
//! - `patients.csv`: `bed,patient_id,spo2_scale_2`.
//! - `labels.csv`: every ground-truth label (`GroundTruthLabel`): `bed,patient_id,kind,is_deterioration,
//!   began_at_unix_ms,ended_at_unix_ms,peak_at_unix_ms,onset_at_unix_ms,should_alarm,expected_priority,
//!   device_flagged,description` (empty fields for `None`; a deterioration's `began_at` is its prodrome's start
//!   when it has one, `onset_at` the onset of its main phase).
//! - `minutes.csv`: the samples thinned to one row per bed, signal and minute, exactly as the edge's
//!   `wardwatch_edge::ml::BedBuffer` bins them (`MinuteBin`): `bed,code,minute,value,at_unix_ms,n,n_valid,
//!   n_artifact,n_sensor_off`, where `value` is the newest valid sample of the minute (`nan` if none) and
//!   `at_unix_ms` its time. Hours-long windows at the monitor's native 1 s period would be about 60 times larger;
//!   the deterioration features only ever read these bins, so nothing they need is lost.
//! - `raw.csv`: the continuous signals (ECG heart rate, oximeter pulse rate, SpO2, respiratory rate) at their
//!   native period, `bed,code,at_unix_ms,value,flags` (flags: 1 artifact, 2 sensor-off), but only in the
//!   two-minute artifact windows `(t − 120 s, t]` before every query time `t` (an alarm in `alarms.csv` or a
//!   probe in `probes.csv`); overlapping windows are written once.
//! - `alarms.csv`: every alarm naive fixed thresholds would sound (`naive_out_of_range` with the default
//!   limits, each entry of a parameter into out-of-range, ignoring quality flags, as in
//!   `docs/alarm-evaluation.md`), plus every entry beyond a hard limit (the engine raises those at once, at high
//!   priority): `bed,at_unix_ms,param,code,value,flags,hard` (`hard`: the value is at or beyond a hard limit).
//! - `probes.csv`: further artifact query times, `bed,at_unix_ms,reason`: a grid every `--probe-every-s`
//!   seconds per bed (`grid`), and every 5 s within each labelled motion artefact, probe-off and cough or turn
//!   (`label`), so that training sees both ordinary windows and disturbed ones.
//!
//! Signal codes are MDC codes (`wardwatch_edge::ml::Signal::code`): 147842 ECG heart rate, 149530 oximeter
//! pulse rate, 151562 respiratory rate, 150456 SpO2, 150364 temperature, 150021 systolic pressure, and the
//! private codes of ACVPU (value = rank, A 0 … U 4) and air-or-oxygen (1 oxygen, 0 air).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;
use wardwatch_edge::clinical::thresholds::{
    Limits, ThresholdConfig, VitalParam, naive_out_of_range, param_of,
};
use wardwatch_edge::ml::{ARTIFACT_WINDOW_MS, ContinuousSignal, MinuteBin, Sample, Signal};
use wardwatch_edge::simulator::{
    GroundTruthLabel, RandomScenarioMix, ScenarioKind, WardSimConfig, WardSimulator,
};
use wardwatch_proto::v1::edge_event::Payload;

/// Simulated start time of every cohort (2027-01-15); only differences matter.
const START_UNIX_MS: i64 = 1_800_000_000_000;

#[derive(Parser)]
struct Args {
    /// Beds.
    #[arg(long, default_value_t = 40)]
    beds: u32,
    /// Simulated hours.
    #[arg(long, default_value_t = 24)]
    hours: u32,
    /// Seed of the simulator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scenario mix: "train", "heldout", "validation" or "default" (see `mix`).
    #[arg(long, default_value = "train")]
    mix: String,
    /// Output directory (created).
    #[arg(long)]
    out: PathBuf,
    /// Seconds between grid probes per bed (0: none).
    #[arg(long, default_value_t = 1800)]
    probe_every_s: i64,
}

/// The named scenario mixes, over `hours` (rates per 40 beds per 24 h).
///
/// - `train`: deteriorations several times more frequent than the default ward (so that a 40-bed cohort has
///   dozens), sepsis-heavy, 70 % of motion artefacts flagged by the monitor, a prodrome before 60 % of the
///   deteriorations (the default share), 15 % of deteriorations recurring (the default share).
/// - `heldout`: a differently composed cohort: relatively more respiratory failures and hypovolaemias, more
///   artefacts of which fewer are flagged (40 %), more coughs and turns, more stable scale-2 patients, and a
///   prodrome before fewer deteriorations (50 %), and more recurrences (20 %).
/// - `validation`: for developing models between held-out looks, never for reported figures: composed between
///   the training and the held-out mix (deteriorations 37 % sepsis, 26 % respiratory failure, 37 % hypovolaemia,
///   against 44/22/33 % in training and 30/30/40 % held out; more artefacts than training, 55 % flagged; more coughs
///   and turns and stable scale-2 patients), so that a recipe can be checked for the shift from the training mix
///   without touching held-out cohorts (seeds 201+).
/// - `default`: `RandomScenarioMix::default()`, the ward of `docs/alarm-evaluation.md`.
fn mix(name: &str, hours: u32) -> anyhow::Result<RandomScenarioMix> {
    let horizon_ms = i64::from(hours) * 3_600_000;
    let base = RandomScenarioMix {
        horizon_ms,
        ..RandomScenarioMix::default()
    };
    Ok(match name {
        "train" => RandomScenarioMix {
            sepsis: 8.0,
            respiratory_failure: 4.0,
            hypovolaemia: 6.0,
            drip_sped_up: 3.0,
            line_occluded: 2.0,
            motion_artifact: 40.0,
            probe_off: 20.0,
            transient_cough_or_turn: 60.0,
            artifact_flagged_share: 0.7,
            stable_scale2_patients: 3.0,
            prodrome_share: 0.6,
            recurrence_share: 0.15,
            ..base
        },
        "heldout" => RandomScenarioMix {
            sepsis: 6.0,
            respiratory_failure: 6.0,
            hypovolaemia: 8.0,
            drip_sped_up: 2.0,
            line_occluded: 3.0,
            motion_artifact: 60.0,
            probe_off: 15.0,
            transient_cough_or_turn: 90.0,
            artifact_flagged_share: 0.4,
            stable_scale2_patients: 5.0,
            prodrome_share: 0.5,
            recurrence_share: 0.2,
            ..base
        },
        "validation" => RandomScenarioMix {
            sepsis: 7.0,
            respiratory_failure: 5.0,
            hypovolaemia: 7.0,
            drip_sped_up: 2.0,
            line_occluded: 2.0,
            motion_artifact: 50.0,
            probe_off: 18.0,
            transient_cough_or_turn: 75.0,
            artifact_flagged_share: 0.55,
            stable_scale2_patients: 4.0,
            prodrome_share: 0.55,
            recurrence_share: 0.15,
            ..base
        },
        "default" => base,
        other => bail!("unknown mix {other:?} (train, heldout, validation, default)"),
    })
}

/// A CSV field: quoted when it holds a comma, quote or newline.
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(x: Option<T>) -> String {
    x.map_or(String::new(), |v| v.to_string())
}

fn writer(dir: &Path, name: &str, header: &str) -> anyhow::Result<BufWriter<File>> {
    let path = dir.join(name);
    let mut w = BufWriter::new(
        File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    writeln!(w, "{header}")?;
    Ok(w)
}

/// The limits `naive_out_of_range` applied to a parameter.
fn limits(cfg: &ThresholdConfig, p: VitalParam, scale_2: bool) -> &Limits {
    match p {
        VitalParam::HeartRate => &cfg.heart_rate,
        VitalParam::RespiratoryRate => &cfg.respiratory_rate,
        VitalParam::SpO2 if scale_2 => &cfg.spo2_scale_2,
        VitalParam::SpO2 => &cfg.spo2,
        VitalParam::SystolicBp => &cfg.systolic_bp,
        VitalParam::Temperature => &cfg.temperature,
    }
}

fn param_slug(p: VitalParam) -> &'static str {
    match p {
        VitalParam::HeartRate => "hr",
        VitalParam::RespiratoryRate => "rr",
        VitalParam::SpO2 => "spo2",
        VitalParam::SystolicBp => "sbp",
        VitalParam::Temperature => "temp",
    }
}

/// Per-bed export state.
struct BedState {
    /// The minute bin under way per signal.
    bins: [Option<MinuteBin>; 8],
    /// Raw continuous samples of the last ~2 min: (code, time, value, flags).
    ring: VecDeque<(u32, i64, f64, u8)>,
    /// Raw samples up to this time are written already.
    flushed_through: i64,
    /// Query times not yet flushed, earliest first.
    queries: BinaryHeap<Reverse<i64>>,
    scale_2: bool,
}

struct Writers {
    minutes: BufWriter<File>,
    raw: BufWriter<File>,
    n_minutes: u64,
    n_raw: u64,
}

fn write_bin(w: &mut Writers, bed: u32, signal: Signal, b: &MinuteBin) -> anyhow::Result<()> {
    w.n_minutes += 1;
    writeln!(
        w.minutes,
        "{bed},{},{},{},{},{},{},{},{}",
        signal.code(),
        b.minute,
        b.value.map_or("nan".to_string(), |v| v.to_string()),
        if b.value.is_some() { b.at_unix_ms } else { 0 },
        b.n,
        b.n_valid,
        b.n_artifact,
        b.n_sensor_off
    )?;
    Ok(())
}

/// Writes the raw samples of the windows of every query at or before `upto`.
fn flush_queries(w: &mut Writers, bed: u32, st: &mut BedState, upto: i64) -> anyhow::Result<()> {
    while let Some(&Reverse(c)) = st.queries.peek() {
        if c > upto {
            break;
        }
        st.queries.pop();
        let from = st.flushed_through.max(c - ARTIFACT_WINDOW_MS);
        for &(code, t, v, q) in &st.ring {
            if t > from && t <= c {
                writeln!(w.raw, "{bed},{code},{t},{v},{q}")?;
                w.n_raw += 1;
            }
        }
        st.flushed_through = st.flushed_through.max(c);
    }
    Ok(())
}

fn label_row(l: &GroundTruthLabel) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{}",
        l.bed,
        l.patient_id,
        l.kind.name(),
        u8::from(l.kind.is_deterioration()),
        l.began_at_unix_ms,
        opt(l.ended_at_unix_ms),
        opt(l.peak_at_unix_ms),
        opt(l.onset_at_unix_ms),
        u8::from(l.should_alarm),
        opt(l.expected_priority.map(|p| p.as_str_name())),
        opt(l.device_flagged.map(u8::from)),
        csv(&l.description)
    )
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.beds == 0 || a.hours == 0 {
        bail!("--beds and --hours must be at least 1");
    }
    let started = std::time::Instant::now();
    let mix = mix(&a.mix, a.hours)?;
    let cfg = WardSimConfig {
        ward: "7A".into(),
        beds: a.beds,
        seed: a.seed,
        start_unix_ms: START_UNIX_MS,
        random_scenarios: Some(mix.clone()),
        ..WardSimConfig::default()
    };
    let end = START_UNIX_MS + i64::from(a.hours) * 3_600_000;
    let mut sim = WardSimulator::new(cfg.clone());
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;

    let patients = sim.patients();
    let mut pw = writer(&a.out, "patients.csv", "bed,patient_id,spo2_scale_2")?;
    for p in &patients {
        writeln!(
            pw,
            "{},{},{}",
            p.bed,
            p.patient_id,
            u8::from(p.spo2_scale_2)
        )?;
    }
    pw.flush()?;
    let bed_of: HashMap<String, u32> = patients
        .iter()
        .map(|p| (p.patient_id.clone(), p.bed))
        .collect();

    // Probe times: a per-bed grid, and every 5 s within labelled disturbances.
    let labels = sim.labels();
    let mut beds: Vec<BedState> = patients
        .iter()
        .map(|p| BedState {
            bins: [None; 8],
            ring: VecDeque::new(),
            flushed_through: i64::MIN,
            queries: BinaryHeap::new(),
            scale_2: p.spo2_scale_2,
        })
        .collect();
    let mut probes = writer(&a.out, "probes.csv", "bed,at_unix_ms,reason")?;
    let mut n_probes = 0u64;
    if a.probe_every_s > 0 {
        let step = a.probe_every_s * 1_000;
        for (i, st) in beds.iter_mut().enumerate() {
            // A per-bed phase so that probes do not all fall on the same second.
            let mut t = START_UNIX_MS + 1_000 * ((i as i64 * 37) % a.probe_every_s) + step;
            while t <= end {
                st.queries.push(Reverse(t));
                writeln!(probes, "{},{t},grid", i + 1)?;
                n_probes += 1;
                t += step;
            }
        }
    }
    for l in &labels {
        let disturbance = matches!(
            l.kind,
            ScenarioKind::MotionArtifact
                | ScenarioKind::ProbeOff
                | ScenarioKind::TransientCoughOrTurn
        );
        let Some(st) = beds.get_mut((l.bed as usize).wrapping_sub(1)) else {
            continue;
        };
        if !disturbance {
            continue;
        }
        let stop = l.ended_at_unix_ms.unwrap_or(end).min(end);
        let mut t = l.began_at_unix_ms + 1_000;
        while t <= stop {
            st.queries.push(Reverse(t));
            writeln!(probes, "{},{t},label", l.bed)?;
            n_probes += 1;
            t += 5_000;
        }
    }
    probes.flush()?;

    let mut lw = writer(
        &a.out,
        "labels.csv",
        "bed,patient_id,kind,is_deterioration,began_at_unix_ms,ended_at_unix_ms,peak_at_unix_ms,onset_at_unix_ms,should_alarm,expected_priority,device_flagged,description",
    )?;
    for l in &labels {
        writeln!(lw, "{}", label_row(l))?;
    }
    lw.flush()?;

    let mut w = Writers {
        minutes: writer(
            &a.out,
            "minutes.csv",
            "bed,code,minute,value,at_unix_ms,n,n_valid,n_artifact,n_sensor_off",
        )?,
        raw: writer(&a.out, "raw.csv", "bed,code,at_unix_ms,value,flags")?,
        n_minutes: 0,
        n_raw: 0,
    };
    let mut aw = writer(
        &a.out,
        "alarms.csv",
        "bed,at_unix_ms,param,code,value,flags,hard",
    )?;
    let thresholds = ThresholdConfig::default();
    let mut naive_state: HashMap<(u32, VitalParam), bool> = HashMap::new();
    // Whether each (bed, parameter) is beyond a hard limit: entering it is a high-priority alarm of its own.
    let mut hard_state: HashMap<(u32, VitalParam), bool> = HashMap::new();
    let (mut n_alarms, mut n_events, mut n_unused) = (0u64, 0u64, 0u64);

    let mut t = START_UNIX_MS;
    while t < end {
        t = (t + 60_000).min(end);
        for e in sim.advance_to(t) {
            let Payload::Vital(v) = &e.payload else {
                continue;
            };
            n_events += 1;
            let Some(&bed) = bed_of.get(&v.patient_id) else {
                continue;
            };
            let st = &mut beds[(bed - 1) as usize];
            let Ok(s) = Sample::from_vital(v) else {
                n_unused += 1;
                continue;
            };
            let at = s.at_unix_ms;
            // Queries strictly before this sample have all their samples.
            flush_queries(&mut w, bed, st, at - 1)?;

            let slot = &mut st.bins[s.signal.index()];
            let minute = MinuteBin::minute_of(at);
            match slot {
                Some(b) if b.minute == minute => b.add(&s),
                _ => {
                    if let Some(b) = slot.take() {
                        write_bin(&mut w, bed, s.signal, &b)?;
                    }
                    let mut b = MinuteBin::new(minute);
                    b.add(&s);
                    *slot = Some(b);
                }
            }
            if ContinuousSignal::of(s.signal).is_some() {
                st.ring
                    .push_back((s.signal.code(), at, s.value, s.quality.0));
                while st
                    .ring
                    .front()
                    .is_some_and(|r| r.1 <= at - ARTIFACT_WINDOW_MS - 10_000)
                {
                    st.ring.pop_front();
                }
            }

            if let Some((param, out)) = naive_out_of_range(v, st.scale_2, &thresholds) {
                let value = param_of(v).map_or(s.value, |(_, x)| x);
                let l = limits(&thresholds, param, st.scale_2);
                let hard = l.hard_low.is_some_and(|h| value <= h)
                    || l.hard_high.is_some_and(|h| value >= h);
                let was = naive_state.insert((bed, param), out).unwrap_or(false);
                let was_hard = hard_state.insert((bed, param), hard).unwrap_or(false);
                if (out && !was) || (hard && !was_hard) {
                    writeln!(
                        aw,
                        "{bed},{at},{},{},{value},{},{}",
                        param_slug(param),
                        s.signal.code(),
                        s.quality.0,
                        u8::from(hard)
                    )?;
                    n_alarms += 1;
                    if ContinuousSignal::of(s.signal).is_some() {
                        st.queries.push(Reverse(at));
                    }
                }
            }
        }
    }
    for (i, st) in beds.iter_mut().enumerate() {
        let bed = i as u32 + 1;
        flush_queries(&mut w, bed, st, end)?;
        for signal in Signal::ALL {
            if let Some(b) = st.bins[signal.index()].take() {
                write_bin(&mut w, bed, signal, &b)?;
            }
        }
    }
    w.minutes.flush()?;
    w.raw.flush()?;
    aw.flush()?;

    let meta = serde_json::json!({
        "generator": "export_cohort (tests/src/bin/export_cohort.rs)",
        "simulated": true,
        "beds": a.beds,
        "hours": a.hours,
        "seed": a.seed,
        "mix_name": a.mix,
        "mix": {
            "horizon_ms": mix.horizon_ms,
            "sepsis": mix.sepsis,
            "respiratory_failure": mix.respiratory_failure,
            "hypovolaemia": mix.hypovolaemia,
            "drip_sped_up": mix.drip_sped_up,
            "line_occluded": mix.line_occluded,
            "motion_artifact": mix.motion_artifact,
            "probe_off": mix.probe_off,
            "transient_cough_or_turn": mix.transient_cough_or_turn,
            "artifact_flagged_share": mix.artifact_flagged_share,
            "stable_scale2_patients": mix.stable_scale2_patients,
            "prodrome_share": mix.prodrome_share,
            "recurrence_share": mix.recurrence_share,
        },
        "start_unix_ms": START_UNIX_MS,
        "end_unix_ms": end,
        "periods_ms": {
            "vitals": cfg.vitals_period_ms,
            "blood_pressure": cfg.bp_period_ms,
            "temperature": cfg.temp_period_ms,
            "consciousness": cfg.consciousness_period_ms,
            "supplemental_o2": cfg.supplemental_o2_period(),
        },
        "thinning": "minutes.csv: one row per bed, signal and minute (newest valid sample + counts); raw.csv: native period within 120 s before each alarm/probe",
        "rows": {
            "vital_events": n_events,
            "unused_vitals": n_unused,
            "minutes": w.n_minutes,
            "raw": w.n_raw,
            "alarms": n_alarms,
            "probes": n_probes,
            "labels": labels.len(),
        },
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    std::fs::write(
        a.out.join("meta.json"),
        serde_json::to_string_pretty(&meta)?,
    )?;
    eprintln!(
        "export_cohort: {} beds x {} h, seed {}, mix {}: {} vital events, {} minute rows, {} raw rows, {} alarms, {} labels in {:.1} s",
        a.beds,
        a.hours,
        a.seed,
        a.mix,
        n_events,
        w.n_minutes,
        w.n_raw,
        n_alarms,
        labels.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
