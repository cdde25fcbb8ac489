//! [`TlsConnector`] and [`TlsAcceptor`]: the two ends of a pinned mutual-TLS
//! connection, and [`PeerIdentity`] to ask a connected stream who is on the
//! other end.
//!
//! The connection, step by step:
//!
//! 1. The connector sends the fixed SNI [`SERVER_NAME`](super::SERVER_NAME)
//!    and offers TLS 1.3 only.
//! 2. The acceptor presents its certificate; the connector's verifier
//!    checks it against the pinned one and the handshake signature.
//! 3. The acceptor demands a client certificate; the connector presents its
//!    own; the acceptor's verifier checks it the same way. A client without
//!    one fails with [`TlsError::NoClientCertificate`].
//! 4. The acceptor sends one acceptance byte ([`ACCEPTED`]) and the connector
//!    waits for it. In TLS 1.3 the client's handshake is over before the
//!    server has judged the client's certificate, so without this byte a
//!    refused client would only learn it at its first read; with it,
//!    `connect` itself fails with [`TlsError::Refused`].
//!
//! Session resumption is off: every connection proves both certificates
//! anew.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::pinning::{PinnedClients, PinnedServer};
use super::{Identity, PeerCert, SERVER_NAME, TlsError, provider};

/// The byte the acceptor sends once it has accepted the client's
/// certificate (step 4 of the module docs).
const ACCEPTED: u8 = 0x6f;

/// The only TLS version spoken: TLS 1.3 encrypts the client's certificate
/// and has no legacy key exchanges to reason about.
static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The connecting side (usually the host reaching a remote cell): presents
/// its [`Identity`] and accepts only the pinned server certificate.
///
/// Cheap to clone: the rustls config is shared.
#[derive(Clone)]
pub struct TlsConnector {
    inner: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    server: PeerCert,
}

impl TlsConnector {
    /// A connector that presents `me` and trusts only `server`.
    pub fn new(me: &Identity, server: &PeerCert) -> Result<TlsConnector, TlsError> {
        let provider = Arc::new(provider());
        me.check(&provider)?;
        let verifier = PinnedServer::new(server, provider.signature_verification_algorithms);
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(VERSIONS)
            .map_err(TlsError::Handshake)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(me.chain(), me.key_der())
            .map_err(|err| TlsError::BadIdentity {
                detail: err.to_string(),
            })?;
        config.resumption = Resumption::disabled();
        let server_name = ServerName::try_from(SERVER_NAME)
            .map_err(|err| TlsError::Handshake(rustls::Error::General(err.to_string())))?;
        Ok(TlsConnector {
            inner: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            server: server.clone(),
        })
    }

    /// Runs the handshake over `stream` and waits for the acceptor's
    /// confirmation. On success, both certificates were the pinned ones.
    ///
    /// There is no timeout here: wrap the call in `tokio::time::timeout` so
    /// a peer that stops answering cannot hold it forever.
    pub async fn connect<S>(&self, stream: S) -> Result<tokio_rustls::client::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut tls = self
            .inner
            .connect(self.server_name.clone(), stream)
            .await
            .map_err(|err| TlsError::from_handshake(err, "the TLS handshake"))?;
        let mut byte = [0u8; 1];
        match tls.read(&mut byte).await {
            Ok(1) if byte[0] == ACCEPTED => {}
            Ok(0) => {
                return Err(TlsError::NotConfirmed {
                    detail: "it closed the connection".to_owned(),
                });
            }
            Ok(_) => {
                return Err(TlsError::NotConfirmed {
                    detail: format!("it sent the byte {:#04x}", byte[0]),
                });
            }
            Err(err) => return Err(TlsError::from_handshake(err, "the wait for the acceptance byte")),
        }
        tracing::debug!(server = %self.server, "TLS connection established");
        Ok(tls)
    }
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// The accepting side (usually a remote cell listening for its host):
/// presents its [`Identity`] and requires a client certificate that is one
/// of the pinned ones.
///
/// Cheap to clone: the rustls config is shared.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
    clients: Arc<[PeerCert]>,
}

impl TlsAcceptor {
    /// An acceptor that presents `me` and lets in only clients presenting
    /// one of `clients`. An empty list is an error
    /// ([`TlsError::NothingPinned`]).
    pub fn new(me: &Identity, clients: &[PeerCert]) -> Result<TlsAcceptor, TlsError> {
        if clients.is_empty() {
            return Err(TlsError::NothingPinned);
        }
        let provider: Arc<CryptoProvider> = Arc::new(provider());
        me.check(&provider)?;
        let verifier = PinnedClients::new(clients, provider.signature_verification_algorithms);
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(VERSIONS)
            .map_err(TlsError::Handshake)?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(me.chain(), me.key_der())
            .map_err(|err| TlsError::BadIdentity {
                detail: err.to_string(),
            })?;
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        Ok(TlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            clients: clients.into(),
        })
    }

    /// Runs the handshake over `stream` and confirms it to the client. On
    /// success, both certificates were the pinned ones;
    /// [`PeerIdentity::peer_fingerprint`] tells which client it was.
    ///
    /// There is no timeout here: wrap the call in `tokio::time::timeout` so
    /// a client that stops answering cannot hold it forever.
    pub async fn accept<S>(&self, stream: S) -> Result<tokio_rustls::server::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut tls = self
            .inner
            .accept(stream)
            .await
            .map_err(|err| TlsError::from_handshake(err, "the TLS handshake"))?;
        let confirm = async {
            tls.write_all(&[ACCEPTED]).await?;
            tls.flush().await
        };
        confirm
            .await
            .map_err(|err| TlsError::from_handshake(err, "sending the acceptance byte"))?;
        tracing::debug!(
            client = tls.peer_fingerprint().unwrap_or_default(),
            "TLS connection accepted"
        );
        Ok(tls)
    }
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

/// Who is on the other end of an established TLS stream.
pub trait PeerIdentity {
    /// The certificate the peer presented, `None` before a handshake
    /// completed. After [`TlsConnector::connect`] or [`TlsAcceptor::accept`]
    /// succeeded it is always one of the pinned certificates.
    fn peer_certificate(&self) -> Option<PeerCert>;

    /// The fingerprint of [`peer_certificate`](PeerIdentity::peer_certificate).
    fn peer_fingerprint(&self) -> Option<String> {
        self.peer_certificate().map(|cert| cert.fingerprint())
    }
}

impl<S> PeerIdentity for tokio_rustls::client::TlsStream<S> {
    fn peer_certificate(&self) -> Option<PeerCert> {
        first_cert(self.get_ref().1.peer_certificates())
    }
}

impl<S> PeerIdentity for tokio_rustls::server::TlsStream<S> {
    fn peer_certificate(&self) -> Option<PeerCert> {
        first_cert(self.get_ref().1.peer_certificates())
    }
}

fn first_cert(certs: Option<&[rustls::pki_types::CertificateDer<'static>]>) -> Option<PeerCert> {
    certs
        .and_then(|certs| certs.first())
        .map(|cert| PeerCert::from_der(cert.to_vec()))
}

/// The fingerprint of the certificate the peer of `stream` presented (see
/// [`PeerIdentity`]).
pub fn peer_fingerprint(stream: &impl PeerIdentity) -> Option<String> {
    stream.peer_fingerprint()
}
