//! The conduit's shared state: the replay buffer and the current connection
//! (the [`Writer`], behind an async lock), what was received (the
//! [`State`], behind a short lock), and the driver task that acknowledges,
//! watches the connection and brings it back after a break.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::budget::ReplayBudget;
use super::handshake::{self, Registry};
use super::incoming::{self, Reader};
use super::wire::{self, ACK_AT, NUMBERED_HEADER, Token};
use super::{BoxRead, BoxWrite, Connector, ResumeFailure, StableConfig, StableStatus};
use crate::link::LinkError;
use crate::link::stream::StreamRx;

/// Frames received without an ack going back before the receiver sends a
/// standalone one at once (otherwise it waits `ack_delay` for a piggyback).
pub(super) const ACK_BATCH: u64 = 32;

/// What ended a conduit for good.
#[derive(Clone, Debug)]
pub(super) enum Terminal {
    /// Resumption was impossible.
    Resume(ResumeFailure),
    /// The peer broke the conduit's framing.
    Violation(&'static str, String),
    /// The peer dropped the session (a `GONE` frame).
    PeerDropped,
}

impl Terminal {
    pub fn to_error(&self) -> LinkError {
        match self {
            Terminal::Resume(f) => LinkError::Unresumable(f.clone()),
            Terminal::Violation(rule, detail) => LinkError::Violation {
                rule,
                detail: detail.clone(),
            },
            Terminal::PeerDropped => LinkError::PeerGone {
                detail: "the peer dropped the session without closing it".into(),
            },
        }
    }
}

/// Which end of the conduit this is.
pub(super) enum Side {
    /// Connects, and reconnects after a break.
    Initiator {
        connect: Connector,
        /// The acceptor's instance, as its welcome named it.
        instance: wire::Instance,
    },
    /// Accepted; waits for the initiator to come back after a break.
    Acceptor { registry: Weak<Registry> },
}

/// Everything both halves and the driver share.
pub(super) struct Shared {
    pub config: StableConfig,
    pub token: Token,
    pub side: Side,
    pub writer: tokio::sync::Mutex<Writer>,
    /// The acceptor's replay budget (the writer counts against it).
    pub budget: Option<Arc<ReplayBudget>>,
    pub state: Mutex<State>,
    /// The highest connection generation declared broken.
    pub broken: watch::Sender<u64>,
    /// A reader was installed, or the conduit ended.
    pub rx_wake: Notify,
    /// Acks advanced (room in the replay buffer), or the conduit ended.
    pub tx_wake: Notify,
    /// Set while a sender waits on `tx_wake`.
    pub tx_waiting: AtomicBool,
    /// Something for the driver: a break, an ack due, a half dropped.
    pub driver_wake: Notify,
    /// An ack is due now (a batch of frames is unacknowledged, or a CLOSE came).
    pub ack_now: AtomicBool,
    /// The driver has an ack timer running.
    pub ack_armed: AtomicBool,
    /// The highest `seq` the peer acknowledged.
    pub peer_acked: AtomicU64,
    /// The highest `seq` this side sent.
    pub sent: AtomicU64,
    /// Mirror of `State::received`, for writing acks without the lock.
    pub received: AtomicU64,
    /// The highest ack this side put on a connection.
    pub ack_written: AtomicU64,
    /// Frames received over the conduit's life (the driver's liveness check).
    pub activity: AtomicU64,
    /// Frames written over the conduit's life (the driver's heartbeat).
    pub written: AtomicU64,
    pub status: watch::Sender<StableStatus>,
    pub reconnects: AtomicU64,
}

/// What is received and which connection is current.
pub(super) struct State {
    /// The current connection's generation (1 for the first).
    pub generation: u64,
    /// The read half of the current connection, until the receiver (or,
    /// once the receiver is done, the driver) takes it.
    pub reader: Option<Reader>,
    /// The receiver returned the end or was dropped: the driver reads.
    pub rx_done: bool,
    /// The last `seq` received in order.
    pub received: u64,
    pub terminal: Option<Terminal>,
    /// Halves (`StableTx`, `StableRx`) still alive.
    pub halves: u8,
    /// The peer's CLOSE arrived.
    pub peer_closed: bool,
    /// Our CLOSE's `seq`, once sent.
    pub close_seq: Option<u64>,
    /// Why the last connection broke.
    pub last_break: Option<String>,
}

/// The replay buffer and the current connection's write half.
pub(super) struct Writer {
    /// Frames not yet acknowledged, in order: length prefix, header, payload.
    replay: VecDeque<Vec<u8>>,
    /// `seq` of `replay[0]` (equal to `next_seq` when empty).
    first_seq: u64,
    pub next_seq: u64,
    bytes: usize,
    conn: Option<(u64, BoxWrite)>,
    /// Next frame to write on `conn`, and how much of it is written.
    cursor_seq: u64,
    cursor_off: usize,
    /// Frames written since the last flush.
    unflushed: bool,
    spare: Vec<Vec<u8>>,
    limit_bytes: usize,
    limit_frames: usize,
    /// The acceptor's budget this buffer counts against (an initiator has
    /// none), and the bytes taken from it for a frame not yet pushed.
    budget: Option<Arc<ReplayBudget>>,
    reserved: usize,
}

impl Writer {
    pub fn new(config: &StableConfig, budget: Option<Arc<ReplayBudget>>) -> Writer {
        Writer {
            replay: VecDeque::new(),
            first_seq: 1,
            next_seq: 1,
            bytes: 0,
            conn: None,
            cursor_seq: 1,
            cursor_off: 0,
            unflushed: false,
            spare: Vec::new(),
            limit_bytes: config.replay_bytes,
            limit_frames: config.replay_frames,
            budget,
            reserved: 0,
        }
    }

    /// Drops the frames the peer acknowledged (never one not yet written).
    pub fn trim(&mut self, acked: u64) {
        // An honest peer acknowledges only what was written to it, so never
        // past the cursor; a lying one must not make the cursor point before
        // the buffer.
        let keep_from = acked.min(self.cursor_seq.saturating_sub(1));
        let mut freed = 0;
        while self.first_seq <= keep_from {
            let Some(f) = self.replay.pop_front() else { break };
            self.bytes -= f.len();
            freed += f.len();
            self.first_seq += 1;
            if self.spare.len() < 16 && f.capacity() <= 256 << 10 {
                self.spare.push(f);
            }
        }
        if let Some(b) = &self.budget {
            b.give_back(freed);
        }
    }

    /// Takes room for a frame of `len` bytes beside what is unacknowledged,
    /// if there is: within this buffer's bounds (a frame always fits an
    /// empty buffer) and within the acceptor's budget (always, so that no
    /// number of sessions exceeds it). The room is the next
    /// [`push`](Self::push)'s, or given back by [`cancel_room`](Self::cancel_room).
    pub fn take_room(&mut self, len: usize) -> bool {
        self.cancel_room();
        let fits = self.replay.is_empty()
            || (self.bytes + len <= self.limit_bytes && self.replay.len() < self.limit_frames);
        if !fits {
            return false;
        }
        if let Some(b) = &self.budget {
            if !b.try_take(len) {
                return false;
            }
            self.reserved = len;
        }
        true
    }

    /// Gives back room taken for a frame that was not pushed.
    pub fn cancel_room(&mut self) {
        if let Some(b) = &self.budget {
            b.give_back(std::mem::take(&mut self.reserved));
        }
    }

    /// Whether a frame of `len` bytes can never fit the acceptor's budget,
    /// and its bound if so.
    pub fn beyond_budget(&self, len: usize) -> Option<usize> {
        self.budget
            .as_ref()
            .map(|b| b.limit())
            .filter(|&limit| len > limit)
    }

    /// A buffer of `len` bytes for the next frame.
    pub fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b.resize(len, 0);
        b
    }

    /// Numbers a filled frame and keeps it for (re)sending; returns its seq.
    pub fn push(&mut self, kind: u8, mut frame: Vec<u8>, sh: &Shared) -> u64 {
        let seq = self.next_seq;
        wire::put_numbered(&mut frame, kind, seq, 0);
        self.bytes += frame.len();
        // The room taken for it becomes the frame's; should the frame's
        // length differ, the budget is kept exact.
        if let Some(b) = &self.budget {
            let reserved = std::mem::take(&mut self.reserved);
            if frame.len() > reserved {
                b.take_anyway(frame.len() - reserved);
            } else {
                b.give_back(reserved - frame.len());
            }
        }
        self.replay.push_back(frame);
        self.next_seq += 1;
        // ORDERING: Release pairs with the receiver's Acquire load when it checks an ack.
        sh.sent.store(seq, Ordering::Release);
        seq
    }

    /// The frames this side can replay: `first..next`.
    pub fn window(&self) -> (u64, u64) {
        (self.first_seq, self.next_seq)
    }

    /// Makes `write` the current connection (generation `cgen`), resuming
    /// after the peer's `received`: the caller checked it is in the window.
    pub fn install(&mut self, cgen: u64, write: BoxWrite, received: u64) {
        self.trim(received);
        self.conn = Some((cgen, write));
        self.cursor_seq = received + 1;
        self.cursor_off = 0;
        self.unflushed = false;
    }

    /// Writes every frame from the cursor on to the current connection, then
    /// flushes. A broken connection is reported and dropped; the frames stay
    /// for the next one. Cancel-safe: the cursor records progress. Frames acknowledged
    /// meanwhile are dropped (their budget given back) at the end.
    pub async fn pump(&mut self, sh: &Shared) {
        self.write_pending(sh).await;
        self.trim(sh.peer_acked.load(Ordering::Acquire));
    }

    async fn write_pending(&mut self, sh: &Shared) {
        let Some((cgen, _)) = &self.conn else { return };
        let cgen = *cgen;
        let mut broken = sh.broken.subscribe();
        while self.cursor_seq < self.next_seq || self.unflushed {
            let Some((_, write)) = self.conn.as_mut() else {
                return;
            };
            let step = if self.cursor_seq < self.next_seq {
                // `trim` keeps the cursor inside the buffer; should it not,
                // start from the oldest frame held rather than index out of it.
                if self.cursor_seq < self.first_seq {
                    debug_assert!(
                        false,
                        "cursor #{} before the buffer's #{}",
                        self.cursor_seq, self.first_seq
                    );
                    (self.cursor_seq, self.cursor_off) = (self.first_seq, 0);
                    continue;
                }
                let idx = (self.cursor_seq - self.first_seq) as usize;
                let frame = &mut self.replay[idx];
                if self.cursor_off == 0 {
                    // The ack goes out as fresh as it can be.
                    // ORDERING: Acquire pairs with the receiver's Release store.
                    let ack = sh.received.load(Ordering::Acquire);
                    frame[ACK_AT..ACK_AT + 8].copy_from_slice(&ack.to_le_bytes());
                    sh.ack_written.fetch_max(ack, Ordering::AcqRel);
                }
                let bytes = &frame[self.cursor_off..];
                tokio::select! {
                    biased;
                    r = write.write(bytes) => Step::Wrote(r),
                    _ = broken.wait_for(|b| *b >= cgen) => Step::Cut,
                }
            } else {
                tokio::select! {
                    biased;
                    r = write.flush() => Step::Flushed(r),
                    _ = broken.wait_for(|b| *b >= cgen) => Step::Cut,
                }
            };
            match step {
                Step::Wrote(Ok(n)) if n > 0 => {
                    self.cursor_off += n;
                    self.unflushed = true;
                    let len = self.replay[(self.cursor_seq - self.first_seq) as usize].len();
                    if self.cursor_off == len {
                        self.cursor_seq += 1;
                        self.cursor_off = 0;
                        sh.written.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Step::Flushed(Ok(())) => self.unflushed = false,
                Step::Wrote(Err(e)) | Step::Flushed(Err(e))
                    if e.kind() == std::io::ErrorKind::Interrupted => {}
                Step::Wrote(r) => {
                    let why = match r {
                        Err(e) => format!("writing failed: {e}"),
                        Ok(_) => "the connection accepted no more bytes".into(),
                    };
                    self.conn = None;
                    sh.declare_broken(cgen, why);
                    return;
                }
                Step::Flushed(Err(e)) => {
                    self.conn = None;
                    sh.declare_broken(cgen, format!("flushing failed: {e}"));
                    return;
                }
                Step::Cut => {
                    self.conn = None;
                    return;
                }
            }
        }
    }

    /// Writes a frame that is not numbered (an ack, `GONE`) if a connection is
    /// current, after finishing what is pending. Best effort.
    pub async fn send_unnumbered(&mut self, sh: &Shared, frame: &[u8]) {
        self.pump(sh).await;
        let Some((cgen, write)) = self.conn.as_mut() else {
            return;
        };
        let cgen = *cgen;
        let mut broken = sh.broken.subscribe();
        let r = tokio::select! {
            biased;
            r = async { write.write_all(frame).await?; write.flush().await } => r,
            _ = broken.wait_for(|b| *b >= cgen) => Ok(()),
        };
        if let Err(e) = r {
            self.conn = None;
            sh.declare_broken(cgen, format!("writing failed: {e}"));
        } else {
            sh.written.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops the connection (the conduit is done with it).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }
}

enum Step {
    Wrote(std::io::Result<usize>),
    Flushed(std::io::Result<()>),
    Cut,
}

/// The standalone ack of everything received so far.
pub(super) async fn send_ack(sh: &Shared, w: &mut Writer) {
    // ORDERING: Acquire pairs with the receiver's Release store.
    let ack = sh.received.load(Ordering::Acquire);
    w.send_unnumbered(sh, &wire::ack_frame(ack)).await;
    sh.ack_written.fetch_max(ack, Ordering::AcqRel);
}

/// [`send_ack`], from the driver. The driver is what declares a silent
/// connection broken, and a write to a silent connection whose buffers are
/// full waits until it is declared broken: so while the ack waits, go on
/// counting heartbeats with nothing arriving, and after three declare the
/// connection broken (which ends the write). Waiting on the write alone
/// hung the conduit for good.
async fn driver_ack(sh: &Shared, w: &mut Writer) {
    let heartbeat = sh.config.heartbeat;
    let cgen = sh.lock().generation;
    let watch = async {
        let mut seen = sh.activity.load(Ordering::Relaxed);
        let mut silent = 0;
        let mut tick = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        loop {
            tick.tick().await;
            let now = sh.activity.load(Ordering::Relaxed);
            if now == seen {
                silent += 1;
            } else {
                (seen, silent) = (now, 0);
            }
            if silent >= 3 {
                let why = format!(
                    "nothing arrived for {:?} (3 heartbeats) and an ack could not be written",
                    heartbeat * 3
                );
                sh.declare_broken(cgen, why);
                // The write sees the break and returns.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = send_ack(sh, w) => {}
        _ = watch => {}
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.cancel_room();
        if let Some(b) = &self.budget {
            b.give_back(self.bytes);
        }
    }
}

impl Shared {
    pub fn new(
        config: StableConfig,
        token: Token,
        side: Side,
        budget: Option<Arc<ReplayBudget>>,
    ) -> Arc<Shared> {
        let writer = Writer::new(&config, budget.clone());
        Arc::new(Shared {
            config,
            token,
            side,
            writer: tokio::sync::Mutex::new(writer),
            budget,
            state: Mutex::new(State {
                generation: 0,
                reader: None,
                rx_done: false,
                received: 0,
                terminal: None,
                halves: 2,
                peer_closed: false,
                close_seq: None,
                last_break: None,
            }),
            broken: watch::Sender::new(0),
            rx_wake: Notify::new(),
            tx_wake: Notify::new(),
            tx_waiting: AtomicBool::new(false),
            driver_wake: Notify::new(),
            ack_now: AtomicBool::new(false),
            ack_armed: AtomicBool::new(false),
            peer_acked: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            ack_written: AtomicU64::new(0),
            activity: AtomicU64::new(0),
            written: AtomicU64::new(0),
            status: watch::Sender::new(StableStatus::Connected),
            reconnects: AtomicU64::new(0),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connection `cgen` broke (`why`): nothing more is read from or written
    /// to it, and the driver brings a new one.
    pub fn declare_broken(&self, cgen: u64, why: String) {
        let mut st = self.lock();
        if cgen != st.generation || *self.broken.borrow() >= cgen {
            return;
        }
        tracing::debug!(generation = cgen, "the stable conduit's connection broke: {why}");
        self.broken.send_replace(cgen);
        st.last_break = Some(why);
        drop(st);
        self.driver_wake.notify_one();
    }

    /// Ends the conduit for good; both halves fail with `t` from now on.
    pub fn fail(&self, t: Terminal) {
        let mut st = self.lock();
        if st.terminal.is_some() {
            return;
        }
        tracing::debug!("the stable conduit ended: {}", t.to_error());
        if let Terminal::Resume(f) = &t {
            self.status.send_replace(StableStatus::Failed(f.clone()));
        }
        st.terminal = Some(t);
        st.reader = None;
        let cgen = st.generation;
        drop(st);
        self.cut_through(cgen);
        self.wake_all();
    }

    /// Marks every connection up to generation `cgen` broken, whatever the
    /// state says (the conduit is over): their reads and writes return.
    fn cut_through(&self, cgen: u64) {
        self.broken.send_if_modified(|b| {
            let was = *b;
            *b = (*b).max(cgen);
            *b != was
        });
    }

    pub fn wake_all(&self) {
        self.rx_wake.notify_one();
        self.tx_wake.notify_waiters();
        self.driver_wake.notify_one();
    }

    /// The peer acknowledged everything up to `ack`.
    pub fn on_ack(&self, ack: u64) -> Result<(), Terminal> {
        // ORDERING: Acquire pairs with the writer's Release store of `sent`.
        let sent = self.sent.load(Ordering::Acquire);
        if ack > sent {
            return Err(Terminal::Violation(
                crate::rules::Rule::StableAckInBounds.name(),
                format!("the peer acknowledged frame #{ack}, but only #{sent} was sent"),
            ));
        }
        let before = self.peer_acked.fetch_max(ack, Ordering::AcqRel);
        if ack > before && self.tx_waiting.load(Ordering::Acquire) {
            self.tx_wake.notify_waiters();
        }
        // An acceptor's sessions share one budget: what is acknowledged goes
        // back to it now, not at this session's next send. (A writer busy
        // writing trims when it is done; the driver's next tick catches an
        // ack that slipped between the two.)
        if ack > before
            && self.budget.is_some()
            && let Ok(mut w) = self.writer.try_lock()
        {
            w.trim(ack);
        }
        Ok(())
    }

    /// Installs a new connection: `read` goes to the receiver, `write` to
    /// the writer (whose guard the caller holds), resuming after the peer's
    /// `peer_received`. The replay of what the peer missed runs in its own
    /// task.
    pub fn install(self: &Arc<Self>, w: &mut Writer, read: BoxRead, write: BoxWrite, peer_received: u64) {
        let mut st = self.lock();
        if st.terminal.is_some() {
            return;
        }
        st.generation += 1;
        let cgen = st.generation;
        let max = self.config.max_frame + NUMBERED_HEADER;
        st.reader = Some((cgen, StreamRx::new(read, max)));
        let first = cgen == 1;
        drop(st);
        self.peer_acked.fetch_max(peer_received, Ordering::AcqRel);
        w.install(cgen, write, peer_received);
        if !first {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.status.send_replace(StableStatus::Connected);
        self.wake_all();
        let sh = self.clone();
        tokio::spawn(async move { sh.writer.lock().await.pump(&sh).await });
    }

    /// Whether the current connection is broken (and not yet replaced).
    pub fn is_broken(&self) -> bool {
        let cgen = self.lock().generation;
        *self.broken.borrow() >= cgen
    }
}

/// The conduit's driver: acknowledges, sends heartbeats, notices a silent
/// connection, and after a break reconnects (initiator) or waits for the
/// initiator to come back (acceptor). Ends with the conduit.
pub(super) async fn drive(sh: Arc<Shared>) {
    let cfg = sh.config.clone();
    let mut tick = tokio::time::interval(cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen_activity = 0;
    let mut seen_written = 0;
    let mut silent_ticks = 0u32;
    let mut ack_deadline: Option<Instant> = None;
    let mut broken_since: Option<Instant> = None;
    let mut resume_deadline: Option<Instant> = None;
    let mut linger_until: Option<Instant> = None;
    // The connection's reader once the receiver is done with it.
    let mut reader: Option<Reader> = None;
    loop {
        let wake = sh.driver_wake.notified();
        let far = Instant::now() + Duration::from_secs(3600);
        let mut drained = false;
        tokio::select! {
            _ = wake => {}
            () = async {
                match reader.as_mut() {
                    Some(r) => incoming::drain(&sh, r).await,
                    None => std::future::pending().await,
                }
            } => drained = true,
            _ = tick.tick() => {
                if sh.budget.is_some()
                    && let Ok(mut w) = sh.writer.try_lock()
                {
                    w.trim(sh.peer_acked.load(Ordering::Acquire));
                }
                let activity = sh.activity.load(Ordering::Relaxed);
                let connected = !sh.is_broken();
                if activity == seen_activity && connected {
                    silent_ticks += 1;
                } else {
                    silent_ticks = 0;
                }
                seen_activity = activity;
                if silent_ticks >= 3 {
                    let cgen = sh.lock().generation;
                    sh.declare_broken(cgen, format!("nothing arrived for {:?} (3 heartbeats)", cfg.heartbeat * 3));
                    silent_ticks = 0;
                } else if connected && sh.written.load(Ordering::Relaxed) == seen_written {
                    // Idle: a standalone ack is the heartbeat.
                    if let Ok(mut w) = sh.writer.try_lock() {
                        driver_ack(&sh, &mut w).await;
                    }
                }
                seen_written = sh.written.load(Ordering::Relaxed);
            }
            _ = tokio::time::sleep_until(resume_deadline.unwrap_or(far)), if resume_deadline.is_some() => {
                resume_deadline = None;
            }
            _ = tokio::time::sleep_until(ack_deadline.unwrap_or(far)), if ack_deadline.is_some() => {
                ack_deadline = None;
                sh.ack_armed.store(false, Ordering::Release);
                sh.ack_now.store(true, Ordering::Release);
            }
        }
        if drained {
            reader = None;
        }
        let (terminal, halves, close_seq, peer_closed) = {
            let mut st = sh.lock();
            if st.rx_done && st.reader.is_some() {
                // A newer connection, or the receiver's reader handed over.
                reader = st.reader.take();
            }
            (st.terminal.is_some(), st.halves, st.close_seq, st.peer_closed)
        };
        if terminal {
            break;
        }
        let all_acked = sh.peer_acked.load(Ordering::Acquire) >= sh.sent.load(Ordering::Acquire);
        let ack_due = sh.received.load(Ordering::Acquire) > sh.ack_written.load(Ordering::Acquire);
        if close_seq.is_some() && peer_closed && all_acked {
            // Both directions ended and everything sent is acknowledged:
            // acknowledge what came (the peer's CLOSE above all), done.
            if ack_due && let Ok(mut w) = sh.writer.try_lock() {
                driver_ack(&sh, &mut w).await;
            }
            if sh.received.load(Ordering::Acquire) <= sh.ack_written.load(Ordering::Acquire) {
                sh.status.send_replace(StableStatus::Ended);
                break;
            }
        }
        if halves == 0 {
            match close_seq {
                None => {
                    // Dropped without closing: tell the peer, best effort.
                    if let Ok(mut w) =
                        tokio::time::timeout(Duration::from_millis(200), sh.writer.lock()).await
                    {
                        let _ = tokio::time::timeout(
                            Duration::from_millis(200),
                            w.send_unnumbered(&sh, &wire::GONE_FRAME),
                        )
                        .await;
                    }
                    break;
                }
                Some(_) => {
                    // Closed, but the peer has not closed or not everything
                    // is acknowledged: linger (reading, resuming if need be)
                    // so that nothing committed is lost.
                    let until = *linger_until.get_or_insert(Instant::now() + cfg.resume_timeout);
                    if Instant::now() >= until {
                        break;
                    }
                }
            }
        }
        if sh.ack_now.swap(false, Ordering::AcqRel) {
            let due = sh.received.load(Ordering::Acquire) > sh.ack_written.load(Ordering::Acquire);
            if due {
                match sh.writer.try_lock() {
                    Ok(mut w) => driver_ack(&sh, &mut w).await,
                    // A frame is being written; retry shortly.
                    Err(_) => ack_deadline = Some(Instant::now() + cfg.ack_delay),
                }
            }
        }
        if sh.ack_armed.load(Ordering::Acquire) && ack_deadline.is_none() {
            ack_deadline = Some(Instant::now() + cfg.ack_delay);
        }
        if sh.is_broken() {
            match &sh.side {
                Side::Initiator { .. } => {
                    if let Err(f) = handshake::reconnect(&sh).await {
                        sh.fail(Terminal::Resume(f));
                        break;
                    }
                }
                Side::Acceptor { .. } => {
                    let since = *broken_since.get_or_insert_with(Instant::now);
                    let last = sh.lock().last_break.clone().unwrap_or_default();
                    sh.status.send_replace(StableStatus::Reconnecting {
                        attempt: 0,
                        last_error: last,
                    });
                    if since.elapsed() >= cfg.resume_timeout {
                        sh.fail(Terminal::Resume(ResumeFailure::PeerDidNotReturn {
                            waited: cfg.resume_timeout,
                        }));
                        break;
                    }
                    // Wake again when the wait runs out.
                    resume_deadline = Some(since + cfg.resume_timeout);
                }
            }
        } else {
            broken_since = None;
            resume_deadline = None;
        }
    }
    // The conduit is over: let go of the connection and the registration.
    sh.lock().reader = None;
    if let Ok(mut w) = sh.writer.try_lock() {
        w.disconnect();
    } else {
        let cgen = sh.lock().generation;
        sh.cut_through(cgen);
    }
    if let Side::Acceptor { registry } = &sh.side
        && let Some(r) = registry.upgrade()
    {
        r.ended(&sh.token);
    }
    sh.wake_all();
}

#[cfg(test)]
mod tests;
