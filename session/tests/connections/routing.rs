//! Several services on one connection, and how long connections live:
//! closed by their last handle, by their root, by both sides at once.

use super::*;

pub(crate) async fn routing_serves_several_services_on_one_connection<F: Factory>(f: F) {
    let (a, b) = f.pair().await;
    let calc = Arc::new(Calc::default());
    let router = Router::builder()
        .route(CalculatorDispatcher::new(calc.clone()))
        .route(GreeterDispatcher::new(Greet))
        .build()
        .unwrap();
    let (server, client) = bounded("handshake", async {
        tokio::join!(
            SessionBuilder::new().serve(router.clone()).accept(b),
            SessionBuilder::new().initiate(a)
        )
    })
    .await;
    let (_server, client) = (server.unwrap(), client.unwrap());
    let (calc_client, greeter) = (
        CalculatorClient::new(client.clone()),
        GreeterClient::new(client.clone()),
    );
    let (sum, hello) = bounded("calls", async {
        tokio::join!(calc_client.add(40, 2), greeter.greet("router".into()))
    })
    .await;
    assert_eq!(sum.unwrap(), 42);
    assert_eq!(hello.unwrap(), "hello, router");
    // A method no route serves gets the protocol's answer, not a hang.
    let r: Result<u32, CallError<String>> = bounded(
        "unknown method",
        client.call(
            osmos_session::method_id("Nobody", "home"),
            &(),
            CallOptions::default(),
        ),
    )
    .await;
    assert_eq!(
        r.unwrap_err(),
        CallError::UnknownMethod {
            method: osmos_session::method_id("Nobody", "home"),
            name: None
        }
    );
    assert_eq!(router.methods().count(), 12);
    // The same router serves virtual connections too.
    let (c, d) = f.pair().await;
    let (server, client) = bounded("handshake", async {
        tokio::join!(
            SessionBuilder::new()
                .accept_connections(Arc::new(move |_: &Metadata| Ok(Some(
                    router.clone() as Arc<dyn Dispatcher>
                ))))
                .accept(d),
            SessionBuilder::new().initiate(c)
        )
    })
    .await;
    let (_server, client) = (server.unwrap(), client.unwrap());
    let v = bounded("open", client.open(vec![], None)).await.unwrap();
    assert_eq!(
        GreeterClient::new(v.clone()).greet("v".into()).await.unwrap(),
        "hello, v"
    );
    assert_eq!(CalculatorClient::new(v).add(1, 2).await.unwrap(), 3);
}

#[test]
fn routing_refuses_two_services_with_the_same_method_ids() {
    let calc = Arc::new(Calc::default());
    let err = Router::builder()
        .route(CalculatorDispatcher::new(calc.clone()))
        .route(GreeterDispatcher::new(Greet))
        .route(CalculatorDispatcher::new(calc))
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("Calculator.add and Calculator.add"),
        "{err}"
    );
}

// ---------------------------------------------------------------- liveness

pub(crate) async fn liveness_dropping_the_last_virtual_handle_closes_it<F: Factory>(f: F) {
    let p = direct(&f).await;
    let v = bounded("open", p.client.open(meta("service", "calc"), None))
        .await
        .unwrap();
    let served = bounded("acceptance", p.accepted.next()).await;
    let copy = v.clone();
    drop(v);
    assert_eq!(
        CalculatorClient::new(copy.clone()).add(1, 1).await.unwrap(),
        2,
        "a clone keeps the connection open"
    );
    let closing = tokio::spawn(async move { served.connection_closed().await });
    drop(copy);
    let why = bounded("the server to see the close", closing).await.unwrap();
    assert!(why.contains("last handle"), "{why}");
    assert_eq!(
        CalculatorClient::new(p.client.clone()).add(2, 2).await.unwrap(),
        4,
        "the root is unaffected"
    );
}

pub(crate) async fn liveness_the_root_closes_when_its_handles_and_connections_are_gone<F: Factory>(f: F) {
    let p = direct(&f).await;
    let v = bounded("open", p.client.open(meta("service", "calc"), None))
        .await
        .unwrap();
    drop(p.client);
    // The virtual connection keeps the session up...
    assert_eq!(CalculatorClient::new(v.clone()).add(3, 4).await.unwrap(), 7);
    assert!(p.server.ended().is_none());
    // ...until it goes too: the peer is told.
    drop(v);
    let why = bounded("the session to end", p.server.closed()).await;
    match why {
        SessionError::Goodbye { reason } => assert!(reason.contains("every handle"), "{reason}"),
        e => panic!("expected a goodbye, got {e:?}"),
    }
    drop(p.calc);
}

pub(crate) async fn liveness_both_sides_closing_at_once_is_not_a_violation<F: Factory>(f: F) {
    let p = direct(&f).await;
    for round in 0..50 {
        let v = bounded("open", p.client.open(meta("service", "calc"), None))
            .await
            .unwrap();
        let served = bounded("acceptance", p.accepted.next()).await;
        let calc = CalculatorClient::new(v.clone());
        let blocked = tokio::spawn({
            let calc = calc.clone();
            async move { calc.block(round).await }
        });
        wait_running(&p.calc, 1).await;
        // Each side closes (one by dropping its last handle) before it
        // hears of the other's close; the call in flight may cross them.
        drop((v, calc));
        served.close("the server closes too").await;
        assert!(bounded("the blocked call", blocked).await.unwrap().is_err());
        wait_running_at_most(&p.calc, 0).await;
        assert_eq!(
            CalculatorClient::new(p.client.clone())
                .add(round, 1)
                .await
                .unwrap(),
            round + 1,
            "round {round}: the session survives"
        );
        assert!(p.server.ended().is_none() && p.client.ended().is_none());
    }
}

/// Serves nothing; holds a connection handle.
struct Holding(#[allow(dead_code)] Connection);
impl Dispatcher for Holding {
    fn dispatch(&self, _: u64, _: &Metadata, _: &[u8]) -> Dispatch {
        Dispatch::UnknownMethod
    }
}

pub(crate) async fn liveness_a_handle_held_by_a_closing_connection_is_released<F: Factory>(f: F) {
    let p = direct(&f).await;
    // The last root handle lives in the dispatcher of a virtual connection:
    // closing that connection releases it, and so ends the session.
    let holder: Arc<dyn Dispatcher> = Arc::new(Holding(p.client.clone()));
    let v = bounded("open", p.client.open(meta("service", "calc"), Some(holder)))
        .await
        .unwrap();
    drop(p.client);
    assert_eq!(CalculatorClient::new(v.clone()).add(1, 1).await.unwrap(), 2);
    bounded("close", v.close("done")).await;
    let why = bounded("the session to end", p.server.closed()).await;
    assert!(why.to_string().contains("every handle"), "{why}");
}

async fn wait_running_at_most(calc: &Calc, n: usize) {
    bounded("handlers to stop", async {
        while calc.running.load(Ordering::SeqCst) > n {
            tokio::task::yield_now().await;
        }
    })
    .await;
}
