//! Credential directories: a host's and a cell's identity and pin, as files,
//! so a remote cell can be started by hand on another machine.
//!
//! [`pair`] generates both sides at once; each side's `write_dir` writes
//!
//! | file | holds | mode |
//! | --- | --- | --- |
//! | [`IDENTITY_CERT`] (`identity.crt`) | this side's certificate (PEM) | 0644 |
//! | [`IDENTITY_KEY`] (`identity.key`) | this side's private key (PEM) | 0600 |
//! | [`PEER_CERT`] (`peer.crt`) | the other side's certificate, pinned (PEM) | 0644 |
//!
//! and `read_dir` reads them back, refusing a key file other users can
//! read (as ssh does). Copy the cell's directory to the cell's machine; the
//! host's stays with the host.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Identity, PeerCert, TlsError};

/// The file name of this side's certificate.
pub const IDENTITY_CERT: &str = "identity.crt";
/// The file name of this side's private key (mode 0600).
pub const IDENTITY_KEY: &str = "identity.key";
/// The file name of the other side's certificate, which this side pins.
pub const PEER_CERT: &str = "peer.crt";

/// The host's credentials for one cell: the host's identity, and the cell's
/// certificate to pin.
#[derive(Clone, Debug)]
pub struct HostCredentials {
    /// The host's certificate and key.
    pub identity: Identity,
    /// The cell's certificate: the only one the host trusts for this cell.
    pub cell: PeerCert,
}

/// A cell's credentials: the cell's identity, and the host's certificate to
/// pin.
#[derive(Clone, Debug)]
pub struct CellCredentials {
    /// The cell's certificate and key.
    pub identity: Identity,
    /// The host's certificate: the only one the cell trusts.
    pub host: PeerCert,
}

/// Generates a fresh identity for a host and one for a cell, each pinning
/// the other. The names go into the certificates' common names, for people
/// reading them.
pub fn pair(host_name: &str, cell_name: &str) -> Result<(HostCredentials, CellCredentials), TlsError> {
    let host = Identity::generate(host_name)?;
    let cell = Identity::generate(cell_name)?;
    let host_creds = HostCredentials {
        cell: cell.certificate(),
        identity: host.clone(),
    };
    let cell_creds = CellCredentials {
        host: host.certificate(),
        identity: cell,
    };
    Ok((host_creds, cell_creds))
}

impl HostCredentials {
    /// Writes the host's credential files into `dir` (created with mode
    /// 0700 if missing), replacing any there.
    pub fn write_dir(&self, dir: impl AsRef<Path>) -> Result<(), TlsError> {
        write_files(dir.as_ref(), &self.identity, &self.cell)
    }

    /// Reads credential files written by [`HostCredentials::write_dir`].
    pub fn read_dir(dir: impl AsRef<Path>) -> Result<HostCredentials, TlsError> {
        let (identity, cell) = read_files(dir.as_ref(), "the cell's certificate, pinned by the host")?;
        Ok(HostCredentials { identity, cell })
    }
}

impl CellCredentials {
    /// Writes the cell's credential files into `dir` (created with mode
    /// 0700 if missing), replacing any there.
    pub fn write_dir(&self, dir: impl AsRef<Path>) -> Result<(), TlsError> {
        write_files(dir.as_ref(), &self.identity, &self.host)
    }

    /// Reads credential files written by [`CellCredentials::write_dir`].
    pub fn read_dir(dir: impl AsRef<Path>) -> Result<CellCredentials, TlsError> {
        let (identity, host) = read_files(dir.as_ref(), "the host's certificate, pinned by the cell")?;
        Ok(CellCredentials { identity, host })
    }
}

const WHAT_CERT: &str = "this side's certificate";
const WHAT_KEY: &str = "this side's private key";

fn write_files(dir: &Path, identity: &Identity, peer: &PeerCert) -> Result<(), TlsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|err| TlsError::File {
            path: dir.to_owned(),
            what: "the credential directory",
            detail: err.to_string(),
        })?;
    write_file(&dir.join(IDENTITY_KEY), WHAT_KEY, identity.key_pem(), 0o600)?;
    write_file(&dir.join(IDENTITY_CERT), WHAT_CERT, &identity.cert_pem(), 0o644)?;
    write_file(
        &dir.join(PEER_CERT),
        "the peer's certificate",
        &peer.to_pem(),
        0o644,
    )
}

/// Writes `contents` to `path` with permission bits `mode`, set before the
/// contents are written (also when the file already existed).
fn write_file(path: &Path, what: &'static str, contents: &str, mode: u32) -> Result<(), TlsError> {
    let fail = |err: std::io::Error| TlsError::File {
        path: path.to_owned(),
        what,
        detail: err.to_string(),
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(fail)?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(fail)?;
    file.write_all(contents.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)
}

fn read_files(dir: &Path, what_peer: &'static str) -> Result<(Identity, PeerCert), TlsError> {
    let cert_path = dir.join(IDENTITY_CERT);
    let key_path = dir.join(IDENTITY_KEY);
    let peer_path = dir.join(PEER_CERT);
    let cert_pem = read_file(&cert_path, WHAT_CERT)?;
    let key_pem = read_file(&key_path, WHAT_KEY)?;
    let peer_pem = read_file(&peer_path, what_peer)?;

    let mode = fs::metadata(&key_path)
        .map_err(|err| TlsError::File {
            path: key_path.clone(),
            what: WHAT_KEY,
            detail: err.to_string(),
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyFileExposed {
            path: key_path,
            mode: mode & 0o7777,
        });
    }

    let peer = PeerCert::from_pem(&peer_pem).map_err(|err| bad_file(peer_path, what_peer, err))?;
    // Name the file that is wrong: a bad certificate, a bad key, or a pair
    // that does not belong together.
    PeerCert::from_pem(&cert_pem).map_err(|err| bad_file(cert_path.clone(), WHAT_CERT, err))?;
    let identity = Identity::from_pem(&cert_pem, &key_pem).map_err(|err| match err {
        TlsError::BadIdentity { .. } => bad_file(key_path, "the private key of identity.crt", err),
        err => bad_file(key_path, WHAT_KEY, err),
    })?;
    Ok((identity, peer))
}

fn read_file(path: &Path, what: &'static str) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => TlsError::MissingFile {
            path: path.to_owned(),
            what,
        },
        _ => TlsError::File {
            path: path.to_owned(),
            what,
            detail: err.to_string(),
        },
    })
}

fn bad_file(path: PathBuf, what: &'static str, err: TlsError) -> TlsError {
    TlsError::File {
        path,
        what,
        detail: err.to_string(),
    }
}
