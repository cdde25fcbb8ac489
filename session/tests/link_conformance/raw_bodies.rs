//! The stream-only bodies: the peer is a raw byte stream that writes
//! whatever the test wants (forged lengths, truncated frames, garbage), and
//! the wire format is checked byte for byte.

use osmos_session::link::{Link, LinkError, LinkRx};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::harness::RawHarness;
use crate::helpers::{Rng, expect_frame, pattern, recv_vec, send};
use crate::{PROBE, within};

/// Frames on the wire are a 4-byte little-endian length, then the bytes.
pub async fn wire_format_is_le_length_prefixed<H: RawHarness>() {
    let (link, mut raw) = H::raw_pair(1024).await;
    let (mut tx, mut rx) = link.split();

    within("a send", send(&mut tx, b"abc")).await.expect("send");
    within("a send", send(&mut tx, b"")).await.expect("send");
    let mut wire = [0u8; 11];
    within("raw bytes", raw.read_exact(&mut wire))
        .await
        .expect("read");
    assert_eq!(&wire, b"\x03\0\0\0abc\0\0\0\0");

    let mut hand_made = Vec::new();
    for payload in [&b"hi"[..], b"", &[7u8; 300]] {
        hand_made.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        hand_made.extend_from_slice(payload);
    }
    within("a raw write", raw.write_all(&hand_made))
        .await
        .expect("write");
    expect_frame(&mut rx, b"hi").await;
    expect_frame(&mut rx, b"").await;
    expect_frame(&mut rx, &[7u8; 300]).await;
}

/// A length prefix above max_frame is a `stream.length-in-bounds` violation,
/// reported at once (the body is not awaited, nothing of that size is
/// allocated), and every later `recv` fails the same way.
pub async fn forged_length_is_a_violation<H: RawHarness>() {
    const MAX: usize = 1024;
    for forged in [MAX as u32 + 1, 1 << 20, u32::MAX] {
        let (link, mut raw) = H::raw_pair(MAX).await;
        let (_tx, mut rx) = link.split();
        // A valid frame first, then the forged prefix with no body after it.
        let mut wire = 2u32.to_le_bytes().to_vec();
        wire.extend_from_slice(b"ok");
        wire.extend_from_slice(&forged.to_le_bytes());
        within("a raw write", raw.write_all(&wire)).await.expect("write");
        expect_frame(&mut rx, b"ok").await;
        for attempt in 0..2 {
            match recv_vec(&mut rx).await {
                Err(LinkError::Violation { rule, detail }) => {
                    assert_eq!(rule, "stream.length-in-bounds");
                    assert!(
                        detail.contains(&forged.to_string()) && detail.contains(&MAX.to_string()),
                        "the violation does not name the numbers: {detail}"
                    );
                }
                Err(e) => panic!("forged length {forged} (attempt {attempt}) gave {e}, not a violation"),
                Ok(Some(frame)) => panic!("forged length {forged} gave a frame of {} bytes", frame.len()),
                Ok(None) => panic!("forged length {forged} gave the end of the link"),
            }
        }
        drop(raw);
    }
}

/// A frame cut off by the end of the stream (a prefix saying 100, then 10
/// bytes) fails with PeerGone saying how much arrived, after the earlier
/// frames; so does a cut-off length prefix.
pub async fn truncated_frame_is_reported<H: RawHarness>() {
    let (link, mut raw) = H::raw_pair(1024).await;
    let (_tx, mut rx) = link.split();
    let mut wire = 2u32.to_le_bytes().to_vec();
    wire.extend_from_slice(b"ok");
    wire.extend_from_slice(&100u32.to_le_bytes());
    wire.extend_from_slice(&[1; 10]);
    within("a raw write", raw.write_all(&wire)).await.expect("write");
    within("a raw shutdown", raw.shutdown()).await.expect("shutdown");
    expect_frame(&mut rx, b"ok").await;
    for _ in 0..2 {
        match recv_vec(&mut rx).await {
            Err(LinkError::PeerGone { detail }) => {
                assert!(
                    detail.contains("10 of its 100"),
                    "unclear truncation message: {detail}"
                )
            }
            other => panic!("a truncated frame gave {other:?}, not PeerGone"),
        }
    }

    let (link, mut raw) = H::raw_pair(1024).await;
    let (_tx, mut rx) = link.split();
    within("a raw write", raw.write_all(&[5, 0]))
        .await
        .expect("write");
    within("a raw shutdown", raw.shutdown()).await.expect("shutdown");
    match recv_vec(&mut rx).await {
        Err(LinkError::PeerGone { detail }) => {
            assert!(
                detail.contains("2 of its 4"),
                "unclear truncation message: {detail}"
            )
        }
        other => panic!("a truncated prefix gave {other:?}, not PeerGone"),
    }
}

/// A `recv` cancelled in the middle of a frame keeps what it read: the frame
/// arrives whole once the rest comes.
pub async fn recv_cancelled_mid_frame_resumes<H: RawHarness>() {
    let (link, mut raw) = H::raw_pair(4096).await;
    let (_tx, mut rx) = link.split();
    let payload = pattern(9, 1000);
    let mut wire = 1000u32.to_le_bytes().to_vec();
    wire.extend_from_slice(&payload);
    within("a raw write", raw.write_all(&wire[..2]))
        .await
        .expect("write");
    assert!(
        timeout(PROBE, rx.recv()).await.is_err(),
        "half a prefix made a frame"
    );
    within("a raw write", raw.write_all(&wire[2..504]))
        .await
        .expect("write");
    assert!(
        timeout(PROBE, rx.recv()).await.is_err(),
        "half a frame made a frame"
    );
    within("a raw write", raw.write_all(&wire[504..]))
        .await
        .expect("write");
    expect_frame(&mut rx, &payload).await;
}

/// Random bytes, and plausible frames with lying lengths, never panic the
/// receiver: it yields frames within max_frame and ends with `Ok(None)`, a
/// violation or PeerGone.
pub async fn garbage_never_panics<H: RawHarness>() {
    for seed in 1..=24u64 {
        let max = [0, 1, 16, 1024, 64 * 1024][seed as usize % 5];
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let mut wire = Vec::new();
        while wire.len() < 256 * 1024 {
            if seed % 2 == 0 {
                // Plausible: a length near the limit, followed by up to that
                // many bytes.
                let len = rng.upto(max + 16);
                wire.extend_from_slice(&(len as u32).to_le_bytes());
                let body = if rng.upto(8) == 0 { rng.upto(len) } else { len };
                wire.extend_from_slice(&pattern(rng.next(), body));
            } else {
                wire.extend_from_slice(&pattern(rng.next(), rng.upto(4096)));
            }
        }

        let (link, mut raw) = H::raw_pair(max).await;
        let (tx, mut rx) = link.split();
        let writer = tokio::spawn(async move {
            // The link may stop reading (and drop) mid-way: write errors are
            // expected then.
            let _ = raw.write_all(&wire).await;
            let _ = raw.shutdown().await;
            raw
        });
        let mut frames = 0usize;
        let end = loop {
            match within("a frame of garbage", rx.recv()).await {
                Ok(Some(frame)) => {
                    assert!(
                        frame.len() <= max,
                        "a frame of {} bytes beyond max {max}",
                        frame.len()
                    );
                    frames += 1;
                    assert!(
                        frames <= 256 * 1024 / 4 + 2,
                        "more frames than the garbage could hold"
                    );
                }
                other => break other.map(|_| ()),
            }
        };
        match end {
            Ok(()) | Err(LinkError::Violation { .. } | LinkError::PeerGone { .. }) => {}
            Err(e) => panic!("garbage (seed {seed}) ended with {e}"),
        }
        // Dropping the link unblocks a writer stuck on a full stream.
        drop((tx, rx));
        let _raw = within("the garbage writer", writer).await.expect("writer task");
    }
}
