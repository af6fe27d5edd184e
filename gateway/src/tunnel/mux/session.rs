//! The state of a yamux session shared by its streams and its driver.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::Instant;

use bytes::Bytes;
use tokio::net::tcp::OwnedWriteHalf;

use super::frame::{HEADER_LEN, Header, Kind, Piece, flag};
use super::io::SockWriter;
use super::sched::Scheduler;
use super::{
    ACCEPT_BACKLOG, BACKLOG_HOLD, INITIAL_WINDOW, MAX_QUEUED, PIN_BELOW, QUEUE_LIMIT, Role,
    SESSION_WINDOW, SHARED_FRAME, STREAM_WINDOW, TURN_TIMEOUT,
};
use crate::tunnel::class::Class;

pub(super) struct Shared {
    pub(super) inner: Mutex<Inner>,
}

pub(super) struct Inner {
    pub(super) tls: rustls::Connection,
    pub(super) sock: OwnedWriteHalf,
    pub(super) streams: HashMap<u32, Stream>,
    pub(super) next_id: u32,
    pub(super) max_streams: usize,
    /// Inbound streams not yet taken by [`Driver::accept`].
    pub(super) accepted: VecDeque<u32>,
    /// Encrypted bytes not yet written to the socket (an estimate that is exact at zero).
    pub(super) queued: usize,
    /// The socket refused a write: the driver waits for it to turn writable.
    pub(super) want_writable: bool,
    /// When the socket last refused a write.
    pub(super) refused_at: Option<Instant>,
    pub(super) driver: Option<Waker>,
    /// Writers waiting for the queue to fall, and the turns handed out.
    pub(super) sched: Scheduler,
    /// Data bytes the peer may still send, all streams together.
    pub(super) recv_window: u32,
    /// Data bytes taken by readers, or discarded, since the last session window update.
    pub(super) unacked: u32,
    /// Data bytes this end may still send, all streams together.
    pub(super) send_window: u32,
    /// Writers waiting for the session window.
    pub(super) starved: Vec<Waker>,
    /// Why the session ended, once it has.
    pub(super) closed: Option<io::ErrorKind>,
    pub(super) remote_go_away: bool,
    pub(super) ping_id: u32,
}

/// One stream's state, kept by the session.
pub(super) struct Stream {
    pub(super) recv: VecDeque<Bytes>,
    /// Bytes the peer may still send.
    pub(super) recv_window: u32,
    /// Bytes taken by the reader since the last window update.
    pub(super) unacked: u32,
    pub(super) send_window: u32,
    /// SYN or ACK still to be sent with this end's first frame (0 once sent).
    pub(super) announce: u16,
    /// The stream's priority class ([`MuxWriter::set_class`]).
    pub(super) class: Class,
    pub(super) local_fin: bool,
    pub(super) remote_fin: bool,
    pub(super) reset: bool,
    pub(super) reader_open: bool,
    pub(super) writer_open: bool,
    pub(super) reader: Option<Waker>,
    pub(super) writer: Option<Waker>,
}

impl Stream {
    pub(super) fn new(announce: u16) -> Self {
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

    pub(super) fn wake(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// A frame's FIN (the peer sends no more) and RST (the stream is gone) flags.
    pub(super) fn flags(&mut self, flags: u16) {
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

impl Inner {
    /// Encrypts frames (one or two headers, then `payload` after the last) as one TLS write.
    pub(super) fn emit(&mut self, headers: &[Header], payload: &[u8]) {
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
    pub(super) fn push(&mut self, cx: Option<&mut Context<'_>>) {
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
    pub(super) fn hand_turns(&mut self) {
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
    pub(super) fn backlogged(&self) -> bool {
        self.refused_at.is_some_and(|t| t.elapsed() < BACKLOG_HOLD)
    }

    /// Ends the session: a close_notify goes out if the socket takes it, the socket is shut
    /// down both ways, and every stream fails with `kind` from now on.
    pub(super) fn fail(&mut self, kind: io::ErrorKind) {
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

    pub(super) fn check(&self) -> io::Result<()> {
        match self.closed {
            Some(kind) => Err(io::Error::new(kind, "tunnel session closed")),
            None => Ok(()),
        }
    }

    /// The window update that carries a stream's SYN or ACK and raises the peer's window.
    pub(super) fn announce(&mut self, id: u32, extra: u16) -> Option<Header> {
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
    pub(super) fn released(&mut self, n: usize) {
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
    pub(super) fn consumed(&mut self, id: u32, n: usize) {
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
    pub(super) fn half_dropped(&mut self, id: u32, reader: bool) {
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
    pub(super) fn handle(&mut self, piece: Piece, role: Role) -> io::Result<()> {
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
    pub(super) fn header(&mut self, h: Header, role: Role) -> io::Result<()> {
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
    pub(super) fn body(&mut self, id: u32, bytes: Bytes) {
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
pub(super) fn unpinned(piece: Bytes) -> Bytes {
    if piece.len() < PIN_BELOW {
        Bytes::copy_from_slice(&piece)
    } else {
        piece
    }
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Stream `id` for its writer. Errors: the session ended, or the stream is gone or was reset.
pub(super) fn sending(inner: &mut Inner, id: u32) -> io::Result<&mut Stream> {
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

#[cfg(test)]
mod tests {
    use super::super::{MAX_RECORD_PLAINTEXT, READ_CHUNK};
    use super::*;

    #[test]
    pub(super) fn a_small_piece_does_not_hold_its_reads_buffer() {
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
}
