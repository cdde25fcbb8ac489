//! The session over the shm link across a real process boundary: the test
//! binary re-executes itself as the cell, which attaches to the inherited
//! segment and serves a service; the host calls it, streams both ways, and
//! sees a killed cell fail its calls promptly.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use osmos_session::link::shm::ShmLink;
use osmos_session::{CallError, Rx, SessionBuilder, SessionError, Tx};
use osmos_shm::{Segment, SegmentConfig, Side};

const ROLE: &str = "OSMOS_SESSION_TEST_CELL";
const BOUND: Duration = Duration::from_secs(30);

/// What the test cell serves.
#[osmos_macros::service]
pub trait Cell {
    /// Adds.
    async fn add(&self, a: u32, b: u32) -> Result<u32, String>;
    /// Echoes.
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, String>;
    /// Sends `0..n` on `out`.
    async fn count(&self, n: u32, out: Tx<u32>) -> Result<(), String>;
    /// Sums what arrives on `input`.
    async fn sum(&self, input: Rx<u64>) -> Result<u64, String>;
    /// Never returns.
    async fn hang(&self) -> Result<(), String>;
    /// The cell's process id.
    async fn pid(&self) -> Result<u32, String>;
}

struct TheCell;
impl Cell for TheCell {
    async fn add(&self, a: u32, b: u32) -> Result<u32, String> {
        Ok(a.wrapping_add(b))
    }
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(data)
    }
    async fn count(&self, n: u32, out: Tx<u32>) -> Result<(), String> {
        for i in 0..n {
            out.send(&i).await.map_err(|e| e.to_string())?;
        }
        out.close().await.map_err(|e| e.to_string())
    }
    async fn sum(&self, mut input: Rx<u64>) -> Result<u64, String> {
        let mut t = 0;
        while let Some(v) = input.recv().await {
            t += v.map_err(|e| e.to_string())?;
        }
        Ok(t)
    }
    async fn hang(&self) -> Result<(), String> {
        std::future::pending().await
    }
    async fn pid(&self) -> Result<u32, String> {
        Ok(std::process::id())
    }
}

/// The cell's main: serve until the host ends the session, then exit.
async fn run_cell() -> ! {
    // SAFETY: the parent placed the segment at fd 3 and the cell's wake end
    // at fd 5 for us alone.
    let (fd, wake) = unsafe { (OwnedFd::from_raw_fd(3), OwnedFd::from_raw_fd(5)) };
    let seg = Segment::attach_with_wake(fd, wake).expect("cell: attach");
    let link = ShmLink::new(seg.endpoint().expect("cell: endpoint"));
    let conn = SessionBuilder::new()
        .serve(CellDispatcher::new(TheCell))
        .accept(link)
        .await
        .expect("cell: handshake");
    let why = conn.closed().await;
    eprintln!("cell: session ended: {why}");
    std::process::exit(0)
}

fn spawn_cell(test: &str, seg: &Segment) -> Child {
    // The test's full name within this binary: its module path without the
    // crate's name.
    let test = match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::{test}"),
        None => test.to_string(),
    };
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, "1")
        .stdin(Stdio::null());
    seg.pass_to(&mut cmd, osmos_session::control::SEGMENT_FD);
    seg.pass_wake_to(&mut cmd, osmos_session::control::WAKE_FD);
    cmd.spawn().expect("spawn the cell")
}

/// Host side: create a segment, spawn the cell, connect. A watcher thread
/// marks the cell dead when it exits, so no wait outlives it.
async fn host(test: &str) -> (CellClient, std::thread::JoinHandle<std::process::ExitStatus>, u32) {
    let seg = Segment::create(&SegmentConfig::default(), 1).unwrap();
    let mut child = spawn_cell(test, &seg);
    let pid = child.id();
    let endpoint = seg.endpoint().unwrap();
    let live = endpoint.liveness.clone();
    let watcher = std::thread::spawn(move || {
        let status = child.wait().expect("wait for the cell");
        live.mark_dead(Side::Cell);
        status
    });
    let conn = tokio::time::timeout(BOUND, SessionBuilder::new().initiate(ShmLink::new(endpoint)))
        .await
        .expect("handshake in time")
        .expect("handshake");
    (CellClient::new(conn), watcher, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm_session_across_processes_calls_and_streams() {
    const NAME: &str = "shm_session_across_processes_calls_and_streams";
    if std::env::var_os(ROLE).is_some() {
        run_cell().await;
    }
    let (cell, watcher, pid) = host(NAME).await;

    assert_eq!(
        tokio::time::timeout(BOUND, cell.pid()).await.unwrap().unwrap(),
        pid,
        "the cell is another process"
    );
    for i in 0..1000u32 {
        assert_eq!(cell.add(i, 1).await.unwrap(), i + 1);
    }
    let big: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i * 7) as u8).collect();
    assert_eq!(
        tokio::time::timeout(BOUND, cell.echo(big.clone()))
            .await
            .unwrap()
            .unwrap(),
        big,
        "1 MiB echo through slots"
    );
    let (tx, mut rx) = cell.connection().channel::<u32>().unwrap();
    let counting = tokio::spawn({
        let cell = cell.clone();
        async move { cell.count(20_000, tx).await }
    });
    let mut n = 0;
    while let Some(v) = tokio::time::timeout(BOUND, rx.recv()).await.unwrap() {
        assert_eq!(v.unwrap(), n);
        n += 1;
    }
    assert_eq!(n, 20_000);
    tokio::time::timeout(BOUND, counting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (tx, rx) = cell.connection().channel::<u64>().unwrap();
    let summing = tokio::spawn({
        let cell = cell.clone();
        async move { cell.sum(rx).await }
    });
    for i in 1..=20_000u64 {
        tx.send(&i).await.unwrap();
    }
    tx.close().await.unwrap();
    assert_eq!(
        tokio::time::timeout(BOUND, summing)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        200_010_000
    );
    cell.connection().goodbye("test done").await;
    let status = tokio::task::spawn_blocking(move || watcher.join().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "the cell exits cleanly after goodbye: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shm_session_killed_cell_fails_calls_promptly() {
    const NAME: &str = "shm_session_killed_cell_fails_calls_promptly";
    if std::env::var_os(ROLE).is_some() {
        run_cell().await;
    }
    let (cell, watcher, pid) = host(NAME).await;
    assert_eq!(cell.add(1, 2).await.unwrap(), 3);
    let hanging = tokio::spawn({
        let cell = cell.clone();
        async move { cell.hang().await }
    });
    // Give the call time to reach the cell: wait for a later call's answer.
    assert_eq!(cell.add(2, 2).await.unwrap(), 4);
    let killed = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let err = tokio::time::timeout(BOUND, hanging)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let latency = killed.elapsed();
    eprintln!("SIGKILL → in-flight call failed in {latency:?}: {err}");
    assert!(
        matches!(err, CallError::Session(SessionError::Link { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("cell"),
        "the error says the cell is gone: {err}"
    );
    let status = tokio::task::spawn_blocking(move || watcher.join().unwrap())
        .await
        .unwrap();
    assert!(!status.success());
    assert!(matches!(cell.add(1, 1).await.unwrap_err(), CallError::Session(_)));
}
