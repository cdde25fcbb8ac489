//! Routing: several services on one connection, dispatched by method id.
//!
//! A [`Router`] is a [`Dispatcher`] made of other dispatchers. Method ids are
//! stable hashes of `"Service.method"` ([`method_id`](crate::method_id)), so
//! services never need to agree on numbering: the router indexes the ids of
//! every dispatcher that [describes](Dispatcher::describe) itself (all
//! `#[osmos::service]` dispatchers do) and refuses, when built, two
//! services answering the same id. Dispatchers that do not describe
//! themselves are asked in the order they were added.
//!
//! A call to an id no route serves is answered with the protocol's
//! unknown-method outcome ([`CallError::UnknownMethod`](crate::CallError)),
//! never left unanswered.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::service::{Dispatch, Dispatcher, ServiceInfo};
use crate::wire::Metadata;

/// Two routes serve the same method id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConflict {
    /// The id both serve.
    pub method: u64,
    /// `Service.method` of the route added first.
    pub first: String,
    /// `Service.method` of the route added second.
    pub second: String,
}

impl fmt::Display for RouteConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} and {} both have method id {:#018x}: serve them on different connections, or rename one",
            self.first, self.second, self.method
        )
    }
}

impl std::error::Error for RouteConflict {}

/// Builds a [`Router`].
#[derive(Default)]
pub struct RouterBuilder {
    routes: Vec<Arc<dyn Dispatcher>>,
}

impl fmt::Debug for RouterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl RouterBuilder {
    /// Adds a service.
    pub fn route(mut self, dispatcher: Arc<dyn Dispatcher>) -> Self {
        self.routes.push(dispatcher);
        self
    }

    /// Indexes the routes; fails if two serve the same method id.
    pub fn build(self) -> Result<Arc<Router>, RouteConflict> {
        let mut by_id: HashMap<u64, (usize, String)> = HashMap::new();
        let mut probe = Vec::new();
        for (i, d) in self.routes.iter().enumerate() {
            let Some(ServiceInfo { name, methods }) = d.describe() else {
                probe.push(i);
                continue;
            };
            for &(method, id) in methods {
                let here = format!("{name}.{method}");
                if let Some((_, first)) = by_id.get(&id) {
                    return Err(RouteConflict {
                        method: id,
                        first: first.clone(),
                        second: here,
                    });
                }
                by_id.insert(id, (i, here));
            }
        }
        Ok(Arc::new(Router {
            by_id: by_id.into_iter().map(|(id, (i, _))| (id, i)).collect(),
            probe,
            routes: self.routes,
        }))
    }
}

/// Serves several services on one connection (see the module docs).
pub struct Router {
    routes: Vec<Arc<dyn Dispatcher>>,
    /// Method id → index in `routes`.
    by_id: HashMap<u64, usize>,
    /// Indices of routes that do not describe their methods, asked in order.
    probe: Vec<usize>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.routes.len())
            .field("methods", &self.by_id.len())
            .finish()
    }
}

impl Router {
    /// A builder with no routes.
    pub fn builder() -> RouterBuilder {
        RouterBuilder::default()
    }

    /// The method ids the described routes serve.
    pub fn methods(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_id.keys().copied()
    }
}

impl Dispatcher for Router {
    fn dispatch(&self, method: u64, metadata: &Metadata, args: &[u8]) -> Dispatch {
        self.dispatch_args(method, metadata, crate::Args::whole(args))
    }

    fn dispatch_args(&self, method: u64, metadata: &Metadata, args: crate::Args<'_>) -> Dispatch {
        if let Some(&i) = self.by_id.get(&method) {
            return self.routes[i].dispatch_args(method, metadata, args);
        }
        // Probed routes may each look at the arguments: in one piece.
        let args = args.joined();
        for &i in &self.probe {
            match self.routes[i].dispatch(method, metadata, &args) {
                Dispatch::UnknownMethod => continue,
                d => return d,
            }
        }
        Dispatch::UnknownMethod
    }

    fn describe_all(&self) -> Vec<crate::ServiceInfo> {
        self.routes.iter().flat_map(|r| r.describe_all()).collect()
    }

    fn connection_accepted(&self, conn: &crate::Connection) {
        for r in &self.routes {
            r.connection_accepted(conn);
        }
    }
}
