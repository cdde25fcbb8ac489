//! What the bodies share: deterministic payloads, numbered frames, sending
//! and expecting frames, and a tally of what went through one direction.

use osmos_session::link::{LinkError, LinkRx, LinkTx, SendPermit};

use crate::within;

/// Fills `buf` with bytes determined by `seed` (xorshift64).
pub fn fill(seed: u64, buf: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// The bytes [`fill`] makes for `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    fill(seed, &mut buf);
    buf
}

/// A small deterministic random number generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..=max`.
    pub fn upto(&mut self, max: usize) -> usize {
        (self.next() % (max as u64 + 1)) as usize
    }
}

/// Reserves, fills and commits one frame.
pub async fn send<T: LinkTx>(tx: &mut T, bytes: &[u8]) -> Result<(), LinkError> {
    let mut permit = tx.reserve(bytes.len()).await?;
    permit.buf().copy_from_slice(bytes);
    permit.commit().await
}

/// Sends frame number `seq`: `len` bytes (at least 8), the number first, then
/// `pattern(seq)`.
pub async fn send_numbered<T: LinkTx>(tx: &mut T, seq: u64, len: usize) -> Result<(), LinkError> {
    let mut permit = tx.reserve(len).await?;
    let buf = permit.buf();
    fill(seq, &mut buf[8..]);
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    permit.commit().await
}

/// Checks a frame made by [`send_numbered`] and returns its number.
pub fn check_numbered(frame: &[u8], len: usize) -> u64 {
    assert_eq!(frame.len(), len, "a numbered frame changed length in transit");
    let seq = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
    assert!(
        frame[8..] == pattern(seq, len - 8)[..],
        "frame {seq} arrived corrupted"
    );
    seq
}

/// Receives one frame as an owned vector, failing the test on a timeout.
pub async fn recv_vec<R: LinkRx>(rx: &mut R) -> Result<Option<Vec<u8>>, LinkError> {
    Ok(within("a frame", rx.recv()).await?.map(|frame| frame.to_vec()))
}

/// Receives one frame and expects it to be `expected`.
pub async fn expect_frame<R: LinkRx>(rx: &mut R, expected: &[u8]) {
    match recv_vec(rx).await {
        Ok(Some(frame)) => assert!(
            frame == expected,
            "expected a frame of {} bytes, got {} bytes {:?}…",
            expected.len(),
            frame.len(),
            &frame[..frame.len().min(16)]
        ),
        Ok(None) => panic!(
            "expected a frame of {} bytes, got the end of the link",
            expected.len()
        ),
        Err(e) => panic!("expected a frame of {} bytes, got an error: {e}", expected.len()),
    }
}

/// Receives and expects the end of the link.
pub async fn expect_end<R: LinkRx>(rx: &mut R) {
    match recv_vec(rx).await {
        Ok(None) => {}
        Ok(Some(frame)) => panic!(
            "expected the end of the link, got a frame of {} bytes",
            frame.len()
        ),
        Err(e) => panic!("expected the end of the link, got an error: {e}"),
    }
}

/// What went through one direction: frames, bytes, and an order-sensitive
/// checksum of every frame's length and bytes.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct Tally {
    pub frames: u64,
    pub bytes: u64,
    pub checksum: u64,
}

impl Tally {
    pub fn add(&mut self, frame: &[u8]) {
        const PRIME: u64 = 0x0000_0100_0000_01B3;
        let step = |h: u64, word: u64| (h ^ word).wrapping_mul(PRIME).rotate_left(29);
        let mut h = step(self.checksum, frame.len() as u64);
        let mut words = frame.chunks_exact(8);
        for word in &mut words {
            h = step(h, u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        for &byte in words.remainder() {
            h = step(h, u64::from(byte));
        }
        self.checksum = h;
        self.frames += 1;
        self.bytes += frame.len() as u64;
    }
}
