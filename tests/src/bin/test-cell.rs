//! The test cell: serves [`osmos_tests::TestCell`].
//!
//! Arguments: `--fail-at-start` writes a line to stderr and exits 3 before
//! attaching; `--marker PATH` creates PATH first (to prove whether it ran);
//! `--fail-if-exists PATH` fails at start if PATH exists, else creates it
//! (so every incarnation after the first fails); `--linger` keeps running
//! after the host says goodbye (until killed).

use std::io::Write as _;
use std::sync::{Arc, OnceLock};

use osmos_session::control::META_CALLER;
use osmos_session::wire::MetaValue;
use osmos_session::{CallContext, Connection, Rx, Tx};
use osmos_tests::{HostDirectoryClient, TestCell, TestCellDispatcher};

struct Cell {
    host: Arc<OnceLock<Connection>>,
}

fn os_err(e: std::io::Error) -> String {
    e.to_string()
}

impl TestCell for Cell {
    async fn add(&self, a: u32, b: u32) -> Result<u32, String> {
        Ok(a.wrapping_add(b))
    }
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(data)
    }
    async fn count(&self, n: u32, out: Tx<u32>) -> Result<u32, String> {
        for i in 0..n {
            out.send(&i).await.map_err(|e| e.to_string())?;
        }
        out.close().await.map_err(|e| e.to_string())?;
        Ok(n)
    }
    async fn sum(&self, mut input: Rx<u64>) -> Result<u64, String> {
        let mut t = 0u64;
        while let Some(v) = input.recv().await {
            t = t.wrapping_add(v.map_err(|e| e.to_string())?);
        }
        Ok(t)
    }
    async fn hang(&self) -> Result<(), String> {
        std::future::pending().await
    }
    async fn exit(&self, code: i32) -> Result<(), String> {
        std::process::exit(code)
    }
    async fn pid(&self) -> Result<u32, String> {
        Ok(std::process::id())
    }
    async fn env(&self) -> Result<Vec<String>, String> {
        let mut v: Vec<String> = std::env::vars_os()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
            .collect();
        v.sort();
        Ok(v)
    }
    async fn fds(&self) -> Result<Vec<i32>, String> {
        let dir = std::fs::read_dir("/proc/self/fd").map_err(os_err)?;
        let mut fds: Vec<i32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort();
        // The highest is the directory handle used to list them.
        fds.pop();
        Ok(fds)
    }
    async fn log(&self, message: String) -> Result<(), String> {
        tracing::info!(answer = 42, "{message}");
        println!("stdout: {message}");
        eprintln!("stderr: {message}");
        let _ = std::io::stdout().flush();
        Ok(())
    }
    async fn ask_host(&self, key: String) -> Result<String, String> {
        // The connection is stored right after the handshake, which the host
        // may already have answered with this call.
        let start = std::time::Instant::now();
        let conn = loop {
            if let Some(c) = self.host.get() {
                break c.clone();
            }
            if start.elapsed() > std::time::Duration::from_secs(5) {
                return Err("the cell never learned its connection to the host".into());
            }
            tokio::task::yield_now().await;
        };
        HostDirectoryClient::new(conn)
            .lookup(key)
            .await
            .map_err(|e| e.to_string())
    }
    async fn try_read(&self, path: String) -> Result<u64, String> {
        std::fs::read(&path).map(|b| b.len() as u64).map_err(os_err)
    }
    async fn try_write(&self, path: String) -> Result<(), String> {
        std::fs::write(&path, b"written by a cell").map_err(os_err)
    }
    async fn try_connect(&self, addr: String) -> Result<(), String> {
        std::net::TcpStream::connect(&addr).map(|_| ()).map_err(os_err)
    }
    async fn try_ptrace_parent(&self) -> Result<(), String> {
        // SAFETY: plain system calls on our parent's pid.
        unsafe {
            let parent = libc::getppid();
            if libc::ptrace(libc::PTRACE_ATTACH, parent, 0, 0) == 0 {
                libc::ptrace(libc::PTRACE_DETACH, parent, 0, 0);
                return Ok(());
            }
        }
        Err(std::io::Error::last_os_error().to_string())
    }
    async fn caller(&self) -> Result<(String, Option<String>), String> {
        let ctx = CallContext::current().ok_or("no call context inside a handler")?;
        let claimed = match ctx.get(META_CALLER) {
            Some(MetaValue::Str(s)) => Some(s.clone()),
            Some(other) => Some(format!("{other:?}")),
            None => None,
        };
        Ok((ctx.caller().to_string(), claimed))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--marker") {
        let _ = std::fs::write(&args[i + 1], b"ran");
    }
    if let Some(i) = args.iter().position(|a| a == "--fail-if-exists") {
        let path = &args[i + 1];
        if std::path::Path::new(path).exists() {
            eprintln!("test-cell: {path} exists: failing at start");
            std::process::exit(3);
        }
        let _ = std::fs::write(path, b"first incarnation");
    }
    if let Some(i) = args.iter().position(|a| a == "--exit-0-if-exists") {
        let path = &args[i + 1];
        if std::path::Path::new(path).exists() {
            eprintln!("test-cell: {path} exists: exiting with status 0 before serving");
            std::process::exit(0);
        }
        let _ = std::fs::write(path, b"first incarnation");
    }
    if args.iter().any(|a| a == "--fail-at-start") && std::env::var_os("OSMOS_CELL_NAME").is_some() {
        eprintln!("test-cell: failing at start as asked");
        std::process::exit(3);
    }
    let linger = args.iter().any(|a| a == "--linger");
    let host = Arc::new(OnceLock::new());
    let dispatcher = TestCellDispatcher::new(Cell { host: host.clone() });
    osmos_plugin_sdk::run_with(
        "test-cell: the osmos test suite's cell (calls, streams, exits, sandbox probes)",
        dispatcher,
        move |cell| async move {
            let _ = host.set(cell.connection().clone());
            let r = cell.serve().await;
            if linger {
                // Ignore the goodbye: keep running until killed.
                std::future::pending::<()>().await;
            }
            r
        },
    );
}
