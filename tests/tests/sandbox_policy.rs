//! What each part of the sandbox policy does on its own: the write
//! directory confines writes, read paths are read-only, and each layer
//! (namespaces, Landlock, seccomp) denies its share of the escape attempts
//! by itself.

mod sandbox;

use osmos_host::sandbox::{CellIds, Namespaces, SandboxPolicy};
use sandbox::{Fixture, HOST_SECRET, WRITE_INSIDE, prepared, run_probe};

#[test]
fn escape_writes_are_confined_to_the_write_dir() {
    let fx = Fixture::new("write");
    let args = [
        format!("write-outside={}", fx.outside_file.display()),
        format!("write-inside={}", fx.inside_file.display()),
    ];

    // With a write dir: inside only.
    let run = run_probe(prepared(&fx.default_policy()), &args);
    assert!(
        run.outcome(WRITE_INSIDE).allowed,
        "{:?}",
        run.outcome(WRITE_INSIDE)
    );
    assert_eq!(
        std::fs::read(&fx.inside_file).unwrap(),
        b"written by osmos-probe\n"
    );
    let outside = run.outcome("write_outside_write_dir");
    assert_eq!(outside.errno.as_deref(), Some("EACCES"), "{outside:?}");
    assert!(!fx.outside_file.exists());

    // Without one: nowhere.
    std::fs::remove_file(&fx.inside_file).unwrap();
    let run = run_probe(prepared(&SandboxPolicy::default()), &args);
    for attempt in [WRITE_INSIDE, "write_outside_write_dir"] {
        let o = run.outcome(attempt);
        assert_eq!(o.errno.as_deref(), Some("EACCES"), "{attempt}: {o:?}");
    }
    assert!(!fx.inside_file.exists() && !fx.outside_file.exists());
}

#[test]
fn escape_through_read_paths_is_read_only() {
    let fx = Fixture::new("read-paths");
    let policy = fx.default_policy().with_read_path(&fx.host_file);
    let args = [
        format!("read={}", fx.host_file.display()),
        // Try to overwrite the readable file.
        format!("write-outside={}", fx.host_file.display()),
    ];
    let run = run_probe(prepared(&policy), &args);
    let read = run.outcome("read_host_file");
    assert!(read.allowed, "{read:?}");
    assert_eq!(read.detail, format!("{} bytes", HOST_SECRET.len()));
    assert_eq!(
        run.outcome("write_outside_write_dir").errno.as_deref(),
        Some("EACCES")
    );
    for attempt in ["chmod_host_file", "chown_host_file", "set_times_host_file"] {
        assert_eq!(run.outcome(attempt).errno.as_deref(), Some("EPERM"), "{attempt}");
    }
    assert_eq!(std::fs::read(&fx.host_file).unwrap(), HOST_SECRET);
}

/// Each layer on its own denies its share: the namespaces cut the network,
/// Landlock confines files, TCP and signals, seccomp refuses system calls.
#[test]
fn escape_layers_each_deny_on_their_own() {
    let bare = |fx: &Fixture| SandboxPolicy {
        namespaces: Namespaces::NONE,
        landlock: false,
        seccomp: false,
        cell_ids: CellIds::Host,
        ..fx.default_policy()
    };

    // Namespaces alone: no network.
    let fx = Fixture::new("layer-ns");
    let policy = SandboxPolicy {
        namespaces: Namespaces::ALL,
        ..bare(&fx)
    };
    let run = run_probe(prepared(&policy), &fx.args());
    run.print("namespaces only");
    assert_eq!(run.outcome("tcp_connect").errno.as_deref(), Some("ENETUNREACH"));
    assert_eq!(
        run.outcome("abstract_unix_connect").errno.as_deref(),
        Some("ECONNREFUSED")
    );
    assert_eq!(run.info("net_interfaces_with_ipv4"), "0");
    assert!(run.outcome("read_host_file").allowed, "no Landlock in this run");

    // Landlock alone: files, TCP, signals and ptrace of the host.
    let fx = Fixture::new("layer-landlock");
    let policy = SandboxPolicy {
        landlock: true,
        ..bare(&fx)
    };
    let run = run_probe(prepared(&policy), &fx.args());
    run.print("landlock only");
    for (attempt, errno) in [
        ("read_host_file", "EACCES"),
        ("read_host_file_via_proc_self_root", "EACCES"),
        ("read_parent_status", "EACCES"),
        ("read_parent_environ", "EACCES"),
        ("write_outside_write_dir", "EACCES"),
        ("remove_host_file", "EACCES"),
        ("read_via_symlink_in_write_dir", "EACCES"),
        ("hardlink_host_file_into_write_dir", "EXDEV"),
        ("tcp_connect", "EACCES"),
        ("signal_parent", "EPERM"),
        ("ptrace_parent", "EPERM"),
        ("mount_tmpfs", "EPERM"),
        ("exec_shell", "EACCES"),
    ] {
        assert_eq!(run.outcome(attempt).errno.as_deref(), Some(errno), "{attempt}");
    }
    assert!(run.outcome(WRITE_INSIDE).allowed);

    // seccomp alone: the dangerous system calls.
    let fx = Fixture::new("layer-seccomp");
    let policy = SandboxPolicy {
        seccomp: true,
        ..bare(&fx)
    };
    let run = run_probe(prepared(&policy), &fx.args());
    run.print("seccomp only");
    for attempt in [
        "chmod_host_file",
        "chown_host_file",
        "set_times_host_file",
        "tcp_connect",
        "udp_socket",
        "raw_packet_socket",
        "netlink_socket",
        "unix_connect_outside",
        "abstract_unix_connect",
        "ptrace_parent",
        "pidfd_getfd_parent",
        "mount_tmpfs",
        "load_kernel_module",
        "bpf_map_create",
        "perf_event_open",
        "keyctl",
        "add_key",
        "io_uring_setup",
        "read_kernel_log",
        "clone_new_user_namespace",
        "unshare_user_namespace",
        "fork_bomb",
    ] {
        assert_eq!(run.outcome(attempt).errno.as_deref(), Some("EPERM"), "{attempt}");
    }
    assert_eq!(
        run.outcome("clone3_new_user_namespace").errno.as_deref(),
        Some("ENOSYS")
    );
    // Landlock is off: the filesystem is open.
    assert!(run.outcome("read_host_file").allowed);
}
