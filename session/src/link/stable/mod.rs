//! Stable link: a session that survives its connection breaking.
//!
//! A [`StableLink`] runs over a sequence of byte-stream connections (Unix,
//! TCP, TLS over TCP: anything [`Transport`] wraps) and hides their breaks
//! from the session above it:
//!
//! - Every frame is numbered. The receiver acknowledges what it received:
//!   in the header of every frame it sends (piggybacked), and with a
//!   standalone ack after [`StableConfig::ack_delay`] when it has nothing to
//!   send, or at once after a batch of 32 frames.
//! - The sender keeps each encoded frame (the bytes it wrote, nothing
//!   re-encoded) in a **replay buffer** until it is acknowledged. The buffer
//!   is bounded ([`StableConfig::replay_bytes`], [`StableConfig::replay_frames`]):
//!   [`LinkTx::reserve`] waits for room in it, which is where a peer that
//!   stops acknowledging pushes back. An acceptor's sessions also share one
//!   bound ([`StableConfig::acceptor_replay_bytes`], see `budget`), so many
//!   peers that never acknowledge cannot make it hold `max_sessions` full
//!   buffers; acknowledged frames go back to it as the acks arrive.
//! - After a break the **initiator** (the side that connected) reconnects
//!   per its [`RetryPolicy`] and resumes: a handshake names the session by
//!   its token (32 random bytes, known only to the two ends; send it only
//!   over an encrypted or local transport) and says which frame each side
//!   received last; each side then replays what the other missed. Calls,
//!   channels with their credit, and tunnels carry on: nothing is lost or
//!   delivered twice. The **acceptor** ([`StableAcceptor`]) waits up to
//!   [`StableConfig::resume_timeout`] for the initiator to come back.
//! - When resuming is impossible, both halves fail with
//!   [`LinkError::Unresumable`] naming why ([`ResumeFailure`]): the peer
//!   restarted, refused the token, or ended the session; the replay window
//!   no longer holds what the peer missed; the retry policy ran out; the
//!   initiator did not come back in time. The session fails everything in
//!   flight with that reason.
//! - Each side sends a heartbeat (a standalone ack) every
//!   [`StableConfig::heartbeat`] when idle, and treats a connection on which
//!   nothing arrived for three heartbeats as broken (a pulled cable sends no
//!   reset).
//!
//! The session's own keepalive still runs above: a break longer than its
//! timeout ends the session even if the conduit could still resume.
//!
//! Closing ([`LinkTx::close`]) sends a numbered `CLOSE`. A conduit ends
//! ([`StableStatus::Ended`]) when both sides closed and each acknowledged
//! everything the other sent, the `CLOSE`s included; once the receiver has
//! returned the end or was dropped, the driver reads the connection so that
//! those acks still arrive (frames nobody receives any more are acknowledged
//! and dropped). A conduit whose halves are dropped before that lingers
//! (reading, resuming if need be) for up to `resume_timeout` so that nothing
//! committed is lost, and a conduit dropped without closing tells the peer
//! (`GONE`), whose receiver then ends as if closed.
//!
//! What goes on the stream is described in `wire.rs`. A peer that breaks the
//! conduit's framing, numbering or acks ends it with a
//! [`LinkError::Violation`] (`stable.frame-well-formed`,
//! `stable.sequence-in-order`, `stable.ack-in-bounds`).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs, UnixStream};
use tokio::sync::watch;

use super::stream::PREFIX_LEN;
use super::{CreditMode, Link, LinkError, LinkRx, LinkTx, SendPermit};
use crate::reconnect::RetryPolicy;

mod budget;
mod conduit;
mod handshake;
mod incoming;
mod wire;

use conduit::{Shared, Terminal, Writer};
pub use handshake::{Accepted, StableAcceptor};
use incoming::{Reader, Take};
use wire::NUMBERED_HEADER;

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Makes a new connection to the peer, for the initiator's connects and
/// reconnects.
pub type Connector =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = io::Result<Transport>> + Send>> + Send + Sync>;

/// One connection a conduit runs over: a byte stream's two halves.
pub struct Transport {
    read: BoxRead,
    write: BoxWrite,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Transport {
    /// Any byte stream (e.g. a TLS stream), split with [`tokio::io::split`].
    pub fn new<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Transport {
        let (read, write) = tokio::io::split(stream);
        Transport::from_halves(read, write)
    }

    /// A stream that is already split.
    pub fn from_halves(
        read: impl AsyncRead + Send + Unpin + 'static,
        write: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Transport {
        Transport {
            read: Box::new(read),
            write: Box::new(write),
        }
    }

    /// A TCP connection, with `TCP_NODELAY` set.
    pub fn tcp(stream: TcpStream) -> io::Result<Transport> {
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        Ok(Transport::from_halves(read, write))
    }

    /// A Unix stream connection.
    pub fn unix(stream: UnixStream) -> Transport {
        let (read, write) = stream.into_split();
        Transport::from_halves(read, write)
    }
}

/// How a stable conduit behaves. Both ends should agree on `max_frame`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StableConfig {
    /// Largest session frame carried, in bytes (the conduit adds a 17-byte
    /// header).
    pub max_frame: usize,
    /// Bytes of sent frames kept until acknowledged; `reserve` waits beyond
    /// it (one frame always fits an empty buffer).
    pub replay_bytes: usize,
    /// Frames kept until acknowledged; `reserve` waits beyond it.
    pub replay_frames: usize,
    /// How an initiator retries its first connection and its reconnects.
    pub retry: RetryPolicy,
    /// How long an acceptor waits for its initiator to come back after a
    /// break (and how long a closed conduit lingers for its last acks).
    pub resume_timeout: Duration,
    /// Bound on each connection's handshake.
    pub handshake_timeout: Duration,
    /// How long a receiver waits for a frame to carry its ack before it sends
    /// a standalone one.
    pub ack_delay: Duration,
    /// Idle heartbeat; three without anything arriving mark the connection broken.
    pub heartbeat: Duration,
    /// Sessions an acceptor holds at once; more are refused.
    pub max_sessions: usize,
    /// Bytes of replay buffer all the sessions of one acceptor hold
    /// together. A session whose frame does not fit waits for other
    /// sessions' peers to acknowledge theirs, so peers that never
    /// acknowledge cannot make the acceptor hold `max_sessions` ×
    /// `replay_bytes`. Must hold one frame of `max_frame`.
    pub acceptor_replay_bytes: usize,
}

impl Default for StableConfig {
    /// Frames of up to 16 MiB, 16 MiB / 4096 frames of replay, the default
    /// retry policy (10 attempts, 50 ms doubling to 2 s), 30 s to resume,
    /// 10 s handshakes, acks within 5 ms, a heartbeat every 2 s, 1024
    /// sessions per acceptor holding 256 MiB of replay together.
    fn default() -> Self {
        StableConfig {
            max_frame: 16 << 20,
            replay_bytes: 16 << 20,
            replay_frames: 4096,
            retry: RetryPolicy::default(),
            resume_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            ack_delay: Duration::from_millis(5),
            heartbeat: Duration::from_secs(2),
            max_sessions: 1024,
            acceptor_replay_bytes: 256 << 20,
        }
    }
}

impl StableConfig {
    /// Sets `max_frame`.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Sets the replay buffer's bounds.
    pub fn replay(mut self, bytes: usize, frames: usize) -> Self {
        self.replay_bytes = bytes;
        self.replay_frames = frames.max(1);
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets how long an acceptor waits for its initiator to come back.
    pub fn resume_timeout(mut self, wait: Duration) -> Self {
        self.resume_timeout = wait;
        self
    }

    /// Sets the heartbeat interval.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Sets the handshake timeout.
    pub fn handshake_timeout(mut self, wait: Duration) -> Self {
        self.handshake_timeout = wait;
        self
    }
}

/// Why a conduit could not resume after a break.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResumeFailure {
    /// The peer answered, but as a new process: its sessions are gone.
    PeerRestarted,
    /// The peer refused to resume (or to start) the session.
    Refused {
        /// What it refused, and why.
        detail: String,
    },
    /// The peer ended the session on its side.
    PeerEnded,
    /// One side no longer holds frames the other missed (or was asked for
    /// frames it never sent): resuming would lose or invent data.
    ReplayWindowExceeded {
        /// Which frames were asked for and which are held.
        detail: String,
    },
    /// The retry policy ran out.
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// What the last one reported.
        last_error: String,
    },
    /// The initiator did not come back within the acceptor's `resume_timeout`.
    PeerDidNotReturn {
        /// How long the acceptor waited.
        waited: Duration,
    },
}

impl std::fmt::Display for ResumeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResumeFailure::PeerRestarted => f.write_str(
                "the peer restarted (a new process answered), so the session's state is gone; start a new session",
            ),
            ResumeFailure::Refused { detail } => write!(f, "the peer refused the session: {detail}"),
            ResumeFailure::PeerEnded => f.write_str("the peer ended this session on its side"),
            ResumeFailure::ReplayWindowExceeded { detail } => {
                write!(f, "the replay window was exceeded: {detail}")
            }
            ResumeFailure::RetriesExhausted { attempts, last_error } => write!(
                f,
                "gave up after {attempts} connection attempts (the retry policy ran out); the last \
                 failed with: {last_error}; check that the peer runs, or allow more attempts"
            ),
            ResumeFailure::PeerDidNotReturn { waited } => write!(
                f,
                "the peer did not come back within {waited:?} (resume_timeout) after the connection broke"
            ),
        }
    }
}

/// Where a conduit stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StableStatus {
    /// A connection is up.
    Connected,
    /// The connection broke; reconnecting (initiator, `attempt` ≥ 1) or
    /// waiting for the initiator (acceptor, `attempt` 0).
    Reconnecting {
        /// Attempt of the current round.
        attempt: u32,
        /// Why the connection (or the last attempt) failed.
        last_error: String,
    },
    /// Both directions closed and everything was acknowledged.
    Ended,
    /// Resuming was impossible.
    Failed(ResumeFailure),
}

/// A link that survives breaks of its connection (see the module docs).
/// Dropping it unsplit drops the session (the peer is told).
pub struct StableLink {
    sh: Arc<Shared>,
    split: bool,
}

impl Drop for StableLink {
    fn drop(&mut self) {
        if !self.split {
            self.sh.receiver_done(None);
            half_dropped(&self.sh);
            half_dropped(&self.sh);
        }
    }
}

impl std::fmt::Debug for StableLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableLink")
            .field("status", &*self.sh.status.borrow())
            .finish_non_exhaustive()
    }
}

impl StableLink {
    /// Opens a conduit over connections made by `connect` (called again for
    /// every reconnect), retrying per `config.retry`.
    pub async fn connect<F, Fut>(connect: F, config: StableConfig) -> Result<StableLink, LinkError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<Transport>> + Send + 'static,
    {
        let connector: Connector = Arc::new(move || Box::pin(connect()));
        handshake::connect_new(connector, config).await
    }

    /// Opens a conduit over a Unix socket at `path`.
    pub async fn connect_unix(path: impl AsRef<Path>, config: StableConfig) -> Result<StableLink, LinkError> {
        let path = path.as_ref().to_path_buf();
        StableLink::connect(
            move || {
                let path = path.clone();
                async move {
                    let s = UnixStream::connect(&path).await.map_err(|e| {
                        io::Error::new(e.kind(), format!("could not connect to {}: {e}", path.display()))
                    })?;
                    Ok(Transport::unix(s))
                }
            },
            config,
        )
        .await
    }

    /// Opens a conduit over TCP to `addr`.
    pub async fn connect_tcp(
        addr: impl ToSocketAddrs + Clone + std::fmt::Debug + Send + Sync + 'static,
        config: StableConfig,
    ) -> Result<StableLink, LinkError> {
        StableLink::connect(
            move || {
                let addr = addr.clone();
                async move {
                    let described = format!("{addr:?}");
                    let s = TcpStream::connect(addr).await.map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("could not connect over TCP to {described}: {e}"),
                        )
                    })?;
                    Transport::tcp(s)
                }
            },
            config,
        )
        .await
    }

    /// A view of the conduit's status and counters that outlives the split.
    pub fn monitor(&self) -> StableMonitor {
        StableMonitor {
            sh: Arc::downgrade(&self.sh),
            status: self.sh.status.subscribe(),
        }
    }
}

/// The status and counters of a [`StableLink`]. Cheap to clone; does not
/// keep the conduit alive.
#[derive(Clone, Debug)]
pub struct StableMonitor {
    sh: Weak<Shared>,
    status: watch::Receiver<StableStatus>,
}

impl StableMonitor {
    /// The status now.
    pub fn status(&self) -> StableStatus {
        self.status.borrow().clone()
    }

    /// Waits until the status satisfies `pred`, and returns it.
    pub async fn wait_for(&mut self, pred: impl Fn(&StableStatus) -> bool) -> StableStatus {
        let r = self.status.wait_for(|s| pred(s)).await.map(|s| s.clone());
        r.unwrap_or_else(|_| self.status())
    }

    /// Connections made after the first (successful resumes).
    pub fn resumes(&self) -> u64 {
        self.sh
            .upgrade()
            .map_or(0, |sh| sh.reconnects.load(Ordering::Relaxed))
    }

    /// Frames sent but not yet acknowledged.
    pub fn unacknowledged(&self) -> u64 {
        self.sh.upgrade().map_or(0, |sh| {
            sh.sent
                .load(Ordering::Acquire)
                .saturating_sub(sh.peer_acked.load(Ordering::Acquire))
        })
    }
}

impl Link for StableLink {
    type Tx = StableTx;
    type Rx = StableRx;

    fn max_frame(&self) -> usize {
        self.sh.config.max_frame
    }

    fn credit_mode(&self) -> CreditMode {
        CreditMode::Messages
    }

    fn split(mut self) -> (StableTx, StableRx) {
        self.split = true;
        (
            StableTx {
                sh: self.sh.clone(),
                closed: false,
            },
            StableRx {
                sh: self.sh.clone(),
                cur: None,
                ended: false,
            },
        )
    }
}

fn half_dropped(sh: &Shared) {
    let mut st = sh.lock();
    st.halves = st.halves.saturating_sub(1);
    drop(st);
    sh.driver_wake.notify_one();
}

/// The sending half of a [`StableLink`].
pub struct StableTx {
    sh: Arc<Shared>,
    closed: bool,
}

impl std::fmt::Debug for StableTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableTx")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Drop for StableTx {
    fn drop(&mut self) {
        half_dropped(&self.sh);
    }
}

/// The writer of `sh`, once it has room for a frame of `total` bytes.
async fn room(
    sh: &Shared,
    closed: bool,
    total: usize,
) -> Result<tokio::sync::MutexGuard<'_, Writer>, LinkError> {
    loop {
        let wake = sh.tx_wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        sh.tx_waiting.store(true, Ordering::Release);
        if let Some(t) = &sh.lock().terminal {
            return Err(t.to_error());
        }
        if closed {
            return Err(LinkError::Closed);
        }
        // Another session of the acceptor giving replay bytes back.
        let freed = sh.budget.as_ref().map(|b| b.freed.notified());
        tokio::pin!(freed);
        if let Some(n) = freed.as_mut().as_pin_mut() {
            n.enable();
        }
        let mut w = sh.writer.lock().await;
        w.trim(sh.peer_acked.load(Ordering::Acquire));
        if let Some(limit) = w.beyond_budget(total) {
            return Err(LinkError::FrameTooLarge {
                len: total,
                max: limit,
            });
        }
        if w.take_room(total) {
            sh.tx_waiting.store(false, Ordering::Release);
            return Ok(w);
        }
        drop(w);
        let freed = async {
            match freed.as_mut().as_pin_mut() {
                Some(n) => n.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wake => {}
            _ = freed => {}
        }
    }
}

impl LinkTx for StableTx {
    type Permit<'a> = StablePermit<'a>;

    /// Waits for room in the replay buffer and reserves a frame there.
    async fn reserve(&mut self, len: usize) -> Result<StablePermit<'_>, LinkError> {
        if len > self.sh.config.max_frame {
            return Err(LinkError::FrameTooLarge {
                len,
                max: self.sh.config.max_frame,
            });
        }
        let total = PREFIX_LEN + NUMBERED_HEADER + len;
        let mut writer = room(&self.sh, self.closed, total).await?;
        let buf = writer.buffer(total);
        Ok(StablePermit {
            sh: &self.sh,
            writer,
            buf,
        })
    }

    /// Sends a numbered `CLOSE` after everything committed. The conduit
    /// keeps it (and everything before it) until acknowledged, across
    /// breaks, even once both halves are dropped.
    async fn close(&mut self) -> Result<(), LinkError> {
        if self.closed {
            return Ok(());
        }
        let sh = &self.sh;
        let mut w = room(sh, false, PREFIX_LEN + NUMBERED_HEADER).await?;
        let buf = w.buffer(PREFIX_LEN + NUMBERED_HEADER);
        let seq = w.push(wire::CLOSE, buf, sh);
        sh.lock().close_seq = Some(seq);
        self.closed = true;
        w.pump(sh).await;
        Ok(())
    }
}

/// Room for one frame in a [`StableTx`]'s replay buffer.
pub struct StablePermit<'a> {
    sh: &'a Shared,
    writer: tokio::sync::MutexGuard<'a, Writer>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for StablePermit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StablePermit")
            .field("len", &(self.buf.len() - PREFIX_LEN - NUMBERED_HEADER))
            .finish_non_exhaustive()
    }
}

impl SendPermit for StablePermit<'_> {
    fn buf(&mut self) -> &mut [u8] {
        &mut self.buf[PREFIX_LEN + NUMBERED_HEADER..]
    }

    /// Numbers the frame, keeps it for replay, and writes it (with anything
    /// still pending) to the current connection. While the connection is
    /// broken the frame waits for the next one: commit still succeeds.
    async fn commit(mut self) -> Result<(), LinkError> {
        let sh = self.sh;
        let buf = std::mem::take(&mut self.buf);
        self.writer.push(wire::DATA, buf, sh);
        self.writer.pump(sh).await;
        Ok(())
    }
}

impl Drop for StablePermit<'_> {
    /// A permit dropped unused gives its room back.
    fn drop(&mut self) {
        self.writer.cancel_room();
    }
}

/// The receiving half of a [`StableLink`].
pub struct StableRx {
    sh: Arc<Shared>,
    /// The current connection's generation and reader.
    cur: Option<Reader>,
    /// The peer's CLOSE (or GONE) arrived: `recv` returns `Ok(None)`.
    ended: bool,
}

impl std::fmt::Debug for StableRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableRx")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Drop for StableRx {
    fn drop(&mut self) {
        if !self.ended {
            self.sh.receiver_done(self.cur.take());
        }
        half_dropped(&self.sh);
    }
}

impl StableRx {
    /// Waits for the current connection's reader.
    async fn attach(&mut self) -> Result<(), LinkError> {
        loop {
            let wake = self.sh.rx_wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            {
                let mut st = self.sh.lock();
                if let Some(t) = &st.terminal {
                    return match t {
                        Terminal::PeerDropped => {
                            self.ended = true;
                            Ok(())
                        }
                        t => Err(t.to_error()),
                    };
                }
                if let Some(reader) = st.reader.take() {
                    self.cur = Some(reader);
                    return Ok(());
                }
            }
            wake.await;
        }
    }
}

impl LinkRx for StableRx {
    type Frame<'a> = &'a [u8];

    /// The next frame, in order, exactly once, across breaks.
    async fn recv(&mut self) -> Result<Option<&[u8]>, LinkError> {
        let payload = loop {
            if self.ended {
                return Ok(None);
            }
            if self.cur.is_none() {
                self.attach().await?;
                continue;
            }
            let reader = self.cur.as_mut().expect("checked");
            let read = incoming::read(&self.sh, reader).await;
            match self.sh.apply(reader, read)? {
                Take::Payload(r) => break r,
                Take::Next => {}
                Take::End => {
                    self.ended = true;
                    // The driver reads the peer's last acks.
                    self.sh.receiver_done(self.cur.take());
                }
                Take::Gone => self.cur = None,
            }
        };
        let (_, reader) = self.cur.as_ref().expect("a frame was just read from it");
        Ok(Some(reader.bytes(payload)))
    }
}

#[cfg(test)]
mod tests;
