//! The binding context: a thread-local the session sets up while it encodes
//! or decodes one message. Encoding a handle hands it over and collects its
//! id into the message's channel list; decoding one accepts only the ids the
//! message lists and binds the new handle to the session's channel state.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::handles::Bound;
use super::{ChannelCore, ChannelId, End};
use crate::session::Shared;

/// What a binding context is doing.
enum BindMode {
    /// Encoding: handles met are handed over; their ids are collected.
    Encode { collected: Vec<u64> },
    /// Decoding: only the listed ids may be bound.
    Decode { allowed: Vec<u64>, bound: Vec<u64> },
}

struct BindContext {
    shared: Arc<Shared>,
    mode: BindMode,
}

thread_local! {
    static CONTEXT: RefCell<Option<BindContext>> = const { RefCell::new(None) };
}

/// Runs `f` (a synchronous encode) with a binding context; returns its
/// result and the ids of the channel handles it handed over.
pub(crate) fn with_encode_context<R>(shared: &Arc<Shared>, f: impl FnOnce() -> R) -> (R, Vec<u64>) {
    let prev = CONTEXT.with(|c| {
        c.replace(Some(BindContext {
            shared: shared.clone(),
            mode: BindMode::Encode {
                collected: Vec::new(),
            },
        }))
    });
    let r = f();
    let ctx = CONTEXT.with(|c| c.replace(prev));
    let ids = match ctx.map(|c| c.mode) {
        Some(BindMode::Encode { collected }) => collected,
        _ => Vec::new(),
    };
    (r, ids)
}

/// Runs `f` (a synchronous decode) allowing handles with the listed ids to
/// bind. Returns its result and the ids that were bound.
pub(crate) fn with_decode_context<R>(
    shared: &Arc<Shared>,
    allowed: &[u64],
    f: impl FnOnce() -> R,
) -> (R, Vec<u64>) {
    let prev = CONTEXT.with(|c| {
        c.replace(Some(BindContext {
            shared: shared.clone(),
            mode: BindMode::Decode {
                allowed: allowed.to_vec(),
                bound: Vec::new(),
            },
        }))
    });
    let r = f();
    let ctx = CONTEXT.with(|c| c.replace(prev));
    let bound = match ctx.map(|c| c.mode) {
        Some(BindMode::Decode { bound, .. }) => bound,
        _ => Vec::new(),
    };
    (r, bound)
}

/// Binds a decoded channel handle (a position in the message's channel list)
/// to the session's channel state. Returns the channel's id with the binding.
pub(super) fn bind(index: ChannelId, end: End) -> Result<(u64, Arc<Shared>, Arc<ChannelCore>), String> {
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(ctx) = c.as_mut() else {
            return Err("a channel handle can only be decoded by a session, as part of a call".to_string());
        };
        let BindMode::Decode { allowed, bound } = &mut ctx.mode else {
            return Err("a channel handle cannot be decoded while encoding".to_string());
        };
        let Some(&id) = usize::try_from(index.0).ok().and_then(|i| allowed.get(i)) else {
            return Err(format!(
                "channel handle {} points past the message's {} listed channels",
                index.0,
                allowed.len()
            ));
        };
        if bound.contains(&id) {
            return Err(format!("channel {id} appears twice in one message"));
        }
        let core = ctx
            .shared
            .channel_core(id)
            .ok_or_else(|| format!("channel {id} is not open"))?;
        bound.push(id);
        core.attach(end);
        // We hold `end`: the receiver's initial credit is ours if we receive.
        let initial = match end {
            End::Rx => ctx.shared.our_initial_credit(),
            End::Tx => ctx.shared.peer_settings().initial_credit,
        };
        core.init_credit(initial, false)?;
        Ok((id, ctx.shared.clone(), core))
    })
}

/// For a relay (forwarding): binds every channel the message being decoded
/// lists, in list order, holding both ends (a relay moves items whichever
/// way they flow). Returns the session and the channels.
pub(crate) fn bind_listed_for_relay() -> Result<(Arc<Shared>, Vec<Arc<ChannelCore>>), String> {
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(ctx) = c.as_mut() else {
            return Err("channels can only be taken by a session, as part of a call".to_string());
        };
        let BindMode::Decode { allowed, bound } = &mut ctx.mode else {
            return Err("channels cannot be taken while encoding".to_string());
        };
        let mut cores = Vec::with_capacity(allowed.len());
        for &id in allowed.iter() {
            if bound.contains(&id) {
                return Err(format!("channel {id} appears twice in one message"));
            }
            let core = ctx
                .shared
                .channel_core(id)
                .ok_or_else(|| format!("channel {id} is not open"))?;
            bound.push(id);
            core.attach(End::Tx);
            core.attach(End::Rx);
            core.init_credit(ctx.shared.our_initial_credit(), false)?;
            cores.push(core);
        }
        Ok((ctx.shared.clone(), cores))
    })
}

/// For a relay (forwarding): lists channel `id` (created here, both ends
/// held by the relay) in the message being encoded.
pub(crate) fn list_for_relay(id: u64) -> Result<(), String> {
    CONTEXT.with(|c| match c.borrow_mut().as_mut().map(|ctx| &mut ctx.mode) {
        Some(BindMode::Encode { collected }) => {
            collected.push(id);
            Ok(())
        }
        _ => Err("a relayed channel can only be listed while encoding a message".to_string()),
    })
}

/// Hands a channel handle (of `end`) over to the peer while encoding.
pub(super) fn hand_over(
    id: u64,
    handed: &AtomicBool,
    end: End,
    bound: Option<&Bound>,
) -> Result<ChannelId, String> {
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        // A handle opened on another session (a connection that ended or
        // was replaced, e.g. a restarted cell's previous one) means nothing
        // to this peer: refuse it before it is handed over.
        if let (Some(ctx), Some(b)) = (c.as_ref(), bound)
            && !Arc::ptr_eq(&ctx.shared, &b.shared)
        {
            return Err(format!(
                "channel {id} was opened on another session than the one this message goes to \
                 (one that ended or was replaced); open channels on the connection the call is made \
                 on (a client that follows a restarting peer calls whichever connection runs now)"
            ));
        }
        match c.as_mut().map(|ctx| &mut ctx.mode) {
            Some(BindMode::Encode { collected }) => {
                if handed.swap(true, Ordering::AcqRel) {
                    return Err(format!("channel {id} was already handed to the peer"));
                }
                if let Some(b) = bound {
                    b.core.detach(end);
                    // The peer gets `end`: the receiver's initial credit is
                    // ours if the peer sends. The creator sets up the shared
                    // counters now, before the message announcing it is sent.
                    let initial = match end {
                        End::Tx => b.shared.our_initial_credit(),
                        End::Rx => b.shared.peer_settings().initial_credit,
                    };
                    b.core.init_credit(initial, b.core.created_here)?;
                }
                collected.push(id);
                Ok(ChannelId(collected.len() as u64 - 1))
            }
            _ => Err(
                "a channel handle can only be sent as part of a call's arguments or return value".to_string(),
            ),
        }
    })
}
