//! The session's channel registry: open channels by id, their credit-table
//! indices, channels retired recently (late traffic for them is dropped),
//! and opening the channels a message lists.
//!
//! Forwarders relay channels: a channel handle inside a payload is its
//! position in the message's channel list (see `channel/`), so remapping
//! channel ids only touches that list. A relayed channel holds both its ends
//! here: whichever way items flow, a relay task moves them.

use crate::rules::Rule;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::recent::RecentIds;
use super::{Ids, Shared};
use crate::channel::{ChannelCore, ChannelError, End, FlowInit};
use crate::error::{Violation, violation};
use crate::link::CreditMode;
use crate::wire::Message;

/// How many retired channels a session remembers (see `Channels::retired`).
const RETIRED_MEMORY: usize = 4096;

/// Most channels open at once in a session.
const MAX_OPEN_CHANNELS: usize = 65_536;

/// The session's channels (its part of the session's `State`).
#[derive(Default)]
pub(super) struct Channels {
    /// Open channels.
    pub(super) open: HashMap<u64, Arc<ChannelCore>>,
    /// Table indices of open channels (shm credit mode).
    table_busy: HashSet<u32>,
    /// Channels closed here recently: late traffic for them is dropped quietly.
    retired: RecentIds<RETIRED_MEMORY>,
}

impl Shared {
    /// The message handing these channels to the peer was sent.
    pub(super) fn announce(&self, channels: &[u64]) {
        for id in channels {
            if let Some(core) = self.channel_core(*id) {
                core.announce();
            }
        }
    }

    pub(crate) fn channel_core(&self, id: u64) -> Option<Arc<ChannelCore>> {
        self.lock().channels.open.get(&id).cloned()
    }

    /// Forgets a channel finished on both sides (each side sent its terminal
    /// message); its table index, if any, may be used again.
    pub(crate) fn retire_channel(&self, id: u64) {
        let mut s = self.lock();
        if let Some(core) = s.channels.open.remove(&id) {
            core.mark_retired();
            if let Some(index) = core.table_index() {
                s.channels.table_busy.remove(&index);
            }
            s.channels.retired.insert(id);
        }
    }

    /// The credit this side grants a channel it receives on.
    pub(crate) fn our_initial_credit(&self) -> u32 {
        self.ours.initial_credit
    }

    /// The table index of channel `id`: each side cycles through the indices
    /// of its own parity, so both sides compute the same index from an id and
    /// ids stay unique forever while indices are reused.
    fn table_index(table: &osmos_shm::CreditTable, id: u64) -> Option<u32> {
        let half = u64::from(table.len() / 2);
        (half > 0).then(|| (((id / 2) % half) * 2 + id % 2) as u32)
    }

    /// Registers channel `id` (created by the peer, or allocated here).
    fn new_channel(&self, id: u64) -> Result<Arc<ChannelCore>, Violation> {
        // A channel the peer created is known to it; one created here is
        // announced when the message handing it over is sent.
        let peers = self.ids.is_peers(id);
        let init = match &self.credit {
            CreditMode::Messages => FlowInit::Messages {
                recv_window: self.ours.initial_credit,
                send_window: self.peer.initial_credit,
            },
            CreditMode::SharedTable(table, waiters) => {
                let index = Self::table_index(table, id).ok_or_else(|| {
                    violation(
                        Rule::ChannelTableIndexFree.name(),
                        "the channel table has no entries".to_string(),
                    )
                })?;
                FlowInit::Table {
                    table: table.clone(),
                    index,
                    waiters: waiters.clone(),
                }
            }
        };
        let core = ChannelCore::new(id, !peers, peers, init, self.ours.initial_credit);
        let mut s = self.lock();
        if let Some(index) = core.table_index()
            && !s.channels.table_busy.insert(index)
        {
            return Err(violation(
                Rule::ChannelTableIndexFree.name(),
                format!("channel {id} uses channel table entry {index}, which an open channel still uses"),
            ));
        }
        s.channels.open.insert(id, core.clone());
        Ok(core)
    }

    /// Allocates a new channel id of this side's parity (with a free table
    /// index, in table mode).
    pub(super) fn alloc_channel(&self) -> Result<Arc<ChannelCore>, ChannelError> {
        let attempts = match &self.credit {
            CreditMode::Messages => 1,
            CreditMode::SharedTable(table, _) => (table.len() / 2).max(1),
        };
        for _ in 0..attempts {
            let id = Ids::next(&self.ids.next_channel);
            let busy = match &self.credit {
                CreditMode::Messages => false,
                CreditMode::SharedTable(table, _) => match Self::table_index(table, id) {
                    Some(index) => self.lock().channels.table_busy.contains(&index),
                    None => true,
                },
            };
            if !busy {
                return self.new_channel(id).map_err(|v| ChannelError::PeerBrokeProtocol {
                    rule: v.rule,
                    detail: v.detail,
                });
            }
        }
        Err(ChannelError::Exhausted { max: attempts })
    }
}

/// The open channel `id`; `None` for a channel retired here (late traffic is
/// dropped); a violation for a channel never opened.
pub(super) fn channel_for(
    shared: &Shared,
    id: u64,
    what: &str,
) -> Result<Option<Arc<ChannelCore>>, Violation> {
    let s = shared.lock();
    if let Some(c) = s.channels.open.get(&id) {
        return Ok(Some(c.clone()));
    }
    if s.channels.retired.contains(id) {
        return Ok(None);
    }
    Err(violation(
        Rule::ChannelKnown.name(),
        format!("{what} for channel {id}, which is not open"),
    ))
}

/// The channel the last item or grant came for, kept by whoever receives
/// (the driver, a caller receiving on its own thread) across the frames it
/// handles: a stream's items then skip the registry's lock and hash.
///
/// A caller receiving on its own thread ([`deferring`](Self::deferring))
/// also wakes a channel's receiver once for a run of items, not for each:
/// on one CPU the woken receiver preempts the thread that woke it, takes
/// the one item there, and sleeps again, item after item (two switches
/// per item; 15–20 % of pinned spawned 1000-item streams took 2.5 ms
/// instead of 0.4). The items it owes a wake for are announced when the
/// run moves to another channel, after [`ANNOUNCE_EVERY`] of them or
/// [`ANNOUNCE_BYTES`] of their bytes, before the caller waits
/// ([`announce`](Self::announce)) and when it is dropped.
#[derive(Default)]
pub(super) struct LastChannel {
    channel: Option<Arc<ChannelCore>>,
    defer: bool,
    /// Items queued on `channel` and not yet announced.
    owed: u32,
    /// Their bytes.
    owed_bytes: usize,
    /// Items queued on any channel since this was made.
    queued: u64,
}

/// The most items a deferring receiver queues before it wakes their
/// receiver.
const ANNOUNCE_EVERY: u32 = 32;
/// The most bytes of items it queues before it wakes their receiver (large
/// items: a receiver on another CPU gets to work on them meanwhile).
const ANNOUNCE_BYTES: usize = 64 << 10;

impl LastChannel {
    /// One that wakes a channel's receiver once for a run of items.
    pub(super) fn deferring() -> Self {
        LastChannel {
            channel: None,
            defer: true,
            owed: 0,
            owed_bytes: 0,
            queued: 0,
        }
    }

    /// Runs `f` over a batch's messages waking a channel's receiver once
    /// for a run of the items it queues (as a deferring receiver does), and
    /// at the batch's end for the rest, instead of once per item.
    pub(super) fn deferring_during<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let was = std::mem::replace(&mut self.defer, true);
        let r = f(self);
        self.defer = was;
        if !was {
            self.announce();
        }
        r
    }

    /// The channel `id`, as [`channel_for`] finds it.
    pub(super) fn get(
        &mut self,
        shared: &Shared,
        id: u64,
        what: &str,
    ) -> Result<Option<&ChannelCore>, Violation> {
        // Ids are never reused in a session: the open channel of this id
        // is the one kept, until it is retired.
        if !matches!(&self.channel, Some(c) if c.id == id && !c.is_retired()) {
            self.hold(channel_for(shared, id, what)?);
        }
        Ok(self.channel.as_deref())
    }

    /// Keeps `next` instead, announcing what the one held is owed.
    fn hold(&mut self, next: Option<Arc<ChannelCore>>) {
        self.announce();
        self.channel = next;
    }

    /// Queues an item that came for channel `id`.
    pub(super) fn item(
        &mut self,
        shared: &Shared,
        id: u64,
        payload: &[u8],
        tail: Option<Vec<u8>>,
    ) -> Result<(), Violation> {
        self.get(shared, id, "Item")?;
        self.deliver(payload, tail)
    }

    /// Queues an item on the channel held (if any).
    fn deliver(&mut self, payload: &[u8], tail: Option<Vec<u8>>) -> Result<(), Violation> {
        let Some(core) = &self.channel else {
            return Ok(());
        };
        let len = payload.len() + tail.as_ref().map_or(0, Vec::len);
        core.on_item(payload, tail)?;
        self.owe(1, len);
        Ok(())
    }

    /// Queues items that came one after another for channel `id` in one
    /// batch, as [`item`](Self::item) does each, under one lock of the
    /// channel.
    fn items(&mut self, shared: &Shared, id: u64, payloads: &[&[u8]]) -> Result<(), Violation> {
        let Some(core) = self.get(shared, id, "Item")? else {
            return Ok(());
        };
        core.on_items(payloads)?;
        self.owe(payloads.len() as u32, payloads.iter().map(|p| p.len()).sum());
        Ok(())
    }

    /// Counts `n` items of `bytes` queued, waking their receiver now unless
    /// the wake is deferred and not yet due.
    fn owe(&mut self, n: u32, bytes: usize) {
        self.queued += u64::from(n);
        self.owed += n;
        self.owed_bytes += bytes;
        if !self.defer || self.owed >= ANNOUNCE_EVERY || self.owed_bytes >= ANNOUNCE_BYTES {
            self.announce();
        }
    }

    /// How many items were queued on any channel since this was made.
    pub(super) fn queued(&self) -> u64 {
        self.queued
    }

    /// Wakes the receiver of the items queued and not yet announced.
    pub(super) fn announce(&mut self) {
        self.owed_bytes = 0;
        if std::mem::take(&mut self.owed) > 0
            && let Some(c) = &self.channel
        {
            c.announce_items();
        }
    }
}

/// Items of one channel met one after another in a batch, held to be
/// queued together ([`LastChannel`] queues each run under one lock of its
/// channel instead of one per item). A run ends at an item of another
/// channel, at any other message (which may concern the channel, so the
/// items before it must be queued first), at the batch's end, and after
/// [`ANNOUNCE_EVERY`] items, so the receiver is woken as often as it would
/// be item by item.
pub(super) struct ItemRun<'m> {
    channel: u64,
    payloads: [&'m [u8]; ANNOUNCE_EVERY as usize],
    len: usize,
}

impl<'m> ItemRun<'m> {
    /// An empty run.
    pub(super) fn new() -> Self {
        ItemRun {
            channel: 0,
            payloads: [&[]; ANNOUNCE_EVERY as usize],
            len: 0,
        }
    }

    /// Adds an item that came for `channel`, first queuing the run held if
    /// it is another channel's or full.
    pub(super) fn push(
        &mut self,
        shared: &Shared,
        last: &mut LastChannel,
        channel: u64,
        payload: &'m [u8],
    ) -> Result<(), Violation> {
        if self.len == self.payloads.len() || (self.len > 0 && self.channel != channel) {
            self.flush(shared, last)?;
        }
        self.channel = channel;
        self.payloads[self.len] = payload;
        self.len += 1;
        Ok(())
    }

    /// Queues the items held, in order.
    pub(super) fn flush(&mut self, shared: &Shared, last: &mut LastChannel) -> Result<(), Violation> {
        let n = std::mem::take(&mut self.len);
        if n == 0 {
            return Ok(());
        }
        last.items(shared, self.channel, &self.payloads[..n])
    }
}

impl Drop for LastChannel {
    fn drop(&mut self) {
        self.announce();
    }
}

/// Opens the channels a message lists (created by the peer).
pub(super) fn open_peer_channels(shared: &Shared, channels: &[u64]) -> Result<(), Violation> {
    for &id in channels {
        if !shared.ids.is_peers(id) {
            // Our own channel, handed back to us: it must be open here.
            if shared.lock().channels.open.contains_key(&id) {
                continue;
            }
            return Err(violation(
                Rule::ChannelKnown.name(),
                format!("channel {id} has our parity but is not open"),
            ));
        }
        let open = {
            let s = shared.lock();
            if s.channels.open.contains_key(&id) {
                return Err(violation(
                    Rule::ChannelUnique.name(),
                    format!("channel {id} is already open"),
                ));
            }
            s.channels.open.len()
        };
        if open >= MAX_OPEN_CHANNELS {
            return Err(violation(
                Rule::ChannelLimit.name(),
                format!(
                    "channel {id} would be open channel number {}, over the limit of {MAX_OPEN_CHANNELS}",
                    open + 1
                ),
            ));
        }
        shared.new_channel(id)?;
    }
    Ok(())
}

/// Abandons listed channels no handle was bound to (the handler never got
/// them): reset them so the peer's end stops.
pub(super) fn abandon_unbound(shared: &Shared, channels: &[u64], bound: &[u64]) {
    for &id in channels.iter().filter(|id| !bound.contains(id)) {
        if let Some(core) = shared.channel_core(id) {
            core.on_reset("the handler did not take this channel".into());
            shared.send_later(&Message::Reset {
                channel: id,
                reason: "the handler did not take this channel".into(),
            });
            if core.end_local(crate::channel::End::Rx) {
                shared.retire_channel(id);
            }
        }
    }
}

/// Creates a channel on `shared`'s session to relay one the other session
/// listed: both ends held here, credit set up before it is announced.
pub(crate) fn relay_channel(shared: &Arc<Shared>) -> Result<Arc<ChannelCore>, ChannelError> {
    let core = shared.alloc_channel()?;
    core.attach(End::Tx);
    core.attach(End::Rx);
    core.init_credit(shared.our_initial_credit(), true)
        .map_err(|detail| ChannelError::Encode { detail })?;
    Ok(core)
}

/// Why channels cannot be relayed on this session, if they cannot: on a
/// shared credit table, a relay does not know which way a channel flows, so
/// both sides must start every channel with the same credit.
pub(crate) fn relay_unsupported(shared: &Shared) -> Option<String> {
    match &shared.credit {
        CreditMode::SharedTable(..) if shared.ours.initial_credit != shared.peer.initial_credit => {
            Some(format!(
                "cannot forward channels over session '{}': on a shared-memory link both sides must announce the same initial_credit (this side {}, the peer {})",
                shared.name, shared.ours.initial_credit, shared.peer.initial_credit
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(last: &mut LastChannel) {
        last.deliver(&[7], None).expect("within the window");
    }

    #[test]
    fn a_deferring_receiver_wakes_a_channel_once_for_a_run_of_items() {
        let core = ChannelCore::receiving_for_tests(1, 1 << 20);
        let mut last = LastChannel::deferring();
        last.hold(Some(core.clone()));
        for i in 1..ANNOUNCE_EVERY {
            item(&mut last);
            assert!(!core.take_announcement(), "item {i} woke the receiver");
        }
        item(&mut last);
        assert!(core.take_announcement(), "the {ANNOUNCE_EVERY}th item wakes it");
        item(&mut last);
        assert!(!core.take_announcement());
        last.announce();
        assert!(core.take_announcement(), "announcing (before a wait) wakes it");
        last.announce();
        assert!(!core.take_announcement(), "nothing owed, nobody woken");

        // Moving on to another channel announces the first one's items.
        let other = ChannelCore::receiving_for_tests(3, 1 << 20);
        item(&mut last);
        last.hold(Some(other.clone()));
        assert!(core.take_announcement(), "switching channels wakes the first");
        item(&mut last);
        assert!(!other.take_announcement());
        drop(last);
        assert!(other.take_announcement(), "dropping it wakes the second");
        let queued = |c: &ChannelCore| std::iter::from_fn(|| c.try_next_item(None)).count();
        assert_eq!(
            queued(&core) + queued(&other),
            ANNOUNCE_EVERY as usize + 3,
            "every item was queued"
        );
    }

    #[test]
    fn a_deferring_receiver_wakes_a_channel_for_a_run_of_large_items_sooner() {
        let core = ChannelCore::receiving_for_tests(1, 1 << 24);
        let mut last = LastChannel::deferring();
        last.hold(Some(core.clone()));
        let large = vec![0u8; ANNOUNCE_BYTES / 4];
        for i in 1..4 {
            last.deliver(&large, None).expect("within the window");
            assert!(!core.take_announcement(), "large item {i} woke the receiver");
        }
        last.deliver(&large, None).expect("within the window");
        assert!(core.take_announcement(), "{ANNOUNCE_BYTES} bytes wake it");
    }

    #[test]
    fn the_driver_wakes_the_receiver_for_each_item() {
        let core = ChannelCore::receiving_for_tests(1, 1 << 20);
        let mut last = LastChannel::default();
        last.hold(Some(core.clone()));
        for i in 0..3 {
            item(&mut last);
            assert!(core.take_announcement(), "item {i}");
        }
    }

    #[test]
    fn the_driver_wakes_the_receiver_once_for_a_batchs_run_of_items() {
        let core = ChannelCore::receiving_for_tests(1, 1 << 20);
        let mut last = LastChannel::default();
        last.hold(Some(core.clone()));
        last.deferring_during(|last| {
            for i in 1..ANNOUNCE_EVERY {
                item(last);
                assert!(
                    !core.take_announcement(),
                    "item {i} of the batch woke the receiver"
                );
            }
            item(last);
            assert!(core.take_announcement(), "the {ANNOUNCE_EVERY}th item wakes it");
            item(last);
            assert!(!core.take_announcement());
        });
        assert!(core.take_announcement(), "the batch's end wakes it for the rest");
        item(&mut last);
        assert!(
            core.take_announcement(),
            "after the batch, each item wakes it again"
        );
    }
}
