//! Finding cells: every plugin binary in a directory, optionally checked
//! against a manifest of sha256 digests.
//!
//! A host that loads "whatever is in `plugins/`" wants three things: each
//! executable found, named after its file; nothing that is not an
//! executable regular file (editor backups, hidden files, directories,
//! symlinks that lead elsewhere); and, when the directory is not trusted,
//! only binaries whose digest is on a list the host trusts. [`Discovery`]
//! scans once and says what it found and what it refused, and why;
//! [`Found::builder`] gives a [`CellBuilder`] that is pinned to the digest
//! seen at the scan ([`CellBuilder::expect_sha256`]), so a binary swapped
//! between the scan and the spawn is not executed.
//!
//! The manifest is the format `sha256sum` writes and reads: one line per
//! binary, `<64 hex digits>  <file name>` (one or two spaces, or a space and
//! `*`); blank lines and lines starting with `#` are ignored.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::cell::CellBuilder;

/// An executable found by a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The cell's name: the file name.
    pub name: String,
    /// The binary.
    pub path: PathBuf,
    /// Its sha256 at the scan, lowercase hex.
    pub sha256: String,
}

impl Found {
    /// A builder for this cell, named after the file and pinned to the
    /// digest seen at the scan.
    pub fn builder(&self) -> CellBuilder {
        CellBuilder::new(&self.path)
            .name(self.name.clone())
            .expect_sha256(self.sha256.clone())
    }
}

/// A file a scan did not take, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The file.
    pub path: PathBuf,
    /// Why, in words.
    pub reason: String,
}

/// What a scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// The cells, by name.
    pub found: Vec<Found>,
    /// Files that look like plugins but were not taken: not executable,
    /// not on the manifest, a different digest, unreadable. (Hidden files
    /// and directories are skipped without a word.)
    pub refused: Vec<Refused>,
}

/// Why a scan could not run at all.
#[derive(Debug)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The directory cannot be read.
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The manifest cannot be read or has a malformed line.
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong, with the line number.
        detail: String,
    },
}

impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoveryError::Directory { dir, source } => {
                write!(f, "cannot read the plugin directory {}: {source}", dir.display())
            }
            DiscoveryError::Manifest { path, detail } => write!(
                f,
                "the manifest {} is unusable: {detail}; write it with `sha256sum <binaries> > {}`",
                path.display(),
                path.display()
            ),
        }
    }
}

impl std::error::Error for DiscoveryError {}

/// Scans a directory for cell binaries (see the module docs).
#[derive(Clone, Debug)]
pub struct Discovery {
    dir: PathBuf,
    manifest: Option<(PathBuf, HashMap<String, String>)>,
}

impl Discovery {
    /// Every executable in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Discovery {
        Discovery {
            dir: dir.into(),
            manifest: None,
        }
    }

    /// Takes only binaries listed in the manifest at `path` with the digest
    /// given there.
    pub fn manifest(mut self, path: impl AsRef<Path>) -> Result<Discovery, DiscoveryError> {
        let path = path.as_ref().to_path_buf();
        let bad = |detail: String| DiscoveryError::Manifest {
            path: path.clone(),
            detail,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let mut digests = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (digest, rest) = line
                .split_once(' ')
                .ok_or_else(|| bad(format!("line {}: expected `<sha256>  <file name>`", n + 1)))?;
            let name = rest.trim_start_matches([' ', '*']);
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) || name.is_empty() {
                return Err(bad(format!(
                    "line {}: expected `<sha256>  <file name>`, got `{line}`",
                    n + 1
                )));
            }
            // `sha256sum` may list paths: the file name is what is matched.
            let name = Path::new(name)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.to_string());
            digests.insert(name, digest.to_ascii_lowercase());
        }
        self.manifest = Some((path, digests));
        Ok(self)
    }

    /// Scans the directory now, in file-name order.
    pub fn scan(&self) -> Result<Scan, DiscoveryError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| DiscoveryError::Directory {
            dir: self.dir.clone(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        let mut scan = Scan::default();
        for path in paths {
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let refuse = |reason: String| Refused {
                path: path.clone(),
                reason,
            };
            // Not followed: a symlink may lead anywhere.
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    scan.refused
                        .push(refuse(format!("cannot read its metadata: {e}")));
                    continue;
                }
            };
            if meta.is_dir() {
                continue;
            }
            if meta.file_type().is_symlink() {
                scan.refused.push(refuse(
                    "a symbolic link (not followed; put the binary itself here)".into(),
                ));
                continue;
            }
            if !meta.is_file() {
                scan.refused.push(refuse("not a regular file".into()));
                continue;
            }
            if meta.permissions().mode() & 0o111 == 0 {
                scan.refused
                    .push(refuse("not executable (chmod +x it to load it)".into()));
                continue;
            }
            let sha256 = match std::fs::File::open(&path).and_then(|mut f| crate::spawn::sha256_of(&mut f)) {
                Ok(d) => d,
                Err(e) => {
                    scan.refused.push(refuse(format!("cannot be read: {e}")));
                    continue;
                }
            };
            if let Some((manifest, digests)) = &self.manifest {
                match digests.get(&name) {
                    None => {
                        scan.refused.push(refuse(format!(
                            "not listed in the manifest {}",
                            manifest.display()
                        )));
                        continue;
                    }
                    Some(expected) if *expected != sha256 => {
                        scan.refused.push(refuse(format!(
                            "its sha256 is {sha256}, the manifest {} says {expected} (rebuilt or tampered with?)",
                            manifest.display()
                        )));
                        continue;
                    }
                    Some(_) => {}
                }
            }
            scan.found.push(Found { name, path, sha256 });
        }
        Ok(scan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn file(dir: &Path, name: &str, body: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// A binary replaced between the scan and the spawn is not executed.
    #[tokio::test]
    async fn the_builder_is_pinned_to_the_digest_seen_at_the_scan() {
        let dir = Dir(std::env::temp_dir().join(format!("osmos-discovery-pin-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).unwrap();
        file(&dir.0, "plugin", b"the binary that was scanned", 0o755);
        let scan = Discovery::new(&dir.0).scan().unwrap();
        let found = scan.found[0].clone();
        file(&dir.0, "plugin", b"a binary swapped in later", 0o755);
        match found.builder().spawn().await {
            Err(crate::HostError::ChecksumMismatch { expected, .. }) => assert_eq!(expected, found.sha256),
            Err(e) => panic!("expected a checksum mismatch, got {e}"),
            Ok(_) => panic!("a swapped binary was spawned"),
        }
    }

    fn sha(body: &[u8]) -> String {
        crate::spawn::sha256_of(&mut &body[..]).unwrap()
    }

    #[test]
    fn finds_executables_refuses_the_rest_and_checks_the_manifest() {
        let dir = Dir(std::env::temp_dir().join(format!("osmos-discovery-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(dir.0.join("subdir")).unwrap();
        file(&dir.0, "alpha", b"alpha binary", 0o755);
        file(&dir.0, "beta", b"beta binary", 0o755);
        file(&dir.0, "notes.txt", b"not a plugin", 0o644);
        file(&dir.0, ".hidden", b"skipped", 0o755);
        std::os::unix::fs::symlink("/bin/sh", dir.0.join("sh-link")).unwrap();

        let scan = Discovery::new(&dir.0).scan().unwrap();
        let names: Vec<&str> = scan.found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["alpha", "beta"]);
        assert_eq!(scan.found[0].sha256, sha(b"alpha binary"));
        let why = |name: &str| {
            scan.refused
                .iter()
                .find(|r| r.path.ends_with(name))
                .map(|r| r.reason.clone())
                .unwrap_or_default()
        };
        assert!(why("notes.txt").contains("not executable"), "{:?}", scan.refused);
        assert!(why("sh-link").contains("symbolic link"), "{:?}", scan.refused);
        assert_eq!(
            scan.refused.len(),
            2,
            "hidden files and directories are skipped: {:?}",
            scan.refused
        );

        // A manifest: alpha listed right, beta with another digest, gamma absent.
        file(&dir.0, "gamma", b"gamma binary", 0o755);
        let manifest = dir.0.join(".manifest");
        std::fs::write(
            &manifest,
            format!(
                "# trusted plugins\n{}  alpha\n{} *plugins/beta\n",
                sha(b"alpha binary"),
                sha(b"something else")
            ),
        )
        .unwrap();
        let scan = Discovery::new(&dir.0)
            .manifest(&manifest)
            .unwrap()
            .scan()
            .unwrap();
        let names: Vec<&str> = scan.found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["alpha"]);
        let reasons: Vec<&str> = scan.refused.iter().map(|r| r.reason.as_str()).collect();
        assert!(reasons.iter().any(|r| r.contains("tampered")), "{reasons:?}");
        assert!(reasons.iter().any(|r| r.contains("not listed")), "{reasons:?}");

        std::fs::write(&manifest, "not a digest line\n").unwrap();
        let e = Discovery::new(&dir.0)
            .manifest(&manifest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("sha256sum"), "{e}");
        let e = Discovery::new(dir.0.join("missing"))
            .scan()
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the plugin directory"), "{e}");
    }
}
