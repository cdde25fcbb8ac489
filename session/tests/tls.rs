//! Mutual TLS with pinned certificates (`osmos_session::tls`), over real
//! loopback TCP sockets: who gets in, who is refused and with which words,
//! that the bytes on the wire are encrypted, and the credential files.

#![cfg(feature = "tls")]

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osmos_session::tls::{
    self, CellCredentials, HostCredentials, Identity, PeerIdentity, TlsAcceptor, TlsConnector, TlsError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The bound on every wait: a hung handshake fails the test instead of
/// hanging it.
const BOUND: Duration = Duration::from_secs(20);

async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
}

/// A connected pair of loopback TCP sockets: (client end, server end).
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.expect("connect"), server.expect("accept").0)
}

/// Runs `connector.connect` and `acceptor.accept` against each other over
/// loopback TCP.
async fn handshake(
    connector: &TlsConnector,
    acceptor: &TlsAcceptor,
) -> (
    Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError>,
    Result<tokio_rustls::server::TlsStream<TcpStream>, TlsError>,
) {
    let (client, server) = tcp_pair().await;
    bounded("the handshake", async {
        tokio::join!(connector.connect(client), acceptor.accept(server))
    })
    .await
}

#[tokio::test]
async fn paired_host_and_cell_connect_and_exchange_data_both_ways() {
    let (host, cell) = tls::pair("host", "cell").expect("pair");
    let connector = TlsConnector::new(&host.identity, &host.cell).expect("connector");
    let acceptor = TlsAcceptor::new(&cell.identity, std::slice::from_ref(&cell.host)).expect("acceptor");

    let (client, server) = handshake(&connector, &acceptor).await;
    let mut client = client.expect("the host connects");
    let mut server = server.expect("the cell accepts");

    assert_eq!(client.peer_fingerprint(), Some(cell.identity.fingerprint()));
    assert_eq!(tls::peer_fingerprint(&server), Some(host.identity.fingerprint()));

    bounded("the exchange", async {
        client
            .write_all(b"ping from the host")
            .await
            .expect("host writes");
        client.flush().await.expect("host flushes");
        let mut buf = [0u8; 18];
        server.read_exact(&mut buf).await.expect("cell reads");
        assert_eq!(&buf, b"ping from the host");

        server
            .write_all(b"pong from the cell")
            .await
            .expect("cell writes");
        server.flush().await.expect("cell flushes");
        client.read_exact(&mut buf).await.expect("host reads");
        assert_eq!(&buf, b"pong from the cell");
    })
    .await;

    // An acceptor may pin several clients: any one of them gets in.
    let other = Identity::generate("another host").expect("generate");
    let acceptor = TlsAcceptor::new(&cell.identity, &[other.certificate(), cell.host.clone()])
        .expect("acceptor with two pins");
    let (client, server) = handshake(&connector, &acceptor).await;
    client.expect("the host connects to an acceptor pinning two clients");
    let server = server.expect("the second pin is accepted");
    assert_eq!(server.peer_fingerprint(), Some(host.identity.fingerprint()));
}

#[tokio::test]
async fn a_client_with_a_wrong_certificate_is_refused() {
    let (_host, cell) = tls::pair("host", "cell").expect("pair");
    let stranger = Identity::generate("stranger").expect("generate");
    // The stranger knows the cell's certificate, but the cell pins the host.
    let connector = TlsConnector::new(&stranger, &cell.identity.certificate()).expect("connector");
    let acceptor = TlsAcceptor::new(&cell.identity, std::slice::from_ref(&cell.host)).expect("acceptor");

    let (client, server) = handshake(&connector, &acceptor).await;

    let server_err = server.expect_err("the cell must refuse the stranger");
    let message = server_err.to_string();
    assert!(
        matches!(&server_err, TlsError::NotPinned { presented, .. } if *presented == stranger.fingerprint()),
        "{server_err:?}"
    );
    assert!(message.contains(&stranger.fingerprint()), "{message}");
    assert!(message.contains(&cell.host.fingerprint()), "{message}");
    assert!(message.contains("not the pinned one"), "{message}");
    assert!(message.contains("regenerate the credentials"), "{message}");

    let client_err = client.expect_err("the stranger must learn it was refused");
    let message = client_err.to_string();
    assert!(matches!(client_err, TlsError::Refused { .. }), "{client_err:?}");
    assert!(message.contains("refused our certificate"), "{message}");
}

#[tokio::test]
async fn a_server_with_a_wrong_certificate_is_refused() {
    let (host, cell) = tls::pair("host", "cell").expect("pair");
    let impostor = Identity::generate("impostor").expect("generate");
    let connector = TlsConnector::new(&host.identity, &host.cell).expect("connector");
    // The impostor pins the real host, so only the host's check can fail.
    let acceptor = TlsAcceptor::new(&impostor, std::slice::from_ref(&cell.host)).expect("acceptor");

    let (client, server) = handshake(&connector, &acceptor).await;

    let client_err = client.expect_err("the host must refuse the impostor");
    let message = client_err.to_string();
    assert!(
        matches!(&client_err, TlsError::NotPinned { presented, .. } if *presented == impostor.fingerprint()),
        "{client_err:?}"
    );
    assert!(message.contains(&impostor.fingerprint()), "{message}");
    assert!(message.contains(&cell.identity.fingerprint()), "{message}");

    let server_err = server.expect_err("the impostor must fail too");
    let message = server_err.to_string();
    assert!(matches!(server_err, TlsError::Refused { .. }), "{server_err:?}");
    assert!(message.contains("refused our certificate"), "{message}");
}

/// A server verifier that accepts anything: the client of the "no
/// certificate" test must get as far as the client-certificate step.
#[derive(Debug)]
struct AcceptAnything(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let (_host, cell) = tls::pair("host", "cell").expect("pair");
    let acceptor = TlsAcceptor::new(&cell.identity, std::slice::from_ref(&cell.host)).expect("acceptor");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(algorithms)))
        .with_no_client_auth();
    let anonymous = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("osmos-cell").expect("server name");

    let (client, server) = tcp_pair().await;
    let (client, server) = bounded("the handshake", async {
        let client = async {
            // In TLS 1.3 the client may finish its half of the handshake
            // before the server judges it; it learns the refusal on read.
            let mut tls = anonymous.connect(name, client).await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map(|_| ())
        };
        tokio::join!(client, acceptor.accept(server))
    })
    .await;

    let server_err = server.expect_err("the cell must refuse a client without a certificate");
    let message = server_err.to_string();
    assert!(
        matches!(server_err, TlsError::NoClientCertificate),
        "{server_err:?}"
    );
    assert!(message.contains("presented no certificate"), "{message}");
    assert!(message.contains("mutual TLS"), "{message}");
    client.expect_err("the anonymous client must not get any data");
}

/// What a recording proxy saw in one direction.
type Recording = Arc<Mutex<Vec<u8>>>;

/// Copies `from` to `to`, recording every byte before forwarding it.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    record: Recording,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        record.lock().expect("recording").extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[tokio::test]
async fn traffic_through_a_recording_proxy_is_encrypted() {
    const MARKER: &[u8] = b"osmos-secret-payload";
    let payload: Vec<u8> = MARKER.iter().copied().cycle().take(64 * 1024).collect();

    let (host, cell) = tls::pair("host", "cell").expect("pair");
    let connector = TlsConnector::new(&host.identity, &host.cell).expect("connector");
    let acceptor = TlsAcceptor::new(&cell.identity, std::slice::from_ref(&cell.host)).expect("acceptor");

    // host --> proxy --> cell, each leg a real loopback socket.
    let cell_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind cell");
    let cell_addr = cell_listener.local_addr().expect("cell addr");
    let proxy_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let proxy_addr = proxy_listener.local_addr().expect("proxy addr");
    let to_cell = Recording::default();
    let to_host = Recording::default();
    let proxy = {
        let (to_cell, to_host) = (to_cell.clone(), to_host.clone());
        tokio::spawn(async move {
            let (host_side, _) = proxy_listener.accept().await.expect("proxy accept");
            let cell_side = TcpStream::connect(cell_addr).await.expect("proxy connect");
            let (host_read, host_write) = host_side.into_split();
            let (cell_read, cell_write) = cell_side.into_split();
            tokio::join!(
                relay(host_read, cell_write, to_cell),
                relay(cell_read, host_write, to_host)
            );
        })
    };

    let host_side = async {
        let tcp = TcpStream::connect(proxy_addr).await.expect("connect to proxy");
        let mut tls = connector
            .connect(tcp)
            .await
            .expect("host connects through the proxy");
        tls.write_all(&payload).await.expect("host sends");
        tls.flush().await.expect("host flushes");
        let mut echo = vec![0u8; payload.len()];
        tls.read_exact(&mut echo).await.expect("host reads the echo");
        assert!(echo == payload, "the echo differs from the payload");
        tls.shutdown().await.expect("host closes");
    };
    let cell_side = async {
        let (tcp, _) = cell_listener.accept().await.expect("cell accept");
        let mut tls = acceptor
            .accept(tcp)
            .await
            .expect("cell accepts through the proxy");
        let mut got = vec![0u8; payload.len()];
        tls.read_exact(&mut got).await.expect("cell reads");
        assert!(got == payload, "the cell received something else");
        tls.write_all(&got).await.expect("cell echoes");
        tls.flush().await.expect("cell flushes");
        // Wait for the host's close_notify, then close too.
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        let _ = tls.shutdown().await;
    };
    bounded("the exchange through the proxy", async {
        tokio::join!(host_side, cell_side);
        proxy.await.expect("proxy task");
    })
    .await;

    for (direction, recording) in [("host to cell", &to_cell), ("cell to host", &to_host)] {
        let bytes = recording.lock().expect("recording");
        assert!(
            bytes.len() >= payload.len(),
            "{direction}: only {} bytes passed the proxy",
            bytes.len()
        );
        assert!(
            !contains(&bytes, MARKER),
            "{direction}: the payload crossed the wire in clear"
        );
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!("osmos-tls-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn credentials_round_trip_through_files() {
    let temp = TempDir::new("credentials");
    let host_dir = temp.path().join("host");
    let cell_dir = temp.path().join("cell");
    let (host, cell) = tls::pair("host", "cell").expect("pair");
    host.write_dir(&host_dir).expect("write host dir");
    cell.write_dir(&cell_dir).expect("write cell dir");

    for dir in [&host_dir, &cell_dir] {
        let mode = std::fs::metadata(dir.join(tls::IDENTITY_KEY))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}: key file mode {mode:o}", dir.display());
    }

    let host_back = HostCredentials::read_dir(&host_dir).expect("read host dir");
    let cell_back = CellCredentials::read_dir(&cell_dir).expect("read cell dir");
    assert_eq!(host_back.identity.fingerprint(), host.identity.fingerprint());
    assert_eq!(host_back.identity.key_pem(), host.identity.key_pem());
    assert_eq!(host_back.cell, host.cell);
    assert_eq!(cell_back.identity.fingerprint(), cell.identity.fingerprint());
    assert_eq!(cell_back.host, cell.host);

    // The credentials read back still connect.
    let connector = TlsConnector::new(&host_back.identity, &host_back.cell).expect("connector");
    let acceptor =
        TlsAcceptor::new(&cell_back.identity, std::slice::from_ref(&cell_back.host)).expect("acceptor");
    let (client, server) = handshake(&connector, &acceptor).await;
    client.expect("connect with credentials read from files");
    server.expect("accept with credentials read from files");

    // A key file others can read is refused, with the command that fixes it.
    let key = cell_dir.join(tls::IDENTITY_KEY);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = CellCredentials::read_dir(&cell_dir).expect_err("an exposed key");
    assert!(matches!(err, TlsError::KeyFileExposed { .. }), "{err:?}");
    assert!(err.to_string().contains("chmod 600"), "{err}");

    // A missing file is named.
    std::fs::remove_file(cell_dir.join(tls::PEER_CERT)).expect("remove peer.crt");
    let err = CellCredentials::read_dir(&cell_dir).expect_err("a missing peer.crt");
    let message = err.to_string();
    assert!(matches!(err, TlsError::MissingFile { .. }), "{err:?}");
    assert!(message.contains("peer.crt"), "{message}");
    assert!(message.contains("missing"), "{message}");

    // A damaged file is named too.
    std::fs::write(host_dir.join(tls::IDENTITY_CERT), "garbage").expect("damage identity.crt");
    let err = HostCredentials::read_dir(&host_dir).expect_err("a damaged identity.crt");
    assert!(err.to_string().contains("identity.crt"), "{err}");

    drop(temp);
    assert!(!host_dir.exists(), "the temp dir is removed");
}
