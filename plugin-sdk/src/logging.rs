//! Forwards the cell's tracing events to the host over the control socket.
//!
//! Each event becomes one [`LogRecord`] packet on the `SOCK_SEQPACKET`
//! control socket, sent without blocking: if the host is not reading, events
//! are dropped rather than stalling the cell. The host re-emits them under
//! its own tracing, tagged with the cell's name.

use std::fmt::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};

use osmos_session::control::{LogRecord, MAX_LOG_RECORD};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use crate::Bootstrap;

/// Formats an event's fields: the message first, then `key=value` pairs.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

/// Longest target sent, in bytes.
const MAX_TARGET: usize = 256;

/// The longest prefix of `s` of at most `max` bytes.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Where the forwarded records go.
pub(crate) enum Sink {
    /// A local cell's control socket, one record per packet.
    Control(OwnedFd),
    /// A remote cell's queue, drained to its hosts over their sessions.
    Queue(tokio::sync::mpsc::Sender<LogRecord>),
}

struct ForwardLayer {
    sink: Sink,
}

impl<S: tracing::Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        if let Sink::Queue(_) = self.sink
            && *meta.level() >= tracing::Level::DEBUG
            && ["osmos_session", "rustls", "tokio"]
                .iter()
                .any(|t| meta.target().starts_with(t))
        {
            // Sending a record over the session makes these: forwarding them
            // would feed itself.
            return;
        }
        let level = match *meta.level() {
            tracing::Level::ERROR => 1,
            tracing::Level::WARN => 2,
            tracing::Level::INFO => 3,
            tracing::Level::DEBUG => 4,
            tracing::Level::TRACE => 5,
        };
        let mut message = fields.message;
        message.push_str(&fields.rest);
        // Cut the text, not the encoding: a cut encoding is not a record,
        // and the host refuses it.
        let record = LogRecord {
            level,
            target: cut(meta.target(), MAX_TARGET).to_string(),
            message: cut(&message, MAX_LOG_RECORD - MAX_TARGET - 32).to_string(),
        };
        let control = match &self.sink {
            Sink::Control(control) => control,
            Sink::Queue(queue) => {
                // Full: the hosts are not keeping up; drop rather than block.
                let _ = queue.try_send(record);
                return;
            }
        };
        let Ok(bytes) = osmos_session::wire::encode(&record) else {
            return;
        };
        // SAFETY: `bytes` is a valid buffer; MSG_DONTWAIT never blocks the cell.
        unsafe {
            libc::send(
                control.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
        }
    }
}

/// Environment variable setting the lowest level of the cell's tracing
/// events forwarded to the host: `error`, `warn`, `info` (the default),
/// `debug`, `trace` or `off`. The host sets it for a cell with
/// `CellBuilder::log_level(Level::DEBUG)` (or `CellBuilder::env`); without
/// it a cell's debug events are dropped in the cell.
pub use osmos_session::control::ENV_LOG;

/// Forwards this process's tracing events to the host: installs, as the
/// global default subscriber, a layer that sends each event at or above
/// the [`ENV_LOG`] level as one record on the control socket (without ever
/// blocking; records the host does not take in time are dropped). The host
/// re-emits them under target `osmos::cell`, tagged with the cell's name.
///
/// [`run`](crate::run), [`run_with`](crate::run_with), [`serve`](crate::serve)
/// and [`serve_with`](crate::serve_with) call it before the cell starts;
/// call it yourself only when starting a [`Cell`](crate::Cell) by hand.
/// Returns whether it was installed: not when the host passed no control
/// socket, or when the program installed a global subscriber first (that
/// one wins; the cell's events then go where it sends them).
pub fn forward_logs(bootstrap: &Bootstrap) -> bool {
    let Some(control) = bootstrap.control.as_ref().and_then(|fd| fd.try_clone().ok()) else {
        return false;
    };
    install(Sink::Control(control))
}

/// Installs the forwarding layer, at the [`ENV_LOG`] level, as the global
/// default subscriber; false if one was installed first.
pub(crate) fn install(sink: Sink) -> bool {
    let level = std::env::var(ENV_LOG)
        .ok()
        .and_then(|v| v.trim().parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(ForwardLayer { sink }.with_filter(level))
        .try_init()
        .is_ok()
}
