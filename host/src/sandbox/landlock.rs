//! The Landlock domain, planned in the parent: the handled rights and the
//! allow-list, each path opened `O_PATH`. The child builds its ruleset from
//! the plan with raw system calls (`super::child`).

use std::ffi::c_int;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{ABI, Access, AccessFs, AccessNet, BitFlags, Scope};

use super::child::{RulesetStep, create_ruleset};
use super::policy::SandboxPolicy;
use super::program::{ProgramDeps, inspect_program};
use super::report::SandboxError;

/// Standard shared library directories, allowed read-only when they exist.
pub(super) const LIBRARY_DIRS: [&str; 7] = [
    "/lib",
    "/lib32",
    "/lib64",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/local/lib",
];
/// Single files every dynamically linked program may need.
pub(super) const SYSTEM_READ_FILES: [&str; 3] = ["/etc/ld.so.cache", "/dev/urandom", "/dev/random"];

pub(super) const READ: &str = "read";
pub(super) const READ_EXECUTE: &str = "read+execute";
pub(super) const READ_WRITE: &str = "read+write";

/// The Landlock allow-list as reported: each path and the access label.
pub(super) type AllowList = Vec<(PathBuf, &'static str)>;

/// The descriptors of the rules are moved at or above this number, so that
/// an embedder moving stdio and a few bootstrap descriptors into low numbers
/// (with `dup2`, before `apply_in_child`) cannot replace them.
pub(super) const RULE_FD_FLOOR: c_int = 100;

/// `struct landlock_ruleset_attr` in its ABI 6 layout; the kernel accepts it
/// from older ABIs as long as the fields they lack are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RulesetAttr {
    pub(super) handled_access_fs: u64,
    pub(super) handled_access_net: u64,
    pub(super) scoped: u64,
}

/// What the child needs to build its Landlock domain. Each child builds its
/// own ruleset (raw system calls, no allocation) because one rule must name
/// the child's own `/proc/self`, which the parent cannot open for it, and a
/// ruleset shared between children would accumulate every child's rule.
#[derive(Debug)]
pub(super) struct LandlockPlan {
    pub(super) attr: RulesetAttr,
    /// Each allowed hierarchy, opened `O_PATH` in the parent, with its rights.
    pub(super) rules: Vec<(OwnedFd, u64)>,
    /// The rights on the calling process's own `/proc/self`.
    pub(super) proc_self: u64,
}

/// Opens `path` with `O_PATH` at or above [`RULE_FD_FLOOR`].
pub(super) fn open_rule_path(path: &Path) -> Result<(OwnedFd, bool), SandboxError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: io::Error| SandboxError::Path {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map_err(fail)?;
    let is_dir = file.metadata().map_err(fail)?.is_dir();
    let high = rustix::io::fcntl_dupfd_cloexec(&file, RULE_FD_FLOOR).map_err(|e| fail(e.into()))?;
    Ok((high, is_dir))
}

/// Plans the Landlock domain for `abi`: the handled rights and the
/// allow-list, each path opened `O_PATH`. Validates the plan by building a
/// ruleset once. Returns the plan and the list for the report.
pub(super) fn build_landlock(
    abi: i32,
    policy: &SandboxPolicy,
    program: &Path,
) -> Result<(LandlockPlan, AllowList), SandboxError> {
    // The ABI is the one the kernel reported, so that the report states
    // exactly what is enforced.
    let abi = ABI::from(abi);
    let handled = AccessFs::from_all(abi);
    let file_rights = AccessFs::from_file(abi);
    let read_dir: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let read_execute: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::Execute;
    let device_rw: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let write_dir_rights =
        handled & !(AccessFs::Execute | AccessFs::MakeChar | AccessFs::MakeBlock | AccessFs::IoctlDev);

    let mut rules: Vec<(PathBuf, BitFlags<AccessFs>, &'static str)> = Vec::new();

    let mut deps = ProgramDeps::default();
    inspect_program(program, 0, &mut deps)?;
    for exe in deps.executables {
        rules.push((exe, read_execute, READ_EXECUTE));
    }
    for dir in LIBRARY_DIRS.iter().map(PathBuf::from).chain(deps.library_dirs) {
        if dir.is_dir() {
            rules.push((dir, read_dir, READ));
        }
    }
    for file in SYSTEM_READ_FILES {
        if Path::new(file).exists() {
            rules.push((file.into(), AccessFs::ReadFile.into(), READ));
        }
    }
    rules.push(("/dev/null".into(), device_rw, READ_WRITE));
    for path in &policy.read_paths {
        rules.push((path.clone(), read_dir, READ));
    }
    if let Some(dir) = &policy.write_dir {
        if !dir.is_dir() {
            return Err(SandboxError::Path {
                path: dir.clone(),
                reason: "the write directory is not a directory".to_owned(),
            });
        }
        rules.push((dir.clone(), write_dir_rights, READ_WRITE));
    }

    let mut plan = LandlockPlan {
        attr: RulesetAttr {
            handled_access_fs: handled.bits(),
            handled_access_net: AccessNet::from_all(abi).bits(),
            scoped: Scope::from_all(abi).bits(),
        },
        rules: Vec::with_capacity(rules.len()),
        proc_self: (read_dir & handled).bits(),
    };
    let mut listed = Vec::with_capacity(rules.len() + 1);
    for (path, rights, label) in rules {
        let (fd, is_dir) = open_rule_path(&path)?;
        let mut rights = rights & handled;
        if !is_dir {
            rights &= file_rights;
        }
        plan.rules.push((fd, rights.bits()));
        listed.push((path, label));
    }
    listed.push((PathBuf::from("/proc/self"), READ));

    // Dry run in the parent (with the parent's /proc/self): any rule the
    // kernel refuses fails here, with its path, instead of in the child.
    match create_ruleset(&plan) {
        Ok(_validated) => {}
        Err((RulesetStep::Rule(i), e)) => {
            return Err(SandboxError::Path {
                path: listed[i].0.clone(),
                reason: format!("landlock_add_rule failed: {e}"),
            });
        }
        Err((step, e)) => return Err(SandboxError::Landlock(format!("{step:?}: {e}"))),
    }
    Ok((plan, listed))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::super::child::landlock_abi;
    use super::*;

    #[test]
    fn the_landlock_plan_opens_every_path_high_and_validates() {
        let Ok(abi) = landlock_abi() else {
            eprintln!("Landlock unavailable here: nothing to check");
            return;
        };
        let exe = std::env::current_exe().unwrap();
        let dir = std::env::temp_dir();
        let policy = SandboxPolicy::default().with_write_dir(&dir);
        let (plan, listed) = build_landlock(abi, &policy, &exe).unwrap();
        assert_eq!(listed.len(), plan.rules.len() + 1, "{listed:?}");
        assert_eq!(listed[0], (exe, READ_EXECUTE));
        assert_eq!(listed.last().unwrap(), &(PathBuf::from("/proc/self"), READ));
        assert!(listed.contains(&(dir, READ_WRITE)));
        for (fd, access) in &plan.rules {
            assert!(fd.as_raw_fd() >= RULE_FD_FLOOR);
            assert_ne!(*access, 0);
            assert_eq!(access & !plan.attr.handled_access_fs, 0, "only handled rights");
        }
        // The write directory is never executable.
        let write_rights = plan.rules.last().unwrap().1;
        assert_eq!(write_rights & AccessFs::Execute as u64, 0);

        let err = build_landlock(
            abi,
            &policy.with_read_path("/nonexistent/osmos"),
            Path::new("/bin/sh"),
        )
        .unwrap_err();
        assert!(
            matches!(&err, SandboxError::Path { path, .. } if path == Path::new("/nonexistent/osmos")),
            "{err}"
        );
    }
}
