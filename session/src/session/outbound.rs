//! Sending: the erased link half behind the send lock, the paths a frame
//! takes out (at once, waiting for room, or queued for the writer task), the
//! bounded outbox, and the stall clocks (`peer.drains-its-link`,
//! `peer.releases-its-slots`).

use crate::rules::Rule;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::warn;

use super::gather::{Fill, Gathered};
use super::{Shared, link_failed, wait_ended};
use crate::error::SessionError;
use crate::link::{LinkError, LinkTx, RoomWait, SendPermit};
use crate::wire::Message;
use crate::wire::spliced::Encode;

/// Most answers queued for a peer that is not reading them.
const MAX_OUTBOX: usize = 65_536;

/// How long the receive side reads on after a send found the peer's end
/// closed, before the session ends with the link's failure.
pub(super) const PEER_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A send found the peer's end of the link closed or gone.
///
/// A peer that ends its session writes its goodbye and then closes, so its
/// last frames may still wait unread on this side when a send fails. The
/// session does not end at once with a link detail: the driver reads on and
/// the session ends with what it reads (the goodbye, or the link's end),
/// or with the send's failure once [`PEER_CLOSE_GRACE`] has passed.
#[derive(Default)]
pub(super) struct PeerClosing {
    /// The first failed send's error.
    failure: std::sync::OnceLock<SessionError>,
    /// Tells the driver to start the grace.
    started: tokio::sync::Notify,
}

impl PeerClosing {
    fn saw(&self, err: SessionError) {
        if self.failure.set(err).is_ok() {
            self.started.notify_one();
        }
    }

    fn seen(&self) -> bool {
        self.failure.get().is_some()
    }

    /// Waits until a send has found the peer's end closed.
    pub(super) async fn started(&self) {
        self.started.notified().await;
    }

    /// The failed send's error, for a session that ends with it.
    pub(super) fn failure(&self) -> SessionError {
        self.failure.get().cloned().unwrap_or(SessionError::Link {
            detail: "the peer closed the link".into(),
        })
    }
}

/// The erased sending half of the link.
pub(super) trait ErasedTx: Send {
    /// [`LinkTx::try_send_now`].
    fn try_send_now(&mut self, len: usize, fill: Fill<'_>) -> Result<bool, LinkError>;
    /// Reserves `len` bytes (waiting for room), fills them and commits.
    fn send_frame<'a>(
        &'a mut self,
        len: usize,
        fill: Fill<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), LinkError>> + Send + 'a>>;
    /// [`LinkTx::room_wait`].
    fn room_wait(&mut self, len: usize) -> Option<RoomWait>;
    /// [`LinkTx::peer_behind`].
    fn peer_behind(&mut self) -> bool;
    fn close(&mut self) -> Pin<Box<dyn Future<Output = Result<(), LinkError>> + Send + '_>>;
}

impl<T: LinkTx> ErasedTx for T {
    fn try_send_now(&mut self, len: usize, fill: Fill<'_>) -> Result<bool, LinkError> {
        LinkTx::try_send_now(self, len, &mut |buf| fill(buf))
    }

    fn send_frame<'a>(
        &'a mut self,
        len: usize,
        fill: Fill<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), LinkError>> + Send + 'a>> {
        Box::pin(async move {
            let mut permit = self.reserve(len).await?;
            fill(permit.buf());
            permit.commit().await
        })
    }

    fn room_wait(&mut self, len: usize) -> Option<RoomWait> {
        LinkTx::room_wait(self, len)
    }

    fn peer_behind(&mut self) -> bool {
        LinkTx::peer_behind(self)
    }

    fn close(&mut self) -> Pin<Box<dyn Future<Output = Result<(), LinkError>> + Send + '_>> {
        Box::pin(LinkTx::close(self))
    }
}

impl Shared {
    /// Sends a message now (waiting for link capacity).
    pub(crate) fn send<'a>(
        &'a self,
        msg: &'a (impl Encode + ?Sized),
    ) -> impl Future<Output = Result<(), SessionError>> + 'a {
        self.send_with::<false>(msg, None)
    }

    /// Sends a message (waiting for link capacity), calling `committing`
    /// once it has room, just before the frame becomes visible to the peer.
    pub(super) fn send_then<'a>(
        &'a self,
        msg: &'a (impl Encode + ?Sized),
        committing: &'a (dyn Fn() + Sync),
    ) -> impl Future<Output = Result<(), SessionError>> + 'a {
        self.send_with::<false>(msg, Some(committing))
    }

    /// Sends a channel's item (an `Item` message), gathering it into a
    /// batch while the peer is behind (see `gather`). A batch it begins goes
    /// out when the writer task runs, if nothing sends it before: a task
    /// that sends item after item without pausing fills batches, and the
    /// last one leaves as soon as it pauses (or with whatever it sends
    /// next).
    pub(crate) fn send_item<'a>(
        &'a self,
        msg: &'a (impl Encode + ?Sized),
    ) -> impl Future<Output = Result<(), SessionError>> + 'a {
        self.send_with::<true>(msg, None)
    }

    /// The one sending path of [`send`](Self::send),
    /// [`send_then`](Self::send_then) and [`send_item`](Self::send_item):
    /// at once (or, for an item, gathered) if it can, else waiting.
    async fn send_with<const GATHER: bool>(
        &self,
        msg: &(impl Encode + ?Sized),
        committing: Option<&(dyn Fn() + Sync)>,
    ) -> Result<(), SessionError> {
        // Callers that try [`try_send_item`](Self::try_send_item) first come
        // here only when it could not send: they pay the checks twice, on
        // the slow path alone.
        let len = msg.encoded_len();
        self.check_sendable(msg.kind(), len)?;
        let fill = |buf: &mut [u8]| {
            if let Some(committing) = committing {
                committing();
            }
            msg.write_to(buf);
        };
        let r = match self.try_send::<GATHER>(len, &fill) {
            Ok(true) => return Ok(()),
            Ok(false) => self.send_waiting(len, &fill).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) => Err(self.send_failure(e).await),
        }
    }

    /// [`send_item`](Self::send_item) if it can be done now without
    /// waiting: `Ok(true)` once the item is sent or gathered, `Ok(false)` if
    /// it would have to wait (and an error only where `send_item` would
    /// fail the same way). Most items of a stream go this way, with no
    /// future built for them.
    #[inline]
    pub(crate) fn try_send_item(&self, msg: &(impl Encode + ?Sized)) -> Result<bool, SessionError> {
        let len = msg.encoded_len();
        self.check_sendable(msg.kind(), len)?;
        match self.try_send::<true>(len, &|buf: &mut [u8]| {
            msg.write_to(buf);
        }) {
            Ok(sent) => Ok(sent),
            // `send_item` reports a broken link with the session's reason.
            Err(_) => Ok(false),
        }
    }

    /// Sends the gathered items, if any wait, waiting for room (the writer
    /// task, see [`send_item`](Self::send_item)); false if the session
    /// ended.
    async fn flush_gathered(&self) -> bool {
        let mut ended = self.ended.subscribe();
        let r = tokio::select! {
            r = async {
                let _waiting = self.link_stall.enter();
                self.tx.lock().await.flush().await
            } => r,
            _ = wait_ended(&mut ended) => return false,
        };
        match r {
            Ok(()) => {
                self.link_stall.progress();
                true
            }
            Err(e) => {
                self.link_broke(e);
                false
            }
        }
    }

    /// Why a send failed, as the caller should see it: when the peer's end
    /// closed, the session's own reason once the receive side has read the
    /// peer's last frames (bounded by [`PEER_CLOSE_GRACE`]).
    pub(super) async fn send_failure(&self, e: SessionError) -> SessionError {
        if !self.peer_closing.seen() {
            return e;
        }
        let mut ended = self.ended.subscribe();
        let _ = tokio::time::timeout(2 * PEER_CLOSE_GRACE, wait_ended(&mut ended)).await;
        self.ended().unwrap_or(e)
    }

    /// Sends a message if it can go at once (nobody else sending, room in
    /// the link): `Ok(false)` if it would have to wait.
    pub(super) fn try_send_message(&self, msg: &(impl Encode + ?Sized)) -> Result<bool, SessionError> {
        let len = msg.encoded_len();
        self.check_sendable(msg.kind(), len)?;
        self.try_send_now(len, &|buf: &mut [u8]| {
            msg.write_to(buf);
        })
    }

    /// Whether a message may be sent: the session is up and the message fits
    /// the peer's and the link's limits.
    pub(super) fn check_sendable(&self, kind: &str, len: usize) -> Result<(), SessionError> {
        if let Some(e) = self.ended() {
            return Err(e);
        }
        let max = self.max_message();
        if len > max {
            return Err(SessionError::Link {
                detail: format!("a {kind} message of {len} bytes exceeds the {max}-byte limit"),
            });
        }
        Ok(())
    }

    /// The largest message the peer accepts on this link, in bytes.
    pub(crate) fn max_message(&self) -> usize {
        (self.peer.max_payload as usize).min(self.max_frame)
    }

    /// Sends a frame at once if nobody else is sending and the link has
    /// room; `Ok(false)` if it would have to wait.
    pub(super) fn try_send_now(&self, len: usize, fill: Fill<'_>) -> Result<bool, SessionError> {
        self.try_send::<false>(len, fill)
    }

    /// [`try_send_now`](Self::try_send_now), or for a channel's item
    /// (`GATHER`), also `Ok(true)` when it joined a batch (see `gather`).
    fn try_send<const GATHER: bool>(&self, len: usize, fill: Fill<'_>) -> Result<bool, SessionError> {
        let Some(mut tx) = self.tx.try_lock() else {
            return Ok(false);
        };
        let r = if GATHER {
            tx.try_gather(len, fill)
        } else {
            tx.try_send_now(len, fill).map(Gathered::sent_or_wait)
        };
        drop(tx);
        match r {
            Ok(Gathered::Sent) => {
                self.sent(len);
                Ok(true)
            }
            Ok(Gathered::Added) => Ok(true),
            Ok(Gathered::Started) => {
                self.flush_soon.notify_one();
                Ok(true)
            }
            Ok(Gathered::Wait) => Ok(false),
            Err(e) => Err(self.link_broke(e)),
        }
    }

    /// Sends a frame, waiting for the send lock and link capacity.
    async fn send_waiting(&self, len: usize, fill: Fill<'_>) -> Result<(), SessionError> {
        // A send waiting for link capacity gives up when the session ends
        // (dropping it releases the send lock; links send a frame whole or
        // not at all).
        let mut ended = self.ended.subscribe();
        let r = tokio::select! {
            r = self.send_when_room(len, fill) => r,
            _ = wait_ended(&mut ended) => {
                return Err(self.ended().unwrap_or(SessionError::Closed { reason: "ended".into() }));
            }
        };
        match r {
            Ok(()) => {
                self.sent(len);
                Ok(())
            }
            Err(e) => Err(self.link_broke(e)),
        }
    }

    /// Waits for room and sends. A wait the link can do without its sending
    /// half (a large frame waiting for a free slot) happens outside the send
    /// lock, one at a time, so frames that need no slot keep going out; any
    /// other wait (ring or socket space, which every frame needs) holds it.
    async fn send_when_room(&self, len: usize, fill: Fill<'_>) -> Result<(), LinkError> {
        loop {
            let room = {
                let _waiting = self.link_stall.enter();
                let mut tx = self.tx.lock().await;
                if tx.try_send_now(len, fill)? {
                    return Ok(());
                }
                match tx.room_wait(len) {
                    Some(room) => room,
                    None => return tx.send_frame(len, fill).await,
                }
            };
            let _one_at_a_time = self.room_gate.lock().await;
            let _waiting = self.slot_stall.enter();
            room.await?;
            self.slot_stall.progress();
        }
    }

    /// Counts a frame sent.
    fn sent(&self, len: usize) {
        self.stats.frame_sent(len);
        self.link_stall.progress();
    }

    /// The link failed while sending: the session ends with that.
    fn link_broke(&self, e: LinkError) -> SessionError {
        let peer_end = matches!(e, LinkError::Closed | LinkError::PeerGone { .. });
        let err = link_failed(e);
        if peer_end && self.ended().is_none() {
            // The peer may have said why in frames not read yet.
            self.peer_closing.saw(err.clone());
            return err;
        }
        self.end(err.clone());
        // The session may have ended before for a reason of its own (the
        // link closes because of it): callers see that reason.
        self.ended().unwrap_or(err)
    }

    /// Sends a message without waiting: at once if the link has room and
    /// nothing queued is ahead of it, else through the writer task. For
    /// contexts that cannot wait.
    pub(crate) fn send_later(&self, msg: &Message<'_>) {
        let len = msg.encoded_len();
        if self.check_sendable(msg.kind(), len).is_err() {
            return;
        }
        // ORDERING: Relaxed throughout for `outbox_len`: it publishes no
        // data (frames travel in the mpsc); one thread's queued answers stay
        // in order because it reads its own increments (coherence), and the
        // writer's decrement follows its send.
        if self.outbox_len.load(Ordering::Relaxed) == 0 {
            let fill = |buf: &mut [u8]| {
                msg.write_to(buf);
            };
            if !matches!(self.try_send_now(len, &fill), Ok(false)) {
                return; // sent, or the session ended
            }
        }
        let overtakes = match msg {
            Message::Response { channels, .. } => channels.is_empty(),
            Message::Ping { .. } | Message::Pong { .. } => true,
            _ => false,
        };
        self.enqueue(msg.to_vec(), None, overtakes);
    }

    /// Queues an encoded frame for the writer task, ending the session if the
    /// peer lets [`MAX_OUTBOX`] of them pile up. A frame that `overtakes`
    /// may go out ahead of earlier answers waiting for a free slot (see
    /// [`writer`]).
    pub(super) fn enqueue(&self, bytes: Vec<u8>, answered: Option<Answered>, overtakes: bool) {
        // A peer that keeps asking for answers (pings, calls to refuse)
        // without reading them would grow this queue forever.
        // ORDERING: Relaxed, see `send_later`.
        let queued = self.outbox_len.fetch_add(1, Ordering::Relaxed) + 1;
        if queued > MAX_OUTBOX {
            // End at once: telling a peer that does not read is futile.
            let detail = format!("{queued} answers are queued for the peer, which is not reading them");
            warn!(session = %self.name, rule = Rule::PeerReadsItsAnswers.name(), "{detail}");
            self.end(SessionError::Violation {
                rule: Rule::PeerReadsItsAnswers.name(),
                detail,
            });
            return;
        }
        let _ = self.outbox.send(Outgoing {
            bytes,
            answered,
            overtakes,
        });
    }
}

/// How long sends have waited for room without any progress: the clock
/// behind `peer.drains-its-link` (room in the link) and
/// `peer.releases-its-slots` (a free slot). It runs while at least one send
/// waits, and restarts whenever one gets through.
#[derive(Default)]
pub(super) struct StallClock {
    /// Sends waiting now.
    waiters: AtomicUsize,
    /// While sends wait: since when none got through.
    since: std::sync::Mutex<Option<Instant>>,
}

impl StallClock {
    /// Counts a waiting send while the guard lives; the first starts the clock.
    fn enter(&self) -> StallGuard<'_> {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        // ORDERING: Relaxed: the count is read as a hint in `progress`; the
        // clock itself is under the mutex.
        if self.waiters.fetch_add(1, Ordering::Relaxed) == 0 {
            *since = Some(Instant::now());
        }
        StallGuard(self)
    }

    /// A send got through: the clock restarts if others still wait.
    fn progress(&self) {
        // ORDERING: Relaxed: a hint; the mutex orders what it guards.
        if self.waiters.load(Ordering::Relaxed) > 0 {
            let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
            if since.is_some() {
                *since = Some(Instant::now());
            }
        }
    }

    /// How long waiting sends have made no progress, if any wait.
    pub(super) fn stalled_for(&self) -> Option<std::time::Duration> {
        let since = *self.since.lock().unwrap_or_else(|p| p.into_inner());
        since.map(|s| s.elapsed())
    }
}

/// One waiting send (see [`StallClock::enter`]).
struct StallGuard<'a>(&'a StallClock);

impl Drop for StallGuard<'_> {
    fn drop(&mut self) {
        let mut since = self.0.since.lock().unwrap_or_else(|p| p.into_inner());
        if self.0.waiters.fetch_sub(1, Ordering::Relaxed) == 1 {
            *since = None;
        }
    }
}

/// Drains the outbox onto the link, in order, except that a frame which
/// needs a free slot (a large answer, over shm) waits aside when none is
/// free: answers and keepalive frames behind it go ahead (the peer matches
/// answers by request id), while any other frame (a channel's end, a
/// connection's close, goodbye) first waits for the answers aside, in
/// order, since it may refer to them.
pub(super) async fn writer(shared: Arc<Shared>, mut outbox: mpsc::UnboundedReceiver<Outgoing>) {
    let shared = &*shared;
    let mut ended = shared.ended.subscribe();
    // Answers waiting for a free slot, oldest first, and the wait for one.
    let mut aside: VecDeque<Outgoing> = VecDeque::new();
    let mut room: Option<RoomWait> = None;
    // Counts the wait in `peer.releases-its-slots` while answers are aside.
    let mut stalled: Option<StallGuard<'_>> = None;
    loop {
        let next = tokio::select! {
            b = outbox.recv() => match b { Some(b) => Next::Frame(b), None => return },
            r = async {
                match room.as_mut() {
                    Some(wait) => wait.await,
                    None => std::future::pending().await,
                }
            } => Next::Room(r),
            () = shared.flush_soon.notified() => Next::Flush,
            _ = wait_ended(&mut ended) => return,
        };
        match next {
            Next::Flush => {
                if !shared.flush_gathered().await {
                    return;
                }
            }
            Next::Room(r) => {
                room = None;
                if let Err(e) = r {
                    shared.link_broke(e);
                    return;
                }
                shared.slot_stall.progress();
                // Send what fits now, oldest first.
                while let Some(front) = aside.pop_front() {
                    match write(shared, front).await {
                        Written::Done => {}
                        Written::Failed => return,
                        Written::NeedsSlot(o, wait) => {
                            aside.push_front(o);
                            room = Some(wait);
                            break;
                        }
                    }
                }
            }
            Next::Frame(o) if aside.is_empty() || o.overtakes => match write(shared, o).await {
                Written::Done => {}
                Written::Failed => return,
                Written::NeedsSlot(o, wait) => {
                    aside.push_back(o);
                    room.get_or_insert(wait);
                }
            },
            Next::Frame(o) => {
                // It may refer to the answers aside: they go first.
                room = None;
                for o in aside.drain(..).chain(std::iter::once(o)) {
                    if !write_waiting(shared, o).await {
                        return;
                    }
                }
            }
        }
        match (aside.is_empty(), stalled.is_some()) {
            (false, false) => stalled = Some(shared.slot_stall.enter()),
            (true, true) => stalled = None,
            _ => {}
        }
    }
}

/// What the writer's wait gave.
enum Next {
    /// Send the gathered items.
    Flush,
    Frame(Outgoing),
    Room(Result<(), LinkError>),
}

/// How writing one queued frame went.
enum Written {
    Done,
    /// The session ended.
    Failed,
    /// It needs a free slot and none is: the frame back, and the wait for
    /// one.
    NeedsSlot(Outgoing, RoomWait),
}

/// Writes `o` now, or waits for room in the link unless what it needs is a
/// free slot.
async fn write(shared: &Shared, o: Outgoing) -> Written {
    let len = o.bytes.len();
    let now = shared.try_send_now(len, &o.fill(shared));
    match now {
        Ok(true) => return done(shared, o),
        Ok(false) => {}
        Err(_) => return Written::Failed,
    }
    let room = {
        let mut tx = shared.tx.lock().await;
        tx.room_wait(len)
    };
    match room {
        Some(wait) => Written::NeedsSlot(o, wait),
        None if write_waiting(shared, o).await => Written::Done,
        None => Written::Failed,
    }
}

/// Writes `o`, waiting for whatever room it needs; false if the session
/// ended.
async fn write_waiting(shared: &Shared, o: Outgoing) -> bool {
    let len = o.bytes.len();
    let sent = {
        let fill = o.fill(shared);
        match shared.try_send_now(len, &fill) {
            Ok(true) => Ok(()),
            Ok(false) => shared.send_waiting(len, &fill).await,
            Err(e) => Err(e),
        }
    };
    match sent {
        Ok(()) => matches!(done(shared, o), Written::Done),
        Err(_) => false,
    }
}

/// `o` was written.
fn done(shared: &Shared, o: Outgoing) -> Written {
    // ORDERING: Relaxed, see `Shared::send_later`.
    shared.outbox_len.fetch_sub(1, Ordering::Relaxed);
    if let Some(a) = o.answered {
        a.written(shared);
    }
    Written::Done
}

/// A frame queued for the writer task.
pub(super) struct Outgoing {
    bytes: Vec<u8>,
    answered: Option<Answered>,
    /// May go out ahead of earlier answers waiting for a slot.
    overtakes: bool,
}

impl Outgoing {
    /// Writes the frame's bytes into the link's buffer.
    fn fill<'a>(&'a self, shared: &'a Shared) -> impl Fn(&mut [u8]) + Sync + 'a {
        move |buf: &mut [u8]| {
            // A queued answer stops counting against request.limit as it
            // is written (the peer may call again the moment it reads it).
            if let Some(a) = &self.answered {
                a.committing(shared);
            }
            osmos_shm::copy_bytes(buf, &self.bytes);
        }
    }
}

/// A call whose queued response the writer is to write: once written, the
/// call stops counting in `serving` and the channels in it are announced.
pub(super) struct Answered {
    pub(super) conn: u64,
    pub(super) request: u64,
    pub(super) channels: Vec<u64>,
}

impl Answered {
    /// The writer is writing the response: the call stops counting in
    /// `serving` now, not after the write (the peer may call again the
    /// moment it reads the answer).
    pub(super) fn committing(&self, shared: &Shared) {
        shared.lock().serving.remove(&(self.conn, self.request));
    }

    /// The writer wrote the response: the channels in it are announced.
    pub(super) fn written(self, shared: &Shared) {
        shared.announce(&self.channels);
    }
}
