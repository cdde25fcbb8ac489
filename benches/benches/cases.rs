//! The report binary's cases under criterion: `cargo bench -p osmos-benches`
//! (or `-- add_rtt` for one group).
//!
//! The shm cases talk to a real cell: the `osmos-bench` binary, spawned by
//! the host with the default sandbox, serving the bench service. The
//! `floor_uds` group runs the same round trips over a raw blocking Unix
//! socket to the same binary as a second process. Criterion reports
//! absolute times and their change between runs; the ratios to the floors
//! measured in the same run come from `osmos-bench`. The host runtime is
//! the one `#[tokio::main]` builds: one worker per allowed CPU.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use osmos_benches::floor::uds::{self, UdsPeer};
use osmos_benches::service::{BenchClient, BenchDispatcher, BenchImpl};
use osmos_host::{CellBuilder, CellHandle};
use osmos_session::SessionBuilder;
use osmos_session::link::stream::StreamLink;
use osmos_session::link::{Link, memory};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A bench cell, and a client of it.
fn cell(rt: &tokio::runtime::Runtime) -> (CellHandle, BenchClient) {
    rt.block_on(async {
        let cell = CellBuilder::new(env!("CARGO_BIN_EXE_osmos-bench"))
            .name("criterion")
            .spawn()
            .await
            .expect("spawn the bench cell");
        let client: BenchClient = cell.client().expect("the cell's client");
        client.pid().await.expect("the cell answers");
        (cell, client)
    })
}

/// A client of a server on its own one-worker runtime over `link`.
fn in_process<L: Link>(
    rt: &tokio::runtime::Runtime,
    client: L,
    server: L,
) -> (tokio::runtime::Runtime, BenchClient) {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    server_rt.spawn(async move {
        if let Ok(conn) = SessionBuilder::new()
            .serve(BenchDispatcher::new(BenchImpl))
            .accept(server)
            .await
        {
            conn.closed().await;
        }
    });
    let conn = rt
        .block_on(SessionBuilder::new().initiate(client))
        .expect("handshake");
    (server_rt, BenchClient::new(conn))
}

fn add_rtt(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("add_rtt");
    let (cell, shm) = cell(&rt);
    g.bench_function("shm", |b| {
        b.to_async(&rt)
            .iter(|| async { shm.add(1, 2).await.expect("add") })
    });
    let (a, s) = memory::pair(1 << 20, 64);
    let (_server, mem) = in_process(&rt, a, s);
    g.bench_function("memory", |b| {
        b.to_async(&rt)
            .iter(|| async { mem.add(1, 2).await.expect("add") })
    });
    let (a, s) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
    let (a, s) = rt.block_on(async {
        a.set_nonblocking(true).expect("nonblocking");
        s.set_nonblocking(true).expect("nonblocking");
        (
            StreamLink::unix(
                tokio::net::UnixStream::from_std(a).expect("tokio socket"),
                1 << 20,
            ),
            StreamLink::unix(
                tokio::net::UnixStream::from_std(s).expect("tokio socket"),
                1 << 20,
            ),
        )
    });
    let (_server2, unix) = in_process(&rt, a, s);
    g.bench_function("unix", |b| {
        b.to_async(&rt)
            .iter(|| async { unix.add(1, 2).await.expect("add") })
    });
    g.finish();
    rt.block_on(cell.shutdown(Duration::from_secs(2)));
}

fn echo(c: &mut Criterion) {
    let rt = runtime();
    let (cell, client) = cell(&rt);
    let mut g = c.benchmark_group("echo");
    for (name, size) in [
        ("64/shm", 64usize),
        ("4k/shm", 4 << 10),
        ("64k/shm", 64 << 10),
        ("1m/shm", 1 << 20),
    ] {
        let payload = vec![0xa5u8; size];
        g.throughput(Throughput::Bytes(2 * size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &payload, |b, payload| {
            // The payload's clone is made outside the timing (the call
            // takes its vector by value): osmos makes no such copy.
            b.to_async(&rt).iter_batched(
                || payload.clone(),
                |data| async {
                    let back = client.echo(data).await.expect("echo");
                    assert_eq!(back.len(), payload.len());
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
    rt.block_on(cell.shutdown(Duration::from_secs(2)));
}

fn stream(c: &mut Criterion) {
    let rt = runtime();
    let (cell, client) = cell(&rt);
    let mut g = c.benchmark_group("stream");
    const ITEMS: u32 = 64;
    const SIZE: u32 = 64 << 10;
    g.throughput(Throughput::Bytes(u64::from(ITEMS * SIZE)));
    g.bench_function("64k/shm", |b| {
        b.to_async(&rt).iter(|| async {
            let (tx, mut rx) = client.connection().channel::<Vec<u8>>().expect("a channel");
            let c = client.clone();
            let call = tokio::spawn(async move { c.stream(ITEMS, SIZE, tx).await });
            let mut n = 0;
            while let Some(item) = rx.recv().await {
                item.expect("an item");
                n += 1;
            }
            call.await.expect("the call's task").expect("stream");
            assert_eq!(n, ITEMS);
        })
    });
    g.throughput(Throughput::Elements(1000));
    // The call and its items in one task, as `osmos-bench`'s
    // `stream_1000/shm` does.
    g.bench_function("1000/shm", |b| {
        b.to_async(&rt).iter(|| async {
            let (tx, mut rx) = client.connection().channel::<u32>().expect("a channel");
            let items = async {
                let mut n = 0;
                while let Some(item) = rx.recv().await {
                    assert_eq!(item.expect("an item"), n);
                    n += 1;
                }
                n
            };
            let (answer, n) = tokio::join!(client.count(1000, tx), items);
            answer.expect("count");
            assert_eq!(n, 1000);
        })
    });
    g.finish();
    rt.block_on(cell.shutdown(Duration::from_secs(2)));
}

fn concurrency(c: &mut Criterion) {
    let rt = runtime();
    let (cell, client) = cell(&rt);
    let mut g = c.benchmark_group("concurrency");
    for callers in [16u64, 256] {
        g.throughput(Throughput::Elements(callers));
        g.bench_function(BenchmarkId::new("shm", callers), |b| {
            b.to_async(&rt).iter(|| async {
                let calls: Vec<_> = (0..callers as u32)
                    .map(|i| {
                        let c = client.clone();
                        tokio::spawn(async move { c.add(i, i).await })
                    })
                    .collect();
                for call in calls {
                    call.await.expect("the call's task").expect("add");
                }
            })
        });
    }
    g.finish();
    rt.block_on(cell.shutdown(Duration::from_secs(2)));
}

/// The raw Unix-socket floors of `add_rtt` and the echoes: the peer is the
/// `osmos-bench` binary as `--floor-child uds <mode>`.
fn floor_uds(c: &mut Criterion) {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_osmos-bench"));
    let mut g = c.benchmark_group("floor_uds");
    let mut peer = UdsPeer::start(exe, "pingpong").expect("start the pingpong peer");
    let mut x = 0u64;
    g.bench_function("add_rtt", |b| {
        b.iter(|| {
            x = peer.add(x).expect("add");
        })
    });
    peer.finish().expect("the pingpong peer exits cleanly");
    let mut peer = UdsPeer::start(exe, "echo").expect("start the echo peer");
    for (case, size) in uds::ECHOES {
        let msg = uds::framed(size);
        let mut back = vec![0u8; size];
        g.throughput(Throughput::Bytes(2 * size as u64));
        g.bench_function(case, |b| {
            b.iter(|| {
                let n = peer.echo(&msg, &mut back).expect("echo");
                assert_eq!(n, size);
            })
        });
    }
    peer.finish().expect("the echo peer exits cleanly");
    g.finish();
}

criterion_group! {
    name = cases;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = floor_uds, add_rtt, echo, stream, concurrency
}
criterion_main!(cases);
