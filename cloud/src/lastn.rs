//! `GET [base]/Observation/$lastn` (FHIR R4 Observation-lastn): for one patient, the newest `max` vital-sign
//! Observations of each code, newest first per code, in one searchset Bundle.
//!
//! | parameter | meaning |
//! |---|---|
//! | `patient` / `subject` (required) | the patient (MRN, or `Patient/<MRN>`) |
//! | `category` | `vital-signs` only (the default); other categories are refused with 400 |
//! | `code` | `system\|code` or code, comma-separated; default every vital-sign code Wardwatch knows |
//! | `max` | 1..=100 (default 1) |
//!
//! "Newest" is by effective time (`measured_at`), ties by arrival. Each code is one query, run concurrently: the
//! patient's rows newest first through the `(patient_id, measured_at_ms, id)` index, keeping that code's, and
//! only for codes the patient has a sample of (`patient_codes`, migration 0013), so an absent code costs no scan.
//! Unknown parameters are refused, never ignored. The call is authorized and audited like an Observation search.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use wardwatch_proto::ids::PatientId;

use crate::api::{ApiState, RemoteAddr, audit, authorize, fhir_json, observation_id, parse_code};
use crate::error::CloudError;
use crate::storage::{CodeFilter, VitalQuery, VitalSort};

/// Largest `max`.
pub const MAX_PER_CODE: u32 = 100;

/// A parsed `$lastn` request.
#[derive(Debug, Clone, PartialEq)]
pub struct LastN {
    /// The patient's id (MRN).
    pub patient: String,
    /// The codes asked for (empty: every vital-sign code).
    pub codes: Vec<CodeFilter>,
    /// Observations per code.
    pub max: u32,
}

/// Parses the query string of a `$lastn` request.
pub fn parse_lastn(raw: Option<&str>) -> Result<LastN, CloudError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| CloudError::InvalidArgument(format!("query string: {e}")))?;
    let mut patient = None;
    let mut codes = Vec::new();
    let mut max = None;
    for (k, v) in pairs {
        match k.as_str() {
            "patient" | "subject" => {
                let id = v.strip_prefix("Patient/").unwrap_or(&v);
                let id = PatientId::new(id)
                    .map_err(|e| CloudError::InvalidArgument(format!("{k}: {e}")))?;
                if patient.replace(id.to_string()).is_some() {
                    return Err(CloudError::InvalidArgument(format!(
                        "{k} given more than once"
                    )));
                }
            }
            "category" => {
                let c = v.rsplit('|').next().unwrap_or("");
                if c != "vital-signs" {
                    return Err(CloudError::NotSupported(format!(
                        "$lastn serves category vital-signs only, not {v:?}"
                    )));
                }
            }
            "code" => {
                for token in v.split(',') {
                    codes.push(parse_code(token)?);
                }
            }
            "max" => max = Some(crate::api::parse_bounded("max", &v, MAX_PER_CODE)?),
            other => {
                return Err(CloudError::InvalidArgument(format!(
                    "$lastn parameter {other:?} is not supported (supported: patient, subject, category, code, max)"
                )));
            }
        }
    }
    let patient = patient
        .ok_or_else(|| CloudError::InvalidArgument("$lastn needs patient (or subject)".into()))?;
    Ok(LastN {
        patient,
        codes,
        max: max.unwrap_or(1),
    })
}

/// Every vital-sign LOINC code Wardwatch stores, once each.
fn vital_sign_codes() -> Vec<CodeFilter> {
    let mut seen = BTreeSet::new();
    wardwatch_proto::metrics::METRICS
        .iter()
        .filter(|m| m.category == "vital-signs" && !m.loinc.is_empty())
        .filter(|m| seen.insert(m.loinc))
        .map(|m| CodeFilter::Loinc(m.loinc.to_string()))
        .collect()
}

/// The handler.
pub(crate) async fn lastn_observations(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    remote: Option<axum::Extension<RemoteAddr>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, CloudError> {
    let caller = authorize(&state, &headers, remote.as_deref(), "Observation")?;
    let query_text = raw.clone().unwrap_or_default();
    let result = lastn_bundle(&state, raw.as_deref()).await;
    let (status, patient) = match &result {
        Ok((_, p)) => (StatusCode::OK, p.clone()),
        Err(e) => (e.http_status(), String::new()),
    };
    audit(
        &state,
        &caller,
        "search",
        "Observation",
        &format!("$lastn?{query_text}"),
        patient,
        status,
    )
    .await;
    let (bundle, _) = result?;
    Ok(fhir_json(StatusCode::OK, &bundle))
}

async fn lastn_bundle(
    state: &ApiState,
    raw: Option<&str>,
) -> Result<(serde_json::Value, String), CloudError> {
    let req = parse_lastn(raw)?;
    let codes = if req.codes.is_empty() {
        vital_sign_codes()
    } else {
        req.codes.clone()
    };
    let queries = codes.into_iter().map(|c| {
        let q = VitalQuery {
            patient: Some(req.patient.clone()),
            codes: vec![c],
            sort: VitalSort::DateDesc,
            limit: req.max,
            ..Default::default()
        };
        async move { state.store.search_vitals(&q).await }
    });
    let per_code = futures_util::future::try_join_all(queries).await?;
    let mut entries = Vec::new();
    let mut seen = BTreeSet::new();
    for rows in per_code {
        for r in rows {
            // A code given twice (e.g. as LOINC and as MDC) is answered once.
            if seen.insert(r.id) {
                let res = crate::api::vital_to_observation(
                    &r,
                    &state.config.mrn_system,
                    &state.config.visit_number_system,
                )?;
                entries.push((
                    format!("{}/Observation/{}", state.base_url, observation_id(&r)),
                    res,
                ));
            }
        }
    }
    let page = wardwatch_fhir::SearchPage {
        self_url: format!(
            "{}/Observation/$lastn?{}",
            state.base_url,
            raw.unwrap_or("")
        ),
        next_url: None,
        total: Some(entries.len() as u64),
        entries,
        timestamp_unix_ms: wardwatch_proto::now_unix_ms(),
    };
    let bundle = wardwatch_fhir::searchset_bundle(page)
        .map_err(|e| CloudError::Unavailable(e.to_string()))?;
    Ok((bundle, req.patient))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let q = parse_lastn(Some(
            "patient=Patient/SIM000001&code=http://loinc.org|8867-4&max=3",
        ))
        .expect("valid");
        assert_eq!(q.patient, "SIM000001");
        assert_eq!(q.codes, vec![CodeFilter::Loinc("8867-4".into())]);
        assert_eq!(q.max, 3);
        assert_eq!(
            parse_lastn(Some("subject=SIM000001")).expect("valid").max,
            1
        );
        assert!(parse_lastn(Some("category=vital-signs&patient=SIM1")).is_ok());
        for bad in [
            "",
            "code=8867-4",
            "patient=SIM1&max=0",
            "patient=SIM1&max=101",
            "patient=SIM1&max=-1",
            "patient=SIM1&category=laboratory",
            "patient=SIM1&date=ge2026-01-01",
            "patient=SIM1&patient=SIM2",
        ] {
            assert!(parse_lastn(Some(bad)).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn default_codes_are_the_distinct_vital_sign_codes() {
        let codes = vital_sign_codes();
        assert!(
            codes.contains(&CodeFilter::Loinc("8867-4".into())),
            "heart rate"
        );
        assert!(codes.len() >= 5, "{codes:?}");
        assert!(!codes.contains(&CodeFilter::Loinc(String::new())));
        let distinct: BTreeSet<_> = codes
            .iter()
            .map(|c| match c {
                CodeFilter::Loinc(l) => l.clone(),
                CodeFilter::Mdc(m) => m.to_string(),
            })
            .collect();
        assert_eq!(distinct.len(), codes.len());
    }
}
