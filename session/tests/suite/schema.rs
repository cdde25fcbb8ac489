//! Two sides built from different definitions of a service fail loudly, by
//! name, instead of misreading each other: a type that changed (deep inside
//! an argument too) is a `SchemaMismatch` naming the method and both
//! descriptions; a method the other side lacks is named.

use crate::common;

use common::bounded;
use osmos_session::link::memory as mem;
use osmos_session::{CallError, Connection, Dispatcher, SessionBuilder};

/// The host's build of the plugin's types.
mod host_build {
    use facet::Facet;

    /// A setting.
    #[derive(Facet, Clone, Debug)]
    pub struct Knob {
        /// Its level.
        pub level: Option<u32>,
    }

    /// Counts.
    #[osmos_macros::service]
    pub trait Counter {
        /// Adds `n`.
        async fn bump(&self, n: u32) -> u32;
        /// Applies a knob.
        async fn turn(&self, knob: Knob) -> u32;
        /// Only this build has it.
        async fn reset(&self) -> u32;
    }
}

/// The plugin's build: `Knob::level` became signed.
mod plugin_build {
    use facet::Facet;

    /// A setting.
    #[derive(Facet, Clone, Debug)]
    pub struct Knob {
        /// Its level.
        pub level: Option<i32>,
    }

    /// Counts.
    #[osmos_macros::service]
    pub trait Counter {
        /// Adds `n`.
        async fn bump(&self, n: u32) -> u32;
        /// Applies a knob.
        async fn turn(&self, knob: Knob) -> u32;
    }

    /// The plugin.
    pub struct Impl;
    impl Counter for Impl {
        async fn bump(&self, n: u32) -> u32 {
            n + 1
        }
        async fn turn(&self, knob: Knob) -> u32 {
            knob.level.unwrap_or_default() as u32
        }
    }
}

async fn connect() -> Connection {
    let (a, b) = mem::pair(1 << 20, 1 << 20);
    let server = SessionBuilder::new()
        .serve(plugin_build::CounterDispatcher::new(plugin_build::Impl) as std::sync::Arc<dyn Dispatcher>);
    let (server, client) = bounded("handshake", async {
        tokio::join!(server.accept(b), SessionBuilder::new().initiate(a))
    })
    .await;
    std::mem::forget(server.unwrap());
    client.unwrap()
}

#[tokio::test]
async fn a_changed_type_fails_by_name_with_both_descriptions() {
    let client = host_build::CounterClient::new(connect().await);
    // What both agree on works, the first call (with the schema) and later ones.
    assert_eq!(bounded("bump", client.bump(1)).await.unwrap(), 2);
    assert_eq!(bounded("bump", client.bump(2)).await.unwrap(), 3);
    for _ in 0..2 {
        match bounded("turn", client.turn(host_build::Knob { level: Some(100) })).await {
            Err(CallError::SchemaMismatch { method, detail }) => {
                assert_eq!(method, "Counter.turn");
                assert!(detail.contains("level: Option<u32>"), "{detail}");
                assert!(detail.contains("level: Option<i32>"), "{detail}");
                let shown = CallError::<std::convert::Infallible>::SchemaMismatch {
                    method,
                    detail: detail.clone(),
                }
                .to_string();
                assert!(shown.contains("Counter.turn"), "{shown}");
            }
            other => panic!("expected a schema mismatch, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_missing_method_is_named() {
    let client = host_build::CounterClient::new(connect().await);
    match bounded("reset", client.reset()).await {
        Err(e @ CallError::UnknownMethod { .. }) => {
            assert!(matches!(&e, CallError::UnknownMethod { name: Some(n), .. } if n == "Counter.reset"));
            assert!(e.to_string().contains("Counter.reset"), "{e}");
        }
        other => panic!("expected an unknown method, got {other:?}"),
    }
}

#[tokio::test]
async fn a_host_can_list_what_the_peer_serves() {
    let conn = connect().await;
    let services = bounded("services", conn.services()).await.unwrap();
    assert_eq!(
        services,
        vec![osmos_session::ServiceDescription {
            name: "Counter".into(),
            methods: vec!["bump".into(), "turn".into()],
        }]
    );
}
