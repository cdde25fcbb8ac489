//! The session state machine, run by one driver task per session.
//!
//! [`SessionBuilder::initiate`] / [`SessionBuilder::accept`] take any
//! [`Link`], run the handshake, then spawn the **driver**: a task that owns
//! the link's receiving half and handles every incoming message in order. It
//! never waits on the link's sending half (whose backpressure could otherwise
//! deadlock two peers that both stop reading): what it must send (pongs,
//! refusals, protocol errors) goes through an unbounded **outbox** drained by
//! a writer task. Callers and handlers send directly, under the link's send
//! lock.
//!
//! Rules enforced on what the peer sends (each violation ends the session
//! with a `ProtocolError` naming the rule, and fails every pending call with
//! that reason):
//!
//! | rule | meaning |
//! |---|---|
//! | `frame.decodable` | every frame decodes as a [`Message`] |
//! | `frame.max-payload` | no frame exceeds our `max_payload` |
//! | `handshake.hello-first` / `handshake.once` | the handshake comes first, once |
//! | `id.parity` | ids the peer creates have the peer's parity |
//! | `conn.known` / `conn.unique` | messages name open connections (a close or call crossing this side's recent close is late, not wrong); new ids are new |
//! | `request.unique` / `request.limit` | a request id is not reused while in flight; at most our `max_concurrent_requests` at once |
//! | `conn.limit` / `channel.limit` | at most 4096 virtual connections and 65,536 open channels |
//! | `peer.reads-its-answers` | at most 65,536 answers (pongs, refusals) wait for a peer that is not reading |
//! | `response.known-request` | responses answer calls we made |
//! | `channel.known` / `channel.unique` | channel traffic names open channels |
//! | `channel.no-data-after-close` / `channel.close-once` | no item after Close |
//! | `credit.no-overrun` / `credit.grant-bounded` | items fit the credit granted |

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use facet::Facet;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::channel::{self, ChannelCore, ChannelError, FlowInit, Rx, Tx};
use crate::error::{CallError, SessionError, Violation, violation};
use crate::link::{CreditMode, Link, LinkError, LinkRx, LinkTx, SendPermit};
use crate::service::{Dispatch, Dispatcher, HandlerFuture, ReplyOutcome, ReplyValue};
use crate::wire::{self, Message, Metadata, Outcome, PROTOCOL_VERSION, Settings};

mod liveness;
pub(crate) mod raw;

/// Session tuning. The defaults suit peers on one machine.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Limits this side announces (and enforces).
    pub settings: Settings,
    /// Send a ping after this long without sending anything.
    pub keepalive_interval: Duration,
    /// End the session after this long without receiving anything.
    pub keepalive_timeout: Duration,
    /// Give up on a handshake after this long.
    pub handshake_timeout: Duration,
    /// A name for logs (e.g. the cell's name).
    pub name: String,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            settings: Settings::default(),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
            name: "session".into(),
        }
    }
}

/// Decides whether to accept a virtual connection the peer opens: return the
/// dispatcher that serves it, or the reason for refusing.
pub type ConnectionAcceptor =
    Arc<dyn Fn(&Metadata) -> Result<Option<Arc<dyn Dispatcher>>, String> + Send + Sync>;

/// Builds a session over a link.
#[derive(Clone, Default)]
pub struct SessionBuilder {
    config: SessionConfig,
    root: Option<Arc<dyn Dispatcher>>,
    acceptor: Option<ConnectionAcceptor>,
}

impl SessionBuilder {
    /// A builder with the default configuration, serving nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the configuration.
    pub fn config(mut self, config: SessionConfig) -> Self {
        self.config = config;
        self
    }

    /// Serves `dispatcher` on the root connection.
    pub fn serve(mut self, dispatcher: Arc<dyn Dispatcher>) -> Self {
        self.root = Some(dispatcher);
        self
    }

    /// Accepts virtual connections the peer opens, as `acceptor` decides.
    /// Without an acceptor every `ConnectionOpen` is rejected.
    pub fn accept_connections(mut self, acceptor: ConnectionAcceptor) -> Self {
        self.acceptor = Some(acceptor);
        self
    }

    /// Runs the handshake as the initiator and starts the session.
    pub async fn initiate<L: Link>(self, link: L) -> Result<Connection, SessionError> {
        self.start(link, Role::Initiator).await
    }

    /// Runs the handshake as the acceptor and starts the session.
    pub async fn accept<L: Link>(self, link: L) -> Result<Connection, SessionError> {
        self.start(link, Role::Acceptor).await
    }

    async fn start<L: Link>(self, link: L, role: Role) -> Result<Connection, SessionError> {
        let max_frame = link.max_frame();
        let credit = link.credit_mode();
        let (mut tx, mut rx) = link.split();
        let ours = self.config.settings.clone();
        let hello = match role {
            Role::Initiator => Message::Hello {
                version: PROTOCOL_VERSION,
                settings: ours.clone(),
            },
            Role::Acceptor => Message::HelloYourself {
                version: PROTOCOL_VERSION,
                settings: ours.clone(),
            },
        };
        let handshake = async {
            if role == Role::Initiator {
                send_on(&mut tx, &hello).await.map_err(link_failed)?;
            }
            let frame = rx
                .recv()
                .await
                .map_err(link_failed)?
                .ok_or_else(|| SessionError::Link {
                    detail: "the peer closed the link during the handshake".into(),
                })?;
            let msg = wire::decode(&frame).map_err(|e| SessionError::Violation {
                rule: "frame.decodable",
                detail: format!("handshake frame: {e}"),
            })?;
            let (version, settings) = match (role, msg) {
                (Role::Initiator, Message::HelloYourself { version, settings }) => (version, settings),
                (Role::Acceptor, Message::Hello { version, settings }) => (version, settings),
                (_, Message::Goodbye { reason }) => return Err(SessionError::Goodbye { reason }),
                (_, other) => {
                    return Err(SessionError::Violation {
                        rule: "handshake.hello-first",
                        detail: format!("expected the peer's hello, got {}", other.kind()),
                    });
                }
            };
            drop(frame);
            if version != PROTOCOL_VERSION {
                let goodbye = Message::Goodbye {
                    reason: format!(
                        "protocol version mismatch: this side speaks {PROTOCOL_VERSION}, the peer speaks {version}"
                    ),
                };
                let _ = send_on(&mut tx, &goodbye).await;
                return Err(SessionError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: version,
                });
            }
            if role == Role::Acceptor {
                send_on(&mut tx, &hello).await.map_err(link_failed)?;
            }
            Ok(settings)
        };
        let peer = match tokio::time::timeout(self.config.handshake_timeout, handshake).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(SessionError::HandshakeTimeout {
                    after: self.config.handshake_timeout,
                });
            }
        };
        let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
        let (ended_tx, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            role,
            name: self.config.name.clone(),
            ours,
            call_limit: Arc::new(Semaphore::new(peer.max_concurrent_requests.max(1) as usize)),
            peer,
            max_frame,
            credit,
            tx: tokio::sync::Mutex::new(Some(Box::new(tx))),
            ids: Ids::new(role),
            state: Mutex::new(State::default()),
            outbox: outbox_tx,
            outbox_len: AtomicUsize::new(0),
            ended: ended_tx,
            acceptor: self.acceptor,
            keepalive: Mutex::new(Keepalive {
                outstanding: None,
                alive_at: Instant::now(),
            }),
            send_waiters: AtomicUsize::new(0),
            stalled_since: Mutex::new(None),
            stats: Counters::default(),
        });
        shared.lock().conns.insert(
            0,
            ConnState {
                dispatcher: self.root,
            },
        );
        tokio::spawn(writer(shared.clone(), outbox_rx));
        tokio::spawn(driver(shared.clone(), rx, self.config.clone()));
        debug!(session = %shared.name, ?role, "session established");
        Ok(Connection::guarded(shared, 0))
    }
}

fn link_failed(e: LinkError) -> SessionError {
    match e {
        // A peer that breaks the link's framing broke a rule like any other.
        LinkError::Violation { rule, detail } => SessionError::Violation { rule, detail },
        e => SessionError::Link {
            detail: e.to_string(),
        },
    }
}

/// Which side of the handshake this session took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sent `Hello`; creates odd ids.
    Initiator,
    /// Answered with `HelloYourself`; creates even ids.
    Acceptor,
}

/// Id allocation with the role's parity.
struct Ids {
    next_request: AtomicU64,
    next_channel: AtomicU64,
    next_conn: AtomicU64,
    /// 1 for the initiator (odd ids), 0 for the acceptor (even ids).
    parity: u64,
}

impl Ids {
    fn new(role: Role) -> Self {
        let first = if role == Role::Initiator { 1 } else { 2 };
        Ids {
            next_request: AtomicU64::new(first),
            next_channel: AtomicU64::new(first),
            next_conn: AtomicU64::new(first),
            parity: first % 2,
        }
    }

    fn next(counter: &AtomicU64) -> u64 {
        counter.fetch_add(2, Ordering::Relaxed)
    }

    /// Whether `id` has the peer's parity (and is not the root connection).
    fn is_peers(&self, id: u64) -> bool {
        id != 0 && id % 2 != self.parity
    }
}

/// One connection's local state.
struct ConnState {
    dispatcher: Option<Arc<dyn Dispatcher>>,
}

/// An outgoing call waiting for its response.
struct Pending {
    conn: u64,
    complete: Box<dyn PendingCall>,
}

/// Completes a typed call from a response, decoding in place in the driver
/// (so channels in the return value bind before later frames arrive).
pub(crate) trait PendingCall: Send {
    fn respond(self: Box<Self>, shared: &Arc<Shared>, channels: &[u64], outcome: &Outcome<'_>);
    fn fail(self: Box<Self>, error: CallFailure);
}

/// A failure that ends a call without a response.
#[derive(Clone, Debug)]
pub(crate) enum CallFailure {
    Session(SessionError),
    ConnectionClosed(String),
}

#[derive(Default)]
struct State {
    /// Our calls in flight, by request id.
    pending: HashMap<u64, Pending>,
    /// Requests we cancelled recently: a late response for one is not a
    /// violation. Most are never answered (the callee drops the handler), so
    /// only the last [`CANCELLED_MEMORY`] are remembered.
    cancelled: HashSet<u64>,
    cancelled_order: VecDeque<u64>,
    /// The peer's calls we are serving, until their response is written:
    /// (conn, request) → the handler's abort handle (`None`: answered, the
    /// response waits in the outbox). Bounded by our `max_concurrent_requests`
    /// (the rule `request.limit`), so a peer that does not read its answers
    /// runs into that limit instead of growing our memory.
    serving: HashMap<(u64, u64), Option<tokio::task::AbortHandle>>,
    /// Open connections (0 is the root).
    conns: HashMap<u64, ConnState>,
    /// Virtual connections we are opening.
    opening: HashMap<u64, oneshot::Sender<Result<Metadata, String>>>,
    /// Open channels.
    channels: HashMap<u64, Arc<ChannelCore>>,
    /// Table indices of open channels (shm credit mode).
    table_busy: HashSet<u32>,
    /// Channels closed here recently: late traffic for them is dropped quietly.
    retired: VecDeque<u64>,
    retired_set: HashSet<u64>,
    /// Why the session ended, once it has.
    ended: Option<SessionError>,
    /// Every handle on the root connection was dropped (see `liveness`).
    root_released: bool,
    /// Waiters for a connection's close, and why recent ones closed.
    conn_watch: liveness::ConnWatch,
}

const RETIRED_MEMORY: usize = 4096;
/// How many cancelled requests a session remembers (see `State::cancelled`).
const CANCELLED_MEMORY: usize = 4096;
/// Most answers queued for a peer that is not reading them.
const MAX_OUTBOX: usize = 65_536;
/// Most channels open at once in a session.
const MAX_OPEN_CHANNELS: usize = 65_536;
/// Most virtual connections open at once in a session.
const MAX_CONNECTIONS: usize = 4096;

/// Writes one frame's bytes into the buffer a link lends.
type Fill<'a> = &'a (dyn Fn(&mut [u8]) + Sync);

/// The erased sending half of the link.
trait ErasedTx: Send {
    /// [`LinkTx::try_send_now`].
    fn try_send_now(&mut self, len: usize, fill: Fill<'_>) -> Result<bool, LinkError>;
    /// Reserves `len` bytes (waiting for room), fills them and commits.
    fn send_frame<'a>(
        &'a mut self,
        len: usize,
        fill: Fill<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), LinkError>> + Send + 'a>>;
    fn close(&mut self) -> Pin<Box<dyn Future<Output = Result<(), LinkError>> + Send + '_>>;
}

impl<T: LinkTx> ErasedTx for T {
    fn try_send_now(&mut self, len: usize, fill: Fill<'_>) -> Result<bool, LinkError> {
        LinkTx::try_send_now(self, len, &mut |buf| fill(buf))
    }

    fn send_frame<'a>(
        &'a mut self,
        len: usize,
        fill: Fill<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), LinkError>> + Send + 'a>> {
        Box::pin(async move {
            let mut permit = self.reserve(len).await?;
            fill(permit.buf());
            permit.commit().await
        })
    }

    fn close(&mut self) -> Pin<Box<dyn Future<Output = Result<(), LinkError>> + Send + '_>> {
        Box::pin(LinkTx::close(self))
    }
}

/// Sends one message on a link half that is not shared yet (the handshake).
async fn send_on<T: LinkTx>(tx: &mut T, msg: &Message<'_>) -> Result<(), LinkError> {
    ErasedTx::send_frame(tx, msg.encoded_len(), &|buf| {
        msg.write_to(buf);
    })
    .await
}

/// Everything the session's handles, driver and writer share.
pub(crate) struct Shared {
    role: Role,
    name: String,
    ours: Settings,
    peer: Settings,
    max_frame: usize,
    /// How channel credit travels.
    credit: CreditMode,
    /// Calls beyond the peer's `max_concurrent_requests` wait here.
    call_limit: Arc<Semaphore>,
    /// The link's sending half; `None` once the session ended and closed it.
    tx: tokio::sync::Mutex<Option<Box<dyn ErasedTx>>>,
    ids: Ids,
    state: Mutex<State>,
    /// Encoded frames for the writer task (sent from the driver and from drops).
    outbox: mpsc::UnboundedSender<Outgoing>,
    /// Frames queued in the outbox (bounded by [`MAX_OUTBOX`]).
    outbox_len: AtomicUsize,
    /// Becomes `Some` when the session ends.
    ended: watch::Sender<Option<SessionError>>,
    acceptor: Option<ConnectionAcceptor>,
    /// The peer's proof of life (see [`Keepalive`]).
    keepalive: Mutex<Keepalive>,
    /// Sends waiting for link room now.
    send_waiters: AtomicUsize,
    /// While sends wait: since when no frame went out (see `peer.drains-its-link`).
    stalled_since: Mutex<Option<Instant>>,
    stats: Counters,
}

/// Traffic counters of one session.
#[derive(Default)]
struct Counters {
    calls_made: AtomicU64,
    calls_served: AtomicU64,
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
}

/// A snapshot of a session's traffic and queues.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Calls this side made.
    pub calls_made: u64,
    /// Calls this side served.
    pub calls_served: u64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Bytes sent (encoded frames).
    pub bytes_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Calls of ours waiting for a response now.
    pub pending_calls: usize,
    /// Calls of the peer's being served now.
    pub serving_calls: usize,
    /// Open channels.
    pub open_channels: usize,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn peer_settings(&self) -> &Settings {
        &self.peer
    }

    fn ended(&self) -> Option<SessionError> {
        self.lock().ended.clone()
    }

    /// Sends a message now (waiting for link capacity).
    pub(crate) async fn send(&self, msg: &Message<'_>) -> Result<(), SessionError> {
        self.send_then(msg, &|| {}).await
    }

    /// Sends a message (waiting for link capacity), calling `committing`
    /// once it has room, just before the frame becomes visible to the peer.
    async fn send_then(&self, msg: &Message<'_>, committing: &(dyn Fn() + Sync)) -> Result<(), SessionError> {
        let len = msg.encoded_len();
        self.check_sendable(msg.kind(), len)?;
        let fill = |buf: &mut [u8]| {
            committing();
            msg.write_to(buf);
        };
        match self.try_send_now(len, &fill) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(e),
        }
        self.send_waiting(len, &fill).await
    }

    /// Whether a message may be sent: the session is up and the message fits
    /// the peer's and the link's limits.
    fn check_sendable(&self, kind: &str, len: usize) -> Result<(), SessionError> {
        if let Some(e) = self.ended() {
            return Err(e);
        }
        let max = (self.peer.max_payload as usize).min(self.max_frame);
        if len > max {
            return Err(SessionError::Link {
                detail: format!("a {kind} message of {len} bytes exceeds the {max}-byte limit"),
            });
        }
        Ok(())
    }

    /// Sends a frame at once if nobody else is sending and the link has
    /// room; `Ok(false)` if it would have to wait.
    fn try_send_now(&self, len: usize, fill: Fill<'_>) -> Result<bool, SessionError> {
        let Ok(mut tx) = self.tx.try_lock() else {
            return Ok(false);
        };
        let r = match tx.as_mut() {
            Some(tx) => tx.try_send_now(len, fill),
            None => Err(LinkError::Closed),
        };
        drop(tx);
        match r {
            Ok(true) => {
                self.sent(len);
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => Err(self.link_broke(e)),
        }
    }

    /// Sends a frame, waiting for the send lock and link capacity.
    async fn send_waiting(&self, len: usize, fill: Fill<'_>) -> Result<(), SessionError> {
        // A send waiting for link capacity gives up when the session ends
        // (dropping it releases the send lock; links send a frame whole or
        // not at all).
        let mut ended = self.ended.subscribe();
        let _waiting = SendWaiting::enter(self);
        let r = tokio::select! {
            r = async {
                match self.tx.lock().await.as_mut() {
                    Some(tx) => tx.send_frame(len, fill).await,
                    None => Err(LinkError::Closed),
                }
            } => r,
            _ = wait_ended(&mut ended) => {
                return Err(self.ended().unwrap_or(SessionError::Closed { reason: "ended".into() }));
            }
        };
        match r {
            Ok(()) => {
                self.sent(len);
                Ok(())
            }
            Err(e) => Err(self.link_broke(e)),
        }
    }

    /// Counts a frame sent.
    fn sent(&self, len: usize) {
        self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
        // ORDERING: Relaxed: a count; the stall mutex orders what it guards.
        if self.send_waiters.load(Ordering::Relaxed) > 0 {
            let mut since = self.stalled_since.lock().unwrap_or_else(|p| p.into_inner());
            if since.is_some() {
                *since = Some(Instant::now());
            }
        }
    }

    /// The link failed while sending: the session ends with that.
    fn link_broke(&self, e: LinkError) -> SessionError {
        let err = link_failed(e);
        self.end(err.clone());
        // The session may have ended before for a reason of its own (the
        // link closes because of it): callers see that reason.
        self.ended().unwrap_or(err)
    }

    /// A Pong arrived: it proves the peer alive only if it answers our
    /// outstanding Ping.
    fn on_pong(&self, nonce: u64) {
        let mut k = self.keepalive.lock().unwrap_or_else(|p| p.into_inner());
        if k.outstanding.is_some_and(|(n, _)| n == nonce) {
            k.outstanding = None;
            k.alive_at = Instant::now();
        }
    }

    /// The keepalive's periodic check: why the session must end, if it must;
    /// otherwise sends the next Ping when one is due.
    fn keepalive_tick(&self, config: &SessionConfig) -> Option<SessionError> {
        if let Some(since) = *self.stalled_since.lock().unwrap_or_else(|p| p.into_inner())
            && since.elapsed() >= config.keepalive_timeout
        {
            return Some(SessionError::Violation {
                rule: "peer.drains-its-link",
                detail: format!(
                    "the peer has not made room for a single frame in {:?} (its ring, slots or socket stayed full); an honest peer keeps reading",
                    since.elapsed()
                ),
            });
        }
        let mut k = self.keepalive.lock().unwrap_or_else(|p| p.into_inner());
        match k.outstanding {
            Some((_, sent)) if sent.elapsed() >= config.keepalive_timeout => {
                return Some(SessionError::KeepaliveTimeout {
                    silent_for: k.alive_at.elapsed(),
                });
            }
            Some(_) => {}
            None if k.alive_at.elapsed() >= config.keepalive_interval => {
                let nonce = unguessable();
                k.outstanding = Some((nonce, Instant::now()));
                drop(k);
                self.send_later(&Message::Ping { nonce });
            }
            None => {}
        }
        None
    }

    /// Sends a message without waiting: at once if the link has room and
    /// nothing queued is ahead of it, else through the writer task. For
    /// contexts that cannot wait.
    pub(crate) fn send_later(&self, msg: &Message<'_>) {
        let len = msg.encoded_len();
        if self.check_sendable(msg.kind(), len).is_err() {
            return;
        }
        // ORDERING: Relaxed throughout for `outbox_len`: it publishes no
        // data (frames travel in the mpsc); one thread's queued answers stay
        // in order because it reads its own increments (coherence), and the
        // writer's decrement follows its send.
        if self.outbox_len.load(Ordering::Relaxed) == 0 {
            let fill = |buf: &mut [u8]| {
                msg.write_to(buf);
            };
            if !matches!(self.try_send_now(len, &fill), Ok(false)) {
                return; // sent, or the session ended
            }
        }
        self.enqueue(msg.to_vec(), None);
    }

    /// Queues an encoded frame for the writer task, ending the session if the
    /// peer lets [`MAX_OUTBOX`] of them pile up.
    fn enqueue(&self, bytes: Vec<u8>, answered: Option<Answered>) {
        // A peer that keeps asking for answers (pings, calls to refuse)
        // without reading them would grow this queue forever.
        // ORDERING: Relaxed, see `send_later`.
        let queued = self.outbox_len.fetch_add(1, Ordering::Relaxed) + 1;
        if queued > MAX_OUTBOX {
            // End at once: telling a peer that does not read is futile.
            let detail = format!("{queued} answers are queued for the peer, which is not reading them");
            warn!(session = %self.name, rule = "peer.reads-its-answers", "{detail}");
            self.end(SessionError::Violation {
                rule: "peer.reads-its-answers",
                detail,
            });
            return;
        }
        let _ = self.outbox.send(Outgoing { bytes, answered });
    }

    /// The message handing these channels to the peer was sent.
    fn announce(&self, channels: &[u64]) {
        for id in channels {
            if let Some(core) = self.channel_core(*id) {
                core.announce();
            }
        }
    }

    pub(crate) fn channel_core(&self, id: u64) -> Option<Arc<ChannelCore>> {
        self.lock().channels.get(&id).cloned()
    }

    /// Forgets a channel finished on both sides (each side sent its terminal
    /// message); its table index, if any, may be used again.
    pub(crate) fn retire_channel(&self, id: u64) {
        let mut s = self.lock();
        if let Some(core) = s.channels.remove(&id) {
            if let Some(index) = core.table_index() {
                s.table_busy.remove(&index);
            }
            retire(&mut s, id);
        }
    }

    /// The credit this side grants a channel it receives on.
    pub(crate) fn our_initial_credit(&self) -> u32 {
        self.ours.initial_credit
    }

    /// Ends the session because the peer broke a rule outside the driver.
    pub(crate) fn fail_violation(&self, rule: &'static str, detail: String) {
        warn!(session = %self.name, rule, "peer broke a protocol rule: {detail}");
        self.send_later(&Message::ProtocolError {
            rule: rule.to_string(),
            detail: detail.clone(),
        });
        self.end(SessionError::Violation { rule, detail });
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
                        "channel.table-index-free",
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
            && !s.table_busy.insert(index)
        {
            return Err(violation(
                "channel.table-index-free",
                format!("channel {id} uses channel table entry {index}, which an open channel still uses"),
            ));
        }
        s.channels.insert(id, core.clone());
        Ok(core)
    }

    /// Allocates a new channel id of this side's parity (with a free table
    /// index, in table mode).
    fn alloc_channel(&self) -> Result<Arc<ChannelCore>, ChannelError> {
        let attempts = match &self.credit {
            CreditMode::Messages => 1,
            CreditMode::SharedTable(table, _) => (table.len() / 2).max(1),
        };
        for _ in 0..attempts {
            let id = Ids::next(&self.ids.next_channel);
            let busy = match &self.credit {
                CreditMode::Messages => false,
                CreditMode::SharedTable(table, _) => match Self::table_index(table, id) {
                    Some(index) => self.lock().table_busy.contains(&index),
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

    /// Ends the session (once): records why, fails every pending call,
    /// resets every channel, aborts every handler.
    fn end(&self, why: SessionError) {
        let (pending, serving, channels, opening) = {
            let mut s = self.lock();
            if s.ended.is_some() {
                return;
            }
            s.ended = Some(why.clone());
            (
                std::mem::take(&mut s.pending),
                std::mem::take(&mut s.serving),
                std::mem::take(&mut s.channels),
                std::mem::take(&mut s.opening),
            )
        };
        debug!(session = %self.name, "session ended: {why}");
        for (_, p) in pending {
            p.complete.fail(CallFailure::Session(why.clone()));
        }
        for h in serving.into_values().flatten() {
            h.abort();
        }
        for (_, c) in channels {
            c.on_reset(format!("the session ended: {why}"));
        }
        for (_, o) in opening {
            let _ = o.send(Err(why.to_string()));
        }
        self.ended.send_replace(Some(why));
    }
}

/// Remembers that request `id` was cancelled (or its connection closed), so
/// a response crossing the cancel is dropped quietly.
fn forget_request(s: &mut State, id: u64) {
    if s.cancelled.insert(id) {
        s.cancelled_order.push_back(id);
        if s.cancelled_order.len() > CANCELLED_MEMORY
            && let Some(old) = s.cancelled_order.pop_front()
        {
            s.cancelled.remove(&old);
        }
    }
}

fn retire(s: &mut State, id: u64) {
    if s.retired_set.insert(id) {
        s.retired.push_back(id);
        if s.retired.len() > RETIRED_MEMORY
            && let Some(old) = s.retired.pop_front()
        {
            s.retired_set.remove(&old);
        }
    }
}

/// How the keepalive knows the peer lives: only a Pong answering the Ping we
/// sent (its nonce unguessable) counts, so a peer that never reads cannot
/// keep the session up by sending (unsolicited Pongs, or anything else).
struct Keepalive {
    /// The Ping waiting for its Pong: (nonce, when it was queued).
    outstanding: Option<(u64, Instant)>,
    /// The last proof of life (the session's start, or the last Pong).
    alive_at: Instant,
}

/// A nonce the peer cannot predict (SipHash under this process's random keys).
fn unguessable() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(Instant::now())
}

/// Counts a send waiting for link room while it lives, and starts the stall
/// clock for the first one (see `peer.drains-its-link`).
struct SendWaiting<'a>(&'a Shared);

impl<'a> SendWaiting<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let mut since = shared.stalled_since.lock().unwrap_or_else(|p| p.into_inner());
        // ORDERING: Relaxed: the count is read as a hint in `sent`; the
        // stall clock itself is under the mutex.
        if shared.send_waiters.fetch_add(1, Ordering::Relaxed) == 0 {
            *since = Some(Instant::now());
        }
        SendWaiting(shared)
    }
}

impl Drop for SendWaiting<'_> {
    fn drop(&mut self) {
        let mut since = self.0.stalled_since.lock().unwrap_or_else(|p| p.into_inner());
        if self.0.send_waiters.fetch_sub(1, Ordering::Relaxed) == 1 {
            *since = None;
        }
    }
}

/// Resolves once the session has ended (the guard is dropped inside).
async fn wait_ended(rx: &mut watch::Receiver<Option<SessionError>>) {
    let _ = rx.wait_for(Option::is_some).await;
}

/// Drains the outbox onto the link.
async fn writer(shared: Arc<Shared>, mut outbox: mpsc::UnboundedReceiver<Outgoing>) {
    let mut ended = shared.ended.subscribe();
    loop {
        let Outgoing { bytes, answered } = tokio::select! {
            b = outbox.recv() => match b { Some(b) => b, None => return },
            _ = wait_ended(&mut ended) => return,
        };
        let fill = |buf: &mut [u8]| {
            // A queued answer stops counting against request.limit as it is
            // written (the peer may call again the moment it reads it).
            if let Some(a) = &answered {
                shared.lock().serving.remove(&(a.conn, a.request));
            }
            buf.copy_from_slice(&bytes);
        };
        let sent = match shared.try_send_now(bytes.len(), &fill) {
            Ok(true) => Ok(()),
            Ok(false) => shared.send_waiting(bytes.len(), &fill).await,
            Err(e) => Err(e),
        };
        // ORDERING: Relaxed, see `Shared::send_later`.
        shared.outbox_len.fetch_sub(1, Ordering::Relaxed);
        if sent.is_err() {
            return;
        }
        if let Some(a) = answered {
            shared.announce(&a.channels);
        }
    }
}

/// The driver: receives and handles every message, keeps the session alive.
async fn driver<R: LinkRx>(shared: Arc<Shared>, mut rx: R, config: SessionConfig) {
    let mut ended = shared.ended.subscribe();
    let mut tick = tokio::time::interval(
        config
            .keepalive_interval
            .min(config.keepalive_timeout / 2)
            .max(Duration::from_millis(1)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let frame = match frame {
                    Ok(Some(f)) => f,
                    Ok(None) => {
                        shared.end(SessionError::Link { detail: "the peer closed the link".into() });
                        break;
                    }
                    Err(LinkError::Violation { rule, detail }) => {
                        fail_with_violation(&shared, violation(rule, detail)).await;
                        break;
                    }
                    Err(e) => {
                        shared.end(link_failed(e));
                        break;
                    }
                };
                shared.stats.frames_received.fetch_add(1, Ordering::Relaxed);
                shared.stats.bytes_received.fetch_add(frame.len() as u64, Ordering::Relaxed);
                if let Err(v) = handle_frame(&shared, &frame) {
                    drop(frame);
                    fail_with_violation(&shared, v).await;
                    break;
                }
            }
            _ = tick.tick() => {
                match shared.keepalive_tick(&config) {
                    None => {}
                    Some(SessionError::Violation { rule, detail }) => {
                        // Telling a peer that does not read is futile.
                        warn!(session = %shared.name, rule, "peer broke a protocol rule: {detail}");
                        shared.end(SessionError::Violation { rule, detail });
                        break;
                    }
                    Some(why) => {
                        shared.send_later(&Message::Goodbye { reason: why.to_string() });
                        shared.end(why);
                        break;
                    }
                }
            }
            _ = wait_ended(&mut ended) => break,
        }
    }
    // Stop reading at once (the peer sees the link end), then close the
    // sending half, bounded: the peer may not be reading.
    drop(rx);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut tx = shared.tx.lock().await;
        if let Some(mut t) = tx.take() {
            let _ = t.close().await;
        }
    })
    .await;
}

async fn fail_with_violation(shared: &Arc<Shared>, v: Violation) {
    warn!(session = %shared.name, rule = v.rule, "peer broke a protocol rule: {}", v.detail);
    let msg = Message::ProtocolError {
        rule: v.rule.to_string(),
        detail: v.detail.clone(),
    };
    let why = SessionError::Violation {
        rule: v.rule,
        detail: v.detail,
    };
    // Tell the peer, best effort and bounded: it may not be reading.
    let _ = tokio::time::timeout(Duration::from_secs(1), shared.send(&msg)).await;
    shared.end(why);
}

/// Handles one incoming frame. Errors are protocol violations.
fn handle_frame(shared: &Arc<Shared>, frame: &[u8]) -> Result<(), Violation> {
    if frame.len() > shared.ours.max_payload as usize {
        return Err(violation(
            "frame.max-payload",
            format!(
                "a frame of {} bytes exceeds our max_payload of {}",
                frame.len(),
                shared.ours.max_payload
            ),
        ));
    }
    let msg = wire::decode(frame).map_err(|e| violation("frame.decodable", e))?;
    match msg {
        Message::Hello { .. } | Message::HelloYourself { .. } => Err(violation(
            "handshake.once",
            format!("{} after the handshake", msg.kind()),
        )),
        Message::ProtocolError { rule, detail } => {
            shared.end(SessionError::PeerReportedViolation { rule, detail });
            Ok(())
        }
        Message::Goodbye { reason } => {
            shared.end(SessionError::Goodbye { reason });
            Ok(())
        }
        Message::Ping { nonce } => {
            shared.send_later(&Message::Pong { nonce });
            Ok(())
        }
        Message::Pong { nonce } => {
            shared.on_pong(nonce);
            Ok(())
        }
        Message::ConnectionOpen { conn, metadata } => on_connection_open(shared, conn, &metadata),
        Message::ConnectionAccept { conn, metadata } => on_connection_answer(shared, conn, Ok(metadata)),
        Message::ConnectionReject { conn, reason } => on_connection_answer(shared, conn, Err(reason)),
        Message::ConnectionClose { conn, reason } => {
            if conn != 0 && shared.lock().conn_watch.recently_closed(conn) {
                // Both sides closed it at once.
                return Ok(());
            }
            if conn == 0 || !shared.lock().conns.contains_key(&conn) {
                return Err(violation(
                    "conn.known",
                    format!("ConnectionClose for connection {conn}, which is not open"),
                ));
            }
            close_connection(shared, conn, format!("the peer closed it: {reason}"));
            Ok(())
        }
        Message::Call {
            conn,
            request,
            method,
            metadata,
            channels,
            args,
        } => on_call(shared, conn, request, method, &metadata, &channels, args),
        Message::Response {
            conn,
            request,
            channels,
            outcome,
            ..
        } => on_response(shared, conn, request, &channels, &outcome),
        Message::Cancel { conn, request } => {
            if let Some(Some(h)) = shared.lock().serving.remove(&(conn, request)) {
                h.abort();
            }
            Ok(())
        }
        Message::Item { channel, payload } => match channel_for(shared, channel, "Item")? {
            Some(core) => core.on_item(payload),
            None => Ok(()),
        },
        Message::Close { channel } => {
            if let Some(core) = channel_for(shared, channel, "Close")?
                && core.on_close()?
            {
                shared.retire_channel(channel);
            }
            Ok(())
        }
        Message::Reset { channel, reason } => {
            if let Some(core) = channel_for(shared, channel, "Reset")? {
                let (ack, finished) = core.on_peer_reset(reason);
                if ack {
                    // The receiver is gone: our sender's terminal message.
                    shared.send_later(&Message::Close { channel });
                }
                if finished {
                    shared.retire_channel(channel);
                }
            }
            Ok(())
        }
        Message::GrantCredit { channel, bytes } => match channel_for(shared, channel, "GrantCredit")? {
            Some(core) => core.on_grant(bytes),
            None => Ok(()),
        },
    }
}

/// The open channel `id`; `None` for a channel retired here (late traffic is
/// dropped); a violation for a channel never opened.
fn channel_for(shared: &Shared, id: u64, what: &str) -> Result<Option<Arc<ChannelCore>>, Violation> {
    let s = shared.lock();
    if let Some(c) = s.channels.get(&id) {
        return Ok(Some(c.clone()));
    }
    if s.retired_set.contains(&id) {
        return Ok(None);
    }
    Err(violation(
        "channel.known",
        format!("{what} for channel {id}, which is not open"),
    ))
}

/// Opens the channels a message lists (created by the peer).
fn open_peer_channels(shared: &Shared, channels: &[u64]) -> Result<(), Violation> {
    for &id in channels {
        if !shared.ids.is_peers(id) {
            // Our own channel, handed back to us: it must be open here.
            if shared.lock().channels.contains_key(&id) {
                continue;
            }
            return Err(violation(
                "channel.known",
                format!("channel {id} has our parity but is not open"),
            ));
        }
        let open = {
            let s = shared.lock();
            if s.channels.contains_key(&id) {
                return Err(violation(
                    "channel.unique",
                    format!("channel {id} is already open"),
                ));
            }
            s.channels.len()
        };
        if open >= MAX_OPEN_CHANNELS {
            return Err(violation(
                "channel.limit",
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
fn abandon_unbound(shared: &Shared, channels: &[u64], bound: &[u64]) {
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

fn on_call(
    shared: &Arc<Shared>,
    conn: u64,
    request: u64,
    method: u64,
    metadata: &Metadata,
    channels: &[u64],
    args: &[u8],
) -> Result<(), Violation> {
    if !shared.ids.is_peers(request) {
        return Err(violation(
            "id.parity",
            format!("request id {request} does not have the caller's parity"),
        ));
    }
    let dispatcher = {
        let s = shared.lock();
        let Some(c) = s.conns.get(&conn) else {
            if s.conn_watch.recently_closed(conn) {
                // Sent before the peer learned of our close, which fails the
                // call there; its channels are refused.
                drop(s);
                open_peer_channels(shared, channels)?;
                abandon_unbound(shared, channels, &[]);
                return Ok(());
            }
            return Err(violation(
                "conn.known",
                format!("Call on connection {conn}, which is not open"),
            ));
        };
        if s.serving.contains_key(&(conn, request)) {
            return Err(violation(
                "request.unique",
                format!("request {request} is already in flight"),
            ));
        }
        if s.serving.len() >= shared.ours.max_concurrent_requests as usize {
            return Err(violation(
                "request.limit",
                format!(
                    "request {request} would be call number {} in flight, over our max_concurrent_requests of {}",
                    s.serving.len() + 1,
                    shared.ours.max_concurrent_requests
                ),
            ));
        }
        c.dispatcher.clone()
    };
    open_peer_channels(shared, channels)?;
    let dispatch = match &dispatcher {
        None => Dispatch::UnknownMethod,
        Some(d) => {
            let (r, bound) =
                channel::with_decode_context(shared, channels, || d.dispatch(method, metadata, args));
            abandon_unbound(shared, channels, &bound);
            r
        }
    };
    if dispatcher.is_none() {
        abandon_unbound(shared, channels, &[]);
    }
    let respond = |outcome: Outcome<'_>| {
        shared.send_later(&Message::Response {
            conn,
            request,
            metadata: vec![],
            channels: vec![],
            outcome,
        });
    };
    match dispatch {
        Dispatch::UnknownMethod => respond(Outcome::UnknownMethod),
        Dispatch::InvalidPayload(detail) => respond(Outcome::InvalidPayload(detail)),
        Dispatch::Run(mut handler) => {
            shared.stats.calls_served.fetch_add(1, Ordering::Relaxed);
            // Most handlers answer without waiting: poll once here, and such a
            // call costs no task at all. A handler that waits moves to its
            // own task, where a Cancel can abort it.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match catch_poll(&mut handler, &mut cx) {
                Poll::Ready(reply) => answer(shared, conn, request, reply),
                Poll::Pending => {
                    let sh = shared.clone();
                    // The entry goes in before the task can finish (it takes
                    // the same lock to remove it).
                    let mut s = shared.lock();
                    let task = tokio::spawn(async move {
                        let reply = std::future::poll_fn(|cx| catch_poll(&mut handler, cx)).await;
                        // Still counted while the response waits for room:
                        // a peer that does not read runs into request.limit.
                        let live = sh.lock().serving.contains_key(&(conn, request));
                        if live {
                            send_response(&sh, conn, request, reply).await;
                        }
                    });
                    if s.ended.is_none() && s.conns.contains_key(&conn) {
                        s.serving.insert((conn, request), Some(task.abort_handle()));
                    } else {
                        // Closed (or ended) since the call arrived: nobody
                        // would ever abort this handler.
                        task.abort();
                    }
                }
            }
        }
    }
    Ok(())
}

/// What a handler ended with: its reply, or why there is none.
type Reply = Result<Box<dyn ReplyValue>, &'static str>;

/// An encoded reply: how the call ended, as the session answers it.
type EncodedReply = ReplyOutcome;

/// Polls a handler, turning a panic into an error reply.
fn catch_poll(handler: &mut HandlerFuture, cx: &mut std::task::Context<'_>) -> Poll<Reply> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.as_mut().poll(cx))) {
        Ok(Poll::Ready(reply)) => Poll::Ready(Ok(reply)),
        Ok(Poll::Pending) => Poll::Pending,
        Err(_) => Poll::Ready(Err("the handler panicked")),
    }
}

/// Encodes a handler's reply (binding the channels in it) and sends it:
/// `(channels in it, whether it was sent)`.
fn encode_reply(shared: &Arc<Shared>, reply: Reply) -> (EncodedReply, Vec<u64>) {
    match reply {
        Ok(value) => channel::with_encode_context(shared, || value.into_outcome()),
        Err(why) => (ReplyOutcome::Internal(why.to_string()), Vec::new()),
    }
}

fn response<'a>(conn: u64, request: u64, encoded: &'a EncodedReply, channels: Vec<u64>) -> Message<'a> {
    let outcome = encoded.as_wire();
    Message::Response {
        conn,
        request,
        metadata: vec![],
        channels,
        outcome,
    }
}

/// Answers a call from the driver: at once if the link has room, else from a
/// task that waits for it. Channels in the reply are announced only once the
/// response is sent, so their items cannot overtake it.
fn answer(shared: &Arc<Shared>, conn: u64, request: u64, reply: Reply) {
    let (encoded, channels) = encode_reply(shared, reply);
    let (encoded, channels) = sendable_reply(shared, conn, request, encoded, channels);
    let msg = response(conn, request, &encoded, channels);
    let len = msg.encoded_len();
    if shared.check_sendable(msg.kind(), len).is_ok() {
        let fill = |buf: &mut [u8]| {
            msg.write_to(buf);
        };
        match shared.try_send_now(len, &fill) {
            Ok(true) => {
                if let Message::Response { channels, .. } = &msg {
                    shared.announce(channels);
                }
                return;
            }
            Ok(false) => {}
            Err(_) => return,
        }
    }
    // No room now: the response waits in the outbox, and the call stays
    // counted in `serving` until the writer has written it.
    let Message::Response { channels, .. } = &msg else {
        return;
    };
    let answered = Answered {
        conn,
        request,
        channels: channels.clone(),
    };
    {
        let mut s = shared.lock();
        if s.ended.is_some() {
            return;
        }
        s.serving.insert((conn, request), None);
    }
    shared.enqueue(msg.to_vec(), Some(answered));
}

/// A call whose queued response the writer is to write: once written, the
/// call stops counting in `serving` and the channels in it are announced.
struct Answered {
    conn: u64,
    request: u64,
    channels: Vec<u64>,
}

/// A frame queued for the writer task.
struct Outgoing {
    bytes: Vec<u8>,
    answered: Option<Answered>,
}

/// Answers a call from the handler's task, waiting for link room.
/// A reply too large for the link or the peer is answered with an error
/// that says so (a response that cannot be sent would leave the caller
/// waiting, or end the session).
fn sendable_reply(
    shared: &Shared,
    conn: u64,
    request: u64,
    encoded: EncodedReply,
    channels: Vec<u64>,
) -> (EncodedReply, Vec<u64>) {
    let len = response(conn, request, &encoded, channels.clone()).encoded_len();
    let max = (shared.peer.max_payload as usize).min(shared.max_frame);
    if len <= max {
        return (encoded, channels);
    }
    let why = format!(
        "the handler's result encodes to {len} bytes, over this session's {max}-byte message limit; return large data through a channel (Tx/Rx)"
    );
    (ReplyOutcome::Internal(why), Vec::new())
}

async fn send_response(shared: &Arc<Shared>, conn: u64, request: u64, reply: Reply) {
    let (encoded, channels) = encode_reply(shared, reply);
    let (encoded, channels) = sendable_reply(shared, conn, request, encoded, channels);
    let msg = response(conn, request, &encoded, channels);
    // The call stops counting against request.limit as its response is
    // written, not after: the peer may send its next call the moment it
    // reads this one's answer.
    let written = || {
        shared.lock().serving.remove(&(conn, request));
    };
    match shared.send_then(&msg, &written).await {
        Ok(()) => {
            if let Message::Response { channels, .. } = &msg {
                shared.announce(channels);
            }
        }
        // Not written (too large for the link, or the session ended): the
        // call is over all the same.
        Err(_) => written(),
    }
}

fn on_response(
    shared: &Arc<Shared>,
    conn: u64,
    request: u64,
    channels: &[u64],
    outcome: &Outcome<'_>,
) -> Result<(), Violation> {
    let pending = {
        let mut s = shared.lock();
        match s.pending.remove(&request) {
            Some(p) => p,
            None => {
                if s.cancelled.remove(&request) {
                    return Ok(());
                }
                return Err(violation(
                    "response.known-request",
                    format!("Response to request {request}, which is not in flight"),
                ));
            }
        }
    };
    if pending.conn != conn {
        return Err(violation(
            "response.known-request",
            format!(
                "Response to request {request} on connection {conn}; it was made on {}",
                pending.conn
            ),
        ));
    }
    open_peer_channels(shared, channels)?;
    pending.complete.respond(shared, channels, outcome);
    Ok(())
}

fn on_connection_open(shared: &Arc<Shared>, conn: u64, metadata: &Metadata) -> Result<(), Violation> {
    if !shared.ids.is_peers(conn) {
        return Err(violation(
            "id.parity",
            format!("connection id {conn} does not have the opener's parity"),
        ));
    }
    {
        let s = shared.lock();
        if s.conns.contains_key(&conn) {
            return Err(violation(
                "conn.unique",
                format!("connection {conn} is already open"),
            ));
        }
        if s.conns.len() >= MAX_CONNECTIONS {
            return Err(violation(
                "conn.limit",
                format!(
                    "connection {conn} would be connection number {}, over the limit of {MAX_CONNECTIONS}",
                    s.conns.len() + 1
                ),
            ));
        }
    }
    let decision = match &shared.acceptor {
        None => Err("this side accepts no virtual connections".to_string()),
        Some(a) => a(metadata),
    };
    match decision {
        Ok(dispatcher) => {
            shared.lock().conns.insert(
                conn,
                ConnState {
                    dispatcher: dispatcher.clone(),
                },
            );
            shared.send_later(&Message::ConnectionAccept {
                conn,
                metadata: vec![],
            });
            if let Some(d) = dispatcher {
                d.connection_accepted(&Connection::unguarded(shared.clone(), conn));
            }
        }
        Err(reason) => shared.send_later(&Message::ConnectionReject { conn, reason }),
    }
    Ok(())
}

fn on_connection_answer(
    shared: &Arc<Shared>,
    conn: u64,
    answer: Result<Metadata, String>,
) -> Result<(), Violation> {
    let Some(waiter) = shared.lock().opening.remove(&conn) else {
        return Err(violation(
            "conn.known",
            format!("answer for connection {conn}, which we are not opening"),
        ));
    };
    if let Err(answer) = waiter.send(answer) {
        // The opener stopped waiting (its `open` future was dropped): close
        // what nobody will use, so neither side keeps it.
        const WHY: &str = "the opener stopped waiting for this connection";
        match answer {
            Ok(_) => {
                close_connection(shared, conn, WHY.to_string());
                shared.send_later(&Message::ConnectionClose {
                    conn,
                    reason: WHY.to_string(),
                });
            }
            Err(_) => {
                let removed = shared.lock().conns.remove(&conn);
                drop(removed);
            }
        }
    }
    Ok(())
}

/// Forgets a connection: fails our calls on it, aborts its handlers.
fn close_connection(shared: &Arc<Shared>, conn: u64, reason: String) {
    // Dropped after the lock: a dispatcher may hold connection handles.
    let removed;
    let (pending, serving) = {
        let mut s = shared.lock();
        removed = s.conns.remove(&conn);
        s.conn_watch.closed(conn, &reason);
        let ids: Vec<u64> = s
            .pending
            .iter()
            .filter(|(_, p)| p.conn == conn)
            .map(|(id, _)| *id)
            .collect();
        let pending: Vec<Pending> = ids.iter().filter_map(|id| s.pending.remove(id)).collect();
        // The peer may have answered before it learned of the close.
        for &id in &ids {
            forget_request(&mut s, id);
        }
        let keys: Vec<(u64, u64)> = s.serving.keys().filter(|(c, _)| *c == conn).copied().collect();
        let serving: Vec<_> = keys.iter().filter_map(|k| s.serving.remove(k)).collect();
        (pending, serving)
    };
    for p in pending {
        p.complete.fail(CallFailure::ConnectionClosed(reason.clone()));
    }
    for h in serving.into_iter().flatten() {
        h.abort();
    }
    drop(removed);
    liveness::end_if_unused(shared);
}

/// Options for one call.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Fail with [`CallError::DeadlineExceeded`] (and cancel) after this long.
    pub timeout: Option<Duration>,
    /// Metadata sent with the call.
    pub metadata: Metadata,
}

impl CallOptions {
    /// Options with a timeout.
    pub fn timeout(timeout: Duration) -> Self {
        CallOptions {
            timeout: Some(timeout),
            ..Default::default()
        }
    }
}

/// The typed completion of one call.
struct TypedPending<T, E> {
    tx: oneshot::Sender<Result<T, CallError<E>>>,
}

impl<T, E> PendingCall for TypedPending<T, E>
where
    T: Facet<'static> + Send + 'static,
    E: Facet<'static> + Send + 'static,
{
    fn respond(self: Box<Self>, shared: &Arc<Shared>, channels: &[u64], outcome: &Outcome<'_>) {
        let result = match outcome {
            Outcome::Ok(bytes) => {
                let (r, _) =
                    channel::with_decode_context(shared, channels, || channel::decode_exact::<T>(bytes));
                r.map_err(|detail| CallError::Decode { detail })
            }
            Outcome::UserError(bytes) => match channel::decode_exact::<E>(bytes) {
                Ok(e) => Err(CallError::User(e)),
                Err(detail) => Err(CallError::Decode { detail }),
            },
            Outcome::UnknownMethod => Err(CallError::UnknownMethod { method: 0 }),
            Outcome::InvalidPayload(d) => Err(CallError::InvalidPayload { detail: d.clone() }),
            Outcome::Cancelled => Err(CallError::Cancelled),
            Outcome::Internal(d) => Err(CallError::Internal { detail: d.clone() }),
        };
        let _ = self.tx.send(result);
    }

    fn fail(self: Box<Self>, error: CallFailure) {
        let e = match error {
            CallFailure::Session(s) => CallError::Session(s),
            CallFailure::ConnectionClosed(reason) => CallError::ConnectionClosed { reason },
        };
        let _ = self.tx.send(Err(e));
    }
}

/// Forgets a virtual connection whose `open` was dropped before its
/// `ConnectionOpen` was sent.
struct UnsentOpen {
    shared: Arc<Shared>,
    conn: u64,
    armed: bool,
}

impl Drop for UnsentOpen {
    fn drop(&mut self) {
        if self.armed {
            let removed = {
                let mut s = self.shared.lock();
                s.opening.remove(&self.conn);
                s.conns.remove(&self.conn)
            };
            drop(removed);
        }
    }
}

/// Removes a call's pending entry and sends `Cancel` if the call's future is
/// dropped before its response arrived.
struct CallGuard {
    shared: Arc<Shared>,
    conn: u64,
    request: u64,
    armed: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let was_pending = {
            let mut s = self.shared.lock();
            let was = s.pending.remove(&self.request).is_some();
            if was {
                forget_request(&mut s, self.request);
            }
            was
        };
        if was_pending {
            self.shared.send_later(&Message::Cancel {
                conn: self.conn,
                request: self.request,
            });
        }
    }
}

/// A handle on one connection of a session: make calls, create channels,
/// open virtual connections. Cheap to clone.
///
/// Liveness follows the handles: when the last clone of a virtual
/// connection this side opened is dropped, the connection is closed and the
/// peer told; when the last clone of the root connection is dropped and no
/// virtual connection is open any more, the session ends with a goodbye.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    id: u64,
    /// Shared by the clones of a handle that keeps its connection alive;
    /// `None` for handles that do not (e.g. given to a dispatcher).
    _live: Option<Arc<liveness::Guard>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("session", &self.shared.name)
            .field("id", &self.id)
            .finish()
    }
}

impl Connection {
    /// A handle that keeps connection `id` alive (see [`Connection`]).
    fn guarded(shared: Arc<Shared>, id: u64) -> Connection {
        let live = Some(Arc::new(liveness::Guard::new(shared.clone(), id)));
        Connection {
            shared,
            id,
            _live: live,
        }
    }

    /// A handle that does not keep connection `id` alive.
    pub(crate) fn unguarded(shared: Arc<Shared>, id: u64) -> Connection {
        Connection {
            shared,
            id,
            _live: None,
        }
    }

    /// Waits until this connection closes — closed by either side, or its
    /// session ended — and returns why.
    pub async fn connection_closed(&self) -> String {
        liveness::connection_closed(self).await
    }

    /// The connection's id (0 for the root connection).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Which side of the handshake this session took.
    pub fn role(&self) -> Role {
        self.shared.role
    }

    /// The limits the peer announced.
    pub fn peer_settings(&self) -> &Settings {
        &self.shared.peer
    }

    /// Why the session ended, if it has.
    pub fn ended(&self) -> Option<SessionError> {
        self.shared.ended()
    }

    /// Ends the session now with `why` (e.g. [`SessionError::PeerDied`] from
    /// a supervisor that saw the peer exit): pending calls fail with it.
    pub fn terminate(&self, why: SessionError) {
        self.shared.end(why);
    }

    /// Traffic counters and queue depths of the session.
    pub fn stats(&self) -> SessionStats {
        let c = &self.shared.stats;
        let s = self.shared.lock();
        SessionStats {
            calls_made: c.calls_made.load(Ordering::Relaxed),
            calls_served: c.calls_served.load(Ordering::Relaxed),
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            frames_received: c.frames_received.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            pending_calls: s.pending.len(),
            serving_calls: s.serving.len(),
            open_channels: s.channels.len(),
        }
    }

    /// Waits until the session ends and returns why.
    pub async fn closed(&self) -> SessionError {
        let mut rx = self.shared.ended.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(|| SessionError::Closed {
                reason: "unknown".into(),
            }),
            Err(_) => SessionError::Closed {
                reason: "the session was dropped".into(),
            },
        }
    }

    /// Ends the whole session with a goodbye: pending calls fail with
    /// [`SessionError::Closed`].
    pub async fn goodbye(&self, reason: &str) {
        let _ = self
            .shared
            .send(&Message::Goodbye {
                reason: reason.to_string(),
            })
            .await;
        self.shared.end(SessionError::Closed {
            reason: reason.to_string(),
        });
    }

    /// Creates a channel of `T` items: keep one end and pass the other to the
    /// peer in a call.
    ///
    /// Fails with [`ChannelError::Exhausted`] on an shm link whose channel
    /// table has no free entry of this side's.
    pub fn channel<T>(&self) -> Result<(Tx<T>, Rx<T>), ChannelError> {
        let core = self.shared.alloc_channel()?;
        Ok(channel::pair(&self.shared, core))
    }

    /// Calls `method` with `args`, waiting for the response. Calls beyond the
    /// peer's concurrency limit wait for a slot. Dropping the returned future
    /// cancels the call on the peer.
    pub async fn call<A, T, E>(&self, method: u64, args: &A, options: CallOptions) -> Result<T, CallError<E>>
    where
        A: for<'f> Facet<'f>,
        T: Facet<'static> + Send + 'static,
        E: Facet<'static> + Send + 'static,
    {
        let work = self.call_inner(method, args, options.metadata);
        match options.timeout {
            None => work.await,
            Some(t) => match tokio::time::timeout(t, work).await {
                Ok(r) => r,
                Err(_) => Err(CallError::DeadlineExceeded { after: t }),
            },
        }
    }

    async fn call_inner<A, T, E>(&self, method: u64, args: &A, metadata: Metadata) -> Result<T, CallError<E>>
    where
        A: for<'f> Facet<'f>,
        T: Facet<'static> + Send + 'static,
        E: Facet<'static> + Send + 'static,
    {
        let shared = &self.shared;
        if let Some(e) = shared.ended() {
            return Err(CallError::Session(e));
        }
        let _slot = shared.call_limit.clone().acquire_owned().await.map_err(|_| {
            CallError::Session(shared.ended().unwrap_or(SessionError::Closed {
                reason: "closed".into(),
            }))
        })?;
        let (encoded, channels) = channel::with_encode_context(shared, || channel::encode_value(args));
        let args = encoded.map_err(|detail| CallError::Encode { detail })?;
        let request = Ids::next(&shared.ids.next_request);
        shared.stats.calls_made.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut s = shared.lock();
            if let Some(e) = &s.ended {
                return Err(CallError::Session(e.clone()));
            }
            if self.id != 0 && !s.conns.contains_key(&self.id) {
                return Err(CallError::ConnectionClosed {
                    reason: "the connection is closed".into(),
                });
            }
            s.pending.insert(
                request,
                Pending {
                    conn: self.id,
                    complete: Box::new(TypedPending::<T, E> { tx }),
                },
            );
        }
        let mut guard = CallGuard {
            shared: shared.clone(),
            conn: self.id,
            request,
            armed: true,
        };
        let msg = Message::Call {
            conn: self.id,
            request,
            method,
            metadata,
            channels,
            args: &args,
        };
        let sent = shared.send(&msg).await;
        if let Message::Call { channels, .. } = &msg {
            shared.announce(channels);
        }
        if let Err(e) = sent {
            guard.armed = false;
            shared.lock().pending.remove(&request);
            return Err(match e {
                SessionError::Link { detail } if !detail.contains("link") => CallError::Encode { detail },
                e => CallError::Session(e),
            });
        }
        let result = rx.await.unwrap_or_else(|_| {
            Err(CallError::Session(shared.ended().unwrap_or(
                SessionError::Closed {
                    reason: "closed".into(),
                },
            )))
        });
        guard.armed = false;
        match result {
            Err(CallError::UnknownMethod { .. }) => Err(CallError::UnknownMethod { method }),
            r => r,
        }
    }

    /// Opens a virtual connection on this session. `dispatcher` serves the
    /// peer's calls on it (if any). Fails with the peer's reason if refused.
    pub async fn open(
        &self,
        metadata: Metadata,
        dispatcher: Option<Arc<dyn Dispatcher>>,
    ) -> Result<Connection, CallError<String>> {
        let shared = &self.shared;
        let conn = Ids::next(&shared.ids.next_conn);
        let (tx, rx) = oneshot::channel();
        {
            // Registered before the peer can answer: its close may follow
            // its accept before this task runs again.
            let mut s = shared.lock();
            s.opening.insert(conn, tx);
            s.conns.insert(conn, ConnState { dispatcher });
        }
        // Dropped before the open went out: forget the connection (a frame is
        // sent whole or not at all, so the peer never heard of it). Once it
        // is out, an answer nobody waits for closes it (see
        // `on_connection_answer`).
        let mut unsent = UnsentOpen {
            shared: shared.clone(),
            conn,
            armed: true,
        };
        // (A dispatcher removed here is dropped after the lock: it may hold
        // connection handles.)
        let sent = shared.send(&Message::ConnectionOpen { conn, metadata }).await;
        unsent.armed = false;
        if let Err(e) = sent {
            let removed = {
                let mut s = shared.lock();
                s.opening.remove(&conn);
                s.conns.remove(&conn)
            };
            drop(removed);
            return Err(CallError::Session(e));
        }
        let answer = rx.await;
        match answer {
            Ok(Ok(_)) => Ok(Connection::guarded(shared.clone(), conn)),
            Ok(Err(reason)) => {
                let removed = shared.lock().conns.remove(&conn);
                drop(removed);
                Err(CallError::User(reason))
            }
            Err(_) => {
                let removed = shared.lock().conns.remove(&conn);
                drop(removed);
                Err(CallError::Session(shared.ended().unwrap_or(
                    SessionError::Closed {
                        reason: "closed".into(),
                    },
                )))
            }
        }
    }

    /// Closes this virtual connection (the peer is told; calls in flight on
    /// it fail). Closing the root connection ends the session.
    pub async fn close(&self, reason: &str) {
        if self.id == 0 {
            self.goodbye(reason).await;
            return;
        }
        if self.shared.lock().conns.contains_key(&self.id) {
            close_connection(&self.shared, self.id, format!("closed here: {reason}"));
            let _ = self
                .shared
                .send(&Message::ConnectionClose {
                    conn: self.id,
                    reason: reason.to_string(),
                })
                .await;
        }
    }
}
