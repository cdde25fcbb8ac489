//! A received item's encoding as it waits in its channel's queue.
//!
//! A large item whose last element is a byte string (a `Vec<u8>` or
//! `String` item, or a tuple ending in one: the usual ways to stream data)
//! keeps those bytes apart from the rest, so that the receiver moves them
//! into the value instead of copying them once more (see
//! [`crate::fast::decode_split`]). Where the bytes begin is found by the
//! channel's [`Splitter`]: the receiving handle's item type sets it on its
//! first receive; until then (and on a relay, which has no item type) an
//! item that is one byte string is split. Anything else waits as it came.
//! A short item (up to 38 bytes, most items of a stream of numbers or ids)
//! waits in the queue entry itself, without an allocation of its own.
//! Either way the bytes are the peer's encoding, byte for byte. A link that
//! already copied such bytes out on their own (the shm link, see
//! `wire::codec::split_point`) hands them over as they are.

use facet::Facet;

use crate::fast::{self, SPLIT_AT_LEAST};
use crate::wire::varint::read_varint;

/// Finds where a large item's trailing bytes begin (see the module docs).
pub(crate) type Splitter = fn(&[u8]) -> Option<usize>;

/// The splitter for items of type `T`.
pub(crate) fn splitter_for<T: Facet<'static>>() -> Splitter {
    |payload| fast::tail_at::<T>(payload, SPLIT_AT_LEAST)
}

/// Items this short wait in the queue entry itself: a stream of small
/// items (counters, ids, short records) costs no allocation per item.
const INLINE: usize = 38;

/// One queued item (see the module docs).
pub(crate) enum Queued {
    /// A short encoding, kept in place: `bytes[..len]`.
    Inline { len: u8, bytes: [u8; INLINE] },
    /// The encoding as it came.
    Whole(Vec<u8>),
    /// The encoding is `head ++ tail`: `head` is everything before the byte
    /// string's bytes (ending with its length prefix as the peer wrote
    /// it), `tail` the bytes, exactly that many.
    Split { head: Vec<u8>, tail: Vec<u8> },
}

impl Queued {
    /// Copies `payload` (an item's encoding, in memory the peer cannot
    /// touch) into a queue entry, splitting off the bytes of a large
    /// trailing byte string where `splitter` (or, without one, the
    /// one-byte-string rule) finds them.
    pub(crate) fn new(payload: &[u8], splitter: Option<Splitter>) -> Self {
        if payload.len() >= SPLIT_AT_LEAST {
            let at = match splitter {
                Some(find) => find(payload),
                None => one_byte_string(payload),
            };
            if let Some(at) = at {
                return Queued::Split {
                    head: payload[..at].to_vec(),
                    tail: payload[at..].to_vec(),
                };
            }
        }
        if payload.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..payload.len()].copy_from_slice(payload);
            return Queued::Inline {
                len: payload.len() as u8,
                bytes,
            };
        }
        Queued::Whole(payload.to_vec())
    }

    /// The encoding's length in bytes (what the item cost in credit).
    pub(crate) fn len(&self) -> usize {
        match self {
            Queued::Inline { len, .. } => usize::from(*len),
            Queued::Whole(b) => b.len(),
            Queued::Split { head, tail } => head.len() + tail.len(),
        }
    }

    /// The encoding in one buffer.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        match self {
            Queued::Inline { len, bytes } => bytes[..usize::from(len)].to_vec(),
            Queued::Whole(b) => b,
            Queued::Split { head, tail } => [head, tail].concat(),
        }
    }

    /// The encoding as `head ++ tail` without copying (`head` may be empty).
    pub(crate) fn parts(&self) -> (&[u8], &[u8]) {
        match self {
            Queued::Inline { len, bytes } => (&[], &bytes[..usize::from(*len)]),
            Queued::Whole(b) => (&[], b),
            Queued::Split { head, tail } => (head, tail),
        }
    }

    /// Decodes the item as a `T` (whose direct codec, if any, is `codec`),
    /// the whole encoding and nothing more.
    pub(crate) fn decode<T: Facet<'static>>(self, codec: &fast::Codec<T>) -> Result<T, String> {
        let whole = |bytes: &[u8]| match codec.decode(bytes) {
            Some(r) => r,
            None => crate::payload::decode_reflected(bytes),
        };
        match self {
            Queued::Inline { len, bytes } => whole(&bytes[..usize::from(len)]),
            Queued::Whole(b) => whole(&b),
            Queued::Split { head, tail } => fast::decode_split_or_join(&head, tail),
        }
    }
}

/// Where the bytes begin if `payload` is exactly one byte string (a length
/// prefix, then that many bytes).
fn one_byte_string(payload: &[u8]) -> Option<usize> {
    let mut at = 0;
    let n = read_varint(payload, &mut at, 64).ok()?;
    (n == (payload.len() - at) as u64).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_byte_string_is_split_and_decodes_without_a_copy() {
        let data: Vec<u8> = (0..SPLIT_AT_LEAST as u32 + 1).map(|i| i as u8).collect();
        let enc = crate::payload::encode_value(&data).unwrap();
        let q = Queued::new(&enc, None);
        let Queued::Split { head, tail } = &q else {
            panic!("not split");
        };
        assert_eq!([head.as_slice(), tail].concat(), enc);
        let at = tail.as_ptr();
        assert_eq!(q.len(), enc.len());
        let got: Vec<u8> = q.decode(&fast::Codec::of()).unwrap();
        assert_eq!(got, data);
        assert_eq!(got.as_ptr(), at, "moved, not copied");
    }

    #[test]
    fn short_items_wait_inline_byte_for_byte() {
        for n in [0usize, 1, INLINE - 1, INLINE, INLINE + 1] {
            let text = "y".repeat(n.saturating_sub(1));
            let enc = crate::payload::encode_value(&text).unwrap();
            assert_eq!(enc.len(), n.max(1));
            let q = Queued::new(&enc, Some(splitter_for::<String>()));
            assert_eq!(matches!(q, Queued::Inline { .. }), enc.len() <= INLINE, "{n}");
            assert_eq!(q.len(), enc.len());
            let (head, tail) = q.parts();
            assert!(head.is_empty());
            assert_eq!(tail, enc.as_slice());
            assert_eq!(q.decode(&fast::Codec::<String>::of()).unwrap(), text);
            assert_eq!(Queued::new(&enc, None).into_bytes(), enc);
        }
        // A short item of the wrong type fails the same way inline.
        let enc = crate::payload::encode_value(&(1u32, 300u32)).unwrap();
        let e = Queued::new(&enc, None)
            .decode(&fast::Codec::<u32>::of())
            .unwrap_err();
        assert!(e.contains("ends after 1"), "{e}");
    }

    #[test]
    fn everything_else_waits_whole_and_decodes_as_before() {
        let small = crate::payload::encode_value(&vec![7u8; 100]).unwrap();
        assert!(matches!(Queued::new(&small, None), Queued::Whole(_)));
        // Large, but not one byte string: a length that does not run to the end.
        let mut odd = crate::payload::encode_value(&vec![7u8; SPLIT_AT_LEAST]).unwrap();
        odd.push(1);
        let q = Queued::new(&odd, None);
        assert!(matches!(q, Queued::Whole(_)));
        assert!(
            q.decode(&fast::Codec::<Vec<u8>>::of())
                .unwrap_err()
                .contains("ends after")
        );
    }

    #[test]
    fn the_item_type_splits_a_tuple_ending_in_bytes() {
        type Item = (u64, String, Vec<u8>);
        let item: Item = (9, "part".into(), vec![3u8; SPLIT_AT_LEAST]);
        let enc = crate::payload::encode_value(&item).unwrap();
        assert!(
            matches!(Queued::new(&enc, None), Queued::Whole(_)),
            "not one byte string"
        );
        let q = Queued::new(&enc, Some(splitter_for::<Item>()));
        let Queued::Split { tail, .. } = &q else {
            panic!("not split");
        };
        let at = tail.as_ptr();
        assert_eq!(q.len(), enc.len());
        let got: Item = q.decode(&fast::Codec::of()).unwrap();
        assert_eq!(got, item);
        assert_eq!(got.2.as_ptr(), at, "moved, not copied");
        // The item type decides: a Vec<u16> that looks like a byte string
        // is not split for its own type.
        let v = vec![5u16; SPLIT_AT_LEAST];
        let enc = crate::payload::encode_value(&v).unwrap();
        assert!(matches!(
            Queued::new(&enc, Some(splitter_for::<Vec<u16>>())),
            Queued::Whole(_)
        ));
    }

    #[test]
    fn a_split_item_of_another_type_decodes_from_the_joined_bytes() {
        // A Vec<u16> of 4096 elements below 128 is 4096 bytes after its
        // count: the same shape as a byte string.
        let v = vec![5u16; SPLIT_AT_LEAST];
        let enc = crate::payload::encode_value(&v).unwrap();
        let q = Queued::new(&enc, None);
        assert!(matches!(q, Queued::Split { .. }));
        assert_eq!(q.decode(&fast::Codec::<Vec<u16>>::of()).unwrap(), v);
        // Raw bytes come back exactly as they came.
        assert_eq!(Queued::new(&enc, None).into_bytes(), enc);
        let text = "x".repeat(SPLIT_AT_LEAST);
        let enc = crate::payload::encode_value(&text).unwrap();
        let q = Queued::new(&enc, None);
        let (head, tail) = q.parts();
        assert!(!head.is_empty());
        assert_eq!([head, tail].concat(), enc);
        let mut bad = enc.clone();
        *bad.last_mut().unwrap() = 0xff;
        assert!(
            Queued::new(&bad, None)
                .decode(&fast::Codec::<String>::of())
                .unwrap_err()
                .contains("UTF-8")
        );
    }
}
