//! Named services end to end: a Fabric peer registered at org2 with a `peer` service (and no
//! chain ports) is reached from org1 at its consortium name, through org1's local listener and
//! the tunnel, and org1's DNS answers its `_peer._tcp` SRV record with the local port.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use fedgw_gateway::config::Config;
use fedgw_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn site(i: u8) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.addresses = fedgw_gateway::addressing::AddressMode::Ip {
            pool: format!("127.79.{i}.0/24"),
            interface: None,
        };
        c.tunnel.allow_loopback_targets = true;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echo_on_a_peer_service_is_reached_by_its_consortium_name_and_srv() {
    let mut fed = Fed::found_with(fedgw_gateway::config::Admission::Operator, site(1)).await;
    fed.add("org2", false, site(2)).await;
    fed.converged().await;
    let echo = echo_server().await;
    let mut peer = spec("peer0", 0x31, "127.0.0.1");
    peer.client = pb::ClientKind::FabricPeer.into();
    peer.enode_id = vec![];
    (peer.p2p_port, peer.raft_port, peer.raft_id) = (0, 0, 0);
    peer.services = vec![pb::NamedService {
        name: "peer".into(),
        port: u32::from(echo.port()),
    }];
    fed.gws[1]
        .admin()
        .await
        .add_node(pb::AddNodeRequest { node: Some(peer) })
        .await
        .expect("add the peer");

    // at org1: the SRV record names the node and the port its local listener keeps
    let at = &fed.gws[0];
    let dns = at.run().info.dns;
    let name = "peer0.org2.acme.test";
    let srv = "_peer._tcp.peer0.org2.acme.test";
    let want_srv = format!("0 0 {} {name}.", echo.port());
    let deadline = Instant::now() + WAIT;
    let addr = loop {
        let ip = dig(dns, name, "A", false).parse::<std::net::IpAddr>();
        if let Ok(ip) = ip
            && dig(dns, srv, "SRV", false) == want_srv
        {
            let addr = SocketAddr::new(ip, echo.port());
            if at.run().tunnels.listening().contains(&addr) {
                break addr;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no SRV record or listener for {srv}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(
        addr.ip(),
        echo.ip(),
        "org1 dials a local address, not the node"
    );
    // the node's other names stay absent
    assert_eq!(dig(dns, "_p2p._tcp.peer0.org2.acme.test", "SRV", false), "");

    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect the local address");
    s.write_all(b"fabric gossip hello").await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut back))
        .await
        .expect("echo within the wait")
        .expect("read");
    assert_eq!(back, b"fabric gossip hello");
    fed.stop_all().await;
}
