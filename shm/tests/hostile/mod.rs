//! What the hostile-input tests share: a segment whose cell side the test
//! overwrites, the lies it tells there, honest traffic both ways, and the
//! host's reading paths, driven and tallied.
//!
//! The tests (`hostile_overwrites.rs`, `hostile_concurrent.rs` and
//! `hostile_offsets.rs`) play a cell that overwrites what it can write in its
//! segment with seeded random bytes and plausible lies, while the host, which
//! trusts nothing a cell writes, drives every reading path it has.
//!
//! The requirement they check: the reading side only ever returns errors. No
//! panic (each iteration runs under `catch_unwind`; the library's bounds
//! checks panic on any out-of-bounds access, so an out-of-bounds access also
//! shows up as a panic), and no hang (the work runs on a worker thread that
//! the test thread [`watch`]es, failing with the seed after [`STALL_LIMIT`]
//! without progress).
//!
//! The offsets of the words inside the control blocks are not public; the
//! constants below mirror `RingCtrl`, `PoolCtrl`, `CreditEntry` and
//! `LivenessWords`, and `hostile_scribbler_offsets_match_the_library`
//! (`hostile_offsets.rs`) checks each of them against the library's
//! behaviour, so a layout change cannot quietly turn the scribbler into a
//! no-op.
//!
//! Each test target compiles this module on its own and uses part of it.
#![allow(dead_code)]

pub mod driver;
pub mod forge;
pub mod mem;
pub mod pair;
pub mod scribble;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use osmos_shm::{SegmentConfig, SlotClass};

pub type TestResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub const DEFAULT_SEED: u64 = 0x6f73_6d6f_735f_6873;
/// How long the worker may go without progress before the test calls it a hang.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Credit every channel starts with. Small, so that a forged burst of frames
/// on one channel overruns it.
pub const INITIAL_CREDIT: u32 = 1024;
/// Channels the host sends on (the cell grants); the cell sends on 4..8.
pub const HOST_TX_CHANNELS: u32 = 4;
pub const CHANNELS: u32 = 8;

pub fn config() -> SegmentConfig {
    SegmentConfig {
        ring_bytes: 4096,
        max_frame: 256,
        slot_classes: vec![
            SlotClass { size: 1024, count: 4 },
            SlotClass { size: 8192, count: 2 },
        ],
        max_channels: CHANNELS,
        initial_credit: INITIAL_CREDIT,
    }
}

// Word offsets inside the control blocks (each side's words on their own
// 128-byte line), mirroring the library's `#[repr(C)]` structs.

/// `RingCtrl::head`: the consumer's position.
pub const RING_HEAD: usize = 0;
/// `RingCtrl::tail`: the producer's position.
pub const RING_TAIL: usize = 128;
/// `RingCtrl::readable.seq`: rung by the producer.
pub const RING_READABLE_SEQ: usize = 256;
pub const RING_CTRL_BYTES: usize = 768;
/// `PoolCtrl::rel_tail`: release queue write position (the receiver's).
pub const POOL_REL_TAIL: usize = 0;
/// `PoolCtrl::rel_head`: release queue read position (the owner's).
pub const POOL_REL_HEAD: usize = 128;
/// `CreditEntry`: the receiver's line, then the sender's.
pub const CREDIT_GRANTED: usize = 0;
pub const CREDIT_RECEIVER_STATE: usize = 4;
pub const CREDIT_SENT: usize = 128;
pub const CREDIT_SENDER_STATE: usize = 132;
pub const CREDIT_ENTRY_BYTES: usize = 256;
/// `LivenessWords`: the host's line, then the cell's; in each, state, epoch, cpu.
pub const LIVE_HOST: usize = 0;
pub const LIVE_CELL: usize = 128;
pub const LIVE_STATE: usize = 0;
pub const LIVE_EPOCH: usize = 4;
pub const LIVE_CPU: usize = 8;
pub const LIVENESS_BYTES: usize = 256;
/// Frame kinds in the high half of a frame header.
pub const KIND_INLINE: u32 = 1;
pub const KIND_SLOT: u32 = 2;
pub const KIND_PAD: u32 = 3;
/// `Rule::CreditGrantMonotonic`'s window.
pub const MAX_WINDOW: u32 = 1 << 31;

pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={v}: {e}"))
        }
        Err(_) => default,
    }
}

/// Waits for the worker's result, failing if `progress` stops moving for
/// [`STALL_LIMIT`] (a hang) or the worker dies without answering.
pub fn watch<T>(rx: &mpsc::Receiver<T>, progress: &AtomicU64, what: impl Fn(u64) -> String) -> T {
    let mut last = progress.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(v) => return v,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = progress.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    since = Instant::now();
                } else if since.elapsed() >= STALL_LIMIT {
                    panic!("hang: no progress for {STALL_LIMIT:?} at {}", what(now));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!(
                    "the worker died without reporting, at {}",
                    what(progress.load(Ordering::Relaxed))
                )
            }
        }
    }
}
