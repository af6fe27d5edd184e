//! The session's state machine driven by hand: frames in, frames out, no sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Wake;

use super::super::config::{MAX_RECORD_PLAINTEXT, READ_CHUNK, TURN_TIMEOUT};
use super::*;

/// A waker that counts how often it was woken.
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A task's waker and its count of wakes.
fn task() -> (Waker, Arc<Count>) {
    let count = Arc::new(Count(AtomicUsize::new(0)));
    (Waker::from(count.clone()), count)
}

fn woken(count: &Count) -> usize {
    count.0.load(Ordering::SeqCst)
}

/// Feeds one frame to `s` as the frame reader hands it on.
fn feed(s: &mut Session, h: Header, payload: &[u8]) -> Result<(), ProtocolError> {
    s.receive(Piece::Header(h))?;
    if h.kind == Kind::Data {
        if !payload.is_empty() {
            s.receive(Piece::Body(h.stream, Bytes::copy_from_slice(payload)))?;
        }
        s.receive(Piece::End(h))?;
    }
    Ok(())
}

/// Delivers a write's frames to `to`, with `len` bytes of payload.
fn deliver(to: &mut Session, w: Write) -> Result<(), ProtocolError> {
    if let Some(a) = w.announce {
        feed(to, a, &[])?;
    }
    feed(to, w.data, &vec![0u8; w.len()])
}

/// Delivers every frame without payload that `from` has to send to `to`: the frames.
fn relay(from: &mut Session, to: &mut Session) -> Vec<Header> {
    let out = from.take_out();
    for h in &out {
        feed(to, *h, &[]).expect("a valid frame");
    }
    out
}

/// `s.write` that must go through now.
fn write_now(s: &mut Session, id: u32, len: usize, fin: bool, now: Instant) -> Write {
    let (waker, _) = task();
    match s.write(id, len, fin, &waker, now) {
        Poll::Ready(Ok(w)) => w,
        other => panic!("stream {id}: a write of {len} did not go: {other:?}"),
    }
}

/// Takes everything stream `id` has received: the bytes and what the reader is told then.
fn read_all(s: &mut Session, id: u32, waker: &Waker) -> (usize, Poll<io::Result<usize>>) {
    let n: usize = s
        .received(id)
        .expect("stream")
        .drain(..)
        .map(|b| b.len())
        .sum();
    if n > 0 {
        assert!(matches!(s.took(id, n, waker), Poll::Ready(Ok(m)) if m == n));
    }
    (n, s.took(id, 0, waker))
}

/// A stream the client opened and wrote `len` bytes to, which the server accepted: its id.
fn opened(client: &mut Session, server: &mut Session, len: usize, now: Instant) -> u32 {
    let id = client.open().expect("open");
    let w = write_now(client, id, len, false, now);
    let announce = w.announce.expect("the first frame announces the stream");
    assert_eq!(
        announce,
        Header::new(
            Kind::WindowUpdate,
            flag::SYN,
            id,
            STREAM_WINDOW - INITIAL_WINDOW
        )
    );
    deliver(server, w).expect("valid");
    assert_eq!(server.accept(), Some(id));
    id
}

fn pair() -> (Session, Session) {
    (
        Session::new(Role::Client, 16),
        Session::new(Role::Server, 16),
    )
}

/// A client and a server session with one stream, whose reader at the server has taken
/// the first byte and waits for more: the sessions, the stream, the reader's waker and count.
fn a_reader_waits() -> (Session, Session, u32, Waker, Arc<Count>) {
    let (mut client, mut server) = pair();
    let id = opened(&mut client, &mut server, 1, Instant::now());
    let (reader, wakes) = task();
    assert!(read_all(&mut server, id, &reader).1.is_pending());
    (client, server, id, reader, wakes)
}

#[test]
fn a_new_stream_costs_one_frame_each_way() {
    let (mut client, mut server) = pair();
    let now = Instant::now();
    let id = client.open().expect("open");
    assert_eq!(id, 1, "the client opens odd ids");
    assert!(!client.has_out(), "opening sends nothing");
    let w = write_now(&mut client, id, 100, false, now);
    assert_eq!(w.data, Header::new(Kind::Data, 0, id, 100));
    assert!(w.announce.is_some_and(|a| a.flags == flag::SYN));
    deliver(&mut server, w).expect("valid");
    assert_eq!(server.accept(), Some(id));
    assert_eq!(server.accept(), None);
    let (reader, _) = task();
    let (n, then) = read_all(&mut server, id, &reader);
    assert_eq!(n, 100);
    assert!(then.is_pending());
    assert!(!server.has_out(), "the ACK waits for the answer");
    let answer = write_now(&mut server, id, 10, false, now);
    assert_eq!(
        answer.announce,
        Some(Header::new(
            Kind::WindowUpdate,
            flag::ACK,
            id,
            STREAM_WINDOW - INITIAL_WINDOW
        ))
    );
    deliver(&mut client, answer).expect("valid");
    // later frames announce nothing
    assert_eq!(write_now(&mut client, id, 5, false, now).announce, None);
    assert_eq!(write_now(&mut server, id, 5, false, now).announce, None);
}

#[test]
fn a_reader_gives_the_windows_back_by_halves() {
    let (mut client, mut server) = pair();
    let now = Instant::now();
    let (reader, _) = task();
    // a stream that only reads sends its ACK once it has taken half the initial window
    let id = opened(
        &mut client,
        &mut server,
        INITIAL_WINDOW as usize / 2 - 1,
        now,
    );
    assert!(read_all(&mut server, id, &reader).1.is_pending());
    assert!(!server.has_out());
    deliver(&mut server, write_now(&mut client, id, 1, false, now)).expect("valid");
    assert!(read_all(&mut server, id, &reader).1.is_pending());
    let ack = relay(&mut server, &mut client);
    assert_eq!(
        ack,
        vec![Header::new(
            Kind::WindowUpdate,
            flag::ACK,
            id,
            STREAM_WINDOW - INITIAL_WINDOW
        )]
    );
    // then a window update for each half of the stream window taken
    let mut taken = INITIAL_WINDOW as usize / 2;
    let mut updates = Vec::new();
    while taken < STREAM_WINDOW as usize * 2 {
        let w = write_now(&mut client, id, MAX_FRAME, false, now);
        taken += w.len();
        deliver(&mut server, w).expect("within the window");
        assert!(read_all(&mut server, id, &reader).1.is_pending());
        updates.extend(relay(&mut server, &mut client));
    }
    let stream: Vec<_> = updates.iter().filter(|h| h.stream == id).collect();
    assert!(stream.len() >= 3, "{updates:?}");
    assert!(
        stream
            .iter()
            .all(|h| h.kind == Kind::WindowUpdate && h.flags == 0 && h.length >= STREAM_WINDOW / 2),
        "{stream:?}"
    );
    assert!(
        updates.iter().all(|h| h.stream == id),
        "less than half the session window taken: no session update yet"
    );
}

#[test]
fn a_writer_without_window_waits_and_an_update_wakes_it() {
    let (mut client, mut server) = pair();
    let now = Instant::now();
    let id = opened(&mut client, &mut server, INITIAL_WINDOW as usize, now);
    let (writer, wakes) = task();
    assert!(
        client.write(id, 1, false, &writer, now).is_pending(),
        "the initial window is used up"
    );
    // the server's answer raises the window
    deliver(&mut client, write_now(&mut server, id, 1, false, now)).expect("valid");
    assert_eq!(woken(&wakes), 1, "the window update wakes the writer");
    let w = write_now(&mut client, id, usize::MAX, false, now);
    assert_eq!(w.len(), MAX_FRAME, "a frame takes at most MAX_FRAME");

    // the session window: eight full stream windows use it up
    let (mut client, mut server) = pair();
    let streams: Vec<u32> = (0..=SESSION_WINDOW / STREAM_WINDOW)
        .map(|_| {
            let id = opened(&mut client, &mut server, 1, now);
            deliver(&mut client, write_now(&mut server, id, 1, false, now)).expect("valid");
            id
        })
        .collect();
    let mut sent = streams.len();
    'fill: for &id in &streams {
        loop {
            match client.write(id, MAX_FRAME, false, &writer, now) {
                Poll::Ready(Ok(w)) => sent += w.len(),
                Poll::Pending => break,
                Poll::Ready(Err(e)) => panic!("{e}"),
            }
            if client.send_window() == 0 {
                break 'fill;
            }
        }
    }
    assert_eq!(sent, SESSION_WINDOW as usize);
    let last = *streams.last().expect("streams");
    let (starved, starved_wakes) = task();
    assert!(client.write(last, 1, false, &starved, now).is_pending());
    feed(
        &mut client,
        Header::new(Kind::WindowUpdate, 0, 0, SESSION_WINDOW / 2),
        &[],
    )
    .expect("a session window update");
    assert_eq!(woken(&starved_wakes), 1);
    assert_eq!(write_now(&mut client, last, 1, false, now).len(), 1);
}

#[test]
fn half_close_ends_one_direction_and_the_stream_goes_with_both_halves() {
    let (mut client, mut server) = pair();
    let now = Instant::now();
    let (reader, reader_wakes) = task();
    let id = opened(&mut client, &mut server, 5, now);
    // the last bytes carry the FIN
    let w = write_now(&mut client, id, 3, true, now);
    assert_eq!(w.data.flags, flag::FIN);
    deliver(&mut server, w).expect("valid");
    let (n, end) = read_all(&mut server, id, &reader);
    assert_eq!(n, 8);
    assert!(matches!(end, Poll::Ready(Ok(0))), "end of stream: {end:?}");
    let err = client
        .write(id, 1, false, &reader, now)
        .map(|r| r.expect_err("finished"));
    assert!(matches!(err, Poll::Ready(e) if e.kind() == io::ErrorKind::BrokenPipe));
    // the other direction still carries data, then its own FIN (a window update)
    let (client_reader, client_wakes) = task();
    assert!(read_all(&mut client, id, &client_reader).1.is_pending());
    deliver(&mut client, write_now(&mut server, id, 4, false, now)).expect("valid");
    assert_eq!(woken(&client_wakes), 1);
    server.shutdown(id).expect("FIN");
    assert_eq!(
        relay(&mut server, &mut client),
        vec![Header::new(Kind::WindowUpdate, flag::FIN, id, 0)]
    );
    assert!(matches!(
        read_all(&mut client, id, &client_reader),
        (4, Poll::Ready(Ok(0)))
    ));
    // ended cleanly both ways: the halves go without an RST
    for s in [&mut client, &mut server] {
        s.half_dropped(id, true, now);
        assert_eq!(s.streams(), 1, "one half is left");
        s.half_dropped(id, false, now);
        assert_eq!(s.streams(), 0);
        assert!(!s.has_out(), "{:?}", s.take_out());
    }
    assert_eq!(
        woken(&reader_wakes),
        0,
        "data came before the reader waited"
    );

    // a writer dropped without a FIN sends one; a reader dropped before the peer's FIN
    // leaves the stream unfinished: RST
    let id = opened(&mut client, &mut server, 1, now);
    client.half_dropped(id, false, now);
    assert_eq!(
        client.take_out(),
        vec![Header::new(Kind::WindowUpdate, flag::FIN, id, 0)]
    );
    client.half_dropped(id, true, now);
    assert_eq!(
        client.take_out(),
        vec![Header::new(Kind::WindowUpdate, flag::RST, id, 0)]
    );
}

#[test]
fn a_reset_fails_both_halves_at_both_ends() {
    let (mut client, mut server, id, reader, reader_wakes) = a_reader_waits();
    let now = Instant::now();
    // an accepted stream's RST goes out before its first write (its ACK)
    client.reset(id, now);
    let rst = relay(&mut client, &mut server);
    assert_eq!(rst, vec![Header::new(Kind::WindowUpdate, flag::RST, id, 0)]);
    assert_eq!(woken(&reader_wakes), 1, "the waiting reader wakes");
    let read = server.took(id, 0, &reader);
    assert!(
        matches!(&read, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    for s in [&mut client, &mut server] {
        let write = s.write(id, 1, false, &reader, now);
        assert!(
            matches!(&write, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset),
            "{write:?}"
        );
        assert!(s.shutdown(id).is_err());
        // a reset stream goes with its halves, without another RST
        s.half_dropped(id, true, now);
        s.half_dropped(id, false, now);
        assert_eq!(s.streams(), 0);
        assert!(!s.has_out());
    }
    // the server resets an accepted stream before answering: the RST goes out at once
    let id = opened(&mut client, &mut server, 1, now);
    server.reset(id, now);
    assert_eq!(
        server.take_out(),
        vec![Header::new(Kind::WindowUpdate, flag::RST, id, 0)]
    );
    // a stream never written to is unknown to the peer: nothing goes out
    let id = client.open().expect("open");
    client.reset(id, now);
    client.half_dropped(id, true, now);
    client.half_dropped(id, false, now);
    assert!(!client.has_out());
}

#[test]
fn writers_take_turns_by_class_while_the_queue_is_full() {
    let (mut client, mut server) = pair();
    let now = Instant::now();
    let bulk_a = opened(&mut client, &mut server, 1, now);
    let bulk_b = opened(&mut client, &mut server, 1, now);
    let consensus = opened(&mut client, &mut server, 1, now);
    for id in [bulk_a, bulk_b, consensus] {
        deliver(&mut client, write_now(&mut server, id, 1, false, now)).expect("valid");
    }
    client.set_class(bulk_a, Class::Bulk);
    client.set_class(bulk_b, Class::Bulk);
    client.set_class(consensus, Class::Consensus);
    // alone and the link not busy: a frame as large as offered
    assert_eq!(
        write_now(&mut client, bulk_a, MAX_FRAME, false, now).len(),
        MAX_FRAME
    );
    // the queue is full: every writer waits for a turn
    client.queued(QUEUE_LIMIT);
    assert!(client.queue_full());
    let (a, a_wakes) = task();
    let (b, b_wakes) = task();
    let (c, c_wakes) = task();
    assert!(client.write(bulk_a, MAX_FRAME, false, &a, now).is_pending());
    assert!(client.write(bulk_b, MAX_FRAME, false, &b, now).is_pending());
    assert!(client.write(consensus, 64, false, &c, now).is_pending());
    // the socket takes the queue: one turn fits (a frame of SHARED_FRAME), the highest class
    client.written(QUEUE_LIMIT);
    client.drained(now);
    assert_eq!(
        (woken(&c_wakes), woken(&a_wakes), woken(&b_wakes)),
        (1, 0, 0)
    );
    assert_eq!(write_now(&mut client, consensus, 64, false, now).len(), 64);
    // then the bulk streams in turn, a small frame each while others wait
    client.drained(now);
    assert_eq!((woken(&a_wakes), woken(&b_wakes)), (1, 0));
    let w = write_now(&mut client, bulk_a, MAX_FRAME, false, now);
    assert_eq!(w.len(), SHARED_FRAME, "one small frame a turn");
    assert!(
        client.write(bulk_a, MAX_FRAME, false, &a, now).is_pending(),
        "a stream that wrote its turn goes to the back"
    );
    client.drained(now);
    assert_eq!((woken(&a_wakes), woken(&b_wakes)), (1, 1));
    // a turn that is not used within TURN_TIMEOUT goes to the next
    client.drained(now + TURN_TIMEOUT);
    assert_eq!(woken(&a_wakes), 2);
    // a consensus write passes the waiting bulk writers when the queue has room
    client.reset(bulk_a, now);
    let w = write_now(&mut client, consensus, 64, false, now + TURN_TIMEOUT);
    assert_eq!(w.len(), 64);
    // and a bulk stream that writes alone on a link that refused a write within
    // BACKLOG_HOLD writes no more than the queue has room for
    client.reset(bulk_b, now);
    client.refused(now);
    client.queued(QUEUE_LIMIT / 4);
    let bulk = opened(&mut client, &mut server, 1, now);
    deliver(&mut client, write_now(&mut server, bulk, 1, false, now)).expect("valid");
    let w = write_now(&mut client, bulk, MAX_FRAME, false, now);
    assert_eq!(w.len(), SHARED_FRAME.max(QUEUE_LIMIT - QUEUE_LIMIT / 4));
    let later = now + super::super::config::BACKLOG_HOLD;
    assert_eq!(
        write_now(&mut client, bulk, MAX_FRAME, false, later).len(),
        MAX_FRAME
    );
}

#[test]
fn the_peer_is_held_to_the_protocol() {
    let now = Instant::now();
    let (mut client, mut server) = pair();
    // data on stream 0, flags on a session window update, a SYN of the wrong parity
    assert_eq!(
        feed(&mut server, Header::new(Kind::Data, 0, 0, 1), b"x"),
        Err(ProtocolError::StreamZero)
    );
    assert_eq!(
        feed(
            &mut server,
            Header::new(Kind::WindowUpdate, flag::ACK, 0, 1),
            &[]
        ),
        Err(ProtocolError::StreamZero)
    );
    assert_eq!(
        feed(
            &mut server,
            Header::new(Kind::WindowUpdate, flag::SYN, 2, 0),
            &[]
        ),
        Err(ProtocolError::Syn)
    );
    // a SYN for an id in use, data beyond the stream's initial window
    let id = opened(&mut client, &mut server, 1, now);
    assert_eq!(
        feed(
            &mut server,
            Header::new(Kind::WindowUpdate, flag::SYN, id, 0),
            &[]
        ),
        Err(ProtocolError::Syn)
    );
    assert_eq!(
        server.receive(Piece::Header(Header::new(
            Kind::Data,
            0,
            id,
            INITIAL_WINDOW
        ))),
        Err(ProtocolError::StreamWindow)
    );
    // data beyond the session window, each stream within its own
    let mut server = Session::new(Role::Server, 1024);
    let mut got = Ok(());
    for i in 0..=SESSION_WINDOW / INITIAL_WINDOW {
        got = server.receive(Piece::Header(Header::new(
            Kind::Data,
            flag::SYN,
            2 * i + 1,
            INITIAL_WINDOW,
        )));
        if got.is_err() {
            break;
        }
    }
    assert_eq!(got, Err(ProtocolError::SessionWindow));
    // streams beyond the limit are refused; pings answered
    let mut server = Session::new(Role::Server, 2);
    for id in [1, 3, 5] {
        feed(
            &mut server,
            Header::new(Kind::WindowUpdate, flag::SYN, id, 0),
            &[],
        )
        .expect("valid");
    }
    feed(&mut server, Header::new(Kind::Ping, flag::SYN, 0, 42), &[]).expect("valid");
    assert_eq!(
        server.take_out(),
        vec![
            Header::new(Kind::WindowUpdate, flag::RST, 5, 0),
            Header::new(Kind::Ping, flag::ACK, 0, 42),
        ]
    );
    assert_eq!(
        (server.accept(), server.accept(), server.accept()),
        (Some(1), Some(3), None)
    );
    // a peer's Go Away: no new streams
    feed(&mut client, Header::new(Kind::GoAway, 0, 0, 0), &[]).expect("valid");
    let open = client.open().map(|_| ()).expect_err("going away");
    assert_eq!(open.kind(), io::ErrorKind::ConnectionRefused);
}

#[test]
fn a_session_that_ends_fails_every_stream_and_queues_nothing_new() {
    let (_client, mut server, id, reader, wakes) = a_reader_waits();
    let now = Instant::now();
    // a peer that never reads what it is sent: the queue passes MAX_QUEUED
    server.queued(MAX_QUEUED);
    assert_eq!(server.closed(), Some(io::ErrorKind::ConnectionAborted));
    assert_eq!(woken(&wakes), 1);
    assert!(server.took(id, 0, &reader).is_ready());
    assert!(server.open().is_err());
    server.half_dropped(id, true, now);
    server.half_dropped(id, false, now);
    assert!(!server.has_out(), "no RST or FIN after the end");
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
