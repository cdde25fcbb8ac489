//! What a frame read from the current connection does to the conduit.
//!
//! Two readers use this: the [`StableRx`](super::StableRx) while the session
//! receives, and the driver once the receiver is done (it returned the end,
//! or it was dropped). The driver keeps reading so that the peer's acks —
//! of our `CLOSE` above all — and its own `CLOSE` still arrive: without
//! them neither side could tell that everything was delivered, and a
//! conduit whose two closes crossed would linger and reconnect until
//! `resume_timeout` ran out. Frames read by the driver are acknowledged and
//! dropped (nobody receives any more).

use std::ops::Range;
use std::sync::atomic::Ordering;

use super::conduit::{self, Shared, Terminal};
use super::wire::{self, Incoming, NUMBERED_HEADER};
use super::{BoxRead, LinkError};
use crate::link::stream::StreamRx;
use crate::rules::Rule;

/// A connection's generation and its framed read half.
pub(super) type Reader = (u64, StreamRx<BoxRead>);

/// What the reader does with a frame.
pub(super) enum Take {
    /// Return this payload (its range in the reader's buffer).
    Payload(Range<usize>),
    /// Nothing for the session; read on.
    Next,
    /// The peer's direction ended.
    End,
    /// The connection is gone (cut, closed or stale): drop the reader.
    Gone,
}

/// The outcome of one read of a connection: a frame's range, the end of
/// the stream, or an error; `None` when the connection was declared broken
/// while waiting.
pub(super) type Read = Option<Result<Option<Range<usize>>, LinkError>>;

impl Shared {
    /// Applies `read`, the outcome of reading `reader`. Errors end the
    /// conduit (the terminal is set before they return).
    pub(super) fn apply(&self, reader: &Reader, read: Read) -> Result<Take, LinkError> {
        let cgen = reader.0;
        match read {
            Some(Ok(Some(range))) => self.take(reader, range),
            Some(Ok(None)) => {
                self.declare_broken(cgen, "the connection was closed".into());
                Ok(Take::Gone)
            }
            Some(Err(LinkError::Violation { rule, detail })) => {
                let t = Terminal::Violation(rule, detail);
                self.fail(t.clone());
                Err(t.to_error())
            }
            Some(Err(e)) => {
                self.declare_broken(cgen, format!("reading failed: {e}"));
                Ok(Take::Gone)
            }
            None => Ok(Take::Gone),
        }
    }

    /// Handles the frame at `range` of `reader`.
    fn take(&self, reader: &Reader, range: Range<usize>) -> Result<Take, LinkError> {
        let (cgen, stream) = reader;
        let incoming = match wire::parse(stream.bytes(range.clone())) {
            Ok(i) => i,
            Err(detail) => {
                let t = Terminal::Violation(Rule::StableFrameWellFormed.name(), detail);
                self.fail(t.clone());
                return Err(t.to_error());
            }
        };
        let ack = match &incoming {
            Incoming::Data { ack, .. } | Incoming::Close { ack, .. } | Incoming::Ack { ack } => Some(*ack),
            Incoming::Gone => None,
        };
        if let Some(ack) = ack
            && let Err(t) = self.on_ack(ack)
        {
            self.fail(t.clone());
            return Err(t.to_error());
        }
        Ok(match incoming {
            Incoming::Data { seq, .. } => {
                if !self.accept(*cgen, seq)? {
                    return Ok(Take::Gone);
                }
                Take::Payload(range.start + NUMBERED_HEADER..range.end)
            }
            Incoming::Ack { .. } => {
                self.activity.fetch_add(1, Ordering::Relaxed);
                Take::Next
            }
            Incoming::Close { seq, .. } => {
                if !self.accept(*cgen, seq)? {
                    return Ok(Take::Gone);
                }
                self.lock().peer_closed = true;
                self.ack_now.store(true, Ordering::Release);
                self.driver_wake.notify_one();
                Take::End
            }
            Incoming::Gone => {
                self.fail(Terminal::PeerDropped);
                Take::End
            }
        })
    }

    /// Accepts frame `seq` from connection `cgen`, in order: `false` when
    /// the connection was already declared broken.
    fn accept(&self, cgen: u64, seq: u64) -> Result<bool, LinkError> {
        let mut st = self.lock();
        if *self.broken.borrow() >= cgen {
            return Ok(false);
        }
        if seq != st.received + 1 {
            let detail = format!(
                "frame #{seq} arrived after #{}: frames must come in order, once",
                st.received
            );
            drop(st);
            let t = Terminal::Violation(Rule::StableSequenceInOrder.name(), detail);
            self.fail(t.clone());
            return Err(t.to_error());
        }
        st.received = seq;
        // ORDERING: Release pairs with the writer's Acquire load when it puts the ack in a frame.
        self.received.store(seq, Ordering::Release);
        drop(st);
        self.activity.fetch_add(1, Ordering::Relaxed);
        let unacked = seq.saturating_sub(self.ack_written.load(Ordering::Acquire));
        if unacked >= conduit::ACK_BATCH && unacked.is_multiple_of(conduit::ACK_BATCH) {
            self.ack_now.store(true, Ordering::Release);
            self.driver_wake.notify_one();
        } else if !self.ack_armed.swap(true, Ordering::AcqRel) {
            self.driver_wake.notify_one();
        }
        Ok(true)
    }

    /// The receiver is done (it returned the end, or it was dropped): the
    /// driver reads from now on, starting with `reader` if it is still the
    /// current connection's.
    pub(super) fn receiver_done(&self, reader: Option<Reader>) {
        let mut st = self.lock();
        st.rx_done = true;
        if st.terminal.is_none()
            && st.reader.is_none()
            && let Some(r) = reader.filter(|r| r.0 == st.generation)
        {
            st.reader = Some(r);
        }
        drop(st);
        self.driver_wake.notify_one();
    }
}

/// Reads the next frame of `reader`, or `None` once its connection is
/// declared broken.
pub(super) async fn read(sh: &Shared, reader: &mut Reader) -> Read {
    let cgen = reader.0;
    let mut broken = sh.broken.subscribe();
    tokio::select! {
        biased;
        r = reader.1.next_frame() => Some(r),
        _ = broken.wait_for(|b| *b >= cgen) => None,
    }
}

/// Reads `reader` until its connection is gone, for the driver: acks and
/// closes take effect, payloads are dropped. Returns when the connection is
/// gone or the conduit ended.
pub(super) async fn drain(sh: &Shared, reader: &mut Reader) {
    loop {
        let r = read(sh, reader).await;
        match sh.apply(reader, r) {
            Ok(Take::Payload(_) | Take::Next | Take::End) => {}
            Ok(Take::Gone) | Err(_) => return,
        }
        if sh.lock().terminal.is_some() {
            return;
        }
    }
}
