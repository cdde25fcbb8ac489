//! Stream link: length-prefixed frames over a byte stream (Unix or TCP
//! sockets, or anything [`AsyncRead`] + [`AsyncWrite`]).
//!
//! # Frame format
//!
//! Each frame is a 4-byte little-endian length `n` followed by `n` payload
//! bytes, `n <= max_frame`. Nothing else is on the stream: no header, no
//! padding. A clean end of the stream exactly between two frames ends the
//! link (`Ok(None)`); an end anywhere else means the peer died or broke off
//! while sending ([`LinkError::PeerGone`], naming how much of the frame
//! arrived).
//!
//! # Sending
//!
//! [`StreamTx`] owns one reusable buffer laid out as `[prefix | payload]`.
//! [`LinkTx::reserve`] checks the length, grows the buffer if it is the largest
//! frame so far, and writes the prefix; the session encodes into the payload
//! in place ([`SendPermit::buf`]); [`SendPermit::commit`] writes prefix and
//! payload in full (a `write_all` loop that records its progress), then
//! flushes. Only one commit can run at a time (`&mut`), so frames are never
//! interleaved, the steady state allocates nothing, and a permit dropped
//! without commit writes nothing.
//!
//! Backpressure on a stream appears when writing: `reserve` returns at once
//! (the buffer is private), and `commit` waits while the socket's send buffer
//! is full, i.e. while the peer does not read.
//!
//! A commit whose future is dropped part-way may already have put part of the
//! frame on the stream. The peer must never see half a frame, so the rest is
//! kept and written first by the next `reserve` or `close`; if nothing of it
//! had been written, it is dropped, as if never committed.
//!
//! # Receiving
//!
//! [`StreamRx`] reads into one reusable buffer, as much as the stream offers
//! per read (at least [`READ_CHUNK`] bytes of room), and parses frames out of
//! it, so a burst of small frames costs one read, not two per frame. A frame
//! is lent in place from that buffer until the next receive. The length
//! prefix is validated before anything is allocated for it: a length above
//! `max_frame` is a [`LinkError::Violation`] of rule
//! [`RULE_LENGTH_IN_BOUNDS`], never an allocation of that size. The buffer
//! only ever grows to the largest frame seen (plus one read chunk).
//!
//! All receive state lives in the [`StreamRx`], so [`LinkRx::recv`] is
//! cancel-safe: dropping it part-way through a frame loses nothing, and the
//! next call continues where it stopped.
//!
//! After an error, each half keeps failing with the same error: a stream
//! that lost its framing cannot be resynchronised.
//!
//! Credit travels as messages ([`CreditMode::Messages`]).

use crate::rules::Rule;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs, UnixStream, tcp, unix};

use super::{CreditMode, Link, LinkError, LinkRx, LinkTx, SendPermit};

/// Bytes in a frame's length prefix.
pub const PREFIX_LEN: usize = 4;

/// Least free room offered to each read of the receive buffer, in bytes.
pub const READ_CHUNK: usize = 64 * 1024;

/// Rule broken when a length prefix announces more than `max_frame` bytes.
pub const RULE_LENGTH_IN_BOUNDS: &str = Rule::StreamLengthInBounds.name();

/// A [`StreamLink`] over a Unix domain socket, split into its native halves.
pub type UnixLink = StreamLink<unix::OwnedReadHalf, unix::OwnedWriteHalf>;

/// A [`StreamLink`] over a TCP connection, split into its native halves.
pub type TcpLink = StreamLink<tcp::OwnedReadHalf, tcp::OwnedWriteHalf>;

/// Length-prefixed frames over a byte stream, before it is split.
///
/// `R` and `W` are the stream's read and write halves. Build one with
/// [`StreamLink::unix`], [`StreamLink::tcp`], [`connect_unix`],
/// [`connect_tcp`], or [`StreamLink::new`] for any other stream.
pub struct StreamLink<R, W> {
    tx: StreamTx<W>,
    rx: StreamRx<R>,
    max_frame: usize,
}

impl<R, W> std::fmt::Debug for StreamLink<R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLink")
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

impl<R, W> StreamLink<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    /// A link over an already split stream: frames are read from `read` and
    /// written to `write`.
    ///
    /// # Panics
    ///
    /// If `max_frame` does not fit the 4-byte length prefix (above
    /// `u32::MAX`).
    pub fn from_halves(read: R, write: W, max_frame: usize) -> Self {
        assert!(
            u32::try_from(max_frame).is_ok(),
            "stream link: max_frame {max_frame} does not fit the 4-byte length prefix (at most {})",
            u32::MAX
        );
        StreamLink {
            tx: StreamTx {
                write,
                buf: vec![0; PREFIX_LEN],
                unsent: 0..0,
                failed: None,
                closed: false,
                max_frame,
                socket: None,
            },
            rx: StreamRx {
                read,
                buf: Vec::new(),
                start: 0,
                end: 0,
                state: RxState::Open,
                max_frame,
            },
            max_frame,
        }
    }
}

impl<S> StreamLink<ReadHalf<S>, WriteHalf<S>>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    /// A link over any byte stream, split with [`tokio::io::split`] (which
    /// puts a lock between the halves; prefer [`StreamLink::unix`] and
    /// [`StreamLink::tcp`] for sockets).
    ///
    /// # Panics
    ///
    /// If `max_frame` is above `u32::MAX`.
    pub fn new(stream: S, max_frame: usize) -> Self {
        let (read, write) = tokio::io::split(stream);
        StreamLink::from_halves(read, write, max_frame)
    }
}

impl UnixLink {
    /// A link over a connected Unix stream socket, split into its owned
    /// halves (no lock between them).
    ///
    /// # Panics
    ///
    /// If `max_frame` is above `u32::MAX`.
    pub fn unix(stream: UnixStream, max_frame: usize) -> Self {
        let socket = stream.as_raw_fd();
        let (read, write) = stream.into_split();
        let mut link = StreamLink::from_halves(read, write, max_frame);
        link.tx.socket = Some(socket);
        link
    }
}

impl TcpLink {
    /// A link over a connected TCP socket, with `TCP_NODELAY` set (a frame
    /// goes out when committed, not after Nagle's delay), split into its owned
    /// halves.
    ///
    /// Fails only if `TCP_NODELAY` cannot be set.
    ///
    /// # Panics
    ///
    /// If `max_frame` is above `u32::MAX`.
    pub fn tcp(stream: TcpStream, max_frame: usize) -> Result<Self, LinkError> {
        stream.set_nodelay(true).map_err(|e| {
            LinkError::Io(io::Error::new(
                e.kind(),
                format!("could not set TCP_NODELAY on the link's socket: {e}"),
            ))
        })?;
        let socket = stream.as_raw_fd();
        let (read, write) = stream.into_split();
        let mut link = StreamLink::from_halves(read, write, max_frame);
        link.tx.socket = Some(socket);
        Ok(link)
    }
}

/// Connects to the Unix socket at `path` and makes a [`UnixLink`] of it.
///
/// The error names the path; check that the peer is listening there.
///
/// # Panics
///
/// If `max_frame` is above `u32::MAX`.
pub async fn connect_unix(path: impl AsRef<Path>, max_frame: usize) -> Result<UnixLink, LinkError> {
    let path = path.as_ref();
    let stream = UnixStream::connect(path).await.map_err(|e| {
        LinkError::Io(io::Error::new(
            e.kind(),
            format!(
                "could not connect to the Unix socket {}: {e} (is the peer listening there?)",
                path.display()
            ),
        ))
    })?;
    Ok(StreamLink::unix(stream, max_frame))
}

/// Connects over TCP to `addr` and makes a [`TcpLink`] of it (with
/// `TCP_NODELAY`).
///
/// The error names the address; check that the peer is listening there.
///
/// # Panics
///
/// If `max_frame` is above `u32::MAX`.
pub async fn connect_tcp(
    addr: impl ToSocketAddrs + std::fmt::Debug,
    max_frame: usize,
) -> Result<TcpLink, LinkError> {
    let described = format!("{addr:?}");
    let stream = TcpStream::connect(addr).await.map_err(|e| {
        LinkError::Io(io::Error::new(
            e.kind(),
            format!("could not connect over TCP to {described}: {e} (is the peer listening there?)"),
        ))
    })?;
    StreamLink::tcp(stream, max_frame)
}

impl<R, W> Link for StreamLink<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Tx = StreamTx<W>;
    type Rx = StreamRx<R>;

    fn max_frame(&self) -> usize {
        self.max_frame
    }

    fn credit_mode(&self) -> CreditMode {
        CreditMode::Messages
    }

    fn split(self) -> (StreamTx<W>, StreamRx<R>) {
        (self.tx, self.rx)
    }
}

/// An error kept by a half so that it can be reported again.
#[derive(Clone, Debug)]
enum Fault {
    PeerGone(String),
    Violation(&'static str, String),
    Io(io::ErrorKind, String),
}

impl Fault {
    /// What to keep of `e` to report it again later.
    fn of(e: &LinkError) -> Fault {
        match e {
            LinkError::PeerGone { detail } => Fault::PeerGone(detail.clone()),
            LinkError::Violation { rule, detail } => Fault::Violation(rule, detail.clone()),
            LinkError::Io(io) => Fault::Io(io.kind(), io.to_string()),
            other => Fault::Io(io::ErrorKind::Other, other.to_string()),
        }
    }

    /// Keeps `e` in `slot` and returns it, so that later calls fail the same
    /// way.
    fn keep(slot: &mut Option<Fault>, e: LinkError) -> LinkError {
        *slot = Some(Fault::of(&e));
        e
    }

    fn to_error(&self) -> LinkError {
        match self {
            Fault::PeerGone(detail) => LinkError::PeerGone {
                detail: detail.clone(),
            },
            Fault::Violation(rule, detail) => LinkError::Violation {
                rule,
                detail: detail.clone(),
            },
            Fault::Io(kind, message) => LinkError::Io(io::Error::new(
                *kind,
                format!("an earlier operation on this link failed, so it cannot be used: {message}"),
            )),
        }
    }
}

/// The sending half of a [`StreamLink`].
pub struct StreamTx<W> {
    write: W,
    /// `[prefix | payload]` of the frame being reserved or written; its length
    /// is the largest frame so far plus [`PREFIX_LEN`] (never below
    /// `PREFIX_LEN`), and only a prefix of it is the current frame.
    buf: Vec<u8>,
    /// Bytes of `buf` still to be written for a commit that was dropped
    /// part-way; empty (`0..0`) otherwise. When not empty, `unsent.start > 0`
    /// (some of the frame is already on the stream) and `unsent.end <=
    /// buf.len()`.
    unsent: Range<usize>,
    /// Set when a write failed: the stream may hold part of a frame.
    failed: Option<Fault>,
    /// Set by `close`.
    closed: bool,
    max_frame: usize,
    /// The socket under `write`, for [`LinkTx::peer_behind`] (set by
    /// [`StreamLink::unix`] and [`StreamLink::tcp`]; `write` owns it, so it
    /// stays open as long as this half).
    socket: Option<RawFd>,
}

/// Bytes this end has written that the peer has not yet read (a Unix
/// socket), or that it has not yet acknowledged (TCP): `SIOCOUTQ`. `None`
/// when the kernel does not say.
fn unread_bytes(socket: RawFd) -> Option<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: `SIOCOUTQ` writes one `int` through the pointer, which points
    // at one; `socket` is open (see `StreamTx::socket`).
    let r = unsafe { libc::ioctl(socket, libc::TIOCOUTQ, &mut n) };
    (r == 0).then(|| u32::try_from(n).ok()).flatten()
}

impl<W> std::fmt::Debug for StreamTx<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTx")
            .field("max_frame", &self.max_frame)
            .field("closed", &self.closed)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<W: AsyncWrite + Unpin + Send> StreamTx<W> {
    /// Fails if the half is closed or broken.
    fn check_usable(&self) -> Result<(), LinkError> {
        if let Some(fault) = &self.failed {
            return Err(fault.to_error());
        }
        if self.closed {
            return Err(LinkError::Closed);
        }
        Ok(())
    }

    /// Writes `buf[range]` and flushes, keeping track of progress in
    /// `self.unsent` so that a dropped future leaves a resumable state.
    async fn write_out(&mut self, range: Range<usize>) -> Result<(), LinkError> {
        debug_assert!(range.end <= self.buf.len());
        let mut at = range.start;
        while at < range.end {
            let n = match self.write.write(&self.buf[at..range.end]).await {
                Ok(0) => Err(LinkError::PeerGone {
                    detail: format!(
                        "the stream accepted no more bytes after {at} of the {} bytes of a frame \
                         (length prefix included)",
                        range.end
                    ),
                }),
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(LinkError::from(e)),
            }
            .map_err(|e| Fault::keep(&mut self.failed, e))?;
            at += n;
            // From here on the frame is partly on the stream: if this future is
            // dropped, the next operation must finish it.
            self.unsent = at..range.end;
        }
        self.unsent = 0..0;
        self.write
            .flush()
            .await
            .map_err(|e| Fault::keep(&mut self.failed, e.into()))
    }

    /// Finishes a frame whose commit was dropped after part of it was written.
    async fn finish_unsent(&mut self) -> Result<(), LinkError> {
        debug_assert!(
            self.unsent.is_empty() || (self.unsent.start > 0 && self.unsent.end <= self.buf.len()),
            "unsent {:?} outside a frame of the {}-byte buffer",
            self.unsent,
            self.buf.len()
        );
        if !self.unsent.is_empty() {
            self.write_out(self.unsent.clone()).await?;
        }
        Ok(())
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> LinkTx for StreamTx<W> {
    type Permit<'a> = StreamPermit<'a, W>;

    /// Reserves a frame of `len` bytes in the half's reusable buffer.
    ///
    /// Returns at once, unless a previous commit was dropped part-way: then it
    /// first finishes writing that frame. Fails with
    /// [`LinkError::FrameTooLarge`] if `len` exceeds `max_frame`, with
    /// [`LinkError::Closed`] after [`close`](LinkTx::close), and with the
    /// earlier error if a write failed before.
    async fn reserve(&mut self, len: usize) -> Result<StreamPermit<'_, W>, LinkError> {
        if len > self.max_frame {
            return Err(LinkError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        self.check_usable()?;
        self.finish_unsent().await?;
        let total = PREFIX_LEN + len;
        if self.buf.len() < total {
            self.buf.resize(total, 0);
        }
        let prefix = u32::try_from(len).expect("len <= max_frame <= u32::MAX, checked at construction");
        self.buf[..PREFIX_LEN].copy_from_slice(&prefix.to_le_bytes());
        Ok(StreamPermit { tx: self, len })
    }

    /// Over a Unix or TCP socket: the socket still holds bytes of earlier
    /// frames that the peer has not read (TCP: not acknowledged). One
    /// `ioctl` per question, against the `write` it saves each item that
    /// joins a batch. Other streams (and a kernel that does not say):
    /// never behind.
    fn peer_behind(&mut self) -> bool {
        self.socket.and_then(unread_bytes).is_some_and(|n| n > 0)
    }

    /// Finishes any partly written frame, flushes, and shuts the write half
    /// down: the peer reads the frames already committed, then `Ok(None)`.
    /// The receiving half stays open. Closing twice is harmless.
    async fn close(&mut self) -> Result<(), LinkError> {
        if self.closed {
            return Ok(());
        }
        if let Some(fault) = &self.failed {
            return Err(fault.to_error());
        }
        self.finish_unsent().await?;
        self.write
            .shutdown()
            .await
            .map_err(|e| Fault::keep(&mut self.failed, e.into()))?;
        self.closed = true;
        Ok(())
    }
}

/// A frame reserved in a [`StreamTx`]'s buffer.
pub struct StreamPermit<'a, W> {
    tx: &'a mut StreamTx<W>,
    /// Payload length; the frame is `tx.buf[..PREFIX_LEN + len]`.
    len: usize,
}

impl<W> std::fmt::Debug for StreamPermit<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPermit")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<W: AsyncWrite + Unpin + Send> SendPermit for StreamPermit<'_, W> {
    /// The frame's payload. It starts with arbitrary contents (the buffer is
    /// reused): write all of it.
    fn buf(&mut self) -> &mut [u8] {
        &mut self.tx.buf[PREFIX_LEN..PREFIX_LEN + self.len]
    }

    /// Writes prefix and payload in full, then flushes. Waits
    /// while the stream is full (the peer is not reading).
    ///
    /// If this future is dropped part-way, the rest of the frame is written by
    /// the next `reserve` or `close` (or dropped, if none of it was written).
    async fn commit(self) -> Result<(), LinkError> {
        self.tx.write_out(0..PREFIX_LEN + self.len).await
    }
}

/// Where a [`StreamRx`] stands.
#[derive(Debug)]
enum RxState {
    /// Frames may still come.
    Open,
    /// The stream ended cleanly between frames; `recv` returns `Ok(None)`.
    Ended,
    /// The stream broke or lost its framing; `recv` returns this error.
    Failed(Fault),
}

/// The receiving half of a [`StreamLink`].
pub struct StreamRx<R> {
    read: R,
    /// Receive buffer, reused for every frame. Bytes `start..end` have been
    /// read but not yet returned; `start <= end <= buf.len()`.
    buf: Vec<u8>,
    /// First byte not yet returned as (part of) a frame.
    start: usize,
    /// One past the last byte read from the stream.
    end: usize,
    state: RxState,
    max_frame: usize,
}

impl<R> std::fmt::Debug for StreamRx<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRx")
            .field("max_frame", &self.max_frame)
            .field("buffered", &(self.end - self.start))
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// What the buffered bytes hold.
enum Parsed {
    /// A whole frame: its payload's range in the buffer.
    Frame(Range<usize>),
    /// Not yet a whole frame: this many buffered bytes (from `start`) are
    /// needed in all.
    Need(usize),
}

impl<R: AsyncRead + Unpin + Send> StreamRx<R> {
    /// A receiving half over `read`, for frames of at most `max_frame` bytes
    /// (the stable conduit reads its connections with it).
    pub(crate) fn new(read: R, max_frame: usize) -> Self {
        StreamRx {
            read,
            buf: Vec::new(),
            start: 0,
            end: 0,
            state: RxState::Open,
            max_frame,
        }
    }

    /// The bytes of a frame `next_frame` returned, until the next call.
    pub(crate) fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Looks at the buffered bytes: a whole frame, or how many bytes one
    /// needs. A length prefix above `max_frame` is a violation.
    fn parse(&self) -> Result<Parsed, LinkError> {
        debug_assert!(self.start <= self.end && self.end <= self.buf.len());
        let have = self.end - self.start;
        if have < PREFIX_LEN {
            return Ok(Parsed::Need(PREFIX_LEN));
        }
        let prefix: [u8; PREFIX_LEN] = self.buf[self.start..self.start + PREFIX_LEN]
            .try_into()
            .expect("slice of PREFIX_LEN bytes");
        let announced = u32::from_le_bytes(prefix);
        let len = match usize::try_from(announced) {
            Ok(len) if len <= self.max_frame => len,
            _ => {
                return Err(LinkError::Violation {
                    rule: RULE_LENGTH_IN_BOUNDS,
                    detail: format!(
                        "a length prefix announced a frame of {announced} bytes, but this link \
                         carries at most {} (max_frame); the peer is not speaking this framing or \
                         the stream is corrupt; this link cannot be used any more, drop it",
                        self.max_frame
                    ),
                });
            }
        };
        let payload = self.start + PREFIX_LEN;
        if have - PREFIX_LEN >= len {
            Ok(Parsed::Frame(payload..payload + len))
        } else {
            Ok(Parsed::Need(PREFIX_LEN + len))
        }
    }

    /// Makes room after the buffered bytes for the rest of a frame of `need`
    /// bytes (prefix included), and for at least [`READ_CHUNK`] bytes so that
    /// small frames are read in bulk. Moves the buffered bytes to the front
    /// before growing the buffer.
    fn make_room(&mut self, need: usize) {
        let have = self.end - self.start;
        if have == 0 {
            self.start = 0;
            self.end = 0;
        }
        let missing = need.saturating_sub(have);
        let free_wanted = missing.max(READ_CHUNK);
        if self.buf.len() - self.end < free_wanted && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = have;
        }
        if self.buf.len() - self.end < free_wanted {
            // Room for the whole frame and one chunk past it, so that a large
            // frame grows the buffer once.
            self.buf.resize(self.end + missing + READ_CHUNK, 0);
        }
        debug_assert!(self.buf.len() - self.end >= free_wanted);
    }

    /// Reads once into the buffer. `Ok(false)` at the end of the stream.
    async fn fill(&mut self) -> Result<bool, LinkError> {
        loop {
            match self.read.read(&mut self.buf[self.end..]).await {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    debug_assert!(self.end <= self.buf.len());
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The error for a stream that ended with `have` bytes of an unfinished
    /// frame buffered.
    fn truncated(&self, have: usize) -> LinkError {
        let detail = if have < PREFIX_LEN {
            format!(
                "the stream ended inside a frame's length prefix, after {have} of its {PREFIX_LEN} \
                 bytes; the peer closed or died while sending (every earlier frame was delivered)"
            )
        } else {
            let prefix: [u8; PREFIX_LEN] = self.buf[self.start..self.start + PREFIX_LEN]
                .try_into()
                .expect("slice of PREFIX_LEN bytes");
            let len = u32::from_le_bytes(prefix);
            format!(
                "the stream ended inside a frame: it was cut off after {} of its {len} bytes; the \
                 peer closed or died while sending (every earlier frame was delivered)",
                have - PREFIX_LEN
            )
        };
        LinkError::PeerGone { detail }
    }

    /// The range of the next frame's payload in the buffer, reading as needed;
    /// `None` at a clean end of the stream.
    pub(crate) async fn next_frame(&mut self) -> Result<Option<Range<usize>>, LinkError> {
        loop {
            let need = match self.parse()? {
                Parsed::Frame(payload) => {
                    self.start = payload.end;
                    return Ok(Some(payload));
                }
                Parsed::Need(need) => need,
            };
            self.make_room(need);
            if !self.fill().await? {
                let have = self.end - self.start;
                return if have == 0 {
                    Ok(None)
                } else {
                    Err(self.truncated(have))
                };
            }
        }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> LinkRx for StreamRx<R> {
    type Frame<'a> = &'a [u8];

    /// The next frame, lent from the receive buffer until the next receive.
    ///
    /// `Ok(None)` once the stream ended cleanly between frames. A length
    /// prefix above `max_frame` fails with [`LinkError::Violation`] (rule
    /// [`RULE_LENGTH_IN_BOUNDS`]); a stream that ends inside a frame fails
    /// with [`LinkError::PeerGone`] saying how much of it arrived. After an
    /// error every later call fails the same way.
    ///
    /// Cancel-safe: dropping the future part-way loses no bytes.
    async fn recv(&mut self) -> Result<Option<&[u8]>, LinkError> {
        match &self.state {
            RxState::Open => {}
            RxState::Ended => return Ok(None),
            RxState::Failed(fault) => return Err(fault.to_error()),
        }
        match self.next_frame().await {
            Ok(Some(payload)) => Ok(Some(&self.buf[payload])),
            Ok(None) => {
                self.state = RxState::Ended;
                Ok(None)
            }
            Err(e) => {
                self.state = RxState::Failed(Fault::of(&e));
                Err(e)
            }
        }
    }
}
