//! Leaving the machine: the session over loopback TCP as a plain stream
//! link (`/tcp`), as a stable conduit (`/stable_tcp`: numbered frames, acks,
//! the replay buffer), and as a stable conduit over mutual TLS
//! (`/stable_tls`: what a remote cell uses). Both peers run in this process,
//! the server on its own one-worker runtime, so the rows compare the links
//! and not process placement; each stable row is also given as a ratio to
//! its `/tcp` twin from the same pass.

use std::sync::Arc;
use std::time::Duration;

use osmos_session::link::stable::{
    Accepted, StableAcceptor, StableConfig, StableLink, StableMonitor, StableStatus, Transport,
};
use osmos_session::link::stream::{StreamLink, connect_tcp};
use osmos_session::tls::{self, TlsAcceptor, TlsConnector};
use osmos_session::{Connection, SessionBuilder};
use tokio::net::{TcpListener, TcpStream};

use crate::cases::{BoxError, Floors, Params, add_latency, echo, one_worker_runtime, stream};
use crate::report::Row;
use crate::service::{BenchClient, BenchDispatcher, BenchImpl};

/// Largest frame on these links.
const MAX_FRAME: usize = 16 << 20;

/// The links measured, by row suffix.
const LINKS: &[&str] = &["tcp", "stable_tcp", "stable_tls"];

/// The cases measured on each link.
const CASES: &[&str] = &["add_rtt", "echo_64k", "stream_64k"];

/// Whether any network row runs in this pass.
pub fn wanted(p: &Params) -> bool {
    LINKS
        .iter()
        .any(|l| CASES.iter().any(|c| p.wants(&format!("{c}/{l}"))))
}

/// Serves [`BenchImpl`] on a session accepted over `link`.
async fn serve(link: impl osmos_session::Link) {
    if let Ok(conn) = SessionBuilder::new()
        .serve(BenchDispatcher::new(BenchImpl))
        .accept(link)
        .await
    {
        conn.closed().await;
    }
}

/// A connection to a bench server over `link` (one of [`LINKS`]), and the
/// monitor of its stable conduit if it has one; the server runs on `rt`.
async fn connect(
    link: &str,
    rt: &tokio::runtime::Runtime,
) -> Result<(Connection, Option<StableMonitor>), BoxError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let config = StableConfig::default().max_frame(MAX_FRAME);
    match link {
        "tcp" => {
            rt.spawn(async move {
                let listener = TcpListener::from_std(listener).expect("a listener");
                if let Ok((s, _)) = listener.accept().await
                    && let Ok(link) = StreamLink::tcp(s, MAX_FRAME)
                {
                    serve(link).await;
                }
            });
            let conn = SessionBuilder::new()
                .initiate(connect_tcp(addr, MAX_FRAME).await?)
                .await?;
            Ok((conn, None))
        }
        "stable_tcp" => {
            let acceptor = StableAcceptor::new(config.clone())?;
            rt.spawn(async move {
                let listener = TcpListener::from_std(listener).expect("a listener");
                if let Ok((s, _)) = listener.accept().await
                    && let Ok(t) = Transport::tcp(s)
                    && let Ok(Accepted::New(link)) = acceptor.accept(t).await
                {
                    serve(link).await;
                }
            });
            let link = StableLink::connect_tcp(addr, config).await?;
            let monitor = link.monitor();
            Ok((SessionBuilder::new().initiate(link).await?, Some(monitor)))
        }
        _ => {
            let (host, cell) = tls::pair("bench-host", "bench-cell")?;
            let server_tls = TlsAcceptor::new(&cell.identity, std::slice::from_ref(&cell.host))?;
            let acceptor = StableAcceptor::new(config.clone())?;
            rt.spawn(async move {
                let listener = TcpListener::from_std(listener).expect("a listener");
                if let Ok((s, _)) = listener.accept().await
                    && s.set_nodelay(true).is_ok()
                    && let Ok(secured) = server_tls.accept(s).await
                    && let Ok(Accepted::New(link)) = acceptor.accept(Transport::new(secured)).await
                {
                    serve(link).await;
                }
            });
            let client_tls = Arc::new(TlsConnector::new(&host.identity, &host.cell)?);
            let link = StableLink::connect(
                move || {
                    let client_tls = client_tls.clone();
                    async move {
                        let s = TcpStream::connect(addr).await?;
                        s.set_nodelay(true)?;
                        Ok(Transport::new(
                            client_tls.connect(s).await.map_err(|e| e.into_io())?,
                        ))
                    }
                },
                config,
            )
            .await?;
            let monitor = link.monitor();
            Ok((SessionBuilder::new().initiate(link).await?, Some(monitor)))
        }
    }
}

/// Every network row this pass wants.
pub async fn network(p: &Params, f: &Floors) -> Result<Vec<Row>, BoxError> {
    let mut rows: Vec<Row> = Vec::new();
    for link in LINKS {
        let names: Vec<String> = CASES.iter().map(|c| format!("{c}/{link}")).collect();
        if !names.iter().any(|n| p.wants(n)) {
            continue;
        }
        let rt = one_worker_runtime()?;
        let (conn, monitor) = connect(link, &rt).await?;
        let client = BenchClient::new(conn);
        let note = "both peers in this process, loopback TCP";
        let mut measured = Vec::new();
        if p.wants(&names[0]) {
            measured.push(add_latency(&client, &names[0], None, p, f).await?.note(note));
        }
        if p.wants(&names[1]) {
            measured.push(echo(&client, &names[1], 64 << 10, p, f).await?.note(note));
        }
        if p.wants(&names[2]) {
            measured.push(stream(&client, &names[2], p, f).await?.note(note));
        }
        client.connection().goodbye("measured").await;
        // A stable conduit ends once both closes are acknowledged: let it,
        // so that it does not try to resume against a stopped server
        // (and cost CPU in the rows measured after this one).
        if let Some(mut m) = monitor {
            let over = |s: &StableStatus| matches!(s, StableStatus::Ended | StableStatus::Failed(_));
            if tokio::time::timeout(Duration::from_secs(2), m.wait_for(over))
                .await
                .is_err()
            {
                eprintln!(
                    "  {link}: the conduit did not end within 2 s of the goodbye ({:?})",
                    m.status()
                );
            }
        }
        rt.shutdown_background();
        rows.extend(measured);
    }
    // Each stable row against its plain TCP twin.
    let plain: Vec<(String, f64)> = rows
        .iter()
        .filter_map(|r| r.name.strip_suffix("/tcp").map(|c| (c.to_string(), r.p50)))
        .collect();
    for row in rows.iter_mut().filter(|r| r.name.contains("/stable_")) {
        if let Some((_, tcp)) = plain.iter().find(|(c, _)| c == row.case())
            && *tcp > 0.0
        {
            let ratio = row.p50 / tcp;
            *row = row.clone().note(&format!("{ratio:.2}× the /tcp row's p50"));
        }
    }
    Ok(rows)
}
