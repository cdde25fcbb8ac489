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
use crate::ring::{FrameConsumer, FrameKind, FrameProducer, FrameView};

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
        self.send_with(bytes.len(), deadline, |dst| dst.copy_from_slice(bytes))
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

    /// The message in place in shared memory. See
    /// [`FrameView::bytes`] for how to treat bytes a hostile peer may change.
    pub fn bytes(&self) -> &[u8] {
        match &self.body {
            Body::Inline(Some(v)) => v.bytes(),
            Body::Slot { slot: Some(s), .. } => s.bytes(),
            _ => &[],
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
