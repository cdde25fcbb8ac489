//! The seccomp filters: the deny list compiled with seccompiler, and a
//! hand-written guard for `clone3` and x32 system calls.

use std::collections::BTreeMap;
use std::ffi::c_long;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

use super::report::SandboxError;

/// `setxattrat(2)` (Linux 6.13): the same number on every architecture.
pub(super) const SYS_SETXATTRAT: c_long = 463;
/// `removexattrat(2)` (Linux 6.13).
pub(super) const SYS_REMOVEXATTRAT: c_long = 466;
/// `open_tree_attr(2)` (Linux 6.15).
pub(super) const SYS_OPEN_TREE_ATTR: c_long = 467;
/// The x32 ABI marks its system call numbers with this bit.
#[cfg(target_arch = "x86_64")]
pub(super) const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The maximum length of a classic BPF program (`BPF_MAXINSNS`).
pub(super) const BPF_MAXINSNS: usize = 4096;

/// When a denied system call is denied.
#[derive(Clone, Copy)]
pub(super) enum Deny {
    Always,
    /// When argument `index` (a 32-bit value) has all of `bits` set.
    ArgHasBits(u8, u64),
    /// When argument `index` (a 32-bit value) has none of `bits` set.
    ArgLacksBits(u8, u64),
    /// When argument `index` (a 32-bit value) differs from `value`.
    ArgNot(u8, u64),
    /// When argument `index` (a 32-bit value) equals `value`.
    ArgIs(u8, u64),
    /// When pointer argument `index` is not null.
    ArgNonNull(u8),
}

/// The main deny list: `(syscall, when)`. Matches return `EPERM`. Several
/// entries for one system call deny it when any of them matches.
pub(super) fn deny_list(no_subprocesses: bool) -> Vec<(c_long, Deny)> {
    use Deny::*;
    let newuser = libc::CLONE_NEWUSER as u64;
    // `TIOCSTI` is a `c_ulong` on some targets and a `c_int` on others.
    #[allow(clippy::unnecessary_cast)]
    let tiocsti = libc::TIOCSTI as u64;
    let mut list = vec![
        // Other processes' memory.
        (libc::SYS_ptrace, Always),
        (libc::SYS_process_vm_readv, Always),
        (libc::SYS_process_vm_writev, Always),
        (libc::SYS_pidfd_getfd, Always),
        // Mounts and the filesystem topology.
        (libc::SYS_mount, Always),
        (libc::SYS_umount2, Always),
        (libc::SYS_pivot_root, Always),
        (libc::SYS_chroot, Always),
        (libc::SYS_fsopen, Always),
        (libc::SYS_fsconfig, Always),
        (libc::SYS_fsmount, Always),
        (libc::SYS_fspick, Always),
        (libc::SYS_move_mount, Always),
        (libc::SYS_open_tree, Always),
        (SYS_OPEN_TREE_ATTR, Always),
        (libc::SYS_mount_setattr, Always),
        // Kernel attack surface.
        (libc::SYS_bpf, Always),
        (libc::SYS_perf_event_open, Always),
        (libc::SYS_userfaultfd, Always),
        (libc::SYS_io_uring_setup, Always),
        (libc::SYS_io_uring_enter, Always),
        (libc::SYS_io_uring_register, Always),
        (libc::SYS_kexec_load, Always),
        (libc::SYS_kexec_file_load, Always),
        (libc::SYS_init_module, Always),
        (libc::SYS_finit_module, Always),
        (libc::SYS_delete_module, Always),
        (libc::SYS_reboot, Always),
        (libc::SYS_swapon, Always),
        (libc::SYS_swapoff, Always),
        (libc::SYS_acct, Always),
        (libc::SYS_syslog, Always),
        (libc::SYS_keyctl, Always),
        (libc::SYS_add_key, Always),
        (libc::SYS_request_key, Always),
        // Namespaces: no new user namespace (clone3 is handled by the guard).
        (libc::SYS_setns, Always),
        (libc::SYS_unshare, ArgHasBits(0, newuser)),
        (libc::SYS_clone, ArgHasBits(0, newuser)),
        // Network: AF_UNIX only, no connect, no addressed sendto.
        (libc::SYS_socket, ArgNot(0, libc::AF_UNIX as u64)),
        (libc::SYS_socketpair, ArgNot(0, libc::AF_UNIX as u64)),
        (libc::SYS_connect, Always),
        (libc::SYS_sendto, ArgNonNull(4)),
        // Path-based metadata changes Landlock does not govern.
        (libc::SYS_open_by_handle_at, Always),
        (libc::SYS_fchmodat, Always),
        (libc::SYS_fchmodat2, Always),
        (libc::SYS_fchownat, Always),
        (libc::SYS_utimensat, ArgNonNull(1)),
        (libc::SYS_setxattr, Always),
        (libc::SYS_lsetxattr, Always),
        (SYS_SETXATTRAT, Always),
        (libc::SYS_removexattr, Always),
        (libc::SYS_lremovexattr, Always),
        (SYS_REMOVEXATTRAT, Always),
        // Terminal input injection.
        (libc::SYS_ioctl, ArgIs(1, tiocsti)),
    ];
    if no_subprocesses {
        list.push((libc::SYS_clone, ArgLacksBits(0, libc::CLONE_THREAD as u64)));
        #[cfg(target_arch = "x86_64")]
        list.extend([(libc::SYS_fork, Always), (libc::SYS_vfork, Always)]);
    }
    #[cfg(target_arch = "x86_64")]
    list.extend([
        (libc::SYS_chmod, Always),
        (libc::SYS_chown, Always),
        (libc::SYS_lchown, Always),
        (libc::SYS_utime, Always),
        (libc::SYS_utimes, Always),
        (libc::SYS_futimesat, Always),
    ]);
    list
}

/// Compiles the guard and the main deny list, in installation order.
pub(super) fn compile_seccomp(no_subprocesses: bool) -> Result<Vec<Vec<libc::sock_filter>>, SandboxError> {
    let arch =
        TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    let cond = |index: u8, op: SeccompCmpOp, value: u64, len: SeccompCmpArgLen| {
        SeccompCondition::new(index, len, op, value)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|e| SandboxError::Seccomp(e.to_string()))
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut unconditional = std::collections::BTreeSet::new();
    for (nr, when) in deny_list(no_subprocesses) {
        use SeccompCmpArgLen::{Dword, Qword};
        let rule = match when {
            Deny::Always => None,
            Deny::ArgHasBits(i, bits) => Some(cond(i, SeccompCmpOp::MaskedEq(bits), bits, Dword)?),
            Deny::ArgLacksBits(i, bits) => Some(cond(i, SeccompCmpOp::MaskedEq(bits), 0, Dword)?),
            Deny::ArgNot(i, v) => Some(cond(i, SeccompCmpOp::Ne, v, Dword)?),
            Deny::ArgIs(i, v) => Some(cond(i, SeccompCmpOp::Eq, v, Dword)?),
            Deny::ArgNonNull(i) => Some(cond(i, SeccompCmpOp::Ne, 0, Qword)?),
        };
        match rule {
            None => {
                unconditional.insert(nr);
            }
            Some(rule) => rules.entry(nr).or_default().push(rule),
        }
    }
    // An empty rule list matches the system call whatever its arguments.
    for nr in unconditional {
        rules.insert(nr, Vec::new());
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    let program: seccompiler::BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))?;
    let main: Vec<libc::sock_filter> = program
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let guard = guard_program(audit_arch());
    for p in [&guard, &main] {
        if p.is_empty() || p.len() > BPF_MAXINSNS {
            return Err(SandboxError::Seccomp(format!(
                "a BPF program of {} instructions",
                p.len()
            )));
        }
    }
    Ok(vec![guard, main])
}

/// `AUDIT_ARCH_*` of this build, see `linux/audit.h`.
pub(super) fn audit_arch() -> u32 {
    const LE64: u32 = 0x8000_0000 | 0x4000_0000;
    match std::env::consts::ARCH {
        "x86_64" => 62 | LE64,
        "aarch64" => 183 | LE64,
        "riscv64" => 243 | LE64,
        _ => 0,
    }
}

pub(super) const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
pub(super) const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
#[cfg(target_arch = "x86_64")]
pub(super) const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
pub(super) const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// Offsets in `struct seccomp_data`.
pub(super) const SECCOMP_DATA_NR: u32 = 0;
pub(super) const SECCOMP_DATA_ARCH: u32 = 4;

pub(super) fn bpf(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// `clone3` (and on x86-64 every x32 system call) returns `ENOSYS`; a foreign
/// architecture is left to the main filter, which kills it.
pub(super) fn guard_program(arch: u32) -> Vec<libc::sock_filter> {
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let allow = libc::SECCOMP_RET_ALLOW;
    let clone3 = libc::SYS_clone3 as u32;
    #[cfg(target_arch = "x86_64")]
    let program = vec![
        bpf(BPF_LD_W_ABS, SECCOMP_DATA_ARCH, 0, 0),
        bpf(BPF_JEQ_K, arch, 0, 4), // other arch: 6 (allow)
        bpf(BPF_LD_W_ABS, SECCOMP_DATA_NR, 0, 0),
        bpf(BPF_JGE_K, X32_SYSCALL_BIT, 1, 0), // x32: 5 (ENOSYS)
        bpf(BPF_JEQ_K, clone3, 0, 1),          // clone3: 5, else 6
        bpf(BPF_RET_K, enosys, 0, 0),
        bpf(BPF_RET_K, allow, 0, 0),
    ];
    #[cfg(not(target_arch = "x86_64"))]
    let program = vec![
        bpf(BPF_LD_W_ABS, SECCOMP_DATA_ARCH, 0, 0),
        bpf(BPF_JEQ_K, arch, 0, 3), // other arch: 5 (allow)
        bpf(BPF_LD_W_ABS, SECCOMP_DATA_NR, 0, 0),
        bpf(BPF_JEQ_K, clone3, 0, 1), // clone3: 4, else 5
        bpf(BPF_RET_K, enosys, 0, 0),
        bpf(BPF_RET_K, allow, 0, 0),
    ];
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seccomp_programs_compile_within_bounds() {
        for no_subprocesses in [false, true] {
            let programs = compile_seccomp(no_subprocesses).unwrap();
            assert_eq!(programs.len(), 2);
            for p in &programs {
                assert!(!p.is_empty() && p.len() <= BPF_MAXINSNS);
                // Every program ends in a return.
                assert_eq!(p.last().unwrap().code, BPF_RET_K);
            }
        }
    }
}
