//! Small items gathered into `Batch` frames while the receiver is behind:
//! over the links that report a backlog (memory, shm, a Unix socket's
//! unread bytes), between two real
//! sessions and against a raw receiver that reads the frames itself; and
//! batches a lying peer sends, over every link (in `raw_bodies.rs`).

use super::*;

/// A handler that sends item after item without pausing, on a runtime with
/// one thread: the receiving session cannot read between two items, so
/// after the first all are gathered. Every item arrives, in order, before
/// the call's answer, in far fewer frames than items.
async fn a_stream_sent_without_pausing_shares_frames<F: Factory>(f: F) {
    let p = pair(&f).await;
    let calc = CalculatorClient::new(p.client.clone());
    for round in 0..3 {
        let before = p.client.stats().frames_received;
        let sent_before = p.server.stats().frames_sent;
        let (tx, mut rx) = p.client.channel::<u32>().unwrap();
        let items = async {
            let mut next = 0u32;
            while let Some(item) = rx.recv().await {
                assert_eq!(item.unwrap(), next, "round {round}: items arrive in order");
                next += 1;
            }
            next
        };
        let (sent, received) =
            bounded("the stream", async { tokio::join!(calc.count(2000, tx), items) }).await;
        assert_eq!(sent.unwrap(), 2000);
        assert_eq!(received, 2000, "round {round}: every item arrived");
        let frames = p.client.stats().frames_received - before;
        assert!(
            frames < 100,
            "round {round}: 2000 items, their close and the answer took {frames} frames"
        );
        // The sender counts each batch as the frame it is.
        let sent = p.server.stats().frames_sent - sent_before;
        assert_eq!(sent, frames, "round {round}: frames sent and received");
    }
}

#[tokio::test]
async fn memory_a_stream_sent_without_pausing_shares_frames() {
    a_stream_sent_without_pausing_shares_frames(MemoryFactory).await;
}

#[tokio::test]
async fn shm_a_stream_sent_without_pausing_shares_frames() {
    a_stream_sent_without_pausing_shares_frames(ShmFactory).await;
}

#[tokio::test]
async fn unix_a_stream_sent_without_pausing_shares_frames() {
    a_stream_sent_without_pausing_shares_frames(UnixFactory).await;
}

/// A client against a raw peer that reads nothing until the test says: the
/// client's items wait in a batch while the peer is behind, and the batch
/// leaves once the sending task pauses, with nothing else sent after it.
/// Once the peer has caught up, an item goes alone again; the close comes
/// after every item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_senders_batch_leaves_and_a_caught_up_peer_gets_items_alone() {
    let (mut raw, client) = raw_against_client().await;
    let calc = CalculatorClient::new(client.clone());
    let (tx, rx) = client.channel::<u64>().unwrap();
    // The raw peer never answers: the call only hands it the channel.
    let _call = tokio::spawn(async move { calc.sum(rx).await });
    // The call is unread when the items go: the peer is behind.
    for i in 0..10u64 {
        bounded("a send", tx.send(&i)).await.unwrap();
    }
    let call = raw.recv().await.expect("the call");
    let Message::Call { channels, .. } = wire::decode(&call).unwrap() else {
        panic!("expected the call first")
    };
    let channel = channels[0];
    // Nothing is sent after the tenth item: its batch leaves on its own.
    let mut got = Vec::new();
    let mut batches = 0;
    while got.len() < 10 {
        let frame = raw.recv().await.expect("the items");
        batches += usize::from(matches!(wire::decode(&frame).unwrap(), Message::Batch { .. }));
        got.extend(items_in(&frame, channel));
    }
    assert_eq!(got, (0..10u64).collect::<Vec<_>>(), "every item, in order");
    assert!(
        batches >= 1,
        "10 items sent while the peer was behind came without a batch"
    );
    // Caught up: the next item comes alone, and the close after it.
    bounded("a send", tx.send(&10)).await.unwrap();
    let frame = raw.recv().await.expect("the item");
    assert!(
        matches!(wire::decode(&frame).unwrap(), Message::Item { .. }),
        "an item for a peer that has read everything came in a batch"
    );
    assert_eq!(items_in(&frame, channel), vec![10]);
    bounded("the close", tx.close()).await.unwrap();
    let frame = raw.recv().await.expect("the close");
    assert!(matches!(wire::decode(&frame).unwrap(), Message::Close { .. }));
}

/// The `u64` items for `channel` in one frame: an item, or a batch's items.
fn items_in(frame: &[u8], channel: u64) -> Vec<u64> {
    let decode_item = |m: Message<'_>| match m {
        Message::Item { channel: c, payload } => {
            assert_eq!(c, channel, "an item for another channel");
            // A u64 below 128 is one byte in postcard.
            assert_eq!(payload.len(), 1, "an item of the test's small numbers");
            u64::from(payload[0])
        }
        m => panic!("expected an item, got {}", m.kind()),
    };
    match wire::decode(frame).unwrap() {
        Message::Batch { messages } => split_batch(messages)
            .into_iter()
            .map(|m| decode_item(wire::decode(m).unwrap()))
            .collect(),
        m => vec![decode_item(m)],
    }
}

/// A batch's messages, each length-prefixed (a one-byte length here: the
/// test's messages are short).
pub(crate) fn split_batch(mut messages: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = messages.split_first() {
        assert!(len < 0x80, "a long message in a test batch");
        let (m, rest) = rest.split_at(usize::from(len));
        out.push(m);
        messages = rest;
    }
    out
}

/// `messages` as one batch's bytes (each shorter than 128 bytes).
pub(crate) fn batch_of(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        assert!(m.len() < 0x80, "a long message in a test batch");
        out.push(m.len() as u8);
        out.extend_from_slice(m);
    }
    out
}
