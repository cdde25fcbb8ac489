//! [`Identity`] (a self-signed certificate and its private key) and
//! [`PeerCert`] (a certificate pinned by the other side).
//!
//! An identity's certificate carries only a common name: nothing checks
//! names, dates or issuers, because the peer trusts exactly these DER bytes.
//! The fingerprint, SHA-256 of the DER, is what people compare and what the
//! errors print.

use std::fmt;
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use super::TlsError;

/// This side's credentials: a self-signed certificate and its private key
/// (ECDSA P-256 when generated here).
///
/// Give the other side [`certificate`](Identity::certificate) to pin; keep
/// the key on this side. `Debug` prints the fingerprint, never the key.
#[derive(Clone)]
pub struct Identity {
    /// The certificate, which the peer pins.
    cert: PeerCert,
    /// The private key as PEM (PKCS#8), for [`Identity::key_pem`].
    key_pem: String,
    /// The same key, decoded, for rustls.
    key_der: Arc<PrivateKeyDer<'static>>,
}

impl Identity {
    /// Generates a new key pair (ECDSA P-256) and a self-signed certificate
    /// whose common name is `name` (for people reading the certificate:
    /// nothing checks it).
    pub fn generate(name: &str) -> Result<Identity, TlsError> {
        let generate = |err: rcgen::Error| TlsError::Generate {
            detail: err.to_string(),
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).map_err(generate)?;
        // rcgen serializes key pairs as PKCS#8.
        let key_der = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(Identity {
            cert: PeerCert::from_der(cert.der().to_vec()),
            key_pem: key.serialize_pem(),
            key_der: Arc::new(key_der),
        })
    }

    /// Loads an identity from the PEM texts written by
    /// [`cert_pem`](Identity::cert_pem) and [`key_pem`](Identity::key_pem),
    /// checking that the key belongs to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Identity, TlsError> {
        let cert = PeerCert::from_pem(cert_pem)?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|err| TlsError::BadPem {
            what: "the identity's private key",
            detail: err.to_string(),
        })?;
        let identity = Identity {
            cert,
            key_pem: key_pem.to_owned(),
            key_der: Arc::new(key_der),
        };
        identity.check(&super::provider())?;
        Ok(identity)
    }

    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.to_pem()
    }

    /// The private key as PEM. Keep it secret: whoever has it can pose as
    /// this side.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The certificate, for the other side to pin.
    pub fn certificate(&self) -> PeerCert {
        self.cert.clone()
    }

    /// The certificate's fingerprint (see [`PeerCert::fingerprint`]).
    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint()
    }

    /// The private key, for a rustls config.
    pub(crate) fn key_der(&self) -> PrivateKeyDer<'static> {
        self.key_der.clone_key()
    }

    /// The certificate chain to present: the one self-signed certificate.
    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.der()]
    }

    /// Checks with `provider` that the key can sign and belongs to the
    /// certificate, so a bad identity fails when it is loaded or a config is
    /// built, not in every handshake.
    pub(crate) fn check(&self, provider: &CryptoProvider) -> Result<(), TlsError> {
        rustls::sign::CertifiedKey::from_der(self.chain(), self.key_der(), provider)
            .map(|_| ())
            .map_err(|err| TlsError::BadIdentity {
                detail: err.to_string(),
            })
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint())
            .field("key", &"[secret key elided]")
            .finish()
    }
}

/// A pinned certificate: the other side's certificate, trusted byte for
/// byte (DER) and nothing else.
///
/// `Display` shows the fingerprint.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PeerCert {
    /// The DER encoding, compared whole against what a peer presents.
    der: Arc<[u8]>,
}

impl PeerCert {
    /// Reads a certificate from PEM (the first `CERTIFICATE` block), as
    /// written by [`PeerCert::to_pem`] or [`Identity::cert_pem`].
    pub fn from_pem(pem: &str) -> Result<PeerCert, TlsError> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|err| TlsError::BadPem {
            what: "the certificate",
            detail: err.to_string(),
        })?;
        // An X.509 certificate is a DER SEQUENCE; anything else cannot be
        // what a peer presents.
        if der.first() != Some(&0x30) {
            return Err(TlsError::BadPem {
                what: "the certificate",
                detail: "the CERTIFICATE block does not hold a DER certificate".to_owned(),
            });
        }
        Ok(PeerCert::from_der(der.to_vec()))
    }

    /// The certificate as PEM.
    pub fn to_pem(&self) -> String {
        let body = base64(&self.der);
        let mut pem = String::with_capacity(body.len() + body.len() / 64 + 60);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            // base64 output is ASCII, so every chunk is valid UTF-8.
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// The SHA-256 of the certificate's DER, as 64 lowercase hex digits
    /// without colons.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.der)
    }

    /// The DER bytes.
    pub fn as_der(&self) -> &[u8] {
        &self.der
    }

    pub(crate) fn from_der(der: Vec<u8>) -> PeerCert {
        PeerCert { der: der.into() }
    }

    pub(crate) fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.der.to_vec())
    }
}

impl fmt::Display for PeerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

impl fmt::Debug for PeerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PeerCert").field(&self.fingerprint()).finish()
    }
}

/// SHA-256 of `der` as lowercase hex.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = Sha256::digest(der);
    let mut hex = String::with_capacity(64);
    for byte in digest.iter() {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Standard base64 with padding (RFC 4648 §4), for PEM bodies.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_does_not_print_the_key() {
        let identity = Identity::generate("debug-test").expect("generate");
        let debug = format!("{identity:?}");
        assert!(!debug.contains(identity.key_pem()), "{debug}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        let body = identity.key_pem().lines().nth(1).expect("a PEM body line");
        assert!(!debug.contains(body), "{debug}");
        assert!(debug.contains(&identity.fingerprint()), "{debug}");
    }

    #[test]
    fn pem_round_trips() {
        let identity = Identity::generate("pem-test").expect("generate");
        let again = Identity::from_pem(&identity.cert_pem(), identity.key_pem()).expect("reload");
        assert_eq!(again.certificate(), identity.certificate());
        let cert = PeerCert::from_pem(&identity.cert_pem()).expect("peer cert");
        assert_eq!(cert.fingerprint(), identity.fingerprint());
        assert_eq!(cert.fingerprint().len(), 64);
        assert_eq!(cert.to_string(), cert.fingerprint());
    }

    #[test]
    fn a_key_from_another_identity_is_refused() {
        let a = Identity::generate("a").expect("generate");
        let b = Identity::generate("b").expect("generate");
        let err = Identity::from_pem(&a.cert_pem(), b.key_pem()).expect_err("mismatched key");
        assert!(matches!(err, TlsError::BadIdentity { .. }), "{err}");
    }

    #[test]
    fn garbage_pem_is_an_error() {
        assert!(matches!(
            PeerCert::from_pem("not pem"),
            Err(TlsError::BadPem { .. })
        ));
        let identity = Identity::generate("g").expect("generate");
        assert!(matches!(
            Identity::from_pem(&identity.cert_pem(), "nope"),
            Err(TlsError::BadPem { .. })
        ));
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
