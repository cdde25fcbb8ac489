//! Wire types: every message a session sends, as facet types encoded with
//! facet-postcard.
//!
//! The envelope ([`Message`]) has a hand-written codec that produces exactly
//! facet-postcard's bytes without reflection ([`Message::write_to`],
//! [`decode`]); the tests below hold the two to the same bytes. The user's
//! values inside it (arguments, results, items) go through facet-postcard.
//!
//! One frame carries one [`Message`] (a [`Message::Batch`] carries several,
//! each as it would travel alone). Byte payloads (`args`, `result`,
//! `payload`) are already-encoded facet-postcard values of the user's types,
//! borrowed in place when decoding (`from_slice_borrowed`), so a large
//! payload is never copied by the envelope decoder.
//!
//! Messages fall in groups:
//! - handshake: [`Message::Hello`], [`Message::HelloYourself`];
//! - session: [`Message::ProtocolError`], [`Message::Goodbye`],
//!   [`Message::Ping`], [`Message::Pong`];
//! - connections: `ConnectionOpen` / `Accept` / `Reject` / `Close`;
//! - requests: [`Message::Call`], [`Message::Response`], [`Message::Cancel`];
//! - channels: [`Message::Item`], [`Message::Close`], [`Message::Reset`],
//!   [`Message::GrantCredit`];
//! - framing: [`Message::Batch`], several messages in one frame.
//!
//! Identifiers (connections, requests, channels) are chosen by the side that
//! creates them: the initiator of a session uses odd numbers, the acceptor
//! even ones, so the two never collide. Connection 0 is the root connection.

use facet::Facet;

pub(crate) mod codec;
pub(crate) mod spliced;
#[cfg(test)]
mod split_tests;
pub(crate) mod varint;

/// The protocol version this build speaks. Version 2: a channel handle in a
/// payload is its position in the message's channel list, not its id.
/// Version 4: [`Message::Batch`].
pub const PROTOCOL_VERSION: u32 = 4;

/// Limits each side announces in its hello. Each side obeys the limits the
/// *peer* announced and enforces its own on what it receives.
#[derive(Facet, Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Largest encoded message this side accepts, in bytes.
    pub max_payload: u32,
    /// Bytes of credit a channel this side receives on starts with (its
    /// window; 1 MiB by default). Each item costs its encoded bytes and 64
    /// more, so the window also bounds what the peer can make this side
    /// queue for the channel: about 1.5 times it at most.
    pub initial_credit: u32,
    /// Most calls this side serves at once; the peer queues past it.
    pub max_concurrent_requests: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_payload: 4 << 20,
            initial_credit: 1 << 20,
            max_concurrent_requests: 1024,
        }
    }
}

/// One metadata value.
#[derive(Facet, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MetaValue {
    /// A string.
    Str(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A number.
    U64(u64),
}

/// One metadata entry: a key and its value.
#[derive(Facet, Clone, Debug, PartialEq, Eq)]
pub struct MetaEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: MetaValue,
}

/// Key/value metadata attached to calls, responses and connections.
pub type Metadata = Vec<MetaEntry>;

/// How a call ended, as carried by a [`Message::Response`].
///
/// The user's success value and error value are encoded by the typed layer;
/// the protocol failures are the session's own, so a peer that does not know
/// the method still answers in a form the caller understands.
#[derive(Facet, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome<'a> {
    /// The handler succeeded; the encoded return value.
    Ok(&'a [u8]),
    /// The handler failed with the service's error type; the encoded error.
    UserError(&'a [u8]),
    /// No method with this id on this connection.
    UnknownMethod,
    /// The arguments could not be decoded as the method's argument types.
    InvalidPayload(String),
    /// The call was cancelled.
    Cancelled,
    /// The handler panicked or the callee failed internally.
    Internal(String),
}

/// Every message of the protocol.
#[derive(Facet, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Message<'a> {
    /// Sent first by the initiator.
    Hello {
        /// The protocol version the initiator speaks.
        version: u32,
        /// The initiator's limits.
        settings: Settings,
    },
    /// The acceptor's answer to [`Message::Hello`].
    HelloYourself {
        /// The protocol version the acceptor speaks.
        version: u32,
        /// The acceptor's limits.
        settings: Settings,
    },
    /// The sender saw the receiver break a protocol rule and ends the session.
    ProtocolError {
        /// The dotted name of the broken rule, e.g. `request.unique`.
        rule: String,
        /// What was seen.
        detail: String,
    },
    /// The sender ends the session in an orderly way.
    Goodbye {
        /// Why.
        reason: String,
    },
    /// Keepalive probe; answered by [`Message::Pong`] with the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Keepalive answer.
    Pong {
        /// The nonce of the ping.
        nonce: u64,
    },
    /// Opens a virtual connection.
    ConnectionOpen {
        /// The new connection's id (the opener's parity).
        conn: u64,
        /// What the opener asks for (e.g. a service name).
        metadata: Metadata,
    },
    /// Accepts a [`Message::ConnectionOpen`].
    ConnectionAccept {
        /// The connection.
        conn: u64,
        /// Anything the acceptor wants to say.
        metadata: Metadata,
    },
    /// Refuses a [`Message::ConnectionOpen`].
    ConnectionReject {
        /// The connection.
        conn: u64,
        /// Why.
        reason: String,
    },
    /// Closes a virtual connection; its calls in flight fail.
    ConnectionClose {
        /// The connection.
        conn: u64,
        /// Why.
        reason: String,
    },
    /// Calls a method.
    Call {
        /// The connection the method is served on.
        conn: u64,
        /// The request id (the caller's parity), unique while in flight.
        request: u64,
        /// The method id: a stable hash of `Service.method`.
        method: u64,
        /// How long the caller waits for the answer, in microseconds from
        /// when the call was sent (0: no deadline). The callee cancels the
        /// handler once it passes.
        deadline_us: u64,
        /// Call metadata.
        metadata: Metadata,
        /// Channels passed in the arguments.
        channels: Vec<u64>,
        /// The encoded arguments.
        args: &'a [u8],
    },
    /// Answers a call.
    Response {
        /// The connection.
        conn: u64,
        /// The request being answered.
        request: u64,
        /// Response metadata.
        metadata: Metadata,
        /// Channels passed in the return value.
        channels: Vec<u64>,
        /// How the call ended.
        outcome: Outcome<'a>,
    },
    /// The caller no longer wants the answer; the callee aborts the handler.
    Cancel {
        /// The connection.
        conn: u64,
        /// The request to cancel.
        request: u64,
    },
    /// One item on a channel.
    Item {
        /// The channel.
        channel: u64,
        /// The encoded item.
        payload: &'a [u8],
    },
    /// The sender of a channel is done; no more items follow.
    Close {
        /// The channel.
        channel: u64,
    },
    /// Either end abandons a channel.
    Reset {
        /// The channel.
        channel: u64,
        /// Why.
        reason: String,
    },
    /// The receiver of a channel grants the sender more bytes.
    GrantCredit {
        /// The channel.
        channel: u64,
        /// Additional bytes the sender may send.
        bytes: u32,
    },
    /// Several messages in one frame, handled in order exactly as if each
    /// had come in a frame of its own. A sender gathers a stream's small
    /// items this way while the receiver has not caught up with its frames,
    /// so the receiver takes many items per frame. A batch holds at least
    /// one message, and no batch or hello.
    Batch {
        /// The messages, each as its encoded length (a varint) followed by
        /// its encoding.
        messages: &'a [u8],
    },
}

impl Message<'_> {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::HelloYourself { .. } => "HelloYourself",
            Message::ProtocolError { .. } => "ProtocolError",
            Message::Goodbye { .. } => "Goodbye",
            Message::Ping { .. } => "Ping",
            Message::Pong { .. } => "Pong",
            Message::ConnectionOpen { .. } => "ConnectionOpen",
            Message::ConnectionAccept { .. } => "ConnectionAccept",
            Message::ConnectionReject { .. } => "ConnectionReject",
            Message::ConnectionClose { .. } => "ConnectionClose",
            Message::Call { .. } => "Call",
            Message::Response { .. } => "Response",
            Message::Cancel { .. } => "Cancel",
            Message::Item { .. } => "Item",
            Message::Close { .. } => "Close",
            Message::Reset { .. } => "Reset",
            Message::GrantCredit { .. } => "GrantCredit",
            Message::Batch { .. } => "Batch",
        }
    }
}

/// Encodes any facet value (a call's arguments, a result, an item) with
/// facet-postcard into a new buffer.
pub fn encode<'f, T: Facet<'f>>(value: &T) -> Result<Vec<u8>, String> {
    facet_postcard::to_vec(value).map_err(|e| e.to_string())
}

impl Message<'_> {
    /// The size of this message's encoding, in bytes.
    pub fn encoded_len(&self) -> usize {
        codec::encoded_len(self)
    }

    /// Writes this message's encoding into the front of `buf` and returns
    /// the bytes written ([`encoded_len`](Self::encoded_len)). Byte payloads
    /// are copied once, as whole slices, so a sender can encode straight into
    /// ring or slot memory.
    ///
    /// # Panics
    /// If `buf` is shorter than [`encoded_len`](Self::encoded_len).
    pub fn write_to(&self, buf: &mut [u8]) -> usize {
        // Senders size `buf` with `encoded_len` just before: measuring again
        // here would double the work on every send. A short buffer still
        // panics, at the first byte that does not fit.
        debug_assert!(
            buf.len() >= self.encoded_len(),
            "a {} message needs {} bytes, the buffer has {}",
            self.kind(),
            self.encoded_len(),
            buf.len()
        );
        codec::write(self, buf)
    }

    /// This message's encoding in a new buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        codec::to_vec(self)
    }
}

/// Decodes a message, borrowing its byte payloads from `frame`. The frame
/// must hold exactly one message.
pub fn decode(frame: &[u8]) -> Result<Message<'_>, String> {
    codec::decode(frame).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// facet-postcard's decoding, the reference the codec must match.
    fn reference_decode(frame: &[u8]) -> Result<Message<'_>, String> {
        facet_postcard::from_slice_borrowed(frame).map_err(|e| e.to_string())
    }

    fn round_trip(m: Message<'_>) {
        let reference = encode(&m).unwrap();
        let ours = m.to_vec();
        assert_eq!(
            ours,
            reference,
            "{}: the codec writes facet-postcard's bytes",
            m.kind()
        );
        assert_eq!(m.encoded_len(), reference.len());
        assert_eq!(decode(&reference).unwrap(), m);
        assert_eq!(reference_decode(&ours).unwrap(), m);
    }

    #[test]
    fn every_message_round_trips() {
        let meta = vec![
            MetaEntry {
                key: "trace".into(),
                value: MetaValue::Str("abc".into()),
            },
            MetaEntry {
                key: "n".into(),
                value: MetaValue::U64(u64::MAX),
            },
            MetaEntry {
                key: "b".into(),
                value: MetaValue::Bytes(vec![0, 255]),
            },
        ];
        let big = vec![0x5a; 100_000];
        let all = vec![
            Message::Hello {
                version: PROTOCOL_VERSION,
                settings: Settings::default(),
            },
            Message::HelloYourself {
                version: 9,
                settings: Settings::default(),
            },
            Message::ProtocolError {
                rule: "request.unique".into(),
                detail: "id 3".into(),
            },
            Message::Goodbye { reason: "bye".into() },
            Message::Ping { nonce: 1 },
            Message::Pong { nonce: u64::MAX },
            Message::ConnectionOpen {
                conn: 3,
                metadata: meta.clone(),
            },
            Message::ConnectionAccept {
                conn: 3,
                metadata: vec![],
            },
            Message::ConnectionReject {
                conn: 3,
                reason: "no".into(),
            },
            Message::ConnectionClose {
                conn: 3,
                reason: "done".into(),
            },
            Message::Call {
                conn: 0,
                request: 7,
                method: 0xfeed,
                deadline_us: 0,
                metadata: meta,
                channels: vec![1, 3],
                args: &big,
            },
            Message::Response {
                conn: 0,
                request: 7,
                metadata: vec![],
                channels: vec![],
                outcome: Outcome::Ok(&big[..10]),
            },
            Message::Response {
                conn: 0,
                request: 9,
                metadata: vec![],
                channels: vec![],
                outcome: Outcome::InvalidPayload("x".into()),
            },
            Message::Cancel { conn: 0, request: 7 },
            Message::Item {
                channel: 5,
                payload: &[1, 2, 3],
            },
            Message::Close { channel: 5 },
            Message::Reset {
                channel: 5,
                reason: "gone".into(),
            },
            Message::GrantCredit {
                channel: 5,
                bytes: 4096,
            },
        ];
        for m in all {
            round_trip(m);
        }
    }

    #[test]
    fn payloads_are_borrowed_in_place() {
        let data = vec![9u8; 4096];
        let bytes = encode(&Message::Item {
            channel: 1,
            payload: &data,
        })
        .unwrap();
        let Message::Item { payload, .. } = decode(&bytes).unwrap() else {
            panic!()
        };
        let range = bytes.as_ptr_range();
        assert!(
            range.contains(&payload.as_ptr()),
            "the payload points into the frame"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(&[]).is_err());
        assert!(
            decode(&[18]).unwrap_err().contains("out of range"),
            "18 variants: 0..=17"
        );
        assert!(decode(&[10, 0, 1]).is_err(), "truncated call");
        let mut seed = 1u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 8 * 8)) as u8).collect();
            let _ = decode(&bytes);
        }
    }

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// A number near a varint boundary, or anywhere.
        fn number(&mut self) -> u64 {
            const EDGES: [u64; 12] = [
                0,
                1,
                127,
                128,
                16_383,
                16_384,
                (1 << 21) - 1,
                1 << 21,
                u32::MAX as u64,
                1 << 35,
                (1 << 63) - 1,
                u64::MAX,
            ];
            match self.next() % 3 {
                0 => EDGES[(self.next() % 12) as usize],
                1 => self.next() % 300,
                _ => self.next() >> (self.next() % 64),
            }
        }
        fn text(&mut self) -> String {
            let n = self.next() % 6;
            (0..n)
                .map(|_| ['a', 'é', '€', '𝄞', 'z'][(self.next() % 5) as usize])
                .collect()
        }
        fn bytes(&mut self) -> Vec<u8> {
            let n = [0, 1, 127, 128, 300][(self.next() % 5) as usize];
            (0..n).map(|_| self.next() as u8).collect()
        }
        fn metadata(&mut self) -> Metadata {
            (0..self.next() % 3)
                .map(|_| MetaEntry {
                    key: self.text(),
                    value: match self.next() % 3 {
                        0 => MetaValue::Str(self.text()),
                        1 => MetaValue::Bytes(self.bytes()),
                        _ => MetaValue::U64(self.number()),
                    },
                })
                .collect()
        }
        fn ids(&mut self) -> Vec<u64> {
            (0..self.next() % 4).map(|_| self.number()).collect()
        }
        fn settings(&mut self) -> Settings {
            Settings {
                max_payload: self.number() as u32,
                initial_credit: self.number() as u32,
                max_concurrent_requests: self.number() as u32,
            }
        }
    }

    fn random_message<'a>(r: &mut Rng, payload: &'a [u8]) -> Message<'a> {
        match r.next() % 18 {
            0 => Message::Hello {
                version: r.number() as u32,
                settings: r.settings(),
            },
            1 => Message::HelloYourself {
                version: r.number() as u32,
                settings: r.settings(),
            },
            2 => Message::ProtocolError {
                rule: r.text(),
                detail: r.text(),
            },
            3 => Message::Goodbye { reason: r.text() },
            4 => Message::Ping { nonce: r.number() },
            5 => Message::Pong { nonce: r.number() },
            6 => Message::ConnectionOpen {
                conn: r.number(),
                metadata: r.metadata(),
            },
            7 => Message::ConnectionAccept {
                conn: r.number(),
                metadata: r.metadata(),
            },
            8 => Message::ConnectionReject {
                conn: r.number(),
                reason: r.text(),
            },
            9 => Message::ConnectionClose {
                conn: r.number(),
                reason: r.text(),
            },
            10 => Message::Call {
                conn: r.number(),
                request: r.number(),
                method: r.number(),
                deadline_us: 0,
                metadata: r.metadata(),
                channels: r.ids(),
                args: payload,
            },
            11 => Message::Response {
                conn: r.number(),
                request: r.number(),
                metadata: r.metadata(),
                channels: r.ids(),
                outcome: match r.next() % 6 {
                    0 => Outcome::Ok(payload),
                    1 => Outcome::UserError(payload),
                    2 => Outcome::UnknownMethod,
                    3 => Outcome::InvalidPayload(r.text()),
                    4 => Outcome::Cancelled,
                    _ => Outcome::Internal(r.text()),
                },
            },
            12 => Message::Cancel {
                conn: r.number(),
                request: r.number(),
            },
            13 => Message::Item {
                channel: r.number(),
                payload,
            },
            14 => Message::Close { channel: r.number() },
            15 => Message::Reset {
                channel: r.number(),
                reason: r.text(),
            },
            16 => Message::GrantCredit {
                channel: r.number(),
                bytes: r.number() as u32,
            },
            _ => Message::Batch { messages: payload },
        }
    }

    /// A frame damaged one of four ways: a byte replaced, cut short, one
    /// byte more, or a varint's continuation bit flipped.
    fn damage(r: &mut Rng, frame: &mut Vec<u8>) {
        match r.next() % 4 {
            0 => {
                let i = (r.next() as usize) % frame.len();
                frame[i] = r.next() as u8;
            }
            1 => frame.truncate((r.next() as usize) % frame.len()),
            2 => frame.push(r.next() as u8),
            _ => {
                let i = (r.next() as usize) % frame.len();
                frame[i] ^= 0x80;
            }
        }
    }

    #[test]
    fn the_codec_writes_and_reads_what_facet_postcard_does() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let payload = r.bytes();
            let m = random_message(&mut r, &payload);
            round_trip(m);
        }
    }

    #[test]
    fn a_long_varint_read_in_one_load_is_what_reading_it_byte_by_byte_gives() {
        use varint::{read_varint, read_varint_stepwise, write_varint};
        let outcome = |r: Result<u64, varint::VarintError>, at: usize| match r {
            Ok(v) => Ok((v, at)),
            Err(varint::VarintError::Truncated) => Err("truncated"),
            Err(varint::VarintError::Overflow) => Err("overflow"),
        };
        let mut r = Rng(0x5eed_0f7a_1100);
        for round in 0..200_000u32 {
            // An encoded number (cut short, or its bytes damaged, or not),
            // or bytes that mostly carry continuation bits.
            let mut bytes = vec![0u8; 32];
            let mut len = if round % 2 == 0 {
                write_varint(&mut bytes, r.number())
            } else {
                let n = (r.next() % 13) as usize;
                for b in &mut bytes[..n] {
                    *b = (r.next() as u8) | if r.next().is_multiple_of(4) { 0 } else { 0x80 };
                }
                n
            };
            match r.next() % 4 {
                0 => len = len.saturating_sub(1 + (r.next() % 3) as usize),
                1 => bytes[(r.next() % 16) as usize] ^= 0x80,
                _ => {}
            }
            // Whatever follows the number in the frame, if anything.
            let extra = (r.next() % 10) as usize;
            for b in &mut bytes[len..len + extra] {
                *b = r.next() as u8;
            }
            let frame = &bytes[..len + extra];
            for bits in [16, 32, 64] {
                let (mut a, mut b) = (0, 0);
                let fast = read_varint(frame, &mut a, bits);
                let slow = read_varint_stepwise(frame, &mut b, bits);
                assert_eq!(outcome(fast, a), outcome(slow, b), "{frame:?} as {bits} bits");
            }
        }
    }

    #[test]
    fn a_usual_call_or_answer_decodes_as_the_full_reader_decodes_it() {
        let mut r = Rng(0xca11_ab1e);
        for round in 0..50_000u32 {
            let payload = r.bytes();
            let m = match round % 3 {
                0 => Message::Call {
                    conn: r.number(),
                    request: r.number(),
                    method: r.number(),
                    deadline_us: r.number(),
                    metadata: Vec::new(),
                    channels: Vec::new(),
                    args: &payload,
                },
                n => Message::Response {
                    conn: r.number(),
                    request: r.number(),
                    metadata: Vec::new(),
                    channels: Vec::new(),
                    outcome: if n == 1 {
                        Outcome::Ok(&payload)
                    } else {
                        Outcome::UserError(&payload)
                    },
                },
            };
            let mut frame = m.to_vec();
            // Damaged, or as written.
            if !r.next().is_multiple_of(4) {
                damage(&mut r, &mut frame);
            }
            // Held apart as a split frame's tail, or not.
            let tail = match r.next() % 3 {
                0 => (r.next() as usize) % (payload.len() + 2),
                _ => 0,
            };
            let frame = &frame[..frame.len() - tail.min(frame.len())];
            let ours = codec::decode_parts(frame, tail).map_err(|e| e.to_string());
            let full = codec::decode_fully(frame, tail).map_err(|e| e.to_string());
            assert_eq!(ours, full, "{frame:?} with {tail} bytes held apart");
        }
    }

    #[test]
    fn the_codec_refuses_trailing_bytes() {
        let mut frame = Message::Ping { nonce: 5 }.to_vec();
        frame.push(0);
        assert!(decode(&frame).unwrap_err().contains("left over"));
    }

    #[test]
    fn the_codec_accepts_and_refuses_what_facet_postcard_does() {
        // Valid frames, then damaged: flipped bytes, cut short, extended.
        let mut r = Rng(0x1234_5678_9abc_def1);
        let mut checked = 0;
        for _ in 0..20_000 {
            let payload = r.bytes();
            let mut frame = random_message(&mut r, &payload).to_vec();
            damage(&mut r, &mut frame);
            let ours = decode(&frame);
            let reference = reference_decode(&frame);
            match (&ours, &reference) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "frame {frame:?}"),
                (Err(_), Err(_)) => {}
                // Stricter by design: facet-postcard ignores bytes after the
                // value, the codec refuses a frame that holds more than one
                // message.
                (Err(e), Ok(_)) if e.contains("left over") => {}
                // Stricter by design: facet-postcard 0.46 drops the high bits
                // of a varint too large for its type; the codec refuses it.
                (Err(e), Ok(_)) if e.contains("overflows") => {}
                _ => panic!("the codec and facet-postcard disagree on {frame:?}: {ours:?} vs {reference:?}"),
            }
            checked += 1;
        }
        assert_eq!(checked, 20_000);
    }
}
