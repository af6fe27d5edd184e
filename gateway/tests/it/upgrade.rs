//! `tunnel.transport = "auto"` back on QUIC, with two in-process gateways: while org1's QUIC
//! dials fail (the test hook standing in for blocked UDP) its link to org2 comes up over
//! TCP+TLS, and `fedgw status` says when QUIC failed and when it is tried again; once QUIC dials
//! go through, the link moves to QUIC at both ends, a connection opened before the move carries
//! bytes both ways to its end, and the TCP+TLS link closes when that connection has ended.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::support::*;
use fedgw_gateway::config::{Admission, Config};
use fedgw_gateway::membership::GatewayId;
use fedgw_gateway::tunnel::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Per-org pool, `auto`, loopback targets allowed (the echo node runs on 127.0.0.1).
fn site(i: u8) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.addresses = fedgw_gateway::addressing::AddressMode::Ip {
            pool: format!("127.87.{i}.0/24"),
            interface: None,
        };
        c.tunnel.transport = Transport::Auto;
        c.tunnel.allow_loopback_targets = true;
    }
}

/// Sends `len` bytes on `c` and reads the same bytes back, within [`WAIT`].
async fn round_trip(c: &mut TcpStream, seed: u8, len: usize) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let (mut r, mut w) = c.split();
    let write = w.write_all(&data);
    let mut back = vec![0u8; len];
    let read = r.read_exact(&mut back);
    let (wrote, read) = tokio::time::timeout(WAIT, async { tokio::join!(write, read) })
        .await
        .expect("echo within the wait");
    wrote.expect("write");
    read.expect("read back");
    assert!(back == data, "echo bytes differ");
}

/// org1's local listener for the node at `port`, once it is up.
async fn local_address(at: &Gw, port: u16) -> SocketAddr {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(a) = at
            .run()
            .tunnels
            .listening()
            .into_iter()
            .find(|a| a.port() == port)
        {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no local listener for port {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    i64::try_from(ms).expect("fits")
}

fn id(org: &str) -> GatewayId {
    GatewayId::new(org, "dc1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_link_on_tcp_moves_to_quic_once_udp_works_and_keeps_its_live_streams() {
    let mut fed = Fed::found_with(Admission::Operator, site(1)).await;
    // set before org2 exists, so org1's first dial to it (org1 keeps the link) finds QUIC
    // failing and TCP+TLS working
    fed.gws[0].run().tunnels.block_quic_dials(true);
    let before = unix_ms(SystemTime::now());
    fed.add("org2", false, site(2)).await;
    fed.converged().await;
    let echo = echo_server().await;
    let mut node = spec("node1", 0x21, "127.0.0.1");
    node.p2p_port = u32::from(echo.port());
    node.raft_port = 0;
    node.raft_id = 0;
    fed.gws[1]
        .admin()
        .await
        .add_node(fedgw_proto::v1::AddNodeRequest { node: Some(node) })
        .await
        .expect("add node");
    let addr = local_address(&fed.gws[0], echo.port()).await;

    // a connection through the TCP+TLS link, open across the move
    let mut live = TcpStream::connect(addr).await.expect("connect");
    round_trip(&mut live, 1, 64 << 10).await;
    let (org1, org2) = (fed.gws[0].run(), fed.gws[1].run());
    assert_eq!(org1.tunnels.link_transport(&id("org2")), Some("tcp"));
    assert_eq!(org2.tunnels.link_transport(&id("org1")), Some("tcp"));

    // the dialler says why the link is on TCP+TLS and when QUIC is tried again
    let status = fed.gws[0].status().await;
    let link = status
        .tunnels
        .iter()
        .find(|t| t.org == "org2")
        .expect("a link to org2 in status");
    let now = unix_ms(SystemTime::now());
    assert_eq!(link.transport, "tcp");
    assert!(
        (before..=now).contains(&link.quic_failed_at_unix_ms),
        "{link:?}"
    );
    // the first retry 22.5 s to 37.5 s after the failure; a second (45 s to 75 s after the
    // next failure) only if this machine took that long to get here
    let wait = link.quic_retry_at_unix_ms - link.quic_failed_at_unix_ms;
    assert!((22_500..=75_000).contains(&wait), "{link:?}");
    // the accepting end did not dial, and shows nothing to retry
    let status = fed.gws[1].status().await;
    let link = status
        .tunnels
        .iter()
        .find(|t| t.org == "org1")
        .expect("a link to org1 in status");
    assert_eq!(link.transport, "tcp");
    assert_eq!(
        (link.quic_failed_at_unix_ms, link.quic_retry_at_unix_ms),
        (0, 0)
    );

    // UDP works again
    fed.gws[0].run().tunnels.block_quic_dials(false);
    wait_for("the link on QUIC at both ends", || {
        org1.tunnels.link_transport(&id("org2")) == Some("quic")
            && org2.tunnels.link_transport(&id("org1")) == Some("quic")
    })
    .await;
    // the TCP+TLS link drains at both ends: it still carries the live connection
    for gw in [org1, org2] {
        assert_eq!(gw.metrics.tunnel_links("tcp"), 1);
        assert_eq!(gw.metrics.tunnel_links("quic"), 1);
    }
    round_trip(&mut live, 2, 256 << 10).await;

    // a new connection takes the QUIC link
    let mut fresh = TcpStream::connect(addr).await.expect("connect");
    round_trip(&mut fresh, 3, 64 << 10).await;

    // the live connection ends cleanly: the node's half-close comes back after the last byte
    round_trip(&mut live, 4, 16 << 10).await;
    live.shutdown().await.expect("half-close");
    let mut rest = vec![];
    tokio::time::timeout(WAIT, live.read_to_end(&mut rest))
        .await
        .expect("end within the wait")
        .expect("clean end");
    assert!(rest.is_empty(), "{} unexpected bytes", rest.len());
    drop(live);
    wait_for("the drained TCP+TLS link closed at both ends", || {
        [org1, org2]
            .iter()
            .all(|g| g.metrics.tunnel_links("tcp") == 0)
    })
    .await;
    // the new connection was not on it
    round_trip(&mut fresh, 5, 64 << 10).await;
    assert_eq!(org1.metrics.tunnel_links("quic"), 1);

    let status = fed.gws[0].status().await;
    let link = status
        .tunnels
        .iter()
        .find(|t| t.org == "org2")
        .expect("a link to org2 in status");
    assert_eq!(link.transport, "quic");
    assert_eq!(
        (link.quic_failed_at_unix_ms, link.quic_retry_at_unix_ms),
        (0, 0)
    );
    drop(fresh);
    fed.stop_all().await;
}
