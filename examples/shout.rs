//! A host and a cell in one program, as in the `osmos` crate docs: run by
//! hand it is the host, spawns itself as a sandboxed cell and calls it.
//!
//! ```text
//! cargo run -p osmos --example shout
//! ```

use osmos::Facet;

/// Why a word was refused. Types sent over osmos derive `Facet`;
/// `crate = osmos::facet` lets the derive work without a direct `facet`
/// dependency.
#[derive(Debug, Facet)]
#[facet(crate = osmos::facet)]
pub struct Refused {
    /// Why.
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.reason)
    }
}

/// How loud to shout. Enums need an explicit `repr` for facet.
#[derive(Debug, Clone, Copy, Facet)]
#[facet(crate = osmos::facet)]
#[repr(u8)]
pub enum Volume {
    /// Upper case.
    Loud,
    /// Upper case and three exclamation marks.
    Louder,
}

/// What the cell serves.
#[osmos::service]
pub trait Shout {
    /// Shouts `word`, or refuses an empty one.
    async fn shout(&self, word: &str, volume: Volume) -> Result<String, Refused>;
    /// Counts the characters of `words`.
    async fn count(&self, words: &[String]) -> u64;
}

struct Cell;

impl Shout for Cell {
    async fn shout(&self, word: &str, volume: Volume) -> Result<String, Refused> {
        if word.is_empty() {
            return Err(Refused {
                reason: "nothing to shout".into(),
            });
        }
        Ok(match volume {
            Volume::Loud => word.to_uppercase(),
            Volume::Louder => format!("{}!!!", word.to_uppercase()),
        })
    }
    async fn count(&self, words: &[String]) -> u64 {
        words.iter().map(|w| w.chars().count() as u64).sum()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Started by a host (it passes `OSMOS_*` variables and fds): serve.
    if std::env::var_os(osmos::control::ENV_CELL_NAME).is_some() {
        osmos::cell::run("shout: shouts words", || ShoutDispatcher::new(Cell));
    }
    // Run by hand: be the host, and spawn this same program as the cell.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let me = std::env::current_exe()?;
        let cell = osmos::host::CellBuilder::new(me).name("shout").spawn().await?;
        let shout: ShoutClient = cell.client()?;
        println!("{}", shout.shout("hello", Volume::Louder).await?);
        match shout.shout("", Volume::Loud).await {
            Err(osmos::CallError::User(refused)) => println!("refused: {}", refused.reason),
            other => println!("unexpected: {other:?}"),
        }
        let words = ["a".to_string(), "bcd".to_string()];
        println!("{} characters", shout.count(&words).await?);
        cell.shutdown(std::time::Duration::from_secs(5)).await;
        Ok(())
    })
}
