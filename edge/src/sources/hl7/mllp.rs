//! MLLP (HL7 Minimal Lower Layer Protocol) framing: `0x0B <message> 0x1C 0x0D`.
//!
//! [`MllpDecoder`] is a pure state machine fed with whatever bytes the socket delivered; it yields complete
//! frames and reports framing faults without ever panicking:
//! - bytes outside a frame are discarded up to the next start block and reported ([`MllpEvent::Junk`];
//!   CR/LF/space between frames are tolerated silently);
//! - a start block inside a frame means the previous frame lost its end: it is discarded and reported
//!   ([`MllpEvent::Unterminated`]) and the new frame is read;
//! - a frame over the size limit is discarded up to its end block and reported with its first bytes
//!   ([`MllpEvent::TooLarge`]), so the caller can still address a rejection to its MSH-10;
//! - a stream that cannot be resynchronised (more junk than a message may be long, or an oversized frame that
//!   never ends within four times the limit) yields [`MllpEvent::Fatal`]: the caller closes the connection.
//!
//! The end block alone (`0x1C` not followed by `0x0D`) ends a frame too; the `0x0D` is consumed if it follows.

use std::collections::VecDeque;

/// Start block.
pub const START_BLOCK: u8 = 0x0B;
/// End block.
pub const END_BLOCK: u8 = 0x1C;
/// Carriage return that follows the end block.
pub const CARRIAGE_RETURN: u8 = 0x0D;

/// Bytes of an oversized frame kept so its MSH can still be read.
pub const OVERSIZE_HEAD_BYTES: usize = 4096;

/// What the decoder found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MllpEvent {
    /// A complete frame's content (without the framing bytes).
    Frame(Vec<u8>),
    /// Bytes outside any frame were discarded (`looks_like_hl7`: they started with `MSH`, i.e. the sender
    /// probably forgot the start block).
    Junk {
        /// How many bytes.
        bytes: usize,
        /// Whether they started like an HL7 message.
        looks_like_hl7: bool,
    },
    /// A frame was cut short by a new start block: its bytes were discarded.
    Unterminated {
        /// How many bytes were discarded.
        bytes: usize,
    },
    /// A frame exceeded the size limit and was discarded.
    TooLarge {
        /// The frame's first bytes (up to [`OVERSIZE_HEAD_BYTES`]).
        head: Vec<u8>,
        /// Its total length as far as it was read.
        bytes: usize,
    },
    /// The connection ended in the middle of a frame.
    Truncated {
        /// Bytes of the incomplete frame.
        bytes: usize,
    },
    /// The stream cannot be resynchronised: close the connection.
    Fatal(String),
}

impl MllpEvent {
    /// Whether this event is a framing fault (everything but a frame).
    pub fn is_framing_error(&self) -> bool {
        !matches!(self, Self::Frame(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Outside,
    InFrame,
    Oversize,
    Closed,
}

/// Incremental MLLP decoder.
#[derive(Debug)]
pub struct MllpDecoder {
    max: usize,
    state: State,
    frame: Vec<u8>,
    head: Vec<u8>,
    oversize_bytes: usize,
    junk: usize,
    junk_nonspace: bool,
    junk_head: Vec<u8>,
    after_end: bool,
    events: VecDeque<MllpEvent>,
}

impl MllpDecoder {
    /// A decoder accepting frames of at most `max_frame_bytes` bytes of content.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            max: max_frame_bytes.max(1),
            state: State::Outside,
            frame: Vec::new(),
            head: Vec::new(),
            oversize_bytes: 0,
            junk: 0,
            junk_nonspace: false,
            junk_head: Vec::new(),
            after_end: false,
            events: VecDeque::new(),
        }
    }

    /// Whether a frame has started and not ended (the caller bounds how long that may last).
    pub fn in_frame(&self) -> bool {
        matches!(self.state, State::InFrame | State::Oversize)
    }

    /// Whether the stream was declared unrecoverable.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The next decoded event, if any.
    pub fn next_event(&mut self) -> Option<MllpEvent> {
        self.events.pop_front()
    }

    /// Feeds bytes read from the connection.
    pub fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Closed => return,
                State::Outside => {
                    let (first, rest) = match data.split_first() {
                        Some(x) => x,
                        None => return,
                    };
                    data = rest;
                    let b = *first;
                    if self.after_end {
                        self.after_end = false;
                        if b == CARRIAGE_RETURN {
                            continue;
                        }
                    }
                    if b == START_BLOCK {
                        self.flush_junk();
                        self.state = State::InFrame;
                        self.frame.clear();
                        continue;
                    }
                    self.junk += 1;
                    if !matches!(b, b'\r' | b'\n' | b' ' | b'\t') {
                        self.junk_nonspace = true;
                        if self.junk_head.len() < 3 {
                            self.junk_head.push(b);
                        }
                    }
                    if self.junk > self.max {
                        self.state = State::Closed;
                        self.events.push_back(MllpEvent::Fatal(format!(
                            "{} bytes outside any MLLP frame (no start block 0x0B): not an MLLP stream",
                            self.junk
                        )));
                        return;
                    }
                }
                State::InFrame => {
                    let stop = data
                        .iter()
                        .position(|b| *b == END_BLOCK || *b == START_BLOCK);
                    let take = stop.unwrap_or(data.len());
                    let (chunk, rest) = data.split_at(take);
                    if self.frame.len() + chunk.len() > self.max {
                        // Over the limit: keep the head for the rejection, discard the rest up to the end block.
                        let total = self.frame.len() + chunk.len();
                        let mut head = std::mem::take(&mut self.frame);
                        head.truncate(OVERSIZE_HEAD_BYTES);
                        let room = OVERSIZE_HEAD_BYTES.saturating_sub(head.len());
                        head.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or(&[]));
                        head.shrink_to_fit();
                        self.head = head;
                        self.oversize_bytes = total;
                        self.state = State::Oversize;
                        data = rest;
                        continue;
                    }
                    self.frame.extend_from_slice(chunk);
                    data = rest;
                    match data.split_first() {
                        Some((&END_BLOCK, rest)) => {
                            data = rest;
                            self.events
                                .push_back(MllpEvent::Frame(std::mem::take(&mut self.frame)));
                            self.state = State::Outside;
                            self.after_end = true;
                        }
                        Some((&START_BLOCK, rest)) => {
                            data = rest;
                            let bytes = self.frame.len();
                            self.frame.clear();
                            self.events.push_back(MllpEvent::Unterminated { bytes });
                        }
                        _ => {}
                    }
                }
                State::Oversize => {
                    let stop = data
                        .iter()
                        .position(|b| *b == END_BLOCK || *b == START_BLOCK);
                    let take = stop.unwrap_or(data.len());
                    self.oversize_bytes = self.oversize_bytes.saturating_add(take);
                    data = data.get(take..).unwrap_or(&[]);
                    match data.split_first() {
                        Some((&b, rest)) => {
                            data = rest;
                            let head = std::mem::take(&mut self.head);
                            let bytes = self.oversize_bytes;
                            self.oversize_bytes = 0;
                            self.events.push_back(MllpEvent::TooLarge { head, bytes });
                            if b == END_BLOCK {
                                self.state = State::Outside;
                                self.after_end = true;
                            } else {
                                self.state = State::InFrame;
                                self.frame.clear();
                            }
                        }
                        None => {
                            if self.oversize_bytes > self.max.saturating_mul(4) {
                                self.state = State::Closed;
                                self.head.clear();
                                self.events.push_back(MllpEvent::Fatal(format!(
                                    "a frame passed {} bytes without an end block (limit {}): closing",
                                    self.oversize_bytes, self.max
                                )));
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    fn flush_junk(&mut self) {
        if self.junk > 0 && self.junk_nonspace {
            self.events.push_back(MllpEvent::Junk {
                bytes: self.junk,
                looks_like_hl7: self.junk_head == b"MSH",
            });
        }
        self.junk = 0;
        self.junk_nonspace = false;
        self.junk_head.clear();
    }

    /// The connection ended: reports an incomplete frame or pending junk.
    pub fn finish(&mut self) -> Option<MllpEvent> {
        let ev = match self.state {
            State::InFrame => Some(MllpEvent::Truncated {
                bytes: self.frame.len(),
            }),
            State::Oversize => Some(MllpEvent::Truncated {
                bytes: self.oversize_bytes,
            }),
            State::Outside => {
                self.flush_junk();
                self.events.pop_front()
            }
            State::Closed => None,
        };
        self.frame.clear();
        self.head.clear();
        self.state = State::Closed;
        ev
    }
}

/// Wraps a message in MLLP framing.
pub fn encode(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(message);
    out.push(END_BLOCK);
    out.push(CARRIAGE_RETURN);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(d: &mut MllpDecoder) -> Vec<MllpEvent> {
        std::iter::from_fn(|| d.next_event()).collect()
    }

    #[test]
    fn decodes_frames_split_anywhere() {
        let mut stream = encode(b"MSH|one\r");
        stream.extend(encode(b"MSH|two\r"));
        stream.extend(b"\r\n");
        stream.extend(encode(b"MSH|three"));
        for chunk in 1..=stream.len() {
            let mut d = MllpDecoder::new(1024);
            for part in stream.chunks(chunk) {
                d.push(part);
            }
            assert_eq!(
                events(&mut d),
                vec![
                    MllpEvent::Frame(b"MSH|one\r".to_vec()),
                    MllpEvent::Frame(b"MSH|two\r".to_vec()),
                    MllpEvent::Frame(b"MSH|three".to_vec()),
                ],
                "chunk size {chunk}"
            );
            assert_eq!(d.finish(), None);
        }
    }

    #[test]
    fn garbage_before_a_frame_is_reported_and_skipped() {
        let mut d = MllpDecoder::new(1024);
        d.push(b"\x00\xffgarbage");
        d.push(&encode(b"MSH|ok"));
        assert_eq!(
            events(&mut d),
            vec![
                MllpEvent::Junk {
                    bytes: 9,
                    looks_like_hl7: false
                },
                MllpEvent::Frame(b"MSH|ok".to_vec())
            ]
        );
        // A message sent without the start block.
        d.push(b"MSH|^~\\&|no start\x1c\r");
        d.push(&encode(b"MSH|next"));
        let ev = events(&mut d);
        assert!(
            matches!(
                ev[0],
                MllpEvent::Junk {
                    looks_like_hl7: true,
                    ..
                }
            ),
            "{ev:?}"
        );
        assert_eq!(ev[1], MllpEvent::Frame(b"MSH|next".to_vec()));
    }

    #[test]
    fn missing_end_block_resynchronises_on_the_next_start() {
        let mut d = MllpDecoder::new(1024);
        d.push(b"\x0bMSH|lost end\r\x0bMSH|good\x1c\r");
        assert_eq!(
            events(&mut d),
            vec![
                MllpEvent::Unterminated { bytes: 13 },
                MllpEvent::Frame(b"MSH|good".to_vec())
            ]
        );
        // End block without CR still ends the frame.
        d.push(b"\x0bA\x1c\x0bB\x1c\r");
        assert_eq!(
            events(&mut d),
            vec![
                MllpEvent::Frame(b"A".to_vec()),
                MllpEvent::Frame(b"B".to_vec())
            ]
        );
    }

    #[test]
    fn oversized_frame_is_discarded_with_its_head_and_the_stream_goes_on() {
        let mut d = MllpDecoder::new(100);
        let mut big = b"MSH|^~\\&|A||||||ORU^R01|BIG1|P|2.6\r".to_vec();
        big.extend(std::iter::repeat_n(b'x', 300));
        for part in encode(&big).chunks(7) {
            d.push(part);
        }
        d.push(&encode(b"MSH|small"));
        let ev = events(&mut d);
        match &ev[0] {
            MllpEvent::TooLarge { head, bytes } => {
                assert!(head.starts_with(b"MSH|^~\\&|A||||||ORU^R01|BIG1"));
                assert_eq!(*bytes, big.len());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ev[1], MllpEvent::Frame(b"MSH|small".to_vec()));
        // One that never ends is fatal.
        let mut d = MllpDecoder::new(100);
        d.push(b"\x0b");
        for _ in 0..10 {
            d.push(&[b'y'; 100]);
        }
        let ev = events(&mut d);
        assert!(matches!(ev.last(), Some(MllpEvent::Fatal(_))), "{ev:?}");
        assert!(d.is_closed());
        d.push(&encode(b"MSH|after"));
        assert_eq!(d.next_event(), None);
    }

    #[test]
    fn endless_junk_is_fatal_and_truncation_is_reported() {
        let mut d = MllpDecoder::new(64);
        d.push(&[b'z'; 65]);
        assert!(matches!(d.next_event(), Some(MllpEvent::Fatal(_))));
        let mut d = MllpDecoder::new(64);
        d.push(b"\x0bMSH|half");
        assert!(d.in_frame());
        assert_eq!(d.next_event(), None);
        assert_eq!(d.finish(), Some(MllpEvent::Truncated { bytes: 8 }));
        let mut d = MllpDecoder::new(64);
        d.push(b"\r\n\r\n");
        assert_eq!(
            d.finish(),
            None,
            "whitespace between frames is not an error"
        );
        let mut d = MllpDecoder::new(64);
        d.push(b"tail");
        assert!(matches!(d.finish(), Some(MllpEvent::Junk { bytes: 4, .. })));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            let mut d = MllpDecoder::new(50);
            for _ in 0..50 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let n = (seed % 40) as usize;
                let bytes: Vec<u8> = (0..n)
                    .map(|i| match (seed >> (i % 60)) % 7 {
                        0 => START_BLOCK,
                        1 => END_BLOCK,
                        2 => CARRIAGE_RETURN,
                        _ => (seed >> (i % 56)) as u8,
                    })
                    .collect();
                d.push(&bytes);
                while let Some(ev) = d.next_event() {
                    if let MllpEvent::Frame(f) = ev {
                        assert!(f.len() <= 50);
                    }
                }
            }
            let _ = d.finish();
        }
    }
}
