//! Remote mode: a cell started by hand serves hosts over the network.
//!
//! Given `--listen ADDR` (or [`ENV_LISTEN`]) and `--credentials DIR` (or
//! [`ENV_CREDENTIALS`]), the entry points serve over TCP or a Unix socket
//! instead of a host's shared memory:
//!
//! 1. The cell reads its credentials ([`CellCredentials::read_dir`]): its
//!    own identity and the one host certificate it trusts. A host generates
//!    both with `osmos_session::tls::pair` (or `RemoteCellBuilder`'s docs).
//! 2. Every connection must complete mutual TLS within the handshake
//!    timeout, presenting exactly the pinned host certificate; anything else
//!    is refused (and logged with its fingerprint) before a byte reaches the
//!    session. Nothing travels in clear.
//! 3. Over TLS runs a stable conduit ([`osmos_session::link::stable`]): a
//!    host whose connection breaks comes back and resumes the same session,
//!    with nothing lost; new sessions and returning ones share the listener.
//! 4. The session's handshake checks the protocol version; the first call
//!    of each method checks its schema, as for a local cell.
//!
//! The cell's tracing events go to every attached host as batches of
//! [`LogRecord`]s (the host rate-limits and escapes them as for a local
//! cell); before a host attaches, and while one is slow, up to
//! [`LOG_QUEUE`] events wait, and later ones are dropped.
//!
//! The first session is the cell's [`Cell`]: the entry points serve until
//! that host says goodbye (exit 0) or its session fails for good (exit 1);
//! more hosts may attach meanwhile and are served too. Run a remote cell
//! under a supervisor (systemd, a container runtime) to serve the next host.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osmos_session::control::{
    CellLogsClient, ENV_CELL_NAME, ENV_CREDENTIALS, ENV_LISTEN, LogRecord, MAX_LOG_BATCH,
};
use osmos_session::link::stable::{Accepted, StableAcceptor, StableConfig, Transport};
use osmos_session::tls::{CellCredentials, PeerIdentity, TlsAcceptor};
use osmos_session::{Connection, Dispatcher, SessionBuilder, SessionConfig};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, mpsc};

use crate::{Cell, CellError};

/// Events a remote cell keeps for its hosts before it drops new ones.
pub const LOG_QUEUE: usize = 4096;

/// Connections in their TLS or conduit handshake at once; more wait.
const HANDSHAKES: usize = 64;

/// Where a remote cell listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address, `HOST:PORT`.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl ListenAddr {
    /// Reads `tcp:HOST:PORT`, `unix:PATH` or `HOST:PORT`.
    pub fn parse(s: &str) -> Result<ListenAddr, String> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a socket path, e.g. unix:/run/calc.sock".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let addr = s.strip_prefix("tcp:").unwrap_or(s);
        if addr
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(format!(
                "`{s}` is not a listen address: write tcp:HOST:PORT (e.g. tcp:0.0.0.0:7000) or unix:/path/to/socket"
            ));
        }
        Ok(ListenAddr::Tcp(addr.to_string()))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What a cell started by hand was told to do to serve remotely.
#[derive(Clone, Debug)]
pub struct RemoteSettings {
    /// The cell's name (`--name`, `OSMOS_CELL_NAME`, else the program's file name).
    pub name: String,
    /// Where to listen.
    pub listen: ListenAddr,
    /// The credentials directory.
    pub credentials: PathBuf,
}

/// The value of `--flag VALUE` or `--flag=VALUE` among `args`.
fn flag(args: &[String], flag: &str) -> Option<String> {
    let eq = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&eq).map(str::to_string)
        }
    })
}

impl RemoteSettings {
    /// Reads the settings from the arguments, then the environment. `None`
    /// when no listen address is given (not remote mode); an error when one
    /// is given but unusable, or the credentials are missing.
    pub fn from_env() -> Option<Result<RemoteSettings, CellError>> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let listen = flag(&args, "--listen").or_else(|| std::env::var(ENV_LISTEN).ok())?;
        let bad = |detail: String| Some(Err(CellError::Remote { detail }));
        let listen = match ListenAddr::parse(&listen) {
            Ok(l) => l,
            Err(e) => return bad(e),
        };
        let Some(credentials) = flag(&args, "--credentials").or_else(|| std::env::var(ENV_CREDENTIALS).ok())
        else {
            return bad(format!(
                "serving remotely ({listen}) needs credentials: pass --credentials DIR (or set {ENV_CREDENTIALS}) \
                 naming the directory the host wrote with CellCredentials::write_dir"
            ));
        };
        let name = flag(&args, "--name")
            .or_else(|| std::env::var(ENV_CELL_NAME).ok())
            .unwrap_or_else(|| {
                std::env::args()
                    .next()
                    .map(PathBuf::from)
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "cell".into())
            });
        Some(Ok(RemoteSettings {
            name,
            listen,
            credentials: PathBuf::from(credentials),
        }))
    }
}

/// The hosts a remote cell's log records go to, and the queue they wait in.
#[derive(Clone)]
pub(crate) struct LogHosts {
    hosts: Arc<Mutex<Vec<Connection>>>,
    /// Bumped when a host is added: what the pump waits on while records
    /// wait for a host.
    added: Arc<tokio::sync::watch::Sender<u64>>,
}

impl LogHosts {
    fn add(&self, conn: Connection) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.retain(|c| c.ended().is_none());
        hosts.push(conn);
        drop(hosts);
        self.added.send_modify(|n| *n += 1);
    }

    fn current(&self) -> Vec<Connection> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.retain(|c| c.ended().is_none());
        hosts.clone()
    }
}

/// Installs the remote log layer; records go to the hosts added later.
pub(crate) fn forward_logs_remote() -> LogHosts {
    let (tx, mut rx) = mpsc::channel::<LogRecord>(LOG_QUEUE);
    let hosts = LogHosts {
        hosts: Arc::new(Mutex::new(Vec::new())),
        added: Arc::new(tokio::sync::watch::Sender::new(0)),
    };
    crate::logging::install(crate::logging::Sink::Queue(tx));
    let pump = hosts.clone();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_LOG_BATCH);
        let mut added = pump.added.subscribe();
        loop {
            if rx.recv_many(&mut batch, MAX_LOG_BATCH).await == 0 {
                return;
            }
            // Wait for a host to send them to (events wait in the queue):
            // until one is added, without polling.
            let targets = loop {
                added.borrow_and_update();
                let t = pump.current();
                if !t.is_empty() {
                    break t;
                }
                if added.changed().await.is_err() {
                    return;
                }
            };
            for host in targets {
                let client = CellLogsClient::from(host);
                let _ = client.records(batch.clone()).await;
            }
            batch.clear();
        }
    });
    hosts
}

/// A refusal: the operator of the cell sees it (stderr) and so do the
/// attached hosts (tracing).
fn refusal(name: &str, what: String) {
    eprintln!("osmos cell {name}: {what}");
    tracing::warn!(cell = %name, "{what}");
}

fn remote_error(detail: impl Into<String>) -> CellError {
    CellError::Remote {
        detail: detail.into(),
    }
}

/// Binds, then serves every connection; returns the first session's cell.
pub(crate) async fn start(
    settings: RemoteSettings,
    dispatcher: Arc<dyn Dispatcher>,
    logs: LogHosts,
) -> Result<Cell, CellError> {
    let creds = CellCredentials::read_dir(&settings.credentials).map_err(|e| {
        remote_error(format!(
            "cannot read the credentials in {}: {e}",
            settings.credentials.display()
        ))
    })?;
    let tls = TlsAcceptor::new(&creds.identity, std::slice::from_ref(&creds.host))
        .map_err(|e| remote_error(format!("cannot set up TLS: {e}")))?;
    let stable_config = StableConfig::default();
    let stable = StableAcceptor::new(stable_config.clone())
        .map_err(|e| remote_error(format!("cannot make session tokens: {e}")))?;
    let listener = Listener::bind(&settings.listen).await?;
    let shown = listener.local()?;
    tracing::info!(
        cell = %settings.name,
        "serving remotely on {shown}; identity {}, trusting host {}",
        creds.identity.fingerprint(),
        creds.host.fingerprint()
    );
    // The line scripts and tests wait for.
    eprintln!("osmos cell {} listening on {shown}", settings.name);
    let (first_tx, mut first_rx) = mpsc::channel::<Connection>(1);
    let name = settings.name.clone();
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES));
    let timeout = stable_config.handshake_timeout;
    tokio::spawn(async move {
        loop {
            let (transport, peer) = match listener.accept().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(cell = %name, "accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let (tls, stable, dispatcher, name) =
                (tls.clone(), stable.clone(), dispatcher.clone(), name.clone());
            let (first_tx, logs) = (first_tx.clone(), logs.clone());
            tokio::spawn(async move {
                let secured = match tokio::time::timeout(timeout, tls.accept_boxed(transport)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return refusal(&name, format!("refused a connection from {peer}: {e}")),
                    Err(_) => {
                        return refusal(
                            &name,
                            format!("refused a connection from {peer}: no TLS handshake within {timeout:?}"),
                        );
                    }
                };
                let link = match stable.accept(secured).await {
                    Ok(Accepted::New(link)) => link,
                    Ok(Accepted::Resumed) => {
                        tracing::debug!(cell = %name, "a host resumed its session from {peer}");
                        return;
                    }
                    Err(e) => return refusal(&name, format!("refused a session from {peer}: {e}")),
                };
                drop(permit);
                let config = SessionConfig {
                    name: name.clone(),
                    ..SessionConfig::default()
                };
                let served = dispatcher.clone();
                let session = SessionBuilder::new()
                    .config(config)
                    .serve(dispatcher)
                    // An authenticated host: its word on who calls is believed.
                    .trust_peer_caller()
                    .accept_connections(Arc::new(move |_: &osmos_session::wire::Metadata| {
                        Ok(Some(served.clone()))
                    }))
                    .accept(link)
                    .await;
                match session {
                    Ok(conn) => {
                        tracing::info!(cell = %name, "a host attached from {peer}");
                        logs.add(conn.clone());
                        let _ = first_tx.try_send(conn);
                    }
                    Err(e) => refusal(&name, format!("a session from {peer} failed its handshake: {e}")),
                }
            });
        }
    });
    let conn = first_rx
        .recv()
        .await
        .ok_or_else(|| remote_error("the listener stopped before a host attached"))?;
    Ok(Cell {
        name: settings.name,
        conn,
    })
}

/// A TCP or Unix listener.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    async fn bind(addr: &ListenAddr) -> Result<Listener, CellError> {
        match addr {
            ListenAddr::Tcp(a) => TcpListener::bind(a.as_str())
                .await
                .map(Listener::Tcp)
                .map_err(|e| remote_error(format!("cannot listen on tcp:{a}: {e}"))),
            ListenAddr::Unix(p) => {
                // A socket left by an earlier run is replaced; anything else is not touched.
                if let Ok(meta) = std::fs::symlink_metadata(p)
                    && std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type())
                {
                    let _ = std::fs::remove_file(p);
                }
                UnixListener::bind(p)
                    .map(|l| Listener::Unix(l, p.clone()))
                    .map_err(|e| remote_error(format!("cannot listen on unix:{}: {e}", p.display())))
            }
        }
    }

    fn local(&self) -> Result<String, CellError> {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| format!("tcp:{a}"))
                .map_err(|e| remote_error(e.to_string())),
            Listener::Unix(_, p) => Ok(format!("unix:{}", p.display())),
        }
    }

    async fn accept(&self) -> std::io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok((Stream::Tcp(s), peer.to_string()))
            }
            Listener::Unix(l, p) => {
                let (s, _) = l.accept().await?;
                Ok((Stream::Unix(s), format!("unix:{}", p.display())))
            }
        }
    }
}

/// An accepted connection, before TLS.
enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// TLS over either kind of stream, as a conduit transport.
trait AcceptBoxed {
    async fn accept_boxed(&self, s: Stream) -> Result<Transport, osmos_session::tls::TlsError>;
}

impl AcceptBoxed for TlsAcceptor {
    async fn accept_boxed(&self, s: Stream) -> Result<Transport, osmos_session::tls::TlsError> {
        Ok(match s {
            Stream::Tcp(s) => {
                let tls = self.accept(s).await?;
                tracing::debug!(peer = ?tls.peer_fingerprint(), "TLS accepted");
                Transport::new(tls)
            }
            Stream::Unix(s) => Transport::new(self.accept(s).await?),
        })
    }
}
