//! What the stable-conduit soak (`tests/stable_soak.rs`) runs: the [`Soak`]
//! service that `stable-peer` (`src/bin/stable-peer.rs`) serves, its
//! implementation ([`SoakService`]), and the values both sides agree on.
//!
//! Every call, stream item and tunnel byte is checkable by the other side:
//! a call's answer is [`answer`] of its argument; stream items count up from
//! a base the caller picks; tunnel bytes are echoed. The service also counts
//! what it received, and which call arguments it saw twice ([`Soak::tally`]),
//! so the client can tell that every call arrived exactly once.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use osmos_session::{Rx, Tunnel, TunnelEnd, Tx};
use tokio::io::AsyncWriteExt;

/// What `stable-peer` serves.
#[osmos_macros::service]
pub trait Soak {
    /// Returns [`answer`]`(x)`; records `x`.
    async fn call(&self, x: u64) -> Result<u64, String>;
    /// Sends `base`, `base + 1`, … (`n` items) on `out`, then closes it; returns `n`.
    async fn download(&self, base: u64, n: u32, out: Tx<u64>) -> Result<u32, String>;
    /// Reads `input` to its end, checking that the items count up by one
    /// from the first; returns how many arrived and the wrapping sum of
    /// [`answer`] of each.
    async fn upload(&self, input: Rx<u64>) -> Result<(u64, u64), String>;
    /// Echoes a tunnel's bytes until the caller shuts its side; returns the count.
    async fn echo(&self, end: TunnelEnd) -> Result<u64, String>;
    /// Calls answered, and calls whose argument had been seen before.
    async fn tally(&self) -> Result<(u64, u64), String>;
}

/// The answer to `call(x)`: a bijective mix of `x`, so a wrong or swapped
/// answer shows.
pub fn answer(x: u64) -> u64 {
    let mut z = x ^ 0x5EED_5EED_5EED_5EED;
    z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    z ^ (z >> 33)
}

/// The [`Soak`] service: answers, and counts what it received.
#[derive(Debug, Default)]
pub struct SoakService {
    seen: Mutex<HashSet<u64>>,
    calls: AtomicU64,
    duplicates: AtomicU64,
}

impl SoakService {
    /// A new service, shared by the sessions it serves.
    pub fn new() -> Arc<SoakService> {
        Arc::default()
    }
}

impl Soak for Arc<SoakService> {
    async fn call(&self, x: u64) -> Result<u64, String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(x) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        Ok(answer(x))
    }

    async fn download(&self, base: u64, n: u32, out: Tx<u64>) -> Result<u32, String> {
        for i in 0..u64::from(n) {
            out.send(&(base + i))
                .await
                .map_err(|e| format!("sending item {i} of {n}: {e}"))?;
        }
        out.close().await.map_err(|e| e.to_string())?;
        Ok(n)
    }

    async fn upload(&self, mut input: Rx<u64>) -> Result<(u64, u64), String> {
        let (mut count, mut sum, mut first) = (0u64, 0u64, None);
        while let Some(v) = input.recv().await {
            let v = v.map_err(|e| format!("receiving item {count}: {e}"))?;
            let base = *first.get_or_insert(v);
            if v != base + count {
                return Err(format!(
                    "item {count} of a stream starting at {base} arrived as {v}"
                ));
            }
            count += 1;
            sum = sum.wrapping_add(answer(v));
        }
        Ok((count, sum))
    }

    async fn echo(&self, end: TunnelEnd) -> Result<u64, String> {
        let (mut r, mut w) = tokio::io::split(Tunnel::from_end(end));
        let n = tokio::io::copy(&mut r, &mut w)
            .await
            .map_err(|e| format!("echoing the tunnel: {e}"))?;
        w.shutdown().await.map_err(|e| e.to_string())?;
        Ok(n)
    }

    async fn tally(&self) -> Result<(u64, u64), String> {
        Ok((
            self.calls.load(Ordering::Relaxed),
            self.duplicates.load(Ordering::Relaxed),
        ))
    }
}
