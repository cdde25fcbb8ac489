//! Byte tunnels over a channel pair, direct and through a proxy: both
//! directions with half-close, backpressure, and a dropped end.

use super::*;

async fn tunnel_carries_bytes_both_ways_with_half_close(client: Connection) {
    let calc = CalculatorClient::new(client.clone());
    let (tunnel, end) = Tunnel::open(&client).unwrap();
    let piping = tokio::spawn({
        let calc = calc.clone();
        async move { calc.pipe(end).await }
    });
    let data: Vec<u8> = (0..(3u32 << 20) + 17).map(|i| (i % 253) as u8).collect();
    let (mut r, mut w) = tokio::io::split(tunnel);
    let writing = tokio::spawn({
        let data = data.clone();
        async move {
            w.write_all(&data).await.unwrap();
            // Half-close: the server sees the end, and still answers.
            w.shutdown().await.unwrap();
            w
        }
    });
    let mut back = Vec::new();
    bounded("the echo", r.read_to_end(&mut back)).await.unwrap();
    assert!(
        back == data,
        "the bytes come back in order ({} of {})",
        back.len(),
        data.len()
    );
    assert_eq!(bounded("pipe", piping).await.unwrap().unwrap(), data.len() as u64);
    drop(bounded("writer", writing).await.unwrap());
}

async fn tunnel_backpressure_stalls_only_the_unread_tunnel(client: Connection) {
    let calc = CalculatorClient::new(client.clone());
    let (mut held, end) = Tunnel::open(&client).unwrap();
    bounded("hold", calc.hold(end)).await.unwrap();
    let total = 8 * held.chunk_size().max(256 << 10);
    let data = vec![7u8; total];
    let stalled = tokio::spawn(async move {
        held.write_all(&data).await.unwrap();
        held.shutdown().await.unwrap();
        held
    });
    // Another tunnel flows meanwhile.
    tunnel_carries_bytes_both_ways_with_half_close(client.clone()).await;
    assert!(
        !stalled.is_finished(),
        "the writer of the unread tunnel waits for credit"
    );
    // Reading releases it.
    assert_eq!(bounded("drain", calc.drain()).await.unwrap(), total as u64);
    let mut held = bounded("the stalled writer", stalled).await.unwrap();
    let mut rest = Vec::new();
    bounded("the server's end", held.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
}

async fn tunnel_a_dropped_end_is_an_error_not_an_end(client: Connection) {
    let calc = CalculatorClient::new(client.clone());
    let (mut tunnel, end) = Tunnel::open(&client).unwrap();
    bounded("hold", calc.hold(end)).await.unwrap();
    tunnel.write_all(b"some bytes").await.unwrap();
    tunnel.flush().await.unwrap();
    // The holder drops its end (without shutting it down).
    drop(calc.connection().clone());
    let (mut other, end) = Tunnel::open(&client).unwrap();
    bounded("hold", calc.hold(end)).await.unwrap(); // replaces (drops) the first
    let mut buf = Vec::new();
    let err = bounded("read", tunnel.read_to_end(&mut buf)).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
    assert!(err.to_string().contains("dropped"), "{err}");
    // Writing into a tunnel whose reader is gone fails too: at the latest
    // once the writes outgrow the credit window (4 MiB is four default
    // windows), since the reset ends the wait for credit.
    let failed = bounded("writes into a dropped tunnel", async {
        for _ in 0..1024 {
            if let Err(e) = tunnel.write_all(&[0; 4096]).await.and(tunnel.flush().await) {
                return Some(e);
            }
        }
        None
    })
    .await;
    let e = failed.expect("writes fail once the reader is gone");
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    other.shutdown().await.unwrap();
    assert_eq!(bounded("drain", calc.drain()).await.unwrap(), 0);
}

pub(crate) async fn tunnel_direct<F: Factory>(f: F) {
    let p = direct(&f).await;
    tunnel_carries_bytes_both_ways_with_half_close(p.client.clone()).await;
    tunnel_backpressure_stalls_only_the_unread_tunnel(p.client.clone()).await;
    tunnel_a_dropped_end_is_an_error_not_an_end(p.client.clone()).await;
    drop(p.server);
}

pub(crate) async fn tunnel_forwarded<F: Factory>(f: F) {
    let p = proxied(&f, Settings::default(), Settings::default(), Settings::default()).await;
    let v = bounded("open", p.client.open(meta("target", "calc"), None))
        .await
        .unwrap();
    tunnel_carries_bytes_both_ways_with_half_close(v.clone()).await;
    tunnel_backpressure_stalls_only_the_unread_tunnel(v.clone()).await;
    tunnel_a_dropped_end_is_an_error_not_an_end(v).await;
}
