//! The service every bench cell (and every in-process server) serves.

use std::time::Duration;

use osmos_session::Tx;

/// What the measured cells serve.
#[osmos_macros::service]
pub trait Bench {
    /// Adds two numbers (wrapping).
    async fn add(&self, a: u32, b: u32) -> Result<u32, String>;
    /// Echoes bytes.
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, String>;
    /// Streams `n` items of `size` bytes into `out`, then closes it.
    async fn stream(&self, n: u32, size: u32, out: Tx<Vec<u8>>) -> Result<(), String>;
    /// Sends `0..n` into `out`, then closes it.
    async fn count(&self, n: u32, out: Tx<u32>) -> Result<(), String>;
    /// The cell's pid as the cell sees it.
    async fn pid(&self) -> Result<u32, String>;
    /// Replies `ms` milliseconds later: a call that stays in flight.
    async fn hang(&self, ms: u32) -> Result<u32, String>;
}

/// The implementation of [`Bench`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BenchImpl;

impl Bench for BenchImpl {
    async fn add(&self, a: u32, b: u32) -> Result<u32, String> {
        Ok(a.wrapping_add(b))
    }
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(data)
    }
    async fn stream(&self, n: u32, size: u32, out: Tx<Vec<u8>>) -> Result<(), String> {
        let item = vec![0x5au8; size as usize];
        for _ in 0..n {
            out.send(&item).await.map_err(|e| e.to_string())?;
        }
        out.close().await.map_err(|e| e.to_string())
    }
    async fn count(&self, n: u32, out: Tx<u32>) -> Result<(), String> {
        for i in 0..n {
            out.send(&i).await.map_err(|e| e.to_string())?;
        }
        out.close().await.map_err(|e| e.to_string())
    }
    async fn pid(&self) -> Result<u32, String> {
        Ok(std::process::id())
    }
    async fn hang(&self, ms: u32) -> Result<u32, String> {
        tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
        Ok(ms)
    }
}
