//! The wait/wake primitive behind every doorbell, as a small trait.
//!
//! [`OsFutex`] uses the Linux futex calls *without* the private flag: the
//! words live in a `MAP_SHARED` memfd mapping and are waited on and woken
//! from two processes, which a private futex (keyed by the caller's own
//! address space) cannot do. A wait sleeps on several words at once with
//! `futex_waitv(2)` (Linux ≥ 5.16): the condition's word *and* the liveness
//! words of both sides, so that marking a side dead — which changes and wakes
//! only its liveness word — wakes every sleeper in the segment, and a change
//! that lands between a sleeper's last check and its sleep makes the call
//! return at once (the kernel compares every word before sleeping). On an
//! older kernel (`ENOSYS`) it falls back to `FUTEX_WAIT` on the first word in
//! slices of [`FALLBACK_SLICE`], so a missed liveness change is noticed within
//! one slice.
//!
//! Under `--cfg osmos_loom` the crate substitutes a condition-variable
//! stand-in with the same contract, so the protocol around the futex (parked
//! flag, re-check, elided wake) is model-checked even though loom cannot
//! model the system call itself.
//!
//! References: `futex(2)`, `futex(7)`, and the kernel's futex2 documentation
//! (`Documentation/userspace-api/futex2.rst`).

use std::time::Duration;

use crate::sync::atomic::AtomicU32;

/// Longest sleep of the `FUTEX_WAIT` fallback before it re-checks.
pub const FALLBACK_SLICE: Duration = Duration::from_millis(10);

/// How a [`Futex::wait_any`] returned. Callers must re-check their condition
/// in every case: the contract allows spurious wakeups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FutexWait {
    /// A wake arrived (or a spurious wakeup happened).
    Woken,
    /// A word no longer held its expected value when the kernel looked.
    ValueChanged,
    /// The timeout elapsed.
    TimedOut,
    /// A signal interrupted the sleep (`EINTR`).
    Interrupted,
}

/// A compare-and-sleep / wake primitive on 32-bit words.
pub trait Futex {
    /// Sleeps while every `word` holds its `expected` value, until one of
    /// them is woken, for at most `timeout` if given. The compares and the
    /// sleep are atomic with respect to [`Futex::wake_all`]. At most 4 words.
    fn wait_any(words: &[(&AtomicU32, u32)], timeout: Option<Duration>) -> FutexWait;

    /// Wakes every waiter sleeping on `word`.
    fn wake_all(word: &AtomicU32);
}

/// The Linux futex, shared between processes (no private flag).
#[cfg(not(osmos_loom))]
#[derive(Debug)]
pub struct OsFutex;

#[cfg(not(osmos_loom))]
impl OsFutex {
    fn classify(r: rustix::io::Result<()>) -> FutexWait {
        match r {
            Ok(()) => FutexWait::Woken,
            Err(rustix::io::Errno::AGAIN) => FutexWait::ValueChanged,
            Err(rustix::io::Errno::TIMEDOUT) => FutexWait::TimedOut,
            Err(rustix::io::Errno::INTR) => FutexWait::Interrupted,
            // EFAULT/EINVAL cannot happen for valid aligned `&AtomicU32`s;
            // report a spurious wakeup so the caller re-checks.
            Err(_) => FutexWait::Woken,
        }
    }

    fn timespec(d: Duration) -> rustix::thread::futex::Timespec {
        rustix::thread::futex::Timespec {
            tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: d.subsec_nanos().into(),
        }
    }
}

#[cfg(not(osmos_loom))]
static NO_WAITV: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(not(osmos_loom))]
impl Futex for OsFutex {
    fn wait_any(words: &[(&AtomicU32, u32)], timeout: Option<Duration>) -> FutexWait {
        use rustix::thread::futex;
        assert!(
            !words.is_empty() && words.len() <= 4,
            "wait_any takes 1 to 4 words"
        );
        if !NO_WAITV.load(std::sync::atomic::Ordering::Relaxed) {
            let mut waits = [futex::Wait::new(); 4];
            for (w, (word, expected)) in waits.iter_mut().zip(words) {
                w.val = u64::from(*expected);
                w.uaddr = futex::WaitPtr::new(word.as_ptr().cast());
                w.flags = futex::WaitFlags::SIZE_U32;
            }
            // futex_waitv takes an absolute CLOCK_MONOTONIC deadline.
            let deadline = timeout.map(|t| {
                let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
                let now = Duration::new(now.tv_sec as u64, now.tv_nsec as u32);
                Self::timespec(now.saturating_add(t))
            });
            let r = futex::waitv(
                &waits[..words.len()],
                futex::WaitvFlags::empty(),
                deadline.as_ref(),
                rustix::time::ClockId::Monotonic,
            );
            match r {
                Err(rustix::io::Errno::NOSYS) => {
                    NO_WAITV.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                r => return Self::classify(r.map(|_| ())),
            }
        }
        let (word, expected) = words[0];
        let slice = timeout.map_or(FALLBACK_SLICE, |t| t.min(FALLBACK_SLICE));
        match Self::classify(futex::wait(
            word,
            futex::Flags::empty(),
            expected,
            Some(&Self::timespec(slice)),
        )) {
            // A slice ending is a spurious wakeup, not the caller's timeout.
            FutexWait::TimedOut if timeout.is_none_or(|t| t > slice) => FutexWait::Woken,
            other => other,
        }
    }

    fn wake_all(word: &AtomicU32) {
        // A failed wake (impossible for a valid word) leaves nobody to wake.
        let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), i32::MAX as u32);
    }
}

/// `at`, or if that is sooner, a moment just past the CPU's next kernel
/// tick: for a wait whose end may move later (a window, not a deadline).
///
/// A timer that expires before the CPU's next programmed event (while the
/// CPU is busy, its next tick) makes the kernel reprogram the CPU's timer
/// device when the timer is armed and again when it is cancelled, and in a
/// virtual machine each reprogramming is an exit to the hypervisor. A
/// futex wait with a 500 µs timeout, woken early as a handover wait nearly
/// always is, paid two of them: on the 2-vCPU Firecracker VM of the
/// README's table a one-CPU `add` round trip whose host sleeps on the ring
/// took 19.4 µs, and 8.3–8.5 µs with the timeout past the tick. A timer
/// past the next tick is armed and cancelled without touching the device.
///
/// The next tick is at most one tick period away, the period being the
/// resolution of `CLOCK_MONOTONIC_COARSE` (4 ms at 250 Hz). (That clock's
/// reading is no guide to where the next tick falls: on that VM it lagged
/// the fine clock by more than a period about one time in three.) Where
/// the resolution is not a tick's, `at` comes back unchanged.
#[cfg(not(osmos_loom))]
pub fn past_next_tick(at: std::time::Instant) -> std::time::Instant {
    match tick_period() {
        // Past the tick by a margin: the tick's own timer may fire a little
        // late.
        Some(p) => at.max(std::time::Instant::now() + p + TICK_MARGIN),
        None => at,
    }
}

/// The kernel's tick period (the resolution of `CLOCK_MONOTONIC_COARSE`),
/// read once; `None` where that resolution is not a tick's.
#[cfg(not(osmos_loom))]
fn tick_period() -> Option<Duration> {
    static PERIOD: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *PERIOD.get_or_init(|| {
        let r = rustix::time::clock_getres(rustix::time::ClockId::MonotonicCoarse);
        let p = Duration::new(r.tv_sec.max(0) as u64, r.tv_nsec.clamp(0, 999_999_999) as u32);
        // A tick between 0.1 ms (10 kHz) and 100 ms (10 Hz); anything else
        // is not a tick.
        (p >= Duration::from_micros(100) && p <= Duration::from_millis(100)).then_some(p)
    })
}

/// How far past the next tick [`past_next_tick`] puts a window's end.
#[cfg(not(osmos_loom))]
const TICK_MARGIN: Duration = Duration::from_micros(100);

#[cfg(all(test, not(osmos_loom)))]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn wait_any_honours_its_timeout() {
        let a = AtomicU32::new(5);
        let b = AtomicU32::new(6);
        let start = Instant::now();
        let r = OsFutex::wait_any(&[(&a, 5), (&b, 6)], Some(Duration::from_millis(30)));
        let took = start.elapsed();
        assert_eq!(r, FutexWait::TimedOut);
        assert!(
            took >= Duration::from_millis(30) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[test]
    fn a_window_shorter_than_a_tick_ends_past_the_next_tick() {
        let before = Instant::now();
        let short = before + Duration::from_micros(50);
        let end = past_next_tick(short);
        let Some(period) = tick_period() else {
            // Not a tick (no Linux kernel ticks so): nothing to move past.
            assert_eq!(end, short);
            return;
        };
        assert!(end >= before + period + TICK_MARGIN, "{:?}", end - before);
        assert!(end <= Instant::now() + period + TICK_MARGIN);
        // A window that already ends past the next tick is kept.
        let later = Instant::now() + period * 3;
        assert_eq!(past_next_tick(later), later);
    }

    #[test]
    fn wait_any_returns_at_once_when_a_word_differs() {
        let a = AtomicU32::new(5);
        let b = AtomicU32::new(6);
        assert_eq!(
            OsFutex::wait_any(&[(&a, 5), (&b, 7)], None),
            FutexWait::ValueChanged
        );
    }

    #[test]
    fn a_wake_on_any_word_ends_the_wait() {
        let words = std::sync::Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let w = words.clone();
        let t = std::thread::spawn(move || {
            OsFutex::wait_any(&[(&w[0], 0), (&w[1], 0)], Some(Duration::from_secs(10)))
        });
        // Keep waking the second word until the waiter has returned.
        while !t.is_finished() {
            words[1].store(1, std::sync::atomic::Ordering::Release);
            OsFutex::wake_all(&words[1]);
            std::thread::yield_now();
        }
        assert_ne!(t.join().unwrap(), FutexWait::TimedOut);
    }
}
