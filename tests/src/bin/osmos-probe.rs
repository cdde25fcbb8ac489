//! `osmos-probe`: a hostile cell in miniature, for the sandbox tests.
//!
//! `osmos-probe escape key=value...` attempts one escape after another and
//! prints one line per attempt, `attempt <name> allowed [detail]` or
//! `attempt <name> denied <ERRNO> [detail]`, after `info <name> <value>`
//! lines describing its situation (PDEATHSIG, session, no_new_privs,
//! capabilities, network interfaces, rlimits). Keys (all optional; an
//! attempt whose key is missing is not made):
//!
//! - `read=<file>`: a host file outside the allow-list (read, symlink and
//!   hard link attempts, `chmod`, `chown`, `utimensat`);
//! - `write-outside=<path>`: a file to create outside the write directory;
//! - `write-inside=<path>`: a file to create inside the write directory;
//! - `write-dir=<dir>`: the write directory (symlink and hard link attempts);
//! - `remove=<file>`: a host file to delete;
//! - `tcp=<port>`: a TCP listener on 127.0.0.1;
//! - `unix=<path>`: a pathname unix socket listener outside the allow-list;
//! - `abstract=<name>`: an abstract unix socket listener;
//! - `mount=<dir>`: an empty directory to mount a tmpfs on (unmounted at once).
//!
//! The attempts that change the probe itself come last: taking another
//! group and user id (root's if it is not root, `nobody`'s if it is),
//! creating a user namespace, then replacing itself with `/bin/sh` (which
//! prints `attempt exec_shell allowed` if that works).
//!
//! `osmos-probe wait` prints `ready pid=<pid> ppid=<ppid> pdeathsig=<n>`,
//! then answers each `ping` line on stdin with `pong` until end of input.
//!
//! Every attempt is harmless when it succeeds: files are the test's own,
//! the tmpfs is unmounted, the fork bomb's children exit at once and are
//! reaped, ptrace uses `PTRACE_SEIZE` (the parent is not stopped; the probe's
//! exit detaches it), the signal sent to the parent is `SIGCONT`.

use std::ffi::{CString, c_int, c_long, c_void};
use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("escape") => escape(&args[1..]),
        Some("wait") => wait(),
        _ => {
            eprintln!(
                "osmos-probe: attempts sandbox escapes for the osmos sandbox tests.\n\
                 usage: osmos-probe escape [read=F write-outside=F write-inside=F write-dir=D \
                 remove=F tcp=PORT unix=PATH abstract=NAME mount=DIR]\n\
                 \x20      osmos-probe wait"
            );
            std::process::exit(2);
        }
    }
}

/// The value of `key=value` among the arguments.
fn arg<'a>(args: &'a [String], key: &str) -> Option<&'a str> {
    args.iter().find_map(|a| a.strip_prefix(key)?.strip_prefix('='))
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `Ok(ret)` for a successful raw call, `Err(errno)` for `-1`.
fn sys(ret: c_long) -> Result<c_long, i32> {
    if ret == -1 { Err(errno()) } else { Ok(ret) }
}

fn io_errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EUSERS => "EUSERS",
        libc::ENOKEY => "ENOKEY",
        _ => return format!("errno{e}"),
    };
    name.to_owned()
}

fn report(name: &str, outcome: Result<String, i32>) {
    match outcome {
        Ok(detail) if detail.is_empty() => println!("attempt {name} allowed"),
        Ok(detail) => println!("attempt {name} allowed {detail}"),
        Err(e) => println!("attempt {name} denied {}", errno_name(e)),
    }
}

fn info(name: &str, value: impl std::fmt::Display) {
    println!("info {name} {value}");
}

fn c_path(path: impl AsRef<Path>) -> CString {
    CString::new(path.as_ref().as_os_str().as_bytes()).expect("a path without NUL")
}

fn parent() -> libc::pid_t {
    // SAFETY: getppid cannot fail.
    unsafe { libc::getppid() }
}

fn escape(args: &[String]) {
    describe_situation();

    if let Some(file) = arg(args, "read") {
        report("read_host_file", read_file(Path::new(file)));
        report(
            "read_host_file_via_proc_self_root",
            read_file(&Path::new("/proc/self/root").join(file.trim_start_matches('/'))),
        );
        report("chmod_host_file", chmod_same_mode(file));
        report("chown_host_file", chown_same_owner(file));
        report("set_times_host_file", set_times(file));
        if let Some(dir) = arg(args, "write-dir") {
            report("read_via_symlink_in_write_dir", read_via_symlink(file, dir));
            report("hardlink_host_file_into_write_dir", hardlink(file, dir));
        }
    }
    if let Some(path) = arg(args, "write-outside") {
        report("write_outside_write_dir", write_file(Path::new(path)));
    }
    if let Some(path) = arg(args, "write-inside") {
        report("write_inside_write_dir", write_file(Path::new(path)));
    }
    if let Some(path) = arg(args, "remove") {
        report(
            "remove_host_file",
            std::fs::remove_file(path)
                .map(|()| String::new())
                .map_err(io_errno),
        );
    }
    let ppid = parent();
    let parent_proc = Path::new("/proc").join(ppid.to_string());
    report("read_parent_status", read_file(&parent_proc.join("status")));
    report("read_parent_environ", read_file(&parent_proc.join("environ")));
    if let Some(port) = arg(args, "tcp") {
        report("tcp_connect", tcp_connect(port.parse().expect("a port")));
    }
    report("udp_socket", socket(libc::AF_INET, libc::SOCK_DGRAM, 0));
    report(
        "raw_packet_socket",
        socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        ),
    );
    report(
        "netlink_socket",
        socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE),
    );
    if let Some(path) = arg(args, "unix") {
        report(
            "unix_connect_outside",
            std::os::unix::net::UnixStream::connect(path)
                .map(|_| String::new())
                .map_err(io_errno),
        );
    }
    if let Some(name) = arg(args, "abstract") {
        report("abstract_unix_connect", abstract_connect(name));
    }
    report("signal_parent", kill(ppid, 0));
    report("sigcont_parent", kill(ppid, libc::SIGCONT));
    report("ptrace_parent", ptrace_seize(ppid));
    report("pidfd_getfd_parent", pidfd_getfd(ppid));
    report("raise_rlimit", raise_nofile());
    report_fork_bomb(1000);
    if let Some(dir) = arg(args, "mount") {
        report("mount_tmpfs", mount_tmpfs(dir));
    }
    report("load_kernel_module", load_module());
    report("bpf_map_create", bpf_map_create());
    report("perf_event_open", perf_event_open());
    report("keyctl", keyctl());
    report("add_key", add_key());
    report("io_uring_setup", io_uring_setup());
    report("read_kernel_log", read_kernel_log());
    report("clone_new_user_namespace", clone_newuser());
    report("clone3_new_user_namespace", clone3_newuser());
    // These change the probe itself: last.
    report(
        "setgid_other_group",
        set_ids(libc::SYS_setresgid, unsafe_getgid()),
    );
    report("setuid_other_user", set_ids(libc::SYS_setresuid, unsafe_getuid()));
    // SAFETY: unshare takes an integer argument.
    report(
        "unshare_user_namespace",
        sys(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into()).map(|_| String::new()),
    );
    exec_shell();
}

fn describe_situation() {
    let mut pdeathsig: c_int = -1;
    // SAFETY: PR_GET_PDEATHSIG writes one int through the pointer.
    unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeathsig as *mut c_int) };
    info("pdeathsig", pdeathsig);
    // SAFETY: getsid/getpid/getuid cannot fail for the caller.
    let (sid, pid, uid) = unsafe { (libc::getsid(0), libc::getpid(), libc::getuid()) };
    info("session_leader", if sid == pid { "yes" } else { "no" });
    info("uid", uid);
    // SAFETY: getgid cannot fail; getpriority returns the nice value.
    let (gid, nice) = unsafe { (libc::getgid(), libc::getpriority(libc::PRIO_PROCESS, 0)) };
    info("gid", gid);
    info("nice", nice);
    // SAFETY: integer argument only.
    info("sched_policy", unsafe { libc::sched_getscheduler(0) });
    // SAFETY: integer arguments only.
    info("no_new_privs", unsafe {
        libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
    });
    // SAFETY: integer arguments only.
    info("seccomp_mode", unsafe {
        libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0)
    });
    info("cap_effective", format!("{:#x}", effective_capabilities()));
    match std::fs::read_dir("/proc/self/fd") {
        Ok(entries) => info("proc_self_fds", entries.count()),
        Err(e) => info("proc_self_fds", errno_name(io_errno(e))),
    }
    match interfaces_with_ipv4() {
        Ok(n) => info("net_interfaces_with_ipv4", n),
        Err(e) => info("net_interfaces_with_ipv4", errno_name(e)),
    }
    for (name, resource) in [
        ("rlimit_nproc", libc::RLIMIT_NPROC),
        ("rlimit_nofile", libc::RLIMIT_NOFILE),
        ("rlimit_core", libc::RLIMIT_CORE),
        ("rlimit_fsize", libc::RLIMIT_FSIZE),
        ("rlimit_data", libc::RLIMIT_DATA),
        ("rlimit_cpu", libc::RLIMIT_CPU),
    ] {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one struct rlimit.
        unsafe { libc::getrlimit(resource, &mut limit) };
        info(name, format!("{} {}", limit.rlim_cur, limit.rlim_max));
    }
}

/// The effective capability set (`capget(2)`, version 3).
fn effective_capabilities() -> u64 {
    let mut header = [0x2008_0522u32, 0];
    let mut data = [0u32; 6];
    // SAFETY: capget with a version 3 header writes two 3-word structs.
    let ret = unsafe { libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) };
    if ret != 0 {
        return u64::MAX;
    }
    u64::from(data[0]) | (u64::from(data[3]) << 32)
}

/// Interfaces with an IPv4 address in this network namespace (`SIOCGIFCONF`
/// on a unix socket: it answers for the socket's namespace).
fn interfaces_with_ipv4() -> Result<usize, i32> {
    #[repr(C)]
    struct IfConf {
        len: c_int,
        buf: *mut u8,
    }
    const IFREQ_SIZE: usize = 40;
    let fd = socket_fd(libc::AF_UNIX, libc::SOCK_DGRAM, 0)?;
    let mut buf = [0u8; IFREQ_SIZE * 64];
    let mut conf = IfConf {
        len: buf.len() as c_int,
        buf: buf.as_mut_ptr(),
    };
    // SAFETY: SIOCGIFCONF writes at most `conf.len` bytes into `buf` and
    // updates `conf.len`.
    let ret = sys(unsafe { libc::ioctl(fd, libc::SIOCGIFCONF, &mut conf as *mut IfConf) }.into());
    close(fd);
    ret.map(|_| conf.len as usize / IFREQ_SIZE)
}

fn close(fd: c_int) {
    // SAFETY: closes a descriptor this probe opened.
    unsafe { libc::close(fd) };
}

fn read_file(path: &Path) -> Result<String, i32> {
    let bytes = std::fs::read(path).map_err(io_errno)?;
    Ok(format!("{} bytes", bytes.len()))
}

fn write_file(path: &Path) -> Result<String, i32> {
    std::fs::write(path, b"written by osmos-probe\n")
        .map(|()| String::new())
        .map_err(io_errno)
}

fn chmod_same_mode(file: &str) -> Result<String, i32> {
    let mode = std::fs::metadata(file)
        .map(|m| m.mode() & 0o7777)
        .unwrap_or(0o644);
    // SAFETY: a valid C string and an integer mode.
    sys(unsafe { libc::chmod(c_path(file).as_ptr(), mode) }.into()).map(|_| String::new())
}

fn chown_same_owner(file: &str) -> Result<String, i32> {
    let (uid, gid) = std::fs::metadata(file)
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((0, 0));
    // SAFETY: a valid C string and integer ids.
    sys(unsafe { libc::chown(c_path(file).as_ptr(), uid, gid) }.into()).map(|_| String::new())
}

fn set_times(file: &str) -> Result<String, i32> {
    // SAFETY: a valid C string; a null `times` means "now".
    sys(unsafe { libc::utimensat(libc::AT_FDCWD, c_path(file).as_ptr(), std::ptr::null(), 0) }.into())
        .map(|_| String::new())
}

fn read_via_symlink(file: &str, dir: &str) -> Result<String, i32> {
    let link = Path::new(dir).join("probe-symlink");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(file, &link).map_err(io_errno)?;
    read_file(&link)
}

fn hardlink(file: &str, dir: &str) -> Result<String, i32> {
    let link = Path::new(dir).join("probe-hardlink");
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(file, &link).map_err(io_errno)?;
    read_file(&link)
}

fn socket_fd(domain: c_int, ty: c_int, protocol: c_int) -> Result<c_int, i32> {
    // SAFETY: integer arguments only.
    sys(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) }.into()).map(|fd| fd as c_int)
}

fn socket(domain: c_int, ty: c_int, protocol: c_int) -> Result<String, i32> {
    let fd = socket_fd(domain, ty, protocol)?;
    close(fd);
    Ok(String::new())
}

fn tcp_connect(port: u16) -> Result<String, i32> {
    let fd = socket_fd(libc::AF_INET, libc::SOCK_STREAM, 0)?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connects with a live, correctly sized sockaddr_in.
    let ret = sys(unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    }
    .into());
    close(fd);
    ret.map(|_| "connected to 127.0.0.1".to_owned())
}

fn abstract_connect(name: &str) -> Result<String, i32> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(io_errno)?;
    std::os::unix::net::UnixStream::connect_addr(&addr)
        .map(|_| String::new())
        .map_err(io_errno)
}

fn ptrace_seize(pid: libc::pid_t) -> Result<String, i32> {
    // SAFETY: PTRACE_SEIZE takes integer arguments; it does not stop the
    // tracee, and the probe's exit detaches it.
    sys(unsafe {
        libc::ptrace(
            libc::PTRACE_SEIZE,
            pid,
            std::ptr::null_mut::<c_void>(),
            std::ptr::null_mut::<c_void>(),
        )
    })
    .map(|_| String::new())
}

fn pidfd_getfd(pid: libc::pid_t) -> Result<String, i32> {
    // SAFETY: integer arguments only.
    let pidfd = sys(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })? as c_int;
    // SAFETY: integer arguments only.
    let fd = sys(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, 0, 0) });
    close(pidfd);
    let fd = fd? as c_int;
    close(fd);
    Ok("stole the parent's fd 0".to_owned())
}

fn kill(pid: libc::pid_t, signal: c_int) -> Result<String, i32> {
    // SAFETY: integer arguments only.
    sys(unsafe { libc::kill(pid, signal) }.into()).map(|_| String::new())
}

fn raise_nofile() -> Result<String, i32> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let raised = limit.rlim_max.saturating_add(1);
    let new = libc::rlimit {
        rlim_cur: raised,
        rlim_max: raised,
    };
    // SAFETY: setrlimit reads one struct rlimit.
    sys(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) }.into())
        .map(|_| format!("hard limit {} -> {raised}", limit.rlim_max))
}

/// Forks up to `attempts` children that exit at once, keeps them as zombies
/// (a zombie still counts against `RLIMIT_NPROC`) until a fork fails or all
/// are made, then reaps them all.
fn report_fork_bomb(attempts: usize) {
    let mut forked = 0usize;
    let mut failure = None;
    for _ in 0..attempts {
        // SAFETY: the probe is single-threaded; the child only calls _exit.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(0) }
            }
            -1 => {
                failure = Some(errno());
                break;
            }
            _ => forked += 1,
        }
    }
    for _ in 0..forked {
        let mut status = 0;
        // SAFETY: reaps one of our children.
        while unsafe { libc::waitpid(-1, &mut status, 0) } == -1 && errno() == libc::EINTR {}
    }
    match failure {
        Some(e) => println!("attempt fork_bomb denied {} forked={forked}", errno_name(e)),
        None => println!("attempt fork_bomb allowed forked={forked}"),
    }
}

fn mount_tmpfs(dir: &str) -> Result<String, i32> {
    let target = c_path(dir);
    // SAFETY: valid C strings; no data pointer.
    sys(unsafe {
        libc::mount(
            c"osmos-probe".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    }
    .into())?;
    // SAFETY: a valid C string.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    Ok("mounted and unmounted".to_owned())
}

fn load_module() -> Result<String, i32> {
    let null = std::fs::File::open("/dev/null").map_err(io_errno)?;
    use std::os::fd::AsRawFd;
    // SAFETY: a descriptor and an empty C string for the parameters.
    sys(unsafe { libc::syscall(libc::SYS_finit_module, null.as_raw_fd(), c"".as_ptr(), 0) })
        .map(|_| String::new())
}

fn bpf_map_create() -> Result<String, i32> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size,
    // max_entries, then zeros.
    let mut attr = [0u32; 18];
    attr[..4].copy_from_slice(&[2 /* BPF_MAP_TYPE_ARRAY */, 4, 4, 1]);
    // SAFETY: the kernel reads `size_of_val(&attr)` bytes from a live array.
    let fd = sys(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0, /* BPF_MAP_CREATE */
            attr.as_ptr(),
            size_of_val(&attr),
        )
    })?;
    close(fd as c_int);
    Ok(String::new())
}

fn perf_event_open() -> Result<String, i32> {
    // struct perf_event_attr (PERF_ATTR_SIZE_VER7 = 128 bytes): a software
    // task clock on this process, user space only.
    let mut attr = [0u64; 16];
    attr[0] = 1 /* PERF_TYPE_SOFTWARE */ | (128 << 32) /* size */;
    attr[1] = 1; // PERF_COUNT_SW_TASK_CLOCK
    attr[5] = 1 | (1 << 5) | (1 << 6); // disabled, exclude_kernel, exclude_hv
    // SAFETY: the kernel reads 128 bytes from a live array.
    let fd = sys(unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            0,
            -1,
            -1,
            8, /* CLOEXEC */
        )
    })?;
    close(fd as c_int);
    Ok(String::new())
}

fn keyctl() -> Result<String, i32> {
    // SAFETY: KEYCTL_GET_KEYRING_ID (0) of KEY_SPEC_SESSION_KEYRING (-3),
    // integer arguments only.
    sys(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) }).map(|id| format!("keyring {id}"))
}

fn add_key() -> Result<String, i32> {
    // SAFETY: valid C strings and a one-byte payload; KEY_SPEC_PROCESS_KEYRING
    // (-2) disappears with the probe.
    sys(unsafe {
        libc::syscall(
            libc::SYS_add_key,
            c"user".as_ptr(),
            c"osmos-probe".as_ptr(),
            c"x".as_ptr(),
            1usize,
            -2,
        )
    })
    .map(|id| format!("key {id}"))
}

fn io_uring_setup() -> Result<String, i32> {
    let mut params = [0u8; 120];
    // SAFETY: the kernel reads and writes struct io_uring_params (120 bytes).
    let fd = sys(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) })?;
    close(fd as c_int);
    Ok(String::new())
}

fn read_kernel_log() -> Result<String, i32> {
    // SAFETY: SYSLOG_ACTION_SIZE_BUFFER (10) reads no buffer.
    sys(unsafe { libc::klogctl(10, std::ptr::null_mut(), 0) }.into()).map(|size| format!("{size} bytes"))
}

fn reap(pid: c_long) {
    let mut status = 0;
    // SAFETY: reaps our own child.
    while unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) } == -1 && errno() == libc::EINTR {}
}

fn clone_newuser() -> Result<String, i32> {
    // SAFETY: a fork-like clone (no new stack) of a single-threaded process;
    // the child only calls _exit.
    let pid = sys(unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as c_long,
            0,
            0,
            0,
            0,
        )
    })?;
    if pid == 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) }
    }
    reap(pid);
    Ok(String::new())
}

fn clone3_newuser() -> Result<String, i32> {
    // struct clone_args (CLONE_ARGS_SIZE_VER0 = 64 bytes): flags, pidfd,
    // child_tid, parent_tid, exit_signal, stack, stack_size, tls.
    let mut args = [0u64; 8];
    args[0] = libc::CLONE_NEWUSER as u64;
    args[4] = libc::SIGCHLD as u64;
    // SAFETY: a fork-like clone3 (no new stack) of a single-threaded
    // process; the child only calls _exit.
    let pid = sys(unsafe { libc::syscall(libc::SYS_clone3, args.as_ptr(), size_of_val(&args)) })?;
    if pid == 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) }
    }
    reap(pid);
    Ok(String::new())
}

fn unsafe_getuid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

fn unsafe_getgid() -> u32 {
    // SAFETY: getgid cannot fail.
    unsafe { libc::getgid() }
}

/// Sets the real, effective and saved ids with `setresuid`/`setresgid`
/// (`syscall`) to another id than `current`: root's (0) when not root, else
/// `nobody`'s (65534).
fn set_ids(syscall: c_long, current: u32) -> Result<String, i32> {
    let target: u32 = if current == 0 { 65534 } else { 0 };
    // SAFETY: integer arguments only; the probe is single-threaded, so the
    // raw call changes the whole process.
    sys(unsafe { libc::syscall(syscall, target, target, target) }).map(|_| format!("{current} -> {target}"))
}

fn exec_shell() {
    let _ = std::io::stdout().flush();
    let argv = [
        c"sh".as_ptr(),
        c"-c".as_ptr(),
        c"echo attempt exec_shell allowed".as_ptr(),
        std::ptr::null(),
    ];
    // SAFETY: a valid path and a null-terminated argument vector of valid C
    // strings; returns only on failure.
    unsafe { libc::execv(c"/bin/sh".as_ptr(), argv.as_ptr()) };
    report("exec_shell", Err(errno()));
}

fn wait() {
    let mut pdeathsig: c_int = -1;
    // SAFETY: PR_GET_PDEATHSIG writes one int through the pointer.
    unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeathsig as *mut c_int) };
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    println!("ready pid={pid} ppid={} pdeathsig={pdeathsig}", parent());
    let _ = std::io::stdout().flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "ping" {
            println!("pong");
            let _ = std::io::stdout().flush();
        }
    }
}
