//! Messages whose payload is written straight into the frame.
//!
//! A large argument or result (a `Vec<u8>`, a `String`) would otherwise be
//! encoded into a buffer of its own and then copied again into the link's
//! ring or slot. A [`Spliced`] message takes the payload as `head` (the
//! encoded elements before the large one, and its length prefix) and `tail`
//! (the large element's bytes, borrowed from the value), and writes both
//! where the frame is: the large bytes are copied once. A value with a
//! direct codec ([`Direct`]: a stream item such as a number, a string or a
//! tuple of them) is encoded where the frame is, with no buffer at all.
//! The bytes are exactly those of the same [`Message`] carrying the payload.
//!
//! It relies on the payload being the last field of a `Call`, of an `Ok`
//! or `UserError` `Response` and of an `Item` in the envelope's encoding: the message is
//! written with an empty payload, whose one-byte length (0) ends it, and that
//! byte is then replaced by the real length and the payload.

use super::codec::ITEM;
use super::varint::{varint_len, write_varint};
use super::{Message, Outcome};
use crate::fast::Direct;

/// What the send paths need of a message: its kind, its length and its
/// bytes. Implemented by [`Message`] and [`Spliced`].
pub(crate) trait Encode: Sync {
    /// The message kind's name, for errors.
    fn kind(&self) -> &'static str;
    /// The encoding's length in bytes.
    fn encoded_len(&self) -> usize;
    /// Writes the encoding into the front of `buf` (at least
    /// [`encoded_len`](Encode::encoded_len) long); returns its length.
    fn write_to(&self, buf: &mut [u8]) -> usize;
}

impl Encode for Message<'_> {
    fn kind(&self) -> &'static str {
        Message::kind(self)
    }

    fn encoded_len(&self) -> usize {
        Message::encoded_len(self)
    }

    fn write_to(&self, buf: &mut [u8]) -> usize {
        Message::write_to(self, buf)
    }
}

/// A `Call`, an `Ok` or `UserError` `Response`, or an `Item`, whose payload is
/// `head ++ tail`, or a value written directly (see the module docs).
pub(crate) struct Spliced<'m, 'a> {
    msg: &'m Message<'a>,
    body: Body<'m>,
    /// The envelope's fields when the message is a call or answer of the
    /// usual shape (worked out once: both the length and the writing need it).
    usual: Option<Usual>,
}

/// Where a [`Spliced`] message's payload comes from.
pub(crate) enum Body<'m> {
    /// Two pieces of bytes.
    Parts { head: &'m [u8], tail: &'m [u8] },
    /// A value with a direct codec, encoded where the frame is.
    Value(&'m Direct<'m>),
    /// `len` bytes that `write` puts where the frame is.
    Written {
        len: usize,
        write: &'m (dyn Fn(&mut [u8]) + Sync),
    },
}

impl<'m, 'a> Spliced<'m, 'a> {
    /// `msg` with the payload `head ++ tail`.
    ///
    /// # Panics
    /// Unless `msg` is a `Call`, a `Response` with an `Ok` or `UserError`
    /// outcome, or an `Item`, whose payload is empty: every caller builds
    /// such a message right before, so anything else is a bug here, never
    /// something a peer can cause.
    pub(crate) fn new(msg: &'m Message<'a>, head: &'m [u8], tail: &'m [u8]) -> Self {
        Self::checked(msg, Body::Parts { head, tail })
    }

    /// `msg` with the payload `value`'s encoding, written straight into the
    /// frame.
    ///
    /// # Panics
    /// As [`new`](Self::new).
    pub(crate) fn value(msg: &'m Message<'a>, value: &'m Direct<'m>) -> Self {
        Self::checked(msg, Body::Value(value))
    }

    /// `msg` with the payload `body` gives.
    ///
    /// # Panics
    /// As [`new`](Self::new).
    pub(crate) fn with(msg: &'m Message<'a>, body: Body<'m>) -> Self {
        Self::checked(msg, body)
    }

    fn checked(msg: &'m Message<'a>, body: Body<'m>) -> Self {
        let empty = match msg {
            Message::Call { args, .. } => args.is_empty(),
            Message::Response {
                outcome: Outcome::Ok(b) | Outcome::UserError(b),
                ..
            } => b.is_empty(),
            Message::Item { payload, .. } => payload.is_empty(),
            _ => false,
        };
        assert!(empty, "a {} message cannot carry a spliced payload", msg.kind());
        Spliced {
            msg,
            body,
            usual: Usual::of(msg),
        }
    }

    fn payload_len(&self) -> usize {
        match &self.body {
            Body::Parts { head, tail } => head.len() + tail.len(),
            Body::Value(v) => v.len(),
            Body::Written { len, .. } => *len,
        }
    }

    /// The encoding, in a buffer of its own.
    #[cfg(test)]
    fn to_vec(&self) -> Vec<u8> {
        let mut buf = vec![0; self.encoded_len()];
        self.write_to(&mut buf);
        buf
    }
}

impl Encode for Spliced<'_, '_> {
    fn kind(&self) -> &'static str {
        self.msg.kind()
    }

    fn encoded_len(&self) -> usize {
        let n = self.payload_len();
        let envelope = match self.msg {
            // A stream's item, the most frequent: its kind and channel.
            Message::Item { channel, .. } => item_head_len(*channel),
            m => match &self.usual {
                Some(u) => u.fields().iter().map(|&v| varint_len(v)).sum::<usize>() + u.tail().len(),
                // The empty payload's length byte is replaced.
                None => m.encoded_len() - 1,
            },
        };
        envelope + varint_len(n as u64) + n
    }

    fn write_to(&self, buf: &mut [u8]) -> usize {
        let mut at = match self.msg {
            Message::Item { channel, .. } => write_item_head(buf, *channel),
            m => match &self.usual {
                Some(u) => {
                    let mut at = 0;
                    for &v in u.fields() {
                        at += write_varint(&mut buf[at..], v);
                    }
                    // At most three bytes: no call to `memcpy`.
                    for &b in u.tail() {
                        buf[at] = b;
                        at += 1;
                    }
                    at
                }
                // The message ends with its empty payload's length, one 0 byte.
                None => m.write_to(buf) - 1,
            },
        };
        at += write_varint(&mut buf[at..], self.payload_len() as u64);
        match &self.body {
            Body::Parts { head, tail } => {
                osmos_shm::copy_bytes(&mut buf[at..at + head.len()], head);
                at += head.len();
                osmos_shm::copy_bytes(&mut buf[at..at + tail.len()], tail);
                at + tail.len()
            }
            Body::Value(v) => at + v.write_to(&mut buf[at..]),
            Body::Written { len, write } => {
                write(&mut buf[at..at + len]);
                at + len
            }
        }
    }
}

/// A stream's item whose value has a direct codec (the most frequent
/// message): the bytes of [`Spliced::value`] over an empty `Item`, written
/// without building or matching a [`Message`] for each item.
pub(crate) struct DirectItem<'m> {
    /// The item's channel.
    pub(crate) channel: u64,
    /// The item's value.
    pub(crate) value: &'m Direct<'m>,
}

impl Encode for DirectItem<'_> {
    fn kind(&self) -> &'static str {
        "Item"
    }

    #[inline]
    fn encoded_len(&self) -> usize {
        let n = self.value.len();
        item_head_len(self.channel) + varint_len(n as u64) + n
    }

    #[inline]
    fn write_to(&self, buf: &mut [u8]) -> usize {
        let mut at = write_item_head(buf, self.channel);
        at += write_varint(&mut buf[at..], self.value.len() as u64);
        at + self.value.write_to(&mut buf[at..])
    }
}

/// The length of an `Item`'s envelope before its payload's length: its
/// kind and channel.
#[inline]
fn item_head_len(channel: u64) -> usize {
    1 + varint_len(channel)
}

/// Writes an `Item`'s kind and channel at the front of `buf`; returns
/// their length.
#[inline]
fn write_item_head(buf: &mut [u8], channel: u64) -> usize {
    buf[0] = ITEM as u8;
    1 + write_varint(&mut buf[1..], channel)
}

/// The envelope of a spliced call or answer with no metadata and no
/// channels (nearly all of them), before its payload's length: its kind and
/// numbers, then the bytes of an empty metadata list, an empty channel list
/// and a response's outcome, as the codec writes them. Written here field
/// by field instead of through the general writer, which took a call's
/// frame ~500 instructions.
enum Usual {
    /// The kind, connection, request, method and deadline; two zeros.
    Call([u64; 5]),
    /// The kind, connection and request; two zeros, then the outcome
    /// (`Ok`, else `UserError`).
    Response([u64; 3], bool),
}

impl Usual {
    fn of(m: &Message<'_>) -> Option<Usual> {
        Some(match m {
            Message::Call {
                conn,
                request,
                method,
                deadline_us,
                metadata,
                channels,
                ..
            } if metadata.is_empty() && channels.is_empty() => {
                Usual::Call([10, *conn, *request, *method, *deadline_us])
            }
            Message::Response {
                conn,
                request,
                metadata,
                channels,
                outcome,
            } if metadata.is_empty() && channels.is_empty() => {
                let ok = match outcome {
                    Outcome::Ok(_) => true,
                    Outcome::UserError(_) => false,
                    _ => return None,
                };
                Usual::Response([11, *conn, *request], ok)
            }
            _ => return None,
        })
    }

    /// The numbers, each a varint.
    fn fields(&self) -> &[u64] {
        match self {
            Usual::Call(f) => f,
            Usual::Response(f, _) => f,
        }
    }

    /// The bytes after the numbers: no metadata, no channels (and the
    /// outcome's index).
    fn tail(&self) -> &'static [u8] {
        match self {
            Usual::Call(_) => &[0, 0],
            Usual::Response(_, true) => &[0, 0, 0],
            Usual::Response(_, false) => &[0, 0, 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Metadata;

    fn call(args: &[u8]) -> Message<'_> {
        Message::Call {
            conn: 3,
            request: 1_000_001,
            method: u64::MAX,
            deadline_us: 250_000,
            metadata: Metadata::new(),
            channels: vec![],
            args,
        }
    }

    fn response(outcome: Outcome<'_>) -> Message<'_> {
        Message::Response {
            conn: 0,
            request: 7,
            metadata: Metadata::new(),
            channels: vec![],
            outcome,
        }
    }

    #[test]
    fn a_call_or_answer_with_metadata_or_channels_is_spliced_whole_too() {
        let meta = vec![crate::wire::MetaEntry {
            key: "k".into(),
            value: crate::wire::MetaValue::U64(300),
        }];
        let payload = [7u8; 200];
        let call = |metadata: &Metadata, channels: &[u64], args| Message::Call {
            conn: 0,
            request: 9,
            method: 1 << 63,
            deadline_us: 0,
            metadata: metadata.clone(),
            channels: channels.to_vec(),
            args,
        };
        let answer = |metadata: &Metadata, channels: &[u64], outcome| Message::Response {
            conn: 5,
            request: 300,
            metadata: metadata.clone(),
            channels: channels.to_vec(),
            outcome,
        };
        for (metadata, channels) in [
            (&meta, &[][..]),
            (&Metadata::new(), &[2, 1 << 40][..]),
            (&meta, &[4][..]),
        ] {
            let whole = [
                (call(metadata, channels, &payload), call(metadata, channels, &[])),
                (
                    answer(metadata, channels, Outcome::Ok(&payload)),
                    answer(metadata, channels, Outcome::Ok(&[])),
                ),
                (
                    answer(metadata, channels, Outcome::UserError(&payload)),
                    answer(metadata, channels, Outcome::UserError(&[])),
                ),
            ];
            for (full, empty) in &whole {
                let s = Spliced::new(empty, &payload[..50], &payload[50..]);
                assert_eq!(s.encoded_len(), full.encoded_len(), "{}", s.kind());
                assert_eq!(s.to_vec(), full.to_vec(), "{} with {channels:?}", s.kind());
            }
        }
    }

    #[test]
    fn a_spliced_message_is_the_message_with_its_payload() {
        for n in [0usize, 1, 127, 128, 16_383, 16_384, 70_000] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            for cut in [0, n / 3, n] {
                let (head, tail) = payload.split_at(cut);
                let whole = [
                    (call(&payload), call(&[])),
                    (response(Outcome::Ok(&payload)), response(Outcome::Ok(&[]))),
                    (
                        response(Outcome::UserError(&payload)),
                        response(Outcome::UserError(&[])),
                    ),
                    (
                        Message::Item {
                            channel: 1 << 40,
                            payload: &payload,
                        },
                        Message::Item {
                            channel: 1 << 40,
                            payload: &[],
                        },
                    ),
                ];
                for (full, empty) in &whole {
                    let s = Spliced::new(empty, head, tail);
                    assert_eq!(s.encoded_len(), full.encoded_len(), "{} of {n}", s.kind());
                    assert_eq!(s.to_vec(), full.to_vec(), "{} of {n} cut at {cut}", s.kind());
                    assert_eq!(crate::wire::decode(&s.to_vec()).unwrap(), *full);
                }
            }
        }
    }

    #[test]
    fn a_written_payload_is_the_message_with_those_bytes() {
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let write = |buf: &mut [u8]| buf.copy_from_slice(&payload);
        for outcome in [Outcome::Ok(&payload[..]), Outcome::UserError(&payload[..])] {
            let empty_outcome = match outcome {
                Outcome::Ok(_) => Outcome::Ok(&[]),
                _ => Outcome::UserError(&[]),
            };
            let response = |outcome| Message::Response {
                conn: 3,
                request: 1 << 33,
                metadata: vec![],
                channels: vec![],
                outcome,
            };
            let (full, empty) = (response(outcome), response(empty_outcome));
            let s = Spliced::with(
                &empty,
                Body::Written {
                    len: payload.len(),
                    write: &write,
                },
            );
            assert_eq!(s.encoded_len(), full.encoded_len());
            assert_eq!(s.to_vec(), full.to_vec());
        }
    }

    #[test]
    fn a_value_written_in_place_is_the_message_with_its_encoding() {
        fn check<T: facet::Facet<'static>>(v: &T) {
            let payload = facet_postcard::to_vec(v).unwrap();
            let d = crate::fast::direct(v).expect("a type with a direct codec");
            assert_eq!(d.len(), payload.len());
            // A one-byte channel id writes its envelope the short way.
            for channel in [1, 1 << 40] {
                let full = Message::Item {
                    channel,
                    payload: &payload,
                };
                let empty = Message::Item {
                    channel,
                    payload: &[],
                };
                let s = Spliced::value(&empty, &d);
                assert_eq!(s.to_vec(), full.to_vec(), "channel {channel}");
                let item = DirectItem { channel, value: &d };
                assert_eq!(item.kind(), full.kind());
                assert_eq!(item.encoded_len(), full.encoded_len(), "channel {channel}");
                let mut buf = vec![0xa5u8; item.encoded_len() + 8];
                assert_eq!(item.write_to(&mut buf), full.encoded_len());
                assert_eq!(&buf[..full.encoded_len()], full.to_vec().as_slice());
                assert!(buf[full.encoded_len()..].iter().all(|&b| b == 0xa5));
            }
            let full = Message::Item {
                channel: 1 << 40,
                payload: &payload,
            };
            let empty = Message::Item {
                channel: 1 << 40,
                payload: &[],
            };
            let s = Spliced::value(&empty, &d);
            assert_eq!(s.encoded_len(), full.encoded_len());
            // Written into a dirty buffer longer than needed: exactly the
            // message's bytes, nothing past them touched.
            let mut buf = vec![0xa5u8; s.encoded_len() + 8];
            assert_eq!(s.write_to(&mut buf), full.encoded_len());
            assert_eq!(&buf[..full.encoded_len()], full.to_vec().as_slice());
            assert!(buf[full.encoded_len()..].iter().all(|&b| b == 0xa5));
            let args = call(&[]);
            assert_eq!(Spliced::value(&args, &d).to_vec(), call(&payload).to_vec());
        }
        for n in [0u32, 1, 127, 128, 16_383, 16_384, u32::MAX] {
            check(&n);
            check(&(u64::from(n) << 20, i64::from(n) * -3, n % 2 == 1, n as u8));
        }
        check(&(-1i16, i32::MIN, 7u16));
        for n in [0usize, 1, 127, 128, 70_000] {
            check(&"é".repeat(n / 2));
            check(&(9u64, "part".to_string(), vec![3u8; n]));
            check(&vec![0x5au8; n]);
        }
    }

    #[test]
    fn only_an_empty_call_answer_or_item_payload_is_spliced() {
        let refused = [
            call(&[1]),
            response(Outcome::Ok(&[1])),
            response(Outcome::Cancelled),
            Message::Ping { nonce: 1 },
            Message::Item {
                channel: 1,
                payload: &[1],
            },
        ];
        for msg in &refused {
            let built = std::panic::catch_unwind(|| {
                Spliced::new(msg, &[], &[]);
            });
            assert!(built.is_err(), "a {} was spliced", msg.kind());
        }
    }
}
