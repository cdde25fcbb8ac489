//! Starting and resuming a conduit: the initiator's connect and reconnect,
//! and the acceptor that tells new sessions from returning ones.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::budget::ReplayBudget;
use super::conduit::{self, Shared, Side, Terminal};
use super::wire::{self, HELLO_LEN, Hello, Instance, READY_LEN, Token, Verdict, WELCOME_LEN, Welcome};
use super::{BoxRead, BoxWrite, Connector, ResumeFailure, StableConfig, StableLink, StableStatus, Transport};
use crate::link::LinkError;

/// Ended sessions remembered, so that a late resume is told "ended", not "unknown".
const ENDED_REMEMBERED: usize = 4096;

/// An acceptor's sessions, by token.
pub(super) struct Registry {
    instance: Instance,
    sessions: Mutex<HashMap<Token, Weak<Shared>>>,
    ended: Mutex<VecDeque<Token>>,
    /// What all the sessions' replay buffers hold together.
    budget: Arc<ReplayBudget>,
}

impl Registry {
    /// The session of `token` is over: forget it, remember that it ended.
    pub fn ended(&self, token: &Token) {
        lock(&self.sessions).remove(token);
        let mut ended = lock(&self.ended);
        if ended.len() == ENDED_REMEMBERED {
            ended.pop_front();
        }
        ended.push_back(*token);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A failed attempt: worth retrying, or not.
enum Attempt {
    Retry(String),
    Fatal(ResumeFailure),
}

impl From<std::io::Error> for Attempt {
    /// A connector's `PermissionDenied` (e.g. a TLS certificate refusal) is
    /// final; anything else is worth another attempt.
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            Attempt::Fatal(ResumeFailure::Refused {
                detail: e.to_string(),
            })
        } else {
            Attempt::Retry(e.to_string())
        }
    }
}

async fn write_msg(write: &mut BoxWrite, bytes: &[u8]) -> std::io::Result<()> {
    write.write_all(bytes).await?;
    write.flush().await
}

async fn read_msg<const N: usize>(read: &mut BoxRead) -> std::io::Result<[u8; N]> {
    let mut b = [0; N];
    read.read_exact(&mut b).await?;
    Ok(b)
}

/// Runs `fut` within the handshake timeout.
async fn bounded<T>(
    config: &StableConfig,
    what: &str,
    fut: impl Future<Output = Result<T, Attempt>>,
) -> Result<T, Attempt> {
    match tokio::time::timeout(config.handshake_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Attempt::Retry(format!(
            "{what} did not complete within {:?} (handshake_timeout)",
            config.handshake_timeout
        ))),
    }
}

/// What a refusal in a welcome means for the initiator.
fn refusal(verdict: u8, welcome: &Welcome, known: Option<&Instance>) -> Attempt {
    match Verdict::from_byte(verdict) {
        Some(Verdict::UnknownSession) if known.is_some_and(|k| *k != welcome.instance) => {
            Attempt::Fatal(ResumeFailure::PeerRestarted)
        }
        Some(Verdict::UnknownSession) => Attempt::Fatal(ResumeFailure::Refused {
            detail: "the peer does not know this session's token".into(),
        }),
        Some(Verdict::Ended) => Attempt::Fatal(ResumeFailure::PeerEnded),
        Some(Verdict::ReplayWindow) => Attempt::Fatal(ResumeFailure::ReplayWindowExceeded {
            detail: "the peer no longer holds the frames this side missed".into(),
        }),
        Some(Verdict::Full) => Attempt::Retry("the peer holds as many sessions as it may".into()),
        Some(Verdict::BadHello) => Attempt::Fatal(ResumeFailure::Refused {
            detail: "the peer did not understand our hello (another protocol version?)".into(),
        }),
        Some(Verdict::Go) | None => Attempt::Fatal(ResumeFailure::Refused {
            detail: format!("the peer answered with an unknown verdict {verdict}"),
        }),
    }
}

/// Opens a new conduit through `connect`, retrying per the config's policy.
pub(super) async fn connect_new(connect: Connector, config: StableConfig) -> Result<StableLink, LinkError> {
    let policy = config.retry.clone();
    let mut backoff = policy.initial_backoff;
    let mut last = String::new();
    for attempt in 1..=policy.max_attempts.max(1) {
        if attempt > 1 {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(policy.max_backoff);
        }
        let once = async {
            let Transport { mut read, mut write } = connect().await?;
            let hello = Hello {
                kind: wire::HELLO_NEW,
                token: [0; 32],
                received: 0,
            };
            write_msg(&mut write, &hello.encode()).await?;
            let welcome =
                Welcome::decode(&read_msg::<WELCOME_LEN>(&mut read).await?).map_err(Attempt::Retry)?;
            if welcome.verdict != Verdict::Go as u8 {
                return Err(refusal(welcome.verdict, &welcome, None));
            }
            write_msg(&mut write, &wire::ready(Verdict::Go)).await?;
            // Start only a session the acceptor holds (see `wire::READY_LEN`).
            let confirmed =
                wire::decode_ready(&read_msg::<READY_LEN>(&mut read).await?).map_err(Attempt::Retry)?;
            if confirmed != Verdict::Go as u8 {
                return Err(Attempt::Retry(format!(
                    "the acceptor did not confirm the new session (verdict {confirmed})"
                )));
            }
            Ok((read, write, welcome))
        };
        match bounded(&config, "the stable conduit's handshake", once).await {
            Ok((read, write, welcome)) => {
                let side = Side::Initiator {
                    connect,
                    instance: welcome.instance,
                };
                let sh = Shared::new(config, welcome.token, side, None);
                {
                    let mut w = sh.writer.lock().await;
                    sh.install(&mut w, read, write, 0);
                }
                tokio::spawn(conduit::drive(sh.clone()));
                return Ok(StableLink { sh, split: false });
            }
            Err(Attempt::Fatal(f)) => return Err(not_opened(std::io::ErrorKind::PermissionDenied, f)),
            Err(Attempt::Retry(e)) => last = e,
        }
    }
    let f = ResumeFailure::RetriesExhausted {
        attempts: policy.max_attempts.max(1),
        last_error: last,
    };
    Err(not_opened(std::io::ErrorKind::ConnectionRefused, f))
}

/// The error of a conduit that could not be opened at all.
fn not_opened(kind: std::io::ErrorKind, why: ResumeFailure) -> LinkError {
    LinkError::Io(std::io::Error::new(
        kind,
        format!("could not open a stable session: {why}"),
    ))
}

/// After a break: reconnects and resumes, per the retry policy.
pub(super) async fn reconnect(sh: &Arc<Shared>) -> Result<(), ResumeFailure> {
    let Side::Initiator { connect, instance } = &sh.side else {
        return Ok(());
    };
    let policy = &sh.config.retry;
    let mut backoff = policy.initial_backoff;
    let mut last = sh.lock().last_break.clone().unwrap_or_default();
    for attempt in 1..=policy.max_attempts.max(1) {
        if sh.lock().halves == 0 && sh.lock().close_seq.is_none() {
            return Ok(()); // nobody is left to resume for
        }
        sh.status.send_replace(StableStatus::Reconnecting {
            attempt,
            last_error: last.clone(),
        });
        if attempt > 1 {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(policy.max_backoff);
        }
        match bounded(
            &sh.config,
            "resuming the session",
            resume_once(sh, connect, instance),
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(Attempt::Fatal(f)) => return Err(f),
            Err(Attempt::Retry(e)) => last = e,
        }
    }
    Err(ResumeFailure::RetriesExhausted {
        attempts: policy.max_attempts.max(1),
        last_error: last,
    })
}

async fn resume_once(sh: &Arc<Shared>, connect: &Connector, instance: &Instance) -> Result<(), Attempt> {
    let Transport { mut read, mut write } = connect().await?;
    // The old connection is cut, so `received` no longer moves.
    let received = sh.lock().received;
    let hello = Hello {
        kind: wire::HELLO_RESUME,
        token: sh.token,
        received,
    };
    write_msg(&mut write, &hello.encode()).await?;
    let welcome = Welcome::decode(&read_msg::<WELCOME_LEN>(&mut read).await?).map_err(Attempt::Retry)?;
    if welcome.verdict != Verdict::Go as u8 {
        return Err(refusal(welcome.verdict, &welcome, Some(instance)));
    }
    let mut w = sh.writer.lock().await;
    let (first, next) = w.window();
    if welcome.received + 1 < first || welcome.received >= next {
        let _ = write_msg(&mut write, &wire::ready(Verdict::ReplayWindow)).await;
        return Err(Attempt::Fatal(window_exceeded(welcome.received, first, next)));
    }
    write_msg(&mut write, &wire::ready(Verdict::Go)).await?;
    sh.install(&mut w, read, write, welcome.received);
    Ok(())
}

fn window_exceeded(peer_received: u64, first: u64, next: u64) -> ResumeFailure {
    ResumeFailure::ReplayWindowExceeded {
        detail: format!(
            "the peer has received up to frame #{peer_received}, but this side can replay only \
             #{first}..#{} (frames before were acknowledged; frames after were never sent)",
            next.saturating_sub(1)
        ),
    }
}

/// What [`StableAcceptor::accept`] made of a connection.
#[derive(Debug)]
pub enum Accepted {
    /// A new session: run a session over the link.
    New(StableLink),
    /// An existing session came back on this connection; it carries on by
    /// itself (nothing to do).
    Resumed,
}

/// The accepting side of stable conduits: give it every connection a
/// listener accepts; it starts new sessions and hands returning
/// connections to the session they resume. Cheap to clone.
#[derive(Clone)]
pub struct StableAcceptor {
    registry: Arc<Registry>,
    config: StableConfig,
}

impl std::fmt::Debug for StableAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableAcceptor")
            .field("sessions", &self.sessions())
            .finish_non_exhaustive()
    }
}

impl StableAcceptor {
    /// An acceptor whose sessions use `config`. It has an identity of its
    /// own (random): an initiator that finds a different one after a break
    /// knows the peer restarted.
    ///
    /// Fails if `acceptor_replay_bytes` cannot hold one frame of
    /// `max_frame` bytes (no session could then ever send one).
    pub fn new(config: StableConfig) -> std::io::Result<StableAcceptor> {
        let largest = super::PREFIX_LEN + super::NUMBERED_HEADER + config.max_frame;
        if config.acceptor_replay_bytes < largest {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "acceptor_replay_bytes ({}) must hold at least one frame of max_frame ({} bytes with its header); raise it or lower max_frame",
                    config.acceptor_replay_bytes, largest
                ),
            ));
        }
        let mut instance = [0; 16];
        wire::random(&mut instance)?;
        Ok(StableAcceptor {
            registry: Arc::new(Registry {
                instance,
                sessions: Mutex::new(HashMap::new()),
                ended: Mutex::new(VecDeque::new()),
                budget: ReplayBudget::new(config.acceptor_replay_bytes),
            }),
            config,
        })
    }

    /// Sessions alive (or waiting for their initiator to come back).
    pub fn sessions(&self) -> usize {
        lock(&self.registry.sessions).len()
    }

    /// Bytes the sessions' replay buffers hold together (at most
    /// [`StableConfig::acceptor_replay_bytes`]).
    pub fn replay_held(&self) -> usize {
        self.registry.budget.used()
    }

    /// Runs the conduit's handshake on an accepted connection, within the
    /// config's `handshake_timeout`: a new session comes back as
    /// [`Accepted::New`]; a returning one is resumed ([`Accepted::Resumed`]).
    ///
    /// Fails when the connection is not a conduit, breaks or stalls during
    /// the handshake, or asks for a session that cannot be resumed (unknown
    /// or ended token, replay window): the peer is told why, and the error
    /// ([`LinkError::Unresumable`]) says it too. Refusals are the peer's
    /// problem, not the acceptor's: log them and go on accepting.
    pub async fn accept(&self, transport: Transport) -> Result<Accepted, LinkError> {
        let Transport { mut read, mut write } = transport;
        let timeout = self.config.handshake_timeout;
        let hello = match tokio::time::timeout(timeout, read_msg::<HELLO_LEN>(&mut read)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(LinkError::from(e)),
            Err(_) => {
                return Err(LinkError::PeerGone {
                    detail: format!(
                        "the connection sent no conduit hello within {timeout:?} (handshake_timeout)"
                    ),
                });
            }
        };
        let reg = &self.registry;
        let welcome = |verdict: Verdict, token: Token, received: u64| Welcome {
            verdict: verdict as u8,
            token,
            instance: reg.instance,
            received,
        };
        let hello = match Hello::decode(&hello) {
            Ok(h) if h.kind == wire::HELLO_NEW || h.kind == wire::HELLO_RESUME => h,
            Ok(h) => {
                let _ = write_msg(&mut write, &welcome(Verdict::BadHello, [0; 32], 0).encode()).await;
                return Err(refused(format!("a hello of unknown kind {}", h.kind)));
            }
            Err(detail) => return Err(refused(detail)),
        };
        if hello.kind == wire::HELLO_NEW {
            if self.sessions() >= self.config.max_sessions {
                let _ = write_msg(&mut write, &welcome(Verdict::Full, [0; 32], 0).encode()).await;
                return Err(refused(format!(
                    "a new session, while {} are open (max_sessions)",
                    self.config.max_sessions
                )));
            }
            let mut token = [0; 32];
            wire::random(&mut token)?;
            let exchange = async {
                write_msg(&mut write, &welcome(Verdict::Go, token, 0).encode()).await?;
                let ready =
                    wire::decode_ready(&read_msg::<READY_LEN>(&mut read).await?).map_err(Attempt::Retry)?;
                if ready != Verdict::Go as u8 {
                    return Err(Attempt::Retry(format!("the initiator answered verdict {ready}")));
                }
                Ok(())
            };
            bounded(&self.config, "the stable conduit's handshake", exchange)
                .await
                .map_err(attempt_error)?;
            let side = Side::Acceptor {
                registry: Arc::downgrade(reg),
            };
            let sh = Shared::new(self.config.clone(), token, side, Some(reg.budget.clone()));
            lock(&reg.sessions).insert(token, Arc::downgrade(&sh));
            // Confirm once registered, so that a resume right after finds it.
            // Should the confirmation be lost after all, the initiator starts
            // another session and this one waits `resume_timeout` in vain.
            let confirm = async {
                write_msg(&mut write, &wire::ready(Verdict::Go))
                    .await
                    .map_err(Attempt::from)
            };
            if let Err(e) = bounded(&self.config, "the stable conduit's handshake", confirm).await {
                lock(&reg.sessions).remove(&token);
                return Err(attempt_error(e));
            }
            {
                let mut w = sh.writer.lock().await;
                sh.install(&mut w, read, write, 0);
            }
            tokio::spawn(conduit::drive(sh.clone()));
            return Ok(Accepted::New(StableLink { sh, split: false }));
        }
        // A resume.
        let found = lock(&reg.sessions).get(&hello.token).and_then(Weak::upgrade);
        let Some(sh) = found.filter(|sh| sh.lock().terminal.is_none()) else {
            let ended = lock(&reg.ended).contains(&hello.token);
            let verdict = if ended {
                Verdict::Ended
            } else {
                Verdict::UnknownSession
            };
            let _ = write_msg(&mut write, &welcome(verdict, [0; 32], 0).encode()).await;
            return Err(refused(if ended {
                "a resume of a session that has ended".into()
            } else {
                "a resume with a token this acceptor does not know".into()
            }));
        };
        // Break the current connection first: a pump blocked on it holds
        // the writer until it is declared broken.
        let back = "the initiator came back on a new connection";
        let cgen = sh.lock().generation;
        sh.declare_broken(cgen, back.into());
        let mut w = sh.writer.lock().await;
        // An earlier resume may have installed a connection while this one
        // waited for the writer: break that one too, or frames would go on
        // arriving on it after `received` is read below, and the initiator
        // would replay them (stable.sequence-in-order), while their acks
        // would reach past the initiator's replay cursor. No connection can
        // be installed while the writer is held, so `received` is final.
        let cgen = sh.lock().generation;
        sh.declare_broken(cgen, back.into());
        let received = sh.lock().received;
        let (first, next) = w.window();
        if hello.received + 1 < first || hello.received >= next {
            let _ = write_msg(&mut write, &welcome(Verdict::ReplayWindow, [0; 32], 0).encode()).await;
            let f = window_exceeded(hello.received, first, next);
            sh.fail(Terminal::Resume(f.clone()));
            return Err(LinkError::Unresumable(f));
        }
        let exchange = async {
            write_msg(&mut write, &welcome(Verdict::Go, sh.token, received).encode()).await?;
            let ready =
                wire::decode_ready(&read_msg::<READY_LEN>(&mut read).await?).map_err(Attempt::Retry)?;
            Ok(ready)
        };
        match bounded(&self.config, "resuming a session", exchange).await {
            Ok(v) if v == Verdict::Go as u8 => {
                sh.install(&mut w, read, write, hello.received);
                Ok(Accepted::Resumed)
            }
            Ok(_) => {
                let f = ResumeFailure::ReplayWindowExceeded {
                    detail: "the peer no longer holds the frames this side missed".into(),
                };
                sh.fail(Terminal::Resume(f.clone()));
                Err(LinkError::Unresumable(f))
            }
            Err(e) => Err(attempt_error(e)),
        }
    }
}

fn refused(what: String) -> LinkError {
    LinkError::Unresumable(ResumeFailure::Refused {
        detail: format!("refused {what}"),
    })
}

fn attempt_error(a: Attempt) -> LinkError {
    match a {
        Attempt::Retry(detail) => LinkError::PeerGone { detail },
        Attempt::Fatal(f) => LinkError::Unresumable(f),
    }
}
