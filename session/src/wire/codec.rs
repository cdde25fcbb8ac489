//! The envelope codec: [`Message`] to and from bytes without reflection.
//!
//! Every message is a facet type, and its bytes are exactly what
//! facet-postcard makes of it (the tests in `wire.rs` check every variant,
//! and random frames, against facet-postcard). facet-postcard walks a value
//! through reflection, which costs one to two microseconds per envelope; this
//! module writes and reads the same postcard bytes directly, so the hot path
//! (a call, its response, a channel item) spends tens of nanoseconds on its
//! envelope.
//!
//! Postcard, as used here: unsigned integers are LEB128 varints (7 bits per
//! byte, least significant group first, high bit set on all but the last);
//! an enum is its variant index as a varint followed by its fields; a struct
//! is its fields in order; strings, byte slices and vectors are a varint
//! length followed by their contents.
//!
//! Decoding borrows byte payloads from the frame and never trusts a length:
//! every count is checked against the bytes that remain before anything is
//! allocated, and a frame must be consumed exactly.

use super::varint::{VarintError, read_varint, varint_len, write_varint};
use super::{Message, MetaEntry, MetaValue, Metadata, Outcome, Settings};

fn bytes_len(b: &[u8]) -> usize {
    varint_len(b.len() as u64) + b.len()
}

fn metadata_len(m: &Metadata) -> usize {
    varint_len(m.len() as u64)
        + m.iter()
            .map(|e| {
                bytes_len(e.key.as_bytes())
                    + 1
                    + match &e.value {
                        MetaValue::Str(s) => bytes_len(s.as_bytes()),
                        MetaValue::Bytes(b) => bytes_len(b),
                        MetaValue::U64(n) => varint_len(*n),
                    }
            })
            .sum::<usize>()
}

fn ids_len(ids: &[u64]) -> usize {
    varint_len(ids.len() as u64) + ids.iter().map(|&i| varint_len(i)).sum::<usize>()
}

fn settings_len(s: &Settings) -> usize {
    varint_len(s.max_payload.into())
        + varint_len(s.initial_credit.into())
        + varint_len(s.max_concurrent_requests.into())
}

/// The variant index of each message, as postcard writes it.
fn index(m: &Message<'_>) -> u8 {
    match m {
        Message::Hello { .. } => 0,
        Message::HelloYourself { .. } => 1,
        Message::ProtocolError { .. } => 2,
        Message::Goodbye { .. } => 3,
        Message::Ping { .. } => 4,
        Message::Pong { .. } => 5,
        Message::ConnectionOpen { .. } => 6,
        Message::ConnectionAccept { .. } => 7,
        Message::ConnectionReject { .. } => 8,
        Message::ConnectionClose { .. } => 9,
        Message::Call { .. } => 10,
        Message::Response { .. } => 11,
        Message::Cancel { .. } => 12,
        Message::Item { .. } => ITEM as u8,
        Message::Close { .. } => 14,
        Message::Reset { .. } => 15,
        Message::GrantCredit { .. } => 16,
        Message::Batch { .. } => 17,
    }
}

/// The encoded size of `m`, in bytes.
pub(crate) fn encoded_len(m: &Message<'_>) -> usize {
    1 + match m {
        Message::Hello { version, settings } | Message::HelloYourself { version, settings } => {
            varint_len((*version).into()) + settings_len(settings)
        }
        Message::ProtocolError { rule, detail } => bytes_len(rule.as_bytes()) + bytes_len(detail.as_bytes()),
        Message::Goodbye { reason } => bytes_len(reason.as_bytes()),
        Message::Ping { nonce } | Message::Pong { nonce } => varint_len(*nonce),
        Message::ConnectionOpen { conn, metadata } | Message::ConnectionAccept { conn, metadata } => {
            varint_len(*conn) + metadata_len(metadata)
        }
        Message::ConnectionReject { conn, reason } | Message::ConnectionClose { conn, reason } => {
            varint_len(*conn) + bytes_len(reason.as_bytes())
        }
        Message::Call {
            conn,
            request,
            method,
            deadline_us,
            metadata,
            channels,
            args,
        } => {
            varint_len(*conn)
                + varint_len(*request)
                + varint_len(*method)
                + varint_len(*deadline_us)
                + metadata_len(metadata)
                + ids_len(channels)
                + bytes_len(args)
        }
        Message::Response {
            conn,
            request,
            metadata,
            channels,
            outcome,
        } => {
            varint_len(*conn)
                + varint_len(*request)
                + metadata_len(metadata)
                + ids_len(channels)
                + 1
                + match outcome {
                    Outcome::Ok(b) | Outcome::UserError(b) => bytes_len(b),
                    Outcome::UnknownMethod | Outcome::Cancelled => 0,
                    Outcome::InvalidPayload(s) | Outcome::Internal(s) => bytes_len(s.as_bytes()),
                }
        }
        Message::Cancel { conn, request } => varint_len(*conn) + varint_len(*request),
        Message::Item { channel, payload } => varint_len(*channel) + bytes_len(payload),
        Message::Close { channel } => varint_len(*channel),
        Message::Reset { channel, reason } => varint_len(*channel) + bytes_len(reason.as_bytes()),
        Message::GrantCredit { channel, bytes } => varint_len(*channel) + varint_len((*bytes).into()),
        Message::Batch { messages } => bytes_len(messages),
    }
}

/// Writes into a buffer sized by [`encoded_len`].
struct Writer<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn varint(&mut self, v: u64) {
        self.at += write_varint(&mut self.buf[self.at..], v);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        osmos_shm::copy_bytes(&mut self.buf[self.at..self.at + b.len()], b);
        self.at += b.len();
    }

    fn metadata(&mut self, m: &Metadata) {
        self.varint(m.len() as u64);
        for e in m {
            self.bytes(e.key.as_bytes());
            match &e.value {
                MetaValue::Str(s) => {
                    self.varint(0);
                    self.bytes(s.as_bytes());
                }
                MetaValue::Bytes(b) => {
                    self.varint(1);
                    self.bytes(b);
                }
                MetaValue::U64(n) => {
                    self.varint(2);
                    self.varint(*n);
                }
            }
        }
    }

    fn ids(&mut self, ids: &[u64]) {
        self.varint(ids.len() as u64);
        for &i in ids {
            self.varint(i);
        }
    }

    fn settings(&mut self, s: &Settings) {
        self.varint(s.max_payload.into());
        self.varint(s.initial_credit.into());
        self.varint(s.max_concurrent_requests.into());
    }
}

/// Writes `m` into `buf`, which must be exactly [`encoded_len`] bytes.
///
/// # Panics
/// If `buf` is shorter than [`encoded_len`] (a bug of the caller's).
pub(crate) fn write(m: &Message<'_>, buf: &mut [u8]) -> usize {
    let mut w = Writer { buf, at: 0 };
    w.varint(index(m).into());
    match m {
        Message::Hello { version, settings } | Message::HelloYourself { version, settings } => {
            w.varint((*version).into());
            w.settings(settings);
        }
        Message::ProtocolError { rule, detail } => {
            w.bytes(rule.as_bytes());
            w.bytes(detail.as_bytes());
        }
        Message::Goodbye { reason } => w.bytes(reason.as_bytes()),
        Message::Ping { nonce } | Message::Pong { nonce } => w.varint(*nonce),
        Message::ConnectionOpen { conn, metadata } | Message::ConnectionAccept { conn, metadata } => {
            w.varint(*conn);
            w.metadata(metadata);
        }
        Message::ConnectionReject { conn, reason } | Message::ConnectionClose { conn, reason } => {
            w.varint(*conn);
            w.bytes(reason.as_bytes());
        }
        Message::Call {
            conn,
            request,
            method,
            deadline_us,
            metadata,
            channels,
            args,
        } => {
            w.varint(*conn);
            w.varint(*request);
            w.varint(*method);
            w.varint(*deadline_us);
            w.metadata(metadata);
            w.ids(channels);
            w.bytes(args);
        }
        Message::Response {
            conn,
            request,
            metadata,
            channels,
            outcome,
        } => {
            w.varint(*conn);
            w.varint(*request);
            w.metadata(metadata);
            w.ids(channels);
            match outcome {
                Outcome::Ok(b) => {
                    w.varint(0);
                    w.bytes(b);
                }
                Outcome::UserError(b) => {
                    w.varint(1);
                    w.bytes(b);
                }
                Outcome::UnknownMethod => w.varint(2),
                Outcome::InvalidPayload(s) => {
                    w.varint(3);
                    w.bytes(s.as_bytes());
                }
                Outcome::Cancelled => w.varint(4),
                Outcome::Internal(s) => {
                    w.varint(5);
                    w.bytes(s.as_bytes());
                }
            }
        }
        Message::Cancel { conn, request } => {
            w.varint(*conn);
            w.varint(*request);
        }
        Message::Item { channel, payload } => {
            w.varint(*channel);
            w.bytes(payload);
        }
        Message::Close { channel } => w.varint(*channel),
        Message::Reset { channel, reason } => {
            w.varint(*channel);
            w.bytes(reason.as_bytes());
        }
        Message::GrantCredit { channel, bytes } => {
            w.varint(*channel);
            w.varint((*bytes).into());
        }
        Message::Batch { messages } => w.bytes(messages),
    }
    w.at
}

/// Encodes `m` into a new vector.
pub(crate) fn to_vec(m: &Message<'_>) -> Vec<u8> {
    let mut v = vec![0; encoded_len(m)];
    let n = write(m, &mut v);
    debug_assert_eq!(n, v.len());
    v
}

/// Why a frame did not decode: what was being read, and at which byte.
#[derive(Debug)]
pub(crate) struct DecodeError {
    what: &'static str,
    at: usize,
    problem: &'static str,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}: {}", self.what, self.at, self.problem)
    }
}

/// Reads a frame front to back.
struct Reader<'a> {
    frame: &'a [u8],
    at: usize,
    /// Bytes of the frame held apart after `frame` (see [`decode_parts`]):
    /// they can only be the end of the message's last byte payload.
    tail: usize,
    /// Whether the last byte payload took them.
    tail_taken: bool,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `frame`, with `tail` bytes held apart.
    fn new(frame: &'a [u8], tail: usize) -> Self {
        Reader {
            frame,
            at: 0,
            tail,
            tail_taken: false,
        }
    }

    fn fail<T>(&self, what: &'static str, problem: &'static str) -> Result<T, DecodeError> {
        Err(DecodeError {
            what,
            at: self.at,
            problem,
        })
    }

    /// An `Item`'s fields, after its kind: the channel id and the payload.
    fn item(&mut self) -> Result<(u64, &'a [u8]), DecodeError> {
        Ok((self.u64("channel id")?, self.last_bytes("item")?))
    }

    /// Checks that the message used the whole frame, and the bytes held
    /// apart if there were.
    fn finish(&self) -> Result<(), DecodeError> {
        if self.at != self.frame.len() {
            return self.fail("frame", "bytes are left over after the message");
        }
        if self.tail > 0 && !self.tail_taken {
            return self.fail(
                "frame",
                "its end was held apart as a payload's bytes, but the message has no payload there",
            );
        }
        Ok(())
    }

    fn varint(&mut self, what: &'static str, bits: u32) -> Result<u64, DecodeError> {
        let start = self.at;
        read_varint(self.frame, &mut self.at, bits).map_err(|e| DecodeError {
            what,
            at: start,
            problem: match (e, bits) {
                (VarintError::Truncated, _) => "the frame ends inside a number",
                (VarintError::Overflow, 32) => "the number overflows 32 bits",
                (VarintError::Overflow, _) => "the number overflows 64 bits",
            },
        })
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.varint(what, 64)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        // In range: `varint` refuses anything wider than 32 bits.
        self.varint(what, 32).map(|v| v as u32)
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u64(what)?;
        let left = (self.frame.len() - self.at) as u64;
        if len > left {
            return self.fail(what, "its length runs past the end of the frame");
        }
        let b = &self.frame[self.at..self.at + len as usize];
        self.at += len as usize;
        Ok(b)
    }

    /// The message's last field, a byte payload: like [`bytes`](Self::bytes),
    /// but one that runs on into the bytes held apart, to their end, is
    /// returned without them (its caller gets them separately).
    fn last_bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.tail > 0 {
            let mut at = self.at;
            if let Ok(len) = read_varint(self.frame, &mut at, 64)
                && len == (self.frame.len() - at) as u64 + self.tail as u64
            {
                self.at = self.frame.len();
                self.tail_taken = true;
                return Ok(&self.frame[at..]);
            }
        }
        self.bytes(what)
    }

    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let start = self.at;
        let b = self.bytes(what)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError {
                what,
                at: start,
                problem: "it is not valid UTF-8",
            }),
        }
    }

    /// A count of items at least `min_item` bytes each: never more than the
    /// bytes left could hold.
    fn count(&mut self, what: &'static str, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.u64(what)?;
        let left = (self.frame.len() - self.at) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return self.fail(what, "it counts more items than the frame holds");
        }
        Ok(n as usize)
    }

    fn metadata(&mut self) -> Result<Metadata, DecodeError> {
        // An entry is at least a key length, a tag and a value byte.
        let n = self.count("metadata", 3)?;
        let mut m = Vec::with_capacity(n);
        for _ in 0..n {
            let key = self.string("metadata key")?;
            let value = match self.u32("metadata value kind")? {
                0 => MetaValue::Str(self.string("metadata string")?),
                1 => MetaValue::Bytes(self.bytes("metadata bytes")?.to_vec()),
                2 => MetaValue::U64(self.u64("metadata number")?),
                _ => return self.fail("metadata value kind", "no such kind (0..=2)"),
            };
            m.push(MetaEntry { key, value });
        }
        Ok(m)
    }

    fn ids(&mut self) -> Result<Vec<u64>, DecodeError> {
        let n = self.count("channel list", 1)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.u64("channel id")?);
        }
        Ok(v)
    }

    fn settings(&mut self) -> Result<Settings, DecodeError> {
        Ok(Settings {
            max_payload: self.u32("max_payload")?,
            initial_credit: self.u32("initial_credit")?,
            max_concurrent_requests: self.u32("max_concurrent_requests")?,
        })
    }

    fn outcome(&mut self) -> Result<Outcome<'a>, DecodeError> {
        Ok(match self.u32("outcome")? {
            0 => Outcome::Ok(self.last_bytes("result")?),
            1 => Outcome::UserError(self.last_bytes("user error")?),
            2 => Outcome::UnknownMethod,
            3 => Outcome::InvalidPayload(self.string("invalid payload detail")?),
            4 => Outcome::Cancelled,
            5 => Outcome::Internal(self.string("internal error detail")?),
            _ => return self.fail("outcome", "no such outcome (0..=5)"),
        })
    }
}

/// Decodes one frame, borrowing byte payloads from it.
pub(crate) fn decode(frame: &[u8]) -> Result<Message<'_>, DecodeError> {
    decode_parts(frame, 0)
}

/// Decodes one frame of which the last `tail` bytes are held apart (found by
/// [`split_point`]): they must be the end of the message's last field, a
/// byte payload (a call's arguments, a response's value or error, an item),
/// which is then borrowed without them.
pub(crate) fn decode_parts(frame: &[u8], tail: usize) -> Result<Message<'_>, DecodeError> {
    match usual_call_or_response(frame, tail) {
        Some(m) => Ok(m),
        None => decode_fully(frame, tail),
    }
}

/// [`decode_parts`] of any frame, every field through the checking reader.
pub(super) fn decode_fully(frame: &[u8], tail: usize) -> Result<Message<'_>, DecodeError> {
    let mut r = Reader::new(frame, tail);
    let kind = r.u32("message kind")?;
    let m = match kind {
        0 | 1 => {
            let version = r.u32("version")?;
            let settings = r.settings()?;
            if kind == 0 {
                Message::Hello { version, settings }
            } else {
                Message::HelloYourself { version, settings }
            }
        }
        2 => Message::ProtocolError {
            rule: r.string("rule")?,
            detail: r.string("detail")?,
        },
        3 => Message::Goodbye {
            reason: r.string("reason")?,
        },
        4 => Message::Ping {
            nonce: r.u64("nonce")?,
        },
        5 => Message::Pong {
            nonce: r.u64("nonce")?,
        },
        6 => Message::ConnectionOpen {
            conn: r.u64("connection id")?,
            metadata: r.metadata()?,
        },
        7 => Message::ConnectionAccept {
            conn: r.u64("connection id")?,
            metadata: r.metadata()?,
        },
        8 => Message::ConnectionReject {
            conn: r.u64("connection id")?,
            reason: r.string("reason")?,
        },
        9 => Message::ConnectionClose {
            conn: r.u64("connection id")?,
            reason: r.string("reason")?,
        },
        10 => Message::Call {
            conn: r.u64("connection id")?,
            request: r.u64("request id")?,
            method: r.u64("method id")?,
            deadline_us: r.u64("deadline")?,
            metadata: r.metadata()?,
            channels: r.ids()?,
            args: r.last_bytes("arguments")?,
        },
        11 => Message::Response {
            conn: r.u64("connection id")?,
            request: r.u64("request id")?,
            metadata: r.metadata()?,
            channels: r.ids()?,
            outcome: r.outcome()?,
        },
        12 => Message::Cancel {
            conn: r.u64("connection id")?,
            request: r.u64("request id")?,
        },
        ITEM => {
            let (channel, payload) = r.item()?;
            Message::Item { channel, payload }
        }
        14 => Message::Close {
            channel: r.u64("channel id")?,
        },
        15 => Message::Reset {
            channel: r.u64("channel id")?,
            reason: r.string("reason")?,
        },
        16 => Message::GrantCredit {
            channel: r.u64("channel id")?,
            bytes: r.u32("credit")?,
        },
        17 => Message::Batch {
            messages: r.bytes("batch")?,
        },
        _ => {
            return Err(DecodeError {
                what: "message kind",
                at: 0,
                problem: "the kind is out of range (there are 18 kinds, 0..=17)",
            });
        }
    };
    r.finish()?;
    Ok(m)
}

/// A `Call`, or an `Ok` or `UserError` `Response`, with no metadata and no
/// channels (nearly every call and answer), read with no error bookkeeping;
/// `None` for anything else, which [`decode_parts`]' full reader then
/// accepts or refuses with its reasons. What it returns is exactly what the
/// full reader would.
#[inline]
fn usual_call_or_response(frame: &[u8], tail: usize) -> Option<Message<'_>> {
    let kind = *frame.first()?;
    if kind != 10 && kind != 11 {
        return None;
    }
    let mut at = 1;
    let number = |at: &mut usize| read_varint(frame, at, 64).ok();
    let conn = number(&mut at)?;
    let request = number(&mut at)?;
    let (method, deadline_us) = if kind == 10 {
        (number(&mut at)?, number(&mut at)?)
    } else {
        (0, 0)
    };
    // No metadata entries, no channels: two zero counts.
    if frame.get(at..at + 2)? != [0, 0] {
        return None;
    }
    at += 2;
    let ok = kind == 10 || {
        let outcome = *frame.get(at)?;
        at += 1;
        match outcome {
            0 => true,
            1 => false,
            _ => return None,
        }
    };
    // The payload runs to the frame's end, or on into the bytes held apart.
    let len = number(&mut at)?;
    if len != (frame.len() - at) as u64 + tail as u64 {
        return None;
    }
    let payload = &frame[at..];
    Some(if kind == 10 {
        Message::Call {
            conn,
            request,
            method,
            deadline_us,
            metadata: Vec::new(),
            channels: Vec::new(),
            args: payload,
        }
    } else {
        Message::Response {
            conn,
            request,
            metadata: Vec::new(),
            channels: Vec::new(),
            outcome: if ok {
                Outcome::Ok(payload)
            } else {
                Outcome::UserError(payload)
            },
        }
    })
}

/// The kind of an `Item` message.
pub(crate) const ITEM: u32 = 13;

/// The next message of a `Batch`'s `messages` at `*at` (its length, then
/// its bytes), advancing `*at` past it; `None` at the end. A length that
/// runs past the end is an error.
pub(crate) fn next_in_batch<'m>(messages: &'m [u8], at: &mut usize) -> Option<Result<&'m [u8], String>> {
    if *at >= messages.len() {
        return None;
    }
    let len = match read_varint(messages, at, 64) {
        Ok(len) => len,
        Err(_) => {
            return Some(Err(format!(
                "a batch's message length at byte {} is cut short",
                *at
            )));
        }
    };
    let left = (messages.len() - *at) as u64;
    if len > left {
        return Some(Err(format!(
            "a batch's message of {len} bytes runs past its end ({left} bytes left)"
        )));
    }
    let m = &messages[*at..*at + len as usize];
    *at += len as usize;
    Some(Ok(m))
}

/// An `Item` frame's channel and payload, decoded without building a
/// [`Message`] (a stream's items are most of the frames); `None` for a frame
/// of another kind, for [`decode_parts`]. Accepts and refuses exactly what
/// `decode_parts` does.
pub(crate) fn decode_item(frame: &[u8], tail: usize) -> Option<Result<(u64, &[u8]), DecodeError>> {
    // The usual item, read with no error bookkeeping: the kind in one byte,
    // then the channel and a length that ends the frame exactly. Anything
    // else (a tail held apart, a bad length) takes the full reader below,
    // which refuses it with its reason.
    if tail == 0 && frame.first() == Some(&(ITEM as u8)) {
        let mut at = 1;
        if let Ok(channel) = read_varint(frame, &mut at, 64)
            && let Ok(len) = read_varint(frame, &mut at, 64)
            && len == (frame.len() - at) as u64
        {
            return Some(Ok((channel, &frame[at..])));
        }
    }
    let mut r = Reader::new(frame, tail);
    match r.u32("message kind") {
        Ok(ITEM) => Some(r.item().and_then(|item| r.finish().map(|()| item))),
        _ => None,
    }
}

/// How far into a byte payload [`split_point`] looks for the length prefix
/// of the bytes it ends with.
const SPLIT_SCAN: usize = 32;

/// Where to hold a large frame's tail apart, judged from the first bytes of
/// the frame (`prefix`, a private copy) and its whole length `total`: the
/// offset of the bytes that end a call's arguments, a response's value or
/// error, or an item, when these end with a byte string (a length prefix,
/// then at least `min_tail` bytes running to the end of the frame, the way
/// a `Vec<u8>` or `String` argument, result or item is encoded). The
/// receiver then moves those bytes into the decoded value (see
/// `fast::decode_split`) instead of copying them again. `None`: keep the
/// frame whole. A wrong guess costs one copy, never a different value: the
/// value's decoder checks that the bytes are its last element's.
pub(crate) fn split_point(prefix: &[u8], total: usize, min_tail: usize) -> Option<usize> {
    let mut r = Reader::new(prefix, 0);
    match r.u32("message kind").ok()? {
        10 => {
            for what in ["connection id", "request id", "method id", "deadline"] {
                r.u64(what).ok()?;
            }
            r.metadata().ok()?;
            r.ids().ok()?;
        }
        11 => {
            r.u64("connection id").ok()?;
            r.u64("request id").ok()?;
            r.metadata().ok()?;
            r.ids().ok()?;
            if r.u32("outcome").ok()? > 1 {
                return None;
            }
        }
        ITEM => {
            r.u64("channel id").ok()?;
        }
        _ => return None,
    }
    let len = r.u64("payload").ok()?;
    if (r.at as u64).checked_add(len)? != total as u64 {
        return None;
    }
    let payload = r.at;
    (payload..prefix.len().min(payload + SPLIT_SCAN)).find_map(|p| {
        let mut at = p;
        let n = read_varint(prefix, &mut at, 64).ok()?;
        (n >= min_tail as u64 && (at as u64).checked_add(n) == Some(total as u64)).then_some(at)
    })
}
