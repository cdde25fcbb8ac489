//! Streaming over shm across two processes: 64 KiB items (GB/s) and
//! 1000-item streams of `u32` (call to last item), cell → host.
//!
//! ```text
//! cargo run --release -p osmos-session --example stream
//! ```
//!
//! The cell is this program re-executed with the segment at fd 3.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use osmos_session::link::shm::ShmLink;
use osmos_session::{SessionBuilder, Tx};
use osmos_shm::{Segment, SegmentConfig, Side};

/// The measured service.
#[osmos_macros::service]
pub trait Source {
    /// Sends `n` items of `size` bytes.
    async fn blobs(&self, n: u32, size: u32, out: Tx<Vec<u8>>) -> Result<(), String>;
    /// Sends `0..n`.
    async fn count(&self, n: u32, out: Tx<u32>) -> Result<(), String>;
}

struct Src;
impl Source for Src {
    async fn blobs(&self, n: u32, size: u32, out: Tx<Vec<u8>>) -> Result<(), String> {
        let item = vec![0x5a; size as usize];
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
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn cell() {
    runtime().block_on(async {
        // SAFETY: the parent placed the segment at fd 3 and its wake end at
        // fd 5 for us alone.
        let (fd, wake) = unsafe { (OwnedFd::from_raw_fd(3), OwnedFd::from_raw_fd(5)) };
        let seg = Segment::attach_with_wake(fd, wake).expect("attach");
        let conn = SessionBuilder::new()
            .serve(SourceDispatcher::new(Src))
            .accept(ShmLink::new(seg.endpoint().expect("endpoint")))
            .await
            .expect("cell handshake");
        conn.closed().await;
    });
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--cell") {
        cell();
        return;
    }
    runtime().block_on(async {
        let seg = Segment::create(&SegmentConfig::default(), 1).expect("a segment");
        let mut cmd = Command::new(std::env::current_exe().expect("this program"));
        cmd.arg("--cell").stdin(Stdio::null());
        seg.pass_to(&mut cmd, 3);
        seg.pass_wake_to(&mut cmd, 5);
        let mut child = cmd.spawn().expect("spawn the cell");
        let endpoint = seg.endpoint().expect("endpoint");
        let live = endpoint.liveness.clone();
        let watcher = std::thread::spawn(move || {
            let status = child.wait();
            live.mark_dead(Side::Cell);
            status
        });
        let conn = SessionBuilder::new()
            .initiate(ShmLink::new(endpoint))
            .await
            .expect("handshake with the cell");
        let client = SourceClient::new(conn.clone());

        const ITEMS: u32 = 4000;
        const SIZE: u32 = 64 << 10;
        for run in 0..4 {
            let (tx, mut rx) = conn.channel::<Vec<u8>>().expect("a channel");
            let c = client.clone();
            let start = Instant::now();
            let call = tokio::spawn(async move { c.blobs(ITEMS, SIZE, tx).await });
            let mut bytes = 0usize;
            while let Some(item) = rx.recv().await {
                bytes += item.expect("an item").len();
            }
            call.await.expect("the call task").expect("blobs");
            let dt = start.elapsed();
            assert_eq!(bytes, ITEMS as usize * SIZE as usize);
            if run > 0 {
                println!(
                    "{ITEMS} x 64 KiB: {:.2} GB/s",
                    bytes as f64 / dt.as_secs_f64() / 1e9
                );
            }
        }
        let mut times: Vec<Duration> = Vec::new();
        for _ in 0..300 {
            let (tx, mut rx) = conn.channel::<u32>().expect("a channel");
            let c = client.clone();
            let start = Instant::now();
            let call = tokio::spawn(async move { c.count(1000, tx).await });
            let mut n = 0u32;
            while let Some(item) = rx.recv().await {
                assert_eq!(item.expect("an item"), n);
                n += 1;
            }
            call.await.expect("the call task").expect("count");
            times.push(start.elapsed());
        }
        times.sort();
        println!(
            "1000 x u32: p50 {:.1?}, p99 {:.1?}",
            times[times.len() / 2],
            times[times.len() * 99 / 100]
        );
        conn.goodbye("measured").await;
        let _ = watcher.join();
    });
}
