//! The QUIC side of the data plane: transport settings and the endpoint's UDP socket.
//!
//! One endpoint per gateway, on UDP at the gateway port number. Path MTU discovery (RFC 8899)
//! grows datagrams up to [`MTU_UPPER_BOUND`] where the path carries them; segmentation
//! offload (Linux UDP GSO) sends several datagrams per `sendmsg`, capped so a batch never
//! exceeds what the kernel accepts in one call ([`MAX_GSO_PAYLOAD`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tracing::debug;

use super::{IDLE_TIMEOUT, KEEP_ALIVE, TunnelError};

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

/// Builds the QUIC transport settings: keep-alive, idle timeout, stream limits and windows
/// sized for bulk transfers.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
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
    // ask the peer to acknowledge promptly: a delayed ACK inflates the RTT estimate, and the
    // pacing rate (window / RTT) with it, on fast paths
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.max_ack_delay(Some(Duration::from_millis(1)));
    t.ack_frequency_config(Some(ack));
    t
}

/// Opens the QUIC endpoint on `udp` (already bound): enlarged socket buffers, datagrams up to
/// [`MTU_UPPER_BOUND`], segmentation offload capped by [`CappedGso`]. `server` is `None` at a
/// site that answers no handshakes (outbound-only).
///
/// # Errors
///
/// [`TunnelError::Quic`] without a tokio runtime, [`TunnelError::Io`] when the socket cannot
/// be set up.
pub fn endpoint(
    udp: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, TunnelError> {
    tune_udp(&udp);
    let runtime =
        quinn::default_runtime().ok_or_else(|| TunnelError::Quic("no async runtime".into()))?;
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MTU_UPPER_BOUND)
        .map_err(|e| TunnelError::Quic(e.to_string()))?;
    let socket = Arc::new(CappedGso(
        runtime.wrap_udp_socket(udp).map_err(TunnelError::Io)?,
    ));
    quinn::Endpoint::new_with_abstract_socket(config, server, socket, runtime)
        .map_err(TunnelError::Io)
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

/// quinn's tokio UDP socket with segmentation offload capped by [`gso_segments`].
///
/// quinn batches up to ten datagrams of the current path MTU per send. With jumbo datagrams
/// that is up to 89 520 bytes, which the kernel refuses; the lost batches would then look like
/// an MTU black hole and push path MTU discovery back to 1200 bytes.
#[derive(Debug)]
pub struct CappedGso(Arc<dyn quinn::AsyncUdpSocket>);

impl quinn::AsyncUdpSocket for CappedGso {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        gso_segments(self.0.max_transmit_segments())
    }

    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn segments_never_exceed_what_the_socket_supports() {
        assert_eq!(gso_segments(1), 1);
        assert_eq!(gso_segments(0), 1);
        assert_eq!(gso_segments(3), 3);
        assert!(gso_segments(64) * usize::from(MTU_UPPER_BOUND) <= MAX_GSO_PAYLOAD);
    }
}
