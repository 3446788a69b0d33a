//! HL7 v2 / IHE PCD-01 over MLLP: bedside monitors and gateways (Device Observation Reporters) connect over
//! TCP and send `ORU^R01` messages framed with MLLP; every message is answered with one HL7 original-mode ACK,
//! sent only after [`EdgeNode::accept`] returned, i.e. once the accepted vitals are durable in the outbox.
//!
//! Pieces: [`parser`] (HL7 v2 ER7 → segments/fields/components, escapes, delimiters from MSH-1/2),
//! [`pcd01`] (ORU^R01 → [`crate::normalize::RawVital`]s with the patient, bed and device context),
//! [`mllp`] (framing), [`ack`] (the ACK). This module ties them to a TCP listener: [`run`].
//!
//! # Acknowledgement policy
//!
//! | situation | MSA-1 | ERR (ERR-3 code from HL7 table 0357) | stored |
//! |---|---|---|---|
//! | every OBX that is a measurement was accepted (or the message has only device/attribute/status-X rows) | `AA` | none | all |
//! | unparseable (no MSH, bad delimiters, bad segment id, raw control bytes) | `AR` | 100 / 102 | nothing |
//! | not `ORU^R01` | `AR` | 200 (201 for another ORU trigger) | nothing |
//! | no MSH-10, processing id not `P`, version not 2.x | `AR` | 101 / 202 / 203 | nothing |
//! | larger than `max_message_bytes` | `AR` | 207 | nothing |
//! | edge outbox full (or its storage failing) | `AR` | 207 "outbox full, resend later" | nothing |
//! | PID or PV1 missing, no OBX, PID-3/PV1-3 empty or unusable, ward not served by this edge | `AE` | 100 / 101 / 102 / 103, one per problem | nothing |
//! | some OBX rejected (unknown MDC code, non-numeric or `NaN` value, unit not understood, impossible value, no time...) | `AE` | one per rejected OBX: ERR-2 `OBX^<n>^<field>`, 101 / 102 / 103 | **the other OBX are stored** |
//! | every measurement OBX rejected | `AE` | one per rejected OBX | nothing |
//!
//! In the partial case the good observations ARE accepted and durable; each ERR-8 says how many observations of
//! the message were stored and that resending is safe. Resending is safe because each vital's idempotency key
//! is `hl7:<MSH-3>:<MSH-10>:<OBX index>:<content digest>`: a re-sent message (same control id, same content)
//! is deduplicated by the outbox and acknowledged `AA` again. The short digest of the decoded observation
//! (patient, bed, device, metric, value, unit, time) is there so that a device that reuses control ids (e.g. a
//! counter reset by a reboot) cannot have a *different* observation silently discarded as a duplicate. Keys
//! longer than 128 bytes become `hl7:sha256:<hex>`.
//!
//! At most [`MAX_ERR_SEGMENTS`] ERR segments are sent; past that the last ERR counts the rest.
//!
//! Other rules: OBX rows with status `X` ("cannot be obtained"), `N`, `I` or `O` are skipped with a log note
//! and no ERR; an empty MLLP frame is treated as a keep-alive and not answered; an ACK is always sent whatever
//! MSH-15/16 ask (original mode); the ACK uses the original message's delimiters, swaps MSH-3/4 with MSH-5/6
//! (MSH-3 is `Wardwatch` when the original MSH-5 was empty), has MSH-9 `ACK^<original trigger>^ACK`
//! (`ACK^R01^ACK` for PCD-01), a new MSH-10 and echoes MSH-11/MSH-12.
//! Every `AE`/`AR` is logged at `warn` with its reasons.
//!
//! # Framing faults
//!
//! Garbage outside a frame is discarded up to the next start block (the connection keeps working); a frame
//! that loses its end block is discarded when the next start block arrives; an oversized frame is discarded up
//! to its end and answered `AR` (addressed to its MSH-10 when its header is readable); a stream that cannot be
//! resynchronised, or a frame not completed within `read_timeout_ms`, closes the connection. Each is counted
//! in [`Hl7Stats::framing_errors`]. Nothing in this module panics on input.
//!
//! # Counters
//!
//! [`run`] takes an `Arc<Hl7Stats>` from the caller, who keeps a clone to read (see [`Hl7Stats::snapshot`]).

#![warn(missing_docs)]

pub mod ack;
pub mod mllp;
pub mod parser;
pub mod pcd01;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};
use wardwatch_proto::v1::{RejectReason, edge_event::Payload};
use wardwatch_proto::validate::{MAX_IDEMPOTENCY_KEY, Rejection};

use crate::config::ConfigError;
use crate::node::{AcceptError, AcceptReport, EdgeNode, Incoming};
use crate::normalize::{RawVital, normalize_vital};
use crate::outbox::OutboxError;
use ack::{AckCode, ErrorCode, ErrorLocation, Problem};
use mllp::{MllpDecoder, MllpEvent};
use parser::{Header, Message, ParseError};
use pcd01::ObxOutcome;

/// Most ERR segments in one ACK: beyond this the rest are summarised in the last ERR.
pub const MAX_ERR_SEGMENTS: usize = 200;

/// Configuration of the HL7 v2 / MLLP listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7MllpConfig {
    /// Address to listen on (MLLP's registered port is 2575).
    pub listen: SocketAddr,
    /// Largest message accepted, in bytes (default 1 MiB); larger frames are discarded and answered `AR`.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// How long a started frame may go without new bytes before the connection is closed, in ms (default
    /// 30 s). Idle connections between messages are kept open: monitors hold one connection for hours.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Most simultaneous connections (default 256); more are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_message_bytes() -> usize {
    parser::DEFAULT_MAX_MESSAGE_BYTES
}
fn default_read_timeout_ms() -> u64 {
    30_000
}
fn default_max_connections() -> usize {
    256
}

impl Default for Hl7MllpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2575)),
            max_message_bytes: default_max_message_bytes(),
            read_timeout_ms: default_read_timeout_ms(),
            max_connections: default_max_connections(),
        }
    }
}

impl Hl7MllpConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: &str| Err(ConfigError::Invalid(format!("hl7_mllp: {s}")));
        if !(1024..=64 << 20).contains(&self.max_message_bytes) {
            return bad("max_message_bytes must be between 1 KiB and 64 MiB");
        }
        if !(100..=3_600_000).contains(&self.read_timeout_ms) {
            return bad("read_timeout_ms must be between 100 and 3600000");
        }
        if !(1..=65_536).contains(&self.max_connections) {
            return bad("max_connections must be between 1 and 65536");
        }
        Ok(())
    }
}

/// Counters of the HL7 source. All monotonic.
#[derive(Debug, Default)]
pub struct Hl7Stats {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Messages answered (every ACK sent or attempted).
    pub messages: AtomicU64,
    /// ACKs with MSA-1 `AA`.
    pub acked_aa: AtomicU64,
    /// ACKs with MSA-1 `AE`.
    pub acked_ae: AtomicU64,
    /// ACKs with MSA-1 `AR`.
    pub acked_ar: AtomicU64,
    /// Framing faults (junk outside frames, lost end blocks, oversized, truncated, timed-out or fatal streams).
    pub framing_errors: AtomicU64,
    /// Vitals newly made durable (an NBP compound from three OBX counts once).
    pub vitals_accepted: AtomicU64,
    /// Vitals already stored before (a resend).
    pub vitals_duplicate: AtomicU64,
    /// OBX rows refused (one ERR each).
    pub obx_rejected: AtomicU64,
    /// OBX rows skipped as not a measurement (status X, N, I, O).
    pub obx_skipped: AtomicU64,
}

/// A copy of [`Hl7Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Hl7StatsSnapshot {
    /// See [`Hl7Stats::connections`].
    pub connections: u64,
    /// See [`Hl7Stats::connections_refused`].
    pub connections_refused: u64,
    /// See [`Hl7Stats::messages`].
    pub messages: u64,
    /// See [`Hl7Stats::acked_aa`].
    pub acked_aa: u64,
    /// See [`Hl7Stats::acked_ae`].
    pub acked_ae: u64,
    /// See [`Hl7Stats::acked_ar`].
    pub acked_ar: u64,
    /// See [`Hl7Stats::framing_errors`].
    pub framing_errors: u64,
    /// See [`Hl7Stats::vitals_accepted`].
    pub vitals_accepted: u64,
    /// See [`Hl7Stats::vitals_duplicate`].
    pub vitals_duplicate: u64,
    /// See [`Hl7Stats::obx_rejected`].
    pub obx_rejected: u64,
    /// See [`Hl7Stats::obx_skipped`].
    pub obx_skipped: u64,
}

impl Hl7Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> Hl7StatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Hl7StatsSnapshot {
            connections: r(&self.connections),
            connections_refused: r(&self.connections_refused),
            messages: r(&self.messages),
            acked_aa: r(&self.acked_aa),
            acked_ae: r(&self.acked_ae),
            acked_ar: r(&self.acked_ar),
            framing_errors: r(&self.framing_errors),
            vitals_accepted: r(&self.vitals_accepted),
            vitals_duplicate: r(&self.vitals_duplicate),
            obx_rejected: r(&self.obx_rejected),
            obx_skipped: r(&self.obx_skipped),
        }
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    fn count_ack(&self, code: AckCode) {
        Self::add(&self.messages, 1);
        Self::add(
            match code {
                AckCode::Accept => &self.acked_aa,
                AckCode::Error => &self.acked_ae,
                AckCode::Reject => &self.acked_ar,
            },
            1,
        );
    }
}

/// Binds the configured listen address.
pub async fn bind(config: &Hl7MllpConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(config.listen).await
}

/// The answer to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// MSA-1.
    pub code: AckCode,
    /// The problems reported as ERR segments.
    pub problems: Vec<Problem>,
    /// The ACK message (segments terminated by `\r`, without MLLP framing).
    pub ack: String,
}

/// Runs the listener until `shutdown` resolves: one task per connection, each handling its messages in order
/// (a device waits for the ACK of one message before sending the next). On shutdown the listener is closed,
/// every connection finishes the message it is processing (so its ACK goes out) and is closed, and `run`
/// returns once all are gone. Fails only if `config` is invalid.
pub async fn run(
    config: Hl7MllpConfig,
    node: Arc<EdgeNode>,
    listener: TcpListener,
    stats: Arc<Hl7Stats>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ConfigError> {
    config.validate()?;
    let local = listener.local_addr().ok();
    info!(listen = ?local, max_message_bytes = config.max_message_bytes, "HL7 MLLP listener running");
    let config = Arc::new(config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        Hl7Stats::add(&stats.connections_refused, 1);
                        warn!(%peer, max = config.max_connections, "HL7 connection refused: too many open connections");
                        drop(stream);
                        continue;
                    };
                    Hl7Stats::add(&stats.connections, 1);
                    debug!(%peer, "HL7 connection opened");
                    let (config, node, stats, stop) = (config.clone(), node.clone(), stats.clone(), stop_rx.clone());
                    tasks.spawn(async move {
                        connection(stream, peer, &config, &node, &stats, stop).await;
                        drop(permit);
                        debug!(%peer, "HL7 connection closed");
                    });
                }
                Err(e) => {
                    warn!(error = %e, "HL7 accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    error!(error = %e, "HL7 connection task failed");
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            error!(error = %e, "HL7 connection task failed");
        }
    }
    info!("HL7 MLLP listener stopped");
    Ok(())
}

enum Read {
    Data(usize),
    Eof,
    Timeout,
    Failed(std::io::Error),
    Shutdown,
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    config: &Hl7MllpConfig,
    node: &EdgeNode,
    stats: &Hl7Stats,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let timeout = Duration::from_millis(config.read_timeout_ms);
    let mut decoder = MllpDecoder::new(config.max_message_bytes);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(event) = decoder.next_event() {
            let reply = match event {
                MllpEvent::Frame(bytes) => {
                    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
                        debug!(%peer, "empty MLLP frame (keep-alive): not answered");
                        continue;
                    }
                    let answer = process(node, config.max_message_bytes, stats, &bytes).await;
                    log_answer(peer, &answer);
                    Some(answer.ack)
                }
                MllpEvent::TooLarge { head, bytes } => {
                    Hl7Stats::add(&stats.framing_errors, 1);
                    let answer = too_large(&head, bytes, config.max_message_bytes, stats);
                    log_answer(peer, &answer);
                    Some(answer.ack)
                }
                MllpEvent::Fatal(reason) => {
                    Hl7Stats::add(&stats.framing_errors, 1);
                    warn!(%peer, %reason, "MLLP stream cannot be resynchronised: closing the connection");
                    return;
                }
                other => {
                    Hl7Stats::add(&stats.framing_errors, 1);
                    warn!(%peer, event = ?other, "MLLP framing error: bytes discarded, waiting for the next start block");
                    None
                }
            };
            if let Some(ack) = reply {
                let frame = mllp::encode(ack.as_bytes());
                match tokio::time::timeout(timeout, stream.write_all(&frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        warn!(%peer, error = %e, "could not send the ACK: closing (the device will resend; the outbox deduplicates)");
                        return;
                    }
                    Err(_) => {
                        warn!(%peer, "ACK not taken by the peer in time: closing");
                        return;
                    }
                }
            }
        }
        if decoder.is_closed() || *stop.borrow() {
            return;
        }
        let in_frame = decoder.in_frame();
        let read = tokio::select! {
            biased;
            _ = stop.changed() => Read::Shutdown,
            r = async {
                if in_frame {
                    match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
                        Ok(r) => r,
                        Err(_) => return Read::Timeout,
                    }
                } else {
                    stream.read(&mut buf).await
                }
                .map_or_else(Read::Failed, |n| if n == 0 { Read::Eof } else { Read::Data(n) })
            } => r,
        };
        match read {
            Read::Data(n) => decoder.push(buf.get(..n).unwrap_or(&[])),
            Read::Eof => {
                if let Some(ev) = decoder.finish() {
                    Hl7Stats::add(&stats.framing_errors, 1);
                    warn!(%peer, event = ?ev, "connection closed in the middle of an MLLP frame: incomplete message discarded, not acknowledged");
                }
                return;
            }
            Read::Timeout => {
                Hl7Stats::add(&stats.framing_errors, 1);
                warn!(%peer, timeout_ms = config.read_timeout_ms, "MLLP frame not completed in time: closing");
                return;
            }
            Read::Failed(e) => {
                debug!(%peer, error = %e, "HL7 connection read failed");
                return;
            }
            Read::Shutdown => return,
        }
    }
}

fn log_answer(peer: SocketAddr, a: &Answer) {
    match a.code {
        AckCode::Accept => debug!(%peer, "HL7 message acknowledged AA"),
        code => {
            let reasons: Vec<String> = a
                .problems
                .iter()
                .map(|p| format!("{} {}", p.code.code(), p.message))
                .collect();
            warn!(%peer, ack = code.as_str(), reasons = ?reasons, "HL7 message not fully accepted");
        }
    }
}

fn answer(
    header: Option<&Header>,
    code: AckCode,
    problems: Vec<Problem>,
    stats: &Hl7Stats,
) -> Answer {
    stats.count_ack(code);
    let ack = ack::build(header, code, &problems, &ack::next_control_id());
    Answer {
        code,
        problems,
        ack,
    }
}

fn too_large(head: &[u8], bytes: usize, limit: usize, stats: &Hl7Stats) -> Answer {
    let text = parser::decode_text(head);
    let header = Header::salvage(&text);
    let problem = Problem::error(
        None,
        ErrorCode::ApplicationInternal,
        format!(
            "message is at least {bytes} bytes, over the {limit}-byte limit: nothing was stored"
        ),
    );
    answer(header.as_ref(), AckCode::Reject, vec![problem], stats)
}

fn parse_problem(e: &ParseError) -> Problem {
    let code = match e {
        ParseError::TooLarge { .. } => ErrorCode::ApplicationInternal,
        ParseError::BadFieldSeparator { .. }
        | ParseError::BadEncodingCharacters { .. }
        | ParseError::ControlCharacter { .. } => ErrorCode::DataType,
        _ => ErrorCode::SegmentSequence,
    };
    let location = e.location().map(|(seg, seq, field)| ErrorLocation {
        segment: seg,
        sequence: seq,
        field,
        component: None,
    });
    Problem::error(
        location,
        code,
        format!("message could not be parsed: {e}; nothing was stored"),
    )
}

/// Handles one framed message end to end: parse, decode PCD-01, normalize, [`EdgeNode::accept`] (durable),
/// then build the ACK following the policy in the module documentation.
pub async fn process(
    node: &EdgeNode,
    max_message_bytes: usize,
    stats: &Hl7Stats,
    bytes: &[u8],
) -> Answer {
    let text = parser::decode_text(bytes);
    let msg = match Message::parse(&text, max_message_bytes) {
        Ok(m) => m,
        Err(e) => {
            let header = Header::salvage(&text);
            return answer(
                header.as_ref(),
                AckCode::Reject,
                vec![parse_problem(&e)],
                stats,
            );
        }
    };
    let header = msg.header();
    let decoded = match pcd01::decode(&msg) {
        Ok(d) => d,
        Err(rejection) => return answer(Some(&header), rejection.ack, rejection.problems, stats),
    };
    let wards = &node.config().wards;
    let foreign: Vec<Problem> = decoded
        .patients
        .iter()
        .filter(|p| !wards.iter().any(|w| w.as_str() == p.ward))
        .map(|p| {
            let served: Vec<&str> = wards.iter().map(|w| w.as_str()).collect();
            Problem::error(
                Some(ErrorLocation::field("PV1", p.pv1_sequence, 3).with_component(1)),
                ErrorCode::TableValueNotFound,
                format!(
                    "ward {:?} is not served by this edge (it serves {}): no observation of this message was stored",
                    p.ward,
                    served.join(", ")
                ),
            )
        })
        .collect();
    if !foreign.is_empty() {
        return answer(Some(&header), AckCode::Error, foreign, stats);
    }

    let mut problems: Vec<(usize, Problem)> = Vec::new();
    let mut incoming = Vec::new();
    let mut incoming_obx = Vec::new();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for o in &decoded.observations {
        match &o.outcome {
            ObxOutcome::Vital(raw) => match normalize_vital(raw.clone()) {
                Ok(v) => {
                    incoming.push(Incoming {
                        idempotency_key: idempotency_key(
                            &decoded.sending_application,
                            &decoded.control_id,
                            o.obx_index,
                            raw,
                        ),
                        payload: Payload::Vital(v),
                    });
                    incoming_obx.push(o.obx_index);
                }
                Err(r) => problems.push((o.obx_index, rejection_problem(o.obx_index, &r))),
            },
            ObxOutcome::MergedInto(holder) => merged.push((o.obx_index, *holder)),
            ObxOutcome::Rejected(p) => problems.push((o.obx_index, p.clone())),
            ObxOutcome::Skipped(note) => {
                Hl7Stats::add(&stats.obx_skipped, 1);
                info!(control_id = %decoded.control_id, note = %note, "HL7 OBX skipped");
            }
            ObxOutcome::Ignored => {}
        }
    }
    let report = if incoming.is_empty() {
        AcceptReport::default()
    } else {
        match node.accept(incoming).await {
            Ok(r) => r,
            Err(AcceptError::Outbox(e)) => {
                let message = match e {
                    OutboxError::Full { .. } => {
                        "outbox full, resend later: nothing of this message was stored".to_string()
                    }
                    other => format!(
                        "edge storage unavailable ({other}), resend later: nothing of this message was stored"
                    ),
                };
                return answer(
                    Some(&header),
                    AckCode::Reject,
                    vec![Problem::error(
                        None,
                        ErrorCode::ApplicationInternal,
                        message,
                    )],
                    stats,
                );
            }
        }
    };
    for (i, r) in &report.rejected {
        if let Some(obx) = incoming_obx.get(*i) {
            problems.push((*obx, rejection_problem(*obx, r)));
        }
    }
    let rejected_rows: HashSet<usize> = problems.iter().map(|(i, _)| *i).collect();
    let mut stored_rows = incoming_obx.len() - report.rejected.len().min(incoming_obx.len());
    for (row, holder) in &merged {
        if rejected_rows.contains(holder) {
            problems.push((
                *row,
                Problem::error(
                    Some(ErrorLocation::segment("OBX", *row)),
                    ErrorCode::DataType,
                    format!("OBX {row}: NBP component not stored: the NBP measurement it belongs to (OBX {holder}) was rejected"),
                ),
            ));
        } else {
            stored_rows += 1;
        }
    }
    problems.sort_by_key(|(i, _)| *i);
    Hl7Stats::add(&stats.vitals_accepted, report.accepted);
    Hl7Stats::add(&stats.vitals_duplicate, report.duplicates);
    Hl7Stats::add(&stats.obx_rejected, problems.len() as u64);
    if problems.is_empty() {
        return answer(Some(&header), AckCode::Accept, Vec::new(), stats);
    }
    let suffix = if stored_rows > 0 {
        format!(
            " [the other {stored_rows} observation(s) of this message were stored durably; resending it is safe]"
        )
    } else {
        " [no observation of this message was stored]".to_string()
    };
    let room = ack::MAX_USER_MESSAGE_CHARS.saturating_sub(suffix.chars().count());
    let total = problems.len();
    let mut problems: Vec<Problem> = problems
        .into_iter()
        .map(|(_, mut p)| {
            let mut m: String = p.message.chars().take(room).collect();
            m.push_str(&suffix);
            p.message = m;
            p
        })
        .collect();
    if total > MAX_ERR_SEGMENTS {
        // Keep the ACK bounded for a pathological message: list the first ones and summarise the rest.
        let rest = problems.split_off(MAX_ERR_SEGMENTS - 1);
        let code = rest.first().map(|p| p.code).unwrap_or(ErrorCode::DataType);
        problems.push(Problem::error(
            None,
            code,
            format!(
                "{} more observations were rejected (not listed){suffix}",
                rest.len()
            ),
        ));
    }
    answer(Some(&header), AckCode::Error, problems, stats)
}

/// ERR for a vital refused by normalization or by the edge's acceptance checks.
fn rejection_problem(obx: usize, r: &Rejection) -> Problem {
    let (field, code) = match r.reason {
        RejectReason::UnknownMetric => (3, ErrorCode::TableValueNotFound),
        RejectReason::BadUnit => (6, ErrorCode::TableValueNotFound),
        RejectReason::NotFinite | RejectReason::Invalid => (5, ErrorCode::DataType),
        _ => (5, ErrorCode::ApplicationInternal),
    };
    Problem::error(
        Some(ErrorLocation::field("OBX", obx, field)),
        code,
        format!("OBX {obx}: {}", r.detail),
    )
}

/// `hl7:<MSH-3>:<MSH-10>:<OBX index>:<digest>` (see the module documentation), or `hl7:sha256:<hex>` when
/// that would exceed the 128-byte key limit.
pub fn idempotency_key(
    sending_application: &str,
    control_id: &str,
    obx_index: usize,
    raw: &RawVital,
) -> String {
    let key = format!(
        "hl7:{sending_application}:{control_id}:{obx_index}:{}",
        content_digest(raw)
    );
    if key.len() <= MAX_IDEMPOTENCY_KEY {
        key
    } else {
        format!("hl7:sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
    }
}

/// First 12 hex digits of a SHA-256 over the observation's decoded content, in a fixed field order.
fn content_digest(raw: &RawVital) -> String {
    let mut h = Sha256::new();
    for part in [
        &raw.patient_id,
        &raw.ward,
        &raw.bed,
        &raw.device_id,
        &raw.unit,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.update(raw.metric_mdc.to_be_bytes());
    h.update(raw.value.to_bits().to_be_bytes());
    for (c, v) in &raw.components {
        h.update(c.to_be_bytes());
        h.update(v.to_bits().to_be_bytes());
    }
    h.update([0u8]);
    h.update(raw.enumerated.as_deref().unwrap_or("").as_bytes());
    h.update([0u8]);
    h.update(raw.measured_at_unix_ms.to_be_bytes());
    // Only when known, so the keys of messages without PV1-19 are what they were before encounters existed (a
    // resend across an edge upgrade is still recognised).
    if let Some(e) = &raw.encounter {
        for part in [&e.visit_number, &e.assigning_authority] {
            h.update([0u8]);
            h.update(part.as_bytes());
        }
    }
    hex::encode(h.finalize()).chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_validation_and_unknown_fields() {
        let c: Hl7MllpConfig =
            toml::from_str("listen = \"127.0.0.1:2575\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.max_message_bytes, 1 << 20);
        assert_eq!(c.read_timeout_ms, 30_000);
        assert!(c.validate().is_ok());
        assert!(
            toml::from_str::<Hl7MllpConfig>("listen = \"127.0.0.1:2575\"\nward_filter = [\"7A\"]")
                .is_err()
        );
        let bad = Hl7MllpConfig {
            max_message_bytes: 10,
            ..Hl7MllpConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = Hl7MllpConfig {
            read_timeout_ms: 0,
            ..Hl7MllpConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn idempotency_keys_are_stable_bounded_and_content_sensitive() {
        let raw = RawVital {
            patient_id: "MRN1".into(),
            ward: "7A".into(),
            bed: "1".into(),
            device_id: "D".into(),
            metric_mdc: 147842,
            value: 72.0,
            unit: "/min".into(),
            measured_at_unix_ms: 1,
            ..Default::default()
        };
        let k = idempotency_key("Mon^ABC^EUI-64", "MSG1", 3, &raw);
        assert!(k.starts_with("hl7:Mon^ABC^EUI-64:MSG1:3:"), "{k}");
        assert_eq!(
            k,
            idempotency_key("Mon^ABC^EUI-64", "MSG1", 3, &raw.clone())
        );
        let other = RawVital {
            value: 73.0,
            ..raw.clone()
        };
        assert_ne!(k, idempotency_key("Mon^ABC^EUI-64", "MSG1", 3, &other));
        let in_visit = RawVital {
            encounter: Some(wardwatch_proto::v1::EncounterId {
                visit_number: "V1".into(),
                assigning_authority: String::new(),
            }),
            ..raw.clone()
        };
        assert_ne!(k, idempotency_key("Mon^ABC^EUI-64", "MSG1", 3, &in_visit));
        let long = idempotency_key(&"A".repeat(200), "MSG1", 3, &raw);
        assert!(
            long.starts_with("hl7:sha256:") && long.len() <= MAX_IDEMPOTENCY_KEY,
            "{long}"
        );
    }
}
