//! A small HL7 v2 parser for the ER7 ("pipe and hat") encoding.
//!
//! The message text is split once into segments and fields (borrowed slices, so a message costs a few bytes per
//! field however it is shaped); repetitions, components and subcomponents are split on access, and escape
//! sequences are decoded only at the leaves ([`Component::sub`], [`Field::text`]). Delimiters come from MSH-1
//! and MSH-2, never assumed. Segments may be separated by `\r` (the standard), `\n` or `\r\n`.
//!
//! Nothing here indexes without a check or unwraps: any input yields a [`Message`] or a [`ParseError`] that
//! names the segment (and field) at fault.

use std::borrow::Cow;

/// Default largest message accepted, in bytes (1 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Most fields accepted in one segment (the widest standard segment has well under 100).
pub const MAX_FIELDS_PER_SEGMENT: usize = 1000;

/// The delimiters a message declares in MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Field separator (MSH-1), usually `|`.
    pub field: char,
    /// Component separator, usually `^`.
    pub component: char,
    /// Repetition separator, usually `~` (absent if MSH-2 does not declare one).
    pub repetition: Option<char>,
    /// Escape character, usually `\` (absent if MSH-2 does not declare one).
    pub escape: Option<char>,
    /// Subcomponent separator, usually `&` (absent if MSH-2 does not declare one).
    pub subcomponent: Option<char>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self {
            field: '|',
            component: '^',
            repetition: Some('~'),
            escape: Some('\\'),
            subcomponent: Some('&'),
        }
    }
}

impl Delimiters {
    /// The MSH-2 text declaring these delimiters (e.g. `^~\&`).
    pub fn encoding_characters(&self) -> String {
        let mut s = String::new();
        s.push(self.component);
        for c in [self.repetition, self.escape, self.subcomponent] {
            match c {
                Some(c) => s.push(c),
                None => break,
            }
        }
        s
    }

    fn is_delimiter(&self, c: char) -> bool {
        c == self.field
            || c == self.component
            || Some(c) == self.repetition
            || Some(c) == self.escape
            || Some(c) == self.subcomponent
    }
}

/// Why a message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The message is larger than the configured limit.
    #[error("message is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Nothing but whitespace.
    #[error("message is empty")]
    Empty,
    /// The first segment is not MSH.
    #[error("message does not start with an MSH segment (it starts with {found:?})")]
    NoMsh {
        /// The first characters of the message.
        found: String,
    },
    /// MSH-1 is missing or not a usable separator.
    #[error("MSH-1 (field separator): {detail}")]
    BadFieldSeparator {
        /// What is wrong.
        detail: String,
    },
    /// MSH-2 is missing or declares unusable encoding characters.
    #[error("MSH-2 (encoding characters) {found:?}: {detail}")]
    BadEncodingCharacters {
        /// The MSH-2 text.
        found: String,
        /// What is wrong.
        detail: String,
    },
    /// A segment does not start with a valid segment id.
    #[error(
        "segment {index}: {found:?} is not a segment id (three upper-case letters or digits, starting with a letter)"
    )]
    BadSegmentId {
        /// 1-based position of the segment in the message.
        index: usize,
        /// The text where the id should be (truncated).
        found: String,
    },
    /// A second MSH segment: one message per call (batches are not supported).
    #[error(
        "segment {index}: a second MSH segment (one message per frame; batches are not supported)"
    )]
    SecondMsh {
        /// 1-based position of the segment in the message.
        index: usize,
    },
    /// A segment has more fields than any real segment.
    #[error("segment {index} ({id}) has {count} fields, more than the {limit} accepted")]
    TooManyFields {
        /// 1-based position of the segment in the message.
        index: usize,
        /// Segment id.
        id: String,
        /// Fields found.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A raw control character (binary data must be escaped in HL7 v2).
    #[error(
        "segment {index} ({id}), field {field}: control character 0x{byte:02X} is not allowed (binary data must be escaped)"
    )]
    ControlCharacter {
        /// 1-based position of the segment in the message.
        index: usize,
        /// Segment id.
        id: String,
        /// HL7 field number (0 for the segment id).
        field: usize,
        /// The character.
        byte: u32,
    },
}

impl ParseError {
    /// Where the error is, as (segment id, occurrence, field) when that is known: for the ACK's ERR-2.
    pub fn location(&self) -> Option<(String, usize, Option<usize>)> {
        match self {
            Self::NoMsh { .. } | Self::SecondMsh { .. } => Some(("MSH".into(), 1, None)),
            Self::BadFieldSeparator { .. } => Some(("MSH".into(), 1, Some(1))),
            Self::BadEncodingCharacters { .. } => Some(("MSH".into(), 1, Some(2))),
            Self::ControlCharacter { id, field, .. } if id == "MSH" => {
                Some(("MSH".into(), 1, Some(*field)))
            }
            _ => None,
        }
    }
}

/// Decodes message bytes as text: UTF-8 when valid (a leading byte-order mark is dropped), otherwise ISO 8859-1
/// (every byte is a character, so this never fails; a garbled name is better than a lost vital sign).
pub fn decode_text(bytes: &[u8]) -> Cow<'_, str> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
    }
}

/// A parsed message: its delimiters and segments, borrowing the text.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    delimiters: Delimiters,
    segments: Vec<Segment<'a>>,
}

/// One segment: its id and raw fields.
#[derive(Debug, Clone)]
pub struct Segment<'a> {
    id: &'a str,
    index: usize,
    occurrence: usize,
    /// `fields[0]` is HL7 field 1. For MSH, field 1 is the field separator and field 2 the encoding characters.
    fields: Vec<&'a str>,
    delimiters: Delimiters,
}

/// One field of a segment (all its repetitions), still encoded.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    raw: &'a str,
    delimiters: Delimiters,
    /// MSH-1 and MSH-2 are literal: never split or unescaped.
    literal: bool,
}

/// One repetition of a field, still encoded.
#[derive(Debug, Clone, Copy)]
pub struct Repetition<'a> {
    raw: &'a str,
    delimiters: Delimiters,
    literal: bool,
}

/// One component of a repetition, still encoded.
#[derive(Debug, Clone, Copy)]
pub struct Component<'a> {
    raw: &'a str,
    delimiters: Delimiters,
    literal: bool,
}

fn nth_part(s: &str, sep: Option<char>, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    match sep {
        Some(sep) => s.split(sep).nth(n - 1).unwrap_or(""),
        None if n == 1 => s,
        None => "",
    }
}

fn is_null(raw: &str) -> bool {
    raw == "\"\""
}

impl<'a> Field<'a> {
    /// The field exactly as sent (escapes not decoded).
    pub fn raw(&self) -> &'a str {
        self.raw
    }
    /// Whether the field is empty or the HL7 null `""`.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty() || is_null(self.raw)
    }
    /// The repetitions (one, possibly empty, if the field has no repetition separator).
    pub fn repetitions(&self) -> Vec<Repetition<'a>> {
        let sep = if self.literal {
            None
        } else {
            self.delimiters.repetition
        };
        match sep {
            Some(sep) => self
                .raw
                .split(sep)
                .map(|raw| Repetition {
                    raw,
                    delimiters: self.delimiters,
                    literal: self.literal,
                })
                .collect(),
            None => vec![self.first()],
        }
    }
    /// The first repetition.
    pub fn first(&self) -> Repetition<'a> {
        let raw = if self.literal {
            self.raw
        } else {
            nth_part(self.raw, self.delimiters.repetition, 1)
        };
        Repetition {
            raw,
            delimiters: self.delimiters,
            literal: self.literal,
        }
    }
    /// Component `n` (1-based) of the first repetition.
    pub fn component(&self, n: usize) -> Component<'a> {
        self.first().component(n)
    }
    /// The decoded text of the first repetition's first component (its first subcomponent): the value of a
    /// simple field. Empty for the HL7 null `""`.
    pub fn text(&self) -> String {
        self.component(1).text()
    }
}

impl<'a> Repetition<'a> {
    /// The repetition exactly as sent.
    pub fn raw(&self) -> &'a str {
        self.raw
    }
    /// Whether it is empty or the HL7 null `""`.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty() || is_null(self.raw)
    }
    /// Component `n` (1-based; 0 or past the end gives an empty component).
    pub fn component(&self, n: usize) -> Component<'a> {
        let raw = if self.literal {
            if n == 1 { self.raw } else { "" }
        } else {
            nth_part(self.raw, Some(self.delimiters.component), n)
        };
        Component {
            raw,
            delimiters: self.delimiters,
            literal: self.literal,
        }
    }
    /// How many components it has (at least 1).
    pub fn component_count(&self) -> usize {
        if self.literal {
            1
        } else {
            self.raw.split(self.delimiters.component).count()
        }
    }
}

impl<'a> Component<'a> {
    /// The component exactly as sent.
    pub fn raw(&self) -> &'a str {
        self.raw
    }
    /// Whether it is empty or the HL7 null `""`.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty() || is_null(self.raw)
    }
    /// Decoded subcomponent `n` (1-based).
    pub fn sub(&self, n: usize) -> String {
        if self.literal {
            return if n == 1 {
                self.raw.to_string()
            } else {
                String::new()
            };
        }
        let raw = nth_part(self.raw, self.delimiters.subcomponent, n);
        if is_null(raw) {
            return String::new();
        }
        unescape(raw, &self.delimiters).into_owned()
    }
    /// Decoded text of the first subcomponent (the whole component when it has no subcomponents).
    pub fn text(&self) -> String {
        self.sub(1)
    }
}

impl<'a> Segment<'a> {
    /// The segment id (e.g. `OBX`).
    pub fn id(&self) -> &'a str {
        self.id
    }
    /// 1-based position of the segment in the message.
    pub fn index(&self) -> usize {
        self.index
    }
    /// 1-based occurrence of this segment id in the message (the "segment sequence" of an ERR-2 location).
    pub fn occurrence(&self) -> usize {
        self.occurrence
    }
    /// Number of fields present (trailing empty fields are often omitted by senders).
    pub fn field_count(&self) -> usize {
        self.fields.len()
    }
    /// HL7 field `n` (1-based; absent fields are empty). For MSH, field 1 is the field separator and field 2
    /// the encoding characters, both returned literally.
    pub fn field(&self, n: usize) -> Field<'a> {
        let raw = n
            .checked_sub(1)
            .and_then(|i| self.fields.get(i))
            .copied()
            .unwrap_or("");
        Field {
            raw,
            delimiters: self.delimiters,
            literal: self.id == "MSH" && (n == 1 || n == 2),
        }
    }
}

impl<'a> Message<'a> {
    /// Parses one message. `max_bytes` bounds the text's length.
    pub fn parse(text: &'a str, max_bytes: usize) -> Result<Self, ParseError> {
        if text.len() > max_bytes {
            return Err(ParseError::TooLarge {
                size: text.len(),
                limit: max_bytes,
            });
        }
        let text = text.trim_matches(['\r', '\n', ' ', '\t']);
        if text.is_empty() {
            return Err(ParseError::Empty);
        }
        let delimiters = parse_delimiters(text)?;
        let mut segments: Vec<Segment<'a>> = Vec::new();
        let mut counts: Vec<(&'a str, usize)> = Vec::new();
        let lines = text
            .split(['\r', '\n'])
            .filter(|l| !l.trim_matches([' ', '\t']).is_empty());
        for (i, line) in lines.enumerate() {
            let index = i + 1;
            let id_end = line.find(delimiters.field).unwrap_or(line.len());
            let id = line.get(..id_end).unwrap_or("");
            if !valid_segment_id(id) {
                return Err(ParseError::BadSegmentId {
                    index,
                    found: printable_prefix(line, 12),
                });
            }
            if id == "MSH" && index > 1 {
                return Err(ParseError::SecondMsh { index });
            }
            let rest = line.get(id_end..).unwrap_or("");
            let fields: Vec<&'a str> = if id == "MSH" {
                msh_fields(line, &delimiters)
            } else {
                // `rest` is empty or starts with the field separator.
                rest.split(delimiters.field).skip(1).collect()
            };
            if fields.len() > MAX_FIELDS_PER_SEGMENT {
                return Err(ParseError::TooManyFields {
                    index,
                    id: id.to_string(),
                    count: fields.len(),
                    limit: MAX_FIELDS_PER_SEGMENT,
                });
            }
            for (f, raw) in fields.iter().enumerate() {
                if let Some(c) = raw.chars().find(|c| is_forbidden_control(*c)) {
                    return Err(ParseError::ControlCharacter {
                        index,
                        id: id.to_string(),
                        field: f + 1,
                        byte: u32::from(c),
                    });
                }
            }
            let occurrence = match counts.iter_mut().find(|(s, _)| *s == id) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    counts.push((id, 1));
                    1
                }
            };
            segments.push(Segment {
                id,
                index,
                occurrence,
                fields,
                delimiters,
            });
        }
        Ok(Self {
            delimiters,
            segments,
        })
    }

    /// The delimiters from MSH-1/MSH-2.
    pub fn delimiters(&self) -> Delimiters {
        self.delimiters
    }
    /// All segments in order (the first is MSH).
    pub fn segments(&self) -> &[Segment<'a>] {
        &self.segments
    }
    /// The first segment with this id.
    pub fn first(&self, id: &str) -> Option<&Segment<'a>> {
        self.segments.iter().find(|s| s.id == id)
    }
    /// The MSH segment (always present in a parsed message).
    pub fn msh(&self) -> Option<&Segment<'a>> {
        self.segments.first().filter(|s| s.id == "MSH")
    }
    /// The header fields an acknowledgement needs.
    pub fn header(&self) -> Header {
        match self.msh() {
            Some(msh) => Header::from_msh(msh, self.delimiters),
            None => Header::empty(self.delimiters),
        }
    }
}

/// The MSH fields needed to route and acknowledge a message, owned. Raw fields stay encoded with
/// [`Header::delimiters`] so they can be copied into the ACK as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The message's delimiters.
    pub delimiters: Delimiters,
    /// MSH-3 as sent.
    pub sending_application_raw: String,
    /// MSH-4 as sent.
    pub sending_facility_raw: String,
    /// MSH-5 as sent.
    pub receiving_application_raw: String,
    /// MSH-6 as sent.
    pub receiving_facility_raw: String,
    /// MSH-9.1 (e.g. `ORU`).
    pub message_code: String,
    /// MSH-9.2 (e.g. `R01`).
    pub trigger_event: String,
    /// MSH-9.3 (e.g. `ORU_R01`).
    pub message_structure: String,
    /// MSH-10 decoded.
    pub control_id: String,
    /// MSH-11.1 decoded (e.g. `P`).
    pub processing_id: String,
    /// MSH-12.1 decoded (e.g. `2.6`).
    pub version: String,
}

impl Header {
    fn empty(delimiters: Delimiters) -> Self {
        Self {
            delimiters,
            sending_application_raw: String::new(),
            sending_facility_raw: String::new(),
            receiving_application_raw: String::new(),
            receiving_facility_raw: String::new(),
            message_code: String::new(),
            trigger_event: String::new(),
            message_structure: String::new(),
            control_id: String::new(),
            processing_id: String::new(),
            version: String::new(),
        }
    }

    fn from_msh(msh: &Segment<'_>, delimiters: Delimiters) -> Self {
        let t = msh.field(9);
        Self {
            delimiters,
            sending_application_raw: msh.field(3).raw().to_string(),
            sending_facility_raw: msh.field(4).raw().to_string(),
            receiving_application_raw: msh.field(5).raw().to_string(),
            receiving_facility_raw: msh.field(6).raw().to_string(),
            message_code: t.component(1).text().trim().to_string(),
            trigger_event: t.component(2).text().trim().to_string(),
            message_structure: t.component(3).text().trim().to_string(),
            control_id: msh.field(10).text().trim().to_string(),
            processing_id: msh.field(11).text().trim().to_string(),
            version: msh.field(12).text().trim().to_string(),
        }
    }

    /// Best effort on a message that failed to parse: reads the MSH line alone, so the rejection can still be
    /// addressed (MSA-2 = MSH-10). `None` if even the MSH line is unusable.
    pub fn salvage(text: &str) -> Option<Self> {
        let text = text.trim_start_matches(['\r', '\n', ' ', '\t']);
        let delimiters = parse_delimiters(text).ok()?;
        let line = text.split(['\r', '\n']).next().unwrap_or("");
        let fields = msh_fields(line, &delimiters);
        let seg = Segment {
            id: "MSH",
            index: 1,
            occurrence: 1,
            fields,
            delimiters,
        };
        Some(Self::from_msh(&seg, delimiters))
    }
}

/// MSH fields: [MSH-1 (the separator), MSH-2 (encoding characters), MSH-3, ...].
fn msh_fields<'a>(line: &'a str, d: &Delimiters) -> Vec<&'a str> {
    let sep_len = d.field.len_utf8();
    let sep = line.get(3..3 + sep_len).unwrap_or("");
    let after = line.get(3 + sep_len..).unwrap_or("");
    let mut fields = vec![sep];
    fields.extend(after.split(d.field));
    fields
}

fn parse_delimiters(text: &str) -> Result<Delimiters, ParseError> {
    let Some(rest) = text.strip_prefix("MSH") else {
        return Err(ParseError::NoMsh {
            found: printable_prefix(text, 12),
        });
    };
    let mut chars = rest.chars();
    let field = chars.next().ok_or_else(|| ParseError::BadFieldSeparator {
        detail: "missing: the message ends after \"MSH\"".into(),
    })?;
    if !usable_delimiter(field) {
        return Err(ParseError::BadFieldSeparator {
            detail: format!("{field:?} cannot be a delimiter"),
        });
    }
    let enc: String = chars
        .take_while(|c| *c != field && *c != '\r' && *c != '\n')
        .collect();
    let bad = |detail: &str| ParseError::BadEncodingCharacters {
        found: printable_prefix(&enc, 8),
        detail: detail.to_string(),
    };
    let e: Vec<char> = enc.chars().collect();
    if e.is_empty() {
        return Err(bad("missing: at least the component separator is required"));
    }
    if e.len() > 5 {
        return Err(bad(
            "more than five characters (did MSH-2 lose its field separator?)",
        ));
    }
    for (i, c) in e.iter().enumerate() {
        if !usable_delimiter(*c) {
            return Err(bad(&format!("{c:?} cannot be a delimiter")));
        }
        if *c == field || e.iter().skip(i + 1).any(|o| o == c) {
            return Err(bad(&format!("{c:?} is used for two purposes")));
        }
    }
    // The fifth character (v2.7 truncation character) is data, not a delimiter.
    Ok(Delimiters {
        field,
        component: e.first().copied().unwrap_or('^'),
        repetition: e.get(1).copied(),
        escape: e.get(2).copied(),
        subcomponent: e.get(3).copied(),
    })
}

fn usable_delimiter(c: char) -> bool {
    !c.is_alphanumeric() && !c.is_whitespace() && !c.is_control()
}

fn is_forbidden_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

fn valid_segment_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 3
        && b.first().is_some_and(u8::is_ascii_uppercase)
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// The first `n` characters, with control characters shown as `\u{..}` escapes (for error messages).
fn printable_prefix(s: &str, n: usize) -> String {
    s.chars()
        .take(n)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Decodes HL7 escape sequences: `\F\ \S\ \T\ \R\ \E\` (delimiters), `\Xhh..\` (hex bytes, read as UTF-8),
/// `\.br\` (line break); highlighting (`\H\ \N\`), other formatting and character-set escapes are dropped.
/// An unknown or unterminated sequence is kept literally.
pub fn unescape<'s>(s: &'s str, d: &Delimiters) -> Cow<'s, str> {
    let Some(esc) = d.escape else {
        return Cow::Borrowed(s);
    };
    if !s.contains(esc) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(esc) {
        out.push_str(rest.get(..pos).unwrap_or(""));
        let after = rest.get(pos + esc.len_utf8()..).unwrap_or("");
        let Some(end) = after.find(esc) else {
            // Unterminated: literal.
            out.push_str(rest.get(pos..).unwrap_or(""));
            rest = "";
            break;
        };
        let seq = after.get(..end).unwrap_or("");
        if !decode_escape(seq, d, &mut out) {
            out.push(esc);
            out.push_str(seq);
            out.push(esc);
        }
        rest = after.get(end + esc.len_utf8()..).unwrap_or("");
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn decode_escape(seq: &str, d: &Delimiters, out: &mut String) -> bool {
    match seq {
        "F" => out.push(d.field),
        "S" => out.push(d.component),
        "T" => out.push(d.subcomponent.unwrap_or('&')),
        "R" => out.push(d.repetition.unwrap_or('~')),
        "E" => out.push(d.escape.unwrap_or('\\')),
        "H" | "N" => {}
        ".br" => out.push('\n'),
        _ => {
            if let Some(hex) = seq.strip_prefix('X') {
                match hex_bytes(hex) {
                    Some(bytes) => out.push_str(&String::from_utf8_lossy(&bytes)),
                    None => return false,
                }
            } else if seq.starts_with('.') || seq.starts_with('C') || seq.starts_with('M') {
                // Formatting (.sp, .in, ...) and character-set switches: no text of their own.
            } else {
                return false;
            }
        }
    }
    true
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// Encodes text for a field: delimiters and the escape character become escape sequences, line breaks and
/// other control characters become `\Xhh\`. Without an escape character, delimiters are replaced by spaces.
pub fn escape(s: &str, d: &Delimiters) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let Some(e) = d.escape else {
            if d.is_delimiter(c) || c.is_control() {
                out.push(' ');
            } else {
                out.push(c);
            }
            continue;
        };
        let code = if c == e {
            Some("E".to_string())
        } else if c == d.field {
            Some("F".to_string())
        } else if c == d.component {
            Some("S".to_string())
        } else if Some(c) == d.subcomponent {
            Some("T".to_string())
        } else if Some(c) == d.repetition {
            Some("R".to_string())
        } else if c.is_control() {
            let mut buf = [0u8; 4];
            let hex: String = c
                .encode_utf8(&mut buf)
                .bytes()
                .map(|b| format!("{b:02X}"))
                .collect();
            Some(format!("X{hex}"))
        } else {
            None
        };
        match code {
            Some(code) => {
                out.push(e);
                out.push_str(&code);
                out.push(e);
            }
            None => out.push(c),
        }
    }
    out
}

/// Parses an HL7 DTM/TS value `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]` to Unix milliseconds.
///
/// A vital sign needs a time to the minute at least, so values coarser than `YYYYMMDDHHMM` are refused.
/// A value without a UTC offset is read as UTC (IHE PCD asks devices to send the offset).
pub fn parse_dtm_unix_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty".into());
    }
    let (main, offset) = match s.find(['+', '-']) {
        Some(p) => (
            s.get(..p).unwrap_or(""),
            Some((s.get(p..p + 1).unwrap_or("+"), s.get(p + 1..).unwrap_or(""))),
        ),
        None => (s, None),
    };
    let (digits, frac) = match main.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (main, None),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{s:?} is not an HL7 date/time (YYYYMMDDHHMM[SS[.SSSS]][+/-ZZZZ])"
        ));
    }
    if digits.len() < 12 {
        return Err(format!(
            "{s:?} is not precise enough: a measurement time needs at least YYYYMMDDHHMM"
        ));
    }
    if digits.len() != 12 && digits.len() != 14 {
        return Err(format!(
            "{s:?} has {} digits before the fraction/offset (12 or 14 expected)",
            digits.len()
        ));
    }
    let num = |a: usize, b: usize| -> Result<u32, String> {
        digits
            .get(a..b)
            .and_then(|x| x.parse::<u32>().ok())
            .ok_or_else(|| format!("{s:?} is not an HL7 date/time"))
    };
    let year = i32::try_from(num(0, 4)?).map_err(|e| e.to_string())?;
    let month = u8::try_from(num(4, 6)?).map_err(|e| e.to_string())?;
    let day = u8::try_from(num(6, 8)?).map_err(|e| e.to_string())?;
    let hour = u8::try_from(num(8, 10)?).map_err(|e| e.to_string())?;
    let minute = u8::try_from(num(10, 12)?).map_err(|e| e.to_string())?;
    let second = if digits.len() == 14 {
        u8::try_from(num(12, 14)?).map_err(|e| e.to_string())?
    } else {
        0
    };
    let millis: u16 = match frac {
        None => 0,
        Some(f) => {
            if digits.len() != 14
                || f.is_empty()
                || f.len() > 4
                || !f.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(format!(
                    "{s:?}: the fraction must follow the seconds and have 1-4 digits"
                ));
            }
            let padded = format!("{f:0<4}");
            padded
                .get(..3)
                .and_then(|m| m.parse::<u16>().ok())
                .unwrap_or(0)
        }
    };
    let offset = match offset {
        None => time::UtcOffset::UTC,
        Some((sign, z)) => {
            if z.len() != 4 || !z.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{s:?}: the UTC offset must be +HHMM or -HHMM"));
            }
            let h = z.get(..2).and_then(|x| x.parse::<i8>().ok()).unwrap_or(99);
            let m = z.get(2..).and_then(|x| x.parse::<i8>().ok()).unwrap_or(99);
            if h > 14 || m > 59 {
                return Err(format!("{s:?}: UTC offset out of range (-1200..+1400)"));
            }
            let (h, m) = if sign == "-" { (-h, -m) } else { (h, m) };
            time::UtcOffset::from_hms(h, m, 0).map_err(|e| format!("{s:?}: UTC offset {e}"))?
        }
    };
    let month = time::Month::try_from(month).map_err(|e| format!("{s:?}: month {e}"))?;
    let date =
        time::Date::from_calendar_date(year, month, day).map_err(|e| format!("{s:?}: {e}"))?;
    let t = time::Time::from_hms_milli(hour, minute, second, millis)
        .map_err(|e| format!("{s:?}: {e}"))?;
    let ts = time::PrimitiveDateTime::new(date, t).assume_offset(offset);
    i64::try_from(ts.unix_timestamp_nanos() / 1_000_000).map_err(|e| e.to_string())
}

/// Parses an HL7 NM value strictly: optional sign, digits, optional decimal point (no exponent, no `NaN`,
/// no `Infinity`). Surrounding spaces are ignored.
pub fn parse_nm(s: &str) -> Option<f64> {
    let t = s.trim();
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let mut digits = 0usize;
    let mut dots = 0usize;
    for b in body.bytes() {
        match b {
            b'0'..=b'9' => digits += 1,
            b'.' => dots += 1,
            _ => return None,
        }
    }
    if digits == 0 || dots > 1 {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = DEFAULT_MAX_MESSAGE_BYTES;

    fn parse(s: &str) -> Message<'_> {
        Message::parse(s, MAX).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_segments_fields_components_repetitions() {
        let m = parse(
            "MSH|^~\\&|App^0123^EUI-64|Fac|||20240101120000+0100||ORU^R01^ORU_R01|42|P|2.6\r\
             PID|||MRN1^^^Hosp^MR~OTHER^^^X^PI||Doe^John\r\
             OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.0.1.3|97|262688^MDC_DIM_PERCENT^MDC\r",
        );
        assert_eq!(m.segments().len(), 3);
        let msh = m.msh().unwrap_or_else(|| panic!("no MSH"));
        assert_eq!(msh.field(1).raw(), "|");
        assert_eq!(msh.field(2).raw(), "^~\\&");
        assert_eq!(msh.field(2).text(), "^~\\&", "MSH-2 is literal");
        assert_eq!(msh.field(3).component(2).text(), "0123");
        assert_eq!(msh.field(10).text(), "42");
        let pid = m.first("PID").unwrap_or_else(|| panic!("no PID"));
        let reps = pid.field(3).repetitions();
        assert_eq!(reps.len(), 2);
        assert_eq!(reps[1].component(1).text(), "OTHER");
        assert_eq!(reps[0].component(5).text(), "MR");
        assert_eq!(pid.field(5).component(2).text(), "John");
        assert!(pid.field(99).is_empty());
        assert_eq!(pid.field(0).raw(), "");
        let obx = m.first("OBX").unwrap_or_else(|| panic!("no OBX"));
        assert_eq!(obx.field(6).component(2).text(), "MDC_DIM_PERCENT");
        let h = m.header();
        assert_eq!(
            (
                h.message_code.as_str(),
                h.trigger_event.as_str(),
                h.message_structure.as_str()
            ),
            ("ORU", "R01", "ORU_R01")
        );
        assert_eq!((h.control_id.as_str(), h.version.as_str()), ("42", "2.6"));
    }

    #[test]
    fn custom_delimiters_come_from_msh() {
        let m = parse("MSH#$*!@#App$X#Fac#\nPID###A$B*C$D@sub#\n");
        assert_eq!(m.delimiters().field, '#');
        assert_eq!(m.delimiters().component, '$');
        assert_eq!(m.delimiters().repetition, Some('*'));
        assert_eq!(m.delimiters().escape, Some('!'));
        assert_eq!(m.delimiters().subcomponent, Some('@'));
        let msh = m.msh().unwrap_or_else(|| panic!("no MSH"));
        assert_eq!(msh.field(3).component(2).text(), "X");
        let pid = m.first("PID").unwrap_or_else(|| panic!("no PID"));
        let reps = pid.field(3).repetitions();
        assert_eq!(reps[0].component(2).text(), "B");
        assert_eq!(reps[1].component(2).sub(2), "sub");
        // The standard characters are plain data here.
        let m = parse("MSH#$*!@#A|B^C~D\\E&F#\r");
        assert_eq!(
            m.msh().map(|s| s.field(3).text()),
            Some("A|B^C~D\\E&F".into())
        );
    }

    #[test]
    fn escapes_are_decoded_and_encoded() {
        let d = Delimiters::default();
        assert_eq!(
            unescape("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", &d),
            "a|b^c&d~e\\f"
        );
        assert_eq!(unescape("x\\X0D0A\\y\\.br\\z", &d), "x\r\ny\nz");
        assert_eq!(unescape("\\H\\bold\\N\\", &d), "bold");
        assert_eq!(
            unescape("keep \\Q\\ and \\Xzz\\", &d),
            "keep \\Q\\ and \\Xzz\\"
        );
        assert_eq!(unescape("dangling \\F", &d), "dangling \\F");
        let m = parse("MSH|^~\\&|A\\S\\B\r");
        assert_eq!(m.msh().map(|s| s.field(3).text()), Some("A^B".into()));
        // Custom escape character.
        let d2 = Delimiters {
            escape: Some('!'),
            ..Delimiters::default()
        };
        assert_eq!(unescape("1!F!2", &d2), "1|2");
        let text = "a|b^c&d~e\\f\r";
        assert_eq!(unescape(&escape(text, &d), &d), text);
        assert_eq!(escape("x|y", &d), "x\\F\\y");
    }

    #[test]
    fn empty_null_and_truncated_segments() {
        let m = parse("MSH|^~\\&\rPID\rPV1||\"\"|\rOBX|1|NM");
        let pid = m.first("PID").unwrap_or_else(|| panic!("no PID"));
        assert_eq!(pid.field_count(), 0);
        assert!(pid.field(3).is_empty());
        let pv1 = m.first("PV1").unwrap_or_else(|| panic!("no PV1"));
        assert!(pv1.field(2).is_empty());
        assert_eq!(pv1.field(2).text(), "");
        let obx = m.first("OBX").unwrap_or_else(|| panic!("no OBX"));
        assert_eq!(obx.field(2).text(), "NM");
        assert_eq!(obx.field(5).text(), "");
        let h = m.header();
        assert_eq!(h.control_id, "");
        // Mixed line endings and blank lines.
        let m = parse("\r\nMSH|^~\\&|A\r\n\r\nPID|1\n\nOBX|1\r\n");
        assert_eq!(m.segments().len(), 3);
        assert_eq!(m.segments()[2].occurrence(), 1);
    }

    #[test]
    fn rejects_bad_headers_with_precise_errors() {
        let err = |s: &str| {
            Message::parse(s, MAX)
                .err()
                .unwrap_or_else(|| panic!("{s:?} parsed"))
        };
        assert_eq!(err(""), ParseError::Empty);
        assert_eq!(err("\r\n  "), ParseError::Empty);
        assert!(matches!(err("PID|||1"), ParseError::NoMsh { .. }));
        assert!(matches!(err("MSH"), ParseError::BadFieldSeparator { .. }));
        assert!(matches!(
            err("MSHA^~\\&"),
            ParseError::BadFieldSeparator { .. }
        ));
        assert!(matches!(
            err("MSH||A"),
            ParseError::BadEncodingCharacters { .. }
        ));
        assert!(matches!(
            err("MSH|^^\\&|A"),
            ParseError::BadEncodingCharacters { .. }
        ));
        assert!(matches!(
            err("MSH|^~\\&|A\rpid|1"),
            ParseError::BadSegmentId { index: 2, .. }
        ));
        assert!(matches!(
            err("MSH|^~\\&|A\rPIDX|1"),
            ParseError::BadSegmentId { index: 2, .. }
        ));
        assert!(matches!(
            err("MSH|^~\\&|A\rMSH|^~\\&|B"),
            ParseError::SecondMsh { index: 2 }
        ));
        assert!(matches!(
            err("MSH|^~\\&|A\rPID|1|\u{0}x"),
            ParseError::ControlCharacter {
                index: 2,
                field: 2,
                byte: 0,
                ..
            }
        ));
        let big = format!("MSH|^~\\&|{}", "x".repeat(100));
        assert!(matches!(
            Message::parse(&big, 50),
            Err(ParseError::TooLarge { limit: 50, .. })
        ));
        let wide = format!("MSH|^~\\&\rOBX{}", "|".repeat(MAX_FIELDS_PER_SEGMENT + 1));
        assert!(matches!(err(&wide), ParseError::TooManyFields { .. }));
        let e = err("MSH|^~\\&|A\rPID|1|\u{7}");
        assert!(e.to_string().contains("segment 2 (PID), field 2"), "{e}");
    }

    #[test]
    fn binary_garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"MSH|^~\\&\r\nPIDOBX0123456789.\"\x00\x0b\x1c\xff\xc3";
        for round in 0..3000 {
            let len = (next() % 200) as usize;
            let mut bytes: Vec<u8> = if round % 2 == 0 {
                b"MSH|^~\\&|".to_vec()
            } else {
                Vec::new()
            };
            for _ in 0..len {
                let r = next();
                let b = if r % 3 == 0 {
                    (r >> 8) as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                };
                bytes.push(b);
            }
            let text = decode_text(&bytes);
            if let Ok(m) = Message::parse(&text, MAX) {
                let _ = m.header();
                for s in m.segments() {
                    for f in 0..s.field_count() + 2 {
                        for r in s.field(f).repetitions() {
                            for c in 0..r.component_count() + 1 {
                                let _ = r.component(c).sub(2);
                                let _ = r.component(c).text();
                            }
                        }
                    }
                }
            }
            let _ = Header::salvage(&text);
            let _ = parse_dtm_unix_ms(&text);
            let _ = parse_nm(&text);
        }
    }

    #[test]
    fn salvages_the_header_of_a_broken_message() {
        let h = Header::salvage(
            "MSH|^~\\&|Mon^ABC^EUI-64||Recv||20240101||ORU^R01|CTRL9|P|2.6\rbad segment\r",
        )
        .unwrap_or_else(|| panic!("no header"));
        assert_eq!(h.control_id, "CTRL9");
        assert_eq!(h.sending_application_raw, "Mon^ABC^EUI-64");
        assert!(Header::salvage("garbage").is_none());
    }

    #[test]
    fn latin1_fallback_and_bom() {
        assert_eq!(decode_text(b"\xEF\xBB\xBFMSH"), "MSH");
        assert_eq!(decode_text(b"M\xFCller"), "M\u{fc}ller");
    }

    #[test]
    fn dtm_parsing() {
        assert_eq!(
            parse_dtm_unix_ms("20090813095715+0000"),
            Ok(1_250_157_435_000)
        );
        assert_eq!(
            parse_dtm_unix_ms("20090813095715+0500"),
            Ok(1_250_157_435_000 - 5 * 3_600_000)
        );
        assert_eq!(
            parse_dtm_unix_ms("20090813095715-0130"),
            Ok(1_250_157_435_000 + 90 * 60_000)
        );
        assert_eq!(parse_dtm_unix_ms("200908130957"), Ok(1_250_157_420_000));
        assert_eq!(
            parse_dtm_unix_ms("20090813095715.25+0000"),
            Ok(1_250_157_435_250)
        );
        assert_eq!(
            parse_dtm_unix_ms("20090813095715.1234"),
            Ok(1_250_157_435_123)
        );
        for bad in [
            "",
            "2009",
            "20090813",
            "2009081309",
            "20091313095715",
            "20090230095715",
            "20090813256015",
            "20090813095715+05",
            "20090813095715+2500",
            "2009081309571x",
            "20090813095715.12345",
            "20260124131539000+0800",
        ] {
            assert!(parse_dtm_unix_ms(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn nm_parsing_is_strict() {
        assert_eq!(parse_nm("97"), Some(97.0));
        assert_eq!(parse_nm(" -1.5 "), Some(-1.5));
        assert_eq!(parse_nm("+.5"), Some(0.5));
        assert_eq!(parse_nm("36."), Some(36.0));
        for bad in [
            "", "NaN", "nan", "inf", "Infinity", "1e3", "1.2.3", "-", ".", "12a", "0x10", "1,5",
        ] {
            assert_eq!(parse_nm(bad), None, "{bad:?}");
        }
    }
}
