//! Shm link: the session over an `osmos-shm` segment.
//!
//! Frames travel through the segment's rings: inline when they fit the
//! segment's `max_frame`, in a slot of the sender's pool otherwise. Senders
//! encode straight into ring or slot memory.
//!
//! **One copy out.** The receiver copies each frame out of the segment exactly
//! once, into a buffer the peer cannot touch, and gives the frame (or slot)
//! back at once; the session decodes the copy. No slice over peer-writable
//! memory ever reaches the session: a hostile peer that rewrites a frame
//! while it is decoded can only have written different bytes before the
//! copy, never change what was checked.
//!
//! **Waiting without helper threads.** Nothing here blocks a tokio worker.
//! A wait first polls (briefly, and only while the peer runs on another
//! CPU and spinning has been paying off), then marks the doorbell it waits on
//! [`PARKED_REACTOR`](osmos_shm::PARKED_REACTOR), re-checks, and sleeps in
//! the tokio reactor on this side's end of the segment's wake socket pair
//! (`osmos_shm::WakePair`); the peer's ring sends one byte only when it sees
//! the mark, so a busy pair makes no system calls. The receiving half owns the
//! descriptor: it drains it and then wakes every other waiter of this side
//! (a sender short of ring space, a slot or channel credit) through one
//! [`Notify`]. Those waiters are only woken while the receiver runs, which it
//! always does while the session lives (the session's driver), and which
//! costs them one task hop; the common waits (for a frame) cost none.
//!
//! **Receiving where the answer is awaited.** The receiving half is shared
//! (`rx.rs`): the driver holds its lock only while it reads, and a caller
//! waiting for its answer may claim it ([`LinkRx::direct`](super::LinkRx::direct))
//! and read the ring on its own thread, polling while the peer runs on
//! another CPU and, off the runtime's workers, sleeping on the readable
//! bell's futex; the peer's ring then wakes that thread directly.
//!
//! **Storms.** A peer can write its end of the wake pair without publishing
//! anything. A wake that brings no frame while no other waiter of this side
//! is armed is counted; past twice the frames received plus
//! [`EMPTY_WAKES_ALLOWED`] within a second the link fails with the rule
//! `link.empty-wakes` (an honest peer wakes this side at most about once per
//! frame). When the peer's end of the pair closes (it exited, or closed it on
//! purpose), this side stops watching it and keeps waiting for its own local
//! wakes (the supervisor marking the peer dead) and its session's timers: a
//! peer that closes its end while alive only slows its own session down.
//!
//! Closing the sending half publishes this side as `Closing` and rings the
//! peer; the peer's receiver returns `Ok(None)` once it has drained the ring.
//! A peer marked dead (by its supervisor, from its pidfd) makes every wait
//! return [`LinkError::PeerGone`].

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use osmos_shm::{BellWatcher, Drained, Endpoint, FrameGrant, FrameSender, Liveness, PeerState, SlotGrant};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::{CreditMode, Link, LinkError, LinkTx, SendPermit};

mod rx;
pub use rx::ShmRx;

/// How long a receive polls the ring before parking.
const RECV_SPIN: Duration = Duration::from_micros(50);
/// How many times a receive checks the ring in a tight loop before letting
/// other tasks run (about a microsecond).
const RECV_CHECKS: u32 = 64;
/// Wakes without a frame a peer gets per second for free (see the module doc).
pub const EMPTY_WAKES_ALLOWED: u64 = 1000;

/// Converts an `osmos-shm` error into a link error.
fn shm_error(e: osmos_shm::Error) -> LinkError {
    match e {
        osmos_shm::Error::PeerGone { peer, state } => LinkError::PeerGone {
            detail: format!("the {peer} is gone (last state: {state})"),
        },
        osmos_shm::Error::Shutdown => LinkError::Closed,
        osmos_shm::Error::Violation(v) => LinkError::Violation {
            rule: v.rule.name(),
            detail: v.detail,
        },
        osmos_shm::Error::FrameTooLarge { len, max } | osmos_shm::Error::PayloadTooLarge { len, max } => {
            LinkError::FrameTooLarge { len, max }
        }
        other => LinkError::Io(std::io::Error::other(other.to_string())),
    }
}

/// Where every async waiter of one side sleeps: a receiver waiting for a
/// frame, a sender short of ring space or of a slot, a channel short of
/// credit. Each marks its doorbell, re-checks, then sleeps on this side's
/// wake descriptors in the tokio reactor; whoever wakes drains them and
/// passes the wake on to every other waiter (a byte meant for one waiter may
/// be read by another), so no wake is lost however many wait at once.
#[derive(Clone)]
pub struct SideWaiters {
    inner: Arc<WaitersInner>,
}

struct WaitersInner {
    liveness: Liveness,
    /// Registered on first use (inside the runtime); the error says why not.
    reactor: std::sync::OnceLock<Result<Reactor, String>>,
    /// Woken whenever any waiter drained a wake.
    notify: Notify,
    /// Waiters armed now, other than the receiver (a wake while none is
    /// armed and no frame came is empty).
    armed: AtomicUsize,
    /// The peer's end of the wake pair is closed: stop watching ours.
    link_closed: std::sync::atomic::AtomicBool,
    /// The peer's count of wake bytes sent ([`Liveness::peer_wakes_sent`])
    /// when a drain last emptied this side's end: the bytes it sent since
    /// may wait there unread.
    drained_to: std::sync::atomic::AtomicU32,
    /// Wakes seen since then. Each took at least one byte, so more of them
    /// than the peer's count says it sent is a peer that does not count
    /// (a storm): it is drained at every wake, and each empty wake counts.
    wakes_since_drain: std::sync::atomic::AtomicU32,
    /// Whether polling before a wait has been paying off.
    spin: std::sync::Mutex<crate::adaptive::Adaptive>,
}

impl std::fmt::Debug for SideWaiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SideWaiters")
            .field("side", &self.inner.liveness.side())
            .field("armed", &self.inner.armed.load(Ordering::Relaxed))
            .finish()
    }
}

impl SideWaiters {
    fn new(liveness: Liveness) -> Self {
        SideWaiters {
            inner: Arc::new(WaitersInner {
                liveness,
                reactor: std::sync::OnceLock::new(),
                notify: Notify::new(),
                armed: AtomicUsize::new(0),
                link_closed: std::sync::atomic::AtomicBool::new(false),
                drained_to: std::sync::atomic::AtomicU32::new(0),
                wakes_since_drain: std::sync::atomic::AtomicU32::new(0),
                spin: std::sync::Mutex::new(crate::adaptive::Adaptive::new()),
            }),
        }
    }

    fn reactor(&self) -> Result<&Reactor, LinkError> {
        self.inner
            .reactor
            .get_or_init(|| Reactor::register(&self.inner.liveness).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| LinkError::Io(std::io::Error::other(e.clone())))
    }

    /// Waits until `ready` returns `Ok(true)`: while the peer runs on
    /// another CPU, `ready` is polled for a while first (see
    /// [`poll_for`](Self::poll_for)); then `arm` marks the doorbell (the
    /// waiter's half of SYNC POINT A), `ready` is re-checked, and the wait
    /// sleeps until this side is woken; `disarm` withdraws the mark. `check`
    /// runs before every sleep and ends the wait with its error (a dead
    /// peer, a reset channel).
    pub(crate) async fn wait<E: From<LinkError>>(
        &self,
        mut ready: impl FnMut() -> Result<bool, E>,
        mut arm: impl FnMut(),
        mut disarm: impl FnMut(),
        mut check: impl FnMut() -> Result<(), E>,
    ) -> Result<(), E> {
        if ready()? || self.poll_for(&mut ready).await? {
            return Ok(());
        }
        loop {
            if ready()? {
                return Ok(());
            }
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // ORDERING: Relaxed: a count for the storm heuristic only.
            self.inner.armed.fetch_add(1, Ordering::Relaxed);
            let _armed = Armed(&self.inner.armed);
            arm();
            let r = match ready() {
                Ok(true) => Ok(true),
                Ok(false) => check().map(|()| false),
                Err(e) => Err(e),
            };
            if !matches!(r, Ok(false)) {
                disarm();
                return r.map(|_| ());
            }
            let slept = self.sleep(notified).await;
            disarm();
            slept?;
        }
    }

    /// Polls `ready` for up to [`RECV_SPIN`], letting other tasks run every
    /// [`RECV_CHECKS`] checks, while the peer runs on another CPU (what it
    /// frees — ring space, a slot, credit — is then seen within a
    /// microsecond, against tens of microseconds for a wake across CPUs) and
    /// while polling has been paying off. A peer on this CPU cannot run
    /// while we poll: then this returns at once.
    async fn poll_for<E>(&self, ready: &mut impl FnMut() -> Result<bool, E>) -> Result<bool, E> {
        let liveness = &self.inner.liveness;
        let adapt = |f: fn(&mut crate::adaptive::Adaptive) -> bool| match self.inner.spin.lock() {
            Ok(mut a) => f(&mut a),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        };
        if !liveness.peer_on_another_cpu() || !adapt(crate::adaptive::Adaptive::may_try) {
            return Ok(false);
        }
        let until = Instant::now() + RECV_SPIN;
        loop {
            for _ in 0..RECV_CHECKS {
                std::hint::spin_loop();
                if ready()? {
                    adapt(|a| {
                        a.paid();
                        true
                    });
                    return Ok(true);
                }
            }
            if Instant::now() >= until || !liveness.peer_on_another_cpu() {
                adapt(|a| {
                    a.missed();
                    false
                });
                return Ok(false);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Sleeps until another waiter passes a wake on (`notified`, enabled
    /// before the caller armed its doorbell) or this side's descriptors wake
    /// it; a wake seen here is passed on. Returns whether the peer's wake
    /// ended this sleep.
    ///
    /// The peer's wake bytes are left in the descriptor, not read at every
    /// wake: tokio's epoll is edge-triggered, and each byte the peer sends
    /// makes the descriptor report readable again, read or not. A drain
    /// (a `recvfrom` that frees a socket buffer per byte: 8 % of all CPU
    /// samples when 64 cells were called at once and each drained at every
    /// wake) comes only when the bytes left unread could fill the peer's
    /// send buffer ([`osmos_shm::lazy_drain_limit`]), when the peer may
    /// have closed its end, or when it woke this side more often than it
    /// says it sent bytes (a peer that storms without counting is then
    /// drained at every wake, as before, and its empty wakes end it). So
    /// the descriptor never holds more than the limit when this side
    /// sleeps: a sleep starts only once its readiness was cleared, which
    /// happens here after the count was looked at, and a byte sent since
    /// sets it again.
    async fn sleep(
        &self,
        notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) -> Result<bool, LinkError> {
        let reactor = self.reactor()?;
        let watch_link = !self.inner.link_closed.load(Ordering::Relaxed);
        let woken = tokio::select! {
            biased;
            _ = notified => return Ok(false),
            guard = reactor.link.readable(), if watch_link => {
                let mut guard = guard.map_err(LinkError::Io)?;
                let sent = self.inner.liveness.peer_wakes_sent();
                // ORDERING: Relaxed here and for the stores below: counts
                // that only choose whether to drain (no data is published
                // through them); a stale one costs a drain or defers one by
                // a wake, within the limit's margin.
                let unread = sent.wrapping_sub(self.inner.drained_to.load(Ordering::Relaxed));
                let wakes = self.inner.wakes_since_drain.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                if unread < reactor.drain_after && unread >= wakes && !guard.ready().is_read_closed() {
                    guard.clear_ready();
                } else {
                    match osmos_shm::drain_link(std::os::fd::AsFd::as_fd(guard.get_inner())) {
                        Drained::Empty(_) => {
                            // The peer counts before it sends: a byte counted
                            // in `sent` that arrives after this drain waits
                            // unread and uncounted, one per ringing thread of
                            // the peer at most (the limit's margin covers it).
                            self.inner.drained_to.store(sent, Ordering::Relaxed);
                            self.inner.wakes_since_drain.store(0, Ordering::Relaxed);
                            guard.clear_ready();
                        }
                        Drained::More(_) => {}
                        Drained::Closed => {
                            self.inner.link_closed.store(true, Ordering::Relaxed);
                            guard.clear_ready();
                        }
                    }
                }
                true
            }
            guard = reactor.local.readable() => {
                let mut guard = guard.map_err(LinkError::Io)?;
                osmos_shm::drain_local(std::os::fd::AsFd::as_fd(guard.get_inner()));
                guard.clear_ready();
                false
            }
        };
        self.inner.notify.notify_waiters();
        Ok(woken)
    }

    fn any_armed(&self) -> bool {
        self.inner.armed.load(Ordering::Relaxed) > 0
    }
}

/// Counts one armed waiter while it lives (also when its future is dropped).
struct Armed<'a>(&'a AtomicUsize);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A session link over one side of a segment.
pub struct ShmLink {
    endpoint: Endpoint,
    waiters: SideWaiters,
}

impl std::fmt::Debug for ShmLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmLink")
            .field("side", &self.endpoint.liveness.side())
            .finish()
    }
}

impl ShmLink {
    /// A link over `endpoint` (from [`osmos_shm::Segment::endpoint`]). The
    /// segment must have its wake pair (host side: [`osmos_shm::Segment::create`];
    /// cell side: [`osmos_shm::Segment::attach_with_wake`]), and the link must
    /// be used inside a tokio runtime; otherwise every wait fails with an
    /// error that says so.
    pub fn new(endpoint: Endpoint) -> Self {
        let waiters = SideWaiters::new(endpoint.liveness.clone());
        ShmLink { endpoint, waiters }
    }
}

/// This side's wake descriptors, registered with the tokio reactor.
struct Reactor {
    /// This side's end of the wake pair: the peer's rings.
    link: AsyncFd<OwnedFd>,
    /// This process's local eventfd: deaths and shutdowns marked here.
    local: AsyncFd<OwnedFd>,
    /// Wake bytes that may wait unread in `link` ([`osmos_shm::lazy_drain_limit`]).
    drain_after: u32,
}

impl Reactor {
    fn register(liveness: &Liveness) -> Result<Reactor, LinkError> {
        let unavailable = |why: String| {
            LinkError::Io(std::io::Error::other(format!(
                "the shm link cannot wait for its peer: {why}"
            )))
        };
        let link = liveness.wake_fd().ok_or_else(|| {
            unavailable(
                "the segment was attached without its wake pair (attach with Segment::attach_with_wake)"
                    .into(),
            )
        })?;
        let dup = |fd: std::os::fd::BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(|e| unavailable(format!("dup of a wake descriptor failed: {e}")))
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(unavailable(
                "it is used outside a tokio runtime (use it inside one)".into(),
            ));
        }
        let register = |fd: OwnedFd| {
            // SAFETY: `fd` is an owned, open descriptor (a fresh dup); the
            // AsyncFd owns it, so it stays open and refers to the same file
            // for the AsyncFd's whole life, and `OwnedFd::as_raw_fd` always
            // returns the same number.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(|e| unavailable(format!("registering a wake descriptor with tokio failed: {e}")))
        };
        Ok(Reactor {
            drain_after: osmos_shm::lazy_drain_limit(link),
            link: register(dup(link)?)?,
            local: register(dup(liveness.local_wake_fd())?)?,
        })
    }
}

impl Link for ShmLink {
    type Tx = ShmTx;
    type Rx = ShmRx;

    fn max_frame(&self) -> usize {
        self.endpoint.sender.max_message()
    }

    fn credit_mode(&self) -> CreditMode {
        CreditMode::SharedTable(self.endpoint.credit.clone(), self.waiters.clone())
    }

    fn split(self) -> (ShmTx, ShmRx) {
        let Endpoint {
            mut sender,
            receiver,
            liveness,
            ..
        } = self.endpoint;
        let writable = sender.producer().writable_watcher();
        let released = sender.slots().released_watcher();
        let sent_to = sender.producer().readable_watcher();
        let tx = ShmTx {
            sender,
            writable,
            released,
            liveness: liveness.clone(),
            waiters: self.waiters.clone(),
            closed: false,
        };
        let rx = ShmRx::new(receiver, sent_to, liveness, self.waiters);
        (tx, rx)
    }
}

/// The sending half of an shm link.
pub struct ShmTx {
    sender: FrameSender,
    writable: BellWatcher,
    released: BellWatcher,
    liveness: Liveness,
    waiters: SideWaiters,
    closed: bool,
}

impl ShmTx {
    fn check_open(&self) -> Result<(), LinkError> {
        if self.closed {
            return Err(LinkError::Closed);
        }
        self.liveness.check().map_err(shm_error)
    }
}

/// Waits on `bell` in the reactor until `ready` (see [`SideWaiters::wait`]).
async fn wait_on(
    waiters: &SideWaiters,
    bell: &BellWatcher,
    liveness: &Liveness,
    ready: impl FnMut() -> Result<bool, LinkError>,
) -> Result<(), LinkError> {
    waiters
        .wait(
            ready,
            || bell.arm_reactor(),
            || bell.disarm_reactor(),
            || liveness.check().map_err(shm_error),
        )
        .await
}

impl LinkTx for ShmTx {
    type Permit<'a> = ShmPermit<'a>;

    async fn reserve(&mut self, len: usize) -> Result<ShmPermit<'_>, LinkError> {
        let max = self.sender.max_message();
        if len > max {
            return Err(LinkError::FrameTooLarge { len, max });
        }
        self.check_open()?;
        let ShmTx {
            sender,
            writable,
            released,
            liveness,
            waiters,
            ..
        } = self;
        if len <= sender.max_inline() {
            // Probe, then take: a probe's grant is dropped unused (sending
            // nothing); space only grows until we take it.
            wait_on(waiters, writable, liveness, || {
                Ok(sender.producer().try_reserve(len).map_err(shm_error)?.is_some())
            })
            .await?;
            let grant = sender.producer().try_reserve(len).map_err(shm_error)?;
            let grant = grant.ok_or_else(|| {
                LinkError::Io(std::io::Error::other("ring space found free was taken (a bug)"))
            })?;
            return Ok(ShmPermit::Inline { grant, len });
        }
        wait_on(waiters, released, liveness, || {
            Ok(sender.slots().try_alloc(len).map_err(shm_error)?.is_some())
        })
        .await?;
        wait_on(waiters, writable, liveness, || {
            Ok(sender
                .producer()
                .try_reserve_slot_ref()
                .map_err(shm_error)?
                .is_some())
        })
        .await?;
        let (producer, slots) = sender.parts();
        let taken = || LinkError::Io(std::io::Error::other("space found free was taken (a bug)"));
        let slot = slots.try_alloc(len).map_err(shm_error)?.ok_or_else(taken)?;
        let frame = producer
            .try_reserve_slot_ref()
            .map_err(shm_error)?
            .ok_or_else(taken)?;
        Ok(ShmPermit::Slot { slot, frame, len })
    }

    /// The peer has not yet taken every frame from the ring. (A broken
    /// ring says no here; the send that follows reports it.)
    fn peer_behind(&mut self) -> bool {
        self.sender.producer().has_unread().unwrap_or(false)
    }

    /// Sends at once when the ring (and, for a large frame, the slot pool)
    /// has room: the frame is encoded straight into shared memory.
    fn try_send_now(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<bool, LinkError> {
        let max = self.sender.max_message();
        if len > max {
            return Err(LinkError::FrameTooLarge { len, max });
        }
        self.check_open()?;
        if len <= self.sender.max_inline() {
            let Some(mut grant) = self.sender.producer().try_reserve(len).map_err(shm_error)? else {
                return Ok(false);
            };
            fill(&mut grant.as_mut_slice()[..len]);
            grant.commit(len).map_err(shm_error)?;
            return Ok(true);
        }
        let (producer, slots) = self.sender.parts();
        // Unused grants are dropped without sending anything.
        let Some(mut slot) = slots.try_alloc(len).map_err(shm_error)? else {
            return Ok(false);
        };
        let Some(mut frame) = producer.try_reserve_slot_ref().map_err(shm_error)? else {
            return Ok(false);
        };
        fill(&mut slot.as_mut_slice()[..len]);
        let r = slot.finish(len).map_err(shm_error)?;
        frame.write(0, &r.encode()).map_err(shm_error)?;
        frame.commit(osmos_shm::SlotRef::ENCODED_LEN).map_err(shm_error)?;
        Ok(true)
    }

    /// A large frame waits for a free slot without the sending half: until
    /// the peer releases a slot (its `released` bell rings).
    fn room_wait(&mut self, len: usize) -> Option<super::RoomWait> {
        if len <= self.sender.max_inline() || len > self.sender.max_message() {
            return None;
        }
        // Read the ring count before looking, so a release after the look
        // ends the wait.
        let seen = self.released.seq();
        match self.sender.slots().try_alloc(len) {
            // A free slot (dropped unused, it stays free): the frame waits
            // for ring space only, under the half. Errors are reported by
            // `reserve`.
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) => {}
        }
        let (waiters, bell, liveness) = (self.waiters.clone(), self.released.clone(), self.liveness.clone());
        Some(Box::pin(async move {
            wait_on(&waiters, &bell, &liveness, || Ok(bell.seq() != seen)).await
        }))
    }

    async fn close(&mut self) -> Result<(), LinkError> {
        self.close_now();
        Ok(())
    }
}

impl ShmTx {
    fn close_now(&mut self) {
        if !self.closed {
            self.closed = true;
            self.liveness.publish(PeerState::Closing);
            self.sender.producer().wake_consumer();
        }
    }
}

impl Drop for ShmTx {
    /// A dropped sending half closes it: the peer drains and sees the end.
    fn drop(&mut self) {
        self.close_now();
    }
}

/// A reservation in the ring (inline) or in a slot plus a ring frame.
pub enum ShmPermit<'a> {
    /// The frame goes inline in the ring.
    Inline {
        /// The ring reservation.
        grant: FrameGrant<'a>,
        /// Bytes reserved.
        len: usize,
    },
    /// The frame goes in a slot, referenced from a ring frame.
    Slot {
        /// The slot.
        slot: SlotGrant<'a>,
        /// The ring frame that will carry the slot reference.
        frame: FrameGrant<'a>,
        /// Bytes reserved.
        len: usize,
    },
}

impl SendPermit for ShmPermit<'_> {
    fn buf(&mut self) -> &mut [u8] {
        match self {
            ShmPermit::Inline { grant, len } => &mut grant.as_mut_slice()[..*len],
            ShmPermit::Slot { slot, len, .. } => &mut slot.as_mut_slice()[..*len],
        }
    }

    async fn commit(self) -> Result<(), LinkError> {
        match self {
            ShmPermit::Inline { grant, len } => grant.commit(len).map_err(shm_error),
            ShmPermit::Slot { slot, mut frame, len } => {
                let r = slot.finish(len).map_err(shm_error)?;
                frame.write(0, &r.encode()).map_err(shm_error)?;
                frame.commit(osmos_shm::SlotRef::ENCODED_LEN).map_err(shm_error)
            }
        }
    }
}
