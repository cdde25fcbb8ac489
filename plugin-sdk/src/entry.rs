//! The entry points of a cell's `main`, and the runtime they serve on.
//!
//! - [`run`] / [`run_with`], from a plain `fn main`: start a runtime (see
//!   [`ENV_WORKER_THREADS`]), serve, exit the process. Called inside a
//!   multi-thread tokio runtime (the body of `#[tokio::main]`), they serve
//!   on that runtime instead, through `tokio::task::block_in_place`: the
//!   tasks the program spawned keep running beside the cell's, and no second
//!   runtime (threads, memory) is started in a sandbox that limits both.
//!   Inside a current-thread runtime there is no thread they could block
//!   without stopping that runtime, so they say so and exit with
//!   [`EXIT_FAILED`]: call [`serve`] there.
//! - [`serve`] / [`serve_with`], the async entry points, from `async fn main`
//!   on any runtime: the same steps, on the caller's runtime, returning the
//!   outcome instead of exiting ([`CellError::exit_code`] gives the code
//!   [`run`] would exit with).
//!
//! All four read the bootstrap, print [`usage`] when the binary was run by
//! hand, and forward the cell's tracing events to the host
//! ([`forward_logs`](crate::forward_logs)) before the cell starts.

use std::future::Future;
use std::sync::Arc;

use osmos_session::Dispatcher;
use osmos_session::control::{
    CONTROL_FD, ENV_CELL_NAME, ENV_CREDENTIALS, ENV_LISTEN, ENV_PROTOCOL, SEGMENT_FD,
};
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::logging::ENV_LOG;
use crate::remote::RemoteSettings;
use crate::{Bootstrap, Cell, CellError, EXIT_FAILED};

/// Environment variable choosing how many threads run a cell's tasks when
/// [`run`] or [`run_with`] start the runtime (the host sets it with
/// `CellBuilder::env`): unset, empty or `1` runs the ring, the session and
/// every handler on the cell's one main thread (the default: a frame is
/// handled where it is received, with no thread hop); `N > 1` runs a
/// multi-threaded runtime with `N` workers (at most 256), for cells whose
/// handlers compute for long. Ignored when the cell serves on a runtime of
/// its own (`#[tokio::main]`, or [`serve`]): that runtime decides.
pub const ENV_WORKER_THREADS: &str = "OSMOS_WORKER_THREADS";

/// What a cell run by hand prints.
pub fn usage(about: &str) -> String {
    let program = std::env::args().next().unwrap_or_else(|| "this program".into());
    format!(
        "{about}\n\n\
         {program} is an osmos cell: a plugin process that an osmos host starts, sandboxes\n\
         and talks to over shared memory. The host passes it a shared memory segment (fd {SEGMENT_FD}),\n\
         a control socket (fd {CONTROL_FD}) and the {ENV_CELL_NAME} and {ENV_PROTOCOL} variables.\n\
         Run by hand, it has nothing to serve.\n\n\
         Start it from a host program instead, e.g.:\n\n    \
         let cell = osmos_host::CellBuilder::new(\"{program}\").name(\"my-cell\").spawn().await?;\n\n\
         Settings the host may pass (CellBuilder::env):\n  \
         {ENV_LOG}=debug          forward the cell's debug events too (default: info and above)\n  \
         {ENV_WORKER_THREADS}=N   serve on N threads (default: 1, the main thread)\n\n\
         Or serve a host over the network (mutual TLS; the host attaches with RemoteCellBuilder):\n\n    \
         {program} --listen tcp:0.0.0.0:7000 --credentials /etc/osmos/my-cell [--name my-cell]\n\n  \
         --listen ADDR        tcp:HOST:PORT or unix:/path ({ENV_LISTEN})\n  \
         --credentials DIR    this cell's identity and the host's pinned certificate, as the host\n                       \
         wrote them with CellCredentials::write_dir ({ENV_CREDENTIALS})\n  \
         --name NAME          the name the cell gives its sessions (default: the program's file name)\n"
    )
}

/// How this process was started: by a host, or by hand to serve remotely.
enum Mode {
    Local(Bootstrap),
    Remote(RemoteSettings),
}

impl Mode {
    fn name(&self) -> &str {
        match self {
            Mode::Local(b) => &b.name,
            Mode::Remote(r) => &r.name,
        }
    }

    /// Forwards the cell's logs and starts serving.
    async fn start(self, dispatcher: Arc<dyn Dispatcher>) -> Result<Cell, CellError> {
        match self {
            Mode::Local(bootstrap) => {
                crate::forward_logs(&bootstrap);
                Cell::start(bootstrap, dispatcher).await
            }
            Mode::Remote(settings) => {
                let logs = crate::remote::forward_logs_remote();
                crate::remote::start(settings, dispatcher, logs).await
            }
        }
    }
}

/// Remote mode when told to listen; else the host's bootstrap (run by
/// hand without either, prints [`usage`] to stderr first).
fn mode(about: &str) -> Result<Mode, CellError> {
    if let Some(remote) = RemoteSettings::from_env() {
        return remote.map(Mode::Remote);
    }
    Bootstrap::from_env().map(Mode::Local).inspect_err(|e| {
        if let CellError::NotLaunchedByHost { .. } = e {
            eprintln!("{}\n({e})", usage(about));
        }
    })
}

/// Serves the dispatcher `make` builds, from a plain `main`, and exits: 0 on
/// a clean shutdown, [`EXIT_FAILED`] on failure, [`EXIT_NOT_LAUNCHED_BY_HOST`](crate::EXIT_NOT_LAUNCHED_BY_HOST)
/// (after printing [`usage`]) when the binary was not started by a host.
///
/// From a plain `fn main`, everything runs on the calling thread unless
/// [`ENV_WORKER_THREADS`] asks for more. Inside `#[tokio::main]` (a
/// multi-thread runtime) it serves on that runtime; inside a current-thread
/// runtime it exits with [`EXIT_FAILED`] saying to call [`serve`] instead
/// (see the module docs of `entry.rs`).
pub fn run<D>(about: &str, make: impl FnOnce() -> Arc<D>) -> !
where
    D: Dispatcher,
{
    let dispatcher: Arc<dyn Dispatcher> = make();
    run_with(about, dispatcher, |cell| cell.serve())
}

/// Like [`run`], but hands the started [`Cell`] to `body` (to call the host's
/// services before or while serving); `body`'s result decides the exit code.
pub fn run_with<F, Fut>(about: &str, dispatcher: Arc<dyn Dispatcher>, body: F) -> !
where
    F: FnOnce(Cell) -> Fut,
    Fut: Future<Output = Result<(), CellError>>,
{
    let mode = match mode(about) {
        Ok(m) => m,
        Err(e) => {
            if !matches!(e, CellError::NotLaunchedByHost { .. }) {
                eprintln!("cell: {e}");
            }
            std::process::exit(e.exit_code());
        }
    };
    let name = mode.name().to_string();
    let served = async move {
        let cell = mode.start(dispatcher).await?;
        body(cell).await
    };
    let (result, runtime) = match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::CurrentThread => {
            let e = "osmos_plugin_sdk::run was called inside a current-thread tokio runtime \
                     (e.g. #[tokio::main(flavor = \"current_thread\")]), which it cannot serve on \
                     without stopping it; call the async entry point instead: \
                     `osmos_plugin_sdk::serve(about, make).await` (or serve_with), \
                     or call run from a plain fn main";
            tracing::error!(cell = %name, "{e}");
            eprintln!("cell {name}: {e}");
            std::process::exit(EXIT_FAILED);
        }
        Ok(handle) => {
            if std::env::var_os(ENV_WORKER_THREADS).is_some() {
                tracing::debug!(cell = %name, "serving on the program's own runtime: {ENV_WORKER_THREADS} is ignored");
            }
            (tokio::task::block_in_place(|| handle.block_on(served)), None)
        }
        Err(_) => match cell_runtime() {
            Ok(rt) => (rt.block_on(served), Some(rt)),
            Err(e) => {
                eprintln!("cell {name}: cannot start the async runtime: {e}");
                std::process::exit(EXIT_FAILED);
            }
        },
    };
    let code = match result {
        Ok(()) => {
            tracing::debug!(cell = %name, "clean shutdown");
            0
        }
        Err(e) => {
            tracing::error!(cell = %name, "{e}");
            eprintln!("cell {name}: {e}");
            e.exit_code()
        }
    };
    if let Some(rt) = runtime {
        rt.shutdown_background();
    }
    std::process::exit(code)
}

/// The async entry point: serves the dispatcher `make` builds on the
/// caller's runtime (any flavor) until the host says goodbye.
///
/// It does what [`run`] does, but returns instead of exiting: `Ok` on a
/// clean shutdown; [`CellError::NotLaunchedByHost`] (after printing
/// [`usage`] to stderr) when the binary was run by hand; the reason
/// otherwise. [`CellError::exit_code`] is the code to exit with. The cell's
/// tracing events are forwarded to the host (unless the program installed
/// a global subscriber first; see [`forward_logs`](crate::forward_logs)).
///
/// ```no_run
/// # /// Greets.
/// # #[osmos_macros::service]
/// # pub trait Greeter {
/// #     /// Greets.
/// #     async fn greet(&self, name: String) -> Result<String, String>;
/// # }
/// # struct Hello;
/// # impl Greeter for Hello {
/// #     async fn greet(&self, name: String) -> Result<String, String> { Ok(name) }
/// # }
/// #[tokio::main]
/// async fn main() {
///     // ... the program's own setup, tasks ...
///     let served = osmos_plugin_sdk::serve("greeter: says hello", || GreeterDispatcher::new(Hello)).await;
///     if let Err(e) = served {
///         std::process::exit(e.exit_code());
///     }
/// }
/// ```
pub async fn serve<D>(about: &str, make: impl FnOnce() -> Arc<D>) -> Result<(), CellError>
where
    D: Dispatcher,
{
    let dispatcher: Arc<dyn Dispatcher> = make();
    serve_with(about, dispatcher, |cell| cell.serve()).await
}

/// Like [`serve`], but hands the started [`Cell`] to `body`, whose result
/// is returned.
pub async fn serve_with<F, Fut>(
    about: &str,
    dispatcher: Arc<dyn Dispatcher>,
    body: F,
) -> Result<(), CellError>
where
    F: FnOnce(Cell) -> Fut,
    Fut: Future<Output = Result<(), CellError>>,
{
    let mode = mode(about)?;
    let name = mode.name().to_string();
    let cell = mode.start(dispatcher).await?;
    let result = body(cell).await;
    match &result {
        Ok(()) => tracing::debug!(cell = %name, "clean shutdown"),
        Err(e) => tracing::error!(cell = %name, "{e}"),
    }
    result
}

/// The runtime [`run`] and [`run_with`] start when no runtime encloses them
/// (see [`ENV_WORKER_THREADS`]).
fn cell_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let workers = std::env::var(ENV_WORKER_THREADS)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(1);
    if workers <= 1 {
        return tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.min(256))
        .enable_all()
        .build()
}
