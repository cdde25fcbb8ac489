//! Remote cells: the test cell started by hand in remote mode (`--listen`,
//! `--credentials`), attached from this process over mutual TLS and the
//! stable conduit.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osmos_host::{CellState, ExitInfo, HostError, RemoteCellBuilder, RestartPolicy};
use osmos_session::tls::{self, CellCredentials, HostCredentials};
use osmos_tests::TestCellClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CELL: &str = env!("CARGO_BIN_EXE_test-cell");
const WAIT: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A credentials directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("osmos-remote-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The test cell in remote mode, and the lines it wrote to stderr.
struct RemoteProcess {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<Vec<String>>>,
    _dir: Dir,
}

impl Drop for RemoteProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RemoteProcess {
    /// Starts the cell listening on a free loopback port, trusting `cell`'s host.
    fn start(tag: &str, cell: &CellCredentials) -> RemoteProcess {
        Self::start_on(tag, cell, "tcp:127.0.0.1:0".into(), "listening on tcp:")
    }

    /// Starts the cell listening on `listen`; its address is what follows
    /// `marker` in the line it prints.
    fn start_on(tag: &str, cell: &CellCredentials, listen: String, marker: &'static str) -> RemoteProcess {
        let dir = Dir::new(tag);
        cell.write_dir(&dir.0).expect("write the cell's credentials");
        let mut child = Command::new(CELL)
            .args(["--listen", listen.as_str(), "--credentials"])
            .arg(&dir.0)
            .args(["--name", "far-cell"])
            .env("OSMOS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the test cell");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = stderr.clone();
        let pipe = child.stderr.take().expect("stderr piped");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line.split(marker).nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "the remote cell never said where it listens: {:?}",
                stderr.lock().unwrap()
            )
        });
        RemoteProcess {
            child,
            addr,
            stderr,
            _dir: dir,
        }
    }

    /// Waits until its stderr has a line containing `needle`.
    async fn stderr_says(&self, needle: &str) -> String {
        within(&format!("the cell's stderr to say {needle:?}"), async {
            loop {
                if let Some(l) = self.stderr.lock().unwrap().iter().find(|l| l.contains(needle)) {
                    return l.clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(start.elapsed() < WAIT, "the remote cell did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A relay between host and cell that records what crosses it and can cut
/// its connections.
struct Relay {
    addr: String,
    seen: Arc<Mutex<Vec<u8>>>,
    live: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
        let live = Arc::new(Mutex::new(Vec::new()));
        let (record, tasks) = (seen.clone(), live.clone());
        tokio::spawn(async move {
            loop {
                let (a, _) = listener.accept().await.unwrap();
                let b = TcpStream::connect(upstream.as_str()).await.unwrap();
                let (ar, aw) = a.into_split();
                let (br, bw) = b.into_split();
                for (mut r, mut w) in [
                    (
                        Box::new(ar) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(bw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(br), Box::new(aw)),
                ] {
                    let record = record.clone();
                    let task = tokio::spawn(async move {
                        let mut buf = vec![0; 64 << 10];
                        while let Ok(n) = r.read(&mut buf).await {
                            if n == 0 || w.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            record.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                    });
                    tasks.lock().unwrap().push(task.abort_handle());
                }
            }
        });
        Relay { addr, seen, live }
    }

    /// Cuts every connection through the relay.
    fn cut(&self) {
        for t in self.live.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

fn pair() -> (HostCredentials, CellCredentials) {
    tls::pair("test-host", "far-cell").expect("generate credentials")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_cell_serves_calls_streams_logs_and_shuts_down() {
    let (host, cell) = pair();
    let mut process = RemoteProcess::start("serves", &cell);
    let remote = within(
        "the attach",
        RemoteCellBuilder::tcp(process.addr.clone(), host)
            .name("far")
            .attach(),
    )
    .await
    .expect("attach");
    assert!(
        matches!(remote.state(), CellState::Attached { .. }),
        "{}",
        remote.state()
    );
    let client: TestCellClient = remote.client().expect("a client");
    assert_eq!(within("add", client.add(2, 3)).await.expect("add"), 5);
    let big = vec![7u8; 256 << 10];
    assert_eq!(within("echo", client.echo(big.clone())).await.expect("echo"), big);
    // A stream from the cell, and one to it.
    let conn = remote.connection().expect("connection");
    let (tx, mut rx) = conn.channel::<u32>().expect("a channel");
    let counting = tokio::spawn({
        let client = client.clone();
        async move { client.count(1000, tx).await }
    });
    for i in 0..1000 {
        assert_eq!(
            within("an item", rx.recv())
                .await
                .expect("an item")
                .expect("not an error"),
            i
        );
    }
    assert_eq!(within("count", counting).await.unwrap().expect("count"), 1000);
    let (tx, rx) = conn.channel::<u64>().expect("a channel");
    let summing = tokio::spawn({
        let client = client.clone();
        async move { client.sum(rx).await }
    });
    for i in 1..=100u64 {
        tx.send(&i).await.expect("send");
    }
    tx.close().await.expect("close");
    assert_eq!(within("sum", summing).await.unwrap().expect("sum"), 5050);
    // The cell's log records come over the session.
    within("log", client.log("hello from far away".into()))
        .await
        .expect("log");
    within("the record", async {
        while remote.stats().logs.records_forwarded == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let stats = remote.stats();
    assert!(stats.session.calls_made >= 5, "{stats:?}");
    // Goodbye: the cell exits 0.
    assert_eq!(
        within("shutdown", remote.shutdown(Duration::from_secs(5))).await,
        ExitInfo::Detached
    );
    assert!(
        matches!(
            remote.state(),
            CellState::Stopped {
                exit: ExitInfo::Detached
            }
        ),
        "{}",
        remote.state()
    );
    assert!(process.wait_exit().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_the_wrong_credentials_is_refused_on_both_sides() {
    let (_host, cell) = pair();
    let (stranger, _) = pair();
    let process = RemoteProcess::start("refused", &cell);
    let e = within(
        "the refusal",
        RemoteCellBuilder::tcp(process.addr.clone(), stranger)
            .stable(one_attempt())
            .attach(),
    )
    .await
    .expect_err("a stranger must not attach");
    assert!(matches!(e, HostError::Attach { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("refused") || text.contains("pinned"), "{text}");
    let line = process.stderr_says("refused a connection").await;
    assert!(line.contains("refused our certificate"), "{line}");
}

fn one_attempt() -> osmos_session::link::stable::StableConfig {
    osmos_session::link::stable::StableConfig::default().retry(osmos_session::RetryPolicy {
        max_attempts: 1,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_refuses_a_host_it_does_not_pin_and_plaintext() {
    let (host, cell) = pair();
    let (stranger, _) = pair();
    let process = RemoteProcess::start("unpinned-host", &cell);
    // The right pin of the cell, but not the identity the cell trusts.
    let impostor = HostCredentials {
        identity: stranger.identity,
        cell: host.cell.clone(),
    };
    let e = within(
        "the refusal",
        RemoteCellBuilder::tcp(process.addr.clone(), impostor)
            .stable(one_attempt())
            .attach(),
    )
    .await
    .expect_err("an impostor must not attach");
    assert!(e.to_string().contains("refused our certificate"), "{e}");
    let line = process.stderr_says("is not the pinned one").await;
    assert!(line.contains("refused a connection"), "{line}");
    // A client that speaks no TLS at all reaches nothing either.
    let mut raw = TcpStream::connect(process.addr.as_str()).await.unwrap();
    raw.write_all(b"osmSTBL1 hello in clear, pretending to be a conduit")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = within("the cell to hang up", async {
        raw.read(&mut buf).await.unwrap_or(0)
    })
    .await;
    assert!(
        !String::from_utf8_lossy(&buf[..n]).contains("osmSTBL1"),
        "the conduit answered in clear"
    );
    process.stderr_says("refused a connection from 127.0.0.1").await;
    // The real host still attaches.
    let remote = within(
        "the attach",
        RemoteCellBuilder::tcp(process.addr.clone(), host).attach(),
    )
    .await
    .expect("attach");
    let client: TestCellClient = remote.client().unwrap();
    assert_eq!(within("add", client.add(40, 2)).await.unwrap(), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_to_a_remote_cell_is_encrypted() {
    let (host, cell) = pair();
    let process = RemoteProcess::start("encrypted", &cell);
    let relay = Relay::start(process.addr.clone()).await;
    let (relay_addr, seen) = (relay.addr.clone(), relay.seen.clone());
    let remote = within("the attach", RemoteCellBuilder::tcp(relay_addr, host).attach())
        .await
        .expect("attach");
    let client: TestCellClient = remote.client().unwrap();
    let marker = b"osmos-plaintext-marker-".repeat(1000);
    assert_eq!(within("echo", client.echo(marker.clone())).await.unwrap(), marker);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() > marker.len(),
        "the relay saw the traffic ({} bytes)",
        seen.len()
    );
    let needle = b"osmos-plaintext-marker-";
    assert!(
        !seen.windows(needle.len()).any(|w| w == needle),
        "the payload crossed the wire in clear"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_session_survives_cut_connections() {
    let (host, cell) = pair();
    let process = RemoteProcess::start("cuts", &cell);
    let relay = Relay::start(process.addr.clone()).await;
    let stable = osmos_session::link::stable::StableConfig::default().retry(osmos_session::RetryPolicy {
        max_attempts: 50,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
    });
    let remote = within(
        "the attach",
        RemoteCellBuilder::tcp(relay.addr.clone(), host)
            .stable(stable)
            .attach(),
    )
    .await
    .expect("attach");
    let client: TestCellClient = remote.client().unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..400u32 {
        let client = client.clone();
        calls.spawn(async move { (i, client.add(i, 1000).await) });
        if i % 100 == 50 {
            relay.cut();
        }
    }
    while let Some(r) = within("a call", calls.join_next()).await {
        let (i, answer) = r.unwrap();
        assert_eq!(answer.expect("a call across a cut"), i + 1000);
    }
    assert!(remote.link_resumes() >= 1, "the conduit resumed");
    assert_eq!(remote.stats().restarts, 0, "resumes are not re-attaches");
    assert!(
        matches!(remote.state(), CellState::Attached { .. }),
        "{}",
        remote.state()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_cell_serves_on_a_unix_socket() {
    let (host, cell) = pair();
    let path = std::env::temp_dir().join(format!("osmos-remote-{}.sock", std::process::id()));
    let mut process = RemoteProcess::start_on(
        "unix",
        &cell,
        format!("unix:{}", path.display()),
        "listening on unix:",
    );
    assert_eq!(PathBuf::from(&process.addr), path);
    let remote = within("the attach", RemoteCellBuilder::unix(&path, host).attach())
        .await
        .expect("attach over a Unix socket");
    let client: TestCellClient = remote.client().unwrap();
    assert_eq!(within("add", client.add(1, 2)).await.unwrap(), 3);
    remote.shutdown(Duration::from_secs(5)).await;
    assert!(process.wait_exit().success());
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_with_a_restart_policy_attaches_again_to_a_restarted_cell() {
    let (host, cell) = pair();
    let first = RemoteProcess::start("restart-1", &cell);
    let addr = first.addr.clone();
    let remote = within(
        "the attach",
        RemoteCellBuilder::tcp(addr.clone(), host)
            .restart(RestartPolicy::on_failure(50))
            .attach(),
    )
    .await
    .expect("attach");
    let client: TestCellClient = remote.client().unwrap();
    let first_pid = within("pid", client.pid()).await.unwrap();
    // The cell's own supervisor restarts it on the same address.
    drop(first);
    let second = RemoteProcess::start_on("restart-2", &cell, format!("tcp:{addr}"), "listening on tcp:");
    let state = within(
        "the handle to attach again",
        remote.wait_for(|s| matches!(s, CellState::Attached { .. }) && remote.stats().restarts == 1),
    )
    .await;
    assert!(matches!(state, CellState::Attached { .. }), "{state}");
    let ended = remote.last_session_end();
    assert!(ended.is_none(), "a fresh session runs: {ended:?}");
    // The client taken before the restart follows the handle to the new
    // session.
    let second_pid = within("pid", client.pid()).await.unwrap();
    assert_ne!(first_pid, second_pid);
    assert_eq!(second_pid, second.child.id());
}
