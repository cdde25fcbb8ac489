//! The channel credit table: per-channel byte credit as shared counters.
//!
//! Each entry holds a 32-bit wrapping `granted_total` (written by the
//! channel's receiver) and `sent_total` (written by its sender), each on its
//! own cache line next to that side's state word. The sender may send `n`
//! bytes only while `granted_total - sent_total >= n`; it then adds `n` to
//! `sent_total`. The receiver adds to `granted_total` as it consumes. A
//! sender out of credit sets its `PARKED` bit and sleeps on the
//! `granted_total` futex; the receiver wakes it only when that bit is set
//! (the doorbell protocol of [`crate::doorbell`], with `granted_total` as the
//! futex word: SYNC POINT A).
//!
//! The shared counters are a convenience for an honest peer, never the
//! source of truth: [`CreditReceiver`] keeps its own count of what it granted
//! and what arrived, so a sender that sends past its credit is caught
//! ([`Rule::CreditNoOverrun`]) whatever it writes into the table, and
//! [`CreditSender`] refuses a `granted_total` that moves backwards or jumps
//! more than 2^31 ahead ([`Rule::CreditGrantMonotonic`]).
//!
//! An entry is (re)initialized with [`CreditTable::reset`] by whichever side
//! allocates the channel id, before it tells the peer about the channel (that
//! message travels through a ring, whose Release/Acquire makes the reset
//! visible).

use std::fmt;
use std::time::Instant;

use crossbeam_utils::CachePadded;

use crate::doorbell::{ParkFlag, WaitCtx, WaitStrategy, wait_until};
use crate::error::{Error, Result, Rule};
use crate::futex::Futex;
use crate::liveness::Liveness;
use crate::pinned::{NotSync, Pinned};
use crate::sync::PlatformFutex;
use crate::sync::atomic::{AtomicU32, Ordering, fence};

/// Sender state bit: the sender is parked (or about to park) on `granted_total`.
const SENDER_PARKED: u32 = crate::wake::PARKED_FUTEX;
/// Sender state bit: the sender waits in its reactor (see `wake.rs`); a grant
/// or close sends it a wake byte.
const SENDER_PARKED_REACTOR: u32 = crate::wake::PARKED_REACTOR;
/// Receiver state bit: the receiver closed the channel; no more credit comes.
const RECEIVER_CLOSED: u32 = 1;
/// Largest credit window: counters are compared as wrapping differences.
const MAX_WINDOW: u32 = 1 << 31;

#[repr(C)]
#[derive(Default)]
struct ReceiverWords {
    /// Bytes granted since reset (wrapping). Written only by the receiver. The futex word.
    granted_total: AtomicU32,
    /// `RECEIVER_CLOSED` bit. Written only by the receiver.
    state: AtomicU32,
}

#[repr(C)]
#[derive(Default)]
struct SenderWords {
    /// Bytes sent since reset (wrapping). Written only by the sender.
    sent_total: AtomicU32,
    /// `SENDER_PARKED` and `SENDER_PARKED_REACTOR` bits. Written only by the sender.
    state: AtomicU32,
}

/// One channel's entry in shared memory.
#[repr(C)]
#[derive(Default)]
pub(crate) struct CreditEntry {
    receiver: CachePadded<ReceiverWords>,
    sender: CachePadded<SenderWords>,
}

#[cfg(not(osmos_loom))]
const _: () = {
    assert!(std::mem::size_of::<CreditEntry>() == crate::layout::CREDIT_ENTRY_BYTES);
    assert!(std::mem::align_of::<CreditEntry>() == crate::layout::STRUCT_ALIGN);
};

/// A handle on the credit table. Cheap to clone; hands out per-channel ends.
#[derive(Clone)]
pub struct CreditTable {
    /// Invariant: at most `u32::MAX` entries (checked in `new`).
    entries: Pinned<[CreditEntry]>,
    liveness: Liveness,
}

impl fmt::Debug for CreditTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditTable")
            .field("channels", &self.len())
            .finish()
    }
}

impl CreditTable {
    pub(crate) fn new(entries: Pinned<[CreditEntry]>, liveness: Liveness) -> Self {
        assert!(
            u32::try_from(entries.len()).is_ok(),
            "a credit table has at most 2^32 - 1 channels"
        );
        Self { entries, liveness }
    }

    /// Number of channel entries.
    pub fn len(&self) -> u32 {
        // At most `u32::MAX` entries (struct invariant).
        self.entries.len() as u32
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn check_initial(initial: u32) -> Result<()> {
        if initial > MAX_WINDOW {
            return Err(Error::InvalidArgument {
                reason: format!("initial credit {initial} exceeds the 2^31-byte window"),
            });
        }
        Ok(())
    }

    /// The index of `channel`'s entry, if the table has one.
    fn index(&self, channel: u32) -> Result<usize> {
        if channel >= self.len() {
            return Err(Error::InvalidArgument {
                reason: format!(
                    "channel index {channel} is outside the credit table (0..{})",
                    self.len()
                ),
            });
        }
        Ok(channel as usize)
    }

    /// A handle on `channel`'s entry, for one of its ends.
    fn entry(&self, channel: u32) -> Result<Pinned<CreditEntry>> {
        let i = self.index(channel)?;
        Ok(self.entries.project(|entries| &entries[i]))
    }

    /// Reinitializes a channel's counters: `initial` bytes granted, nothing
    /// sent, no state bits. Call before announcing the channel to the peer.
    pub fn reset(&self, channel: u32, initial: u32) -> Result<()> {
        Self::check_initial(initial)?;
        let e = &self.entries[self.index(channel)?];
        e.receiver.granted_total.store(initial, Ordering::Relaxed);
        e.receiver.state.store(0, Ordering::Relaxed);
        e.sender.sent_total.store(0, Ordering::Relaxed);
        e.sender.state.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// The sending end of `channel`, starting from `initial` bytes of credit.
    pub fn sender(&self, channel: u32, initial: u32) -> Result<CreditSender> {
        Self::check_initial(initial)?;
        let entry = self.entry(channel)?;
        Ok(CreditSender {
            entry,
            channel,
            sent: 0,
            granted_seen: initial,
            liveness: self.liveness.clone(),
            strategy: WaitStrategy::default(),
            _not_sync: NotSync::default(),
        })
    }

    /// The receiving end of `channel`, having granted `initial` bytes.
    pub fn receiver(&self, channel: u32, initial: u32) -> Result<CreditReceiver> {
        Self::check_initial(initial)?;
        let entry = self.entry(channel)?;
        Ok(CreditReceiver {
            entry,
            channel,
            granted: initial,
            received: 0,
            liveness: self.liveness.clone(),
            _not_sync: NotSync::default(),
        })
    }
}

/// The sending side of one channel's credit. `Send`, not `Sync`.
pub struct CreditSender {
    entry: Pinned<CreditEntry>,
    channel: u32,
    /// Bytes sent since reset (private truth, wrapping).
    sent: u32,
    /// `granted_total` as last validated (wrapping).
    granted_seen: u32,
    liveness: Liveness,
    strategy: WaitStrategy,
    _not_sync: NotSync,
}

impl fmt::Debug for CreditSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditSender")
            .field("channel", &self.channel)
            .field("sent", &self.sent)
            .field("granted_seen", &self.granted_seen)
            .finish()
    }
}

impl CreditSender {
    /// The channel's index.
    pub fn channel(&self) -> u32 {
        self.channel
    }

    /// Sets how this end waits before parking.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// Bytes that may be sent now, after validating the receiver's counter.
    pub fn available(&mut self) -> Result<u32> {
        let e = &self.entry;
        // ORDERING: Acquire pairs with the receiver's Release store in `grant`
        // (and `close`): the state it published before is visible.
        let g = e.receiver.granted_total.load(Ordering::Acquire);
        if e.receiver.state.load(Ordering::Acquire) & RECEIVER_CLOSED != 0 {
            return Err(Error::ChannelClosed {
                channel: self.channel,
            });
        }
        let advance = g.wrapping_sub(self.granted_seen);
        let window = g.wrapping_sub(self.sent);
        if advance > MAX_WINDOW || window > MAX_WINDOW {
            return Err(Error::violation(
                Rule::CreditGrantMonotonic,
                format!(
                    "channel {}: granted_total went from {} to {g} with {} sent",
                    self.channel, self.granted_seen, self.sent
                ),
            ));
        }
        self.granted_seen = g;
        Ok(window)
    }

    fn take_now(&mut self, n: u32) -> Result<bool> {
        if self.available()? < n {
            return Ok(false);
        }
        self.sent = self.sent.wrapping_add(n);
        // ORDERING: Release, pairs with nothing the protocol depends on (the
        // receiver trusts its own count); it keeps the counter's history
        // ordered after the credit it consumed, for diagnostics.
        self.entry.sender.sent_total.store(self.sent, Ordering::Release);
        Ok(true)
    }

    fn check_n(&self, n: u32) -> Result<()> {
        if n > MAX_WINDOW {
            return Err(Error::InvalidArgument {
                reason: format!("cannot take {n} bytes of credit at once (at most 2^31)"),
            });
        }
        Ok(())
    }

    /// Takes `n` bytes of credit if available now.
    pub fn try_take(&mut self, n: u32) -> Result<bool> {
        self.check_n(n)?;
        self.take_now(n)
    }

    /// Announces an async waiter for credit (the waiter's half of SYNC POINT
    /// A, see `wake.rs`): from now on a grant or close sends this side a
    /// wake byte. Call it, then re-try [`try_take`](Self::try_take), then
    /// await this side's wake descriptor; [`disarm_reactor`](Self::disarm_reactor)
    /// once awake.
    pub fn arm_reactor(&mut self) {
        // ORDERING: the RMW may be Relaxed: the fence orders it before the re-check.
        self.entry
            .sender
            .state
            .fetch_or(SENDER_PARKED_REACTOR, Ordering::Relaxed);
        // ORDERING: SYNC POINT A (async waiter side), pairs with the fence
        // in `CreditReceiver::grant` / `close`.
        fence(Ordering::SeqCst);
    }

    /// Withdraws the async waiter's mark.
    pub fn disarm_reactor(&mut self) {
        self.entry
            .sender
            .state
            .fetch_and(!SENDER_PARKED_REACTOR, Ordering::Relaxed);
    }

    /// Takes `n` bytes of credit, parking until the receiver grants enough,
    /// closes the channel, dies, or `deadline` passes.
    pub fn take(&mut self, n: u32, deadline: Option<Instant>) -> Result<()> {
        self.check_n(n)?;
        if self.take_now(n)? {
            return Ok(());
        }
        let entry = self.entry.clone();
        let e = &*entry;
        let liveness = self.liveness.clone();
        let ctx = WaitCtx {
            liveness: &liveness,
            strategy: self.strategy,
            deadline,
            what: "channel credit",
        };
        wait_until(
            &ctx,
            &e.receiver.granted_total,
            Some(&e.receiver.state),
            ParkFlag {
                word: &e.sender.state,
                mark: SENDER_PARKED,
                cleared_with: 0,
            },
            || Ok(self.take_now(n)?.then_some(())),
        )
    }
}

/// The wake that goes with a grant already published
/// ([`CreditReceiver::grant_later`]). Ringing it late is safe: the sender
/// re-checks the total after marking itself parked, and the ring looks at
/// the mark only after the grant is visible.
#[must_use = "a parked sender sleeps on until the grant's wake is rung"]
pub struct GrantWake {
    entry: Pinned<CreditEntry>,
    liveness: Liveness,
}

impl GrantWake {
    /// Wakes the sender if it is parked (on the futex or in its reactor).
    pub fn ring(self) {
        // The grant's Release store came before.
        wake_parked_sender(&self.entry, &self.liveness, &self.entry.receiver.granted_total);
    }
}

/// Wakes the sender of `e` if it is marked parked: on the futex (through
/// `word`, one of the words it sleeps on) or in its reactor (a wake byte
/// through `liveness`). Call after publishing what the sender waits for
/// (Release): a sender that has not marked itself yet sees it when it
/// re-checks, and one that has needs no syscall from a ringer that finds no
/// mark (a stream's grants and its close, most of the time).
fn wake_parked_sender(e: &CreditEntry, liveness: &Liveness, word: &AtomicU32) {
    // ORDERING: SYNC POINT A (ringer side), pairs with the fence in
    // `doorbell::park_loop` after the sender sets `SENDER_PARKED` and with
    // the one in `CreditSender::arm_reactor`: the sender's re-check sees
    // what was published, or this load sees its mark.
    fence(Ordering::SeqCst);
    let parked = e.sender.state.load(Ordering::Relaxed);
    if parked & SENDER_PARKED != 0 {
        PlatformFutex::wake_all(word);
    }
    if parked & SENDER_PARKED_REACTOR != 0 {
        liveness.notify_peer();
    }
}

impl fmt::Debug for GrantWake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantWake").finish_non_exhaustive()
    }
}

/// The receiving side of one channel's credit. `Send`, not `Sync`.
pub struct CreditReceiver {
    entry: Pinned<CreditEntry>,
    channel: u32,
    /// Bytes granted since reset (private truth, wrapping).
    granted: u32,
    /// Bytes received since reset (private truth, wrapping). `received - granted <= 0`.
    received: u32,
    /// The receiving side's liveness (a grant wakes the sender through it).
    liveness: Liveness,
    _not_sync: NotSync,
}

impl fmt::Debug for CreditReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditReceiver")
            .field("channel", &self.channel)
            .field("granted", &self.granted)
            .field("received", &self.received)
            .finish()
    }
}

impl CreditReceiver {
    /// The channel's index.
    pub fn channel(&self) -> u32 {
        self.channel
    }

    /// Bytes granted and not yet received.
    pub fn outstanding(&self) -> u32 {
        self.granted.wrapping_sub(self.received)
    }

    /// Accounts for `n` bytes that arrived on the channel. Errors with
    /// [`Rule::CreditNoOverrun`] if the sender exceeded its credit.
    pub fn on_received(&mut self, n: u32) -> Result<()> {
        if n > self.outstanding() {
            return Err(Error::violation(
                Rule::CreditNoOverrun,
                format!(
                    "channel {}: {n} bytes arrived with only {} granted and not yet used ({} granted, {} received in total)",
                    self.channel,
                    self.outstanding(),
                    self.granted,
                    self.received
                ),
            ));
        }
        self.received = self.received.wrapping_add(n);
        Ok(())
    }

    /// Grants `n` more bytes and wakes the sender if it is parked.
    pub fn grant(&mut self, n: u32) -> Result<()> {
        self.grant_later(n)?.ring();
        Ok(())
    }

    /// Grants `n` more bytes at once, and returns the wake of a parked
    /// sender for the caller to [`ring`](GrantWake::ring) once it has let
    /// go of its own locks. A woken sender on the same CPU often runs at
    /// once; if this thread still held the lock that guards the receiver,
    /// the next frame's handling would wait for it and cost two more
    /// context switches.
    pub fn grant_later(&mut self, n: u32) -> Result<GrantWake> {
        if n > MAX_WINDOW.saturating_sub(self.outstanding()) {
            return Err(Error::InvalidArgument {
                reason: format!(
                    "granting {n} bytes would open channel {} past the 2^31-byte window ({} outstanding)",
                    self.channel,
                    self.outstanding()
                ),
            });
        }
        self.granted = self.granted.wrapping_add(n);
        let e = &self.entry;
        // ORDERING: Release pairs with the sender's Acquire load in `available`.
        e.receiver.granted_total.store(self.granted, Ordering::Release);
        Ok(GrantWake {
            entry: self.entry.clone(),
            liveness: self.liveness.clone(),
        })
    }

    /// Closes the channel from the receiving side: a parked sender wakes and
    /// gets [`Error::ChannelClosed`].
    pub fn close(&mut self) {
        let e = &self.entry;
        // ORDERING: Release pairs with the sender's Acquire load in
        // `available` and its snapshot in `doorbell::park_loop`. A parked
        // sender sleeps on this word too: it is woken below, or its sleep's
        // compare fails because the word changed after its snapshot.
        e.receiver.state.fetch_or(RECEIVER_CLOSED, Ordering::Release);
        wake_parked_sender(e, &self.liveness, &e.receiver.state);
    }
}

#[cfg(all(test, not(osmos_loom)))]
mod tests {
    use super::*;
    use crate::test_support::{WakeBound, await_word, pair, small_config, soon};

    /// Offset of a channel's sender state word (which holds `SENDER_PARKED`).
    fn sender_state(p: &crate::test_support::Pair, channel: usize) -> usize {
        p.host_seg.layout().channels + channel * 256 + 128 + 4
    }

    #[test]
    fn credit_is_taken_within_the_grant_and_refused_beyond() {
        let p = pair(&small_config());
        p.host.credit.reset(1, 100).unwrap();
        let mut tx = p.host.credit.sender(1, 100).unwrap();
        let mut rx = p.cell.credit.receiver(1, 100).unwrap();
        assert!(tx.try_take(60).unwrap());
        assert!(!tx.try_take(41).unwrap());
        assert!(tx.try_take(40).unwrap());
        assert_eq!(tx.available().unwrap(), 0);
        rx.on_received(100).unwrap();
        rx.grant(30).unwrap();
        assert_eq!(tx.available().unwrap(), 30);
        let err = tx.take(31, soon(5)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    waiting_for: "channel credit",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_grant_wakes_a_parked_sender() {
        let p = pair(&small_config());
        p.host.credit.reset(0, 0).unwrap();
        let mut tx = p.host.credit.sender(0, 0).unwrap();
        tx.set_wait_strategy(WaitStrategy::PARK);
        let mut rx = p.cell.credit.receiver(0, 0).unwrap();
        let wake = WakeBound::new();
        let t = std::thread::spawn(move || tx.take(10, wake.deadline()).map(|()| tx));
        await_word(&p.host_seg, sender_state(&p, 0), |v| v & SENDER_PARKED != 0);
        rx.grant(4).unwrap();
        rx.grant(6).unwrap();
        let mut tx = t.join().unwrap().unwrap();
        wake.assert_woken();
        assert_eq!(tx.available().unwrap(), 0);
    }

    #[test]
    fn wrapping_counters_keep_working() {
        let p = pair(&small_config());
        p.host.credit.reset(2, 1000).unwrap();
        let mut tx = p.host.credit.sender(2, 1000).unwrap();
        let mut rx = p.cell.credit.receiver(2, 1000).unwrap();
        // 5 GB through a 1000-byte window: the 32-bit totals wrap.
        for _ in 0..5_000_000 {
            assert!(tx.try_take(1000).unwrap());
            rx.on_received(1000).unwrap();
            rx.grant(1000).unwrap();
        }
        assert_eq!(tx.available().unwrap(), 1000);
        assert!(!tx.try_take(1001).unwrap());
    }

    #[test]
    fn an_overrun_is_caught_whatever_the_table_says() {
        let p = pair(&small_config());
        p.host.credit.reset(3, 100).unwrap();
        let mut rx = p.host.credit.receiver(3, 100).unwrap();
        // A lying cell grants itself a huge window in the shared table.
        let mut cell_tx = p.cell.credit.sender(3, 100).unwrap();
        let entry = p.cell_seg.layout().channels + 3 * 256;
        // SAFETY: granted_total of entry 3 is inside the segment.
        unsafe { p.cell_seg.raw_at(entry).cast::<u32>().write(1 << 30) };
        assert!(
            cell_tx.try_take(1 << 20).unwrap(),
            "the shared counter is only a convenience"
        );
        rx.on_received(100).unwrap();
        let err = rx.on_received(1).unwrap_err();
        assert_eq!(err.rule(), Some(Rule::CreditNoOverrun), "{err}");
        assert!(err.to_string().contains("100 granted"), "{err}");
    }

    #[test]
    fn a_grant_that_moves_backwards_is_a_violation() {
        let p = pair(&small_config());
        p.host.credit.reset(0, 100).unwrap();
        let mut tx = p.host.credit.sender(0, 100).unwrap();
        assert!(tx.try_take(50).unwrap());
        let entry = p.cell_seg.layout().channels;
        // SAFETY: granted_total of entry 0 is inside the segment.
        unsafe { p.cell_seg.raw_at(entry).cast::<u32>().write(20) };
        assert_eq!(
            tx.available().unwrap_err().rule(),
            Some(Rule::CreditGrantMonotonic)
        );
    }

    #[test]
    fn a_close_wakes_a_parked_sender_with_channel_closed() {
        let p = pair(&small_config());
        p.host.credit.reset(1, 0).unwrap();
        let mut tx = p.host.credit.sender(1, 0).unwrap();
        tx.set_wait_strategy(WaitStrategy::PARK);
        let mut rx = p.cell.credit.receiver(1, 0).unwrap();
        let wake = WakeBound::new();
        let t = std::thread::spawn(move || tx.take(1, wake.deadline()));
        await_word(&p.host_seg, sender_state(&p, 1), |v| v & SENDER_PARKED != 0);
        rx.close();
        assert!(matches!(
            t.join().unwrap(),
            Err(Error::ChannelClosed { channel: 1 })
        ));
        wake.assert_woken();
    }

    #[test]
    fn bad_arguments_are_refused() {
        let p = pair(&small_config());
        assert!(matches!(
            p.host.credit.sender(4, 0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            p.host.credit.reset(99, 0),
            Err(Error::InvalidArgument { .. })
        ));
        let mut tx = p.host.credit.sender(0, 0).unwrap();
        assert!(matches!(
            tx.try_take(u32::MAX),
            Err(Error::InvalidArgument { .. })
        ));
        let mut rx = p.host.credit.receiver(0, 10).unwrap();
        assert!(matches!(rx.grant(u32::MAX), Err(Error::InvalidArgument { .. })));
        for initial in [(1u32 << 31) + 1, u32::MAX] {
            assert!(matches!(
                p.host.credit.receiver(0, initial),
                Err(Error::InvalidArgument { .. })
            ));
            assert!(matches!(
                p.host.credit.sender(0, initial),
                Err(Error::InvalidArgument { .. })
            ));
            assert!(matches!(
                p.host.credit.reset(0, initial),
                Err(Error::InvalidArgument { .. })
            ));
        }
    }
}
