//! Direct postcard codecs for the most common value types.
//!
//! Arguments, results and channel items are facet values encoded with
//! facet-postcard, which walks them by reflection: a fraction of a
//! microsecond even for a `u32`. A stream of small items spends most of its
//! time there. For a handful of types (integers, `bool`, `String`,
//! `Vec<u8>`) this module writes and reads the same bytes directly,
//! recognizing the type by its facet shape id; every other type goes through
//! facet-postcard. The tests check both ways against facet-postcard.

use facet::Facet;

/// One of the types with a direct codec.
#[derive(Clone, Copy)]
enum Kind {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I16,
    I32,
    I64,
    String,
    Bytes,
}

fn kind<'f, T: Facet<'f>>() -> Option<Kind> {
    let id = T::SHAPE.id;
    let is = |shape: &facet::Shape| shape.id == id;
    Some(if is(bool::SHAPE) {
        Kind::Bool
    } else if is(u8::SHAPE) {
        Kind::U8
    } else if is(u16::SHAPE) {
        Kind::U16
    } else if is(u32::SHAPE) {
        Kind::U32
    } else if is(u64::SHAPE) {
        Kind::U64
    } else if is(i16::SHAPE) {
        Kind::I16
    } else if is(i32::SHAPE) {
        Kind::I32
    } else if is(i64::SHAPE) {
        Kind::I64
    } else if is(String::SHAPE) {
        Kind::String
    } else if is(<Vec<u8>>::SHAPE) {
        Kind::Bytes
    } else {
        return None;
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Reads an exact varint of at most `max_bits`: the whole input must be used.
fn varint(bytes: &[u8], max_bits: u32) -> Result<(u64, usize), String> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let group = u64::from(b & 0x7f);
        let shift = 7 * i as u32;
        if shift >= max_bits || (max_bits - shift < 7 && group >> (max_bits - shift) != 0) {
            return Err(format!("the number overflows {max_bits} bits"));
        }
        v |= group << shift;
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err("the payload ends inside a number".into())
}

/// Reinterprets `v` as a `U`.
///
/// # Safety
/// `T` and `U` must be the same type.
unsafe fn cast<T, U>(v: &T) -> &U {
    // SAFETY: same type, per the caller.
    unsafe { &*(v as *const T).cast::<U>() }
}

/// Encodes `v` directly if its type has a direct codec.
pub(crate) fn encode<'f, T: Facet<'f>>(v: &T) -> Option<Vec<u8>> {
    let kind = kind::<T>()?;
    let mut out = Vec::new();
    // SAFETY: (every `cast` below) `kind` matched the shape id of T to exactly
    // that type, so T is that type.
    unsafe {
        match kind {
            Kind::Bool => out.push(u8::from(*cast::<T, bool>(v))),
            Kind::U8 => out.push(*cast::<T, u8>(v)),
            Kind::U16 => put_varint(&mut out, (*cast::<T, u16>(v)).into()),
            Kind::U32 => put_varint(&mut out, (*cast::<T, u32>(v)).into()),
            Kind::U64 => put_varint(&mut out, *cast::<T, u64>(v)),
            Kind::I16 => put_varint(&mut out, zigzag((*cast::<T, i16>(v)).into())),
            Kind::I32 => put_varint(&mut out, zigzag((*cast::<T, i32>(v)).into())),
            Kind::I64 => put_varint(&mut out, zigzag(*cast::<T, i64>(v))),
            Kind::String => {
                let s = cast::<T, String>(v);
                out.reserve_exact(10 + s.len());
                put_varint(&mut out, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
            Kind::Bytes => {
                let b = cast::<T, Vec<u8>>(v);
                out.reserve_exact(10 + b.len());
                put_varint(&mut out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }
    Some(out)
}

/// Moves `u` (of type `U`) into a `T`.
///
/// # Safety
/// `T` and `U` must be the same type.
unsafe fn into<T, U>(u: U) -> T {
    let u = std::mem::ManuallyDrop::new(u);
    // SAFETY: same type, per the caller; `u` is not dropped.
    unsafe { std::ptr::read((&*u as *const U).cast::<T>()) }
}

/// Decodes `bytes` (all of them) directly if `T` has a direct codec.
pub(crate) fn decode<T: Facet<'static>>(bytes: &[u8]) -> Option<Result<T, String>> {
    let kind = kind::<T>()?;
    let spare = |used: usize| {
        format!(
            "{} bytes, but a {} ends after {used}: the payload is not of the expected type",
            bytes.len(),
            std::any::type_name::<T>()
        )
    };
    let exact = |used: usize| {
        if used == bytes.len() {
            Ok(())
        } else {
            Err(spare(used))
        }
    };
    let int = |bits: u32| -> Result<u64, String> {
        let (v, used) = varint(bytes, bits)?;
        exact(used)?;
        Ok(v)
    };
    // SAFETY: (every `into` below) `kind` matched the shape id of T to exactly
    // that type, so T is that type.
    let r = unsafe {
        match kind {
            Kind::Bool => match bytes {
                [0] => Ok(into::<T, bool>(false)),
                [1] => Ok(into::<T, bool>(true)),
                [_] => Err("a bool must be 0 or 1".to_string()),
                _ => Err(format!("a bool is 1 byte, the payload has {}", bytes.len())),
            },
            Kind::U8 => match bytes {
                [b] => Ok(into::<T, u8>(*b)),
                _ => Err(format!("a u8 is 1 byte, the payload has {}", bytes.len())),
            },
            Kind::U16 => int(16).map(|v| into::<T, u16>(v as u16)),
            Kind::U32 => int(32).map(|v| into::<T, u32>(v as u32)),
            Kind::U64 => int(64).map(|v| into::<T, u64>(v)),
            Kind::I16 => int(16).map(|v| into::<T, i16>(unzigzag(v) as i16)),
            Kind::I32 => int(32).map(|v| into::<T, i32>(unzigzag(v) as i32)),
            Kind::I64 => int(64).map(|v| into::<T, i64>(unzigzag(v))),
            Kind::String | Kind::Bytes => match varint(bytes, 64) {
                Err(e) => Err(e),
                Ok((len, used)) if ((bytes.len() - used) as u64) < len => {
                    Err("the length runs past the end of the payload".to_string())
                }
                Ok((len, used)) if ((bytes.len() - used) as u64) > len => Err(spare(used + len as usize)),
                Ok((_, used)) => {
                    let body = bytes[used..].to_vec();
                    if let Kind::Bytes = kind {
                        Ok(into::<T, Vec<u8>>(body))
                    } else {
                        match String::from_utf8(body) {
                            Ok(s) => Ok(into::<T, String>(s)),
                            Err(_) => Err("the string is not valid UTF-8".to_string()),
                        }
                    }
                }
            },
        }
    };
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same<T>(v: T)
    where
        T: for<'f> Facet<'f> + PartialEq + std::fmt::Debug,
    {
        let reference = facet_postcard::to_vec(&v).unwrap();
        assert_eq!(encode(&v).unwrap(), reference, "{v:?}");
        assert_eq!(decode::<T>(&reference).unwrap().unwrap(), v);
    }

    #[test]
    fn direct_codecs_match_facet_postcard() {
        for v in [0u64, 1, 127, 128, 300, 16_384, u32::MAX as u64, u64::MAX] {
            same(v);
            same(v as u32);
            same(v as u16);
            same(v as u8);
            same(v as i64);
            same(-(v as i64));
            same(v as i32);
            same(-(v as i32));
            same(v as i16);
        }
        same(i64::MIN);
        same(i32::MIN);
        same(true);
        same(false);
        same(String::new());
        same("héllo €".to_string());
        same(Vec::<u8>::new());
        same((0..70_000u32).map(|i| i as u8).collect::<Vec<u8>>());
    }

    #[test]
    fn other_types_are_left_to_facet() {
        assert!(encode(&(1u32, 2u32)).is_none());
        assert!(decode::<Vec<u32>>(&[0]).is_none());
    }

    #[test]
    fn direct_decoding_refuses_what_does_not_fit() {
        // Overflow, truncation and spare bytes, each with a reason.
        let e = decode::<u16>(&[0xff, 0xff, 0x7f]).unwrap().unwrap_err();
        assert!(e.contains("overflows 16 bits"), "{e}");
        assert!(decode::<u32>(&[0x80]).unwrap().is_err());
        let e = decode::<u32>(&[1, 2]).unwrap().unwrap_err();
        assert!(e.contains("ends after 1"), "{e}");
        assert!(decode::<bool>(&[2]).unwrap().is_err());
        assert!(decode::<bool>(&[]).unwrap().is_err());
        assert!(decode::<u8>(&[]).unwrap().is_err());
        assert!(decode::<Vec<u8>>(&[5, 1, 2]).unwrap().is_err());
        assert!(decode::<Vec<u8>>(&[1, 1, 2]).unwrap().is_err());
        assert!(decode::<String>(&[1, 0xff]).unwrap().is_err());
        // Exhaustive over short inputs: never a panic, and agreement with
        // facet-postcard whenever both accept.
        for a in 0..=255u8 {
            for b in [0u8, 1, 0x7f, 0x80, 0xff] {
                for input in [&[a][..], &[a, b][..], &[a, b, 0x01][..]] {
                    if let (Some(Ok(x)), Ok(y)) =
                        (decode::<u32>(input), facet_postcard::from_slice::<u32>(input))
                    {
                        assert_eq!(x, y);
                    }
                    let _ = decode::<String>(input);
                    let _ = decode::<Vec<u8>>(input);
                    let _ = decode::<i64>(input);
                }
            }
        }
    }
}
