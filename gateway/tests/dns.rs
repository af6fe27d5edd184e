//! The gateway's DNS, asked with the real `dig` (Debian bind9-dnsutils; scripts/test installs
//! it): split horizon across two sites, SRV/TXT, NXDOMAIN inside the zone, REFUSED outside it
//! and for ANY, and answers that follow the view.

mod support;

use fedgw_proto::v1 as pb;
use support::*;

fn status(dns: std::net::SocketAddr, name: &str, qtype: &str) -> String {
    let text = dig(dns, name, qtype, true);
    text.lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolve_per_site_and_follow_the_view() {
    let mut fed = Fed::with_orgs(2).await;
    let enode = "ab".repeat(64);
    let mut node = spec("node1", 0xab, "10.2.0.11");
    node.tessera_url = "http://10.2.0.11:9000".into();
    fed.gws[1]
        .admin()
        .await
        .add_node(pb::AddNodeRequest { node: Some(node) })
        .await
        .expect("add");
    fed.converged().await;
    let (dns1, dns2) = (fed.gws[0].run().info.dns, fed.gws[1].run().info.dns);
    let name = "node1.org2.acme.test";

    // at home: the real address; at org1: the local address allocated there
    wait_for("org2 answers its node", || {
        dig(dns2, name, "A", false) == "10.2.0.11"
    })
    .await;
    wait_for("org1 answers its local address", || {
        dig(dns1, name, "A", false).starts_with("127.77.")
    })
    .await;
    let listed = fed.gws[0]
        .admin()
        .await
        .list_nodes(pb::ListNodesRequest {})
        .await
        .expect("nodes");
    assert_eq!(
        dig(dns1, name, "A", false),
        listed.into_inner().nodes[0].local_ip
    );

    assert_eq!(
        dig(dns1, "_p2p._tcp.node1.org2.acme.test", "SRV", false),
        format!("0 0 30303 {name}.")
    );
    assert_eq!(
        dig(dns1, "_raft._tcp.node1.org2.acme.test", "SRV", false),
        format!("0 0 50400 {name}.")
    );
    assert_eq!(
        dig(dns1, "_tessera._tcp.node1.org2.acme.test", "SRV", false),
        format!("0 0 9000 {name}.")
    );
    assert_eq!(dig(dns1, name, "TXT", false), format!("\"enode={enode}\""));
    assert!(
        dig(dns1, "acme.test", "SOA", false)
            .starts_with("gw-dc1.org1.acme.test. hostmaster.acme.test.")
    );
    assert_eq!(dig(dns1, "gw-dc1.org2.acme.test", "A", false), "127.0.0.1");

    assert_eq!(status(dns1, "nope.org2.acme.test", "A"), "NXDOMAIN");
    assert_eq!(
        status(dns1, name, "AAAA"),
        "NOERROR",
        "the name exists without an AAAA record"
    );
    assert_eq!(status(dns1, "example.com", "A"), "REFUSED");
    assert_eq!(status(dns1, name, "ANY"), "REFUSED");
    assert!(
        dig(dns1, name, "A", true).contains("flags: qr aa"),
        "authoritative"
    );

    // removal: the name leaves the zone everywhere
    fed.gws[1]
        .admin()
        .await
        .remove_node(pb::RemoveNodeRequest {
            name: "node1".into(),
        })
        .await
        .expect("rm");
    fed.converged().await;
    wait_for("NXDOMAIN at org1", || status(dns1, name, "A") == "NXDOMAIN").await;
    wait_for("NXDOMAIN at org2", || status(dns2, name, "A") == "NXDOMAIN").await;
    fed.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_packets_do_not_stop_the_server() {
    let fed = Fed::with_orgs(1).await;
    let dns = fed.gws[0].run().info.dns;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for junk in [
        &b""[..],
        &[0u8; 3][..],
        &[0xff; 512][..],
        &[0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c][..],
    ] {
        let _ = sock.send_to(junk, dns);
    }
    let mut tcp = std::net::TcpStream::connect(dns).expect("tcp");
    let _ = std::io::Write::write_all(&mut tcp, &[0xff, 0xff, 1, 2, 3]);
    drop(tcp);
    assert_eq!(dig(dns, "acme.test", "NS", false), "gw-dc1.org1.acme.test.");
    let mut fed = fed;
    fed.stop_all().await;
}

/// Kubernetes: the controller sets a remote node's Service ClusterIP; DNS answers that IP with
/// the node's real ports instead of this site's port-mode allocation, until it is cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_address_replaces_the_allocation_with_real_ports() {
    let mut fed = Fed::with_orgs(1).await;
    let org2 = fed
        .add("org2", false, |c| {
            c.addresses = fedgw_gateway::addressing::AddressMode::Port {
                ip: "127.0.0.1".parse().expect("ip"),
                first_port: 41000,
                last_port: 41099,
            }
        })
        .await;
    fed.gws[0]
        .admin()
        .await
        .add_node(pb::AddNodeRequest {
            node: Some(spec("node1", 0xab, "10.1.0.11")),
        })
        .await
        .expect("add");
    fed.converged().await;
    let dns = fed.gws[org2].run().info.dns;
    let (name, srv) = ("node1.org1.acme.test", "_p2p._tcp.node1.org1.acme.test");
    wait_for("the port-mode allocation", || {
        dig(dns, name, "A", false) == "127.0.0.1"
    })
    .await;
    let allocated = dig(dns, srv, "SRV", false);
    assert!(allocated.starts_with("0 0 410"), "{allocated}");

    let mut admin = fed.gws[org2].admin().await;
    let set = |ip: &str| pb::SetServiceAddressRequest {
        org: "org1".into(),
        name: "node1".into(),
        ip: ip.into(),
    };
    admin
        .set_service_address(set("10.96.0.42"))
        .await
        .expect("set");
    wait_for("the Service address", || {
        dig(dns, name, "A", false) == "10.96.0.42"
    })
    .await;
    assert_eq!(dig(dns, srv, "SRV", false), format!("0 0 30303 {name}."));
    let listed = admin
        .list_nodes(pb::ListNodesRequest {})
        .await
        .expect("nodes")
        .into_inner();
    assert_eq!(listed.nodes[0].service_ip, "10.96.0.42");

    // refusals: own nodes, unknown nodes, bad addresses
    let code = |r: Result<tonic::Response<pb::SetServiceAddressResponse>, tonic::Status>| {
        r.map(|_| ()).map_err(|s| s.code())
    };
    let mut own = set("10.96.0.1");
    own.org = "org2".into();
    assert_eq!(
        code(admin.set_service_address(own).await),
        Err(tonic::Code::InvalidArgument)
    );
    let mut unknown = set("10.96.0.1");
    unknown.name = "nope".into();
    assert_eq!(
        code(admin.set_service_address(unknown).await),
        Err(tonic::Code::NotFound)
    );
    assert_eq!(
        code(admin.set_service_address(set("10.96.0")).await),
        Err(tonic::Code::InvalidArgument)
    );

    admin.set_service_address(set("")).await.expect("clear");
    wait_for("the allocation again", || {
        dig(dns, name, "A", false) == "127.0.0.1"
    })
    .await;
    assert_eq!(dig(dns, srv, "SRV", false), allocated);
    fed.stop_all().await;
}
