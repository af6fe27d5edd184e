//! The yamux session end to end: two sessions over TLS 1.3 on loopback, or one and a raw
//! peer.

use super::frame::tests::whole_frames;
use super::*;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::tunnel::class::Class;
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
pub(in crate::tunnel) type Accepted = tokio::sync::mpsc::UnboundedReceiver<(MuxReader, MuxWriter)>;

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
pub(in crate::tunnel) async fn read_to_fin<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
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
    assert_eq!(client.shared.lock().session.send_window(), 0);
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
    let (_mux, mut driver) = session(stcp, stls.into(), Role::Server, &config(max_streams), None);
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
    let (e, (), _send) = bounded("driver end", async { tokio::join!(ended, read, write) }).await;
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
