//! Byte tunnels: a pair of channels as a `tokio` byte stream.
//!
//! [`Tunnel::open`] creates two channels on a connection — one each way —
//! and returns the local [`Tunnel`] and the peer's [`TunnelEnd`], which is
//! passed to the peer inside a call (it is a facet type, like [`Tx`] and
//! [`Rx`]); the peer turns it into its own `Tunnel` with [`Tunnel::from_end`].
//! Both ends implement [`AsyncRead`] and [`AsyncWrite`], e.g. to stream a file
//! or to proxy a socket through a cell with `tokio::io::copy_bidirectional`.
//!
//! - **Chunks**: each `poll_write` takes up to one chunk (64 KiB, or less if
//!   the receiver's credit window or the link's frame is smaller) and sends it
//!   as one channel item of raw bytes (no encoding); reads hand out the
//!   chunks in order, split as the reader's buffers require.
//! - **Backpressure** is the channel's credit: a write waits while the
//!   reader's side has not consumed (and so not granted back) its window. A
//!   write returns once its chunk is accepted; the next write, a flush or a
//!   shutdown waits for it to be sent.
//! - **Half-close**: [`AsyncWriteExt::shutdown`](tokio::io::AsyncWriteExt::shutdown)
//!   closes this direction (the peer reads end-of-stream after the bytes
//!   sent so far) while the other direction stays open.
//! - **Abort**: dropping a tunnel without shutting it down tells the peer's
//!   reads an error (`ConnectionAborted`), not a clean end; dropping it also
//!   stops the peer's writes (`BrokenPipe`), as a closed socket would.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use facet::Facet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::channel::{ChannelError, Rx, Tx};
use crate::session::Connection;

/// Largest chunk a write sends as one item.
pub const TUNNEL_CHUNK: usize = 64 << 10;

/// The peer's end of a tunnel: pass it in a call, and turn it into a
/// [`Tunnel`] with [`Tunnel::from_end`] on the other side.
#[derive(Facet, Debug)]
pub struct TunnelEnd {
    /// Carries what the peer writes.
    tx: Tx<Vec<u8>>,
    /// Carries what the peer reads.
    rx: Rx<Vec<u8>>,
}

type SendFuture = Pin<Box<dyn Future<Output = Result<(), ChannelError>> + Send>>;
type RecvFuture = Pin<Box<dyn Future<Output = (Rx<Vec<u8>>, Option<Result<Vec<u8>, ChannelError>>)> + Send>>;

/// One end of a byte tunnel (see the module docs).
pub struct Tunnel {
    /// The writing channel; `None` once shut down.
    tx: Option<Arc<Tx<Vec<u8>>>>,
    /// Largest chunk per item.
    chunk: usize,
    /// The chunk being sent, or the close being sent.
    sending: Option<SendFuture>,
    /// Set once a shutdown completed.
    shut: bool,
    /// A write failure, returned by every later write.
    write_failed: Option<(io::ErrorKind, String)>,
    /// The reading channel, while no receive is in flight.
    rx: Option<Rx<Vec<u8>>>,
    receiving: Option<RecvFuture>,
    /// The current chunk and how much of it was read.
    buf: Vec<u8>,
    pos: usize,
    /// End of stream (or a read failure, returned by every later read).
    read_end: Option<Option<(io::ErrorKind, String)>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("tx", &self.tx.as_ref().map(|t| t.id()))
            .field("rx", &self.rx.as_ref().map(|r| r.id()))
            .field("chunk", &self.chunk)
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    /// Creates a tunnel on `conn`: this side's end, and the peer's end to
    /// pass in a call.
    pub fn open(conn: &Connection) -> Result<(Tunnel, TunnelEnd), ChannelError> {
        let (out_tx, out_rx) = conn.channel::<Vec<u8>>()?;
        let (in_tx, in_rx) = conn.channel::<Vec<u8>>()?;
        Ok((
            Tunnel::new(out_tx, in_rx),
            TunnelEnd {
                tx: in_tx,
                rx: out_rx,
            },
        ))
    }

    /// The peer's end of a tunnel, received in a call, as a tunnel.
    pub fn from_end(end: TunnelEnd) -> Tunnel {
        Tunnel::new(end.tx, end.rx)
    }

    fn new(tx: Tx<Vec<u8>>, rx: Rx<Vec<u8>>) -> Tunnel {
        let chunk = tx.max_item().unwrap_or(TUNNEL_CHUNK).clamp(1, TUNNEL_CHUNK);
        Tunnel {
            tx: Some(Arc::new(tx)),
            chunk,
            sending: None,
            shut: false,
            write_failed: None,
            rx: Some(rx),
            receiving: None,
            buf: Vec::new(),
            pos: 0,
            read_end: None,
        }
    }

    /// Largest number of bytes one write sends as one item.
    pub fn chunk_size(&self) -> usize {
        self.chunk
    }

    /// Drives the send in flight, if any.
    fn poll_sending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((kind, msg)) = &self.write_failed {
            return Poll::Ready(Err(io::Error::new(*kind, msg.clone())));
        }
        if let Some(f) = self.sending.as_mut() {
            let r = ready!(f.as_mut().poll(cx));
            self.sending = None;
            if let Err(e) = r {
                let kind = match e {
                    ChannelError::Reset { .. } => io::ErrorKind::BrokenPipe,
                    _ => io::ErrorKind::ConnectionAborted,
                };
                let msg = format!("the tunnel could not send: {e}");
                self.write_failed = Some((kind, msg.clone()));
                return Poll::Ready(Err(io::Error::new(kind, msg)));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_sending(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let Some(tx) = this.tx.clone() else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the tunnel's writing side was shut down",
            )));
        };
        let n = buf.len().min(this.chunk);
        let data = buf[..n].to_vec();
        this.sending = Some(Box::pin(async move { tx.send_bytes(&data).await }));
        // Start sending now; the next write, flush or shutdown finishes it.
        if let Poll::Ready(Err(e)) = this.poll_sending(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_sending(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            ready!(this.poll_sending(cx))?;
            if this.shut {
                return Poll::Ready(Ok(()));
            }
            let Some(tx) = this.tx.take() else {
                return Poll::Ready(Ok(()));
            };
            // The chunk in flight is done, so this is the only reference.
            match Arc::try_unwrap(tx) {
                Ok(tx) => this.sending = Some(Box::pin(tx.close())),
                Err(tx) => tx.abort("the tunnel's writer was shut down while a write was in flight"),
            }
            this.shut = true;
        }
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pos < this.buf.len() {
                let n = out.remaining().min(this.buf.len() - this.pos);
                out.put_slice(&this.buf[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            match &this.read_end {
                Some(None) => return Poll::Ready(Ok(())),
                Some(Some((kind, msg))) => return Poll::Ready(Err(io::Error::new(*kind, msg.clone()))),
                None => {}
            }
            if this.receiving.is_none() {
                let Some(mut rx) = this.rx.take() else {
                    return Poll::Ready(Ok(()));
                };
                this.receiving = Some(Box::pin(async move {
                    let r = rx.recv_bytes().await;
                    (rx, r)
                }));
            }
            let Some(f) = this.receiving.as_mut() else {
                continue;
            };
            let (rx, r) = ready!(f.as_mut().poll(cx));
            this.receiving = None;
            this.rx = Some(rx);
            match r {
                None => this.read_end = Some(None),
                Some(Ok(bytes)) => {
                    this.buf = bytes;
                    this.pos = 0;
                }
                Some(Err(e)) => {
                    this.read_end = Some(Some((
                        io::ErrorKind::ConnectionAborted,
                        format!("the tunnel broke: {e}"),
                    )))
                }
            }
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if !self.shut
            && let Some(tx) = &self.tx
        {
            tx.abort("the other end of the tunnel was dropped without shutting it down");
        }
    }
}
