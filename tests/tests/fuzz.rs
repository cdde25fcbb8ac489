//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! fuzz targets' bodies (`osmos_tests::fuzz`) on stable, deterministically:
//! every seed, and every input that once found a bug, stays a test.
//!
//! The fuzzer itself runs on nightly, from `fuzz/` (see the README):
//! `cargo +nightly fuzz run wire_decode`. `fuzz_write_seed_corpus` (ignored)
//! regenerates the seeds from real messages.

use std::path::{Path, PathBuf};

use osmos_session::wire::{Message, MetaEntry, MetaValue, Outcome, PROTOCOL_VERSION, Settings};
use osmos_tests::fuzz::TARGETS;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn fuzz_corpus_replays_deterministically() {
    for (target, body) in TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(files.len() >= 5, "{target}: only {} corpus files", files.len());
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let r = std::panic::catch_unwind(|| body(&data));
            assert!(r.is_ok(), "{target} fails on {}", f.display());
        }
        eprintln!("fuzz: {target}: {} inputs replayed", files.len());
    }
}

fn all_messages() -> Vec<(&'static str, Message<'static>)> {
    let meta = vec![
        MetaEntry {
            key: "trace".into(),
            value: MetaValue::Str("abc".into()),
        },
        MetaEntry {
            key: "n".into(),
            value: MetaValue::U64(u64::MAX),
        },
        MetaEntry {
            key: "b".into(),
            value: MetaValue::Bytes(vec![0, 255]),
        },
    ];
    let settings = Settings::default();
    vec![
        (
            "hello",
            Message::Hello {
                version: PROTOCOL_VERSION,
                settings: settings.clone(),
            },
        ),
        (
            "hello-yourself",
            Message::HelloYourself {
                version: PROTOCOL_VERSION,
                settings,
            },
        ),
        (
            "protocol-error",
            Message::ProtocolError {
                rule: "credit.no-overrun".into(),
                detail: "x".into(),
            },
        ),
        (
            "goodbye",
            Message::Goodbye {
                reason: "done".into(),
            },
        ),
        ("ping", Message::Ping { nonce: 300 }),
        ("pong", Message::Pong { nonce: u64::MAX }),
        (
            "connection-open",
            Message::ConnectionOpen {
                conn: 2,
                metadata: meta.clone(),
            },
        ),
        (
            "connection-accept",
            Message::ConnectionAccept {
                conn: 1,
                metadata: Vec::new(),
            },
        ),
        (
            "connection-reject",
            Message::ConnectionReject {
                conn: 1,
                reason: "no".into(),
            },
        ),
        (
            "connection-close",
            Message::ConnectionClose {
                conn: 2,
                reason: "bye".into(),
            },
        ),
        (
            "call",
            Message::Call {
                conn: 0,
                request: 2,
                method: osmos_session::method_id("HostDirectory", "lookup"),
                deadline_us: 0,
                metadata: meta.clone(),
                channels: vec![2, 4],
                args: b"\x03key",
            },
        ),
        ("response-ok", response(Outcome::Ok(&[3]))),
        ("response-user-error", response(Outcome::UserError(b"\x02no"))),
        ("response-unknown-method", response(Outcome::UnknownMethod)),
        (
            "response-invalid-payload",
            response(Outcome::InvalidPayload("bad".into())),
        ),
        ("response-cancelled", response(Outcome::Cancelled)),
        ("response-internal", response(Outcome::Internal("panic".into()))),
        ("cancel", Message::Cancel { conn: 0, request: 2 }),
        (
            "item",
            Message::Item {
                channel: 1,
                payload: &[7, 0, 1],
            },
        ),
        ("close", Message::Close { channel: 1 }),
        (
            "reset",
            Message::Reset {
                channel: 1,
                reason: "gone".into(),
            },
        ),
        (
            "grant-credit",
            Message::GrantCredit {
                channel: 2,
                bytes: 65536,
            },
        ),
        (
            "batch",
            Message::Batch {
                // Two items on channel 1: `[13, 1, 1, 7]` and `[13, 1, 0]`.
                messages: &[4, 13, 1, 1, 7, 3, 13, 1, 0],
            },
        ),
    ]
}

fn response(outcome: Outcome<'static>) -> Message<'static> {
    Message::Response {
        conn: 0,
        request: 1,
        metadata: Vec::new(),
        channels: Vec::new(),
        outcome,
    }
}

/// Length-prefixed frames for `stream_framing` (after its two control bytes).
fn stream(seed: u8, size: u8, frames: &[&[u8]], tail: &[u8]) -> Vec<u8> {
    let mut v = vec![seed, size];
    for f in frames {
        v.extend((f.len() as u32).to_le_bytes());
        v.extend(*f);
    }
    v.extend(tail);
    v
}

/// Frames for `session_frames`: a 2-byte length before each.
fn session(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for f in frames {
        v.extend((f.len() as u16).to_le_bytes());
        v.extend(f);
    }
    v
}

#[test]
#[ignore = "writes the seed corpus into fuzz/corpus"]
fn fuzz_write_seed_corpus() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let messages = all_messages();
    for (name, m) in &messages {
        write("wire_decode", name, &m.to_vec());
    }
    write("wire_decode", "empty", b"");
    write("wire_decode", "unknown-variant", &[0xff, 0x01]);
    let call = messages.iter().find(|(n, _)| *n == "call").unwrap().1.to_vec();
    write("wire_decode", "call-truncated", &call[..call.len() / 2]);
    write(
        "wire_decode",
        "goodbye-long-prefix",
        &[3, 0xff, 0xff, 0xff, 0xff, 0x0f, b'x'],
    );

    let ping = Message::Ping { nonce: 1 }.to_vec();
    let goodbye = Message::Goodbye { reason: "x".into() }.to_vec();
    write(
        "stream_framing",
        "frames",
        &stream(1, 40, &[&ping, &goodbye, &call], b""),
    );
    write(
        "stream_framing",
        "empty-frames",
        &stream(2, 1, &[b"", b"", b""], b""),
    );
    write(
        "stream_framing",
        "truncated-prefix",
        &stream(3, 10, &[&ping], &[5, 0]),
    );
    write(
        "stream_framing",
        "truncated-frame",
        &stream(4, 10, &[&ping], &[9, 0, 0, 0, 1, 2]),
    );
    write(
        "stream_framing",
        "too-long",
        &stream(5, 2, &[&ping], &[0xff, 0xff, 0, 0]),
    );
    write("stream_framing", "nothing", &[6, 6]);

    let pick = |name: &str| messages.iter().find(|(n, _)| *n == name).unwrap().1.to_vec();
    let seeds: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("pings", vec![ping.clone(), Message::Ping { nonce: 2 }.to_vec()]),
        ("answer-the-call", vec![pick("response-ok")]),
        ("answer-twice", vec![pick("response-ok"), pick("response-ok")]),
        (
            "stream-items",
            vec![
                Message::Item {
                    channel: 1,
                    payload: &[0],
                }
                .to_vec(),
                pick("close"),
            ],
        ),
        ("call-the-host", vec![pick("call")]),
        ("call-and-cancel", vec![pick("call"), pick("cancel")]),
        (
            "open-a-connection",
            vec![pick("connection-open"), pick("connection-close")],
        ),
        ("grant-credit", vec![pick("grant-credit")]),
        ("stream-batch", vec![pick("batch"), pick("close")]),
        ("goodbye", vec![goodbye.clone()]),
        ("hello-again", vec![pick("hello-yourself")]),
        ("garbage", vec![vec![0xff; 9]]),
        ("everything", messages.iter().map(|(_, m)| m.to_vec()).collect()),
    ];
    for (name, frames) in seeds {
        write("session_frames", name, &session(&frames));
    }
}
