//! [`TlsError`]: why credentials could not be made or loaded, or why a peer
//! was not let through the handshake, worded for the person who has to fix
//! it.
//!
//! The pinning verifiers (`pinning.rs`) cannot return a `TlsError` through
//! rustls: they return a [`Rejection`] wrapped in
//! `rustls::CertificateError::Other`, and [`TlsError::from_handshake`] digs
//! it back out of the `io::Error` tokio-rustls hands us.

use std::fmt;
use std::io;
use std::path::PathBuf;

use rustls::{AlertDescription, CertificateError};

/// Why a TLS credential could not be made or loaded, or why a TLS connection
/// was not established.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// Generating a key pair or a self-signed certificate failed.
    Generate {
        /// What rcgen reported.
        detail: String,
    },
    /// A PEM text did not hold what it should.
    BadPem {
        /// What the text should have held, e.g. "the identity's private key".
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// A certificate and private key do not belong together, or the key
    /// cannot be used for TLS.
    BadIdentity {
        /// What rustls reported.
        detail: String,
    },
    /// [`TlsAcceptor::new`](super::TlsAcceptor::new) was given no client
    /// certificate to pin: it could never let anyone in.
    NothingPinned,
    /// The peer's certificate is not a pinned one.
    NotPinned {
        /// The fingerprint of the certificate the peer presented.
        presented: String,
        /// The fingerprints of the pinned certificates.
        expected: Vec<String>,
    },
    /// The peer sent a certificate chain: osmos peers send exactly one
    /// self-signed certificate.
    ChainNotAllowed {
        /// The fingerprint of the peer's end-entity certificate.
        presented: String,
        /// How many further certificates it sent.
        intermediates: usize,
    },
    /// The client presented no certificate.
    NoClientCertificate,
    /// The peer refused our certificate: it sent a certificate alert.
    Refused {
        /// The TLS alert the peer sent.
        alert: AlertDescription,
    },
    /// The peer aborted the handshake with another TLS alert.
    PeerAlert {
        /// The TLS alert the peer sent.
        alert: AlertDescription,
    },
    /// The TLS handshake failed for another reason.
    Handshake(rustls::Error),
    /// The connection broke (or the peer closed it) during the handshake.
    Io {
        /// Which step was running: "the TLS handshake", "the acceptance byte".
        during: &'static str,
        /// What the socket reported.
        source: io::Error,
    },
    /// The acceptor completed the TLS handshake but did not confirm it with
    /// osmos's acceptance byte.
    NotConfirmed {
        /// What arrived instead.
        detail: String,
    },
    /// A credential file is missing.
    MissingFile {
        /// The file.
        path: PathBuf,
        /// What it should hold, e.g. "this side's private key".
        what: &'static str,
    },
    /// A credential file could not be read or written, or holds no usable
    /// PEM.
    File {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The private key file can be read by other users.
    KeyFileExposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Generate { detail } => {
                write!(f, "generating a self-signed certificate failed: {detail}")
            }
            TlsError::BadPem { what, detail } => write!(
                f,
                "{what} is not valid PEM: {detail}; pass the text written by Identity::cert_pem / key_pem or PeerCert::to_pem"
            ),
            TlsError::BadIdentity { detail } => write!(
                f,
                "the certificate and private key do not form a usable identity: {detail}; keep each identity.crt with the identity.key generated beside it"
            ),
            TlsError::NothingPinned => write!(
                f,
                "no client certificate is pinned: the acceptor would refuse every client; pass the cell's (or host's) certificate"
            ),
            TlsError::NotPinned { presented, expected } => write!(
                f,
                "the peer's certificate (fingerprint {presented}) is not the pinned one (expected {}): it was not issued for this host/cell pairing — regenerate the credentials and give each side its own",
                expected.join(" or ")
            ),
            TlsError::ChainNotAllowed {
                presented,
                intermediates,
            } => write!(
                f,
                "the peer sent a certificate chain (fingerprint {presented} plus {intermediates} more): osmos peers present one pinned self-signed certificate, not a CA-issued chain"
            ),
            TlsError::NoClientCertificate => write!(
                f,
                "the client presented no certificate: osmos requires mutual TLS; connect with osmos_session::tls::TlsConnector and the cell's credentials"
            ),
            TlsError::Refused { alert } => write!(
                f,
                "the peer refused our certificate (TLS alert {alert:?}): it pins another one — this side's credentials are not from this host/cell pairing; regenerate them"
            ),
            TlsError::PeerAlert { alert } => write!(
                f,
                "the peer aborted the TLS handshake (TLS alert {alert:?}): is it an osmos TLS endpoint of the same release?"
            ),
            TlsError::Handshake(err) => write!(f, "the TLS handshake failed: {err}"),
            TlsError::Io { during, source } => write!(
                f,
                "the connection failed during {during}: {source}; the peer may have refused our certificate, or it is not an osmos TLS endpoint"
            ),
            TlsError::NotConfirmed { detail } => write!(
                f,
                "the peer did not confirm the TLS connection ({detail}): it refused our certificate, or it is not an osmos TLS acceptor"
            ),
            TlsError::MissingFile { path, what } => write!(
                f,
                "the credential file {} ({what}) is missing: generate the credentials with osmos_session::tls::pair, write them with write_dir, and copy this side's directory here",
                path.display()
            ),
            TlsError::File { path, what, detail } => write!(
                f,
                "the credential file {} ({what}) is unusable: {detail}; regenerate the credentials with osmos_session::tls::pair",
                path.display()
            ),
            TlsError::KeyFileExposed { path, mode } => write!(
                f,
                "the private key file {} can be read by other users (mode {mode:o}): run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Handshake(err) => Some(err),
            TlsError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl TlsError {
    /// Whether this is a refusal (a certificate that is not the pinned one,
    /// or that the peer would not take): trying again cannot help, unlike a
    /// connection that broke during the handshake.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            TlsError::NotPinned { .. }
                | TlsError::ChainNotAllowed { .. }
                | TlsError::NoClientCertificate
                | TlsError::Refused { .. }
                | TlsError::PeerAlert { .. }
        )
    }

    /// As an `io::Error` for a stable conduit's connector: a refusal is
    /// [`io::ErrorKind::PermissionDenied`], which the conduit does not retry.
    pub fn into_io(self) -> io::Error {
        let kind = if self.is_refusal() {
            io::ErrorKind::PermissionDenied
        } else {
            io::ErrorKind::ConnectionAborted
        };
        io::Error::new(kind, self.to_string())
    }

    /// Turns what tokio-rustls reported for a failed handshake (or for the
    /// first read or write after it) into the error that says what happened:
    /// our verifier's rejection, a missing client certificate, the peer's
    /// alert, or the socket's failure.
    pub(crate) fn from_handshake(err: io::Error, during: &'static str) -> TlsError {
        let Some(tls) = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return TlsError::Io { during, source: err };
        };
        match tls {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                match other.0.downcast_ref::<Rejection>() {
                    Some(rejection) => rejection.clone().into(),
                    None => TlsError::Handshake(tls.clone()),
                }
            }
            rustls::Error::NoCertificatesPresented => TlsError::NoClientCertificate,
            rustls::Error::AlertReceived(alert) => alert_error(*alert),
            _ => TlsError::Handshake(tls.clone()),
        }
    }
}

/// The alerts a peer sends when it does not accept our certificate (RFC 8446
/// §6.2), as rustls maps its verifiers' errors to them.
fn alert_error(alert: AlertDescription) -> TlsError {
    use AlertDescription as A;
    match alert {
        A::BadCertificate
        | A::UnsupportedCertificate
        | A::CertificateRevoked
        | A::CertificateExpired
        | A::CertificateUnknown
        | A::UnknownCA
        | A::AccessDenied
        | A::CertificateRequired => TlsError::Refused { alert },
        _ => TlsError::PeerAlert { alert },
    }
}

/// Why a pinning verifier refused a certificate: carried through rustls
/// inside `CertificateError::Other` and turned back into a [`TlsError`].
#[derive(Clone, Debug)]
pub(crate) enum Rejection {
    /// See [`TlsError::NotPinned`].
    NotPinned {
        presented: String,
        expected: Vec<String>,
    },
    /// See [`TlsError::ChainNotAllowed`].
    Chain { presented: String, intermediates: usize },
}

impl From<Rejection> for TlsError {
    fn from(rejection: Rejection) -> TlsError {
        match rejection {
            Rejection::NotPinned { presented, expected } => TlsError::NotPinned { presented, expected },
            Rejection::Chain {
                presented,
                intermediates,
            } => TlsError::ChainNotAllowed {
                presented,
                intermediates,
            },
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        TlsError::from(self.clone()).fmt(f)
    }
}

impl std::error::Error for Rejection {}
