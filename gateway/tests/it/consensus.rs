//! Consensus side links over TCP+TLS: two in-process gateways, the dialler of the main link
//! keeps a second connection for streams of class consensus. Consensus streams ride it and
//! other classes the main link; a lost side link is dialled again, consensus streams take the
//! main link meanwhile; with `tunnel.consensus_link = false` there is none.

use std::time::Duration;

use crate::support::*;
use fedgw_gateway::config::Config;
use fedgw_gateway::membership::GatewayId;
use fedgw_gateway::tunnel::Transport;
use fedgw_gateway::tunnel::class::Class;
use fedgw_gateway::tunnel::header::{Answer, Request};
use fedgw_proto::v1 as pb;
use tokio::io::AsyncReadExt;

fn site(i: u8, consensus_link: bool) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.addresses = fedgw_gateway::addressing::AddressMode::Ip {
            pool: format!("127.79.{i}.0/24"),
            interface: None,
        };
        c.tunnel.transport = Transport::Tcp;
        c.tunnel.allow_loopback_targets = true;
        c.tunnel.consensus_link = consensus_link;
    }
}

/// org1 and org2 over TCP+TLS, org2 with `node1` whose raft and p2p ports are an echo
/// server; org1 keeps the link to org2 up (the lower `org/site`).
async fn federation(consensus_link: bool) -> Fed {
    let mut fed = Fed::found_with(
        fedgw_gateway::config::Admission::Operator,
        site(1, consensus_link),
    )
    .await;
    fed.add("org2", false, site(2, consensus_link)).await;
    fed.converged().await;
    let echo = echo_server().await;
    let mut n = spec("node1", 0x51, "127.0.0.1");
    n.p2p_port = u32::from(echo.port());
    n.raft_port = u32::from(echo.port());
    fed.gws[1]
        .admin()
        .await
        .add_node(pb::AddNodeRequest { node: Some(n) })
        .await
        .expect("add node");
    fed.converged().await;
    far_end_knows_node1(&fed).await;
    fed
}

/// Waits (10 s at most) until org2's far end accepts a stream to node1: the records have
/// converged, but org2's site keeper hands the node to its far end a moment later.
async fn far_end_knows_node1(fed: &Fed) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while try_echo(fed, Class::Bulk, Duration::from_secs(2))
        .await
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "org2's far end never accepted node1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn org(name: &str) -> GatewayId {
    GatewayId::new(name, "dc1")
}

/// The number of `at`'s consensus side link to `peer`, if one is up.
fn side_link(at: &Gw, peer: &str) -> Option<u64> {
    at.run()
        .tunnels
        .links()
        .into_iter()
        .find(|l| l.peer == org(peer))
        .and_then(|l| l.consensus_link)
}

/// Opens a stream of `class` from org1 to org2's node1 (its raft port), checks an echo
/// through it, and returns whether it ran on a consensus side link.
async fn echo_through(fed: &Fed, class: Class) -> bool {
    try_echo(fed, class, Duration::from_secs(10))
        .await
        .expect("the far end accepts the stream in time")
}

/// Like [`echo_through`], but `None` when the far end does not accept within `wait`.
async fn try_echo(fed: &Fed, class: Class, wait: Duration) -> Option<bool> {
    let (stream, link) = fed.gws[0]
        .run()
        .tunnels
        .open_class(&org("org2"), class)
        .await
        .expect("open stream");
    let (mut r, mut w) = stream.split();
    let header = Request::new("org2", "node1", "raft")
        .expect("valid")
        .encode();
    w.write_all(&[header, b"ping".to_vec()].concat())
        .await
        .expect("send");
    match tokio::time::timeout(wait, r.answer()).await {
        Ok(Ok(Answer::Accepted)) => {}
        _ => return None,
    }
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), r.read_exact(&mut got))
        .await
        .expect("the echo in time")
        .expect("echo");
    assert_eq!(&got, b"ping");
    w.finish().await.expect("finish");
    Some(link.is_consensus())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consensus_streams_ride_a_side_link_of_their_own_over_tcp() {
    let mut fed = federation(true).await;
    wait_for("org1 keeps a side link to org2", || {
        side_link(&fed.gws[0], "org2").is_some()
    })
    .await;
    // the accepting end takes it as a side link, not as a second main link
    wait_for("org2 has the side link from org1", || {
        side_link(&fed.gws[1], "org1").is_some()
    })
    .await;
    assert_eq!(fed.gws[0].run().tunnels.links().len(), 1, "one main link");
    assert_eq!(fed.gws[1].run().tunnels.links().len(), 1, "one main link");
    assert!(
        echo_through(&fed, Class::Consensus).await,
        "consensus: side link"
    );
    assert!(!echo_through(&fed, Class::Bulk).await, "bulk: main link");
    assert!(
        !echo_through(&fed, Class::Interactive).await,
        "interactive: main link"
    );
    fed.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_side_link_is_dialled_again_and_consensus_takes_the_main_link_meanwhile() {
    let mut fed = federation(true).await;
    wait_for("org1 keeps a side link to org2", || {
        side_link(&fed.gws[0], "org2").is_some()
    })
    .await;
    let first = side_link(&fed.gws[0], "org2");
    let tunnels = &fed.gws[0].run().tunnels;
    tunnels.block_consensus_dials(true);
    tunnels.close_consensus_link(&org("org2"));
    wait_for("org1's side link is down", || {
        side_link(&fed.gws[0], "org2").is_none()
    })
    .await;
    wait_for("org2's end of it is down", || {
        side_link(&fed.gws[1], "org1").is_none()
    })
    .await;
    assert!(
        !echo_through(&fed, Class::Consensus).await,
        "no side link: consensus takes the main link"
    );
    fed.gws[0].run().tunnels.block_consensus_dials(false);
    wait_for("org1 dials a new side link", || {
        side_link(&fed.gws[0], "org2").is_some_and(|id| Some(id) != first)
    })
    .await;
    assert!(
        echo_through(&fed, Class::Consensus).await,
        "the new side link"
    );
    assert_eq!(
        fed.gws[0].run().tunnels.links().len(),
        1,
        "the main link stayed"
    );
    fed.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_consensus_link_one_connection_carries_every_class() {
    let mut fed = federation(false).await;
    wait_for("org1 keeps a link to org2", || {
        fed.gws[0].run().tunnels.link_count() == 1
    })
    .await;
    assert!(!echo_through(&fed, Class::Consensus).await);
    assert_eq!(side_link(&fed.gws[0], "org2"), None);
    assert_eq!(side_link(&fed.gws[1], "org1"), None);
    fed.stop_all().await;
}
