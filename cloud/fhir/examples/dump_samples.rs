//! Print one sample of every resource this crate produces, one JSON document
//! per line, for external validation:
//!
//! ```sh
//! cargo run -p wardwatch-fhir --example dump_samples | python3 cloud/fhir/tests/validate_resources.py
//! ```

use std::io::Write;

use wardwatch_fhir::{
    Coding, DeviceRecord, FhirError, HistoryPage, IssueCode, IssueSeverity, LOINC, MDC,
    ObservationComponent, SNOMED, SearchPage, VersionMeta, VitalSignRecord, device, history_bundle,
    operation_outcome, searchset_bundle, searchset_bundle_with, vital_sign_observation,
    with_version,
};

/// 2026-11-23T19:00:00.123Z
const T0: i64 = 1_795_460_400_123;

fn base<'a>(
    id: &'a str,
    code: Vec<Coding<'a>>,
    value: Option<f64>,
    unit: &'a str,
    unit_display: &'a str,
) -> VitalSignRecord<'a> {
    VitalSignRecord {
        id,
        patient_system: "urn:oid:1.2.36.146.595.217.0.1",
        patient_id: "MRN-000123",
        encounter: Some(wardwatch_fhir::EncounterReference {
            system: "urn:oid:1.2.36.146.595.217.0.2",
            value: "V2026-0042",
            assigner: Some("HOSP"),
        }),
        device: Some(wardwatch_fhir::DeviceReference::DeviceMetric(
            "dev-7a-12.150456",
        )),
        code,
        value,
        unit,
        unit_display,
        components: Vec::new(),
        effective_unix_ms: T0,
        issued_unix_ms: T0 + 2_000,
        quality_flags: Vec::new(),
        value_enumerated: None,
        category: "vital-signs",
        source_lineage: Some("edge-7a/seq/12345"),
    }
}

fn samples() -> Result<Vec<serde_json::Value>, FhirError> {
    let mut out = Vec::new();

    let heart_rate = base(
        "obs-hr-1",
        vec![
            Coding {
                system: LOINC,
                code: "8867-4",
                display: "Heart rate",
            },
            Coding {
                system: MDC,
                code: "147842",
                display: "MDC_ECG_HEART_RATE",
            },
        ],
        Some(72.0),
        "/min",
        "beats/minute",
    );
    out.push(vital_sign_observation(&heart_rate)?);

    let mut spo2 = base(
        "obs-spo2-1",
        vec![
            Coding {
                system: LOINC,
                code: "2708-6",
                display: "Oxygen saturation in Arterial blood",
            },
            Coding {
                system: MDC,
                code: "150456",
                display: "MDC_PULS_OXIM_SAT_O2",
            },
        ],
        Some(97.0),
        "%",
        "%",
    );
    spo2.quality_flags = vec!["artifact", "probe-off"];
    out.push(vital_sign_observation(&spo2)?);

    let resp = base(
        "obs-rr-1",
        vec![
            Coding {
                system: LOINC,
                code: "9279-1",
                display: "Respiratory rate",
            },
            Coding {
                system: MDC,
                code: "151562",
                display: "MDC_RESP_RATE",
            },
        ],
        Some(16.0),
        "/min",
        "breaths/minute",
    );
    out.push(vital_sign_observation(&resp)?);

    let temp = base(
        "obs-temp-1",
        vec![
            Coding {
                system: LOINC,
                code: "8310-5",
                display: "Body temperature",
            },
            Coding {
                system: MDC,
                code: "150364",
                display: "MDC_TEMP_BODY",
            },
        ],
        Some(37.2),
        "Cel",
        "C",
    );
    out.push(vital_sign_observation(&temp)?);

    let mut bp = base(
        "obs-bp-1",
        vec![
            Coding {
                system: LOINC,
                code: "85354-9",
                display: "Blood pressure panel with all children optional",
            },
            Coding {
                system: MDC,
                code: "150020",
                display: "MDC_PRESS_BLD_NONINV",
            },
        ],
        None,
        "",
        "",
    );
    bp.components = vec![
        ObservationComponent {
            code: vec![
                Coding {
                    system: LOINC,
                    code: "8480-6",
                    display: "Systolic blood pressure",
                },
                Coding {
                    system: MDC,
                    code: "150021",
                    display: "MDC_PRESS_BLD_NONINV_SYS",
                },
            ],
            value: 118.0,
            unit: "mm[Hg]",
            unit_display: "mmHg",
        },
        ObservationComponent {
            code: vec![
                Coding {
                    system: LOINC,
                    code: "8462-4",
                    display: "Diastolic blood pressure",
                },
                Coding {
                    system: MDC,
                    code: "150022",
                    display: "MDC_PRESS_BLD_NONINV_DIA",
                },
            ],
            value: 76.0,
            unit: "mm[Hg]",
            unit_display: "mmHg",
        },
    ];
    out.push(vital_sign_observation(&bp)?);

    let mut acvpu = base(
        "obs-acvpu-1",
        vec![Coding {
            system: LOINC,
            code: "67775-7",
            display: "Level of responsiveness",
        }],
        None,
        "",
        "",
    );
    acvpu.category = "exam";
    acvpu.device = None;
    acvpu.value_enumerated = Some(Coding {
        system: SNOMED,
        code: "248234008",
        display: "Mentally alert",
    });
    out.push(vital_sign_observation(&acvpu)?);

    let monitor = device(&DeviceRecord {
        id: "dev-7a-12",
        identifier_system: "urn:wardwatch:device",
        identifier_value: "edge-7a/monitor-12",
        kind_display: "Multi-parameter bedside monitor",
        kind_mdc: Some((69_965, "MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS")),
        manufacturer: Some("Acme Medical"),
        model: Some("VitalView 3"),
        serial: Some("SN-0042"),
        udi: Some("(01)00844588003288(21)SN-0042"),
        location_display: Some("Ward 7A, bed 12"),
        location_id: Some("7A.12"),
        status: "active",
        operational_display: Some("on"),
        last_updated_unix_ms: T0,
    })?;
    out.push(monitor.clone());

    let pump = device(&DeviceRecord {
        id: "dev-7a-pump-3",
        identifier_system: "urn:wardwatch:device",
        identifier_value: "edge-7a/pump-3",
        kind_display: "Infusion pump",
        kind_mdc: None,
        manufacturer: None,
        model: None,
        serial: None,
        udi: None,
        location_display: None,
        location_id: None,
        status: "inactive",
        operational_display: Some("not-ready"),
        last_updated_unix_ms: T0,
    })?;
    out.push(pump);

    let bundle = searchset_bundle(SearchPage {
        self_url: "https://fhir.example.invalid/Observation?patient.identifier=MRN-000123&_count=2".to_owned(),
        next_url: Some(
            "https://fhir.example.invalid/Observation?patient.identifier=MRN-000123&_count=2&_cursor=abc".to_owned(),
        ),
        total: Some(6),
        entries: vec![
            ("https://fhir.example.invalid/Observation/obs-hr-1".to_owned(), out[0].clone()),
            ("https://fhir.example.invalid/Observation/obs-bp-1".to_owned(), out[4].clone()),
            ("https://fhir.example.invalid/Device/dev-7a-12".to_owned(), monitor.clone()),
        ],
        timestamp_unix_ms: T0 + 5_000,
    })?;
    out.push(bundle);

    // Versions: a versioned Device, its history, and a search with the Device included plus a warning.
    let version = |n: &str, ms: i64| {
        with_version(
            monitor.clone(),
            &VersionMeta {
                version_id: n,
                last_updated_unix_ms: Some(ms),
            },
        )
    };
    let v2 = version("2", T0 + 60_000)?;
    out.push(v2.clone());
    out.push(history_bundle(HistoryPage {
        self_url: "https://fhir.example.invalid/Device/dev-7a-12/_history".to_owned(),
        next_url: None,
        total: 2,
        entries: vec![
            (
                "https://fhir.example.invalid/Device/dev-7a-12/_history/2".to_owned(),
                v2.clone(),
            ),
            (
                "https://fhir.example.invalid/Device/dev-7a-12/_history/1".to_owned(),
                version("1", T0)?,
            ),
        ],
        timestamp_unix_ms: T0 + 70_000,
    })?);
    out.push(searchset_bundle_with(
        SearchPage {
            self_url: "https://fhir.example.invalid/Observation?_include=Observation:device"
                .to_owned(),
            next_url: None,
            total: None,
            entries: vec![(
                "https://fhir.example.invalid/Observation/obs-hr-1".to_owned(),
                out[0].clone(),
            )],
            timestamp_unix_ms: T0 + 5_000,
        },
        vec![(
            "https://fhir.example.invalid/Device/dev-7a-12".to_owned(),
            v2,
        )],
        Some(operation_outcome(
            IssueSeverity::Warning,
            IssueCode::Forbidden,
            "sample warning about the search",
        )),
    )?);

    out.push(operation_outcome(
        IssueSeverity::Error,
        IssueCode::NotFound,
        "Observation/obs-missing not found",
    ));
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    for resource in samples()? {
        serde_json::to_writer(&mut lock, &resource)?;
        writeln!(lock)?;
    }
    Ok(())
}
