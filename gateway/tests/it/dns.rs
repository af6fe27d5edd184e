//! The gateway's DNS, asked with the real `dig` (Debian bind9-dnsutils; scripts/test installs
//! it): split horizon across two sites, SRV/TXT, NXDOMAIN inside the zone, REFUSED outside it
//! and for ANY, and answers that follow the view. Then the protocol rules (opcodes, classes,
//! EDNS(0), truncation, empty non-terminals, transfers) against a zone served alone, and the
//! same queries compared with Knot (Debian `knot`, installed by scripts/test) serving the same
//! zone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use fedgw_gateway::dns::{
    TcpLimits, TcpRefusal, Zone, ZoneGateway, ZoneHandler, ZoneNode, serve_tcp,
};
use fedgw_proto::v1 as pb;
use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

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
    let enode = fedgw_tests::enode_id(0xab);
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

/// This site's own nodes registered by host name: a one-label host (`localhost` here, a
/// Compose service in the field) is resolved by the gateway and answered by address, since a
/// CNAME to `localhost.` would send a forwarding resolver to the root zone; a host of several
/// labels is a CNAME to the absolute name, which a resolver follows (here into the zone itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_nodes_by_host_name_answer_what_a_forwarding_resolver_can_follow() {
    let mut fed = Fed::with_orgs(1).await;
    let mut admin = fed.gws[0].admin().await;
    for (name, enode, host) in [
        ("short", 0xa1, "localhost"),
        ("long", 0xa2, "db.internal.example"),
        ("chain", 0xa3, "short.org1.acme.test"),
    ] {
        admin
            .add_node(pb::AddNodeRequest {
                node: Some(spec(name, enode, host)),
            })
            .await
            .expect("add");
    }
    let dns = fed.gws[0].run().info.dns;
    wait_for("the one-label host answered by address", || {
        dig(dns, "short.org1.acme.test", "A", false) == "127.0.0.1"
    })
    .await;
    assert_eq!(
        dig(dns, "short.org1.acme.test", "CNAME", false),
        "",
        "no CNAME to a one-label name"
    );
    assert_eq!(
        dig(dns, "long.org1.acme.test", "CNAME", false),
        "db.internal.example."
    );
    assert_eq!(
        dig(dns, "chain.org1.acme.test", "CNAME", false),
        "short.org1.acme.test."
    );

    // a stub resolver asking the gateway, as a forwarding resolver would
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    let mut udp = ConnectionConfig::udp();
    udp.port = dns.port();
    let mut server = NameServerConfig::udp_and_tcp(dns.ip());
    server.connections = vec![udp];
    let mut builder = hickory_resolver::Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![server]),
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    );
    builder.options_mut().attempts = 1;
    builder.options_mut().timeout = Duration::from_secs(2);
    let resolver = builder.build().expect("resolver");
    for name in ["short.org1.acme.test.", "chain.org1.acme.test."] {
        let ips: Vec<std::net::IpAddr> = resolver
            .lookup_ip(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .iter()
            .collect();
        assert_eq!(
            ips,
            ["127.0.0.1".parse::<std::net::IpAddr>().expect("ip")],
            "{name}"
        );
    }
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

/// One `dig` exchange, reduced to what two servers answering the same zone must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dug {
    status: String,
    /// Header flags, sorted (`qr`, `aa`, `tc`, ...).
    flags: Vec<String>,
    /// dig's EDNS line (`version: 0, flags:; udp: 1232`), if the response had an OPT.
    edns: Option<String>,
    answer: Vec<String>,
    authority: Vec<String>,
}

impl Dug {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

fn parse_dig(text: &str) -> Dug {
    let mut dug = Dug {
        status: "no answer".into(),
        flags: vec![],
        edns: None,
        answer: vec![],
        authority: vec![],
    };
    let mut section: Option<&mut Vec<String>> = None;
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            dug.status = rest.split(',').next().unwrap_or_default().to_owned();
        } else if let Some(rest) = line.strip_prefix(";; flags:") {
            let flags = rest.split(';').next().unwrap_or_default();
            dug.flags = flags.split_whitespace().map(str::to_owned).collect();
            dug.flags.sort();
        } else if let Some(rest) = line.strip_prefix("; EDNS: ") {
            dug.edns = Some(rest.trim().to_owned());
        } else if line == ";; ANSWER SECTION:" {
            section = Some(&mut dug.answer);
        } else if line == ";; AUTHORITY SECTION:" {
            section = Some(&mut dug.authority);
        } else if line.trim().is_empty() || line.starts_with(";;") {
            section = None;
        } else if let Some(records) = section.as_mut() {
            records.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    dug.answer.sort();
    dug.authority.sort();
    dug
}

/// `dig @dns <args>` without recursion, one try of 2 s.
fn ask(dns: SocketAddr, args: &[&str]) -> Dug {
    let out = std::process::Command::new("dig")
        .arg(format!("@{}", dns.ip()))
        .args([
            "-p",
            &dns.port().to_string(),
            "+time=2",
            "+tries=1",
            "+norecurse",
        ])
        .args(args)
        .output()
        .expect("dig must be installed (scripts/test installs bind9-dnsutils)");
    parse_dig(&String::from_utf8_lossy(&out.stdout))
}

/// A [`ZoneHandler`] serving one zone on UDP and TCP at the same loopback port, as `fedgw run`
/// registers it: UDP by hickory, TCP by [`serve_tcp`] with `limits`.
struct Served {
    addr: SocketAddr,
    server: hickory_server::Server<ZoneHandler>,
    tcp: tokio::task::JoinHandle<()>,
    shutdown: tokio_util::sync::CancellationToken,
    metrics: fedgw_gateway::metrics::Metrics,
}

/// The caps `fedgw run` uses by default.
const DEFAULT_LIMITS: TcpLimits = TcpLimits {
    per_source: fedgw_gateway::config::DEFAULT_DNS_TCP_PER_SOURCE,
    total: fedgw_gateway::config::DEFAULT_DNS_TCP_CONNECTIONS,
    idle: Duration::from_secs(5),
};

impl Served {
    async fn new(zone: Zone) -> Self {
        Self::with_limits(zone, DEFAULT_LIMITS).await
    }

    async fn with_limits(zone: Zone, limits: TcpLimits) -> Self {
        let handler = ZoneHandler::new(0);
        handler.replace(zone);
        for _ in 0..50 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("udp");
            let addr = udp.local_addr().expect("addr");
            // the TCP port must be the UDP one: dig retries a truncated answer there
            let Ok(tcp) = tokio::net::TcpListener::bind(addr).await else {
                continue;
            };
            let mut server = hickory_server::Server::new(handler.clone());
            server.register_socket(udp);
            let shutdown = tokio_util::sync::CancellationToken::new();
            let metrics = fedgw_gateway::metrics::Metrics::new();
            let m = metrics.clone();
            let tcp = tokio::spawn(serve_tcp(
                tcp,
                handler,
                limits,
                move |why| m.dns_tcp_refused(why),
                shutdown.clone(),
            ));
            return Self {
                addr,
                server,
                tcp,
                shutdown,
                metrics,
            };
        }
        panic!("no free UDP+TCP port pair on 127.0.0.1");
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        self.tcp.await.expect("dns tcp stop");
        self.server.shutdown_gracefully().await.expect("dns stop");
    }
}

fn node(org: &str, name: &str, ip: Option<&str>) -> ZoneNode {
    ZoneNode {
        org: org.into(),
        name: name.into(),
        ip: ip.map(|ip| ip.parse().expect("ip")),
        alias: None,
        ports: BTreeMap::new(),
        enode_id: None,
    }
}

/// acme.test as org1's dc1 answers it: a node with A, TXT and three SRV names, a node known
/// only by a Service name outside the zone (CNAME), two gateways. (A node without any record
/// is NODATA at fedgw but has no zone-file form, so it is not here.)
fn acme() -> Zone {
    let mut n1 = node("org2", "node1", Some("127.77.0.1"));
    n1.ports = [
        ("p2p".to_owned(), 30303),
        ("raft".to_owned(), 50400),
        ("tessera".to_owned(), 9000),
    ]
    .into();
    n1.enode_id = Some(fedgw_proto::enode::EnodeId::from_bytes([0xab; 64]));
    let mut n2 = node("org3", "node2", None);
    n2.alias = Some("quorum-node2.ns.svc.cluster.local".into());
    // Knot refuses to load a CNAME with other data beside it
    n2.enode_id = Some(fedgw_proto::enode::EnodeId::from_bytes([0xcd; 64]));
    n2.ports = [("p2p".to_owned(), 30303)].into();
    let gateways =
        [("org1", "dc1", "127.0.0.1"), ("org2", "dc1", "127.0.0.2")].map(|(org, site, ip)| {
            ZoneGateway {
                org: org.into(),
                site: site.into(),
                ip: Some(ip.parse().expect("ip")),
            }
        });
    Zone::build("acme.test", "gw-dc1.org1", 7, &[n1, n2], &gateways)
}

/// A zone whose node name has 255 bytes and is a CNAME to a 249-byte name: the answer takes
/// 532 bytes, 543 with OPT.
fn long() -> (Zone, String) {
    let label = |c: char, n: usize| c.to_string().repeat(n);
    let domain = format!(
        "{}.{}.{}.{}.test",
        label('a', 60),
        label('b', 60),
        label('c', 60),
        label('h', 54)
    );
    let mut n = node("org2", "node1", None);
    n.alias = Some(format!(
        "{}.{}.{}.{}.svc",
        label('d', 60),
        label('e', 60),
        label('f', 60),
        label('g', 60)
    ));
    let zone = Zone::build(&domain, "gw-dc1.org1", 1, &[n], &[]);
    (zone, format!("node1.org2.{domain}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_opcodes_and_classes_get_notimp_and_refused() {
    let served = Served::new(acme()).await;
    let dns = served.addr;
    let name = "node1.org2.acme.test";
    let ok = ask(dns, &[name, "A"]);
    assert_eq!(
        (ok.status.as_str(), ok.answer.len()),
        ("NOERROR", 1),
        "{ok:?}"
    );
    // IQUERY, STATUS, NOTIFY, UPDATE, 15
    for op in ["1", "2", "4", "5", "15"] {
        let d = ask(dns, &[name, "A", &format!("+opcode={op}")]);
        assert_eq!(d.status, "NOTIMP", "opcode {op}: {d:?}");
        assert!(d.answer.is_empty() && !d.has("aa"), "opcode {op}: {d:?}");
    }
    for class in ["CH", "HS", "NONE", "ANY"] {
        let d = ask(dns, &["-c", class, name, "A"]);
        assert_eq!(d.status, "REFUSED", "class {class}: {d:?}");
        assert!(d.answer.is_empty() && !d.has("aa"), "class {class}: {d:?}");
    }
    assert_eq!(
        ask(dns, &["-c", "CH", "version.bind", "TXT"]).status,
        "REFUSED"
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_gets_an_opt_with_our_size_and_badvers_above_version_0() {
    let served = Served::new(acme()).await;
    let dns = served.addr;
    let name = "node1.org2.acme.test";
    let d = ask(dns, &[name, "A", "+bufsize=4096"]);
    assert_eq!(
        d.edns.as_deref(),
        Some("version: 0, flags:; udp: 1232"),
        "{d:?}"
    );
    assert_eq!(d.answer, [format!("{name}. 5 IN A 127.77.0.1")]);
    assert_eq!(ask(dns, &[name, "A", "+noedns"]).edns, None);
    let d = ask(dns, &[name, "A", "+dnssec"]);
    assert_eq!(d.edns.as_deref(), Some("version: 0, flags: do; udp: 1232"));

    let d = ask(dns, &[name, "A", "+edns=1", "+noednsnegotiation"]);
    assert_eq!(d.status, "BADVERS", "{d:?}");
    assert_eq!(d.edns.as_deref(), Some("version: 0, flags:; udp: 1232"));
    assert!(d.answer.is_empty());

    // unknown options (and dig's cookie) are ignored, not echoed
    let d = ask(dns, &[name, "A", "+ednsopt=65001:abcd", "+ednsopt=65002"]);
    assert_eq!((d.status.as_str(), d.answer.len()), ("NOERROR", 1), "{d:?}");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_larger_than_the_udp_size_set_tc_and_tcp_gets_them() {
    let (zone, name) = long();
    let served = Served::new(zone).await;
    let dns = served.addr;
    let d = ask(dns, &[&name, "A", "+noedns", "+ignore"]);
    assert!(
        d.has("tc") && d.answer.is_empty(),
        "512 without EDNS: {d:?}"
    );
    assert_eq!(d.status, "NOERROR");
    let d = ask(dns, &[&name, "A", "+bufsize=520", "+ignore"]);
    assert!(d.has("tc") && d.answer.is_empty(), "520 asked: {d:?}");
    assert!(d.edns.is_some());
    let d = ask(dns, &[&name, "A", "+bufsize=1232", "+ignore"]);
    assert!(!d.has("tc") && d.answer.len() == 1, "1232 asked: {d:?}");
    // dig's own retry over TCP after TC
    let d = ask(dns, &[&name, "A", "+noedns"]);
    assert!(!d.has("tc") && d.answer.len() == 1, "over TCP: {d:?}");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_non_terminals_are_nodata_with_the_soa() {
    let served = Served::new(acme()).await;
    let dns = served.addr;
    for name in [
        "org2.acme.test",
        "_tcp.node1.org2.acme.test",
        "org1.acme.test",
    ] {
        let d = ask(dns, &[name, "A"]);
        assert_eq!(d.status, "NOERROR", "{name}: {d:?}");
        assert!(d.has("aa") && d.answer.is_empty(), "{name}: {d:?}");
        assert!(
            d.authority.len() == 1 && d.authority[0].contains(" IN SOA "),
            "{name}: {d:?}"
        );
    }
    assert_eq!(ask(dns, &["nope.org2.acme.test", "A"]).status, "NXDOMAIN");
    assert_eq!(
        ask(dns, &["_udp.node1.org2.acme.test", "A"]).status,
        "NXDOMAIN"
    );
    served.stop().await;
}

/// Sends `msg` in one datagram and reads the answer (2 s bound).
fn exchange_udp(dns: SocketAddr, msg: &Message) -> Message {
    exchange_raw(dns, &msg.to_vec().expect("encode"))
}

/// Sends `bytes` in one datagram and reads the answer (2 s bound).
fn exchange_raw(dns: SocketAddr, bytes: &[u8]) -> Message {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    sock.send_to(bytes, dns).expect("send");
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("an answer within 2 s");
    Message::from_vec(&buf[..n]).expect("decode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_transfers_are_refused_on_both_transports() {
    let served = Served::new(acme()).await;
    let dns = served.addr;
    let mut axfr = Message::query();
    axfr.metadata.op_code = OpCode::Query;
    axfr.add_query(Query::query(
        Name::from_ascii("acme.test.").expect("name"),
        RecordType::AXFR,
    ));
    let answer = exchange_udp(dns, &axfr);
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    assert!(answer.answers.is_empty());

    // over TCP: dig prints the refusal and no record
    let out = std::process::Command::new("dig")
        .arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string(), "+time=2", "+tries=1"])
        .args(["acme.test", "AXFR"])
        .output()
        .expect("dig");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Transfer failed."), "{text}");
    assert!(!text.contains("IN\tSOA"), "{text}");
    let d = ask(dns, &["acme.test", "AXFR", "+comments", "+tcp"]);
    assert_eq!(d.status, "REFUSED", "{d:?}");

    for transport in ["+notcp", "+tcp"] {
        let d = ask(dns, &["acme.test", "IXFR=1", transport, "+comments"]);
        assert_eq!(d.status, "REFUSED", "IXFR {transport}: {d:?}");
        assert!(d.answer.is_empty(), "IXFR {transport}: {d:?}");
    }
    served.stop().await;
}

/// Two OPT records in one query are FORMERR (RFC 6891 section 6.1.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_opt_records_are_formerr() {
    let served = Served::new(acme()).await;
    let mut query = Message::query();
    query.metadata.id = 77;
    query.add_query(Query::query(
        Name::from_ascii("node1.org2.acme.test.").expect("name"),
        RecordType::A,
    ));
    let mut once = query.clone();
    once.set_edns(hickory_proto::op::Edns::new());
    let mut bytes = once.to_vec().expect("encode");
    // a second copy of the OPT record (its last 11 bytes) and ARCOUNT 2
    let opt = bytes[bytes.len() - 11..].to_vec();
    bytes.extend_from_slice(&opt);
    bytes[10..12].copy_from_slice(&2u16.to_be_bytes());
    let answer = exchange_raw(served.addr, &bytes);
    assert_eq!(answer.metadata.id, 77);
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    let answer = exchange_raw(served.addr, &once.to_vec().expect("encode"));
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    served.stop().await;
}

/// `zone` as a zone file (RFC 1035 section 5) for another server.
fn zone_file(zone: &Zone) -> String {
    let mut text = String::new();
    for r in zone.records() {
        let line = match &r.data {
            RData::TXT(txt) => {
                let strings: Vec<String> = txt
                    .txt_data
                    .iter()
                    .map(|s| format!("\"{}\"", String::from_utf8_lossy(s)))
                    .collect();
                format!("{} {} IN TXT {}", r.name, r.ttl, strings.join(" "))
            }
            _ => r.to_string(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// Knot (`knotd`) serving `zones` from zone files on a loopback port the kernel picked; killed
/// on drop.
struct Knot {
    addr: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Knot {
    fn start(zones: &[(&str, &Zone)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().display().to_string();
        // knotd takes no port 0: a port the kernel hands out, free on UDP and TCP, released
        // just before knotd binds it
        let addr = (0..50)
            .find_map(|_| {
                let udp = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
                let addr = udp.local_addr().ok()?;
                std::net::TcpListener::bind(addr).ok().map(|_| addr)
            })
            .expect("a free UDP+TCP port on 127.0.0.1");
        let mut conf = format!(
            "server:\n  listen: {addr}\n  rundir: {path}\n  udp-max-payload: 1232\n\
             database:\n  storage: {path}\n\
             log:\n  - target: stderr\n    any: warning\n\
             zone:\n"
        )
        .replace(
            &format!("{addr}"),
            &format!("{}@{}", addr.ip(), addr.port()),
        );
        for (i, (origin, zone)) in zones.iter().enumerate() {
            let file = format!("{path}/z{i}.zone");
            std::fs::write(&file, zone_file(zone)).expect("zone file");
            conf.push_str(&format!("  - domain: {origin}\n    file: {file}\n"));
        }
        let conf_path = format!("{path}/knot.conf");
        std::fs::write(&conf_path, conf).expect("knot.conf");
        let log = std::fs::File::create(format!("{path}/knotd.log")).expect("log");
        // Debian puts it in /usr/sbin, which a user's PATH may lack
        let knotd = ["/usr/sbin/knotd", "/usr/local/sbin/knotd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("knotd");
        let child = std::process::Command::new(knotd)
            .args(["-c", &conf_path])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("knotd must be installed (scripts/test installs knot)");
        let knot = Self {
            addr,
            child,
            _dir: dir,
        };
        // ready when every zone answers its SOA
        let deadline = Instant::now() + Duration::from_secs(20);
        for (origin, _) in zones {
            while ask(addr, &[origin, "SOA", "+time=1"]).status != "NOERROR" {
                let log = std::fs::read_to_string(format!("{path}/knotd.log")).unwrap_or_default();
                assert!(
                    Instant::now() < deadline,
                    "knotd did not serve {origin}: {log}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        knot
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same zone, the same queries: fedgw and Knot agree on the response code, the header
/// flags, the OPT and the answer and authority sections. Left out, where fedgw answers
/// differently on purpose: QTYPE ANY and QCLASS ANY (Knot answers, fedgw refuses), NOTIFY and
/// UPDATE (Knot: NOTAUTH, FORMERR; fedgw: NOTIMP), transfers (Knot: NOTAUTH; fedgw: REFUSED),
/// and the additional section (Knot adds the addresses of SRV and NS targets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_knot_for_the_same_zone() {
    let (long_zone, long_name) = long();
    let long_origin = long_name
        .strip_prefix("node1.org2.")
        .expect("long name")
        .to_owned();
    let knot = Knot::start(&[("acme.test", &acme()), (&long_origin, &long_zone)]);
    let ours = Served::new(acme()).await;
    let ours_long = Served::new(long_zone).await;

    let n1 = "node1.org2.acme.test";
    let mut cases: Vec<Vec<&str>> = vec![
        vec![n1, "A"],
        vec![n1, "AAAA"],
        vec![n1, "TXT"],
        vec![n1, "MX"],
        vec!["NODE1.Org2.ACME.test", "A"],
        vec!["_p2p._tcp.node1.org2.acme.test", "SRV"],
        vec!["_raft._tcp.node1.org2.acme.test", "SRV"],
        vec!["_tessera._tcp.node1.org2.acme.test", "SRV"],
        vec!["_p2p._tcp.node1.org2.acme.test", "A"],
        vec!["_tcp.node1.org2.acme.test", "SRV"],
        vec!["org2.acme.test", "A"],
        vec!["org3.acme.test", "NS"],
        vec!["node2.org3.acme.test", "A"],
        vec!["node2.org3.acme.test", "CNAME"],
        vec!["node2.org3.acme.test", "TXT"],
        vec!["_p2p._tcp.node2.org3.acme.test", "SRV"],
        vec!["gw-dc1.org1.acme.test", "A"],
        vec!["gw-dc1.org2.acme.test", "AAAA"],
        vec!["acme.test", "SOA"],
        vec!["acme.test", "NS"],
        vec!["acme.test", "A"],
        vec!["nope.acme.test", "A"],
        vec!["x.node1.org2.acme.test", "A"],
        vec!["_udp.node1.org2.acme.test", "SRV"],
        vec!["example.com", "A"],
        vec!["test", "SOA"],
        vec![".", "NS"],
        vec!["-c", "CH", n1, "A"],
        vec!["-c", "HS", n1, "A"],
        vec!["-c", "NONE", n1, "A"],
        vec!["-c", "CH", "version.server", "TXT"],
        vec![n1, "A", "+opcode=1"],
        vec![n1, "A", "+opcode=2"],
        vec![n1, "A", "+opcode=15"],
        vec![n1, "A", "+opcode=2", "+edns=1", "+noednsnegotiation"],
        vec![n1, "A", "+edns=1", "+noednsnegotiation"],
        vec![n1, "A", "+edns=255", "+noednsnegotiation"],
        vec![n1, "A", "+ednsopt=65001:abcd"],
        vec![n1, "A", "+ednsopt=nsid"],
        vec![n1, "A", "+noedns"],
        vec![n1, "A", "+dnssec"],
        vec![n1, "A", "+bufsize=512"],
        vec!["nope.acme.test", "A", "+noedns"],
        vec![n1, "TXT", "+tcp"],
    ];
    for case in &mut cases {
        case.push("+nocookie");
    }
    let long_cases: Vec<Vec<&str>> = vec![
        vec![&long_name, "A", "+noedns", "+ignore"],
        vec![&long_name, "A", "+bufsize=520", "+ignore"],
        vec![&long_name, "A", "+bufsize=1232", "+ignore"],
        vec![&long_name, "A", "+noedns"],
        vec![&long_name, "CNAME", "+tcp"],
        vec![&long_origin, "SOA", "+noedns"],
    ];
    let mut differ = vec![];
    for (dns, cases) in [(ours.addr, &cases), (ours_long.addr, &long_cases)] {
        for case in cases {
            let (want, got) = (ask(knot.addr, case), ask(dns, case));
            assert_ne!(want.status, "no answer", "knot: {case:?}");
            if want != got {
                differ.push(format!("{case:?}\n  knot:  {want:?}\n  fedgw: {got:?}"));
            }
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    ours.stop().await;
    ours_long.stop().await;
}

/// An idle TCP connection from `source` (a loopback address) to `dns`.
async fn connect_from(source: &str, dns: SocketAddr) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind");
    sock.connect(dns).await.expect("connect")
}

/// Whether the server closed `conn` (EOF pending), without waiting.
fn closed(conn: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match conn.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// One query over `conn` (RFC 1035 section 4.2.2 framing), its answer within 5 s.
async fn query_over(conn: &mut tokio::net::TcpStream, name: &str) -> Message {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut q = Message::query();
    q.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    let bytes = q.to_vec().expect("encode");
    let mut framed = u16::try_from(bytes.len())
        .expect("len")
        .to_be_bytes()
        .to_vec();
    framed.extend_from_slice(&bytes);
    let answer = async {
        conn.write_all(&framed).await?;
        let len = conn.read_u16().await?;
        let mut buf = vec![0; usize::from(len)];
        conn.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("an answer within 5 s")
        .expect("answer");
    Message::from_vec(&buf).expect("decode")
}

/// `dig +tcp` from 127.0.0.1: the status, or "no answer".
fn dig_tcp(dns: SocketAddr, name: &str) -> String {
    let d = ask(dns, &["+tcp", "-b", "127.0.0.1", name, "A", "+comments"]);
    if d.status.is_empty() {
        "no answer".into()
    } else {
        d.status
    }
}

/// Waits (bounded: 10 s) until `cond`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One host holding hundreds of idle TCP connections gets `per_source` of them; every other
/// is closed on accept, and a query over TCP from another address is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_from_one_source_leave_room_for_others() {
    let limits = TcpLimits {
        idle: Duration::from_secs(60),
        ..DEFAULT_LIMITS
    };
    let served = Served::with_limits(acme(), limits).await;
    let dns = served.addr;
    let mut held = Vec::new();
    for _ in 0..400 {
        held.push(connect_from("127.0.0.2", dns).await);
    }
    let over = 400 - limits.per_source;
    until("the connections over the per-source cap refused", || {
        served.metrics.dns_tcp_refused_total(TcpRefusal::PerSource) == over as u64
    })
    .await;
    until("the refused connections closed", || {
        held.iter().filter(|c| closed(c)).count() == over
    })
    .await;
    let started = Instant::now();
    assert_eq!(dig_tcp(dns, "node1.org2.acme.test"), "NOERROR");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // the connections kept are served
    let mut open: Vec<_> = held.into_iter().filter(|c| !closed(c)).collect();
    assert_eq!(open.len(), limits.per_source);
    let answer = query_over(&mut open[0], "node1.org2.acme.test.").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(served.metrics.dns_tcp_refused_total(TcpRefusal::Total), 0);
    drop(open);
    served.stop().await;
}

/// With `total` connections open no other is kept, whatever its source, until one closes;
/// a connection silent for `idle` is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_capped_in_total_and_closed_when_idle() {
    let limits = TcpLimits {
        per_source: 4,
        total: 8,
        idle: Duration::from_secs(60),
    };
    let served = Served::with_limits(acme(), limits).await;
    let dns = served.addr;
    let mut two = Vec::new();
    let mut three = Vec::new();
    for _ in 0..4 {
        two.push(connect_from("127.0.0.2", dns).await);
        three.push(connect_from("127.0.0.3", dns).await);
    }
    // each is served, so each holds a slot
    for c in two.iter_mut().chain(three.iter_mut()) {
        let answer = query_over(c, "node1.org2.acme.test.").await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    }
    let four = connect_from("127.0.0.4", dns).await;
    until("a ninth connection closed", || closed(&four)).await;
    assert_eq!(served.metrics.dns_tcp_refused_total(TcpRefusal::Total), 1);
    assert_eq!(dig_tcp(dns, "node1.org2.acme.test"), "no answer");
    // slots come back as connections close
    drop(two);
    until("an answer once slots are free", || {
        dig_tcp(dns, "node1.org2.acme.test") == "NOERROR"
    })
    .await;
    assert_eq!(
        served.metrics.dns_tcp_refused_total(TcpRefusal::PerSource),
        0
    );
    drop(three);
    served.stop().await;

    let served = Served::with_limits(
        acme(),
        TcpLimits {
            idle: Duration::from_millis(200),
            ..DEFAULT_LIMITS
        },
    )
    .await;
    let silent = connect_from("127.0.0.2", served.addr).await;
    until("a silent connection closed", || closed(&silent)).await;
    served.stop().await;
}

/// A TCP request whose header reads but whose rest does not is FORMERR, as over UDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_tcp_request_is_formerr() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let served = Served::new(acme()).await;
    let mut conn = connect_from("127.0.0.1", served.addr).await;
    // id 9, one question, then a name cut short
    let bytes = [0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, b'a'];
    let mut framed = u16::try_from(bytes.len())
        .expect("len")
        .to_be_bytes()
        .to_vec();
    framed.extend_from_slice(&bytes);
    conn.write_all(&framed).await.expect("write");
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let len = conn.read_u16().await?;
        let mut buf = vec![0; usize::from(len)];
        conn.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .expect("in time")
    .expect("answer");
    let answer = Message::from_vec(&answer).expect("decode");
    assert_eq!(answer.metadata.id, 9);
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    // the connection still serves
    let answer = query_over(&mut conn, "node1.org2.acme.test.").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    served.stop().await;
}
