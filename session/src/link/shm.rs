//! Shm link: the session over an `osmos-shm` segment.
//!
//! Frames travel through the segment's rings: inline when they fit the
//! segment's `max_frame`, in a slot of the sender's pool otherwise, and the
//! receiver reads them in place. Nothing here blocks a tokio worker thread:
//! every operation is first tried without waiting, and when it must wait, the
//! wait (a futex park) is handed to a **parker**, a helper thread that parks
//! on the right doorbell and completes a oneshot when the doorbell rings or
//! the peer dies. Each half has its own parker, so each doorbell has exactly
//! one waiting thread (the doorbell protocol's parked flag requires it), even
//! when a `recv` future is cancelled and retried. An idle link costs no CPU:
//! the parkers sleep in the kernel.
//!
//! Closing the sending half publishes this side as `Closing` and rings the
//! peer; the peer's receiver returns `Ok(None)` once it has drained the ring.
//! A peer marked dead (by its supervisor, from its pidfd) makes every wait
//! return [`LinkError::PeerGone`].

use std::ops::Deref;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use osmos_shm::{
    BellWatcher, Endpoint, FrameGrant, FrameReceiver, FrameSender, Liveness, PeerState, SlotGrant,
};
use tokio::sync::oneshot;

use super::{CreditMode, Link, LinkError, LinkRx, LinkTx, SendPermit};

/// How long a receive polls the ring before parking.
const RECV_SPIN: std::time::Duration = std::time::Duration::from_micros(50);
/// The spin score of a fresh receiver, and its most (see `ShmRx::recv`).
const SPIN_SCORE_MAX: u8 = 4;
/// A receiver that stopped spinning tries one window after this many parks.
const SPIN_PROBE_EVERY: u32 = 16;
/// How many times a receive gives the CPU to a peer on the same CPU before
/// parking.
const RECV_YIELDS: u32 = 2;
/// How many times a receive checks the ring in a tight loop before letting
/// other tasks run (about a microsecond).
const RECV_CHECKS: u32 = 64;

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

/// One wait handed to a parker thread.
struct Park {
    bell: BellWatcher,
    seen: u32,
    done: oneshot::Sender<Result<(), osmos_shm::Error>>,
}

/// A helper thread that parks on doorbells for an async half.
struct Parker {
    requests: Option<std_mpsc::Sender<Park>>,
    thread: Option<JoinHandle<()>>,
    /// Rung on drop so a parked thread wakes and sees the queue closed.
    bells: Vec<BellWatcher>,
}

impl Parker {
    fn spawn(name: &str, bells: Vec<BellWatcher>) -> Result<Self, LinkError> {
        let (tx, rx) = std_mpsc::channel::<Park>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                for p in rx {
                    let r = p.bell.wait_change(p.seen, None);
                    let _ = p.done.send(r);
                }
            })
            .map_err(|e| {
                LinkError::Io(std::io::Error::other(format!(
                    "cannot start the {name} thread: {e}"
                )))
            })?;
        Ok(Parker {
            requests: Some(tx),
            thread: Some(thread),
            bells,
        })
    }

    /// Waits (asynchronously) until `bell` rings after `seen`.
    async fn wait(&self, bell: &BellWatcher, seen: u32) -> Result<(), LinkError> {
        let (done, result) = oneshot::channel();
        let park = Park {
            bell: bell.clone(),
            seen,
            done,
        };
        self.requests
            .as_ref()
            .and_then(|r| r.send(park).ok())
            .ok_or_else(|| LinkError::Io(std::io::Error::other("the shm parker thread is gone")))?;
        match result.await {
            Ok(r) => r.map_err(shm_error),
            Err(_) => Err(LinkError::Io(std::io::Error::other(
                "the shm parker thread stopped",
            ))),
        }
    }
}

impl Drop for Parker {
    fn drop(&mut self) {
        self.requests = None;
        for b in &self.bells {
            b.ring();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A session link over one side of a segment.
pub struct ShmLink {
    endpoint: Endpoint,
}

impl std::fmt::Debug for ShmLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmLink")
            .field("side", &self.endpoint.liveness.side())
            .finish()
    }
}

impl ShmLink {
    /// A link over `endpoint` (from [`osmos_shm::Segment::endpoint`]).
    pub fn new(endpoint: Endpoint) -> Self {
        ShmLink { endpoint }
    }
}

impl Link for ShmLink {
    type Tx = ShmTx;
    type Rx = ShmRx;

    fn max_frame(&self) -> usize {
        self.endpoint.sender.max_message()
    }

    fn credit_mode(&self) -> CreditMode {
        CreditMode::SharedTable(self.endpoint.credit.clone())
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
        let readable = receiver.readable_watcher();
        let tx = ShmTx {
            parker: Parker::spawn("osmos-shm-tx", vec![writable.clone(), released.clone()]),
            sender,
            writable,
            released,
            liveness: liveness.clone(),
            closed: false,
        };
        let rx = ShmRx {
            spin_score: SPIN_SCORE_MAX,
            parks_unspun: 0,
            parker: Parker::spawn("osmos-shm-rx", vec![readable.clone()]),
            receiver,
            readable,
            liveness,
        };
        (tx, rx)
    }
}

/// The sending half of an shm link.
pub struct ShmTx {
    sender: FrameSender,
    writable: BellWatcher,
    released: BellWatcher,
    liveness: Liveness,
    parker: Result<Parker, LinkError>,
    closed: bool,
}

impl ShmTx {
    fn parker(&self) -> Result<&Parker, LinkError> {
        self.parker
            .as_ref()
            .map_err(|e| LinkError::Io(std::io::Error::other(e.to_string())))
    }

    fn check_open(&self) -> Result<(), LinkError> {
        if self.closed {
            return Err(LinkError::Closed);
        }
        self.liveness.check().map_err(shm_error)
    }
}

impl LinkTx for ShmTx {
    type Permit<'a> = ShmPermit<'a>;

    async fn reserve(&mut self, len: usize) -> Result<ShmPermit<'_>, LinkError> {
        let max = self.sender.max_message();
        if len > max {
            return Err(LinkError::FrameTooLarge { len, max });
        }
        self.check_open()?;
        if len <= self.sender.max_inline() {
            // Probe, then take: a probe's grant is dropped unused (sending
            // nothing); space only grows until we take it.
            loop {
                let seen = self.writable.seq();
                if self
                    .sender
                    .producer()
                    .try_reserve(len)
                    .map_err(shm_error)?
                    .is_some()
                {
                    break;
                }
                self.parker()?.wait(&self.writable, seen).await?;
            }
            let grant = self.sender.producer().try_reserve(len).map_err(shm_error)?;
            let grant = grant.expect("space found by the probe is still free");
            return Ok(ShmPermit::Inline { grant, len });
        }
        loop {
            let seen = self.released.seq();
            if self.sender.slots().try_alloc(len).map_err(shm_error)?.is_some() {
                break;
            }
            self.parker()?.wait(&self.released, seen).await?;
        }
        loop {
            let seen = self.writable.seq();
            if self
                .sender
                .producer()
                .try_reserve_slot_ref()
                .map_err(shm_error)?
                .is_some()
            {
                break;
            }
            self.parker()?.wait(&self.writable, seen).await?;
        }
        let (producer, slots) = self.sender.parts();
        let slot = slots
            .try_alloc(len)
            .map_err(shm_error)?
            .expect("the slot found by the probe is still free");
        let frame = producer
            .try_reserve_slot_ref()
            .map_err(shm_error)?
            .expect("ring space found by the probe is still free");
        Ok(ShmPermit::Slot { slot, frame, len })
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

    async fn close(&mut self) -> Result<(), LinkError> {
        if !self.closed {
            self.closed = true;
            self.liveness.publish(PeerState::Closing);
            self.sender.producer().wake_consumer();
        }
        Ok(())
    }
}

impl Drop for ShmTx {
    /// A dropped sending half closes it: the peer drains and sees the end.
    fn drop(&mut self) {
        if !self.closed {
            self.closed = true;
            self.liveness.publish(PeerState::Closing);
            self.sender.producer().wake_consumer();
        }
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

/// The receiving half of an shm link.
pub struct ShmRx {
    /// Recent spin windows that found a frame, minus twice those that did
    /// not, within `0..=SPIN_SCORE_MAX`.
    spin_score: u8,
    /// Parks since the last spin window.
    parks_unspun: u32,
    receiver: FrameReceiver,
    readable: BellWatcher,
    liveness: Liveness,
    parker: Result<Parker, LinkError>,
}

impl Drop for ShmRx {
    /// Nobody will read this side's ring again: mark this side dead, so that
    /// a peer waiting for ring space (or anything else) gets `PeerGone`
    /// instead of waiting forever.
    fn drop(&mut self) {
        self.liveness.mark_dead(self.liveness.side());
    }
}

/// A frame received over shm, read in place; released when dropped.
pub struct ShmFrame<'a>(osmos_shm::Message<'a>);

impl Deref for ShmFrame<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.bytes()
    }
}

impl ShmRx {
    /// Whether a frame is ready, checking in a tight loop for about a
    /// microsecond while the peer runs on another CPU.
    fn has_frame_soon(&mut self) -> Result<bool, LinkError> {
        if self.receiver.has_frame().map_err(shm_error)? {
            return Ok(true);
        }
        // Where the peer runs does not change within a microsecond: look once.
        if !self.liveness.peer_on_another_cpu() {
            return Ok(false);
        }
        for _ in 1..RECV_CHECKS {
            std::hint::spin_loop();
            if self.receiver.has_frame().map_err(shm_error)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl LinkRx for ShmRx {
    type Frame<'a> = ShmFrame<'a>;

    async fn recv(&mut self) -> Result<Option<ShmFrame<'_>>, LinkError> {
        let peer = self.liveness.side().peer();
        // Poll for a while before parking: handing the wait to the parker
        // and being woken back costs two thread wakes, 25-55 µs each across
        // CPUs on a small VM, while a peer that answers within the window
        // is seen at once.
        // - Peer on another CPU: check the ring in a short tight loop (a
        //   frame is seen within ~0.1 µs), then let other tasks run.
        // - Peer on our CPU: spinning would only delay it; give it the CPU
        //   (`sched_yield`) and check again when it is done.
        let spin_until = std::time::Instant::now() + RECV_SPIN;
        let mut yields = 0;
        // Spin only while spinning pays: windows that end without a frame
        // (a slow peer, or many sessions sharing few CPUs) lower the score,
        // and at zero a receive parks at once, trying a window again now and
        // then.
        let may_spin = self.spin_score > 0 || self.parks_unspun >= SPIN_PROBE_EVERY;
        let mut spun = false;
        loop {
            let seen = self.readable.seq();
            if self.has_frame_soon()? {
                if spun {
                    self.spin_score = (self.spin_score + 1).min(SPIN_SCORE_MAX);
                    self.parks_unspun = 0;
                }
                break;
            }
            // Empty. A closing or dead peer published everything it will.
            match self.liveness.state(peer) {
                PeerState::Closing | PeerState::Dead => {
                    if self.receiver.has_frame().map_err(shm_error)? {
                        break;
                    }
                    if self.liveness.state(peer) == PeerState::Dead {
                        return Err(LinkError::PeerGone {
                            detail: format!("the {peer} died"),
                        });
                    }
                    return Ok(None);
                }
                _ => {}
            }
            if may_spin && std::time::Instant::now() < spin_until {
                if self.liveness.peer_on_another_cpu() {
                    spun = true;
                    tokio::task::yield_now().await;
                    continue;
                }
                if yields < RECV_YIELDS {
                    yields += 1;
                    std::thread::yield_now();
                    tokio::task::yield_now().await;
                    continue;
                }
            }
            if spun {
                // A whole window without a frame.
                self.spin_score = self.spin_score.saturating_sub(2);
                self.parks_unspun = 0;
                spun = false;
            } else {
                self.parks_unspun = self.parks_unspun.saturating_add(1);
            }
            let parker = self
                .parker
                .as_ref()
                .map_err(|e| LinkError::Io(std::io::Error::other(e.to_string())))?;
            match parker.wait(&self.readable, seen).await {
                Ok(()) => {}
                // The peer died: drain what it published first.
                Err(LinkError::PeerGone { .. }) if self.receiver.has_frame().map_err(shm_error)? => break,
                Err(e) => return Err(e),
            }
        }
        let m = self.receiver.try_recv().map_err(shm_error)?;
        Ok(Some(ShmFrame(m.expect("a frame found ready is still there"))))
    }
}
