//! `OperationOutcome` resources.

use fhir_sdk::r4b::codes::{IssueSeverity as FhirSeverity, IssueType};
use fhir_sdk::r4b::resources::{OperationOutcome, OperationOutcomeIssue};
use serde_json::json;

use crate::FhirError;
use crate::util::{build_err, ser_err};

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueSeverity {
    /// The issue caused the action to fail and no further checking could be
    /// performed.
    Fatal,
    /// The issue is sufficiently important to cause the action to fail.
    Error,
    /// The issue is not important enough to cause the action to fail.
    Warning,
    /// The issue has no relation to the degree of success of the action.
    Information,
}

/// `OperationOutcome.issue.code` (subset of the FHIR `issue-type` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueCode {
    /// `invalid`: content invalid against the specification or a profile.
    Invalid,
    /// `structure`: a structural issue in the content.
    Structure,
    /// `required`: a required element is missing.
    Required,
    /// `value`: an element or header value is invalid.
    Value,
    /// `security`: an authentication/authorization/permissions issue.
    Security,
    /// `login`: the client needs to initiate an authentication process.
    Login,
    /// `forbidden`: the user or system was not able to be authorized.
    Forbidden,
    /// `not-found`: the referenced resource could not be found.
    NotFound,
    /// `not-supported`: the interaction, operation, resource or profile is
    /// not supported.
    NotSupported,
    /// `too-costly`: the operation would be too costly.
    TooCostly,
    /// `exception`: an unexpected internal error.
    Exception,
    /// `throttled`: the system is not prepared to handle this request due
    /// to load management.
    Throttled,
    /// `processing`: processing issues.
    Processing,
    /// `timeout`: an internal timeout occurred.
    Timeout,
    /// `duplicate`: an attempt was made to create a duplicate record.
    Duplicate,
}

impl IssueSeverity {
    /// The typed `fhir-sdk` code.
    fn to_fhir(self) -> FhirSeverity {
        match self {
            Self::Fatal => FhirSeverity::Fatal,
            Self::Error => FhirSeverity::Error,
            Self::Warning => FhirSeverity::Warning,
            Self::Information => FhirSeverity::Information,
        }
    }

    /// The FHIR code string.
    fn as_str(self) -> &'static str {
        match self {
            Self::Fatal => "fatal",
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Information => "information",
        }
    }
}

impl IssueCode {
    /// The typed `fhir-sdk` code.
    fn to_fhir(self) -> IssueType {
        match self {
            Self::Invalid => IssueType::Invalid,
            Self::Structure => IssueType::Structure,
            Self::Required => IssueType::Required,
            Self::Value => IssueType::Value,
            Self::Security => IssueType::Security,
            Self::Login => IssueType::Login,
            Self::Forbidden => IssueType::Forbidden,
            Self::NotFound => IssueType::NotFound,
            Self::NotSupported => IssueType::NotSupported,
            Self::TooCostly => IssueType::TooCostly,
            Self::Exception => IssueType::Exception,
            Self::Throttled => IssueType::Throttled,
            Self::Processing => IssueType::Processing,
            Self::Timeout => IssueType::Timeout,
            Self::Duplicate => IssueType::Duplicate,
        }
    }

    /// The FHIR code string.
    fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Structure => "structure",
            Self::Required => "required",
            Self::Value => "value",
            Self::Security => "security",
            Self::Login => "login",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not-found",
            Self::NotSupported => "not-supported",
            Self::TooCostly => "too-costly",
            Self::Exception => "exception",
            Self::Throttled => "throttled",
            Self::Processing => "processing",
            Self::Timeout => "timeout",
            Self::Duplicate => "duplicate",
        }
    }
}

/// Build a FHIR R4 `OperationOutcome` with a single issue. `diagnostics` is
/// omitted when blank (FHIR forbids empty strings).
///
/// Infallible: should the typed builder ever fail, an equivalent minimal
/// `OperationOutcome` is returned as literal JSON instead.
#[must_use]
pub fn operation_outcome(
    severity: IssueSeverity,
    code: IssueCode,
    diagnostics: &str,
) -> serde_json::Value {
    let diagnostics = Some(diagnostics).filter(|d| !d.trim().is_empty());
    typed_outcome(severity, code, diagnostics).unwrap_or_else(|_| {
        let mut issue = json!({ "severity": severity.as_str(), "code": code.as_str() });
        if let (Some(d), Some(obj)) = (diagnostics, issue.as_object_mut()) {
            obj.insert("diagnostics".to_owned(), json!(d));
        }
        json!({ "resourceType": "OperationOutcome", "issue": [issue] })
    })
}

/// The `OperationOutcome` built with `fhir-sdk`.
fn typed_outcome(
    severity: IssueSeverity,
    code: IssueCode,
    diagnostics: Option<&str>,
) -> Result<serde_json::Value, FhirError> {
    let mut issue = OperationOutcomeIssue::builder()
        .severity(severity.to_fhir())
        .code(code.to_fhir());
    if let Some(d) = diagnostics {
        issue = issue.diagnostics(d.to_owned());
    }
    let issue = issue.build().map_err(build_err("OperationOutcome.issue"))?;
    let outcome = OperationOutcome::builder()
        .issue(vec![Some(issue)])
        .build()
        .map_err(build_err("OperationOutcome"))?;
    serde_json::to_value(&outcome).map_err(ser_err("OperationOutcome"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_outcome_exact_json() {
        let json = operation_outcome(
            IssueSeverity::Error,
            IssueCode::NotFound,
            "Observation/x not found",
        );
        assert_eq!(
            json,
            json!({
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "not-found", "diagnostics": "Observation/x not found"}]
            })
        );
    }

    #[test]
    fn blank_diagnostics_are_omitted() {
        let json = operation_outcome(IssueSeverity::Information, IssueCode::Throttled, "  ");
        assert_eq!(
            json,
            json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "throttled"}]})
        );
    }

    #[test]
    fn typed_and_fallback_codes_agree() {
        let severities = [
            IssueSeverity::Fatal,
            IssueSeverity::Error,
            IssueSeverity::Warning,
            IssueSeverity::Information,
        ];
        let codes = [
            IssueCode::Invalid,
            IssueCode::Structure,
            IssueCode::Required,
            IssueCode::Value,
            IssueCode::Security,
            IssueCode::Login,
            IssueCode::Forbidden,
            IssueCode::NotFound,
            IssueCode::NotSupported,
            IssueCode::TooCostly,
            IssueCode::Exception,
            IssueCode::Throttled,
            IssueCode::Processing,
            IssueCode::Timeout,
            IssueCode::Duplicate,
        ];
        for severity in severities {
            for code in codes {
                let json = operation_outcome(severity, code, "d");
                assert_eq!(json["issue"][0]["severity"], severity.as_str());
                assert_eq!(json["issue"][0]["code"], code.as_str());
                assert_eq!(json["issue"][0]["diagnostics"], "d");
            }
        }
    }
}
