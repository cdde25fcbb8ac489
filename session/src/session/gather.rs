//! The link's sending half, and the small items gathered for it into one
//! [`Message::Batch`] frame while the peer is behind.
//!
//! A stream of small items costs the receiver a frame's work per item
//! (taking the frame from the link, copying it out, routing it) unless
//! several items share a frame. When an item is sent while the peer has not
//! yet read this side's earlier frames ([`LinkTx::peer_behind`]), it cannot
//! be read any sooner than those anyway: it waits in the batch instead of
//! going out alone, and the items after it join it. The batch goes out
//! when it is full, before any other frame (so every frame keeps its
//! order), when the writer task gets to run (the sending task has paused:
//! see `Shared::send_item`), or when the session closes its link. A peer
//! that keeps up sees every item in a frame of its own, as before.
//!
//! [`LinkTx::peer_behind`]: crate::link::LinkTx::peer_behind

use std::sync::Arc;

use super::Counters;
use super::outbound::ErasedTx;
use crate::link::{LinkError, RoomWait};
use crate::wire::Message;
use crate::wire::varint::{varint_len, write_varint};

/// The largest message gathered into a batch; larger ones go alone.
const MAX_GATHERED: usize = 256;

/// Bytes of gathered messages in one batch at most (its frame is a few
/// bytes more).
const BATCH_BYTES: usize = 512;

/// A batch frame's bytes beyond its messages: the kind and the length.
const BATCH_OVERHEAD: usize = 1 + 3;

/// Writes one frame's bytes into the buffer a link lends.
pub(super) type Fill<'a> = &'a (dyn Fn(&mut [u8]) + Sync);

/// The link's sending half (`None` once closed) and the batch gathered for
/// it; everything that sends holds the session's send lock around this.
pub(super) struct Sender {
    link: Option<Box<dyn ErasedTx>>,
    /// The gathered messages, each length-prefixed, in the first `used`
    /// bytes (none wait when it is 0). Allocated once, as long as a batch
    /// may be: a message is written in place, with no buffer growth and no
    /// zeroing before it is written.
    batch: Box<[u8]>,
    used: usize,
    /// The most bytes `batch` may hold: [`BATCH_BYTES`], or less when the
    /// peer accepts smaller messages.
    batch_limit: usize,
    /// The session's traffic counters: a batch frame counts when it goes.
    stats: Arc<Counters>,
}

/// What [`Sender::try_gather`] did with a message.
pub(super) enum Gathered {
    /// It began a batch: someone must see that the batch goes out.
    Started,
    /// It joined the batch that was waiting.
    Added,
    /// It went out in a frame of its own.
    Sent,
    /// It could not go now (no room for it or for the batch ahead of it):
    /// send it the waiting way.
    Wait,
}

impl Gathered {
    /// What a try to send a frame alone did.
    pub(super) fn sent_or_wait(sent: bool) -> Self {
        if sent { Gathered::Sent } else { Gathered::Wait }
    }
}

impl Sender {
    /// A sender over `link`, whose peer accepts messages of up to
    /// `max_message` bytes.
    pub(super) fn new(link: Box<dyn ErasedTx>, max_message: usize, stats: Arc<Counters>) -> Self {
        let batch_limit = BATCH_BYTES.min(max_message.saturating_sub(BATCH_OVERHEAD));
        Sender {
            link: Some(link),
            batch: vec![0; batch_limit].into_boxed_slice(),
            used: 0,
            batch_limit,
            stats,
        }
    }

    /// A sender whose link is closed.
    pub(super) fn closed() -> Self {
        Sender {
            link: None,
            batch: Box::default(),
            used: 0,
            batch_limit: 0,
            stats: Arc::default(),
        }
    }

    fn link(&mut self) -> Result<&mut Box<dyn ErasedTx>, LinkError> {
        self.link.as_mut().ok_or(LinkError::Closed)
    }

    /// Sends a frame now if the link has room for it and for the batch
    /// ahead of it: `Ok(false)` if it would have to wait.
    pub(super) fn try_send_now(&mut self, len: usize, fill: Fill<'_>) -> Result<bool, LinkError> {
        if !self.try_flush()? {
            return Ok(false);
        }
        self.link()?.try_send_now(len, fill)
    }

    /// A wait for room that does not need this half (see
    /// [`ErasedTx::room_wait`]); none while a batch waits, which must go
    /// first and needs the half.
    pub(super) fn room_wait(&mut self, len: usize) -> Option<RoomWait> {
        if self.used > 0 {
            return None;
        }
        self.link.as_mut()?.room_wait(len)
    }

    /// Sends a frame, waiting for room for the batch ahead of it and for it.
    pub(super) async fn send_frame(&mut self, len: usize, fill: Fill<'_>) -> Result<(), LinkError> {
        self.flush().await?;
        self.link()?.send_frame(len, fill).await
    }

    /// Sends the batch, if one waits, waiting for room.
    pub(super) async fn flush(&mut self) -> Result<(), LinkError> {
        if self.used == 0 {
            return Ok(());
        }
        let (link, msg) = self.batch_frame()?;
        let len = msg.encoded_len();
        link.send_frame(len, &|buf: &mut [u8]| {
            msg.write_to(buf);
        })
        .await?;
        self.batch_sent(len);
        Ok(())
    }

    /// Sends the batch, if one waits and the link has room for it now;
    /// whether none waits any more.
    fn try_flush(&mut self) -> Result<bool, LinkError> {
        if self.used == 0 {
            return Ok(true);
        }
        let (link, msg) = self.batch_frame()?;
        let len = msg.encoded_len();
        let sent = link.try_send_now(len, &|buf: &mut [u8]| {
            msg.write_to(buf);
        })?;
        if sent {
            self.batch_sent(len);
        }
        Ok(sent)
    }

    /// The link, and the batch as the message that carries it.
    fn batch_frame(&mut self) -> Result<(&mut Box<dyn ErasedTx>, Message<'_>), LinkError> {
        let link = self.link.as_mut().ok_or(LinkError::Closed)?;
        Ok((
            link,
            Message::Batch {
                messages: &self.batch[..self.used],
            },
        ))
    }

    /// The batch went out in a frame of `len` bytes.
    fn batch_sent(&mut self, len: usize) {
        self.used = 0;
        self.stats.frame_sent(len);
    }

    /// Sends a small message (a channel's item) of `len` bytes now, or
    /// gathers it into the batch while the peer is behind.
    pub(super) fn try_gather(&mut self, len: usize, fill: Fill<'_>) -> Result<Gathered, LinkError> {
        let framed = varint_len(len as u64) + len;
        if len > MAX_GATHERED || framed > self.batch_limit {
            return self.alone(len, fill);
        }
        if self.used > 0 {
            if self.used + framed <= self.batch_limit {
                self.append(len, fill);
                return Ok(Gathered::Added);
            }
            if !self.try_flush()? {
                return Ok(Gathered::Wait);
            }
        }
        if self.link()?.peer_behind() {
            self.append(len, fill);
            return Ok(Gathered::Started);
        }
        self.alone(len, fill)
    }

    /// Sends a message in a frame of its own now, if it can.
    fn alone(&mut self, len: usize, fill: Fill<'_>) -> Result<Gathered, LinkError> {
        self.try_send_now(len, fill).map(Gathered::sent_or_wait)
    }

    /// Adds a message of `len` bytes (its length prefix included, at most
    /// `batch_limit - used` bytes: `try_gather` checks).
    #[inline]
    fn append(&mut self, len: usize, fill: Fill<'_>) {
        let at = self.used + write_varint(&mut self.batch[self.used..], len as u64);
        fill(&mut self.batch[at..at + len]);
        self.used = at + len;
    }

    /// Sends the batch, then closes the link; the half is gone after.
    pub(super) async fn close(&mut self) -> Result<(), LinkError> {
        let flushed = self.flush().await;
        let closed = match self.link.take() {
            Some(mut link) => link.close().await,
            None => Ok(()),
        };
        flushed.and(closed)
    }
}
