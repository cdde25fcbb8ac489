//! `#[osmos::service]` in a crate that depends on `osmos-session` (and
//! `osmos-macros`) without the `osmos` facade: the generated code names
//! `::osmos_session`. The attribute's own tests (`session/macros/tests/`)
//! cover the facade and the rules.

use crate::common;

use std::convert::Infallible;

use common::bounded;
use osmos_session::link::memory as mem;
use osmos_session::{CallError, SessionBuilder};

/// A `Result` alias (its name ends in `Result`, which is how the attribute
/// knows it is one).
type WordResult<T> = Result<T, String>;

/// Counts words.
#[osmos_macros::service]
pub trait Words {
    /// The number of words in `text`.
    async fn count(&self, text: &str) -> u32;
    /// The `n`th word, or why there is none.
    async fn nth(&self, text: String, n: u32) -> WordResult<String>;
}

struct Impl;
impl Words for Impl {
    async fn count(&self, text: &str) -> u32 {
        text.split_whitespace().count() as u32
    }
    async fn nth(&self, text: String, n: u32) -> WordResult<String> {
        let words = text.split_whitespace().count();
        text.split_whitespace()
            .nth(n as usize)
            .map(str::to_string)
            .ok_or_else(|| format!("{words} words, no word {n}"))
    }
}

#[tokio::test]
async fn the_attribute_works_without_the_facade() {
    let (ours, theirs) = mem::pair(common::MAX_FRAME, 64);
    let (server, client) = bounded("handshakes", async {
        tokio::join!(
            SessionBuilder::new()
                .serve(WordsDispatcher::new(Impl))
                .accept(theirs),
            SessionBuilder::new().initiate(ours)
        )
    })
    .await;
    let (_server, words) = (server.unwrap(), WordsClient::new(client.unwrap()));
    let n: Result<u32, CallError<Infallible>> = bounded("count", words.count("a shared memory ring")).await;
    assert_eq!(n.unwrap(), 4);
    assert_eq!(bounded("nth", words.nth("a b c".into(), 1)).await.unwrap(), "b");
    match bounded("nth", words.nth("a b c".into(), 5)).await {
        Err(CallError::User(e)) => assert_eq!(e, "3 words, no word 5"),
        other => panic!("expected the service's error, got {other:?}"),
    }
}
