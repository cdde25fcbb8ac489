//! Payloads (arguments, results, items) to and from postcard bytes: the
//! direct codecs for common types (`fast.rs`) first; otherwise our postcard
//! writer (`encode.rs`, which carries `Duration`, paths and addresses) and
//! facet-postcard's parser, with a decode that refuses bytes to spare.
//!
//! Every type with a facet shape crosses, std's `Duration`, `PathBuf`,
//! `IpAddr`/`SocketAddr`, `u128`/`i128`, `NonZero*`, maps and sets
//! included. Types without one (`SystemTime`, `Instant`, `OsString`) are
//! refused at compile time by the `Facet` bound, which names them.

use facet::Facet;

mod encode;

/// Encodes a value (an argument list, a result, an item) as postcard.
pub(crate) fn encode_value<'f, T: Facet<'f>>(value: &T) -> Result<Vec<u8>, String> {
    match crate::fast::encode(value) {
        Some(bytes) => Ok(bytes),
        None => encode::to_vec(value),
    }
}

/// Encodes a value of a type without a direct codec (one
/// [`crate::fast::direct`] refused) through facet's reflection.
pub(crate) fn encode_reflected<'f, T: Facet<'f>>(value: &T) -> Result<Vec<u8>, String> {
    encode::to_vec(value)
}

/// Decodes `bytes` as a `T`, refusing trailing bytes: postcard is not
/// self-describing, so a payload of the wrong type often decodes "successfully"
/// with bytes to spare. The parser's position after the value must be the
/// end of the payload.
pub(crate) fn decode_exact<T: Facet<'static>>(bytes: &[u8]) -> Result<T, String> {
    match crate::fast::decode(bytes) {
        Some(r) => r,
        None => decode_reflected(bytes),
    }
}

/// [`decode_exact`] through facet's reflection, for a type without a
/// direct codec.
pub(crate) fn decode_reflected<T: Facet<'static>>(bytes: &[u8]) -> Result<T, String> {
    use facet_format::FormatParser as _;
    let mut parser = facet_postcard::PostcardParser::new(bytes);
    let value: T = facet_format::FormatDeserializer::new_owned(&mut parser)
        .deserialize()
        .map_err(|e| e.to_string())?;
    let used = parser.current_span().map_or(0, |s| s.offset as usize);
    if used != bytes.len() {
        return Err(format!(
            "{} bytes, but a {} ends after {used}: the payload is not of the expected type",
            bytes.len(),
            std::any::type_name::<T>()
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::{decode_exact, encode};

    #[test]
    fn decode_exact_refuses_spare_bytes() {
        let mut bytes = facet_postcard::to_vec(&(1u32, 300u32)).unwrap();
        assert_eq!(decode_exact::<(u32, u32)>(&bytes).unwrap(), (1, 300));
        bytes.push(7);
        let e = decode_exact::<(u32, u32)>(&bytes).unwrap_err();
        assert!(e.contains("ends after 3"), "{e}");
        // A wrong type that happens to decode: a u32 read from a pair.
        let e = decode_exact::<u32>(&bytes[..3]).unwrap_err();
        assert!(e.contains("ends after 1"), "{e}");
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let bytes = facet_postcard::to_vec(&data).unwrap();
        assert_eq!(decode_exact::<Vec<u8>>(&bytes).unwrap(), data);
        assert!(decode_exact::<Vec<u8>>(&bytes[..bytes.len() - 1]).is_err());
    }

    /// Encodes and decodes `value`, expecting it back unchanged.
    fn round_trip<T: facet::Facet<'static> + std::fmt::Debug + PartialEq>(value: T) {
        let name = std::any::type_name::<T>();
        let bytes = super::encode_value(&value).unwrap_or_else(|e| panic!("{name}: {e}"));
        let back = decode_exact::<T>(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back, value, "{name}");
    }

    #[test]
    fn the_std_types_of_plugin_apis_cross() {
        use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
        use std::time::Duration;
        round_trip(Duration::new(7, 999_999_999));
        round_trip(Some(Duration::from_millis(1500)));
        round_trip(std::path::PathBuf::from("/srv/plugins/ünï.so"));
        round_trip(std::net::IpAddr::from([10, 0, 0, 1]));
        round_trip(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
        round_trip(std::net::Ipv4Addr::BROADCAST);
        round_trip(std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
        round_trip("[::1]:443".parse::<std::net::SocketAddr>().unwrap());
        round_trip((u128::MAX, i128::MIN, 'é', (-1.5f32, f64::MAX)));
        round_trip(std::num::NonZeroU64::new(9).unwrap());
        round_trip(HashMap::from([(1u32, "a".to_string()), (2, "b".into())]));
        round_trip(BTreeMap::from([("k".to_string(), vec![1u8, 2])]));
        round_trip(HashSet::from([3u64, 4]));
        round_trip(BTreeSet::from([-3i8]));
        round_trip(std::sync::Arc::new("shared".to_string()));
        round_trip([1u16, 2, 3]);
        #[derive(facet::Facet, Debug, PartialEq)]
        struct Job {
            inputs: Vec<std::path::PathBuf>,
            timeout: Option<Duration>,
            peers: BTreeMap<String, std::net::SocketAddr>,
            every: Vec<Duration>,
        }
        round_trip((
            Job {
                inputs: vec!["/tmp/a".into(), "rel/b".into()],
                timeout: Some(Duration::from_secs(3)),
                peers: BTreeMap::from([("db".into(), ([10, 1, 2, 3], 5432).into())]),
                every: vec![Duration::ZERO, Duration::MAX],
            },
            5u8,
        ));
    }

    #[test]
    fn the_writer_agrees_with_facet_postcard_where_that_can_be_read_back() {
        use std::collections::BTreeMap;
        #[derive(facet::Facet)]
        #[repr(u8)]
        #[allow(dead_code)]
        enum Shape {
            Dot,
            Circle { r: f64 },
            Rect(u32, i64),
        }
        #[derive(facet::Facet)]
        struct Doc {
            title: String,
            tags: Vec<String>,
            shapes: Vec<Shape>,
            scores: BTreeMap<String, (i16, u128)>,
            note: Option<Box<str>>,
            flags: [bool; 3],
            letter: char,
            raw: Vec<u8>,
        }
        let doc = Doc {
            title: "plan".into(),
            tags: vec!["a".into(), String::new()],
            shapes: vec![Shape::Dot, Shape::Circle { r: 2.5 }, Shape::Rect(7, -9)],
            scores: BTreeMap::from([("x".into(), (-300, u128::MAX))]),
            note: Some("n".into()),
            flags: [true, false, true],
            letter: 'ß',
            raw: (0..=255).collect(),
        };
        let ours = encode::to_vec(&doc).unwrap();
        assert_eq!(ours, facet_postcard::to_vec(&doc).unwrap());
    }

    #[test]
    fn a_path_that_is_not_utf8_is_refused_by_name() {
        use std::os::unix::ffi::OsStrExt;
        let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/\xff"));
        let e = super::encode_value(&(path,)).unwrap_err();
        assert!(e.contains("is not valid UTF-8"), "{e}");
    }
}
