//! The stable peer: serves [`osmos_tests::soak::Soak`] over stable conduits
//! ([`StableAcceptor`]) on a Unix path or a TCP address, for
//! `tests/stable_soak.rs`.
//!
//! Usage: `stable-peer unix:PATH` or `stable-peer tcp:ADDR` (port 0 picks
//! one). Once listening it prints `READY <endpoint>` (e.g.
//! `READY tcp:127.0.0.1:40123`) on stdout. It exits when its stdin closes,
//! so it does not outlive the test that spawned it.

use std::io::{Read, Write};
use std::sync::Arc;

use osmos_session::link::stable::{Accepted, StableAcceptor, StableConfig, Transport};
use osmos_session::{Connection, SessionBuilder};
use osmos_tests::fault_proxy::Endpoint;
use osmos_tests::soak::{SoakDispatcher, SoakService};
use tokio::net::{TcpListener, UnixListener};

/// Runs the handshake on a connection; a new session gets the service.
async fn serve(
    acceptor: StableAcceptor,
    transport: Transport,
    service: Arc<SoakService>,
) -> Option<Connection> {
    match acceptor.accept(transport).await {
        Ok(Accepted::New(link)) => match SessionBuilder::new()
            .serve(SoakDispatcher::new(service))
            .accept(link)
            .await
        {
            Ok(c) => {
                // Say why a session ends: the test only sees its own side.
                let watch = c.clone();
                tokio::spawn(async move {
                    eprintln!("stable-peer: a session ended: {}", watch.closed().await);
                });
                Some(c)
            }
            Err(e) => {
                eprintln!("stable-peer: a session failed its handshake: {e}");
                None
            }
        },
        Ok(Accepted::Resumed) => None,
        // A connection cut during its handshake: the initiator retries.
        Err(e) => {
            eprintln!("stable-peer: refused a connection: {e}");
            None
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let arg = std::env::args().nth(1).unwrap_or_default();
    let endpoint = Endpoint::parse(&arg).unwrap_or_else(|e| {
        eprintln!("usage: stable-peer unix:PATH | tcp:ADDR ({e})");
        std::process::exit(2)
    });
    // Exit when the test closes our stdin (or dies).
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while let Ok(n) = std::io::stdin().read(&mut sink) {
            if n == 0 {
                break;
            }
        }
        std::process::exit(0)
    });
    let acceptor = StableAcceptor::new(StableConfig::default()).expect("an acceptor");
    let service = SoakService::new();
    let sessions = Arc::new(tokio::sync::Mutex::new(Vec::<Connection>::new()));
    let keep = |c: Option<Connection>, sessions: Arc<tokio::sync::Mutex<Vec<Connection>>>| async move {
        if let Some(c) = c {
            sessions.lock().await.push(c);
        }
    };
    match endpoint {
        Endpoint::Unix(path) => {
            let listener = UnixListener::bind(&path).expect("binding the Unix path");
            ready(&Endpoint::Unix(path));
            loop {
                let (s, _) = listener.accept().await.expect("accepting");
                let (acceptor, service, sessions) = (acceptor.clone(), service.clone(), sessions.clone());
                tokio::spawn(async move {
                    keep(serve(acceptor, Transport::unix(s), service).await, sessions).await;
                });
            }
        }
        Endpoint::Tcp(addr) => {
            let listener = TcpListener::bind(addr).await.expect("binding the TCP address");
            ready(&Endpoint::Tcp(listener.local_addr().expect("the bound address")));
            loop {
                let (s, _) = listener.accept().await.expect("accepting");
                let (acceptor, service, sessions) = (acceptor.clone(), service.clone(), sessions.clone());
                tokio::spawn(async move {
                    let Ok(t) = Transport::tcp(s) else { return };
                    keep(serve(acceptor, t, service).await, sessions).await;
                });
            }
        }
    }
}

fn ready(at: &Endpoint) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "READY {at}");
    let _ = out.flush();
}
