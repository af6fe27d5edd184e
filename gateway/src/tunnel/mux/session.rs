//! The yamux session's state machine, free of sockets and TLS: frames in
//! ([`Session::receive`]), frames out ([`Session::write`] for data, [`Session::take_out`] for
//! the rest), and the streams' windows, half-closes, resets and turns ([`sched`](super::sched))
//! in between.
//!
//! The async shell ([`io`](super::io)) holds it under the session's lock, encrypts what it
//! returns into the TLS connection and tells it how the socket takes the bytes
//! ([`Session::queued`], [`Session::written`], [`Session::refused`], [`Session::drained`]):
//! that is all it knows of the link. It keeps the wakers of the streams' readers and writers
//! and wakes them itself; the caller passes the current time where turns depend on it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::Bytes;

use super::config::{
    ACCEPT_BACKLOG, BACKLOG_HOLD, INITIAL_WINDOW, MAX_FRAME, MAX_QUEUED, PIN_BELOW, QUEUE_LIMIT,
    Role, SESSION_WINDOW, SHARED_FRAME, STREAM_WINDOW, TURN_TIMEOUT,
};
use super::frame::{Header, Kind, Piece, flag};
use super::sched::Scheduler;
use crate::tunnel::class::Class;

/// Peer frames that break the protocol; the session ends with Go Away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A data frame, or a window update with flags, on stream 0 (only the session window
    /// update goes there).
    #[error("yamux stream frame on stream 0")]
    StreamZero,
    /// More data than the session window allows.
    #[error("yamux data beyond the session's window")]
    SessionWindow,
    /// More data than the stream's window allows.
    #[error("yamux data beyond the stream's window")]
    StreamWindow,
    /// A SYN for a stream id in use, or for an id of this end's parity.
    #[error("yamux SYN for a stream id in use or not the peer's")]
    Syn,
}

/// The frames of one data write: the stream's SYN or ACK window update first when this is
/// its first frame, then the data header; its payload is the first `data.length` bytes of
/// what the writer offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    /// The window update that opens or acknowledges the stream, on its first frame.
    pub announce: Option<Header>,
    /// The data frame's header.
    pub data: Header,
}

impl Write {
    /// Payload bytes the frame takes.
    pub fn len(&self) -> usize {
        self.data.length as usize
    }
}

/// One session's state.
pub struct Session {
    role: Role,
    streams: HashMap<u32, Stream>,
    next_id: u32,
    max_streams: usize,
    /// Inbound streams not yet taken by [`Session::accept`].
    accepted: VecDeque<u32>,
    /// Encrypted bytes not yet written to the socket (an estimate that is exact at zero).
    queued: usize,
    /// When the socket last refused a write.
    refused_at: Option<Instant>,
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
    /// Frames without payload to send, in order (window updates, FIN, RST, pings, Go Away).
    out: Vec<Header>,
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
    /// The stream's priority class ([`Session::set_class`]).
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

/// Keeps `waker` in `slot` unless the one there wakes the same task.
fn register(slot: &mut Option<Waker>, waker: &Waker) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
        *slot = Some(waker.clone());
    }
}

impl Session {
    /// A session for this end's `role` that holds at most `max_streams` streams.
    pub fn new(role: Role, max_streams: usize) -> Self {
        Session {
            role,
            streams: HashMap::new(),
            next_id: match role {
                Role::Client => 1,
                Role::Server => 2,
            },
            max_streams,
            accepted: VecDeque::new(),
            queued: 0,
            refused_at: None,
            sched: Scheduler::default(),
            recv_window: SESSION_WINDOW,
            unacked: 0,
            send_window: SESSION_WINDOW,
            starved: Vec::new(),
            closed: None,
            remote_go_away: false,
            ping_id: 0,
            out: Vec::new(),
        }
    }

    /// Frames to send, oldest first; each is a frame of its own (no payload).
    pub fn take_out(&mut self) -> Vec<Header> {
        std::mem::take(&mut self.out)
    }

    /// Whether frames wait in [`Session::take_out`].
    pub fn has_out(&self) -> bool {
        !self.out.is_empty()
    }

    /// Why the session ended, once it has.
    pub fn closed(&self) -> Option<io::ErrorKind> {
        self.closed
    }

    /// `Ok` while the session runs.
    ///
    /// # Errors
    ///
    /// The session ended, with the reason's kind.
    pub fn check(&self) -> io::Result<()> {
        match self.closed {
            Some(kind) => Err(io::Error::new(kind, "tunnel session closed")),
            None => Ok(()),
        }
    }

    /// Streams open now (both directions, not yet dropped).
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Data bytes this end may still send, all streams together.
    #[cfg(test)]
    pub fn send_window(&self) -> u32 {
        self.send_window
    }

    /// Opens a stream: its id. Nothing goes out until its first write (or first read).
    ///
    /// # Errors
    ///
    /// The session has ended, the peer has sent Go Away, `max_streams` are open, or the ids
    /// are used up.
    pub fn open(&mut self) -> io::Result<u32> {
        self.check()?;
        if self.remote_go_away {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "the peer is closing the tunnel session",
            ));
        }
        if self.streams.len() >= self.max_streams {
            return Err(io::Error::other("too many tunnel streams"));
        }
        let id = self.next_id;
        self.next_id = id
            .checked_add(2)
            .ok_or_else(|| io::Error::other("tunnel stream ids exhausted"))?;
        self.streams.insert(id, Stream::new(flag::SYN));
        Ok(id)
    }

    /// The next stream the peer opened, not yet taken.
    pub fn accept(&mut self) -> Option<u32> {
        self.accepted.pop_front()
    }

    /// Ends the session: every stream fails with `kind` from now on (the first reason stays).
    pub fn fail(&mut self, kind: io::ErrorKind) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(kind);
        for s in self.streams.values_mut() {
            s.wake();
        }
        for w in self.starved.drain(..) {
            w.wake();
        }
    }

    /// A keep-alive ping goes out.
    pub fn ping(&mut self) {
        self.ping_id = self.ping_id.wrapping_add(1);
        self.out
            .push(Header::new(Kind::Ping, flag::SYN, 0, self.ping_id));
    }

    /// A Go Away with `code` goes out (the yamux spec's codes, [`super::frame`]).
    pub fn go_away(&mut self, code: u32) {
        self.out.push(Header::new(Kind::GoAway, 0, 0, code));
    }

    // --- the link: how the socket takes what the session sends

    /// Whether the bytes queued for the socket have reached [`QUEUE_LIMIT`].
    pub fn queue_full(&self) -> bool {
        self.queued >= QUEUE_LIMIT
    }

    /// `n` more encrypted bytes are queued for the socket. Past [`MAX_QUEUED`] the session
    /// ends: writers stop near [`QUEUE_LIMIT`], so only a peer that keeps sending without
    /// reading what it is sent gets there.
    pub fn queued(&mut self, n: usize) {
        self.queued += n;
        if self.queued >= MAX_QUEUED && self.closed.is_none() {
            tracing::warn!(
                queued = self.queued,
                "tunnel peer keeps sending without reading what it is sent; ending the session"
            );
            self.fail(io::ErrorKind::ConnectionAborted);
        }
    }

    /// The socket took `n` of the queued bytes.
    pub fn written(&mut self, n: usize) {
        self.queued = self.queued.saturating_sub(n);
    }

    /// The socket refused a write at `now`: the link is the bottleneck for a while
    /// ([`BACKLOG_HOLD`]); waiting writers get the turns the queue has room for.
    pub fn refused(&mut self, now: Instant) {
        self.refused_at = Some(now);
        self.hand_turns(now);
    }

    /// The socket took everything queued.
    pub fn drained(&mut self, now: Instant) {
        self.queued = 0;
        self.hand_turns(now);
    }

    /// Wakes waiting writers while the queue has room for a frame from each turn handed out
    /// ([`SHARED_FRAME`]); takes back turns unused for [`TURN_TIMEOUT`].
    fn hand_turns(&mut self, now: Instant) {
        if !self.sched.has_waiting() {
            return;
        }
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

    /// Whether the socket refused a write within [`BACKLOG_HOLD`] before `now`: the link is
    /// the bottleneck.
    fn backlogged(&self, now: Instant) -> bool {
        self.refused_at
            .is_some_and(|t| now.saturating_duration_since(t) < BACKLOG_HOLD)
    }

    // --- writers

    /// Stream `id` for its writer.
    fn sending(&mut self, id: u32) -> io::Result<&mut Stream> {
        self.check()?;
        let s = self
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

    /// Sets stream `id`'s priority class: which writers go first while the link is the
    /// bottleneck. New streams are [`Class::Interactive`].
    pub fn set_class(&mut self, id: u32, class: Class) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.class = class;
        }
    }

    /// `Ok` while stream `id`'s writer may write.
    ///
    /// # Errors
    ///
    /// The session ended, the stream is gone, was reset, or its direction finished.
    pub fn writable(&mut self, id: u32) -> io::Result<()> {
        if self.sending(id)?.local_fin {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel stream finished",
            ));
        }
        Ok(())
    }

    /// Stream `id`'s writer offers `len` bytes (the last of its direction when `fin`): the
    /// frame to send now, whose payload is a prefix of them, or `Pending` with `waker` kept
    /// for the stream's window, the session's, or a turn ([`sched`](super::sched)).
    ///
    /// A frame takes at most [`MAX_FRAME`]; [`SHARED_FRAME`] while other streams wait for a
    /// turn; no more than the queue's room while the link is the bottleneck (the socket
    /// refused within [`BACKLOG_HOLD`]). The FIN goes with the frame that takes the rest.
    ///
    /// # Errors
    ///
    /// The session ended, the stream is gone, was reset, or its direction finished.
    pub fn write(
        &mut self,
        id: u32,
        len: usize,
        fin: bool,
        waker: &Waker,
        now: Instant,
    ) -> Poll<io::Result<Write>> {
        self.writable(id)?;
        if len == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty yamux data frame",
            )));
        }
        let s = self.sending(id)?;
        let class = s.class;
        if s.send_window == 0 {
            register(&mut s.writer, waker);
            // waiting for the peer's window, not for a turn: the turn goes to the others
            self.sched.remove(id);
            self.hand_turns(now);
            return Poll::Pending;
        }
        let n = len.min(s.send_window as usize).min(MAX_FRAME);
        if self.send_window == 0 {
            // once per task: a writer may be polled again before the window opens
            if !self.starved.iter().any(|w| w.will_wake(waker)) {
                self.starved.push(waker.clone());
            }
            self.sched.remove(id);
            self.hand_turns(now);
            return Poll::Pending;
        }
        let n = n.min(self.send_window as usize);
        let turn = self.sched.has_turn(id);
        if !turn && (self.queue_full() || !self.sched.may_write(id, class)) {
            // the queue is full, or others are ahead: wait for a turn
            self.sched.wait(id, class);
            if let Some(s) = self.streams.get_mut(&id) {
                register(&mut s.writer, waker);
            }
            // the queue may have room for a turn already (others were ahead)
            self.hand_turns(now);
            return Poll::Pending;
        }
        // with others waiting, one small frame per turn; alone on a link that is the
        // bottleneck, no more than the queue has room for
        let others = self.sched.has_waiting() || self.sched.turns() > usize::from(turn);
        let n = if others {
            n.min(SHARED_FRAME)
        } else if self.backlogged(now) {
            n.min(QUEUE_LIMIT.saturating_sub(self.queued).max(SHARED_FRAME))
        } else {
            n
        };
        self.sched.wrote(id, class);
        let fin = fin && n == len;
        // n ≤ both windows, which are u32
        let n32 = n as u32;
        if let Some(s) = self.streams.get_mut(&id) {
            s.send_window -= n32;
            s.local_fin |= fin;
        }
        self.send_window -= n32;
        let data = Header::new(Kind::Data, if fin { flag::FIN } else { 0 }, id, n32);
        Poll::Ready(Ok(Write {
            announce: self.announce(id, 0),
            data,
        }))
    }

    /// Half-closes stream `id` (FIN): the peer reads to its end.
    ///
    /// # Errors
    ///
    /// The session ended, or the stream is gone or was reset.
    pub fn shutdown(&mut self, id: u32) -> io::Result<()> {
        let s = self.sending(id)?;
        if s.local_fin {
            return Ok(());
        }
        s.local_fin = true;
        let h = self.announce(id, flag::FIN).unwrap_or(Header::new(
            Kind::WindowUpdate,
            flag::FIN,
            id,
            0,
        ));
        self.out.push(h);
        Ok(())
    }

    /// Resets stream `id` (RST): the peer's reads and writes fail.
    pub fn reset(&mut self, id: u32, now: Instant) {
        self.sched.remove(id);
        self.hand_turns(now);
        let Some(s) = self.streams.get_mut(&id) else {
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
        if known && self.closed.is_none() {
            self.out
                .push(Header::new(Kind::WindowUpdate, flag::RST, id, 0));
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

    // --- readers

    /// What stream `id` has received and its reader not yet taken: take from the front, then
    /// report with [`Session::took`].
    ///
    /// # Errors
    ///
    /// The stream is gone (`NotConnected`).
    pub fn received(&mut self, id: u32) -> io::Result<&mut VecDeque<Bytes>> {
        match self.streams.get_mut(&id) {
            Some(s) => Ok(&mut s.recv),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// After stream `id`'s reader took `n` bytes: the window bookkeeping and `Ready(Ok(n))`;
    /// with nothing taken, `Ready(Ok(0))` at the end of the stream, an error, or `Pending`
    /// with `waker` kept (queueing the SYN of a stream opened by a reader first).
    pub fn took(&mut self, id: u32, n: usize, waker: &Waker) -> Poll<io::Result<usize>> {
        if n > 0 {
            self.consumed(id, n);
            return Poll::Ready(Ok(n));
        }
        let closed = self.closed;
        let Some(s) = self.streams.get_mut(&id) else {
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
        register(&mut s.reader, waker);
        let fin = if s.local_fin { flag::FIN } else { 0 };
        if s.announce == flag::SYN
            && let Some(h) = self.announce(id, fin)
        {
            self.out.push(h);
        }
        Poll::Pending
    }

    /// `n` received data bytes left the session (taken by a reader, or discarded): give the
    /// session window back once half of it is used.
    fn released(&mut self, n: usize) {
        // n ≤ what was received, which the session window bounds
        self.unacked = self
            .unacked
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        if self.unacked >= SESSION_WINDOW / 2 && self.closed.is_none() {
            let delta = std::mem::take(&mut self.unacked);
            self.recv_window = self.recv_window.saturating_add(delta);
            self.out.push(Header::new(Kind::WindowUpdate, 0, 0, delta));
        }
    }

    /// The reader took `n` bytes: give the stream's window back once half of it is used, and
    /// the session's likewise.
    fn consumed(&mut self, id: u32, n: usize) {
        self.released(n);
        let Some(s) = self.streams.get_mut(&id) else {
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
                self.out.push(h);
            }
        } else if s.unacked >= STREAM_WINDOW / 2 && !s.remote_fin && !s.reset {
            let delta = std::mem::take(&mut s.unacked);
            s.recv_window = s.recv_window.saturating_add(delta);
            self.out.push(Header::new(Kind::WindowUpdate, 0, id, delta));
        }
    }

    /// One half of stream `id` is gone (its reader when `reader`, else its writer); the
    /// stream goes once both are, with an RST if it did not end cleanly both ways.
    pub fn half_dropped(&mut self, id: u32, reader: bool, now: Instant) {
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
            self.hand_turns(now);
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
                self.out.push(h);
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
            self.out
                .push(Header::new(Kind::WindowUpdate, flag::RST, id, 0));
        }
    }

    // --- the peer's frames

    /// Acts on one piece of the peer's frames ([`super::frame::FrameReader`]).
    ///
    /// # Errors
    ///
    /// The piece breaks the protocol; the session should end with Go Away.
    pub fn receive(&mut self, piece: Piece) -> Result<(), ProtocolError> {
        match piece {
            Piece::Header(h) => self.header(h),
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
    fn header(&mut self, h: Header) -> Result<(), ProtocolError> {
        match h.kind {
            Kind::Ping => {
                if h.flags & flag::SYN != 0 {
                    self.out
                        .push(Header::new(Kind::Ping, flag::ACK, 0, h.length));
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
                return Err(ProtocolError::StreamZero);
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
                return Err(ProtocolError::SessionWindow);
            }
            self.recv_window -= h.length;
        }
        if h.flags & flag::SYN != 0 {
            // the peer opens ids of its own parity: odd from the client
            let peer_odd = self.role == Role::Server;
            if (id % 2 == 1) != peer_odd || self.streams.contains_key(&id) {
                return Err(ProtocolError::Syn);
            }
            if self.streams.len() >= self.max_streams || self.accepted.len() >= ACCEPT_BACKLOG {
                self.out
                    .push(Header::new(Kind::WindowUpdate, flag::RST, id, 0));
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
                return Err(ProtocolError::StreamWindow);
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
/// [`PIN_BELOW`] (see [`Session::body`]).
fn unpinned(piece: Bytes) -> Bytes {
    if piece.len() < PIN_BELOW {
        Bytes::copy_from_slice(&piece)
    } else {
        piece
    }
}

#[cfg(test)]
mod tests;
