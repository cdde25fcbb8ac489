//! Tests of how a large frame is split into a head and a tail held apart
//! (`codec::split_point`) and decoded in those two pieces
//! (`codec::decode_parts`), and of the decoder of items alone
//! (`codec::decode_item`) against `decode_parts`.

use super::codec::{decode, decode_item, decode_parts, split_point, to_vec};
use super::{Message, MetaEntry, MetaValue, Metadata, Outcome};

const MIN: usize = 2048;

fn call(metadata: Metadata, args: &[u8]) -> Vec<u8> {
    to_vec(&Message::Call {
        conn: 3,
        request: 77,
        method: 0xdead_beef,
        deadline_us: 5,
        metadata,
        channels: vec![9, 11],
        args,
    })
}

/// A reproducible stream of numbers from `seed` (a linear congruential
/// generator, its high bits), for tests that lie about a frame's bytes.
fn numbers(mut seed: u64) -> impl FnMut() -> usize {
    move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    }
}

/// Splits `frame` where [`split_point`] says, after peeking `peek` bytes,
/// and decodes the pieces; `None` when it keeps the frame whole.
fn split(frame: &[u8], peek: usize) -> Option<(usize, Message<'_>, Vec<u8>)> {
    let at = split_point(&frame[..peek.min(frame.len())], frame.len(), MIN)?;
    let m = decode_parts(&frame[..at], frame.len() - at).unwrap();
    Some((at, m, frame[at..].to_vec()))
}

#[test]
fn the_bytes_ending_a_payload_are_found_and_decode_apart() {
    let data = vec![7u8; 10_000];
    // A call's arguments that are one byte string, or end with one.
    let one = crate::payload::encode_value(&(data.clone(),)).unwrap();
    let two = crate::payload::encode_value(&(300u64, data.clone())).unwrap();
    for args in [&one, &two] {
        let frame = call(vec![], args);
        let (_, m, tail) = split(&frame, 256).expect("split");
        assert_eq!(tail, data);
        let Message::Call {
            args: head,
            request,
            channels,
            ..
        } = m
        else {
            panic!("not a call: {m:?}");
        };
        assert_eq!((request, channels), (77, vec![9, 11]));
        assert_eq!([head, &tail].concat(), *args, "head ++ tail is the encoding");
    }
    // A response's value or error, an item.
    for frame in [
        to_vec(&Message::Response {
            conn: 0,
            request: 4,
            metadata: vec![],
            channels: vec![],
            outcome: Outcome::Ok(&one),
        }),
        to_vec(&Message::Response {
            conn: 0,
            request: 4,
            metadata: vec![],
            channels: vec![],
            outcome: Outcome::UserError(&one),
        }),
        to_vec(&Message::Item {
            channel: 5,
            payload: &two,
        }),
    ] {
        let (at, m, tail) = split(&frame, 256).expect("split");
        assert_eq!(tail, data);
        // Decoding the pieces gives the message decoding the whole gives,
        // but for the bytes held apart.
        let whole = decode(&frame).unwrap();
        let cut = |m: Message<'_>| match m {
            Message::Response {
                outcome: Outcome::Ok(b),
                ..
            }
            | Message::Response {
                outcome: Outcome::UserError(b),
                ..
            }
            | Message::Item { payload: b, .. } => b.len(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(cut(whole) - cut(m), frame.len() - at);
    }
}

#[test]
fn frames_without_a_large_trailing_byte_string_stay_whole() {
    let data = vec![7u8; 10_000];
    let enc = crate::payload::encode_value(&(data.clone(),)).unwrap();
    // Too small a tail, a payload that is not a byte string, other kinds.
    let small = crate::payload::encode_value(&(vec![1u8; MIN - 1],)).unwrap();
    let numbers = crate::payload::encode_value(&vec![u64::MAX; 2000]).unwrap();
    let after = crate::payload::encode_value(&(data.clone(), 1u8)).unwrap();
    for frame in [
        call(vec![], &small),
        call(vec![], &numbers),
        call(vec![], &after),
        to_vec(&Message::Goodbye {
            reason: "x".repeat(10_000),
        }),
        to_vec(&Message::Response {
            conn: 0,
            request: 4,
            metadata: vec![],
            channels: vec![],
            outcome: Outcome::Internal("y".repeat(10_000)),
        }),
    ] {
        assert!(
            split(&frame, 256).is_none(),
            "{:?}",
            decode(&frame).map(|m| m.kind())
        );
    }
    // A header longer than the peeked bytes (large metadata): whole.
    let metadata = vec![MetaEntry {
        key: "schema".into(),
        value: MetaValue::Str("s".repeat(300)),
    }];
    let frame = call(metadata.clone(), &enc);
    assert!(split(&frame, 256).is_none());
    assert!(split(&frame, 1024).is_some(), "found with a longer peek");
    // A peek that ends inside the payload's first bytes still finds it.
    let frame = call(vec![], &enc);
    let (at, _, _) = split(&frame, 4096).unwrap();
    assert_eq!(split(&frame, at).map(|s| s.0), Some(at));
    assert!(split(&frame, at - 1).is_none());
}

#[test]
fn a_split_of_any_frame_decodes_as_the_whole_frame_does() {
    let data = vec![7u8; 5000];
    let one = crate::payload::encode_value(&(data.clone(),)).unwrap();
    let frames = [
        call(vec![], &one),
        to_vec(&Message::Item {
            channel: 5,
            payload: &one,
        }),
        to_vec(&Message::Response {
            conn: 1,
            request: 2,
            metadata: vec![],
            channels: vec![3],
            outcome: Outcome::Ok(&one),
        }),
    ];
    let mut next = numbers(0x9e37_79b9_7f4a_7c15u64);
    let (mut both_ok, mut both_err) = (0, 0);
    for round in 0..20_000 {
        let mut frame = frames[round % frames.len()].clone();
        // Lie about the header and the lengths: change a few of the
        // first bytes, sometimes cut or grow the frame.
        for _ in 0..1 + next() % 3 {
            let i = next() % 24;
            frame[i] = next() as u8;
        }
        match next() % 8 {
            0 => frame.truncate(frame.len() - 1 - next() % 100),
            1 => frame.extend(std::iter::repeat_n(1, 1 + next() % 100)),
            _ => {}
        }
        let peek = [8, 32, 256][next() % 3];
        let Some(at) = split_point(&frame[..peek.min(frame.len())], frame.len(), MIN) else {
            continue;
        };
        let parts = decode_parts(&frame[..at], frame.len() - at);
        match (decode(&frame), parts) {
            (Ok(whole), Ok(cut)) => {
                let cut_len = frame.len() - at;
                assert_eq!(whole.kind(), cut.kind());
                let last = |m: &Message<'_>| match m {
                    Message::Call { args: b, .. }
                    | Message::Item { payload: b, .. }
                    | Message::Response {
                        outcome: Outcome::Ok(b),
                        ..
                    }
                    | Message::Response {
                        outcome: Outcome::UserError(b),
                        ..
                    } => b.len(),
                    other => panic!("split a {other:?}"),
                };
                assert_eq!(last(&whole), last(&cut) + cut_len, "round {round}");
                both_ok += 1;
            }
            (Err(_), Err(_)) => both_err += 1,
            (w, c) => panic!("round {round}: whole {w:?}, parts {c:?}"),
        }
    }
    // A split is only found where the header reads up to a payload that
    // runs to the end, which then decodes both ways.
    assert!(
        both_ok > 1000 && both_err == 0,
        "{both_ok} split and decoded, {both_err} refused"
    );
}

#[test]
fn a_tail_that_no_payload_ends_with_is_refused() {
    let data = vec![7u8; 10_000];
    let enc = crate::payload::encode_value(&(data,)).unwrap();
    let frame = call(vec![], &enc);
    let at = split_point(&frame[..256], frame.len(), MIN).unwrap();
    // Anywhere inside the arguments is a consistent split (the value's
    // decoder judges whether it can use it)...
    for tail in [frame.len() - at - 1, frame.len() - at + 1, enc.len()] {
        let head = &frame[..frame.len() - tail];
        let Message::Call { args, .. } = decode_parts(head, tail).unwrap() else {
            panic!("not a call");
        };
        assert_eq!([args, &frame[head.len()..]].concat(), enc, "tail {tail}");
    }
    // ...but not one reaching into the message's header.
    for tail in [enc.len() + 1, frame.len() - 3] {
        let head = &frame[..frame.len() - tail];
        assert!(decode_parts(head, tail).is_err(), "tail {tail}");
    }
    // A message whose last field is not a byte payload.
    let ping = to_vec(&Message::Ping { nonce: 1 });
    let e = decode_parts(&ping, 10).unwrap_err().to_string();
    assert!(e.contains("held apart"), "{e}");
}

#[test]
fn an_item_decoded_alone_is_what_the_whole_decoder_gives() {
    let big = crate::payload::encode_value(&(vec![7u8; 5000],)).unwrap();
    let frames = [
        to_vec(&Message::Item {
            channel: 5,
            payload: &[1, 2, 3],
        }),
        to_vec(&Message::Item {
            channel: 1 << 40,
            payload: &[],
        }),
        to_vec(&Message::Item {
            channel: 7,
            payload: &big,
        }),
        to_vec(&Message::Close { channel: 13 }),
        to_vec(&Message::GrantCredit {
            channel: 13,
            bytes: 13,
        }),
        call(vec![], &[13, 13]),
    ];
    let mut next = numbers(0x2545_f491_4f6c_dd1du64);
    let (mut items, mut refused, mut others) = (0, 0, 0);
    for round in 0..20_000 {
        let mut frame = frames[round % frames.len()].clone();
        if round % 4 != 0 {
            // Lie about the kind, the channel and the lengths.
            for _ in 0..1 + next() % 3 {
                let i = next() % frame.len().min(12);
                frame[i] = if next().is_multiple_of(2) {
                    13
                } else {
                    next() as u8
                };
            }
            match next() % 6 {
                0 => frame.truncate(frame.len() - next() % frame.len().min(8)),
                1 => frame.extend(std::iter::repeat_n(1, 1 + next() % 8)),
                _ => {}
            }
        }
        // Sometimes with an end held apart, anywhere.
        let tail = if next().is_multiple_of(3) {
            next() % (frame.len() + 1)
        } else {
            0
        };
        let head = &frame[..frame.len() - tail];
        match (decode_item(head, tail), decode_parts(head, tail)) {
            (
                Some(Ok((channel, payload))),
                Ok(Message::Item {
                    channel: c,
                    payload: p,
                }),
            ) => {
                assert_eq!((channel, payload), (c, p), "round {round}");
                items += 1;
            }
            (Some(Err(alone)), Err(whole)) => {
                assert_eq!(alone.to_string(), whole.to_string(), "round {round}");
                refused += 1;
            }
            (None, Ok(m)) if !matches!(m, Message::Item { .. }) => others += 1,
            (None, Err(_)) => others += 1,
            (alone, whole) => {
                panic!("round {round}: {frame:?} (tail {tail}) alone {alone:?}, whole {whole:?}")
            }
        }
    }
    assert!(
        items > 1000 && refused > 1000 && others > 1000,
        "{items} items, {refused} refused, {others} of other kinds"
    );
}
