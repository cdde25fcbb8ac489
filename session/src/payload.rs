//! Payloads (arguments, results, items) to and from postcard bytes: the
//! fast path for common types (`fast.rs`) first, facet-postcard otherwise,
//! and a decode that refuses bytes to spare.

use facet::Facet;

/// Encodes a value (an argument list, a result, an item) as postcard.
pub(crate) fn encode_value<'f, T: Facet<'f>>(value: &T) -> Result<Vec<u8>, String> {
    match crate::fast::encode(value) {
        Some(bytes) => Ok(bytes),
        None => facet_postcard::to_vec(value).map_err(|e| e.to_string()),
    }
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
}
