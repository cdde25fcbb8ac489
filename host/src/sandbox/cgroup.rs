//! Optional cgroup v2 limits ([`CgroupLimits`]): with a cgroup v2 directory
//! delegated to the host, each cell gets a child cgroup of its own, created
//! and written by the host (`memory.max`, `pids.max`, `cpu.max`), which the
//! child joins before it drops its ids, and which the host removes once the
//! cell's sandbox lease is dropped.
//!
//! Only directories the host created are ever written or removed; the
//! delegated directory itself is only read (its filesystem type and its
//! `cgroup.subtree_control`). See `cgroups(7)` and the kernel's
//! `Documentation/admin-guide/cgroup-v2.rst` ("Delegation").

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::landlock::RULE_FD_FLOOR;
use super::policy::CgroupLimits;
use super::report::SandboxError;

/// `CGROUP2_SUPER_MAGIC`, see `statfs(2)`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// A cgroup the host created for one cell; removed on drop (it is empty
/// by then when the cell's processes are gone; otherwise the removal fails
/// and is logged).
#[derive(Debug)]
pub struct CgroupLease {
    dir: PathBuf,
}

impl CgroupLease {
    /// The cell's cgroup directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for CgroupLease {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::warn!(cgroup = %self.dir.display(), error = %e, "could not remove a cell's cgroup");
        }
    }
}

/// Whether `dir` is a cgroup v2 directory with the controllers `limits`
/// needs enabled for its children; `Err` says why not and what to do.
pub(super) fn check_delegated(limits: &CgroupLimits) -> Result<(), String> {
    let dir = &limits.parent;
    let fs = rustix::fs::statfs(dir).map_err(|e| format!("cannot stat {}: {e}", dir.display()))?;
    #[allow(clippy::unnecessary_cast)] // the field's type differs between targets
    if fs.f_type as i64 != CGROUP2_SUPER_MAGIC {
        return Err(format!(
            "{} is not a cgroup v2 directory (cgroup v1 or another filesystem); give the host a \
             delegated cgroup v2 directory, or leave CgroupLimits out",
            dir.display()
        ));
    }
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control"))
        .map_err(|e| format!("cannot read {}/cgroup.subtree_control: {e}", dir.display()))?;
    for (wanted, controller) in [
        (limits.memory_max.is_some(), "memory"),
        (limits.pids_max.is_some(), "pids"),
        (limits.cpu_max.is_some(), "cpu"),
    ] {
        if wanted && !enabled.split_whitespace().any(|c| c == controller) {
            return Err(format!(
                "the {controller} controller is not enabled for the children of {} (its \
                 cgroup.subtree_control is `{}`); enable it where the cgroup is delegated \
                 (echo +{controller} > {}/cgroup.subtree_control)",
                dir.display(),
                enabled.trim(),
                dir.display()
            ));
        }
    }
    Ok(())
}

/// Creates the cell's cgroup under the delegated directory, writes its
/// limits, and opens its `cgroup.procs` (at or above [`RULE_FD_FLOOR`]) for
/// the child to join.
pub(super) fn create(limits: &CgroupLimits) -> Result<(CgroupLease, OwnedFd), SandboxError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let fail = |path: &Path, e: std::io::Error| SandboxError::Path {
        path: path.to_path_buf(),
        reason: format!("creating the cell's cgroup: {e}"),
    };
    let lease = loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = limits
            .parent
            .join(format!("osmos-cell-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => break CgroupLease { dir },
            // Left by an earlier host with this pid: not ours, never touched.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(fail(&dir, e)),
        }
    };
    let write = |file: &str, value: String| {
        let path = lease.dir.join(file);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .map_err(|e| fail(&path, e))
    };
    if let Some(bytes) = limits.memory_max {
        write("memory.max", bytes.to_string())?;
    }
    if let Some(pids) = limits.pids_max {
        write("pids.max", pids.to_string())?;
    }
    if let Some((quota, period)) = limits.cpu_max {
        write("cpu.max", format!("{quota} {period}"))?;
    }
    let procs = lease.dir.join("cgroup.procs");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .map_err(|e| fail(&procs, e))?;
    let fd = rustix::io::fcntl_dupfd_cloexec(&file, RULE_FD_FLOOR).map_err(|e| fail(&procs, e.into()))?;
    Ok((lease, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_not_cgroup_v2_is_refused_untouched() {
        let dir = std::env::temp_dir();
        let mut limits = CgroupLimits::new(&dir);
        limits.pids_max = Some(64);
        let err = check_delegated(&limits).unwrap_err();
        assert!(err.contains("is not a cgroup v2 directory"), "{err}");
    }
}
