//! Three processes: cell A calls cell B through the host, which forwards the
//! connection if its routes allow it (`osmos_host::Routes`).

use std::time::Duration;

use osmos_host::{CellBuilder, CellHandle, CellState, Routes};
use osmos_tests::{RelayClient, TestCellClient, bounded};

const CELL: &str = env!("CARGO_BIN_EXE_test-cell");
const RELAY: &str = env!("CARGO_BIN_EXE_relay-cell");
async fn spawn(builder: CellBuilder) -> CellHandle {
    bounded("spawn", builder.spawn()).await.expect("spawn a cell")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_a_cell_calls_another_through_the_host_and_survives_its_death() {
    let routes = Routes::new();
    routes.allow("a", "b");
    let b = spawn(CellBuilder::new(CELL).name("b")).await;
    let c = spawn(CellBuilder::new(CELL).name("c")).await;
    routes.add(&b).add(&c);
    let a = spawn(
        CellBuilder::new(RELAY)
            .name("a")
            .accept_connections(routes.acceptor("a")),
    )
    .await;
    let relay = a.client::<RelayClient>().unwrap();

    // A reaches B: a call, then a stream each way, all through the host.
    assert_eq!(
        bounded("pid via the host", relay.pid_via("b".into()))
            .await
            .unwrap(),
        b.pid().unwrap()
    );
    let n = 20_000u64;
    let (down, up) = bounded("streams via the host", relay.stream_via("b".into(), n as u32))
        .await
        .unwrap();
    assert_eq!((down, up), (n * (n - 1) / 2, n * (n + 1) / 2));

    // The host decides who reaches whom: C is running, but not for A.
    let err = bounded("a refused route", relay.pid_via("c".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("may not reach cell 'c'"), "{err}");

    // B dies while A's call to it is in flight: the call fails, saying so.
    let hanging = tokio::spawn({
        let relay = relay.clone();
        async move { relay.hang_via("b".into()).await }
    });
    bounded("the forwarded call to reach B", async {
        while b.stats().session.pending_calls == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    b.kill();
    let why = match bounded("the failed call", hanging).await.unwrap() {
        Ok(why) => why,
        Err(e) => panic!(
            "A's relay call itself failed: {e}; A is {}; its stderr: {:?}",
            a.state(),
            a.stderr_tail()
        ),
    };
    eprintln!("A's call to B failed with: {why}");
    assert!(why.contains("'b'") && why.contains("SIGKILL"), "{why}");

    // A keeps working, and learns that B is gone.
    assert_eq!(bounded("add", relay.add(2, 2)).await.unwrap(), 4);
    bounded(
        "B to stop",
        b.wait_for(|s| matches!(s, CellState::Stopped { .. })),
    )
    .await;
    let err = bounded("a call to the dead cell", relay.pid_via("b".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cell 'b' is not"), "{err}");
    assert_eq!(bounded("add", relay.add(3, 4)).await.unwrap(), 7);
    assert!(a.pid().is_some(), "A is still running: {:?}", a.state());
    c.shutdown(Duration::from_secs(5)).await;
    a.shutdown(Duration::from_secs(5)).await;
}

/// The host says who calls: cell B sees the cell that called it through the
/// host as its caller, and a cell that claims to be another (`osmos.caller`
/// sent when connecting and with the call) is not believed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_the_called_cell_sees_the_calling_cell() {
    let routes = Routes::new();
    routes.allow("a", "b").allow("z", "b");
    let b = spawn(CellBuilder::new(CELL).name("b")).await;
    routes.add(&b);
    let a = spawn(
        CellBuilder::new(RELAY)
            .name("a")
            .accept_connections(routes.acceptor("a")),
    )
    .await;
    let z = spawn(
        CellBuilder::new(RELAY)
            .name("z")
            .accept_connections(routes.acceptor("z")),
    )
    .await;
    let (from_a, from_z) = (
        a.client::<RelayClient>().unwrap(),
        z.client::<RelayClient>().unwrap(),
    );

    let seen = bounded("B's caller, from A", from_a.caller_via("b".into(), String::new())).await;
    assert_eq!(seen.unwrap(), ("a".to_string(), None));
    let seen = bounded("B's caller, from Z", from_z.caller_via("b".into(), String::new())).await;
    assert_eq!(seen.unwrap(), ("z".to_string(), None));

    // Z claims to be A: B still sees Z, and no trace of the claim.
    let seen = bounded(
        "B's caller, from Z claiming A",
        from_z.caller_via("b".into(), "a".into()),
    )
    .await;
    assert_eq!(seen.unwrap(), ("z".to_string(), None));

    // The host's own calls on B's root connection: B's session name.
    let direct = bounded(
        "B's caller, from the host",
        b.client::<TestCellClient>().unwrap().caller(),
    )
    .await;
    assert_eq!(direct.unwrap(), ("b".to_string(), None));

    for cell in [a, z, b] {
        cell.shutdown(Duration::from_secs(5)).await;
    }
}
