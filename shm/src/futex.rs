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
