//! The async shell of a yamux session: the TLS connection and the socket, the driver that
//! reads them, and the streams' halves. What the session decides is [`Session`]'s; this file
//! encrypts the frames it returns, writes them to the socket and tells it how that went.

use std::io::{self, BufRead as _, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::config::{
    Config, MAX_RECORD_PLAINTEXT, NOTSENT_LOWAT, READ_CHUNK, READS_PER_TURN, Role,
};
use super::frame::{FrameReader, GO_AWAY_NORMAL, GO_AWAY_PROTOCOL, HEADER_LEN, Header};
use super::session::Session;
use crate::listener::EndWhen;
use crate::tunnel::class::Class;

/// Opens streams on a session; cheap to clone.
#[derive(Clone)]
pub struct Mux {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux").finish_non_exhaustive()
    }
}

/// What the streams, the handle and the driver share.
pub(super) struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The session's state and its link, under one lock.
pub(super) struct Inner {
    pub(super) session: Session,
    tls: rustls::Connection,
    sock: OwnedWriteHalf,
    /// The socket refused a write: the driver waits for it to turn writable.
    want_writable: bool,
    driver: Option<Waker>,
    /// The link has been closed (close_notify sent if the socket took it, socket shut down).
    shut: bool,
}

/// Writes TLS records to the socket: without a task context, `try_write` (a refusal leaves
/// the driver to wait); with one, a poll that registers the driver for writability.
struct SockWriter<'a, 'b> {
    sock: &'a mut OwnedWriteHalf,
    cx: Option<&'a mut Context<'b>>,
}

impl io::Write for SockWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.cx.as_deref_mut() {
            None => self.sock.try_write_vectored(bufs),
            Some(cx) => match Pin::new(&mut *self.sock).poll_write_vectored(cx, bufs) {
                Poll::Ready(r) => r,
                Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
            },
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Inner {
    /// Encrypts frames (one or two headers, then `payload` after the last) as one TLS write.
    fn emit(&mut self, headers: &[Header], payload: &[u8]) {
        let n = headers.len().min(2);
        let mut encoded = [[0u8; HEADER_LEN]; 2];
        for (e, h) in encoded.iter_mut().zip(headers) {
            *e = h.encode();
        }
        let [first, second] = &encoded;
        let all = [
            IoSlice::new(first),
            IoSlice::new(second),
            IoSlice::new(payload),
        ];
        let one = [all[0], all[2]];
        let slices: &[IoSlice<'_>] = if n == 1 { &one } else { &all };
        let len = HEADER_LEN * n + payload.len();
        // the buffer limit is off, so this takes everything (writers wait on the queue)
        if let Err(e) = io::Write::write_vectored(&mut self.tls.writer(), slices) {
            self.session.fail(e.kind());
            return;
        }
        // record overhead: 5-byte header, content type and 16-byte tag per 16 KiB
        self.session.queued(len + 22 * (len / 16_384 + 1));
    }

    /// Sends what the session has for the link: its frames without payload, each a record
    /// of its own, then to the socket; once the session has ended, the link's close.
    fn flush(&mut self) {
        if self.session.has_out() && !self.shut {
            for h in self.session.take_out() {
                self.emit(&[h], &[]);
            }
        }
        if self.session.closed().is_some() {
            self.close_link();
        } else if self.tls.wants_write() {
            self.push(None);
        }
    }

    /// Writes queued records to the socket until it refuses (then the driver waits for
    /// writability) or none are left.
    fn push(&mut self, cx: Option<&mut Context<'_>>) {
        let mut w = SockWriter {
            sock: &mut self.sock,
            cx,
        };
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut w) {
                Ok(0) => break,
                Ok(n) => self.session.written(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.session.refused(Instant::now());
                    if !self.want_writable {
                        self.want_writable = true;
                        if let Some(d) = &self.driver {
                            d.wake_by_ref();
                        }
                    }
                    return;
                }
                Err(e) => {
                    self.session.fail(e.kind());
                    self.close_link();
                    return;
                }
            }
        }
        self.want_writable = false;
        self.session.drained(Instant::now());
    }

    /// Ends the session with `kind` and closes the link.
    fn fail(&mut self, kind: io::ErrorKind) {
        self.session.fail(kind);
        self.flush();
    }

    /// Closes the link once: a close_notify goes out if the socket takes it, the socket is
    /// shut down both ways, and the driver wakes to end.
    fn close_link(&mut self) {
        if self.shut {
            return;
        }
        self.shut = true;
        self.tls.send_close_notify();
        self.push(None);
        let _ = socket2::SockRef::from(self.sock.as_ref()).shutdown(std::net::Shutdown::Both);
        if let Some(d) = self.driver.take() {
            d.wake();
        }
    }
}

/// Starts a session over an established TLS connection (`tcp` carries `tls`). Returns the
/// handle that opens streams and the driver, which must be polled ([`Driver::accept`]) for
/// the session to make progress; dropping the driver ends the session.
pub fn session(
    tcp: TcpStream,
    tls: rustls::Connection,
    role: Role,
    config: &Config,
    end: Option<EndWhen>,
) -> (Mux, Driver) {
    tune_link_socket(&tcp, config.congestion);
    let (read, sock) = tcp.into_split();
    let mut tls = tls;
    tls.set_buffer_limit(None);
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            session: Session::new(role, config.max_streams),
            tls,
            sock,
            want_writable: false,
            driver: None,
            shut: false,
        }),
    });
    let mut keep_alive = tokio::time::interval_at(
        tokio::time::Instant::now() + config.keep_alive,
        config.keep_alive,
    );
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let driver = Driver {
        shared: shared.clone(),
        role,
        read,
        rbuf: vec![0u8; READ_CHUNK].into_boxed_slice(),
        plain: BytesMut::new(),
        frames: FrameReader::default(),
        keep_alive,
        idle_timeout: config.idle_timeout,
        last_recv: Instant::now(),
        end,
        done: false,
        primed: false,
    };
    (Mux { shared }, driver)
}

/// Short queues on a link's socket: unsent bytes held by the kernel bounded by
/// [`NOTSENT_LOWAT`], and the congestion controller `congestion` (a kernel without it keeps
/// its default, logged at debug).
fn tune_link_socket(tcp: &TcpStream, congestion: crate::tunnel::quic::Congestion) {
    let sock = socket2::SockRef::from(tcp);
    if let Err(e) = sock.set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        tracing::debug!(error = %e, "cannot set TCP_NOTSENT_LOWAT on a tunnel link");
    }
    if let Err(e) = sock.set_tcp_congestion(congestion.tcp_name()) {
        tracing::debug!(error = %e, ?congestion, "the kernel refuses this congestion controller for a tunnel link; keeping its default");
    }
}

impl Mux {
    /// Opens a stream. Nothing is sent until its first write (or first read), which carries
    /// the SYN.
    ///
    /// Errors: the session has ended, or the peer has sent Go Away.
    pub fn open(&self) -> io::Result<(MuxReader, MuxWriter)> {
        let id = self.shared.lock().session.open()?;
        Ok(halves(&self.shared, id))
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().session.closed().is_some()
    }

    /// Streams open now (both directions, not yet dropped).
    pub fn streams(&self) -> usize {
        self.shared.lock().session.streams()
    }
}

/// The two halves of stream `id`.
fn halves(shared: &Arc<Shared>, id: u32) -> (MuxReader, MuxWriter) {
    (
        MuxReader {
            shared: shared.clone(),
            id,
        },
        MuxWriter {
            shared: shared.clone(),
            id,
        },
    )
}

/// Reads the socket, delivers frames to streams and hands out inbound streams.
pub struct Driver {
    shared: Arc<Shared>,
    role: Role,
    read: OwnedReadHalf,
    rbuf: Box<[u8]>,
    /// Decrypted bytes not yet taken as frame pieces: between reads, at most part of a header.
    plain: BytesMut,
    frames: FrameReader,
    keep_alive: tokio::time::Interval,
    idle_timeout: Duration,
    last_recv: Instant,
    end: Option<EndWhen>,
    done: bool,
    /// Whether the plaintext rustls already held when the session started has been taken.
    primed: bool,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// Runs the session until the peer opens a stream (returned) or the session ends
    /// (`Err` with the reason; every stream fails from then on).
    pub async fn accept(&mut self) -> io::Result<(MuxReader, MuxWriter)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls [`Driver::accept`].
    pub fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(MuxReader, MuxWriter)>> {
        if self.done {
            let inner = self.shared.lock();
            return Poll::Ready(Err(inner
                .session
                .check()
                .err()
                .unwrap_or_else(|| io::ErrorKind::NotConnected.into())));
        }
        match self.turn(cx) {
            Ok(Some(id)) => Poll::Ready(Ok(halves(&self.shared, id))),
            Ok(None) => Poll::Pending,
            Err(e) => {
                self.done = true;
                self.shared.lock().fail(e.kind());
                Poll::Ready(Err(e))
            }
        }
    }

    fn turn(&mut self, cx: &mut Context<'_>) -> io::Result<Option<u32>> {
        if let Some(end) = self.end.as_mut()
            && let Poll::Ready(reason) = end.as_mut().poll(cx)
        {
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, reason));
        }
        while self.keep_alive.poll_tick(cx).is_ready() {
            if self.last_recv.elapsed() > self.idle_timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "tunnel session silent for too long",
                ));
            }
            let mut inner = self.shared.lock();
            inner.session.ping();
            inner.flush();
        }
        {
            let mut inner = self.shared.lock();
            inner.session.check()?;
            if !inner
                .driver
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                inner.driver = Some(cx.waker().clone());
            }
            if inner.want_writable {
                inner.push(Some(cx));
                inner.session.check()?;
            }
        }
        if !self.primed {
            self.primed = true;
            // the peer's first frames may have come with its last handshake message: the TLS
            // handshake read them off the socket, and no readiness event will announce them
            self.ingest(0)?;
        }
        let mut reads = 0;
        loop {
            if let Some(id) = self.shared.lock().session.accept() {
                return Ok(Some(id));
            }
            if reads == READS_PER_TURN {
                cx.waker().wake_by_ref();
                return Ok(None);
            }
            reads += 1;
            let mut buf = ReadBuf::new(&mut self.rbuf);
            // tokio's read takes a short read as the socket drained: the next waits for
            // readiness rather than reading again only to be told `WouldBlock`
            match Pin::new(&mut self.read).poll_read(cx, &mut buf) {
                Poll::Pending => return Ok(None),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) => {}
            }
            let n = buf.filled().len();
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tunnel connection closed by the peer",
                ));
            }
            self.last_recv = Instant::now();
            self.ingest(n)?;
        }
    }

    /// Decrypts `self.rbuf[..n]` and acts on every whole frame in it.
    fn ingest(&mut self, n: usize) -> io::Result<()> {
        let mut inner = self.shared.lock();
        let mut data = &self.rbuf[..n];
        let mut peer_closed = false;
        // room for this read's plaintext: no more than its ciphertext and the one record an
        // earlier read began, which rustls holds. One allocation per read, while the payloads
        // handed on still hold the previous buffer, and never a reallocation that would copy
        // what this read has decrypted so far.
        self.plain.reserve(n + MAX_RECORD_PLAINTEXT);
        // nothing read (the session's start): what rustls decrypted already
        let mut pending = n == 0;
        while !data.is_empty() || std::mem::take(&mut pending) {
            // 0 once a close_notify has arrived: the rest is ignored
            if !data.is_empty() && inner.tls.read_tls(&mut data)? == 0 {
                peer_closed = true;
                break;
            }
            let state = match inner.tls.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // the alert goes out before the session ends
                    inner.push(None);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            peer_closed |= state.peer_has_closed();
            // the plaintext, copied once, from rustls's buffers straight into spare room
            let mut avail = state.plaintext_bytes_to_read();
            let mut reader = inner.tls.reader();
            while avail > 0 {
                let chunk = reader.fill_buf()?;
                if chunk.is_empty() {
                    break;
                }
                let len = chunk.len().min(avail);
                self.plain.extend_from_slice(&chunk[..len]);
                reader.consume(len);
                avail -= len;
            }
        }
        loop {
            match self.frames.next(&mut self.plain) {
                Ok(Some(piece)) => inner
                    .session
                    .receive(piece)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
                Ok(None) => break,
                Err(e) => {
                    inner.session.go_away(GO_AWAY_PROTOCOL);
                    inner.flush();
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
        }
        // answers to pings and refusals
        inner.flush();
        // the answers may have ended the session (a peer that does not read)
        inner.session.check()?;
        if peer_closed {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tunnel connection closed by the peer",
            ));
        }
        Ok(())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        if inner.session.closed().is_none() {
            inner.session.go_away(GO_AWAY_NORMAL);
        }
        inner.fail(io::ErrorKind::ConnectionAborted);
        inner.driver = None;
    }
}

/// The receiving half of a stream.
pub struct MuxReader {
    shared: Arc<Shared>,
    id: u32,
}

/// The sending half of a stream.
pub struct MuxWriter {
    shared: Arc<Shared>,
    id: u32,
}

impl std::fmt::Debug for MuxReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MuxReader({})", self.id)
    }
}

impl std::fmt::Debug for MuxWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MuxWriter({})", self.id)
    }
}

impl MuxReader {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Takes up to `max` received chunks, as the session holds them (no copy), into `out`:
    /// `Ready(Ok(0))` at the end of the stream, else the number of bytes taken.
    ///
    /// Errors: the stream was reset, or the session ended.
    pub fn poll_chunks(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Bytes>,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.shared.lock();
        let recv = match inner.session.received(self.id) {
            Ok(recv) => recv,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let mut n = 0;
        while out.len() < max
            && let Some(chunk) = recv.pop_front()
        {
            n += chunk.len();
            out.push(chunk);
        }
        let took = inner.session.took(self.id, n, cx.waker());
        inner.flush();
        took
    }
}

impl AsyncRead for MuxReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut inner = self.shared.lock();
        let recv = match inner.session.received(id) {
            Ok(recv) => recv,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let mut n = 0;
        while buf.remaining() > 0
            && let Some(chunk) = recv.front_mut()
        {
            let take = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..take]);
            chunk.advance(take);
            if chunk.is_empty() {
                recv.pop_front();
            }
            n += take;
        }
        let took = inner.session.took(id, n, cx.waker());
        inner.flush();
        took.map_ok(|_| ())
    }
}

impl Drop for MuxReader {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.session.half_dropped(self.id, true, Instant::now());
        inner.flush();
    }
}

impl MuxWriter {
    /// Sets the stream's priority class: which writers go first while the link is the
    /// bottleneck ([`sched`](super::sched)). New streams are [`Class::Interactive`].
    pub fn set_class(&mut self, class: Class) {
        self.shared.lock().session.set_class(self.id, class);
    }

    /// Resets the stream (RST): the peer's reads and writes fail.
    pub fn reset(&mut self) {
        let mut inner = self.shared.lock();
        inner.session.reset(self.id, Instant::now());
        inner.flush();
    }

    /// Writes a prefix of `buf` like [`AsyncWrite::poll_write`]; the frame that takes the
    /// rest of `buf` also carries FIN, ending this direction of the stream (one frame and one
    /// TLS record where a write and a shutdown take two). With `buf` empty it is a shutdown.
    ///
    /// Returns the number of bytes taken; the stream is finished once they are all of `buf`.
    /// Errors: as for a write (reset, finished, session ended).
    pub fn poll_write_fin(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Pin::new(self).poll_shutdown(cx).map_ok(|()| 0);
        }
        self.write_frame(cx, buf, true)
    }

    /// One data frame of a prefix of `buf`, written through: the session decides how much
    /// and when ([`Session::write`]), this encrypts it and hands it to the socket.
    fn write_frame(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
        fin: bool,
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        let mut inner = self.shared.lock();
        if buf.is_empty() {
            return Poll::Ready(inner.session.writable(id).map(|()| 0));
        }
        if inner.session.queue_full() {
            inner.push(None);
        }
        let frame = match inner
            .session
            .write(id, buf.len(), fin, cx.waker(), Instant::now())
        {
            Poll::Ready(Ok(frame)) => frame,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let n = frame.len();
        match frame.announce {
            Some(announce) => inner.emit(&[announce, frame.data], &buf[..n]),
            None => inner.emit(&[frame.data], &buf[..n]),
        }
        inner.flush();
        inner.session.check()?;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for MuxWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_frame(cx, buf, false)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // written through at once; what the socket refused, the driver writes
        Poll::Ready(Ok(()))
    }

    /// Half-close (FIN).
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.shared.lock();
        inner.session.shutdown(self.id)?;
        inner.flush();
        Poll::Ready(inner.session.check())
    }
}

impl Drop for MuxWriter {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.session.half_dropped(self.id, false, Instant::now());
        inner.flush();
    }
}
