//! The relay cell: serves [`osmos_tests::Relay`], calling other cells
//! (serving [`osmos_tests::TestCell`]) through the host.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use osmos_session::control::{META_CALLER, META_CELL};
use osmos_session::wire::{MetaEntry, MetaValue};
use osmos_session::{CallOptions, Connection};
use osmos_tests::{Relay, RelayDispatcher, TestCellClient};

struct Cell {
    host: Arc<OnceLock<Connection>>,
}

impl Cell {
    /// A client of `cell`'s `TestCell`, through the host.
    async fn reach(&self, cell: &str) -> Result<TestCellClient, String> {
        let host = self.host().await?;
        let conn = osmos_plugin_sdk::connect_to_cell(&host, cell)
            .await
            .map_err(|e| format!("could not reach cell '{cell}': {e}"))?;
        Ok(TestCellClient::new(conn))
    }

    /// The connection to the host.
    async fn host(&self) -> Result<Connection, String> {
        // The connection is stored right after the handshake, which the host
        // may already have answered with this call.
        let start = Instant::now();
        let host = loop {
            if let Some(c) = self.host.get() {
                break c.clone();
            }
            if start.elapsed() > Duration::from_secs(5) {
                return Err("the cell never learned its connection to the host".into());
            }
            tokio::task::yield_now().await;
        };
        Ok(host)
    }
}

impl Relay for Cell {
    async fn add(&self, a: u32, b: u32) -> Result<u32, String> {
        Ok(a.wrapping_add(b))
    }

    async fn stream_via(&self, cell: String, n: u32) -> Result<(u64, u64), String> {
        let other = self.reach(&cell).await?;
        let conn = other.connection().clone();
        let (tx, mut rx) = conn.channel::<u32>().map_err(|e| e.to_string())?;
        let counting = tokio::spawn({
            let other = other.clone();
            async move { other.count(n, tx).await }
        });
        let mut down = 0u64;
        let mut expected = 0u32;
        while let Some(v) = rx.recv().await {
            let v = v.map_err(|e| e.to_string())?;
            if v != expected {
                return Err(format!("item {expected} arrived as {v}"));
            }
            expected += 1;
            down += u64::from(v);
        }
        let counted = counting
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if counted != n || expected != n {
            return Err(format!(
                "{expected} items of {n} arrived; the cell counted {counted}"
            ));
        }
        let (tx, rx) = conn.channel::<u64>().map_err(|e| e.to_string())?;
        let summing = tokio::spawn({
            let other = other.clone();
            async move { other.sum(rx).await }
        });
        for i in 1..=u64::from(n) {
            tx.send(&i).await.map_err(|e| e.to_string())?;
        }
        tx.close().await.map_err(|e| e.to_string())?;
        let up = summing
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok((down, up))
    }

    async fn hang_via(&self, cell: String) -> Result<String, String> {
        let other = self.reach(&cell).await?;
        match other.hang().await {
            Ok(()) => Err("the hanging call returned".into()),
            Err(e) => Ok(e.to_string()),
        }
    }

    async fn pid_via(&self, cell: String) -> Result<u32, String> {
        self.reach(&cell).await?.pid().await.map_err(|e| e.to_string())
    }

    async fn caller_via(&self, cell: String, claim: String) -> Result<(String, Option<String>), String> {
        if claim.is_empty() {
            return self.reach(&cell).await?.caller().await.map_err(|e| e.to_string());
        }
        // Connect as `connect_to_cell` does, but claim to be someone else.
        let entry = |key: &str, value: &str| MetaEntry {
            key: key.to_string(),
            value: MetaValue::Str(value.to_string()),
        };
        let host = self.host().await?;
        let conn = host
            .open(vec![entry(META_CELL, &cell), entry(META_CALLER, &claim)], None)
            .await
            .map_err(|e| format!("could not reach cell '{cell}': {e}"))?;
        let options = CallOptions::default().with_metadata(META_CALLER, MetaValue::Str(claim));
        TestCellClient::new(conn)
            .caller_with(options)
            .await
            .map_err(|e| e.to_string())
    }
}

fn main() {
    let host = Arc::new(OnceLock::new());
    let dispatcher = RelayDispatcher::new(Cell { host: host.clone() });
    osmos_plugin_sdk::run_with(
        "relay-cell: the osmos test suite's cell that calls other cells through the host",
        dispatcher,
        move |cell| async move {
            let _ = host.set(cell.connection().clone());
            cell.serve().await
        },
    );
}
