//! Payloads (arguments, results, items) to and from postcard bytes: the
//! fast path for common types (`fast.rs`) first, facet-postcard otherwise,
//! and a decode that refuses bytes to spare.

use facet::Facet;

/// Encodes a value (an argument list, a result, an item) as postcard.
pub(crate) fn encode_value<'f, T: Facet<'f>>(value: &T) -> Result<Vec<u8>, String> {
    match crate::fast::encode(value) {
        Some(bytes) => Ok(bytes),
        None => facet_postcard::to_vec(value).map_err(|e| explain(T::SHAPE, e.to_string())),
    }
}

/// Types facet-postcard 0.46 cannot carry across a link, and what to send
/// instead: `PathBuf` and friends are refused when encoding, a `Duration`
/// is encoded as text but decoded as seconds and nanoseconds.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "Duration",
        "send it as u64 milliseconds (or a (u64, u32) seconds-and-nanoseconds pair)",
    ),
    ("SystemTime", "send it as u64 milliseconds since the Unix epoch"),
    ("PathBuf", "send it as a String"),
    ("Path", "send it as a String"),
    ("OsString", "send it as a String or as bytes"),
    ("OsStr", "send it as a String or as bytes"),
];

/// `error`, with the reason when `shape` holds a type that cannot cross a
/// link (a wrong type is then not the cause).
fn explain(shape: &'static facet::Shape, error: String) -> String {
    match unsupported_in(shape, &mut Vec::new()) {
        Some((name, instead)) => format!(
            "{error}: the payload holds a `{name}`, {}; {instead}",
            crate::error::UNSENDABLE
        ),
        None => error,
    }
}

/// The first type in `shape` that cannot cross a link, with the advice.
fn unsupported_in(
    shape: &'static facet::Shape,
    seen: &mut Vec<&'static facet::Shape>,
) -> Option<(&'static str, &'static str)> {
    if seen.iter().any(|s| std::ptr::eq(*s, shape)) {
        return None;
    }
    seen.push(shape);
    if let Some(&(name, instead)) = UNSUPPORTED.iter().find(|(n, _)| *n == shape.type_identifier) {
        return Some((name, instead));
    }
    crate::schema::parts(shape)
        .into_iter()
        .find_map(|s| unsupported_in(s, seen))
}

/// Decodes `bytes` as a `T`, refusing trailing bytes: postcard is not
/// self-describing, so a payload of the wrong type often decodes "successfully"
/// with bytes to spare. The parser's position after the value must be the
/// end of the payload.
pub(crate) fn decode_exact<T: Facet<'static>>(bytes: &[u8]) -> Result<T, String> {
    use facet_format::FormatParser as _;
    if let Some(r) = crate::fast::decode(bytes) {
        return r;
    }
    let mut parser = facet_postcard::PostcardParser::new(bytes);
    let value: T = facet_format::FormatDeserializer::new_owned(&mut parser)
        .deserialize()
        .map_err(|e| explain(T::SHAPE, e.to_string()))?;
    let used = parser.current_span().map_or(0, |s| s.offset as usize);
    if used != bytes.len() {
        return Err(explain(
            T::SHAPE,
            format!(
                "{} bytes, but a {} ends after {used}: the payload is not of the expected type",
                bytes.len(),
                std::any::type_name::<T>()
            ),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::decode_exact;

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

    #[test]
    fn types_that_cannot_cross_a_link_are_named_with_advice() {
        use super::encode_value;
        // facet-postcard 0.46 writes a Duration as text and reads it back as
        // (secs, nanos): the error says so instead of blaming the types.
        let bytes = encode_value(&(std::time::Duration::from_millis(1500),)).unwrap();
        let e = decode_exact::<(std::time::Duration,)>(&bytes).unwrap_err();
        assert!(
            e.contains("`Duration`, which cannot cross a link yet; send it as u64 milliseconds"),
            "{e}"
        );
        #[derive(facet::Facet)]
        struct Job {
            inputs: Vec<std::path::PathBuf>,
        }
        let e = encode_value(&(Job {
            inputs: vec!["/tmp".into()],
        },))
        .unwrap_err();
        assert!(
            e.contains("`PathBuf`, which cannot cross a link yet; send it as a String"),
            "{e}"
        );
    }
}
