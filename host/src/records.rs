//! The control socket: the cell's log records, read as hostile input.
//!
//! The cell sends one [`LogRecord`] per `SOCK_SEQPACKET` packet (see
//! [`osmos_session::control`]). The host reads them with `recvmsg` into one
//! reused buffer of [`MAX_LOG_RECORD`] bytes and:
//!
//! - gives the kernel **no room for ancillary data**: file descriptors a
//!   cell passes (`SCM_RIGHTS`) are never installed in the host's fd table;
//!   the kernel releases them and flags the packet `MSG_CTRUNC`, and the
//!   packet is refused;
//! - refuses a packet that is empty, longer than the buffer (`MSG_TRUNC`:
//!   the kernel drops the rest), or not a decodable record; nothing of a
//!   refused packet is kept, and the host says how many it refused in the
//!   cell's drop summary;
//! - tells the end of the socket (the cell closed it, or died) from an empty
//!   packet by `POLLRDHUP`, so no packet shape stops the reading;
//! - stops reading while the cell's log rate is used up (until its bucket
//!   holds a token again, at least [`MIN_PAUSE`]), and reads at most
//!   [`READS_PER_TOKEN`] times the cell's log rate (plus its burst) packets
//!   per second whatever they hold. Past that it leaves the packets in the
//!   socket, whose kernel buffer is bounded: the cell's own non-blocking
//!   sends then fail, and a cell that floods loses only its own logs (the
//!   host counts as dropped the records it read and found no token for,
//!   one per pause).
//!
//! Records that pass are re-emitted under target `osmos::cell` with the
//! cell's name, their target and message escaped and bounded.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use osmos_session::control::{LogRecord, MAX_LOG_RECORD};
use tokio::io::unix::AsyncFd;

use crate::logs::{CELL_TARGET, Kind, LogGate, escape};

/// How many packets the host reads per token of the cell's log rate.
pub(crate) const READS_PER_TOKEN: u32 = 16;
/// Longest record target forwarded, in bytes (a longer one is cut).
const MAX_TARGET: usize = 128;
/// Packets read in a row before the task yields to the runtime.
const BATCH: usize = 64;
/// Shortest pause in reading when the cell's log rate is used up.
const MIN_PAUSE: Duration = Duration::from_millis(10);

/// What one `recvmsg` gave.
enum Packet {
    /// A packet of this many bytes, and whether it was cut short or carried
    /// ancillary data.
    Data {
        len: usize,
        truncated: bool,
        ancillary: bool,
    },
    /// Nothing to read now.
    WouldBlock,
    /// The cell's end is closed: nothing more will come.
    End,
}

/// Receives one packet into `buf` without blocking and without room for
/// ancillary data (recvmsg(2), unix(7): `SCM_RIGHTS` that do not fit are
/// released by the kernel and the packet flagged `MSG_CTRUNC`).
fn recv_packet(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Packet> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no control buffer).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    loop {
        // SAFETY: `msg` points at one iovec over `buf`, valid for writes of
        // its length, and has no name or control buffer.
        let n = unsafe {
            libc::recvmsg(
                fd.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => return Ok(Packet::WouldBlock),
                _ => return Err(e),
            }
        }
        let truncated = msg.msg_flags & libc::MSG_TRUNC != 0;
        let ancillary = msg.msg_flags & libc::MSG_CTRUNC != 0;
        if n == 0 && !truncated && !ancillary && peer_closed(fd) {
            return Ok(Packet::End);
        }
        return Ok(Packet::Data {
            len: n as usize,
            truncated,
            ancillary,
        });
    }
}

/// Whether the peer of `fd` has closed (or shut down) its end, which a
/// zero-byte read alone cannot tell from an empty packet (poll(2), `POLLRDHUP`).
fn peer_closed(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Re-emits one record at its level, escaped.
pub(crate) fn emit(cell: &str, rec: &LogRecord) {
    let mut target = rec.target.as_str();
    if target.len() > MAX_TARGET {
        let mut end = MAX_TARGET;
        while !target.is_char_boundary(end) {
            end -= 1;
        }
        target = &target[..end];
    }
    let from = escape(target);
    let msg = escape(&rec.message);
    match rec.level {
        1 => tracing::error!(target: CELL_TARGET, cell = %cell, from, "{msg}"),
        2 => tracing::warn!(target: CELL_TARGET, cell = %cell, from, "{msg}"),
        3 => tracing::info!(target: CELL_TARGET, cell = %cell, from, "{msg}"),
        4 => tracing::debug!(target: CELL_TARGET, cell = %cell, from, "{msg}"),
        _ => tracing::trace!(target: CELL_TARGET, cell = %cell, from, "{msg}"),
    }
}

/// Reads the cell's control socket until its end, forwarding the records
/// that pass and refusing the rest (see the module docs).
pub(crate) fn forward(gate: Arc<LogGate>, control: OwnedFd) {
    // SAFETY: `control` is an owned, open descriptor; the AsyncFd owns it,
    // so it stays open and refers to the same socket for its lifetime.
    let Ok(afd) = (unsafe { AsyncFd::register_with_interest(control, tokio::io::Interest::READABLE) }) else {
        tracing::warn!(cell = %gate.name(), "cannot watch the cell's control socket: its log records are lost");
        return;
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_LOG_RECORD];
        let limits = *gate.limits();
        let per_second = u64::from(limits.per_second) * u64::from(READS_PER_TOKEN) + u64::from(limits.burst);
        let mut window = Instant::now();
        let mut reads = 0u64;
        loop {
            let ready = if gate.summary_pending() {
                tokio::time::timeout(limits.summary_every, afd.readable()).await
            } else {
                Ok(afd.readable().await)
            };
            let mut guard = match ready {
                Err(_) => {
                    gate.summarize(false);
                    continue;
                }
                Ok(Ok(g)) => g,
                Ok(Err(_)) => break,
            };
            let mut pause = None;
            for _ in 0..BATCH {
                if window.elapsed() >= Duration::from_secs(1) {
                    window = Instant::now();
                    reads = 0;
                }
                if reads >= per_second {
                    // Read enough this second: leave the rest in the socket.
                    tokio::time::sleep_until((window + Duration::from_secs(1)).into()).await;
                    continue;
                }
                reads += 1;
                match recv_packet(afd.get_ref(), &mut buf) {
                    Ok(Packet::WouldBlock) => {
                        guard.clear_ready();
                        break;
                    }
                    Ok(Packet::End) => {
                        gate.summarize(true);
                        return;
                    }
                    Ok(Packet::Data {
                        len,
                        truncated,
                        ancillary,
                    }) => {
                        if len == 0 || truncated || ancillary {
                            gate.refused(ancillary);
                            continue;
                        }
                        match osmos_session::decode_args::<LogRecord>(&buf[..len]) {
                            Ok(rec) => match gate.try_admit(Kind::Record) {
                                Ok(()) => emit(gate.name(), &rec),
                                Err(until) => {
                                    pause = Some(until.max(Instant::now() + MIN_PAUSE));
                                    break;
                                }
                            },
                            Err(_) => gate.refused(false),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(cell = %gate.name(), "reading the cell's control socket failed: {e}; its log records are lost");
                        return;
                    }
                }
            }
            drop(guard);
            match pause.take() {
                // Out of tokens: what the cell sends meanwhile waits in the
                // socket (or, once it is full, is dropped by the cell itself).
                Some(until) => tokio::time::sleep_until(until.into()).await,
                None => tokio::task::yield_now().await,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd, RawFd};

    use super::*;
    use crate::logs::LogLimits;

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: two new fds that nothing else owns.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// Sends `data`, passing `fd` along if given.
    fn send(sock: &OwnedFd, data: &[u8], fd: Option<RawFd>) {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut control = [0u64; 4];
        // SAFETY: an all-zero msghdr is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = fd {
            msg.msg_control = control.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE only computes a size.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
            // SAFETY: the control buffer (32 bytes) holds one header and one fd.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
            }
        }
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        assert!(r >= 0, "sendmsg: {}", std::io::Error::last_os_error());
    }

    #[tokio::test]
    async fn every_packet_shape_is_refused_and_the_socket_still_read() {
        let (host, cell) = seqpacket_pair();
        let gate = Arc::new(LogGate::new("t".into(), LogLimits::default()));
        forward(gate.clone(), host);
        let record = |message: &str| {
            osmos_session::wire::encode(&LogRecord {
                level: 3,
                target: "t".into(),
                message: message.into(),
            })
            .unwrap()
        };
        let valid = record("valid");
        send(&cell, b"", None);
        send(&cell, &[0xff; 3], None);
        send(&cell, &vec![b'x'; MAX_LOG_RECORD + 1], None);
        send(&cell, &valid[..valid.len() - 1], None);
        send(&cell, &valid, Some(0));
        send(&cell, b"", Some(1));
        send(&cell, &valid, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while gate.stats().records_forwarded < 1 || gate.stats().packets_refused < 6 {
            assert!(Instant::now() < deadline, "{:?}", gate.stats());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let s = gate.stats();
        assert_eq!(
            (s.records_forwarded, s.packets_refused, s.packets_with_ancillary),
            (1, 6, 2),
            "{s:?}"
        );
    }
}
