//! A received item's encoding as it waits in its channel's queue.
//!
//! A large item that is one byte string (a `Vec<u8>` or `String` item, the
//! usual way to stream data) keeps its bytes apart from its length prefix,
//! so that the receiver moves them into the value instead of copying them
//! once more (see [`crate::fast::decode_split`]). Anything else waits as it
//! came. Either way the bytes are the peer's encoding, byte for byte.

use facet::Facet;

use crate::fast::{self, SPLIT_AT_LEAST};
use crate::wire::codec::read_varint;

/// One queued item (see the module docs).
pub(crate) enum Queued {
    /// The encoding as it came.
    Whole(Vec<u8>),
    /// The encoding is `head ++ tail`: `head` is the byte string's length
    /// prefix as the peer wrote it, `tail` the bytes, exactly that many.
    Split { head: Vec<u8>, tail: Vec<u8> },
}

impl Queued {
    /// Copies `payload` (an item's encoding, in memory the peer cannot
    /// touch) into a queue entry, splitting off the bytes of a large byte
    /// string.
    pub(crate) fn new(payload: &[u8]) -> Self {
        if payload.len() >= SPLIT_AT_LEAST {
            let mut at = 0;
            if let Ok(n) = read_varint(payload, &mut at, 64)
                && n == (payload.len() - at) as u64
            {
                return Queued::Split {
                    head: payload[..at].to_vec(),
                    tail: payload[at..].to_vec(),
                };
            }
        }
        Queued::Whole(payload.to_vec())
    }

    /// The encoding's length in bytes (what the item cost in credit).
    pub(crate) fn len(&self) -> usize {
        match self {
            Queued::Whole(b) => b.len(),
            Queued::Split { head, tail } => head.len() + tail.len(),
        }
    }

    /// The encoding in one buffer.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        match self {
            Queued::Whole(b) => b,
            Queued::Split { head, tail } => [head, tail].concat(),
        }
    }

    /// The encoding as `head ++ tail` without copying (`head` may be empty).
    pub(crate) fn parts(&self) -> (&[u8], &[u8]) {
        match self {
            Queued::Whole(b) => (&[], b),
            Queued::Split { head, tail } => (head, tail),
        }
    }

    /// Decodes the item as a `T`, the whole encoding and nothing more.
    pub(crate) fn decode<T: Facet<'static>>(self) -> Result<T, String> {
        match self {
            Queued::Whole(b) => crate::payload::decode_exact(&b),
            Queued::Split { head, tail } => match fast::decode_split(&head, tail) {
                Ok(r) => r,
                Err(tail) => crate::payload::decode_exact(&[head, tail].concat()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_byte_string_is_split_and_decodes_without_a_copy() {
        let data: Vec<u8> = (0..SPLIT_AT_LEAST as u32 + 1).map(|i| i as u8).collect();
        let enc = crate::payload::encode_value(&data).unwrap();
        let q = Queued::new(&enc);
        let Queued::Split { head, tail } = &q else {
            panic!("not split");
        };
        assert_eq!([head.as_slice(), tail].concat(), enc);
        let at = tail.as_ptr();
        assert_eq!(q.len(), enc.len());
        let got: Vec<u8> = q.decode().unwrap();
        assert_eq!(got, data);
        assert_eq!(got.as_ptr(), at, "moved, not copied");
    }

    #[test]
    fn everything_else_waits_whole_and_decodes_as_before() {
        let small = crate::payload::encode_value(&vec![7u8; 100]).unwrap();
        assert!(matches!(Queued::new(&small), Queued::Whole(_)));
        // Large, but not one byte string: a length that does not run to the end.
        let mut odd = crate::payload::encode_value(&vec![7u8; SPLIT_AT_LEAST]).unwrap();
        odd.push(1);
        let q = Queued::new(&odd);
        assert!(matches!(q, Queued::Whole(_)));
        assert!(q.decode::<Vec<u8>>().unwrap_err().contains("ends after"));
    }

    #[test]
    fn a_split_item_of_another_type_decodes_from_the_joined_bytes() {
        // A Vec<u16> of 4096 elements below 128 is 4096 bytes after its
        // count: the same shape as a byte string.
        let v = vec![5u16; SPLIT_AT_LEAST];
        let enc = crate::payload::encode_value(&v).unwrap();
        let q = Queued::new(&enc);
        assert!(matches!(q, Queued::Split { .. }));
        assert_eq!(q.decode::<Vec<u16>>().unwrap(), v);
        // Raw bytes come back exactly as they came.
        assert_eq!(Queued::new(&enc).into_bytes(), enc);
        let text = "x".repeat(SPLIT_AT_LEAST);
        let enc = crate::payload::encode_value(&text).unwrap();
        let q = Queued::new(&enc);
        let (head, tail) = q.parts();
        assert!(!head.is_empty());
        assert_eq!([head, tail].concat(), enc);
        let mut bad = enc.clone();
        *bad.last_mut().unwrap() = 0xff;
        assert!(
            Queued::new(&bad)
                .decode::<String>()
                .unwrap_err()
                .contains("UTF-8")
        );
    }
}
