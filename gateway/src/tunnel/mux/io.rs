//! The async shell of a yamux session: the socket, the driver and the streams' halves.

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead as _, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::frame::{FrameReader, GO_AWAY_NORMAL, GO_AWAY_PROTOCOL, Header, Kind, flag};
use super::sched::Scheduler;
use super::session::{Inner, Shared, Stream, sending};
use super::{
    Config, EndWhen, MAX_FRAME, MAX_RECORD_PLAINTEXT, NOTSENT_LOWAT, QUEUE_LIMIT, READ_CHUNK,
    READS_PER_TURN, Role, SESSION_WINDOW, SHARED_FRAME,
};
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

/// Writes TLS records to the socket: without a task context, `try_write` (a refusal leaves
/// the driver to wait); with one, a poll that registers the driver for writability.
pub(super) struct SockWriter<'a, 'b> {
    pub(super) sock: &'a mut OwnedWriteHalf,
    pub(super) cx: Option<&'a mut Context<'b>>,
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
            tls,
            sock,
            streams: HashMap::new(),
            next_id: match role {
                Role::Client => 1,
                Role::Server => 2,
            },
            max_streams: config.max_streams,
            accepted: VecDeque::new(),
            queued: 0,
            want_writable: false,
            refused_at: None,
            driver: None,
            sched: Scheduler::default(),
            recv_window: SESSION_WINDOW,
            unacked: 0,
            send_window: SESSION_WINDOW,
            starved: Vec::new(),
            closed: None,
            remote_go_away: false,
            ping_id: 0,
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
        let mut inner = self.shared.lock();
        inner.check()?;
        if inner.remote_go_away {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "the peer is closing the tunnel session",
            ));
        }
        if inner.streams.len() >= inner.max_streams {
            return Err(io::Error::other("too many tunnel streams"));
        }
        let id = inner.next_id;
        inner.next_id = id
            .checked_add(2)
            .ok_or_else(|| io::Error::other("tunnel stream ids exhausted"))?;
        inner.streams.insert(id, Stream::new(flag::SYN));
        Ok(halves(&self.shared, id))
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    /// Streams open now (both directions, not yet dropped).
    pub fn streams(&self) -> usize {
        self.shared.lock().streams.len()
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
            inner.ping_id = inner.ping_id.wrapping_add(1);
            let id = inner.ping_id;
            inner.emit(&[Header::new(Kind::Ping, flag::SYN, 0, id)], &[]);
            inner.push(None);
        }
        {
            let mut inner = self.shared.lock();
            inner.check()?;
            if !inner
                .driver
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                inner.driver = Some(cx.waker().clone());
            }
            if inner.want_writable {
                inner.push(Some(cx));
                inner.check()?;
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
            if let Some(id) = self.shared.lock().accepted.pop_front() {
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
                Ok(Some(piece)) => inner.handle(piece, self.role)?,
                Ok(None) => break,
                Err(e) => {
                    inner.emit(&[Header::new(Kind::GoAway, 0, 0, GO_AWAY_PROTOCOL)], &[]);
                    inner.push(None);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
        }
        // answers to pings and refusals
        if inner.tls.wants_write() {
            inner.push(None);
        }
        // the answers may have ended the session (a peer that does not read)
        inner.check()?;
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
        if inner.closed.is_none() {
            inner.emit(&[Header::new(Kind::GoAway, 0, 0, GO_AWAY_NORMAL)], &[]);
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
        let n = {
            let Some(s) = inner.streams.get_mut(&self.id) else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            let mut n = 0;
            while out.len() < max
                && let Some(chunk) = s.recv.pop_front()
            {
                n += chunk.len();
                out.push(chunk);
            }
            n
        };
        Self::took(&mut inner, self.id, n, cx)
    }

    /// After a read took `n` bytes: the window bookkeeping and `Ready(Ok(n))`; with nothing
    /// taken, `Ready(Ok(0))` at the end of the stream, an error, or `Pending` (sending the
    /// SYN of a stream opened by a reader first).
    fn took(inner: &mut Inner, id: u32, n: usize, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if n > 0 {
            inner.consumed(id, n);
            return Poll::Ready(Ok(n));
        }
        let closed = inner.closed;
        let Some(s) = inner.streams.get_mut(&id) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if s.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "tunnel stream reset by the peer",
            )));
        }
        if s.remote_fin {
            return Poll::Ready(Ok(0));
        }
        if let Some(kind) = closed {
            return Poll::Ready(Err(io::Error::new(kind, "tunnel session closed")));
        }
        if !s.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.reader = Some(cx.waker().clone());
        }
        let fin = if s.local_fin { flag::FIN } else { 0 };
        if s.announce == flag::SYN
            && let Some(h) = inner.announce(id, fin)
        {
            inner.emit(&[h], &[]);
            inner.push(None);
        }
        Poll::Pending
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
        let n = {
            let Some(s) = inner.streams.get_mut(&id) else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            let mut n = 0;
            while buf.remaining() > 0
                && let Some(chunk) = s.recv.front_mut()
            {
                let take = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..take]);
                chunk.advance(take);
                if chunk.is_empty() {
                    s.recv.pop_front();
                }
                n += take;
            }
            n
        };
        MuxReader::took(&mut inner, id, n, cx).map_ok(|_| ())
    }
}

impl Drop for MuxReader {
    fn drop(&mut self) {
        self.shared.lock().half_dropped(self.id, true);
    }
}

impl MuxWriter {
    /// Sets the stream's priority class: which writers go first while the link is the
    /// bottleneck ([`sched`]). New streams are [`Class::Interactive`].
    pub fn set_class(&mut self, class: Class) {
        let mut inner = self.shared.lock();
        if let Some(s) = inner.streams.get_mut(&self.id) {
            s.class = class;
        }
    }

    /// Resets the stream (RST): the peer's reads and writes fail.
    pub fn reset(&mut self) {
        let mut inner = self.shared.lock();
        let id = self.id;
        inner.sched.remove(id);
        inner.hand_turns();
        let Some(s) = inner.streams.get_mut(&id) else {
            return;
        };
        if s.reset {
            return;
        }
        s.reset = true;
        s.wake();
        // the peer knows every stream but one this end opened and never wrote to (its SYN
        // still unsent): an accepted stream's RST goes out even before its first write, or the
        // peer would wait for an answer that never comes
        let known = s.announce != flag::SYN;
        s.announce = 0;
        if known && inner.closed.is_none() {
            inner.emit(&[Header::new(Kind::WindowUpdate, flag::RST, id, 0)], &[]);
            inner.push(None);
        }
    }
}

impl MuxWriter {
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

    fn write_frame(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
        fin: bool,
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        let mut inner = self.shared.lock();
        let s = sending(&mut inner, id)?;
        if s.local_fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel stream finished",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let class = s.class;
        if s.send_window == 0 {
            if !s.writer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.writer = Some(cx.waker().clone());
            }
            // waiting for the peer's window, not for a turn: the turn goes to the others
            inner.sched.remove(id);
            inner.hand_turns();
            return Poll::Pending;
        }
        let n = buf.len().min(s.send_window as usize).min(MAX_FRAME);
        if inner.send_window == 0 {
            // once per task: a writer may be polled again before the window opens
            if !inner.starved.iter().any(|w| w.will_wake(cx.waker())) {
                inner.starved.push(cx.waker().clone());
            }
            inner.sched.remove(id);
            inner.hand_turns();
            return Poll::Pending;
        }
        let n = n.min(inner.send_window as usize);
        if inner.queued >= QUEUE_LIMIT {
            inner.push(None);
        }
        let turn = inner.sched.has_turn(id);
        if !turn && (inner.queued >= QUEUE_LIMIT || !inner.sched.may_write(id, class)) {
            // the queue is full, or others are ahead: wait for a turn
            inner.sched.wait(id, class);
            if let Some(s) = inner.streams.get_mut(&id)
                && !s.writer.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
            {
                s.writer = Some(cx.waker().clone());
            }
            // the queue may have room for a turn already (others were ahead)
            inner.hand_turns();
            return Poll::Pending;
        }
        // with others waiting, one small frame per turn; alone on a link that is the
        // bottleneck, no more than the queue has room for
        let others = inner.sched.has_waiting() || inner.sched.turns() > usize::from(turn);
        let n = if others {
            n.min(SHARED_FRAME)
        } else if inner.backlogged() {
            n.min(QUEUE_LIMIT.saturating_sub(inner.queued).max(SHARED_FRAME))
        } else {
            n
        };
        inner.sched.wrote(id, class);
        let fin = fin && n == buf.len();
        if let Some(s) = inner.streams.get_mut(&id) {
            s.send_window -= n as u32;
            s.local_fin |= fin;
        }
        inner.send_window -= n as u32;
        let data = Header::new(Kind::Data, if fin { flag::FIN } else { 0 }, id, n as u32);
        match inner.announce(id, 0) {
            Some(announce) => inner.emit(&[announce, data], &buf[..n]),
            None => inner.emit(&[data], &buf[..n]),
        }
        inner.push(None);
        inner.check()?;
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
        let id = self.id;
        let mut inner = self.shared.lock();
        let s = sending(&mut inner, id)?;
        if s.local_fin {
            return Poll::Ready(Ok(()));
        }
        s.local_fin = true;
        let h = inner.announce(id, flag::FIN).unwrap_or(Header::new(
            Kind::WindowUpdate,
            flag::FIN,
            id,
            0,
        ));
        inner.emit(&[h], &[]);
        inner.push(None);
        Poll::Ready(inner.check())
    }
}

impl Drop for MuxWriter {
    fn drop(&mut self) {
        self.shared.lock().half_dropped(self.id, false);
    }
}
