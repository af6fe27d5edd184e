//! yamux over one TLS connection: the stream multiplexer of TCP+TLS tunnels.
//!
//! Wire format: the yamux specification (`spec.md` of hashicorp/yamux). Every frame starts with
//! a 12-byte big-endian header, `version (u8, 0) | type (u8) | flags (u16) | stream id (u32) |
//! length (u32)`; types are Data (length = payload bytes that follow), Window Update (length =
//! window increment), Ping (length = opaque value) and Go Away (length = error code); flags
//! are SYN, ACK, FIN and RST. The dialling side opens odd stream ids, the accepting side even
//! ones. Each direction of a stream starts with a 256 KiB window; both ends raise it to
//! [`STREAM_WINDOW`] with the first frame they send on a stream.
//!
//! One addition to the specification, as HTTP/2's connection window (RFC 9113 §6.9): a
//! **session window** of [`SESSION_WINDOW`] bytes in each direction. Every data frame counts
//! against it as well as against its stream's window, and a Window Update on stream 0 (no
//! flags) raises it once the receiving end's readers have taken (or it has discarded) half of
//! it. What a peer can make this end buffer is bounded per session, however many streams it
//! opens, as a QUIC connection's receive window bounds it there.
//! One stream moves at most [`STREAM_WINDOW`] per round trip (8 MiB: about 670 Mbit/s at
//! 100 ms); data for a stream whose reader is gone is discarded and its windows given back.
//!
//! Built for the tunnel's traffic rather than as a general library:
//!
//! - **No session task in the write path.** A stream writes its frame into the TLS connection
//!   (one copy, encrypted in place) and on to the socket itself, under the session's lock. The
//!   session's driver only reads, and writes what the socket refused earlier once it is
//!   writable again.
//! - **Turns while the link is busy.** A writer goes at once while the bytes queued for the
//!   socket stay under [`QUEUE_LIMIT`] and no stream of its priority class or above waits;
//!   otherwise it waits for a turn ([`sched`]): one frame of at most [`SHARED_FRAME`] bytes
//!   per turn, highest class first, round-robin within a class, and lower classes are never
//!   starved. The socket itself holds at most [`NOTSENT_LOWAT`] unsent bytes.
//! - **A new stream costs one frame each way.** Opening sends nothing; the first write carries
//!   the SYN with the window update and the data in one TLS record (the tunnel header), and
//!   the far end's first write carries the ACK with its answer and the node's first bytes (a
//!   stream that only reads sends it once it has taken half the initial window). A stream's
//!   last bytes can carry its FIN ([`MuxWriter::poll_write_fin`]).
//! - **Big reads.** The driver reads 256 KiB from the socket at a time and feeds rustls from
//!   memory (rustls alone reads 4 KiB per system call); received data is copied once out of
//!   rustls and then handed on in slices of that buffer until the reader takes it
//!   ([`MuxReader::poll_chunks`]).
//!
//! Limits: a data frame over [`MAX_RECV_FRAME`] bytes, data beyond a stream's window or the
//! session's, a SYN for a stream id in use or of the wrong parity, a stream frame on stream 0
//! other than a session window update, and an unknown version or frame type are protocol
//! errors that end the session, as does a peer that keeps sending while it reads nothing
//! ([`MAX_QUEUED`] bytes queued for it). Inbound streams beyond `max_streams`, or beyond
//! [`ACCEPT_BACKLOG`] not yet accepted, are refused with RST. A session that receives nothing
//! for [`Config::idle_timeout`] ends; it sends a ping every [`Config::keep_alive`].

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead as _, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};

use super::class::Class;
use sched::Scheduler;

pub mod sched;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Length of a frame header.
pub const HEADER_LEN: usize = 12;
/// A stream's window in each direction before either end raises it (the yamux default).
pub const INITIAL_WINDOW: u32 = 256 * 1024;
/// A stream's window once its first frame is through: how many bytes may be in flight
/// towards a reader that has not taken them (a QUIC tunnel's stream receive window is the same
/// 8 MiB).
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// Data bytes in flight towards readers that have not taken them, all of a session's streams
/// together, in each direction: eight streams' full windows, so it takes eight streams whose
/// readers stall to hold up the others (a QUIC tunnel's connection receive window is the same
/// 64 MiB).
pub const SESSION_WINDOW: u32 = 8 * STREAM_WINDOW;
/// Largest data frame sent: a busy stream's whole socket read (16 TLS records) goes out in
/// one frame and one `writev`, where 64 KiB frames took four of each.
pub const MAX_FRAME: usize = 256 * 1024;
/// Largest data frame accepted.
pub const MAX_RECV_FRAME: u32 = 1024 * 1024;
/// Inbound streams held before [`Driver::accept`] takes them; more are refused.
pub const ACCEPT_BACKLOG: usize = 1024;
/// Bytes read from the socket in one system call.
const READ_CHUNK: usize = 256 * 1024;
/// Most plaintext one TLS record carries (RFC 8446 §5.1).
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// Payload pieces shorter than this are copied out of their read's buffer before they are
/// queued for a stream's reader: a quarter of the largest buffer a read decrypts into.
const PIN_BELOW: usize = (READ_CHUNK + MAX_RECORD_PLAINTEXT) / 4;
/// Encrypted bytes queued for the socket (refused by it so far) at which writers wait for a
/// turn ([`sched`]): one TLS record, so a consensus frame never waits behind much bulk data
/// in the session (16 KiB leave the socket in 1.3 ms at 100 Mbit/s).
pub const QUEUE_LIMIT: usize = 16 * 1024;
/// Largest data frame while other streams wait for a turn: one TLS record, so a turn holds
/// the link for 1.3 ms at 100 Mbit/s.
pub const SHARED_FRAME: usize = 16 * 1024;
/// How long after the socket last refused a write a stream alone on the session still
/// writes frames of at most the queue's room, not [`MAX_FRAME`]: while the link is the
/// bottleneck, whatever a frame leaves queued is what the next consensus frame waits behind.
const BACKLOG_HOLD: Duration = Duration::from_millis(200);
/// A turn not used within this long is taken back (its writer stopped writing).
const TURN_TIMEOUT: Duration = Duration::from_secs(1);
/// Unsent bytes a link's TCP socket holds before it refuses more (`TCP_NOTSENT_LOWAT`): the
/// kernel's queue in front of the session's scheduler stays this short (the default is the
/// whole send buffer, 1 MB and more once autotuned). Half as much measured no shorter round
/// trip on a saturated 100 Mbit/s link (docs/PERFORMANCE.md).
pub const NOTSENT_LOWAT: u32 = 16 * 1024;
/// Encrypted bytes queued for the socket at which the session ends: writers stop near
/// [`QUEUE_LIMIT`], so only a peer that keeps sending (pings, streams to refuse) without
/// reading what it is sent gets here.
pub const MAX_QUEUED: usize = 4 * 1024 * 1024;
/// Socket reads in one turn of the driver before it lets other tasks run.
const READS_PER_TURN: usize = 16;

/// Frame flags (yamux spec: "Flag Field").
pub mod flag {
    /// Opens a stream.
    pub const SYN: u16 = 0x1;
    /// Acknowledges a stream's opening.
    pub const ACK: u16 = 0x2;
    /// Half-closes a stream: the sender sends no more.
    pub const FIN: u16 = 0x4;
    /// Resets a stream at once.
    pub const RST: u16 = 0x8;
}

/// Frame types (yamux spec: "Type Field").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Stream data; the length is the payload's.
    Data = 0,
    /// Raises a stream's send window by the length.
    WindowUpdate = 1,
    /// Liveness; the length is an opaque value echoed back with ACK.
    Ping = 2,
    /// The session is ending; the length is an error code.
    GoAway = 3,
}

/// Go Away codes (yamux spec).
const GO_AWAY_NORMAL: u32 = 0;
const GO_AWAY_PROTOCOL: u32 = 1;

/// One frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub kind: Kind,
    /// [`flag`] bits.
    pub flags: u16,
    /// Stream id; 0 for Ping and Go Away.
    pub stream: u32,
    /// Payload length, window increment, ping value or error code, by type.
    pub length: u32,
}

/// A frame that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Only version 0 exists.
    #[error("yamux version {0} (only 0 is known)")]
    Version(u8),
    /// Not one of the four frame types.
    #[error("unknown yamux frame type {0}")]
    Type(u8),
    /// A data frame longer than [`MAX_RECV_FRAME`].
    #[error("yamux data frame of {0} bytes (at most {MAX_RECV_FRAME})")]
    TooLong(u32),
}

impl Header {
    /// The 12 bytes on the wire.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[1] = self.kind as u8;
        b[2..4].copy_from_slice(&self.flags.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream.to_be_bytes());
        b[8..12].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Reads a header from the start of `b`: `Ok(None)` while fewer than 12 bytes are there.
    pub fn decode(b: &[u8]) -> Result<Option<Header>, FrameError> {
        let Some(b) = b.get(..HEADER_LEN) else {
            return Ok(None);
        };
        if b[0] != 0 {
            return Err(FrameError::Version(b[0]));
        }
        let kind = match b[1] {
            0 => Kind::Data,
            1 => Kind::WindowUpdate,
            2 => Kind::Ping,
            3 => Kind::GoAway,
            t => return Err(FrameError::Type(t)),
        };
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let header = Header {
            kind,
            flags: u16::from_be_bytes([b[2], b[3]]),
            stream: word(4),
            length: word(8),
        };
        if kind == Kind::Data && header.length > MAX_RECV_FRAME {
            return Err(FrameError::TooLong(header.length));
        }
        Ok(Some(header))
    }

    fn new(kind: Kind, flags: u16, stream: u32, length: u32) -> Self {
        Header {
            kind,
            flags,
            stream,
            length,
        }
    }
}

/// What [`FrameReader::next`] takes off the front of the decrypted bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A frame header. Window Update, Ping and Go Away frames are whole with it; a data
    /// frame's payload follows as [`Piece::Body`] pieces and ends with [`Piece::End`].
    Header(Header),
    /// The next part of the current data frame's payload on stream `.0` (never empty; split
    /// off the buffer without a copy).
    Body(u32, Bytes),
    /// The current data frame's payload is complete (also after an empty one); its flags
    /// (FIN, RST) take effect now.
    End(Header),
}

/// Incremental yamux frame decoder. A data frame's payload is handed on as it arrives, so a
/// frame that spans socket reads (a full [`MAX_FRAME`] does most of the time) is never held
/// back in the buffer, which would then have to be copied whenever the buffer grows.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// The data frame whose payload is being read, and how many of its bytes are still due.
    body: Option<(Header, u32)>,
}

impl FrameReader {
    /// Takes the next piece off the front of `buf`: `Ok(None)` when `buf` holds less than a
    /// header (it is left in place) or is empty in the middle of a payload.
    ///
    /// # Errors
    ///
    /// A header that breaks the protocol ([`FrameError`]); the session ends there.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Piece>, FrameError> {
        if let Some((h, due)) = &mut self.body {
            if *due == 0 {
                let h = *h;
                self.body = None;
                return Ok(Some(Piece::End(h)));
            }
            if buf.is_empty() {
                return Ok(None);
            }
            // `due` ≤ MAX_RECV_FRAME, so both conversions are lossless
            let n = buf.len().min(*due as usize);
            *due -= n as u32;
            return Ok(Some(Piece::Body(h.stream, buf.split_to(n).freeze())));
        }
        let Some(h) = Header::decode(buf)? else {
            return Ok(None);
        };
        buf.advance(HEADER_LEN);
        if h.kind == Kind::Data {
            self.body = Some((h, h.length));
        }
        Ok(Some(Piece::Header(h)))
    }
}

/// Which end of the TLS connection this is: the client opens odd stream ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The dialling side.
    Client,
    /// The accepting side.
    Server,
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most streams open at once; inbound ones beyond it are refused with RST.
    pub max_streams: usize,
    /// Interval between pings.
    pub keep_alive: Duration,
    /// The session ends after receiving nothing for this long.
    pub idle_timeout: Duration,
    /// The TCP congestion controller asked of the kernel for the link's socket.
    pub congestion: super::quic::Congestion,
}

pub use crate::listener::EndWhen;

/// Opens streams on a session; cheap to clone.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux").finish_non_exhaustive()
    }
}

struct Shared {
    inner: Mutex<Inner>,
}

struct Inner {
    tls: rustls::Connection,
    sock: OwnedWriteHalf,
    streams: HashMap<u32, Stream>,
    next_id: u32,
    max_streams: usize,
    /// Inbound streams not yet taken by [`Driver::accept`].
    accepted: VecDeque<u32>,
    /// Encrypted bytes not yet written to the socket (an estimate that is exact at zero).
    queued: usize,
    /// The socket refused a write: the driver waits for it to turn writable.
    want_writable: bool,
    /// When the socket last refused a write.
    refused_at: Option<Instant>,
    driver: Option<Waker>,
    /// Writers waiting for the queue to fall, and the turns handed out.
    sched: Scheduler,
    /// Data bytes the peer may still send, all streams together.
    recv_window: u32,
    /// Data bytes taken by readers, or discarded, since the last session window update.
    unacked: u32,
    /// Data bytes this end may still send, all streams together.
    send_window: u32,
    /// Writers waiting for the session window.
    starved: Vec<Waker>,
    /// Why the session ended, once it has.
    closed: Option<io::ErrorKind>,
    remote_go_away: bool,
    ping_id: u32,
}

/// One stream's state, kept by the session.
struct Stream {
    recv: VecDeque<Bytes>,
    /// Bytes the peer may still send.
    recv_window: u32,
    /// Bytes taken by the reader since the last window update.
    unacked: u32,
    send_window: u32,
    /// SYN or ACK still to be sent with this end's first frame (0 once sent).
    announce: u16,
    /// The stream's priority class ([`MuxWriter::set_class`]).
    class: Class,
    local_fin: bool,
    remote_fin: bool,
    reset: bool,
    reader_open: bool,
    writer_open: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Stream {
    fn new(announce: u16) -> Self {
        Stream {
            recv: VecDeque::new(),
            recv_window: INITIAL_WINDOW,
            unacked: 0,
            send_window: INITIAL_WINDOW,
            announce,
            class: Class::Interactive,
            local_fin: false,
            remote_fin: false,
            reset: false,
            reader_open: true,
            writer_open: true,
            reader: None,
            writer: None,
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// A frame's FIN (the peer sends no more) and RST (the stream is gone) flags.
    fn flags(&mut self, flags: u16) {
        if flags & flag::FIN != 0 {
            self.remote_fin = true;
            if let Some(w) = self.reader.take() {
                w.wake();
            }
        }
        if flags & flag::RST != 0 {
            self.reset = true;
            self.wake();
        }
    }
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
        // the buffer limit is off, so this takes everything (writers wait on `queued`)
        if let Err(e) = io::Write::write_vectored(&mut self.tls.writer(), slices) {
            self.fail(e.kind());
            return;
        }
        // record overhead: 5-byte header, content type and 16-byte tag per 16 KiB
        self.queued += len + 22 * (len / 16_384 + 1);
        if self.queued >= MAX_QUEUED && self.closed.is_none() {
            tracing::warn!(
                queued = self.queued,
                "tunnel peer keeps sending without reading what it is sent; ending the session"
            );
            self.fail(io::ErrorKind::ConnectionAborted);
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
                Ok(n) => self.queued = self.queued.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.refused_at = Some(Instant::now());
                    self.hand_turns();
                    if !self.want_writable {
                        self.want_writable = true;
                        if let Some(d) = &self.driver {
                            d.wake_by_ref();
                        }
                    }
                    return;
                }
                Err(e) => {
                    self.fail(e.kind());
                    return;
                }
            }
        }
        self.queued = 0;
        self.want_writable = false;
        self.hand_turns();
    }

    /// Wakes waiting writers while the queue has room for a frame from each turn handed out
    /// ([`SHARED_FRAME`]); takes back turns unused for [`TURN_TIMEOUT`].
    fn hand_turns(&mut self) {
        if !self.sched.has_waiting() {
            return;
        }
        let now = Instant::now();
        // a woken writer that never wrote (its task stopped writing without dropping the
        // stream): its turn goes to the others
        self.sched.expire(now, TURN_TIMEOUT);
        while self.sched.has_waiting()
            && self.closed.is_none()
            && self.queued + self.sched.turns() * SHARED_FRAME < QUEUE_LIMIT
        {
            let Some(id) = self.sched.next(now) else {
                break;
            };
            match self.streams.get_mut(&id) {
                Some(s) => {
                    if let Some(w) = s.writer.take() {
                        w.wake();
                    }
                }
                None => self.sched.remove(id),
            }
        }
    }

    /// Whether the socket refused a write within [`BACKLOG_HOLD`]: the link is the
    /// bottleneck.
    fn backlogged(&self) -> bool {
        self.refused_at.is_some_and(|t| t.elapsed() < BACKLOG_HOLD)
    }

    /// Ends the session: a close_notify goes out if the socket takes it, the socket is shut
    /// down both ways, and every stream fails with `kind` from now on.
    fn fail(&mut self, kind: io::ErrorKind) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(kind);
        self.tls.send_close_notify();
        self.push(None);
        let _ = socket2::SockRef::from(self.sock.as_ref()).shutdown(std::net::Shutdown::Both);
        for s in self.streams.values_mut() {
            s.wake();
        }
        for w in self.starved.drain(..) {
            w.wake();
        }
        if let Some(d) = self.driver.take() {
            d.wake();
        }
    }

    fn check(&self) -> io::Result<()> {
        match self.closed {
            Some(kind) => Err(io::Error::new(kind, "tunnel session closed")),
            None => Ok(()),
        }
    }

    /// The window update that carries a stream's SYN or ACK and raises the peer's window.
    fn announce(&mut self, id: u32, extra: u16) -> Option<Header> {
        let s = self.streams.get_mut(&id)?;
        let flags = std::mem::take(&mut s.announce);
        if flags == 0 {
            return None;
        }
        s.recv_window += STREAM_WINDOW - INITIAL_WINDOW;
        Some(Header::new(
            Kind::WindowUpdate,
            flags | extra,
            id,
            STREAM_WINDOW - INITIAL_WINDOW,
        ))
    }

    /// `n` received data bytes left the session (taken by a reader, or discarded): give the
    /// session window back once half of it is used. The update is queued; the caller pushes.
    fn released(&mut self, n: usize) {
        // n ≤ what was received, which the session window bounds
        self.unacked = self
            .unacked
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        if self.unacked >= SESSION_WINDOW / 2 && self.closed.is_none() {
            let delta = std::mem::take(&mut self.unacked);
            self.recv_window = self.recv_window.saturating_add(delta);
            self.emit(&[Header::new(Kind::WindowUpdate, 0, 0, delta)], &[]);
        }
    }

    /// The reader took `n` bytes: give the stream's window back once half of it is used, and
    /// the session's likewise.
    fn consumed(&mut self, id: u32, n: usize) {
        self.released(n);
        let Some(s) = self.streams.get_mut(&id) else {
            if self.tls.wants_write() {
                self.push(None);
            }
            return;
        };
        s.unacked = s
            .unacked
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        if s.announce != 0 {
            // an accepted stream's ACK and larger window go with its first write (a tunnel
            // stream's answer), one record for both; a stream that only reads sends them once
            // it has taken half the initial window, long before the peer would have to wait
            if s.unacked >= INITIAL_WINDOW / 2
                && let Some(h) = self.announce(id, 0)
            {
                self.emit(&[h], &[]);
            }
        } else if s.unacked >= STREAM_WINDOW / 2 && !s.remote_fin && !s.reset {
            let delta = std::mem::take(&mut s.unacked);
            s.recv_window = s.recv_window.saturating_add(delta);
            self.emit(&[Header::new(Kind::WindowUpdate, 0, id, delta)], &[]);
        }
        if self.tls.wants_write() {
            self.push(None);
        }
    }

    /// One half of a stream is gone; the stream goes once both are, with an RST if it did not
    /// end cleanly both ways.
    fn half_dropped(&mut self, id: u32, reader: bool) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if reader {
            s.reader_open = false;
            let dropped: usize = s.recv.drain(..).map(|b| b.len()).sum();
            if dropped > 0 {
                self.consumed(id, dropped);
            }
        } else {
            s.writer_open = false;
            self.sched.remove(id);
            self.hand_turns();
            let Some(s) = self.streams.get_mut(&id) else {
                return;
            };
            if s.announce == flag::SYN {
                // never sent anything: nothing to finish on the wire
                s.local_fin = true;
            } else if !s.local_fin && !s.reset && self.closed.is_none() {
                // a writer dropped without finishing ends its direction cleanly
                s.local_fin = true;
                let announce = self.announce(id, flag::FIN);
                let h = announce.unwrap_or(Header::new(Kind::WindowUpdate, flag::FIN, id, 0));
                self.emit(&[h], &[]);
                self.push(None);
            }
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.reader_open || s.writer_open {
            return;
        }
        let clean = (s.local_fin && s.remote_fin) || s.reset;
        let known = s.announce != flag::SYN;
        self.streams.remove(&id);
        if !clean && known && self.closed.is_none() {
            self.emit(&[Header::new(Kind::WindowUpdate, flag::RST, id, 0)], &[]);
            self.push(None);
        }
    }

    /// Acts on one piece of the peer's frames.
    fn handle(&mut self, piece: Piece, role: Role) -> io::Result<()> {
        match piece {
            Piece::Header(h) => self.header(h, role),
            Piece::Body(id, bytes) => {
                self.body(id, bytes);
                Ok(())
            }
            Piece::End(h) => {
                if let Some(s) = self.streams.get_mut(&h.stream) {
                    s.flags(h.flags);
                }
                Ok(())
            }
        }
    }

    /// A frame header: Ping, Go Away and Window Update frames whole; a data frame's stream
    /// opening and its length charged to the stream's receive window.
    fn header(&mut self, h: Header, role: Role) -> io::Result<()> {
        let protocol = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        match h.kind {
            Kind::Ping => {
                if h.flags & flag::SYN != 0 {
                    self.emit(&[Header::new(Kind::Ping, flag::ACK, 0, h.length)], &[]);
                }
                return Ok(());
            }
            Kind::GoAway => {
                self.remote_go_away = true;
                return Ok(());
            }
            Kind::Data | Kind::WindowUpdate => {}
        }
        let id = h.stream;
        if id == 0 {
            if h.kind != Kind::WindowUpdate || h.flags != 0 {
                return Err(protocol("yamux stream frame on stream 0"));
            }
            self.send_window = self.send_window.saturating_add(h.length);
            for w in self.starved.drain(..) {
                w.wake();
            }
            return Ok(());
        }
        if h.kind == Kind::Data {
            // every data frame counts, also one for a stream refused or gone (discarded)
            if h.length > self.recv_window {
                return Err(protocol("yamux data beyond the session's window"));
            }
            self.recv_window -= h.length;
        }
        if h.flags & flag::SYN != 0 {
            // the peer opens ids of its own parity: odd from the client
            let peer_odd = role == Role::Server;
            if (id % 2 == 1) != peer_odd || self.streams.contains_key(&id) {
                return Err(protocol(
                    "yamux SYN for a stream id in use or not the peer's",
                ));
            }
            if self.streams.len() >= self.max_streams || self.accepted.len() >= ACCEPT_BACKLOG {
                self.emit(&[Header::new(Kind::WindowUpdate, flag::RST, id, 0)], &[]);
                return Ok(());
            }
            self.streams.insert(id, Stream::new(flag::ACK));
            self.accepted.push_back(id);
        }
        let Some(s) = self.streams.get_mut(&id) else {
            // a late frame for a stream this end has dropped
            return Ok(());
        };
        if h.kind == Kind::WindowUpdate {
            s.send_window = s.send_window.saturating_add(h.length);
            if let Some(w) = s.writer.take() {
                w.wake();
            }
            s.flags(h.flags);
        } else {
            if h.length > s.recv_window {
                return Err(protocol("yamux data beyond the stream's window"));
            }
            s.recv_window -= h.length;
        }
        Ok(())
    }

    /// Part of a data frame's payload, for the stream's reader (its window was charged with
    /// the whole frame at the header).
    fn body(&mut self, id: u32, bytes: Bytes) {
        let Some(s) = self.streams.get_mut(&id) else {
            // a refused stream's, or a late one's: discarded
            self.released(bytes.len());
            return;
        };
        if s.reader_open {
            // a payload is a slice of the buffer its read was decrypted into (up to
            // READ_CHUNK + a record) and would keep all of it alive while queued: a peer sending
            // a stalled stream one byte per read would hold that much per byte of window. A
            // small piece gets an allocation of its own, so what a stream holds stays within
            // four times its queued bytes.
            s.recv.push_back(unpinned(bytes));
            if let Some(w) = s.reader.take() {
                w.wake();
            }
        } else {
            // nobody reads: discarded as if taken, so the windows come back and the sender is
            // not stuck
            self.consumed(id, bytes.len());
        }
    }
}

/// `piece` itself, or a copy of it in an allocation of its own when it is shorter than
/// [`PIN_BELOW`] (see [`Inner::body`]).
fn unpinned(piece: Bytes) -> Bytes {
    if piece.len() < PIN_BELOW {
        Bytes::copy_from_slice(&piece)
    } else {
        piece
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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
fn tune_link_socket(tcp: &TcpStream, congestion: super::quic::Congestion) {
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

/// Stream `id` for its writer. Errors: the session ended, or the stream is gone or was reset.
fn sending(inner: &mut Inner, id: u32) -> io::Result<&mut Stream> {
    inner.check()?;
    let s = inner
        .streams
        .get_mut(&id)
        .ok_or(io::ErrorKind::NotConnected)?;
    if s.reset {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "tunnel stream reset",
        ));
    }
    Ok(s)
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::time::SystemTime;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const BOUND: Duration = Duration::from_secs(10);

    fn config(max_streams: usize) -> Config {
        Config {
            max_streams,
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            congestion: crate::tunnel::quic::Congestion::default(),
        }
    }

    /// A TLS 1.3 connection over loopback: the server's socket and session, and the client's
    /// stream (handshakes done).
    async fn tls_pair() -> (
        (TcpStream, rustls::ServerConnection),
        tokio_rustls::client::TlsStream<TcpStream>,
    ) {
        tls_pair_via(None).await
    }

    /// TLS 1.3 configs for a server named `org1.t.test` and a client that trusts it, from a
    /// test PKI made now.
    pub(in crate::tunnel) fn tls_configs() -> (rustls::ServerConfig, rustls::ClientConfig) {
        let now = SystemTime::now();
        let root = fedgw_certs::CertificateAuthority::new_root("c", "t.test", now).expect("root");
        let leaf = root
            .issue_node_leaf(
                &["org1.t.test".to_owned()],
                "org1",
                "t.test",
                Duration::from_secs(3600),
                now,
            )
            .expect("leaf");
        let provider = fedgw_certs::tls::provider();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(leaf.chain, leaf.key.into())
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.cert().clone()).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server, client)
    }

    /// [`tls_pair`], the client's bytes passing a [`throttle`] of `rate` bytes/s when given.
    async fn tls_pair_via(
        rate: Option<usize>,
    ) -> (
        (TcpStream, rustls::ServerConnection),
        tokio_rustls::client::TlsStream<TcpStream>,
    ) {
        let (server, client) = tls_configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let accept = async {
            let (tcp, _) = listener.accept().await.expect("accept");
            let tls = tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(tcp)
                .await
                .expect("server handshake");
            tls.into_inner()
        };
        let dial = match rate {
            Some(rate) => throttle(addr, rate).await,
            None => addr,
        };
        let connect = async {
            let tcp = TcpStream::connect(dial).await.expect("connect");
            let name = rustls_pki_types::ServerName::try_from("org1.t.test").expect("name");
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .expect("client handshake")
        };
        tokio::join!(accept, connect)
    }

    /// A TCP forwarder to `to` on loopback: its address. Bytes towards `to` pass at `rate`
    /// bytes/s (a slice every 10 ms) through a 64 KiB receive buffer, so whoever sends
    /// faster fills the buffers in front of it, as on a saturated WAN link; the other way
    /// passes at once.
    async fn throttle(to: std::net::SocketAddr, rate: usize) -> std::net::SocketAddr {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let listener = socket.listen(1).expect("listen");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let Ok((mut near, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut far) = TcpStream::connect(to).await else {
                return;
            };
            let (mut near_r, mut near_w) = near.split();
            let (mut far_r, mut far_w) = far.split();
            let up = async {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let mut buf = vec![0u8; rate / 100];
                loop {
                    tick.tick().await;
                    match near_r.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if far_w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            };
            let down = tokio::io::copy(&mut far_r, &mut near_w);
            let _ = tokio::join!(up, down);
        });
        addr
    }

    /// Two sessions over one TLS 1.3 connection on loopback: (client mux, client driver),
    /// (server mux, driver).
    pub(in crate::tunnel) async fn sessions(max_streams: usize) -> ((Mux, Driver), (Mux, Driver)) {
        let ((stcp, stls), client) = tls_pair().await;
        let (ctcp, ctls) = client.into_inner();
        let c = session(ctcp, ctls.into(), Role::Client, &config(max_streams), None);
        let s = session(stcp, stls.into(), Role::Server, &config(max_streams), None);
        (c, s)
    }

    /// Runs a driver in its own task, handing accepted streams to the returned channel.
    pub(in crate::tunnel) fn drive(
        mut driver: Driver,
    ) -> tokio::sync::mpsc::UnboundedReceiver<(MuxReader, MuxWriter)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(stream) = driver.accept().await {
                if tx.send(stream).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// The streams a driver run by [`drive`] accepts.
    pub(in crate::tunnel) type Accepted =
        tokio::sync::mpsc::UnboundedReceiver<(MuxReader, MuxWriter)>;

    /// Two sessions with their drivers running: (client mux, streams the client accepts,
    /// server mux, streams the server accepts).
    pub(in crate::tunnel) async fn connected(max_streams: usize) -> (Mux, Accepted, Mux, Accepted) {
        let ((client, cdriver), (server, sdriver)) = sessions(max_streams).await;
        (client, drive(cdriver), server, drive(sdriver))
    }

    /// A stream `client` opened with one byte, `byte`, which the accepting side has read:
    /// `(client's halves, accepting side's halves)`.
    async fn opened(
        client: &Mux,
        accepted: &mut Accepted,
        byte: u8,
    ) -> ((MuxReader, MuxWriter), (MuxReader, MuxWriter)) {
        let (cr, mut cw) = client.open().expect("open");
        cw.write_all(&[byte]).await.expect("write");
        let (mut sr, sw) = bounded("accept", accepted.recv()).await.expect("accepted");
        let mut b = [0u8; 1];
        sr.read_exact(&mut b).await.expect("read");
        assert_eq!(b[0], byte);
        ((cr, cw), (sr, sw))
    }

    /// Everything `r` delivers up to its end of stream, within the bound.
    pub(in crate::tunnel) async fn read_to_fin<R: tokio::io::AsyncRead + Unpin>(
        r: &mut R,
    ) -> Vec<u8> {
        let mut got = Vec::new();
        bounded("read to FIN", r.read_to_end(&mut got))
            .await
            .expect("read");
        got
    }

    /// `f`, or a panic naming `what` if it takes longer than the bound.
    pub(in crate::tunnel) async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
        tokio::time::timeout(BOUND, f)
            .await
            .unwrap_or_else(|_| panic!("{what} took over {BOUND:?}"))
    }

    #[test]
    fn headers_round_trip_and_bad_ones_are_refused() {
        let h = Header::new(Kind::WindowUpdate, flag::SYN | flag::FIN, 7, 65_536);
        let b = h.encode();
        assert_eq!(b, [0, 1, 0, 5, 0, 0, 0, 7, 0, 1, 0, 0]);
        assert_eq!(Header::decode(&b), Ok(Some(h)));
        assert_eq!(Header::decode(&b[..11]), Ok(None));
        let mut bad = b;
        bad[0] = 1;
        assert_eq!(Header::decode(&bad), Err(FrameError::Version(1)));
        bad = b;
        bad[1] = 4;
        assert_eq!(Header::decode(&bad), Err(FrameError::Type(4)));
        let long = Header::new(Kind::Data, 0, 1, MAX_RECV_FRAME + 1).encode();
        assert_eq!(
            Header::decode(&long),
            Err(FrameError::TooLong(MAX_RECV_FRAME + 1))
        );
    }

    /// The whole frames in `buf` (payload pieces joined), up to the first incomplete one.
    fn whole_frames(buf: &mut BytesMut) -> Vec<(Header, Vec<u8>)> {
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        let mut body = Vec::new();
        while let Ok(Some(piece)) = reader.next(buf) {
            match piece {
                Piece::Header(h) if h.kind != Kind::Data => out.push((h, Vec::new())),
                Piece::Header(_) => {}
                Piece::Body(_, b) => body.extend_from_slice(&b),
                Piece::End(h) => out.push((h, std::mem::take(&mut body))),
            }
        }
        out
    }

    #[test]
    fn a_data_frame_is_handed_on_as_its_payload_arrives() {
        let mut reader = FrameReader::default();
        let mut buf = BytesMut::new();
        let data = Header::new(Kind::Data, flag::FIN, 3, 5);
        buf.extend_from_slice(&data.encode()[..7]);
        assert_eq!(reader.next(&mut buf), Ok(None));
        assert_eq!(buf.len(), 7, "a partial header stays put");
        buf.extend_from_slice(&data.encode()[7..]);
        buf.extend_from_slice(b"hel");
        assert_eq!(reader.next(&mut buf), Ok(Some(Piece::Header(data))));
        assert_eq!(
            reader.next(&mut buf),
            Ok(Some(Piece::Body(3, Bytes::from_static(b"hel"))))
        );
        assert_eq!(reader.next(&mut buf), Ok(None), "the rest has not arrived");
        buf.extend_from_slice(b"lo");
        buf.extend_from_slice(&Header::new(Kind::Ping, flag::SYN, 0, 9).encode());
        assert_eq!(
            reader.next(&mut buf),
            Ok(Some(Piece::Body(3, Bytes::from_static(b"lo")))),
            "a body piece stops at the frame's end"
        );
        assert_eq!(reader.next(&mut buf), Ok(Some(Piece::End(data))));
        assert_eq!(
            reader.next(&mut buf),
            Ok(Some(Piece::Header(Header::new(
                Kind::Ping,
                flag::SYN,
                0,
                9
            ))))
        );
        assert!(buf.is_empty());
        assert_eq!(reader.next(&mut buf), Ok(None));

        // an empty data frame still ends, and the next header follows it
        let empty = Header::new(Kind::Data, flag::RST, 5, 0);
        buf.extend_from_slice(&empty.encode());
        buf.extend_from_slice(&Header::new(Kind::GoAway, 0, 0, 0).encode());
        let frames = whole_frames(&mut buf);
        assert_eq!(
            frames,
            vec![
                (empty, Vec::new()),
                (Header::new(Kind::GoAway, 0, 0, 0), Vec::new())
            ]
        );
    }

    #[test]
    fn a_header_that_breaks_the_protocol_is_an_error_where_it_starts() {
        let mut reader = FrameReader::default();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&Header::new(Kind::Data, 0, 1, 2).encode());
        buf.extend_from_slice(b"ok");
        buf.extend_from_slice(&Header::new(Kind::Data, 0, 1, MAX_RECV_FRAME + 1).encode());
        assert!(matches!(reader.next(&mut buf), Ok(Some(Piece::Header(_)))));
        assert!(matches!(reader.next(&mut buf), Ok(Some(Piece::Body(1, _)))));
        assert!(matches!(reader.next(&mut buf), Ok(Some(Piece::End(_)))));
        assert_eq!(
            reader.next(&mut buf),
            Err(FrameError::TooLong(MAX_RECV_FRAME + 1))
        );
    }

    #[tokio::test]
    async fn streams_carry_bytes_both_ways_with_half_close() {
        let (client, _c, _server, mut accepted) = connected(16).await;
        let (mut cr, mut cw) = client.open().expect("open");
        assert_eq!(cr.id() % 2, 1, "the client opens odd ids");
        cw.write_all(b"hello").await.expect("write");
        cw.shutdown().await.expect("FIN");
        let (mut sr, mut sw) = bounded("accept", accepted.recv()).await.expect("accepted");
        let got = read_to_fin(&mut sr).await;
        assert_eq!(got, b"hello");
        // the other direction still works after the client's FIN
        sw.write_all(b"world").await.expect("write");
        sw.shutdown().await.expect("FIN");
        let got = read_to_fin(&mut cr).await;
        assert_eq!(got, b"world");
        drop((cr, cw, sr, sw));
        assert_eq!(
            client.streams(),
            0,
            "a stream goes once both halves are dropped"
        );
    }

    #[tokio::test]
    async fn a_last_write_carries_the_fin() {
        let (client, _c, _server, mut accepted) = connected(16).await;
        // several frames' worth: the FIN goes with the last one only
        let (_cr, mut cw) = client.open().expect("open");
        // (more than the initial window: the far end reads while the writer writes)
        let big: Vec<u8> = (0..3 * MAX_FRAME + 5).map(|i| (i % 253) as u8).collect();
        let write = async {
            let mut rest = &big[..];
            while !rest.is_empty() {
                let n = bounded(
                    "write",
                    std::future::poll_fn(|cx| cw.poll_write_fin(cx, rest)),
                )
                .await
                .expect("write");
                rest = &rest[n..];
            }
        };
        let read = async {
            let (mut sr, _sw) = bounded("accept", accepted.recv()).await.expect("accepted");
            read_to_fin(&mut sr).await
        };
        let ((), got) = tokio::join!(write, read);
        assert!(got == big, "bytes differ");
        let err = cw.write_all(b"x").await.expect_err("finished");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        // an empty last write is a plain shutdown
        let (_cr, mut cw) = client.open().expect("open");
        cw.write_all(b"x").await.expect("write");
        let n = bounded("FIN", std::future::poll_fn(|cx| cw.poll_write_fin(cx, b"")))
            .await
            .expect("FIN");
        assert_eq!(n, 0);
        let (mut sr, _sw) = bounded("accept", accepted.recv()).await.expect("accepted");
        let got = read_to_fin(&mut sr).await;
        assert_eq!(got, b"x");
    }

    #[tokio::test]
    async fn a_writer_waits_for_window_and_resumes_when_the_reader_takes_data() {
        let (client, _c, _server, mut accepted) = connected(16).await;
        let (_cr, mut cw) = client.open().expect("open");
        // until the far end answers or reads, the window is the initial one
        let first = vec![1u8; INITIAL_WINDOW as usize];
        cw.write_all(&first).await.expect("initial window");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            Pin::new(&mut cw).poll_write(&mut cx, b"x").is_pending(),
            "a writer with no window left waits"
        );
        let (mut sr, _sw) = bounded("accept", accepted.recv()).await.expect("accepted");
        // reading raises the window to STREAM_WINDOW: twice that goes through while the
        // reader takes it, byte-exact
        let total = INITIAL_WINDOW as usize + 2 * STREAM_WINDOW as usize;
        let chunk = pattern(0, MAX_FRAME);
        let write = write_repeated(&mut cw, &chunk, total - INITIAL_WINDOW as usize);
        let read = async {
            let mut got = vec![0u8; INITIAL_WINDOW as usize];
            sr.read_exact(&mut got).await.expect("first window");
            assert!(got.iter().all(|&b| b == 1));
            let mut rest = Vec::new();
            sr.read_to_end(&mut rest).await.expect("rest");
            rest
        };
        let ((), rest) = bounded("transfer", async { tokio::join!(write, read) }).await;
        assert_eq!(rest.len(), total - INITIAL_WINDOW as usize);
        assert!(
            rest.chunks(MAX_FRAME)
                .all(|c| c.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8)),
            "bytes differ"
        );
    }

    /// Writes `total` bytes to `w`, `chunk` after `chunk` (a prefix of it last), then FIN.
    async fn write_repeated(w: &mut MuxWriter, chunk: &[u8], total: usize) {
        let mut sent = 0;
        while sent < total {
            let n = (total - sent).min(chunk.len());
            w.write_all(&chunk[..n]).await.expect("write");
            sent += n;
        }
        w.shutdown().await.expect("FIN");
    }

    /// `len` bytes of stream `tag`'s pattern.
    fn pattern(tag: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ tag).collect()
    }

    #[tokio::test]
    async fn a_small_write_goes_within_a_bound_while_another_stream_fills_a_slow_link() {
        // 2 MiB/s: what the session and the kernel hold in front of a new frame (the
        // session's queue, the unsent and unacknowledged bytes, the forwarder's buffer: some
        // 300 KiB) passes in about 0.15 s
        let ((stcp, stls), client) = tls_pair_via(Some(2 * 1024 * 1024)).await;
        let (ctcp, ctls) = client.into_inner();
        let (client, cdriver) = session(ctcp, ctls.into(), Role::Client, &config(16), None);
        let (_server, sdriver) = session(stcp, stls.into(), Role::Server, &config(16), None);
        let (_c, mut accepted) = (drive(cdriver), drive(sdriver));
        // a bulk stream that writes for as long as the test runs; its reader takes all
        let (_br, mut bw) = client.open().expect("open");
        bw.set_class(Class::Bulk);
        let _bulk = AbortOnDrop(tokio::spawn(async move {
            let chunk = vec![0u8; MAX_FRAME];
            while bw.write_all(&chunk).await.is_ok() {}
        }));
        let (mut sr, _sw) = bounded("accept", accepted.recv()).await.expect("accepted");
        let (filled, mut full) = tokio::sync::oneshot::channel();
        let _drain = AbortOnDrop(tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            let mut filled = Some(filled);
            while let Ok(n @ 1..) = sr.read(&mut buf).await {
                got += n;
                if got >= 1024 * 1024
                    && let Some(f) = filled.take()
                {
                    let _ = f.send(());
                }
            }
        }));
        // half a second of bulk data through: every queue in front of the link is full
        bounded("the link fills", &mut full).await.expect("filled");
        // another stream of the same class, then one of a higher class: each small write
        // reaches the far end within the bound (before turns, a writer woken when the queue
        // drained found the bulk writer had filled it again: it waited for as long as the
        // bulk stream wrote)
        for class in [Class::Bulk, Class::Interactive, Class::Consensus] {
            let (_r, mut w) = client.open().expect("open");
            w.set_class(class);
            let start = Instant::now();
            let message = [class as u8; 64];
            let sent = async {
                w.write_all(&message).await.expect("write");
                let (mut r, _w) = accepted.recv().await.expect("accepted");
                let mut got = [0u8; 64];
                r.read_exact(&mut got).await.expect("read");
                assert_eq!(got, message);
            };
            bounded("a small write through a full link", sent).await;
            let took = start.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "a {class:?} write took {took:?} behind a bulk stream"
            );
        }
    }

    /// Aborts the task when dropped.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);

    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    #[tokio::test]
    async fn the_session_window_bounds_what_all_streams_have_in_flight() {
        let (client, _c, _server, mut accepted) = connected(64).await;
        // one stream more than the session window holds full stream windows of
        let full = (SESSION_WINDOW / STREAM_WINDOW) as usize;
        let mut streams = Vec::new();
        for tag in 0..=full as u8 {
            let ((mut cr, cw), (sr, mut sw)) = opened(&client, &mut accepted, tag).await;
            // the answer carries the ACK that raises the stream's window to STREAM_WINDOW
            sw.write_all(&[tag]).await.expect("answer");
            let mut b = [0u8; 1];
            bounded("answer", cr.read_exact(&mut b))
                .await
                .expect("answer");
            streams.push((cw, sr));
        }
        let stream = STREAM_WINDOW as usize - 1;
        // full stream windows, then what is left of the session's on the last of those streams
        // (the one-byte headers took their share)
        let session_left = SESSION_WINDOW as usize - streams.len() - (full - 1) * stream;
        for (i, (cw, _)) in streams.iter_mut().take(full).enumerate() {
            let len = if i + 1 < full { stream } else { session_left };
            let data = pattern(i as u8, len);
            bounded("write", cw.write_all(&data)).await.expect("write");
        }
        assert_eq!(client.shared.lock().send_window, 0);
        // the last stream has its whole window, but the session has nothing left
        let (mut last_w, mut last_r) = streams.pop().expect("last");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            Pin::new(&mut last_w).poll_write(&mut cx, b"x").is_pending(),
            "a writer waits for the session window"
        );
        let data = pattern(0xff, 1024 * 1024);
        let write = tokio::spawn(async move {
            write_repeated(&mut last_w, &data, data.len()).await;
            last_w
        });
        // readers dropped with their data unread give the session's window back: half of it
        // has to come back before an update goes out
        for _ in 0..full / 2 {
            let (_cw, sr) = streams.remove(0);
            drop(sr);
        }
        let _last_w = bounded("the waiting writer", write).await.expect("writer");
        let got = read_to_fin(&mut last_r).await;
        assert!(
            got == pattern(0xff, 1024 * 1024),
            "last stream's bytes differ"
        );
        let (_, sr) = &mut streams[0];
        let mut got = vec![0u8; stream];
        bounded("read", sr.read_exact(&mut got))
            .await
            .expect("read");
        assert!(got == pattern((full / 2) as u8, stream), "bytes differ");
    }

    #[tokio::test]
    async fn discarded_and_taken_data_give_the_session_window_back() {
        let (client, _c, _server, mut accepted) = connected(16).await;
        // more than the session window on a stream whose reader is gone (discarded on
        // arrival), then on one that is read
        let total = SESSION_WINDOW as usize + 16 * 1024 * 1024;
        let chunk = pattern(9, MAX_FRAME);
        for read in [false, true] {
            let ((mut cr, mut cw), (sr, mut sw)) = opened(&client, &mut accepted, 1).await;
            sw.write_all(b"a").await.expect("answer");
            let mut b = [0u8; 1];
            bounded("answer", cr.read_exact(&mut b))
                .await
                .expect("answer");
            let mut sr = Some(sr);
            if !read {
                drop(sr.take());
            }
            let write = write_repeated(&mut cw, &chunk, total);
            let take = async {
                let Some(sr) = sr.as_mut() else {
                    return 0;
                };
                let got = read_to_fin(sr).await;
                assert!(
                    got.chunks(MAX_FRAME).all(|c| c == &chunk[..c.len()]),
                    "bytes differ"
                );
                got.len()
            };
            let ((), got) = bounded("transfer", async { tokio::join!(write, take) }).await;
            if read {
                assert_eq!(got, total);
            }
        }
    }

    #[tokio::test]
    async fn reset_and_a_dropped_session_fail_the_streams() {
        let (client, _c, _server, mut accepted) = connected(16).await;
        let ((cr, mut cw), (mut sr, _sw)) = opened(&client, &mut accepted, b'x').await;
        let mut b = [0u8; 1];
        cw.reset();
        let err = bounded("reset", sr.read(&mut b)).await.expect_err("reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);

        // a second stream, then the server's driver goes away: the client's reader fails
        let ((mut r2, _w2), (mut sr2, _sw2)) = opened(&client, &mut accepted, b'y').await;
        drop(accepted);
        // the accept loop ends at the next stream; the receiver is gone, so it drops the driver
        let (_r3, mut w3) = client.open().expect("open");
        w3.write_all(b"z").await.expect("write");
        let end = bounded("session end", sr2.read(&mut b)).await;
        assert!(end.is_err(), "a stream of a dropped session fails: {end:?}");
        let end = bounded("session end", r2.read(&mut b)).await;
        assert!(end.is_err(), "the client's streams fail too: {end:?}");
        drop(cr);
        assert!(client.is_closed());
        assert!(client.open().is_err(), "a closed session opens no streams");
    }

    #[test]
    fn a_small_piece_does_not_hold_its_reads_buffer() {
        let read = Bytes::from(vec![7u8; READ_CHUNK + MAX_RECORD_PLAINTEXT]);
        let small = unpinned(read.slice(100..164));
        assert_eq!(&small[..], &[7u8; 64][..]);
        assert!(read.is_unique(), "a 64-byte piece keeps its own copy");
        let large = unpinned(read.slice(0..PIN_BELOW));
        assert_eq!(large.len(), PIN_BELOW);
        assert!(
            !read.is_unique(),
            "a large piece stays a view of the read's buffer"
        );
    }

    #[tokio::test]
    async fn an_accepted_stream_reset_before_its_first_write_reaches_the_opener() {
        let (client, _c, _server, mut accepted) = connected(16).await;
        let ((mut cr, _cw), (_sr, mut sw)) = opened(&client, &mut accepted, b'x').await;
        let mut b = [0u8; 1];
        // the accepting end fails before it answered (its ACK is still unsent)
        sw.reset();
        let err = bounded("reset", cr.read(&mut b)).await.expect_err("reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);

        // the same when both halves are simply dropped without finishing
        let ((mut cr2, mut cw2), (sr2, sw2)) = opened(&client, &mut accepted, b'y').await;
        drop(sw2);
        drop(sr2);
        // the dropped writer finished its direction (ACK|FIN); the dropped reader left the
        // client's direction unfinished, so an RST follows
        let got = bounded("end", cr2.read(&mut b)).await;
        assert!(
            matches!(&got, Ok(0))
                || matches!(&got, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{got:?}"
        );
        let more = bounded("write after peer gone", async {
            loop {
                if let Err(e) = cw2.write_all(&[0u8; 4096]).await {
                    return e;
                }
            }
        })
        .await;
        assert_eq!(more.kind(), io::ErrorKind::ConnectionReset);
    }

    /// A raw TLS client writes `frames`; returns how the server's driver ended and what the
    /// server wrote back (decrypted).
    async fn raw_peer(frames: Vec<u8>, max_streams: usize) -> (io::Error, Vec<u8>) {
        let ((stcp, stls), client) = tls_pair().await;
        let (_mux, mut driver) =
            session(stcp, stls.into(), Role::Server, &config(max_streams), None);
        let (mut client, mut send) = tokio::io::split(client);
        // the server may end the session before it has read everything
        let write = async move {
            let _ = send.write_all(&frames).await;
            send
        };
        let ended = async move {
            // held, so the server keeps them open
            let mut held = Vec::new();
            loop {
                match driver.accept().await {
                    Ok(stream) => held.push(stream),
                    // the driver goes here: the session's end reaches the client
                    Err(e) => return e,
                }
            }
        };
        let mut back = Vec::new();
        let read = async {
            let _ = client.read_to_end(&mut back).await;
        };
        let (e, (), _send) =
            bounded("driver end", async { tokio::join!(ended, read, write) }).await;
        (e, back)
    }

    fn frame(kind: Kind, flags: u16, stream: u32, length: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Header::new(kind, flags, stream, length).encode().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[tokio::test]
    async fn protocol_errors_end_the_session() {
        let mut bad_version = frame(Kind::Ping, flag::SYN, 0, 1, &[]);
        bad_version[0] = 1;
        // an even id is the server's own
        let wrong_parity = frame(Kind::WindowUpdate, flag::SYN, 2, 0, &[]);
        let mut reused = frame(Kind::WindowUpdate, flag::SYN, 1, 0, &[]);
        reused.extend(frame(Kind::WindowUpdate, flag::SYN, 1, 0, &[]));
        // more than the initial window before the server raised it
        let mut flood = frame(Kind::WindowUpdate, flag::SYN, 1, 0, &[]);
        for _ in 0..5 {
            flood.extend(frame(Kind::Data, 0, 1, 64 * 1024, &vec![0u8; 64 * 1024]));
        }
        let on_zero = frame(Kind::Data, 0, 0, 1, b"x");
        let zero_flags = frame(Kind::WindowUpdate, flag::SYN, 0, 1, &[]);
        // every stream within its initial window, all of them beyond the session's
        let streams = SESSION_WINDOW / INITIAL_WINDOW + 1;
        let mut session_flood = Vec::new();
        for i in 0..streams {
            let body = vec![0u8; INITIAL_WINDOW as usize];
            session_flood.extend(frame(
                Kind::Data,
                flag::SYN,
                2 * i + 1,
                INITIAL_WINDOW,
                &body,
            ));
        }
        for (name, frames, max_streams) in [
            ("version", bad_version, 16),
            ("parity", wrong_parity, 16),
            ("reused id", reused, 16),
            ("window", flood, 16),
            ("stream 0", on_zero, 16),
            ("flags on stream 0", zero_flags, 16),
            ("session window", session_flood, 1024),
        ] {
            let (e, _) = raw_peer(frames, max_streams).await;
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{name}: {e}");
        }
    }

    #[tokio::test]
    async fn a_peer_that_sends_without_reading_ends_the_session() {
        let ((stcp, stls), mut client) = tls_pair().await;
        // small buffers on the answers' way, so they queue up in the session soon
        socket2::SockRef::from(&stcp)
            .set_send_buffer_size(4096)
            .expect("SO_SNDBUF");
        socket2::SockRef::from(client.get_ref().0)
            .set_recv_buffer_size(4096)
            .expect("SO_RCVBUF");
        let (_mux, mut driver) = session(stcp, stls.into(), Role::Server, &config(16), None);
        let ended = tokio::spawn(async move {
            loop {
                if let Err(e) = driver.accept().await {
                    return e;
                }
            }
        });
        // pings, never reading the answers: each answer is a 34-byte record, so the session
        // gives up after some 120 000 of them; 400 000 is the bound
        let batch: Vec<u8> = (0..1000u32)
            .flat_map(|i| frame(Kind::Ping, flag::SYN, 0, i, &[]))
            .collect();
        let flood = async {
            for _ in 0..400 {
                if client.write_all(&batch).await.is_err() || client.flush().await.is_err() {
                    return;
                }
            }
        };
        let (e, ()) = bounded("driver end", async { tokio::join!(ended, flood) }).await;
        let e = e.expect("driver task");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{e}");
    }

    #[tokio::test]
    async fn streams_beyond_the_limit_are_refused_and_pings_answered() {
        let mut frames = Vec::new();
        for id in [1, 3, 5] {
            frames.extend(frame(Kind::WindowUpdate, flag::SYN, id, 0, &[]));
        }
        frames.extend(frame(Kind::Ping, flag::SYN, 0, 42, &[]));
        // then a protocol error, so the session ends and the test can read everything back
        frames.extend(frame(Kind::Data, 0, 0, 0, &[]));
        let (e, back) = raw_peer(frames, 2).await;
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut buf = BytesMut::from(&back[..]);
        let got: Vec<Header> = whole_frames(&mut buf).into_iter().map(|(h, _)| h).collect();
        assert!(
            got.contains(&Header::new(Kind::WindowUpdate, flag::RST, 5, 0)),
            "the third stream is refused: {got:?}"
        );
        assert!(
            !got.iter()
                .any(|h| h.flags & flag::RST != 0 && h.stream != 5),
            "the first two are not: {got:?}"
        );
        assert!(
            got.contains(&Header::new(Kind::Ping, flag::ACK, 0, 42)),
            "the ping is answered: {got:?}"
        );
    }
}
