//! Tunnel streams and the byte pumps between them and TCP connections.
//!
//! A proxied connection is one TCP socket (the local client at the near gateway, the real node
//! at the far one) and one tunnel stream. Two pumps run in one task, one per direction; each
//! ends with a half-close of its destination (TCP `shutdown(SHUT_WR)`, QUIC `FIN`, yamux
//! `FIN`), so a client that closes its sending side still gets the rest of the answer.
//!
//! Memory: the TCP → tunnel pump holds no buffer while the socket is idle (it waits for
//! readiness first), and the QUIC → TCP pump reads the connection's own received chunks, so an
//! idle proxied connection over QUIC holds no copy buffers at all.

use std::io;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::gate::Gated;
use super::header::{ANSWER_LEN, Answer};
use super::mux::{MuxReader, MuxWriter};

/// Largest read from a TCP socket in one go, once a read has filled its buffer.
const TCP_READ: usize = 256 * 1024;
/// Read size of a quiet TCP socket (the last read found less than this): a size jemalloc
/// serves from its per-thread cache (up to 32 KiB by default), where a fresh `TCP_READ`
/// buffer per message costs an arena allocation and free (about 3000 instructions, 10-15 % of
/// a gateway's user-space work per 64-byte round trip, counted with callgrind).
const QUIET_READ: usize = 16 * 1024;
/// Largest QUIC chunk taken in one read.
const QUIC_CHUNK: usize = 256 * 1024;
/// Received chunks (QUIC or yamux) written to TCP in one vectored write while a stream is
/// busy.
const QUIC_BATCH: usize = 32;

/// What the near and the far end share for every proxied connection: the permits that bound
/// how many run at once, the priority classes, and the stall time-out.
#[derive(Debug, Clone)]
pub struct Proxying {
    /// Proxied connections at once (`tunnel.max_connections`), one pool for both ends.
    pub connections: std::sync::Arc<tokio::sync::Semaphore>,
    /// Priority classes by port (`tunnel.priority`).
    pub priority: super::class::Priorities,
    /// The longest wait for a TCP peer to take tunnel bytes (`tunnel.stall_timeout_ms`);
    /// `None`, no limit.
    pub stall: Option<Duration>,
}

/// One bidirectional tunnel stream.
pub enum TunnelStream {
    /// A QUIC bidirectional stream.
    Quic(quinn::SendStream, quinn::RecvStream),
    /// A yamux stream over a TCP+TLS tunnel.
    Mux(MuxReader, MuxWriter),
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TunnelStream::Quic(..) => "TunnelStream::Quic",
            TunnelStream::Mux(..) => "TunnelStream::Mux",
        })
    }
}

/// The receiving half of a tunnel stream.
pub enum TunnelRead {
    /// QUIC.
    Quic(quinn::RecvStream),
    /// yamux.
    Mux(MuxReader),
}

/// The sending half of a tunnel stream.
pub enum TunnelWrite {
    /// QUIC.
    Quic(quinn::SendStream),
    /// yamux.
    Mux(MuxWriter),
}

impl TunnelStream {
    /// Splits the stream into its halves.
    pub fn split(self) -> (TunnelRead, TunnelWrite) {
        match self {
            TunnelStream::Quic(s, r) => (TunnelRead::Quic(r), TunnelWrite::Quic(s)),
            TunnelStream::Mux(r, w) => (TunnelRead::Mux(r), TunnelWrite::Mux(w)),
        }
    }
}

impl TunnelRead {
    /// Reads the far gateway's answer.
    pub async fn answer(&mut self) -> io::Result<Answer> {
        let mut bytes = [0u8; ANSWER_LEN];
        match self {
            TunnelRead::Quic(r) => {
                AsyncReadExt::read_exact(r, &mut bytes).await?;
            }
            TunnelRead::Mux(r) => {
                r.read_exact(&mut bytes).await?;
            }
        }
        Answer::decode(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Stops the peer's sending side (QUIC `STOP_SENDING`); yamux has no equivalent.
    fn stop(&mut self) {
        if let TunnelRead::Quic(r) = self {
            let _ = r.stop(quinn::VarInt::from_u32(0));
        }
    }
}

impl TunnelWrite {
    /// Sets the stream's priority class: a QUIC stream priority, a yamux session's turn
    /// order ([`super::class`]). Call it before the first write: quinn applies a new
    /// priority only once the data already queued has gone.
    pub fn set_class(&mut self, class: super::class::Class) {
        match self {
            TunnelWrite::Quic(w) => {
                // fails only for a stream already finished or reset
                let _ = w.set_priority(class.quic_priority());
            }
            TunnelWrite::Mux(w) => w.set_class(class),
        }
    }

    /// Writes every byte of `buf`.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            TunnelWrite::Quic(w) => w.write_all(buf).await.map_err(io::Error::from),
            TunnelWrite::Mux(w) => w.write_all(buf).await,
        }
    }

    /// Writes the bytes of a read buffer. QUIC keeps them until the peer acknowledges them,
    /// so they are handed over without a copy, unless the buffer is less than a quarter full
    /// ([`right_sized`]); yamux encrypts them into its TLS record at once.
    pub async fn write_bytes(&mut self, buf: bytes::BytesMut) -> io::Result<()> {
        match self {
            TunnelWrite::Quic(w) => w
                .write_chunk(right_sized(buf))
                .await
                .map_err(io::Error::from),
            TunnelWrite::Mux(w) => w.write_all(&buf).await,
        }
    }

    /// Writes the bytes of a read buffer as [`TunnelWrite::write_bytes`] does, then ends the
    /// sending side: for yamux the FIN rides on the last data frame, for QUIC in the same
    /// packet as the data.
    pub async fn write_last(&mut self, buf: bytes::BytesMut) -> io::Result<()> {
        match self {
            TunnelWrite::Quic(_) => {
                self.write_bytes(buf).await?;
                self.finish().await
            }
            TunnelWrite::Mux(w) => {
                let mut rest = &buf[..];
                loop {
                    let n = std::future::poll_fn(|cx| w.poll_write_fin(cx, rest)).await?;
                    rest = &rest[n..];
                    if rest.is_empty() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Ends the sending side (FIN): the peer reads end-of-stream after the bytes sent.
    pub async fn finish(&mut self) -> io::Result<()> {
        match self {
            TunnelWrite::Quic(w) => w
                .finish()
                .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e)),
            TunnelWrite::Mux(w) => w.shutdown().await,
        }
    }

    /// The stream as a plain async writer, for [`super::header::refuse`]; shutting it down
    /// ends the sending side as [`TunnelWrite::finish`] does.
    pub fn as_async_write(&mut self) -> &mut (dyn AsyncWrite + Unpin + Send) {
        match self {
            TunnelWrite::Quic(w) => w,
            TunnelWrite::Mux(w) => w,
        }
    }

    /// Abandons the stream (QUIC `RESET_STREAM`, yamux RST; nothing for a yamux stream that
    /// has sent nothing yet).
    pub fn reset(&mut self) {
        match self {
            TunnelWrite::Quic(w) => {
                let _ = w.reset(quinn::VarInt::from_u32(0));
            }
            TunnelWrite::Mux(w) => w.reset(),
        }
    }
}

/// Byte counters of one proxied connection, kept in the gateway's metrics.
pub use crate::metrics::TunnelCounters as Counters;

/// A TCP socket took none of the bytes waiting for it for the stall time-out
/// ([`super::TunnelConfig::stall_timeout_ms`]): its reader (a node, or a local client) has
/// stopped reading. Carried inside an [`io::ErrorKind::TimedOut`] error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled;

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the TCP peer read nothing for the stall time-out")
    }
}

impl std::error::Error for Stalled {}

/// Whether `e` is a [`Stalled`] write.
fn is_stalled(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Stalled>())
}

/// Writes all of `chunks` to a TCP socket in vectored writes (`writev`), so a busy stream
/// costs one system call per batch rather than one per received chunk. A write is tried at
/// once (tokio answers `WouldBlock` without a system call while the socket is known not to be
/// writable); only a refused one waits for writability.
///
/// With `stall` set, a wait for the socket to take more bytes that lasts that long fails with
/// [`Stalled`] (kind [`io::ErrorKind::TimedOut`]); any progress starts the wait anew, so a slow
/// reader is never cut, only one that stopped. The timer is set only when a write has to wait.
async fn tcp_write_chunks<B: bytes::Buf>(
    tcp: &TcpStream,
    chunks: &mut [B],
    stall: Option<Duration>,
) -> io::Result<()> {
    let mut first = 0;
    loop {
        // skip what is written (and empty chunks)
        while first < chunks.len() && !chunks[first].has_remaining() {
            first += 1;
        }
        if first == chunks.len() {
            return Ok(());
        }
        let written = {
            let mut slices = [io::IoSlice::new(&[]); QUIC_BATCH];
            let n = (chunks.len() - first).min(QUIC_BATCH);
            for (slice, chunk) in slices.iter_mut().zip(&chunks[first..first + n]) {
                *slice = io::IoSlice::new(chunk.chunk());
            }
            tcp.try_write_vectored(&slices[..n])
        };
        let mut n = match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match stall {
                    None => tcp.writable().await?,
                    Some(stall) => tokio::time::timeout(stall, tcp.writable())
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, Stalled))??,
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        while n > 0 && first < chunks.len() {
            let step = n.min(chunks[first].remaining());
            chunks[first].advance(step);
            n -= step;
            first += usize::from(!chunks[first].has_remaining());
        }
    }
}

/// Whether a QUIC read that did not wait ended the stream: `Some(Ok)` at its end,
/// `Some(Err)` when it failed, `None` while more may come.
fn stream_end<T>(read: Option<Result<Option<T>, quinn::ReadError>>) -> Option<io::Result<()>> {
    match read {
        Some(Ok(None)) => Some(Ok(())),
        Some(Err(e)) => Some(Err(io::Error::from(e))),
        Some(Ok(Some(_))) | None => None,
    }
}

/// Polls `future` once: its output if it is ready now, `None` if it would wait.
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// Writes all of `buf` to a TCP socket shared by reference (`stall` as for
/// [`tcp_write_chunks`]).
async fn tcp_write_all(tcp: &TcpStream, buf: &[u8], stall: Option<Duration>) -> io::Result<()> {
    tcp_write_chunks(tcp, &mut [buf], stall).await
}

fn tcp_shutdown_write(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write);
}

/// Appends to `buf` up to `max` bytes that `tcp` has already received, without waiting:
/// returns how many (0 when nothing is queued yet, or at end of stream, which the next read
/// sees again). The bytes go into `buf`'s spare capacity, which is not zeroed first.
///
/// One read, polled once: a short read tells tokio the socket is drained, so the pump that
/// follows waits for the next readiness event instead of finding the queue empty.
///
/// Errors: the socket failed (e.g. reset by the client); `buf` is left as it was.
pub fn read_queued(tcp: &mut TcpStream, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    use bytes::BufMut as _;
    let mut spare = buf.limit(max);
    ready_now(tcp.read_buf(&mut spare)).unwrap_or(Ok(0))
}

/// TCP → tunnel until the socket's end of stream, then FIN. Holds no buffer while the socket
/// is idle; a read goes into fresh uninitialised capacity of [`QUIET_READ`] or, while reads
/// fill it, up to [`TCP_READ`] bytes ([`next_read_size`]), and over QUIC the bytes are handed to
/// the stream without a copy (a read that fills less than a quarter of its buffer is copied to
/// a right-sized one, [`right_sized`]). When the peer's FIN has arrived by the time a read
/// drains the socket, the end-of-stream read follows at once and the FIN leaves with those
/// bytes.
///
/// `lead` goes first, in front of the socket's first bytes (or alone with the FIN when the
/// socket ends without sending any): the far end's answer, which so costs no frame of its own.
/// `tx` and the class counters count only the socket's bytes; the class counters also how long
/// each write waited for the tunnel to take it.
///
/// Reads go through tokio's `AsyncRead`, which takes a short read as proof that the socket is
/// drained: the next turn waits for readiness instead of reading again only to be told
/// `WouldBlock` (one system call less per message on a quiet connection).
async fn tcp_to_tunnel(
    tcp: &mut tokio::net::tcp::ReadHalf<'_>,
    w: &mut TunnelWrite,
    counters: &Counters,
    mut lead: &[u8],
) -> io::Result<()> {
    use bytes::BufMut as _;
    let mut size = QUIET_READ;
    loop {
        let ready = tcp.as_ref().ready(tokio::io::Interest::READABLE).await?;
        let mut buf = bytes::BytesMut::with_capacity(size + lead.len());
        buf.extend_from_slice(std::mem::take(&mut lead));
        let led = buf.len();
        let read = tcp.read_buf(&mut (&mut buf).limit(size)).await?;
        size = next_read_size(size, read);
        if read == 0 {
            return if led == 0 {
                w.finish().await
            } else {
                w.write_last(buf).await
            };
        }
        // the peer had closed its side before this read drained the queue: the read that
        // tells the end (or the error) comes at once
        let end = if ready.is_read_closed() && buf.len() < buf.capacity() {
            match ready_now(tcp.read_buf(&mut buf)) {
                Some(Ok(0)) => Some(Ok(())),
                Some(Err(e)) => Some(Err(e)),
                Some(Ok(_)) | None => None,
            }
        } else {
            None
        };
        let n = buf.len() - led;
        let start = std::time::Instant::now();
        match end {
            Some(Ok(())) => w.write_last(buf).await?,
            _ => w.write_bytes(buf).await?,
        }
        counters.tx.inc_by(n as u64);
        counters.class.wrote(n, start.elapsed());
        if let Some(end) = end {
            return end;
        }
    }
}

/// The TCP → tunnel pump's next read size after a read of `read` bytes into room for `size`:
/// [`TCP_READ`] once a read fills its room (a busy socket), [`QUIET_READ`] once a read finds
/// less than that (a quiet one), otherwise unchanged. A busy socket's reads come back partly
/// filled whenever the gateway outpaces its sender; stepping down on those cost more system
/// calls than it saved (TCP+TLS CPU per GB 1.15 → 1.25 s, alternating transfers), and over QUIC
/// [`right_sized`] already bounds what a partly filled buffer holds.
fn next_read_size(size: usize, read: usize) -> usize {
    if read >= size {
        TCP_READ
    } else if read < QUIET_READ {
        QUIET_READ
    } else {
        size
    }
}

/// A read buffer's bytes to be held until the peer acknowledges them: the buffer itself, or,
/// when less than a quarter of its room is used (a 64-byte message in a 16 KiB buffer, a
/// partial read of a busy socket), a copy of its bytes in a buffer of their size, so held
/// memory stays within four times the bytes in flight.
fn right_sized(buf: bytes::BytesMut) -> bytes::Bytes {
    if buf.len().saturating_mul(4) < buf.capacity() {
        bytes::Bytes::copy_from_slice(&buf)
    } else {
        buf.freeze()
    }
}

/// Tunnel → TCP until the stream's end, then `shutdown(SHUT_WR)` on the socket. Fails with
/// [`Stalled`] when the socket takes nothing for `stall`.
async fn tunnel_to_tcp(
    r: &mut TunnelRead,
    tcp: &TcpStream,
    rx: &Counter,
    stall: Option<Duration>,
) -> io::Result<()> {
    match r {
        TunnelRead::Quic(r) => loop {
            let mut first = match r.read_chunk(QUIC_CHUNK, true).await {
                Ok(Some(chunk)) => chunk.bytes,
                Ok(None) => break,
                Err(e) => return Err(io::Error::from(e)),
            };
            // take what else has arrived without waiting: a busy stream is written in
            // batches of up to QUIC_BATCH chunks; a quiet one (one chunk at a time, e.g. a
            // ping-pong) allocates no batch
            let mut batch = Vec::new();
            let end = match ready_now(r.read_chunk(QUIC_CHUNK, true)) {
                Some(Ok(Some(second))) => {
                    batch = vec![bytes::Bytes::new(); QUIC_BATCH];
                    batch[0] = std::mem::take(&mut first);
                    batch[1] = second.bytes;
                    let more = ready_now(r.read_chunks(&mut batch[2..]));
                    let n = match more {
                        Some(Ok(Some(n))) => n,
                        _ => 0,
                    };
                    batch.truncate(2 + n);
                    stream_end(more)
                }
                next => stream_end(next),
            };
            let chunks = if batch.is_empty() {
                std::slice::from_mut(&mut first)
            } else {
                &mut batch[..]
            };
            let bytes: usize = chunks.iter().map(|c| c.len()).sum();
            tcp_write_chunks(tcp, chunks, stall).await?;
            rx.inc_by(bytes as u64);
            match end {
                Some(Ok(())) => break,
                Some(Err(e)) => return Err(e),
                None => {}
            }
        },
        TunnelRead::Mux(r) => {
            // the chunks the session decrypted, written as they are: no buffer while idle,
            // one vectored write per batch while busy
            let mut chunks = Vec::new();
            loop {
                let n =
                    std::future::poll_fn(|cx| r.poll_chunks(cx, &mut chunks, QUIC_BATCH)).await?;
                if n == 0 {
                    break;
                }
                tcp_write_chunks(tcp, &mut chunks, stall).await?;
                chunks.clear();
                rx.inc_by(n as u64);
            }
        }
    }
    tcp_shutdown_write(tcp);
    Ok(())
}

/// How a spliced connection ended.
#[derive(Debug)]
pub enum Ended {
    /// Both directions reached their end of stream.
    Done,
    /// A direction failed (reset, connection lost).
    Failed(io::Error),
    /// The TCP socket took nothing for the stall time-out while tunnel bytes waited for it
    /// (its reader stopped reading); both sides were reset, so the tunnel windows those bytes
    /// held are given back.
    Stalled,
    /// `stop` fired first (revocation, shutdown); both sides were reset.
    Stopped,
    /// The far gateway refused the stream.
    Refused(Answer),
}

/// Which end of a tunnel stream a splice runs at: where the far gateway's answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End<'a> {
    /// The near end: the first bytes from the tunnel are the far gateway's answer; anything
    /// but `Accepted` ends the splice with [`Ended::Refused`] (bytes the client sent meanwhile
    /// are discarded by the far end).
    Near,
    /// The near end, which has read the far gateway's `Accepted` already.
    NearAnswered,
    /// The far end, which accepted the stream: the `Accepted` answer leads the first bytes the
    /// node sends (or the FIN, if it sends none), so it costs no TLS record or packet of its
    /// own and the caller's first bytes reach the node without waiting for it. The bytes are
    /// those that came with the header and the dial did not send: they go to the node first.
    Far(&'a [u8]),
}

/// Splices `tcp` and a tunnel stream until both directions end or `stop` resolves.
///
/// `end` says where the answer goes (and, at the far end, what to write to `tcp` first).
/// `stall`: the longest wait for `tcp` to take bytes from the tunnel ([`Ended::Stalled`]
/// after it; `None`, no limit).
///
/// Everything is borrowed, and `stop` comes pinned: a value moved into an `async fn` keeps its
/// place in the future's state for the whole call, so moving it on (to split it, to pin it)
/// would hold it twice in every proxied connection's task.
pub async fn splice<S: std::future::Future<Output = ()>>(
    tcp: &mut TcpStream,
    r: &mut TunnelRead,
    w: &mut TunnelWrite,
    end: End<'_>,
    counters: &Counters,
    stall: Option<Duration>,
    stop: std::pin::Pin<&mut S>,
) -> Ended {
    // pinned in place and dropped before the resets below
    let ended = {
        let work = std::pin::pin!(async {
            let (mut tcp_read, tcp_write) = tcp.split();
            let tcp_write = tcp_write.as_ref();
            // pinned where they are built: a future moved into `pin!` would take room in this
            // one's state twice
            let accepted = Answer::Accepted.encode();
            let lead: &[u8] = match end {
                End::Near | End::NearAnswered => &[],
                End::Far(_) => &accepted,
            };
            let up = std::pin::pin!(tcp_to_tunnel(&mut tcp_read, w, counters, lead));
            let down = std::pin::pin!(async {
                let early = match end {
                    End::Near | End::NearAnswered => &[][..],
                    End::Far(early) => early,
                };
                if end == End::Near {
                    match r.answer().await {
                        Ok(Answer::Accepted) => {}
                        Ok(refused) => return Err(Err(refused)),
                        Err(e) => return Err(Ok(e)),
                    }
                }
                if !early.is_empty() {
                    tcp_write_all(tcp_write, early, stall).await.map_err(Ok)?;
                    counters.rx.inc_by(early.len() as u64);
                }
                tunnel_to_tcp(r, tcp_write, &counters.rx, stall)
                    .await
                    .map_err(Ok)
            });
            // each pump polled only when its own socket or stream woke the task
            let (mut up, mut down) = (Gated::new(up), Gated::new(down));
            // a refusal must end the splice even while the client is still sending
            let (mut up_done, mut down_done) = (false, false);
            let mut failure = None;
            while !(up_done && down_done) {
                tokio::select! {
                    biased;
                    res = &mut up, if !up_done => {
                        up_done = true;
                        if let Err(e) = res {
                            failure = Some(e);
                            break;
                        }
                    }
                    res = &mut down, if !down_done => {
                        down_done = true;
                        match res {
                            Ok(()) => {}
                            Err(Err(refused)) => return Ended::Refused(refused),
                            Err(Ok(e)) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                }
            }
            match failure {
                Some(e) if is_stalled(&e) => Ended::Stalled,
                Some(e) => Ended::Failed(e),
                None => Ended::Done,
            }
        });
        // the stop signal (three cancellation tokens at the near end) is polled only when
        // it fires, not on every byte
        tokio::select! {
            biased;
            e = work => e,
            () = Gated::new(stop) => Ended::Stopped,
        }
    };
    if !matches!(ended, Ended::Done) {
        w.reset();
        r.stop();
        // RST rather than FIN: the client must not mistake a cut connection for a clean end
        let _ = socket2::SockRef::from(&*tcp).set_linger(Some(std::time::Duration::ZERO));
    }
    ended
}

/// Async reads of a [`TunnelRead`], for [`super::header::read_request`].
impl AsyncRead for TunnelRead {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelRead::Quic(r) => AsyncRead::poll_read(std::pin::Pin::new(r), cx, buf),
            TunnelRead::Mux(r) => std::pin::Pin::new(r).poll_read(cx, buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Both ends of a TCP connection on loopback: (connecting side, accepted side).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (client, server) = tokio::join!(
            TcpStream::connect(listener.local_addr().expect("address")),
            listener.accept()
        );
        (client.expect("connect"), server.expect("accept").0)
    }

    #[tokio::test]
    async fn a_write_nobody_reads_fails_as_stalled_after_the_timeout() {
        let (client, _server) = tcp_pair().await;
        // far more than the two sockets' buffers hold
        let data = vec![1u8; 64 << 20];
        let write = tcp_write_all(&client, &data, Some(Duration::from_millis(200)));
        let err = tokio::time::timeout(Duration::from_secs(20), write)
            .await
            .expect("the stall time-out ends the write")
            .expect_err("nobody reads");
        assert!(is_stalled(&err), "{err:?}");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // without a time-out the same write just waits
        let (client, _server) = tcp_pair().await;
        let write = tcp_write_all(&client, &data, None);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), write)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_slow_reader_is_not_cut_by_the_stall_timeout() {
        let (client, mut server) = tcp_pair().await;
        let data: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
        // 256 KiB every 10 ms: the writer waits on the socket again and again, each time
        // far less than the time-out, for more than the time-out in all
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 256 << 10];
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                match server.read(&mut buf).await.expect("read") {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        // the whole write takes longer than the time-out: only a wait without progress counts
        let started = std::time::Instant::now();
        tcp_write_all(&client, &data, Some(Duration::from_millis(300)))
            .await
            .expect("a slow reader takes everything");
        assert!(started.elapsed() > Duration::from_millis(300));
        tcp_shutdown_write(&client);
        let got = reader.await.expect("reader");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes differ");
    }

    #[test]
    fn read_size_grows_when_a_read_fills_its_room_and_shrinks_when_one_finds_little() {
        // a quiet socket stays at the cached size
        assert_eq!(next_read_size(QUIET_READ, 64), QUIET_READ);
        assert_eq!(next_read_size(QUIET_READ, 0), QUIET_READ);
        // a full read means more is queued: the next read takes up to TCP_READ
        assert_eq!(next_read_size(QUIET_READ, QUIET_READ), TCP_READ);
        assert_eq!(next_read_size(TCP_READ, TCP_READ), TCP_READ);
        // a busy socket whose reads come back partly filled keeps the large size
        assert_eq!(next_read_size(TCP_READ, TCP_READ / 4), TCP_READ);
        assert_eq!(next_read_size(TCP_READ, TCP_READ - 1), TCP_READ);
        assert_eq!(next_read_size(TCP_READ, QUIET_READ), TCP_READ);
        // until one read finds less than the quiet size
        assert_eq!(next_read_size(TCP_READ, QUIET_READ - 1), QUIET_READ);
    }

    #[test]
    fn a_mostly_empty_read_buffer_is_copied_before_it_is_held_and_a_fuller_one_is_not() {
        let mut quiet = bytes::BytesMut::with_capacity(QUIET_READ);
        quiet.extend_from_slice(&[7u8; 64]);
        let at = quiet.as_ptr();
        let held = right_sized(quiet);
        assert_ne!(held.as_ptr(), at, "64 bytes in 16 KiB are copied");
        assert_eq!(&held[..], &[7u8; 64][..]);
        let mut busy = bytes::BytesMut::with_capacity(TCP_READ);
        busy.extend_from_slice(&vec![9u8; TCP_READ / 4]);
        let at = busy.as_ptr();
        let held = right_sized(busy);
        assert_eq!(
            held.as_ptr(),
            at,
            "a quarter-full buffer is handed on as it is"
        );
        assert_eq!(held.len(), TCP_READ / 4);
    }

    #[tokio::test]
    async fn vectored_writes_deliver_every_chunk_in_order_across_partial_writes() {
        let (client, mut server) = tcp_pair().await;
        // more chunks than one batch, empty ones among them, and more bytes than the socket
        // buffers hold, so writes come back partial
        let mut chunks: Vec<bytes::Bytes> = (0..QUIC_BATCH * 2 + 3)
            .map(|i| match i % 4 {
                0 => bytes::Bytes::new(),
                1 => bytes::Bytes::from(vec![i as u8; 1]),
                _ => bytes::Bytes::from(vec![i as u8; 97 * 1024 + i]),
            })
            .collect();
        let want: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let write = async {
            tcp_write_chunks(&client, &mut chunks, None)
                .await
                .expect("write");
            tcp_shutdown_write(&client);
        };
        let read = async {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.expect("read");
            got
        };
        let ((), got) = tokio::join!(write, read);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes differ");
    }

    #[tokio::test]
    async fn queued_bytes_are_read_without_waiting_and_nothing_is_lost() {
        let (mut client, mut server) = tcp_pair().await;
        let mut buf = b"hdr".to_vec();
        // nothing sent yet: no bytes, no wait
        assert_eq!(read_queued(&mut server, &mut buf, 8).expect("read"), 0);
        assert_eq!(buf, b"hdr");
        client.write_all(b"0123456789").await.expect("write");
        // the bytes are in the server's queue once it reports readable
        server.readable().await.expect("readable");
        assert_eq!(read_queued(&mut server, &mut buf, 8).expect("read"), 8);
        assert_eq!(buf, b"hdr01234567");
        // the rest stays queued for the normal reads, and the end of stream after it
        client.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"89");
        assert_eq!(
            read_queued(&mut server, &mut buf, 8).expect("read at the end"),
            0
        );
        assert_eq!(buf, b"hdr01234567");
    }

    #[tokio::test]
    async fn a_peer_that_sends_and_closes_ends_the_stream_after_its_bytes() {
        use super::super::mux::tests::{bounded, connected, read_to_fin};
        let (client, _c, _server, mut accepted) = connected(16).await;
        let (mut peer, mut tcp) = tcp_pair().await;
        // the bytes and the FIN are both queued before the pump's first read
        peer.write_all(b"last words").await.expect("write");
        peer.shutdown().await.expect("shutdown");
        // forget the readiness a new socket starts with, so the next comes from epoll
        let _ = tcp.try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
        let ready = tcp
            .ready(tokio::io::Interest::READABLE)
            .await
            .expect("readable");
        // so the pump takes the path that sends the FIN with the bytes
        assert!(ready.is_read_closed(), "the FIN is seen with the bytes");
        let (_cr, cw) = client.open().expect("open");
        let mut w = TunnelWrite::Mux(cw);
        let counters = counters();
        let (mut read, _write) = tcp.split();
        bounded("pump", tcp_to_tunnel(&mut read, &mut w, &counters, &[]))
            .await
            .expect("pump");
        assert_eq!(counters.tx.get(), 10);
        let (mut sr, _sw) = bounded("accept", accepted.recv()).await.expect("accepted");
        let got = read_to_fin(&mut sr).await;
        assert_eq!(got, b"last words");
    }

    #[tokio::test]
    async fn the_answer_leads_the_first_bytes_or_goes_alone_with_the_fin() {
        use super::super::mux::tests::{bounded, connected, read_to_fin};
        let accepted = Answer::Accepted.encode();
        let (client, _c, _server, mut inbound) = connected(16).await;
        // a node that answers, and one that closes without a word
        for said in [&b"welcome"[..], b""] {
            let (mut peer, mut tcp) = tcp_pair().await;
            peer.write_all(said).await.expect("write");
            peer.shutdown().await.expect("shutdown");
            let (_cr, cw) = client.open().expect("open");
            let mut w = TunnelWrite::Mux(cw);
            let counters = counters();
            let (mut read, _write) = tcp.split();
            bounded(
                "pump",
                tcp_to_tunnel(&mut read, &mut w, &counters, &accepted),
            )
            .await
            .expect("pump");
            // only the node's bytes are counted
            assert_eq!(counters.tx.get(), said.len() as u64);
            let (sr, _sw) = bounded("accept", inbound.recv()).await.expect("accepted");
            let mut r = TunnelRead::Mux(sr);
            assert_eq!(
                bounded("answer", r.answer()).await.expect("answer"),
                Answer::Accepted
            );
            let got = read_to_fin(&mut r).await;
            assert_eq!(got, said);
        }
    }

    /// Counters of a proxied connection, on metrics of their own.
    fn counters() -> Counters {
        crate::metrics::Metrics::new().tunnel_counters("o", super::super::class::Class::Bulk)
    }

    #[test]
    fn ready_now_tells_ready_from_pending() {
        assert_eq!(ready_now(async { 7 }), Some(7));
        assert_eq!(ready_now(std::future::pending::<u8>()), None);
    }
}
