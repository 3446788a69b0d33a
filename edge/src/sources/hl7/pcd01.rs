//! IHE PCD-01 (Device Enterprise Communication, `ORU^R01^ORU_R01`) → [`RawVital`]s.
//!
//! Mapping:
//! - patient: PID-3 (the repetition whose CX.5 is `MR`, else the first with a CX.1), MRN = CX.1;
//! - location: PV1-3 (PL) — PL.1 point of care is the ward, PL.3 the bed (PL.2, the room, when PL.3 is empty);
//! - encounter: PV1-19 Visit Number (CX) — CX.1 the visit number, CX.4 the assigning authority (HD.1 namespace id,
//!   else HD.2 universal id), optional; empty means "not known". A visit number Wardwatch cannot store (characters
//!   outside `[A-Za-z0-9._-/:]`, more than 64, several repetitions, an authority without a number) refuses the
//!   message with `AE`, like an unusable MRN: its samples would otherwise be filed without their stay;
//! - one observation per OBX: OBX-3 the MDC metric code (`150456^MDC_PULS_OXIM_SAT_O2^MDC`), OBX-4 the
//!   containment path (MDS.VMD.channel.metric), OBX-5 the value (NM), OBX-6 the unit (MDC or UCUM),
//!   OBX-11 the status, OBX-14 the time, OBX-17 the method (`MMEAS` → manual entry), OBX-18 the device (EI.1);
//! - OBX-14 and OBX-18 left empty on a metric row are inherited from the nearest ancestor row in the
//!   containment tree (same OBR), then OBX-14 from OBR-7; OBX-18 from the only device named in the OBR group,
//!   then from MSH-3 (HD.2, the EUI-64, else HD.1). A time without a UTC offset is read as UTC.
//! - non-invasive blood pressure: the rows 150021/150022/150023 under one parent containment become ONE
//!   [`RawVital`] 150020 with components (value = the mean if present); systolic and diastolic are required.
//!   A single `NA` row 150020 (`sys^dia^mean`) is accepted too.
//! - rows that are not measurements are not errors: device/VMD/channel rows (no value type and no value) and
//!   attribute rows with a code Wardwatch does not record and a non-numeric type (`CWE`, `ST`, `DTM` ...) are
//!   ignored; rows with status `X` (cannot be obtained), `N`, `I` or `O` are skipped with a note.
//! - a numeric row with a code Wardwatch does not record, a non-number value (`NaN`, `abc`), a missing unit
//!   or time, or a status `D`/`W` (retractions are not supported) is rejected with a [`Problem`] saying where.

use std::collections::HashMap;

use wardwatch_proto::ids::{AssigningAuthority, DeviceId, Label, PatientId, VisitNumber, WardId};
use wardwatch_proto::metrics::{
    self, MDC_PRESS_BLD_NONINV, MDC_PRESS_BLD_NONINV_DIA, MDC_PRESS_BLD_NONINV_MEAN,
    MDC_PRESS_BLD_NONINV_SYS, ValueKind,
};
use wardwatch_proto::v1::{EncounterId, QualityFlag};

use super::ack::{AckCode, ErrorCode, ErrorLocation, Problem};
use super::parser::{Field, Header, Message, Segment, parse_dtm_unix_ms, parse_nm};
use crate::normalize::RawVital;

/// Containment levels considered (IEEE 11073 trees are MDS.VMD.channel.metric, sometimes with a facet).
const MAX_CONTAINMENT_DEPTH: usize = 16;

/// The patient a group of observations belongs to (one PID and its PV1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientContext {
    /// MRN (PID-3 CX.1).
    pub patient_id: String,
    /// Ward (PV1-3 PL.1).
    pub ward: String,
    /// Bed (PV1-3 PL.3, else PL.2).
    pub bed: String,
    /// The encounter (PV1-19 visit number and its assigning authority), `None` when PV1-19 is empty: carried
    /// onto every sample of this patient so its Observation names the stay it belongs to.
    pub encounter: Option<EncounterId>,
    /// Occurrence of the PID segment in the message.
    pub pid_sequence: usize,
    /// Occurrence of the PV1 segment in the message.
    pub pv1_sequence: usize,
}

/// What became of one OBX row.
#[derive(Debug, Clone, PartialEq)]
pub enum ObxOutcome {
    /// A vital sign (for NBP, the compound: this row is the first of its component rows).
    Vital(RawVital),
    /// An NBP component row carried by the compound vital of the OBX with this index.
    MergedInto(usize),
    /// Refused, with the reason.
    Rejected(Problem),
    /// Not a measurement (status X "cannot be obtained", N, I, O): skipped, with a note.
    Skipped(String),
    /// A device, VMD, channel or attribute row: not a vital and not an error.
    Ignored,
}

/// One OBX row and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// 1-based position of the OBX among the message's OBX segments (its ERR-2 sequence and its key).
    pub obx_index: usize,
    /// What became of it.
    pub outcome: ObxOutcome,
}

/// A decoded PCD-01 message.
#[derive(Debug, Clone, PartialEq)]
pub struct Pcd01Message {
    /// MSH-10.
    pub control_id: String,
    /// MSH-3 as sent (with its components), for idempotency keys.
    pub sending_application: String,
    /// The patients (normally one).
    pub patients: Vec<PatientContext>,
    /// One entry per OBX, in message order.
    pub observations: Vec<Observation>,
}

impl Pcd01Message {
    /// The vitals with their OBX index: `(obx_index, Ok(vital))` or `(obx_index, Err(reason))` for every
    /// OBX that is a vital or was rejected (skipped, ignored and merged rows are left out).
    pub fn results(&self) -> Vec<(usize, Result<&RawVital, &Problem>)> {
        self.observations
            .iter()
            .filter_map(|o| match &o.outcome {
                ObxOutcome::Vital(v) => Some((o.obx_index, Ok(v))),
                ObxOutcome::Rejected(p) => Some((o.obx_index, Err(p))),
                _ => None,
            })
            .collect()
    }
}

/// Why a message as a whole was refused: MSA-1 `AR` (cannot or will not process it at all) or `AE` (content
/// errors that leave nothing usable), with one problem per ERR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRejection {
    /// `Reject` or `Error`.
    pub ack: AckCode,
    /// What is wrong.
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for MessageRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msgs: Vec<&str> = self.problems.iter().map(|p| p.message.as_str()).collect();
        write!(f, "{}: {}", self.ack.as_str(), msgs.join("; "))
    }
}

fn reject(
    ack: AckCode,
    location: Option<ErrorLocation>,
    code: ErrorCode,
    msg: impl Into<String>,
) -> MessageRejection {
    MessageRejection {
        ack,
        problems: vec![Problem::error(location, code, msg)],
    }
}

/// Checks the header: an ORU^R01, with a control id, production processing, an HL7 v2 version.
pub fn check_header(h: &Header) -> Result<(), MessageRejection> {
    let loc = |f| Some(ErrorLocation::field("MSH", 1, f));
    let ty = format!("{}^{}", h.message_code, h.trigger_event);
    if h.message_code.is_empty() {
        return Err(reject(
            AckCode::Reject,
            loc(9),
            ErrorCode::RequiredFieldMissing,
            "MSH-9 (message type) is empty: this interface accepts ORU^R01 (IHE PCD-01) only",
        ));
    }
    if h.message_code != "ORU" {
        return Err(reject(
            AckCode::Reject,
            loc(9),
            ErrorCode::UnsupportedMessageType,
            format!(
                "message type {ty} is not supported: this interface accepts ORU^R01 (IHE PCD-01) only"
            ),
        ));
    }
    if h.trigger_event != "R01" {
        return Err(reject(
            AckCode::Reject,
            loc(9),
            ErrorCode::UnsupportedEventCode,
            format!(
                "trigger event {ty} is not supported: this interface accepts ORU^R01 (IHE PCD-01) only"
            ),
        ));
    }
    if !h.message_structure.is_empty() && h.message_structure != "ORU_R01" {
        return Err(reject(
            AckCode::Reject,
            loc(9),
            ErrorCode::UnsupportedMessageType,
            format!("message structure {} is not ORU_R01", h.message_structure),
        ));
    }
    if h.control_id.is_empty() {
        return Err(reject(
            AckCode::Reject,
            loc(10),
            ErrorCode::RequiredFieldMissing,
            "MSH-10 (message control id) is empty: it is needed to acknowledge the message and to recognise a resend",
        ));
    }
    if !(h.processing_id.is_empty() || h.processing_id == "P") {
        return Err(reject(
            AckCode::Reject,
            loc(11),
            ErrorCode::UnsupportedProcessingId,
            format!(
                "processing id {:?} is not supported: this edge stores production (P) patient data only",
                h.processing_id
            ),
        ));
    }
    if !(h.version.is_empty() || h.version.starts_with("2.")) {
        return Err(reject(
            AckCode::Reject,
            loc(12),
            ErrorCode::UnsupportedVersionId,
            format!(
                "HL7 version {:?} is not supported (2.x expected)",
                h.version
            ),
        ));
    }
    Ok(())
}

struct Group<'m, 'a> {
    pid: &'m Segment<'a>,
    pv1: Option<&'m Segment<'a>>,
}

/// One OBX row with what the decoder needs from it.
struct Row<'m, 'a> {
    seg: &'m Segment<'a>,
    idx: usize,
    group: usize,
    obr: Option<&'m Segment<'a>>,
    obr_key: usize,
    path: Vec<String>,
    containment: String,
}

#[derive(Debug, Clone)]
enum Code {
    Missing,
    Mdc(u32, String),
    Other(String),
}

/// A numeric measurement read from one row.
#[derive(Debug, Clone)]
struct Measured {
    value: f64,
    unit: String,
    time_ms: i64,
    device: String,
    quality: Vec<QualityFlag>,
}

/// Decodes a parsed message. `Err` when the message as a whole cannot be used (see [`MessageRejection`]);
/// otherwise every OBX has an [`ObxOutcome`].
pub fn decode(msg: &Message<'_>) -> Result<Pcd01Message, MessageRejection> {
    let Some(msh) = msg.msh() else {
        return Err(reject(
            AckCode::Reject,
            Some(ErrorLocation::segment("MSH", 1)),
            ErrorCode::SegmentSequence,
            "no MSH segment",
        ));
    };
    let header = msg.header();
    check_header(&header)?;

    let mut groups: Vec<Group<'_, '_>> = Vec::new();
    let mut rows: Vec<Row<'_, '_>> = Vec::new();
    let mut problems: Vec<Problem> = Vec::new();
    let mut obr: Option<&Segment<'_>> = None;
    let mut obr_key = 0usize;
    for seg in msg.segments() {
        match seg.id() {
            "PID" => {
                groups.push(Group {
                    pid: seg,
                    pv1: None,
                });
                obr = None;
            }
            "PV1" => match groups.last_mut() {
                Some(g) if g.pv1.is_none() && obr.is_none() => g.pv1 = Some(seg),
                _ => problems.push(Problem::error(
                    Some(ErrorLocation::segment("PV1", seg.occurrence())),
                    ErrorCode::SegmentSequence,
                    "PV1 out of place: it must follow its PID, before the OBR/OBX segments",
                )),
            },
            "OBR" => {
                obr = Some(seg);
                obr_key += 1;
            }
            "OBX" => {
                let containment = seg.field(4).text().trim().to_string();
                let path = normalized_path(&containment);
                match groups.len().checked_sub(1) {
                    Some(group) => rows.push(Row {
                        seg,
                        idx: seg.occurrence(),
                        group,
                        obr,
                        obr_key,
                        path,
                        containment,
                    }),
                    None => {
                        if msg.first("PID").is_some() {
                            problems.push(Problem::error(
                                Some(ErrorLocation::segment("OBX", seg.occurrence())),
                                ErrorCode::SegmentSequence,
                                format!(
                                    "OBX {} comes before any PID: its patient is unknown",
                                    seg.occurrence()
                                ),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if groups.is_empty() {
        problems.push(Problem::error(
            Some(ErrorLocation::segment("PID", 1)),
            ErrorCode::SegmentSequence,
            "PID segment missing: the patient is unknown, so no observation of this message was stored",
        ));
    }
    if msg.first("OBX").is_none() {
        problems.push(Problem::error(
            Some(ErrorLocation::segment("OBX", 1)),
            ErrorCode::SegmentSequence,
            "no OBX segment: the message carries no observation",
        ));
    }
    let mut patients = Vec::new();
    for g in &groups {
        match patient_context(g) {
            Ok(p) => patients.push(p),
            Err(mut ps) => problems.append(&mut ps),
        }
    }
    if !problems.is_empty() {
        return Err(MessageRejection {
            ack: AckCode::Error,
            problems,
        });
    }

    let msh_device = msh_device(msh);
    let index = Index::build(&rows);
    let mut nbp_keys: HashMap<(usize, usize, String), usize> = HashMap::new();
    let mut outcomes: Vec<Option<ObxOutcome>> = vec![None; rows.len()];
    // NBP component rows by (patient group, OBR, parent containment): (row position, code, measurement).
    type NbpRow = (usize, u32, Result<Measured, Problem>);
    let mut nbp: Vec<((usize, usize, String), Vec<NbpRow>)> = Vec::new();

    for (pos, row) in rows.iter().enumerate() {
        let Some(patient) = patients.get(row.group) else {
            continue;
        };
        let seg = row.seg;
        let i = row.idx;
        let vt = seg.field(2).text().trim().to_ascii_uppercase();
        let value_empty = seg.field(5).is_empty();
        let status = seg.field(11).text().trim().to_ascii_uppercase();
        let code = obx_code(seg.field(3));
        let label = match &code {
            Code::Mdc(c, text) if !text.is_empty() => format!("{c} {text}"),
            Code::Mdc(c, _) => c.to_string(),
            Code::Other(l) => l.clone(),
            Code::Missing => "no code".to_string(),
        };
        let at = |f: usize| Some(ErrorLocation::field("OBX", i, f));
        let rejected = |f: usize, code: ErrorCode, msg: String| {
            ObxOutcome::Rejected(Problem::error(
                at(f),
                code,
                format!("OBX {i} ({label}): {msg}"),
            ))
        };
        if vt.is_empty() && value_empty {
            outcomes[pos] = Some(ObxOutcome::Ignored);
            continue;
        }
        match status.as_str() {
            "" | "F" | "R" | "C" | "P" | "S" | "U" => {}
            "X" | "N" | "I" | "O" => {
                let meaning = match status.as_str() {
                    "X" => "result cannot be obtained",
                    "N" => "not asked",
                    "I" => "in process, no result yet",
                    _ => "order detail, no result",
                };
                outcomes[pos] = Some(ObxOutcome::Skipped(format!(
                    "OBX {i} ({label}): status {status} ({meaning}): not a measurement, skipped"
                )));
                continue;
            }
            "D" | "W" => {
                outcomes[pos] = Some(rejected(
                    11,
                    ErrorCode::TableValueNotFound,
                    format!(
                        "result status {status} (delete / wrong) is not supported: Wardwatch does not retract stored observations"
                    ),
                ));
                continue;
            }
            other => {
                outcomes[pos] = Some(rejected(
                    11,
                    ErrorCode::TableValueNotFound,
                    format!("result status {other:?} is not in HL7 table 0085"),
                ));
                continue;
            }
        }
        let numeric_type = matches!(vt.as_str(), "NM" | "NA" | "SN");
        let (mdc, metric) = match &code {
            Code::Missing => {
                outcomes[pos] = Some(if value_empty {
                    ObxOutcome::Ignored
                } else {
                    rejected(
                        3,
                        ErrorCode::RequiredFieldMissing,
                        "observation identifier (OBX-3) is empty".into(),
                    )
                });
                continue;
            }
            Code::Other(l) => {
                outcomes[pos] = Some(if numeric_type {
                    rejected(
                        3,
                        ErrorCode::TableValueNotFound,
                        format!(
                            "{l} is not an MDC (IEEE 11073-10101) code: Wardwatch records MDC metrics"
                        ),
                    )
                } else {
                    ObxOutcome::Ignored
                });
                continue;
            }
            Code::Mdc(c, _) => match metrics::by_mdc(*c) {
                Some(m) => (*c, m),
                None => {
                    outcomes[pos] = Some(if numeric_type {
                        rejected(
                            3,
                            ErrorCode::TableValueNotFound,
                            format!("MDC code {c} is not a metric Wardwatch records"),
                        )
                    } else {
                        ObxOutcome::Ignored
                    });
                    continue;
                }
            },
        };
        if vt.is_empty() {
            outcomes[pos] = Some(rejected(
                2,
                ErrorCode::RequiredFieldMissing,
                "value type (OBX-2) is empty but OBX-5 has a value".into(),
            ));
            continue;
        }
        let ctx = Ctx {
            rows: &rows,
            row,
            pos,
            index: &index,
            msh_device: &msh_device,
        };
        let base = RawVital {
            patient_id: patient.patient_id.clone(),
            ward: patient.ward.clone(),
            bed: patient.bed.clone(),
            metric_mdc: mdc,
            encounter: patient.encounter.clone(),
            ..Default::default()
        };
        match metric.kind {
            ValueKind::Numeric => {
                let m = ctx.measured(&vt, metric.mdc_ref, &label);
                if metrics::components_of(MDC_PRESS_BLD_NONINV)
                    .iter()
                    .any(|(c, _)| *c == mdc)
                {
                    let key = (row.group, row.obr_key, parent_containment(&row.containment));
                    match nbp_keys.get(&key).and_then(|k| nbp.get_mut(*k)) {
                        Some((_, members)) => members.push((pos, mdc, m)),
                        None => {
                            nbp_keys.insert(key.clone(), nbp.len());
                            nbp.push((key, vec![(pos, mdc, m)]));
                        }
                    }
                    continue;
                }
                outcomes[pos] = Some(match m {
                    Ok(m) => ObxOutcome::Vital(RawVital {
                        device_id: m.device,
                        value: m.value,
                        unit: m.unit,
                        measured_at_unix_ms: m.time_ms,
                        quality: m.quality,
                        ..base
                    }),
                    Err(p) => ObxOutcome::Rejected(p),
                });
            }
            ValueKind::Compound => {
                if vt != "NA" {
                    outcomes[pos] = Some(if value_empty {
                        ObxOutcome::Ignored
                    } else {
                        rejected(
                            2,
                            ErrorCode::DataType,
                            format!(
                                "value type {vt} cannot carry compound {}: send its components as NM rows (or one NA row)",
                                metric.mdc_ref
                            ),
                        )
                    });
                    continue;
                }
                outcomes[pos] = Some(match ctx.compound_na(&label) {
                    Ok((m, components)) => ObxOutcome::Vital(RawVital {
                        device_id: m.device,
                        value: m.value,
                        unit: m.unit,
                        measured_at_unix_ms: m.time_ms,
                        quality: m.quality,
                        components,
                        ..base
                    }),
                    Err(p) => ObxOutcome::Rejected(p),
                });
            }
            ValueKind::Enumerated => {
                if !matches!(
                    vt.as_str(),
                    "ST" | "CWE" | "CE" | "CNE" | "TX" | "IS" | "ID"
                ) {
                    outcomes[pos] = Some(rejected(
                        2,
                        ErrorCode::DataType,
                        format!(
                            "value type {vt} cannot carry the coded value of {}",
                            metric.mdc_ref
                        ),
                    ));
                    continue;
                }
                let value = seg.field(5).component(1).text().trim().to_string();
                if value.is_empty() {
                    outcomes[pos] = Some(rejected(
                        5,
                        ErrorCode::RequiredFieldMissing,
                        "no value".into(),
                    ));
                    continue;
                }
                outcomes[pos] = Some(match (ctx.time(&label), ctx.device(&label)) {
                    (Ok(t), Ok(d)) => ObxOutcome::Vital(RawVital {
                        device_id: d,
                        enumerated: Some(value),
                        measured_at_unix_ms: t,
                        quality: ctx.quality(),
                        ..base
                    }),
                    (Err(p), _) | (_, Err(p)) => ObxOutcome::Rejected(p),
                });
            }
        }
    }

    for ((group, _, parent), members) in nbp {
        let Some(patient) = patients.get(group) else {
            continue;
        };
        let group_outcomes = nbp_group(&rows, patient, &parent, members);
        for (pos, outcome) in group_outcomes {
            if let Some(slot) = outcomes.get_mut(pos) {
                *slot = Some(outcome);
            }
        }
    }

    let observations = rows
        .iter()
        .zip(outcomes)
        .map(|(row, o)| Observation {
            obx_index: row.idx,
            outcome: o.unwrap_or(ObxOutcome::Ignored),
        })
        .collect();
    Ok(Pcd01Message {
        control_id: header.control_id.clone(),
        sending_application: header.sending_application_raw.clone(),
        patients,
        observations,
    })
}

fn component_name(code: u32) -> &'static str {
    match code {
        MDC_PRESS_BLD_NONINV_SYS => "systolic",
        MDC_PRESS_BLD_NONINV_DIA => "diastolic",
        MDC_PRESS_BLD_NONINV_MEAN => "mean",
        _ => "component",
    }
}

/// Turns the component rows of one NBP measurement into one compound vital (or a reason per row).
fn nbp_group(
    rows: &[Row<'_, '_>],
    patient: &PatientContext,
    parent: &str,
    members: Vec<(usize, u32, Result<Measured, Problem>)>,
) -> Vec<(usize, ObxOutcome)> {
    let idx_of = |pos: usize| rows.get(pos).map(|r| r.idx).unwrap_or(0);
    let mut out = Vec::new();
    let mut good: Vec<(usize, u32, Measured)> = Vec::new();
    for (pos, code, m) in members {
        match m {
            Err(p) => out.push((pos, ObxOutcome::Rejected(p))),
            Ok(m) => {
                if let Some((first, _, _)) = good.iter().find(|(_, c, _)| *c == code) {
                    out.push((
                        pos,
                        ObxOutcome::Rejected(Problem::error(
                            Some(ErrorLocation::field("OBX", idx_of(pos), 3)),
                            ErrorCode::DataType,
                            format!(
                                "OBX {}: a second NBP {} under containment {parent:?} (the first is OBX {})",
                                idx_of(pos),
                                component_name(code),
                                idx_of(*first)
                            ),
                        )),
                    ));
                } else {
                    good.push((pos, code, m));
                }
            }
        }
    }
    let find = |code: u32| good.iter().find(|(_, c, _)| *c == code);
    let missing: Vec<&str> = [MDC_PRESS_BLD_NONINV_SYS, MDC_PRESS_BLD_NONINV_DIA]
        .into_iter()
        .filter(|c| find(*c).is_none())
        .map(component_name)
        .collect();
    let units_differ = good.windows(2).any(|w| match w {
        [a, b] => a.2.unit != b.2.unit,
        _ => false,
    });
    if !missing.is_empty() || units_differ {
        for (pos, code, _) in &good {
            let why = if missing.is_empty() {
                "the components of this NBP measurement use different units".to_string()
            } else {
                format!(
                    "the {} of the same NBP measurement (containment {parent:?}) is missing or was rejected, and an NBP needs systolic and diastolic",
                    missing.join(" and ")
                )
            };
            let (field, code_err) = if missing.is_empty() {
                (Some(6), ErrorCode::DataType)
            } else {
                (None, ErrorCode::RequiredFieldMissing)
            };
            out.push((
                *pos,
                ObxOutcome::Rejected(Problem::error(
                    Some(ErrorLocation {
                        segment: "OBX".into(),
                        sequence: idx_of(*pos),
                        field,
                        component: None,
                    }),
                    code_err,
                    format!(
                        "OBX {}: NBP {} not stored: {why}",
                        idx_of(*pos),
                        component_name(*code)
                    ),
                )),
            ));
        }
        return out;
    }
    let (Some(sys), Some(holder)) = (
        find(MDC_PRESS_BLD_NONINV_SYS),
        good.iter().map(|(p, _, _)| *p).min(),
    ) else {
        return out;
    };
    let mut components = Vec::new();
    for code in [
        MDC_PRESS_BLD_NONINV_SYS,
        MDC_PRESS_BLD_NONINV_DIA,
        MDC_PRESS_BLD_NONINV_MEAN,
    ] {
        if let Some((_, _, m)) = find(code) {
            components.push((code, m.value));
        }
    }
    let mut quality: Vec<QualityFlag> = Vec::new();
    for (_, _, m) in &good {
        for q in &m.quality {
            if !quality.contains(q) {
                quality.push(*q);
            }
        }
    }
    let vital = RawVital {
        patient_id: patient.patient_id.clone(),
        ward: patient.ward.clone(),
        bed: patient.bed.clone(),
        device_id: sys.2.device.clone(),
        metric_mdc: MDC_PRESS_BLD_NONINV,
        value: find(MDC_PRESS_BLD_NONINV_MEAN)
            .map(|m| m.2.value)
            .unwrap_or(0.0),
        unit: sys.2.unit.clone(),
        components,
        enumerated: None,
        measured_at_unix_ms: sys.2.time_ms,
        quality,
        encounter: patient.encounter.clone(),
    };
    let holder_idx = idx_of(holder);
    for (pos, _, _) in &good {
        if *pos == holder {
            out.push((*pos, ObxOutcome::Vital(vital.clone())));
        } else {
            out.push((*pos, ObxOutcome::MergedInto(holder_idx)));
        }
    }
    out
}

/// Per-message lookup tables, built once so each row's inheritance costs a few hash lookups (a message at
/// the size limit can hold tens of thousands of OBX rows).
struct Index {
    /// Per row position: OBX-14 text and OBX-18 EI.1, trimmed.
    attrs: Vec<(String, String)>,
    /// (patient group, OBR, normalized path) → row positions with that path.
    by_path: HashMap<(usize, usize, Vec<String>), Vec<usize>>,
    /// (patient group, OBR) → the one device named by OBX-18 in it (with the row index), `None` if several.
    group_device: HashMap<(usize, usize), Option<(String, usize)>>,
}

impl Index {
    fn build(rows: &[Row<'_, '_>]) -> Self {
        let attrs: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                (
                    r.seg.field(14).text().trim().to_string(),
                    r.seg.field(18).component(1).text().trim().to_string(),
                )
            })
            .collect();
        let mut by_path: HashMap<(usize, usize, Vec<String>), Vec<usize>> = HashMap::new();
        let mut group_device: HashMap<(usize, usize), Option<(String, usize)>> = HashMap::new();
        for (pos, r) in rows.iter().enumerate() {
            if !r.path.is_empty() {
                by_path
                    .entry((r.group, r.obr_key, r.path.clone()))
                    .or_default()
                    .push(pos);
            }
            let device = attrs.get(pos).map(|a| a.1.as_str()).unwrap_or("");
            if !device.is_empty() {
                group_device
                    .entry((r.group, r.obr_key))
                    .and_modify(|d| {
                        if d.as_ref().is_some_and(|(x, _)| x != device) {
                            *d = None;
                        }
                    })
                    .or_insert_with(|| Some((device.to_string(), r.idx)));
            }
        }
        Self {
            attrs,
            by_path,
            group_device,
        }
    }
}

/// Lookups for one row: its own fields, then its ancestors', then the OBR/MSH.
struct Ctx<'r, 'm, 'a> {
    rows: &'r [Row<'m, 'a>],
    row: &'r Row<'m, 'a>,
    pos: usize,
    index: &'r Index,
    msh_device: &'r Option<(String, ErrorLocation)>,
}

impl Ctx<'_, '_, '_> {
    /// The nearest row of the same OBR that contains this row and has a non-empty attribute (`pick`):
    /// (attribute, that row's OBX index).
    fn inherited(&self, pick: fn(&(String, String)) -> &String) -> Option<(String, usize)> {
        let path = &self.row.path;
        for len in (1..path.len()).rev() {
            let key = (
                self.row.group,
                self.row.obr_key,
                path.get(..len).unwrap_or(&[]).to_vec(),
            );
            for &c in self
                .index
                .by_path
                .get(&key)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                if let (Some(a), Some(r)) = (self.index.attrs.get(c), self.rows.get(c)) {
                    let v = pick(a);
                    if !v.is_empty() {
                        return Some((v.clone(), r.idx));
                    }
                }
            }
        }
        None
    }

    fn own(&self, pick: fn(&(String, String)) -> &String) -> String {
        self.index
            .attrs
            .get(self.pos)
            .map(|a| pick(a).clone())
            .unwrap_or_default()
    }

    fn at(&self, f: usize) -> Option<ErrorLocation> {
        Some(ErrorLocation::field("OBX", self.row.idx, f))
    }

    fn time(&self, label: &str) -> Result<i64, Problem> {
        let i = self.row.idx;
        let own = self.own(|a| &a.0);
        let (text, loc) = if !own.is_empty() {
            (own, ErrorLocation::field("OBX", i, 14))
        } else if let Some((t, idx)) = self.inherited(|a| &a.0) {
            (t, ErrorLocation::field("OBX", idx, 14))
        } else if let Some(obr) = self
            .row
            .obr
            .filter(|o| !o.field(7).text().trim().is_empty())
        {
            (
                obr.field(7).text(),
                ErrorLocation::field("OBR", obr.occurrence(), 7),
            )
        } else {
            return Err(Problem::error(
                self.at(14),
                ErrorCode::RequiredFieldMissing,
                format!(
                    "OBX {i} ({label}): no observation time (OBX-14, its parent rows' OBX-14 and OBR-7 are empty)"
                ),
            ));
        };
        match parse_dtm_unix_ms(&text) {
            Ok(ms) if ms > 0 => Ok(ms),
            Ok(_) => Err(Problem::error(
                Some(loc),
                ErrorCode::DataType,
                format!("OBX {i} ({label}): observation time {text:?} is before 1970"),
            )),
            Err(e) => Err(Problem::error(
                Some(loc),
                ErrorCode::DataType,
                format!("OBX {i} ({label}): observation time {e}"),
            )),
        }
    }

    fn device(&self, label: &str) -> Result<String, Problem> {
        let i = self.row.idx;
        let own = self.own(|a| &a.1);
        let (id, loc) = if !own.is_empty() {
            (own, ErrorLocation::field("OBX", i, 18))
        } else if let Some((d, idx)) = self.inherited(|a| &a.1) {
            (d, ErrorLocation::field("OBX", idx, 18))
        } else {
            let only = self
                .index
                .group_device
                .get(&(self.row.group, self.row.obr_key))
                .cloned()
                .flatten();
            match (only, self.msh_device) {
                (Some((d, idx)), _) => (d, ErrorLocation::field("OBX", idx, 18)),
                (None, Some((d, loc))) => (d.clone(), loc.clone()),
                (None, None) => {
                    return Err(Problem::error(
                        self.at(18),
                        ErrorCode::RequiredFieldMissing,
                        format!(
                            "OBX {i} ({label}): no device identifier (OBX-18, its parent rows' OBX-18 and MSH-3 are empty)"
                        ),
                    ));
                }
            }
        };
        match DeviceId::new(id.clone()) {
            Ok(_) => Ok(id),
            Err(e) => Err(Problem::error(
                Some(loc),
                ErrorCode::DataType,
                format!(
                    "OBX {i} ({label}): device identifier {id:?} is not usable: {}",
                    e.why
                ),
            )),
        }
    }

    fn quality(&self) -> Vec<QualityFlag> {
        let manual = self
            .row
            .seg
            .field(17)
            .repetitions()
            .iter()
            .any(|r| r.component(1).text().trim().eq_ignore_ascii_case("MMEAS"));
        if manual {
            vec![QualityFlag::ManualEntry]
        } else {
            Vec::new()
        }
    }

    fn unit(&self, label: &str, mdc_ref: &str) -> Result<String, Problem> {
        let u = unit_of(self.row.seg.field(6));
        if u.is_empty() {
            return Err(Problem::error(
                self.at(6),
                ErrorCode::RequiredFieldMissing,
                format!(
                    "OBX {} ({label}): no unit (OBX-6) for {mdc_ref}",
                    self.row.idx
                ),
            ));
        }
        Ok(u)
    }

    /// A single NM value with its unit, time and device.
    fn measured(&self, vt: &str, mdc_ref: &str, label: &str) -> Result<Measured, Problem> {
        let i = self.row.idx;
        if vt != "NM" {
            return Err(Problem::error(
                self.at(2),
                ErrorCode::DataType,
                format!("OBX {i} ({label}): value type {vt} cannot carry {mdc_ref} (NM expected)"),
            ));
        }
        let f5 = self.row.seg.field(5);
        if f5.is_empty() {
            return Err(Problem::error(
                self.at(5),
                ErrorCode::RequiredFieldMissing,
                format!("OBX {i} ({label}): no value (OBX-5)"),
            ));
        }
        let raw = f5.text();
        let value = parse_nm(&raw).ok_or_else(|| {
            Problem::error(
                self.at(5),
                ErrorCode::DataType,
                format!("OBX {i} ({label}): value {raw:?} is not a number (HL7 NM)"),
            )
        })?;
        Ok(Measured {
            value,
            unit: self.unit(label, mdc_ref)?,
            time_ms: self.time(label)?,
            device: self.device(label)?,
            quality: self.quality(),
        })
    }

    /// A compound NBP sent as one NA row `sys^dia[^mean]`.
    fn compound_na(&self, label: &str) -> Result<(Measured, Vec<(u32, f64)>), Problem> {
        let i = self.row.idx;
        let f5 = self.row.seg.field(5);
        let mut components = Vec::new();
        let mut mean = 0.0;
        for (n, code) in [
            MDC_PRESS_BLD_NONINV_SYS,
            MDC_PRESS_BLD_NONINV_DIA,
            MDC_PRESS_BLD_NONINV_MEAN,
        ]
        .into_iter()
        .enumerate()
        {
            let raw = f5.component(n + 1).text();
            if raw.trim().is_empty() {
                if code == MDC_PRESS_BLD_NONINV_MEAN {
                    continue;
                }
                return Err(Problem::error(
                    self.at(5),
                    ErrorCode::RequiredFieldMissing,
                    format!(
                        "OBX {i} ({label}): the NA value has no {} (component {})",
                        component_name(code),
                        n + 1
                    ),
                ));
            }
            let v = parse_nm(&raw).ok_or_else(|| {
                Problem::error(
                    Some(ErrorLocation::field("OBX", i, 5).with_component(n + 1)),
                    ErrorCode::DataType,
                    format!(
                        "OBX {i} ({label}): {} {raw:?} is not a number",
                        component_name(code)
                    ),
                )
            })?;
            if code == MDC_PRESS_BLD_NONINV_MEAN {
                mean = v;
            }
            components.push((code, v));
        }
        let m = Measured {
            value: mean,
            unit: self.unit(label, "MDC_PRESS_BLD_NONINV")?,
            time_ms: self.time(label)?,
            device: self.device(label)?,
            quality: self.quality(),
        };
        Ok((m, components))
    }
}

/// The unit to hand to normalization: for an MDC-coded unit its reference id (`MDC_DIM_DEGC`, which the
/// normalizer knows for every supported unit), else the identifier (UCUM such as `/min`, `mm[Hg]`, `Cel`).
fn unit_of(f: Field<'_>) -> String {
    let id = f.component(1).text().trim().to_string();
    let text = f.component(2).text().trim().to_string();
    let system = f.component(3).text().trim().to_ascii_uppercase();
    if system == "MDC" && !text.is_empty() {
        text
    } else if !id.is_empty() {
        id
    } else {
        text
    }
}

fn obx_code(f: Field<'_>) -> Code {
    let try_triplet = |id_n: usize| -> Option<Code> {
        let id = f.component(id_n).text().trim().to_string();
        let text = f.component(id_n + 1).text().trim().to_string();
        let system = f.component(id_n + 2).text().trim().to_ascii_uppercase();
        let mdc_like = system == "MDC"
            || (system.is_empty()
                && (text.starts_with("MDC_") || id.bytes().all(|b| b.is_ascii_digit())));
        if id.is_empty() && text.is_empty() {
            return None;
        }
        if !mdc_like {
            return Some(Code::Other(format!("{id}^{text}^{system}")));
        }
        if let Ok(n) = id.parse::<u32>() {
            return Some(Code::Mdc(n, text));
        }
        // Some senders put the reference id where the code belongs.
        let by_ref = |r: &str| {
            metrics::METRICS
                .iter()
                .find(|m| m.mdc_ref == r)
                .map(|m| m.mdc)
        };
        match by_ref(&id).or_else(|| by_ref(&text)) {
            Some(n) => Some(Code::Mdc(n, text)),
            None => Some(Code::Other(format!("{id}^{text}^{system}"))),
        }
    };
    match try_triplet(1) {
        Some(Code::Mdc(n, t)) => Code::Mdc(n, t),
        primary => match try_triplet(4) {
            Some(Code::Mdc(n, t)) => Code::Mdc(n, t),
            _ => primary.unwrap_or(Code::Missing),
        },
    }
}

/// The containment path with trailing zero levels dropped (`1.13.1.0` → `1.13.1`), so rows written as
/// `1.0.0.0`-style headers (MDS/VMD/channel) and as short paths (`1`, `1.0.1`) are both ancestors.
fn normalized_path(containment: &str) -> Vec<String> {
    if containment.is_empty() {
        return Vec::new();
    }
    let mut parts: Vec<String> = containment
        .split('.')
        .take(MAX_CONTAINMENT_DEPTH)
        .map(|p| p.trim().to_string())
        .collect();
    while parts.len() > 1 && parts.last().is_some_and(|p| p == "0") {
        parts.pop();
    }
    parts
}

/// The parent of a metric's containment path (`1.0.1.3` → `1.0.1`); empty when there is none.
fn parent_containment(containment: &str) -> String {
    containment
        .rsplit_once('.')
        .map(|(p, _)| p.to_string())
        .unwrap_or_default()
}

fn msh_device(msh: &Segment<'_>) -> Option<(String, ErrorLocation)> {
    let f = msh.field(3);
    let hd2 = f.component(2).text().trim().to_string();
    let hd1 = f.component(1).text().trim().to_string();
    if !hd2.is_empty() {
        Some((hd2, ErrorLocation::field("MSH", 1, 3).with_component(2)))
    } else if !hd1.is_empty() {
        Some((hd1, ErrorLocation::field("MSH", 1, 3).with_component(1)))
    } else {
        None
    }
}

/// Longest PV1-19 (all of it, as sent) looked at: a visit number and its authority fit in far less, and a longer
/// field is refused without being decoded.
const MAX_PV1_19_BYTES: usize = 512;

/// PV1-19 Visit Number (CX): CX.1 the number, CX.4 the assigning authority (HD.1, else HD.2). `Ok(None)` when the
/// field is empty (the encounter is not known); `Err` with the reason when it cannot be stored as it is.
fn visit_number(pv1: &Segment<'_>) -> Result<Option<EncounterId>, Problem> {
    let seq = pv1.occurrence();
    let field = pv1.field(19);
    let loc = |c: Option<usize>| {
        let l = ErrorLocation::field("PV1", seq, 19);
        Some(match c {
            Some(c) => l.with_component(c),
            None => l,
        })
    };
    let refuse = |c: Option<usize>, code: ErrorCode, why: String| {
        Problem::error(
            loc(c),
            code,
            format!("PV1-19 (visit number) {why}: no observation of this message was stored"),
        )
    };
    if field.raw().len() > MAX_PV1_19_BYTES {
        return Err(refuse(
            None,
            ErrorCode::DataType,
            format!(
                "is {} bytes long, more than the {MAX_PV1_19_BYTES} accepted",
                field.raw().len()
            ),
        ));
    }
    if field.is_empty() {
        return Ok(None);
    }
    let reps: Vec<_> = field
        .repetitions()
        .into_iter()
        .filter(|r| !r.is_empty())
        .collect();
    let cx = match reps.as_slice() {
        [] => return Ok(None),
        [one] => one,
        _ => {
            return Err(refuse(
                None,
                ErrorCode::DataType,
                format!(
                    "has {} repetitions: a patient visit has one visit number",
                    reps.len()
                ),
            ));
        }
    };
    let number = cx.component(1).text().trim().to_string();
    let hd = cx.component(4);
    let authority = [hd.sub(1), hd.sub(2)]
        .into_iter()
        .map(|t| t.trim().to_string())
        .find(|t| !t.is_empty())
        .unwrap_or_default();
    if number.is_empty() {
        if authority.is_empty() {
            return Ok(None);
        }
        return Err(refuse(
            Some(1),
            ErrorCode::RequiredFieldMissing,
            format!("names an assigning authority ({authority:?}) but no ID number (CX.1)"),
        ));
    }
    if let Err(e) = VisitNumber::new(number.clone()) {
        return Err(refuse(
            Some(1),
            ErrorCode::DataType,
            format!(
                "{:?} is not usable ({})",
                number.chars().take(80).collect::<String>(),
                e.why
            ),
        ));
    }
    if !authority.is_empty()
        && let Err(e) = AssigningAuthority::new(authority.clone())
    {
        return Err(refuse(
            Some(4),
            ErrorCode::DataType,
            format!(
                "assigning authority {:?} is not usable ({})",
                authority.chars().take(80).collect::<String>(),
                e.why
            ),
        ));
    }
    Ok(Some(EncounterId {
        visit_number: number,
        assigning_authority: authority,
    }))
}

fn patient_context(g: &Group<'_, '_>) -> Result<PatientContext, Vec<Problem>> {
    let mut problems = Vec::new();
    let pid_seq = g.pid.occurrence();
    let reps = g.pid.field(3).repetitions();
    let mrn = reps
        .iter()
        .find(|r| r.component(5).text().trim() == "MR" && !r.component(1).text().trim().is_empty())
        .or_else(|| {
            reps.iter()
                .find(|r| !r.component(1).text().trim().is_empty())
        })
        .map(|r| r.component(1).text().trim().to_string());
    let pid_loc = ErrorLocation::field("PID", pid_seq, 3).with_component(1);
    let patient_id = match mrn {
        None => {
            problems.push(Problem::error(
                Some(pid_loc),
                ErrorCode::RequiredFieldMissing,
                "PID-3 has no patient identifier (CX.1): no observation of this message was stored",
            ));
            String::new()
        }
        Some(id) => {
            if let Err(e) = PatientId::new(id.clone()) {
                problems.push(Problem::error(
                    Some(pid_loc),
                    ErrorCode::DataType,
                    format!("PID-3 patient identifier {id:?} is not usable ({}): no observation of this message was stored", e.why),
                ));
            }
            id
        }
    };
    let Some(pv1) = g.pv1 else {
        problems.push(Problem::error(
            Some(ErrorLocation::segment("PV1", pid_seq)),
            ErrorCode::SegmentSequence,
            format!(
                "PV1 segment missing for patient {patient_id:?}: the ward and bed (PV1-3) are needed, so no observation of this message was stored"
            ),
        ));
        return Err(problems);
    };
    let seq = pv1.occurrence();
    let pl = pv1.field(3);
    let ward = pl.component(1).text().trim().to_string();
    let pl3 = pl.component(3).text().trim().to_string();
    let (bed, bed_comp) = if pl3.is_empty() {
        (pl.component(2).text().trim().to_string(), 2)
    } else {
        (pl3, 3)
    };
    let loc = |c| Some(ErrorLocation::field("PV1", seq, 3).with_component(c));
    if ward.is_empty() {
        problems.push(Problem::error(
            loc(1),
            ErrorCode::RequiredFieldMissing,
            "PV1-3.1 (point of care = ward) is empty: no observation of this message was stored",
        ));
    } else if let Err(e) = WardId::new(ward.clone()) {
        problems.push(Problem::error(
            loc(1),
            ErrorCode::DataType,
            format!("PV1-3.1 ward {ward:?} is not a ward id ({}): no observation of this message was stored", e.why),
        ));
    }
    if bed.is_empty() {
        problems.push(Problem::error(
            loc(3),
            ErrorCode::RequiredFieldMissing,
            "PV1-3.3 (bed) and PV1-3.2 (room) are empty: no observation of this message was stored",
        ));
    } else if let Err(e) = Label::new(bed.clone()) {
        problems.push(Problem::error(
            loc(bed_comp),
            ErrorCode::DataType,
            format!("PV1-3 bed {bed:?} is not a bed label ({}): no observation of this message was stored", e.why),
        ));
    }
    let encounter = visit_number(pv1).unwrap_or_else(|p| {
        problems.push(p);
        None
    });
    if problems.is_empty() {
        Ok(PatientContext {
            patient_id,
            ward,
            bed,
            encounter,
            pid_sequence: pid_seq,
            pv1_sequence: seq,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize_vital;
    use crate::sources::hl7::parser::DEFAULT_MAX_MESSAGE_BYTES;
    use wardwatch_proto::metrics::*;

    const HEAD: &str = "MSH|^~\\&|Mon^0123456789ABCDEF^EUI-64|Ward7|||20240301101500+0000||ORU^R01^ORU_R01|MSG1|P|2.6|||NE|AL\r\
                        PID|||MRN77^^^Hosp^MR||Doe^Jane\r\
                        PV1||I|7A^12^3\r\
                        OBR|1|||182777000^monitoring of patient^SCT|||20240301101400+0000\r";

    fn decode_str(s: &str) -> Result<Pcd01Message, MessageRejection> {
        let m = Message::parse(s, DEFAULT_MAX_MESSAGE_BYTES).unwrap_or_else(|e| panic!("{e}"));
        decode(&m)
    }

    fn ok(s: &str) -> Pcd01Message {
        decode_str(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn vital(m: &Pcd01Message, idx: usize) -> RawVital {
        match m
            .observations
            .iter()
            .find(|o| o.obx_index == idx)
            .map(|o| &o.outcome)
        {
            Some(ObxOutcome::Vital(v)) => v.clone(),
            other => panic!("OBX {idx}: {other:?}"),
        }
    }

    fn problem(m: &Pcd01Message, idx: usize) -> Problem {
        match m
            .observations
            .iter()
            .find(|o| o.obx_index == idx)
            .map(|o| &o.outcome)
        {
            Some(ObxOutcome::Rejected(p)) => p.clone(),
            other => panic!("OBX {idx}: {other:?}"),
        }
    }

    #[test]
    fn maps_each_metric_with_context() {
        let msg = format!(
            "{HEAD}\
             OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||MON-1^EUI-64\r\
             OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F\r\
             OBX|3|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.2.1.1|70|/min^/min^UCUM|||||R|||20240301101430+0100\r\
             OBX|4|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.2|97|262688^MDC_DIM_PERCENT^MDC|||||F|||||||SPO2-9^EUI-64\r\
             OBX|5|NM|151562^MDC_RESP_RATE^MDC|1.3.1.1|16|264928^MDC_DIM_RESP_PER_MIN^MDC|||||F\r\
             OBX|6|NM|150364^MDC_TEMP_BODY^MDC|1.4.1.1|37.2|268192^MDC_DIM_DEGC^MDC|||||F\r\
             OBX|7|NM|150344^MDC_TEMP^MDC|1.4.1.2|98.6|[degF]^[degF]^UCUM|||||F\r\
             OBX|8|NM|149546^MDC_PULS_RATE_NON_INV^MDC|1.5.1.4|66|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||F||||||MMEAS^manual^MDC\r"
        );
        let m = ok(&msg);
        assert_eq!(m.control_id, "MSG1");
        assert_eq!(m.sending_application, "Mon^0123456789ABCDEF^EUI-64");
        assert_eq!(
            m.patients,
            vec![PatientContext {
                patient_id: "MRN77".into(),
                ward: "7A".into(),
                bed: "3".into(),
                encounter: None,
                pid_sequence: 1,
                pv1_sequence: 1
            }]
        );
        assert_eq!(m.observations[0].outcome, ObxOutcome::Ignored);
        let hr = vital(&m, 2);
        assert_eq!(
            (hr.metric_mdc, hr.value, hr.unit.as_str()),
            (MDC_ECG_HEART_RATE, 72.0, "MDC_DIM_BEAT_PER_MIN")
        );
        assert_eq!(
            (hr.patient_id.as_str(), hr.ward.as_str(), hr.bed.as_str()),
            ("MRN77", "7A", "3")
        );
        // Device inherited from the MDS row 1.0.0.0; time from OBR-7.
        assert_eq!(hr.device_id, "MON-1");
        assert_eq!(hr.measured_at_unix_ms, 1_709_288_040_000);
        let pr = vital(&m, 3);
        assert_eq!(
            (pr.metric_mdc, pr.unit.as_str()),
            (MDC_PULS_OXIM_PULS_RATE, "/min")
        );
        assert_eq!(
            pr.measured_at_unix_ms, 1_709_284_470_000,
            "OBX-14 with its offset"
        );
        let spo2 = vital(&m, 4);
        assert_eq!(
            (spo2.metric_mdc, spo2.value, spo2.device_id.as_str()),
            (MDC_PULS_OXIM_SAT_O2, 97.0, "SPO2-9")
        );
        assert_eq!(vital(&m, 5).metric_mdc, MDC_RESP_RATE);
        let t = vital(&m, 6);
        assert_eq!(
            (t.metric_mdc, t.unit.as_str()),
            (MDC_TEMP_BODY, "MDC_DIM_DEGC")
        );
        let f = vital(&m, 7);
        assert_eq!(
            (f.metric_mdc, f.value, f.unit.as_str()),
            (MDC_TEMP, 98.6, "[degF]")
        );
        let nibp_pr = vital(&m, 8);
        assert_eq!(nibp_pr.metric_mdc, MDC_PULS_RATE_NON_INV);
        assert_eq!(nibp_pr.quality, vec![QualityFlag::ManualEntry]);

        // Units through the normalizer: MDC_DIM_DEGC stays Celsius, 98.6 °F becomes 37 °C.
        let n = normalize_vital(t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((n.value, n.unit_ucum.as_str()), (37.2, "Cel"));
        let n = normalize_vital(f).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((n.value, n.unit_ucum.as_str()), (37.0, "Cel"));
        let n = normalize_vital(spo2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.unit_ucum, "%");
        let n = normalize_vital(vital(&m, 5)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.unit_ucum, "/min");
        let n = normalize_vital(hr).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            n.location.map(|l| (l.ward, l.bed)),
            Some(("7A".into(), "3".into()))
        );
    }

    #[test]
    fn groups_nbp_rows_into_one_compound() {
        let msg = format!(
            "{HEAD}\
             OBX|1||528391^MDC_DEV_SPEC_PROFILE_BP^MDC|1|||||||X|||||||BPM-1^EUI-64\r\
             OBX|2||150020^MDC_PRESS_BLD_NONINV^MDC|1.0.1|||||||X|||20240301100000+0000\r\
             OBX|3|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.0.1.1|120|266016^MDC_DIM_MMHG^MDC|||||R\r\
             OBX|4|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.0.1.2|80|266016^MDC_DIM_MMHG^MDC|||||R\r\
             OBX|5|NM|150023^MDC_PRESS_BLD_NONINV_MEAN^MDC|1.0.1.3|93|266016^MDC_DIM_MMHG^MDC|||||R\r\
             OBX|6|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.0.2.1|110|kPa|||||R\r\
             OBX|7|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.0.2.2|abc|kPa|||||R\r"
        );
        let m = ok(&msg);
        let bp = vital(&m, 3);
        assert_eq!(bp.metric_mdc, MDC_PRESS_BLD_NONINV);
        assert_eq!(bp.value, 93.0);
        assert_eq!(
            bp.components,
            vec![
                (MDC_PRESS_BLD_NONINV_SYS, 120.0),
                (MDC_PRESS_BLD_NONINV_DIA, 80.0),
                (MDC_PRESS_BLD_NONINV_MEAN, 93.0)
            ]
        );
        assert_eq!(bp.device_id, "BPM-1");
        // Time from the compound's parent row (1.0.1), not OBR-7.
        assert_eq!(bp.measured_at_unix_ms, 1_709_287_200_000);
        assert_eq!(m.observations[3].outcome, ObxOutcome::MergedInto(3));
        assert_eq!(m.observations[4].outcome, ObxOutcome::MergedInto(3));
        let n = normalize_vital(bp).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.unit_ucum, "mm[Hg]");
        assert_eq!(n.components.len(), 3);
        // Second measurement: diastolic is not a number, so its systolic cannot be stored either.
        let p7 = problem(&m, 7);
        assert_eq!(
            (p7.code, p7.location.clone()),
            (ErrorCode::DataType, Some(ErrorLocation::field("OBX", 7, 5)))
        );
        let p6 = problem(&m, 6);
        assert_eq!(p6.code, ErrorCode::RequiredFieldMissing);
        assert!(p6.message.contains("diastolic"), "{}", p6.message);
        // Without a mean the compound's value is 0 and it still validates.
        let no_mean = format!(
            "{HEAD}\
             OBX|1|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.0.1.1|120|mmHg|||||F|||||||BP-2\r\
             OBX|2|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.0.1.2|80|mmHg|||||F|||||||BP-2\r"
        );
        let m = ok(&no_mean);
        let bp = vital(&m, 1);
        assert_eq!((bp.value, bp.components.len()), (0.0, 2));
        assert!(normalize_vital(bp).is_ok());
        // One NA row.
        let na = format!(
            "{HEAD}OBX|1|NA|150020^MDC_PRESS_BLD_NONINV^MDC|1.0.1|118^76^90|266016^MDC_DIM_MMHG^MDC|||||F|||||||BP-3\r"
        );
        let bp = vital(&ok(&na), 1);
        assert_eq!(
            bp.components,
            vec![(150021, 118.0), (150022, 76.0), (150023, 90.0)]
        );
        assert_eq!(bp.value, 90.0);
    }

    #[test]
    fn rejects_bad_rows_with_locations_and_keeps_the_rest() {
        let msg = format!(
            "{HEAD}\
             OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|NaN|%|||||F|||||||D1\r\
             OBX|2|NM|999999^MDC_MADE_UP^MDC|1.2.1.2|5|%|||||F|||||||D1\r\
             OBX|3|NM|8867-4^Heart rate^LN||80|/min|||||F|||||||D1\r\
             OBX|4|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|80||||||F|||||||D1\r\
             OBX|5|ST|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.2|eighty|/min|||||F|||||||D1\r\
             OBX|6|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.3||/min|||||F|||||||D1\r\
             OBX|7|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.4|80|/min|||||X|||||||D1\r\
             OBX|8|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.5|80|/min|||||W|||||||D1\r\
             OBX|9|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.6|80|/min|||||F|||2024|||||D1\r\
             OBX|10|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.7|80|/min|||||F|||||||bad.id\r\
             OBX|11|CWE|68220^MDC_TIME_SYNC_PROTOCOL^MDC|0.0.0.1|532224^MDC_TIME_SYNC_NONE^MDC|||||R\r\
             OBX|12|DTM|67975^MDC_ATTR_TIME_ABS^MDC|1.0.0.1|20091028123702||||||R\r\
             OBX|13|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.8|81|/min|||||F|||||||D1\r"
        );
        let m = ok(&msg);
        let loc = |i, f| Some(ErrorLocation::field("OBX", i, f));
        let p = problem(&m, 1);
        assert_eq!(
            (p.code, p.location.clone()),
            (ErrorCode::DataType, loc(1, 5))
        );
        assert!(p.message.contains("\"NaN\""), "{}", p.message);
        assert_eq!(problem(&m, 2).code, ErrorCode::TableValueNotFound);
        assert_eq!(problem(&m, 2).location, loc(2, 3));
        assert_eq!(problem(&m, 3).code, ErrorCode::TableValueNotFound);
        assert_eq!(
            (problem(&m, 4).code, problem(&m, 4).location),
            (ErrorCode::RequiredFieldMissing, loc(4, 6))
        );
        assert_eq!(
            (problem(&m, 5).code, problem(&m, 5).location),
            (ErrorCode::DataType, loc(5, 2))
        );
        assert_eq!(
            (problem(&m, 6).code, problem(&m, 6).location),
            (ErrorCode::RequiredFieldMissing, loc(6, 5))
        );
        assert!(
            matches!(&m.observations[6].outcome, ObxOutcome::Skipped(n) if n.contains("cannot be obtained"))
        );
        assert_eq!(
            (problem(&m, 8).code, problem(&m, 8).location),
            (ErrorCode::TableValueNotFound, loc(8, 11))
        );
        assert_eq!(
            (problem(&m, 9).code, problem(&m, 9).location),
            (ErrorCode::DataType, loc(9, 14))
        );
        assert_eq!(
            (problem(&m, 10).code, problem(&m, 10).location),
            (ErrorCode::DataType, loc(10, 18))
        );
        assert_eq!(m.observations[10].outcome, ObxOutcome::Ignored);
        assert_eq!(m.observations[11].outcome, ObxOutcome::Ignored);
        assert_eq!(vital(&m, 13).value, 81.0);
        assert_eq!(m.results().len(), 10);
    }

    #[test]
    fn pv1_19_visit_number_becomes_the_encounter() {
        let h = "MSH|^~\\&|Mon||||20240301||ORU^R01|M2|P|2.6\rPID|||M1\r";
        let obx = "OBX|1|NM|147842^^MDC||80|/min|||||F|||202403011000||||D1\r";
        let pv1 = |pv1_19: &str| format!("PV1||I|7A^^1{}{pv1_19}\r", "|".repeat(16));
        let encounter = |pv1_19: &str| {
            let m = ok(&format!("{h}{}{obx}", pv1(pv1_19)));
            let v = vital(&m, 1);
            assert_eq!(
                v.encounter, m.patients[0].encounter,
                "carried onto the sample"
            );
            v.encounter
        };
        let id = |n: &str, a: &str| {
            Some(EncounterId {
                visit_number: n.into(),
                assigning_authority: a.into(),
            })
        };
        // Not given, or the HL7 null: not known.
        assert_eq!(encounter(""), None);
        assert_eq!(encounter("\"\""), None);
        assert_eq!(encounter("^^^"), None);
        // CX.1 alone; with a check digit and scheme (ignored); with CX.4 as a namespace id, as an OID only
        // (HD.2), and as both (HD.1 wins); surrounding spaces trimmed.
        assert_eq!(encounter("V2024-0017"), id("V2024-0017", ""));
        assert_eq!(encounter("4711^3^M10^HOSP^VN"), id("4711", "HOSP"));
        assert_eq!(
            encounter("4711^^^&1.2.840.114350&ISO^VN"),
            id("4711", "1.2.840.114350")
        );
        assert_eq!(
            encounter("4711^^^HOSP&1.2.840.114350&ISO^VN"),
            id("4711", "HOSP")
        );
        assert_eq!(encounter(" 4711 ^^^ HOSP "), id("4711", "HOSP"));
        // The blood-pressure compound built from its component rows carries it too.
        let nbp = format!(
            "{h}{}OBX|1|NM|150021^^MDC|1.5.1.1|120|mm[Hg]|||||F|||202403011000||||D1\r\
             OBX|2|NM|150022^^MDC|1.5.1.2|80|mm[Hg]|||||F|||202403011000||||D1\r",
            pv1("4711^^^HOSP")
        );
        let bp = vital(&ok(&nbp), 1);
        assert_eq!(bp.metric_mdc, MDC_PRESS_BLD_NONINV);
        assert_eq!(bp.encounter, id("4711", "HOSP"));
        // Refused with a reason at PV1-19, never a crash; nothing of the message is stored. (`\T\` decodes to `&`.)
        for (pv1_19, component, needle) in [
            ("V 17", Some(1), "not usable"),
            (&"9".repeat(65) as &str, Some(1), "too long"),
            ("^^^HOSP", Some(1), "no ID number"),
            ("4711^^^HO SP", Some(4), "assigning authority"),
            ("4711~4712", None, "repetitions"),
            (&"9".repeat(600) as &str, None, "bytes long"),
            ("V\\T\\17", Some(1), "not usable"),
        ] {
            let e = decode_str(&format!("{h}{}{obx}", pv1(pv1_19)))
                .err()
                .unwrap_or_else(|| panic!("{pv1_19:?} decoded"));
            assert_eq!(e.ack, AckCode::Error, "{pv1_19:?}");
            let p = &e.problems[0];
            let mut at = ErrorLocation::field("PV1", 1, 19);
            if let Some(c) = component {
                at = at.with_component(c);
            }
            assert_eq!(p.location, Some(at), "{pv1_19:?}");
            assert!(
                p.message.starts_with("PV1-19 (visit number)"),
                "{}",
                p.message
            );
            assert!(p.message.contains(needle), "{pv1_19:?}: {}", p.message);
            assert!(
                p.message
                    .contains("no observation of this message was stored")
            );
        }
    }

    #[test]
    fn message_level_errors() {
        let h = "MSH|^~\\&|Mon||||20240301||ORU^R01|M2|P|2.6\r";
        let e = decode_str(&format!(
            "{h}PV1||I|7A^^1\rOBX|1|NM|147842^^MDC||80|/min|||||F\r"
        ))
        .err()
        .unwrap_or_else(|| panic!("decoded without PID"));
        assert_eq!(e.ack, AckCode::Error);
        assert!(
            e.problems
                .iter()
                .any(|p| p.code == ErrorCode::SegmentSequence
                    && p.location == Some(ErrorLocation::segment("PID", 1)))
        );
        let e = decode_str(&format!(
            "{h}PID|||M1\rOBX|1|NM|147842^^MDC||80|/min|||||F\r"
        ))
        .err()
        .unwrap_or_else(|| panic!("decoded without PV1"));
        assert_eq!(
            e.problems[0].location,
            Some(ErrorLocation::segment("PV1", 1))
        );
        let e = decode_str(&format!("{h}PID|||M1\rPV1||I|7A^^1\r"))
            .err()
            .unwrap_or_else(|| panic!("no OBX"));
        assert_eq!(
            e.problems[0].location,
            Some(ErrorLocation::segment("OBX", 1))
        );
        let e = decode_str(&format!(
            "{h}PID|||^^^H^MR\rPV1||I|^^\rOBX|1|NM|147842^^MDC||80|/min|||||F\r"
        ))
        .err()
        .unwrap_or_else(|| panic!("decoded"));
        let codes: Vec<_> = e
            .problems
            .iter()
            .map(|p| (p.code, p.location.clone()))
            .collect();
        assert_eq!(
            codes,
            vec![
                (
                    ErrorCode::RequiredFieldMissing,
                    Some(ErrorLocation::field("PID", 1, 3).with_component(1))
                ),
                (
                    ErrorCode::RequiredFieldMissing,
                    Some(ErrorLocation::field("PV1", 1, 3).with_component(1))
                ),
                (
                    ErrorCode::RequiredFieldMissing,
                    Some(ErrorLocation::field("PV1", 1, 3).with_component(3))
                ),
            ]
        );
        let e = decode_str(&format!(
            "{h}PID|||M 1\rPV1||I|3 WEST ICU^3001^1\rOBX|1|NM|147842^^MDC||80|/min|||||F\r"
        ))
        .err()
        .unwrap_or_else(|| panic!("decoded"));
        assert!(
            e.problems.iter().all(|p| p.code == ErrorCode::DataType),
            "{e}"
        );
        assert_eq!(e.problems.len(), 2);
        // Bed falls back to the room when PL.3 is empty.
        let m = ok(&format!(
            "{h}PID|||M1\rPV1||I|7A^R12\rOBX|1|NM|147842^^MDC||80|/min|||||F|||202403011000||||D\r"
        ));
        assert_eq!(m.patients[0].bed, "R12");
        assert_eq!(vital(&m, 1).device_id, "D");
    }

    #[test]
    fn header_checks() {
        let e = |msh: &str| {
            decode_str(&format!(
                "{msh}\rPID|||M1\rPV1||I|7A^^1\rOBX|1|NM|147842^^MDC||80|/min|||||F\r"
            ))
            .err()
            .map(|r| (r.ack, r.problems[0].code))
        };
        assert_eq!(
            e("MSH|^~\\&|A||||20240301||ADT^A01|C|P|2.6"),
            Some((AckCode::Reject, ErrorCode::UnsupportedMessageType))
        );
        assert_eq!(
            e("MSH|^~\\&|A||||20240301||ORU^R30|C|P|2.6"),
            Some((AckCode::Reject, ErrorCode::UnsupportedEventCode))
        );
        assert_eq!(
            e("MSH|^~\\&|A||||20240301||ORU^R01|||2.6"),
            Some((AckCode::Reject, ErrorCode::RequiredFieldMissing))
        );
        assert_eq!(
            e("MSH|^~\\&|A||||20240301||ORU^R01|C|T|2.6"),
            Some((AckCode::Reject, ErrorCode::UnsupportedProcessingId))
        );
        assert_eq!(
            e("MSH|^~\\&|A||||20240301||ORU^R01|C|P|3.0"),
            Some((AckCode::Reject, ErrorCode::UnsupportedVersionId))
        );
        assert_eq!(
            e("MSH|^~\\&|A||||20240301||ORU^R01^ORU_R01|C|P|2.3.1"),
            None
        );
    }

    #[test]
    fn device_falls_back_to_msh_and_time_is_required() {
        let h =
            "MSH|^~\\&|HL7^080019FFFF4F6AC0^EUI-64||||||ORU^R01|M3|P|2.6\rPID|||M1\rPV1||I|7A^^1\r";
        let m = ok(&format!(
            "{h}OBR|1||||||20240301101400\rOBX|1|NM|147842^^MDC|1.6.1.1|60|/min^/min^UCUM|||||R\r"
        ));
        assert_eq!(vital(&m, 1).device_id, "080019FFFF4F6AC0");
        let m = ok(&format!("{h}OBX|1|NM|147842^^MDC|1.6.1.1|60|/min|||||R\r"));
        let p = problem(&m, 1);
        assert_eq!(
            (p.code, p.location),
            (
                ErrorCode::RequiredFieldMissing,
                Some(ErrorLocation::field("OBX", 1, 14))
            )
        );
    }

    #[test]
    fn acvpu_is_enumerated() {
        let code = WARDWATCH_ACVPU;
        let m = ok(&format!(
            "{HEAD}OBX|1|ST|{code}^WARDWATCH_ACVPU^MDC||v||||||F|||||||NURSE-TAB\r"
        ));
        let v = vital(&m, 1);
        assert_eq!(v.enumerated.as_deref(), Some("v"));
        assert_eq!(
            normalize_vital(v).map(|n| n.enumerated).ok(),
            Some("V".into())
        );
    }
}

#[cfg(test)]
mod perf_tests {
    use super::*;
    use crate::sources::hl7::parser::DEFAULT_MAX_MESSAGE_BYTES;

    /// A message at the 1 MiB limit packed with OBX rows (inheriting device and time) decodes quickly: the
    /// lookups are indexed, not a scan of every row per row.
    #[test]
    fn a_full_size_message_of_tiny_obx_rows_decodes_fast() {
        let mut msg = String::from(
            "MSH|^~\\&|M||||||ORU^R01|P1|P|2.6\rPID|||M1\rPV1||I|7A^^1\rOBR|1||||||202403011000\rOBX|1||69965^^MDC|1|||||||X|||||||D1\r",
        );
        let mut i = 2;
        while msg.len() < DEFAULT_MAX_MESSAGE_BYTES - 100 {
            msg.push_str(&format!(
                "OBX|{i}|NM|147842^^MDC|1.1.{i}.1|{}|/min|||||F\r",
                i % 200
            ));
            i += 1;
        }
        let started = std::time::Instant::now();
        let m = Message::parse(&msg, DEFAULT_MAX_MESSAGE_BYTES).unwrap_or_else(|e| panic!("{e}"));
        let d = decode(&m).unwrap_or_else(|e| panic!("{e}"));
        assert!(d.observations.len() > 20_000, "{}", d.observations.len());
        assert!(matches!(&d.observations[5].outcome, ObxOutcome::Vital(v) if v.device_id == "D1"));
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    }
}
