//! A cell whose `main` is `#[tokio::main]`: serves [`osmos_tests::TokioCell`].
//!
//! `--entry run` (the default) calls `osmos_plugin_sdk::run` inside the
//! multi-thread runtime `#[tokio::main]` starts; `--entry serve` awaits the
//! async entry point `osmos_plugin_sdk::serve`; `--entry run-current-thread`
//! calls `run` inside a current-thread runtime (which it must refuse,
//! saying to call `serve`).

use osmos_tests::{TokioCell, TokioCellDispatcher};

const ABOUT: &str = "tokio-cell: the osmos test suite's cell with a #[tokio::main] main";

struct Cell {
    entry: String,
}

impl TokioCell for Cell {
    async fn debug(&self, message: String) -> Result<String, String> {
        tracing::debug!("{message}");
        let flavor = tokio::runtime::Handle::current().runtime_flavor();
        Ok(format!("{} on {flavor:?}", self.entry))
    }

    async fn info(&self, message: String) -> Result<(), String> {
        tracing::info!("{message}");
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let entry = args
        .iter()
        .position(|a| a == "--entry")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "run".into());
    if entry == "run-current-thread" {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        runtime.block_on(
            async move { osmos_plugin_sdk::run(ABOUT, || TokioCellDispatcher::new(Cell { entry })) },
        );
    } else {
        tokio_main(entry);
    }
}

#[tokio::main]
async fn tokio_main(entry: String) {
    let make = || TokioCellDispatcher::new(Cell { entry: entry.clone() });
    if entry == "serve" {
        if let Err(e) = osmos_plugin_sdk::serve(ABOUT, make).await {
            std::process::exit(e.exit_code());
        }
        return;
    }
    osmos_plugin_sdk::run(ABOUT, make)
}
