//! Routes: which cell may call which other cell, through the host.
//!
//! A cell reaches another cell by opening a virtual connection to the host
//! whose metadata names the target under [`META_CELL`] (the plugin SDK's
//! `connect_to_cell` does this). The host's [`Routes`] decide: if the route
//! `from → to` is allowed and the target is running, the host opens a
//! virtual connection to the target for it and forwards between the two
//! ([`Forward::open_on`]): calls, answers, cancels and streams pass through
//! untouched, and closing either side closes the other. Otherwise the cell's
//! open fails with the host's reason.
//!
//! The host says who calls: it opens the connection to the target with
//! [`META_CALLER`] naming the cell that opened it, so the target's handlers
//! see that cell as their
//! [`CallContext::caller`](osmos_session::CallContext::caller). It never
//! believes a cell about it: any `osmos.caller` a cell sends, when it opens
//! the connection or with a call, is dropped before the host forwards.
//!
//! Routes hold cells weakly: registering a cell does not keep it running.
//! The target's *current* incarnation is looked up at each open, so a
//! restarted target is reached again by the next connection.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use osmos_session::control::{META_CALLER, META_CELL};
use osmos_session::wire::{MetaEntry, MetaValue, Metadata};
use osmos_session::{ConnectionAcceptor, Dispatcher, Forward};

use crate::cell::{CellHandle, WeakCell};

/// The host's table of allowed cell-to-cell routes. Cheap to clone.
#[derive(Clone, Default)]
pub struct Routes {
    inner: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    cells: HashMap<String, WeakCell>,
    allowed: HashSet<(String, String)>,
    /// Per target cell, a token each forwarded connection to it holds: the
    /// count of live forwarded connections.
    forwarded: HashMap<String, Arc<()>>,
}

/// Most forwarded connections open at once to one cell: a session holds at
/// most 4096 virtual connections, and callers must not be able to use them
/// all up and so break the target's session with the host.
pub const MAX_FORWARDED_PER_CELL: usize = 1024;

/// A forwarder that counts itself against its target's limit while alive.
struct Counted {
    forward: Arc<Forward>,
    _token: Arc<()>,
}

impl Dispatcher for Counted {
    fn dispatch(&self, method: u64, metadata: &Metadata, args: &[u8]) -> osmos_session::Dispatch {
        // Only the host says who calls: a cell's own claim goes no further.
        if metadata.iter().any(|m| m.key == META_CALLER) {
            let cleaned: Metadata = metadata
                .iter()
                .filter(|m| m.key != META_CALLER)
                .cloned()
                .collect();
            return self.forward.dispatch(method, &cleaned, args);
        }
        self.forward.dispatch(method, metadata, args)
    }

    fn connection_accepted(&self, conn: &osmos_session::Connection) {
        self.forward.connection_accepted(conn);
    }
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.table();
        f.debug_struct("Routes")
            .field("cells", &t.cells.keys().collect::<Vec<_>>())
            .field("allowed", &t.allowed)
            .finish()
    }
}

impl Routes {
    /// No routes, no cells.
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets cell `from` reach cell `to`.
    pub fn allow(&self, from: &str, to: &str) -> &Self {
        self.table().allowed.insert((from.to_string(), to.to_string()));
        self
    }

    /// Stops letting cell `from` open new connections to cell `to`
    /// (connections already open stay open).
    pub fn revoke(&self, from: &str, to: &str) -> &Self {
        self.table().allowed.remove(&(from.to_string(), to.to_string()));
        self
    }

    /// Registers `cell` (under its name) as a target routes may lead to.
    pub fn add(&self, cell: &CellHandle) -> &Self {
        self.table()
            .cells
            .insert(cell.name().to_string(), cell.downgrade());
        self
    }

    /// The acceptor for cell `from`'s session: pass it to
    /// [`CellBuilder::accept_connections`](crate::CellBuilder::accept_connections).
    pub fn acceptor(&self, from: &str) -> ConnectionAcceptor {
        let routes = self.clone();
        let from = from.to_string();
        Arc::new(move |metadata: &Metadata| routes.decide(&from, metadata))
    }

    fn decide(&self, from: &str, metadata: &Metadata) -> Result<Option<Arc<dyn Dispatcher>>, String> {
        let target = metadata.iter().find(|m| m.key == META_CELL).map(|m| &m.value);
        let to = match target {
            Some(MetaValue::Str(to)) => to.clone(),
            Some(_) => return Err(format!("the {META_CELL} metadata must be a string naming a cell")),
            None => {
                return Err(format!(
                    "the host serves no virtual connection without {META_CELL}: name the cell to reach"
                ));
            }
        };
        let (conn, token) = {
            let mut t = self.table();
            if !t.allowed.contains(&(from.to_string(), to.clone())) {
                return Err(format!(
                    "cell '{from}' may not reach cell '{to}': the host has not allowed that route"
                ));
            }
            let Some(cell) = t.cells.get(&to) else {
                return Err(format!("the host knows no cell '{to}'"));
            };
            let conn = cell.connection();
            let token = t.forwarded.entry(to.clone()).or_default().clone();
            if Arc::strong_count(&token) - 1 > MAX_FORWARDED_PER_CELL {
                return Err(format!(
                    "cell '{to}' already has {MAX_FORWARDED_PER_CELL} forwarded connections open; close some first"
                ));
            }
            (conn, token)
        };
        let Some(conn) = conn else {
            return Err(format!("cell '{to}' is not running"));
        };
        if let Some(e) = conn.ended() {
            return Err(format!("cell '{to}' is not reachable: {e}"));
        }
        // What the cell asked for goes on, but who calls is the host's word.
        let mut onward: Metadata = metadata
            .iter()
            .filter(|m| m.key != META_CELL && m.key != META_CALLER)
            .cloned()
            .collect();
        onward.push(MetaEntry {
            key: META_CALLER.to_string(),
            value: MetaValue::Str(from.to_string()),
        });
        tracing::debug!(from, to, "forwarding a connection");
        Ok(Some(Arc::new(Counted {
            forward: Forward::open_on(conn, onward),
            _token: token,
        }) as Arc<dyn Dispatcher>))
    }
}
