//! The driver completes a caller's answer only once it has let go of the
//! frame the answer came in. A frame may hold the link's receive side (an
//! shm frame is read under the receive lock); a caller woken while the
//! driver still held it would find the receive side taken, and on one CPU,
//! where the woken caller preempts the driver, every later call went
//! through the driver and its wake (a pinned round trip 7–11 µs instead
//! of 3–5). Checked over any link by wrapping its frames: the caller's
//! waker looks whether a frame is held when it is woken.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use common::bounded;
use osmos_session::SessionBuilder;
use osmos_session::link::memory;
use osmos_session::link::{CreditMode, Link, LinkError, LinkRx, Received};

#[osmos_macros::service]
pub trait Counter {
    /// `x + 1`.
    async fn next(&self, x: u32) -> u32;
}

/// Answers each call once the test lets it: after the caller registered
/// its waker.
struct Impl(Arc<tokio::sync::Semaphore>);
impl Counter for Impl {
    async fn next(&self, x: u32) -> u32 {
        self.0.acquire().await.expect("the gate stays open").forget();
        x + 1
    }
}

/// A link whose received frames mark `held` while they live.
struct Watched<L> {
    link: L,
    held: Arc<AtomicBool>,
}

struct WatchedRx<R> {
    rx: R,
    held: Arc<AtomicBool>,
}

struct WatchedFrame<F> {
    frame: F,
    held: Arc<AtomicBool>,
}

impl<F: Received> std::ops::Deref for WatchedFrame<F> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.frame
    }
}

impl<F: Received> Received for WatchedFrame<F> {
    fn take_tail(&mut self) -> Option<Vec<u8>> {
        self.frame.take_tail()
    }
}

impl<F> Drop for WatchedFrame<F> {
    fn drop(&mut self) {
        self.held.store(false, Ordering::SeqCst);
    }
}

impl<L: Link> Link for Watched<L> {
    type Tx = L::Tx;
    type Rx = WatchedRx<L::Rx>;

    fn max_frame(&self) -> usize {
        self.link.max_frame()
    }

    fn credit_mode(&self) -> CreditMode {
        self.link.credit_mode()
    }

    fn split(self) -> (L::Tx, WatchedRx<L::Rx>) {
        let (tx, rx) = self.link.split();
        (tx, WatchedRx { rx, held: self.held })
    }
}

impl<R: LinkRx> LinkRx for WatchedRx<R> {
    type Frame<'a>
        = WatchedFrame<R::Frame<'a>>
    where
        Self: 'a;

    async fn recv(&mut self) -> Result<Option<WatchedFrame<R::Frame<'_>>>, LinkError> {
        let frame = self.rx.recv().await?;
        Ok(frame.map(|frame| {
            self.held.store(true, Ordering::SeqCst);
            WatchedFrame {
                frame,
                held: self.held.clone(),
            }
        }))
    }
}

/// A waker that records, at each wake, whether a frame was held.
struct Recorder {
    held: Arc<AtomicBool>,
    seen: Mutex<Vec<bool>>,
    woken: tokio::sync::Notify,
}

impl Wake for Recorder {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.seen.lock().unwrap().push(self.held.load(Ordering::SeqCst));
        self.woken.notify_one();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_answer_wakes_it_after_the_driver_let_its_frame_go() {
    let (ours, theirs) = memory::pair(64 << 10, 64);
    let held = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let answer = gate.clone();
    let server = tokio::spawn(async move {
        let conn = SessionBuilder::new()
            .serve(CounterDispatcher::new(Impl(answer)))
            .accept(theirs)
            .await
            .unwrap();
        conn.closed().await;
    });
    let conn = bounded(
        "the handshake",
        SessionBuilder::new().initiate(Watched {
            link: ours,
            held: held.clone(),
        }),
    )
    .await
    .unwrap();
    let client = CounterClient::new(conn.clone());
    let recorder = Arc::new(Recorder {
        held: held.clone(),
        seen: Mutex::new(Vec::new()),
        woken: tokio::sync::Notify::new(),
    });
    let waker = Waker::from(recorder.clone());
    const CALLS: u32 = 200;
    for x in 0..CALLS {
        // Unconstrained: a call polled by hand in a loop that may not yield
        // to the runtime must not run out of tokio's cooperative budget,
        // whose exhaustion wakes at once (a wake that is no answer, and a
        // loop that would spin without ever yielding).
        let mut call = std::pin::pin!(tokio::task::unconstrained(client.next(x)));
        let mut cx = Context::from_waker(&waker);
        assert!(
            call.as_mut().poll(&mut cx).is_pending(),
            "the answer waits for the gate"
        );
        gate.add_permits(1);
        let got = loop {
            let woken = recorder.woken.notified();
            if let Poll::Ready(r) = call.as_mut().poll(&mut cx) {
                break r;
            }
            bounded("a wake", woken).await;
        };
        assert_eq!(got.unwrap(), x + 1);
    }
    let seen = recorder.seen.lock().unwrap().clone();
    assert!(
        seen.len() >= CALLS as usize,
        "each call was woken for its answer: {} wakes",
        seen.len()
    );
    let early = seen.iter().filter(|&&h| h).count();
    assert_eq!(
        early,
        0,
        "{early} of {} wakes came while the driver held the frame",
        seen.len()
    );
    conn.goodbye("done").await;
    let _ = bounded("the server", server).await;
}
