//! Answers held back while the driver holds the receive side.
//!
//! The driver handles a frame while it holds the link's receive side (an
//! shm frame is read where it was copied to, under the receive lock). An
//! answer it completes wakes the caller's thread, and on one CPU the
//! kernel runs the woken thread at once, preempting the driver with the
//! lock still held: the caller, which would receive its next answer
//! itself, finds the receive side taken, waits for the driver instead, and
//! every later call then costs a driver wake and a thread hop more (a
//! pinned two-process `add` round trip, the cell at nice 10, took 7.7 µs
//! instead of 4.6). So the driver
//! completes the answers of a frame only once it has let the frame go:
//! [`holding`] collects them while the frame is handled, and dropping the
//! [`Held`] it returns completes them.

use std::cell::{Cell, RefCell};

/// A completion held back: sends an answer to its caller.
type Completion = Box<dyn FnOnce() + Send>;

thread_local! {
    /// Whether completions on this thread are held back now.
    static HOLDING: Cell<bool> = const { Cell::new(false) };
    static HELD: RefCell<Vec<Completion>> = const { RefCell::new(Vec::new()) };
}

/// The completions [`holding`] held back; dropping it runs them, in order.
#[must_use = "dropping it completes the answers held back"]
pub(super) struct Held(bool);

impl Drop for Held {
    fn drop(&mut self) {
        if !self.0 {
            return;
        }
        let mut list = HELD.with(|h| std::mem::take(&mut *h.borrow_mut()));
        // Not holding any more: what these completions complete in turn
        // runs at once, never into the list taken here.
        for complete in list.drain(..) {
            complete();
        }
        // Keep the allocation for the next frame.
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if h.capacity() < list.capacity() {
                *h = list;
            }
        });
    }
}

/// Runs `f`, holding back the completions it makes through [`complete`]
/// until the returned [`Held`] is dropped. Not nested: an inner `holding`
/// leaves the outer one in charge.
pub(super) fn holding<T>(f: impl FnOnce() -> T) -> (T, Held) {
    if HOLDING.with(|h| h.replace(true)) {
        return (f(), Held(false));
    }
    /// Stops holding even if `f` unwinds.
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            HOLDING.with(|h| h.set(false));
        }
    }
    let stop = Stop;
    let r = f();
    drop(stop);
    let any = HELD.with(|h| !h.borrow().is_empty());
    (r, Held(any))
}

/// Runs `complete` now, or once the [`holding`] in progress on this thread
/// is over.
pub(super) fn complete(complete: impl FnOnce() + Send + 'static) {
    if HOLDING.with(Cell::get) {
        HELD.with(|h| h.borrow_mut().push(Box::new(complete)));
    } else {
        complete();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn completions_wait_for_the_held_to_drop_and_run_in_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (l1, l2) = (log.clone(), log.clone());
        let ((), held) = holding(|| {
            complete(move || l1.lock().unwrap().push(1));
            complete(move || l2.lock().unwrap().push(2));
        });
        assert!(
            log.lock().unwrap().is_empty(),
            "held back while the frame is held"
        );
        drop(held);
        assert_eq!(*log.lock().unwrap(), [1, 2]);
        let l3 = log.clone();
        complete(move || l3.lock().unwrap().push(3));
        assert_eq!(*log.lock().unwrap(), [1, 2, 3], "at once outside `holding`");
    }
}
