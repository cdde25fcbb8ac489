//! Tests of the direct codec against facet-postcard.

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
fn tuples_of_direct_types_match_facet_postcard() {
    same((1u32, 2u32));
    same((u32::MAX, 300u64, -5i32));
    same(("name".to_string(), vec![1u8, 2, 3], true, 7u8));
    same((vec![0xa5u8; 70_000],));
    same(());
    same((7u8, u64::MAX, false, -1i16));
    same((i64::MIN, u16::MAX, true));
    // Numbers and bools go straight to their places: a bad element after
    // good ones is still an error.
    let e = decode::<(u32, bool, u16)>(&[1, 2, 3]).unwrap().unwrap_err();
    assert!(e.contains("bool must be 0 or 1"), "{e}");
    let bytes = facet_postcard::to_vec(&(1u32, 2u32)).unwrap();
    let e = decode::<(u32, u32, u32)>(&bytes).unwrap().unwrap_err();
    assert!(e.contains("ends inside"), "{e}");
    let e = decode::<(u32,)>(&bytes).unwrap().unwrap_err();
    assert!(e.contains("ends after 1"), "{e}");
    // A String element fails after a Vec element decoded: nothing leaks
    // or is double-freed (run under Miri or a leak checker to see).
    assert!(decode::<(Vec<u8>, String)>(&[1, 9, 1, 0xff]).unwrap().is_err());
}

#[test]
fn a_split_encoding_is_the_encoding() {
    fn joined<'f, T: Facet<'f>>(v: &T, min_tail: usize) -> Option<Vec<u8>> {
        let s = split(v, min_tail)?;
        Some([s.head.as_slice(), s.tail].concat())
    }
    let big = vec![0x5au8; 70_000];
    assert_eq!(joined(&big, 1).unwrap(), encode(&big).unwrap());
    let text = "é".repeat(5_000);
    assert_eq!(joined(&text, 1).unwrap(), encode(&text).unwrap());
    let args = (-3i64, "key".to_string(), true, big.clone());
    assert_eq!(joined(&args, 1).unwrap(), encode(&args).unwrap());
    assert_eq!(
        split(&args, 1).unwrap().tail.as_ptr(),
        args.3.as_ptr(),
        "borrowed, not copied"
    );
    // Only a large last element of bytes or text is split.
    assert!(split(&args, 70_001).is_none());
    assert!(split(&(big.clone(), 1u32), 1).is_none());
    assert!(split(&5u64, 0).is_none());
    assert!(split(&vec![1u32], 0).is_none());
    assert_eq!(
        joined(&(Vec::<u8>::new(),), 0).unwrap(),
        encode(&(Vec::<u8>::new(),)).unwrap()
    );
}

#[test]
fn a_split_decode_moves_the_tail_and_agrees_with_the_whole_decode() {
    let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
    let s = split(&big, 1).unwrap();
    let tail = s.tail.to_vec();
    let at = tail.as_ptr();
    let got: Vec<u8> = decode_split(&s.head, tail).unwrap().unwrap();
    assert_eq!(got, big);
    assert_eq!(got.as_ptr(), at, "moved, not copied");

    let args = (7u32, "key".to_string(), "é".repeat(3_000));
    let s = split(&args, 1).unwrap();
    let got: (u32, String, String) = decode_split(&s.head, s.tail.to_vec()).unwrap().unwrap();
    assert_eq!(got, args);

    // Not this shape: the tail comes back, for a decode of the joined bytes.
    let (head, tail) = (s.head.clone(), s.tail.to_vec());
    assert!(decode_split::<(u32, String)>(&head, tail.clone()).is_err());
    assert!(decode_split::<(u32, String, String, u8)>(&head, tail.clone()).is_err());
    assert!(decode_split::<Vec<u32>>(&head, tail.clone()).is_err());
    assert!(decode_split::<(u32, String, String)>(&head, tail[1..].to_vec()).is_err());
    assert!(decode_split::<(u32, String, String)>(&head[..head.len() - 1], tail.clone()).is_err());
    // The shape, but not UTF-8: the same error as the whole decode.
    let mut bad = tail.clone();
    bad[0] = 0xff;
    let e = decode_split::<(u32, String, String)>(&head, bad.clone())
        .unwrap()
        .unwrap_err();
    let whole = decode::<(u32, String, String)>(&[head.as_slice(), &bad].concat()).unwrap();
    assert_eq!(Err(e), whole);
}

#[test]
fn the_tail_is_found_where_the_split_put_it() {
    let args = (-3i64, "key".to_string(), true, vec![0x5au8; 70_000]);
    let s = split(&args, 1).unwrap();
    let enc = encode(&args).unwrap();
    type Args = (i64, String, bool, Vec<u8>);
    assert_eq!(tail_at::<Args>(&enc, 1), Some(s.head.len()));
    assert_eq!(tail_at::<Args>(&enc, 70_001), None, "below the minimum");
    // Not an encoding of that shape: no offset, never a panic.
    assert_eq!(tail_at::<Args>(&enc[..enc.len() - 1], 1), None);
    assert_eq!(tail_at::<(i64, String)>(&enc, 1), None);
    assert_eq!(tail_at::<(Vec<u8>, u32)>(&enc, 1), None);
    assert_eq!(tail_at::<Vec<u32>>(&enc, 1), None);
    for cut in 0..12 {
        let _ = tail_at::<Args>(&enc[..cut], 0);
    }
}

#[test]
fn other_types_are_left_to_facet() {
    assert!(encode(&vec![1u32]).is_none());
    assert!(encode(&(1u32, vec![2u32])).is_none());
    assert!(decode::<Vec<u32>>(&[0]).is_none());
    assert!(decode::<(u32, Option<u32>)>(&[0, 0]).is_none());
}

#[test]
fn direct_decoding_refuses_what_does_not_fit() {
    // Overflow, truncation and spare bytes, each with a reason.
    let e = decode::<u16>(&[0xff, 0xff, 0x7f]).unwrap().unwrap_err();
    assert!(e.contains("overflows 16 bits"), "{e}");
    assert!(decode::<u32>(&[0x80]).unwrap().is_err());
    let e = decode::<u32>(&[1, 2]).unwrap().unwrap_err();
    assert!(e.contains("ends after 1"), "{e}");
    let e = decode::<u32>(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01])
        .unwrap()
        .unwrap_err();
    assert!(e.contains("overflows 32 bits"), "{e}");
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
                if let (Some(Ok(x)), Ok(y)) = (decode::<u32>(input), facet_postcard::from_slice::<u32>(input))
                {
                    assert_eq!(x, y);
                }
                if let (Some(Ok(x)), Ok(y)) = (
                    decode::<(u16, i32)>(input),
                    facet_postcard::from_slice::<(u16, i32)>(input),
                ) {
                    assert_eq!(x, y);
                }
                let _ = decode::<String>(input);
                let _ = decode::<Vec<u8>>(input);
                let _ = decode::<i64>(input);
            }
        }
    }
}

/// Planning many types in turn, more than the per-thread plan table holds
/// (so that types share its slots), gives each type its own plan, as
/// working it out afresh does.
#[test]
fn each_type_gets_its_own_plan_from_the_table() {
    fn check<T: facet::Facet<'static>>() {
        assert_eq!(
            super::plan::<T>(),
            super::plan_of(T::SHAPE),
            "{}",
            std::any::type_name::<T>()
        );
    }
    for _ in 0..3 {
        check::<bool>();
        check::<u8>();
        check::<u16>();
        check::<u32>();
        check::<u64>();
        check::<i16>();
        check::<i32>();
        check::<i64>();
        check::<String>();
        check::<Vec<u8>>();
        check::<(u32, u32)>();
        check::<(u8, String)>();
        check::<(i64,)>();
        check::<(bool, Vec<u8>, u16)>();
        check::<(String, String)>();
        check::<(u64, i32, u8, bool)>();
        check::<Vec<u32>>();
        check::<Option<u32>>();
        check::<(u32, f64)>();
        check::<std::collections::BTreeMap<String, u32>>();
    }
}
