//! The attack cell: serves [`osmos_tests::Attack`] honestly over its
//! segment, and attacks the host through everything else when asked
//! ([`osmos_tests::AttackKind`]): its stdout and stderr pipes, its log
//! records, its control socket. Each attack runs on a thread of its own, so
//! the cell keeps answering calls (and `progress`) while it attacks.
//!
//! Arguments: `--fail-at-start-if-exists PATH` makes the cell, if PATH
//! exists, write a 100 KiB stderr line full of terminal escapes and exit 3
//! before attaching; `--crash-on-add` does the same when `add` is called
//! (in every incarnation: a crash loop driven by the caller).

use std::io::Write as _;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use osmos_session::control::LogRecord;
use osmos_tests::{
    Attack, AttackDispatcher, AttackKind, CONTROL_GARBAGE_DONE, INVALID_UTF8_DONE, LONG_LINE_DONE,
};

/// How the current attack goes (shared with its thread).
#[derive(Default)]
struct Progress {
    done: AtomicU64,
    finished: AtomicBool,
    error: Mutex<String>,
}

impl Progress {
    fn fail(&self, what: impl std::fmt::Display) {
        let mut e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_empty() {
            *e = what.to_string();
        }
    }
}

struct Cell {
    progress: Arc<Progress>,
    crash_on_call: bool,
}

impl Attack for Cell {
    async fn add(&self, a: u32, b: u32) -> Result<u32, String> {
        if self.crash_on_call {
            crash_with_hostile_stderr();
        }
        Ok(a.wrapping_add(b))
    }

    async fn start(&self, kind: String, amount: u64) -> Result<(), String> {
        let kind = AttackKind::parse(&kind).ok_or_else(|| format!("no attack named {kind:?}"))?;
        if kind == AttackKind::Exit {
            std::process::exit(amount as i32);
        }
        let progress = self.progress.clone();
        std::thread::Builder::new()
            .name("attack".into())
            .spawn(move || {
                attack(kind, amount, &progress);
                // ORDERING: Release pairs with the Acquire load in
                // `progress`: the count and error are visible with it.
                progress.finished.store(true, Ordering::Release);
            })
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn progress(&self) -> Result<(u64, bool, String), String> {
        let p = &self.progress;
        // ORDERING: Acquire pairs with the Release store in `start`.
        let finished = p.finished.load(Ordering::Acquire);
        let error = p.error.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok((p.done.load(Ordering::Relaxed), finished, error))
    }
}

fn attack(kind: AttackKind, amount: u64, p: &Progress) {
    match kind {
        AttackKind::LongLine => long_line(amount, p),
        AttackKind::InvalidUtf8 => invalid_utf8(amount, p),
        AttackKind::StderrFlood => stderr_flood(amount, p),
        AttackKind::LogFlood => log_flood(amount, p),
        AttackKind::ControlGarbage => control_garbage(amount, p),
        AttackKind::Exit => {}
    }
}

fn long_line(amount: u64, p: &Progress) {
    let chunk = vec![b'x'; 64 << 10];
    let mut out = std::io::stdout().lock();
    let mut left = amount;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if let Err(e) = out.write_all(&chunk[..n]) {
            return p.fail(format!("stdout: {e}"));
        }
        left -= n as u64;
        p.done.fetch_add(n as u64, Ordering::Relaxed);
    }
    if let Err(e) = writeln!(out, "\n{LONG_LINE_DONE}").and_then(|()| out.flush()) {
        p.fail(format!("stdout: {e}"));
    }
}

fn invalid_utf8(amount: u64, p: &Progress) {
    for i in 0..amount {
        // Latin-1 "café", a lone continuation byte, a cut sequence, an
        // overlong encoding, a surrogate.
        let mut line = format!("line {i}: ").into_bytes();
        line.extend_from_slice(b"caf\xe9 \x80 \xe2\x82 \xc0\xaf \xed\xa0\x80\n");
        let r = std::io::stdout()
            .write_all(&line)
            .and_then(|()| std::io::stderr().write_all(&line));
        if let Err(e) = r {
            return p.fail(format!("write: {e}"));
        }
        p.done.fetch_add(1, Ordering::Relaxed);
    }
    // The same println! an honest cell uses: it must still work.
    println!("{INVALID_UTF8_DONE}");
    eprintln!("{INVALID_UTF8_DONE}");
    if let Err(e) = std::io::stdout().flush() {
        p.fail(format!("stdout: {e}"));
    }
}

fn stderr_flood(amount: u64, p: &Progress) {
    let mut buf = Vec::with_capacity(64 << 10);
    let mut err = std::io::stderr().lock();
    for i in 0..amount {
        let _ = writeln!(buf, "flood line {i}");
        if buf.len() > 60 << 10 || i + 1 == amount {
            if let Err(e) = err.write_all(&buf) {
                return p.fail(format!("stderr: {e}"));
            }
            buf.clear();
        }
        p.done.fetch_add(1, Ordering::Relaxed);
    }
}

fn log_flood(amount: u64, p: &Progress) {
    for i in 0..amount {
        tracing::info!(
            target: "evil\ntarget\x1b[31m",
            forged = "x\nINFO osmos_host: forged field",
            "line one\nINFO osmos_host::cell: cell 'sibling' exited with status 0\x1b[2J\x1b]0;pwned\x07\u{202e} {i}"
        );
        p.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// The control socket: the one `SOCK_SEQPACKET` socket among the cell's fds
/// (the SDK's logging layer holds a copy of the inherited fd 4).
fn control_socket() -> Option<RawFd> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .find(|&fd| {
            let mut ty: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: `ty` and `len` are valid for writes; a non-socket fd fails.
            let r = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_TYPE,
                    (&mut ty as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            r == 0 && ty == libc::SOCK_SEQPACKET
        })
}

/// Sends one packet, passing `fds` along when there are any.
fn send(sock: RawFd, data: &[u8], fds: &[RawFd], flags: libc::c_int) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = vec![0u64; 64];
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let bytes = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
        assert!(space <= control.len() * 8, "too many fds for one packet");
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer holds `space` bytes, room for one
        // header and `fds`; CMSG_FIRSTHDR/CMSG_DATA point inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(bytes) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        }
    }
    // SAFETY: `msg` points at live buffers for the duration of the call.
    let r = unsafe { libc::sendmsg(sock, &msg, flags | libc::MSG_NOSIGNAL) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn control_garbage(amount: u64, p: &Progress) {
    let Some(sock) = control_socket() else {
        return p.fail("no control socket among the cell's fds");
    };
    let record = |message: &str| {
        osmos_session::wire::encode(&LogRecord {
            level: 3,
            target: "attack".into(),
            message: message.into(),
        })
        .unwrap_or_default()
    };
    let valid = record("a valid record among the garbage");
    let oversized = vec![0x5au8; 64 << 10];
    let huge_len = {
        // A valid header, then a string length far past the packet.
        let mut v = vec![3u8, 6];
        v.extend_from_slice(b"attack");
        v.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        v
    };
    // Descriptors to pass: the cell's stdin (/dev/null), 16 times.
    let fds = [0 as RawFd; 16];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = [0u8; 200];
    for _ in 0..amount {
        for b in random.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        let packets: [(&[u8], &[RawFd]); 9] = [
            (b"", &[]),
            (b"\x01", &[]),
            (&random[..], &[]),
            (&oversized[..], &[]),
            (&valid[..valid.len() / 2], &[]),
            (&huge_len[..], &[]),
            (&valid[..], &fds[..]),
            (b"", &fds[..1]),
            (&valid[..], &[]),
        ];
        for (data, fds) in packets {
            // A full socket means the host is not reading this fast: fine.
            match send(sock, data, fds, libc::MSG_DONTWAIT) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return p.fail(format!("sendmsg: {e}")),
            }
        }
        p.done.fetch_add(1, Ordering::Relaxed);
    }
    // The last word waits for room: the host must still be reading.
    if let Err(e) = send(sock, &record(CONTROL_GARBAGE_DONE), &[], 0) {
        p.fail(format!("sendmsg (the final record): {e}"));
    }
}

/// Writes a 100 KiB stderr line full of terminal escapes, a last line, and exits 3.
fn crash_with_hostile_stderr() -> ! {
    let mut line = String::from("attack-cell: crashing \x1b[31m");
    line.push_str(&"\x1b[2J\u{202e}bad".repeat((100 << 10) / 16));
    eprintln!("{line}");
    eprintln!("attack-cell: crashing, the last line");
    std::process::exit(3);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let by_host = std::env::var_os("OSMOS_CELL_NAME").is_some();
    if let Some(i) = args.iter().position(|a| a == "--fail-at-start-if-exists")
        && by_host
        && std::path::Path::new(&args[i + 1]).exists()
    {
        crash_with_hostile_stderr();
    }
    let dispatcher = AttackDispatcher::new(Cell {
        progress: Arc::default(),
        crash_on_call: args.iter().any(|a| a == "--crash-on-add"),
    });
    osmos_plugin_sdk::run(
        "attack-cell: the osmos test suite's cell that attacks its host (output, logs, control socket)",
        move || dispatcher,
    );
}
