//! Where the time of a large searchset Bundle goes, in process, for a patient's whole 24 h (714 Observations in
//! `bench_fhir_search`), both ways the crate can build it:
//! - through JSON values: mapping N vital-sign records (`vital_sign_observation`), wrapping them in a Bundle
//!   (`searchset_bundle`) and serializing it to a string (the cloud's path before session 8);
//! - as JSON text: each record serialized straight from its typed resource (`vital_sign_observation_json`) and
//!   the Bundle rendered around the texts (`searchset_bundle_text`), what the Observation search now runs.
//!
//! ```sh
//! cargo run --release -p wardwatch-fhir --example bundle_cost -- 714 200
//! ```

use std::time::Instant;

use wardwatch_fhir::{
    Coding, DeviceReference, LOINC, MDC, SearchPage, VersionMeta, VitalSignRecord,
    searchset_bundle, searchset_bundle_text, vital_sign_observation, vital_sign_observation_json,
};

/// `(fullUrl, resource)` of each record, mapped with `f`.
fn mapped<R>(
    records: &[VitalSignRecord<'_>],
    f: impl Fn(&VitalSignRecord<'_>) -> Result<R, wardwatch_fhir::FhirError>,
) -> Result<Vec<(String, R)>, wardwatch_fhir::FhirError> {
    records
        .iter()
        .map(|r| Ok((format!("https://x/fhir/Observation/{}", r.id), f(r)?)))
        .collect()
}

/// The one page of the patient's day.
fn page<R>(entries: Vec<(String, R)>) -> SearchPage<R> {
    SearchPage {
        self_url: "https://x/fhir/Observation?patient=MRN-000123".into(),
        next_url: None,
        total: None,
        entries,
        timestamp_unix_ms: 1_795_460_400_123,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(714), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(200), |a| a.parse())?;
    let ids: Vec<String> = (0..n).map(|i| format!("o-{i:08}")).collect();
    let codes = [
        (
            ("8867-4", "Heart rate"),
            ("147842", "MDC_ECG_HEART_RATE"),
            "/min",
            72.0,
        ),
        (
            ("2708-6", "Oxygen saturation"),
            ("150456", "MDC_PULS_OXIM_SAT_O2"),
            "%",
            97.0,
        ),
        (
            ("9279-1", "Respiratory rate"),
            ("151562", "MDC_RESP_RATE"),
            "/min",
            16.0,
        ),
        (
            ("8310-5", "Body temperature"),
            ("150364", "MDC_TEMP_BODY"),
            "Cel",
            36.9,
        ),
    ];
    let records: Vec<VitalSignRecord<'_>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let ((loinc, ld), (mdc, md), unit, value) = codes[i % codes.len()];
            VitalSignRecord {
                id,
                patient_system: "urn:oid:1.2.36.146.595.217.0.1",
                patient_id: "MRN-000123",
                encounter: None,
                device: Some(DeviceReference::DeviceMetric("dev-7a-12.150456")),
                code: vec![
                    Coding {
                        system: LOINC,
                        code: loinc,
                        display: ld,
                    },
                    Coding {
                        system: MDC,
                        code: mdc,
                        display: md,
                    },
                ],
                value: Some(value),
                unit,
                unit_display: unit,
                components: Vec::new(),
                effective_unix_ms: 1_795_460_400_123 + i as i64 * 120_000,
                issued_unix_ms: 1_795_460_402_123 + i as i64 * 120_000,
                quality_flags: Vec::new(),
                value_enumerated: None,
                category: "vital-signs",
                source_lineage: Some("edge-7a/seq/12345"),
            }
        })
        .collect();
    let (mut map, mut wrap, mut ser) = (Vec::new(), Vec::new(), Vec::new());
    let (mut map_text, mut render_text) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    let mut text_bytes = 0;
    let version = VersionMeta {
        version_id: "1",
        last_updated_unix_ms: Some(1_795_460_402_123),
    };
    for _ in 0..rounds {
        let t = Instant::now();
        let entries = mapped(&records, vital_sign_observation)?;
        map.push(t.elapsed());
        let t = Instant::now();
        let bundle = searchset_bundle(page(entries))?;
        wrap.push(t.elapsed());
        let t = Instant::now();
        let s = serde_json::to_string(&bundle)?;
        ser.push(t.elapsed());
        bytes = s.len();

        let t = Instant::now();
        let entries = mapped(&records, |r| vital_sign_observation_json(r, &version))?;
        map_text.push(t.elapsed());
        let t = Instant::now();
        let text = searchset_bundle_text(page(entries), Vec::new(), None)?;
        render_text.push(t.elapsed());
        text_bytes = text.len();
    }
    for (name, v) in [
        ("map", &mut map),
        ("bundle", &mut wrap),
        ("serialize", &mut ser),
        ("map text", &mut map_text),
        ("render", &mut render_text),
    ] {
        v.sort();
        println!(
            "{name:>9}: median {:>7.2} ms  p95 {:>7.2} ms",
            v[v.len() / 2].as_secs_f64() * 1e3,
            v[v.len() * 95 / 100].as_secs_f64() * 1e3
        );
    }
    println!(
        "{n} Observations, {bytes} bytes of JSON through values, {text_bytes} as text (with meta.versionId and \
         meta.lastUpdated)"
    );
    Ok(())
}
