//! The two certificate verifiers: trust by pinning, nothing else.
//!
//! Each accepts a peer whose end-entity certificate is, byte for byte (DER),
//! one of the pinned certificates, and sent with no intermediates. There is
//! no CA, no name check, no validity dates, no revocation: the pin replaces
//! all of them, as in HashiCorp go-plugin's AutoMTLS. The certificate only
//! binds a public key; possession of the matching private key is proven by
//! the handshake signature, checked with the ring provider's
//! `signature_verification_algorithms` exactly as rustls's own verifiers do.
//!
//! A refusal is a [`Rejection`] inside `CertificateError::Other`, so that
//! `TlsError::from_handshake` can name both fingerprints; rustls answers it
//! with the `certificate_unknown` alert.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};

use super::PeerCert;
use super::error::Rejection;
use super::identity::fingerprint;

/// Accepts `end_entity` if it is one of `pinned` and came alone.
fn check_pinned(
    pinned: &[PeerCert],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), rustls::Error> {
    let rejection = if !intermediates.is_empty() {
        Rejection::Chain {
            presented: fingerprint(end_entity),
            intermediates: intermediates.len(),
        }
    } else if pinned.iter().any(|cert| cert.as_der() == end_entity.as_ref()) {
        return Ok(());
    } else {
        Rejection::NotPinned {
            presented: fingerprint(end_entity),
            expected: pinned.iter().map(PeerCert::fingerprint).collect(),
        }
    };
    Err(rustls::Error::InvalidCertificate(CertificateError::Other(
        OtherError(Arc::new(rejection)),
    )))
}

/// The client's verifier of the server: one pinned certificate, any name.
#[derive(Debug)]
pub(crate) struct PinnedServer {
    /// The server's certificate: one element, a slice for `check_pinned`.
    pinned: [PeerCert; 1],
    /// The provider's handshake signature algorithms.
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServer {
    pub(crate) fn new(server: &PeerCert, algorithms: WebPkiSupportedAlgorithms) -> PinnedServer {
        PinnedServer {
            pinned: [server.clone()],
            algorithms,
        }
    }
}

impl ServerCertVerifier for PinnedServer {
    /// The pin is the whole check: the server name (always the fixed SNI),
    /// OCSP and the time are ignored.
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_pinned(&self.pinned, end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server's verifier of clients: mandatory client authentication
/// against one or more pinned certificates.
#[derive(Debug)]
pub(crate) struct PinnedClients {
    /// The accepted client certificates; never empty (`TlsAcceptor::new`
    /// refuses an empty list).
    pinned: Vec<PeerCert>,
    /// The provider's handshake signature algorithms.
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedClients {
    pub(crate) fn new(clients: &[PeerCert], algorithms: WebPkiSupportedAlgorithms) -> PinnedClients {
        debug_assert!(!clients.is_empty());
        PinnedClients {
            pinned: clients.to_vec(),
            algorithms,
        }
    }
}

impl ClientCertVerifier for PinnedClients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: the client has exactly one certificate to offer.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// The pin is the whole check: the time is ignored.
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_pinned(&self.pinned, end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
