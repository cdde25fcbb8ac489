//! One side's view of a segment: send and receive whole messages.
//!
//! A [`FrameSender`] puts a message inline in a ring frame when it fits the
//! segment's `max_frame`, and otherwise in a slot of its own pool with a
//! [`SlotRef`] frame pointing at it. A [`FrameReceiver`] hands back a
//! [`Message`] that reads either in place and gives the frame or slot back
//! when dropped (or, reporting any error, when [`Message::finish`]ed).

use std::fmt;
use std::time::Instant;

use crate::credit::CreditTable;
use crate::doorbell::WaitStrategy;
use crate::error::{Error, Result, Rule};
use crate::liveness::Liveness;
use crate::pool::{HeldSlot, SlotReader, SlotRef, SlotWriter};
use crate::ring::{FrameConsumer, FrameKind, FrameProducer, FrameRun, FrameView};

/// Everything one side needs to talk over a segment.
#[derive(Debug)]
pub struct Endpoint {
    /// Sends messages to the peer.
    pub sender: FrameSender,
    /// Receives messages from the peer.
    pub receiver: FrameReceiver,
    /// Per-channel credit shared with the peer.
    pub credit: CreditTable,
    /// Both sides' liveness words.
    pub liveness: Liveness,
}

/// Sends messages: inline frames, or slots for large ones. `Send`, not `Sync`.
#[derive(Debug)]
pub struct FrameSender {
    producer: FrameProducer,
    slots: SlotWriter,
}

impl FrameSender {
    pub(crate) fn new(producer: FrameProducer, slots: SlotWriter) -> Self {
        Self { producer, slots }
    }

    /// Largest message sent inline in the ring.
    pub fn max_inline(&self) -> usize {
        self.producer.max_payload()
    }

    /// Largest message this sender can send at all.
    pub fn max_message(&self) -> usize {
        self.producer.max_payload().max(self.slots.max_payload())
    }

    /// Sets how this sender waits for ring space and free slots.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.producer.set_wait_strategy(strategy);
        self.slots.set_wait_strategy(strategy);
    }

    /// The ring producer and the slot pool owner at once, to hold a frame
    /// reservation and a slot reservation together.
    pub fn parts(&mut self) -> (&mut FrameProducer, &mut SlotWriter) {
        (&mut self.producer, &mut self.slots)
    }

    /// The ring producer, for frame-level use.
    pub fn producer(&mut self) -> &mut FrameProducer {
        &mut self.producer
    }

    /// The slot pool owner, for slot-level use.
    pub fn slots(&mut self) -> &mut SlotWriter {
        &mut self.slots
    }

    /// Sends a `len`-byte message that `fill` writes in place, waiting for
    /// ring space or a free slot until `deadline`.
    pub fn send_with(
        &mut self,
        len: usize,
        deadline: Option<Instant>,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<()> {
        if len <= self.producer.max_payload() {
            let mut grant = self.producer.reserve(len, deadline)?;
            fill(&mut grant.as_mut_slice()[..len]);
            return grant.commit(len);
        }
        if len > self.slots.max_payload() {
            return Err(Error::PayloadTooLarge {
                len,
                max: self.max_message(),
            });
        }
        let mut slot = self.slots.alloc(len, deadline)?;
        fill(&mut slot.as_mut_slice()[..len]);
        // Reserve the reference frame before committing the slot, so a
        // failure here hands the slot straight back to the free list.
        let mut frame = self
            .producer
            .reserve_kind(FrameKind::SlotRef, SlotRef::ENCODED_LEN, deadline)?;
        let r = slot.finish(len)?;
        frame.write(0, &r.encode())?;
        frame.commit(SlotRef::ENCODED_LEN)
    }

    /// Sends a copy of `bytes`.
    pub fn send(&mut self, bytes: &[u8], deadline: Option<Instant>) -> Result<()> {
        self.send_with(bytes.len(), deadline, |dst| crate::copy_bytes(dst, bytes))
    }
}

/// Receives messages. `Send`, not `Sync`.
pub struct FrameReceiver {
    consumer: FrameConsumer,
    slots: SlotReader,
    /// An error from releasing a slot in `Message::drop`, reported by the next receive.
    deferred: Option<Error>,
}

impl fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameReceiver")
            .field("consumer", &self.consumer)
            .field("slots", &self.slots)
            .finish()
    }
}

impl FrameReceiver {
    pub(crate) fn new(consumer: FrameConsumer, slots: SlotReader) -> Self {
        Self {
            consumer,
            slots,
            deferred: None,
        }
    }

    /// A watcher of the doorbell rung when frames are published.
    pub fn readable_watcher(&self) -> crate::BellWatcher {
        self.consumer.readable_watcher()
    }

    /// Whether a frame is ready now (validating the ring as it looks).
    pub fn has_frame(&mut self) -> Result<bool> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        Ok(self.consumer.try_peek()?.is_some())
    }

    /// Sets how this receiver waits for frames.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.consumer.set_wait_strategy(strategy);
    }

    /// The next message, without waiting; `Ok(None)` if none is there.
    pub fn try_recv(&mut self) -> Result<Option<Message<'_>>> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        if self.consumer.try_peek()?.is_none() {
            return Ok(None);
        }
        self.recv(None).map(Some)
    }

    /// Copies the next message into `buf` (replacing its contents) and gives
    /// its frame or slot back at once: `Ok(true)`, or `Ok(false)` without
    /// touching `buf` when no message is there. The copy is the only read of
    /// the message's bytes: decode it, and nothing the peer writes later can
    /// change what was decoded.
    pub fn try_recv_into(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        let Some(m) = self.try_recv()? else {
            return Ok(false);
        };
        buf.clear();
        m.append_to(buf);
        m.finish()?;
        Ok(true)
    }

    /// Copies the inline messages at the head of the ring out together
    /// (each at most `max_frame` bytes, spanning at most `max_bytes` of the
    /// ring with their headers) and gives their
    /// frames back at once: see [`FrameConsumer::take_run`]. Returns how
    /// many `run` holds; 0 when none is there or the next message is one
    /// for [`try_recv`](Self::try_recv) (a slot, a larger frame) or breaks
    /// a rule (which `try_recv` reports).
    pub fn try_recv_run(&mut self, run: &mut FrameRun, max_bytes: usize, max_frame: usize) -> Result<usize> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        self.consumer.take_run(run, max_bytes, max_frame)
    }

    /// Copies the next message out as [`try_recv_into`](Self::try_recv_into)
    /// does, but in two pieces when `split` asks for it: a message of at
    /// least `min_split` bytes has its first `peek` bytes copied into
    /// `head`, and `split(those bytes, the message's length)` may name an
    /// offset where the message's tail begins. The tail is then copied into
    /// a vector of its own, the rest of the head after the peeked bytes;
    /// without an offset the whole message ends up in `head`. Every byte is
    /// copied out of shared memory exactly once, and `split` sees only the
    /// private copy. `Ok(None)`: no message (`head` untouched).
    pub fn try_recv_split(
        &mut self,
        head: &mut Vec<u8>,
        min_split: usize,
        peek: usize,
        split: impl FnOnce(&[u8], usize) -> Option<usize>,
    ) -> Result<Option<Copied>> {
        let Some(m) = self.try_recv()? else {
            return Ok(None);
        };
        head.clear();
        let len = m.len();
        if len < min_split {
            m.append_to(head);
            m.finish()?;
            return Ok(Some(Copied::Whole));
        }
        let peeked = peek.min(len);
        m.append_range_to(0, peeked, head)?;
        let copied = match split(head, len).filter(|&at| at <= len) {
            None => {
                m.append_range_to(peeked, len - peeked, head)?;
                Copied::Whole
            }
            Some(at) if at >= peeked => {
                m.append_range_to(peeked, at - peeked, head)?;
                let mut tail = Vec::with_capacity(len - at);
                m.append_range_to(at, len - at, &mut tail)?;
                Copied::Split(tail)
            }
            Some(at) => {
                let mut tail = Vec::with_capacity(len - at);
                tail.extend_from_slice(&head[at..]);
                head.truncate(at);
                m.append_range_to(peeked, len - peeked, &mut tail)?;
                Copied::Split(tail)
            }
        };
        m.finish()?;
        Ok(Some(copied))
    }

    /// The next message, waiting until `deadline` (or as long as the peer lives).
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Message<'_>> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let view = self.consumer.peek(deadline)?;
        if view.kind() == FrameKind::Inline {
            return Ok(Message {
                body: Body::Inline(Some(view)),
            });
        }
        let mut raw = [0u8; SlotRef::ENCODED_LEN];
        if view.len() != raw.len() {
            return Err(Error::violation(
                Rule::SlotRefWellFormed,
                format!(
                    "slot reference frame of {} bytes (expected {})",
                    view.len(),
                    raw.len()
                ),
            ));
        }
        view.read(0, &mut raw)?;
        view.release();
        let held = self.slots.open(SlotRef::decode(&raw)?)?;
        Ok(Message {
            body: Body::Slot {
                slot: Some(held),
                reader: &mut self.slots,
                deferred: &mut self.deferred,
            },
        })
    }
}

/// How [`FrameReceiver::try_recv_split`] copied a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Copied {
    /// The whole message is in the head buffer.
    Whole,
    /// The message is the head buffer followed by these bytes.
    Split(Vec<u8>),
}

enum Body<'a> {
    /// `None` once released.
    Inline(Option<FrameView<'a>>),
    Slot {
        /// `None` once released.
        slot: Option<HeldSlot>,
        reader: &'a mut SlotReader,
        deferred: &'a mut Option<Error>,
    },
}

/// A received message. Dropping it gives its frame or slot back.
pub struct Message<'a> {
    body: Body<'a>,
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("len", &self.len())
            .field("in_slot", &self.in_slot())
            .finish()
    }
}

impl Message<'_> {
    /// Bytes in the message.
    pub fn len(&self) -> usize {
        match &self.body {
            Body::Inline(v) => v.as_ref().map_or(0, FrameView::len),
            Body::Slot { slot, .. } => slot.as_ref().map_or(0, HeldSlot::len),
        }
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the message travelled in a slot (rather than inline).
    pub fn in_slot(&self) -> bool {
        matches!(self.body, Body::Slot { .. })
    }

    /// Appends the message to `dst`: the one copy out of shared memory.
    /// Decode the copy, never the shared bytes: a hostile peer may change
    /// those between a check and a use.
    pub fn append_to(&self, dst: &mut Vec<u8>) {
        match &self.body {
            Body::Inline(Some(v)) => v.append_to(dst),
            Body::Slot { slot: Some(s), .. } => s.append_to(dst),
            _ => {}
        }
    }

    /// Appends bytes `[at, at + len)` of the message to `dst`: one copy out
    /// of shared memory, as [`append_to`](Self::append_to).
    pub fn append_range_to(&self, at: usize, len: usize, dst: &mut Vec<u8>) -> Result<()> {
        match &self.body {
            Body::Inline(Some(v)) => v.append_range_to(at, len, dst),
            Body::Slot { slot: Some(s), .. } => s.append_range_to(at, len, dst),
            _ if len == 0 => Ok(()),
            _ => Err(Error::InvalidArgument {
                reason: "read of a message already given back".into(),
            }),
        }
    }

    /// Copies the message out.
    pub fn to_vec(&self) -> Vec<u8> {
        match &self.body {
            Body::Inline(Some(v)) => v.to_vec(),
            Body::Slot { slot: Some(s), .. } => s.to_vec(),
            _ => Vec::new(),
        }
    }

    fn release(&mut self) -> Result<()> {
        match &mut self.body {
            Body::Inline(v) => {
                if let Some(v) = v.take() {
                    v.release();
                }
                Ok(())
            }
            Body::Slot { slot, reader, .. } => match slot.take() {
                Some(s) => reader.release(s),
                None => Ok(()),
            },
        }
    }

    /// Gives the frame or slot back, reporting a release failure.
    pub fn finish(mut self) -> Result<()> {
        self.release()
    }
}

impl Drop for Message<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.release()
            && let Body::Slot { deferred, .. } = &mut self.body
        {
            **deferred = Some(e);
        }
    }
}

#[cfg(test)]
impl Endpoint {
    /// Test-only: the slot reader of the incoming pool.
    pub(crate) fn receiver_slots(&mut self) -> &mut SlotReader {
        &mut self.receiver.slots
    }
}

#[cfg(all(test, not(osmos_loom)))]
mod tests {
    use super::*;
    use crate::test_support::{bound, pair, small_config};

    #[test]
    fn inline_and_slot_messages_round_trip_both_ways() {
        let mut p = pair(&small_config());
        for len in [0usize, 1, 255, 256, 257, 1024, 1025, 8192] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 3 + len) as u8).collect();
            p.host.sender.send(&msg, bound()).unwrap();
            p.cell.sender.send(&msg, bound()).unwrap();
            for rx in [&mut p.cell.receiver, &mut p.host.receiver] {
                let m = rx.recv(bound()).unwrap();
                assert_eq!(m.in_slot(), len > 256, "len {len}");
                assert_eq!((m.len(), m.to_vec()), (len, msg.clone()));
                m.finish().unwrap();
            }
        }
        // Releases are reclaimed lazily, when a class runs dry: sending the
        // 8192-byte message reclaimed the three before it.
        assert_eq!(p.host.sender.slots().in_flight(), 1);
        assert_eq!(p.host.sender.slots().reclaim().unwrap(), 1);
        assert_eq!(p.host.sender.slots().in_flight(), 0);
    }

    #[test]
    fn a_split_receive_copies_each_byte_once_into_head_and_tail() {
        let mut p = pair(&small_config());
        let rx = &mut p.cell.receiver;
        let mut head = vec![0xee; 3];
        assert_eq!(
            rx.try_recv_split(&mut head, 64, 16, |_, _| Some(0)).unwrap(),
            None
        );
        assert_eq!(head, [0xee; 3], "untouched without a message");
        // (length, split offset asked for, expected copy); inline and slot.
        for (len, at) in [
            (40usize, Some(5)), // below min_split: whole, split not asked
            (200, None),        // asked, declined
            (200, Some(10)),    // inside the peeked bytes
            (200, Some(16)),    // at the end of the peeked bytes
            (200, Some(100)),   // past them
            (200, Some(200)),   // an empty tail
            (200, Some(201)),   // past the end: ignored
            (5000, Some(3)),    // a slot message
            (5000, Some(4000)),
        ] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            p.host.sender.send(&msg, bound()).unwrap();
            let mut seen = None;
            let copied = rx
                .try_recv_split(&mut head, 64, 16, |peeked, total| {
                    seen = Some((peeked.to_vec(), total));
                    at
                })
                .unwrap()
                .expect("a message");
            match (len >= 64, at.filter(|&a| a <= len)) {
                (true, Some(a)) => {
                    assert_eq!(copied, Copied::Split(msg[a..].to_vec()), "len {len} at {a}");
                    assert_eq!(head, msg[..a], "len {len} at {a}");
                }
                _ => {
                    assert_eq!(copied, Copied::Whole, "len {len}");
                    assert_eq!(head, msg, "len {len}");
                }
            }
            if len >= 64 {
                assert_eq!(
                    seen,
                    Some((msg[..16].to_vec(), len)),
                    "split sees the peeked copy"
                );
            } else {
                assert_eq!(seen, None, "no split asked below min_split");
            }
        }
        p.host.sender.slots().reclaim().unwrap();
        assert_eq!(p.host.sender.slots().in_flight(), 0, "every slot given back");
    }

    #[test]
    fn dropping_a_message_gives_its_slot_back() {
        let mut p = pair(&small_config());
        for _ in 0..50 {
            p.host.sender.send(&[9; 5000], bound()).unwrap();
            let m = p.cell.receiver.recv(bound()).unwrap();
            assert!(m.in_slot());
            drop(m);
        }
        assert_eq!(
            p.host.sender.slots().in_flight(),
            1,
            "only the last release is still unreclaimed"
        );
    }

    #[test]
    fn a_message_larger_than_every_slot_is_refused() {
        let mut p = pair(&small_config());
        assert_eq!(p.host.sender.max_message(), 8192);
        let err = p.host.sender.send(&[0; 8193], bound()).unwrap_err();
        assert!(
            matches!(err, Error::PayloadTooLarge { len: 8193, max: 8192 }),
            "{err}"
        );
        assert!(err.to_string().contains("add a larger slot class"));
    }

    #[test]
    fn send_with_serializes_in_place() {
        let mut p = pair(&small_config());
        for len in [100usize, 4000] {
            p.host
                .sender
                .send_with(len, bound(), |buf| buf.fill(0xab))
                .unwrap();
            let m = p.cell.receiver.recv(bound()).unwrap();
            assert_eq!(m.to_vec(), vec![0xab; len]);
        }
    }
}
