//! The driver task: receives every frame and dispatches it
//! ([`handle_frame`]), keeps the session alive (Ping/Pong, the keepalive
//! timeout, the stalled-link check), and closes the link when the session
//! ends.

use crate::rules::Rule;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::warn;

use super::calls::{expire_calls, on_response};
use super::channels::{ItemRun, LastChannel, channel_for};
use super::connections::{close_connection, on_connection_answer, on_connection_open};
use super::held;
use super::outbound::PEER_CLOSE_GRACE;
use super::serving::{IncomingCall, on_call};
use super::{SessionConfig, Shared, link_failed, wait_ended};
use crate::error::{SessionError, Violation, violation};
use crate::link::{LinkError, LinkRx, Received};
use crate::wire::{self, Message};

impl Shared {
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
        if let Some(stalled) = self.link_stall.stalled_for()
            && stalled >= config.keepalive_timeout
        {
            return Some(SessionError::Violation {
                rule: Rule::PeerDrainsItsLink.name(),
                detail: format!(
                    "the peer has not made room for a single frame in {stalled:?} (its ring or socket stayed full); an honest peer keeps reading"
                ),
            });
        }
        if let Some(stalled) = self.slot_stall.stalled_for()
            && stalled >= config.keepalive_timeout
        {
            return Some(SessionError::Violation {
                rule: Rule::PeerReleasesItsSlots.name(),
                detail: format!(
                    "the peer has not released a single slot in {stalled:?} while a large frame waited for one; an honest peer releases each slot once it has read it"
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
}

/// How the keepalive knows the peer lives: only a Pong answering the Ping we
/// sent (its nonce unguessable) counts, so a peer that never reads cannot
/// keep the session up by sending (unsolicited Pongs, or anything else).
pub(super) struct Keepalive {
    /// The Ping waiting for its Pong: (nonce, when it was queued).
    outstanding: Option<(u64, Instant)>,
    /// The last proof of life (the session's start, or the last Pong).
    alive_at: Instant,
}

impl Keepalive {
    /// No Ping out yet; the session's start counts as the last proof of life.
    pub(super) fn new() -> Self {
        Keepalive {
            outstanding: None,
            alive_at: Instant::now(),
        }
    }
}

/// A nonce the peer cannot predict (SipHash under this process's random keys).
fn unguessable() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(Instant::now())
}

/// The driver: receives and handles every message, keeps the session alive.
pub(super) async fn run<R: LinkRx>(shared: Arc<Shared>, mut rx: R, config: SessionConfig) {
    let mut ended = shared.ended.subscribe();
    let mut tick = tokio::time::interval(
        config
            .keepalive_interval
            .min(config.keepalive_timeout / 2)
            // The sweep of default deadlines (`expire_calls`) keeps them to
            // within a quarter.
            .min(config.call_timeout.map_or(Duration::MAX, |t| t / 4))
            .max(Duration::from_millis(1)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set once a send found the peer's end closed (see `PeerClosing`).
    let mut grace: Option<tokio::time::Instant> = None;
    let mut last = LastChannel::default();
    // One future for the whole loop: a fresh one each round would register
    // with the watch (and leave it) for every frame.
    let session_ended = wait_ended(&mut ended);
    tokio::pin!(session_ended);
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let mut frame = match frame {
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
                let tail = frame.take_tail();
                let (handled, held) = held::holding(|| on_received(&shared, &frame, tail, &mut last));
                // The answers it completed wake their callers once the
                // receive side is let go (see `held`).
                drop(frame);
                drop(held);
                if let Err(v) = handled {
                    fail_with_violation(&shared, v).await;
                    break;
                }
                if shared.reading_stopped() {
                    // A caller found a frame that broke a rule; the session
                    // is ending on its own.
                    session_ended.as_mut().await;
                    break;
                }
            }
            _ = tick.tick() => {
                expire_calls(&shared);
                match shared.keepalive_tick(&config) {
                    None => {}
                    Some(SessionError::Violation { rule, detail }) => {
                        // Telling a peer that does not read is futile.
                        warn!(session = %shared.name, rule, "peer broke a protocol rule: {detail}");
                        shared.end(SessionError::Violation { rule, detail });
                        break;
                    }
                    Some(why) => {
                        shared.peer_at_fault(&why);
                        shared.send_later(&Message::Goodbye { reason: why.to_string() });
                        shared.end(why);
                        break;
                    }
                }
            }
            _ = shared.peer_closing.started(), if grace.is_none() => {
                grace = Some(tokio::time::Instant::now() + PEER_CLOSE_GRACE);
            }
            _ = sleep_until(grace) => {
                shared.end(shared.peer_closing.failure());
                break;
            }
            () = session_ended.as_mut() => break,
        }
    }
    // Stop reading at once (the peer sees the link end), then close the
    // sending half, bounded: the peer may not be reading. The session has
    // ended by now, so an end through the peer's fault has run the
    // `on_peer_fault` hook before the peer can see this.
    drop(rx);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = shared.tx.lock().await.close().await;
    })
    .await;
}

/// Handles one received frame, on whichever task received it (the driver,
/// or a caller receiving on its own thread): `frame`, followed by `tail`
/// when the link held the end of a large frame apart (see
/// [`Received`](crate::link::Received)). Errors are protocol violations;
/// after one, no other frame is handled. `last`: the receiving task's
/// cache of the channel its last item came for.
pub(super) fn on_received(
    shared: &Arc<Shared>,
    frame: &[u8],
    tail: Option<Vec<u8>>,
    last: &mut LastChannel,
) -> Result<(), Violation> {
    if shared.reading_stopped() {
        return Ok(());
    }
    shared.stats.frames_received.fetch_add(1, Ordering::Relaxed);
    shared.stats.bytes_received.fetch_add(
        (frame.len() + tail.as_ref().map_or(0, Vec::len)) as u64,
        Ordering::Relaxed,
    );
    let r = handle_frame(shared, frame, tail, last);
    if r.is_err() {
        shared.stop_reading();
    }
    r
}

/// Ends the session for a frame that broke a rule, as the driver does.
pub(super) async fn fail_with_violation(shared: &Arc<Shared>, v: Violation) {
    warn!(session = %shared.name, rule = v.rule, "peer broke a protocol rule: {}", v.detail);
    let msg = Message::ProtocolError {
        rule: v.rule.to_string(),
        detail: v.detail.clone(),
    };
    let why = SessionError::Violation {
        rule: v.rule,
        detail: v.detail,
    };
    // The hook first: the peer learns nothing before it has run.
    shared.peer_at_fault(&why);
    // Tell the peer, best effort and bounded: it may not be reading.
    let _ = tokio::time::timeout(Duration::from_secs(1), shared.send(&msg)).await;
    shared.end(why);
}

/// The violation for a frame or message that does not decode: `detail`
/// says what the decoder found.
fn undecodable(detail: impl std::fmt::Display) -> Violation {
    violation(Rule::FrameDecodable.name(), detail.to_string())
}

/// Handles one incoming frame (`frame ++ tail`). Errors are protocol
/// violations.
fn handle_frame(
    shared: &Arc<Shared>,
    frame: &[u8],
    tail: Option<Vec<u8>>,
    last: &mut LastChannel,
) -> Result<(), Violation> {
    handle_message(shared, frame, tail, last, false)
}

/// Handles one message: a whole frame, or (`in_batch`) one message of a
/// [`Message::Batch`], which may not be a batch itself.
fn handle_message(
    shared: &Arc<Shared>,
    frame: &[u8],
    tail: Option<Vec<u8>>,
    last: &mut LastChannel,
    in_batch: bool,
) -> Result<(), Violation> {
    let len = frame.len() + tail.as_ref().map_or(0, Vec::len);
    if len > shared.ours.max_payload as usize {
        return Err(violation(
            Rule::FrameMaxPayload.name(),
            format!(
                "a frame of {len} bytes exceeds our max_payload of {}",
                shared.ours.max_payload
            ),
        ));
    }
    let tail_len = tail.as_ref().map_or(0, Vec::len);
    // A stream's items, most of the frames, go to their channel without a
    // `Message` built for them.
    if let Some(item) = wire::codec::decode_item(frame, tail_len) {
        let (channel, payload) = item.map_err(undecodable)?;
        return last.item(shared, channel, payload, tail);
    }
    let msg = wire::codec::decode_parts(frame, tail_len).map_err(undecodable)?;
    match msg {
        Message::Hello { .. } | Message::HelloYourself { .. } => Err(violation(
            Rule::HandshakeOnce.name(),
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
                    Rule::ConnKnown.name(),
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
            deadline_us,
            metadata,
            channels,
            args,
        } => on_call(
            shared,
            IncomingCall {
                conn,
                request,
                method,
                deadline_us,
                metadata: &metadata,
                channels: &channels,
                args: match tail {
                    None => crate::service::Args::whole(args),
                    Some(t) => crate::service::Args::split(args, t),
                },
            },
        ),
        Message::Response {
            conn,
            request,
            metadata,
            channels,
            outcome,
        } => on_response(shared, conn, request, &channels, metadata, &outcome, tail),
        Message::Cancel { conn, request } => {
            if let Some(Some(h)) = shared.lock().serving.remove(&(conn, request)) {
                h.abort();
            }
            Ok(())
        }
        // Routed above without a `Message`; the same if one gets here.
        Message::Item { channel, payload } => last.item(shared, channel, payload, tail),
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
        Message::GrantCredit { channel, bytes } => match last.get(shared, channel, "GrantCredit")? {
            Some(core) => core.on_grant(bytes),
            None => Ok(()),
        },
        Message::Batch { messages } => {
            if in_batch {
                return Err(violation(Rule::FrameBatchFlat.name(), "a batch inside a batch"));
            }
            last.deferring_during(|last| {
                let (mut at, mut handled) = (0, 0usize);
                // A stream's items in a row go to their channel together.
                // Each message is smaller than the batch, whose size was
                // checked: only the item's own envelope is left to check.
                let mut run = ItemRun::new();
                while let Some(m) = wire::codec::next_in_batch(messages, &mut at) {
                    let m = m.map_err(undecodable)?;
                    handled += 1;
                    if let Some(item) = wire::codec::decode_item(m, 0) {
                        let (channel, payload) = match item {
                            Ok(item) => item,
                            Err(e) => {
                                // The items before it first, as one by one.
                                run.flush(shared, last)?;
                                return Err(undecodable(e));
                            }
                        };
                        run.push(shared, last, channel, payload)?;
                        continue;
                    }
                    run.flush(shared, last)?;
                    handle_message(shared, m, None, last, true)?;
                }
                run.flush(shared, last)?;
                if handled == 0 {
                    return Err(violation(Rule::FrameBatchFlat.name(), "an empty batch"));
                }
                Ok(())
            })
        }
    }
}

/// Sleeps until `at`, or forever without it.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
