//! The QUIC side of the data plane: transport settings and the endpoint's UDP socket.
//!
//! One endpoint per gateway, on UDP at the gateway port number. Path MTU discovery (RFC 8899)
//! grows datagrams up to [`MTU_UPPER_BOUND`] where the path carries them; segmentation
//! offload (Linux UDP GSO) sends several datagrams per `sendmsg`, capped so a batch never
//! exceeds what the kernel accepts in one call ([`MAX_GSO_PAYLOAD`]). The socket itself is
//! [`TunnelUdp`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tracing::debug;

/// Keep-alive interval of tunnel connections, on both transports (QUIC here, the TCP+TLS
/// multiplexer's pings).
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A tunnel connection silent this long is closed, on both transports.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the QUIC endpoint or its configs could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// No async runtime to drive the endpoint (called outside tokio).
    #[error("no async runtime")]
    NoRuntime,
    /// quinn refused an endpoint setting.
    #[error("endpoint setting refused")]
    Config(#[from] quinn::ConfigError),
    /// The TLS config cannot serve QUIC (no TLS 1.3 initial cipher suite).
    #[error("TLS config unusable for QUIC")]
    Tls(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The UDP socket could not be set up.
    #[error("QUIC socket setup failed")]
    Io(#[source] io::Error),
}

/// Largest UDP payload path MTU discovery tries: a 9000-byte jumbo frame minus IPv4 and UDP
/// headers.
pub const MTU_UPPER_BOUND: u16 = 8952;

/// Largest UDP payload one `sendmsg` may carry, segmentation-offload batches included: the
/// IPv4 total length (65 535 bytes) minus the IP and UDP headers. The kernel refuses a larger
/// batch (`EMSGSIZE`) and every datagram in it is lost.
pub const MAX_GSO_PAYLOAD: usize = 65_535 - 20 - 8;

/// Socket buffer size asked for the QUIC socket (the kernel caps it at `net.core.rmem_max` /
/// `wmem_max`): the default ~200 KiB overflows under a burst of datagrams, and every drop
/// shrinks the congestion window.
pub const UDP_BUFFER: usize = 8 * 1024 * 1024;

/// The congestion controller of tunnel links (`[tunnel] congestion`), on both transports:
/// QUIC links use quinn's implementation, TCP+TLS links ask the kernel for it by name
/// (`TCP_CONGESTION`; where the kernel lacks it the socket keeps the system default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// CUBIC (RFC 9438): fills the bottleneck's queue until it loses packets, so on a busy
    /// link every message waits behind that queue.
    Cubic,
    /// BBR: paces at the measured bottleneck rate and keeps the queue there short
    /// (docs/PERFORMANCE.md, the WAN runs).
    #[default]
    Bbr,
}

impl Congestion {
    /// The Linux name for `TCP_CONGESTION`.
    pub fn tcp_name(self) -> &'static [u8] {
        match self {
            Congestion::Cubic => b"cubic",
            Congestion::Bbr => b"bbr",
        }
    }
}

/// Builds the QUIC transport settings: keep-alive, idle timeout, stream limits and windows
/// sized for bulk transfers, path MTU discovery up to [`MTU_UPPER_BOUND`], the RFC 9000
/// acknowledgement timing (no ACK-frequency extension) and `congestion`.
pub fn transport_config(congestion: Congestion) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    match congestion {
        Congestion::Cubic => {}
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
        }
    }
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(65_536));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.stream_receive_window(quinn::VarInt::from_u32(8 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(64 * 1024 * 1024));
    t.send_window(64 * 1024 * 1024);
    // path MTU discovery may grow datagrams up to jumbo-frame size where the path carries them
    // (datacenter interconnects, loopback); on ordinary paths the probes are lost and it stays
    // at the usual ~1450 bytes
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    // losses under congestion look like a black hole; search again soon rather than after a
    // minute at 1200 bytes
    mtu.black_hole_cooldown(Duration::from_secs(5));
    t.mtu_discovery_config(Some(mtu));
    // No ACK-frequency extension: acknowledgements follow RFC 9000 (at once after every second
    // packet, otherwise within the 25 ms max_ack_delay), and the RTT estimate already takes the
    // delay the peer reports off each sample (RFC 9002). Asking for a 1 ms delay bought no
    // throughput, yet on request/response traffic it kept a 1-2 ms ACK or probe timer armed
    // nearly all the time, so the event loop slept with a 1-2 ms timeout on almost every wait:
    // about 10 % more CPU per round trip on the virtual machine measured (docs/PERFORMANCE.md).
    t
}

/// The secrets of a QUIC endpoint that must outlive the process, derived from key material
/// the gateway keeps in its data dir, so that a restarted gateway is the same endpoint to its
/// peers rather than a stranger.
pub struct RestartKeys {
    /// The stateless-reset key (RFC 9000 section 10.3): a reset token is an HMAC of the
    /// connection ID under it. The same key after a restart lets the new process end the
    /// peers' connections to the old one at their first packet; a random key per process (the
    /// quinn default) leaves them waiting for the 20 s idle timeout.
    pub reset: Arc<dyn quinn::crypto::HmacKey>,
    /// The key of address-validation tokens (RFC 9000 section 8.1.3), so tokens issued
    /// before a restart still validate.
    pub token: Arc<dyn quinn::crypto::HandshakeTokenKey>,
    /// The key of the connection IDs this endpoint issues (quinn's
    /// `HashedConnectionIdGenerator`: a nonce and a keyed hash of it). An endpoint answers a
    /// packet for a connection it does not know with a stateless reset only when the packet's
    /// connection ID validates under this key, so it must survive a restart too.
    pub cid: u64,
}

impl std::fmt::Debug for RestartKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestartKeys(..)")
    }
}

/// The length of [`RestartKeys::cid`] for HKDF's expand.
struct CidKeyLen;

impl aws_lc_rs::hkdf::KeyType for CidKeyLen {
    fn len(&self) -> usize {
        8
    }
}

impl RestartKeys {
    /// Derives the keys with HKDF-SHA256 (RFC 5869) from `secret` (the org CA's private key,
    /// PEM, which lives as long as the org) and this gateway's `org/site`, so each gateway of
    /// an org has keys of its own and nothing about the secret can be learnt from them.
    pub fn derive(secret: &[u8], me: &str) -> RestartKeys {
        use aws_lc_rs::{hkdf, hmac};
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"fedgw quic endpoint v1").extract(secret);
        let info = [b"stateless reset ".as_slice(), me.as_bytes()];
        let reset: hmac::Key = prk
            .expand(&info, hmac::HMAC_SHA256)
            .expect("HKDF-SHA256 expands to one HMAC-SHA256 key (32 bytes), far below its 255 x 32 byte limit")
            .into();
        let token = hkdf::Salt::new(hkdf::HKDF_SHA256, b"fedgw quic token v1")
            .extract(&[secret, me.as_bytes()].concat());
        let mut cid = [0u8; 8];
        prk.expand(&[b"connection id ".as_slice(), me.as_bytes()], CidKeyLen)
            .and_then(|okm| okm.fill(&mut cid))
            .expect("HKDF-SHA256 expands to 8 bytes, far below its 255 x 32 byte limit");
        RestartKeys {
            reset: Arc::new(reset),
            token: Arc::new(token),
            cid: u64::from_be_bytes(cid),
        }
    }
}

/// Opens the QUIC endpoint on `udp` (already bound): enlarged socket buffers, datagrams up to
/// [`MTU_UPPER_BOUND`], the socket wrapped in [`TunnelUdp`], the stateless-reset key from
/// `keys`. `server` is `None` at a site that answers no handshakes (outbound-only).
///
/// # Errors
///
/// [`QuicError::NoRuntime`] without a tokio runtime, [`QuicError::Io`] when the socket cannot
/// be set up.
pub fn endpoint(
    udp: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
    keys: &RestartKeys,
) -> Result<quinn::Endpoint, QuicError> {
    tune_udp(&udp);
    let runtime = quinn::default_runtime().ok_or(QuicError::NoRuntime)?;
    let mut config = quinn::EndpointConfig::new(keys.reset.clone());
    let cid_key = keys.cid;
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config.max_udp_payload_size(MTU_UPPER_BOUND)?;
    let socket = Arc::new(TunnelUdp::new(udp).map_err(QuicError::Io)?);
    quinn::Endpoint::new_with_abstract_socket(config, server, socket, runtime)
        .map_err(QuicError::Io)
}

fn tune_udp(udp: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(udp);
    if let Err(e) = sock.set_recv_buffer_size(UDP_BUFFER) {
        debug!(error = %e, "cannot enlarge the QUIC receive buffer");
    }
    if let Err(e) = sock.set_send_buffer_size(UDP_BUFFER) {
        debug!(error = %e, "cannot enlarge the QUIC send buffer");
    }
}

/// Segments per `sendmsg` that keep a batch of full-size datagrams within
/// [`MAX_GSO_PAYLOAD`], given what the socket supports (`socket_max`, 1 without GSO).
pub fn gso_segments(socket_max: usize) -> usize {
    socket_max
        .min(MAX_GSO_PAYLOAD / usize::from(MTU_UPPER_BOUND))
        .max(1)
}

/// The endpoint's UDP socket: quinn-udp's batched, offloaded sends and receives on a tokio
/// [`AsyncFd`], with three departures from quinn's own tokio socket:
///
/// - **Segmentation offload is capped** by [`gso_segments`]. quinn batches up to ten
///   datagrams of the current path MTU per send; with jumbo datagrams that is up to 89 520
///   bytes, which the kernel refuses, and the lost batches would look like an MTU black hole
///   and push path MTU discovery back to 1200 bytes.
/// - **Only readability is watched.** A UDP socket turns writable again after every datagram
///   it sends (the datagram's buffer space comes back), so with writability registered every
///   send wakes the event loop once more for nothing. Writability is watched only while a send
///   is refused (`WouldBlock`), on a duplicate of the descriptor that is dropped once it
///   fires.
/// - **A short receive batch ends the turn.** `recvmmsg` returns fewer datagrams than asked
///   only when the queue is empty, so the readiness is cleared and the next receive waits,
///   rather than asking the kernel again to be told `WouldBlock`.
#[derive(Debug)]
pub struct TunnelUdp {
    io: AsyncFd<std::net::UdpSocket>,
    state: quinn::udp::UdpSocketState,
    /// A send was refused and no wait for writability has completed since.
    blocked: AtomicBool,
    /// The writability registration while a send is refused.
    writable: Mutex<Option<Arc<AsyncFd<OwnedFd>>>>,
}

impl TunnelUdp {
    /// Wraps a bound socket (made non-blocking here).
    ///
    /// # Errors
    ///
    /// When the socket options quinn-udp needs cannot be set, or without a tokio runtime.
    pub fn new(udp: std::net::UdpSocket) -> io::Result<TunnelUdp> {
        udp.set_nonblocking(true)?;
        let state = quinn::udp::UdpSocketState::new((&udp).into())?;
        Ok(TunnelUdp {
            io: register(udp, Interest::READABLE)?,
            state,
            blocked: AtomicBool::new(false),
            writable: Mutex::new(None),
        })
    }

    /// The writability registration, made on first need.
    fn writable_registration(&self) -> io::Result<Arc<AsyncFd<OwnedFd>>> {
        let mut slot = self.writable.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = &*slot {
            return Ok(fd.clone());
        }
        let dup = self.io.get_ref().as_fd().try_clone_to_owned()?;
        let fd = Arc::new(register(dup, Interest::WRITABLE)?);
        *slot = Some(fd.clone());
        Ok(fd)
    }

    /// Waits until the socket takes datagrams again, then stops watching writability.
    async fn wait_writable(&self) -> io::Result<()> {
        let fd = self.writable_registration()?;
        drop(fd.writable().await?);
        self.blocked.store(false, Ordering::Release);
        let mut slot = self.writable.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, &fd)) {
            *slot = None;
        }
        Ok(())
    }

    /// Whether writability is being watched (a send is refused and nobody saw it clear yet).
    #[cfg(test)]
    fn watching_writable(&self) -> bool {
        self.writable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

impl quinn::AsyncUdpSocket for TunnelUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(Writable {
            socket: self,
            wait: None,
        })
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        let sent = self.state.send(self.io.get_ref().into(), transmit);
        if let Err(e) = &sent
            && e.kind() == io::ErrorKind::WouldBlock
        {
            self.blocked.store(true, Ordering::Release);
        }
        sent
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let asked = bufs.len().min(meta.len());
        loop {
            let mut guard = std::task::ready!(self.io.poll_read_ready(cx))?;
            match guard.try_io(|io| self.state.recv(io.get_ref().into(), bufs, meta)) {
                Ok(Ok(n)) => {
                    if n < asked {
                        // the queue is drained; wait for the next datagram's readiness
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        gso_segments(self.state.max_gso_segments())
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}

/// File descriptors owned by their value for its whole lifetime.
trait OwnsFd: AsRawFd {}
impl OwnsFd for std::net::UdpSocket {}
impl OwnsFd for OwnedFd {}

/// Registers `inner` with the runtime's reactor for `interest` only (tokio's safe constructors
/// for that are deprecated in favour of this unsafe one).
#[allow(unsafe_code)]
fn register<T: OwnsFd>(inner: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: an `OwnsFd` type owns its descriptor: it stays open, refers to the same file
    // description and is the one `as_raw_fd` returns until the value is dropped, which happens
    // only with the `AsyncFd`.
    Ok(unsafe { AsyncFd::register_with_interest(inner, interest) }?)
}

/// A connection's view of whether the socket takes datagrams: ready at once unless a send
/// was refused, then ready when the socket turns writable.
struct Writable {
    socket: Arc<TunnelUdp>,
    wait: Option<Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>>,
}

impl std::fmt::Debug for Writable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writable")
            .field("waiting", &self.wait.is_some())
            .finish_non_exhaustive()
    }
}

impl quinn::UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let wait = match &mut this.wait {
            Some(wait) => wait,
            None if !this.socket.blocked.load(Ordering::Acquire) => return Poll::Ready(Ok(())),
            None => {
                let socket = this.socket.clone();
                this.wait
                    .insert(Box::pin(async move { socket.wait_writable().await }))
            }
        };
        let ready = wait.as_mut().poll(cx);
        if ready.is_ready() {
            this.wait = None;
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_keys_are_the_same_for_the_same_secret_and_gateway_only() {
        let token = |secret: &[u8], me: &str| {
            let mut out = [0u8; 32];
            RestartKeys::derive(secret, me)
                .reset
                .sign(b"connection id", &mut out);
            out
        };
        let first = token(b"org CA key", "org1/dc1");
        assert_eq!(
            first,
            token(b"org CA key", "org1/dc1"),
            "a restart keeps it"
        );
        assert_ne!(first, token(b"org CA key", "org1/dc2"), "another site");
        assert_ne!(first, token(b"another key", "org1/dc1"), "another org");
        assert_ne!(first, [0u8; 32]);
        let cid = |me: &str| RestartKeys::derive(b"org CA key", me).cid;
        assert_eq!(cid("org1/dc1"), cid("org1/dc1"));
        assert_ne!(cid("org1/dc1"), cid("org1/dc2"));
    }

    /// Sends one GSO batch of `segments` full-size datagrams on loopback; returns how many
    /// arrived.
    fn send_batch(segments: usize) -> io::Result<usize> {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        tune_udp(&rx);
        let state = quinn::udp::UdpSocketState::new((&tx).into()).expect("socket state");
        let payload = vec![7u8; usize::from(MTU_UPPER_BOUND) * segments];
        state.send(
            (&tx).into(),
            &quinn::udp::Transmit {
                destination: rx.local_addr().expect("address"),
                ecn: None,
                contents: &payload,
                segment_size: Some(usize::from(MTU_UPPER_BOUND)),
                src_ip: None,
            },
        )?;
        // a one-byte marker after the batch: everything the batch delivered comes before it
        tx.send_to(&[0], rx.local_addr().expect("address"))
            .expect("marker");
        rx.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = vec![0u8; 65_536];
        let mut got = 0;
        loop {
            match rx.recv(&mut buf).expect("the marker arrives") {
                1 => return Ok(got),
                n => assert_eq!(n, usize::from(MTU_UPPER_BOUND)),
            }
            got += 1;
        }
    }

    #[test]
    fn a_capped_batch_of_jumbo_datagrams_is_sent_whole_and_an_uncapped_one_is_refused() {
        let state = quinn::udp::UdpSocketState::new(
            (&std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")).into(),
        )
        .expect("socket state");
        let cap = gso_segments(state.max_gso_segments());
        if state.max_gso_segments() == 1 {
            eprintln!("no UDP segmentation offload on this kernel: one datagram per send");
            assert_eq!(cap, 1);
            return;
        }
        // quinn asks for ten; the cap is what fits in one send
        assert_eq!(gso_segments(10), 7);
        assert_eq!(send_batch(cap).expect("a capped batch is sent"), cap);
        // one more segment and the kernel refuses the whole batch; quinn-udp drops it
        // silently, so nothing arrives
        assert_eq!(send_batch(cap + 1).unwrap_or(0), 0);
    }

    /// Receives through `socket` until `want` datagrams arrived; fails after 5 s.
    async fn receive(socket: &TunnelUdp, want: usize) -> usize {
        use quinn::AsyncUdpSocket;
        let mut storage = vec![[0u8; 1500]; 4];
        let mut got = 0;
        let wait = async {
            while got < want {
                let mut bufs: Vec<io::IoSliceMut<'_>> =
                    storage.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
                let mut meta = vec![quinn::udp::RecvMeta::default(); bufs.len()];
                let n = std::future::poll_fn(|cx| socket.poll_recv(cx, &mut bufs, &mut meta))
                    .await
                    .expect("receive");
                got += meta[..n]
                    .iter()
                    .map(|m| m.len / m.stride.max(1))
                    .sum::<usize>();
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("the datagrams arrive");
        got
    }

    #[tokio::test]
    async fn datagrams_after_a_short_batch_still_wake_the_receiver() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = udp.local_addr().expect("address");
        let socket = TunnelUdp::new(udp).expect("socket");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        // one datagram: a batch of one out of four clears the readiness
        tx.send_to(b"one", to).expect("send");
        assert_eq!(receive(&socket, 1).await, 1);
        // the next ones arrive after the clear and must wake the receiver again, also once
        // more than a batch (four) is queued
        for _ in 0..6 {
            tx.send_to(b"more", to).expect("send");
        }
        assert_eq!(receive(&socket, 6).await, 6);
        let late = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send_to(b"late", to).expect("send");
        });
        assert_eq!(receive(&socket, 1).await, 1);
        late.await.expect("sender");
    }

    #[tokio::test]
    async fn writability_is_watched_only_while_a_send_is_refused() {
        use quinn::AsyncUdpSocket;
        let socket = Arc::new(
            TunnelUdp::new(std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
                .expect("socket"),
        );
        let mut poller = socket.clone().create_io_poller();
        fn ready(
            poller: &mut Pin<Box<dyn quinn::UdpPoller>>,
        ) -> impl Future<Output = io::Result<()>> + '_ {
            std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
        }
        // nothing refused: ready at once, no registration
        ready(&mut poller).await.expect("writable");
        assert!(!socket.watching_writable());
        // a refused send (WouldBlock, as try_send records it): the poller waits for the
        // socket's writability, then stops watching it
        socket.blocked.store(true, Ordering::Release);
        tokio::time::timeout(Duration::from_secs(5), ready(&mut poller))
            .await
            .expect("an idle socket turns writable")
            .expect("writable");
        assert!(!socket.blocked.load(Ordering::Acquire));
        assert!(!socket.watching_writable());
        // sends go out and are received
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .try_send(&quinn::udp::Transmit {
                destination: rx.local_addr().expect("address"),
                ecn: None,
                contents: b"hello",
                segment_size: None,
                src_ip: None,
            })
            .expect("send");
        let mut buf = [0u8; 16];
        rx.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(rx.recv(&mut buf).expect("received"), 5);
    }

    /// A UDP forwarder on loopback: its address. Datagrams towards `to` pass at `rate`
    /// bytes/s through a queue of at most 64 KiB that drops what does not fit (a bottleneck
    /// router's); the answers pass at once.
    async fn udp_throttle(to: SocketAddr, rate: usize) -> SocketAddr {
        use tokio::time::{Instant, sleep_until};
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = sock.local_addr().expect("address");
        tokio::spawn(async move {
            let mut client = None;
            let mut queue = std::collections::VecDeque::<Vec<u8>>::new();
            let mut queued = 0;
            let mut next = Instant::now();
            let mut buf = vec![0u8; 65_536];
            loop {
                let due = !queue.is_empty();
                tokio::select! {
                    r = sock.recv_from(&mut buf) => {
                        let Ok((n, from)) = r else { return };
                        if from == to {
                            if let Some(c) = client {
                                let _ = sock.send_to(&buf[..n], c).await;
                            }
                        } else {
                            client = Some(from);
                            if queued + n <= 64 * 1024 {
                                queue.push_back(buf[..n].to_vec());
                                queued += n;
                            }
                        }
                    }
                    () = sleep_until(next), if due => {
                        let Some(d) = queue.pop_front() else { continue };
                        queued -= d.len();
                        let _ = sock.send_to(&d, to).await;
                        next = next.max(Instant::now())
                            + Duration::from_secs_f64(d.len() as f64 / rate as f64);
                    }
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_consensus_write_goes_within_a_bound_while_a_bulk_stream_fills_a_slow_path() {
        use super::super::class::Class;
        use super::super::splice::TunnelWrite;
        let (mut server_tls, mut client_tls) = super::super::mux::tests::tls_configs();
        server_tls.alpn_protocols = vec![b"t".to_vec()];
        client_tls.alpn_protocols = vec![b"t".to_vec()];
        let transport = Arc::new(transport_config(Congestion::default()));
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).expect("QUIC server"),
        ));
        server_config.transport_config(transport.clone());
        let mut client_config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).expect("QUIC client"),
        ));
        client_config.transport_config(transport);
        let bind = || std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let keys = |me: &str| RestartKeys::derive(b"org CA key", me);
        let server =
            endpoint(bind(), Some(server_config), &keys("org2/dc1")).expect("server endpoint");
        let client = endpoint(bind(), None, &keys("org1/dc1")).expect("client endpoint");
        let path = udp_throttle(server.local_addr().expect("address"), 2 * 1024 * 1024).await;
        let bound = Duration::from_secs(10);
        let connecting = client
            .connect_with(client_config, path, "org1.t.test")
            .expect("connect");
        let accept = async {
            server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("server handshake")
        };
        let (conn, peer) = tokio::time::timeout(bound, async {
            tokio::join!(async { connecting.await.expect("handshake") }, accept)
        })
        .await
        .expect("handshake in time");
        // a bulk stream that writes for as long as the test runs; the far end takes all
        let (send, _recv) = conn.open_bi().await.expect("open");
        let mut bulk = TunnelWrite::Quic(send);
        bulk.set_class(Class::Bulk);
        let writer = tokio::spawn(async move {
            let chunk = vec![0u8; 256 * 1024];
            while bulk.write_all(&chunk).await.is_ok() {}
        });
        let (_send, mut sink) = tokio::time::timeout(bound, peer.accept_bi())
            .await
            .expect("bulk stream in time")
            .expect("bulk stream");
        let mut got = 0;
        while got < 1024 * 1024 {
            let chunk = tokio::time::timeout(bound, sink.read_chunk(64 * 1024, true))
                .await
                .expect("bulk bytes in time")
                .expect("read")
                .expect("not finished");
            got += chunk.bytes.len();
        }
        let drain =
            tokio::spawn(
                async move { while let Ok(Some(_)) = sink.read_chunk(1 << 20, true).await {} },
            );
        // half a second of bulk data through: the path's queue is full. A consensus write
        // reaches the far end within the bound
        let (send, _recv) = conn.open_bi().await.expect("open");
        let mut w = TunnelWrite::Quic(send);
        w.set_class(Class::Consensus);
        let start = std::time::Instant::now();
        let message = [7u8; 64];
        w.write_all(&message).await.expect("write");
        let (_s, mut r) = tokio::time::timeout(bound, peer.accept_bi())
            .await
            .expect("stream in time")
            .expect("stream");
        let mut back = [0u8; 64];
        tokio::time::timeout(bound, r.read_exact(&mut back))
            .await
            .expect("bytes in time")
            .expect("read");
        assert_eq!(back, message);
        let took = start.elapsed();
        assert!(took < Duration::from_secs(2), "took {took:?}");
        writer.abort();
        drain.abort();
    }

    #[test]
    fn segments_never_exceed_what_the_socket_supports() {
        assert_eq!(gso_segments(1), 1);
        assert_eq!(gso_segments(0), 1);
        assert_eq!(gso_segments(3), 3);
        assert!(gso_segments(64) * usize::from(MTU_UPPER_BOUND) <= MAX_GSO_PAYLOAD);
    }
}
