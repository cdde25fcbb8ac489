//! The session state machine, run by one driver task per session.
//!
//! [`SessionBuilder::initiate`] / [`SessionBuilder::accept`] take any
//! [`Link`], run the handshake, then spawn the **driver**: a task that owns
//! the link's receiving half and handles every incoming message in order. It
//! never waits on the link's sending half (whose backpressure could otherwise
//! deadlock two peers that both stop reading): what it must send (pongs,
//! refusals, protocol errors, answers that found no room) goes through the
//! **outbox**, bounded by `peer.reads-its-answers` and `request.limit`, and
//! drained by a writer task. Callers and handlers send directly, under the
//! link's send lock. Where the link allows it (shm), a caller waiting for its
//! answer receives on its own thread while the driver is not receiving, and
//! handles every frame exactly as the driver would (`here.rs`).
//!
//! The parts, one file each:
//!
//! - this file: [`SessionBuilder`] and [`SessionConfig`], the state every
//!   part shares (`Shared`, one `State` under one lock), the end of a
//!   session, and the [`Connection`] handle;
//! - `handshake.rs`: `Hello` / `HelloYourself` and the version check;
//! - `driver.rs`: the driver task, frame dispatch and the keepalive;
//! - `held.rs`: the answers the driver completes, held back until it has
//!   let go of the frame they came in;
//! - `here.rs`: a waiting caller receiving on its own thread;
//! - `outbound.rs`: every path a frame takes out, the outbox and its writer
//!   task, the stall guard;
//! - `calls.rs`: the caller side (one path for typed and raw calls, and the
//!   calls waiting for their response);
//! - `serving.rs`: the serving side (the peer's calls and our answers);
//! - `connections.rs`: opening, accepting and closing virtual connections;
//! - `channels.rs`: the channel registry;
//! - `liveness.rs`: connections live while someone holds a handle;
//! - `recent.rs`: the bounded memory of recently finished ids.
//!
//! Rules enforced on what the peer sends ([`Rule`](crate::Rule); each violation ends the session
//! with a `ProtocolError` naming the rule, and fails every pending call with
//! that reason):
//!
//! | rule | meaning |
//! |---|---|
//! | `frame.decodable` | every frame decodes as a [`Message`] |
//! | `frame.batch-flat` | a [`Message::Batch`] holds at least one message, and no batch |
//! | `frame.max-payload` | no frame exceeds our `max_payload` |
//! | `handshake.hello-first` / `handshake.once` | the handshake comes first, once |
//! | `id.parity` | ids the peer creates have the peer's parity |
//! | `conn.known` / `conn.unique` | messages name open connections (a close or call crossing this side's recent close is late, not wrong); new ids are new |
//! | `request.unique` / `request.limit` | a request id is not reused while in flight; at most our `max_concurrent_requests` at once |
//! | `conn.limit` / `channel.limit` | at most 4096 virtual connections and 65,536 open channels |
//! | `peer.reads-its-answers` | at most 65,536 answers (pongs, refusals) wait for a peer that is not reading |
//! | `peer.drains-its-link` | a send that finds no room in the link (ring, socket) waits at most the keepalive timeout: the peer keeps reading |
//! | `peer.releases-its-slots` (shm link) | a large frame waiting for a free slot waits at most the keepalive timeout (and meanwhile holds up no other frame) |
//! | `link.empty-wakes` (shm link) | the peer wakes this side at most 1000 + 2 × frames times a second without publishing a frame |
//! | `response.known-request` | responses answer calls we made |
//! | `response.metadata-bounded` | a response carries at most 64 metadata entries of at most 16 KiB of keys and values in all |
//! | `channel.known` / `channel.unique` | channel traffic names open channels |
//! | `channel.no-data-after-close` / `channel.close-once` | no item after Close |
//! | `credit.no-overrun` / `credit.grant-bounded` | items fit the credit granted |
//! | `credit.mode` | a link with a shared credit table carries no `GrantCredit` |
//! | `channel.table-index-free` | a channel the peer opens uses a credit-table entry no open channel uses |
//! | `stream.length-in-bounds` (Unix, TCP) | a frame's length prefix is within the link's `max_frame` |
//! | `stable.frame-well-formed` (stable link) | every conduit frame has a known kind and the length its kind needs |
//! | `stable.sequence-in-order` (stable link) | numbered frames arrive in order, each once, across resumes |
//! | `stable.ack-in-bounds` (stable link) | an ack names a frame this side sent |
//!
//! Keepalive: one `Ping` per interval with an unguessable nonce; only the
//! `Pong` that answers it proves the peer alive, so a peer that does not read
//! cannot keep the session up by sending. A peer silent past the timeout
//! ends it with [`SessionError::KeepaliveTimeout`]. A link's own framing
//! rules (`stream.*`, the shm rings' `osmos_shm::Rule`s) end the session the
//! same way.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::channel::{self, ChannelError, Rx, Tx};
use crate::error::{CallError, SessionError};
use crate::link::{CreditMode, DirectRx, Link, LinkError, LinkRx};
use crate::locks::SendLock;
use crate::service::Dispatcher;
use crate::wire::{Message, Metadata, Settings};

use calls::{CANCELLED_MEMORY, CallFailure, Pending};
use channels::Channels;
use connections::ConnState;
use driver::Keepalive;
use gather::Sender;
use outbound::{Outgoing, PeerClosing, StallClock};
use own_ids::{OwnIdMap, OwnIds};
use recent::RecentIds;

pub use calls::CallOptions;
pub(crate) use calls::{RawReply, call_raw};
pub(crate) use channels::{relay_channel, relay_unsupported};

mod calls;
mod channels;
mod connections;
mod driver;
mod gather;
mod handshake;
mod held;
mod here;
mod liveness;
mod outbound;
mod own_ids;
mod recent;
mod serving;

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
    /// A name for logs (e.g. the cell's name); handlers see it as
    /// [`CallContext::caller`](crate::CallContext::caller).
    pub name: String,
    /// How long a call waits for its answer unless its
    /// [`CallOptions`](crate::CallOptions) say otherwise (`None`: forever).
    /// The deadline travels with the call, and the callee cancels the
    /// handler when it passes; this side also fails the call itself, within
    /// a quarter of the timeout or a keepalive interval, whichever is
    /// shorter (no timer per call). A call's own
    /// [`CallOptions::timeout`](crate::CallOptions::timeout) is kept to the
    /// millisecond. Default: 60 s.
    pub call_timeout: Option<Duration>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            settings: Settings::default(),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
            name: "session".into(),
            call_timeout: Some(Duration::from_secs(60)),
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
    on_peer_fault: Option<PeerFaultHook>,
    trust_peer_caller: bool,
}

/// Runs when a session ends through its peer's fault (see
/// [`SessionBuilder::on_peer_fault`]).
type PeerFaultHook = Arc<dyn Fn(&SessionError) + Send + Sync>;

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

    /// Believes the peer about who calls: calls on a virtual connection the
    /// peer opened with a [`META_CALLER`](crate::control::META_CALLER)
    /// entry report that name as their
    /// [`CallContext::caller`](crate::CallContext::caller). For a cell,
    /// whose peer is its host (the plugin SDK sets it); never for a session
    /// whose peer is a cell, which could then name any caller it likes.
    /// Off by default: `osmos.caller` is then ignored.
    pub fn trust_peer_caller(mut self) -> Self {
        self.trust_peer_caller = true;
        self
    }

    /// Runs `hook` when the session ends through the peer's fault (a
    /// protocol violation or a keepalive timeout, see
    /// [`SessionError::is_peer_fault`]): once, with the reason, as the
    /// session decides to end and before it tells the peer anything (its
    /// `ProtocolError` or goodbye) or lets go of the link. Nothing the peer
    /// can see has changed yet when it runs, so a supervisor that kills a
    /// peer at fault does it here: the peer cannot learn that the session
    /// is over and exit on its own first. Not run when the session had
    /// already ended for another reason. It runs on the thread that found
    /// the fault, under no lock of the session's; it must not block.
    pub fn on_peer_fault(mut self, hook: impl Fn(&SessionError) + Send + Sync + 'static) -> Self {
        self.on_peer_fault = Some(Arc::new(hook));
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
        let peer = handshake::run(&mut tx, &mut rx, role, &ours, self.config.handshake_timeout).await?;
        let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
        let (ended_tx, _) = watch::channel(None);
        let stats = Arc::new(Counters::default());
        let sender = Sender::new(
            Box::new(tx),
            (peer.max_payload as usize).min(max_frame),
            stats.clone(),
        );
        let shared = Arc::new(Shared {
            role,
            name: self.config.name.clone(),
            call_timeout: self.config.call_timeout,
            ours,
            call_limit: Semaphore::new(peer.max_concurrent_requests.max(1) as usize),
            peer,
            max_frame,
            credit,
            tx: SendLock::new(sender),
            flush_soon: Notify::new(),
            ids: Ids::new(role),
            state: Mutex::new(State::default()),
            outbox: outbox_tx,
            outbox_len: AtomicUsize::new(0),
            ended: ended_tx,
            acceptor: self.acceptor,
            trust_peer_caller: self.trust_peer_caller,
            on_peer_fault: Mutex::new(self.on_peer_fault),
            keepalive: Mutex::new(Keepalive::new()),
            link_stall: StallClock::default(),
            slot_stall: StallClock::default(),
            room_gate: tokio::sync::Mutex::new(()),
            stats,
            direct: rx.direct(),
            reading_stopped: AtomicBool::new(false),
            has_ended: AtomicBool::new(false),
            channel_waiters: AtomicUsize::new(0),
            peer_closing: PeerClosing::default(),
        });
        shared.lock().conns.insert(
            0,
            ConnState {
                dispatcher: self.root,
                caller: None,
            },
        );
        tokio::spawn(outbound::writer(shared.clone(), outbox_rx));
        tokio::spawn(driver::run(shared.clone(), rx, self.config.clone()));
        debug!(session = %shared.name, ?role, "session established");
        Ok(Connection::guarded(shared, 0))
    }
}

impl Shared {
    /// Whether a frame broke a rule, so no frame is handled any more.
    fn reading_stopped(&self) -> bool {
        // ORDERING: Acquire pairs with the Release in `stop_reading`; the
        // flag publishes no data (the session's end follows under its lock).
        self.reading_stopped.load(Ordering::Acquire)
    }

    /// No frame is handled from now on (the session is ending for a rule).
    fn stop_reading(&self) {
        // ORDERING: Release pairs with the Acquire in `reading_stopped`.
        self.reading_stopped.store(true, Ordering::Release);
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

#[derive(Default)]
struct State {
    /// Our calls in flight, by request id.
    pending: OwnIdMap<Pending>,
    /// Requests we cancelled recently: a late response for one is not a
    /// violation. Most are never answered (the callee drops the handler), so
    /// only the last [`CANCELLED_MEMORY`] are remembered.
    cancelled: RecentIds<CANCELLED_MEMORY>,
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
    /// The channel registry: open channels, their table indices, channels
    /// retired recently.
    channels: Channels,
    /// Why the session ended, once it has.
    ended: Option<SessionError>,
    /// Every handle on the root connection was dropped (see `liveness`).
    root_released: bool,
    /// Waiters for a connection's close, and why recent ones closed.
    conn_watch: liveness::ConnWatch,
    /// Methods whose schema a call already carried (bounded by the methods
    /// this program's clients have: ids come from their code, not the peer).
    schemas_sent: std::collections::HashSet<u64, BuildHasherDefault<OwnIds>>,
}

/// Everything the session's handles, driver and writer share.
pub(crate) struct Shared {
    role: Role,
    name: String,
    /// [`SessionConfig::call_timeout`].
    call_timeout: Option<Duration>,
    ours: Settings,
    peer: Settings,
    max_frame: usize,
    /// How channel credit travels.
    credit: CreditMode,
    /// Calls beyond the peer's `max_concurrent_requests` wait here.
    call_limit: Semaphore,
    /// The link's sending half (closed once the session ended) and the
    /// small items gathered for it.
    tx: SendLock<Sender>,
    /// Asks the writer task to send the gathered items (see `gather`).
    flush_soon: Notify,
    ids: Ids,
    state: Mutex<State>,
    /// Encoded frames for the writer task (sent from the driver and from drops).
    outbox: mpsc::UnboundedSender<Outgoing>,
    /// Frames queued in the outbox (bounded by [`MAX_OUTBOX`]).
    outbox_len: AtomicUsize,
    /// Becomes `Some` when the session ends.
    ended: watch::Sender<Option<SessionError>>,
    acceptor: Option<ConnectionAcceptor>,
    /// [`SessionBuilder::trust_peer_caller`].
    trust_peer_caller: bool,
    /// [`SessionBuilder::on_peer_fault`]; taken when it runs (once).
    on_peer_fault: Mutex<Option<PeerFaultHook>>,
    /// The peer's proof of life (see [`Keepalive`]).
    keepalive: Mutex<Keepalive>,
    /// Sends waiting for room in the link (see `peer.drains-its-link`).
    link_stall: StallClock,
    /// Sends waiting for a free slot (see `peer.releases-its-slots`).
    slot_stall: StallClock,
    /// Waits for room outside the send lock, one at a time.
    room_gate: tokio::sync::Mutex<()>,
    stats: Arc<Counters>,
    /// Receiving on a waiting caller's thread, where the link allows it
    /// (see `here`).
    direct: Option<Arc<dyn DirectRx>>,
    /// A frame broke a rule: nobody handles another (the session is ending).
    reading_stopped: AtomicBool,
    /// `State::ended` is set (it never goes back).
    has_ended: AtomicBool,
    /// Channel receivers waiting for items while someone else holds the
    /// receive side (see `here`): a waiting caller lets it go for them.
    channel_waiters: AtomicUsize,
    /// A send found the peer's end closed: the receive side reads what the
    /// peer wrote before (its goodbye) before the session ends (see
    /// `outbound`).
    peer_closing: PeerClosing,
}

/// Traffic counters of one session (shared with its [`Sender`], which
/// counts the batch frames it sends).
#[derive(Default)]
pub(super) struct Counters {
    calls_made: AtomicU64,
    calls_served: AtomicU64,
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
}

impl Counters {
    /// Counts a frame of `len` bytes sent (alone or as a batch).
    fn frame_sent(&self, len: usize) {
        // ORDERING: Relaxed: statistics, read by `stats` as a snapshot; they
        // publish nothing else.
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
    }
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

    #[inline]
    fn ended(&self) -> Option<SessionError> {
        // Every send asks: a live session answers without its lock.
        // ORDERING: Acquire pairs with the Release stores after `ended` is
        // set; a session ending meanwhile is seen by the next look.
        if !self.has_ended.load(Ordering::Acquire) {
            return None;
        }
        self.ended_reason()
    }

    #[cold]
    fn ended_reason(&self) -> Option<SessionError> {
        self.lock().ended.clone()
    }

    /// Ends the session because the peer broke a rule outside the driver.
    pub(crate) fn fail_violation(&self, rule: &'static str, detail: String) {
        warn!(session = %self.name, rule, "peer broke a protocol rule: {detail}");
        let why = SessionError::Violation {
            rule,
            detail: detail.clone(),
        };
        self.peer_at_fault(&why);
        self.send_later(&Message::ProtocolError {
            rule: rule.to_string(),
            detail,
        });
        self.end(why);
    }

    /// The session is about to end with `why`, the peer's fault: runs the
    /// [`on_peer_fault`](SessionBuilder::on_peer_fault) hook (once, and not
    /// if the session already ended). Called before the peer is told and
    /// before [`end`](Self::end) (which calls it too, for the ends that tell
    /// the peer nothing); the driver lets go of the link only after `end`.
    fn peer_at_fault(&self, why: &SessionError) {
        if !why.is_peer_fault() || self.ended().is_some() {
            return;
        }
        let hook = self
            .on_peer_fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(hook) = hook {
            hook(why);
        }
    }

    /// Ends the session (once): records why, fails every pending call,
    /// resets every channel, aborts every handler. An end through the
    /// peer's fault runs the `on_peer_fault` hook first.
    fn end(&self, why: SessionError) {
        self.peer_at_fault(&why);
        let (pending, serving, channels, opening) = {
            let mut s = self.lock();
            if s.ended.is_some() {
                return;
            }
            s.ended = Some(why.clone());
            // ORDERING: Release, see `ended`.
            self.has_ended.store(true, Ordering::Release);
            (
                std::mem::take(&mut s.pending),
                std::mem::take(&mut s.serving),
                std::mem::take(&mut s.channels.open),
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

/// The session behind a connection handle.
pub(crate) fn shared(conn: &Connection) -> &Arc<Shared> {
    &conn.shared
}

/// Resolves once the session has ended (the guard is dropped inside).
async fn wait_ended(rx: &mut watch::Receiver<Option<SessionError>>) {
    let _ = rx.wait_for(Option::is_some).await;
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
    /// A connection of a session that has already ended with `why`: it
    /// holds no link, and every call or channel on it fails with `why`.
    /// What a client that follows a peer gives while no peer runs.
    pub fn ended_with(why: SessionError) -> Connection {
        let (outbox, _) = mpsc::unbounded_channel();
        let (ended, _) = watch::channel(Some(why.clone()));
        let shared = Arc::new(Shared {
            role: Role::Initiator,
            name: "ended".into(),
            call_timeout: None,
            ours: Settings::default(),
            call_limit: Semaphore::new(1),
            peer: Settings::default(),
            max_frame: 0,
            credit: CreditMode::Messages,
            tx: SendLock::new(Sender::closed()),
            flush_soon: Notify::new(),
            ids: Ids::new(Role::Initiator),
            state: Mutex::new(State::default()),
            outbox,
            outbox_len: AtomicUsize::new(0),
            ended,
            acceptor: None,
            trust_peer_caller: false,
            on_peer_fault: Mutex::new(None),
            keepalive: Mutex::new(Keepalive::new()),
            link_stall: StallClock::default(),
            slot_stall: StallClock::default(),
            room_gate: tokio::sync::Mutex::new(()),
            stats: Arc::default(),
            direct: None,
            reading_stopped: AtomicBool::new(false),
            has_ended: AtomicBool::new(false),
            channel_waiters: AtomicUsize::new(0),
            peer_closing: PeerClosing::default(),
        });
        shared.lock().ended = Some(why);
        shared.has_ended.store(true, Ordering::Release);
        Connection::unguarded(shared, 0)
    }

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

    /// The name this side gave the session ([`SessionConfig::name`]).
    pub fn session_name(&self) -> &str {
        &self.shared.name
    }

    /// The services the peer serves on this connection, with their methods
    /// (as its dispatchers describe them; a dispatcher that does not
    /// describe itself is left out).
    pub async fn services(&self) -> Result<Vec<crate::service::ServiceDescription>, CallError<String>> {
        self.call(
            crate::service::DESCRIBE_METHOD,
            &(),
            crate::CallOptions::default(),
        )
        .await
    }

    /// Whether a call of `method` must carry its schema (the first call of
    /// each method on a session does); marks it as carried.
    pub(crate) fn schema_unchecked(&self, method: u64) -> bool {
        self.shared.lock().schemas_sent.insert(method)
    }

    /// The call that carried `method`'s schema did not confirm it: the next
    /// call carries it again.
    pub(crate) fn forget_schema(&self, method: u64) {
        self.shared.lock().schemas_sent.remove(&method);
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
            open_channels: s.channels.open.len(),
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
}
