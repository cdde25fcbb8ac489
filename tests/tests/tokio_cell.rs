//! The plugin SDK's entry points inside a program's own tokio runtime: the
//! `tokio-cell` binary's `main` is `#[tokio::main]` and enters the SDK
//! through `run` (served on that runtime) or the async `serve`; `run` in a
//! current-thread runtime refuses, saying what to call instead. Debug lines
//! reach the host when, and only when, the host sets the cell's `OSMOS_LOG`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use osmos_host::{CellBuilder, CellHandle, HostError};
use osmos_tests::{TokioCellClient, bounded};

const CELL: &str = env!("CARGO_BIN_EXE_tokio-cell");
/// Collects the events the host's tracing receives.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct V(String);
        impl tracing::field::Visit for V {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={v:?} ", f.name()));
            }
        }
        let mut v = V(String::new());
        event.record(&mut v);
        self.0.lock().unwrap().push(v.0);
    }
}

impl Captured {
    /// Waits until a line of `cell` containing `text` arrives.
    async fn wait_for(&self, cell: &str, text: &str) {
        let tag = format!("cell={cell}");
        bounded(text, async {
            loop {
                if self.seen(&tag, text) {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
    }

    fn seen(&self, tag: &str, text: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(tag) && l.contains(text))
    }
}

/// Runs `body` on a current-thread runtime whose thread sends the host's
/// tracing (the cell's forwarded records included) to a capture.
fn with_captured_logs<F: std::future::Future<Output = ()>>(body: impl FnOnce(Captured) -> F) {
    use tracing_subscriber::prelude::*;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(body(captured));
}

/// Spawns `tokio-cell --entry <entry>`, forwarding its debug lines if `debug`.
async fn spawn(name: &str, entry: &str, debug: bool) -> Result<CellHandle, HostError> {
    let mut builder = CellBuilder::new(CELL).name(name).args(["--entry", entry]);
    if debug {
        builder = builder.log_level(tracing::Level::DEBUG);
    }
    bounded("spawn", builder.spawn()).await
}

/// Spawns `tokio-cell --entry <entry>` with `log_level(DEBUG)`, calls it, and
/// checks its debug line reaches the host; returns how it said it serves.
async fn debug_line_reaches_the_host(captured: &Captured, name: &str, entry: &str) -> String {
    let cell = spawn(name, entry, true).await.expect("spawn the tokio cell");
    let c = cell.client::<TokioCellClient>().unwrap();
    let marker = format!("debug line from the {entry} entry");
    let how = bounded("the debug call", c.debug(marker.clone())).await.unwrap();
    captured.wait_for(name, &marker).await;
    assert_eq!(
        cell.shutdown(Duration::from_secs(5)).await,
        osmos_host::ExitInfo::Exited(0)
    );
    how
}

#[test]
fn run_inside_tokio_main_serves_on_that_runtime_and_forwards_debug_logs() {
    with_captured_logs(|captured| async move {
        let how = debug_line_reaches_the_host(&captured, "tokio-run", "run").await;
        // Served on the program's multi-thread runtime, not one of the SDK's.
        assert_eq!(how, "run on MultiThread");
    });
}

#[test]
fn the_async_entry_point_serves_and_forwards_debug_logs() {
    with_captured_logs(|captured| async move {
        let how = debug_line_reaches_the_host(&captured, "tokio-serve", "serve").await;
        assert_eq!(how, "serve on MultiThread");
    });
}

#[test]
fn without_osmos_log_a_cells_debug_lines_stay_in_the_cell() {
    with_captured_logs(|captured| async move {
        let cell = spawn("tokio-quiet", "serve", false).await.unwrap();
        let c = cell.client::<TokioCellClient>().unwrap();
        bounded("debug", c.debug("a quiet debug line".into()))
            .await
            .unwrap();
        bounded("info", c.info("a loud info line".into())).await.unwrap();
        // Records arrive in order: once the later info line is here, the
        // debug line would have been too.
        captured.wait_for("tokio-quiet", "a loud info line").await;
        assert!(!captured.seen("cell=tokio-quiet", "a quiet debug line"));
        cell.shutdown(Duration::from_secs(5)).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_inside_a_current_thread_runtime_says_to_call_serve() {
    match spawn("tokio-current", "run-current-thread", false).await {
        Err(e @ HostError::Handshake { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("exited with status 1")
                    && text.contains("inside a current-thread tokio runtime")
                    && text.contains("osmos_plugin_sdk::serve(about, make).await"),
                "{text}"
            );
        }
        Err(e) => panic!("expected a handshake failure, got {e}"),
        Ok(_) => panic!("run served inside a current-thread runtime"),
    }
}

#[test]
fn run_by_hand_each_entry_explains_itself_and_exits_2() {
    for entry in ["run", "serve", "run-current-thread"] {
        let out = std::process::Command::new(CELL)
            .args(["--entry", entry])
            .env_clear()
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{entry}: {stderr}");
        assert!(
            stderr.contains("is an osmos cell")
                && stderr.contains("OSMOS_LOG=debug")
                && stderr.contains("OSMOS_WORKER_THREADS"),
            "{entry}: {stderr}"
        );
    }
}
