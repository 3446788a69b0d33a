//! HL7 v2 original-mode acknowledgements: `MSH` (sender and receiver swapped, `ACK^<trigger>^ACK`, a new
//! control id, the version echoed), `MSA` (`AA`/`AE`/`AR` and the acknowledged MSH-10), and one `ERR` per
//! problem (ERR-2 location `segment^sequence^field`, ERR-3 code from HL7 table 0357, ERR-4 severity, ERR-8 a
//! human-readable reason).

use std::sync::atomic::{AtomicU64, Ordering};

use super::parser::{Delimiters, Header, escape};

/// MSA-1 acknowledgement code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application accept: everything in the message was processed (and every vital is durable).
    Accept,
    /// Application error: some or all of the content was refused; see the ERR segments.
    Error,
    /// Application reject: the message as a whole was refused (unparseable, unsupported, or the edge cannot
    /// store it now); nothing of it was stored.
    Reject,
}

impl AckCode {
    /// `AA`, `AE` or `AR`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "AA",
            Self::Error => "AE",
            Self::Reject => "AR",
        }
    }
}

/// ERR-4 severity (HL7 table 0516).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The problem caused data to be refused.
    Error,
    /// Worth knowing; nothing was refused because of it.
    Warning,
}

impl Severity {
    /// `E` or `W`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "E",
            Self::Warning => "W",
        }
    }
}

/// ERR-3 error codes (HL7 table 0357, message error condition codes) used by this source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 100: segments out of order, or a required segment is missing.
    SegmentSequence,
    /// 101: a required field is missing.
    RequiredFieldMissing,
    /// 102: a field holds data of the wrong type or an impossible value.
    DataType,
    /// 103: a coded value (metric, unit, status, ward) is not one this edge knows.
    TableValueNotFound,
    /// 200: the message type is not supported.
    UnsupportedMessageType,
    /// 201: the trigger event is not supported.
    UnsupportedEventCode,
    /// 202: the processing id is not supported.
    UnsupportedProcessingId,
    /// 203: the version is not supported.
    UnsupportedVersionId,
    /// 207: the application could not process the message (e.g. its outbox is full): resend later.
    ApplicationInternal,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Self::SegmentSequence => 100,
            Self::RequiredFieldMissing => 101,
            Self::DataType => 102,
            Self::TableValueNotFound => 103,
            Self::UnsupportedMessageType => 200,
            Self::UnsupportedEventCode => 201,
            Self::UnsupportedProcessingId => 202,
            Self::UnsupportedVersionId => 203,
            Self::ApplicationInternal => 207,
        }
    }
    /// The table's description.
    pub fn text(self) -> &'static str {
        match self {
            Self::SegmentSequence => "Segment sequence error",
            Self::RequiredFieldMissing => "Required field missing",
            Self::DataType => "Data type error",
            Self::TableValueNotFound => "Table value not found",
            Self::UnsupportedMessageType => "Unsupported message type",
            Self::UnsupportedEventCode => "Unsupported event code",
            Self::UnsupportedProcessingId => "Unsupported processing id",
            Self::UnsupportedVersionId => "Unsupported version id",
            Self::ApplicationInternal => "Application internal error",
        }
    }
}

/// ERR-2 error location: segment id, its occurrence in the message, and optionally field and component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLocation {
    /// Segment id, e.g. `OBX`.
    pub segment: String,
    /// 1-based occurrence of that segment id in the message.
    pub sequence: usize,
    /// Field number.
    pub field: Option<usize>,
    /// Component number (within the first repetition).
    pub component: Option<usize>,
}

impl ErrorLocation {
    /// A location down to a field.
    pub fn field(segment: &str, sequence: usize, field: usize) -> Self {
        Self {
            segment: segment.to_string(),
            sequence,
            field: Some(field),
            component: None,
        }
    }
    /// A whole segment.
    pub fn segment(segment: &str, sequence: usize) -> Self {
        Self {
            segment: segment.to_string(),
            sequence,
            field: None,
            component: None,
        }
    }
    /// The same location narrowed to a component.
    pub fn with_component(mut self, component: usize) -> Self {
        self.component = Some(component);
        self
    }
    /// ERL text: `SEG^seq[^field[^1^component]]`.
    pub fn encode(&self, d: &Delimiters) -> String {
        let c = d.component;
        let mut s = format!("{}{c}{}", escape(&self.segment, d), self.sequence);
        if let Some(f) = self.field {
            s.push_str(&format!("{c}{f}"));
            if let Some(k) = self.component {
                s.push_str(&format!("{c}1{c}{k}"));
            }
        }
        s
    }
}

/// One problem found in a message: becomes one ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where (ERR-2).
    pub location: Option<ErrorLocation>,
    /// What kind (ERR-3).
    pub code: ErrorCode,
    /// How bad (ERR-4).
    pub severity: Severity,
    /// For people (ERR-8).
    pub message: String,
}

impl Problem {
    /// An error-severity problem.
    pub fn error(
        location: Option<ErrorLocation>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        Self {
            location,
            code,
            severity: Severity::Error,
            message: message.into(),
        }
    }
}

/// ERR-8 is a TX of at most 250 characters in HL7 v2.5-2.6.
pub const MAX_USER_MESSAGE_CHARS: usize = 250;

/// The sender-facing application name used when the original message named no receiving application.
pub const APPLICATION_NAME: &str = "Wardwatch";

static CONTROL_SEQ: AtomicU64 = AtomicU64::new(0);

/// A new message control id for an ACK: unique within this process and across restarts (it starts with the
/// time), at most 20 characters (the MSH-10 length in HL7 v2.5).
pub fn next_control_id() -> String {
    let seq = CONTROL_SEQ.fetch_add(1, Ordering::Relaxed) & 0xFF_FFFF;
    let ms = u64::try_from(wardwatch_proto::now_unix_ms()).unwrap_or(0);
    format!("WW{ms:x}{seq:06x}")
}

fn hl7_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// Truncates to at most `n` characters, marking the cut with `...`.
fn truncate_chars(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

/// Builds the acknowledgement of `original` (the received header, or `None` when even MSH was unreadable).
/// Segments are separated and terminated by `\r`. `control_id` is the ACK's own MSH-10 (see
/// [`next_control_id`]).
pub fn build(
    original: Option<&Header>,
    code: AckCode,
    problems: &[Problem],
    control_id: &str,
) -> String {
    let d = original.map(|h| h.delimiters).unwrap_or_default();
    let f = d.field;
    let c = d.component;
    let or_default = |raw: Option<&str>, default: &str| match raw {
        Some(r) if !r.is_empty() => r.to_string(),
        _ => escape(default, &d),
    };
    let sending_app = or_default(
        original.map(|h| h.receiving_application_raw.as_str()),
        APPLICATION_NAME,
    );
    let sending_fac = original
        .map(|h| h.receiving_facility_raw.clone())
        .unwrap_or_default();
    let receiving_app = original
        .map(|h| h.sending_application_raw.clone())
        .unwrap_or_default();
    let receiving_fac = original
        .map(|h| h.sending_facility_raw.clone())
        .unwrap_or_default();
    let trigger = original
        .map(|h| h.trigger_event.as_str())
        .filter(|t| t.len() == 3 && t.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or("R01");
    let processing = original
        .map(|h| h.processing_id.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("P");
    let version = original
        .map(|h| h.version.as_str())
        .filter(|v| !v.is_empty())
        .unwrap_or("2.6");
    let acked_id = original.map(|h| h.control_id.as_str()).unwrap_or("");
    let mut out = String::new();
    out.push_str(&format!(
        "MSH{f}{enc}{f}{sending_app}{f}{sending_fac}{f}{receiving_app}{f}{receiving_fac}{f}{now}{f}{f}ACK{c}{trigger}{c}ACK{f}{id}{f}{proc}{f}{ver}\r",
        enc = d.encoding_characters(),
        now = hl7_now(),
        id = escape(control_id, &d),
        proc = escape(processing, &d),
        ver = escape(version, &d),
    ));
    out.push_str(&format!(
        "MSA{f}{}{f}{}\r",
        code.as_str(),
        escape(acked_id, &d)
    ));
    for p in problems {
        let loc = p
            .location
            .as_ref()
            .map(|l| l.encode(&d))
            .unwrap_or_default();
        let text = truncate_chars(&p.message, MAX_USER_MESSAGE_CHARS);
        out.push_str(&format!(
            "ERR{f}{f}{loc}{f}{code}{c}{desc}{c}HL70357{f}{sev}{f}{f}{f}{f}{msg}\r",
            code = p.code.code(),
            desc = escape(p.code.text(), &d),
            sev = p.severity.as_str(),
            msg = escape(&text, &d),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::hl7::parser::{DEFAULT_MAX_MESSAGE_BYTES, Message};

    fn header(msg: &str) -> Header {
        Message::parse(msg, DEFAULT_MAX_MESSAGE_BYTES)
            .unwrap_or_else(|e| panic!("{e}"))
            .header()
    }

    #[test]
    fn aa_swaps_sender_and_receiver_and_echoes_control_id_and_version() {
        let h = header(
            "MSH|^~\\&|Mon^0123456789ABCDEF^EUI-64|Ward7|EDGE|HOSP|20240101120000||ORU^R01^ORU_R01|CTRL-1|P|2.6\r",
        );
        let ack = build(Some(&h), AckCode::Accept, &[], "ACK1");
        let m = Message::parse(&ack, DEFAULT_MAX_MESSAGE_BYTES).unwrap_or_else(|e| panic!("{e}"));
        let segs: Vec<&str> = m.segments().iter().map(|s| s.id()).collect();
        assert_eq!(segs, ["MSH", "MSA"]);
        let msh = m.msh().unwrap_or_else(|| panic!("no MSH"));
        assert_eq!(msh.field(3).raw(), "EDGE");
        assert_eq!(msh.field(4).raw(), "HOSP");
        assert_eq!(msh.field(5).raw(), "Mon^0123456789ABCDEF^EUI-64");
        assert_eq!(msh.field(6).raw(), "Ward7");
        assert_eq!(msh.field(9).raw(), "ACK^R01^ACK");
        assert_eq!(msh.field(10).text(), "ACK1");
        assert_eq!(msh.field(11).text(), "P");
        assert_eq!(msh.field(12).text(), "2.6");
        assert!(crate::sources::hl7::parser::parse_dtm_unix_ms(&msh.field(7).text()).is_ok());
        let msa = m.first("MSA").unwrap_or_else(|| panic!("no MSA"));
        assert_eq!(
            (msa.field(1).text(), msa.field(2).text()),
            ("AA".into(), "CTRL-1".into())
        );
        assert!(ack.ends_with('\r'));
    }

    #[test]
    fn ae_has_one_err_per_problem_with_location_code_severity_and_text() {
        let h = header("MSH|^~\\&|Mon||||20240101120000||ORU^R01|C2|P|2.5\r");
        let problems = [
            Problem::error(
                Some(ErrorLocation::field("OBX", 3, 5)),
                ErrorCode::DataType,
                "OBX 3: value \"NaN\" is not a number | really",
            ),
            Problem::error(
                Some(ErrorLocation::field("PV1", 1, 3).with_component(1)),
                ErrorCode::RequiredFieldMissing,
                "ward missing",
            ),
            Problem::error(None, ErrorCode::ApplicationInternal, "x".repeat(400)),
        ];
        let ack = build(Some(&h), AckCode::Error, &problems, "A2");
        let m = Message::parse(&ack, DEFAULT_MAX_MESSAGE_BYTES).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.first("MSA").map(|s| s.field(1).text()), Some("AE".into()));
        // No receiving application in the original: the ACK names Wardwatch as its sender.
        assert_eq!(
            m.msh().map(|s| s.field(3).text()),
            Some(APPLICATION_NAME.into())
        );
        assert_eq!(m.msh().map(|s| s.field(12).text()), Some("2.5".into()));
        let errs: Vec<_> = m.segments().iter().filter(|s| s.id() == "ERR").collect();
        assert_eq!(errs.len(), 3);
        assert_eq!(errs[0].field(2).raw(), "OBX^3^5");
        assert_eq!(errs[0].field(3).raw(), "102^Data type error^HL70357");
        assert_eq!(errs[0].field(4).text(), "E");
        assert_eq!(
            errs[0].field(8).text(),
            "OBX 3: value \"NaN\" is not a number | really"
        );
        assert_eq!(errs[1].field(2).raw(), "PV1^1^3^1^1");
        assert_eq!(errs[1].field(3).component(1).text(), "101");
        assert_eq!(errs[2].field(2).raw(), "");
        assert_eq!(
            errs[2].field(8).text().chars().count(),
            MAX_USER_MESSAGE_CHARS
        );
    }

    #[test]
    fn uses_the_original_delimiters_and_survives_no_header() {
        let h = header("MSH#$*!@#Mon$X####20240101##ADT$A01#C3#P#2.6\r");
        let ack = build(
            Some(&h),
            AckCode::Reject,
            &[Problem::error(
                Some(ErrorLocation::field("MSH", 1, 9)),
                ErrorCode::UnsupportedMessageType,
                "ADT^A01 is not supported",
            )],
            "A3",
        );
        assert!(ack.starts_with("MSH#$*!@#"), "{ack}");
        let m = Message::parse(&ack, DEFAULT_MAX_MESSAGE_BYTES).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.msh().map(|s| s.field(9).raw()), Some("ACK$A01$ACK"));
        assert_eq!(m.msh().map(|s| s.field(5).raw()), Some("Mon$X"));
        let err = m.first("ERR").unwrap_or_else(|| panic!("no ERR"));
        assert_eq!(err.field(3).component(1).text(), "200");
        assert_eq!(err.field(8).text(), "ADT^A01 is not supported");
        let ack = build(None, AckCode::Reject, &[], "A4");
        let m = Message::parse(&ack, DEFAULT_MAX_MESSAGE_BYTES).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.first("MSA").map(|s| s.field(1).text()), Some("AR".into()));
        assert_eq!(
            m.first("MSA").map(|s| s.field(2).text()),
            Some(String::new())
        );
    }

    #[test]
    fn control_ids_are_unique_and_short() {
        let a = next_control_id();
        let b = next_control_id();
        assert_ne!(a, b);
        assert!(a.len() <= 20, "{a}");
    }
}
