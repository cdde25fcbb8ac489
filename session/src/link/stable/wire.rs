//! What the stable conduit puts on a byte stream: the resume handshake's
//! fixed-size messages, then length-prefixed frames with a small header.
//!
//! Every conduit frame travels inside the stream link's framing (a 4-byte
//! little-endian length, then that many bytes) and starts with a kind byte:
//!
//! | kind | layout after the kind byte | meaning |
//! |------|----------------------------|---------|
//! | `DATA` (0) | `seq: u64`, `ack: u64`, payload | a session frame, numbered |
//! | `ACK` (1) | `ack: u64` | the highest `seq` received, standalone |
//! | `CLOSE` (2) | `seq: u64`, `ack: u64` | the sender's direction ends, numbered |
//! | `GONE` (3) | nothing | the sender dropped the session |
//!
//! All integers are little-endian. Numbering starts at 1; `ack = n` confirms
//! every frame up to and including `n`.

use crate::link::stream::PREFIX_LEN;

/// Kind byte of a numbered session frame.
pub(super) const DATA: u8 = 0;
/// Kind byte of a standalone acknowledgement.
pub(super) const ACK: u8 = 1;
/// Kind byte of the numbered end of a direction.
pub(super) const CLOSE: u8 = 2;
/// Kind byte of "the sender dropped the session".
pub(super) const GONE: u8 = 3;

/// Bytes between a numbered frame's length prefix and its payload.
pub(super) const NUMBERED_HEADER: usize = 1 + 8 + 8;
/// Where a numbered frame's `ack` sits, counted from the length prefix.
pub(super) const ACK_AT: usize = PREFIX_LEN + 1 + 8;
/// Length (after the prefix) of a standalone ack.
pub(super) const ACK_LEN: usize = 1 + 8;

/// A frame the conduit received, after its header was checked.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Incoming {
    /// A numbered session frame; the payload starts `NUMBERED_HEADER` bytes in.
    Data { seq: u64, ack: u64 },
    /// A standalone acknowledgement.
    Ack { ack: u64 },
    /// The numbered end of the peer's direction.
    Close { seq: u64, ack: u64 },
    /// The peer dropped the session.
    Gone,
}

fn u64_at(frame: &[u8], at: usize) -> Option<u64> {
    frame
        .get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// Reads a frame's header (the bytes after the length prefix), or says what
/// is wrong with it.
pub(super) fn parse(frame: &[u8]) -> Result<Incoming, String> {
    let Some(&kind) = frame.first() else {
        return Err("an empty frame (every conduit frame starts with a kind byte)".into());
    };
    let numbered = |frame: &[u8]| match (u64_at(frame, 1), u64_at(frame, 9)) {
        (Some(seq), Some(ack)) => Ok((seq, ack)),
        _ => Err(format!(
            "a numbered frame of {} bytes, shorter than its {NUMBERED_HEADER}-byte header",
            frame.len()
        )),
    };
    match kind {
        DATA => numbered(frame).map(|(seq, ack)| Incoming::Data { seq, ack }),
        CLOSE if frame.len() == NUMBERED_HEADER => {
            numbered(frame).map(|(seq, ack)| Incoming::Close { seq, ack })
        }
        ACK if frame.len() == ACK_LEN => Ok(Incoming::Ack {
            ack: u64_at(frame, 1).expect("length checked"),
        }),
        GONE if frame.len() == 1 => Ok(Incoming::Gone),
        ACK | CLOSE | GONE => Err(format!(
            "a frame of kind {kind} with a wrong length ({} bytes)",
            frame.len()
        )),
        other => Err(format!("a frame of unknown kind {other}")),
    }
}

/// Writes a whole numbered frame (length prefix, kind, seq, ack; the payload
/// follows) into the first bytes of `buf`, which is the frame's full length.
pub(super) fn put_numbered(buf: &mut [u8], kind: u8, seq: u64, ack: u64) {
    let len = u32::try_from(buf.len() - PREFIX_LEN).expect("frame length checked against max_frame");
    buf[..PREFIX_LEN].copy_from_slice(&len.to_le_bytes());
    buf[PREFIX_LEN] = kind;
    buf[PREFIX_LEN + 1..ACK_AT].copy_from_slice(&seq.to_le_bytes());
    buf[ACK_AT..ACK_AT + 8].copy_from_slice(&ack.to_le_bytes());
}

/// A standalone ack, prefix included.
pub(super) fn ack_frame(ack: u64) -> [u8; PREFIX_LEN + ACK_LEN] {
    let mut f = [0; PREFIX_LEN + ACK_LEN];
    f[..PREFIX_LEN].copy_from_slice(&(ACK_LEN as u32).to_le_bytes());
    f[PREFIX_LEN] = ACK;
    f[PREFIX_LEN + 1..].copy_from_slice(&ack.to_le_bytes());
    f
}

/// A `GONE` frame, prefix included.
pub(super) const GONE_FRAME: [u8; PREFIX_LEN + 1] = [1, 0, 0, 0, GONE];

// ---------------------------------------------------------------------------
// The handshake: three fixed-size messages (hello, welcome, ready), and for
// a new session a fourth: the acceptor's ready, once it holds the session.
// ---------------------------------------------------------------------------

/// Opens every handshake message: names the protocol and its version.
pub(super) const MAGIC: [u8; 8] = *b"osmSTBL1";

/// A session's secret: whoever presents it may resume the session.
pub(super) type Token = [u8; 32];
/// A listener's identity for one run of its process.
pub(super) type Instance = [u8; 16];

/// `Hello.kind`: start a new session.
pub(super) const HELLO_NEW: u8 = 0;
/// `Hello.kind`: resume the session named by the token.
pub(super) const HELLO_RESUME: u8 = 1;

/// Initiator → acceptor, first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Hello {
    pub kind: u8,
    pub token: Token,
    /// The last `seq` the initiator received (0 for a new session).
    pub received: u64,
}

pub(super) const HELLO_LEN: usize = 8 + 1 + 32 + 8;

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0; HELLO_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8] = self.kind;
        b[9..41].copy_from_slice(&self.token);
        b[41..].copy_from_slice(&self.received.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, String> {
        check_magic(&b[..8])?;
        Ok(Hello {
            kind: b[8],
            token: b[9..41].try_into().expect("32 bytes"),
            received: u64::from_le_bytes(b[41..].try_into().expect("8 bytes")),
        })
    }
}

/// Why the acceptor (in `Welcome.status`) or the initiator (in `Ready`)
/// will not go on. 0 is "go on".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Go = 0,
    /// The acceptor does not know the token.
    UnknownSession = 1,
    /// The session was ended on that side (closed or dropped).
    Ended = 2,
    /// The other side asks for frames this side no longer holds, or claims
    /// frames it never sent.
    ReplayWindow = 3,
    /// The acceptor holds as many sessions as it may.
    Full = 4,
    /// The hello was not one this acceptor understands.
    BadHello = 5,
}

impl Verdict {
    pub fn from_byte(b: u8) -> Option<Verdict> {
        Some(match b {
            0 => Verdict::Go,
            1 => Verdict::UnknownSession,
            2 => Verdict::Ended,
            3 => Verdict::ReplayWindow,
            4 => Verdict::Full,
            5 => Verdict::BadHello,
            _ => return None,
        })
    }
}

/// Acceptor → initiator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Welcome {
    pub verdict: u8,
    /// The session's token (new sessions: freshly made; resumes: echoed).
    pub token: Token,
    pub instance: Instance,
    /// The last `seq` the acceptor received.
    pub received: u64,
}

pub(super) const WELCOME_LEN: usize = 8 + 1 + 32 + 16 + 8;

impl Welcome {
    pub fn encode(&self) -> [u8; WELCOME_LEN] {
        let mut b = [0; WELCOME_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8] = self.verdict;
        b[9..41].copy_from_slice(&self.token);
        b[41..57].copy_from_slice(&self.instance);
        b[57..].copy_from_slice(&self.received.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; WELCOME_LEN]) -> Result<Welcome, String> {
        check_magic(&b[..8])?;
        Ok(Welcome {
            verdict: b[8],
            token: b[9..41].try_into().expect("32 bytes"),
            instance: b[41..57].try_into().expect("16 bytes"),
            received: u64::from_le_bytes(b[57..].try_into().expect("8 bytes")),
        })
    }
}

/// Initiator → acceptor after the welcome: the verdict byte after the magic.
/// For a new session the acceptor answers with one too (verdict `Go`) once
/// it holds the session, and the initiator starts the session only then: a
/// ready lost to a cut would otherwise leave the initiator with a session
/// the acceptor never started, and its resumes refused as unknown.
pub(super) const READY_LEN: usize = 8 + 1;

pub(super) fn ready(verdict: Verdict) -> [u8; READY_LEN] {
    let mut b = [0; READY_LEN];
    b[..8].copy_from_slice(&MAGIC);
    b[8] = verdict as u8;
    b
}

pub(super) fn decode_ready(b: &[u8; READY_LEN]) -> Result<u8, String> {
    check_magic(&b[..8])?;
    Ok(b[8])
}

fn check_magic(b: &[u8]) -> Result<(), String> {
    if b == MAGIC {
        Ok(())
    } else {
        Err(format!(
            "the peer does not speak the osmos stable conduit (its first bytes are {:02x?}, expected {:02x?})",
            b, MAGIC
        ))
    }
}

/// Fills `buf` from the kernel's random source.
pub(super) fn random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[at..].as_mut_ptr().cast(), buf.len() - at, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        at += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_bad_ones_are_named() {
        let mut f = vec![0u8; PREFIX_LEN + NUMBERED_HEADER + 3];
        put_numbered(&mut f, DATA, 7, 5);
        assert_eq!(parse(&f[PREFIX_LEN..]), Ok(Incoming::Data { seq: 7, ack: 5 }));
        assert_eq!(parse(&ack_frame(9)[PREFIX_LEN..]), Ok(Incoming::Ack { ack: 9 }));
        assert_eq!(parse(&GONE_FRAME[PREFIX_LEN..]), Ok(Incoming::Gone));
        assert!(parse(&[]).unwrap_err().contains("empty"));
        assert!(parse(&[9]).unwrap_err().contains("unknown kind 9"));
        assert!(parse(&[DATA, 1, 2]).unwrap_err().contains("shorter"));
        assert!(parse(&[ACK, 1]).unwrap_err().contains("wrong length"));
    }

    #[test]
    fn handshake_messages_round_trip() {
        let h = Hello {
            kind: HELLO_RESUME,
            token: [3; 32],
            received: 42,
        };
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        let w = Welcome {
            verdict: 0,
            token: [1; 32],
            instance: [2; 16],
            received: 9,
        };
        assert_eq!(Welcome::decode(&w.encode()), Ok(w));
        let mut bad = Hello {
            kind: 0,
            token: [0; 32],
            received: 0,
        }
        .encode();
        bad[0] = b'x';
        assert!(Hello::decode(&bad).unwrap_err().contains("does not speak"));
        assert_eq!(decode_ready(&ready(Verdict::ReplayWindow)), Ok(3));
    }
}
